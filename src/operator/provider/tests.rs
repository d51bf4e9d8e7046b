//! Unit and property tests of the pure provider core, one block per rule of docs/ca-contract.md.
use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use prost::Message;

use super::error::{ErrorKind, ProviderError};
use super::inventory::*;
use super::ops::*;
use super::template::template_node;
use crate::operator::machine::{Lifecycle, Phase, PowerState};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn group(name: &str, min: u32, max: Option<u32>) -> GroupView {
    GroupView {
        id: String::new(),
        namespace: "lab".into(),
        name: name.into(),
        min_size: min,
        max_size: max,
        power_on_order: PowerOnOrder::Name,
        options: GroupOptions::default(),
        template: TemplateHints::default(),
        power_on_failure_cooldown: None,
        scale_down_disabled: false,
        paused: false,
        wear: None,
        schedule: None,
    }
}

fn machine(name: &str, g: &str, desired: PowerState, phase: Phase) -> MachineView {
    let mut m = MachineView::new("lab", name, Some(g));
    m.desired = desired;
    m.lifecycle = Lifecycle {
        phase: Some(phase),
        ..Default::default()
    };
    m
}

fn node_for(m: &MachineView, ready: bool) -> NodeView {
    NodeView {
        name: m.node_name.clone(),
        provider_id: m.provider_id.clone(),
        ready,
        ..Default::default()
    }
}

/// Group "g" (min 1, max 4): a ready+registered, b booting (not registered), c, d, e off.
fn lab() -> Inventory {
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let b = machine("b", "g", PowerState::On, Phase::Booting);
    let c = machine("c", "g", PowerState::Off, Phase::Off);
    let d = machine("d", "g", PowerState::Off, Phase::Off);
    let e = machine("e", "g", PowerState::Off, Phase::Off);
    let na = node_for(&a, true);
    Inventory::build(vec![group("g", 1, Some(4))], vec![a, b, c, d, e], vec![na])
}

fn fake(m: &str) -> NodeRef {
    let id = default_provider_id("lab", m);
    NodeRef {
        provider_id: id.clone(),
        name: id,
    }
}

fn names(d: &Decision) -> Vec<String> {
    d.changes.iter().map(|c| c.machine.name.clone()).collect()
}

// Rule 1: instance ids are the expected providerIDs.
#[test]
fn instance_ids_are_provider_ids() {
    let mut m = machine("a", "g", PowerState::On, Phase::Ready);
    m.provider_id = "k3s://host-a".into();
    let n = node_for(&m, true);
    let inv = Inventory::build(vec![group("g", 0, None)], vec![m], vec![n]);
    let i = node_group_nodes(&inv, "g").unwrap_or_default();
    assert_eq!(i.len(), 1);
    assert_eq!(i[0].id, "k3s://host-a");
    assert_eq!(i[0].state, InstanceState::Running);
}

// Rule 2: providerID first, then name; fake nodes; unmanaged → None; min/max filled.
#[test]
fn node_group_for_node_resolution() {
    let mut a = machine("a", "g", PowerState::On, Phase::Ready);
    a.node_name = "host-a".into();
    let b = machine("b", "h", PowerState::Off, Phase::Off);
    let loose = machine("loose", "nogroup", PowerState::Off, Phase::Off);
    let inv = Inventory::build(
        vec![group("g", 1, Some(3)), group("h", 0, None)],
        vec![a.clone(), b, loose],
        vec![],
    );
    // providerID wins over a misleading name.
    let r = node_group_for_node(
        &inv,
        &NodeRef {
            provider_id: a.provider_id.clone(),
            name: "b".into(),
        },
        t(0),
    );
    let r = r.map(|g| (g.id, g.min_size, g.max_size));
    // maxSize 3, but only one member (on): CA can get 1.
    assert_eq!(r, Some(("g".into(), 1, 1)));
    // name when the providerID is unknown.
    let r = node_group_for_node(
        &inv,
        &NodeRef {
            provider_id: "other://x".into(),
            name: "b".into(),
        },
        t(0),
    );
    assert_eq!(r.map(|g| (g.id, g.max_size)), Some(("h".into(), 1)));
    // a fake node: name == providerID == instance id.
    assert_eq!(
        node_group_for_node(&inv, &fake("a"), t(0)).map(|g| g.id),
        Some("g".into())
    );
    // control plane / unknown / ungrouped → None (CA gets id "").
    assert_eq!(
        node_group_for_node(
            &inv,
            &NodeRef {
                provider_id: String::new(),
                name: "control-plane".into()
            },
            t(0),
        ),
        None
    );
    assert_eq!(node_group_for_node(&inv, &fake("loose"), t(0)), None);
    // every id returned is in NodeGroups.
    let ids: Vec<String> = node_groups(&inv, t(0)).into_iter().map(|g| g.id).collect();
    assert_eq!(ids, vec!["g".to_string(), "h".to_string()]);
}

/// Two Node CRs claiming one providerID, one in a group and one outside any: the node is the
/// group member's, so CA counts it in its group.
#[test]
fn a_provider_id_claimed_in_and_out_of_a_group_resolves_to_the_member() {
    let member = machine("a", "g", PowerState::On, Phase::Ready);
    let mut stray = machine("stray", "nogroup", PowerState::Off, Phase::Off);
    stray.provider_id = member.provider_id.clone();
    let inv = Inventory::build(
        vec![group("g", 0, None)],
        vec![stray, member.clone()],
        vec![],
    );
    let r = node_group_for_node(
        &inv,
        &NodeRef {
            provider_id: member.provider_id.clone(),
            name: String::new(),
        },
        t(0),
    );
    assert_eq!(r.map(|g| g.id), Some("g".into()));
}

#[test]
fn registered_node_known_only_by_name_resolves_through_its_provider_id() {
    let mut a = machine("a", "g", PowerState::On, Phase::Ready);
    a.provider_id = "k3s://a".into();
    a.node_name = "a-host".into();
    let n = NodeView {
        name: "renamed".into(),
        provider_id: "k3s://a".into(),
        ready: true,
        ..Default::default()
    };
    let inv = Inventory::build(vec![group("g", 0, None)], vec![a], vec![n]);
    let r = node_group_for_node(
        &inv,
        &NodeRef {
            provider_id: String::new(),
            name: "renamed".into(),
        },
        t(0),
    );
    assert_eq!(r.map(|g| g.id), Some("g".into()));
}

// Rule 3: target = wanted on, unknown ids NotFound.
#[test]
fn target_counts_desired_on_and_unknown_is_not_found() {
    let inv = lab();
    assert_eq!(target_size(&inv, "g"), Ok(2));
    let e = target_size(&inv, "nope").err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::NotFound));
}

#[test]
fn group_ids_disambiguate_duplicate_names_across_namespaces() {
    let mut g2 = group("g", 0, None);
    g2.namespace = "other".into();
    let inv = Inventory::build(vec![group("g", 0, None), g2], vec![], vec![]);
    let ids: Vec<&str> = inv.group_ids().collect();
    assert_eq!(ids, vec!["lab/g", "other/g"]);
}

// Rule 4.
#[test]
fn increase_size_picks_delta_machines_and_validates() {
    let inv = lab();
    let d = increase_size(&inv, "g", 2, t(0));
    let d = d.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&d), vec!["c", "d"]);
    assert_eq!((d.target_before, d.target_after), (2, 4));
    assert!(d.changes.iter().all(|c| c.desired == PowerState::On));
    let kind = |r: Result<Decision, ProviderError>| r.err().map(|e| e.kind());
    assert_eq!(
        kind(increase_size(&inv, "g", 0, t(0))),
        Some(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        kind(increase_size(&inv, "g", -1, t(0))),
        Some(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        kind(increase_size(&inv, "g", 3, t(0))),
        Some(ErrorKind::FailedPrecondition)
    );
    assert_eq!(
        kind(increase_size(&inv, "x", 1, t(0))),
        Some(ErrorKind::NotFound)
    );
}

#[test]
fn increase_size_errors_when_too_few_machines_are_off() {
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let b = machine("b", "g", PowerState::Off, Phase::Off);
    let inv = Inventory::build(vec![group("g", 0, Some(10))], vec![a, b], vec![]);
    let e = increase_size(&inv, "g", 2, t(0)).err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::ResourceExhausted));
    // max defaults to the member count.
    let inv2 = Inventory::build(
        vec![group("g", 0, None)],
        vec![machine("a", "g", PowerState::On, Phase::Ready)],
        vec![],
    );
    let e = increase_size(&inv2, "g", 1, t(0)).err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));
}

#[test]
fn power_on_order_policies() {
    let mut g = group("g", 0, None);
    let mut c1 = machine("m1", "g", PowerState::Off, Phase::Off);
    let mut c2 = machine("m2", "g", PowerState::Off, Phase::Off);
    let mut c3 = machine("m3", "g", PowerState::Off, Phase::Off);
    c1.hourly_rate = Some(0.30);
    c2.hourly_rate = None;
    c3.hourly_rate = Some(0.10);
    c1.boot_durations = vec![
        SignedDuration::from_secs(90),
        SignedDuration::from_secs(100),
        SignedDuration::from_secs(95),
    ];
    c3.boot_durations = vec![SignedDuration::from_secs(300)];
    c1.last_power_on = Some(t(100));
    c3.last_power_on = Some(t(50));
    let pick = |g: &GroupView, order: PowerOnOrder| {
        let mut g = g.clone();
        g.power_on_order = order;
        let inv = Inventory::build(vec![g], vec![c1.clone(), c2.clone(), c3.clone()], vec![]);
        increase_size(&inv, "g", 3, t(0))
            .map(|d| names(&d))
            .unwrap_or_default()
    };
    assert_eq!(pick(&g, PowerOnOrder::Cheapest), vec!["m3", "m1", "m2"]);
    assert_eq!(pick(&g, PowerOnOrder::FastestBoot), vec!["m1", "m3", "m2"]);
    assert_eq!(
        pick(&g, PowerOnOrder::LeastRecentlyUsed),
        vec!["m2", "m3", "m1"]
    );
    g.power_on_order = PowerOnOrder::Name;
    assert_eq!(pick(&g, PowerOnOrder::Name), vec!["m1", "m2", "m3"]);
}

/// A machine whose last power-on failed goes after every healthy one whatever the order (CA
/// retries IncreaseSize after its backoff; picking the same broken machine would starve pods),
/// and is still picked when nothing else is left.
#[test]
fn machines_that_failed_to_power_on_are_picked_last() {
    // Failures older than the cool-down (30m by default), machines off since.
    let mut bad = machine("m1", "g", PowerState::Off, Phase::Off);
    bad.hourly_rate = Some(0.01);
    bad.lifecycle.last_power_on_failure = Some(t(-7260));
    let mut worse = machine("m0", "g", PowerState::Off, Phase::Off);
    worse.lifecycle.last_power_on_failure = Some(t(-7210));
    let mut good = machine("m2", "g", PowerState::Off, Phase::Off);
    good.hourly_rate = Some(0.50);
    let on = machine("m3", "g", PowerState::On, Phase::Ready);
    for order in PowerOnOrder::ALL {
        let mut g = group("g", 0, None);
        g.power_on_order = order;
        let inv = Inventory::build(
            vec![g],
            vec![bad.clone(), worse.clone(), good.clone(), on.clone()],
            vec![],
        );
        let one = increase_size(&inv, "g", 1, t(0)).map(|d| names(&d));
        assert_eq!(one.ok(), Some(vec!["m2".to_owned()]), "{order:?}");
        // Failed ones only when nothing else is left, the longest-ago failure first.
        let all = increase_size(&inv, "g", 3, t(0)).map(|d| names(&d));
        assert_eq!(
            all.ok(),
            Some(vec!["m2".into(), "m1".into(), "m0".into()]),
            "{order:?}"
        );
        // The rate CA expects is the good machine's, the one that will be picked.
        let g = inv.group("g");
        assert_eq!(
            g.map(|g| group_hourly_rate(&inv, g, t(0))),
            Some(0.50),
            "{order:?}"
        );
    }
    // Once it has booted (the FSM clears the marker) the order applies again.
    let mut healed = bad.clone();
    healed.lifecycle.last_power_on_failure = None;
    let mut g = group("g", 0, None);
    g.power_on_order = PowerOnOrder::Cheapest;
    let inv = Inventory::build(vec![g], vec![healed, good.clone()], vec![]);
    let one = increase_size(&inv, "g", 1, t(0)).map(|d| names(&d));
    assert_eq!(one.ok(), Some(vec!["m1".to_owned()]));
}

// Rule 5.
#[test]
fn delete_nodes_is_all_or_nothing() {
    let inv = lab();
    // a (registered) + b (fake node for the unregistered one): target 2 → 0 < min 1, so the
    // failed b is swapped for the spare c (docs/ca-contract.md, rule 7) and min holds.
    let d = delete_nodes(&inv, "g", &[fake("a"), fake("b")], t(0));
    assert_eq!(
        d.map(|d| (names(&d), d.target_after)),
        Ok((vec!["a".into(), "b".into(), "c".into()], 1))
    );
    // Without a failed one to swap, going below min is refused, nothing changed.
    let lone = Inventory::build(
        vec![group("g", 1, None)],
        vec![machine("a", "g", PowerState::On, Phase::Ready)],
        vec![node_for(
            &machine("a", "g", PowerState::On, Phase::Ready),
            true,
        )],
    );
    let e = delete_nodes(&lone, "g", &[fake("a")], t(0)).err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));
    // one node: fine, by name (registered node).
    let d = delete_nodes(
        &inv,
        "g",
        &[NodeRef {
            provider_id: String::new(),
            name: "a".into(),
        }],
        t(0),
    );
    assert_eq!(
        d.map(|d| (names(&d), d.target_after)),
        Ok((vec!["a".into()], 1))
    );
    // a node of another group rejects the whole call.
    let other = machine("z", "h", PowerState::On, Phase::Ready);
    let mut ms: Vec<MachineView> = inv.machines().cloned().collect();
    ms.push(other);
    let inv2 = Inventory::build(
        vec![group("g", 0, Some(4)), group("h", 0, None)],
        ms,
        vec![],
    );
    let e = delete_nodes(&inv2, "g", &[fake("b"), fake("z")], t(0)).err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
    let e = delete_nodes(&inv2, "g", &[fake("unknown")], t(0)).err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
}

#[test]
fn delete_nodes_is_idempotent_and_dedups() {
    let inv = lab();
    // c is already wanted off: nothing to do, no min check trips.
    let d = delete_nodes(&inv, "g", &[fake("c")], t(0));
    assert_eq!(d.map(|d| d.is_noop()), Ok(true));
    let d = delete_nodes(&inv, "g", &[fake("b"), fake("b")], t(0));
    assert_eq!(d.map(|d| names(&d)), Ok(vec!["b".to_string()]));
}

#[test]
fn scale_down_disabled_machines_are_refused_once_registered() {
    let mut a = machine("a", "g", PowerState::On, Phase::Ready);
    a.scale_down_disabled = true;
    let mut b = machine("b", "g", PowerState::On, Phase::Failed);
    b.scale_down_disabled = true;
    let na = node_for(&a, true);
    let inv = Inventory::build(vec![group("g", 0, None)], vec![a, b], vec![na]);
    let e = delete_nodes(&inv, "g", &[fake("a")], t(0)).err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));
    // a failed boot can still be cancelled (CA retries that every loop).
    assert!(delete_nodes(&inv, "g", &[fake("b")], t(0)).is_ok());
}

#[test]
fn a_groups_scale_down_disabled_protects_every_registered_member() {
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let b = machine("b", "g", PowerState::On, Phase::Failed);
    let na = node_for(&a, true);
    let mut g = group("g", 0, None);
    g.scale_down_disabled = true;
    let inv = Inventory::build(vec![g], vec![a, b], vec![na]);
    let e = delete_nodes(&inv, "g", &[fake("a")], t(0)).err();
    assert_eq!(
        e.as_ref().map(|e| e.kind()),
        Some(ErrorKind::FailedPrecondition)
    );
    let message = e.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("its Group lab/g"), "{message}");
    // As for a machine's own flag, a failed boot can still be cancelled.
    assert!(delete_nodes(&inv, "g", &[fake("b")], t(0)).is_ok());
}

// Rule 6.
#[test]
fn decrease_target_size_cancels_pending_only_not_acting_then_newest() {
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let mut b = machine("b", "g", PowerState::On, Phase::PoweringOn);
    let mut c = machine("c", "g", PowerState::On, Phase::Off);
    b.power_on_requested = Some(t(10));
    c.power_on_requested = Some(t(5));
    let mut d = machine("d", "g", PowerState::On, Phase::Booting);
    d.power_on_requested = Some(t(20));
    // Request time unknown: counts as oldest, cancelled last.
    let e = machine("e", "g", PowerState::On, Phase::Booting);
    let na = node_for(&a, true);
    let inv = Inventory::build(vec![group("g", 0, None)], vec![a, b, c, d, e], vec![na]);
    let r = decrease_target_size(&inv, "g", -3, t(30), None);
    // c has no operation yet (off): first; then the newest request among those acting.
    assert_eq!(
        r.map(|d| (names(&d), d.target_after)),
        Ok((vec!["c".into(), "d".into(), "b".into()], 2))
    );
    let kind = |r: Result<Decision, ProviderError>| r.err().map(|e| e.kind());
    assert_eq!(
        kind(decrease_target_size(&inv, "g", -5, t(0), None)),
        Some(ErrorKind::FailedPrecondition)
    );
    assert_eq!(
        kind(decrease_target_size(&inv, "g", 0, t(0), None)),
        Some(ErrorKind::InvalidArgument)
    );
    assert_eq!(
        kind(decrease_target_size(&inv, "g", 1, t(0), None)),
        Some(ErrorKind::InvalidArgument)
    );
}

/// Rule 6: DecreaseTargetSize never refuses because of minSize. CA computes the delta
/// from its own registered count (`clusterstate.go` `updateIncorrectNodeGroupSizes`,
/// `static_autoscaler.go` `fixNodeGroupSize`) and repeats a refused call every loop.
#[test]
fn decrease_target_size_ignores_min_size() {
    // min 3, one registered, two failed boots.
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let b = machine("b", "g", PowerState::On, Phase::Failed);
    let c = machine("c", "g", PowerState::On, Phase::Failed);
    let na = node_for(&a, true);
    let inv = Inventory::build(vec![group("g", 3, None)], vec![a, b, c], vec![na]);
    let r = decrease_target_size(&inv, "g", -2, t(0), None);
    assert_eq!(r.map(|d| d.target_after), Ok(1));
    // A partial decrease below min is fine too (before: FailedPrecondition).
    let r = decrease_target_size(&inv, "g", -1, t(0), None);
    assert_eq!(r.map(|d| d.target_after), Ok(2));
    // Only the registered count bounds it.
    let r = decrease_target_size(&inv, "g", -3, t(0), None).err();
    assert_eq!(r.map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));
}

// Rule 7.
#[test]
fn node_group_nodes_states_and_errors() {
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let b = machine("b", "g", PowerState::On, Phase::Booting);
    let mut f = machine("f", "g", PowerState::On, Phase::Failed);
    f.lifecycle.last_error = Some("boot deadline passed".into());
    let off = machine("off", "g", PowerState::Off, Phase::Off);
    let going = machine("going", "g", PowerState::Off, Phase::PoweringOff);
    let nr = machine("notready", "g", PowerState::On, Phase::Booting);
    // Came up, then its Node went NotReady / vanished: still Running for CA (errorInfo is for
    // the current power-on only: rule 7).
    let lost = machine("lost", "g", PowerState::On, Phase::Ready);
    let gone = machine("gone", "g", PowerState::On, Phase::Ready);
    let nodes = vec![
        node_for(&a, true),
        node_for(&nr, false),
        node_for(&lost, false),
    ];
    let inv = Inventory::build(
        vec![group("g", 0, None)],
        vec![a, b, f, off, going, nr, lost, gone],
        nodes,
    );
    let got: BTreeMap<String, (InstanceState, Option<ErrorClass>)> = node_group_nodes(&inv, "g")
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.machine.name, (i.state, i.error.map(|e| e.class))))
        .collect();
    let want: BTreeMap<String, (InstanceState, Option<ErrorClass>)> = [
        ("a", (InstanceState::Running, None)),
        ("b", (InstanceState::Creating, None)),
        ("f", (InstanceState::Creating, Some(ErrorClass::Other))),
        ("going", (InstanceState::Deleting, None)),
        ("notready", (InstanceState::Creating, None)),
        ("lost", (InstanceState::Running, None)),
        ("gone", (InstanceState::Running, None)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want);
    assert!(node_group_nodes(&inv, "nope").is_err());
}

// Rule 8. The taints dropped are the ones CA's own template sanitising drops
// (`utils/taints/taints.go`, `SanitizeTaints`: its two scale-down taints and
// `NodeConditionTaints`, which include the cloud-provider `uninitialized` and `shutdown` taints).
#[test]
fn template_from_last_seen_strips_transient_taints() {
    let mut a = machine("a", "g", PowerState::Off, Phase::Off);
    a.taints_to_remove = vec![TaintView {
        key: "custom/remove".into(),
        value: None,
        effect: "NoSchedule".into(),
    }];
    let taint = |k: &str| TaintView {
        key: k.into(),
        value: Some("x".into()),
        effect: "NoSchedule".into(),
    };
    a.last_seen = Some(NodeView {
        name: "a".into(),
        provider_id: a.provider_id.clone(),
        labels: [("kubernetes.io/arch".to_string(), "arm64".to_string())].into(),
        taints: vec![
            taint("ToBeDeletedByClusterAutoscaler"),
            taint("DeletionCandidateOfClusterAutoscaler"),
            taint("node.kubernetes.io/unreachable"),
            taint("node.cloudprovider.kubernetes.io/shutdown"),
            taint("node.cloudprovider.kubernetes.io/uninitialized"),
            taint("custom/remove"),
            taint("dedicated"),
        ],
        capacity: [
            ("cpu".to_string(), "8".to_string()),
            ("memory".to_string(), "32Gi".to_string()),
        ]
        .into(),
        allocatable: Default::default(),
        ready: false,
        unschedulable: true,
        refused: false,
    });
    let inv = Inventory::build(vec![group("g", 0, None)], vec![a], vec![]);
    let tn = template_node(&inv, "g").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        tn.labels.get("kubernetes.io/arch").map(String::as_str),
        Some("arm64")
    );
    assert_eq!(
        tn.labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(
        tn.labels.get("kubernetes.io/hostname").map(String::as_str),
        Some("a")
    );
    assert_eq!(
        tn.taints.iter().map(|t| t.key.as_str()).collect::<Vec<_>>(),
        vec!["dedicated"]
    );
    assert_eq!(tn.capacity.get("pods").map(String::as_str), Some("110"));
    assert_eq!(tn.allocatable.get("cpu").map(String::as_str), Some("8"));
    let bytes = tn.encode();
    assert!(!bytes.is_empty());
    let decoded = k8s_pb::api::core::v1::Node::decode(bytes.as_slice());
    let decoded = decoded.unwrap_or_else(|e| panic!("{e}"));
    let ready = decoded.status.as_ref().map(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type.as_deref() == Some("Ready") && c.status.as_deref() == Some("True"))
    });
    assert_eq!(ready, Some(true));
    assert_eq!(decoded.spec.and_then(|s| s.unschedulable), Some(false));
}

#[test]
fn template_falls_back_to_hints_then_group_then_unimplemented() {
    let mut a = machine("a", "g", PowerState::Off, Phase::Off);
    Arc::make_mut(&mut a.hints).capacity = [("cpu".to_string(), "4".to_string())].into();
    let inv = Inventory::build(vec![group("g", 0, None)], vec![a.clone()], vec![]);
    assert_eq!(
        template_node(&inv, "g").map(|t| t.capacity.get("cpu").cloned()),
        Ok(Some("4".to_string()))
    );
    let mut g = group("g", 0, None);
    g.template.capacity = [("cpu".to_string(), "2".to_string())].into();
    g.template.labels = [("zone".to_string(), "rack1".to_string())].into();
    let bare = machine("a", "g", PowerState::Off, Phase::Off);
    let inv = Inventory::build(vec![g], vec![bare.clone()], vec![]);
    let tn = template_node(&inv, "g");
    assert_eq!(
        tn.map(|t| (
            t.capacity.get("cpu").cloned(),
            t.labels.get("zone").cloned()
        )),
        Ok((Some("2".into()), Some("rack1".into())))
    );
    let inv = Inventory::build(vec![group("g", 0, None)], vec![bare], vec![]);
    let e = template_node(&inv, "g").err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::Unimplemented));
}

/// The template carries the label the operator puts on every Node it manages, as the Nodes a
/// scale-up brings will: CA runs its scheduling predicates (NodeAffinity included) against the
/// template node (`ScaleUpOrchestrator.SchedulablePodGroups` in
/// core/scaleup/orchestrator/orchestrator.go; `createSanitizedNode` in
/// simulator/node_info_utils.go keeps the labels), so a pod kept off managed Nodes (the
/// operator's, the chart's Cluster Autoscaler) must not make CA power a machine on for it.
#[test]
fn the_template_carries_the_managed_label() {
    let mut g = group("g", 0, None);
    g.template.capacity = [("cpu".to_string(), "2".to_string())].into();
    let inv = Inventory::build(
        vec![g],
        vec![machine("a", "g", PowerState::Off, Phase::Off)],
        vec![],
    );
    let tn = template_node(&inv, "g");
    assert_eq!(
        tn.map(|t| t.labels.get(crate::operator::node::MANAGED_LABEL).cloned()),
        Ok(Some("true".to_string()))
    );
}

// Rule 9.
#[test]
fn options_unset_unless_group_sets_them() {
    let inv = lab();
    let defaults = AutoscalingOptions {
        scale_down_utilization_threshold: 0.5,
        max_node_startup: Some(SignedDuration::from_mins(15)),
        ..Default::default()
    };
    assert_eq!(
        node_group_options(&inv, "g", Some(defaults.clone())),
        Ok(None)
    );
    let mut g = group("g", 0, None);
    g.options.scale_down_unneeded = Some(SignedDuration::from_mins(30));
    let inv = Inventory::build(vec![g], vec![], vec![]);
    let o = node_group_options(&inv, "g", Some(defaults.clone()));
    let want = AutoscalingOptions {
        scale_down_unneeded: Some(SignedDuration::from_mins(30)),
        ..defaults
    };
    assert_eq!(o, Ok(Some(want)));
}

// Rule 11.
#[test]
fn pricing_over_the_window() {
    let mut a = machine("a", "g", PowerState::On, Phase::Ready);
    a.hourly_rate = Some(0.12);
    let mut b = machine("b", "g", PowerState::Off, Phase::Off);
    b.hourly_rate = Some(0.30);
    let inv = Inventory::build(vec![group("g", 0, None)], vec![a, b], vec![]);
    let p = node_price(&inv, &fake("a"), t(0), t(7200), t(0)).unwrap_or(-1.0);
    assert!((p - 0.24).abs() < 1e-9, "{p}");
    // CA's template node for the group is priced by the machine picked next (b).
    let tmpl = NodeRef {
        provider_id: String::new(),
        name: "template-node-for-g-4242".into(),
    };
    let p = node_price(&inv, &tmpl, t(0), t(1800), t(0)).unwrap_or(-1.0);
    assert!((p - 0.15).abs() < 1e-9, "{p}");
    assert!(node_price(&inv, &fake("a"), t(10), t(0), t(0)).is_err());
    let e = node_price(&inv, &fake("nope"), t(0), t(10), t(0)).err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::NotFound));
}

#[test]
fn node_view_reads_a_kubernetes_node() {
    use crate::testing::{NodeExt as _, node, taint};
    let node = node("n1")
        .label("a", "b")
        .provider_id("homelab://lab/n1")
        .taint(taint("k", "", "NoSchedule"))
        .capacity([("cpu", "4")])
        .ready();
    let v = NodeView::from_k8s(&node.cached());
    assert_eq!(v.name, "n1");
    assert_eq!(v.provider_id, "homelab://lab/n1");
    assert!(v.ready);
    assert_eq!(v.capacity.get("cpu"), Some("4"));
    assert_eq!(v.taints.len(), 1);
}

// Property: any sequence of operations keeps min ≤ target ≤ max (except CA's size fix to the
// registered count), never picks a machine twice, and the target equals the machines counted.
#[derive(Clone, Debug)]
enum Op {
    Inc(i32),
    Del(Vec<usize>),
    Dec(i32),
    Register(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (-1i32..5).prop_map(Op::Inc),
        proptest::collection::vec(0usize..12, 0..4).prop_map(Op::Del),
        (-5i32..1).prop_map(Op::Dec),
        (0usize..12).prop_map(Op::Register),
    ]
}

proptest! {
    #[test]
    fn invariants_hold_over_random_operations(
        min in 0u32..4,
        extra in 0u32..6,
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let max = min + extra;
        let names: Vec<String> = (0..12).map(|i| format!("m{i:02}")).collect();
        let machines: Vec<MachineView> = names
            .iter()
            .map(|n| machine(n, "g", PowerState::Off, Phase::Off))
            .collect();
        let mut registered: Vec<NodeView> = Vec::new();
        let mut inv = Inventory::build(vec![group("g", min, Some(max))], machines.clone(), vec![]);
        for (step, o) in ops.into_iter().enumerate() {
            let now = t(step as i64);
            let before = target_size(&inv, "g").unwrap_or(0);
            let r = match &o {
                Op::Inc(d) => increase_size(&inv, "g", *d, now),
                Op::Del(ix) => {
                    let nodes: Vec<NodeRef> = ix.iter().map(|i| fake(&names[*i])).collect();
                    delete_nodes(&inv, "g", &nodes, now)
                }
                Op::Dec(d) => decrease_target_size(&inv, "g", *d, now, None),
                Op::Register(i) => {
                    // A wanted-on machine's node registers.
                    let m = inv.machines().find(|m| m.key.name == names[*i]).cloned();
                    if let Some(m) = m.filter(|m| m.wanted_on() && !inv.is_registered(m)) {
                        registered.push(node_for(&m, true));
                        let ms: Vec<MachineView> = inv.machines().cloned().collect();
                        inv = Inventory::build(vec![group("g", min, Some(max))], ms, registered.clone());
                    }
                    continue;
                }
            };
            let Ok(d) = r else { prop_assert_eq!(target_size(&inv, "g").unwrap_or(0), before); continue };
            // No machine twice, and each change really flips a machine.
            let mut seen = std::collections::HashSet::new();
            for c in &d.changes {
                prop_assert!(seen.insert(c.machine.clone()));
                let m = inv.machines().find(|m| m.key == c.machine);
                prop_assert!(m.is_some_and(|m| m.desired != c.desired));
            }
            if let Op::Dec(_) = o {
                for c in &d.changes {
                    let m = inv.machines().find(|m| m.key == c.machine);
                    prop_assert!(m.is_some_and(|m| !inv.is_registered(m)));
                }
            }
            inv.apply("g", &d.changes);
            let after = target_size(&inv, "g").unwrap_or(0);
            prop_assert_eq!(after, d.target_after);
            prop_assert!(after <= max);
            let g = inv.group("g").map(|g| registered_count(&inv, g)).unwrap_or(0);
            // Below min only by not going down, or by DecreaseTargetSize (which never checks min:
            // rule 6), and never below the registered count.
            prop_assert!(after >= min || after >= before || matches!(o, Op::Dec(_)), "target {} < min {} (before {}) after {:?}", after, min, before, o);
            prop_assert!(after >= g, "target {} below {} registered", after, g);
            prop_assert_eq!(
                node_group_nodes(&inv, "g").unwrap_or_default().iter().filter(|i| i.state != InstanceState::Deleting).count() as u32,
                after
            );
        }
    }
}

#[test]
fn from_objects_reads_the_crs_and_nodes() {
    use crate::operator::api::{Group, Machine, NodeTemplate};
    use crate::testing::{NodeExt as _, node};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let group = Group::test("workers")
        .min(1)
        .max(5)
        .power_on_order(PowerOnOrder::LeastRecentlyUsed)
        .spec_with(|s| s.scale_down_unneeded_time = Some("30m".to_owned()))
        .template(NodeTemplate {
            labels: BTreeMap::from([("zone".to_owned(), "rack1".to_owned())]),
            capacity: BTreeMap::from([("cpu".to_owned(), Quantity("2".to_owned()))]),
            ..NodeTemplate::default()
        })
        .build();
    let machine = |name: &str, power: PowerState| {
        Machine::test(name)
            .group("workers")
            .desired(power)
            .pricing("0.25", "0")
            .capacity([("cpu", "8"), ("memory", "32Gi")])
    };
    let m1 = machine("m1", PowerState::On)
        .provider_id("k3s://m1")
        .node_name("host1")
        .build();
    let m2 = machine("m2", PowerState::Off)
        .scale_down_disabled(true)
        .build();
    let node = node("host1").adoptable().provider_id("k3s://m1").ready();
    let inv = Inventory::from_objects(
        &[std::sync::Arc::new(group)],
        &[std::sync::Arc::new(m1), std::sync::Arc::new(m2)],
        &[&node.cached()],
    );
    let g = inv
        .group("workers")
        .unwrap_or_else(|| panic!("group missing"));
    assert_eq!(
        (g.spec.min_size, g.max_size()),
        (1, 2),
        "maxSize is capped at the 2 members"
    );
    assert_eq!(g.spec.power_on_order, PowerOnOrder::LeastRecentlyUsed);
    assert_eq!(
        g.spec.options.scale_down_unneeded,
        Some(SignedDuration::from_mins(30))
    );
    assert_eq!(
        g.spec.template.labels.get("zone").map(String::as_str),
        Some("rack1")
    );
    let m1 = &g.machines[0];
    assert_eq!(
        (m1.provider_id.as_str(), m1.node_name.as_str()),
        ("k3s://m1", "host1")
    );
    assert_eq!(m1.hourly_rate, Some(0.25));
    assert!(inv.is_ready(m1));
    let m2 = &g.machines[1];
    assert_eq!(m2.provider_id, "homelab://lab/m2");
    assert!(m2.scale_down_disabled);
    assert_eq!(
        m2.hints.capacity.get("memory").map(String::as_str),
        Some("32Gi")
    );
    assert_eq!(target_size(&inv, "workers"), Ok(1));
    assert_eq!(
        node_group_for_node(
            &inv,
            &NodeRef {
                provider_id: String::new(),
                name: "host1".into()
            },
            t(0),
        )
        .map(|g| g.id),
        Some("workers".into())
    );
}

#[test]
fn declared_node_is_the_machine_as_its_hints_describe_it() {
    let mut m = MachineView::new("lab", "m1", Some("g"));
    m.node_name = "host-1".into();
    m.provider_id = "k3s://host-1".into();
    Arc::make_mut(&mut m.hints).labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
    Arc::make_mut(&mut m.hints).taints = vec![TaintView {
        key: "gpu".into(),
        value: None,
        effect: "NoSchedule".into(),
    }];
    Arc::make_mut(&mut m.hints).capacity = BTreeMap::from([("cpu".to_owned(), "4".to_owned())]);
    let n = super::convert::declared_node(&m);
    assert_eq!(
        (n.name.as_str(), n.provider_id.as_str()),
        ("host-1", "k3s://host-1")
    );
    assert_eq!(n.labels.to_map(), m.hints.labels);
    assert_eq!(n.taints, m.hints.taints);
    assert_eq!(n.capacity.to_map(), m.hints.capacity);
    // Allocatable defaults to capacity; explicit allocatable wins.
    assert_eq!(n.allocatable.to_map(), m.hints.capacity);
    assert!(!n.ready && !n.unschedulable);
    Arc::make_mut(&mut m.hints).allocatable =
        BTreeMap::from([("cpu".to_owned(), "3500m".to_owned())]);
    let n = super::convert::declared_node(&m);
    assert_eq!(n.allocatable.get("cpu"), Some("3500m"));
}

// ---------- What the real CA 1.36.1 does that the rules above must allow for ----------

fn fake_node(m: &str) -> NodeRef {
    fake(m)
}

/// Rule 7, identity reuse: CA keeps an unregistered instance's "unregistered since" time while its
/// id stays listed (`clusterstate/clusterstate.go` `updateUnregisteredNodes`) and deletes it after
/// `--max-node-provision-time` (`core/static_autoscaler.go` `removeOldUnregisteredNodes`). Our
/// instance id is the machine's forever, so DeleteNodes of a never-registered machine records
/// the failed power-on and IncreaseSize picks another machine, not the same one in a loop.
#[test]
fn a_machine_ca_gave_up_on_is_not_picked_again_at_once() {
    let ms = vec![
        machine("a", "g", PowerState::Off, Phase::Off),
        machine("b", "g", PowerState::Off, Phase::Off),
        machine("c", "g", PowerState::Off, Phase::Off),
    ];
    let mut inv = Inventory::build(vec![group("g", 0, None)], ms, vec![]);
    let d = increase_size(&inv, "g", 1, t(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&d), vec!["a"]);
    inv.apply("g", &d.changes);
    // a never registers; CA deletes it with a fake node.
    let d = delete_nodes(&inv, "g", &[fake_node("a")], t(900)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.changes.len(), 1);
    assert!(d.changes[0].power_on_failed, "CA's verdict is recorded");
    inv.apply("g", &d.changes);
    let a = inv.machines().find(|m| m.key.name == "a").cloned();
    assert_eq!(a.and_then(|m| m.last_power_on_failure()), Some(t(900)));
    // The same loop's IncreaseSize: another machine.
    let d = increase_size(&inv, "g", 1, t(900)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&d), vec!["b"]);
}

/// A one-machine group whose only machine failed: IncreaseSize fails with ResourceExhausted
/// (CA backs the group off: `core/scaleup/orchestrator/executor.go`), so there is no loop;
/// after the cool-down, with the machine off and out of CA's instance cache, it is tried again.
#[test]
fn a_one_machine_group_backs_off_instead_of_looping() {
    let mut only = machine("only", "g", PowerState::On, Phase::PoweringOn);
    only.power_on_requested = Some(t(0));
    let mut inv = Inventory::build(vec![group("g", 0, None)], vec![only], vec![]);
    let d = delete_nodes(&inv, "g", &[fake_node("only")], t(900)).unwrap_or_else(|e| panic!("{e}"));
    inv.apply("g", &d.changes);
    let e = increase_size(&inv, "g", 1, t(901)).err();
    assert_eq!(
        e.as_ref().map(|e| e.kind()),
        Some(ErrorKind::ResourceExhausted)
    );
    let text = e.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.contains("lab/only") && text.contains("powerOnFailureCooldown"),
        "{text}"
    );
    // Default cool-down: twice CA's 15m provision time.
    let cooled = t(900 + 30 * 60);
    // Cooled down, but still on its way off (listed as Deleting): not yet.
    assert!(increase_size(&inv, "g", 1, cooled).is_err());
    // Off, but only just: CA's instance cache may still hold it for 5 minutes.
    let mut ms: Vec<MachineView> = inv.machines().cloned().collect();
    ms[0].lifecycle.phase = Some(Phase::Off);
    ms[0].last_power_off = Some(cooled);
    let inv = Inventory::build(vec![group("g", 0, None)], ms, vec![]);
    assert!(increase_size(&inv, "g", 1, cooled).is_err());
    let d = increase_size(&inv, "g", 1, t(900 + 35 * 60));
    assert_eq!(d.map(|d| names(&d)), Ok(vec!["only".to_owned()]));
}

#[test]
fn failure_cooldown_defaults_to_twice_the_provision_time_and_is_settable() {
    let mut g = group("g", 0, None);
    assert_eq!(g.failure_cooldown(), SignedDuration::from_mins(30));
    g.options.max_node_provision = Some(SignedDuration::from_mins(20));
    assert_eq!(g.failure_cooldown(), SignedDuration::from_mins(40));
    g.power_on_failure_cooldown = Some(SignedDuration::from_mins(5));
    assert_eq!(g.failure_cooldown(), SignedDuration::from_mins(5));
}

/// CA's verdict (the annotation) counts only when newer than the last time the machine was up;
/// the FSM's own `lastPowerOnFailure` counts until it clears it.
#[test]
fn recorded_failure_is_the_newest_that_still_applies() {
    let mut m = machine("a", "g", PowerState::Off, Phase::Off);
    m.power_on_failed_at = Some(t(100));
    assert_eq!(m.last_power_on_failure(), Some(t(100)));
    m.lifecycle.last_power_on_failure = Some(t(200));
    assert_eq!(m.last_power_on_failure(), Some(t(200)));
    m.lifecycle.last_power_on_failure = None;
    m.last_power_on = Some(t(150));
    assert_eq!(
        m.last_power_on_failure(),
        None,
        "came up after CA's verdict"
    );
}

/// Registered nodes are never marked: CA's scale-down of a running machine is no failure.
#[test]
fn deleting_a_registered_machine_records_no_failure() {
    let inv = lab();
    let d = delete_nodes(&inv, "g", &[fake_node("a")], t(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        d.changes
            .iter()
            .map(|c| c.power_on_failed)
            .collect::<Vec<_>>(),
        vec![false]
    );
    let d = delete_nodes(&inv, "g", &[fake_node("b")], t(0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        d.changes
            .iter()
            .map(|c| c.power_on_failed)
            .collect::<Vec<_>>(),
        vec![true]
    );
}

/// Rules 5 and 7: at minSize, deleting a failed power-on succeeds by wanting another spare on
/// in its place (CA's `deleteCreatedNodesWithErrors` in `core/static_autoscaler.go` does not
/// check minSize and repeats a refused call every loop); a registered node is still refused.
#[test]
fn delete_nodes_at_min_swaps_a_failed_machine_for_a_spare() {
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let mut b = machine("b", "g", PowerState::On, Phase::Failed);
    b.lifecycle.last_error = Some("boot deadline passed".into());
    let c = machine("c", "g", PowerState::Off, Phase::Off);
    let na = node_for(&a, true);
    let inv = Inventory::build(vec![group("g", 2, None)], vec![a, b, c], vec![na]);
    let d = delete_nodes(&inv, "g", &[fake_node("b")], t(0)).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(String, PowerState, bool)> = d
        .changes
        .iter()
        .map(|c| (c.machine.name.clone(), c.desired, c.power_on_failed))
        .collect();
    assert_eq!(
        got,
        vec![
            ("b".to_owned(), PowerState::Off, true),
            ("c".to_owned(), PowerState::On, false)
        ]
    );
    assert_eq!((d.target_before, d.target_after), (2, 2));
    // The registered one at min: refused, nothing changed.
    let e = delete_nodes(&inv, "g", &[fake_node("a")], t(0)).err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));
    // No spare to swap in: refused.
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let b = machine("b", "g", PowerState::On, Phase::Failed);
    let na = node_for(&a, true);
    let inv = Inventory::build(vec![group("g", 2, None)], vec![a, b], vec![na]);
    let e = delete_nodes(&inv, "g", &[fake_node("b")], t(0)).err();
    assert_eq!(e.map(|e| e.kind()), Some(ErrorKind::FailedPrecondition));
}

/// Rule 2: the registered Node of a machine wanted off (being powered off, or a stale
/// NotReady Node someone left behind) is in no group, so CA does not count it as the group's
/// capacity (`clusterstate.go` counts nodes per `NodeGroupForNode`). Fake nodes of pending
/// machines still resolve.
#[test]
fn nodes_of_machines_wanted_off_belong_to_no_group() {
    let stale = machine("stale", "g", PowerState::Off, Phase::Off);
    let going = machine("going", "g", PowerState::Off, Phase::PoweringOff);
    let pending = machine("pending", "g", PowerState::On, Phase::Booting);
    let nodes = vec![node_for(&stale, false), node_for(&going, true)];
    let inv = Inventory::build(
        vec![group("g", 0, None)],
        vec![stale, going, pending],
        nodes,
    );
    let by_name = |n: &str| NodeRef {
        provider_id: default_provider_id("lab", n),
        name: n.to_owned(),
    };
    assert_eq!(node_group_for_node(&inv, &by_name("stale"), t(0)), None);
    assert_eq!(node_group_for_node(&inv, &by_name("going"), t(0)), None);
    assert_eq!(
        node_group_for_node(&inv, &fake_node("pending"), t(0)).map(|g| g.id),
        Some("g".to_owned())
    );
}

/// CA keys backoff and scale-up requests by group id; a provider reading every
/// namespace uses `<namespace>/<name>` from the start, so a same-named Group appearing in another
/// namespace renames nothing.
#[test]
fn group_ids_are_stable_when_a_same_named_group_appears() {
    let before = Inventory::build_with_ids(
        GroupIds::NamespacedName,
        vec![group("g", 0, None)],
        vec![],
        vec![],
    );
    let mut other = group("g", 0, None);
    other.namespace = "other".into();
    let after = Inventory::build_with_ids(
        GroupIds::NamespacedName,
        vec![group("g", 0, None), other],
        vec![],
        vec![],
    );
    assert_eq!(before.group_ids().collect::<Vec<_>>(), vec!["lab/g"]);
    assert_eq!(
        after.group_ids().collect::<Vec<_>>(),
        vec!["lab/g", "other/g"]
    );
    // One namespace: names, which are unique there.
    let one = Inventory::build_with_ids(GroupIds::Name, vec![group("g", 0, None)], vec![], vec![]);
    assert_eq!(one.group_ids().collect::<Vec<_>>(), vec!["g"]);
}

/// Rule 8: a running member's live Node is a template source (also when it is the only shape
/// known), with ephemeral-storage when known; the architecture comes
/// from what is known of the machine and is omitted otherwise.
#[test]
fn template_from_a_running_members_live_node() {
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let mut n = node_for(&a, true);
    n.capacity = [
        ("cpu".to_string(), "8".to_string()),
        ("memory".to_string(), "32Gi".to_string()),
        ("ephemeral-storage".to_string(), "100Gi".to_string()),
    ]
    .into();
    n.labels = [("kubernetes.io/arch".to_string(), "arm64".to_string())].into();
    let inv = Inventory::build(vec![group("g", 0, None)], vec![a.clone()], vec![n]);
    let tn = template_node(&inv, "g").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        tn.capacity.get("ephemeral-storage").map(String::as_str),
        Some("100Gi")
    );
    assert_eq!(
        tn.allocatable.get("ephemeral-storage").map(String::as_str),
        Some("100Gi")
    );
    assert_eq!(
        tn.labels.get("kubernetes.io/arch").map(String::as_str),
        Some("arm64")
    );
    // Declared capacity without an architecture: no arch label at all.
    let mut h = machine("h", "g", PowerState::Off, Phase::Off);
    Arc::make_mut(&mut h.hints).capacity = [("cpu".to_string(), "4".to_string())].into();
    let inv = Inventory::build(vec![group("g", 0, None)], vec![h.clone()], vec![]);
    let tn = template_node(&inv, "g").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tn.labels.get("kubernetes.io/arch"), None);
    // ... unless the spec declares it.
    Arc::make_mut(&mut h.hints).labels =
        [("kubernetes.io/arch".to_string(), "arm64".to_string())].into();
    let inv = Inventory::build(vec![group("g", 0, None)], vec![h], vec![]);
    let tn = template_node(&inv, "g").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        tn.labels.get("kubernetes.io/arch").map(String::as_str),
        Some("arm64")
    );
}

/// The Group warnings the group controller writes: options that cost CA's startup time
/// (rule 9) and a group no template can be built for (rule 8).
#[test]
fn group_warnings_name_options_cost_and_missing_capacity() {
    use super::warnings::{GROUP_WARNING_CONDITIONS, group_warnings};
    let mut g = group("g", 0, None);
    g.options.max_node_provision = Some(SignedDuration::from_mins(20));
    let bare = machine("bare", "g", PowerState::Off, Phase::Off);
    let inv = Inventory::build(vec![g], vec![bare.clone()], vec![]);
    let w = group_warnings(&inv, "lab", "g");
    let types: Vec<&str> = w.iter().map(|w| w.condition_type).collect();
    assert_eq!(types, GROUP_WARNING_CONDITIONS.to_vec());
    assert!(
        w[0].message.contains("maxNodeProvisionTime"),
        "{}",
        w[0].message
    );
    assert!(w[1].message.contains("spec.capacity"), "{}", w[1].message);
    // No options, capacity declared: nothing to warn about.
    let mut sized = bare;
    Arc::make_mut(&mut sized.hints).capacity = [("cpu".to_string(), "4".to_string())].into();
    let inv = Inventory::build(vec![group("g", 0, None)], vec![sized], vec![]);
    assert!(group_warnings(&inv, "lab", "g").is_empty());
    assert!(group_warnings(&inv, "lab", "nope").is_empty());
}

/// IncreaseSize after a scale-down: the machine CA just deleted is still shutting down and its
/// Node still Ready, another member is down. Whatever the `powerOnOrder`, the down one is
/// picked (the other would need its shutdown and then a boot; CA's scale-up orchestrator,
/// `core/scaleup/orchestrator/orchestrator.go`, only chooses the group and a node count).
#[test]
fn a_spare_still_shutting_down_is_picked_after_one_that_is_down() {
    // m1 sorts first by name, is the cheapest, the fastest and the least recently used.
    let mut going = machine("m1", "g", PowerState::Off, Phase::PoweringOff);
    going.hourly_rate = Some(0.10);
    going.boot_durations = vec![SignedDuration::from_secs(30)];
    let mut down = machine("m2", "g", PowerState::Off, Phase::Off);
    down.hourly_rate = Some(0.40);
    down.boot_durations = vec![SignedDuration::from_secs(300)];
    down.last_power_on = Some(t(-60));
    let node = node_for(&going, true);
    for order in PowerOnOrder::ALL {
        let mut g = group("g", 0, None);
        g.power_on_order = order;
        let inv = Inventory::build(
            vec![g],
            vec![going.clone(), down.clone()],
            vec![node.clone()],
        );
        let one = increase_size(&inv, "g", 1, t(0)).map(|d| names(&d));
        assert_eq!(one.ok(), Some(vec!["m2".to_owned()]), "{order:?}");
        // Both when both are asked for, the down one first.
        let two = increase_size(&inv, "g", 2, t(0)).map(|d| names(&d));
        assert_eq!(
            two.ok(),
            Some(vec!["m2".to_owned(), "m1".to_owned()]),
            "{order:?}"
        );
        // The price quoted for the group's next node is the one IncreaseSize picks.
        let rate = inv.group("g").map(|g| group_hourly_rate(&inv, g, t(0)));
        assert_eq!(rate, Some(0.40), "{order:?}");
    }
    // Off already but its Node is still Ready (not yet marked NotReady): not down either.
    let mut stale = going.clone();
    stale.lifecycle.phase = Some(Phase::Off);
    let inv = Inventory::build(
        vec![group("g", 0, None)],
        vec![stale, down.clone()],
        vec![node.clone()],
    );
    let one = increase_size(&inv, "g", 1, t(0)).map(|d| names(&d));
    assert_eq!(one.ok(), Some(vec!["m2".to_owned()]));
}

/// The failure rule comes first: a healthy machine still shutting down (a shutdown's delay)
/// goes before a down machine whose last power-on failed (it may not boot at all, and CA
/// waits its whole provision time to find out).
#[test]
fn a_healthy_machine_shutting_down_goes_before_a_down_one_that_failed() {
    let going = machine("m1", "g", PowerState::Off, Phase::PoweringOff);
    let mut failed = machine("m0", "g", PowerState::Off, Phase::Off);
    failed.lifecycle.last_power_on_failure = Some(t(-7200));
    let node = node_for(&going, true);
    let inv = Inventory::build(vec![group("g", 0, None)], vec![going, failed], vec![node]);
    let two = increase_size(&inv, "g", 2, t(0)).map(|d| names(&d));
    assert_eq!(two.ok(), Some(vec!["m1".to_owned(), "m0".to_owned()]));
}

/// The quoted price follows the same pickability as IncreaseSize: a machine held back (here
/// still on its way off after a failed power-on) is not the one quoted.
#[test]
fn the_group_price_skips_machines_increase_size_cannot_pick() {
    // Both failed long ago; m0's failure is older (first in order) but it is still going off.
    let mut held = machine("m0", "g", PowerState::Off, Phase::PoweringOff);
    held.lifecycle.last_power_on_failure = Some(t(-7200));
    held.hourly_rate = Some(0.10);
    let mut ok = machine("m1", "g", PowerState::Off, Phase::Off);
    ok.lifecycle.last_power_on_failure = Some(t(-3600));
    ok.hourly_rate = Some(0.70);
    let inv = Inventory::build(vec![group("g", 0, None)], vec![held, ok], vec![]);
    let one = increase_size(&inv, "g", 1, t(0)).map(|d| names(&d));
    assert_eq!(one.ok(), Some(vec!["m1".to_owned()]));
    let rate = inv.group("g").map(|g| group_hourly_rate(&inv, g, t(0)));
    assert_eq!(rate, Some(0.70));
}
/// A machine with a power-on operation started at `started` (running: not completed).
fn acting(name: &str, phase: Phase, started: Timestamp) -> MachineView {
    let mut m = machine(name, "g", PowerState::On, phase);
    m.lifecycle.operation = Some(crate::operator::machine::Operation {
        kind: crate::operator::machine::OperationKind::PowerOn,
        id: "on-1".into(),
        started,
        deadline: t(100_000),
        completed: None,
    });
    m.power_on_requested = Some(started);
    m
}

/// MaxSize is what CA can get at `now`: machines wanted on plus spares IncreaseSize may pick.
/// A spare in its failure cool-down is not counted, so CA (which caps its request at MaxSize:
/// `processors/nodegroupset/balancing_processor.go` `BalanceScaleUpBetweenGroups`) asks for
/// what the healthy spares can serve instead of failing the whole IncreaseSize.
#[test]
fn max_size_counts_only_spares_increase_size_can_pick() {
    let on = machine("a", "g", PowerState::On, Phase::Ready);
    let mut cooling = machine("b", "g", PowerState::Off, Phase::Off);
    cooling.lifecycle.last_power_on_failure = Some(t(-60));
    let spare = machine("c", "g", PowerState::Off, Phase::Off);
    let na = node_for(&on, true);
    for max in [None, Some(3), Some(10)] {
        let inv = Inventory::build(
            vec![group("g", 0, max)],
            vec![on.clone(), cooling.clone(), spare.clone()],
            vec![na.clone()],
        );
        let g = node_groups(&inv, t(0));
        assert_eq!(
            g.iter().map(|g| g.max_size).collect::<Vec<_>>(),
            vec![2],
            "{max:?}"
        );
        let g = node_group_for_node(&inv, &fake("a"), t(0)).map(|g| g.max_size);
        assert_eq!(g, Some(2), "{max:?}");
        // CA's request capped at MaxSize - target is served.
        assert!(increase_size(&inv, "g", 1, t(0)).is_ok());
        // Once the cool-down (30m) is over, the machine counts again (up to spec.maxSize).
        let later = node_groups(&inv, t(1800)).first().map(|g| g.max_size);
        assert_eq!(later, Some(max.unwrap_or(3).min(3)), "{max:?}");
    }
    // A spec.maxSize below what could be picked still caps it.
    let inv = Inventory::build(
        vec![group("g", 0, Some(1))],
        vec![on.clone(), cooling.clone(), spare.clone()],
        vec![na.clone()],
    );
    assert_eq!(node_groups(&inv, t(0)).first().map(|g| g.max_size), Some(1));
}

/// A `zeroOrMaxNodeScaling` group is asked for MaxSize - target at once
/// (`core/scaleup/orchestrator/orchestrator.go` sets the node count to MaxSize): with a
/// spare cooling down, that request is still one IncreaseSize can serve.
#[test]
fn a_zero_or_max_group_with_a_spare_cooling_down_can_still_scale() {
    let mut cooling = machine("a", "g", PowerState::Off, Phase::Off);
    cooling.lifecycle.last_power_on_failure = Some(t(-60));
    let b = machine("b", "g", PowerState::Off, Phase::Off);
    let c = machine("c", "g", PowerState::Off, Phase::Off);
    let mut g = group("g", 0, None);
    g.options.zero_or_max_node_scaling = Some(true);
    let inv = Inventory::build(vec![g], vec![cooling, b, c], vec![]);
    let max = node_groups(&inv, t(0))
        .first()
        .map(|g| g.max_size)
        .unwrap_or(0);
    let target = target_size(&inv, "g").unwrap_or(u32::MAX);
    let delta = i32::try_from(max - target).unwrap_or(0);
    let d = increase_size(&inv, "g", delta, t(0)).map(|d| names(&d));
    assert_eq!(d.ok(), Some(vec!["b".to_owned(), "c".to_owned()]));
}

/// DecreaseTargetSize after a scale-up timed out (CA's `clusterstate/clusterstate.go`
/// `updateScaleRequests` calls it once the request is older than the group's
/// maxNodeProvisionTime; `core/static_autoscaler.go` `fixNodeGroupSize` after an incorrect
/// size lasted as long): a machine whose power-on was requested at least that long ago is
/// recorded as failed, so IncreaseSize does not pick it again after CA's backoff.
#[test]
fn cancelling_a_power_on_older_than_the_provision_time_records_a_failure() {
    let slow = acting("a", Phase::Booting, t(0));
    let b = machine("b", "g", PowerState::Off, Phase::Off);
    let inv = Inventory::build(
        vec![group("g", 0, None)],
        vec![slow.clone(), b.clone()],
        vec![],
    );
    // CA's default provision time is 15m.
    let d = decrease_target_size(&inv, "g", -1, t(15 * 60), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names(&d), vec!["a"]);
    assert!(d.changes[0].power_on_failed, "timed out: a failed power-on");
    let mut after = inv.clone();
    after.apply("g", &d.changes);
    let again = increase_size(&after, "g", 1, t(16 * 60)).map(|d| names(&d));
    assert_eq!(again.ok(), Some(vec!["b".to_owned()]));
    // Younger than the provision time: a plain cancellation.
    let d =
        decrease_target_size(&inv, "g", -1, t(15 * 60 - 1), None).unwrap_or_else(|e| panic!("{e}"));
    assert!(!d.changes[0].power_on_failed);
    // The Group's maxNodeProvisionTime applies when set.
    let mut g = group("g", 0, None);
    g.options.max_node_provision = Some(SignedDuration::from_mins(5));
    let inv = Inventory::build(vec![g], vec![slow, b], vec![]);
    let d = decrease_target_size(&inv, "g", -1, t(5 * 60), None).unwrap_or_else(|e| panic!("{e}"));
    assert!(d.changes[0].power_on_failed);
    // ... even over CA's flag (the defaults CA sends with NodeGroupGetOptions).
    let ca = Some(SignedDuration::from_secs(15));
    let d = decrease_target_size(&inv, "g", -1, t(60), ca).unwrap_or_else(|e| panic!("{e}"));
    assert!(!d.changes[0].power_on_failed);
}

/// Without a Group setting, CA's own `--max-node-provision-time` (learnt from the defaults of
/// NodeGroupGetOptions) is the provision time.
#[test]
fn cas_provision_flag_applies_when_the_group_sets_none() {
    let slow = acting("a", Phase::Booting, t(0));
    let inv = Inventory::build(vec![group("g", 0, None)], vec![slow], vec![]);
    let ca = Some(SignedDuration::from_secs(15));
    let d = decrease_target_size(&inv, "g", -1, t(15), ca).unwrap_or_else(|e| panic!("{e}"));
    assert!(d.changes[0].power_on_failed);
    let d = decrease_target_size(&inv, "g", -1, t(14), ca).unwrap_or_else(|e| panic!("{e}"));
    assert!(!d.changes[0].power_on_failed);
}

/// The missing instances CA cancels are the failed ones: machines that failed (phase Failed, or
/// a power-on failure after their request) go first, then those with no operation started yet,
/// and a healthy booting machine last, even when its request is the newest.
#[test]
fn decrease_target_size_cancels_failed_and_unstarted_before_booting() {
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let booting = acting("booting", Phase::Booting, t(50));
    let mut failed = machine("failed", "g", PowerState::On, Phase::Failed);
    failed.power_on_requested = Some(t(10));
    let mut retrying = acting("retrying", Phase::PoweringOn, t(20));
    retrying.lifecycle.last_power_on_failure = Some(t(30));
    let mut idle = machine("idle", "g", PowerState::On, Phase::Off);
    idle.power_on_requested = Some(t(40));
    let na = node_for(&a, true);
    let inv = Inventory::build(
        vec![group("g", 0, None)],
        vec![a, booting, failed, retrying, idle],
        vec![na],
    );
    let pick = |n: i32| {
        decrease_target_size(&inv, "g", n, t(60), None)
            .map(|d| names(&d))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(pick(-2), vec!["retrying", "failed"]);
    assert_eq!(pick(-3), vec!["retrying", "failed", "idle"]);
    assert_eq!(pick(-4), vec!["retrying", "failed", "idle", "booting"]);
}

/// The trust boundary in the provider: a Kubernetes Node no Node CR may adopt (not labelled
/// adoptable, or a control-plane node) is in no group, by name or by providerID, and
/// NodeGroupNodes does not list its machine as an instance CA would match to it. CA takes a
/// node whose NodeGroupForNode is nil as not autoscaled: the externalgrpc provider returns nil
/// for an empty id (cloudprovider/externalgrpc/externalgrpc_cloud_provider.go, NodeGroupForNode),
/// PreFilteringScaleDownNodeProcessor.GetScaleDownCandidates skips it ("should not be processed
/// by cluster autoscaler", processors/nodes/pre_filtering_processor.go), so CA never asks to
/// delete it, and ClusterStateRegistry.updateReadinessStats counts it in no group's readiness
/// (clusterstate/clusterstate.go).
mod trust {
    use std::sync::Arc;

    use super::*;
    use crate::operator::api::{Group, Machine};
    use crate::operator::provider::rebuild::InventoryBuilder;
    use crate::operator::trust::TrustPolicy;
    use crate::testing::{NodeExt as _, node};

    fn objects() -> (Vec<Arc<Group>>, Vec<Arc<Machine>>) {
        let group = Group::test("workers").min(0).max(3).build();
        let m = |name: &str, host: &str| {
            Arc::new(
                Machine::test(name)
                    .group("workers")
                    .desired(PowerState::On)
                    .node_name(host)
                    .build(),
            )
        };
        (
            vec![Arc::new(group)],
            vec![m("m1", "host1"), m("m2", "host2")],
        )
    }

    fn group_for(inv: &Inventory, provider_id: &str, name: &str) -> Option<String> {
        node_group_for_node(
            inv,
            &NodeRef {
                provider_id: provider_id.into(),
                name: name.into(),
            },
            t(0),
        )
        .map(|g| g.id)
    }

    fn instances(inv: &Inventory) -> Vec<String> {
        node_group_nodes(inv, "workers")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|i| i.id)
            .collect()
    }

    #[test]
    fn a_node_not_labelled_adoptable_is_in_no_group_and_a_labelled_one_is() {
        let (groups, machines) = objects();
        let nodes = [
            Arc::new(node("host1").ready().cached()),
            Arc::new(node("host2").adoptable().ready().cached()),
        ];
        let inv = Inventory::from_objects(&groups, &machines, &nodes);
        assert_eq!(group_for(&inv, "", "host1"), None);
        assert_eq!(group_for(&inv, "", "host2"), Some("workers".to_owned()));
    }

    #[test]
    fn a_control_plane_node_carrying_a_machines_provider_id_is_in_no_group_and_not_listed() {
        let (groups, machines) = objects();
        let m1 = "homelab://lab/m1";
        let nodes = [Arc::new(
            node("host1")
                .label("node-role.kubernetes.io/control-plane", "")
                .adoptable()
                .provider_id(m1)
                .ready()
                .cached(),
        )];
        let inv = Inventory::from_objects(&groups, &machines, &nodes);
        assert_eq!(group_for(&inv, m1, "host1"), None);
        assert_eq!(group_for(&inv, m1, "other-name"), None, "by providerID too");
        assert_eq!(group_for(&inv, "", "host1"), None, "by name too");
        assert_eq!(
            instances(&inv),
            ["homelab://lab/m2"],
            "m1's instance would be matched to the control-plane node"
        );
    }

    #[test]
    fn the_builder_judges_nodes_under_the_operators_selector() {
        let (groups, machines) = objects();
        let nodes = [Arc::new(
            node("host1")
                .label("homelab/pool", "desktops")
                .ready()
                .cached(),
        )];
        let mut builder = InventoryBuilder::default();
        let before = builder.build(&groups, &machines, &nodes);
        assert_eq!(group_for(&before, "", "host1"), None);
        builder.set_trust(TrustPolicy {
            adopt_node_selector: [("homelab/pool".to_owned(), "desktops".to_owned())].into(),
            ..TrustPolicy::default()
        });
        assert!(
            builder.update(&groups, &[], Some(&nodes)).is_none(),
            "a new policy needs a full build"
        );
        let after = builder.build(&groups, &machines, &nodes);
        assert_eq!(group_for(&after, "", "host1"), Some("workers".to_owned()));
    }

    #[test]
    fn a_node_losing_the_label_leaves_its_group_on_an_incremental_update() {
        let (groups, machines) = objects();
        let m1 = "homelab://lab/m1";
        let labelled = [Arc::new(
            node("host1").adoptable().provider_id(m1).ready().cached(),
        )];
        let mut builder = InventoryBuilder::default();
        let inv = builder.build(&groups, &machines, &labelled);
        assert_eq!(group_for(&inv, m1, "host1"), Some("workers".to_owned()));
        let unlabelled = [Arc::new(node("host1").provider_id(m1).ready().cached())];
        let inv = builder
            .update(&groups, &[], Some(&unlabelled))
            .unwrap_or_else(|| panic!("an update"));
        assert_eq!(group_for(&inv, m1, "host1"), None);
        assert!(
            !instances(&inv).contains(&m1.to_owned()),
            "{:?}",
            instances(&inv)
        );
    }
}

// Maintenance and paused groups (docs/ca-contract.md, "Maintenance and paused groups").

/// Group "g" (min 0, max 4): a ready and registered, m ready and registered but under
/// maintenance (drained, kept on), c and d off, x off under maintenance.
fn maintenance_lab() -> Inventory {
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let mut m = machine("m", "g", PowerState::On, Phase::Ready);
    m.maintenance = true;
    let c = machine("c", "g", PowerState::Off, Phase::Off);
    let d = machine("d", "g", PowerState::Off, Phase::Off);
    let mut x = machine("x", "g", PowerState::Off, Phase::Off);
    x.maintenance = true;
    let nodes = vec![node_for(&a, true), node_for(&m, true)];
    Inventory::build(vec![group("g", 0, Some(4))], vec![a, m, c, d, x], nodes)
}

/// CA must neither wait for a maintenance machine nor count it: `clusterstate.go`
/// `getNotRegisteredNodes` takes every listed instance without errorInfo that is not Deleting
/// as expected to register, and `updateReadinessStats` counts a registered node of the group
/// against the target. A machine under maintenance is therefore not listed, not in the target,
/// and its Node belongs to no group (an autoscaled node CA's `core/scaledown/eligibility`
/// `unremovableReasonAndNodeUtilization` skips as `NotAutoscaled`).
#[test]
fn a_machine_under_maintenance_is_no_instance_no_target_and_no_group_node() {
    let inv = maintenance_lab();
    let listed: Vec<String> = node_group_nodes(&inv, "g")
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.machine.name)
        .collect();
    assert_eq!(listed, vec!["a".to_owned()]);
    assert_eq!(target_size(&inv, "g").ok(), Some(1));
    assert_eq!(node_group_for_node(&inv, &fake("m"), t(0)), None);
    assert!(node_group_for_node(&inv, &fake("a"), t(0)).is_some());
}

/// An off machine is capacity up to MaxSize; one off for maintenance is not: MaxSize is the
/// target (a) plus the two free spares (c, d), not four.
#[test]
fn a_machine_off_for_maintenance_is_not_capacity_ca_can_power_on() {
    let inv = maintenance_lab();
    let g = inv.group("g").map(|g| max_size(&inv, g, t(0)));
    assert_eq!(g, Some(3));
}

#[test]
fn increase_size_never_picks_a_machine_under_maintenance() {
    let inv = maintenance_lab();
    let d = increase_size(&inv, "g", 2, t(0));
    assert_eq!(
        d.as_ref().map(names).ok(),
        Some(vec!["c".into(), "d".into()])
    );
    let e = increase_size(&inv, "g", 3, t(0));
    assert!(
        matches!(
            e,
            Err(ProviderError::NotEnoughMachines { available: 2, .. })
        ),
        "{e:?}"
    );
    // Only machines under maintenance are off: nothing to pick.
    let mut only = machine("x", "g", PowerState::Off, Phase::Off);
    only.maintenance = true;
    let inv = Inventory::build(vec![group("g", 0, None)], vec![only], vec![]);
    assert!(increase_size(&inv, "g", 1, t(0)).is_err());
    assert_eq!(inv.group("g").map(|g| max_size(&inv, g, t(0))), Some(0));
}

#[test]
fn delete_nodes_refuses_a_machine_under_maintenance() {
    let inv = maintenance_lab();
    let e = delete_nodes(&inv, "g", &[fake("m")], t(0));
    assert!(
        matches!(e, Err(ProviderError::UnderMaintenance { .. })),
        "{e:?}"
    );
    let e = decrease_target_size(&inv, "g", -1, t(0), None);
    // m is registered and not CA's; the target (1) is a's, registered: nothing to cancel.
    assert!(e.is_err(), "{e:?}");
}

/// A machine under maintenance that is on but has not registered (booted into something
/// else, e.g. an installer) is not listed: CA would take it for an instance that never
/// registered and delete it after its provision time (`clusterstate.go`
/// `updateUnregisteredNodes`, `static_autoscaler.go` `removeOldUnregisteredNodes`).
#[test]
fn a_machine_under_maintenance_booting_elsewhere_is_not_an_unregistered_instance() {
    let mut m = machine("m", "g", PowerState::On, Phase::Booting);
    m.maintenance = true;
    let inv = Inventory::build(vec![group("g", 0, None)], vec![m], vec![]);
    assert_eq!(node_group_nodes(&inv, "g").unwrap_or_default(), vec![]);
    assert_eq!(target_size(&inv, "g").ok(), Some(0));
    assert!(decrease_target_size(&inv, "g", -1, t(0), None).is_err());
}

/// A paused group: min = max = target, so CA's scale-up and scale-down leave it alone without
/// an error that would back it off; asked anyway, every mutation is refused.
#[test]
fn a_paused_group_answers_min_and_max_at_its_target_and_refuses_changes() {
    let a = machine("a", "g", PowerState::On, Phase::Ready);
    let b = machine("b", "g", PowerState::Off, Phase::Off);
    let na = node_for(&a, true);
    let mut g = group("g", 0, Some(2));
    g.paused = true;
    let inv = Inventory::build(vec![g], vec![a, b], vec![na]);
    let info = node_groups(&inv, t(0));
    let bounds: Vec<(u32, u32)> = info.iter().map(|g| (g.min_size, g.max_size)).collect();
    assert_eq!(bounds, vec![(1, 1)]);
    assert_eq!(
        node_group_for_node(&inv, &fake("a"), t(0)).map(|g| (g.min_size, g.max_size)),
        Some((1, 1))
    );
    for r in [
        increase_size(&inv, "g", 1, t(0)),
        delete_nodes(&inv, "g", &[fake("a")], t(0)),
        decrease_target_size(&inv, "g", -1, t(0), None),
    ] {
        assert!(matches!(r, Err(ProviderError::Paused { .. })), "{r:?}");
    }
    assert_eq!(
        ProviderError::Paused { group: "g".into() }.kind(),
        ErrorKind::FailedPrecondition
    );
}

// Wear limits and quiet hours (docs/ca-contract.md, "Wear limits and quiet hours"). t(0) is
// 2027-01-15 08:00 UTC, a Friday.

mod wear {
    use super::*;
    use crate::operator::api::QuietHours;
    use crate::operator::policy::wear::{GroupWear, MachineWear, Quiet};

    fn quiet(from: &str, to: &str, after: Option<&str>) -> Quiet {
        let w = QuietHours {
            days: Vec::new(),
            from: from.to_owned(),
            to: to.to_owned(),
            no_power_off: None,
            power_on_after: after.map(str::to_owned),
        };
        Quiet::parse("spec.wear.quietHours", &[w]).unwrap()
    }

    fn group_wear(limit: Option<u32>, q: Quiet) -> Option<Arc<GroupWear>> {
        Some(Arc::new(GroupWear {
            max_boots_per_day: limit,
            time_zone: jiff::tz::TimeZone::UTC,
            quiet: q,
        }))
    }

    fn booted(m: &mut MachineView, starts: &[i64]) {
        m.wear = Some(Arc::new(MachineWear {
            boot_starts: starts.iter().map(|s| t(*s)).collect(),
            ..MachineWear::default()
        }));
    }

    #[test]
    fn increase_size_passes_over_machines_at_their_boot_limit_while_others_can_take_it() {
        let mut c = machine("c", "g", PowerState::Off, Phase::Off);
        booted(&mut c, &[-3600, -1800]);
        let d = machine("d", "g", PowerState::Off, Phase::Off);
        let mut g = group("g", 0, None);
        g.wear = group_wear(Some(2), Quiet::default());
        let inv = Inventory::build(vec![g], vec![c, d], vec![]);
        let one = increase_size(&inv, "g", 1, t(0)).unwrap();
        assert_eq!(names(&one), ["d"]);
        // Every spare needed: the one at its limit is booted too.
        let two = increase_size(&inv, "g", 2, t(0)).unwrap();
        assert_eq!(names(&two), ["d", "c"]);
        // A day later its boots no longer count: back to name order.
        let later = increase_size(&inv, "g", 1, t(24 * 3600)).unwrap();
        assert_eq!(names(&later), ["c"]);
    }

    #[test]
    fn a_node_crs_own_limit_overrides_its_groups() {
        let mut c = machine("c", "g", PowerState::Off, Phase::Off);
        booted(&mut c, &[-3600]);
        let d = machine("d", "g", PowerState::Off, Phase::Off);
        let mut g = group("g", 0, None);
        g.wear = group_wear(Some(1), Quiet::default());
        let mut with_own = c.clone();
        with_own.wear = Some(Arc::new(MachineWear {
            max_boots_per_day: Some(5),
            quiet: None,
            boot_starts: vec![t(-3600)],
        }));
        let inv = Inventory::build(vec![g.clone()], vec![c, d.clone()], vec![]);
        assert_eq!(names(&increase_size(&inv, "g", 1, t(0)).unwrap()), ["d"]);
        let inv = Inventory::build(vec![g], vec![with_own, d], vec![]);
        assert_eq!(names(&increase_size(&inv, "g", 1, t(0)).unwrap()), ["c"]);
    }

    #[test]
    fn delete_nodes_refuses_a_registered_member_in_quiet_hours() {
        let a = machine("a", "g", PowerState::On, Phase::Ready);
        let b = machine("b", "g", PowerState::On, Phase::Failed);
        let na = node_for(&a, true);
        let mut g = group("g", 0, None);
        g.wear = group_wear(None, quiet("07:00", "09:00", None));
        let inv = Inventory::build(vec![g], vec![a, b], vec![na]);
        let e = delete_nodes(&inv, "g", &[fake("a")], t(0)).err();
        assert_eq!(
            e.as_ref().map(|e| e.kind()),
            Some(ErrorKind::FailedPrecondition)
        );
        let message = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("quiet hours of its Group lab/g"),
            "{message}"
        );
        assert!(message.contains("2027-01-15T09:00:00Z"), "{message}");
        // A failed boot is still cancelled; after the window the node goes.
        assert!(delete_nodes(&inv, "g", &[fake("b")], t(0)).is_ok());
        assert!(delete_nodes(&inv, "g", &[fake("a")], t(3600)).is_ok());
    }

    #[test]
    fn a_window_with_no_power_off_false_lets_delete_nodes_through() {
        let a = machine("a", "g", PowerState::On, Phase::Ready);
        let na = node_for(&a, true);
        let w = QuietHours {
            days: Vec::new(),
            from: "07:00".to_owned(),
            to: "09:00".to_owned(),
            no_power_off: Some(false),
            power_on_after: None,
        };
        let mut g = group("g", 0, None);
        g.wear = group_wear(None, Quiet::parse("q", &[w]).unwrap());
        let inv = Inventory::build(vec![g], vec![a], vec![na]);
        assert!(delete_nodes(&inv, "g", &[fake("a")], t(0)).is_ok());
    }

    #[test]
    fn max_size_is_the_target_in_quiet_hours_until_a_pod_waited_power_on_after() {
        let mut g = group("g", 0, None);
        g.wear = group_wear(None, quiet("07:00", "09:00", Some("30m")));
        let mut inv = lab_with(g);
        let info = |inv: &Inventory, at| node_groups(inv, at)[0].max_size;
        // Target 2 (a ready, b booting), three spares.
        assert_eq!(info(&inv, t(0)), 2);
        inv.set_unschedulable_since(Some(t(-10 * 60)));
        assert_eq!(info(&inv, t(0)), 2);
        inv.set_unschedulable_since(Some(t(-30 * 60)));
        assert_eq!(info(&inv, t(0)), 5);
        // Outside the window nothing is held.
        inv.set_unschedulable_since(None);
        assert_eq!(info(&inv, t(2 * 3600)), 5);
    }

    fn lab_with(g: GroupView) -> Inventory {
        let a = machine("a", "g", PowerState::On, Phase::Ready);
        let b = machine("b", "g", PowerState::On, Phase::Booting);
        let c = machine("c", "g", PowerState::Off, Phase::Off);
        let d = machine("d", "g", PowerState::Off, Phase::Off);
        let e = machine("e", "g", PowerState::Off, Phase::Off);
        let na = node_for(&a, true);
        Inventory::build(vec![g], vec![a, b, c, d, e], vec![na])
    }
}

/// Group "g" (min 0) with a window 08:00-09:00 UTC every day raising its minimum to `min`; the
/// members as given.
fn scheduled(min: i32, machines: Vec<MachineView>) -> Inventory {
    use crate::operator::api::{GroupSpec, ScheduleWindow};
    use crate::operator::policy::schedule::{MinSizes, Schedule};
    let spec = GroupSpec {
        schedule: vec![ScheduleWindow {
            name: "morning".into(),
            from: "08:00".into(),
            to: "09:00".into(),
            min_size: Some(min),
            ..ScheduleWindow::default()
        }],
        ..GroupSpec::default()
    };
    let parsed = Schedule::parse("", jiff::tz::TimeZone::UTC, &spec.schedule).unwrap();
    let mut g = group("g", 0, None);
    g.schedule = MinSizes::of(&spec, parsed).map(Arc::new);
    Inventory::build(vec![g], machines, vec![])
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

#[test]
fn min_size_is_the_windows_while_it_holds() {
    let off = |n| machine(n, "g", PowerState::Off, Phase::Off);
    let inv = scheduled(2, vec![off("a"), off("b"), off("c")]);
    let min = |t| node_groups(&inv, at(t))[0].min_size;
    assert_eq!(min("2026-12-07T07:59:59Z"), 0);
    assert_eq!(min("2026-12-07T08:00:00Z"), 2);
    assert_eq!(min("2026-12-07T08:59:59Z"), 2);
    assert_eq!(min("2026-12-07T09:00:00Z"), 0);
    // Capped at the members: a window asking for more than there are.
    let inv = scheduled(5, vec![off("a"), off("b")]);
    assert_eq!(node_groups(&inv, at("2026-12-07T08:30:00Z"))[0].min_size, 2);
}

#[test]
fn raise_to_min_wants_spares_on_by_power_on_order_up_to_the_window_min() {
    let on = machine("a", "g", PowerState::On, Phase::Ready);
    let off = |n| machine(n, "g", PowerState::Off, Phase::Off);
    let inv = scheduled(3, vec![on, off("b"), off("c"), off("d")]);
    let d = raise_to_min(&inv, "g", at("2026-12-07T07:00:00Z")).unwrap();
    assert!(d.is_noop(), "outside the window: {d:?}");
    let d = raise_to_min(&inv, "g", at("2026-12-07T08:00:00Z")).unwrap();
    assert_eq!(names(&d), ["b", "c"]);
    assert_eq!((d.target_before, d.target_after), (1, 3));
    // Applied (or CA's own IncreaseSize got there first): nothing more.
    let mut after = inv.clone();
    after.apply("g", &d.changes);
    let again = raise_to_min(&after, "g", at("2026-12-07T08:00:01Z")).unwrap();
    assert!(again.is_noop(), "{again:?}");
}

#[test]
fn raise_to_min_skips_spares_cooling_down_after_a_failed_power_on() {
    let mut b = machine("b", "g", PowerState::Off, Phase::Off);
    b.power_on_failed_at = Some(at("2026-12-07T07:59:00Z"));
    let c = machine("c", "g", PowerState::Off, Phase::Off);
    let inv = scheduled(2, vec![b, c]);
    let d = raise_to_min(&inv, "g", at("2026-12-07T08:00:00Z")).unwrap();
    assert_eq!(names(&d), ["c"]);
}
