//! The machine controller: one reconcile per Node CR. Observe (Kubernetes Node, power operation,
//! pods), ask the lifecycle core what follows, carry out its effects, write status once.
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEventOut, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource as _, ResourceExt as _};

use super::{Context, Error, FIELD_MANAGER, FINALIZER, requeue};
use crate::operator::api::{
    CONDITION_INVALID_SPEC, CONDITION_POWER_FAILED, CONDITION_READY, Direction, Health, Machine,
    MachineStatus, NodeSnapshot, PowerDriver as DriverSpec, condition, upsert_condition,
};
use crate::operator::machine::{
    Effect, KubeEvent, Lifecycle, NodeObs, Observed, OpStatus, Operation, OperationKind, Phase,
    Policy, PowerState, operation_resource_name, reconcile as core_reconcile,
};
use crate::operator::power::http::HttpDriver;
use crate::operator::power::job::{JobDriver, JobKind};
use crate::operator::power::redfish::RedfishDriver;
use crate::operator::power::wol::WakeOnLanDriver;
use crate::operator::power::{Driver, OpContext, PowerError, Progress, Report};

/// Annotation a person (or `kubectl homelab power`) sets to retry a Failed machine now; a value
/// newer than `status.phaseSince` counts once.
pub const RETRY_ANNOTATION: &str = "infra.homecluster.dev/retry-requested-at";
/// CA's taint on a node it is scaling down (it drained the node already).
pub const CA_TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// CA's soft taint on a node it considers unneeded.
pub const CA_DELETION_CANDIDATE_TAINT: &str = "DeletionCandidateOfClusterAutoscaler";
/// Condition: a drain for a power-off is running or was given up.
pub const CONDITION_DRAINING: &str = "Draining";
/// Condition: the registered Node reports Ready.
pub const CONDITION_NODE_READY: &str = "NodeReady";

/// Passes of observe → decide → act in one reconcile: a driver that answers at once (Wake-on-LAN
/// sent, an HTTP call refused) feeds its answer back to the core without waiting for an event.
const MAX_PASSES: usize = 3;

/// One eviction request; the API server answers at once (429 when a PDB forbids it).
const EVICTION_TIMEOUT: Duration = Duration::from_secs(10);

pub fn error_policy(_m: Arc<Machine>, e: &Error, ctx: Arc<Context>) -> Action {
    if let Some(metrics) = &ctx.metrics {
        metrics.reconcile_error("machine");
    }
    if e.is_conflict() {
        return Action::requeue(Duration::from_millis(200));
    }
    tracing::warn!(error = %crate::operator::error_chain(e), "reconciling a machine failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The Kubernetes Node of a machine: by providerID, then by `kubernetesNodeName` (or the name it
/// last registered under).
fn find_node(ctx: &Context, m: &Machine) -> Option<Arc<Node>> {
    let store = ctx.source.node_store();
    ctx.node_by_provider_id(&m.expected_provider_id())
        .and_then(|n| store.get(&ObjectRef::new(&n)))
        .or_else(|| m.node_name().and_then(|n| store.get(&ObjectRef::new(n))))
}

fn provider_id(node: &Node) -> &str {
    node.spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .unwrap_or_default()
}

fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// What the core needs to know about the Node. An empty providerID counts as matching: the
/// node-side sync sets it to the expected one (kubeadm leaves it empty).
fn node_obs(m: &Machine, node: Option<&Node>) -> NodeObs {
    let Some(node) = node else {
        return NodeObs::Absent;
    };
    let pid = provider_id(node);
    let ready = ready_condition(node);
    NodeObs::Registered {
        ready: ready.is_some_and(|c| c.status == "True"),
        provider_id_matches: pid.is_empty() || pid == m.expected_provider_id(),
        not_ready_since: ready
            .filter(|c| c.status != "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0),
    }
}

fn has_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == key))
}

/// Pods that keep a machine from being powered off: bound to the node, not finished, not owned
/// by a DaemonSet, not mirror pods.
pub fn blocking_pods(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            let finished = matches!(phase, Some("Succeeded" | "Failed"));
            let daemon = p
                .owner_references()
                .iter()
                .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
            let mirror = p.annotations().contains_key("kubernetes.io/config.mirror");
            !finished && !daemon && !mirror
        })
        .collect()
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

/// The machine's policy: the operator's settings, its own timeouts, its Group's remediation.
fn policy(ctx: &Context, m: &Machine) -> Result<Policy, String> {
    let mut p = ctx.settings.policy;
    p.boot_timeout = m.boot_timeout().map_err(|e| e.to_string())?;
    p.shutdown_timeout = m.shutdown_timeout().map_err(|e| e.to_string())?;
    if let (Some(g), Some(ns)) = (m.group(), m.namespace()) {
        if let Some(group) = ctx.source.group_store().get(&ObjectRef::new(g).within(&ns)) {
            p.remediate_after = group.remediate_after().map_err(|e| e.to_string())?;
        }
    }
    Ok(p)
}

fn direction_of(op: &Operation) -> Direction {
    match op.kind {
        OperationKind::PowerOn => Direction::On,
        OperationKind::PowerOff => Direction::Off,
    }
}

/// A driver for one direction, built from the spec.
enum AnyDriver<'a> {
    Job(JobDriver<'a>),
    WakeOnLan(WakeOnLanDriver<'a>),
    Redfish(RedfishDriver<'a>),
    Http(HttpDriver<'a>),
}

/// Calls the same method on whichever driver it is.
macro_rules! dispatch {
    ($self:expr, $d:ident => $call:expr) => {
        match $self {
            AnyDriver::Job($d) => $call,
            AnyDriver::WakeOnLan($d) => $call,
            AnyDriver::Redfish($d) => $call,
            AnyDriver::Http($d) => $call,
        }
    };
}

impl AnyDriver<'_> {
    fn kind(&self) -> &'static str {
        dispatch!(self, d => d.kind())
    }

    async fn start(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        dispatch!(self, d => d.start(cx).await)
    }

    async fn check(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        dispatch!(self, d => d.check(cx).await)
    }

    async fn cancel(&self, cx: &OpContext<'_>) -> Result<(), PowerError> {
        dispatch!(self, d => d.cancel(cx).await)
    }
}

fn driver<'a>(
    ctx: &Context,
    m: &'a Machine,
    direction: Direction,
    node_name: Option<&'a str>,
) -> Result<AnyDriver<'a>, PowerError> {
    let spec = m
        .power_driver(direction)
        .map_err(|e| PowerError::Config(e.to_string()))?;
    let client = ctx.client.clone();
    Ok(match spec {
        DriverSpec::Job(spec) => AnyDriver::Job(JobDriver {
            client,
            jobs: ctx.jobs.clone(),
            kind: JobKind::Custom(spec),
            node_name,
        }),
        DriverSpec::NodeAgent(agent) => AnyDriver::Job(JobDriver {
            client,
            jobs: ctx.jobs.clone(),
            kind: JobKind::NodeAgent(agent),
            node_name,
        }),
        DriverSpec::WakeOnLan(w) => {
            AnyDriver::WakeOnLan(WakeOnLanDriver::new(client, w, node_name))
        }
        DriverSpec::Redfish(r) => AnyDriver::Redfish(RedfishDriver::new(client, r)),
        DriverSpec::Http(h) => AnyDriver::Http(HttpDriver::new(client, h)),
    })
}

/// What one reconcile changes besides the lifecycle.
#[derive(Default)]
struct Outcome {
    requeue_after: Option<Duration>,
    /// A start/check answer to feed to the core in the next pass.
    feedback: Option<Progress>,
    note_events: Vec<KubeEvent>,
    /// A drain ran (or was given up) in this reconcile.
    drained: bool,
}

pub async fn reconcile(m: Arc<Machine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = m.name_any();
    tracing::debug!(machine = %m.object_ref(), desired = ?m.desired_power(), "reconciling");
    let ns = m.namespace().unwrap_or_default();
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
    if m.meta().deletion_timestamp.is_some() {
        return finalize(&ctx, &api, &m).await;
    }
    if !m.finalizers().iter().any(|f| f == FINALIZER) {
        add_finalizer(&api, &m).await?;
        // The patch triggers another reconcile with the finalizer in place.
        return Ok(Action::await_change());
    }

    let now = Timestamp::now();
    let old_status = m.status.clone().unwrap_or_default();
    let mut status = old_status.clone();
    let policy = match policy(&ctx, &m) {
        Ok(p) => p,
        Err(problem) => {
            upsert_condition(
                &mut status.conditions,
                condition(
                    CONDITION_INVALID_SPEC,
                    true,
                    "InvalidSpec",
                    problem,
                    m.meta().generation,
                    now,
                ),
            );
            write_status(&api, &m, m.resource_version(), &old_status, status).await?;
            return Ok(Action::await_change());
        }
    };
    let node = find_node(&ctx, &m);
    let node_name = node
        .as_ref()
        .map(|n| n.name_any())
        .or_else(|| m.node_name().map(str::to_owned));
    let mut lc = m.lifecycle();
    let mut out = Outcome::default();
    let mut spec_error: Option<String> = None;

    // The operation in flight, as the world shows it.
    let mut op_status = match &lc.operation {
        Some(op) => match driver(&ctx, &m, direction_of(op), node_name.as_deref()) {
            Ok(d) => {
                let resource = operation_resource_name(&name, op);
                let cx = OpContext {
                    machine: &m,
                    direction: direction_of(op),
                    op,
                    resource_name: &resource,
                    now,
                };
                match d.check(&cx).await {
                    Ok(r) => absorb(&mut out, &mut status, r, now),
                    Err(PowerError::Transient(e)) => {
                        tracing::info!(machine = %m.object_ref(), error = %e, "power check failed; retrying");
                        out.requeue_after = Some(ctx.settings.poll_interval);
                        Progress::Running
                    }
                    Err(PowerError::Config(e)) => {
                        spec_error = Some(e.clone());
                        Progress::Failed { reason: e }
                    }
                }
            }
            Err(PowerError::Config(e)) | Err(PowerError::Transient(e)) => {
                spec_error = Some(e.clone());
                Progress::Failed { reason: e }
            }
        },
        None => Progress::Absent,
    };

    let desired = m.desired_power();
    let pods = match (&node, desired) {
        (Some(n), PowerState::Off) => pods_on(&ctx, &n.name_any()).await?,
        _ => Vec::new(),
    };
    let pods_present = !blocking_pods(&pods).is_empty();
    let manual_retry = m
        .annotations()
        .get(RETRY_ANNOTATION)
        .and_then(|v| v.parse::<Timestamp>().ok())
        .is_some_and(|t| lc.phase_since.is_none_or(|since| t > since));

    let mut adopt = false;
    let mut requeue_at = None;
    for _pass in 0..MAX_PASSES {
        let observed = Observed {
            desired: if adopt { PowerState::On } else { desired },
            node: node_obs(&m, node.as_deref()),
            operation: to_op_status(&op_status),
            pods_present,
            manual_retry,
        };
        let before = lc.clone();
        let t = core_reconcile(&lc, &observed, now, &policy);
        if let Some(r) = &t.rejected {
            tracing::error!(machine = %m.object_ref(), error = %r, "lifecycle refused a derived event");
        }
        lc = t.lifecycle;
        requeue_at = t.requeue_at;
        out.feedback = None;
        for effect in t.effects {
            perform(
                &ctx,
                &m,
                &before,
                &lc,
                effect,
                node.as_deref(),
                node_name.as_deref(),
                &pods,
                now,
                &mut status,
                &mut out,
                &mut adopt,
            )
            .await?;
        }
        match out.feedback.take() {
            Some(p) => op_status = p,
            None => break,
        }
    }

    let mut rv = m.resource_version();
    if adopt {
        rv = patch_spec_power(&api, &m, PowerState::On).await?;
    }
    if !out.drained && !(lc.phase() == Phase::Ready && desired == PowerState::Off) {
        // Not draining (any more): a given-up drain is forgotten once the machine moved on.
        upsert_condition(
            &mut status.conditions,
            condition(
                CONDITION_DRAINING,
                false,
                "NotDraining",
                "",
                m.meta().generation,
                now,
            ),
        );
    }

    // Status: the lifecycle plus what is derived from it.
    status.lifecycle = lc.clone();
    status.progress = crate::operator::machine::progress(&lc);
    status.power_state = crate::operator::machine::observed_power(&lc).or(status.power_state);
    status.health = Some(match (&node, lc.phase()) {
        (Some(n), _) if ready_condition(n).is_some_and(|c| c.status == "True") => Health::Healthy,
        (_, Phase::Off) => Health::Offline,
        _ => Health::Unknown,
    });
    if let Some(n) = node
        .as_deref()
        .filter(|n| provider_id(n).is_empty() || provider_id(n) == m.expected_provider_id())
    {
        let snap = snapshot(n, now);
        if status
            .node
            .as_ref()
            .is_none_or(|old| !same_snapshot(old, &snap))
        {
            status.node = Some(snap);
        }
    }
    let generation = m.meta().generation;
    upsert_condition(
        &mut status.conditions,
        condition(
            CONDITION_READY,
            lc.phase() == Phase::Ready,
            lc.phase().as_str(),
            format!("phase {}", lc.phase()),
            generation,
            lc.phase_since.unwrap_or(now),
        ),
    );
    let failed = lc.phase() == Phase::Failed;
    upsert_condition(
        &mut status.conditions,
        condition(
            CONDITION_POWER_FAILED,
            failed,
            if failed { "PowerFailed" } else { "NoFailure" },
            if failed {
                lc.last_error.clone().unwrap_or_default()
            } else {
                String::new()
            },
            generation,
            now,
        ),
    );
    upsert_condition(
        &mut status.conditions,
        match &spec_error {
            Some(e) => condition(
                CONDITION_INVALID_SPEC,
                true,
                "DriverUnavailable",
                e.clone(),
                generation,
                now,
            ),
            None => condition(CONDITION_INVALID_SPEC, false, "Valid", "", generation, now),
        },
    );
    if let Some(n) = &node {
        let ready = ready_condition(n).is_some_and(|c| c.status == "True");
        upsert_condition(
            &mut status.conditions,
            condition(
                CONDITION_NODE_READY,
                ready,
                if ready {
                    "KubeletReady"
                } else {
                    "NodeNotReady"
                },
                format!("Kubernetes Node {}", n.name_any()),
                generation,
                now,
            ),
        );
    }
    status.observed_generation = generation;
    for ev in std::mem::take(&mut out.note_events) {
        emit(&ctx, &m, &ev).await;
    }
    write_status(&api, &m, rv, &old_status, status).await?;

    if let Some(node) = &node {
        sync_node(&ctx, &m, node, &lc).await?;
    }

    let until = requeue_at.map(|t| {
        let d = t.duration_since(Timestamp::now());
        Duration::try_from(d).unwrap_or(Duration::ZERO) + Duration::from_millis(50)
    });
    let wait = match (until, out.requeue_after) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(requeue(wait))
}

fn to_op_status(p: &Progress) -> OpStatus<'_> {
    match p {
        Progress::Absent => OpStatus::Absent,
        Progress::Running => OpStatus::Running,
        Progress::Succeeded => OpStatus::Succeeded,
        Progress::Failed { reason } => OpStatus::Failed { reason },
    }
}

/// Takes a driver's report: readback into status, a note as an Event, a recheck time.
fn absorb(out: &mut Outcome, status: &mut MachineStatus, r: Report, now: Timestamp) -> Progress {
    let _ = (status, now);
    if let Some(note) = r.note {
        out.note_events.push(KubeEvent {
            reason: "PowerDriverNote",
            warning: false,
            message: note,
        });
    }
    if let Some(d) = r.recheck_after {
        out.requeue_after = Some(out.requeue_after.map_or(d, |o| o.min(d)));
    }
    r.progress
}

#[allow(clippy::too_many_arguments)]
async fn perform(
    ctx: &Context,
    m: &Machine,
    before: &Lifecycle,
    after: &Lifecycle,
    effect: Effect,
    node: Option<&Node>,
    node_name: Option<&str>,
    pods: &[Pod],
    now: Timestamp,
    status: &mut MachineStatus,
    out: &mut Outcome,
    adopt: &mut bool,
) -> Result<(), Error> {
    let name = m.name_any();
    match effect {
        Effect::StartPowerOn { op, .. } | Effect::StartPowerOff { op, .. } => {
            let Some(operation) = after.operation.as_ref().filter(|o| o.id == op) else {
                return Ok(());
            };
            let direction = direction_of(operation);
            let resource = operation_resource_name(&name, operation);
            let cx = OpContext {
                machine: m,
                direction,
                op: operation,
                resource_name: &resource,
                now,
            };
            let d = match driver(ctx, m, direction, node_name) {
                Ok(d) => d,
                Err(e) => {
                    out.feedback = Some(Progress::Failed {
                        reason: e.to_string(),
                    });
                    return Ok(());
                }
            };
            match d.start(&cx).await {
                Ok(r) => {
                    if let Some(metrics) = &ctx.metrics {
                        metrics.power_operation(d.kind(), &direction.to_string(), "started");
                    }
                    let p = absorb(out, status, r, now);
                    if p != Progress::Running {
                        out.feedback = Some(p);
                    }
                }
                Err(PowerError::Transient(e)) => {
                    // Not a failed attempt: the check on the next pass sees Absent and re-issues.
                    tracing::info!(machine = %m.object_ref(), error = %e, "starting a power action failed; retrying");
                    out.requeue_after = Some(ctx.settings.poll_interval);
                }
                Err(PowerError::Config(e)) => out.feedback = Some(Progress::Failed { reason: e }),
            }
        }
        Effect::CancelOperation { op } => {
            let Some(operation) = before.operation.as_ref().filter(|o| o.id == op) else {
                return Ok(());
            };
            let direction = direction_of(operation);
            let resource = operation_resource_name(&name, operation);
            let cx = OpContext {
                machine: m,
                direction,
                op: operation,
                resource_name: &resource,
                now,
            };
            if let Ok(d) = driver(ctx, m, direction, node_name) {
                d.cancel(&cx).await?;
                if let Some(metrics) = &ctx.metrics {
                    metrics.power_operation(d.kind(), &direction.to_string(), "cancelled");
                }
            }
        }
        Effect::Cordon => {
            if let Some(n) = node {
                set_unschedulable(ctx, n, true).await?;
            }
        }
        Effect::Uncordon => {
            if let Some(n) = node {
                set_unschedulable(ctx, n, false).await?;
            }
        }
        Effect::Drain => {
            if let Some(n) = node {
                drain(ctx, m, n, pods, now, status, out).await?;
            }
        }
        Effect::DeleteNode => {
            if let Some(n) = node {
                let api: Api<Node> = Api::all(ctx.client.clone());
                match api.delete(&n.name_any(), &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        return Err(Error::kube(format!("deleting Node {}", n.name_any()))(e));
                    }
                }
            }
        }
        Effect::AdoptAsWantedOn => *adopt = true,
        Effect::PowerObserved { state, at } => {
            status.power_state = Some(state);
            match state {
                PowerState::On => status.last_startup_time = Some(at),
                PowerState::Off => status.last_shutdown_time = Some(at),
            }
        }
        Effect::BootDuration(d) => {
            let secs = u32::try_from(d.as_secs().max(0)).unwrap_or(u32::MAX);
            status.record_boot(secs);
            if let Some(metrics) = &ctx.metrics {
                metrics.boot_duration(m.group().unwrap_or(""), d.as_secs_f64());
            }
        }
        Effect::Emit(ev) => emit(ctx, m, &ev).await,
    }
    Ok(())
}

/// Evicts the pods keeping a power-off back (not for CA's scale-down: CA drained already), and
/// gives up after the drain timeout, leaving the machine on and saying why.
async fn drain(
    ctx: &Context,
    m: &Machine,
    node: &Node,
    pods: &[Pod],
    now: Timestamp,
    status: &mut MachineStatus,
    out: &mut Outcome,
) -> Result<(), Error> {
    let generation = m.meta().generation;
    let blocking = blocking_pods(pods);
    out.drained = true;
    let given_up = status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_DRAINING && c.reason == "DrainTimedOut");
    if given_up {
        // Said why already; a person sets spec.powerState on (or retries) to move on.
        return Ok(());
    }
    if has_taint(node, CA_TO_BE_DELETED_TAINT) {
        // CA drained the node before calling DeleteNodes; what is left are pods it tolerates.
        return Ok(());
    }
    set_unschedulable(ctx, node, true).await?;
    let started = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_DRAINING && c.status == "True")
        .map(|c| c.last_transition_time.0)
        .unwrap_or(now);
    let timeout = SignedDuration::try_from(ctx.settings.drain_timeout)
        .unwrap_or(SignedDuration::from_mins(5));
    let names: Vec<String> = blocking
        .iter()
        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    if now >= started + timeout {
        let message = format!(
            "could not drain Kubernetes Node {} within {:?}: still running {}; the machine stays on \
             (check PodDisruptionBudgets, or set spec.powerState back to on)",
            node.name_any(),
            ctx.settings.drain_timeout,
            names.join(", ")
        );
        let changed = upsert_condition(
            &mut status.conditions,
            condition(
                CONDITION_DRAINING,
                false,
                "DrainTimedOut",
                message.clone(),
                generation,
                now,
            ),
        );
        if changed {
            out.note_events.push(KubeEvent {
                reason: "DrainFailed",
                warning: true,
                message,
            });
        }
        return Ok(());
    }
    upsert_condition(
        &mut status.conditions,
        condition(
            CONDITION_DRAINING,
            true,
            "Evicting",
            format!("evicting {}", names.join(", ")),
            generation,
            started,
        ),
    );
    let mut blocked = Vec::new();
    for p in blocking {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
        tracing::info!(machine = %m.object_ref(), pod = %p.name_any(), "evicting for a power-off");
        let (pod_name, params) = (p.name_any(), kube::api::EvictParams::default());
        match tokio::time::timeout(EVICTION_TIMEOUT, api.evict(&pod_name, &params)).await {
            Err(_) => blocked.push(format!(
                "{}: the eviction got no answer within {EVICTION_TIMEOUT:?}",
                p.name_any()
            )),
            Ok(Ok(_)) => {}
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => {}
            // 429: a PodDisruptionBudget allows no disruption now. Anything else (the API
            // server busy, a PDB not yet processed) is also retried until the drain timeout.
            Ok(Err(e)) => blocked.push(format!(
                "{}: {}",
                p.name_any(),
                crate::operator::error_chain(&e)
            )),
        }
    }
    if !blocked.is_empty() {
        upsert_condition(
            &mut status.conditions,
            condition(
                CONDITION_DRAINING,
                true,
                "EvictionBlocked",
                blocked.join("; "),
                generation,
                started,
            ),
        );
    }
    // Pods leaving send no event to this machine: look again soon.
    out.requeue_after = Some(ctx.settings.poll_interval);
    Ok(())
}

async fn set_unschedulable(ctx: &Context, node: &Node, on: bool) -> Result<(), Error> {
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if current == on {
        return Ok(());
    }
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({ "spec": { "unschedulable": on } });
    match api
        .patch(
            &node.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("cordoning Node {}", node.name_any()))(
            e,
        )),
    }
}

/// Keeps the Kubernetes Node in line with the machine: the providerID CA matches instances by.
async fn sync_node(ctx: &Context, m: &Machine, node: &Node, lc: &Lifecycle) -> Result<(), Error> {
    let _ = lc;
    if provider_id(node).is_empty() {
        let api: Api<Node> = Api::all(ctx.client.clone());
        let patch = serde_json::json!({ "spec": { "providerID": m.expected_provider_id() } });
        match api
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(format!(
                    "setting providerID on Node {}",
                    node.name_any()
                ))(e));
            }
        }
    }
    Ok(())
}

fn snapshot(node: &Node, now: Timestamp) -> NodeSnapshot {
    let status = node.status.as_ref();
    NodeSnapshot {
        name: node.name_any(),
        provider_id: Some(provider_id(node).to_owned()).filter(|p| !p.is_empty()),
        labels: node.labels().clone(),
        taints: node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != CA_TO_BE_DELETED_TAINT && t.key != CA_DELETION_CANDIDATE_TAINT)
            .filter(|t| !t.key.starts_with("node.kubernetes.io/"))
            .collect(),
        capacity: status.and_then(|s| s.capacity.clone()).unwrap_or_default(),
        allocatable: status
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default(),
        seen: now,
    }
}

/// Equal but for when it was seen: no write for a heartbeat.
fn same_snapshot(a: &NodeSnapshot, b: &NodeSnapshot) -> bool {
    NodeSnapshot {
        seen: b.seen,
        ..a.clone()
    } == *b
}

async fn emit(ctx: &Context, m: &Machine, ev: &KubeEvent) {
    let out = KubeEventOut {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.to_owned(),
        note: Some(ev.message.chars().take(1000).collect()),
        action: ev.reason.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&out, &kube::Resource::object_ref(m, &()))
        .await
    {
        tracing::info!(machine = %m.name_any(), error = %e, "could not record an Event");
    }
}

async fn add_finalizer(api: &Api<Machine>, m: &Machine) -> Result<(), Error> {
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

/// Deleting a Node CR: stop its operation, leave its Kubernetes Node schedulable, let it go.
/// The machine's power is left as it is (deleting an object is not a power-off).
async fn finalize(ctx: &Context, api: &Api<Machine>, m: &Machine) -> Result<Action, Error> {
    if !m.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let lc = m.lifecycle();
    let node = find_node(ctx, m);
    let node_name = node.as_ref().map(|n| n.name_any());
    if let Some(op) = lc.operation.as_ref().filter(|o| o.completed.is_none()) {
        let resource = operation_resource_name(&m.name_any(), op);
        let cx = OpContext {
            machine: m,
            direction: direction_of(op),
            op,
            resource_name: &resource,
            now: Timestamp::now(),
        };
        if let Ok(d) = driver(ctx, m, direction_of(op), node_name.as_deref()) {
            d.cancel(&cx).await?;
        }
    }
    if let Some(n) = &node {
        set_unschedulable(ctx, n, false).await?;
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

/// Records a desired power state; returns the new resourceVersion.
async fn patch_spec_power(
    api: &Api<Machine>,
    m: &Machine,
    to: PowerState,
) -> Result<Option<String>, Error> {
    let value = match to {
        PowerState::On => "on",
        PowerState::Off => "off",
    };
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": m.resource_version() },
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

/// Writes status when it changed, guarded by the resourceVersion the decision was made on (a
/// conflict means the view was stale: the reconcile runs again on the new object).
async fn write_status(
    api: &Api<Machine>,
    m: &Machine,
    resource_version: Option<String>,
    old: &MachineStatus,
    new: MachineStatus,
) -> Result<(), Error> {
    if *old == new {
        return Ok(());
    }
    let value = serde_json::to_value(&new).map_err(|source| Error::Json {
        what: "status",
        source,
    })?;
    // JSON Patch: `add` replaces the whole status (a merge patch could not remove fields).
    let patch = serde_json::json!([
        { "op": "test", "path": "/metadata/resourceVersion", "value": resource_version },
        { "op": "add", "path": "/status", "value": value },
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|source| Error::Json {
        what: "status patch",
        source,
    })?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api
        .patch_status(&m.name_any(), &params, &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(()),
        // The JSON Patch test failing is a 422 with "testing value" or a 409: stale view.
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("test") => {
            Err(Error::Stale {
                what: format!("status of {}", m.object_ref()),
            })
        }
        Err(e) => Err(Error::kube(format!("writing status of {}", m.object_ref()))(e)),
    }
}
