//! Workloads: when pods arrive, what they request and how long they run.
//!
//! Arrivals are generated up front from the seed (a sorted list), which keeps the event queue
//! small and makes a run's workload independent of the decisions the autoscaler takes.
use rand::Rng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use super::units::{
    Cpu, DAY, Distribution, Duration, Memory, Millis, Rate, parse_cpu, parse_memory, parse_millis,
};

/// One stream of pods in a scenario (`workload:` list item).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    /// Shown in the timeline and JSON output.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant: Option<ConstantArrivals>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diurnal: Option<DiurnalArrivals>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<BurstArrivals>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceArrivals>,
    /// Long-running replicas (a Deployment): pods that run until the count goes down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicasArrivals>,
    /// Pods arrive only within these hours (e.g. office hours); the arrivals `constant`,
    /// `diurnal` or `burst` generate outside them are left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hours: Option<HoursSpec>,
    /// The pods' namespace; `kube-system` pods block scale-down (CA's
    /// `--skip-nodes-with-system-pods`) unless they have a PDB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// What owns the pods: `replicaSet` (default for replicas), `job` (default otherwise),
    /// `statefulSet`, `custom` (a controller CA does not know) or `none` (bare pods). CA does not
    /// drain nodes with `none` or `custom` pods in its defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<Controller>,
    /// The pods mount emptyDir or hostPath volumes (CA's `--skip-nodes-with-local-storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_storage: Option<bool>,
    /// The annotation `cluster-autoscaler.kubernetes.io/safe-to-evict`: `false` blocks
    /// scale-down of the pods' nodes, `true` lets CA evict them whatever else holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_to_evict: Option<bool>,
    /// A PodDisruptionBudget over the workload's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pdb: Option<PdbSpec>,
    /// CPU request of each pod (not used by `trace`, whose rows carry their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory request of each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// How long each pod runs once it is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Distribution>,
}

/// A weekly window of a workload: from `from` to `to` (`HH:MM`, wall clock of `timeZone`,
/// default UTC) on each of `days` (default every day), as a Group's schedule window.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HoursSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<crate::operator::api::Day>,
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// A workload's hours, parsed by the operator's calendar.
#[derive(Clone, Debug)]
pub struct Hours {
    pub window: crate::operator::calendar::Weekly,
    pub tz: jiff::tz::TimeZone,
}

/// A Poisson process with a fixed rate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConstantArrivals {
    pub rate: Rate,
}

/// A Poisson process whose rate follows a cosine over the day (UTC): `peakRate` at `peakAt`,
/// `troughRate` twelve hours away; on Saturdays and Sundays scaled by `weekendFactor`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiurnalArrivals {
    pub peak_rate: Rate,
    pub trough_rate: Rate,
    /// Time of day of the peak, as an offset from midnight UTC (`14h`).
    pub peak_at: Duration,
    #[serde(default = "one")]
    pub weekend_factor: f64,
}

fn one() -> f64 {
    1.0
}

/// `count` pods at `at` (an offset from the start), repeated `every` if given, spread evenly
/// over `spread`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BurstArrivals {
    pub at: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Duration>,
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Duration>,
}

/// A replica count over time: `count` from the start, or `schedule` steps (`at` offsets from
/// the start, repeated `every` if given).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicasArrivals {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<ReplicaStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Duration>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplicaStep {
    pub at: Duration,
    pub count: u32,
}

/// What owns a workload's pods, as CA's drain rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Controller {
    ReplicaSet,
    StatefulSet,
    Job,
    Custom,
    None,
}

/// `maxUnavailable` of a PodDisruptionBudget selecting the workload's pods.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PdbSpec {
    pub max_unavailable: u32,
}

/// The pod properties CA's drain rules read (`simulator/drainability/rules`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainTraits {
    pub kube_system: bool,
    pub controller: Controller,
    pub local_storage: bool,
    pub safe_to_evict: Option<bool>,
    pub pdb_max_unavailable: Option<u32>,
}

impl Default for DrainTraits {
    fn default() -> Self {
        DrainTraits {
            kube_system: false,
            controller: Controller::Job,
            local_storage: false,
            safe_to_evict: None,
            pdb_max_unavailable: None,
        }
    }
}

/// A pod runs until deleted (replicas).
pub const FOREVER: Millis = Millis::MAX;

/// Pods from a CSV trace with the columns `time,cpu,memory,duration` (time is an offset from
/// the start, e.g. `90s` or a number of seconds). Either a `file` (relative to the scenario
/// file; read by the command, the simulator itself does no I/O) or the rows `inline`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceArrivals {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
}

/// A pod as the simulator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodSpec {
    pub arrival: Millis,
    pub cpu: u64,
    pub memory: u64,
    pub duration: Millis,
    pub workload: u16,
}

/// A trace row that does not parse, with its 1-based line in the CSV text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct TraceError {
    pub line: usize,
    pub problem: String,
}

/// Parses trace CSV text. A first line starting with `time` is a header. Blank lines and lines
/// starting with `#` are skipped. Fields are plain: no quoting (none of the four columns needs
/// a comma).
pub fn parse_trace(text: &str, workload: u16) -> Result<Vec<PodSpec>, TraceError> {
    let mut pods = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let row = raw.trim();
        if row.is_empty() || row.starts_with('#') || (i == 0 && row.starts_with("time")) {
            continue;
        }
        let err = |problem: String| TraceError { line, problem };
        // Columns are split at every comma; a quoted field (which could hold one) would be
        // split wrongly or keep its quotes, so it is refused with the fix.
        if row.contains('"') {
            return Err(err(
                "quoted fields are not supported; write the row without quotes, e.g. 0,500m,1Gi,60"
                    .to_owned(),
            ));
        }
        let cols: Vec<&str> = row.split(',').map(str::trim).collect();
        if cols.len() != 4 {
            return Err(err(format!(
                "expected 4 columns time,cpu,memory,duration, found {}",
                cols.len()
            )));
        }
        let time = parse_offset(cols[0]).ok_or_else(|| {
            err(format!(
                "time {:?} is not an offset like \"90s\" or a number of seconds",
                cols[0]
            ))
        })?;
        let cpu = parse_cpu(cols[1])
            .ok_or_else(|| err(format!("cpu {:?} is not a quantity like \"500m\"", cols[1])))?;
        let memory = parse_memory(cols[2]).ok_or_else(|| {
            err(format!(
                "memory {:?} is not a quantity like \"512Mi\"",
                cols[2]
            ))
        })?;
        let duration = parse_offset(cols[3]).ok_or_else(|| {
            err(format!(
                "duration {:?} is not a duration like \"10m\" or a number of seconds",
                cols[3]
            ))
        })?;
        pods.push(PodSpec {
            arrival: time,
            cpu,
            memory,
            duration,
            workload,
        });
    }
    Ok(pods)
}

fn parse_offset(s: &str) -> Option<Millis> {
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).round() as Millis);
    }
    parse_millis(s)
}

/// Pod template of a generated (non-trace) workload.
#[derive(Clone, Copy, Debug)]
pub struct PodTemplate {
    pub cpu: u64,
    pub memory: u64,
    pub duration: Distribution,
}

/// How a workload's arrivals are generated, resolved from [`WorkloadSpec`] by the scenario.
#[derive(Clone, Debug)]
pub enum Arrivals {
    Constant {
        per_ms: f64,
    },
    Diurnal {
        peak: f64,
        trough: f64,
        peak_at: Millis,
        weekend_factor: f64,
    },
    Burst {
        at: Millis,
        every: Option<Millis>,
        count: u32,
        spread: Millis,
    },
    /// Rows already parsed.
    Trace(Vec<PodSpec>),
    /// Replica count steps `(at, count)`, repeated `every`.
    Replicas {
        steps: Vec<(Millis, u32)>,
        every: Option<Millis>,
    },
}

/// A validated workload.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub arrivals: Arrivals,
    /// `None` for traces.
    pub template: Option<PodTemplate>,
    pub drain: DrainTraits,
    /// Arrivals only within these hours.
    pub hours: Option<Hours>,
}

/// The replica count changes of every `replicas` workload over `[0, duration)`:
/// `(at, workload, count)`, sorted.
pub fn replica_steps(workloads: &[Workload], duration: Millis) -> Vec<(Millis, u16, u32)> {
    let mut out = Vec::new();
    for (index, w) in workloads.iter().enumerate() {
        let Arrivals::Replicas { steps, every } = &w.arrivals else {
            continue;
        };
        let workload = u16::try_from(index).unwrap_or(u16::MAX);
        let mut base = 0;
        loop {
            for &(at, count) in steps {
                if base + at < duration {
                    out.push((base + at, workload, count));
                }
            }
            match every {
                Some(e) if *e > 0 && base + e < duration => base += e,
                _ => break,
            }
        }
    }
    out.sort_by_key(|s| (s.0, s.1));
    out
}

/// Generates every pod of every workload over `[0, duration)`, sorted by arrival.
/// `start_of_day` is the scenario start's offset from midnight UTC and `start_weekday` its day
/// of the week (Monday = 1), so diurnal patterns line up with the calendar.
/// `start` is the wall-clock instant of virtual time 0 (for a workload's `hours`).
pub fn generate(
    workloads: &[Workload],
    duration: Millis,
    start: jiff::Timestamp,
    rng: &mut SmallRng,
) -> Vec<PodSpec> {
    let start_ms = start.as_millisecond();
    let start_of_day = u64::try_from(start_ms.rem_euclid(DAY as i64)).unwrap_or(0);
    let start_weekday = start
        .to_zoned(jiff::tz::TimeZone::UTC)
        .weekday()
        .to_monday_one_offset();
    let mut pods = Vec::new();
    for (index, w) in workloads.iter().enumerate() {
        let workload = u16::try_from(index).unwrap_or(u16::MAX);
        let mut push = |arrival: Millis, rng: &mut SmallRng| {
            if let Some(h) = &w.hours {
                let at = i64::try_from(arrival).ok().and_then(|a| {
                    jiff::Timestamp::from_millisecond(start_ms.saturating_add(a)).ok()
                });
                if at.is_none_or(|at| !h.window.contains(&h.tz, at)) {
                    return;
                }
            }
            if let Some(t) = &w.template {
                pods.push(PodSpec {
                    arrival,
                    cpu: t.cpu,
                    memory: t.memory,
                    duration: t.duration.sample(rng).clamp(1, FOREVER - 1),
                    workload,
                });
            }
        };
        match &w.arrivals {
            Arrivals::Constant { per_ms } => {
                let mut t = 0.0;
                if *per_ms > 0.0 {
                    loop {
                        t += exponential(rng, *per_ms);
                        if t >= duration as f64 {
                            break;
                        }
                        push(t as Millis, rng);
                    }
                }
            }
            Arrivals::Diurnal {
                peak,
                trough,
                peak_at,
                weekend_factor,
            } => {
                // Thinning: candidates at the highest rate, each kept with rate(t) / max.
                let max = peak.max(*trough) * weekend_factor.max(1.0);
                let mut t = 0.0;
                if max > 0.0 {
                    loop {
                        t += exponential(rng, max);
                        if t >= duration as f64 {
                            break;
                        }
                        let at = t as Millis;
                        let rate = diurnal_rate(
                            at,
                            *peak,
                            *trough,
                            *peak_at,
                            *weekend_factor,
                            start_of_day,
                            start_weekday,
                        );
                        let keep: f64 = rng.random();
                        if keep * max < rate {
                            push(at, rng);
                        }
                    }
                }
            }
            Arrivals::Burst {
                at,
                every,
                count,
                spread,
            } => {
                let mut when = *at;
                while when < duration {
                    for i in 0..*count {
                        let offset = if *count > 1 {
                            spread * u64::from(i) / u64::from(*count)
                        } else {
                            0
                        };
                        if when + offset < duration {
                            push(when + offset, rng);
                        }
                    }
                    match every {
                        Some(e) if *e > 0 => when += e,
                        _ => break,
                    }
                }
            }
            Arrivals::Replicas { .. } => {}
            Arrivals::Trace(rows) => {
                pods.extend(
                    rows.iter()
                        .filter(|p| p.arrival < duration)
                        .map(|p| PodSpec { workload, ..*p }),
                );
            }
        }
    }
    // Stable, so equal arrival times keep workload order: deterministic.
    pods.sort_by_key(|p| p.arrival);
    pods
}

/// The diurnal rate (per ms) at virtual time `t`.
pub fn diurnal_rate(
    t: Millis,
    peak: f64,
    trough: f64,
    peak_at: Millis,
    weekend_factor: f64,
    start_of_day: Millis,
    start_weekday: i8,
) -> f64 {
    let since_midnight = start_of_day + t;
    let tod = (since_midnight % DAY) as f64;
    let phase = (tod - peak_at as f64) / DAY as f64 * std::f64::consts::TAU;
    let rate = trough + (peak - trough) * 0.5 * (1.0 + phase.cos());
    let weekday = (i64::from(start_weekday) - 1 + (since_midnight / DAY) as i64).rem_euclid(7);
    if weekday >= 5 {
        rate * weekend_factor
    } else {
        rate
    }
}

fn exponential(rng: &mut SmallRng, rate: f64) -> f64 {
    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    -u.ln() / rate
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::units::{HOUR, MINUTE, SECOND};
    use rand::SeedableRng;

    /// Monday 2026-01-05 00:00 UTC.
    fn monday() -> jiff::Timestamp {
        crate::sim::scenario::default_start()
    }

    fn template() -> Option<PodTemplate> {
        Some(PodTemplate {
            cpu: 500,
            memory: 1 << 30,
            duration: Distribution::Fixed(10 * MINUTE),
        })
    }

    #[test]
    fn constant_rate_is_roughly_the_rate() {
        let w = Workload {
            name: "c".into(),
            arrivals: Arrivals::Constant {
                per_ms: 60.0 / HOUR as f64,
            },
            template: template(),
            drain: DrainTraits::default(),
            hours: None,
        };
        let mut rng = SmallRng::seed_from_u64(7);
        let pods = generate(&[w], 100 * HOUR, monday(), &mut rng);
        assert!((5_500..6_500).contains(&pods.len()), "{}", pods.len());
        assert!(pods.windows(2).all(|p| p[0].arrival <= p[1].arrival));
    }

    /// `hours`: arrivals outside the window (wall clock of its zone) are left out.
    #[test]
    fn arrivals_keep_to_their_hours() {
        use crate::operator::api::Day;
        let tz = jiff::tz::TimeZone::get("Europe/Berlin").expect("tzdb");
        let window = crate::operator::calendar::Weekly::parse(
            "hours",
            &[Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri],
            "08:00",
            "18:00",
        )
        .expect("window");
        let w = Workload {
            name: "office".into(),
            arrivals: Arrivals::Constant {
                per_ms: 60.0 / HOUR as f64,
            },
            template: template(),
            drain: DrainTraits::default(),
            hours: Some(Hours { window, tz }),
        };
        let mut rng = SmallRng::seed_from_u64(7);
        // A week from Monday: 5 days of 10 hours at 60/h.
        let pods = generate(&[w], 7 * DAY, monday(), &mut rng);
        assert!((2_700..3_300).contains(&pods.len()), "{}", pods.len());
        // Berlin is UTC+1 in January: 07:00 to 17:00 UTC, Monday to Friday.
        for p in &pods {
            let tod = p.arrival % DAY;
            assert!((7 * HOUR..17 * HOUR).contains(&tod), "{}", p.arrival);
            assert!(p.arrival < 5 * DAY, "{}", p.arrival);
        }
    }

    #[test]
    fn bursts_are_exact() {
        let w = Workload {
            name: "b".into(),
            arrivals: Arrivals::Burst {
                at: HOUR,
                every: Some(24 * HOUR),
                count: 10,
                spread: 10 * SECOND,
            },
            template: template(),
            drain: DrainTraits::default(),
            hours: None,
        };
        let mut rng = SmallRng::seed_from_u64(7);
        let pods = generate(&[w], 48 * HOUR, monday(), &mut rng);
        assert_eq!(pods.len(), 20);
        assert_eq!(pods[0].arrival, HOUR);
        assert_eq!(pods[9].arrival, HOUR + 9 * SECOND);
        assert_eq!(pods[10].arrival, 25 * HOUR);
    }

    #[test]
    fn diurnal_peaks_at_peak_time_and_weekends_scale() {
        let peak = 2.0;
        let trough = 0.0;
        assert!((diurnal_rate(14 * HOUR, peak, trough, 14 * HOUR, 0.5, 0, 1) - 2.0).abs() < 1e-9);
        assert!(diurnal_rate(2 * HOUR, peak, trough, 14 * HOUR, 0.5, 0, 1) < 1e-9);
        // Saturday (start Monday + 5 days) at the peak: half.
        let sat = 5 * DAY + 14 * HOUR;
        assert!((diurnal_rate(sat, peak, trough, 14 * HOUR, 0.5, 0, 1) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn trace_rows_and_errors_with_lines() {
        let pods = parse_trace(
            "time,cpu,memory,duration\n0,500m,1Gi,60\n90s,2,512Mi,10m\n",
            3,
        )
        .unwrap();
        assert_eq!(pods.len(), 2);
        assert_eq!(pods[1].arrival, 90 * SECOND);
        assert_eq!(pods[1].cpu, 2000);
        assert_eq!(pods[1].duration, 10 * MINUTE);
        assert_eq!(pods[1].workload, 3);
        let err = parse_trace(
            "time,cpu,memory,duration\n0,500m,1Gi,60\n5,lots,1Gi,60\n",
            0,
        )
        .unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.problem.contains("cpu"));
    }

    /// No CSV quoting: a row with a `"` is an error naming its line and the fix, not a
    /// misread column.
    #[test]
    fn quoted_trace_fields_are_refused_with_the_fix() {
        let err = parse_trace(
            "time,cpu,memory,duration\n0,500m,1Gi,60\n5,\"500m\",1Gi,60\n",
            0,
        )
        .unwrap_err();
        assert_eq!(err.line, 3);
        assert!(
            err.problem.contains("quoted fields are not supported"),
            "{err}"
        );
        assert!(err.problem.contains("without quotes"), "{err}");
    }
}
