//! The level-triggered entry point: look at the world as it is now, derive the events that
//! follow from it and apply them through [`step_mut`]. Controllers and the simulator call
//! this; tests and event-driven callers may call `step` directly.
use jiff::Timestamp;

use super::fsm::{Effect, Policy, Rejected, add, deadline, remediation_at, step_mut};
use super::table::{Event, EventKind, Row};
use super::types::{Lifecycle, OperationKind, Phase, PowerState};

/// What the cluster says about the machine's Kubernetes Node object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeObs {
    /// No Node object for the machine (by providerID, then `kubernetesNodeName`).
    Absent,
    Registered {
        /// The Ready condition is True.
        ready: bool,
        /// The Node's `spec.providerID` is the machine's expected one.
        provider_id_matches: bool,
        /// When Ready last became non-True (the condition's `lastTransitionTime`); `None` if
        /// unknown, then the phase start stands in for it.
        not_ready_since: Option<Timestamp>,
        /// When Ready last became True (the condition's `lastTransitionTime` while it is True);
        /// `None` when not Ready or unknown. Tells a new boot from a Node still Ready from before
        /// a power-off.
        ready_since: Option<Timestamp>,
    },
}

impl NodeObs {
    /// Ready with the machine's providerID: the only thing that counts as "the machine is up".
    pub fn is_registered_ready(&self) -> bool {
        matches!(
            self,
            NodeObs::Registered {
                ready: true,
                provider_id_matches: true,
                ..
            }
        )
    }
}

/// The state of the operation recorded in `Lifecycle.operation`, as the world shows it
/// (e.g. its Job's status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpStatus<'a> {
    /// No trace of it (no Job); also when there is no operation in flight.
    Absent,
    Running,
    Succeeded,
    Failed {
        reason: &'a str,
    },
}

/// The world as it looks now, for one machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed<'a> {
    /// `spec.powerState`.
    pub desired: PowerState,
    pub node: NodeObs,
    /// Status of `Lifecycle.operation` (ignored when there is none).
    pub operation: OpStatus<'a>,
    /// Non-DaemonSet, non-mirror pods that are not finished are bound to the node.
    pub pods_present: bool,
    /// A person asked for a retry after the machine entered Failed (e.g. a retry annotation
    /// newer than `phaseSince`). Consumed by the phase change it causes.
    pub manual_retry: bool,
}

impl Observed<'_> {
    /// A world with nothing in it: desired `desired`, no Node, no operation, no pods.
    pub fn empty(desired: PowerState) -> Observed<'static> {
        Observed {
            desired,
            node: NodeObs::Absent,
            operation: OpStatus::Absent,
            pods_present: false,
            manual_retry: false,
        }
    }
}

/// Most events one `reconcile` applies; a legal chain is at most 4 long (e.g. Unknown:
/// DesiredOn, NodeGone → Off: DesiredOn → PoweringOn).
pub const MAX_STEPS: usize = 8;

/// What [`reconcile_mut`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Effects to perform, in order.
    pub effects: Vec<Effect>,
    /// The table rows taken, in order (empty: nothing changed).
    pub fired: Vec<&'static Row>,
    /// Set if a derived event was refused: a bug in the derivation, never expected.
    pub rejected: Option<Rejected>,
    /// When to reconcile again at the latest (deadline, retry, end of a NotReady grace).
    pub requeue_at: Option<Timestamp>,
}

/// What [`reconcile`] did, with the new lifecycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub lifecycle: Lifecycle,
    pub effects: Vec<Effect>,
    pub fired: Vec<&'static Row>,
    pub rejected: Option<Rejected>,
    pub requeue_at: Option<Timestamp>,
}

impl Transition {
    /// Whether any row fired (then status must be written).
    pub fn changed(&self) -> bool {
        !self.fired.is_empty()
    }
}

/// Derive and apply the events that follow from `observed` at `now`.
pub fn reconcile(
    lc: &Lifecycle,
    observed: &Observed<'_>,
    now: Timestamp,
    policy: &Policy,
) -> Transition {
    let mut next = lc.clone();
    let o = reconcile_mut(&mut next, observed, now, policy);
    Transition {
        lifecycle: next,
        effects: o.effects,
        fired: o.fired,
        rejected: o.rejected,
        requeue_at: o.requeue_at,
    }
}

/// [`reconcile`] in place: allocates nothing when nothing happens (the simulator's hot path).
pub fn reconcile_mut(
    lc: &mut Lifecycle,
    observed: &Observed<'_>,
    now: Timestamp,
    policy: &Policy,
) -> Outcome {
    let mut out = Outcome::default();
    // The observed operation status describes the operation recorded when we started; once a
    // step replaces it, the new one has just been issued and counts as running.
    let initial_op_seq = lc.operation_seq;
    let mut desired = observed.desired;
    let mut seen: [(Phase, EventKind); MAX_STEPS] =
        [(Phase::Unknown, EventKind::DesiredOn); MAX_STEPS];
    for i in 0..MAX_STEPS {
        let op_status = if lc.operation_seq == initial_op_seq {
            observed.operation
        } else {
            OpStatus::Running
        };
        // An operation started by an earlier step of this reconcile was started after the world
        // was observed: nothing observed can be evidence of it.
        let op_new = lc.operation_seq != initial_op_seq;
        let Some(event) = derive(lc, observed, desired, op_status, op_new, now, policy) else {
            break;
        };
        let key = (lc.phase(), event.kind());
        // A self-loop derives the same event again; applying it once is enough.
        if seen[..i].contains(&key) {
            break;
        }
        seen[i] = key;
        match step_mut(lc, &event, now, policy, &mut out.effects) {
            Ok(row) => {
                out.fired.push(row);
                if row.event == EventKind::FoundOn {
                    // Adopted: AdoptAsWantedOn makes the caller record desired on; until
                    // then, do not power the machine off on the old desired state.
                    desired = PowerState::On;
                }
            }
            Err(e) => {
                out.rejected = Some(e);
                break;
            }
        }
    }
    out.requeue_at = requeue_at(lc, observed, now, policy);
    out
}

/// When a lifecycle needs looking at again even if nothing in the world changes: the
/// operation's deadline or the next retry. Stored timestamps only, so it survives restarts.
pub fn next_wakeup(lc: &Lifecycle, policy: &Policy) -> Option<Timestamp> {
    match lc.phase() {
        Phase::PoweringOn | Phase::Booting | Phase::PoweringOff => deadline(lc, policy),
        Phase::Failed => lc.next_retry_time,
        // Not while draining for a power-off: that comes first.
        Phase::Ready if lc.goal == Some(PowerState::Off) => None,
        Phase::Ready => remediation_at(lc, policy),
        Phase::Unknown | Phase::Off => None,
    }
}

/// `next_wakeup`, plus the end of a NotReady grace period that the FSM is waiting out.
fn requeue_at(
    lc: &Lifecycle,
    observed: &Observed<'_>,
    now: Timestamp,
    policy: &Policy,
) -> Option<Timestamp> {
    // A deadline or retry that came and did not fire waits for a drain (desired off with pods on
    // the Node), whose passes requeue themselves: no wake-up in the past.
    let base = next_wakeup(lc, policy)
        .filter(|t| *t > now)
        .into_iter()
        .chain(stale_ready_until(lc, &observed.node, now, policy))
        .min();
    let waits_for_grace = match lc.phase() {
        Phase::Unknown => true,
        Phase::Ready => lc.node_lost_since.is_none(),
        Phase::Failed => lc.goal == Some(PowerState::Off),
        _ => false,
    };
    let grace_end = not_ready_since(lc, &observed.node, now)
        .filter(|_| waits_for_grace)
        .map(|s| add(s, policy.not_ready_grace))
        .filter(|t| *t > now);
    match (base, grace_end) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Since when a power-on counts: a Ready transition at or after it is evidence of a boot. The
/// power-on operation's start while powering on or booting; for a Failed machine the failure
/// (its operation is gone; a Ready transition before it was seen by the step that failed).
fn boot_reference(lc: &Lifecycle) -> Option<Timestamp> {
    match lc.phase() {
        Phase::PoweringOn | Phase::Booting => lc
            .operation
            .as_ref()
            .filter(|o| o.kind == OperationKind::PowerOn)
            .map(|o| o.started)
            .or(lc.phase_since),
        Phase::Failed => lc.phase_since,
        _ => None,
    }
}

/// Whether the Node shows the machine up since `since` (see [`boot_reference`]): Ready with
/// its providerID, and Ready became True at or after `since`. Condition times have whole
/// seconds: compared at that precision, as PoweringOff compares `not_ready_since`. A Node Ready
/// from before `since` (its OS still shutting down, or off and not yet marked NotReady by the
/// node lifecycle controller, which takes its node-monitor-grace-period, 40-50 s) is no
/// evidence of a boot: a power-on sent meanwhile may have been lost. It counts only once it has
/// stayed Ready for `Policy::not_ready_grace` after `since`: a machine that went off would have
/// been marked NotReady long before, so it never went off and is on. An unknown transition
/// time counts as from before.
fn up_since(node: &NodeObs, since: Option<Timestamp>, now: Timestamp, policy: &Policy) -> bool {
    let NodeObs::Registered { ready_since, .. } = node else {
        return false;
    };
    if !node.is_registered_ready() {
        return false;
    }
    let Some(since) = since else {
        return true;
    };
    ready_since.is_some_and(|r| r.as_second() >= since.as_second())
        || now >= add(since, policy.not_ready_grace)
}

/// When a Node Ready from before the power-on starts counting as up (see [`up_since`]), if the
/// lifecycle is waiting for that.
fn stale_ready_until(
    lc: &Lifecycle,
    node: &NodeObs,
    now: Timestamp,
    policy: &Policy,
) -> Option<Timestamp> {
    let waits = match lc.phase() {
        Phase::PoweringOn | Phase::Booting => true,
        Phase::Failed => lc.goal == Some(PowerState::On),
        _ => false,
    };
    let since = boot_reference(lc)?;
    (waits && node.is_registered_ready() && !up_since(node, Some(since), now, policy))
        .then(|| add(since, policy.not_ready_grace))
        .filter(|t| *t > now)
}

/// Since when the node has been registered but not usable (NotReady or wrong providerID).
fn not_ready_since(lc: &Lifecycle, node: &NodeObs, now: Timestamp) -> Option<Timestamp> {
    match node {
        NodeObs::Registered {
            not_ready_since, ..
        } if !node.is_registered_ready() => Some(not_ready_since.or(lc.phase_since).unwrap_or(now)),
        _ => None,
    }
}

fn derive(
    lc: &Lifecycle,
    observed: &Observed<'_>,
    desired: PowerState,
    op_status: OpStatus<'_>,
    op_new: bool,
    now: Timestamp,
    policy: &Policy,
) -> Option<Event> {
    let node = &observed.node;
    let up = node.is_registered_ready();
    // Up since the power-on was requested (PoweringOn, Booting, Failed): a Node Ready from before
    // it is no evidence of a boot, nor is anything observed before this reconcile started it.
    let booted = !op_new && up_since(node, boot_reference(lc), now, policy);
    let absent = matches!(node, NodeObs::Absent);
    let nr_since = not_ready_since(lc, node, now);
    let long_not_ready = nr_since.is_some_and(|s| now >= add(s, policy.not_ready_grace));
    let goal_differs = lc.goal != Some(desired);
    // NotReady (not merely another providerID) past the grace period: no kubelet runs.
    let kubelet_lost =
        absent || (long_not_ready && matches!(node, NodeObs::Registered { ready: false, .. }));
    // Pods bound to a node whose kubelet is gone or NotReady past the grace period cannot be
    // drained (they stay Terminating) and are not served anyway. Any other Node's pods are
    // drained before a power-off, whatever its providerID: the scheduler binds pods to any
    // Ready Node.
    let pods_present = observed.pods_present && !kubelet_lost;
    let desired_event = || match desired {
        PowerState::On => Event::DesiredOn,
        PowerState::Off => Event::DesiredOff { pods_present },
    };
    let mismatch = matches!(
        node,
        NodeObs::Registered {
            provider_id_matches: false,
            ..
        }
    );
    let deadline_passed = deadline(lc, policy).is_some_and(|d| now >= d);
    let action_done = lc.operation.as_ref().is_none_or(|o| o.completed.is_some());
    match lc.phase() {
        // Never act before reading the cluster: a machine may already be on
        // (docs/pitfalls.md, pitfall 6).
        Phase::Unknown => {
            if goal_differs {
                Some(desired_event())
            } else if up {
                Some(Event::FoundOn)
            } else if absent {
                Some(Event::NodeGone)
            } else if long_not_ready {
                Some(Event::NodeNotReady)
            } else {
                None
            }
        }
        Phase::Off => {
            if up {
                Some(Event::FoundOn)
            } else if desired == PowerState::On {
                Some(Event::DesiredOn)
            } else if goal_differs {
                Some(desired_event())
            } else {
                None
            }
        }
        Phase::PoweringOn => {
            // A booted node first: it may already run pods, so a desired off then drains.
            if booted {
                Some(Event::NodeReady)
            } else if desired == PowerState::Off {
                Some(desired_event())
            } else if let OpStatus::Failed { reason } = op_status {
                Some(Event::ActionFailed {
                    reason: reason.to_owned(),
                })
            } else if op_status == OpStatus::Succeeded {
                Some(Event::ActionSucceeded)
            } else if deadline_passed {
                Some(Event::BootDeadlinePassed {
                    provider_id_mismatch: mismatch,
                })
            } else if op_status == OpStatus::Absent {
                Some(Event::ActionMissing)
            } else {
                None
            }
        }
        Phase::Booting => {
            if booted {
                Some(Event::NodeReady)
            } else if desired == PowerState::Off {
                Some(desired_event())
            } else if deadline_passed {
                Some(Event::BootDeadlinePassed {
                    provider_id_mismatch: mismatch,
                })
            } else {
                None
            }
        }
        Phase::Ready => {
            if desired == PowerState::Off {
                // Re-derived while draining; the self-loop runs once per reconcile.
                Some(desired_event())
            } else if goal_differs {
                Some(Event::DesiredOn)
            } else if up {
                // Ends a recorded NotReady episode; nothing to do otherwise.
                lc.node_lost_since.is_some().then_some(Event::NodeReady)
            } else if lc.node_lost_since.is_some() {
                // The episode is recorded (one Event); only remediation acts on it.
                remediation_at(lc, policy)
                    .is_some_and(|t| now >= t)
                    .then_some(Event::RemediationDue)
            } else if absent {
                Some(Event::NodeGone)
            } else if long_not_ready {
                // A shorter NotReady blip is not a power-off (docs/pitfalls.md, pitfall 5).
                Some(Event::ReadyLost)
            } else {
                None
            }
        }
        Phase::PoweringOff => {
            let started = lc.operation.as_ref().map(|o| o.started);
            // Off evidence: the node stopped being Ready after we asked, or the action is
            // done and the node is not Ready.
            // Node condition times have whole seconds: compare at that precision, or a node that
            // went down in the same second as the request would not count.
            // A Ready Node with another providerID is a running kubelet: no off evidence.
            let went_down_after_start = !matches!(node, NodeObs::Registered { ready: true, .. })
                && nr_since
                    .is_some_and(|s| started.is_none_or(|st| s.as_second() >= st.as_second()));
            // A power-cycle (remediation) powers off with desired still on: finish it first.
            let power_cycle = lc.node_lost_since.is_some();
            // The node of a machine being power-cycled was down before the power-off started:
            // only the action's success is evidence then.
            let went_down = went_down_after_start && !power_cycle;
            // Wanted on again: while the power-off action still runs it is cancelled and a
            // power-on started. Once the action is done the machine may still be shutting down,
            // and a power-on sent now (a Wake-on-LAN packet, a Redfish On) would be lost: the goal
            // becomes on and the power-off finishes (off evidence as below), then Off powers it on
            // again, as a power-cycle does. The Node is not waited on for longer than the node
            // lifecycle controller takes to mark it NotReady.
            let wants_on = desired == PowerState::On && !power_cycle;
            if wants_on && (!action_done || lc.goal != Some(PowerState::On)) {
                Some(Event::DesiredOn)
            } else if desired == PowerState::Off && lc.goal == Some(PowerState::On) {
                Some(desired_event())
            } else if !up && (action_done || went_down) {
                Some(if absent {
                    Event::NodeGone
                } else {
                    Event::NodeNotReady
                })
            } else if let OpStatus::Failed { reason } = op_status {
                Some(Event::ActionFailed {
                    reason: reason.to_owned(),
                })
            } else if op_status == OpStatus::Succeeded && !action_done {
                Some(Event::ActionSucceeded)
            } else if deadline_passed {
                Some(Event::ShutdownDeadlinePassed)
            } else if op_status == OpStatus::Absent && !action_done {
                Some(Event::ActionMissing)
            } else {
                None
            }
        }
        Phase::Failed => {
            let goal = lc.goal;
            if goal_differs {
                Some(desired_event())
            } else if goal == Some(PowerState::On) && booted {
                Some(Event::NodeReady)
            } else if goal == Some(PowerState::Off) && absent {
                Some(Event::NodeGone)
            } else if goal == Some(PowerState::Off) && kubelet_lost {
                // NotReady past the grace period; a Ready Node with another providerID is a
                // running machine.
                Some(Event::NodeNotReady)
            } else if goal == Some(PowerState::Off) && pods_present {
                // Before a retry powers off: drain what runs on the Node (re-derived each
                // reconcile until it is empty; a pending manual retry waits for that).
                Some(desired_event())
            } else if observed.manual_retry {
                Some(Event::ManualRetry)
            } else if lc.next_retry_time.is_some_and(|t| now >= t) {
                Some(Event::RetryDue)
            } else {
                None
            }
        }
    }
}
