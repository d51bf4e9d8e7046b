//! Status conditions, upserted by type (the lists are `x-kubernetes-list-type: map` keyed by
//! `type`; appending a second entry of a type makes the API server refuse the write).
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types the operator writes.
pub const CONDITION_READY: &str = "Ready";
/// A power operation failed or timed out (see `lastError`).
pub const CONDITION_POWER_FAILED: &str = "PowerFailed";
/// The spec cannot be acted on (no driver, bad duration, ...): a person must fix it.
pub const CONDITION_INVALID_SPEC: &str = "InvalidSpec";
/// The registered Node's providerID and `kubernetesNodeName` disagree.
pub const CONDITION_IDENTITY_MISMATCH: &str = "IdentityMismatch";
/// Group: sets CA options, which make CA <= 1.36 use a `MaxNodeStartupTime` of 0 (its
/// externalgrpc client copies only fields 1-10 of the answer).
pub const CONDITION_OPTIONS_WARNING: &str = "AutoscalingOptionsWarning";
/// Group: no capacity is known for a new node, so CA cannot scale it up from zero.
pub const CONDITION_NO_TEMPLATE: &str = "ScaleFromZeroUnavailable";

pub const STATUS_TRUE: &str = "True";
pub const STATUS_FALSE: &str = "False";
pub const STATUS_UNKNOWN: &str = "Unknown";

/// Builds a condition. `reason` must be CamelCase (the API's rule); `now` becomes the
/// transition time unless [`upsert_condition`] keeps an older one.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { STATUS_TRUE } else { STATUS_FALSE }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: Time(now),
    }
}

/// Inserts or replaces the condition of `new.type_`. The transition time only moves when the
/// status changes. Returns whether anything changed (so callers can skip a no-op write).
pub fn upsert_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            if *old == new {
                return false;
            }
            *old = new;
            true
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// The condition of `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Removes the condition of `type_`; returns whether it was there.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn upsert_replaces_by_type_and_keeps_transition_time() {
        let mut cs = Vec::new();
        assert!(upsert_condition(
            &mut cs,
            condition(CONDITION_READY, false, "Booting", "a", Some(1), t(10))
        ));
        assert!(upsert_condition(
            &mut cs,
            condition(
                CONDITION_POWER_FAILED,
                true,
                "JobFailed",
                "x",
                Some(1),
                t(11)
            )
        ));
        // Same status, new message: replaced in place, transition time kept.
        assert!(upsert_condition(
            &mut cs,
            condition(CONDITION_READY, false, "Booting", "b", Some(2), t(20))
        ));
        assert_eq!(cs.len(), 2);
        let ready = find_condition(&cs, CONDITION_READY).unwrap();
        assert_eq!(
            (ready.message.as_str(), ready.last_transition_time.0),
            ("b", t(10))
        );
        // Identical: no change reported.
        assert!(!upsert_condition(
            &mut cs,
            condition(CONDITION_READY, false, "Booting", "b", Some(2), t(30))
        ));
        // Status flips: transition time moves.
        assert!(upsert_condition(
            &mut cs,
            condition(CONDITION_READY, true, "NodeReady", "up", Some(2), t(40))
        ));
        assert_eq!(
            find_condition(&cs, CONDITION_READY)
                .unwrap()
                .last_transition_time
                .0,
            t(40)
        );
        assert_eq!(cs.iter().filter(|c| c.type_ == CONDITION_READY).count(), 1);
        assert!(remove_condition(&mut cs, CONDITION_POWER_FAILED));
        assert!(!remove_condition(&mut cs, CONDITION_POWER_FAILED));
    }
}
