//! The machine controller's side of the core's pass loop (`operator::machine::drive`): what it
//! observes before each decision, and how it carries out the effects. Each effect is performed
//! by [`perform`], which reports what happened as a [`Performed`]; [`Outcome::take`] folds that
//! into the reconcile's bookkeeping and the status.
use std::time::Duration;

use crate::operator::kube_node::KubeNode;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams};
use kube::runtime::events::{Event as KubeEventOut, EventType};
use kube::{Resource as _, ResourceExt as _};

use super::writes::write_status;
use super::{CONDITION_DRAINING, node_obs, pods_on};
use crate::operator::api::{
    Direction, DriverReadback, Machine, MachineStatus, PowerDriver as DriverSpec, condition,
    upsert_condition,
};
use crate::operator::controller::{Context, Error};
use crate::operator::machine::{
    Edge, Effect, KubeEvent, Lifecycle, Observed, OpStatus, Operation, OperationKind,
    Outcome as Decision, Phase, PowerState, operation_resource_name,
};
use crate::operator::node::drain;
use crate::operator::power::http::HttpDriver;
use crate::operator::power::ipmi::IpmiDriver;
use crate::operator::power::job::{JobDriver, JobKind};
use crate::operator::power::redfish::RedfishDriver;
use crate::operator::power::wol::WakeOnLanDriver;
use crate::operator::power::{Driver, OpContext, OpProgress, PowerError, Report};

/// What a driver needs to act on `op` of `m`, fenced by `ctx`'s leadership.
pub(super) fn op_context<'a>(
    ctx: &'a Context,
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
        fence: Some(&ctx.leadership),
    }
}

pub(super) fn direction_of(op: &Operation) -> Direction {
    match op.kind {
        OperationKind::PowerOn => Direction::On,
        OperationKind::PowerOff => Direction::Off,
    }
}

/// A driver for one direction, built from the spec.
pub(super) enum AnyDriver<'a> {
    Job(JobDriver<'a>),
    WakeOnLan(WakeOnLanDriver<'a>),
    Redfish(RedfishDriver<'a>),
    Http(HttpDriver<'a>),
    Ipmi(IpmiDriver<'a>),
}

/// Calls the same method on whichever driver it is.
macro_rules! dispatch {
    ($self:expr, $d:ident => $call:expr) => {
        match $self {
            AnyDriver::Job($d) => $call,
            AnyDriver::WakeOnLan($d) => $call,
            AnyDriver::Redfish($d) => $call,
            AnyDriver::Http($d) => $call,
            AnyDriver::Ipmi($d) => $call,
        }
    };
}

impl AnyDriver<'_> {
    pub(super) fn kind(&self) -> &'static str {
        dispatch!(self, d => d.kind())
    }

    async fn start(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        dispatch!(self, d => d.start(cx).await)
    }

    async fn check(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        dispatch!(self, d => d.check(cx).await)
    }

    pub(super) async fn cancel(&self, cx: &OpContext<'_>) -> Result<(), PowerError> {
        dispatch!(self, d => d.cancel(cx).await)
    }
}

pub(super) fn driver<'a>(
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
    let trust = &ctx.settings.trust;
    Ok(match spec {
        DriverSpec::Job(spec) => AnyDriver::Job(JobDriver {
            client,
            jobs: ctx.jobs.clone(),
            kind: JobKind::Custom(spec),
            node_name,
            service_account,
            trust,
        }),
        DriverSpec::NodeAgent(agent) => AnyDriver::Job(JobDriver {
            client,
            jobs: ctx.jobs.clone(),
            kind: JobKind::NodeAgent(agent),
            node_name,
            service_account,
            trust,
        }),
        DriverSpec::WakeOnLan(w) => AnyDriver::WakeOnLan(
            WakeOnLanDriver::new(client, w, node_name)
                .with_service_account(service_account)
                .with_trust(trust),
        ),
        DriverSpec::Redfish(r) => AnyDriver::Redfish(RedfishDriver::new(client, r)),
        DriverSpec::Http(h) => AnyDriver::Http(HttpDriver::new(client, h)),
        DriverSpec::Ipmi(i) => AnyDriver::Ipmi(IpmiDriver::new(client, i)),
    })
}

/// What one reconcile changes besides the lifecycle.
#[derive(Default)]
pub(super) struct Outcome {
    pub requeue_after: Option<Duration>,
    /// A start/check answer to feed to the core in the next pass.
    pub feedback: Option<OpProgress>,
    pub note_events: Vec<KubeEvent>,
    /// A drain ran (or was given up) in this reconcile.
    pub drained: bool,
    /// The drain found nothing left to evict: the pods seen before deciding are gone.
    pub pods_gone: bool,
    /// The Node object was deleted in this reconcile (confirmed off).
    pub node_deleted: bool,
    /// Record the machine as wanted on: it was found on (adopted), or a deletion by CA was given
    /// back because its drain could not finish.
    pub want_on: bool,
    /// The status as this reconcile last wrote it before acting (see [`Passes::record_intent`]).
    pub written: Option<Written>,
    /// Boots that ended in this reconcile, counted in the metrics once the status is written.
    pub boots: Vec<SignedDuration>,
    /// Power-ons that completed in this reconcile (a boot time recorded), for the energy
    /// counters.
    pub booted: u64,
}

/// A status this reconcile wrote, and the resourceVersion the write left: the next write diffs
/// against it and is guarded by it.
pub(super) struct Written {
    pub status: MachineStatus,
    pub resource_version: Option<String>,
}

/// What carrying out one effect did.
#[derive(Debug, PartialEq)]
pub(super) enum Performed {
    /// Done, or nothing to do it on (no Node object, no such operation).
    Done,
    /// A power action started; its driver's first report.
    Started {
        reading: Reading,
        report: Report,
    },
    /// The operation cannot run: no usable driver, or the driver refused its configuration.
    Refused {
        reason: String,
    },
    /// Starting failed transiently. Not a failed attempt: the next reconcile's check sees no
    /// action and the core re-issues it.
    StartDeferred {
        retry_after: Duration,
    },
    Drain(DrainPass),
    NodeDeleted,
    AdoptAsWantedOn,
    PowerObserved {
        state: PowerState,
        at: Timestamp,
    },
    Boot(SignedDuration),
}

/// Which driver answered about which operation, and when.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Reading {
    pub driver: &'static str,
    pub direction: Direction,
    pub op: String,
    pub at: Timestamp,
}

/// What one drain pass found.
#[derive(Debug, PartialEq)]
pub(super) enum DrainPass {
    /// Nothing to do: CA drained the node itself, or the drain was given up before (said
    /// already; a person sets spec.powerState on, or retries, to move on).
    Skipped,
    /// Nothing is left that keeps the power-off back.
    Emptied,
    /// Evictions issued or refused (what to say, since when).
    Evicting { message: String, started: Timestamp },
    /// Past the timeout with pods left: the machine stays on.
    TimedOut { message: String },
    /// Past the timeout with pods left on a Node CA is deleting: the deletion is given back,
    /// the machine stays on and is wanted on again.
    GivenBack { message: String },
}

impl Outcome {
    /// Takes what one effect did into the bookkeeping and `status`.
    pub(super) fn take(
        &mut self,
        status: &mut MachineStatus,
        performed: Performed,
        generation: Option<i64>,
        now: Timestamp,
    ) {
        match performed {
            Performed::Done => {}
            Performed::Started { reading, report } => {
                let p = absorb(self, status, &reading, report);
                if p != OpProgress::Running {
                    self.feedback = Some(p);
                }
            }
            Performed::Refused { reason } => self.feedback = Some(OpProgress::Failed { reason }),
            Performed::StartDeferred { retry_after } => self.requeue_after = Some(retry_after),
            Performed::Drain(DrainPass::Skipped) => self.drained = true,
            Performed::Drain(DrainPass::Emptied) => self.pods_gone = true,
            Performed::Drain(DrainPass::Evicting { message, started }) => {
                self.drained = true;
                upsert_condition(
                    &mut status.conditions,
                    condition(
                        CONDITION_DRAINING,
                        true,
                        "Evicting",
                        message,
                        generation,
                        started,
                    ),
                );
                // Pods leaving send this machine no event: look again soon.
                self.requeue_after = Some(drain::DRAIN_RECHECK);
            }
            Performed::Drain(DrainPass::GivenBack { message }) => {
                // Decided again as wanted on: the drain is undone (uncordon, CA's taints).
                self.want_on = true;
                self.drain_failed(status, "DeletionGivenBack", message, generation, now);
            }
            Performed::Drain(DrainPass::TimedOut { message }) => {
                self.drain_failed(status, "DrainTimedOut", message, generation, now);
            }
            Performed::NodeDeleted => self.node_deleted = true,
            Performed::AdoptAsWantedOn => self.want_on = true,
            Performed::PowerObserved { state, at } => {
                status.power_state = Some(state);
                match state {
                    PowerState::On => status.last_startup_time = Some(at),
                    PowerState::Off => status.last_shutdown_time = Some(at),
                }
            }
            Performed::Boot(d) => {
                self.boots.push(d);
                let secs = u32::try_from(d.as_secs().max(0)).unwrap_or(u32::MAX);
                status.record_boot(secs);
                self.booted += 1;
            }
        }
    }
}

impl Outcome {
    /// A drain that ended with pods left: the `Draining` condition says why (`reason`), and one
    /// warning Event names what blocked.
    fn drain_failed(
        &mut self,
        status: &mut MachineStatus,
        reason: &str,
        message: String,
        generation: Option<i64>,
        now: Timestamp,
    ) {
        self.drained = true;
        upsert_condition(
            &mut status.conditions,
            condition(
                CONDITION_DRAINING,
                false,
                reason,
                message.clone(),
                generation,
                now,
            ),
        );
        self.note_events.push(KubeEvent {
            reason: "DrainFailed",
            warning: true,
            message,
        });
    }
}

/// Takes a driver's report: readback into `status.power`, a note as an Event (a Warning when
/// the driver cut the power hard), a recheck time (a BMC or status URL changes without any
/// event in the cluster, so only this brings the reconcile back).
pub(super) fn absorb(
    out: &mut Outcome,
    status: &mut MachineStatus,
    reading: &Reading,
    r: Report,
) -> OpProgress {
    let escalated_before = status
        .power
        .as_ref()
        .is_some_and(|p| p.operation == reading.op && p.escalated);
    let mut power = DriverReadback::next(
        status.power.as_deref(),
        reading.driver,
        reading.direction,
        &reading.op,
        r.readback,
        r.escalated,
        reading.at,
    );
    if let Some(by) = r.accepted {
        power.accepted = Some(by);
    }
    status.power = Some(Box::new(power));
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

/// The machine a reconcile acts on, and what it found of it before deciding.
pub(super) struct Subject<'a> {
    pub ctx: &'a Context,
    pub m: &'a Machine,
    pub node: Option<&'a KubeNode>,
    /// The Node's name, or the one the machine is known to register under.
    pub node_name: Option<&'a str>,
    pub now: Timestamp,
}

impl Subject<'_> {
    fn reading(&self, driver: &'static str, op: &Operation) -> Reading {
        Reading {
            driver,
            direction: direction_of(op),
            op: op.id.clone(),
            at: self.now,
        }
    }
}

/// Carries out one effect of the core. `before` and `after` are the lifecycle around the
/// decision that asked for it; `drain_given_up` says the status records a drain that timed out.
pub(super) async fn perform(
    s: &Subject<'_>,
    before: &Lifecycle,
    after: &Lifecycle,
    effect: Effect,
    drain_given_up: bool,
) -> Result<Performed, Error> {
    let (ctx, m) = (s.ctx, s.m);
    let name = m.name_any();
    Ok(match effect {
        Effect::StartPowerOn { op, .. } | Effect::StartPowerOff { op, .. } => {
            let Some(operation) = after.operation.as_ref().filter(|o| o.id == op) else {
                return Ok(Performed::Done);
            };
            let direction = direction_of(operation);
            let resource = operation_resource_name(&name, operation);
            let cx = op_context(ctx, m, operation, &resource, s.now);
            let d = match driver(ctx, m, direction, s.node_name) {
                Ok(d) => d,
                Err(e) => {
                    return Ok(Performed::Refused {
                        reason: e.to_string(),
                    });
                }
            };
            ctx.ensure_leader()?;
            match d.start(&cx).await {
                Ok(report) => {
                    // Info: one line per power operation says when a machine was switched, and
                    // the operator bench times IncreaseSize → Job created from it.
                    tracing::info!(machine = %m.object_ref(), driver = d.kind(), %direction, "power action started");
                    if let Some(metrics) = &ctx.metrics {
                        metrics.power_operation_started(d.kind(), &direction.to_string());
                    }
                    Performed::Started {
                        reading: s.reading(d.kind(), operation),
                        report,
                    }
                }
                Err(PowerError::Transient(e)) => {
                    tracing::info!(machine = %m.object_ref(), error = %e, "starting a power action failed; retrying");
                    Performed::StartDeferred {
                        retry_after: ctx.settings.poll_interval,
                    }
                }
                Err(PowerError::Config(reason)) => Performed::Refused { reason },
            }
        }
        Effect::CancelOperation { op } => {
            let Some(operation) = before.operation.as_ref().filter(|o| o.id == op) else {
                return Ok(Performed::Done);
            };
            let direction = direction_of(operation);
            let resource = operation_resource_name(&name, operation);
            let cx = op_context(ctx, m, operation, &resource, s.now);
            if let Ok(d) = driver(ctx, m, direction, s.node_name) {
                ctx.ensure_leader()?;
                d.cancel(&cx).await?;
                if let Some(metrics) = &ctx.metrics {
                    metrics.power_operation_ended(d.kind(), &direction.to_string(), "cancelled");
                }
            }
            Performed::Done
        }
        Effect::Cordon | Effect::Uncordon => {
            if let Some(n) = s.node {
                ctx.ensure_leader()?;
                drain::cordon(&ctx.client, n.name(), matches!(effect, Effect::Cordon))
                    .await
                    .map_err(|e| Error::NodeSide(e.to_string()))?;
            }
            Performed::Done
        }
        Effect::Drain => match s.node {
            Some(n) => {
                ctx.ensure_leader()?;
                Performed::Drain(drain_pass(s, n, drain_given_up).await?)
            }
            None => Performed::Done,
        },
        Effect::DeleteNode => {
            let Some(n) = s.node else {
                return Ok(Performed::Done);
            };
            let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
            ctx.ensure_leader()?;
            match api.delete(n.name(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube(format!("deleting Node {}", n.name()))(e)),
            }
            Performed::NodeDeleted
        }
        Effect::AdoptAsWantedOn => Performed::AdoptAsWantedOn,
        Effect::PowerObserved { state, at } => Performed::PowerObserved { state, at },
        Effect::BootDuration(d) => Performed::Boot(d),
        Effect::Emit(ev) => {
            emit(ctx, m, &ev).await;
            Performed::Done
        }
    })
}

/// One drain pass: evict what keeps the power-off back (PodDisruptionBudgets honoured), and look
/// again after `drain::DRAIN_RECHECK`. Past the drain timeout (`--drain-timeout`):
///
/// - a power-off CA did not start gives up, leaving the machine on and saying why;
/// - a power-off CA started (its `ToBeDeletedByClusterAutoscaler` taint) is given back: the
///   machine is wanted on again, its Node uncordoned and CA's taints removed, with a warning
///   Event naming the pods left and what refused them. That is what CA itself does when its own
///   drain fails before `DeleteNodes`: it aborts the deletion and untaints the Node
///   (`core/scaledown/actuation/group_deletion_scheduler.go`, `prepareNodeForDeletion` then
///   `AbortNodeDeletion`; `drain.go`, `waitPodsToDisappear`). The pods found here arrived after
///   its drain or are ones its drain did not wait for; cutting the power under them would break
///   the one promise the operator keeps, and leaving the machine on but wanted off would list it
///   as Deleting forever. Wanted on, it is an ordinary node of the group again, and CA may pick
///   it for scale-down later, with its own drain.
async fn drain_pass(s: &Subject<'_>, node: &KubeNode, given_up: bool) -> Result<DrainPass, Error> {
    let ca_deleting = drain::is_ca_deleting(node);
    if given_up && !ca_deleting {
        return Ok(DrainPass::Skipped);
    }
    let timeout = SignedDuration::try_from(s.ctx.settings.drain_timeout)
        .unwrap_or(drain::DEFAULT_DRAIN_TIMEOUT);
    let outcome = drain::drain(
        &s.ctx.drain,
        node.name(),
        &drain::DrainOptions::new(s.now).timeout(timeout),
    )
    .await
    .map_err(|e| Error::NodeSide(e.to_string()))?;
    Ok(match &outcome {
        drain::DrainOutcome::Drained | drain::DrainOutcome::NodeGone => DrainPass::Emptied,
        drain::DrainOutcome::Draining(progress) => DrainPass::Evicting {
            message: outcome.to_string(),
            started: progress.started,
        },
        drain::DrainOutcome::TimedOut(progress) if ca_deleting => DrainPass::GivenBack {
            message: format!(
                "drain did not finish by {} (started {}): {progress}; the Cluster Autoscaler's \
                 deletion is given back: the machine stays on and is wanted on again",
                progress.deadline, progress.started
            ),
        },
        drain::DrainOutcome::TimedOut(_) => DrainPass::TimedOut {
            message: format!(
                "{outcome}; the machine stays on (set spec.powerState back to on, or fix what \
                 blocks the eviction and run `kubectl homelab power off` again)"
            ),
        },
    })
}

pub(super) async fn emit(ctx: &Context, m: &Machine, ev: &KubeEvent) {
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

/// One reconcile's pass state: what the core is shown before each decision, and what the acts
/// did so far.
pub(super) struct Passes<'a> {
    pub subject: Subject<'a>,
    pub desired: PowerState,
    pub manual_retry: bool,
    pub lifecycle: Lifecycle,
    /// The lifecycle before the current pass's decision (a cancel names the old operation).
    before: Lifecycle,
    /// The operation in flight, as the world shows it.
    op_status: OpProgress,
    pods_present: bool,
    pub status: MachineStatus,
    pub out: Outcome,
    /// The power driver of the operation in flight cannot be used.
    pub spec_error: Option<String>,
    /// The core's latest answer to "when to look again".
    pub requeue_at: Option<Timestamp>,
}

impl<'a> Passes<'a> {
    /// Looks at the machine's operation in flight and, for a power-off, at its Node's pods.
    pub(super) async fn observe(
        subject: Subject<'a>,
        status: MachineStatus,
    ) -> Result<Passes<'a>, Error> {
        let (ctx, m, now) = (subject.ctx, subject.m, subject.now);
        let lifecycle = m.lifecycle();
        let mut passes = Passes {
            desired: m.desired_power(),
            manual_retry: m
                .annotations()
                .get(crate::operator::api::RETRY_ANNOTATION)
                .and_then(|v| v.parse::<Timestamp>().ok())
                .is_some_and(|t| lifecycle.phase_since.is_none_or(|since| t > since)),
            before: lifecycle.clone(),
            lifecycle,
            op_status: OpProgress::Absent,
            pods_present: false,
            status,
            out: Outcome::default(),
            spec_error: None,
            requeue_at: None,
            subject,
        };
        let s = &passes.subject;
        if let Some(op) = &passes.lifecycle.operation {
            passes.op_status = match driver(ctx, m, direction_of(op), s.node_name) {
                Ok(d) => {
                    let resource = operation_resource_name(&m.name_any(), op);
                    let cx = op_context(ctx, m, op, &resource, now);
                    match d.check(&cx).await {
                        Ok(r) => {
                            let reading = s.reading(d.kind(), op);
                            let p = absorb(&mut passes.out, &mut passes.status, &reading, r);
                            unaccepted_is_missing(&d, &passes.status, op, p)
                        }
                        Err(PowerError::Transient(e)) => {
                            tracing::info!(machine = %m.object_ref(), error = %e, "power check failed; retrying");
                            passes.out.requeue_after = Some(ctx.settings.poll_interval);
                            OpProgress::Running
                        }
                        Err(PowerError::Config(e)) => {
                            passes.spec_error = Some(e.clone());
                            OpProgress::Failed { reason: e }
                        }
                    }
                }
                Err(PowerError::Config(e)) | Err(PowerError::Transient(e)) => {
                    passes.spec_error = Some(e.clone());
                    OpProgress::Failed { reason: e }
                }
            };
        }
        if let (Some(n), PowerState::Off) = (s.node, passes.desired) {
            // Cordon first, then list: a pod bound between the list and a later cordon would be
            // powered off under. Every decision from these phases with desired off cordons;
            // Unknown and Off may still adopt a machine found on; PoweringOff cordoned when it
            // started and decides nothing on pods.
            let may_power_off = !matches!(
                passes.lifecycle.phase(),
                Phase::Unknown | Phase::Off | Phase::PoweringOff
            );
            let cordoned = n.unschedulable();
            if may_power_off && !cordoned {
                ctx.ensure_leader()?;
                drain::cordon(&ctx.client, n.name(), true)
                    .await
                    .map_err(|e| Error::NodeSide(e.to_string()))?;
            }
            let pods = pods_on(ctx, n.name()).await?;
            passes.pods_present = !drain::pods_blocking_power_off_at(&pods, now).is_empty();
        }
        Ok(passes)
    }
}

/// A driver that reads the power back (Redfish, HTTP with a status URL) whose start was never
/// accepted (it failed transiently: a BMC busy, a request lost) and that still reads the old
/// state: the action is missing, not running, so the core sends it again (`ActionMissing` →
/// `Reissue`, the same operation id), retried at the poll interval until accepted or the
/// operation's deadline. Without this a lost GracefulShutdown would wait for `forceOffAfter`
/// and a lost power-on for the boot timeout.
fn unaccepted_is_missing(
    d: &AnyDriver<'_>,
    status: &MachineStatus,
    op: &Operation,
    p: OpProgress,
) -> OpProgress {
    let reads_back = matches!(d, AnyDriver::Redfish(_) | AnyDriver::Http(_));
    let accepted = DriverReadback::accepted_for(status.power.as_deref(), &op.id).is_some();
    if p == OpProgress::Running && reads_back && !accepted {
        OpProgress::Absent
    } else {
        p
    }
}

fn to_op_status(p: &OpProgress) -> OpStatus<'_> {
    match p {
        OpProgress::Absent => OpStatus::Absent,
        OpProgress::Running => OpStatus::Running,
        OpProgress::Succeeded => OpStatus::Succeeded,
        OpProgress::Failed { reason } => OpStatus::Failed { reason },
    }
}

/// Effects that start or stop a power action: the operation they act for is recorded first.
fn changes_the_operation(effect: &Effect) -> bool {
    matches!(
        effect,
        Effect::StartPowerOn { .. } | Effect::StartPowerOff { .. } | Effect::CancelOperation { .. }
    )
}

impl Passes<'_> {
    /// Writes the decided lifecycle (the new operation, or none) to status before any of the
    /// decision's effects starts or stops a power action, guarded by the resourceVersion the
    /// decision was made on. A conflict (`spec.powerState` or the status changed since the read:
    /// CA, `kubectl homelab power`) fails the reconcile before anything was started, and it runs
    /// again on the new object. Once written, the operation's id is taken: a later reconcile
    /// checks or cancels what this one starts, and never gives its id to another operation.
    async fn record_intent(&mut self) -> Result<(), Error> {
        let (ctx, m) = (self.subject.ctx, self.subject.m);
        let (rv, old) = match self.out.written.take() {
            Some(w) => (w.resource_version, w.status),
            None => (m.resource_version(), m.status.clone().unwrap_or_default()),
        };
        let mut ahead = self.status.clone();
        ahead.lifecycle = self.lifecycle.clone();
        let ns = m.namespace().unwrap_or_default();
        let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
        ctx.ensure_leader()?;
        let resource_version = match write_status(&api, m, rv.clone(), &old, ahead.clone()).await? {
            Some(after) => {
                ctx.supersede(&format!("{ns}/{}", m.name_any()), rv);
                after
            }
            None => rv,
        };
        self.out.written = Some(Written {
            status: ahead,
            resource_version,
        });
        Ok(())
    }
}

impl Edge for Passes<'_> {
    type Error = Error;

    fn observe(&mut self) -> (&mut Lifecycle, Observed<'_>) {
        self.before = self.lifecycle.clone();
        let observed = Observed {
            // Adopted or given back: decide as wanted on, as the spec will say once it is
            // patched.
            desired: if self.out.want_on {
                PowerState::On
            } else {
                self.desired
            },
            node: node_obs(self.subject.m, self.subject.node),
            operation: to_op_status(&self.op_status),
            pods_present: self.pods_present,
            manual_retry: self.manual_retry,
        };
        (&mut self.lifecycle, observed)
    }

    async fn act(&mut self, decision: Decision) -> Result<bool, Error> {
        if let Some(r) = &decision.rejected {
            tracing::error!(machine = %self.subject.m.object_ref(), error = %r, "lifecycle refused a derived event");
        }
        self.requeue_at = decision.requeue_at;
        self.out.feedback = None;
        let generation = self.subject.m.meta().generation;
        if decision.effects.iter().any(changes_the_operation) {
            self.record_intent().await?;
        }
        let want_on_before = self.out.want_on;
        for effect in decision.effects {
            let given_up = self
                .status
                .conditions
                .iter()
                .any(|c| c.type_ == CONDITION_DRAINING && c.reason == "DrainTimedOut");
            let done = perform(
                &self.subject,
                &self.before,
                &self.lifecycle,
                effect,
                given_up,
            )
            .await?;
            self.out
                .take(&mut self.status, done, generation, self.subject.now);
        }
        Ok(
            match (
                self.out.feedback.take(),
                std::mem::take(&mut self.out.pods_gone),
            ) {
                (Some(p), _) => {
                    self.op_status = p;
                    true
                }
                // The pods went away between the look above and the drain's own (a kubelet
                // that finished them, an eviction answered 404). Nothing about pods will queue
                // this machine again, so decide on what the drain saw now rather than waiting
                // for an event that never comes.
                (None, true) if self.pods_present => {
                    self.pods_present = false;
                    true
                }
                // A deletion given back: decide again as wanted on (undo the drain).
                (None, _) if self.out.want_on && !want_on_before => true,
                (None, _) => false,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::controller::requeue;
    use kube::runtime::controller::Action;

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
    ) -> OpProgress {
        let reading = Reading {
            driver: "redfish",
            direction: direction_of(op),
            op: op.id.clone(),
            at: now,
        };
        absorb(out, status, &reading, r)
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
        let running = Report::new(OpProgress::Running).recheck_after(Duration::from_secs(5));
        assert_eq!(
            absorb_at(&mut out, &mut status, &op, t0, running),
            OpProgress::Running
        );
        assert_eq!(out.requeue_after, Some(Duration::from_secs(5)));
        let mut idle = Outcome::default();
        absorb_at(
            &mut idle,
            &mut status,
            &op,
            t0,
            Report::new(OpProgress::Running).recheck_after(Duration::from_secs(2)),
        );
        assert_eq!(idle.requeue_after, Some(Duration::from_secs(2)));
        assert_eq!(
            requeue(idle.requeue_after),
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
        let on = || Report::new(OpProgress::Running).with_readback(Some(PowerState::On));
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
                accepted: None,
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
        let off = Report::new(OpProgress::Succeeded).with_readback(Some(PowerState::Off));
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

    /// A drain that gave up says so in the Draining condition and once as a Warning Event; one
    /// still evicting keeps its start time and asks to look again soon.
    #[test]
    fn drain_passes_are_recorded_in_the_draining_condition() {
        let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1);
        let mut status = MachineStatus::default();
        let mut out = Outcome::default();
        let evicting = DrainPass::Evicting {
            message: "evicting 2 pods".into(),
            started: t0,
        };
        out.take(
            &mut status,
            Performed::Drain(evicting),
            Some(1),
            t0 + SignedDuration::from_secs(9),
        );
        let c = crate::operator::api::find_condition(&status.conditions, CONDITION_DRAINING);
        assert_eq!(
            c.map(|c| (
                c.status.as_str(),
                c.reason.as_str(),
                c.last_transition_time.0
            )),
            Some(("True", "Evicting", t0))
        );
        assert_eq!(out.requeue_after, Some(drain::DRAIN_RECHECK));
        assert!(out.drained);

        let timed_out = DrainPass::TimedOut {
            message: "PDB web refuses".into(),
        };
        out.take(&mut status, Performed::Drain(timed_out), Some(1), t0);
        let c = crate::operator::api::find_condition(&status.conditions, CONDITION_DRAINING);
        assert_eq!(
            c.map(|c| (c.status.as_str(), c.reason.as_str())),
            Some(("False", "DrainTimedOut"))
        );
        let events: Vec<_> = out
            .note_events
            .iter()
            .map(|e| (e.reason, e.warning))
            .collect();
        assert_eq!(events, [("DrainFailed", true)]);
    }

    /// A CA-deleted machine's drain past its timeout: recorded like a given-up drain (condition,
    /// one warning Event), and the machine is to be recorded as wanted on again, not powered off.
    #[test]
    fn a_ca_deletion_whose_drain_times_out_is_given_back() {
        let t0 = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1);
        let mut status = MachineStatus::default();
        let mut out = Outcome::default();
        let given_back = DrainPass::GivenBack {
            message: "1 pod(s) remain (apps/web-0)".into(),
        };
        out.take(&mut status, Performed::Drain(given_back), Some(1), t0);
        let c = crate::operator::api::find_condition(&status.conditions, CONDITION_DRAINING);
        assert_eq!(
            c.map(|c| (c.status.as_str(), c.reason.as_str())),
            Some(("False", "DeletionGivenBack"))
        );
        assert!(out.want_on && out.drained && !out.pods_gone);
        let events: Vec<_> = out
            .note_events
            .iter()
            .map(|e| (e.reason, e.warning, e.message.contains("web-0")))
            .collect();
        assert_eq!(events, [("DrainFailed", true, true)]);
    }
}
