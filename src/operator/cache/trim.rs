//! What the reflector caches keep of each object: only the fields the provider and the
//! controllers read, so that thousands of cached objects stay small (a Kubernetes Node as the
//! kubelet reports it is several kilobytes, most of it image lists, addresses, system info and
//! condition messages). Applied to every watched object before it enters a store.
//!
//! Every field dropped here is read nowhere: the Node side reads the Node's labels, taints,
//! `unschedulable`, providerID, capacity, allocatable, the `Ready` condition's status and
//! transition time, `nodeInfo`'s architecture and OS, and only the annotations
//! [`keeps_node_annotation`] keeps. Every write is a merge patch of the fields it changes, so
//! what the cache lacks is never written back.
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo};
use kube::Resource;

use crate::operator::ca::SCALE_DOWN_DISABLED;
use crate::operator::node::OWNED_ANNOTATIONS;

/// Prefix of the annotations this project writes and reads.
const OUR_PREFIX: &str = "infra.homecluster.dev/";

/// A Group or Node CR: without `managedFields` and without annotations other than ours (e.g.
/// `kubectl.kubernetes.io/last-applied-configuration`, a second copy of the whole object when
/// the CRs are managed with `kubectl apply`). The spec and status are read in full.
pub fn strip_custom_resource<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(OUR_PREFIX));
    }
}

/// Whether the cache keeps a Kubernetes Node annotation: ours, CA's scale-down opt-out, and the
/// keys our [`OWNED_ANNOTATIONS`] record says we added (listed in `owned`).
pub fn keeps_node_annotation(key: &str, owned: &BTreeSet<&str>) -> bool {
    key.starts_with(OUR_PREFIX) || key == SCALE_DOWN_DISABLED || owned.contains(key)
}

/// A Kubernetes Node as the operator reads it (see the module docs).
pub fn strip_node(node: &mut Node) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        let record = a.get(OWNED_ANNOTATIONS).cloned().unwrap_or_default();
        let owned: BTreeSet<&str> = record.split(',').map(str::trim).collect();
        a.retain(|k, _| keeps_node_annotation(k, &owned));
    }
    if let Some(spec) = node.spec.take() {
        node.spec = Some(NodeSpec {
            provider_id: spec.provider_id,
            taints: spec.taints,
            unschedulable: spec.unschedulable,
            ..NodeSpec::default()
        });
    }
    if let Some(status) = node.status.take() {
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ == "Ready")
            .map(|c| NodeCondition {
                status: c.status,
                type_: c.type_,
                last_transition_time: c.last_transition_time,
                ..NodeCondition::default()
            })
            .collect();
        node.status = Some(NodeStatus {
            capacity: status.capacity,
            allocatable: status.allocatable,
            conditions: Some(ready),
            node_info: status.node_info.map(|i| NodeSystemInfo {
                architecture: i.architecture,
                operating_system: i.operating_system,
                ..NodeSystemInfo::default()
            }),
            ..NodeStatus::default()
        });
    }
}

#[cfg(test)]
mod tests;
