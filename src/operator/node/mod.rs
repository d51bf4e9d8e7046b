//! The Kubernetes Node side of a machine: what the operator writes on the Node object a machine
//! registers as, computed by pure functions from (Node, Node CR), and applied with merge patches
//! guarded by the Node's resourceVersion.
//!
//! Ownership: everything we add is recorded on the Node itself, in annotations under
//! `infra.homecluster.dev/` ([`OWNED_LABELS`], [`OWNED_TAINTS`], [`OWNED_ANNOTATIONS`],
//! [`CORDONED`]), so the finalizer's cleanup removes only what we added and never a person's own
//! label, taint, annotation or cordon. Those records live and die with the Node object, as the
//! things they describe do.
//!
//! Registration (each reconcile of a registered Node; empty change when nothing is to do):
//! - `spec.providerID` is set when the kubelet left it empty (kubeadm does). It is immutable once
//!   set, so a different one is reported ([`ProviderIdCheck::Mismatch`]), never changed.
//! - Once per Node object ([`RESTORED`] marks it), the labels and taints of the last-seen
//!   snapshot (`status.node`) that the new Node lacks are put back: a machine confirmed off has
//!   its Node object deleted (docs/ca-contract.md, section 4), and the kubelet registers a
//!   bare one.
//! - [`MANAGED_LABEL`] is added, as ours (so the finalizer's cleanup removes it again).
//! - `spec.labels` / `spec.taints` are added when missing (a label we own follows a changed spec
//!   value); `spec.taintsToRemove` are removed.
//! - CA's opt-out annotation follows `scaleDownDisabled` (ours only: a person's own stays).
//!
//! Never restored or snapshotted: CA's deletion taints and the taints Kubernetes derives from
//! node conditions (`node.kubernetes.io/*`); they describe a moment, not the machine.
pub mod drain;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::operator::api::{Machine, NodeSnapshot};
use crate::operator::ca;
use crate::operator::interned::Strings;
use crate::operator::kube_node::KubeNode;

/// Label keys we added to the Node (comma-separated, sorted).
pub const OWNED_LABELS: &str = "infra.homecluster.dev/owned-labels";
/// Taints we added to the Node, as `key:Effect` (comma-separated, sorted).
pub const OWNED_TAINTS: &str = "infra.homecluster.dev/owned-taints";
/// Annotation keys we added to the Node (comma-separated, sorted), e.g. CA's opt-out.
pub const OWNED_ANNOTATIONS: &str = "infra.homecluster.dev/owned-annotations";
/// Present when the cordon (`spec.unschedulable`) is ours.
pub const CORDONED: &str = "infra.homecluster.dev/cordoned";
/// When our drain of this Node started (RFC 3339); removed on uncordon.
pub const DRAIN_STARTED: &str = "infra.homecluster.dev/drain-started";
/// On every Node the operator manages (`true`), ours like any label we add: the chart's
/// Deployments keep off such Nodes (a machine they run on could be powered off), and the
/// scale-up template carries it too (provider/template.rs).
pub const MANAGED_LABEL: &str = "infra.homecluster.dev/managed";
/// On every Node of a Group's member, the Group's name and namespace, ours like any label we
/// add; the scale-up template carries them too (provider/template.rs). The warm spares'
/// placeholder pods select them (controller/spares.rs), so CA places the placeholders on this
/// group's machines and simulates a scale-up for them with this group's template only.
pub const GROUP_NAME_LABEL: &str = "infra.homecluster.dev/group";
/// See [`GROUP_NAME_LABEL`].
pub const GROUP_NAMESPACE_LABEL: &str = "infra.homecluster.dev/group-namespace";

/// The group labels of a member of Group `namespace/name`; none when the name is not a valid
/// label value (longer than 63 characters): a Node patch carrying it would be refused.
pub fn group_labels(namespace: &str, name: &str) -> Vec<(&'static str, String)> {
    let valid = |v: &str| {
        !v.is_empty()
            && v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !valid(namespace) || !valid(name) {
        return Vec::new();
    }
    vec![
        (GROUP_NAME_LABEL, name.to_owned()),
        (GROUP_NAMESPACE_LABEL, namespace.to_owned()),
    ]
}
/// Present once the last-seen labels and taints were restored on this Node object.
pub const RESTORED: &str = "infra.homecluster.dev/restored";

/// Taints Kubernetes derives from node conditions and lifecycle (not-ready, unreachable,
/// unschedulable, pressure, ...).
const CONDITION_TAINT_PREFIXES: [&str; 2] =
    ["node.kubernetes.io/", "node.cloudprovider.kubernetes.io/"];

/// Labels the kubelet sets itself at registration: its values are the truth, never restored.
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "node.kubernetes.io/windows-build",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
];

use crate::operator::FIELD_MANAGER;

/// How often [`update_node`] re-reads and retries after a resourceVersion conflict.
const CONFLICT_RETRIES: usize = 5;

/// Whether `taint` is one of CA's two scale-down taints.
pub fn is_ca_taint(taint: &Taint) -> bool {
    ca::is_ca_taint_key(&taint.key)
}

/// Whether `taint` is derived from node conditions (e.g. `node.kubernetes.io/not-ready`).
pub fn is_condition_taint(taint: &Taint) -> bool {
    is_condition_taint_key(&taint.key)
}

/// [`is_condition_taint`] by key, for views that keep only the key.
pub fn is_condition_taint_key(key: &str) -> bool {
    CONDITION_TAINT_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Taints that describe a moment of the Node rather than the machine.
fn is_transient_taint(taint: &Taint) -> bool {
    is_ca_taint(taint) || is_condition_taint(taint)
}

/// Kubernetes matches taints by key and effect (`Taint.MatchTaint`).
fn same_taint(a: &Taint, b: &Taint) -> bool {
    a.key == b.key && a.effect == b.effect
}

fn taint_id(t: &Taint) -> String {
    format!("{}:{}", t.key, t.effect)
}

/// How the Node's `spec.providerID` relates to the machine's expected one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderIdCheck {
    /// The Node carries the expected providerID.
    Matches,
    /// The Node has none (kubeadm leaves it empty): the registration change sets this one.
    Set(String),
    /// The Node carries its own and the machine has none on record (no `spec.providerID`, never
    /// seen): keep it in status (the snapshot does) so it becomes the expected one.
    Learn(String),
    /// The Node carries a different one than the machine's recorded or declared providerID. It
    /// is immutable once set: report it (status + Event); fix the spec or the kubelet's
    /// `--provider-id`.
    Mismatch { node: String, expected: String },
}

/// Compare the Node's providerID with the machine's [`Machine::expected_provider_id`].
pub fn provider_id_check(machine: &Machine, node: &KubeNode) -> ProviderIdCheck {
    let expected = machine.expected_provider_id();
    let Some(actual) = node.provider_id() else {
        return ProviderIdCheck::Set(expected);
    };
    if actual == expected {
        return ProviderIdCheck::Matches;
    }
    let declared = machine
        .spec
        .provider_id
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    let recorded = machine
        .status
        .as_ref()
        .and_then(|s| s.node.as_ref())
        .and_then(|n| n.provider_id.as_deref())
        .is_some_and(|s| !s.is_empty());
    if declared || recorded {
        ProviderIdCheck::Mismatch {
            node: actual.to_owned(),
            expected,
        }
    } else {
        ProviderIdCheck::Learn(actual.to_owned())
    }
}

/// What to write on a Node: a merge patch, empty when nothing changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeChange {
    /// Set `spec.providerID` (only ever from empty).
    pub provider_id: Option<String>,
    /// Labels to set (`Some`) or remove (`None`).
    pub labels: BTreeMap<String, Option<String>>,
    /// Annotations to set (`Some`) or remove (`None`).
    pub annotations: BTreeMap<String, Option<String>>,
    /// The new taint list, replacing the whole list (hence the resourceVersion precondition).
    pub taints: Option<Vec<Taint>>,
    pub unschedulable: Option<bool>,
}

impl NodeChange {
    pub fn is_empty(&self) -> bool {
        self == &NodeChange::default()
    }

    /// The JSON merge patch, with `resourceVersion` as a precondition when given: the taint
    /// list is replaced whole and every decision was made on that version of the Node.
    pub fn merge_patch(&self, resource_version: Option<&str>) -> serde_json::Value {
        let mut metadata = serde_json::Map::new();
        if let Some(rv) = resource_version {
            metadata.insert("resourceVersion".into(), rv.into());
        }
        if !self.labels.is_empty() {
            metadata.insert("labels".into(), serde_json::json!(self.labels));
        }
        if !self.annotations.is_empty() {
            metadata.insert("annotations".into(), serde_json::json!(self.annotations));
        }
        let mut spec = serde_json::Map::new();
        if let Some(id) = &self.provider_id {
            spec.insert("providerID".into(), id.clone().into());
        }
        if let Some(taints) = &self.taints {
            spec.insert("taints".into(), serde_json::json!(taints));
        }
        if let Some(u) = self.unschedulable {
            spec.insert("unschedulable".into(), u.into());
        }
        let mut patch = serde_json::Map::new();
        if !metadata.is_empty() {
            patch.insert("metadata".into(), metadata.into());
        }
        if !spec.is_empty() {
            patch.insert("spec".into(), spec.into());
        }
        patch.into()
    }

    /// Short description for logs and errors, e.g. `providerID, labels a,b, taints, cordon`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if self.provider_id.is_some() {
            parts.push("providerID".to_owned());
        }
        if !self.labels.is_empty() {
            parts.push(format!("labels {}", keys(&self.labels)));
        }
        if !self.annotations.is_empty() {
            parts.push(format!("annotations {}", keys(&self.annotations)));
        }
        if self.taints.is_some() {
            parts.push("taints".to_owned());
        }
        match self.unschedulable {
            Some(true) => parts.push("cordon".to_owned()),
            Some(false) => parts.push("uncordon".to_owned()),
            None => {}
        }
        parts.join(", ")
    }
}

fn keys(m: &BTreeMap<String, Option<String>>) -> String {
    m.keys().cloned().collect::<Vec<_>>().join(",")
}

/// A Node being edited: start from the Node, apply the steps the reconcile needs, then take the
/// [`NodeChange`] (the difference). Pure; every step is idempotent.
#[derive(Clone, Debug)]
pub struct NodeEdit<'a> {
    node: &'a KubeNode,
    provider_id: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    taints: Vec<Taint>,
    unschedulable: bool,
}

impl<'a> NodeEdit<'a> {
    pub fn new(node: &'a KubeNode) -> Self {
        NodeEdit {
            node,
            provider_id: None,
            labels: node.labels().to_map(),
            annotations: node.annotations().to_map(),
            taints: node.taints().to_vec(),
            unschedulable: node.unschedulable(),
        }
    }

    /// The difference from the Node this edit started from.
    pub fn change(&self) -> NodeChange {
        let old_unschedulable = self.node.unschedulable();
        NodeChange {
            provider_id: self.provider_id.clone(),
            labels: map_diff(self.node.labels(), &self.labels),
            annotations: map_diff(self.node.annotations(), &self.annotations),
            taints: (self.node.taints() != self.taints.as_slice()).then(|| self.taints.clone()),
            unschedulable: (old_unschedulable != self.unschedulable).then_some(self.unschedulable),
        }
    }

    fn owned(&self, record: &str) -> BTreeSet<String> {
        self.annotations
            .get(record)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_owned(&mut self, record: &str, owned: &BTreeSet<String>) {
        if owned.is_empty() {
            self.annotations.remove(record);
        } else {
            let joined = owned.iter().cloned().collect::<Vec<_>>().join(",");
            self.annotations.insert(record.to_owned(), joined);
        }
    }

    fn own(&mut self, record: &str, id: String) {
        let mut owned = self.owned(record);
        if owned.insert(id) {
            self.set_owned(record, &owned);
        }
    }

    /// Adds a label we own when the key is missing; a label we own follows a new value.
    fn add_label(&mut self, key: &str, value: &str) {
        match self.labels.get(key) {
            None => {
                self.labels.insert(key.to_owned(), value.to_owned());
                self.own(OWNED_LABELS, key.to_owned());
            }
            Some(v) if v != value && self.owned(OWNED_LABELS).contains(key) => {
                self.labels.insert(key.to_owned(), value.to_owned());
            }
            Some(_) => {}
        }
    }

    /// Adds a taint we own when none with its key and effect is there.
    fn add_taint(&mut self, taint: &Taint) {
        if self.taints.iter().any(|t| same_taint(t, taint)) {
            return;
        }
        self.taints.push(Taint {
            time_added: None,
            ..taint.clone()
        });
        self.own(OWNED_TAINTS, taint_id(taint));
    }

    fn remove_taints(&mut self, remove: impl Fn(&Taint) -> bool) {
        self.taints.retain(|t| !remove(t));
    }

    /// Sets `spec.providerID` when the Node has none.
    pub fn set_provider_id(&mut self, id: &str) -> &mut Self {
        if self.node.provider_id().is_none() && !id.is_empty() {
            self.provider_id = Some(id.to_owned());
        }
        self
    }

    /// Everything a registered Node of `machine` should carry (see the module docs).
    /// `scale_down_disabled`: the machine's or its Group's `scaleDownDisabled`.
    pub fn register(&mut self, machine: &Machine, scale_down_disabled: bool) -> &mut Self {
        if let ProviderIdCheck::Set(id) = provider_id_check(machine, self.node) {
            self.set_provider_id(&id);
        }
        let remove = &machine.spec.taints_to_remove;
        let removed = |t: &Taint| remove.iter().any(|r| same_taint(r, t));
        if !self.annotations.contains_key(RESTORED) {
            if let Some(seen) = machine.status.as_ref().and_then(|s| s.node.as_ref()) {
                for (k, v) in seen.labels.iter() {
                    if !KUBELET_LABELS.contains(&k) && !self.labels.contains_key(k) {
                        self.add_label(k, v);
                    }
                }
                for t in &seen.taints {
                    if !is_transient_taint(t) && !removed(t) {
                        self.add_taint(t);
                    }
                }
            }
            self.annotations
                .insert(RESTORED.to_owned(), "true".to_owned());
        }
        self.add_label(MANAGED_LABEL, "true");
        if let (Some(ns), Some(group)) = (machine.metadata.namespace.as_deref(), machine.group()) {
            for (k, v) in group_labels(ns, group) {
                self.add_label(k, &v);
            }
        }
        for (k, v) in &machine.spec.labels {
            self.add_label(k, v);
        }
        for t in &machine.spec.taints {
            if !is_transient_taint(t) && !removed(t) {
                self.add_taint(t);
            }
        }
        self.remove_taints(removed);
        self.scale_down_disabled(scale_down_disabled)
    }

    /// Puts CA's opt-out annotation on the Node (marked ours) or removes it if it is ours. A
    /// person's own annotation is never touched.
    pub fn scale_down_disabled(&mut self, disabled: bool) -> &mut Self {
        let ours = self
            .owned(OWNED_ANNOTATIONS)
            .contains(ca::SCALE_DOWN_DISABLED);
        let present = self
            .annotations
            .get(ca::SCALE_DOWN_DISABLED)
            .map(String::as_str);
        if disabled {
            if present != Some("true") {
                self.annotations
                    .insert(ca::SCALE_DOWN_DISABLED.to_owned(), "true".to_owned());
                self.own(OWNED_ANNOTATIONS, ca::SCALE_DOWN_DISABLED.to_owned());
            }
        } else if ours {
            self.annotations.remove(ca::SCALE_DOWN_DISABLED);
            let mut owned = self.owned(OWNED_ANNOTATIONS);
            owned.remove(ca::SCALE_DOWN_DISABLED);
            self.set_owned(OWNED_ANNOTATIONS, &owned);
        }
        self
    }

    /// Marks the Node unschedulable, recording the cordon as ours; a Node already cordoned (by
    /// a person or by CA) is left as it is and its cordon stays theirs.
    pub fn cordon(&mut self) -> &mut Self {
        if !self.unschedulable {
            self.unschedulable = true;
            self.annotations
                .insert(CORDONED.to_owned(), "true".to_owned());
        }
        self
    }

    /// Records when our drain started, unless it already is.
    pub fn drain_started(&mut self, at: Timestamp) -> &mut Self {
        self.annotations
            .entry(DRAIN_STARTED.to_owned())
            .or_insert_with(|| at.to_string());
        self
    }

    /// Undoes a power-off that was cancelled: our cordon and drain record, and CA's two taints.
    /// When CA's `ToBeDeletedByClusterAutoscaler` taint is there, CA's cordon goes with it, as
    /// CA's own `CleanTaints` does (`utils/taints/taints.go`; CA cordons by default,
    /// `--cordon-node-before-terminating`).
    pub fn uncordon(&mut self) -> &mut Self {
        let ca_deleting = self.taints.iter().any(|t| t.key == ca::TO_BE_DELETED_TAINT);
        if self.annotations.remove(CORDONED).is_some() || ca_deleting {
            self.unschedulable = false;
        }
        self.annotations.remove(DRAIN_STARTED);
        self.remove_taints(is_ca_taint);
        self
    }

    /// What a finalizer leaves behind when the Node CR is deleted: [`Self::uncordon`], and every
    /// label, taint and annotation we added removed, with our records.
    pub fn cleanup(&mut self) -> &mut Self {
        self.uncordon();
        for key in self.owned(OWNED_LABELS) {
            self.labels.remove(&key);
        }
        let taints = self.owned(OWNED_TAINTS);
        self.remove_taints(|t| taints.contains(&taint_id(t)));
        for key in self.owned(OWNED_ANNOTATIONS) {
            self.annotations.remove(&key);
        }
        for record in [OWNED_LABELS, OWNED_TAINTS, OWNED_ANNOTATIONS, RESTORED] {
            self.annotations.remove(record);
        }
        self
    }
}

fn map_diff(old: &Strings, new: &BTreeMap<String, String>) -> BTreeMap<String, Option<String>> {
    let mut diff = BTreeMap::new();
    for (k, v) in new {
        if old.get(k) != Some(v.as_str()) {
            diff.insert(k.clone(), Some(v.clone()));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            diff.insert(k.to_owned(), None);
        }
    }
    diff
}

/// The registration change for `machine`'s Node and how its providerID compares.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    pub change: NodeChange,
    pub provider_id: ProviderIdCheck,
}

/// Everything a registered Node of `machine` should carry; see [`NodeEdit::register`].
/// `group_scale_down_disabled` adds the Group's `scaleDownDisabled` to the machine's own.
pub fn registration(
    machine: &Machine,
    node: &KubeNode,
    group_scale_down_disabled: bool,
) -> Registration {
    let disabled = machine.scale_down_disabled() || group_scale_down_disabled;
    Registration {
        change: NodeEdit::new(node).register(machine, disabled).change(),
        provider_id: provider_id_check(machine, node),
    }
}

/// Cordon (`on`) or undo a cancelled power-off (`!on`); see [`NodeEdit::cordon`] and
/// [`NodeEdit::uncordon`].
pub fn cordon_change(node: &KubeNode, on: bool) -> NodeChange {
    let mut edit = NodeEdit::new(node);
    if on {
        edit.cordon();
    } else {
        edit.uncordon();
    }
    edit.change()
}

/// What the finalizer writes; see [`NodeEdit::cleanup`].
pub fn cleanup_change(node: &KubeNode) -> NodeChange {
    NodeEdit::new(node).cleanup().change()
}

/// The Node as it is now, for status (`status.node`) and the scale-from-zero template: labels
/// (with `kubernetes.io/arch`/`os` from `status.nodeInfo` when the labels lack them), taints
/// without the transient ones, capacity, allocatable and providerID.
pub fn snapshot(node: &KubeNode, seen: Timestamp) -> NodeSnapshot {
    let mut labels = node.labels().to_map();
    for (key, value) in [
        ("kubernetes.io/arch", node.architecture()),
        ("kubernetes.io/os", node.operating_system()),
    ] {
        if let Some(value) = value {
            labels
                .entry(key.to_owned())
                .or_insert_with(|| value.to_owned());
        }
    }
    let taints = node
        .taints()
        .iter()
        .filter(|t| !is_transient_taint(t))
        .map(|t| Taint {
            time_added: None,
            ..t.clone()
        })
        .collect();
    NodeSnapshot {
        name: node.name().to_owned(),
        provider_id: node.provider_id().map(str::to_owned),
        labels: labels.into_iter().collect(),
        taints,
        capacity: node.capacity().clone(),
        allocatable: node.allocatable().clone(),
        seen,
    }
}

/// Whether two snapshots describe the same Node (everything but `seen`): status needs writing
/// only when they differ, so an idle machine causes no writes.
pub fn same_shape(a: &NodeSnapshot, b: &NodeSnapshot) -> bool {
    NodeSnapshot {
        seen: b.seen,
        ..a.clone()
    } == *b
}

/// Why a write to a Kubernetes Node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeSideError {
    #[error("Kubernetes Node {node}: reading it failed: {source}")]
    Read {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "Kubernetes Node {node}: not allowed to {verb} it ({message}); grant `{verb}` on nodes \
         to the operator's ServiceAccount (the Helm chart's ClusterRole has it)"
    )]
    Forbidden {
        node: String,
        verb: &'static str,
        message: String,
    },
    #[error(
        "Kubernetes Node {node}: it changed while we wrote ({what}); retried with a fresh read \
         on the next reconcile"
    )]
    Conflict { node: String, what: String },
    #[error("Kubernetes Node {node}: the API server rejected the change ({what}): {source}")]
    Patch {
        node: String,
        what: String,
        #[source]
        source: kube::Error,
    },
}

impl NodeSideError {
    /// A resourceVersion conflict: the caller's view was stale; re-read and try again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, NodeSideError::Conflict { .. })
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Applies `change` to `node` (the version it was computed from: its resourceVersion is the
/// precondition). Returns the Node as written, or `node` unchanged when there is nothing to do
/// (no API call). Gone (404) is `Ok(None)`: a machine powered off meanwhile.
pub async fn patch_node(
    client: &Client,
    node: &KubeNode,
    change: &NodeChange,
) -> Result<Option<KubeNode>, NodeSideError> {
    let name = node.name().to_owned();
    if change.is_empty() {
        return Ok(Some(node.clone()));
    }
    let patch = change.merge_patch(node.resource_version());
    let api: Api<Node> = Api::all(client.clone());
    match api
        .patch(&name, &patch_params(), &Patch::Merge(&patch))
        .await
    {
        Ok(n) => Ok(Some(KubeNode::from(n))),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(NodeSideError::Conflict {
            node: name,
            what: change.summary(),
        }),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(NodeSideError::Forbidden {
            node: name,
            verb: "patch",
            message: s.message.clone(),
        }),
        Err(source) => Err(NodeSideError::Patch {
            node: name,
            what: change.summary(),
            source,
        }),
    }
}

/// Reads Node `name` fresh, computes the change with `plan` and applies it, re-reading after a
/// conflict (a kubelet heartbeat or CA's taint write in between). `Ok(None)`: no such Node.
/// For calls outside the reconcile's cached view (the finalizer, `power off`, tests).
pub async fn update_node(
    client: &Client,
    name: &str,
    plan: impl Fn(&KubeNode) -> NodeChange,
) -> Result<Option<KubeNode>, NodeSideError> {
    let api: Api<Node> = Api::all(client.clone());
    let mut last = String::new();
    for attempt in 0..CONFLICT_RETRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
        }
        let node = match api.get_opt(name).await {
            Ok(Some(n)) => KubeNode::from(n),
            Ok(None) => return Ok(None),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(NodeSideError::Forbidden {
                    node: name.to_owned(),
                    verb: "get",
                    message: s.message.clone(),
                });
            }
            Err(source) => {
                return Err(NodeSideError::Read {
                    node: name.to_owned(),
                    source,
                });
            }
        };
        let change = plan(&node);
        match patch_node(client, &node, &change).await {
            Err(NodeSideError::Conflict { what, .. }) => last = what,
            other => return other,
        }
    }
    Err(NodeSideError::Conflict {
        node: name.to_owned(),
        what: format!("{last}; {CONFLICT_RETRIES} attempts"),
    })
}

#[cfg(test)]
mod tests;
