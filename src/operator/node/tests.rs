use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeStatus, NodeSystemInfo, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::*;
use crate::operator::interned::Strings;
use crate::testing::{NodeExt as _, node, seen_node, taint};

/// What the API server makes of `change` (a JSON merge patch): the Node after the write.
fn applied(node: &Node, change: &NodeChange) -> Node {
    let mut n = node.clone();
    let labels = n.metadata.labels.get_or_insert_with(Default::default);
    for (k, v) in &change.labels {
        match v {
            Some(v) => labels.insert(k.clone(), v.clone()),
            None => labels.remove(k),
        };
    }
    let annotations = n.metadata.annotations.get_or_insert_with(Default::default);
    for (k, v) in &change.annotations {
        match v {
            Some(v) => annotations.insert(k.clone(), v.clone()),
            None => annotations.remove(k),
        };
    }
    if n.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.is_empty())
    {
        n.metadata.annotations = None;
    }
    let spec = n.spec.get_or_insert_with(Default::default);
    if let Some(id) = &change.provider_id {
        spec.provider_id = Some(id.clone());
    }
    if let Some(t) = &change.taints {
        spec.taints = (!t.is_empty()).then(|| t.clone());
    }
    if let Some(u) = change.unschedulable {
        spec.unschedulable = u.then_some(true);
    }
    n
}

fn labels(n: &Node) -> BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

fn annotations(n: &Node) -> BTreeMap<String, String> {
    n.metadata.annotations.clone().unwrap_or_default()
}

fn taints(n: &Node) -> Vec<Taint> {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn unschedulable(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

fn registered(m: &Machine, n: &Node, disabled: bool) -> Node {
    applied(n, &registration(m, &n.cached(), disabled).change)
}

// --- providerID.

#[test]
fn empty_provider_id_is_set_to_the_expected_one() {
    let r = registration(&Machine::test("m1").build(), &node("n1").cached(), false);
    assert_eq!(
        r.provider_id,
        ProviderIdCheck::Set("homelab://lab/m1".to_owned())
    );
    assert_eq!(r.change.provider_id.as_deref(), Some("homelab://lab/m1"));
}

#[test]
fn a_declared_provider_id_is_what_gets_set() {
    let m = Machine::test("m1").provider_id("bmc://rack/3").build();
    let r = registration(&m, &node("n1").cached(), false);
    assert_eq!(r.change.provider_id.as_deref(), Some("bmc://rack/3"));
}

#[test]
fn a_matching_provider_id_is_left_alone() {
    let n = node("n1").provider_id("homelab://lab/m1");
    let r = registration(&Machine::test("m1").build(), &n.cached(), false);
    assert_eq!(r.provider_id, ProviderIdCheck::Matches);
    assert_eq!(r.change.provider_id, None);
}

#[test]
fn a_distribution_provider_id_is_learned_when_none_is_on_record() {
    let n = node("n1").provider_id("k3s://n1");
    let r = registration(&Machine::test("m1").build(), &n.cached(), false);
    assert_eq!(r.provider_id, ProviderIdCheck::Learn("k3s://n1".to_owned()));
    assert_eq!(r.change.provider_id, None);
}

#[test]
fn a_different_provider_id_is_a_mismatch_and_never_overwritten() {
    let n = node("n1").provider_id("k3s://n1");
    let declared = Machine::test("m1").provider_id("homelab://lab/m1").build();
    let recorded = Machine::test("m1")
        .node_snapshot(NodeSnapshot {
            provider_id: Some("homelab://lab/m1".to_owned()),
            ..seen_node("n1")
        })
        .build();
    for m in [declared, recorded] {
        let r = registration(&m, &n.cached(), false);
        assert_eq!(
            r.provider_id,
            ProviderIdCheck::Mismatch {
                node: "k3s://n1".to_owned(),
                expected: "homelab://lab/m1".to_owned()
            }
        );
        assert_eq!(r.change.provider_id, None);
    }
}

// --- Restoring labels and taints.

#[test]
fn registration_restores_last_seen_labels_and_taints_but_not_transient_ones() {
    let snap = NodeSnapshot {
        labels: Strings::from([("gpu", "true"), ("kubernetes.io/hostname", "old-name")]),
        taints: vec![
            taint("dedicated", "ml", "NoSchedule"),
            taint(ca::TO_BE_DELETED_TAINT, "1700000000", "NoSchedule"),
            taint(
                ca::DELETION_CANDIDATE_TAINT,
                "1700000000",
                "PreferNoSchedule",
            ),
            taint("node.kubernetes.io/unreachable", "", "NoExecute"),
        ],
        ..seen_node("n1")
    };
    let m = Machine::test("m1").node_snapshot(snap).build();
    let after = registered(&m, &node("n1"), false);

    assert_eq!(labels(&after).get("gpu").map(String::as_str), Some("true"));
    assert_eq!(
        labels(&after)
            .get("kubernetes.io/hostname")
            .map(String::as_str),
        Some("n1"),
        "the kubelet's own label keeps the kubelet's value"
    );
    assert_eq!(taints(&after), vec![taint("dedicated", "ml", "NoSchedule")]);
    let a = annotations(&after);
    assert_eq!(
        a.get(OWNED_LABELS).map(String::as_str),
        Some("gpu,infra.homecluster.dev/managed")
    );
    assert_eq!(
        a.get(OWNED_TAINTS).map(String::as_str),
        Some("dedicated:NoSchedule")
    );
    assert!(a.contains_key(RESTORED));
}

#[test]
fn restoring_happens_once_per_node_object() {
    let snap = NodeSnapshot {
        labels: Strings::from([("gpu", "true")]),
        ..seen_node("n1")
    };
    let m = Machine::test("m1").node_snapshot(snap).build();
    let after = registered(&m, &node("n1"), false);
    // A person removes the restored label afterwards: it stays removed.
    let mut edited = after.clone();
    edited.metadata.labels.as_mut().map(|l| l.remove("gpu"));
    let r = registration(&m, &edited.cached(), false);
    assert!(r.change.is_empty(), "unexpected change: {:?}", r.change);
}

#[test]
fn registration_is_idempotent_so_an_idle_machine_writes_nothing() {
    let m = Machine::test("m1")
        .node_snapshot(NodeSnapshot {
            labels: Strings::from([("gpu", "true")]),
            taints: vec![taint("dedicated", "ml", "NoSchedule")],
            ..seen_node("n1")
        })
        .node_label("zone", "attic")
        .node_taint(taint("slow", "", "PreferNoSchedule"))
        .scale_down_disabled(true)
        .build();
    let once = registered(&m, &node("n1"), false);
    let again = registration(&m, &once.cached(), false);
    assert!(
        again.change.is_empty(),
        "second pass changed {:?}",
        again.change
    );
}

#[test]
fn spec_labels_are_added_and_follow_the_spec_only_when_ours() {
    let mut m = Machine::test("m1")
        .node_label("zone", "attic")
        .node_label("owner", "ops")
        .build();
    let n = node("n1").label("owner", "alice");
    let after = registered(&m, &n, false);
    assert_eq!(
        labels(&after).get("zone").map(String::as_str),
        Some("attic")
    );
    assert_eq!(
        labels(&after).get("owner").map(String::as_str),
        Some("alice"),
        "a label the Node already had is not ours to change"
    );

    m.spec.labels.insert("zone".to_owned(), "garage".to_owned());
    let moved = registered(&m, &after, false);
    assert_eq!(
        labels(&moved).get("zone").map(String::as_str),
        Some("garage")
    );
}

/// Every Node the operator manages carries the managed label (the chart keeps the operator's
/// and the Cluster Autoscaler's pods off such Nodes with it), recorded as ours like any label
/// we add.
#[test]
fn registration_labels_the_node_managed_and_records_the_label_as_ours() {
    let after = registered(&Machine::test("m1").build(), &node("n1"), false);
    assert_eq!(
        labels(&after).get(MANAGED_LABEL).map(String::as_str),
        Some("true")
    );
    assert!(
        annotations(&after)
            .get(OWNED_LABELS)
            .is_some_and(|owned| owned.split(',').any(|k| k == MANAGED_LABEL)),
        "{:?}",
        annotations(&after)
    );
}

/// The finalizer's cleanup takes the managed label away again with the other labels we added;
/// one a person put there before is theirs and stays.
#[test]
fn cleanup_removes_the_managed_label_unless_a_person_set_it() {
    let m = Machine::test("m1").build();
    let managed = registered(&m, &node("n1"), false);
    let clean = applied(&managed, &cleanup_change(&managed.cached()));
    assert_eq!(labels(&clean).get(MANAGED_LABEL), None);

    let theirs = node("n1").label(MANAGED_LABEL, "true");
    let managed = registered(&m, &theirs, false);
    let clean = applied(&managed, &cleanup_change(&managed.cached()));
    assert_eq!(
        labels(&clean).get(MANAGED_LABEL).map(String::as_str),
        Some("true")
    );
}

#[test]
fn spec_taints_are_added_unless_one_with_key_and_effect_is_there() {
    let m = Machine::test("m1")
        .node_taint(taint("dedicated", "ml", "NoSchedule"))
        .node_taint(taint("slow", "", "PreferNoSchedule"))
        .node_taint(taint(ca::TO_BE_DELETED_TAINT, "1", "NoSchedule"))
        .build();
    let n = node("n1").taint(taint("dedicated", "batch", "NoSchedule"));
    let after = registered(&m, &n, false);
    assert_eq!(
        taints(&after),
        vec![
            taint("dedicated", "batch", "NoSchedule"),
            taint("slow", "", "PreferNoSchedule"),
        ]
    );
    assert_eq!(
        annotations(&after).get(OWNED_TAINTS).map(String::as_str),
        Some("slow:PreferNoSchedule")
    );
}

#[test]
fn taints_to_remove_are_removed_by_key_and_effect_and_never_restored() {
    let m = Machine::test("m1")
        .node_snapshot(NodeSnapshot {
            taints: vec![taint("booting", "x", "NoSchedule")],
            ..seen_node("n1")
        })
        .taint_to_remove(taint("booting", "", "NoSchedule"))
        .build();
    let n = node("n1")
        .taint(taint("booting", "yes", "NoSchedule"))
        .taint(taint("booting", "yes", "NoExecute"));
    let after = registered(&m, &n, false);
    assert_eq!(taints(&after), vec![taint("booting", "yes", "NoExecute")]);
    assert!(!annotations(&after).contains_key(OWNED_TAINTS));
}

// --- CA's scale-down opt-out.

#[test]
fn scale_down_disabled_puts_cas_annotation_and_marks_it_ours() {
    let mut m = Machine::test("m1").scale_down_disabled(true).build();
    let after = registered(&m, &node("n1"), false);
    let a = annotations(&after);
    assert_eq!(
        a.get(ca::SCALE_DOWN_DISABLED).map(String::as_str),
        Some("true")
    );
    assert_eq!(
        a.get(OWNED_ANNOTATIONS).map(String::as_str),
        Some(ca::SCALE_DOWN_DISABLED)
    );

    m.spec.scale_down_disabled = Some(false);
    let enabled = registered(&m, &after, false);
    let a = annotations(&enabled);
    assert!(!a.contains_key(ca::SCALE_DOWN_DISABLED));
    assert!(!a.contains_key(OWNED_ANNOTATIONS));
}

#[test]
fn the_groups_scale_down_disabled_counts_too() {
    let after = registered(&Machine::test("m1").build(), &node("n1"), true);
    assert_eq!(
        annotations(&after)
            .get(ca::SCALE_DOWN_DISABLED)
            .map(String::as_str),
        Some("true")
    );
}

#[test]
fn a_persons_own_scale_down_annotation_is_kept() {
    let n = node("n1").annotation(ca::SCALE_DOWN_DISABLED, "true");
    // Wanted by us too: already there, so not ours.
    let mut m = Machine::test("m1").scale_down_disabled(true).build();
    let after = registered(&m, &n, false);
    assert!(!annotations(&after).contains_key(OWNED_ANNOTATIONS));
    // Not wanted by us: left as the person set it.
    m.spec.scale_down_disabled = None;
    let later = registered(&m, &after, false);
    assert_eq!(
        annotations(&later)
            .get(ca::SCALE_DOWN_DISABLED)
            .map(String::as_str),
        Some("true")
    );
}

// --- Cordon and cancelled power-offs.

#[test]
fn cordon_marks_the_node_and_records_it_as_ours() {
    let after = applied(&node("n1"), &cordon_change(&node("n1").cached(), true));
    assert!(unschedulable(&after));
    assert!(annotations(&after).contains_key(CORDONED));
    assert!(cordon_change(&after.cached(), true).is_empty());
}

#[test]
fn uncordon_undoes_only_our_cordon() {
    let ours = applied(&node("n1"), &cordon_change(&node("n1").cached(), true));
    let undone = applied(&ours, &cordon_change(&ours.cached(), false));
    assert!(!unschedulable(&undone));
    assert!(annotations(&undone).is_empty());

    let theirs = node("n1").cordoned();
    assert!(cordon_change(&theirs.cached(), true).is_empty());
    assert!(cordon_change(&theirs.cached(), false).is_empty());
}

#[test]
fn a_cancelled_ca_power_off_loses_cas_taints_and_cas_cordon() {
    // CA's scale-down: taint + cordon (`MarkToBeDeleted` with --cordon-node-before-terminating).
    let n = node("n1")
        .taint(taint("dedicated", "ml", "NoSchedule"))
        .taint(taint(ca::TO_BE_DELETED_TAINT, "1700000000", "NoSchedule"))
        .taint(taint(
            ca::DELETION_CANDIDATE_TAINT,
            "1700000000",
            "PreferNoSchedule",
        ))
        .cordoned();
    let after = applied(&n, &cordon_change(&n.cached(), false));
    assert_eq!(taints(&after), vec![taint("dedicated", "ml", "NoSchedule")]);
    assert!(!unschedulable(&after));
}

#[test]
fn removing_only_the_deletion_candidate_taint_keeps_a_persons_cordon() {
    let n = node("n1")
        .taint(taint(
            ca::DELETION_CANDIDATE_TAINT,
            "1700000000",
            "PreferNoSchedule",
        ))
        .cordoned();
    let after = applied(&n, &cordon_change(&n.cached(), false));
    assert!(taints(&after).is_empty());
    assert!(unschedulable(&after));
}

#[test]
fn uncordon_clears_the_drain_record() {
    let n = node("n1");
    let cached = n.cached();
    let mut edit = NodeEdit::new(&cached);
    edit.cordon().drain_started(Timestamp::UNIX_EPOCH);
    let draining = applied(&n, &edit.change());
    assert!(annotations(&draining).contains_key(DRAIN_STARTED));
    let after = applied(&draining, &cordon_change(&draining.cached(), false));
    assert!(annotations(&after).is_empty());
}

// --- Finalizer cleanup.

#[test]
fn cleanup_leaves_the_node_as_the_kubelet_and_people_left_it() {
    let before = node("n1")
        .label("team", "infra")
        .annotation("note", "mine")
        .taint(taint("owner-taint", "x", "NoSchedule"));
    let m = Machine::test("m1")
        .node_snapshot(NodeSnapshot {
            labels: Strings::from([("gpu", "true")]),
            taints: vec![taint("dedicated", "ml", "NoSchedule")],
            ..seen_node("n1")
        })
        .node_label("zone", "attic")
        .node_taint(taint("slow", "", "PreferNoSchedule"))
        .scale_down_disabled(true)
        .build();

    let managed = registered(&m, &before, false);
    let cordoned = applied(&managed, &cordon_change(&managed.cached(), true));
    let ca_tainted =
        cordoned
            .clone()
            .taint(taint(ca::DELETION_CANDIDATE_TAINT, "1", "PreferNoSchedule"));
    let clean = applied(&ca_tainted, &cleanup_change(&ca_tainted.cached()));

    assert_eq!(labels(&clean), labels(&before));
    assert_eq!(annotations(&clean), annotations(&before));
    assert_eq!(taints(&clean), taints(&before));
    assert!(!unschedulable(&clean));
    // The providerID we set stays: it is immutable, and CA matches the machine by it.
    assert_eq!(
        clean.spec.as_ref().and_then(|s| s.provider_id.as_deref()),
        Some("homelab://lab/m1")
    );
}

#[test]
fn cleanup_of_an_untouched_node_changes_nothing() {
    let n = node("n1").label("team", "infra").cordoned();
    assert!(cleanup_change(&n.cached()).is_empty());
}

// --- The patch.

#[test]
fn merge_patch_carries_the_resource_version_and_nulls_for_removals() {
    let n = node("n1")
        .at_version("7")
        .annotation(CORDONED, "true")
        .annotation(DRAIN_STARTED, "2026-01-01T00:00:00Z")
        .cordoned();
    let change = cordon_change(&n.cached(), false);
    let patch = change.merge_patch(n.metadata.resource_version.as_deref());
    assert_eq!(
        patch,
        serde_json::json!({
            "metadata": {
                "resourceVersion": "7",
                "annotations": { CORDONED: null, DRAIN_STARTED: null },
            },
            "spec": { "unschedulable": false },
        })
    );
}

#[test]
fn an_empty_change_is_an_empty_patch() {
    assert!(NodeChange::default().is_empty());
    assert_eq!(
        NodeChange::default().merge_patch(None),
        serde_json::json!({})
    );
}

// --- Snapshot.

#[test]
fn snapshot_keeps_what_the_template_needs_without_transient_taints() {
    let mut n = node("n1")
        .provider_id("homelab://lab/m1")
        .label("gpu", "true")
        .taint(taint("dedicated", "ml", "NoSchedule"))
        .taint(taint(ca::TO_BE_DELETED_TAINT, "1", "NoSchedule"))
        .taint(taint("node.kubernetes.io/not-ready", "", "NoSchedule"));
    let capacity = BTreeMap::from([
        ("cpu".to_owned(), Quantity("4".to_owned())),
        ("memory".to_owned(), Quantity("8Gi".to_owned())),
    ]);
    let allocatable = BTreeMap::from([("cpu".to_owned(), Quantity("3800m".to_owned()))]);
    n.status = Some(NodeStatus {
        capacity: Some(capacity.clone()),
        allocatable: Some(allocatable.clone()),
        ..NodeStatus::default()
    });
    let at = Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
    let s = snapshot(&n.cached(), at);
    assert_eq!(s.name, "n1");
    assert_eq!(s.provider_id.as_deref(), Some("homelab://lab/m1"));
    assert_eq!(s.labels.get("gpu"), Some("true"));
    assert_eq!(s.taints, vec![taint("dedicated", "ml", "NoSchedule")]);
    let strings = |m: BTreeMap<String, Quantity>| m.into_iter().map(|(k, q)| (k, q.0)).collect();
    assert_eq!(s.capacity, strings(capacity));
    assert_eq!(s.allocatable, strings(allocatable));
    assert_eq!(s.seen, at);
}

#[test]
fn snapshot_takes_arch_and_os_from_node_info_when_labels_lack_them() {
    let mut n = node("n1");
    n.metadata.labels = None;
    n.status = Some(NodeStatus {
        node_info: Some(NodeSystemInfo {
            architecture: "arm64".to_owned(),
            operating_system: "linux".to_owned(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    });
    let s = snapshot(&n.cached(), Timestamp::UNIX_EPOCH);
    assert_eq!(s.labels.get("kubernetes.io/arch"), Some("arm64"));
    assert_eq!(s.labels.get("kubernetes.io/os"), Some("linux"));
    assert_eq!(s.provider_id, None);
}

#[test]
fn same_shape_ignores_only_the_time_seen() {
    let a = snapshot(&node("n1").cached(), Timestamp::UNIX_EPOCH);
    let later = Timestamp::from_second(60).unwrap_or(Timestamp::UNIX_EPOCH);
    assert!(same_shape(&a, &snapshot(&node("n1").cached(), later)));
    assert!(!same_shape(
        &a,
        &snapshot(&node("n1").label("gpu", "true").cached(), later)
    ));
}
