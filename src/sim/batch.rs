//! Several runs side by side: one scenario over N seeds, or several scenarios (files, or `--set`
//! variants of one) on the same seeds. Every figure is summarised by its median and its 10th and
//! 90th percentiles over the seeds, so a difference between settings can be told from luck.
use serde::Serialize;

use super::report::Report;
use super::scenario::Scenario;
use super::units::{HOUR, SECOND};
use super::{InvariantViolation, RunOptions};

/// One figure of a report, as a number.
struct Figure {
    name: &'static str,
    unit: &'static str,
    get: fn(&Report) -> f64,
}

fn secs(ms: u64) -> f64 {
    ms as f64 / SECOND as f64
}

fn baseline(r: &Report, name: &str) -> Option<f64> {
    r.baselines.iter().find(|b| b.name == name).map(|b| b.kwh)
}

const FIGURES: &[Figure] = &[
    Figure {
        name: "energy",
        unit: "kWh",
        get: |r| r.total.kwh,
    },
    Figure {
        name: "cost",
        unit: "currency",
        get: |r| r.total.cost,
    },
    Figure {
        name: "saved vs always on",
        unit: "%",
        get: |r| match baseline(r, "always on") {
            Some(b) if b > 0.0 => 100.0 * (b - r.total.kwh) / b,
            _ => r.total.savings_percent,
        },
    },
    Figure {
        name: "energy saved vs always on",
        unit: "kWh",
        get: |r| match baseline(r, "always on") {
            Some(b) => b - r.total.kwh,
            None => r.total.baseline_kwh - r.total.kwh,
        },
    },
    Figure {
        name: "machine-hours on",
        unit: "h",
        get: |r| r.total.machine_hours_on,
    },
    Figure {
        name: "boots",
        unit: "",
        get: |r| f64::from(r.total.boots),
    },
    Figure {
        name: "failed boots",
        unit: "",
        get: |r| f64::from(r.total.failed_boots),
    },
    Figure {
        name: "boots per machine per day",
        unit: "",
        get: |r| r.total.boots_per_machine_day,
    },
    Figure {
        name: "pod wait p50",
        unit: "s",
        get: |r| secs(r.wait.p50_ms),
    },
    Figure {
        name: "pod wait p95",
        unit: "s",
        get: |r| secs(r.wait.p95_ms),
    },
    Figure {
        name: "pod wait p99",
        unit: "s",
        get: |r| secs(r.wait.p99_ms),
    },
    Figure {
        name: "pod wait max",
        unit: "s",
        get: |r| secs(r.wait.max_ms),
    },
    Figure {
        name: "pods never placed",
        unit: "",
        get: |r| r.pods_never_placed as f64,
    },
    Figure {
        name: "pods evicted",
        unit: "",
        get: |r| r.eviction.evictions as f64,
    },
    Figure {
        name: "work lost to evictions",
        unit: "h",
        get: |r| r.eviction.lost_work_ms as f64 / HOUR as f64,
    },
    Figure {
        name: "re-wait after evictions",
        unit: "h",
        get: |r| r.eviction.rewait_ms as f64 / HOUR as f64,
    },
    Figure {
        name: "scale-ups",
        unit: "",
        get: |r| r.counters.scale_ups as f64,
    },
    Figure {
        name: "scale-downs",
        unit: "",
        get: |r| r.counters.scale_downs as f64,
    },
];

/// A figure over the seeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Spread {
    pub figure: String,
    pub unit: String,
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    /// One value per seed, in seed order.
    pub values: Vec<f64>,
}

/// One scenario over the seeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub scenario: String,
    pub seeds: Vec<u64>,
    pub figures: Vec<Spread>,
    /// Warnings and ignored fields of the first run (the same for every seed).
    pub warnings: Vec<String>,
    pub ignored: Vec<String>,
}

/// Nearest-rank percentile of sorted values.
fn rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let n = sorted.len();
    let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[i]
}

/// Summarises reports of one scenario (one per seed).
pub fn summarize(scenario: &str, reports: &[Report]) -> Summary {
    let figures = FIGURES
        .iter()
        .map(|f| {
            let values: Vec<f64> = reports.iter().map(f.get).collect();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            Spread {
                figure: f.name.to_owned(),
                unit: f.unit.to_owned(),
                median: rank(&sorted, 0.5),
                p10: rank(&sorted, 0.1),
                p90: rank(&sorted, 0.9),
                values,
            }
        })
        .collect();
    Summary {
        scenario: scenario.to_owned(),
        seeds: reports.iter().map(|r| r.seed).collect(),
        figures,
        warnings: reports
            .first()
            .map(|r| r.warnings.clone())
            .unwrap_or_default(),
        ignored: reports
            .first()
            .map(|r| r.ignored.clone())
            .unwrap_or_default(),
    }
}

/// Runs `scenario` once per seed (its own seed replaced) and summarises the runs.
pub fn run_seeds(
    scenario: &Scenario,
    seeds: &[u64],
    options: RunOptions,
) -> Result<Summary, InvariantViolation> {
    let mut reports = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        let mut s = scenario.clone();
        s.seed = seed;
        reports.push(super::run(&s, options, &mut |_, _| {})?);
    }
    Ok(summarize(&scenario.name, &reports))
}

/// `N` seeds starting at `first`.
pub fn seeds(first: u64, n: u32) -> Vec<u64> {
    (0..u64::from(n.max(1)))
        .map(|i| first.wrapping_add(i))
        .collect()
}

/// A `--set` assignment that cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--set {assignment:?}: {problem}")]
pub struct SetError {
    pub assignment: String,
    pub problem: String,
}

/// Applies `key=value[,key=value...]` assignments to scenario YAML text: each key is a field
/// path (`autoscaler.scaleDownUnneededTime`, `groups[1].spec.minSize`), each value YAML
/// (`5m`, `2`, `"on"`). Returns the changed YAML text, to parse as a scenario.
pub fn apply_set(text: &str, assignments: &str) -> Result<String, SetError> {
    let err = |a: &str, problem: String| SetError {
        assignment: a.to_owned(),
        problem,
    };
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| err(assignments, format!("the scenario: {e}")))?;
    for a in assignments
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let Some((key, value)) = a.split_once('=') else {
            return Err(err(
                a,
                "expected key=value, e.g. autoscaler.scanInterval=30s".into(),
            ));
        };
        let value: serde_yaml::Value = serde_yaml::from_str(value.trim())
            .map_err(|e| err(a, format!("the value is not YAML: {e}")))?;
        let slot = path_mut(&mut doc, key.trim()).map_err(|p| err(a, p))?;
        *slot = value;
    }
    serde_yaml::to_string(&doc).map_err(|e| err(assignments, e.to_string()))
}

/// The value at a field path, creating missing map keys (a list index must exist).
fn path_mut<'v>(
    mut v: &'v mut serde_yaml::Value,
    path: &str,
) -> Result<&'v mut serde_yaml::Value, String> {
    if path.is_empty() {
        return Err("empty key".into());
    }
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            if v.is_null() {
                *v = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
            }
            let Some(map) = v.as_mapping_mut() else {
                return Err(format!("{key:?} is inside a value that is not a map"));
            };
            v = map
                .entry(serde_yaml::Value::String(key.to_owned()))
                .or_insert(serde_yaml::Value::Null);
        }
        while let Some(stripped) = rest.strip_prefix('[') {
            let Some(end) = stripped.find(']') else {
                return Err(format!("unclosed [ in {part:?}"));
            };
            let Ok(i) = stripped[..end].parse::<usize>() else {
                return Err(format!("{:?} is not a list index", &stripped[..end]));
            };
            let Some(seq) = v.as_sequence_mut() else {
                return Err(format!("{part:?}: not a list"));
            };
            let len = seq.len();
            v = seq
                .get_mut(i)
                .ok_or_else(|| format!("{part:?}: index {i} but the list has {len} item(s)"))?;
            rest = &stripped[end + 1..];
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_changes_nested_fields_and_list_items() {
        let text = "autoscaler:\n  scanInterval: 10s\ngroups:\n- metadata: {name: a}\n  spec: {}\n";
        let out = apply_set(
            text,
            "autoscaler.scanInterval=30s, groups[0].spec.minSize=2",
        )
        .unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v["autoscaler"]["scanInterval"], "30s");
        assert_eq!(v["groups"][0]["spec"]["minSize"], 2);
        let e = apply_set(text, "groups[3].spec.minSize=2").unwrap_err();
        assert!(e.problem.contains("index 3"), "{e}");
        assert!(apply_set(text, "autoscaler").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(rank(&sorted, 0.5), 5.0);
        assert_eq!(rank(&sorted, 0.1), 1.0);
        assert_eq!(rank(&sorted, 0.9), 9.0);
        assert_eq!(rank(&[], 0.5), 0.0);
    }
}
