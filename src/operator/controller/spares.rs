//! Warm spares: room for pods kept free on machines that are already on, through the Cluster
//! Autoscaler's CapacityBuffer API (docs/ca-contract.md, "Warm spares").
//!
//! Per Group with warm spares in force ([`warm_spares_in_force`]) the operator owns one
//! `CapacityBuffer` (`autoscaling.x-k8s.io/v1beta1`, the version CA 1.36's buffer controller
//! reads and writes) and the `PodTemplate` it references, both named [`buffer_name`] in the
//! Group's namespace, with an ownerReference to the Group so the garbage collector removes them
//! with it. The template describes one placeholder pod: `warmSpares.cpu` / `memory`, by default
//! a whole machine of the group (the scale-up template's allocatable, provider/template.rs)
//! less the requests of the DaemonSets that run there; a required node affinity to the group's
//! labels ([`node::GROUP_NAME_LABEL`], [`node::GROUP_NAMESPACE_LABEL`]) that only this group's
//! Nodes and template carry; tolerations for the group's taints. CA's buffer controller
//! translates the buffer into `status.replicas` and `status.podTemplateRef`, and its pod list
//! processor injects that many fake pods into every loop's unschedulable pods: CA powers a
//! machine on for a placeholder that fits nowhere, and a placeholder that fits a running
//! machine keeps it from being unneeded.
//!
//! Count 0 or no warm spares: the buffer and the template are deleted. Without the
//! CapacityBuffer CRD in the cluster the Group gets the condition [`CONDITION_WARM_SPARES`]
//! False (reason [`REASON_NO_CRD`]) and the operator logs one warning; nothing crash-loops.
//!
//! Triggers: every Group and Node CR change of the shared cache (a member's shape changes the
//! default size) and a slow tick ([`TICK`]) that brings a window's change and a CRD installed
//! later. What was last applied per Group is remembered, so an unchanged Group costs no write.
use crate::operator::policy::schedule::{Schedule, in_force};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{PodTemplate, Toleration};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch};
use kube::api::{ListParams, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource as _, ResourceExt as _};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{Context, Error, FIELD_MANAGER};
use crate::operator::api::{Group, WarmSpares, condition, upsert_condition};
use crate::operator::cache::Change;
use crate::operator::node;
use crate::operator::provider::inventory::TaintView;
use crate::operator::provider::template::template_node;
use crate::quantity::parse_quantity;

/// Group condition: True while the group's CapacityBuffer is in place; False when warm spares
/// are asked for and cannot be kept (no CapacityBuffer CRD, no known machine size).
pub const CONDITION_WARM_SPARES: &str = "WarmSpares";
/// Reason of [`CONDITION_WARM_SPARES`] False when the API server does not serve CapacityBuffers.
pub const REASON_NO_CRD: &str = "CapacityBufferCRDMissing";
/// CA's CapacityBuffer API group and the version its 1.36 controller uses.
pub const BUFFER_API_GROUP: &str = "autoscaling.x-k8s.io";
pub const BUFFER_VERSION: &str = "v1beta1";
pub const BUFFER_KIND: &str = "CapacityBuffer";
pub const BUFFER_PLURAL: &str = "capacitybuffers";
/// The provisioning strategy CA's pod list processor injects fake pods for
/// (`capacitybuffer.ActiveProvisioningStrategy`).
pub const ACTIVE_CAPACITY: &str = "buffer.x-k8s.io/active-capacity";
/// The placeholder's image: CA never runs it (its pods are fakes), but the PodTemplate needs one.
pub const PLACEHOLDER_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// How often every Group is looked at again without a change (windows, a CRD installed later).
pub const TICK: Duration = Duration::from_secs(60);

/// The warm spares in force for `group` at `now`, `None` when there are none (count 0 or
/// unset): the schedule window in force's own `warmSpares`, else the Group's. A schedule that
/// does not parse (reported in the Group's conditions) leaves the Group's own in force.
pub fn warm_spares_in_force(group: &Group, now: Timestamp) -> Option<WarmSpares> {
    let spares = match Schedule::of_group(group) {
        // The member count bounds only the minimum, which is not read here.
        Ok(schedule) => in_force(&group.spec, &schedule, 0, now).warm_spares,
        Err(_) => group.spec.warm_spares.clone(),
    };
    spares.filter(|w| w.count > 0)
}

/// Whether `group` asks for warm spares at any time (its own or a window's).
pub fn asks_for_spares(group: &Group) -> bool {
    group.spec.warm_spares.as_ref().is_some_and(|w| w.count > 0)
        || group
            .spec
            .schedule
            .iter()
            .any(|w| w.warm_spares.as_ref().is_some_and(|s| s.count > 0))
}

/// The CapacityBuffer's and the PodTemplate's name for Group `group`.
pub fn buffer_name(group: &str) -> String {
    format!("{group}-warm-spares")
}

/// What a group's machine looks like to a placeholder: labels, taints, allocatable.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Shape {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<TaintView>,
    pub allocatable: BTreeMap<String, String>,
}

/// One placeholder's requests, as written in the PodTemplate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Size {
    pub cpu: String,
    pub memory: String,
}

/// Why warm spares asked for cannot be kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsized {
    #[error(
        "no size for a placeholder: warmSpares sets no cpu and memory and no machine size of the group is known (a member's capacity or the Group's template)"
    )]
    NoShape,
    #[error("a whole machine less its DaemonSets' requests leaves no room for a placeholder ({0})")]
    NoRoom(String),
}

/// Whether `tolerations` tolerate `taint` (the scheduler's rule: key and effect match, and the
/// value for `Equal`; an empty key with `Exists` tolerates everything).
fn tolerates(tolerations: &[Toleration], taint: &TaintView) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key = t.key.as_deref().unwrap_or("");
        let exists = t.operator.as_deref() == Some("Exists");
        let key_ok = (key.is_empty() && exists) || key == taint.key;
        let value_ok =
            exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
        effect_ok && key_ok && value_ok
    })
}

/// CPU (cores) and memory (bytes) the pods of the DaemonSets that run on a machine of `shape`
/// request: those whose nodeSelector the machine's labels match and whose tolerations cover
/// its NoSchedule/NoExecute taints. Node affinity is not evaluated (a DaemonSet with one is
/// counted), which errs on a smaller placeholder, one that still fits.
pub fn daemonset_requests(daemonsets: &[DaemonSet], shape: &Shape) -> (f64, f64) {
    let mut cpu = 0.0;
    let mut memory = 0.0;
    for ds in daemonsets {
        let Some(spec) = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()) else {
            continue;
        };
        let selected = spec.node_selector.as_ref().is_none_or(|sel| {
            sel.iter()
                .all(|(k, v)| shape.labels.get(k).is_some_and(|l| l == v))
        });
        let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
        let tolerated = shape
            .taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .all(|t| tolerates(tolerations, t));
        if !selected || !tolerated {
            continue;
        }
        for c in &spec.containers {
            let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            let get = |k: &str| {
                requests
                    .and_then(|r| r.get(k))
                    .and_then(|q| parse_quantity(&q.0))
                    .unwrap_or(0.0)
            };
            cpu += get("cpu");
            memory += get("memory");
        }
    }
    (cpu, memory)
}

/// One placeholder's size: `warmSpares.cpu` / `memory` where set, else a whole machine of
/// `shape` less `daemonsets`' requests (CPU rounded down to a millicore, memory to a KiB).
pub fn placeholder_size(
    spares: &WarmSpares,
    shape: Option<&Shape>,
    daemonsets: &[DaemonSet],
) -> Result<Size, Unsized> {
    if let (Some(cpu), Some(memory)) = (&spares.cpu, &spares.memory) {
        return Ok(Size {
            cpu: cpu.0.clone(),
            memory: memory.0.clone(),
        });
    }
    let shape = shape.ok_or(Unsized::NoShape)?;
    let (ds_cpu, ds_memory) = daemonset_requests(daemonsets, shape);
    let whole = |k: &str| shape.allocatable.get(k).and_then(|q| parse_quantity(q));
    let cpu = match &spares.cpu {
        Some(q) => q.0.clone(),
        None => {
            let left = whole("cpu").ok_or(Unsized::NoShape)? - ds_cpu;
            let millis = (left * 1000.0).floor();
            if millis < 1.0 {
                return Err(Unsized::NoRoom(format!("cpu {left:.3}")));
            }
            format!("{millis}m")
        }
    };
    let memory = match &spares.memory {
        Some(q) => q.0.clone(),
        None => {
            let left = whole("memory").ok_or(Unsized::NoShape)? - ds_memory;
            let kib = (left / 1024.0).floor();
            if kib < 1.0 {
                return Err(Unsized::NoRoom(format!("memory {left} bytes")));
            }
            format!("{kib}Ki")
        }
    };
    Ok(Size { cpu, memory })
}

/// The ownerReference that makes the buffer and its template go with the Group.
fn owner(group: &Group) -> Value {
    json!({
        "apiVersion": Group::api_version(&()),
        "kind": Group::kind(&()),
        "name": group.name_any(),
        "uid": group.metadata.uid.clone().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": false,
    })
}

fn managed_labels(group: &str) -> Value {
    json!({
        "app.kubernetes.io/managed-by": "kubectl-homelab",
        node::GROUP_NAME_LABEL: group,
    })
}

/// The PodTemplate of one placeholder of `group` (an apply body).
pub fn pod_template(group: &Group, size: &Size, shape: Option<&Shape>) -> Value {
    let name = group.name_any();
    let ns = group.namespace().unwrap_or_default();
    let tolerations: Vec<Value> = shape
        .map(|s| s.taints.as_slice())
        .unwrap_or(&[])
        .iter()
        .map(|t| match &t.value {
            Some(v) => json!({"key": t.key, "operator": "Equal", "value": v, "effect": t.effect}),
            None => json!({"key": t.key, "operator": "Exists", "effect": t.effect}),
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {
            "name": buffer_name(&name),
            "namespace": ns,
            "labels": managed_labels(&name),
            "ownerReferences": [owner(group)],
        },
        "template": {
            "metadata": { "labels": managed_labels(&name) },
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "placeholder",
                    "image": PLACEHOLDER_IMAGE,
                    "resources": { "requests": { "cpu": size.cpu, "memory": size.memory } },
                }],
                "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{ "matchExpressions": [
                        { "key": node::GROUP_NAME_LABEL, "operator": "In", "values": [name] },
                        { "key": node::GROUP_NAMESPACE_LABEL, "operator": "In", "values": [ns] },
                    ]}],
                }}},
                "tolerations": tolerations,
            },
        },
    })
}

/// The CapacityBuffer of `group`: `count` replicas of its PodTemplate, actively provisioned.
pub fn capacity_buffer(group: &Group, count: i32) -> Value {
    let name = group.name_any();
    json!({
        "apiVersion": format!("{BUFFER_API_GROUP}/{BUFFER_VERSION}"),
        "kind": BUFFER_KIND,
        "metadata": {
            "name": buffer_name(&name),
            "namespace": group.namespace().unwrap_or_default(),
            "labels": managed_labels(&name),
            "ownerReferences": [owner(group)],
        },
        "spec": {
            "provisioningStrategy": ACTIVE_CAPACITY,
            "podTemplateRef": { "name": buffer_name(&name) },
            "replicas": count,
        },
    })
}

/// What the controller keeps for a Group.
#[derive(Clone, Debug, PartialEq)]
pub enum Desired {
    /// No warm spares: no buffer, no template.
    Absent,
    /// This template and buffer.
    Buffer { template: Value, buffer: Value },
    /// Warm spares asked for, but no placeholder size: no buffer, and the reason.
    Unsized(Unsized),
}

/// What `group` should have at `now` (pure).
pub fn desired(
    group: &Group,
    shape: Option<&Shape>,
    daemonsets: &[DaemonSet],
    now: Timestamp,
) -> Desired {
    let Some(spares) = warm_spares_in_force(group, now) else {
        return Desired::Absent;
    };
    match placeholder_size(&spares, shape, daemonsets) {
        Ok(size) => Desired::Buffer {
            template: pod_template(group, &size, shape),
            buffer: capacity_buffer(group, spares.count),
        },
        Err(e) => Desired::Unsized(e),
    }
}

fn buffer_api(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(BUFFER_API_GROUP, BUFFER_VERSION, BUFFER_KIND);
    let resource = ApiResource::from_gvk_with_plural(&gvk, BUFFER_PLURAL);
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// The machine shape of Group `ns/name` from the provider's inventory: its scale-up template.
fn shape_of(ctx: &Context, ns: &str, name: &str) -> Option<Shape> {
    let inv = ctx.provider.inventory();
    let id = inv
        .groups()
        .find(|g| g.spec.namespace == ns && g.spec.name == name)?
        .spec
        .id
        .clone();
    let t = template_node(&inv, &id).ok()?;
    Some(Shape {
        labels: t.labels,
        taints: t.taints,
        allocatable: t.allocatable,
    })
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The controller's memory: what it last applied per Group, and whether it warned about the
/// CRD.
#[derive(Default)]
struct State {
    applied: HashMap<ObjectRef<Group>, Desired>,
    warned_no_crd: bool,
    /// The cluster's DaemonSets and when they were listed, kept for a [`TICK`].
    daemonsets: Option<(tokio::time::Instant, Vec<DaemonSet>)>,
}

/// Outcome of one Group's reconcile, for its condition.
enum Outcome {
    Kept(i32),
    Removed,
    NoCrd,
    Unsized(Unsized),
}

async fn apply_buffer(
    ctx: &Context,
    ns: &str,
    template: &Value,
    buffer: &Value,
) -> Result<(), kube::Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let name = buffer["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The buffer first: without the CRD nothing else is written.
    buffer_api(&ctx.client, ns)
        .patch(&name, &pp, &Patch::Apply(buffer))
        .await?;
    Api::<PodTemplate>::namespaced(ctx.client.clone(), ns)
        .patch(&name, &pp, &Patch::Apply(template))
        .await?;
    Ok(())
}

async fn delete_buffer(ctx: &Context, ns: &str, group: &str) -> Result<(), kube::Error> {
    let name = buffer_name(group);
    match buffer_api(&ctx.client, ns)
        .delete(&name, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }
    match Api::<PodTemplate>::namespaced(ctx.client.clone(), ns)
        .delete(&name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `g` carries [`CONDITION_WARM_SPARES`] (it had warm spares once).
fn has_condition(g: &Group) -> bool {
    g.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == CONDITION_WARM_SPARES)
    })
}

/// The condition for `outcome`, written only when the Group asks for warm spares or already
/// carries the condition.
async fn write_condition(ctx: &Context, g: &Group, outcome: &Outcome) -> Result<(), Error> {
    let (ok, reason, message) = match outcome {
        Outcome::Kept(n) => (
            true,
            "BufferApplied",
            format!(
                "CapacityBuffer {} keeps {n} placeholder(s) for the Cluster Autoscaler",
                buffer_name(&g.name_any())
            ),
        ),
        Outcome::Removed => (false, "NoWarmSpares", "no warm spares in force".to_owned()),
        Outcome::NoCrd => (
            false,
            REASON_NO_CRD,
            "the API server does not serve capacitybuffers.autoscaling.x-k8s.io: install the Cluster Autoscaler's CapacityBuffer CRD (the chart's clusterAutoscaler.capacityBuffers.enabled)".to_owned(),
        ),
        Outcome::Unsized(e) => (false, "NoPlaceholderSize", e.to_string()),
    };
    let conditions = g
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let current = conditions.iter().find(|c| c.type_ == CONDITION_WARM_SPARES);
    if current.is_none() && !asks_for_spares(g) {
        return Ok(());
    }
    let status = if ok { "True" } else { "False" };
    if current.is_some_and(|c| c.status == status && c.reason == reason && c.message == message) {
        return Ok(());
    }
    let mut new = conditions;
    upsert_condition(
        &mut new,
        condition(
            CONDITION_WARM_SPARES,
            ok,
            reason,
            message,
            g.metadata.generation,
            Timestamp::now(),
        ),
    );
    let ns = g.namespace().unwrap_or_default();
    let api: Api<Group> = Api::namespaced(ctx.client.clone(), &ns);
    let value = serde_json::to_value(&new).map_err(|source| Error::Json {
        what: "group conditions",
        source,
    })?;
    api.patch_status(
        &g.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "conditions": value } })),
    )
    .await
    .map_err(Error::kube(format!(
        "writing the {CONDITION_WARM_SPARES} condition"
    )))?;
    Ok(())
}

async fn daemonsets(ctx: &Context) -> Vec<DaemonSet> {
    match Api::<DaemonSet>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            tracing::info!(error = %e, "cannot list DaemonSets; placeholders are sized as whole machines");
            Vec::new()
        }
    }
}

async fn reconcile(ctx: &Context, state: &mut State, g: &Group) -> Result<(), Error> {
    let key = ObjectRef::from_obj(g);
    let ns = g.namespace().unwrap_or_default();
    let name = g.name_any();
    let now = Timestamp::now();
    let shape = shape_of(ctx, &ns, &name);
    let spares = warm_spares_in_force(g, now);
    let needs_ds = spares
        .as_ref()
        .is_some_and(|s| s.cpu.is_none() || s.memory.is_none());
    if needs_ds
        && state
            .daemonsets
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= TICK)
    {
        state.daemonsets = Some((tokio::time::Instant::now(), daemonsets(ctx).await));
    }
    let ds = state
        .daemonsets
        .as_ref()
        .map(|(_, d)| d.as_slice())
        .unwrap_or(&[]);
    let want = desired(g, shape.as_ref(), ds, now);
    let outcome = if state.applied.get(&key) == Some(&want) {
        match &want {
            Desired::Absent => Outcome::Removed,
            Desired::Buffer { buffer, .. } => {
                Outcome::Kept(buffer["spec"]["replicas"].as_i64().unwrap_or(0) as i32)
            }
            Desired::Unsized(e) => Outcome::Unsized(e.clone()),
        }
    } else {
        let outcome = match &want {
            // A Group that never had warm spares (no condition of ours) has no buffer: no call.
            Desired::Absent if !asks_for_spares(g) && !has_condition(g) => Outcome::Removed,
            Desired::Absent => match delete_buffer(ctx, &ns, &name).await {
                Ok(()) => Outcome::Removed,
                Err(e) => return Err(Error::kube("deleting the warm spares' CapacityBuffer")(e)),
            },
            Desired::Unsized(e) => match delete_buffer(ctx, &ns, &name).await {
                Ok(()) => Outcome::Unsized(e.clone()),
                Err(e) => return Err(Error::kube("deleting the warm spares' CapacityBuffer")(e)),
            },
            Desired::Buffer { template, buffer } => {
                match apply_buffer(ctx, &ns, template, buffer).await {
                    Ok(()) => {
                        Outcome::Kept(buffer["spec"]["replicas"].as_i64().unwrap_or(0) as i32)
                    }
                    Err(e) if is_not_found(&e) => {
                        if !state.warned_no_crd {
                            state.warned_no_crd = true;
                            tracing::warn!(
                                group = %key,
                                "warm spares asked for, but the API server does not serve CapacityBuffers (autoscaling.x-k8s.io/v1beta1): install the Cluster Autoscaler's CapacityBuffer CRD"
                            );
                        }
                        Outcome::NoCrd
                    }
                    Err(e) => {
                        return Err(Error::kube("applying the warm spares' CapacityBuffer")(e));
                    }
                }
            }
        };
        if !matches!(outcome, Outcome::NoCrd) {
            state.applied.insert(key, want);
        }
        outcome
    };
    write_condition(ctx, g, &outcome).await
}

/// Runs until the change feed closes: every Group the feed names (a Group, or a member's Node
/// CR) is reconciled, and every Group once per [`TICK`].
pub async fn run(ctx: Arc<Context>, mut changes: broadcast::Receiver<Change>) {
    let mut state = State::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let groups: Vec<Arc<Group>> = tokio::select! {
            _ = tick.tick() => ctx.cache.groups().state(),
            c = changes.recv() => match c {
                Ok(Change::Group { namespace, name }) => ctx
                    .cache
                    .groups()
                    .get(&ObjectRef::new(&name).within(&namespace))
                    .into_iter()
                    .collect(),
                Ok(Change::Machine { namespace, name }) => ctx
                    .cache
                    .machines()
                    .get(&ObjectRef::new(&name).within(&namespace))
                    .and_then(|m| {
                        let g = m.group()?.to_owned();
                        ctx.cache.groups().get(&ObjectRef::new(&g).within(&namespace))
                    })
                    .into_iter()
                    .collect(),
                Ok(Change::Node { .. }) => Vec::new(),
                Ok(Change::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    ctx.cache.groups().state()
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        // Forget Groups that are gone (their buffers go with them by garbage collection).
        let cached = ctx.cache.groups();
        state.applied.retain(|k, _| cached.get(k).is_some());
        for g in groups {
            if let Err(e) = reconcile(&ctx, &mut state, &g).await {
                tracing::info!(group = %ObjectRef::from_obj(&*g), error = %crate::operator::error_chain(&e), "warm spares; retrying on the next change or tick");
                state.applied.remove(&ObjectRef::from_obj(&*g));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::api::Machine;
    use crate::testing::taint;

    fn shape() -> Shape {
        Shape {
            labels: BTreeMap::from([
                ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                (node::GROUP_NAME_LABEL.to_owned(), "desktops".to_owned()),
            ]),
            taints: vec![TaintView {
                key: "homelab.dev/power".to_owned(),
                value: Some("on-demand".to_owned()),
                effect: "NoSchedule".to_owned(),
            }],
            allocatable: BTreeMap::from([
                ("cpu".to_owned(), "4".to_owned()),
                ("memory".to_owned(), "8Gi".to_owned()),
            ]),
        }
    }

    fn daemonset(cpu: &str, memory: &str, selector: &[(&str, &str)], tolerate: bool) -> DaemonSet {
        serde_json::from_value(json!({
            "metadata": { "name": "ds", "namespace": "kube-system" },
            "spec": {
                "selector": {},
                "template": { "spec": {
                    "nodeSelector": selector.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                    "tolerations": if tolerate { json!([{ "operator": "Exists" }]) } else { json!([]) },
                    "containers": [{ "name": "c", "image": "x",
                        "resources": { "requests": { "cpu": cpu, "memory": memory } } }],
                }},
            },
        }))
        .unwrap()
    }

    /// Nothing in force: no buffer (count 0 and unset alike).
    #[test]
    fn no_warm_spares_or_count_zero_wants_no_buffer() {
        let now = Timestamp::UNIX_EPOCH;
        let none = Group::test("desktops").build();
        assert_eq!(desired(&none, Some(&shape()), &[], now), Desired::Absent);
        let zero = Group::test("desktops")
            .warm_spares(0, Some("1"), Some("1Gi"))
            .build();
        assert_eq!(desired(&zero, Some(&shape()), &[], now), Desired::Absent);
    }

    /// A schedule window's own `warmSpares` holds while the window does; outside it the
    /// Group's own.
    #[test]
    fn a_schedule_window_sets_the_spares_in_force() {
        use crate::operator::api::{Day, ScheduleWindow, WarmSpares};
        let g = Group::test("desktops")
            .warm_spares(0, None, None)
            .spec_with(|s| {
                s.schedule = vec![ScheduleWindow {
                    name: "weekday-evenings".into(),
                    days: vec![Day::Mon],
                    from: "18:00".into(),
                    to: "22:00".into(),
                    min_size: None,
                    warm_spares: Some(WarmSpares {
                        count: 2,
                        cpu: None,
                        memory: None,
                    }),
                }]
            })
            .build();
        // 2026-12-07 is a Monday; the Group's time zone defaults to UTC.
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let count = |t| warm_spares_in_force(&g, at(t)).map(|w| w.count);
        assert_eq!(count("2026-12-07T19:00:00Z"), Some(2));
        assert_eq!(count("2026-12-07T22:00:00Z"), None);
        assert_eq!(count("2026-12-08T19:00:00Z"), None);
    }

    /// The buffer: `count` replicas of the group's PodTemplate, actively provisioned, owned by
    /// the Group; the template asks for the sizes given, selects the group's two labels and
    /// tolerates the group's taint.
    #[test]
    fn buffer_and_template_for_a_sized_spare() {
        let mut g = Group::test("desktops")
            .warm_spares(2, Some("1500m"), Some("3Gi"))
            .build();
        g.metadata.uid = Some("uid-1".to_owned());
        let Desired::Buffer { template, buffer } =
            desired(&g, Some(&shape()), &[], Timestamp::UNIX_EPOCH)
        else {
            panic!("a buffer is wanted");
        };
        assert_eq!(buffer["apiVersion"], "autoscaling.x-k8s.io/v1beta1");
        assert_eq!(buffer["metadata"]["name"], "desktops-warm-spares");
        assert_eq!(buffer["metadata"]["namespace"], "lab");
        assert_eq!(buffer["metadata"]["ownerReferences"][0]["kind"], "Group");
        assert_eq!(buffer["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(buffer["spec"]["replicas"], 2);
        assert_eq!(buffer["spec"]["provisioningStrategy"], ACTIVE_CAPACITY);
        assert_eq!(
            buffer["spec"]["podTemplateRef"]["name"],
            "desktops-warm-spares"
        );
        let spec = &template["template"]["spec"];
        assert_eq!(
            spec["containers"][0]["resources"]["requests"]["cpu"],
            "1500m"
        );
        assert_eq!(
            spec["containers"][0]["resources"]["requests"]["memory"],
            "3Gi"
        );
        let terms = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"];
        assert_eq!(terms[0]["key"], node::GROUP_NAME_LABEL);
        assert_eq!(terms[0]["values"][0], "desktops");
        assert_eq!(terms[1]["key"], node::GROUP_NAMESPACE_LABEL);
        assert_eq!(terms[1]["values"][0], "lab");
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "homelab.dev/power", "operator": "Equal", "value": "on-demand", "effect": "NoSchedule"}])
        );
        // The PodTemplate parses as one.
        let _: PodTemplate = serde_json::from_value(template).unwrap();
    }

    /// Unsized: a whole machine less the DaemonSets that run there; one whose nodeSelector the
    /// machine does not match, or that does not tolerate its taint, is not subtracted.
    #[test]
    fn default_size_is_a_machine_less_its_daemonsets() {
        let spares = WarmSpares {
            count: 1,
            ..WarmSpares::default()
        };
        let ds = [
            daemonset("250m", "512Mi", &[("kubernetes.io/os", "linux")], true),
            daemonset("1", "1Gi", &[("kubernetes.io/os", "windows")], true),
            daemonset("1", "1Gi", &[], false),
        ];
        let size = placeholder_size(&spares, Some(&shape()), &ds).unwrap();
        assert_eq!(
            size,
            Size {
                cpu: "3750m".to_owned(),
                memory: format!("{}Ki", (8 * 1024 * 1024) - 512 * 1024),
            }
        );
    }

    /// Without any machine size and without cpu/memory, no buffer can be sized: the reason is
    /// kept for the condition. DaemonSets taking the whole machine leave no room.
    #[test]
    fn no_shape_or_no_room_is_unsized() {
        let g = Group::test("desktops").warm_spares(1, None, None).build();
        assert_eq!(
            desired(&g, None, &[], Timestamp::UNIX_EPOCH),
            Desired::Unsized(Unsized::NoShape)
        );
        let hog = [daemonset("4", "1Gi", &[], true)];
        assert!(matches!(
            desired(&g, Some(&shape()), &hog, Timestamp::UNIX_EPOCH),
            Desired::Unsized(Unsized::NoRoom(_))
        ));
    }

    /// The labels the placeholders select: on a member's Node when the operator registers it,
    /// and on the group's scale-up template; none for a Group name too long for a label value.
    #[test]
    fn members_nodes_and_the_template_carry_the_group_labels() {
        use crate::operator::provider::inventory::{
            GroupOptions, GroupView, Inventory, MachineView, TemplateHints,
        };
        let m = Machine::test("m1")
            .namespace("lab")
            .group("desktops")
            .build();
        let change = node::NodeEdit::new(&crate::operator::kube_node::KubeNode::from(
            crate::testing::node("n1"),
        ))
        .register(&m, false)
        .change();
        assert_eq!(
            change.labels.get(node::GROUP_NAME_LABEL),
            Some(&Some("desktops".to_owned()))
        );
        assert_eq!(
            change.labels.get(node::GROUP_NAMESPACE_LABEL),
            Some(&Some("lab".to_owned()))
        );

        let g = GroupView {
            id: String::new(),
            namespace: "lab".into(),
            name: "desktops".into(),
            min_size: 0,
            max_size: None,
            power_on_order: crate::operator::api::PowerOnOrder::Name,
            options: GroupOptions::default(),
            template: TemplateHints::default(),
            power_on_failure_cooldown: None,
            scale_down_disabled: false,
            paused: false,
            wear: None,
            schedule: None,
        };
        let mut mv = MachineView::new("lab", "m1", Some("desktops"));
        mv.hints = Arc::new(TemplateHints {
            capacity: BTreeMap::from([("cpu".to_owned(), "2".to_owned())]),
            ..TemplateHints::default()
        });
        let inv = Inventory::build(vec![g], vec![mv], vec![]);
        let t = template_node(&inv, "desktops").unwrap();
        assert_eq!(t.labels[node::GROUP_NAME_LABEL], "desktops");
        assert_eq!(t.labels[node::GROUP_NAMESPACE_LABEL], "lab");

        assert!(node::group_labels("lab", &"x".repeat(64)).is_empty());
        assert!(node::group_labels("lab", "a.b-c_d").len() == 2);
    }

    /// The scheduler's toleration rule, the cases the sizing relies on.
    #[test]
    fn tolerations_match_like_the_scheduler() {
        let t = TaintView::all_from(&[taint("k", "v", "NoSchedule")]).remove(0);
        let tol = |v: Value| -> Vec<Toleration> { serde_json::from_value(v).unwrap() };
        assert!(tolerates(&tol(json!([{"operator": "Exists"}])), &t));
        assert!(tolerates(
            &tol(json!([{"key": "k", "operator": "Exists"}])),
            &t
        ));
        assert!(tolerates(
            &tol(json!([{"key": "k", "value": "v", "effect": "NoSchedule"}])),
            &t
        ));
        assert!(!tolerates(&tol(json!([{"key": "k", "value": "w"}])), &t));
        assert!(!tolerates(
            &tol(json!([{"key": "k", "operator": "Exists", "effect": "NoExecute"}])),
            &t
        ));
    }
}
