//! Views of a lifecycle for others: the Go predecessor's `status.progress` / `powerState`,
//! and what the CA provider reports. Pure functions of the persisted lifecycle.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::types::{Lifecycle, Phase, PowerState};

/// The predecessor's `status.progress` values (kept so its tooling keeps working).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StatusProgress {
    Shutdown,
    StartingUp,
    Ready,
    ShuttingDown,
}

impl StatusProgress {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusProgress::Shutdown => "shutdown",
            StatusProgress::StartingUp => "startingup",
            StatusProgress::Ready => "ready",
            StatusProgress::ShuttingDown => "shuttingdown",
        }
    }
}

/// `status.progress` for a lifecycle; `None` while Unknown. A Failed machine shows the
/// direction it is still trying to go.
pub fn progress(lc: &Lifecycle) -> Option<StatusProgress> {
    Some(match lc.phase() {
        Phase::Unknown => return None,
        Phase::Off => StatusProgress::Shutdown,
        Phase::PoweringOn | Phase::Booting => StatusProgress::StartingUp,
        Phase::Ready => StatusProgress::Ready,
        Phase::PoweringOff => StatusProgress::ShuttingDown,
        Phase::Failed => match lc.goal {
            Some(PowerState::Off) => StatusProgress::ShuttingDown,
            _ => StatusProgress::StartingUp,
        },
    })
}

/// Observed `status.powerState`: `on` once the power-on action is done (Booting) until the
/// machine is confirmed off; `None` while Unknown. A Failed machine counts as still on when a
/// power-off failed, as off when a power-on failed.
pub fn observed_power(lc: &Lifecycle) -> Option<PowerState> {
    Some(match lc.phase() {
        Phase::Unknown => return None,
        Phase::Off | Phase::PoweringOn => PowerState::Off,
        Phase::Booting | Phase::Ready | Phase::PoweringOff => PowerState::On,
        Phase::Failed => match lc.goal {
            Some(PowerState::Off) => PowerState::On,
            _ => PowerState::Off,
        },
    })
}

/// Whether the machine counts in its group's target size (docs/ca-contract.md, rule 3): its desired
/// state is on. A machine found on is adopted through `Effect::AdoptAsWantedOn`, which makes
/// the caller write desired on, so the desired state is the single source.
pub fn counts_as_wanted_on(_lc: &Lifecycle, desired: PowerState) -> bool {
    desired == PowerState::On
}

/// How CA should see a machine in `NodeGroupNodes` (docs/ca-contract.md, rule 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Creating,
    Running,
    Deleting,
}

/// One machine as an instance for CA: `None` for an idle powered-off spare (never listed).
/// `error` is set while a power-on attempt has failed (CA then backs the group off and deletes
/// the instance); a machine that came up is Running whatever its Node does since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceView<'a> {
    pub state: InstanceState,
    pub error: Option<&'a str>,
}

/// The instance CA should see for a machine with lifecycle `lc` and desired state `desired`.
pub fn instance_view(lc: &Lifecycle, desired: PowerState) -> Option<InstanceView<'_>> {
    let phase = lc.phase();
    let error =
        (desired == PowerState::On && phase == Phase::Failed && lc.goal != Some(PowerState::Off))
            .then(|| lc.last_error.as_deref().unwrap_or("power-on failed"));
    let state = match (desired, phase) {
        (PowerState::On, Phase::Ready) => InstanceState::Running,
        (PowerState::On, _) => InstanceState::Creating,
        (PowerState::Off, Phase::Off | Phase::Unknown) => return None,
        (PowerState::Off, _) => InstanceState::Deleting,
    };
    Some(InstanceView { state, error })
}
