//! Learned boot times: what a machine's recent boots (`status.recentBootSeconds`) say about its
//! next one. `bootTimeout: auto` gives a machine a deadline about its own boot time instead of a
//! fixed one, `fsm inspect` and the Group status show the figures, and the Group warns when the
//! slowest member comes too close to the Cluster Autoscaler's provision time.
use jiff::SignedDuration;
use serde::Serialize;

/// Boots needed before `bootTimeout: auto` trusts the learned figure; fewer use the default.
pub const AUTO_MIN_SAMPLES: usize = 3;
/// The shortest deadline `auto` gives: a machine that booted fast a few times may still need
/// a disk check now and then.
pub const AUTO_FLOOR: SignedDuration = SignedDuration::from_mins(2);
/// The least margin `auto` adds to the learned p95 (otherwise half of it).
pub const AUTO_MARGIN_MIN: SignedDuration = SignedDuration::from_mins(1);

/// The median and 95th percentile of a machine's recent boots (nearest rank).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootStats {
    pub samples: usize,
    #[serde(with = "seconds")]
    pub p50: SignedDuration,
    #[serde(with = "seconds")]
    pub p95: SignedDuration,
}

impl BootStats {
    /// The figures of `seconds` (any order); `None` without a boot.
    pub fn of(seconds: &[u32]) -> Option<BootStats> {
        let mut sorted = seconds.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| {
            // Nearest rank: the smallest value with at least q of the samples at or below it.
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted
                .get(rank.saturating_sub(1))
                .map(|s| SignedDuration::from_secs(i64::from(*s)))
        };
        Some(BootStats {
            samples: sorted.len(),
            p50: at(0.5)?,
            p95: at(0.95)?,
        })
    }

    /// The deadline `bootTimeout: auto` sets: the p95 plus half of it (at least
    /// [`AUTO_MARGIN_MIN`]), never below [`AUTO_FLOOR`]; `None` before
    /// [`AUTO_MIN_SAMPLES`] boots.
    pub fn auto_timeout(&self) -> Option<SignedDuration> {
        if self.samples < AUTO_MIN_SAMPLES {
            return None;
        }
        let margin = (self.p95 / 2).max(AUTO_MARGIN_MIN);
        Some(self.p95.saturating_add(margin).max(AUTO_FLOOR))
    }

    /// `48s/65s`: p50/p95 in seconds, as `fsm inspect` prints them.
    pub fn short(&self) -> String {
        format!("{}s/{}s", self.p50.as_secs(), self.p95.as_secs())
    }
}

mod seconds {
    use jiff::SignedDuration;

    pub fn serialize<S: serde::Serializer>(d: &SignedDuration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }

    #[test]
    fn percentiles_are_nearest_rank_in_any_order() {
        let s = BootStats::of(&[90, 30, 60, 45, 50, 55, 40, 35, 65, 70]).unwrap();
        assert_eq!((s.samples, s.p50, s.p95), (10, secs(50), secs(90)));
        let one = BootStats::of(&[42]).unwrap();
        assert_eq!((one.p50, one.p95), (secs(42), secs(42)));
        assert_eq!(BootStats::of(&[]), None);
    }

    #[test]
    fn auto_waits_for_enough_boots() {
        assert_eq!(BootStats::of(&[60, 60]).unwrap().auto_timeout(), None);
        assert!(
            BootStats::of(&[60, 60, 60])
                .unwrap()
                .auto_timeout()
                .is_some()
        );
    }

    #[test]
    fn auto_adds_half_the_p95_with_a_least_margin_and_a_floor() {
        // p95 4m: 4m + 2m.
        let slow = BootStats::of(&[200, 220, 240]).unwrap();
        assert_eq!(slow.auto_timeout(), Some(secs(360)));
        // p95 90s: half is 45s, below the least margin of 1m.
        let medium = BootStats::of(&[80, 85, 90]).unwrap();
        assert_eq!(medium.auto_timeout(), Some(secs(150)));
        // p95 20s: 20s + 1m is under the 2m floor.
        let fast = BootStats::of(&[15, 18, 20]).unwrap();
        assert_eq!(fast.auto_timeout(), Some(AUTO_FLOOR));
    }

    #[test]
    fn short_form_reads_like_a_duration() {
        assert_eq!(BootStats::of(&[48, 65]).unwrap().short(), "48s/65s");
    }
}
