//! Status conditions, upserted by type (the lists are `x-kubernetes-list-type: map` keyed by
//! `type`; appending a second entry of a type makes the API server refuse the write).
use compact_str::CompactString;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

/// A status condition: `metav1.Condition`'s JSON and schema, with its strings kept inline
/// when short. Every cached Node CR carries five of them, and their type, status, reason and
/// usual message ("", "phase Off") all fit in 24 bytes, so with plain `String`s they were about
/// 16 heap blocks per machine (BENCHMARKS.md, "The memory target met").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub last_transition_time: Time,
    #[serde(default)]
    pub message: CompactString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub reason: CompactString,
    #[serde(default)]
    pub status: CompactString,
    #[serde(rename = "type", default)]
    pub type_: CompactString,
}

/// The schema is `metav1.Condition`'s, so the CRDs stay as they were.
impl schemars::JsonSchema for Condition {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as schemars::JsonSchema>::schema_name()
    }

    fn schema_id() -> std::borrow::Cow<'static, str> {
        <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as schemars::JsonSchema>::schema_id()
    }

    fn inline_schema() -> bool {
        <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as schemars::JsonSchema>::inline_schema()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as schemars::JsonSchema>::json_schema(generator)
    }
}

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
    message: impl Into<CompactString>,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { STATUS_TRUE } else { STATUS_FALSE }.into(),
        reason: reason.into(),
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

    /// Same JSON as `metav1.Condition`, both ways: the API server and kubectl see no change.
    #[test]
    fn conditions_read_and_write_the_json_of_metav1_condition() {
        let ours = condition(CONDITION_READY, false, "Off", "phase Off", Some(3), t(60));
        let theirs = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".to_owned(),
            status: "False".to_owned(),
            reason: "Off".to_owned(),
            message: "phase Off".to_owned(),
            observed_generation: Some(3),
            last_transition_time: Time(t(60)),
        };
        let json = serde_json::to_string(&theirs).unwrap();
        assert_eq!(serde_json::to_string(&ours).unwrap(), json);
        assert_eq!(serde_json::from_str::<Condition>(&json).unwrap(), ours);
    }

    /// What an idle machine's cached status holds: every string of its conditions fits inline,
    /// so the five conditions take no heap block beyond their vector.
    #[test]
    fn an_off_machines_conditions_keep_their_strings_inline() {
        let cached: Vec<Condition> = serde_json::from_value(serde_json::json!([
            {"type": "Draining", "status": "False", "reason": "NotDraining", "message": "",
             "lastTransitionTime": "2026-11-30T04:46:16Z", "observedGeneration": 1},
            {"type": "IdentityMismatch", "status": "False", "reason": "Matches", "message": "",
             "lastTransitionTime": "2026-11-30T04:46:16Z", "observedGeneration": 1},
            {"type": "Ready", "status": "False", "reason": "Off", "message": "phase Off",
             "lastTransitionTime": "2026-11-30T04:46:16Z", "observedGeneration": 1},
            {"type": "PowerFailed", "status": "False", "reason": "NoFailure", "message": "",
             "lastTransitionTime": "2026-11-30T04:46:16Z", "observedGeneration": 1},
            {"type": "InvalidSpec", "status": "False", "reason": "Valid", "message": "",
             "lastTransitionTime": "2026-11-30T04:46:16Z", "observedGeneration": 1},
        ]))
        .unwrap();
        for c in &cached {
            for s in [&c.type_, &c.status, &c.reason, &c.message] {
                assert!(
                    !s.is_heap_allocated(),
                    "{s:?} of {} is on the heap",
                    c.type_
                );
            }
        }
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
