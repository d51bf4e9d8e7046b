//! Lifecycle state persisted in a Node CR's `status`, shared by the FSM, the API types,
//! the provider core and the simulator. Everything the FSM needs lives here so a restarted
//! or newly elected operator re-derives it from the API server.
use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Power state, desired (`spec.powerState`) or observed (`status.powerState`).
/// Lowercase on the wire, as in the Go predecessor's CRDs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
}

/// Lifecycle phase of one machine.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
pub enum Phase {
    /// Just created or adopted: derived from the cluster on the first reconcile.
    #[default]
    Unknown,
    Off,
    /// A power-on action is issued and not yet confirmed done.
    PoweringOn,
    /// The power-on action is done; waiting for the Node object to be Ready with the right providerID.
    Booting,
    Ready,
    /// Cordoned, power-off action issued, waiting for power-off evidence.
    PoweringOff,
    /// Gave up or waiting to retry; see `lastError` and `nextRetryTime`.
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Unknown,
        Phase::Off,
        Phase::PoweringOn,
        Phase::Booting,
        Phase::Ready,
        Phase::PoweringOff,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unknown => "Unknown",
            Phase::Off => "Off",
            Phase::PoweringOn => "PoweringOn",
            Phase::Booting => "Booting",
            Phase::Ready => "Ready",
            Phase::PoweringOff => "PoweringOff",
            Phase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way a power operation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OperationKind {
    PowerOn,
    PowerOff,
}

/// The one power operation in flight for a machine (never more than one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub kind: OperationKind,
    /// Deterministic per machine and attempt, so a restarted operator adopts the Job it
    /// created instead of creating a second one.
    pub id: String,
    pub started: Timestamp,
    /// When the operation (including boot or shutdown) is given up on.
    pub deadline: Timestamp,
    /// When the power action itself reported success (a power-on stays recorded through
    /// `Booting`; a power-off until the node is gone or NotReady). `None` while it runs, so a
    /// cancel is only needed then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Timestamp>,
}

/// The lifecycle part of a Node CR's status (flattened into it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<Timestamp>,
    /// Failed attempts at the current desired state; reset when it is reached or changes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Timestamp>,
    /// The desired power state the lifecycle is driving toward: the last `spec.powerState`
    /// the FSM acted on (or `on` after adopting a machine found running). Lets the FSM tell a
    /// changed desire from a repeated one, and which way a retry goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<PowerState>,
    /// Number of power operations ever started for this machine; operation ids are
    /// `on-<n>` / `off-<n>`, so an id is never reused across power cycles.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub operation_seq: u64,
    /// When a power-on last failed (the action failed or no Ready Node by the boot deadline);
    /// cleared when the machine next comes up Ready. Unlike `attempt` it survives desired-state
    /// changes, so the provider can prefer other machines over one that just failed to boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_power_on_failure: Option<Timestamp>,
    /// Since when a Ready machine's Node has been NotReady past the grace period or gone: the
    /// current NotReady episode, recorded once (one warning Event) and cleared when the Node is
    /// Ready again or the machine is off. The machine stays Ready for CA meanwhile (CA's
    /// `--scale-down-unready-time` decides); with remediation on it is power-cycled after
    /// `Policy::remediate_after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_lost_since: Option<Timestamp>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        self.phase.unwrap_or_default()
    }
}
