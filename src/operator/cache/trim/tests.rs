//! The trimmed objects the caches keep give the same answers as the objects the API server sends:
//! the same inventory views, Node-side changes, snapshot and readiness.
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use super::*;
use crate::operator::api::{Group, Machine};
use crate::operator::ca::SCALE_DOWN_DISABLED;
use crate::operator::kube_node::KubeNode;
use crate::operator::node::{self, CORDONED, DRAIN_STARTED, OWNED_LABELS, RESTORED};
use crate::operator::provider::convert::{group_view, machine_view};
use crate::operator::provider::inventory::{NodeView, POWER_ON_FAILED_ANNOTATION};
use crate::testing::taint;

/// A Node as a kubelet (kubeadm) reports it, with our records on it, CA's scale-down opt-out
/// set to `scale_down` and our record of added annotations set to `owned_annotations`.
fn kubelet_node(scale_down: Option<&str>, owned_annotations: &str, unschedulable: bool) -> Node {
    let mut annotations = json!({
        "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
        "flannel.alpha.coreos.com/public-ip": "192.168.1.21",
        "team.example.org/owner": "alice",
        OWNED_LABELS: "homelab/role",
        CORDONED: "true",
        DRAIN_STARTED: "2026-11-29T10:00:00Z",
        RESTORED: "true",
        OWNED_ANNOTATIONS: owned_annotations,
    });
    if let Some(v) = scale_down {
        annotations[SCALE_DOWN_DISABLED] = json!(v);
    }
    let condition = |t: &str, s: &str| {
        json!({
            "type": t, "status": s, "reason": format!("Kubelet{t}"),
            "message": format!("kubelet reports {t}={s} after a long explanation"),
            "lastHeartbeatTime": "2026-11-29T10:05:00Z",
            "lastTransitionTime": "2026-11-29T09:00:00Z",
        })
    };
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": "n1", "resourceVersion": "42", "uid": "u-1",
            "labels": {
                "kubernetes.io/hostname": "n1", "homelab/role": "worker",
                "node.kubernetes.io/exclude-from-external-load-balancers": "",
            },
            "annotations": annotations,
            "managedFields": [{ "manager": "kubelet", "operation": "Update", "apiVersion": "v1" }],
        },
        "spec": {
            "providerID": "homelab://lab/n1",
            "podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"],
            "unschedulable": unschedulable,
            "taints": [
                { "key": "homelab/gpu", "value": "yes", "effect": "NoSchedule" },
                { "key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule" },
                { "key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule",
                  "timeAdded": "2026-11-29T10:00:00Z" },
            ],
        },
        "status": {
            "capacity": { "cpu": "4", "memory": "16Gi", "pods": "110" },
            "allocatable": { "cpu": "3800m", "memory": "15Gi", "pods": "110" },
            "conditions": [
                condition("MemoryPressure", "False"), condition("DiskPressure", "False"),
                condition("PIDPressure", "False"), condition("Ready", "True"),
            ],
            "addresses": [{ "type": "InternalIP", "address": "192.168.1.21" },
                          { "type": "Hostname", "address": "n1" }],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
            "nodeInfo": {
                "machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6.12",
                "osImage": "Debian GNU/Linux 13", "containerRuntimeVersion": "containerd://2.1",
                "kubeletVersion": "v1.36.3", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "arm64",
            },
            "images": [{ "names": ["registry.k8s.io/kube-proxy:v1.36.3"], "sizeBytes": 30000000 }],
            "volumesInUse": ["kubernetes.io/csi/x"],
        },
    }))
    .unwrap_or_else(|e| panic!("kubelet Node fixture: {e}"))
}

fn trimmed(node: &Node) -> Node {
    let mut n = node.clone();
    strip_node(&mut n);
    n
}

/// A Node CR with every field the Node-side decisions read.
fn node_cr(scale_down_disabled: bool) -> Machine {
    Machine::test("n1")
        .group("workers")
        .scale_down_disabled(scale_down_disabled)
        .node_label("homelab/role", "worker")
        .node_label("homelab/zone", "rack1")
        .node_taint(taint("homelab/dedicated", "ci", "NoSchedule"))
        .taint_to_remove(taint("homelab/gpu", "", "NoSchedule"))
        .build()
}

/// Every Node-side decision the operator derives from a Node, for comparing two Nodes.
fn node_decisions(m: &Machine, n: &Node) -> Vec<String> {
    let t = Timestamp::UNIX_EPOCH;
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.last_transition_time.clone()));
    let cached = KubeNode::from(n);
    vec![
        format!("{:?}", NodeView::from_k8s(&cached)),
        format!("{:?}", node::snapshot(&cached, t)),
        format!("{:?}", node::registration(m, &cached, false)),
        format!("{:?}", node::registration(m, &cached, true)),
        format!("{:?}", node::cordon_change(&cached, true)),
        format!("{:?}", node::cordon_change(&cached, false)),
        format!("{:?}", node::cleanup_change(&cached)),
        format!("{:?}", node::provider_id_check(m, &cached)),
        format!("{:?}", crate::operator::node::drain::drain_started(&cached)),
        format!("{ready:?}"),
    ]
}

#[test]
fn a_trimmed_node_gives_the_same_views_and_node_side_changes() {
    for (scale_down, owned, unschedulable) in [
        (None, "", false),
        (Some("true"), SCALE_DOWN_DISABLED, true),
        (Some("true"), "", false),
        (Some("true"), "team.example.org/owner", true),
    ] {
        let full = kubelet_node(scale_down, owned, unschedulable);
        let small = trimmed(&full);
        for sd in [false, true] {
            let m = node_cr(sd);
            assert_eq!(
                node_decisions(&m, &full),
                node_decisions(&m, &small),
                "scale-down annotation {scale_down:?}, owned {owned:?}, machine scaleDownDisabled {sd}"
            );
        }
    }
}

#[test]
fn a_trimmed_node_keeps_only_what_is_read() {
    let small = trimmed(&kubelet_node(Some("true"), "team.example.org/owner", false));
    let status = small.status.as_ref().unwrap_or_else(|| panic!("status"));
    assert!(status.images.is_none() && status.addresses.is_none());
    assert!(status.daemon_endpoints.is_none() && status.volumes_in_use.is_none());
    let conditions: Vec<&str> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(conditions, ["Ready"]);
    assert!(
        status
            .conditions
            .iter()
            .flatten()
            .all(|c| c.message.is_none())
    );
    let info = status
        .node_info
        .as_ref()
        .unwrap_or_else(|| panic!("nodeInfo"));
    assert_eq!(
        (info.architecture.as_str(), info.kernel_version.as_str()),
        ("arm64", "")
    );
    assert!(small.metadata.managed_fields.is_none());
    let mut kept: Vec<&str> = small
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect();
    kept.sort_unstable();
    assert_eq!(
        kept,
        [
            SCALE_DOWN_DISABLED,
            CORDONED,
            DRAIN_STARTED,
            OWNED_ANNOTATIONS,
            OWNED_LABELS,
            RESTORED,
            // Named by our record of the annotations we added.
            "team.example.org/owner",
        ]
    );
}

#[test]
fn a_trimmed_node_cr_and_group_give_the_same_views() {
    let mut m = node_cr(false);
    let a = m.metadata.annotations.get_or_insert_with(Default::default);
    a.insert(
        POWER_ON_FAILED_ANNOTATION.to_owned(),
        "2026-11-29T10:00:00Z".to_owned(),
    );
    a.insert(
        "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
        serde_json::to_string(&m.spec).unwrap_or_default(),
    );
    let mut small = m.clone();
    strip_custom_resource(&mut small);
    assert_eq!(machine_view(&m), machine_view(&small));
    assert_eq!(
        small
            .metadata
            .annotations
            .map(|a| a.into_keys().collect::<Vec<_>>()),
        Some(vec![POWER_ON_FAILED_ANNOTATION.to_owned()])
    );

    let group = Group::test("workers")
        .annotation("kubectl.kubernetes.io/last-applied-configuration", "{}")
        .min(0)
        .max(3)
        .build();
    let mut small = group.clone();
    strip_custom_resource(&mut small);
    assert_eq!(group_view(&group, 1), group_view(&small, 1));
    assert_eq!(small.metadata.annotations, Some(Default::default()));
}

/// What the Node watch keeps: the JSON the API server sends, read as a `ListedNode`.
fn listed(node: &Node) -> Node {
    let json = serde_json::to_value(node).unwrap_or_else(|e| panic!("Node to JSON: {e}"));
    Node::from(
        serde_json::from_value::<ListedNode>(json).unwrap_or_else(|e| panic!("ListedNode: {e}")),
    )
}

#[test]
fn a_listed_node_is_the_trimmed_node() {
    for (scale_down, owned, unschedulable) in [
        (None, "", false),
        (Some("true"), SCALE_DOWN_DISABLED, true),
        (Some("true"), "team.example.org/owner", false),
    ] {
        let full = kubelet_node(scale_down, owned, unschedulable);
        assert_eq!(listed(&full), trimmed(&full), "{scale_down:?} {owned:?}");
        for sd in [false, true] {
            let m = node_cr(sd);
            assert_eq!(
                node_decisions(&m, &full),
                node_decisions(&m, &listed(&full))
            );
        }
    }
    // Every ObjectMeta field but managedFields is kept (the watcher and the controllers read
    // resourceVersion, uid, finalizers, owners, timestamps).
    let mut full = kubelet_node(None, "", false);
    full.metadata.finalizers = Some(vec!["example.org/keep".to_owned()]);
    full.metadata.generation = Some(3);
    full.metadata.deletion_grace_period_seconds = Some(30);
    full.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::UNIX_EPOCH,
    ));
    assert_eq!(listed(&full), trimmed(&full));
    // A Node as a kubelet first registers it: no spec fields, no status.
    let bare: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": { "name": "n2" },
    }))
    .unwrap_or_else(|e| panic!("bare Node: {e}"));
    assert_eq!(listed(&bare), trimmed(&bare));
}
