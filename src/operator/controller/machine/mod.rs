//! The machine controller: one reconcile per Node CR. Observe (Kubernetes Node, power operation,
//! pods), ask the lifecycle core what follows, carry out its effects, write status once.
//!
//! - `act`: the pass loop's edge: what the core is shown, how its effects are carried out.
//! - `status`: what the status says afterwards (pure).
//! - `writes`: the finalizer, an adopted machine's desired power, the Node's registration, status.
//! - `accounting`: `status.energy` and when it is written.
mod accounting;
mod act;
mod status;
mod wear;
mod writes;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource as _, ResourceExt as _};

use super::{Context, Error, FINALIZER, requeue};
use crate::operator::api::{Group, Machine};
use crate::operator::kube_node::KubeNode;
use crate::operator::machine::{NodeObs, Policy, PowerState, drive};
use crate::operator::policy::maintenance;
use crate::operator::power::job::cancel_stale_jobs;
use crate::operator::trust::{self, Refusal};
use act::{Passes, Subject};
use writes::{add_finalizer, finalize, patch_spec_power, sync_node, write_status};

/// Condition: a drain for a power-off is running or was given up.
pub const CONDITION_DRAINING: &str = "Draining";
/// Condition: the registered Node reports Ready.
pub const CONDITION_NODE_READY: &str = "NodeReady";
/// Condition: the machine's `spec.meter` answers (True, `Reading`) or not (False,
/// `Unreachable`: energy is counted from the `spec.watts` model meanwhile).
pub const CONDITION_POWER_METER: &str = "PowerMeter";

pub fn error_policy(_m: Arc<Machine>, e: &Error, ctx: Arc<Context>) -> Action {
    if let Some(metrics) = &ctx.metrics {
        metrics.reconcile_error("machine");
    }
    if matches!(e, Error::NotLeader) {
        // The controllers stop as soon as the fence lowers the flag; until then nothing acts.
        tracing::info!("not acting: this replica's Lease has run out");
        return Action::requeue(Duration::from_secs(5));
    }
    if e.is_conflict() {
        return Action::requeue(Duration::from_millis(200));
    }
    tracing::warn!(error = %crate::operator::error_chain(e), "reconciling a machine failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The Kubernetes Node of a machine: by providerID, then by `kubernetesNodeName` (or the name it
/// last registered under).
fn find_node(ctx: &Context, m: &Machine) -> Option<Arc<KubeNode>> {
    let store = ctx.cache.nodes();
    ctx.node_by_provider_id(&m.expected_provider_id())
        .and_then(|n| store.get(&ObjectRef::new(&n)))
        .or_else(|| m.node_name().and_then(|n| store.get(&ObjectRef::new(n))))
}

/// What the core needs to know about the Node. An empty providerID counts as matching: the
/// node-side sync sets it to the expected one (kubeadm leaves it empty).
fn node_obs(m: &Machine, node: Option<&KubeNode>) -> NodeObs {
    let Some(node) = node else {
        return NodeObs::Absent;
    };
    let ready = node.ready();
    NodeObs::Registered {
        ready: node.is_ready(),
        provider_id_matches: node
            .provider_id()
            .is_none_or(|pid| pid == m.expected_provider_id()),
        not_ready_since: ready.filter(|c| !c.is_true()).and_then(|c| c.since),
        ready_since: ready.filter(|c| c.is_true()).and_then(|c| c.since),
    }
}

async fn pods_on(ctx: &Context, node: &str) -> Result<Vec<Pod>, Error> {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    Ok(api
        .list(&params)
        .await
        .map_err(Error::kube(format!("listing pods on node {node}")))?
        .items)
}

/// The machine's policy: the operator's settings, its own timeouts, its Group's remediation
/// (none while the machine is under maintenance or its Group is paused: the operator's own
/// power actions stop there).
fn policy(ctx: &Context, m: &Machine) -> Result<Policy, String> {
    let mut p = ctx.settings.policy;
    p.boot_timeout = m.boot_timeout().map_err(|e| e.to_string())?;
    p.shutdown_timeout = m.shutdown_timeout().map_err(|e| e.to_string())?;
    if let Some(group) = group_of(ctx, m) {
        p.remediate_after = group.remediate_after().map_err(|e| e.to_string())?;
        if group.spec.paused.unwrap_or(false) {
            p.remediate_after = None;
        }
    }
    if !maintenance::allowed(m.spec.maintenance.as_deref()).remediation {
        p.remediate_after = None;
    }
    Ok(p)
}

/// Ends a maintenance whose `until` has passed: clears `spec.maintenance`, undoes the drain's
/// cordon and records an Event. `Ok(true)`: it ended (the write queues the machine again).
async fn end_expired_maintenance(
    ctx: &Context,
    api: &Api<Machine>,
    m: &Machine,
    node: Option<&KubeNode>,
    now: Timestamp,
) -> Result<bool, Error> {
    let Some(mt) = m.spec.maintenance.as_deref() else {
        return Ok(false);
    };
    if !maintenance::expired(mt, now) {
        return Ok(false);
    }
    ctx.ensure_leader()?;
    let patch = serde_json::json!({ "spec": { "maintenance": null } });
    let params = kube::api::PatchParams {
        field_manager: Some(super::FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    api.patch(&m.name_any(), &params, &kube::api::Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!(
            "ending the maintenance of {}",
            m.object_ref()
        )))?;
    if let Some(n) = node {
        crate::operator::node::drain::cordon(&ctx.client, n.name(), false)
            .await
            .map_err(|e| Error::NodeSide(e.to_string()))?;
    }
    let ev = crate::operator::machine::KubeEvent {
        reason: "MaintenanceEnded",
        warning: false,
        message: format!(
            "{} has passed: the machine is uncordoned and the Cluster Autoscaler's again",
            maintenance::marker(mt)
        ),
    };
    act::emit(ctx, m, &ev).await;
    Ok(true)
}

/// The machine's Group from the provider's cache (`None`: no group label, or no such Group).
fn group_of(ctx: &Context, m: &Machine) -> Option<Arc<Group>> {
    let (g, ns) = (m.group()?, m.namespace()?);
    ctx.cache.groups().get(&ObjectRef::new(g).within(&ns))
}

/// Every rule of the trust boundary the machine breaks: its spec's, and its Kubernetes Node's
/// when it has one (empty: it may act).
fn refusals(ctx: &Context, m: &Machine, node: Option<&KubeNode>) -> Vec<Refusal> {
    let policy = &ctx.settings.trust;
    let mut refusals = trust::check_spec(m, policy);
    refusals.extend(node.and_then(|n| trust::check_node(n, policy).err()));
    refusals
}

pub async fn reconcile(m: Arc<Machine>, ctx: Arc<Context>) -> Result<Action, Error> {
    tracing::debug!(machine = %m.object_ref(), desired = ?m.desired_power(), "reconciling");
    let ns = m.namespace().unwrap_or_default();
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
    let key = format!("{ns}/{}", m.name_any());
    if m.meta().deletion_timestamp.is_some() {
        // Nothing more is decided for it: forget its status writes and its meter's last
        // counter.
        ctx.forget_writes(&key);
        crate::lock(&ctx.meter_marks).remove(&key);
        return finalize(&ctx, &api, &m).await;
    }
    if !m.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(&api, &m).await?;
        // The patch triggers another reconcile with the finalizer in place.
        return Ok(Action::await_change());
    }
    if ctx.is_superseded(&key, m.resource_version().as_deref()) {
        // The cache has not seen this operator's last status write yet: deciding on it would
        // repeat what that reconcile did (a second HTTP call, a second reset). The write's own
        // watch event queues the machine again.
        tracing::debug!(machine = %m.object_ref(), "cache behind the last status write; waiting for it");
        return Ok(Action::await_change());
    }
    // The cache shows this operator's writes: the ones before are history.
    ctx.forget_writes(&key);
    let now = Timestamp::now();
    let generation = m.meta().generation;
    // The status as stored: what every write of this reconcile is a diff against.
    let stored = m.status.clone().unwrap_or_default();
    // The trust boundary, before anything acts: what the spec asks for and the Kubernetes Node
    // it would adopt.
    let node = find_node(&ctx, &m);
    let refusals = refusals(&ctx, &m, node.as_deref());
    // Only the operation the status records may act (its Job, its relay): any other was
    // replaced, and its Job is stopped before anything is decided. A refused machine's own
    // Job is stopped too: nothing acts for it until the refusal is fixed.
    let current = m
        .lifecycle()
        .operation
        .map(|o| o.id)
        .filter(|_| refusals.is_empty());
    ctx.ensure_leader()?;
    let cancelled = cancel_stale_jobs(&ctx.client, &ctx.jobs, &m, current.as_deref()).await?;
    if !cancelled.is_empty() {
        tracing::info!(machine = %m.object_ref(), jobs = ?cancelled, "cancelled the Jobs of operations the status does not record");
    }
    // The status the decisions start from: the stored one with the NotPermitted condition.
    let (old_status, refused_event) =
        status::permission(stored.clone(), &refusals, generation, now);
    if !refusals.is_empty() {
        // Said in status, nothing else: no power action, no write to the Node, no Job. The
        // lifecycle stays as recorded; the CR's and the Node's watches queue the machine again
        // when either changes (a fix), so there is no timed retry.
        match &refused_event {
            Some(ev) => {
                tracing::info!(machine = %m.object_ref(), refusals = ?refusals, "not acting: the trust boundary refuses");
                act::emit(&ctx, &m, ev).await;
            }
            None => tracing::debug!(machine = %m.object_ref(), "not acting: still refused"),
        }
        if write_status(&api, &m, m.resource_version(), &stored, old_status)
            .await?
            .is_some()
        {
            ctx.supersede(&key, m.resource_version());
        }
        return Ok(Action::await_change());
    }
    if end_expired_maintenance(&ctx, &api, &m, node.as_deref(), now).await? {
        return Ok(Action::await_change());
    }
    let policy = match policy(&ctx, &m) {
        Ok(p) => p,
        Err(problem) => {
            let status = status::invalid_spec(old_status.clone(), problem, generation, now);
            write_status(&api, &m, m.resource_version(), &stored, status).await?;
            return Ok(Action::await_change());
        }
    };

    // Observe, then decide and act until the acts change nothing the core reads.
    let node_name = node
        .as_ref()
        .map(|n| n.name().to_owned())
        .or_else(|| m.node_name().map(str::to_owned));
    let subject = Subject {
        ctx: &ctx,
        m: &m,
        node: node.as_deref(),
        node_name: node_name.as_deref(),
        now,
    };
    let mut passes = Passes::observe(subject, old_status.clone()).await?;
    drive(&mut passes, now, &policy).await?;

    // Write what followed: the machine wanted on (adopted or given back), the Node's registration, status; over what this
    // reconcile wrote before acting, if it did.
    let (mut rv, written) = match passes.out.written.take() {
        Some(w) => (w.resource_version, w.status),
        None => (m.resource_version(), stored.clone()),
    };
    if passes.out.want_on {
        let before = rv.clone();
        rv = patch_spec_power(&api, &m, rv, PowerState::On).await?;
        ctx.supersede(&key, before);
    }
    // Quiet hours: the Node carries CA's scale-down opt-out while they hold power-offs.
    let wear = wear::WearNow::read(&m, group_of(&ctx, &m).as_deref());
    let quiet = wear.holds_power_off(now);
    // The Node side first, so the snapshot records what was restored on it.
    let (node_now, mismatch) = match node.clone().filter(|_| !passes.out.node_deleted) {
        Some(n) => {
            let (n, mismatch) = sync_node(&ctx, &m, n, quiet).await?;
            (Some(n), mismatch)
        }
        None => (None, None),
    };
    let mut derived = status::derive(
        passes.status,
        &status::Facts {
            lifecycle: &passes.lifecycle,
            desired: passes.desired,
            node: node.as_deref(),
            node_now: node_now.as_deref(),
            mismatch: mismatch.as_deref(),
            spec_error: passes.spec_error.as_deref(),
            drained: passes.out.drained,
            generation,
            now,
        },
    );
    derived.events.extend(status::insecure_transport(
        &mut derived.status,
        m.spec.power.as_deref(),
        generation,
        now,
    ));
    derived.events.extend(status::deprecated_fields(
        &mut derived.status,
        &m.spec,
        generation,
        now,
    ));
    let meter = accounting::meter_state(&ctx, &m);
    status::power_meter(
        &mut derived.status,
        meter.as_ref().map(Option::as_ref),
        generation,
        now,
    );
    let energy_due = accounting::account(
        &ctx,
        &accounting::Step {
            m: &m,
            stored: &stored,
            written: &written,
            node: node_now.as_deref().or(node.as_deref()),
            node_name: node_name.as_deref(),
            booted: passes.out.booted,
            now,
        },
        &mut derived.status,
    )
    .await;
    let boot_limit_passed = wear.record_power_on(&mut derived.status, now);
    if let (Some(_), Some(metrics)) = (&boot_limit_passed, &ctx.metrics) {
        metrics.boot_limit_passed(m.group().unwrap_or(""));
    }
    derived.events.extend(boot_limit_passed);
    for ev in passes.out.note_events.iter().chain(&derived.events) {
        act::emit(&ctx, &m, ev).await;
    }
    if write_status(&api, &m, rv.clone(), &written, derived.status)
        .await?
        .is_some()
    {
        ctx.supersede(&key, rv);
        // Counted once the status that records them is written: a conflict's retry sees them
        // recorded already and does not count them again.
        record_metrics(
            &ctx,
            &m,
            [&stored, &written],
            &passes.out.boots,
            &passes.lifecycle,
            derived.node_went_not_ready,
            now,
        );
    }

    let until = passes.requeue_at.map(|t| {
        let d = t.duration_since(Timestamp::now());
        Duration::try_from(d).unwrap_or(Duration::ZERO) + Duration::from_millis(50)
    });
    // A powered machine comes back when its energy counters are next due.
    let energy_wait = energy_due.map(|t| {
        let d = t.duration_since(Timestamp::now());
        Duration::try_from(d).unwrap_or(Duration::ZERO) + Duration::from_millis(50)
    });
    // A maintenance with `until` comes back to end it.
    let maintenance_end = m
        .spec
        .maintenance
        .as_deref()
        .and_then(|mt| maintenance::ends_at(mt, now))
        .map(|t| {
            let d = t.duration_since(Timestamp::now());
            Duration::try_from(d).unwrap_or(Duration::ZERO) + Duration::from_millis(50)
        });
    // Back when the quiet window in force changes, to put the annotation on or take it off.
    let quiet_wait = wear.next_change(now).map(|t| {
        let d = t.duration_since(Timestamp::now());
        Duration::try_from(d).unwrap_or(Duration::ZERO) + Duration::from_millis(50)
    });
    let wait = [
        until,
        passes.out.requeue_after,
        energy_wait,
        maintenance_end,
        quiet_wait,
    ]
    .into_iter()
    .flatten()
    .min();
    Ok(requeue(wait))
}

/// The metrics a written status records: a power action that ended, a boot, a Ready machine's
/// Node that went NotReady. `old` is the status as stored and as this reconcile wrote it before
/// acting (the same when it wrote nothing): an operation that started and ended within the
/// reconcile (a Wake-on-LAN packet, a Redfish reset) is only in the second.
fn record_metrics(
    ctx: &Context,
    m: &Machine,
    old: [&crate::operator::api::MachineStatus; 2],
    boots: &[jiff::SignedDuration],
    lifecycle: &crate::operator::machine::Lifecycle,
    node_went_not_ready: bool,
    now: Timestamp,
) {
    let Some(metrics) = &ctx.metrics else {
        return;
    };
    if node_went_not_ready {
        metrics.node_not_ready(m.group().unwrap_or(""));
    }
    for d in boots {
        metrics.boot_duration(m.group().unwrap_or(""), d.as_secs_f64().max(0.0));
    }
    let [stored, written] = old.map(|s| status::ended_action(&s.lifecycle, lifecycle, now));
    let written = written.filter(|w| stored.as_ref() != Some(w));
    for ended in [stored, written].into_iter().flatten() {
        let direction = match ended.kind {
            crate::operator::machine::OperationKind::PowerOn => crate::operator::api::Direction::On,
            crate::operator::machine::OperationKind::PowerOff => {
                crate::operator::api::Direction::Off
            }
        };
        let driver = act::driver(ctx, m, direction, None).map_or("unknown", |d| d.kind());
        let took = ended.took.as_secs_f64().max(0.0);
        metrics.power_operation_finished(driver, &direction.to_string(), ended.succeeded, took);
    }
}
