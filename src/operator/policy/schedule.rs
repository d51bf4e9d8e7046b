//! Schedule windows: which minimum and warm spares a Group's `spec.schedule` puts in force at an
//! instant, and when that next changes. Pure: the zone comes resolved (the edges call
//! `GroupSpec::schedule`, which reads the tz database) and `now` comes in as an argument. The
//! provider answers CA's `MinSize` from [`MinSizes::at`], the group controller writes
//! [`in_force`] into `status.schedule`, `simulate` and the warm-spares buffer read it too.
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::operator::api::{FieldError, Group, GroupSpec, ScheduleWindow, WarmSpares};
use crate::operator::calendar::{self, Weekly};

/// A Group's schedule, parsed, with its zone resolved. `windows[i]` is `spec.schedule[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub tz: TimeZone,
    pub windows: Vec<Weekly>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            tz: TimeZone::UTC,
            windows: Vec::new(),
        }
    }
}

impl Schedule {
    /// Parses `windows` (errors name `{prefix}spec.schedule[i]`) in the resolved zone `tz`.
    pub fn parse(
        prefix: &str,
        tz: TimeZone,
        windows: &[ScheduleWindow],
    ) -> Result<Schedule, FieldError> {
        let windows = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Weekly::parse(
                    &format!("{prefix}spec.schedule[{i}]"),
                    &w.days,
                    &w.from,
                    &w.to,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule { tz, windows })
    }

    /// `spec.schedule` of `spec` in its resolved `spec.timeZone`; errors start with
    /// `field_prefix` (e.g. `"Group lab/g "`). Reads the tz database: call it at the edges.
    pub fn of_spec(spec: &GroupSpec, field_prefix: &str) -> Result<Schedule, ScheduleError> {
        let tz = spec.time_zone(field_prefix).map_err(ScheduleError::Zone)?;
        Schedule::parse(field_prefix, tz, &spec.schedule).map_err(ScheduleError::Window)
    }

    /// [`Schedule::of_spec`] with errors naming `group`.
    pub fn of_group(group: &Group) -> Result<Schedule, ScheduleError> {
        Schedule::of_spec(&group.spec, &format!("{} ", group.object_ref()))
    }

    /// The index of the window in force at `now` (the last listed that covers it).
    pub fn active(&self, now: Timestamp) -> Option<usize> {
        calendar::active(&self.windows, &self.tz, now)
    }

    /// The next instant the window in force changes, with the index of the window then in
    /// force (`None`: no window).
    pub fn next_change(&self, now: Timestamp) -> Option<(Timestamp, Option<usize>)> {
        calendar::next_change(&self.windows, &self.tz, now)
    }
}

/// Why a Group's schedule cannot be used: its time zone is unknown, or a window does not parse.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleError {
    Zone(FieldError),
    Window(FieldError),
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScheduleError::Zone(e) | ScheduleError::Window(e) => e.fmt(f),
        }
    }
}

/// What the schedule puts in force at an instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InForce {
    /// The minimum: the window's `minSize`, else the Group's `minSize`, capped like
    /// `GroupSpec::size_bounds` (at the group's maximum and its member count).
    pub min_size: u32,
    /// The name of the window in force; `None` outside every window.
    pub window: Option<String>,
    /// The window's `warmSpares`, else the Group's `warmSpares`.
    pub warm_spares: Option<WarmSpares>,
    /// When that next changes, and the name of the window in force from then (`None`: none).
    /// `None` when nothing changes within eight days.
    pub next: Option<(Timestamp, Option<String>)>,
}

fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// What `spec.schedule` of `spec` (parsed into `schedule`) puts in force at `now` for a group of
/// `members` machines. Windows `schedule` has but `spec` does not (a schedule parsed from
/// another generation of the spec) count as windows without settings of their own.
pub fn in_force(spec: &GroupSpec, schedule: &Schedule, members: usize, now: Timestamp) -> InForce {
    let bounds = spec.size_bounds(members);
    let active = schedule.active(now);
    let window = active.and_then(|i| spec.schedule.get(i));
    let min_size = window
        .and_then(|w| w.min_size)
        .map_or(bounds.min, |m| to_u32(m).min(bounds.max));
    let warm_spares = window
        .and_then(|w| w.warm_spares.clone())
        .or_else(|| spec.warm_spares.clone());
    let name = |i: Option<usize>| i.and_then(|i| spec.schedule.get(i)).map(|w| w.name.clone());
    InForce {
        min_size,
        window: name(active),
        warm_spares,
        next: schedule.next_change(now).map(|(t, i)| (t, name(i))),
    }
}

/// What the provider keeps of a Group's schedule to answer `MinSize`: the parsed windows and
/// each one's `minSize` (`None`: the Group's own).
#[derive(Clone, Debug, PartialEq)]
pub struct MinSizes {
    pub schedule: Schedule,
    pub mins: Vec<Option<u32>>,
}

impl MinSizes {
    /// `None` when the Group has no windows that set a `minSize` (the Group's own holds).
    pub fn of(spec: &GroupSpec, schedule: Schedule) -> Option<MinSizes> {
        let mins: Vec<Option<u32>> = spec
            .schedule
            .iter()
            .map(|w| w.min_size.map(to_u32))
            .collect();
        if mins.iter().all(Option::is_none) || schedule.windows.is_empty() {
            return None;
        }
        Some(MinSizes { schedule, mins })
    }

    /// The minimum in force at `now`: the window's `minSize`, else `base` (the Group's resolved
    /// minimum), never above `max`.
    pub fn at(&self, base: u32, max: u32, now: Timestamp) -> u32 {
        self.schedule
            .active(now)
            .and_then(|i| self.mins.get(i).copied().flatten())
            .unwrap_or(base)
            .min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::api::Day;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn window(name: &str, from: &str, to: &str, min: Option<i32>) -> ScheduleWindow {
        ScheduleWindow {
            name: name.into(),
            from: from.into(),
            to: to.into(),
            min_size: min,
            ..ScheduleWindow::default()
        }
    }

    fn spec(min: Option<i32>, max: Option<i32>, windows: Vec<ScheduleWindow>) -> GroupSpec {
        GroupSpec {
            min_size: min,
            max_size: max,
            schedule: windows,
            ..GroupSpec::default()
        }
    }

    fn parsed(spec: &GroupSpec, zone: &str) -> Schedule {
        Schedule::parse("", TimeZone::get(zone).unwrap(), &spec.schedule).unwrap()
    }

    fn spares(count: i32) -> WarmSpares {
        WarmSpares {
            count,
            ..WarmSpares::default()
        }
    }

    #[test]
    fn outside_every_window_the_groups_own_min_and_spares_hold() {
        let mut s = spec(
            Some(1),
            None,
            vec![ScheduleWindow {
                days: vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri],
                warm_spares: Some(spares(2)),
                ..window("workday", "07:30", "18:00", Some(3))
            }],
        );
        s.warm_spares = Some(spares(1));
        let sch = parsed(&s, "UTC");
        // 2026-12-07 is a Monday.
        let before = in_force(&s, &sch, 5, ts("2026-12-07T07:00:00Z"));
        assert_eq!(
            before,
            InForce {
                min_size: 1,
                window: None,
                warm_spares: Some(spares(1)),
                next: Some((ts("2026-12-07T07:30:00Z"), Some("workday".into()))),
            }
        );
        let during = in_force(&s, &sch, 5, ts("2026-12-07T07:30:00Z"));
        assert_eq!(
            during,
            InForce {
                min_size: 3,
                window: Some("workday".into()),
                warm_spares: Some(spares(2)),
                next: Some((ts("2026-12-07T18:00:00Z"), None)),
            }
        );
        // Friday evening: the next start is Monday's.
        let weekend = in_force(&s, &sch, 5, ts("2026-12-11T18:00:00Z"));
        assert_eq!(weekend.min_size, 1);
        assert_eq!(
            weekend.next,
            Some((ts("2026-12-14T07:30:00Z"), Some("workday".into())))
        );
    }

    #[test]
    fn a_window_without_min_size_or_spares_keeps_the_groups_own() {
        let mut s = spec(
            Some(2),
            None,
            vec![window("evening", "18:00", "22:00", None)],
        );
        s.warm_spares = Some(spares(1));
        let f = in_force(&s, &parsed(&s, "UTC"), 4, ts("2026-12-07T19:00:00Z"));
        assert_eq!(f.min_size, 2);
        assert_eq!(f.window.as_deref(), Some("evening"));
        assert_eq!(f.warm_spares, Some(spares(1)));
    }

    #[test]
    fn the_window_min_is_capped_at_the_max_and_the_members() {
        let s = spec(
            None,
            Some(3),
            vec![window("all", "00:00", "24:00", Some(10))],
        );
        let sch = parsed(&s, "UTC");
        let now = ts("2026-12-07T12:00:00Z");
        assert_eq!(in_force(&s, &sch, 5, now).min_size, 3, "maxSize");
        assert_eq!(in_force(&s, &sch, 2, now).min_size, 2, "members");
        let m = MinSizes::of(&s, sch).unwrap();
        assert_eq!(m.at(0, 3, now), 3);
        assert_eq!(m.at(0, 2, now), 2);
    }

    #[test]
    fn the_window_listed_last_holds_and_names_itself() {
        let s = spec(
            Some(0),
            None,
            vec![
                window("day", "08:00", "20:00", Some(1)),
                window("backup", "12:00", "13:00", Some(3)),
            ],
        );
        let sch = parsed(&s, "UTC");
        let f = in_force(&s, &sch, 5, ts("2026-12-07T12:30:00Z"));
        assert_eq!((f.min_size, f.window.as_deref()), (3, Some("backup")));
        assert_eq!(
            f.next,
            Some((ts("2026-12-07T13:00:00Z"), Some("day".into())))
        );
        let m = MinSizes::of(&s, sch).unwrap();
        assert_eq!(m.at(0, 5, ts("2026-12-07T12:30:00Z")), 3);
        assert_eq!(m.at(0, 5, ts("2026-12-07T13:00:00Z")), 1);
        assert_eq!(m.at(0, 5, ts("2026-12-07T20:00:00Z")), 0);
    }

    #[test]
    fn a_schedule_that_sets_no_min_size_leaves_the_provider_nothing_to_keep() {
        let s = spec(Some(1), None, vec![window("w", "08:00", "09:00", None)]);
        assert_eq!(MinSizes::of(&s, parsed(&s, "UTC")), None);
        assert_eq!(
            MinSizes::of(&spec(None, None, vec![]), Schedule::default()),
            None
        );
    }

    /// A night window 01:30-03:30 whose edges sit around the DST changes: in Europe/Berlin the
    /// clock jumps from 02:00 to 03:00 on 2026-03-29 and from 03:00 back to 02:00 on 2026-10-25.
    #[test]
    fn a_night_window_follows_berlins_wall_clock_on_both_2026_dst_days() {
        let s = spec(
            Some(0),
            None,
            vec![window("night", "01:30", "03:30", Some(2))],
        );
        let sch = parsed(&s, "Europe/Berlin");
        let at = |t: &str| in_force(&s, &sch, 4, ts(t));
        // Spring: 01:30 CET is 00:30Z; 03:30 CEST is 01:30Z, so the window lasts one hour.
        let f = at("2026-03-29T00:00:00Z");
        assert_eq!(f.min_size, 0);
        assert_eq!(
            f.next,
            Some((ts("2026-03-29T00:30:00Z"), Some("night".into())))
        );
        let f = at("2026-03-29T00:30:00Z");
        assert_eq!((f.min_size, f.window.as_deref()), (2, Some("night")));
        assert_eq!(f.next, Some((ts("2026-03-29T01:30:00Z"), None)));
        assert_eq!(at("2026-03-29T01:29:59Z").min_size, 2);
        assert_eq!(at("2026-03-29T01:30:00Z").min_size, 0);
        // Autumn: 01:30 CEST is 23:30Z the day before; 03:30 CET is 02:30Z: three hours.
        let f = at("2026-10-24T23:00:00Z");
        assert_eq!(
            f.next,
            Some((ts("2026-10-24T23:30:00Z"), Some("night".into())))
        );
        let f = at("2026-10-24T23:30:00Z");
        assert_eq!(f.min_size, 2);
        assert_eq!(f.next, Some((ts("2026-10-25T02:30:00Z"), None)));
        assert_eq!(at("2026-10-25T01:30:00Z").min_size, 2, "the repeated hour");
        assert_eq!(at("2026-10-25T02:30:00Z").min_size, 0);
    }

    /// A window starting at 02:30, inside the hour the clock skips in spring, begins when the
    /// clock jumps (03:00 local); in New York (2026-03-08 and 2026-11-01) as in Berlin.
    #[test]
    fn a_start_in_the_skipped_hour_begins_at_the_jump_in_new_york_too() {
        let s = spec(None, None, vec![window("batch", "02:30", "04:00", Some(1))]);
        let sch = parsed(&s, "America/New_York");
        // 2026-03-08: 02:00 EST (07:00Z) jumps to 03:00 EDT; the window runs 07:00Z-08:00Z.
        let f = in_force(&s, &sch, 2, ts("2026-03-08T06:00:00Z"));
        assert_eq!(
            f.next,
            Some((ts("2026-03-08T07:00:00Z"), Some("batch".into())))
        );
        assert_eq!(
            in_force(&s, &sch, 2, ts("2026-03-08T07:00:00Z")).min_size,
            1
        );
        assert_eq!(
            in_force(&s, &sch, 2, ts("2026-03-08T08:00:00Z")).min_size,
            0
        );
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 02:30 EST is 07:30Z, 04:00 EST 09:00Z.
        let f = in_force(&s, &sch, 2, ts("2026-11-01T05:00:00Z"));
        assert_eq!(
            f.next,
            Some((ts("2026-11-01T07:30:00Z"), Some("batch".into())))
        );
        assert_eq!(
            in_force(&s, &sch, 2, ts("2026-11-01T08:59:00Z")).min_size,
            1
        );
        assert_eq!(
            in_force(&s, &sch, 2, ts("2026-11-01T09:00:00Z")).min_size,
            0
        );
    }

    /// The binary carries the tz database (jiff's `tzdb-bundle-always`): a machine or image
    /// without `/usr/share/zoneinfo` still resolves zone names; jiff prefers the system's copy
    /// when there is one.
    #[test]
    fn the_bundled_tz_database_knows_the_zones() {
        let db = jiff::tz::TimeZoneDatabase::bundled();
        for zone in ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "UTC"] {
            assert!(db.get(zone).is_ok(), "{zone}");
        }
    }
}
