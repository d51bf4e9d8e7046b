//! Weekly windows on a wall clock: which one is in force at an instant and when that next
//! changes. Schedules (a Group's `spec.schedule`) and quiet hours (`wear.quietHours`) both use
//! it; it sits below the API types (which take `Day` from here) and depends on jiff alone. Pure: the zone comes resolved (`TimeZone::get` reads the tz database) and time comes in
//! as an argument. A window follows the wall clock, so across a DST change "07:30" stays 07:30
//! local time; a window whose start falls into an hour skipped by the change begins when the
//! clock jumps over it.
use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A day of the week, as a window's `days` lists it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// A time of day or a window that does not parse: the field (as the caller named it) and why.
/// The API turns it into its `FieldError`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

/// What a time of day must look like (also the CRD's CEL message).
pub const TIME_OF_DAY_MESSAGE: &str = "must be a time of day as HH:MM on a 24-hour clock, e.g. 07:30 or 22:00 (24:00 is the end of the day)";
/// Why `from == to` is refused (also the CRD's CEL message).
pub const WINDOW_NOT_EMPTY_MESSAGE: &str = "from and to are the same time, so the window is empty; for a whole day write from: \"00:00\", to: \"24:00\"";

/// A window `[from, to)` on each of `days` (a bit per weekday, Monday = bit 0). `to <= from`
/// runs past midnight into the next day; the window belongs to the day it starts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weekly {
    days: u8,
    from: SignedDuration,
    to: SignedDuration,
}

const DAY: SignedDuration = SignedDuration::from_hours(24);

fn day_bit(d: Weekday) -> u8 {
    1 << (d.to_monday_zero_offset() as u8)
}

impl Day {
    pub const ALL: [Day; 7] = [
        Day::Mon,
        Day::Tue,
        Day::Wed,
        Day::Thu,
        Day::Fri,
        Day::Sat,
        Day::Sun,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Day::Mon => "Mon",
            Day::Tue => "Tue",
            Day::Wed => "Wed",
            Day::Thu => "Thu",
            Day::Fri => "Fri",
            Day::Sat => "Sat",
            Day::Sun => "Sun",
        }
    }

    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Monday,
            Day::Tue => Weekday::Tuesday,
            Day::Wed => Weekday::Wednesday,
            Day::Thu => Weekday::Thursday,
            Day::Fri => Weekday::Friday,
            Day::Sat => Weekday::Saturday,
            Day::Sun => Weekday::Sunday,
        }
    }
}

/// `HH:MM` (24-hour clock; `24:00` is the end of the day) as the time since midnight.
pub fn parse_time_of_day(field: &str, v: &str) -> Result<SignedDuration, Invalid> {
    let invalid = || Invalid {
        field: field.to_owned(),
        problem: format!("{v:?} {TIME_OF_DAY_MESSAGE}"),
    };
    let (h, m) = v.split_once(':').ok_or_else(invalid)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(invalid());
    }
    let h: i64 = h.parse().map_err(|_| invalid())?;
    let m: i64 = m.parse().map_err(|_| invalid())?;
    if !(0..=24).contains(&h) || !(0..60).contains(&m) || (h == 24 && m != 0) {
        return Err(invalid());
    }
    Ok(SignedDuration::from_mins(h * 60 + m))
}

impl Weekly {
    /// The window on `days` (empty: every day) from `from` to `to`; `field` names the
    /// window in errors (e.g. `Group lab/g spec.schedule[0]`).
    pub fn parse(field: &str, days: &[Day], from: &str, to: &str) -> Result<Weekly, Invalid> {
        let from_d = parse_time_of_day(&format!("{field}.from"), from)?;
        let to_d = parse_time_of_day(&format!("{field}.to"), to)?;
        if from_d == to_d {
            return Err(Invalid {
                field: format!("{field}.to"),
                problem: WINDOW_NOT_EMPTY_MESSAGE.to_owned(),
            });
        }
        let days = if days.is_empty() {
            0x7f
        } else {
            days.iter().fold(0, |acc, d| acc | day_bit(d.weekday()))
        };
        Ok(Weekly {
            days,
            from: from_d,
            to: to_d,
        })
    }

    /// Whether the window covers `at` by the wall clock of `tz`.
    pub fn contains(&self, tz: &TimeZone, at: Timestamp) -> bool {
        let local = tz.to_datetime(at);
        let tod = local.time().duration_since(Time::midnight());
        let today = local.date();
        let starts_on = |date: Date| self.days & day_bit(date.weekday()) != 0;
        if self.from < self.to {
            return starts_on(today) && self.from <= tod && tod < self.to;
        }
        // Past midnight: the evening part belongs to today, the morning part to yesterday.
        (starts_on(today) && tod >= self.from)
            || (tod < self.to && today.yesterday().is_ok_and(starts_on))
    }

    /// The instants the window starts and ends on the days around `around` (a day before to
    /// eight after), for [`next_change`].
    fn edges(&self, tz: &TimeZone, around: Date) -> Vec<Timestamp> {
        let mut out = Vec::new();
        for offset in -1..=8i64 {
            let Ok(date) = around.checked_add(offset.days()) else {
                continue;
            };
            if self.days & day_bit(date.weekday()) == 0 {
                continue;
            }
            out.extend(wall_clock(tz, date, self.from));
            let end_day = if self.to <= self.from {
                date.tomorrow().ok()
            } else {
                Some(date)
            };
            out.extend(end_day.and_then(|d| wall_clock(tz, d, self.to)));
        }
        out
    }
}

/// The instant of wall-clock time `tod` after midnight on `date` in `tz` (jiff's `compatible`
/// choice: a repeated time is its first instant, a skipped one is moved on by the gap).
/// [`next_change`] also looks at the zone's transitions, which catch a window that starts
/// inside a skipped hour.
fn wall_clock(tz: &TimeZone, date: Date, tod: SignedDuration) -> Option<Timestamp> {
    let dt: DateTime = date.to_datetime(Time::midnight()).checked_add(tod).ok()?;
    tz.to_ambiguous_timestamp(dt).compatible().ok()
}

/// The index of the window in force at `at`: the last listed that covers it.
pub fn active(windows: &[Weekly], tz: &TimeZone, at: Timestamp) -> Option<usize> {
    windows.iter().rposition(|w| w.contains(tz, at))
}

/// The first instant after `at` (within eight days) at which [`active`] gives another answer,
/// with that answer. `None` when nothing changes in that time (no windows, or every day
/// covered by one window).
pub fn next_change(
    windows: &[Weekly],
    tz: &TimeZone,
    at: Timestamp,
) -> Option<(Timestamp, Option<usize>)> {
    let now = active(windows, tz, at);
    let around = tz.to_datetime(at).date();
    let mut edges: Vec<Timestamp> = windows
        .iter()
        .flat_map(|w| w.edges(tz, around))
        .chain(
            tz.following(at)
                .map(|tr| tr.timestamp())
                .take_while(|t| *t <= at + DAY * 9),
        )
        .filter(|t| *t > at)
        .collect();
    edges.sort();
    edges.dedup();
    edges
        .into_iter()
        .map(|t| (t, active(windows, tz, t)))
        .find(|(_, a)| *a != now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn weekdays(from: &str, to: &str) -> Weekly {
        let days = [Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri];
        Weekly::parse("w", &days, from, to).unwrap()
    }

    #[test]
    fn times_of_day_parse_as_hh_mm_and_name_the_field_otherwise() {
        assert_eq!(
            parse_time_of_day("f", "07:30").unwrap(),
            SignedDuration::from_mins(450)
        );
        assert_eq!(parse_time_of_day("f", "24:00").unwrap(), DAY);
        for bad in ["7:30", "24:01", "12:60", "noon", "07:30:00", ""] {
            let e = parse_time_of_day("spec.schedule[0].from", bad).unwrap_err();
            assert_eq!(e.field, "spec.schedule[0].from", "{bad}");
            assert!(e.problem.contains("HH:MM"), "{bad}: {}", e.problem);
        }
        assert!(Weekly::parse("w", &[], "08:00", "08:00").is_err());
    }

    #[test]
    fn a_weekday_window_covers_weekday_office_hours_only() {
        let w = [weekdays("07:30", "18:00")];
        let utc = TimeZone::UTC;
        // 2026-12-07 is a Monday.
        assert_eq!(active(&w, &utc, ts("2026-12-07T07:29:59Z")), None);
        assert_eq!(active(&w, &utc, ts("2026-12-07T07:30:00Z")), Some(0));
        assert_eq!(active(&w, &utc, ts("2026-12-07T17:59:59Z")), Some(0));
        assert_eq!(active(&w, &utc, ts("2026-12-07T18:00:00Z")), None);
        assert_eq!(
            active(&w, &utc, ts("2026-12-12T10:00:00Z")),
            None,
            "Saturday"
        );
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        // Friday 22:00 to Saturday 02:00 only.
        let w = [Weekly::parse("w", &[Day::Fri], "22:00", "02:00").unwrap()];
        let utc = TimeZone::UTC;
        assert_eq!(active(&w, &utc, ts("2026-12-11T23:00:00Z")), Some(0));
        assert_eq!(active(&w, &utc, ts("2026-12-12T01:59:00Z")), Some(0));
        assert_eq!(active(&w, &utc, ts("2026-12-12T23:00:00Z")), None);
        assert_eq!(
            active(&w, &utc, ts("2026-12-11T01:00:00Z")),
            None,
            "Friday morning"
        );
    }

    #[test]
    fn the_window_listed_last_holds_where_windows_overlap() {
        let w = [
            Weekly::parse("a", &[], "00:00", "24:00").unwrap(),
            weekdays("09:00", "17:00"),
        ];
        let utc = TimeZone::UTC;
        assert_eq!(active(&w, &utc, ts("2026-12-07T08:00:00Z")), Some(0));
        assert_eq!(active(&w, &utc, ts("2026-12-07T10:00:00Z")), Some(1));
        assert_eq!(
            next_change(&w, &utc, ts("2026-12-07T10:00:00Z")),
            Some((ts("2026-12-07T17:00:00Z"), Some(0)))
        );
    }

    #[test]
    fn the_next_change_skips_the_weekend() {
        let w = [weekdays("07:30", "18:00")];
        let utc = TimeZone::UTC;
        // Friday evening: next is Monday 07:30.
        assert_eq!(
            next_change(&w, &utc, ts("2026-12-11T18:00:00Z")),
            Some((ts("2026-12-14T07:30:00Z"), Some(0)))
        );
        assert_eq!(next_change(&[], &utc, ts("2026-12-11T18:00:00Z")), None);
    }

    #[test]
    fn windows_follow_the_wall_clock_across_both_dst_changes() {
        let tz = berlin();
        let w = [Weekly::parse("w", &[], "07:30", "18:00").unwrap()];
        // Spring forward on Sunday 2026-03-29: CET (+1) before, CEST (+2) after.
        assert_eq!(
            next_change(&w, &tz, ts("2026-03-28T20:00:00Z")),
            Some((ts("2026-03-29T05:30:00Z"), Some(0)))
        );
        assert_eq!(active(&w, &tz, ts("2026-03-28T06:30:00Z")), Some(0));
        assert_eq!(active(&w, &tz, ts("2026-03-29T05:29:00Z")), None);
        assert_eq!(active(&w, &tz, ts("2026-03-29T15:59:00Z")), Some(0));
        assert_eq!(active(&w, &tz, ts("2026-03-29T16:00:00Z")), None);
        // Fall back on Sunday 2026-10-25: CEST (+2) before, CET (+1) after.
        assert_eq!(
            next_change(&w, &tz, ts("2026-10-24T20:00:00Z")),
            Some((ts("2026-10-25T06:30:00Z"), Some(0)))
        );
        assert_eq!(
            next_change(&w, &tz, ts("2026-10-25T06:30:00Z")),
            Some((ts("2026-10-25T17:00:00Z"), None))
        );
    }

    #[test]
    fn a_start_inside_the_skipped_hour_begins_when_the_clock_jumps() {
        let tz = berlin();
        // 02:30 does not exist on 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST (01:00Z).
        let w = [Weekly::parse("w", &[], "02:30", "04:00").unwrap()];
        assert_eq!(
            next_change(&w, &tz, ts("2026-03-29T00:00:00Z")),
            Some((ts("2026-03-29T01:00:00Z"), Some(0)))
        );
    }
}
