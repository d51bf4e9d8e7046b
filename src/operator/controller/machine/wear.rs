//! The machine controller's part of wear limits and quiet hours: record when a power-on
//! starts (`status.recentBootStarts`, with a warning Event when it passes
//! `wear.maxBootsPerDay`), and whether quiet hours hold power-offs now (the Node then carries
//! CA's `scale-down-disabled` annotation) and when that next changes (the reconcile requeues
//! then). The decisions are `operator::policy::wear`'s.
use jiff::Timestamp;

use crate::operator::api::{Group, Machine, MachineStatus};
use crate::operator::machine::{KubeEvent, OperationKind};
use crate::operator::policy::wear::{self, GroupWear, MachineWear};
use crate::operator::provider::convert::{group_wear, machine_wear};

/// Event reason: a power-on passed the machine's `wear.maxBootsPerDay`.
pub const REASON_BOOT_LIMIT_PASSED: &str = "BootLimitPassed";

/// The wear of one machine as this reconcile reads it.
pub(super) struct WearNow {
    group: Option<GroupWear>,
    own: Option<MachineWear>,
}

impl WearNow {
    pub(super) fn read(m: &Machine, group: Option<&Group>) -> WearNow {
        WearNow {
            group: group.and_then(group_wear),
            own: machine_wear(m),
        }
    }

    /// Quiet hours hold this machine's power-offs at `now`.
    pub(super) fn holds_power_off(&self, now: Timestamp) -> bool {
        wear::machine_holds_power_off(self.group.as_ref(), self.own.as_ref(), now)
    }

    /// When the quiet window in force next changes (`None`: no quiet hours).
    pub(super) fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        let (quiet, tz) = wear::machine_quiet(self.group.as_ref(), self.own.as_ref())?;
        quiet.next_change(tz, now)
    }

    /// Records the start of the power-on `status` holds, once per operation, into
    /// `status.recentBootStarts`; the Event to send when it passed the limit.
    pub(super) fn record_power_on(
        &self,
        status: &mut MachineStatus,
        now: Timestamp,
    ) -> Option<KubeEvent> {
        let op = status
            .lifecycle
            .operation
            .as_ref()
            .filter(|o| o.kind == OperationKind::PowerOn)?;
        let started = op.started;
        let limit = wear::machine_limit(self.group.as_ref(), self.own.as_ref());
        let before = wear::boots_in_day(&status.recent_boot_starts, started);
        let recorded = wear::record_boot_start(&status.recent_boot_starts, started, limit, now)?;
        status.recent_boot_starts = recorded;
        let limit = limit.filter(|l| before >= *l)?;
        Some(KubeEvent {
            reason: REASON_BOOT_LIMIT_PASSED,
            warning: true,
            message: wear::limit_passed_message(before, limit),
        })
    }
}
