//! Scenario value types: durations, CPU and memory quantities, arrival rates and random
//! distributions. Each deserialises from YAML with a message that says what was expected, so
//! serde_yaml's line/column and field path point at the mistake.
use std::fmt;

use rand::Rng;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::operator::api::{duration_problem, parse_duration};
use crate::quantity::parse_whole;

/// Milliseconds of virtual time. The simulator keeps integer milliseconds and converts to
/// `jiff::Timestamp` only where it calls the operator's cores.
pub type Millis = u64;

pub const SECOND: Millis = 1_000;
pub const MINUTE: Millis = 60 * SECOND;
pub const HOUR: Millis = 60 * MINUTE;
pub const DAY: Millis = 24 * HOUR;

/// Parses a duration in the project's one grammar ([`parse_duration`]: `90s`, `10m`, `1h30m`,
/// `168h`, as in the CRDs and on the command line) into milliseconds.
pub fn parse_millis(s: &str) -> Option<Millis> {
    let d = parse_duration("", s).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// Formats milliseconds compactly for tables and timelines (`1d2h`, `3m20s`, `850ms`).
pub fn format_millis(ms: Millis) -> String {
    if ms < SECOND {
        return format!("{ms}ms");
    }
    let secs = ms / SECOND;
    let (d, h, m, s) = (
        secs / 86_400,
        (secs % 86_400) / 3_600,
        (secs % 3_600) / 60,
        secs % 60,
    );
    let mut out = String::new();
    if d > 0 {
        out.push_str(&format!("{d}d"));
    }
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 && d == 0 {
        out.push_str(&format!("{m}m"));
    }
    if (s > 0 || out.is_empty()) && d == 0 && h == 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// A duration in a scenario file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Duration(pub Millis);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration like \"90s\", \"10m\", \"1h30m\" or \"168h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_millis(v)
                    .map(Duration)
                    .ok_or_else(|| E::custom(duration_problem(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration(0))
                } else {
                    Err(E::custom(format!(
                        "{v} has no unit; expected a duration like \"{v}s\" or \"{v}m\""
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "{v} has no unit; expected a duration like \"90s\""
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "{v} has no unit; expected a duration like \"90s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses a Kubernetes CPU quantity into millicores: `500m`, `2`, `1.5`.
pub fn parse_cpu(s: &str) -> Option<u64> {
    parse_whole(s, -3)
}

/// Parses a Kubernetes memory quantity into bytes: `512Mi`, `16Gi`, `1G`, `1000`.
pub fn parse_memory(s: &str) -> Option<u64> {
    parse_whole(s, 0)
}

/// Formats bytes as a short binary quantity (`1.5Gi`).
pub fn format_memory(bytes: u64) -> String {
    const GI: f64 = 1_073_741_824.0;
    const MI: f64 = 1_048_576.0;
    let b = bytes as f64;
    if b >= GI {
        format!("{}Gi", trim_float(b / GI))
    } else {
        format!("{}Mi", trim_float(b / MI))
    }
}

/// Formats millicores as cores (`1.5`) or millicores (`500m`).
pub fn format_cpu(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        format!("{}", milli / 1000)
    } else {
        format!("{milli}m")
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

macro_rules! quantity_type {
    ($name:ident, $parse:ident, $what:literal, $example:literal) => {
        #[doc = concat!("A ", $what, " quantity in a scenario file.")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str(concat!("a ", $what, " quantity like ", $example))
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        $parse(v).map($name).ok_or_else(|| {
                            E::custom(format!(
                                concat!(
                                    "{:?} is not a ",
                                    $what,
                                    " quantity; expected one like ",
                                    $example
                                ),
                                v
                            ))
                        })
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        self.visit_str(&v.to_string())
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$name, E> {
                        self.visit_str(&v.to_string())
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

quantity_type!(Cpu, parse_cpu, "CPU", "\"500m\" or \"2\"");
quantity_type!(Memory, parse_memory, "memory", "\"512Mi\" or \"16Gi\"");

/// Arrivals per millisecond, written `30/h`, `2/m`, `0.5/s` or `100/d`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Rate(pub f64);

impl Rate {
    pub fn per_hour(self) -> f64 {
        self.0 * HOUR as f64
    }
}

pub fn parse_rate(s: &str) -> Option<f64> {
    let (n, unit) = s.trim().split_once('/')?;
    let n: f64 = n.trim().parse().ok()?;
    let per = match unit.trim() {
        "s" => SECOND,
        "m" | "min" => MINUTE,
        "h" => HOUR,
        "d" => DAY,
        _ => return None,
    };
    (n.is_finite() && n >= 0.0).then(|| n / per as f64)
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_rate(&s).map(Rate).ok_or_else(|| {
            de::Error::custom(format!(
                "{s:?} is not a rate; expected arrivals per unit of time like \"30/h\", \"2/m\" or \"0.5/s\""
            ))
        })
    }
}

/// A probability in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Default)]
#[serde(transparent)]
pub struct Probability(pub f64);

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if (0.0..=1.0).contains(&v) {
            Ok(Probability(v))
        } else {
            Err(de::Error::custom(format!(
                "{v} is not a probability; expected a number between 0 and 1, e.g. 0.05"
            )))
        }
    }
}

/// A random duration: `90s` (fixed), `{uniform: {min: 60s, max: 120s}}` or
/// `{normal: {mean: 90s, stddev: 15s}}` (clamped to `[mean - 3 stddev, mean + 3 stddev]` and
/// at 0, so a boot never takes negative time).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Distribution {
    Fixed(Millis),
    Uniform {
        min: Millis,
        max: Millis,
    },
    Normal {
        mean: Millis,
        stddev: Millis,
    },
    /// Heavy-tailed: log-normal with this median and 99th percentile (not clamped: a boot now
    /// and then takes far longer than usual).
    LogNormal {
        median: Millis,
        p99: Millis,
    },
}

/// The standard normal's 99th percentile.
const Z99: f64 = 2.326_347_874;
/// The standard normal's 95th percentile.
const Z95: f64 = 1.644_853_627;

impl Distribution {
    /// A boot time as learned (`operator::machine::BootStats`): log-normal with median `p50`
    /// whose 95th percentile is `p95` (boot times have a long right tail: a disk check, an
    /// update); fixed when both are equal.
    pub fn from_p50_p95(p50: Millis, p95: Millis) -> Distribution {
        if p95 <= p50 || p50 == 0 {
            return Distribution::Fixed(p50.max(p95));
        }
        let sigma = (p95 as f64 / p50 as f64).ln() / Z95;
        Distribution::LogNormal {
            median: p50,
            p99: (p50 as f64 * (sigma * Z99).exp()).round() as Millis,
        }
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Millis {
        match *self {
            Distribution::Fixed(v) => v,
            Distribution::Uniform { min, max } => {
                if max <= min {
                    min
                } else {
                    rng.random_range(min..=max)
                }
            }
            Distribution::Normal { mean, stddev } => {
                // Box-Muller; one sample per call keeps the RNG stream simple to reason about.
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let z = z.clamp(-3.0, 3.0);
                let v = mean as f64 + z * stddev as f64;
                v.max(0.0).round() as Millis
            }
            Distribution::LogNormal { median, p99 } => {
                let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let sigma = log_sigma(median, p99);
                let v = median as f64 * (sigma * z).exp();
                // Ten days at most: a sample is a duration, not infinity.
                v.clamp(0.0, 10.0 * DAY as f64).round() as Millis
            }
        }
    }

    /// The mean, for reports and for the `fastestBoot` hints.
    pub fn mean(&self) -> Millis {
        match *self {
            Distribution::Fixed(v) => v,
            Distribution::Uniform { min, max } => min + (max.saturating_sub(min)) / 2,
            Distribution::Normal { mean, .. } => mean,
            Distribution::LogNormal { median, p99 } => {
                let sigma = log_sigma(median, p99);
                (median as f64 * (sigma * sigma / 2.0).exp()).round() as Millis
            }
        }
    }

    /// The longest value a sample can take.
    pub fn max(&self) -> Millis {
        match *self {
            Distribution::Fixed(v) => v,
            Distribution::Uniform { min, max } => max.max(min),
            Distribution::Normal { mean, stddev } => mean + 3 * stddev,
            Distribution::LogNormal { .. } => 10 * DAY,
        }
    }
}

fn log_sigma(median: Millis, p99: Millis) -> f64 {
    if median == 0 || p99 <= median {
        0.0
    } else {
        (p99 as f64 / median as f64).ln() / Z99
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UniformSpec {
    min: Duration,
    max: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NormalSpec {
    mean: Duration,
    stddev: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogNormalSpec {
    median: Duration,
    p99: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DistributionMap {
    fixed: Option<Duration>,
    uniform: Option<UniformSpec>,
    normal: Option<NormalSpec>,
    log_normal: Option<LogNormalSpec>,
}

impl<'de> Deserialize<'de> for Distribution {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Distribution;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration like \"90s\", or {uniform: {min: 60s, max: 120s}}, or {normal: {mean: 90s, stddev: 15s}}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Distribution, E> {
                parse_millis(v).map(Distribution::Fixed).ok_or_else(|| {
                    E::custom(format!(
                        "{v:?} is not a duration; expected a duration like \"90s\", or {{uniform: {{min: 60s, max: 120s}}}}, or {{normal: {{mean: 90s, stddev: 15s}}}}"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Distribution, E> {
                Duration::deserialize(de::value::U64Deserializer::<E>::new(v))
                    .map(|d| Distribution::Fixed(d.0))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Distribution, A::Error> {
                let m = DistributionMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (m.fixed, m.uniform, m.normal, m.log_normal) {
                    (Some(f), None, None, None) => Ok(Distribution::Fixed(f.0)),
                    (None, None, None, Some(l)) => {
                        if l.p99.0 < l.median.0 {
                            Err(de::Error::custom(format!(
                                "logNormal: p99 ({}) is shorter than the median ({}); swap them",
                                format_millis(l.p99.0),
                                format_millis(l.median.0)
                            )))
                        } else {
                            Ok(Distribution::LogNormal {
                                median: l.median.0,
                                p99: l.p99.0,
                            })
                        }
                    }
                    (None, Some(u), None, None) => {
                        if u.min > u.max {
                            Err(de::Error::custom(format!(
                                "uniform: min ({}) is larger than max ({}); swap them",
                                format_millis(u.min.0),
                                format_millis(u.max.0)
                            )))
                        } else {
                            Ok(Distribution::Uniform {
                                min: u.min.0,
                                max: u.max.0,
                            })
                        }
                    }
                    (None, None, Some(n), None) => Ok(Distribution::Normal {
                        mean: n.mean.0,
                        stddev: n.stddev.0,
                    }),
                    _ => Err(de::Error::custom(
                        "give exactly one of fixed, uniform, normal or logNormal",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_crd_grammar() {
        assert_eq!(parse_millis("90s"), Some(90 * SECOND));
        assert_eq!(parse_millis("168h"), Some(7 * DAY));
        assert_eq!(parse_millis("60h"), Some(2 * DAY + 12 * HOUR));
        // The CRDs' grammar: no day unit.
        assert_eq!(parse_millis("7d"), None);
        assert_eq!(parse_millis("1h30m"), Some(90 * MINUTE));
        assert_eq!(parse_millis("0"), Some(0));
        assert_eq!(parse_millis("ninety"), None);
        assert_eq!(parse_millis("90"), None);
        assert_eq!(parse_millis(""), None);
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu("500m"), Some(500));
        assert_eq!(parse_cpu("2"), Some(2000));
        assert_eq!(parse_cpu("1.5"), Some(1500));
        assert_eq!(parse_cpu("x"), None);
        assert_eq!(parse_memory("1Gi"), Some(1 << 30));
        assert_eq!(parse_memory("512Mi"), Some(512 << 20));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("12ab"), None);
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("60/h").map(|r| r * HOUR as f64), Some(60.0));
        assert_eq!(parse_rate("1/s").map(|r| r * SECOND as f64), Some(1.0));
        assert_eq!(parse_rate("60"), None);
    }

    #[test]
    fn distributions_parse_and_sample_in_range() {
        use rand::SeedableRng;
        let u: Distribution = serde_yaml::from_str("{uniform: {min: 60s, max: 120s}}").unwrap();
        let n: Distribution = serde_yaml::from_str("{normal: {mean: 90s, stddev: 10s}}").unwrap();
        let f: Distribution = serde_yaml::from_str("\"45s\"").unwrap();
        assert_eq!(f, Distribution::Fixed(45 * SECOND));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        for _ in 0..1000 {
            let v = u.sample(&mut rng);
            assert!((60 * SECOND..=120 * SECOND).contains(&v));
            let v = n.sample(&mut rng);
            assert!((60 * SECOND..=120 * SECOND).contains(&v));
        }
        let bad = serde_yaml::from_str::<Distribution>("{uniform: {min: 2m, max: 1m}}");
        assert!(bad.unwrap_err().to_string().contains("swap"));
        let bad = serde_yaml::from_str::<Distribution>("{gamma: 1}");
        assert!(bad.is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(format_millis(90 * SECOND), "1m30s");
        assert_eq!(format_millis(2 * DAY + 3 * HOUR), "2d3h");
        assert_eq!(format_millis(500), "500ms");
        assert_eq!(format_memory(3 << 29), "1.5Gi");
        assert_eq!(format_cpu(1500), "1500m");
    }

    /// `{logNormal: {median, p99}}`: half the samples under the median, one in a hundred over
    /// the p99, and a tail well beyond it (heavy-tailed boots).
    #[test]
    fn log_normal_boot_times_have_their_median_p99_and_a_tail() {
        use rand::SeedableRng;
        let d: Distribution = serde_yaml::from_str("{logNormal: {median: 90s, p99: 6m}}")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            d,
            Distribution::LogNormal {
                median: 90 * SECOND,
                p99: 6 * MINUTE
            }
        );
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut v: Vec<Millis> = (0..20_000).map(|_| d.sample(&mut rng)).collect();
        v.sort_unstable();
        let median = v[10_000] as f64;
        let p99 = v[19_800] as f64;
        assert!(
            (median / (90.0 * 1000.0) - 1.0).abs() < 0.05,
            "median {median}"
        );
        assert!((p99 / (360.0 * 1000.0) - 1.0).abs() < 0.15, "p99 {p99}");
        assert!(v[19_999] as f64 > 1.5 * p99, "no tail: max {}", v[19_999]);
        assert!(d.mean() > 90 * SECOND, "the mean is above the median");
        let bad: Result<Distribution, _> =
            serde_yaml::from_str("{logNormal: {median: 6m, p99: 90s}}");
        assert!(bad.is_err_and(|e| e.to_string().contains("swap them")));
    }
}
