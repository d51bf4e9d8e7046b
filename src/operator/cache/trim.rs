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
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::Resource;
use serde::Deserialize;

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

/// Keeps the annotations [`keeps_node_annotation`] keeps.
fn strip_node_annotations(annotations: Option<&mut BTreeMap<String, String>>) {
    if let Some(a) = annotations {
        let record = a.get(OWNED_ANNOTATIONS).cloned().unwrap_or_default();
        let owned: BTreeSet<&str> = record.split(',').map(str::trim).collect();
        a.retain(|k, _| keeps_node_annotation(k, &owned));
    }
}

/// A Kubernetes Node as the operator reads it (see the module docs).
pub fn strip_node(node: &mut Node) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    strip_node_annotations(meta.annotations.as_mut());
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

/// A Kubernetes Node as the Node watch reads it: the fields [`strip_node`] keeps and nothing
/// else, so the rest of what the API server sends (images, condition messages, system info,
/// managedFields: most of a kubelet's Node) is skipped by the parser instead of being built and
/// dropped, on every list page and every status update of every Node. What the cache keeps is
/// the same either way (BENCHMARKS.md, "Beside 2,000 Kubernetes Nodes", has what it changed).
/// Becomes a [`Node`] with [`From`], equal to the full Node after [`strip_node`] (tested), and
/// the cache keeps that as a `kube_node::KubeNode`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ListedNode {
    #[serde(default, deserialize_with = "listed_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<ListedNodeSpec>,
    #[serde(default)]
    status: Option<ListedNodeStatus>,
}

/// `ObjectMeta` without `managedFields` (which the caches drop), every other field kept.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedMeta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

fn listed_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = ListedMeta::deserialize(d)?;
    Ok(ObjectMeta {
        annotations: m.annotations,
        creation_timestamp: m.creation_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        generate_name: m.generate_name,
        generation: m.generation,
        labels: m.labels,
        managed_fields: None,
        name: m.name,
        namespace: m.namespace,
        owner_references: m.owner_references,
        resource_version: m.resource_version,
        self_link: m.self_link,
        uid: m.uid,
    })
}

#[derive(Clone, Debug, Default, Deserialize)]
struct ListedNodeSpec {
    #[serde(rename = "providerID")]
    provider_id: Option<String>,
    taints: Option<Vec<Taint>>,
    unschedulable: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedNodeStatus {
    capacity: Option<BTreeMap<String, Quantity>>,
    allocatable: Option<BTreeMap<String, Quantity>>,
    conditions: Option<Vec<ListedCondition>>,
    node_info: Option<ListedNodeInfo>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedCondition {
    #[serde(rename = "type", default)]
    type_: String,
    #[serde(default)]
    status: String,
    last_transition_time: Option<Time>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListedNodeInfo {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    operating_system: String,
}

impl Resource for ListedNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Node::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Node::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Node::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        Node::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Node::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl From<ListedNode> for Node {
    fn from(n: ListedNode) -> Node {
        let mut metadata = n.metadata;
        strip_node_annotations(metadata.annotations.as_mut());
        Node {
            metadata,
            spec: n.spec.map(|s| NodeSpec {
                provider_id: s.provider_id,
                taints: s.taints,
                unschedulable: s.unschedulable,
                ..NodeSpec::default()
            }),
            status: n.status.map(|s| NodeStatus {
                capacity: s.capacity,
                allocatable: s.allocatable,
                conditions: Some(
                    s.conditions
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|c| c.type_ == "Ready")
                        .map(|c| NodeCondition {
                            status: c.status,
                            type_: c.type_,
                            last_transition_time: c.last_transition_time,
                            ..NodeCondition::default()
                        })
                        .collect(),
                ),
                node_info: s.node_info.map(|i| NodeSystemInfo {
                    architecture: i.architecture,
                    operating_system: i.operating_system,
                    ..NodeSystemInfo::default()
                }),
                ..NodeStatus::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests;
