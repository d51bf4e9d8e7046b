//! The lifecycle transition table: the one place that says which (phase, event) pairs are
//! allowed, under which guard, and where they lead. `step` only ever moves along a row of
//! [`TABLE`]; `fsm inspect --graph`, the docs and the property tests read the same rows.
use super::types::Phase;

/// What happened to a machine (the input of [`super::step`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `spec.powerState` is `on`.
    DesiredOn,
    /// `spec.powerState` is `off`; `pods_present` says whether non-DaemonSet pods still run
    /// on the node (then the machine is drained first, never powered off under them).
    DesiredOff { pods_present: bool },
    /// The power action of the operation in flight reported success.
    ActionSucceeded,
    /// The power action of the operation in flight failed.
    ActionFailed { reason: String },
    /// The operation in flight has no trace in the world (e.g. its Job was never created
    /// because the operator stopped between the status write and the create): issue it again.
    ActionMissing,
    /// The Node object is Ready and carries the machine's providerID.
    NodeReady,
    /// The Node object is registered but not Ready (or has another providerID).
    NodeNotReady,
    /// There is no Node object for the machine.
    NodeGone,
    /// The operation's deadline passed while powering on or booting.
    BootDeadlinePassed {
        /// A Node registered under the machine's name but with another providerID.
        provider_id_mismatch: bool,
    },
    /// The operation's deadline passed while powering off.
    ShutdownDeadlinePassed,
    /// `nextRetryTime` has come.
    RetryDue,
    /// The machine is on (Ready node, right providerID) although nobody powered it on.
    FoundOn,
    /// A Ready machine's node has been NotReady for longer than the grace period.
    ReadyLost,
    /// A person asked to try again (`kubectl homelab power on|off` on a Failed machine).
    ManualRetry,
    /// A Ready machine's node has been lost (NotReady or gone) for `Policy::remediate_after`
    /// and the group opted into remediation: power-cycle it.
    RemediationDue,
}

/// [`Event`] without its data: the column of the transition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    DesiredOn,
    DesiredOff,
    ActionSucceeded,
    ActionFailed,
    ActionMissing,
    NodeReady,
    NodeNotReady,
    NodeGone,
    BootDeadlinePassed,
    ShutdownDeadlinePassed,
    RetryDue,
    FoundOn,
    ReadyLost,
    ManualRetry,
    RemediationDue,
}

impl EventKind {
    pub const ALL: [EventKind; 15] = [
        EventKind::DesiredOn,
        EventKind::DesiredOff,
        EventKind::ActionSucceeded,
        EventKind::ActionFailed,
        EventKind::ActionMissing,
        EventKind::NodeReady,
        EventKind::NodeNotReady,
        EventKind::NodeGone,
        EventKind::BootDeadlinePassed,
        EventKind::ShutdownDeadlinePassed,
        EventKind::RetryDue,
        EventKind::FoundOn,
        EventKind::ReadyLost,
        EventKind::ManualRetry,
        EventKind::RemediationDue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DesiredOn => "DesiredOn",
            EventKind::DesiredOff => "DesiredOff",
            EventKind::ActionSucceeded => "ActionSucceeded",
            EventKind::ActionFailed => "ActionFailed",
            EventKind::ActionMissing => "ActionMissing",
            EventKind::NodeReady => "NodeReady",
            EventKind::NodeNotReady => "NodeNotReady",
            EventKind::NodeGone => "NodeGone",
            EventKind::BootDeadlinePassed => "BootDeadlinePassed",
            EventKind::ShutdownDeadlinePassed => "ShutdownDeadlinePassed",
            EventKind::RetryDue => "RetryDue",
            EventKind::FoundOn => "FoundOn",
            EventKind::ReadyLost => "ReadyLost",
            EventKind::ManualRetry => "ManualRetry",
            EventKind::RemediationDue => "RemediationDue",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::DesiredOn => EventKind::DesiredOn,
            Event::DesiredOff { .. } => EventKind::DesiredOff,
            Event::ActionSucceeded => EventKind::ActionSucceeded,
            Event::ActionFailed { .. } => EventKind::ActionFailed,
            Event::ActionMissing => EventKind::ActionMissing,
            Event::NodeReady => EventKind::NodeReady,
            Event::NodeNotReady => EventKind::NodeNotReady,
            Event::NodeGone => EventKind::NodeGone,
            Event::BootDeadlinePassed { .. } => EventKind::BootDeadlinePassed,
            Event::ShutdownDeadlinePassed => EventKind::ShutdownDeadlinePassed,
            Event::RetryDue => EventKind::RetryDue,
            Event::FoundOn => EventKind::FoundOn,
            Event::ReadyLost => EventKind::ReadyLost,
            Event::ManualRetry => EventKind::ManualRetry,
            Event::RemediationDue => EventKind::RemediationDue,
        }
    }
}

/// One condition of a row's guard; a row applies when all of its conditions hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cond {
    /// `goal` is `on`.
    GoalOn,
    /// `goal` is `off` or not yet known.
    GoalNotOn,
    /// `goal` is `off`.
    GoalOff,
    /// `goal` is `on` or not yet known.
    GoalNotOff,
    /// The event says non-DaemonSet pods still run on the node.
    PodsPresent,
    /// The event says no non-DaemonSet pods run on the node.
    NoPods,
    /// After counting this failure, another attempt is allowed.
    AttemptsLeft,
    /// This failure is the last allowed attempt.
    AttemptsExhausted,
    /// `now` is at or after the operation's deadline.
    DeadlinePassed,
    /// `nextRetryTime` is set and `now` is at or after it.
    RetryTimeReached,
    /// The operation's power action has reported success.
    ActionDone,
    /// The operation's power action has not reported success yet.
    ActionPending,
    /// Remediation is on and the node has been lost for `Policy::remediate_after`.
    RemediationTimeReached,
}

impl Cond {
    pub fn as_str(self) -> &'static str {
        match self {
            Cond::GoalOn => "goal on",
            Cond::GoalNotOn => "goal not on",
            Cond::GoalOff => "goal off",
            Cond::GoalNotOff => "goal not off",
            Cond::PodsPresent => "pods present",
            Cond::NoPods => "no pods",
            Cond::AttemptsLeft => "attempts left",
            Cond::AttemptsExhausted => "attempts exhausted",
            Cond::DeadlinePassed => "deadline passed",
            Cond::RetryTimeReached => "retry time reached",
            Cond::ActionDone => "action done",
            Cond::ActionPending => "action pending",
            Cond::RemediationTimeReached => "remediation on and due",
        }
    }
}

/// What a row does besides setting the phase (interpreted by `step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Action {
    /// Record the event's desired state as the goal; nothing else.
    RecordGoal,
    /// Nothing (the event is expected and needs no reaction).
    Nothing,
    /// Start a power-on operation (cancelling any other one still running).
    StartOn { reset_attempts: bool },
    /// Cordon and start a power-off operation (cancelling any other one still running).
    StartOff { reset_attempts: bool },
    /// Mark the operation's action done.
    MarkDone,
    /// Issue the operation in flight again (same id: idempotent).
    Reissue,
    /// The machine is a Ready node: done powering on.
    BecomeReady,
    /// A machine found on: Ready, goal on.
    Adopt,
    /// Unknown resolved to off.
    ResolveOff,
    /// Power-off confirmed: forget the operation, delete the Node object.
    ConfirmOff,
    /// Count a failure: backoff or give up.
    Fail,
    /// Cordon and drain before powering off (records goal off).
    Drain,
    /// Cordon and drain before a power-off from a phase other than Ready; the goal is left as
    /// it is, so the desired off is derived again until the node is empty.
    DrainFirst,
    /// Desired on again while draining: uncordon.
    UndoDrain,
    /// A Ready machine's node is NotReady past the grace period or gone: record the episode
    /// once (`nodeLostSince`, warning Event); power and CA's view stay as they are.
    NoteLost,
    /// The node is Ready: end a NotReady episode if one was recorded.
    Recovered,
    /// Remediation: power off with the desired state still on, so Off powers it on again.
    PowerCycle,
}

/// One row of the transition table.
#[derive(Debug)]
pub struct Row {
    pub from: Phase,
    pub event: EventKind,
    /// All must hold for the row to apply. Rows sharing (from, event) have exclusive guards.
    pub guard: &'static [Cond],
    pub to: Phase,
    /// What the row does, for people (the effects `step` emits).
    pub effects: &'static str,
    pub(crate) action: Action,
}

/// Rows live only in [`TABLE`]: two rows are equal when they are the same row.
impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Row {}

impl Row {
    /// The guard as text, e.g. `deadline passed, attempts left` (empty when unguarded).
    pub fn guard_text(&self) -> String {
        let mut s = String::new();
        for (i, c) in self.guard.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            s.push_str(c.as_str());
        }
        s
    }

    /// Position of the row in [`TABLE`].
    pub fn index(&self) -> usize {
        // Rows are only ever handed out as references into TABLE.
        TABLE
            .iter()
            .position(|r| std::ptr::eq(r, self))
            .unwrap_or(usize::MAX)
    }
}

use Cond::*;
use EventKind as E;
use Phase as P;

const fn row(
    from: Phase,
    event: EventKind,
    guard: &'static [Cond],
    to: Phase,
    action: Action,
    effects: &'static str,
) -> Row {
    Row {
        from,
        event,
        guard,
        to,
        effects,
        action,
    }
}

const START_ON: Action = Action::StartOn {
    reset_attempts: false,
};
const START_ON_FRESH: Action = Action::StartOn {
    reset_attempts: true,
};
const START_OFF: Action = Action::StartOff {
    reset_attempts: false,
};
const START_OFF_FRESH: Action = Action::StartOff {
    reset_attempts: true,
};

const FAIL_RETRY: &str =
    "lastError, attempt+1, nextRetryTime by backoff, cancel a running action, warning Event";
const FAIL_GIVE_UP: &str =
    "lastError, attempt+1, no nextRetryTime (stays Failed), cancel a running action, warning Event";

/// The transition table. Every (phase, event) pair not listed is rejected by `step`.
#[rustfmt::skip]
pub static TABLE: &[Row] = &[
    // Unknown: just created or adopted; resolved from the cluster before any power action.
    row(P::Unknown, E::DesiredOn, &[], P::Unknown, Action::RecordGoal, "record goal (no power action before the cluster is read)"),
    row(P::Unknown, E::DesiredOff, &[], P::Unknown, Action::RecordGoal, "record goal (no power action before the cluster is read)"),
    row(P::Unknown, E::FoundOn, &[], P::Ready, Action::Adopt, "adopt: observed on, AdoptAsWantedOn unless goal on, Event"),
    row(P::Unknown, E::NodeGone, &[], P::Off, Action::ResolveOff, "observed off"),
    row(P::Unknown, E::NodeNotReady, &[], P::Off, Action::ResolveOff, "observed off (NotReady past the grace period)"),
    // Off
    row(P::Off, E::DesiredOn, &[], P::PoweringOn, START_ON_FRESH, "StartPowerOn(on-<n>), Event"),
    row(P::Off, E::DesiredOff, &[], P::Off, Action::RecordGoal, "record goal"),
    row(P::Off, E::FoundOn, &[], P::Ready, Action::Adopt, "adopt: observed on, AdoptAsWantedOn unless goal on, Event"),
    // PoweringOn: action issued.
    row(P::PoweringOn, E::DesiredOn, &[], P::PoweringOn, Action::RecordGoal, "none"),
    row(P::PoweringOn, E::DesiredOff, &[NoPods], P::PoweringOff, START_OFF_FRESH, "CancelOperation(on-<n>), Cordon, StartPowerOff(off-<n+1>), Event"),
    // A Node that never counted as up (another providerID) can run pods all the same.
    row(P::PoweringOn, E::DesiredOff, &[PodsPresent], P::PoweringOn, Action::DrainFirst, "Cordon, Drain (evict, honouring PDBs); power-off waits for no pods"),
    row(P::PoweringOn, E::ActionSucceeded, &[], P::Booting, Action::MarkDone, "operation completed; wait for the Node to be Ready"),
    row(P::PoweringOn, E::ActionFailed, &[AttemptsLeft], P::Failed, Action::Fail, FAIL_RETRY),
    row(P::PoweringOn, E::ActionFailed, &[AttemptsExhausted], P::Failed, Action::Fail, FAIL_GIVE_UP),
    row(P::PoweringOn, E::ActionMissing, &[], P::PoweringOn, Action::Reissue, "StartPowerOn(same id) again"),
    row(P::PoweringOn, E::NodeReady, &[], P::Ready, Action::BecomeReady, "CancelOperation if still running, Uncordon, observed on, BootDuration, Event"),
    row(P::PoweringOn, E::BootDeadlinePassed, &[DeadlinePassed, AttemptsLeft], P::Failed, Action::Fail, FAIL_RETRY),
    row(P::PoweringOn, E::BootDeadlinePassed, &[DeadlinePassed, AttemptsExhausted], P::Failed, Action::Fail, FAIL_GIVE_UP),
    // Booting: action done, waiting for a Ready Node with the right providerID.
    row(P::Booting, E::DesiredOn, &[], P::Booting, Action::RecordGoal, "none"),
    row(P::Booting, E::DesiredOff, &[NoPods], P::PoweringOff, START_OFF_FRESH, "Cordon, StartPowerOff(off-<n>), Event"),
    row(P::Booting, E::DesiredOff, &[PodsPresent], P::Booting, Action::DrainFirst, "Cordon, Drain (evict, honouring PDBs); power-off waits for no pods"),
    row(P::Booting, E::NodeReady, &[], P::Ready, Action::BecomeReady, "Uncordon, observed on, BootDuration, Event"),
    row(P::Booting, E::BootDeadlinePassed, &[DeadlinePassed, AttemptsLeft], P::Failed, Action::Fail, FAIL_RETRY),
    row(P::Booting, E::BootDeadlinePassed, &[DeadlinePassed, AttemptsExhausted], P::Failed, Action::Fail, FAIL_GIVE_UP),
    // Ready
    row(P::Ready, E::DesiredOn, &[GoalOff], P::Ready, Action::UndoDrain, "Uncordon (stop draining), Event"),
    row(P::Ready, E::DesiredOn, &[GoalNotOff], P::Ready, Action::RecordGoal, "none"),
    row(P::Ready, E::DesiredOff, &[NoPods], P::PoweringOff, START_OFF_FRESH, "Cordon, StartPowerOff(off-<n>), Event"),
    row(P::Ready, E::DesiredOff, &[PodsPresent], P::Ready, Action::Drain, "Cordon, Drain (evict, honouring PDBs); power-off waits for no pods"),
    row(P::Ready, E::NodeReady, &[], P::Ready, Action::Recovered, "clear nodeLostSince, Event NodeRecovered (only after a NotReady episode)"),
    row(P::Ready, E::NodeNotReady, &[], P::Ready, Action::Nothing, "none: grace period running (a blip is not a power-off)"),
    // A registered machine that goes NotReady or loses its Node is not a failed power-on: it
    // stays Ready (CA sees it Running; its --scale-down-unready-time decides), power untouched.
    row(P::Ready, E::ReadyLost, &[], P::Ready, Action::NoteLost, "nodeLostSince, warning Event NodeNotReady; power untouched"),
    row(P::Ready, E::NodeGone, &[], P::Ready, Action::NoteLost, "nodeLostSince, warning Event NodeGone; power untouched"),
    row(P::Ready, E::RemediationDue, &[RemediationTimeReached], P::PoweringOff, Action::PowerCycle, "power-cycle: Cordon, StartPowerOff(off-<n>), warning Event; desired stays on, so Off powers it on again"),
    // PoweringOff: cordoned, action issued, waiting for evidence (Node NotReady or gone).
    row(P::PoweringOff, E::DesiredOn, &[ActionPending], P::PoweringOn, START_ON_FRESH, "CancelOperation(off-<n>), StartPowerOn(on-<n+1>), Event"),
    // The power-off action is done but the machine may still be shutting down (a power-on sent
    // now would be lost): finish the power-off, then Off powers it on.
    row(P::PoweringOff, E::DesiredOn, &[ActionDone], P::PoweringOff, Action::RecordGoal, "record goal on: the power-off finishes (Node NotReady or gone), then Off powers on"),
    row(P::PoweringOff, E::DesiredOff, &[], P::PoweringOff, Action::RecordGoal, "none"),
    row(P::PoweringOff, E::ActionSucceeded, &[], P::PoweringOff, Action::MarkDone, "operation completed; wait for the Node to go NotReady or away"),
    row(P::PoweringOff, E::ActionFailed, &[AttemptsLeft], P::Failed, Action::Fail, FAIL_RETRY),
    row(P::PoweringOff, E::ActionFailed, &[AttemptsExhausted], P::Failed, Action::Fail, FAIL_GIVE_UP),
    row(P::PoweringOff, E::ActionMissing, &[ActionPending], P::PoweringOff, Action::Reissue, "StartPowerOff(same id) again"),
    row(P::PoweringOff, E::NodeNotReady, &[], P::Off, Action::ConfirmOff, "CancelOperation if still running, DeleteNode, observed off, Event"),
    row(P::PoweringOff, E::NodeGone, &[ActionDone], P::Off, Action::ConfirmOff, "DeleteNode (idempotent), observed off, Event"),
    row(P::PoweringOff, E::NodeGone, &[ActionPending], P::PoweringOff, Action::Nothing, "none: wait for the action"),
    row(P::PoweringOff, E::ShutdownDeadlinePassed, &[DeadlinePassed, AttemptsLeft], P::Failed, Action::Fail, FAIL_RETRY),
    row(P::PoweringOff, E::ShutdownDeadlinePassed, &[DeadlinePassed, AttemptsExhausted], P::Failed, Action::Fail, FAIL_GIVE_UP),
    // Failed: waiting for nextRetryTime, a changed desire, a manual retry or late evidence.
    row(P::Failed, E::DesiredOn, &[GoalNotOn], P::PoweringOn, START_ON_FRESH, "attempt=0, StartPowerOn(on-<n>), Event"),
    row(P::Failed, E::DesiredOn, &[GoalOn], P::Failed, Action::RecordGoal, "none"),
    row(P::Failed, E::DesiredOff, &[GoalNotOff, NoPods], P::PoweringOff, START_OFF_FRESH, "attempt=0, Cordon, StartPowerOff(off-<n>), Event"),
    row(P::Failed, E::DesiredOff, &[GoalNotOff, PodsPresent], P::Failed, Action::DrainFirst, "Cordon, Drain (evict, honouring PDBs); power-off waits for no pods"),
    row(P::Failed, E::DesiredOff, &[GoalOff, NoPods], P::Failed, Action::RecordGoal, "none"),
    // Derived before a retry (by backoff or by hand) while pods run on the Node.
    row(P::Failed, E::DesiredOff, &[GoalOff, PodsPresent], P::Failed, Action::DrainFirst, "Cordon, Drain (evict, honouring PDBs); the retry waits for no pods"),
    row(P::Failed, E::RetryDue, &[RetryTimeReached, GoalOn], P::PoweringOn, START_ON, "StartPowerOn(on-<n>), Event"),
    row(P::Failed, E::RetryDue, &[RetryTimeReached, GoalOff], P::PoweringOff, START_OFF, "Cordon, StartPowerOff(off-<n>), Event"),
    row(P::Failed, E::ManualRetry, &[GoalOn], P::PoweringOn, START_ON_FRESH, "attempt=0, StartPowerOn(on-<n>), Event"),
    row(P::Failed, E::ManualRetry, &[GoalOff], P::PoweringOff, START_OFF_FRESH, "attempt=0, Cordon, StartPowerOff(off-<n>), Event"),
    row(P::Failed, E::NodeReady, &[GoalOn], P::Ready, Action::BecomeReady, "Uncordon, observed on, Event"),
    row(P::Failed, E::NodeReady, &[GoalNotOn], P::Failed, Action::Nothing, "none: still on, power-off failed"),
    row(P::Failed, E::NodeNotReady, &[GoalOff], P::Off, Action::ConfirmOff, "DeleteNode, observed off, Event"),
    row(P::Failed, E::NodeNotReady, &[GoalNotOff], P::Failed, Action::Nothing, "none"),
    row(P::Failed, E::NodeGone, &[GoalOff], P::Off, Action::ConfirmOff, "observed off, Event"),
    row(P::Failed, E::NodeGone, &[GoalNotOff], P::Failed, Action::Nothing, "none"),
];
