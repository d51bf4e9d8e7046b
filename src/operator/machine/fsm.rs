//! `step`: apply one event to a persisted lifecycle, moving only along rows of [`TABLE`].
use jiff::{SignedDuration, Timestamp};

use super::table::{Action, Cond, Event, EventKind, Row, TABLE};
use super::types::{Lifecycle, Operation, OperationKind, Phase, PowerState};

/// Timeouts, backoff and grace periods. Built per machine by the caller (the Node CR's
/// `bootTimeout` / `shutdownTimeout` override the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// From issuing a power-on until the Node must be Ready (default 10m).
    pub boot_timeout: SignedDuration,
    /// From issuing a power-off until the Node must be NotReady or gone (default 5m).
    pub shutdown_timeout: SignedDuration,
    /// Delay before the first retry; doubles per failed attempt (default 30s).
    pub backoff_base: SignedDuration,
    /// Longest delay between retries (default 10m).
    pub backoff_cap: SignedDuration,
    /// Failed attempts after which the machine stays Failed until the desired state changes
    /// or a person retries (default 5).
    pub max_attempts: u32,
    /// How long a Ready machine's node may be NotReady before it counts as lost (default 3m).
    pub not_ready_grace: SignedDuration,
    /// Remediation (a Group's opt-in `remediation.powerCycleAfter`): power-cycle a Ready
    /// machine whose node has been lost this long. `None` (the default): never touch power.
    pub remediate_after: Option<SignedDuration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            boot_timeout: SignedDuration::from_mins(10),
            shutdown_timeout: SignedDuration::from_mins(5),
            backoff_base: SignedDuration::from_secs(30),
            backoff_cap: SignedDuration::from_mins(10),
            max_attempts: 5,
            not_ready_grace: SignedDuration::from_mins(3),
            remediate_after: None,
        }
    }
}

impl Policy {
    /// Delay before retrying after the `attempt`-th failure (1-based): base * 2^(attempt-1),
    /// at most the cap.
    pub fn backoff(&self, attempt: u32) -> SignedDuration {
        let exp = attempt.saturating_sub(1).min(30);
        let factor = 1i32 << exp;
        match self.backoff_base.checked_mul(factor) {
            Some(d) if d < self.backoff_cap => d,
            _ => self.backoff_cap,
        }
    }
}

/// A Kubernetes Event to record on the Node CR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeEvent {
    /// CamelCase reason, e.g. `PowerOnStarted`.
    pub reason: &'static str,
    /// `Warning` type instead of `Normal`.
    pub warning: bool,
    pub message: String,
}

/// What the caller (controller or simulator) must do after a transition. Every effect is
/// idempotent: performing it twice is harmless (Jobs have deterministic names, cordon of a
/// cordoned node is a no-op, deleting a missing Node is fine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Start the power-on action `op` (resource name: [`operation_resource_name`]).
    StartPowerOn { op: String, deadline: Timestamp },
    /// Start the power-off action `op`.
    StartPowerOff { op: String, deadline: Timestamp },
    /// Stop operation `op` if it still runs (delete its Job), so it cannot act late.
    CancelOperation { op: String },
    /// Mark the Node unschedulable (no-op when there is no Node object).
    Cordon,
    /// Undo our cordon (and CA's deletion taint) on the Node.
    Uncordon,
    /// Evict the node's non-DaemonSet pods through the Eviction API, honouring PDBs. The FSM
    /// powers off only once the caller reports no pods (`pods_present: false`).
    Drain,
    /// Delete the Node object of a machine confirmed off (docs/ca-contract.md, section 4), after
    /// saving its labels, taints, capacity and providerID in status.
    DeleteNode,
    /// The machine was found on: record it as wanted on (`spec.powerState: on`) so the
    /// provider counts it in the target.
    AdoptAsWantedOn,
    /// The observed power state changed at `at` (`status.powerState`; `lastStartupTime` /
    /// `lastShutdownTime`).
    PowerObserved { state: PowerState, at: Timestamp },
    /// A boot took this long (power-on issued to Node Ready): keep for statistics.
    BootDuration(SignedDuration),
    /// Record a Kubernetes Event.
    Emit(KubeEvent),
}

/// The name of the Kubernetes object (e.g. the Job) that performs `op` for `machine`.
pub fn operation_resource_name(machine: &str, op: &Operation) -> String {
    format!("{machine}-{}", op.id)
}

/// Why `step` refused an event. Never a panic: the caller logs it (a bug in whoever derived
/// the event) and keeps the lifecycle unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(
        "event {event} is not allowed in phase {phase}: the transition table has no row for it \
         (see `kubectl homelab fsm inspect --graph`)"
    )]
    NotInTable { phase: Phase, event: EventKind },
    #[error("event {event} in phase {phase}: no row's guard holds (guards: {guards})")]
    GuardNotMet {
        phase: Phase,
        event: EventKind,
        guards: String,
    },
}

/// The result of [`step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub lifecycle: Lifecycle,
    pub effects: Vec<Effect>,
    pub row: &'static Row,
}

/// Apply `event` to `lc` at `now`. Returns the new lifecycle, the effects to perform and the
/// table row taken, or why the event is not allowed.
pub fn step(
    lc: &Lifecycle,
    event: &Event,
    now: Timestamp,
    policy: &Policy,
) -> Result<Step, Rejected> {
    let mut next = lc.clone();
    let mut effects = Vec::new();
    let row = step_mut(&mut next, event, now, policy, &mut effects)?;
    Ok(Step {
        lifecycle: next,
        effects,
        row,
    })
}

/// [`step`] in place, appending effects to `effects` (no allocation when nothing happens).
/// On rejection `lc` and `effects` are left untouched.
pub fn step_mut(
    lc: &mut Lifecycle,
    event: &Event,
    now: Timestamp,
    policy: &Policy,
    effects: &mut Vec<Effect>,
) -> Result<&'static Row, Rejected> {
    let row = find_row(lc, event, now, policy)?;
    apply(row, lc, event, now, policy, effects);
    Ok(row)
}

/// Index of TABLE by (phase, event kind): the rows of a pair are contiguous (a unit test
/// checks it), so a lookup is a slice, not a scan.
static INDEX: std::sync::LazyLock<[[(u16, u16); EventKind::ALL.len()]; Phase::ALL.len()]> =
    std::sync::LazyLock::new(|| {
        let mut idx = [[(0u16, 0u16); EventKind::ALL.len()]; Phase::ALL.len()];
        for (i, r) in TABLE.iter().enumerate() {
            let slot = &mut idx[r.from as usize][r.event as usize];
            if slot.1 == 0 {
                *slot = (i as u16, i as u16 + 1);
            } else {
                slot.1 = i as u16 + 1;
            }
        }
        idx
    });

/// The rows for (phase, event kind), in table order.
pub fn rows_for(phase: Phase, event: EventKind) -> &'static [Row] {
    let (a, b) = INDEX[phase as usize][event as usize];
    &TABLE[a as usize..b as usize]
}

fn find_row(
    lc: &Lifecycle,
    event: &Event,
    now: Timestamp,
    policy: &Policy,
) -> Result<&'static Row, Rejected> {
    let phase = lc.phase();
    let kind = event.kind();
    let rows = rows_for(phase, kind);
    if rows.is_empty() {
        return Err(Rejected::NotInTable { phase, event: kind });
    }
    for r in rows {
        if r.guard.iter().all(|c| holds(*c, lc, event, now, policy)) {
            return Ok(r);
        }
    }
    let guards = rows
        .iter()
        .map(|r| format!("[{}]", r.guard_text()))
        .collect::<Vec<_>>()
        .join(" or ");
    Err(Rejected::GuardNotMet {
        phase,
        event: kind,
        guards,
    })
}

pub(crate) fn holds(
    c: Cond,
    lc: &Lifecycle,
    event: &Event,
    now: Timestamp,
    policy: &Policy,
) -> bool {
    match c {
        Cond::GoalOn => lc.goal == Some(PowerState::On),
        Cond::GoalNotOn => lc.goal != Some(PowerState::On),
        Cond::GoalOff => lc.goal == Some(PowerState::Off),
        Cond::GoalNotOff => lc.goal != Some(PowerState::Off),
        Cond::PodsPresent => matches!(event, Event::DesiredOff { pods_present: true }),
        Cond::NoPods => matches!(
            event,
            Event::DesiredOff {
                pods_present: false
            }
        ),
        Cond::AttemptsLeft => lc.attempt.saturating_add(1) < policy.max_attempts,
        Cond::AttemptsExhausted => lc.attempt.saturating_add(1) >= policy.max_attempts,
        Cond::DeadlinePassed => deadline(lc, policy).is_some_and(|d| now >= d),
        Cond::RetryTimeReached => lc.next_retry_time.is_some_and(|t| now >= t),
        Cond::ActionDone => action_done(lc),
        Cond::ActionPending => !action_done(lc),
        Cond::RemediationTimeReached => remediation_at(lc, policy).is_some_and(|t| now >= t),
    }
}

/// When a recorded NotReady episode becomes due for a power-cycle (remediation on only).
pub fn remediation_at(lc: &Lifecycle, policy: &Policy) -> Option<Timestamp> {
    Some(add(lc.node_lost_since?, policy.remediate_after?))
}

/// No power action is still running (none in flight, or it reported success).
fn action_done(lc: &Lifecycle) -> bool {
    lc.operation.as_ref().is_none_or(|o| o.completed.is_some())
}

pub(crate) fn add(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(if d.is_negative() {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// When the current phase is given up on: the operation's deadline; for a lifecycle that
/// lost its operation record, phase start plus the timeout.
pub fn deadline(lc: &Lifecycle, policy: &Policy) -> Option<Timestamp> {
    let timeout = match lc.phase() {
        Phase::PoweringOn | Phase::Booting => policy.boot_timeout,
        Phase::PoweringOff => policy.shutdown_timeout,
        _ => return None,
    };
    match &lc.operation {
        Some(op) => Some(op.deadline),
        None => lc.phase_since.map(|s| add(s, timeout)),
    }
}

fn set_phase(lc: &mut Lifecycle, to: Phase, now: Timestamp) {
    let changed = lc.phase() != to || lc.phase.is_none();
    lc.phase = Some(to);
    if changed || lc.phase_since.is_none() {
        // Never move backwards, even if `now` is behind a previous writer's clock.
        lc.phase_since = Some(match lc.phase_since {
            Some(s) if s > now => s,
            _ => now,
        });
    }
}

fn cancel_running(lc: &Lifecycle, effects: &mut Vec<Effect>) {
    if let Some(op) = &lc.operation
        && op.completed.is_none()
    {
        effects.push(Effect::CancelOperation { op: op.id.clone() });
    }
}

/// The machine is up and Ready: whatever failed to boot before works now.
fn came_up(lc: &mut Lifecycle) {
    lc.last_power_on_failure = None;
    lc.goal = Some(PowerState::On);
    reached_goal(lc);
}

fn reached_goal(lc: &mut Lifecycle) {
    lc.node_lost_since = None;
    lc.operation = None;
    lc.attempt = 0;
    lc.last_error = None;
    lc.next_retry_time = None;
}

fn emit(effects: &mut Vec<Effect>, reason: &'static str, warning: bool, message: String) {
    effects.push(Effect::Emit(KubeEvent {
        reason,
        warning,
        message,
    }));
}

fn start(
    lc: &mut Lifecycle,
    kind: OperationKind,
    reset_attempts: bool,
    now: Timestamp,
    policy: &Policy,
    effects: &mut Vec<Effect>,
) {
    cancel_running(lc, effects);
    if reset_attempts {
        lc.attempt = 0;
    }
    lc.next_retry_time = None;
    lc.operation_seq = lc.operation_seq.saturating_add(1);
    let (prefix, timeout, goal) = match kind {
        OperationKind::PowerOn => ("on", policy.boot_timeout, PowerState::On),
        OperationKind::PowerOff => ("off", policy.shutdown_timeout, PowerState::Off),
    };
    lc.goal = Some(goal);
    let id = format!("{prefix}-{}", lc.operation_seq);
    let deadline = add(now, timeout);
    let retry = if lc.attempt > 0 {
        format!(
            ", retry {} of {}",
            lc.attempt,
            policy.max_attempts.saturating_sub(1)
        )
    } else {
        String::new()
    };
    match kind {
        OperationKind::PowerOn => {
            effects.push(Effect::StartPowerOn {
                op: id.clone(),
                deadline,
            });
            emit(
                effects,
                "PowerOnStarted",
                false,
                format!(
                    "powering on (operation {id}{retry}); Node must be Ready within {timeout:#}"
                ),
            );
        }
        OperationKind::PowerOff => {
            effects.push(Effect::Cordon);
            effects.push(Effect::StartPowerOff {
                op: id.clone(),
                deadline,
            });
            emit(
                effects,
                "PowerOffStarted",
                false,
                format!("powering off (operation {id}{retry}); must be off within {timeout:#}"),
            );
        }
    }
    lc.operation = Some(Operation {
        kind,
        id,
        started: now,
        deadline,
        completed: None,
    });
}

fn apply(
    row: &'static Row,
    lc: &mut Lifecycle,
    event: &Event,
    now: Timestamp,
    policy: &Policy,
    effects: &mut Vec<Effect>,
) {
    match row.action {
        Action::Nothing => {}
        Action::RecordGoal => match event {
            Event::DesiredOn => lc.goal = Some(PowerState::On),
            Event::DesiredOff { .. } => lc.goal = Some(PowerState::Off),
            _ => {}
        },
        Action::StartOn { reset_attempts } => start(
            lc,
            OperationKind::PowerOn,
            reset_attempts,
            now,
            policy,
            effects,
        ),
        Action::StartOff { reset_attempts } => {
            // A power-off someone asked for ends a NotReady episode: only a power-cycle
            // (`PowerCycle`) keeps it, to finish powering off before powering on again.
            lc.node_lost_since = None;
            start(
                lc,
                OperationKind::PowerOff,
                reset_attempts,
                now,
                policy,
                effects,
            )
        }
        Action::MarkDone => {
            if let Some(op) = &mut lc.operation
                && op.completed.is_none()
            {
                op.completed = Some(now);
                let what = match op.kind {
                    OperationKind::PowerOn => {
                        "power-on action done; waiting for the Node to be Ready"
                    }
                    OperationKind::PowerOff => {
                        "power-off action done; waiting for the Node to go NotReady or away"
                    }
                };
                let msg = format!("{what} (operation {})", op.id);
                emit(effects, "PowerActionDone", false, msg);
            }
        }
        Action::Reissue => {
            if let Some(op) = &lc.operation {
                let (op_id, deadline) = (op.id.clone(), op.deadline);
                effects.push(match op.kind {
                    OperationKind::PowerOn => Effect::StartPowerOn {
                        op: op_id,
                        deadline,
                    },
                    OperationKind::PowerOff => Effect::StartPowerOff {
                        op: op_id,
                        deadline,
                    },
                });
            }
        }
        Action::BecomeReady => {
            cancel_running(lc, effects);
            effects.push(Effect::Uncordon);
            effects.push(Effect::PowerObserved {
                state: PowerState::On,
                at: now,
            });
            let took = lc
                .operation
                .as_ref()
                .filter(|op| op.kind == OperationKind::PowerOn)
                .map(|op| now.duration_since(op.started));
            match took {
                Some(d) => {
                    effects.push(Effect::BootDuration(d));
                    emit(
                        effects,
                        "NodeReady",
                        false,
                        format!("Node Ready {d:#} after power-on"),
                    );
                }
                None => emit(effects, "NodeReady", false, "Node Ready again".to_owned()),
            }
            came_up(lc);
        }
        Action::Adopt => {
            cancel_running(lc, effects);
            effects.push(Effect::PowerObserved {
                state: PowerState::On,
                at: now,
            });
            if lc.goal != Some(PowerState::On) {
                effects.push(Effect::AdoptAsWantedOn);
            }
            emit(
                effects,
                "FoundOn",
                false,
                "machine found on with a Ready Node; adopted and counted as wanted on".to_owned(),
            );
            came_up(lc);
        }
        Action::ResolveOff => {
            cancel_running(lc, effects);
            effects.push(Effect::PowerObserved {
                state: PowerState::Off,
                at: now,
            });
            reached_goal(lc);
        }
        Action::ConfirmOff => {
            cancel_running(lc, effects);
            effects.push(Effect::DeleteNode);
            effects.push(Effect::PowerObserved {
                state: PowerState::Off,
                at: now,
            });
            emit(effects, "PoweredOff", false, "machine is off".to_owned());
            reached_goal(lc);
        }
        Action::Fail => fail(lc, event, now, policy, effects),
        Action::Drain => {
            if lc.goal != Some(PowerState::Off) {
                emit(
                    effects,
                    "Draining",
                    false,
                    "desired off: cordoning and evicting pods before powering off".to_owned(),
                );
            }
            lc.goal = Some(PowerState::Off);
            effects.push(Effect::Cordon);
            effects.push(Effect::Drain);
        }
        Action::DrainFirst => {
            effects.push(Effect::Cordon);
            effects.push(Effect::Drain);
        }
        Action::UndoDrain => {
            lc.goal = Some(PowerState::On);
            effects.push(Effect::Uncordon);
            emit(
                effects,
                "DrainCancelled",
                false,
                "desired on again: uncordoned".to_owned(),
            );
        }
        Action::NoteLost => {
            lc.node_lost_since = Some(now);
            let (reason, what) = match event {
                Event::NodeGone => ("NodeGone", "the Node object disappeared".to_owned()),
                _ => (
                    "NodeNotReady",
                    format!(
                        "the Node has been NotReady for longer than the {:#} grace period",
                        policy.not_ready_grace
                    ),
                ),
            };
            let then = match policy.remediate_after {
                Some(d) => format!("it is power-cycled if still lost after {d:#}"),
                None => "power is left alone (the Cluster Autoscaler's --scale-down-unready-time \
                         decides; set the Group's remediation.powerCycleAfter to power-cycle)"
                    .to_owned(),
            };
            emit(
                effects,
                reason,
                true,
                format!("{what} while the machine was Ready; {then}"),
            );
        }
        Action::Recovered => {
            if let Some(since) = lc.node_lost_since.take() {
                emit(
                    effects,
                    "NodeRecovered",
                    false,
                    format!("Node Ready again after {:#}", now.duration_since(since)),
                );
            }
        }
        Action::PowerCycle => {
            let lost = lc
                .node_lost_since
                .map(|s| format!("{:#}", now.duration_since(s)))
                .unwrap_or_default();
            emit(
                effects,
                "RemediationPowerCycle",
                true,
                format!(
                    "Node lost for {lost}: power-cycling (power off, then on again; desired power stays on)"
                ),
            );
            start(lc, OperationKind::PowerOff, true, now, policy, effects);
        }
    }
    set_phase(lc, row.to, now);
}

fn fail(
    lc: &mut Lifecycle,
    event: &Event,
    now: Timestamp,
    policy: &Policy,
    effects: &mut Vec<Effect>,
) {
    cancel_running(lc, effects);
    let op = lc.operation.take();
    let op_id = op.as_ref().map_or("none", |o| o.id.as_str());
    let (reason, what) = match event {
        Event::ActionFailed { reason } => match op.as_ref().map(|o| o.kind) {
            Some(OperationKind::PowerOff) => (
                "PowerOffFailed",
                format!("power-off action {op_id} failed: {reason}"),
            ),
            _ => (
                "PowerOnFailed",
                format!("power-on action {op_id} failed: {reason}"),
            ),
        },
        Event::BootDeadlinePassed {
            provider_id_mismatch: true,
        } => (
            "BootTimeout",
            format!(
                "a Node registered for this machine with another providerID (operation {op_id}); \
                 set spec.providerID to the kubelet's or fix the kubelet's --provider-id"
            ),
        ),
        Event::BootDeadlinePassed { .. } => {
            let took = op.as_ref().map_or(policy.boot_timeout, |o| {
                o.deadline.duration_since(o.started)
            });
            (
                "BootTimeout",
                format!(
                    "no Ready Node with the machine's providerID within {took:#} of powering on \
                     (operation {op_id})"
                ),
            )
        }
        Event::ShutdownDeadlinePassed => {
            let took = op.as_ref().map_or(policy.shutdown_timeout, |o| {
                o.deadline.duration_since(o.started)
            });
            (
                "ShutdownTimeout",
                format!("Node still Ready {took:#} after the power-off (operation {op_id})"),
            )
        }
        other => ("Failed", format!("{} failed", other.kind())),
    };
    let power_on_failed = match event {
        Event::ActionFailed { .. } => op.as_ref().map(|o| o.kind) != Some(OperationKind::PowerOff),
        Event::BootDeadlinePassed { .. } => true,
        _ => false,
    };
    if power_on_failed {
        lc.last_power_on_failure = Some(now);
    }
    lc.attempt = lc.attempt.saturating_add(1);
    let message = if lc.attempt < policy.max_attempts {
        let at = add(now, policy.backoff(lc.attempt));
        lc.next_retry_time = Some(at);
        format!(
            "{what}; attempt {} of {}, retrying at {at}",
            lc.attempt, policy.max_attempts
        )
    } else {
        lc.next_retry_time = None;
        let verb = match lc.goal {
            Some(PowerState::Off) => "off",
            _ => "on",
        };
        format!(
            "{what}; gave up after {} attempts: run `kubectl homelab power {verb}` on this \
             machine or change spec.powerState to try again",
            lc.attempt
        )
    };
    emit(effects, reason, true, message.clone());
    lc.last_error = Some(message);
}
