//! Rule 8: the template node CA simulates a scale-up with (`NodeGroupTemplateNodeInfo`).
//!
//! Built from what a member looked like when last seen, else its declared hints, else the
//! Group's template; the Group's template labels and taints are applied on top, and the label
//! every managed Node carries ([`node::MANAGED_LABEL`]). Transient taints
//! (CA's own, the node lifecycle controller's) and each machine's `taintsToRemove` are dropped:
//! the template describes a freshly booted, Ready node.
use std::collections::BTreeMap;

use k8s_pb::api::core::v1 as pb;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prost::Message;

use super::error::ProviderError;
use super::inventory::{GroupState, Inventory, MachineView, NodeView, TaintView, TemplateHints};
use super::ops::power_on_order;
use crate::operator::{ca, node};

/// The node label naming the CPU architecture.
pub const ARCH_LABEL: &str = "kubernetes.io/arch";

/// Pods a kubelet accepts by default; CA rejects every pod on a template without a `pods` capacity.
const DEFAULT_PODS: &str = "110";

/// The template as plain data (before protobuf encoding).
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateNode {
    pub name: String,
    pub provider_id: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<TaintView>,
    pub capacity: BTreeMap<String, String>,
    pub allocatable: BTreeMap<String, String>,
}

impl TemplateNode {
    /// `k8s.io.api.core.v1.Node`, Ready, as CA reads it.
    pub fn to_pb(&self) -> pb::Node {
        let q = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Quantity {
                            string: Some(v.clone()),
                        },
                    )
                })
                .collect()
        };
        pb::Node {
            metadata: Some(ObjectMeta {
                name: Some(self.name.clone()),
                labels: self.labels.clone(),
                ..Default::default()
            }),
            spec: Some(pb::NodeSpec {
                provider_id: Some(self.provider_id.clone()),
                unschedulable: Some(false),
                taints: self
                    .taints
                    .iter()
                    .map(|t| pb::Taint {
                        key: Some(t.key.clone()),
                        value: t.value.clone(),
                        effect: Some(t.effect.clone()),
                        time_added: None,
                    })
                    .collect(),
                ..Default::default()
            }),
            status: Some(pb::NodeStatus {
                capacity: q(&self.capacity),
                allocatable: q(&self.allocatable),
                phase: Some("Running".to_owned()),
                conditions: vec![pb::NodeCondition {
                    r#type: Some("Ready".to_owned()),
                    status: Some("True".to_owned()),
                    reason: Some("KubeletReady".to_owned()),
                    message: Some("template node for scale-up simulation".to_owned()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    /// Raw protobuf bytes (no `k8s\0` envelope), never empty.
    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }
}

/// CA's scale-down taints and the condition taints describe a moment of a Node, not a freshly
/// booted one (CA's own template sanitising drops them too); `remove` is the machine's
/// `taintsToRemove`.
fn drop_taint(t: &TaintView, remove: &[TaintView]) -> bool {
    ca::is_ca_taint_key(&t.key)
        || node::is_condition_taint_key(&t.key)
        || remove
            .iter()
            .any(|r| r.key == t.key && r.effect == t.effect)
}

fn from_hints(h: &TemplateHints) -> Option<NodeView> {
    if h.capacity.is_empty() {
        return None;
    }
    Some(NodeView {
        labels: h.labels.iter().collect(),
        taints: h.taints.clone(),
        capacity: h.capacity.iter().collect(),
        allocatable: h.allocatable.iter().collect(),
        ..Default::default()
    })
}

/// The member (and its shape) the template is built from, best source first: for each member
/// in the order `IncreaseSize` picks (the next one up is the best guess of what comes), its
/// registered Node as it is now, else what it looked like when last seen; then the members'
/// declared capacity; then the Group's template.
fn source<'a>(
    inv: &'a Inventory,
    g: &'a GroupState,
) -> Option<(Option<&'a MachineView>, NodeView)> {
    let mut members: Vec<&MachineView> = g.machines.iter().collect();
    members.sort_by(|a, b| {
        a.wanted_on()
            .cmp(&b.wanted_on())
            .then_with(|| power_on_order(g.spec.power_on_order, a, b))
    });
    let seen = members.iter().find_map(|m| {
        inv.node(&m.provider_id)
            .filter(|n| !n.capacity.is_empty())
            .or_else(|| m.last_seen.as_ref().filter(|s| !s.capacity.is_empty()))
            .map(|s| (Some(*m), s.clone()))
    });
    seen.or_else(|| {
        members
            .iter()
            .find_map(|m| from_hints(&m.hints).map(|v| (Some(*m), v)))
    })
    .or_else(|| from_hints(&g.spec.template).map(|v| (None, v)))
}

/// Whether CA can get a template node for the group at all (else scale-from-zero is impossible
/// and `NodeGroupTemplateNodeInfo` answers `Unimplemented`, which CA does not log).
pub fn has_template(inv: &Inventory, g: &GroupState) -> bool {
    source(inv, g).is_some()
}

/// Rule 8: the template node for a group, or `NoTemplate` (→ `Unimplemented`) when no capacity is
/// known from any source.
pub fn template_node(inv: &Inventory, id: &str) -> Result<TemplateNode, ProviderError> {
    let g = inv.group(id).ok_or_else(|| ProviderError::GroupNotFound {
        id: id.to_owned(),
        known: inv.group_ids().take(10).collect::<Vec<_>>().join(", "),
    })?;
    let Some((machine, shape)) = source(inv, g) else {
        return Err(ProviderError::NoTemplate {
            group: id.to_owned(),
        });
    };
    let name = machine
        .map(|m| m.node_name.clone())
        .unwrap_or_else(|| format!("{}-template", g.spec.name));
    let provider_id = machine.map(|m| m.provider_id.clone()).unwrap_or_default();
    let remove: &[TaintView] = machine
        .map(|m| m.taints_to_remove.as_slice())
        .unwrap_or(&[]);

    let mut labels = shape.labels.to_map();
    labels.extend(g.spec.template.labels.clone());
    // The architecture only from what is known about the machine: a guessed amd64 would place
    // arm64-only pods on an amd64 machine and keep amd64 pods off an arm64 one.
    if !labels.contains_key(ARCH_LABEL)
        && let Some(arch) = machine.and_then(|m| {
            m.hints
                .labels
                .get(ARCH_LABEL)
                .map(String::as_str)
                .or_else(|| m.last_seen.as_ref().and_then(|s| s.labels.get(ARCH_LABEL)))
        })
    {
        labels.insert(ARCH_LABEL.to_owned(), arch.to_owned());
    }
    labels
        .entry("kubernetes.io/os".to_owned())
        .or_insert_with(|| "linux".to_owned());
    labels.insert("kubernetes.io/hostname".to_owned(), name.clone());
    // Every Node the operator manages carries this label (node/mod.rs registers it): CA's
    // scale-up simulation runs the scheduler's predicates, node affinity included, against this
    // template (`ScaleUpOrchestrator.SchedulablePodGroups`, core/scaleup/orchestrator/
    // orchestrator.go), so a pod that keeps off managed Nodes must not fit it either.
    labels.insert(node::MANAGED_LABEL.to_owned(), "true".to_owned());
    // As every member's Node (node/mod.rs), for the warm spares' placeholders to select.
    for (k, v) in node::group_labels(&g.spec.namespace, &g.spec.name) {
        labels.insert(k.to_owned(), v);
    }

    let mut taints: Vec<TaintView> = shape
        .taints
        .iter()
        .chain(g.spec.template.taints.iter())
        .filter(|t| !drop_taint(t, remove))
        .cloned()
        .collect();
    taints.sort();
    taints.dedup();

    let mut capacity = shape.capacity.to_map();
    capacity
        .entry("pods".to_owned())
        .or_insert_with(|| DEFAULT_PODS.to_owned());
    let mut allocatable = if shape.allocatable.is_empty() {
        capacity.clone()
    } else {
        shape.allocatable.to_map()
    };
    for (k, v) in &capacity {
        allocatable.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Ok(TemplateNode {
        name,
        provider_id,
        labels,
        taints,
        capacity,
        allocatable,
    })
}
