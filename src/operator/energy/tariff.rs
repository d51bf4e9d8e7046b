//! What electricity costs over an interval: a flat price, or time-of-use windows by the wall
//! clock of a time zone. The zone is resolved by the caller (a name to a `TimeZone` reads the
//! system's tz database), so this stays pure.
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::operator::api::{Electricity, parse_duration};

/// A resolved tariff.
#[derive(Clone, Debug, PartialEq)]
pub struct Tariff {
    /// Price of a kWh outside every window.
    pub price_per_kwh: f64,
    /// Windows with their own price; where windows overlap, the last one listed holds.
    pub windows: Vec<Window>,
    /// The zone whose wall clock the windows follow.
    pub time_zone: TimeZone,
    /// Currency of the prices (`EUR` when the tariff names none).
    pub currency: String,
}

/// `[from, to)` as wall-clock time since midnight; `from > to` wraps past midnight,
/// `from == to` is empty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub from: SignedDuration,
    pub to: SignedDuration,
    pub price_per_kwh: f64,
}

const DAY: SignedDuration = SignedDuration::from_hours(24);

impl Window {
    fn contains(&self, tod: SignedDuration) -> bool {
        if self.from <= self.to {
            self.from <= tod && tod < self.to
        } else {
            tod >= self.from || tod < self.to
        }
    }
}

impl Tariff {
    /// One price at all times, in UTC.
    pub fn flat(price_per_kwh: f64, currency: &str) -> Tariff {
        Tariff {
            price_per_kwh,
            windows: Vec::new(),
            time_zone: TimeZone::UTC,
            currency: currency.to_owned(),
        }
    }

    /// The tariff `e` describes, with its `timeZone` already resolved to `time_zone`. Fails
    /// when a window's time does not parse or lies outside `0s..=24h`.
    pub fn from_api(e: &Electricity, time_zone: TimeZone) -> Result<Tariff, String> {
        let mut windows = Vec::with_capacity(e.time_of_use.len());
        for (i, w) in e.time_of_use.iter().enumerate() {
            let at = |field: &str, v: &str| -> Result<SignedDuration, String> {
                let d = parse_duration(&format!("timeOfUse[{i}].{field}"), v)
                    .map_err(|e| e.to_string())?;
                if d.is_negative() || d > DAY {
                    return Err(format!(
                        "timeOfUse[{i}].{field}: {v} is not a time of day (0s to 24h)"
                    ));
                }
                Ok(d)
            };
            windows.push(Window {
                from: at("from", &w.from)?,
                to: at("to", &w.to)?,
                price_per_kwh: w.price_per_kwh,
            });
        }
        Ok(Tariff {
            price_per_kwh: e.price_per_kwh,
            windows,
            time_zone,
            currency: e.currency.clone().unwrap_or_else(|| "EUR".to_owned()),
        })
    }

    /// The price at `at` and until when it holds (the next window edge or midnight, by the
    /// zone's wall clock).
    pub fn price_at(&self, at: Timestamp) -> (f64, Timestamp) {
        let local = self.time_zone.to_datetime(at);
        let date = local.date();
        let tod = local.time().duration_since(Time::midnight());
        let mut price = self.price_per_kwh;
        let mut next = DAY;
        for w in &self.windows {
            if w.contains(tod) {
                price = w.price_per_kwh;
            }
            for edge in [w.from, w.to] {
                if edge > tod && edge < next {
                    next = edge;
                }
            }
        }
        let until = wall_clock(&self.time_zone, date, next)
            .filter(|t| *t > at)
            // A wall-clock time skipped or repeated by a DST change: move on by a minute.
            .unwrap_or(at + SignedDuration::from_mins(1));
        (price, until)
    }
}

/// The instant of wall-clock time `tod` after midnight on `date` in `tz` (a time in a DST gap
/// resolves to the one after it).
fn wall_clock(tz: &TimeZone, date: Date, tod: SignedDuration) -> Option<Timestamp> {
    let dt: DateTime = date.to_datetime(Time::midnight()).checked_add(tod).ok()?;
    tz.to_ambiguous_timestamp(dt).compatible().ok()
}

/// Watt-hours of `watts` over `[from, to)` (0 when `to <= from`).
pub fn watt_hours(from: Timestamp, to: Timestamp, watts: f64) -> f64 {
    let secs = to.duration_since(from).as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    watts * secs / 3600.0
}

/// Cost of drawing `watts` over `[from, to)` at `tariff`, each part at the price in force.
pub fn cost(tariff: &Tariff, from: Timestamp, to: Timestamp, watts: f64) -> f64 {
    if to <= from || watts == 0.0 {
        return 0.0;
    }
    if tariff.windows.is_empty() {
        return watt_hours(from, to, watts) / 1000.0 * tariff.price_per_kwh;
    }
    let mut total = 0.0;
    let mut t = from;
    while t < to {
        let (price, until) = tariff.price_at(t);
        let end = until.min(to);
        total += watt_hours(t, end, watts) / 1000.0 * price;
        t = end;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::api::TimeOfUse;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn night_rate(tz: TimeZone) -> Tariff {
        let e = Electricity {
            price_per_kwh: 0.40,
            currency: None,
            time_of_use: vec![TimeOfUse {
                from: "22h".into(),
                to: "6h".into(),
                price_per_kwh: 0.10,
            }],
            time_zone: None,
        };
        Tariff::from_api(&e, tz).unwrap()
    }

    #[test]
    fn a_flat_price_costs_kwh_times_price() {
        let t = Tariff::flat(0.30, "EUR");
        let c = cost(
            &t,
            ts("2026-01-05T00:00:00Z"),
            ts("2026-01-05T10:00:00Z"),
            100.0,
        );
        assert!((c - 0.30).abs() < 1e-12, "{c}");
        assert_eq!(
            cost(
                &t,
                ts("2026-01-05T10:00:00Z"),
                ts("2026-01-05T00:00:00Z"),
                100.0
            ),
            0.0
        );
    }

    #[test]
    fn an_interval_crossing_a_window_edge_pays_each_side_its_price() {
        let t = night_rate(TimeZone::UTC);
        // 20:00 to 24:00: two hours at 0.40, two at 0.10, 1 kW.
        let c = cost(
            &t,
            ts("2026-01-05T20:00:00Z"),
            ts("2026-01-06T00:00:00Z"),
            1000.0,
        );
        assert!((c - (0.80 + 0.20)).abs() < 1e-9, "{c}");
        // Across midnight into the wrapped window's morning part and out of it at 06:00.
        let c = cost(
            &t,
            ts("2026-01-05T23:00:00Z"),
            ts("2026-01-06T07:00:00Z"),
            1000.0,
        );
        assert!((c - (7.0 * 0.10 + 0.40)).abs() < 1e-9, "{c}");
    }

    #[test]
    fn windows_follow_the_zones_wall_clock_across_a_dst_change() {
        // Central European time without the tz database: CET, CEST from the last Sunday of
        // March 02:00 to the last Sunday of October 03:00.
        let tz = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let t = night_rate(tz);
        // 2026-03-29 is the spring-forward day: local 22:00 CEST is 20:00 UTC, and the night
        // window (22:00-06:00 local) before it ran from 21:00 UTC (CET) to 04:00 UTC (CEST):
        // 7 hours, not 8.
        let day = (ts("2026-03-28T12:00:00Z"), ts("2026-03-29T12:00:00Z"));
        let c = cost(&t, day.0, day.1, 1000.0);
        let expected = 7.0 * 0.10 + 17.0 * 0.40;
        assert!((c - expected).abs() < 1e-9, "{c} vs {expected}");
        assert_eq!(t.price_at(ts("2026-03-29T03:30:00Z")).0, 0.10, "05:30 CEST");
        assert_eq!(t.price_at(ts("2026-03-29T04:30:00Z")).0, 0.40, "06:30 CEST");
        assert_eq!(t.price_at(ts("2026-03-28T20:30:00Z")).0, 0.40, "21:30 CET");
    }

    #[test]
    fn a_window_time_that_is_not_a_time_of_day_is_refused() {
        let e = Electricity {
            price_per_kwh: 0.3,
            time_of_use: vec![TimeOfUse {
                from: "25h".into(),
                to: "1h".into(),
                price_per_kwh: 0.1,
            }],
            ..Electricity::default()
        };
        assert!(
            Tariff::from_api(&e, TimeZone::UTC)
                .unwrap_err()
                .contains("timeOfUse[0].from")
        );
    }
}
