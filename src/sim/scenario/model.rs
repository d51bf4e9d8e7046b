//! The validated scenario the engine runs: every default applied, every reference resolved to
//! an index, every quantity in the simulator's units (millicores, bytes, milliseconds).
use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use super::format::{Electricity, ExpanderChain};
use crate::operator::api::{Direction, Group, Machine, MachineSpec, PowerDriver, Watts};
use crate::sim::cluster::SchedulerPolicy;
use crate::sim::schedule::Quiet;
use crate::sim::units::{Distribution, HOUR, MINUTE, Millis, SECOND};
use crate::sim::workload::Workload;

/// Prices over virtual time. (`Electricity` is used as the file gives it, see `format.rs`;
/// `start_of_day` is set by validation.)
impl Electricity {
    /// The tariff of the operator's energy core (`operator::energy::Tariff`): the windows as
    /// times of day in UTC.
    pub fn tariff(&self) -> crate::operator::energy::Tariff {
        use crate::operator::energy::{Tariff, Window};
        let ms =
            |m: Millis| jiff::SignedDuration::from_millis(i64::try_from(m).unwrap_or(i64::MAX));
        Tariff {
            windows: self
                .time_of_use
                .iter()
                .map(|t| Window {
                    from: ms(t.from.0),
                    to: ms(t.to.0),
                    price_per_kwh: t.price_per_kwh,
                })
                .collect(),
            ..Tariff::flat(self.price_per_kwh, &self.currency)
        }
    }

    /// Cost of drawing `watts` over virtual time `[from, to)`, by the operator's energy core
    /// (`operator::energy::cost`): virtual time `t` is `start_of_day + t` after a UTC midnight.
    pub fn cost(&self, from: Millis, to: Millis, watts: f64) -> f64 {
        if self.time_of_use.is_empty() || watts == 0.0 {
            return watts * (to.saturating_sub(from)) as f64 / HOUR as f64 / 1000.0
                * self.price_per_kwh;
        }
        let at = |t: Millis| {
            let ms = i64::try_from(self.start_of_day.saturating_add(t)).unwrap_or(i64::MAX);
            Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_millis(ms)
        };
        crate::operator::energy::cost(&self.tariff(), at(from), at(to), watts)
    }

    /// The time-weighted mean price over `[0, end)`.
    pub fn mean_price(&self, end: Millis) -> f64 {
        if end == 0 {
            return self.price_per_kwh;
        }
        self.cost(0, end, 1000.0) / (end as f64 / HOUR as f64)
    }
}

/// CA model settings after defaults (CA's own flag defaults).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerConfig {
    pub scan_interval: Millis,
    pub scale_down_unneeded_time: Millis,
    pub scale_down_utilization_threshold: f64,
    pub scale_down_delay_after_add: Millis,
    pub scale_down_delay_after_failure: Millis,
    pub scale_down_delay_after_delete: Millis,
    pub max_node_provision_time: Millis,
    pub scale_down_enabled: bool,
    pub expander: ExpanderChain,
    pub priorities: BTreeMap<String, i32>,
    pub backoff_initial: Millis,
    pub backoff_max: Millis,
    pub backoff_reset: Millis,
    /// 0 = no limit.
    pub max_nodes_total: u32,
    pub max_scale_down_parallelism: u32,
    pub max_drain_parallelism: u32,
    pub scale_down_unready_enabled: bool,
    pub scale_down_unready_time: Millis,
    pub unremovable_node_recheck_timeout: Millis,
    pub ignore_daemonsets_utilization: bool,
    pub skip_nodes_with_system_pods: bool,
    pub skip_nodes_with_local_storage: bool,
    pub skip_nodes_with_custom_controller_pods: bool,
    pub blocking_system_pod_disruption_timeout: Millis,
    /// CA's `--node-delete-delay-after-taint`: from tainting a node to draining and deleting it.
    pub node_delete_delay_after_taint: Millis,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            scan_interval: 10 * SECOND,
            scale_down_unneeded_time: 10 * MINUTE,
            scale_down_utilization_threshold: 0.5,
            scale_down_delay_after_add: 10 * MINUTE,
            scale_down_delay_after_failure: 3 * MINUTE,
            scale_down_delay_after_delete: 0,
            max_node_provision_time: 15 * MINUTE,
            scale_down_enabled: true,
            expander: ExpanderChain::default(),
            priorities: BTreeMap::new(),
            backoff_initial: 5 * MINUTE,
            backoff_max: 30 * MINUTE,
            backoff_reset: 3 * HOUR,
            max_nodes_total: 0,
            max_scale_down_parallelism: 10,
            max_drain_parallelism: 1,
            scale_down_unready_enabled: true,
            scale_down_unready_time: 20 * MINUTE,
            unremovable_node_recheck_timeout: 5 * MINUTE,
            ignore_daemonsets_utilization: false,
            skip_nodes_with_system_pods: true,
            skip_nodes_with_local_storage: true,
            skip_nodes_with_custom_controller_pods: true,
            blocking_system_pod_disruption_timeout: HOUR,
            node_delete_delay_after_taint: 5 * SECOND,
        }
    }
}
/// A group after validation.
#[derive(Clone, Debug)]
pub struct GroupModel {
    /// The Group CR as given (the cores read it).
    pub group: Group,
    pub name: String,
    pub min: u32,
    pub max: u32,
    /// The `priority` expander's priority (0 when unlisted).
    pub priority: i32,
    /// Indexes into [`Scenario::machines`].
    pub members: Vec<usize>,
    /// `spec.schedule` in the zone `spec.timeZone` (default UTC; quiet hours follow it too),
    /// parsed by the operator's schedule policy.
    pub schedule: crate::operator::policy::schedule::Schedule,
    /// The Group's quiet hours (`spec.wear.quietHours`): they hold its power-ons.
    pub quiet: Quiet,
}

/// A machine after validation.
#[derive(Clone, Debug)]
pub struct MachineModel {
    /// The Node CR as given (the cores read it).
    pub machine: Machine,
    pub name: String,
    pub group: usize,
    pub cpu: u64,
    pub memory: u64,
    pub max_pods: u32,
    pub watts: Watts,
    pub boot_watts: Option<f64>,
    pub hourly_rate: f64,
    pub boot_time: Distribution,
    pub shutdown_time: Distribution,
    /// How long the power-on action takes to report done.
    pub power_on_action_time: Distribution,
    /// How long the power-off action takes to report done (for a Redfish power-off, before the
    /// BMC is asked: its readback waits for the shutdown itself, see [`SoftOff`]).
    pub power_off_action_time: Distribution,
    /// A power-off whose driver reads the power state back and hardens it (Redfish).
    pub soft_off: Option<SoftOff>,
    pub power_on_failure: f64,
    pub never_boots: f64,
    pub power_off_failure: f64,
    pub scale_down_disabled: bool,
    pub initially_on: bool,
    /// `wear.maxBootsPerDay` (the Node CR's over its Group's).
    pub max_boots_per_day: Option<u32>,
    /// `wear.quietHours` (the Node CR's over its Group's), in the Group's zone: they hold
    /// the machine's power-offs.
    pub quiet: Quiet,
    /// Boots recorded before the run, in seconds (`status.recentBootSeconds` of a machine
    /// read from a cluster): the start of what `bootTimeout: auto` learns from.
    pub recent_boots: Vec<u32>,
}

/// A soft power-off confirmed by readback, escalated when the OS does not comply (Redfish:
/// `GracefulShutdown`, then `ForceOff` after `forceOffAfter`). The action reports done only once
/// the machine is off: after its shutdown, or at `force_off_after` (the BMC cuts the power).
#[derive(Clone, Debug, PartialEq)]
pub struct SoftOff {
    pub force_off_after: Millis,
    /// Chance that the OS ignores the soft request.
    pub ignored: f64,
}

/// Default time a driver's action takes to report done: a Job (also a nodeAgent or a Wake-on-LAN
/// relay) is scheduled and runs, a packet is sent at once, a BMC or HTTP endpoint answers a call.
/// Without a driver (scenarios need none), a Job's.
pub fn driver_action_time(spec: &MachineSpec, direction: Direction) -> Distribution {
    match spec.power_driver("", direction) {
        Ok(PowerDriver::WakeOnLan(w)) if w.via.is_none() => Distribution::Fixed(0),
        Ok(PowerDriver::Redfish(_)) => Distribution::Fixed(2 * SECOND),
        // A few UDP exchanges (session setup, Chassis Control), then the first status poll.
        Ok(PowerDriver::Ipmi(_)) => Distribution::Fixed(SECOND),
        Ok(PowerDriver::Http(_)) => Distribution::Fixed(SECOND),
        _ => Distribution::Fixed(5 * SECOND),
    }
}

/// A validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub description: Option<String>,
    pub seed: u64,
    pub duration: Millis,
    pub start: Timestamp,
    pub electricity: Electricity,
    pub autoscaler: AutoscalerConfig,
    pub scheduler: SchedulerPolicy,
    pub groups: Vec<GroupModel>,
    pub machines: Vec<MachineModel>,
    pub workloads: Vec<Workload>,
    /// CPU (millicores) and memory (bytes) every node gives its DaemonSet pods.
    pub daemonset_cpu: u64,
    pub daemonset_memory: u64,
    /// Group fields the simulation reads but does not model, with why (shown in the report).
    pub ignored: Vec<String>,
    /// Maintenance of machines, in start order.
    pub maintenance: Vec<MaintenanceModel>,
}

/// A machine in maintenance over `[from, to)` of virtual time: drained, cordoned, left alone
/// by the Cluster Autoscaler and by the operator's picks, its power as `power` says.
#[derive(Clone, Debug, PartialEq)]
pub struct MaintenanceModel {
    pub machine: usize,
    pub from: Millis,
    /// `None`: until the end of the run.
    pub to: Option<Millis>,
    pub power: crate::operator::api::MaintenancePower,
    pub reason: Option<String>,
}

/// The default start: Monday 2026-01-05 00:00 UTC.
pub fn default_start() -> Timestamp {
    // 2026-01-05T00:00:00Z as seconds since the epoch.
    Timestamp::from_second(1_767_571_200).unwrap_or(Timestamp::UNIX_EPOCH)
}
