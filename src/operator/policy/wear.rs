//! Wear limits and quiet hours as pure decisions: the wear in force for a machine (its Group's
//! `spec.wear` with the Node CR's own `spec.wear` on top, field by field), how many times it
//! booted in the last 24 hours, and what quiet hours hold back at an instant. The provider,
//! the machine controller and `fsm inspect` call these with `now`; nothing here reads a clock,
//! the tz database or the API.
//!
//! Boots are counted from `status.recentBootStarts` (see [`record_boot_start`]): the start
//! times of the power-ons of the last 24 hours, newest last, at most [`kept`] of them. The
//! per-UTC-day energy buckets are not exact enough (a day boundary splits any 24 hours) and
//! `status.recentBootSeconds` holds durations without times.
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::operator::api::{FieldError, QuietHours, Wear, parse_duration};
use crate::operator::calendar::{self, Weekly};

/// The span boots are counted over.
pub const DAY: SignedDuration = SignedDuration::from_hours(24);

/// Boot start times kept when no `maxBootsPerDay` applies (so `fsm inspect` can still show
/// the count, and a limit set later counts the boots before it).
pub const KEPT_WITHOUT_LIMIT: usize = 24;

/// The wear in force: `own` (the Node CR's `spec.wear`) field by field over `group` (the
/// Group's `spec.wear`). `quietHours` is one field: a non-empty list on the Node CR replaces
/// the Group's whole list.
pub fn effective(group: Option<&Wear>, own: Option<&Wear>) -> Wear {
    let own_quiet = own.map(|w| &w.quiet_hours).filter(|q| !q.is_empty());
    Wear {
        max_boots_per_day: own
            .and_then(|w| w.max_boots_per_day)
            .or_else(|| group.and_then(|w| w.max_boots_per_day)),
        quiet_hours: own_quiet
            .or(group.map(|w| &w.quiet_hours))
            .cloned()
            .unwrap_or_default(),
    }
}

/// `maxBootsPerDay` as a count (a value below 1, which the CRD rejects, counts as 1).
pub fn limit(wear: &Wear) -> Option<u32> {
    wear.max_boots_per_day
        .map(|l| u32::try_from(l.max(1)).unwrap_or(1))
}

/// How many boot start times status keeps: one more than the limit (so a passed limit shows
/// as such), [`KEPT_WITHOUT_LIMIT`] without one.
pub fn kept(limit: Option<u32>) -> usize {
    limit.map_or(KEPT_WITHOUT_LIMIT, |l| l as usize + 1)
}

/// Boots started in the 24 hours up to `now` (`starts` as status keeps them).
pub fn boots_in_day(starts: &[Timestamp], now: Timestamp) -> u32 {
    let since = now - DAY;
    let n = starts.iter().filter(|t| **t > since && **t <= now).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Whether a machine that booted at `starts` is at `limit` (booting it now would pass it).
pub fn at_limit(starts: &[Timestamp], limit: Option<u32>, now: Timestamp) -> bool {
    limit.is_some_and(|l| boots_in_day(starts, now) >= l)
}

/// A power-on that started at `started`, recorded into `starts`: `None` when it is recorded
/// already (the same reconcile run again after a conflict, or a later reconcile of the same
/// operation), else the new list: the boots of the 24 hours before `now` plus this one, the
/// oldest dropped beyond [`kept`]`(limit)`.
pub fn record_boot_start(
    starts: &[Timestamp],
    started: Timestamp,
    limit: Option<u32>,
    now: Timestamp,
) -> Option<Vec<Timestamp>> {
    if starts.contains(&started) {
        return None;
    }
    let since = now - DAY;
    let mut out: Vec<Timestamp> = starts.iter().copied().filter(|t| *t > since).collect();
    out.push(started);
    out.sort();
    let excess = out.len().saturating_sub(kept(limit));
    out.drain(..excess);
    Some(out)
}

/// What an Event on the Node CR says when a power-on passed the limit: `before` boots in the
/// 24 hours before this one, as counted from the kept start times (capped at [`kept`]).
pub fn limit_passed_message(before: u32, limit: u32) -> String {
    let count = if before as usize >= kept(Some(limit)) {
        format!("more than {limit}")
    } else {
        before.to_string()
    };
    format!(
        "powered on although it already booted {count} time(s) in the last 24 hours \
         (wear.maxBootsPerDay {limit})"
    )
}

/// The windows of quiet hours, parsed; `field` is where they are written (e.g. `Group lab/g
/// spec.wear.quietHours`).
pub fn quiet_windows(field: &str, windows: &[QuietHours]) -> Result<Vec<Weekly>, FieldError> {
    windows
        .iter()
        .enumerate()
        .map(|(i, w)| Weekly::parse(&format!("{field}[{i}]"), &w.days, &w.from, &w.to))
        .map(|r| r.map_err(FieldError::from))
        .collect()
}

/// Quiet hours parsed: the windows and what each holds. The zone comes separately (the
/// Group's `spec.timeZone`, resolved at the edge).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quiet {
    windows: Vec<Weekly>,
    /// Per window: power-offs held (`noPowerOff`, default true).
    no_power_off: Vec<bool>,
    /// Per window: how long pods wait before a power-on (`powerOnAfter`), `None`: not held.
    power_on_after: Vec<Option<SignedDuration>>,
}

impl Quiet {
    /// `windows` parsed; `field` names them in errors (e.g. `Group lab/g spec.wear.quietHours`).
    pub fn parse(field: &str, windows: &[QuietHours]) -> Result<Quiet, FieldError> {
        let parsed = quiet_windows(field, windows)?;
        let power_on_after = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                w.power_on_after
                    .as_deref()
                    .map(|d| parse_duration(&format!("{field}[{i}].powerOnAfter"), d))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        Ok(Quiet {
            windows: parsed,
            no_power_off: windows
                .iter()
                .map(|w| w.no_power_off.unwrap_or(true))
                .collect(),
            power_on_after,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The window in force at `now` (the last listed that covers it).
    pub fn active(&self, tz: &TimeZone, now: Timestamp) -> Option<usize> {
        calendar::active(&self.windows, tz, now)
    }

    /// Power-offs are held at `now`: a window with `noPowerOff` (the default) is in force.
    pub fn holds_power_off(&self, tz: &TimeZone, now: Timestamp) -> bool {
        self.active(tz, now)
            .is_some_and(|i| self.no_power_off.get(i).copied().unwrap_or(true))
    }

    /// How long pods must have waited for a power-on at `now`: the `powerOnAfter` of the
    /// window in force, `None` outside windows or in one without it.
    pub fn power_on_after(&self, tz: &TimeZone, now: Timestamp) -> Option<SignedDuration> {
        self.active(tz, now)
            .and_then(|i| self.power_on_after.get(i).copied().flatten())
    }

    /// The next instant after `now` at which the window in force changes (a controller
    /// requeues then instead of polling).
    pub fn next_change(&self, tz: &TimeZone, now: Timestamp) -> Option<Timestamp> {
        calendar::next_change(&self.windows, tz, now).map(|(t, _)| t)
    }
}

/// Whether quiet hours hold power-ons back at `now`: a `powerOnAfter` is in force (`wait`) and
/// no unschedulable pod has waited that long (`oldest_unschedulable`: since when the
/// longest-waiting one is unschedulable; `None`: none is).
pub fn holds_power_on(
    wait: Option<SignedDuration>,
    oldest_unschedulable: Option<Timestamp>,
    now: Timestamp,
) -> bool {
    let Some(wait) = wait else {
        return false;
    };
    oldest_unschedulable.is_none_or(|since| now.duration_since(since) < wait)
}

/// A Group's wear as the provider reads it: its `maxBootsPerDay`, its quiet hours and the
/// zone they are in (`spec.timeZone`, UTC by default). Shared by the inventories built from
/// the same Group.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupWear {
    pub max_boots_per_day: Option<u32>,
    pub time_zone: TimeZone,
    pub quiet: Quiet,
}

/// A machine's own wear (its Node CR's `spec.wear`) and the boots it made, as the provider
/// reads them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MachineWear {
    pub max_boots_per_day: Option<u32>,
    /// `None`: the Group's quiet hours apply.
    pub quiet: Option<Quiet>,
    /// `status.recentBootStarts`.
    pub boot_starts: Vec<Timestamp>,
}

/// The limit in force for a machine: its own, else its Group's.
pub fn machine_limit(group: Option<&GroupWear>, own: Option<&MachineWear>) -> Option<u32> {
    own.and_then(|w| w.max_boots_per_day)
        .or_else(|| group.and_then(|g| g.max_boots_per_day))
}

/// The quiet hours in force for a machine and their zone: its own windows (in its Group's
/// zone), else its Group's.
pub fn machine_quiet<'a>(
    group: Option<&'a GroupWear>,
    own: Option<&'a MachineWear>,
) -> Option<(&'a Quiet, &'a TimeZone)> {
    let tz = group.map_or(&UTC, |g| &g.time_zone);
    own.and_then(|w| w.quiet.as_ref())
        .or(group.map(|g| &g.quiet))
        .filter(|q| !q.is_empty())
        .map(|q| (q, tz))
}

static UTC: TimeZone = TimeZone::UTC;

/// Whether quiet hours hold a power-off of this machine at `now`.
pub fn machine_holds_power_off(
    group: Option<&GroupWear>,
    own: Option<&MachineWear>,
    now: Timestamp,
) -> bool {
    machine_quiet(group, own).is_some_and(|(q, tz)| q.holds_power_off(tz, now))
}

/// Whether the machine is at its boot limit at `now`.
pub fn machine_at_limit(
    group: Option<&GroupWear>,
    own: Option<&MachineWear>,
    now: Timestamp,
) -> bool {
    let starts = own.map_or(&[][..], |w| &w.boot_starts[..]);
    at_limit(starts, machine_limit(group, own), now)
}

/// Since when the longest-waiting of `pods` has been unschedulable: the scheduler's
/// `PodScheduled=False` condition with reason `Unschedulable`, from its last transition (the
/// pod's creation when the condition has no time). `None` when none is.
pub fn unschedulable_since<'a>(
    pods: impl IntoIterator<Item = &'a k8s_openapi::api::core::v1::Pod>,
) -> Option<Timestamp> {
    pods.into_iter()
        .filter(|p| p.spec.as_ref().is_none_or(|s| s.node_name.is_none()))
        .filter_map(|p| {
            let c = p
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "PodScheduled")?;
            if c.status != "False" || c.reason.as_deref() != Some("Unschedulable") {
                return None;
            }
            c.last_transition_time
                .as_ref()
                .or(p.metadata.creation_timestamp.as_ref())
                .map(|t| t.0)
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn quiet(from: &str, to: &str, no_power_off: Option<bool>, after: Option<&str>) -> QuietHours {
        QuietHours {
            days: Vec::new(),
            from: from.to_owned(),
            to: to.to_owned(),
            no_power_off,
            power_on_after: after.map(str::to_owned),
        }
    }

    #[test]
    fn the_node_crs_wear_overrides_the_groups_field_by_field() {
        let group = Wear {
            max_boots_per_day: Some(4),
            quiet_hours: vec![quiet("22:00", "07:00", None, None)],
        };
        let own_limit = Wear {
            max_boots_per_day: Some(2),
            quiet_hours: Vec::new(),
        };
        let e = effective(Some(&group), Some(&own_limit));
        assert_eq!(e.max_boots_per_day, Some(2));
        assert_eq!(e.quiet_hours, group.quiet_hours);

        let own_quiet = Wear {
            max_boots_per_day: None,
            quiet_hours: vec![quiet("23:00", "06:00", Some(false), None)],
        };
        let e = effective(Some(&group), Some(&own_quiet));
        assert_eq!(e.max_boots_per_day, Some(4));
        assert_eq!(e.quiet_hours, own_quiet.quiet_hours);

        assert_eq!(effective(None, None), Wear::default());
        assert_eq!(effective(None, Some(&own_limit)), own_limit);
    }

    #[test]
    fn boots_are_counted_over_the_last_24_hours() {
        let now = ts("2026-12-06T12:00:00Z");
        let starts = [
            ts("2026-12-05T11:59:00Z"),
            ts("2026-12-05T12:00:00Z"),
            ts("2026-12-05T12:01:00Z"),
            ts("2026-12-06T11:00:00Z"),
        ];
        assert_eq!(boots_in_day(&starts, now), 2);
        assert!(at_limit(&starts, Some(2), now));
        assert!(!at_limit(&starts, Some(3), now));
        assert!(!at_limit(&starts, None, now));
    }

    #[test]
    fn a_boot_start_is_recorded_once_and_the_list_stays_short() {
        let now = ts("2026-12-06T12:00:00Z");
        let old = ts("2026-12-05T10:00:00Z");
        let a = ts("2026-12-06T08:00:00Z");
        let b = ts("2026-12-06T09:00:00Z");
        let c = ts("2026-12-06T10:00:00Z");
        // Older than 24 h: dropped when the next one is recorded.
        assert_eq!(
            record_boot_start(&[old, a], b, Some(2), now),
            Some(vec![a, b])
        );
        // Recorded already: nothing to write.
        assert_eq!(record_boot_start(&[a, b], b, Some(2), now), None);
        // At most limit + 1.
        assert_eq!(
            record_boot_start(&[a, b, c], now, Some(2), now),
            Some(vec![b, c, now])
        );
        assert_eq!(kept(None), KEPT_WITHOUT_LIMIT);
    }

    #[test]
    fn the_limit_passed_message_says_more_than_when_the_count_is_capped() {
        assert!(limit_passed_message(2, 2).contains("booted 2 time(s)"));
        assert!(limit_passed_message(3, 2).contains("booted more than 2 time(s)"));
    }

    #[test]
    fn quiet_hours_hold_power_offs_unless_no_power_off_is_false() {
        let utc = TimeZone::UTC;
        let q = Quiet::parse(
            "spec.wear.quietHours",
            &[
                quiet("22:00", "07:00", None, Some("30m")),
                quiet("12:00", "13:00", Some(false), None),
            ],
        )
        .unwrap();
        let night = ts("2026-12-06T23:30:00Z");
        let noon = ts("2026-12-06T12:30:00Z");
        let day = ts("2026-12-06T15:00:00Z");
        assert!(q.holds_power_off(&utc, night));
        assert!(!q.holds_power_off(&utc, noon));
        assert!(!q.holds_power_off(&utc, day));
        assert_eq!(
            q.power_on_after(&utc, night),
            Some(SignedDuration::from_mins(30))
        );
        assert_eq!(q.power_on_after(&utc, noon), None);
        assert_eq!(q.next_change(&utc, night), Some(ts("2026-12-07T07:00:00Z")));
        assert_eq!(q.next_change(&utc, day), Some(ts("2026-12-06T22:00:00Z")));
    }

    #[test]
    fn a_bad_power_on_after_names_its_window() {
        let e = Quiet::parse("w", &[quiet("22:00", "07:00", None, Some("soon"))]).unwrap_err();
        assert!(e.to_string().contains("w[0].powerOnAfter"), "{e}");
    }

    #[test]
    fn power_ons_wait_until_a_pod_has_waited_power_on_after() {
        let now = ts("2026-12-06T23:30:00Z");
        let wait = Some(SignedDuration::from_mins(30));
        assert!(holds_power_on(wait, None, now));
        assert!(holds_power_on(wait, Some(ts("2026-12-06T23:10:00Z")), now));
        assert!(!holds_power_on(wait, Some(ts("2026-12-06T23:00:00Z")), now));
        assert!(!holds_power_on(None, None, now));
    }

    #[test]
    fn the_longest_waiting_unschedulable_pod_counts() {
        use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let pod = |status: &str, reason: &str, at: &str, node: Option<&str>| Pod {
            spec: Some(PodSpec {
                node_name: node.map(str::to_owned),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".to_owned(),
                    status: status.to_owned(),
                    reason: Some(reason.to_owned()),
                    last_transition_time: Some(Time(ts(at))),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let pods = [
            pod("False", "Unschedulable", "2026-12-06T23:10:00Z", None),
            pod("False", "Unschedulable", "2026-12-06T23:00:00Z", None),
            pod("False", "SchedulerError", "2026-12-06T22:00:00Z", None),
            pod("True", "", "2026-12-06T21:00:00Z", Some("n1")),
        ];
        assert_eq!(unschedulable_since(&pods), Some(ts("2026-12-06T23:00:00Z")));
        assert_eq!(unschedulable_since(&pods[2..]), None);
    }
}
