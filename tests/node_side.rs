//! What the operator writes on a machine's Kubernetes Node, against a real kube-apiserver (which
//! enforces what matters here: providerID is immutable once set, and resourceVersion
//! preconditions). The simulated world plays the kubelet that registers the Node.

mod support;

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kubectl_homelab::operator::api::{Machine, MachineStatus};
use kubectl_homelab::operator::ca::{
    DELETION_CANDIDATE_TAINT as CA_DELETION_CANDIDATE, SCALE_DOWN_DISABLED,
    TO_BE_DELETED_TAINT as CA_TO_BE_DELETED,
};
use kubectl_homelab::operator::node::drain::cordon;
use kubectl_homelab::operator::node::{
    self as node_side, ProviderIdCheck, cleanup_change, registration, snapshot,
};
use kubectl_homelab::testing::{NodeExt as _, taint};
use support::{ControlPlane, FakeNode, World};

// --- Reading the Node.

fn labels(n: &Node) -> BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

fn annotations(n: &Node) -> BTreeMap<String, String> {
    n.metadata.annotations.clone().unwrap_or_default()
}

/// Taints as `key=value:Effect`, sorted.
fn taints(n: &Node) -> Vec<String> {
    let mut t: Vec<String> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            format!(
                "{}={}:{}",
                t.key,
                t.value.as_deref().unwrap_or(""),
                t.effect
            )
        })
        .collect();
    t.sort();
    t
}

fn unschedulable(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

fn provider_id(n: &Node) -> Option<&str> {
    n.spec.as_ref().and_then(|s| s.provider_id.as_deref())
}

async fn get(cp: &ControlPlane, name: &str) -> anyhow::Result<Node> {
    Ok(Api::<Node>::all(cp.client()?).get(name).await?)
}

/// The registration write the machine controller makes for `m` on Node `name`.
async fn register(
    cp: &ControlPlane,
    m: &Machine,
    name: &str,
    group_scale_down_disabled: bool,
) -> anyhow::Result<Node> {
    let written = node_side::update_node(&cp.client()?, name, |n| {
        registration(m, n, group_scale_down_disabled).change
    })
    .await?;
    written.ok_or_else(|| anyhow::anyhow!("Node {name} is gone"))?;
    get(cp, name).await
}

/// What CA does to a Node it scales down (`MarkToBeDeleted` with its default
/// `--cordon-node-before-terminating`, after `MarkDeletionCandidate`): taints and cordon.
async fn ca_marks_for_deletion(cp: &ControlPlane, name: &str) -> anyhow::Result<()> {
    let n = get(cp, name).await?;
    let mut t = n.spec.and_then(|s| s.taints).unwrap_or_default();
    t.push(taint(
        CA_DELETION_CANDIDATE,
        "1700000000",
        "PreferNoSchedule",
    ));
    t.push(taint(CA_TO_BE_DELETED, "1700000000", "NoSchedule"));
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": n.metadata.resource_version },
        "spec": { "taints": t, "unschedulable": true },
    });
    Api::<Node>::all(cp.client()?)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_empty_provider_id_gets_set_and_a_set_one_is_never_changed() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let world = World::new(cp.client()?);
    let name = cp.unique_name("kubeadm");
    // kubeadm's kubelet registers without a providerID.
    world.node_up(&FakeNode::new(&name)).await?;
    let m = Machine::test("m1").node_name(&name).build();

    let n = register(cp, &m, &name, false).await?;
    assert_eq!(provider_id(&n), Some("homelab://lab/m1"));

    // Another machine claiming the same Node: reported, not written.
    let other = Machine::test("m2")
        .node_name(&name)
        .provider_id("homelab://lab/m2")
        .build();
    let r = registration(&other, &n.cached(), false);
    assert_eq!(
        r.provider_id,
        ProviderIdCheck::Mismatch {
            node: "homelab://lab/m1".to_owned(),
            expected: "homelab://lab/m2".to_owned()
        }
    );
    assert_eq!(r.change.provider_id, None);
    // Why it must never be written: the API server refuses to change a set providerID.
    let change = serde_json::json!({ "spec": { "providerID": "homelab://lab/m2" } });
    let refused = Api::<Node>::all(cp.client()?)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&change))
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn labels_and_taints_come_back_when_the_kubelet_registers_a_bare_node_again()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let world = World::new(cp.client()?);
    let name = cp.unique_name("reboot");
    let booted = FakeNode::new(&name)
        .label("gpu", "true")
        .taint("dedicated", "ml", "NoSchedule");
    world.node_up(&booted).await?;
    let mut m = Machine::test("m1")
        .node_name(&name)
        .node_label("zone", "attic")
        .build();
    let first = register(cp, &m, &name, false).await?;

    // Powered off: the status keeps the snapshot, the Node object is deleted (docs/ca-contract.md,
    // section 4).
    m.status = Some(MachineStatus {
        node: Some(Box::new(snapshot(&first.cached(), Timestamp::now()))),
        ..MachineStatus::default()
    });
    world.node_delete(&name).await?;
    // Powered on: the kubelet registers a bare Node (no providerID, no extra labels or taints).
    world.node_up(&FakeNode::new(&name)).await?;
    let bare = get(cp, &name).await?;
    assert!(!labels(&bare).contains_key("gpu"));

    let restored = register(cp, &m, &name, false).await?;
    assert_eq!(provider_id(&restored), Some("homelab://lab/m1"));
    assert_eq!(
        labels(&restored).get("gpu").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        labels(&restored).get("zone").map(String::as_str),
        Some("attic")
    );
    assert_eq!(taints(&restored), ["dedicated=ml:NoSchedule"]);
    // Nothing more to write: an idle machine causes no API writes.
    assert!(
        registration(&m, &restored.cached(), false)
            .change
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn cas_taints_are_never_restored_and_go_once_a_power_off_is_cancelled() -> anyhow::Result<()>
{
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let world = World::new(cp.client()?);
    let name = cp.unique_name("cancel");
    world
        .node_up(&FakeNode::new(&name).taint("dedicated", "ml", "NoSchedule"))
        .await?;
    ca_marks_for_deletion(cp, &name).await?;

    // A snapshot taken while CA had it marked carries no CA taints, so none come back.
    let marked = get(cp, &name).await?;
    let snap = snapshot(&marked.cached(), Timestamp::now());
    assert!(
        snap.taints
            .iter()
            .all(|t| t.key != CA_TO_BE_DELETED && t.key != CA_DELETION_CANDIDATE)
    );

    // Wanted on again: the machine controller performs Effect::Uncordon.
    cordon(&cp.client()?, &name, false).await?;
    let n = get(cp, &name).await?;
    assert_eq!(taints(&n), ["dedicated=ml:NoSchedule"]);
    assert!(!unschedulable(&n), "CA's cordon goes with CA's taint");
    Ok(())
}

#[tokio::test]
async fn scale_down_disabled_puts_cas_annotation_and_removes_only_ours() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let world = World::new(cp.client()?);
    let name = cp.unique_name("protected");
    world.node_up(&FakeNode::new(&name)).await?;
    let mut m = Machine::test("m1").node_name(&name).build();

    // The Group's flag alone is enough.
    let n = register(cp, &m, &name, true).await?;
    assert_eq!(
        annotations(&n).get(SCALE_DOWN_DISABLED).map(String::as_str),
        Some("true")
    );
    let n = register(cp, &m, &name, false).await?;
    assert!(!annotations(&n).contains_key(SCALE_DOWN_DISABLED));

    // The machine's flag, on a Node where a person had set CA's annotation already.
    let users = cp.unique_name("protected");
    world.node_up(&FakeNode::new(&users)).await?;
    let person =
        serde_json::json!({ "metadata": { "annotations": { SCALE_DOWN_DISABLED: "true" } } });
    Api::<Node>::all(cp.client()?)
        .patch(&users, &PatchParams::default(), &Patch::Merge(&person))
        .await?;
    m.spec.kubernetes_node_name = Some(users.clone());
    m.spec.scale_down_disabled = Some(true);
    register(cp, &m, &users, false).await?;
    m.spec.scale_down_disabled = Some(false);
    let n = register(cp, &m, &users, false).await?;
    assert_eq!(
        annotations(&n).get(SCALE_DOWN_DISABLED).map(String::as_str),
        Some("true"),
        "the person's annotation stays"
    );
    Ok(())
}

#[tokio::test]
async fn finalizer_cleanup_leaves_the_node_as_it_was_before_we_touched_it() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let world = World::new(cp.client()?);
    let name = cp.unique_name("finalize");
    world
        .node_up(&FakeNode::new(&name).label("team", "infra").taint(
            "owner",
            "alice",
            "PreferNoSchedule",
        ))
        .await?;
    let note = serde_json::json!({ "metadata": { "annotations": { "example.com/note": "mine" } } });
    Api::<Node>::all(cp.client()?)
        .patch(&name, &PatchParams::default(), &Patch::Merge(&note))
        .await?;
    let before = get(cp, &name).await?;

    let m = Machine::test("m1")
        .node_name(&name)
        .node_label("zone", "attic")
        .node_taint(taint("dedicated", "ml", "NoSchedule"))
        .scale_down_disabled(true)
        .build();
    register(cp, &m, &name, false).await?;
    cordon(&cp.client()?, &name, true).await?;
    let managed = get(cp, &name).await?;
    assert_ne!(labels(&managed), labels(&before));
    assert_ne!(taints(&managed), taints(&before));
    assert!(unschedulable(&managed));

    node_side::update_node(&cp.client()?, &name, cleanup_change).await?;
    let after = get(cp, &name).await?;
    assert_eq!(labels(&after), labels(&before));
    assert_eq!(annotations(&after), annotations(&before));
    assert_eq!(taints(&after), taints(&before));
    assert!(!unschedulable(&after));
    Ok(())
}

#[tokio::test]
async fn a_write_on_a_stale_view_is_a_conflict_not_a_lost_update() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let world = World::new(cp.client()?);
    let name = cp.unique_name("stale");
    world.node_up(&FakeNode::new(&name)).await?;
    let stale = get(cp, &name).await?;
    // Someone else (CA) writes the taint list after our view was taken.
    ca_marks_for_deletion(cp, &name).await?;

    let m = Machine::test("m1").node_name(&name).build();
    let stale_cached = stale.cached();
    let mut edit = node_side::NodeEdit::new(&stale_cached);
    edit.register(&m, false);
    let result = node_side::patch_node(&cp.client()?, &stale.cached(), &edit.change()).await;
    assert!(matches!(&result, Err(e) if e.is_conflict()), "{result:?}");
    let n = get(cp, &name).await?;
    assert!(taints(&n).iter().any(|t| t.starts_with(CA_TO_BE_DELETED)));
    Ok(())
}
