//! How `status.energy` advances: intervals accrued by phase, split at midnight UTC into the
//! per-day buckets, with the baseline (the machine always on at idle) and the cost of both;
//! when to write; a gap while the operator was not running.
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::model::{PowerPhase, baseline_draw, draw};
use super::tariff::{Tariff, cost, watt_hours};
use crate::operator::api::{ENERGY_DAYS_MAX, EnergyCounters, EnergyDay, EnergySource, Watts};

/// One interval at one draw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    pub from: Timestamp,
    pub to: Timestamp,
    pub phase: PowerPhase,
    /// The draw (`None`: unknown; time is counted, energy is not).
    pub watts: Option<f64>,
    /// The draw is a meter's.
    pub metered: bool,
    /// The baseline's draw (`None`: unknown).
    pub baseline_watts: Option<f64>,
    /// Accounted across a gap while the operator was not running.
    pub estimated: bool,
}

const DAY_SECONDS: i64 = 86_400;

/// The counters after `span`, costed at `tariff` (`None`: no cost). The span is split at
/// midnight UTC into the day buckets (newest last, at most [`ENERGY_DAYS_MAX`]). Seconds are
/// whole seconds between the floors of the ends, so accruing `[a, b]` then `[b, c]` counts
/// the same as `[a, c]`.
pub fn accrue(c: &EnergyCounters, span: &Span, tariff: Option<&Tariff>) -> EnergyCounters {
    let mut c = c.clone();
    c.since = c.since.or(Some(span.from));
    if span.to > span.from {
        let mut t = span.from;
        while t < span.to {
            let midnight = (t.as_second().div_euclid(DAY_SECONDS) + 1) * DAY_SECONDS;
            let end = Timestamp::from_second(midnight).map_or(span.to, |m| m.min(span.to));
            accrue_piece(&mut c, span, t, end, tariff);
            t = end;
        }
    }
    if c.until.is_none_or(|u| u < span.to) {
        c.until = Some(span.to);
    }
    c
}

/// One part of a span within one UTC day.
fn accrue_piece(
    c: &mut EnergyCounters,
    span: &Span,
    from: Timestamp,
    to: Timestamp,
    tariff: Option<&Tariff>,
) {
    let secs = u64::try_from(to.as_second() - from.as_second()).unwrap_or(0);
    let wh = span.watts.map_or(0.0, |w| watt_hours(from, to, w));
    let metered = if span.metered { wh } else { 0.0 };
    let baseline = span.baseline_watts.map_or(0.0, |w| watt_hours(from, to, w));
    let (cost_used, cost_baseline) = tariff.map_or((0.0, 0.0), |t| {
        (
            span.watts.map_or(0.0, |w| cost(t, from, to, w)),
            span.baseline_watts.map_or(0.0, |w| cost(t, from, to, w)),
        )
    });
    let (on, off) = if span.phase.powered() {
        (secs, 0)
    } else {
        (0, secs)
    };
    c.on_seconds += on;
    c.off_seconds += off;
    c.watt_hours += wh;
    c.metered_watt_hours += metered;
    c.baseline_watt_hours += baseline;
    c.cost += cost_used;
    c.baseline_cost += cost_baseline;
    if span.estimated {
        c.estimated_seconds += secs;
    }
    let by_phase = &mut c.watt_hours_by_phase;
    *match span.phase {
        PowerPhase::Off => &mut by_phase.off,
        PowerPhase::Booting => &mut by_phase.booting,
        PowerPhase::On => &mut by_phase.on,
        PowerPhase::ShuttingDown => &mut by_phase.shutting_down,
    } += wh;
    let Some(day) = day_of(&mut c.days, from) else {
        return;
    };
    day.on_seconds += on;
    day.off_seconds += off;
    day.watt_hours += wh;
    day.metered_watt_hours += metered;
    day.baseline_watt_hours += baseline;
    day.cost += cost_used;
    day.baseline_cost += cost_baseline;
}

/// The bucket of `at`'s UTC date, added (and the oldest dropped past [`ENERGY_DAYS_MAX`]) when
/// it is new; `None` for a day older than every one kept.
fn day_of(days: &mut Vec<EnergyDay>, at: Timestamp) -> Option<&mut EnergyDay> {
    let date = TimeZone::UTC.to_datetime(at).date().to_string();
    if days.iter().all(|d| d.date != date) {
        days.push(EnergyDay {
            date: date.clone(),
            ..EnergyDay::default()
        });
        // Kept in date order: an interval never goes back in time, but a clock might.
        days.sort_by(|a, b| a.date.cmp(&b.date));
        let excess = days.len().saturating_sub(ENERGY_DAYS_MAX);
        days.drain(..excess);
    }
    days.iter_mut().rev().find(|d| d.date == date)
}

/// Counts `n` completed power-ons at `at` (in the total and `at`'s day).
pub fn count_boots(c: &mut EnergyCounters, n: u64, at: Timestamp) {
    if n == 0 {
        return;
    }
    c.boots += n;
    if let Some(day) = day_of(&mut c.days, at) {
        day.boots += n;
    }
}

/// Whether the counters are due a write for their own sake: the machine is powered and the
/// last accounting is `interval` old (or there is none yet). An unpowered machine never is:
/// its counters advance at the next write made for another reason.
pub fn needs_write(
    stored: Option<&EnergyCounters>,
    phase: PowerPhase,
    interval: SignedDuration,
    now: Timestamp,
) -> bool {
    phase.powered()
        && stored
            .and_then(|c| c.until)
            .is_none_or(|until| now.duration_since(until) >= interval)
}

/// When the counters of a machine in `phase` are next due (`None` while unpowered).
pub fn next_write(
    stored: Option<&EnergyCounters>,
    phase: PowerPhase,
    interval: SignedDuration,
) -> Option<Timestamp> {
    if !phase.powered() {
        return None;
    }
    stored.and_then(|c| c.until).map(|u| u + interval)
}

/// A meter's part in an accounting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metered {
    /// Average watts since the last accounting (see [`super::metered_watts`]).
    pub average: f64,
    /// The current reading's watts.
    pub current: f64,
}

/// What one accounting step knows.
#[derive(Clone, Copy, Debug)]
pub struct Accounting<'a> {
    /// The phase since the last accounting (the stored one).
    pub before: PowerPhase,
    /// The phase from now on.
    pub after: PowerPhase,
    pub watts: Option<&'a Watts>,
    /// CPU requested / allocatable, the load figure while on.
    pub cpu_fraction: f64,
    /// A current meter reading, if any (else the model).
    pub metered: Option<Metered>,
    pub tariff: Option<&'a Tariff>,
    /// When this operator process started: an interval before it was not watched.
    pub started: Timestamp,
    pub write_interval: SignedDuration,
    /// Power-ons completed at `now`.
    pub boots: u64,
    pub now: Timestamp,
}

/// Phases found within this long of the operator's start are taken as what the machine was
/// doing when it started (the other side of a gap).
const START_SLACK: SignedDuration = SignedDuration::from_mins(1);

/// The counters after accounting up to `a.now`. Without stored counters, accounting starts
/// now. An interval since the last accounting that began before the operator started and is
/// longer than twice the write interval is a gap: it is accounted from the phase on both sides
/// (the same phase: its draw; different phases: the first half at the phase before, the second
/// at the phase after), from the model, and its seconds are added to `estimatedSeconds`. A
/// machine off on both sides of a gap was not written for its own sake either way, so its gap
/// is not an estimate. The rest is accounted at the phase before, with the meter's average
/// when there is one.
pub fn account(stored: Option<&EnergyCounters>, a: &Accounting<'_>) -> EnergyCounters {
    let baseline_watts = baseline_draw(a.watts);
    let model = |phase: PowerPhase| draw(a.watts, phase, a.cpu_fraction);
    let span = |from, to, phase, estimated| Span {
        from,
        to,
        phase,
        watts: model(phase),
        metered: false,
        baseline_watts,
        estimated,
    };
    let mut c = stored.cloned().unwrap_or_default();
    match c.until {
        None => {
            c.since = Some(a.now);
            c.until = Some(a.now);
        }
        Some(mut from) if a.now > from => {
            let mut phase = a.before;
            // The phase on the far side of the gap: the one found now only when the operator
            // just started (a later reconcile finding a change saw it happen after the start).
            let other = if a.now <= a.started + START_SLACK {
                a.after
            } else {
                a.before
            };
            let gap = from < a.started
                && a.now.duration_since(from) > a.write_interval * 2
                && !(a.before == PowerPhase::Off && other == PowerPhase::Off);
            if gap {
                let end = a.started.min(a.now);
                if other == a.before {
                    c = accrue(&c, &span(from, end, a.before, true), a.tariff);
                } else {
                    let mid = from + end.duration_since(from) / 2;
                    c = accrue(&c, &span(from, mid, a.before, true), a.tariff);
                    c = accrue(&c, &span(mid, end, other, true), a.tariff);
                }
                from = end;
                phase = other;
            }
            let mut rest = span(from, a.now, phase, false);
            if let Some(m) = a.metered {
                rest.watts = Some(m.average);
                rest.metered = true;
            }
            c = accrue(&c, &rest, a.tariff);
        }
        Some(_) => {}
    }
    count_boots(&mut c, a.boots, a.now);
    match a.metered {
        Some(m) => {
            c.watts = Some(m.current);
            c.source = Some(EnergySource::Meter);
        }
        None => {
            c.watts = model(a.after);
            c.source = Some(if c.watts.is_some() {
                EnergySource::Model
            } else {
                EnergySource::Unknown
            });
        }
    }
    // Without a tariff now, the cost counted so far keeps the currency it was counted in.
    if let Some(t) = a.tariff {
        c.currency = Some(t.currency.clone());
    }
    c.price_per_kwh = a.tariff.map(|t| t.price_at(a.now).0);
    c
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn w() -> Watts {
        Watts {
            idle: Some(20.0),
            busy: Some(60.0),
            standby: Some(2.0),
            boot: Some(40.0),
            ..Watts::default()
        }
    }

    fn step<'a>(w: Option<&'a Watts>, before: PowerPhase, now: Timestamp) -> Accounting<'a> {
        Accounting {
            before,
            after: before,
            watts: w,
            cpu_fraction: 0.0,
            metered: None,
            tariff: None,
            started: ts("2026-01-01T00:00:00Z"),
            write_interval: SignedDuration::from_mins(15),
            boots: 0,
            now,
        }
    }

    fn start(at: &str) -> EnergyCounters {
        EnergyCounters {
            since: Some(ts(at)),
            until: Some(ts(at)),
            ..EnergyCounters::default()
        }
    }

    #[test]
    fn an_interval_across_midnight_utc_is_split_into_two_days() {
        let watts = w();
        let c = account(
            Some(&start("2026-01-05T23:00:00Z")),
            &step(Some(&watts), PowerPhase::On, ts("2026-01-06T02:00:00Z")),
        );
        assert_eq!(c.on_seconds, 3 * 3600);
        assert!((c.watt_hours - 60.0).abs() < 1e-9);
        let days: Vec<_> = c
            .days
            .iter()
            .map(|d| (d.date.as_str(), d.on_seconds, d.watt_hours.round()))
            .collect();
        assert_eq!(
            days,
            [("2026-01-05", 3600, 20.0), ("2026-01-06", 7200, 40.0)]
        );
        assert!((c.baseline_watt_hours - 60.0).abs() < 1e-9);
        assert_eq!(c.source, Some(EnergySource::Model));
        assert_eq!(c.watts, Some(20.0));
        assert_eq!(c.currency, None, "no tariff: no currency");
        assert_eq!(c.cost, 0.0);
    }

    #[test]
    fn only_the_newest_days_are_kept() {
        let watts = w();
        let c = account(
            Some(&start("2026-01-01T12:00:00Z")),
            &Accounting {
                started: ts("2025-12-01T00:00:00Z"),
                ..step(Some(&watts), PowerPhase::Off, ts("2026-01-21T12:00:00Z"))
            },
        );
        assert_eq!(c.days.len(), ENERGY_DAYS_MAX);
        assert_eq!(c.days.last().map(|d| d.date.as_str()), Some("2026-01-21"));
        assert_eq!(c.days[0].date, "2026-01-08");
        assert_eq!(c.off_seconds, 20 * 86_400, "the totals keep everything");
    }

    #[test]
    fn a_machine_without_a_model_counts_time_and_boots_not_energy() {
        let c = account(
            Some(&start("2026-01-05T10:00:00Z")),
            &Accounting {
                boots: 1,
                ..step(None, PowerPhase::Booting, ts("2026-01-05T10:05:00Z"))
            },
        );
        assert_eq!((c.on_seconds, c.boots), (300, 1));
        assert_eq!((c.watt_hours, c.baseline_watt_hours), (0.0, 0.0));
        assert_eq!((c.source, c.watts), (Some(EnergySource::Unknown), None));
        assert_eq!(c.days[0].boots, 1);
    }

    #[test]
    fn a_meter_average_is_used_and_counted_as_metered() {
        let watts = w();
        let c = account(
            Some(&start("2026-01-05T10:00:00Z")),
            &Accounting {
                metered: Some(Metered {
                    average: 33.0,
                    current: 35.0,
                }),
                ..step(Some(&watts), PowerPhase::On, ts("2026-01-05T12:00:00Z"))
            },
        );
        assert!((c.watt_hours - 66.0).abs() < 1e-9);
        assert!((c.metered_watt_hours - 66.0).abs() < 1e-9);
        assert_eq!((c.source, c.watts), (Some(EnergySource::Meter), Some(35.0)));
    }

    #[test]
    fn cost_and_savings_use_the_tariff() {
        let (watts, t) = (w(), Tariff::flat(0.5, "CHF"));
        let c = account(
            Some(&start("2026-01-05T00:00:00Z")),
            &Accounting {
                tariff: Some(&t),
                ..step(Some(&watts), PowerPhase::Off, ts("2026-01-05T10:00:00Z"))
            },
        );
        // 10 h at 2 W standby against 10 h at 20 W idle.
        assert!((c.cost - 0.010).abs() < 1e-12, "{}", c.cost);
        assert!((c.baseline_cost - 0.100).abs() < 1e-12);
        assert_eq!(c.currency.as_deref(), Some("CHF"));
    }

    #[test]
    fn a_gap_before_the_operator_started_is_estimated_from_both_sides() {
        let watts = w();
        let stored = start("2026-01-05T00:00:00Z");
        let started = ts("2026-01-05T10:00:00Z");
        // On before, found on after: the whole gap at the on draw.
        let same = account(
            Some(&stored),
            &Accounting {
                started,
                ..step(Some(&watts), PowerPhase::On, ts("2026-01-05T10:00:10Z"))
            },
        );
        assert_eq!(same.estimated_seconds, 10 * 3600);
        assert_eq!(same.on_seconds, 10 * 3600 + 10);
        // On before, found off at the start: half each.
        let split = account(
            Some(&stored),
            &Accounting {
                started,
                after: PowerPhase::Off,
                ..step(Some(&watts), PowerPhase::On, ts("2026-01-05T10:00:10Z"))
            },
        );
        assert_eq!(split.estimated_seconds, 10 * 3600);
        assert_eq!(split.on_seconds, 5 * 3600);
        assert_eq!(split.off_seconds, 5 * 3600 + 10);
        assert!((split.watt_hours - (5.0 * 20.0 + 5.0 * 2.0 + 2.0 * 10.0 / 3600.0)).abs() < 1e-9);
    }

    #[test]
    fn an_off_machine_not_written_while_the_operator_ran_is_not_an_estimate() {
        let watts = w();
        // Off since yesterday with no write (nothing changed), the operator running all along.
        let c = account(
            Some(&start("2026-01-05T00:00:00Z")),
            &Accounting {
                after: PowerPhase::Booting,
                started: ts("2026-01-04T00:00:00Z"),
                ..step(Some(&watts), PowerPhase::Off, ts("2026-01-06T00:00:00Z"))
            },
        );
        assert_eq!(c.estimated_seconds, 0);
        assert_eq!(c.off_seconds, 86_400);
        // Off on both sides of a restart: not an estimate either.
        let c = account(
            Some(&start("2026-01-05T00:00:00Z")),
            &Accounting {
                after: PowerPhase::Booting,
                started: ts("2026-01-05T20:00:00Z"),
                ..step(Some(&watts), PowerPhase::Off, ts("2026-01-06T00:00:00Z"))
            },
        );
        assert_eq!((c.estimated_seconds, c.off_seconds), (0, 86_400));
        assert_eq!(c.watts, Some(40.0), "the draw from now on: booting");
    }

    #[test]
    fn an_off_machine_is_never_due_a_write_and_an_on_one_is_after_the_interval() {
        let i = SignedDuration::from_mins(15);
        let c = start("2026-01-05T00:00:00Z");
        let late = ts("2026-01-09T00:00:00Z");
        assert!(!needs_write(Some(&c), PowerPhase::Off, i, late));
        assert!(!needs_write(None, PowerPhase::Off, i, late));
        assert!(!needs_write(
            Some(&c),
            PowerPhase::On,
            i,
            ts("2026-01-05T00:14:59Z")
        ));
        assert!(needs_write(
            Some(&c),
            PowerPhase::On,
            i,
            ts("2026-01-05T00:15:00Z")
        ));
        assert!(needs_write(None, PowerPhase::Booting, i, late));
        assert_eq!(next_write(Some(&c), PowerPhase::Off, i), None);
        assert_eq!(
            next_write(Some(&c), PowerPhase::On, i),
            Some(ts("2026-01-05T00:15:00Z"))
        );
    }

    #[test]
    fn accounting_without_stored_counters_starts_now() {
        let watts = w();
        let now = ts("2026-01-05T00:00:00Z");
        let c = account(None, &step(Some(&watts), PowerPhase::On, now));
        assert_eq!((c.since, c.until), (Some(now), Some(now)));
        assert_eq!((c.on_seconds, c.watt_hours), (0, 0.0));
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    proptest! {
        #[test]
        fn accruing_in_two_parts_equals_accruing_once(
            a in 1_700_000_000i64..1_800_000_000,
            ab in 0i64..300_000, bc in 0i64..300_000,
            watts in 0.0f64..2000.0, phase in 0usize..4, flat in any::<bool>(),
        ) {
            let phase = [PowerPhase::Off, PowerPhase::Booting, PowerPhase::On, PowerPhase::ShuttingDown][phase];
            let t = |s: i64| Timestamp::from_second(s).unwrap() + SignedDuration::from_millis(250);
            let tariff = if flat {
                Tariff::flat(0.3, "EUR")
            } else {
                Tariff {
                    windows: vec![super::super::Window {
                        from: SignedDuration::from_hours(22),
                        to: SignedDuration::from_hours(6),
                        price_per_kwh: 0.1,
                    }],
                    ..Tariff::flat(0.3, "EUR")
                }
            };
            let span = |from, to| Span {
                from, to, phase, watts: Some(watts), metered: false,
                baseline_watts: Some(watts / 2.0), estimated: false,
            };
            let start = EnergyCounters::default();
            let (ta, tb, tc) = (t(a), t(a + ab), t(a + ab + bc));
            let two = accrue(&accrue(&start, &span(ta, tb), Some(&tariff)), &span(tb, tc), Some(&tariff));
            let one = accrue(&start, &span(ta, tc), Some(&tariff));
            prop_assert_eq!(two.on_seconds, one.on_seconds);
            prop_assert_eq!(two.off_seconds, one.off_seconds);
            prop_assert!(close(two.watt_hours, one.watt_hours));
            prop_assert!(close(two.cost, one.cost), "{} vs {}", two.cost, one.cost);
            prop_assert!(close(two.baseline_cost, one.baseline_cost));
            prop_assert_eq!(two.days.len(), one.days.len());
            for (x, y) in two.days.iter().zip(&one.days) {
                prop_assert_eq!(&x.date, &y.date);
                prop_assert_eq!(x.on_seconds + x.off_seconds, y.on_seconds + y.off_seconds);
                prop_assert!(close(x.watt_hours, y.watt_hours));
            }
        }
    }
}
