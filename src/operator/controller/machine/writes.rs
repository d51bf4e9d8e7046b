//! The machine controller's writes outside the effects: its finalizer, the desired power of an
//! adopted machine, the Kubernetes Node's registration, status.
use std::sync::Arc;

use crate::operator::kube_node::KubeNode;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;

use super::act::{direction_of, driver, op_context};
use super::{find_node, group_of, refusals};
use crate::operator::api::{Machine, MachineStatus};
use crate::operator::controller::{Context, Error, FIELD_MANAGER, FINALIZER};
use crate::operator::machine::{PowerState, operation_resource_name};
use crate::operator::node as node_side;

pub(super) async fn add_finalizer(api: &Api<Machine>, m: &Machine) -> Result<(), Error> {
    let mut finalizers = m.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": m.resource_version() }
    });
    api.patch(
        &m.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::kube(format!(
        "adding the finalizer to {}",
        m.object_ref()
    )))?;
    Ok(())
}

/// Deleting a Node CR: stop its operation, leave its Kubernetes Node schedulable (untouched when
/// the trust boundary refuses the machine), let it go.
/// The machine's power is left as it is (deleting an object is not a power-off).
pub(super) async fn finalize(
    ctx: &Context,
    api: &Api<Machine>,
    m: &Machine,
) -> Result<Action, Error> {
    if !m.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let lc = m.lifecycle();
    let node = find_node(ctx, m);
    let node_name = node.as_ref().map(|n| n.name().to_owned());
    if let Some(op) = lc.operation.as_ref().filter(|o| o.completed.is_none()) {
        let resource = operation_resource_name(&m.name_any(), op);
        let cx = op_context(ctx, m, op, &resource, jiff::Timestamp::now());
        if let Ok(d) = driver(ctx, m, direction_of(op), node_name.as_deref()) {
            ctx.ensure_leader()?;
            d.cancel(&cx).await?;
        }
    }
    // A machine the trust boundary refuses never had the Node written by this operator (or
    // lost the right to): the Node is left untouched.
    let refused = !refusals(ctx, m, node.as_deref()).is_empty();
    if let Some(n) = node.as_ref().filter(|_| !refused) {
        ctx.ensure_leader()?;
        // Leave the Node as it was before we managed it: our cordon, labels, taints and
        // annotations go; a person's stay.
        node_side::update_node(&ctx.client, n.name(), node_side::cleanup_change).await?;
    }
    let finalizers: Vec<String> = m
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch = serde_json::json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": m.resource_version() }
    });
    match api
        .patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => {
            return Err(Error::kube(format!(
                "removing the finalizer of {}",
                m.object_ref()
            ))(e));
        }
    }
    Ok(Action::await_change())
}

/// Records a desired power state over `resource_version` (the object as the reconcile decided
/// on it, or as its own last write left it); returns the new resourceVersion.
pub(super) async fn patch_spec_power(
    api: &Api<Machine>,
    m: &Machine,
    resource_version: Option<String>,
    to: PowerState,
) -> Result<Option<String>, Error> {
    let value = match to {
        PowerState::On => "on",
        PowerState::Off => "off",
    };
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": resource_version },
        "spec": { "powerState": value },
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let patched = api
        .patch(&m.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!(
            "recording {} as wanted on",
            m.object_ref()
        )))?;
    Ok(patched.resource_version())
}

/// Keeps the Kubernetes Node in line with the machine: the providerID CA matches instances by,
/// the machine's labels and taints, CA's scale-down opt-out for protected machines (`quiet`:
/// also while quiet hours hold the machine's power-offs). Returns the
/// Node as it is now (the one written, or `node` when unchanged) and a providerID mismatch to
/// report.
pub(super) async fn sync_node(
    ctx: &Context,
    m: &Machine,
    node: Arc<KubeNode>,
    quiet: bool,
) -> Result<(Arc<KubeNode>, Option<String>), Error> {
    let group_protects = group_of(ctx, m).is_some_and(|g| g.scale_down_disabled());
    // Under maintenance: CA's scale-down skips the Node (its scale-down-disabled annotation),
    // and it stays cordoned (the drain's cordon, restored if someone uncordons it).
    let in_maintenance = m.spec.maintenance.is_some();
    let mut reg = node_side::registration(m, &node, group_protects || in_maintenance || quiet);
    if in_maintenance {
        let cordon = node_side::cordon_change(&node, true);
        reg.change.annotations.extend(cordon.annotations);
        reg.change.unschedulable = reg.change.unschedulable.or(cordon.unschedulable);
    }
    let mismatch = match &reg.provider_id {
        node_side::ProviderIdCheck::Mismatch { node, expected } => Some(format!(
            "the Kubernetes Node carries providerID {node} but the machine expects {expected}; \
             a providerID cannot change: fix spec.providerID or the kubelet's --provider-id"
        )),
        _ => None,
    };
    if reg.change.is_empty() {
        return Ok((node, mismatch));
    }
    ctx.ensure_leader()?;
    let written = node_side::patch_node(&ctx.client, &node, &reg.change).await?;
    Ok((written.map(Arc::new).unwrap_or(node), mismatch))
}

/// Writes status when it changed, guarded by the resourceVersion the decision was made on (a
/// conflict means the view was stale: the reconcile runs again on the new object). Returns
/// the resourceVersion after it when it wrote, `None` when nothing changed.
pub(super) async fn write_status(
    api: &Api<Machine>,
    m: &Machine,
    resource_version: Option<String>,
    old: &MachineStatus,
    new: MachineStatus,
) -> Result<Option<Option<String>>, Error> {
    if *old == new {
        return Ok(None);
    }
    let to_json = |st: &MachineStatus| {
        serde_json::to_value(st).map_err(|source| Error::Json {
            what: "status",
            source,
        })
    };
    // A merge patch of what changed, with `null` for what went away (a plain merge patch of the
    // new status would keep removed fields), guarded by the resourceVersion the decision was
    // made on: a 409 means the view was stale and the reconcile runs again.
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": resource_version },
        "status": merge_diff(&to_json(old)?, &to_json(&new)?),
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let written = api
        .patch_status(&m.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!("writing status of {}", m.object_ref())))?;
    Ok(Some(written.resource_version()))
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`.
pub(super) fn merge_diff(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = serde_json::Map::new();
            for (k, v) in b {
                match a.get(k) {
                    Some(old_v) if old_v == v => {}
                    Some(old_v) => {
                        out.insert(k.clone(), merge_diff(old_v, v));
                    }
                    None => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in a.keys() {
                if !b.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            Value::Object(out)
        }
        _ => new.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_merge_diff_nulls_what_went_away_and_keeps_what_did_not_change() {
        let old = json!({ "phase": "PoweringOn", "operation": { "id": "on-1", "completed": "t" },
                          "attempt": 2, "conditions": [1, 2] });
        let new = json!({ "phase": "Booting", "operation": { "id": "on-1" }, "attempt": 2,
                          "conditions": [1, 3] });
        assert_eq!(
            merge_diff(&old, &new),
            json!({ "phase": "Booting", "operation": { "completed": null }, "conditions": [1, 3] })
        );
    }
}
