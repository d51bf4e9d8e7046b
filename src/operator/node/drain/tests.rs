use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodStatus;
use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use kube::api::ObjectMeta;
use kube::core::Status;
use kube::core::response::{StatusCause, StatusDetails};

use super::*;
use crate::testing::{NodeExt as _, node, taint};

// --- Fixture builders.

/// A running pod `ns/name` owned by a ReplicaSet.
fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("apps".to_owned()),
            owner_references: Some(vec![owner("ReplicaSet")]),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            ..PodStatus::default()
        }),
    }
}

fn owner(kind: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".to_owned(),
        kind: kind.to_owned(),
        name: "owner".to_owned(),
        uid: "uid-1".to_owned(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

trait PodBuilder {
    fn owned_by(self, kind: &str) -> Self;
    fn annotation(self, k: &str, v: &str) -> Self;
    fn phase(self, phase: &str) -> Self;
    fn terminating(self) -> Self;
}

impl PodBuilder for Pod {
    fn owned_by(mut self, kind: &str) -> Self {
        self.metadata.owner_references = Some(vec![owner(kind)]);
        self
    }
    fn annotation(mut self, k: &str, v: &str) -> Self {
        self.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(k.to_owned(), v.to_owned());
        self
    }
    fn phase(mut self, phase: &str) -> Self {
        self.status.get_or_insert_with(Default::default).phase = Some(phase.to_owned());
        self
    }
    fn terminating(mut self) -> Self {
        self.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        self
    }
}

fn names(pods: &[&Pod]) -> Vec<String> {
    pods.iter().map(|p| p.name_any()).collect()
}

fn refusal(code: u16, message: &str, causes: &[&str]) -> Status {
    Status {
        code,
        message: message.to_owned(),
        reason: "TooManyRequests".to_owned(),
        details: Some(StatusDetails {
            causes: causes
                .iter()
                .map(|m| StatusCause {
                    reason: DISRUPTION_BUDGET_CAUSE.to_owned(),
                    message: (*m).to_owned(),
                    field: String::new(),
                })
                .collect(),
            name: String::new(),
            group: String::new(),
            kind: "pods".to_owned(),
            uid: String::new(),
            retry_after_seconds: 0,
        }),
        ..Status::default()
    }
}

fn budget(selector: Option<LabelSelector>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some("web".to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            selector,
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

// --- Which pods keep a machine on.

#[test]
fn daemonset_mirror_and_finished_pods_do_not_block_power_off() {
    let pods = vec![
        pod("web-1"),
        pod("pending").phase("Pending"),
        pod("stopping").terminating(),
        pod("bare").owned_by("Job"),
        pod("ds").owned_by("DaemonSet"),
        pod("ds-marked").annotation(ca::DAEMONSET_POD, "true"),
        pod("static").annotation(MIRROR_POD_ANNOTATION, "abc123"),
        pod("done").phase("Succeeded"),
        pod("crashed").phase("Failed"),
    ];
    assert_eq!(
        names(&pods_blocking_power_off(&pods)),
        ["web-1", "pending", "stopping", "bare"]
    );
}

/// CA's `IsPodLongTerminating` (`utils/drain/drain.go`): deleted longer ago than its grace
/// period (30 s when unset) plus 30 s. Such a pod no longer keeps the machine on; one still within
/// that time does.
#[test]
fn long_terminating_pods_do_not_block_power_off() {
    let now = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let deleted = |name: &str, ago: i64, grace: Option<i64>| {
        let mut p = pod(name);
        p.metadata.deletion_timestamp = Some(Time(now - SignedDuration::from_secs(ago)));
        p.spec = grace.map(|g| k8s_openapi::api::core::v1::PodSpec {
            termination_grace_period_seconds: Some(g),
            ..Default::default()
        });
        p
    };
    let pods = [
        pod("running"),
        deleted("default-grace-recent", 59, None),
        deleted("default-grace-long", 61, None),
        deleted("long-grace", 200, Some(300)),
        deleted("short-grace-long", 41, Some(10)),
    ];
    assert_eq!(
        names(&pods_blocking_power_off_at(&pods, now)),
        ["running", "default-grace-recent", "long-grace"]
    );
    assert_eq!(pods_blocking_power_off(&pods).len(), 5);
}

#[test]
fn a_daemonset_owner_that_is_not_the_controller_does_not_count() {
    let mut p = pod("adopted");
    p.metadata.owner_references = Some(vec![OwnerReference {
        controller: None,
        ..owner("DaemonSet")
    }]);
    assert!(!is_daemonset_pod(&p));
}

#[test]
fn cas_deletion_taint_means_ca_started_the_power_off() {
    let tainted = |key: &str| node("n1").taint(taint(key, "1700000000", "NoSchedule"));
    assert!(is_ca_deleting(&tainted(ca::TO_BE_DELETED_TAINT).cached()));
    assert!(!is_ca_deleting(
        &tainted("DeletionCandidateOfClusterAutoscaler").cached()
    ));
    assert!(!is_ca_deleting(&KubeNode::default()));
}

// --- Reading refusals.

#[test]
fn budget_names_come_from_the_eviction_apis_causes() {
    let s = refusal(
        429,
        "Cannot evict pod as it would violate the pod's disruption budget.",
        &["The disruption budget web needs 2 healthy pods and has 2 currently"],
    );
    assert_eq!(budget_names(&s), ["web"]);
    assert_eq!(
        refusal_reason(&s),
        "The disruption budget web needs 2 healthy pods and has 2 currently"
    );
    let pending = refusal(
        429,
        "Cannot evict pod as it would violate the pod's disruption budget.",
        &["The disruption budget db is still being processed by the server."],
    );
    assert_eq!(budget_names(&pending), ["db"]);
}

#[test]
fn a_refusal_without_causes_reports_the_message() {
    let s = refusal(
        500,
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
        &[],
    );
    assert!(budget_names(&s).is_empty());
    assert!(has_budget_cause(&s));
    assert!(refusal_reason(&s).contains("more than one PodDisruptionBudget"));
    assert!(!has_budget_cause(&Status {
        code: 500,
        message: "etcd timeout".to_owned(),
        ..Status::default()
    }));
}

#[test]
fn budgets_select_pods_as_the_eviction_api_does() {
    let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let by_app = |app: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
        ..LabelSelector::default()
    };
    assert!(budget_selects(&budget(Some(by_app("web"))), &labels));
    assert!(!budget_selects(&budget(Some(by_app("db"))), &labels));
    // policy/v1: an empty selector selects every pod of the namespace, a missing one none.
    assert!(budget_selects(
        &budget(Some(LabelSelector::default())),
        &labels
    ));
    assert!(!budget_selects(&budget(None), &labels));
}

// --- What a timed-out drain says.

#[test]
fn a_timed_out_drain_names_the_pods_and_the_budgets() {
    let web = PodRef {
        namespace: "apps".to_owned(),
        name: "web-1".to_owned(),
    };
    let progress = DrainProgress {
        started: Timestamp::UNIX_EPOCH,
        deadline: Timestamp::UNIX_EPOCH,
        remaining: vec![web.clone()],
        evicted: Vec::new(),
        blocked_by: vec![Blocked {
            pod: web,
            budgets: vec!["web".to_owned()],
            reason: "The disruption budget web needs 1 healthy pods and has 1 currently".to_owned(),
        }],
    };
    let outcome = DrainOutcome::TimedOut(progress);
    assert!(outcome.pods_present());
    let text = outcome.to_string();
    assert!(text.contains("1 pod(s) remain (apps/web-1)"), "{text}");
    assert!(text.contains("by PodDisruptionBudget apps/web"), "{text}");
    assert!(text.contains("the machine stays on"), "{text}");
}

#[test]
fn only_a_drain_with_pods_left_keeps_pods_present() {
    assert!(!DrainOutcome::Drained.pods_present());
    assert!(!DrainOutcome::NodeGone.pods_present());
}
