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
    CONDITION_IDENTITY_MISMATCH, CONDITION_INVALID_SPEC, CONDITION_POWER_FAILED, CONDITION_READY,
    Direction, DriverReadback, Group, Health, Machine, MachineStatus, PowerDriver as DriverSpec,
    condition, upsert_condition,
};
use crate::operator::machine::{
    Effect, KubeEvent, Lifecycle, NodeObs, Observed, OpStatus, Operation, OperationKind, Phase,
    Policy, PowerState, operation_resource_name, reconcile as core_reconcile,
};
use crate::operator::node as node_side;
use crate::operator::node::drain;
use crate::operator::power::http::HttpDriver;
use crate::operator::power::job::{JobDriver, JobKind};
use crate::operator::power::redfish::RedfishDriver;
use crate::operator::power::wol::WakeOnLanDriver;
use crate::operator::power::{Driver, OpContext, PowerError, Progress, Report};

/// Condition: a drain for a power-off is running or was given up.
pub const CONDITION_DRAINING: &str = "Draining";
/// Condition: the registered Node reports Ready.
pub const CONDITION_NODE_READY: &str = "NodeReady";

/// Passes of observe → decide → act in one reconcile: a driver that answers at once (Wake-on-LAN
/// sent, an HTTP call refused) feeds its answer back to the core without waiting for an event.
const MAX_PASSES: usize = 3;

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
    let store = ctx.cache.nodes();
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
    if let Some(group) = group_of(ctx, m) {
        p.remediate_after = group.remediate_after().map_err(|e| e.to_string())?;
    }
    Ok(p)
}

/// The machine's Group from the provider's cache (`None`: no group label, or no such Group).
fn group_of(ctx: &Context, m: &Machine) -> Option<Arc<Group>> {
    let (g, ns) = (m.group()?, m.namespace()?);
    ctx.cache.groups().get(&ObjectRef::new(g).within(&ns))
}

/// What a driver needs to act on `op` of `m`.
fn op_context<'a>(
    m: &'a Machine,
    op: &'a Operation,
    resource: &'a str,
    now: Timestamp,
) -> OpContext<'a> {
    OpContext {
        machine: m,
        direction: direction_of(op),
        op,
        resource_name: resource,
        now,
    }
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
    ctx: &'a Context,
    m: &'a Machine,
    direction: Direction,
    node_name: Option<&'a str>,
) -> Result<AnyDriver<'a>, PowerError> {
    let spec = m
        .power_driver(direction)
        .map_err(|e| PowerError::Config(e.to_string()))?;
    let client = ctx.client.clone();
    let service_account = ctx.settings.pod_service_account.as_deref();
    Ok(match spec {
        DriverSpec::Job(spec) => AnyDriver::Job(JobDriver {
            client,
            jobs: ctx.jobs.clone(),
            kind: JobKind::Custom(spec),
            node_name,
            service_account,
        }),
        DriverSpec::NodeAgent(agent) => AnyDriver::Job(JobDriver {
            client,
            jobs: ctx.jobs.clone(),
            kind: JobKind::NodeAgent(agent),
            node_name,
            service_account,
        }),
        DriverSpec::WakeOnLan(w) => AnyDriver::WakeOnLan(
            WakeOnLanDriver::new(client, w, node_name).with_service_account(service_account),
        ),
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
    /// The drain found nothing left to evict: the pods seen before deciding are gone.
    pods_gone: bool,
    /// The Node object was deleted in this reconcile (confirmed off).
    node_deleted: bool,
}

pub async fn reconcile(m: Arc<Machine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = m.name_any();
    tracing::debug!(machine = %m.object_ref(), desired = ?m.desired_power(), "reconciling");
    let ns = m.namespace().unwrap_or_default();
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
    let key = format!("{ns}/{name}");
    if m.meta().deletion_timestamp.is_some() {
        // Nothing more is decided for it: forget its last status write.
        ctx.supersede(&key, None);
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
                let cx = op_context(&m, op, &resource, now);
                match d.check(&cx).await {
                    Ok(r) => absorb(&mut out, &mut status, d.kind(), &cx, r),
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
    let mut pods_present = !drain::pods_blocking_power_off(&pods).is_empty();
    let manual_retry = m
        .annotations()
        .get(crate::operator::api::RETRY_ANNOTATION)
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
                now,
                &mut status,
                &mut out,
                &mut adopt,
            )
            .await?;
        }
        match (out.feedback.take(), std::mem::take(&mut out.pods_gone)) {
            (Some(p), _) => op_status = p,
            // The pods went away between the look above and the drain's own (a kubelet that
            // finished them, an eviction answered 404). Nothing about pods will queue this
            // machine again, so decide on what the drain saw now rather than waiting for an
            // event that never comes.
            (None, true) if pods_present => pods_present = false,
            (None, _) => break,
        }
    }

    let mut rv = m.resource_version();
    if adopt {
        rv = patch_spec_power(&api, &m, PowerState::On).await?;
    }
    if !(out.drained || lc.phase() == Phase::Ready && desired == PowerState::Off) {
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
    // The Node side first, so the snapshot records what was restored on it.
    let mut mismatch = None;
    let mut seen = node.clone().filter(|_| !out.node_deleted);
    if let Some(n) = seen.clone() {
        let (written, problem) = sync_node(&ctx, &m, &n).await?;
        mismatch = problem;
        if let Some(w) = written {
            seen = Some(Arc::new(w));
        }
    }
    if let Some(n) = seen.filter(|_| mismatch.is_none()) {
        let snap = node_side::snapshot(&n, now);
        if status
            .node
            .as_ref()
            .is_none_or(|old| !node_side::same_shape(old, &snap))
        {
            status.node = Some(Box::new(snap));
        }
    }
    let identity_changed = upsert_condition(
        &mut status.conditions,
        match &mismatch {
            Some(problem) => condition(
                CONDITION_IDENTITY_MISMATCH,
                true,
                "ProviderIDMismatch",
                problem.clone(),
                m.meta().generation,
                now,
            ),
            None => condition(
                CONDITION_IDENTITY_MISMATCH,
                false,
                "Matches",
                "",
                m.meta().generation,
                now,
            ),
        },
    );
    if let (Some(problem), true) = (&mismatch, identity_changed) {
        out.note_events.push(KubeEvent {
            reason: "ProviderIDMismatch",
            warning: true,
            message: problem.clone(),
        });
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
    if write_status(&api, &m, rv.clone(), &old_status, status).await? {
        ctx.supersede(&key, rv);
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

/// Takes a driver's report: readback into `status.power`, a note as an Event (a Warning when
/// the driver cut the power hard), a recheck time (a BMC or status URL changes without any
/// event in the cluster, so only this brings the reconcile back).
fn absorb(
    out: &mut Outcome,
    status: &mut MachineStatus,
    driver: &str,
    cx: &OpContext<'_>,
    r: Report,
) -> Progress {
    let escalated_before = status
        .power
        .as_ref()
        .is_some_and(|p| p.operation == cx.op.id && p.escalated);
    status.power = Some(Box::new(DriverReadback::next(
        status.power.as_deref(),
        driver,
        cx.direction,
        &cx.op.id,
        r.readback,
        r.escalated,
        cx.now,
    )));
    if let Some(note) = r.note {
        let escalation = r.escalated && !escalated_before;
        out.note_events.push(KubeEvent {
            reason: if escalation {
                "PowerOffEscalated"
            } else {
                "PowerDriverNote"
            },
            warning: escalation,
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
            let cx = op_context(m, operation, &resource, now);
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
                    // Info: one line per power operation says when a machine was switched, and
                    // the operator bench times IncreaseSize → Job created from it.
                    tracing::info!(machine = %m.object_ref(), driver = d.kind(), %direction, "power action started");
                    if let Some(metrics) = &ctx.metrics {
                        metrics.power_operation(d.kind(), &direction.to_string(), "started");
                    }
                    let p = absorb(out, status, d.kind(), &cx, r);
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
            let cx = op_context(m, operation, &resource, now);
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
                drain_pass(ctx, m, n, now, status, out).await?;
            }
        }
        Effect::DeleteNode => {
            if let Some(n) = node {
                out.node_deleted = true;
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

/// One drain pass for a power-off not started by CA (CA drained before `DeleteNodes`): evict
/// what keeps the power-off back; past the drain timeout give up, leaving the machine on and
/// saying why.
async fn drain_pass(
    ctx: &Context,
    m: &Machine,
    node: &Node,
    now: Timestamp,
    status: &mut MachineStatus,
    out: &mut Outcome,
) -> Result<(), Error> {
    let generation = m.meta().generation;
    let given_up = status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_DRAINING && c.reason == "DrainTimedOut");
    if given_up || drain::is_ca_deleting(node) {
        // Said why already (a person sets spec.powerState on, or retries, to move on); or CA
        // drained the node itself.
        out.drained = true;
        return Ok(());
    }
    let timeout = SignedDuration::try_from(ctx.settings.drain_timeout)
        .unwrap_or(drain::DEFAULT_DRAIN_TIMEOUT);
    let outcome = drain::drain(
        &ctx.drain,
        &node.name_any(),
        &drain::DrainOptions::new(now).timeout(timeout),
    )
    .await
    .map_err(|e| Error::NodeSide(e.to_string()))?;
    match &outcome {
        drain::DrainOutcome::Drained | drain::DrainOutcome::NodeGone => out.pods_gone = true,
        drain::DrainOutcome::Draining(progress) => {
            out.drained = true;
            upsert_condition(
                &mut status.conditions,
                condition(
                    CONDITION_DRAINING,
                    true,
                    "Evicting",
                    outcome.to_string(),
                    generation,
                    progress.started,
                ),
            );
            // Pods leaving send this machine no event: look again soon.
            out.requeue_after = Some(drain::DRAIN_RECHECK);
        }
        drain::DrainOutcome::TimedOut(_) => {
            out.drained = true;
            let message = format!(
                "{outcome}; the machine stays on (set spec.powerState back to on, or fix what \
                 blocks the eviction and run `kubectl homelab power off` again)"
            );
            upsert_condition(
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
            out.note_events.push(KubeEvent {
                reason: "DrainFailed",
                warning: true,
                message,
            });
        }
    }
    Ok(())
}

async fn set_unschedulable(ctx: &Context, node: &Node, on: bool) -> Result<(), Error> {
    drain::cordon(&ctx.client, &node.name_any(), on)
        .await
        .map_err(|e| Error::NodeSide(e.to_string()))?;
    Ok(())
}

/// Keeps the Kubernetes Node in line with the machine: the providerID CA matches instances by,
/// the machine's labels and taints, CA's scale-down opt-out for protected machines. Returns the
/// Node as written (`None`: unchanged) and a providerID mismatch to report.
async fn sync_node(
    ctx: &Context,
    m: &Machine,
    node: &Node,
) -> Result<(Option<Node>, Option<String>), Error> {
    let group_protects = group_of(ctx, m).is_some_and(|g| g.scale_down_disabled());
    let reg = node_side::registration(m, node, group_protects);
    let mismatch = match &reg.provider_id {
        node_side::ProviderIdCheck::Mismatch { node, expected } => Some(format!(
            "the Kubernetes Node carries providerID {node} but the machine expects {expected}; \
             a providerID cannot change: fix spec.providerID or the kubelet's --provider-id"
        )),
        _ => None,
    };
    if reg.change.is_empty() {
        return Ok((None, mismatch));
    }
    let written = node_side::patch_node(&ctx.client, node, &reg.change).await?;
    Ok((written, mismatch))
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
        let cx = op_context(m, op, &resource, Timestamp::now());
        if let Ok(d) = driver(ctx, m, direction_of(op), node_name.as_deref()) {
            d.cancel(&cx).await?;
        }
    }
    if let Some(n) = &node {
        // Leave the Node as it was before we managed it: our cordon, labels, taints and
        // annotations go; a person's stay.
        node_side::update_node(&ctx.client, &n.name_any(), node_side::cleanup_change).await?;
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
/// conflict means the view was stale: the reconcile runs again on the new object). Returns
/// whether it wrote.
async fn write_status(
    api: &Api<Machine>,
    m: &Machine,
    resource_version: Option<String>,
    old: &MachineStatus,
    new: MachineStatus,
) -> Result<bool, Error> {
    if *old == new {
        return Ok(false);
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
    api.patch_status(&m.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!("writing status of {}", m.object_ref())))?;
    Ok(true)
}

/// The JSON merge patch (RFC 7386) that turns `old` into `new`.
fn merge_diff(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
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

    fn off_op(id: &str, started: Timestamp) -> Operation {
        Operation {
            kind: OperationKind::PowerOff,
            id: id.to_owned(),
            started,
            deadline: started + SignedDuration::from_mins(5),
            completed: None,
        }
    }

    /// Feeds `r` for `op` at `now` to `absorb` with the status and outcome given.
    fn absorb_at(
        out: &mut Outcome,
        status: &mut MachineStatus,
        op: &Operation,
        now: Timestamp,
        r: Report,
    ) -> Progress {
        let m = Machine::new(
            "r730",
            crate::operator::api::MachineSpec::new(PowerState::Off),
        );
        let cx = op_context(&m, op, "r730-off-1", now);
        absorb(out, status, "redfish", &cx, r)
    }

    /// A BMC's PowerState changes without any event in the cluster: the driver's recheck time is
    /// what brings the reconcile back, and it wins over a later wake-up already planned.
    #[test]
    fn a_drivers_recheck_time_becomes_the_requeue() {
        let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1);
        let op = off_op("off-1", t0);
        let mut status = MachineStatus::default();
        let mut out = Outcome {
            requeue_after: Some(Duration::from_secs(30)),
            ..Outcome::default()
        };
        let running = Report::new(Progress::Running).recheck_after(Duration::from_secs(5));
        assert_eq!(
            absorb_at(&mut out, &mut status, &op, t0, running),
            Progress::Running
        );
        assert_eq!(out.requeue_after, Some(Duration::from_secs(5)));
        let mut idle = Outcome::default();
        absorb_at(
            &mut idle,
            &mut status,
            &op,
            t0,
            Report::new(Progress::Running).recheck_after(Duration::from_secs(2)),
        );
        assert_eq!(idle.requeue_after, Some(Duration::from_secs(2)));
        assert_eq!(
            super::requeue(idle.requeue_after),
            Action::requeue(Duration::from_secs(2))
        );
    }

    /// The readback lands in `status.power`; its time moves only when the readback changes (a
    /// poll that reads the same writes no status); a ForceOff is recorded once as a Warning
    /// Event and stays recorded for the operation; a new operation starts a fresh record.
    #[test]
    fn readbacks_and_a_forced_power_off_are_recorded_in_status() {
        let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1);
        let at = |s: i64| t0 + SignedDuration::from_secs(s);
        let op = off_op("off-1", t0);
        let mut status = MachineStatus::default();
        let mut out = Outcome::default();
        let on = || Report::new(Progress::Running).with_readback(Some(PowerState::On));
        absorb_at(&mut out, &mut status, &op, at(0), on());
        absorb_at(&mut out, &mut status, &op, at(5), on());
        let first = status.power.clone();
        assert_eq!(
            first,
            Some(Box::new(DriverReadback {
                driver: "redfish".to_owned(),
                direction: Direction::Off,
                operation: "off-1".to_owned(),
                readback: Some(PowerState::On),
                observed_at: at(0),
                escalated: false,
            }))
        );
        assert!(out.note_events.is_empty());

        absorb_at(
            &mut out,
            &mut status,
            &op,
            at(120),
            on().escalated().with_note("sent ForceOff"),
        );
        absorb_at(
            &mut out,
            &mut status,
            &op,
            at(180),
            on().escalated().with_note("sent ForceOff again"),
        );
        let events: Vec<_> = out
            .note_events
            .iter()
            .map(|e| (e.reason, e.warning))
            .collect();
        assert_eq!(
            events,
            [("PowerOffEscalated", true), ("PowerDriverNote", false)]
        );
        let off = Report::new(Progress::Succeeded).with_readback(Some(PowerState::Off));
        absorb_at(&mut out, &mut status, &op, at(185), off);
        let p = status
            .power
            .clone()
            .unwrap_or_else(|| panic!("no status.power"));
        assert_eq!(
            (p.readback, p.observed_at, p.escalated),
            (Some(PowerState::Off), at(185), true)
        );

        let next = off_op("off-2", at(600));
        absorb_at(&mut out, &mut status, &next, at(600), on());
        let p = status.power.unwrap_or_else(|| panic!("no status.power"));
        assert_eq!(
            (p.operation.as_str(), p.escalated, p.observed_at),
            ("off-2", false, at(600))
        );
    }

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
