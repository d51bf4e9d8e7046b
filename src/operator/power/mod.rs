//! Power drivers: how one machine is switched on or off. The lifecycle core decides *when*
//! (`Effect::StartPowerOn` / `StartPowerOff` / `CancelOperation`); a driver only carries out the
//! action and reports what the world says about it, so every driver fits the same three calls.
//!
//! Crash safety: a driver keeps no state of its own. Everything it needs comes from the Node CR
//! (spec and the operation recorded in status) and the world (the Job, the BMC's readback), so a
//! restarted or newly elected operator calls `check` and carries on (docs/architecture.md, "Machine
//! lifecycle").
pub mod http;
pub mod ipmi;
pub mod job;
pub mod redfish;
pub mod secret;
pub mod tls;
pub(crate) mod web;
pub mod wol;

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;

use crate::operator::api::{Direction, Machine};
use crate::operator::machine::{Operation, PowerState};

/// What the world says about the operation in flight (fed to the FSM as `OpStatus`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpProgress {
    /// No trace of the operation (e.g. its Job does not exist, or the driver has no readback and
    /// cannot tell): the FSM re-issues it.
    Absent,
    Running,
    /// The power action is done. For power-on the FSM still waits for the Node to be Ready.
    Succeeded,
    /// The action failed; `reason` is shown in status and Events, so it never holds a secret.
    Failed {
        reason: String,
    },
}

/// A driver's answer to `start` or `check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub progress: OpProgress,
    /// The power state the hardware reports (Redfish `PowerState`, an HTTP status URL), when the
    /// driver can read it back. Recorded in status and shown by `fsm inspect`.
    pub readback: Option<PowerState>,
    /// Something worth an Event, e.g. "GracefulShutdown ignored for 2m, sent ForceOff".
    pub note: Option<String>,
    /// Look again this soon even if nothing in the cluster changes (drivers without a watchable
    /// object, e.g. a BMC whose PowerState is polled).
    pub recheck_after: Option<Duration>,
    /// The driver cut the power hard (Redfish `ForceOff`, after an ignored `GracefulShutdown` or
    /// at once with `forceOffAfter: 0s`): recorded in `status.power.escalated`, sent as a Warning
    /// Event.
    pub escalated: bool,
    /// The start was accepted, and what by (a Job's uid): recorded in
    /// `status.power.accepted`.
    pub accepted: Option<String>,
}

impl Report {
    pub fn new(progress: OpProgress) -> Report {
        Report {
            progress,
            readback: None,
            note: None,
            recheck_after: None,
            escalated: false,
            accepted: None,
        }
    }

    /// Marks the start as accepted by `by` (see [`Report::accepted`]).
    pub fn accepted(mut self, by: Option<String>) -> Report {
        self.accepted = by;
        self
    }

    /// Marks the report of a hard power-off sent after a soft one (see [`Report::escalated`]).
    pub fn escalated(mut self) -> Report {
        self.escalated = true;
        self
    }

    pub fn with_readback(mut self, state: Option<PowerState>) -> Report {
        self.readback = state;
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Report {
        self.note = Some(note.into());
        self
    }

    pub fn recheck_after(mut self, after: Duration) -> Report {
        self.recheck_after = Some(after);
        self
    }
}

/// The operation a driver acts on, for one machine.
#[derive(Clone, Copy, Debug)]
pub struct OpContext<'a> {
    pub machine: &'a Machine,
    pub direction: Direction,
    pub op: &'a Operation,
    /// Deterministic name for objects the driver creates (Jobs): `operation_resource_name`,
    /// shortened to fit a label value.
    pub resource_name: &'a str,
    pub now: Timestamp,
    /// Whether this replica may act, read right before each call or object that switches
    /// power (`None`: not fenced, e.g. a test or a single replica).
    pub fence: Option<&'a crate::operator::leader::Leadership>,
}

impl OpContext<'_> {
    /// Fails (transiently) unless this replica leads at this moment, read against the clock:
    /// called right before the call, packet or Job that switches power, so a replica paused
    /// past its Lease mid-call (between reading a BMC and resetting it) does not act once it
    /// runs again.
    pub fn ensure_leader(&self) -> Result<(), PowerError> {
        match self.fence {
            Some(l) if !l.is_leader() => Err(PowerError::Transient(
                "not acting: this replica's Lease has run out".to_owned(),
            )),
            _ => Ok(()),
        }
    }
}

/// Why a driver could not act. Rendered into status/Events: never includes secret values.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// Transient (API server or endpoint unreachable, timeout): retried on the next reconcile
    /// without counting as a failed attempt.
    #[error("{0}")]
    Transient(String),
    /// The configuration cannot work (missing Secret key, driver not built yet, bad URL): the
    /// operation fails with this reason.
    #[error("{0}")]
    Config(String),
}

/// One way of switching a machine on or off. Implementations are cheap to build per call from
/// the Node CR's spec; they hold clients and settings, never per-operation state.
pub trait Driver: Send + Sync {
    /// Short name for logs, metrics and `fsm inspect` (`job`, `wakeOnLan`, ...).
    fn kind(&self) -> &'static str;

    /// Start the action. Idempotent: starting an operation that already runs (same
    /// `op.id`) adopts it instead of acting twice.
    fn start(&self, cx: &OpContext<'_>) -> impl Future<Output = Result<Report, PowerError>> + Send;

    /// What the world says about the operation now.
    fn check(&self, cx: &OpContext<'_>) -> impl Future<Output = Result<Report, PowerError>> + Send;

    /// Stop the operation if it still runs, so it cannot act late. Absent is fine.
    fn cancel(&self, cx: &OpContext<'_>) -> impl Future<Output = Result<(), PowerError>> + Send;
}
