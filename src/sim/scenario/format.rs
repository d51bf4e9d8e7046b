//! The scenario file as written: the serde shapes of its YAML, with the defaults serde fills in.
//! Unknown fields are errors (`deny_unknown_fields`), so a typo is reported at its line.
use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::ScenarioError;
use crate::operator::api::{Group, GroupSpec, Machine, MachineSpec, MaintenancePower, Watts};
use crate::operator::machine::BootStats;
use crate::sim::cluster::SchedulerPolicy;
use crate::sim::units::{Cpu, Distribution, Duration, Memory, Millis, Probability};
use crate::sim::workload::WorkloadSpec;

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ScenarioFile {
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) seed: Option<u64>,
    pub(super) duration: Duration,
    /// Wall-clock start of virtual time (default 2026-01-05T00:00:00Z, a Monday midnight).
    #[serde(default)]
    pub(super) start: Option<Timestamp>,
    #[serde(default)]
    pub(super) electricity: Electricity,
    #[serde(default)]
    pub(super) autoscaler: AutoscalerFile,
    #[serde(default)]
    pub(super) scheduler: SchedulerPolicy,
    /// Defaults for every machine's `simulation:` block.
    #[serde(default)]
    pub(super) simulation: MachineSimulation,
    /// Required unless the groups and machines come from a cluster (`--from-cluster`).
    #[serde(default)]
    pub(super) groups: Vec<GroupDoc>,
    #[serde(default)]
    pub(super) machines: Vec<MachineDoc>,
    pub(super) workload: Vec<WorkloadSpec>,
    /// DaemonSets: one pod of each on every node.
    #[serde(default)]
    pub(super) daemon_sets: Vec<DaemonSetSpec>,
    /// Machines in maintenance during the run.
    #[serde(default)]
    pub(super) maintenance: Vec<MaintenanceFile>,
}

/// A maintenance of one machine: `from` and `to` are offsets from the start of the run, as a
/// workload's `at` (e.g. `{machine: tower-1, from: 50h, to: 54h, power: "off"}`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct MaintenanceFile {
    /// The Node CR's name (`namespace/name` when names repeat across namespaces).
    pub(super) machine: String,
    pub(super) from: Duration,
    /// Default: until the end of the run.
    #[serde(default)]
    pub(super) to: Option<Duration>,
    /// `keep` (default), `on` or `off`, as the Node CR's `spec.maintenance.power`.
    #[serde(default)]
    pub(super) power: MaintenancePower,
    #[serde(default)]
    pub(super) reason: Option<String>,
}

/// A DaemonSet's pod requests.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonSetSpec {
    pub name: String,
    pub cpu: Cpu,
    pub memory: Memory,
}

/// Electricity price: `pricePerKWh`, or during each `timeOfUse` window (time of day, UTC)
/// that window's price.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Electricity {
    #[serde(default = "default_price", rename = "pricePerKWh")]
    pub price_per_kwh: f64,
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time_of_use: Vec<Tariff>,
    /// Offset of the run's start from midnight UTC (set from `start`).
    #[serde(skip)]
    pub start_of_day: Millis,
}

/// A time-of-use window: `[from, to)` as offsets from midnight UTC.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tariff {
    pub from: Duration,
    pub to: Duration,
    #[serde(rename = "pricePerKWh")]
    pub price_per_kwh: f64,
}

fn default_price() -> f64 {
    0.30
}

fn default_currency() -> String {
    "EUR".to_owned()
}

impl Default for Electricity {
    fn default() -> Self {
        Electricity {
            price_per_kwh: default_price(),
            currency: default_currency(),
            time_of_use: Vec::new(),
            start_of_day: 0,
        }
    }
}

/// CA's expanders (the flag `--expander`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expander {
    #[default]
    LeastWaste,
    MostPods,
    Price,
    Random,
    Priority,
}

impl Expander {
    const ALL: [Expander; 5] = [
        Expander::LeastWaste,
        Expander::MostPods,
        Expander::Price,
        Expander::Random,
        Expander::Priority,
    ];

    fn name(self) -> &'static str {
        match self {
            Expander::LeastWaste => "least-waste",
            Expander::MostPods => "most-pods",
            Expander::Price => "price",
            Expander::Random => "random",
            Expander::Priority => "priority",
        }
    }
}

impl fmt::Display for Expander {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// CA's `--expander` value: one expander or a comma-separated chain, each narrowing the options
/// of the one before; ties left at the end are broken at random (`expander/factory/chain.go`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct ExpanderChain(pub Vec<Expander>);

impl Default for ExpanderChain {
    fn default() -> Self {
        ExpanderChain(vec![Expander::LeastWaste])
    }
}

impl fmt::Display for ExpanderChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|e| e.name()).collect();
        f.write_str(&names.join(","))
    }
}

impl From<ExpanderChain> for String {
    fn from(c: ExpanderChain) -> String {
        c.to_string()
    }
}

impl ExpanderChain {
    pub fn contains(&self, e: Expander) -> bool {
        self.0.contains(&e)
    }

    fn parse(s: &str) -> Result<ExpanderChain, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            let Some(e) = Expander::ALL.into_iter().find(|e| e.name() == part) else {
                return Err(format!(
                    "{part:?} is not an expander; expected a comma-separated list of {}",
                    Expander::ALL.map(Expander::name).join(", ")
                ));
            };
            out.push(e);
        }
        Ok(ExpanderChain(out))
    }
}

impl<'de> Deserialize<'de> for ExpanderChain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ExpanderChain::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AutoscalerFile {
    pub(super) scan_interval: Option<Duration>,
    pub(super) scale_down_unneeded_time: Option<Duration>,
    pub(super) scale_down_utilization_threshold: Option<f64>,
    pub(super) scale_down_delay_after_add: Option<Duration>,
    pub(super) scale_down_delay_after_failure: Option<Duration>,
    pub(super) scale_down_delay_after_delete: Option<Duration>,
    pub(super) max_node_provision_time: Option<Duration>,
    pub(super) scale_down_enabled: Option<bool>,
    pub(super) expander: Option<ExpanderChain>,
    /// Group name → priority (higher wins), for the `priority` expander.
    #[serde(default)]
    pub(super) priorities: BTreeMap<String, i32>,
    pub(super) backoff: Option<BackoffFile>,
    pub(super) max_nodes_total: Option<u32>,
    pub(super) max_scale_down_parallelism: Option<u32>,
    pub(super) max_drain_parallelism: Option<u32>,
    pub(super) scale_down_unready_enabled: Option<bool>,
    pub(super) scale_down_unready_time: Option<Duration>,
    pub(super) unremovable_node_recheck_timeout: Option<Duration>,
    #[serde(rename = "ignoreDaemonSetsUtilization")]
    pub(super) ignore_daemonsets_utilization: Option<bool>,
    pub(super) skip_nodes_with_system_pods: Option<bool>,
    pub(super) skip_nodes_with_local_storage: Option<bool>,
    pub(super) skip_nodes_with_custom_controller_pods: Option<bool>,
    pub(super) blocking_system_pod_disruption_timeout: Option<Duration>,
    pub(super) node_delete_delay_after_taint: Option<Duration>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct BackoffFile {
    pub(super) initial: Duration,
    pub(super) max: Duration,
    /// CA's `--node-group-backoff-reset-timeout`.
    #[serde(default)]
    pub(super) reset_timeout: Option<Duration>,
}

/// A Group in its CRD shape (`status` is accepted and ignored, so `kubectl get -o yaml`
/// output works).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct GroupDoc {
    #[serde(default)]
    pub(super) api_version: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    pub(super) metadata: ObjectMeta,
    #[serde(default)]
    pub(super) spec: GroupSpec,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) status: Option<serde_yaml::Value>,
}

/// A Node CR in its CRD shape plus the simulator's `simulation:` block.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct MachineDoc {
    #[serde(default)]
    pub(super) api_version: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    pub(super) metadata: ObjectMeta,
    pub(super) spec: MachineSpec,
    #[serde(default)]
    #[allow(dead_code)]
    pub(super) status: Option<serde_yaml::Value>,
    #[serde(default)]
    pub(super) simulation: MachineSimulation,
    /// The boots the operator recorded (`status.recentBootSeconds`, read from a cluster): the
    /// simulated machine starts with them, so `bootTimeout: auto` starts from what it learned.
    #[serde(skip)]
    pub(super) recent_boots: Vec<u32>,
}

/// Per-machine simulation parameters (every field optional: the top-level `simulation:`
/// block gives defaults).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineSimulation {
    /// From the power-on action being done to the Node being Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_time: Option<Distribution>,
    /// From the power-off action being done to the machine being off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Distribution>,
    /// How long a power action (Job, WoL packet, BMC call) takes to report done (default by
    /// driver, see [`driver_action_time`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_action_time: Option<Distribution>,
    /// Chance that the OS ignores a Redfish `GracefulShutdown`, so the BMC's `ForceOff` follows
    /// after `spec.power.powerOff.redfish.forceOffAfter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_shutdown_ignored: Option<Probability>,
    /// Chance that a power-on action fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_on_failure: Option<Probability>,
    /// Chance that a machine whose power-on succeeded never becomes Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never_boots: Option<Probability>,
    /// Chance that a power-off action fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_off_failure: Option<Probability>,
    /// Power draw; fields left out come from `spec.watts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watts: Option<Watts>,
    /// Power draw while booting (a surge: disks spinning up, fans at full speed); default idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_watts: Option<f64>,
    /// Capacity; fields left out come from `spec.capacity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacityFile>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CapacityFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<u32>,
}

impl MachineSimulation {
    /// This machine's block over the top-level defaults `d`, field by field.
    pub(super) fn or(self, d: &MachineSimulation) -> MachineSimulation {
        MachineSimulation {
            boot_time: self.boot_time.or(d.boot_time),
            shutdown_time: self.shutdown_time.or(d.shutdown_time),
            power_action_time: self.power_action_time.or(d.power_action_time),
            graceful_shutdown_ignored: self
                .graceful_shutdown_ignored
                .or(d.graceful_shutdown_ignored),
            power_on_failure: self.power_on_failure.or(d.power_on_failure),
            never_boots: self.never_boots.or(d.never_boots),
            boot_watts: self.boot_watts.or(d.boot_watts),
            power_off_failure: self.power_off_failure.or(d.power_off_failure),
            watts: match (self.watts, d.watts) {
                (Some(w), Some(dw)) => Some(Watts {
                    idle: w.idle.or(dw.idle),
                    busy: w.busy.or(dw.busy),
                    standby: w.standby_watts().or(dw.standby_watts()),
                    legacy_off: None,
                    boot: w.boot.or(dw.boot),
                    shutdown: w.shutdown.or(dw.shutdown),
                }),
                (w, dw) => w.or(dw),
            },
            capacity: match (self.capacity, &d.capacity) {
                (Some(c), Some(dc)) => Some(CapacityFile {
                    cpu: c.cpu.or(dc.cpu),
                    memory: c.memory.or(dc.memory),
                    pods: c.pods.or(dc.pods),
                }),
                (c, dc) => c.or_else(|| dc.clone()),
            },
        }
    }
}

impl ScenarioFile {
    /// Parses the YAML; a syntax or shape error names the file, line and field.
    pub(super) fn parse(file: &str, text: &str) -> Result<ScenarioFile, ScenarioError> {
        serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))
    }
}

fn yaml_error(file: &str, e: &serde_yaml::Error) -> ScenarioError {
    let mut message = e.to_string();
    let (line, column) = match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
            (Some(loc.line()), Some(loc.column()))
        }
        None => (None, None),
    };
    // serde_yaml puts the field path first (`machines[2].simulation.bootTime: ...`).
    let (field, message) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') && (path.contains('.') || path.contains('[')) => {
            (path.to_owned(), rest.to_owned())
        }
        _ => (String::new(), message),
    };
    ScenarioError {
        file: file.to_owned(),
        line,
        column,
        field,
        message,
    }
}

/// A Group read from a cluster, in the shape a scenario file gives it.
impl From<Group> for GroupDoc {
    fn from(g: Group) -> GroupDoc {
        GroupDoc {
            api_version: None,
            kind: None,
            metadata: g.metadata,
            spec: g.spec,
            status: None,
        }
    }
}

impl MachineDoc {
    /// A Node CR read from a cluster, with what its status observed: the power state it is in,
    /// the capacity its Kubernetes Node reported (when the spec gives none) and boot times
    /// from its recorded boots.
    pub(super) fn observed(m: Machine) -> MachineDoc {
        let mut spec = m.spec;
        let mut simulation = MachineSimulation::default();
        let mut recent_boots = Vec::new();
        if let Some(status) = &m.status {
            // Boot times as the operator learned them (`status.recentBootSeconds`, summed up
            // by `BootStats` as `fsm inspect` shows them): p50 and p95.
            if let Some(stats) = BootStats::of(&status.recent_boot_seconds) {
                let ms = |d: jiff::SignedDuration| u64::try_from(d.as_millis()).unwrap_or(0);
                simulation.boot_time =
                    Some(Distribution::from_p50_p95(ms(stats.p50), ms(stats.p95)));
            }
            recent_boots.clone_from(&status.recent_boot_seconds);
            if let Some(observed) = status.power_state {
                spec.power_state = observed;
            }
            // A meter's measured draw, when the operator counts by it: its current watts as
            // the idle figure (busy and the rest stay the spec's).
            if let Some(e) = status
                .energy
                .as_deref()
                .filter(|e| e.source == Some(crate::operator::api::EnergySource::Meter))
                && let Some(w) = e.watts.filter(|w| w.is_finite() && *w >= 0.0)
            {
                simulation.watts = Some(Watts {
                    idle: Some(w),
                    ..Watts::default()
                });
            }
            if spec.capacity.is_empty()
                && let Some(node) = &status.node
            {
                let shape = if node.allocatable.is_empty() {
                    &node.capacity
                } else {
                    &node.allocatable
                };
                spec.capacity = shape
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_owned(),
                            k8s_openapi::apimachinery::pkg::api::resource::Quantity(v.to_owned()),
                        )
                    })
                    .collect();
            }
        }
        MachineDoc {
            api_version: None,
            kind: None,
            metadata: m.metadata,
            spec,
            status: None,
            simulation,
            recent_boots,
        }
    }
}

#[cfg(test)]
mod observed_energy_tests {
    use super::*;
    use crate::operator::api::{EnergyCounters, EnergySource, MachineStatus};

    fn machine(source: EnergySource) -> Machine {
        let mut spec = MachineSpec::new(crate::operator::machine::PowerState::Off);
        spec.watts = Some(Watts {
            idle: Some(12.0),
            busy: Some(40.0),
            ..Watts::default()
        });
        Machine {
            metadata: ObjectMeta::default(),
            spec,
            status: Some(MachineStatus {
                energy: Some(Box::new(EnergyCounters {
                    watts: Some(17.5),
                    source: Some(source),
                    ..EnergyCounters::default()
                })),
                ..MachineStatus::default()
            }),
        }
    }

    #[test]
    fn a_metered_machine_simulates_at_its_measured_idle_draw_and_a_modelled_one_at_its_spec() {
        let metered = MachineDoc::observed(machine(EnergySource::Meter));
        assert_eq!(
            metered.simulation.watts.and_then(|w| w.idle),
            Some(17.5),
            "the meter's watts as the idle figure"
        );
        assert_eq!(metered.spec.watts.and_then(|w| w.busy), Some(40.0));
        let modelled = MachineDoc::observed(machine(EnergySource::Model));
        assert_eq!(modelled.simulation.watts, None);
    }
}
