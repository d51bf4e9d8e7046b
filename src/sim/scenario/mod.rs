//! Scenario files: the homelab (Groups and Nodes in the CRD shapes, plus a `simulation:` block
//! per machine), the Cluster Autoscaler's settings, the workload, electricity price, duration
//! and seed. Parsing is strict (unknown fields are errors) and every error names the file, the
//! line and the field.
use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::cluster::SchedulerPolicy;
use super::locate::locate;
use super::units::{
    Cpu, DAY, Distribution, Duration, HOUR, MINUTE, Memory, Millis, Probability, SECOND, parse_cpu,
    parse_memory,
};
use super::workload::{
    Arrivals, Controller, DrainTraits, FOREVER, PodTemplate, Workload, WorkloadSpec, parse_trace,
};
use crate::operator::api::{
    Direction, FieldError, GROUP_LABEL, Group, GroupSpec, Machine, MachineSpec, PowerDriver, Watts,
};
use crate::operator::machine::PowerState;

/// The embedded default scenario: what `kubectl homelab simulate` runs without a file.
pub const DEFAULT_SCENARIO: &str = include_str!("../default-scenario.yaml");
/// Name shown in errors and reports for the embedded scenario.
pub const DEFAULT_SCENARIO_NAME: &str = "<default scenario>";

/// A scenario that does not parse or does not make sense. Rendered as
/// `file:line:column: field: problem`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The field path, e.g. `machines[2].simulation.bootTime` (empty when unknown).
    pub field: String,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
            if let Some(c) = self.column {
                write!(f, ":{c}")?;
            }
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

// ---------------------------------------------------------------------------------------------
// The file format.

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    seed: Option<u64>,
    duration: Duration,
    /// Wall-clock start of virtual time (default 2026-01-05T00:00:00Z, a Monday midnight).
    #[serde(default)]
    start: Option<Timestamp>,
    #[serde(default)]
    electricity: Electricity,
    #[serde(default)]
    autoscaler: AutoscalerFile,
    #[serde(default)]
    scheduler: SchedulerPolicy,
    /// Defaults for every machine's `simulation:` block.
    #[serde(default)]
    simulation: MachineSimulation,
    /// Required unless the groups and machines come from a cluster (`--from-cluster`).
    #[serde(default)]
    groups: Vec<GroupDoc>,
    #[serde(default)]
    machines: Vec<MachineDoc>,
    workload: Vec<WorkloadSpec>,
    /// DaemonSets: one pod of each on every node.
    #[serde(default)]
    daemon_sets: Vec<DaemonSetSpec>,
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

impl Electricity {
    /// The price at time of day `tod` and how long it holds from there.
    fn price_at(&self, tod: Millis) -> (f64, Millis) {
        let mut next = DAY;
        let mut price = self.price_per_kwh;
        for t in &self.time_of_use {
            if (t.from.0..t.to.0).contains(&tod) {
                price = t.price_per_kwh;
            }
            for edge in [t.from.0, t.to.0] {
                if edge > tod && edge < next {
                    next = edge;
                }
            }
        }
        (price, next - tod)
    }

    /// Cost of drawing `watts` over virtual time `[from, to)`.
    pub fn cost(&self, from: Millis, to: Millis, watts: f64) -> f64 {
        if self.time_of_use.is_empty() || watts == 0.0 {
            return watts * (to.saturating_sub(from)) as f64 / HOUR as f64 / 1000.0
                * self.price_per_kwh;
        }
        let mut cost = 0.0;
        let mut t = from;
        while t < to {
            let tod = (self.start_of_day + t) % DAY;
            let (price, holds) = self.price_at(tod);
            let end = to.min(t + holds.max(1));
            cost += watts * (end - t) as f64 / HOUR as f64 / 1000.0 * price;
            t = end;
        }
        cost
    }

    /// The time-weighted mean price over `[0, end)`.
    pub fn mean_price(&self, end: Millis) -> f64 {
        if end == 0 {
            return self.price_per_kwh;
        }
        self.cost(0, end, 1000.0) / (end as f64 / HOUR as f64)
    }
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
struct AutoscalerFile {
    scan_interval: Option<Duration>,
    scale_down_unneeded_time: Option<Duration>,
    scale_down_utilization_threshold: Option<f64>,
    scale_down_delay_after_add: Option<Duration>,
    scale_down_delay_after_failure: Option<Duration>,
    scale_down_delay_after_delete: Option<Duration>,
    max_node_provision_time: Option<Duration>,
    scale_down_enabled: Option<bool>,
    expander: Option<ExpanderChain>,
    /// Group name → priority (higher wins), for the `priority` expander.
    #[serde(default)]
    priorities: BTreeMap<String, i32>,
    backoff: Option<BackoffFile>,
    max_nodes_total: Option<u32>,
    max_scale_down_parallelism: Option<u32>,
    max_drain_parallelism: Option<u32>,
    scale_down_unready_enabled: Option<bool>,
    scale_down_unready_time: Option<Duration>,
    unremovable_node_recheck_timeout: Option<Duration>,
    #[serde(rename = "ignoreDaemonSetsUtilization")]
    ignore_daemonsets_utilization: Option<bool>,
    skip_nodes_with_system_pods: Option<bool>,
    skip_nodes_with_local_storage: Option<bool>,
    skip_nodes_with_custom_controller_pods: Option<bool>,
    blocking_system_pod_disruption_timeout: Option<Duration>,
    node_delete_delay_after_taint: Option<Duration>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BackoffFile {
    initial: Duration,
    max: Duration,
    /// CA's `--node-group-backoff-reset-timeout`.
    #[serde(default)]
    reset_timeout: Option<Duration>,
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

/// A Group in its CRD shape (`status` is accepted and ignored, so `kubectl get -o yaml`
/// output works).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GroupDoc {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    metadata: ObjectMeta,
    #[serde(default)]
    spec: GroupSpec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_yaml::Value>,
}

/// A Node CR in its CRD shape plus the simulator's `simulation:` block.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MachineDoc {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    metadata: ObjectMeta,
    spec: MachineSpec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_yaml::Value>,
    #[serde(default)]
    simulation: MachineSimulation,
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
    /// after `spec.power.off.redfish.forceOffAfter`.
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
    fn or(self, d: &MachineSimulation) -> MachineSimulation {
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
                    off: w.off.or(dw.off),
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

// ---------------------------------------------------------------------------------------------
// The validated model the engine runs.

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
}

/// Trace files a scenario refers to, for the caller to read (the simulator does no I/O).
pub trait TraceSource {
    /// The CSV text of `file` (as written in the scenario), or a message saying why not.
    fn read(&self, file: &str) -> Result<String, String>;
}

/// For scenarios without trace files.
pub struct NoTraceFiles;

impl TraceSource for NoTraceFiles {
    fn read(&self, file: &str) -> Result<String, String> {
        Err(format!(
            "cannot read {file:?} here; give the trace inline or run the scenario from a file"
        ))
    }
}

/// The default start: Monday 2026-01-05 00:00 UTC.
pub fn default_start() -> Timestamp {
    // 2026-01-05T00:00:00Z as seconds since the epoch.
    Timestamp::from_second(1_767_571_200).unwrap_or(Timestamp::UNIX_EPOCH)
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    /// Groups and machines came from a cluster, not from `text`.
    objects_from_cluster: bool,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
        let field = field.into();
        let from_cluster = self.objects_from_cluster
            && (field.starts_with("groups") || field.starts_with("machines"));
        let (line, column) = match locate(self.text, &field) {
            Some((l, c)) if !from_cluster => (Some(l), Some(c)),
            _ => (None, None),
        };
        let mut message = message.into();
        if from_cluster {
            message.push_str(
                " (object read from the cluster: fix the Group/Node CR, or give the value in the scenario's top-level `simulation:` block)",
            );
        }
        ScenarioError {
            file: if from_cluster {
                "cluster".to_owned()
            } else {
                self.file.to_owned()
            },
            line,
            column,
            field,
            message,
        }
    }

    /// An API field error whose `field` starts with our path prefix; its message (which
    /// starts with the field) is kept as the API module words it.
    fn field_err(&self, e: FieldError) -> ScenarioError {
        let field = match &e {
            FieldError::Duration { field, .. }
            | FieldError::Threshold { field, .. }
            | FieldError::Decimal { field, .. }
            | FieldError::Invalid { field, .. } => field.clone(),
        };
        let text = e.to_string();
        let message = text
            .strip_prefix(&format!("{field}: "))
            .unwrap_or(&text)
            .to_owned();
        self.err(field, message)
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

fn quantity<'a>(map: &'a crate::operator::api::FlatMap<Quantity>, key: &str) -> Option<&'a str> {
    map.get(key).map(|q| q.0.as_str())
}

impl Scenario {
    /// Parses and validates a scenario. `file` names it in errors; `traces` reads trace files.
    pub fn parse(
        file: &str,
        text: &str,
        traces: &dyn TraceSource,
    ) -> Result<Scenario, ScenarioError> {
        let raw: ScenarioFile = serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?;
        let cx = Ctx {
            file,
            text,
            objects_from_cluster: false,
        };
        Self::validate(&cx, raw, traces)
    }

    /// A scenario whose Groups and Nodes come from a live cluster: everything else (CA settings,
    /// workload, `simulation:` defaults, price, duration, seed) from `text`, whose own groups
    /// and machines are ignored. Machines start in their observed power state; a Node CR
    /// without `spec.capacity` uses the capacity its Kubernetes Node last reported.
    pub fn with_cluster_objects(
        file: &str,
        text: &str,
        traces: &dyn TraceSource,
        groups: Vec<Group>,
        machines: Vec<Machine>,
    ) -> Result<Scenario, ScenarioError> {
        let mut raw: ScenarioFile = serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?;
        raw.groups = groups
            .into_iter()
            .map(|g| GroupDoc {
                api_version: None,
                kind: None,
                metadata: g.metadata,
                spec: g.spec,
                status: None,
            })
            .collect();
        raw.machines = machines
            .into_iter()
            .map(|m| {
                let mut spec = m.spec;
                let mut simulation = MachineSimulation::default();
                if let Some(status) = &m.status {
                    // Boot times from the machine's recorded boots: uniform between the
                    // shortest and the longest.
                    let recorded = &status.recent_boot_seconds;
                    if let (Some(&lo), Some(&hi)) = (recorded.iter().min(), recorded.iter().max()) {
                        let (lo, hi) = (u64::from(lo) * SECOND, u64::from(hi) * SECOND);
                        simulation.boot_time = Some(if lo == hi {
                            Distribution::Fixed(lo)
                        } else {
                            Distribution::Uniform { min: lo, max: hi }
                        });
                    }
                    if let Some(observed) = status.power_state {
                        spec.power_state = observed;
                    }
                    if spec.capacity.is_empty()
                        && let Some(node) = &status.node
                    {
                        spec.capacity = if node.allocatable.is_empty() {
                            node.capacity.clone()
                        } else {
                            node.allocatable.clone()
                        };
                    }
                }
                MachineDoc {
                    api_version: None,
                    kind: None,
                    metadata: m.metadata,
                    spec,
                    status: None,
                    simulation,
                }
            })
            .collect();
        let cx = Ctx {
            file,
            text,
            objects_from_cluster: true,
        };
        Self::validate(&cx, raw, traces)
    }

    /// The embedded default scenario.
    pub fn default_scenario() -> Result<Scenario, ScenarioError> {
        Self::parse(DEFAULT_SCENARIO_NAME, DEFAULT_SCENARIO, &NoTraceFiles)
    }

    fn validate(
        cx: &Ctx,
        raw: ScenarioFile,
        traces: &dyn TraceSource,
    ) -> Result<Scenario, ScenarioError> {
        if raw.duration.0 == 0 {
            return Err(cx.err("duration", "must be longer than 0s, e.g. \"168h\""));
        }
        if !(raw.electricity.price_per_kwh.is_finite() && raw.electricity.price_per_kwh >= 0.0) {
            return Err(cx.err(
                "electricity.pricePerKWh",
                "must be a non-negative number, e.g. 0.30",
            ));
        }
        for (i, t) in raw.electricity.time_of_use.iter().enumerate() {
            let at = format!("electricity.timeOfUse[{i}]");
            if !(t.price_per_kwh.is_finite() && t.price_per_kwh >= 0.0) {
                return Err(cx.err(
                    format!("{at}.pricePerKWh"),
                    "must be a non-negative number, e.g. 0.40",
                ));
            }
            if t.from.0 >= t.to.0 || t.to.0 > DAY {
                return Err(cx.err(
                    at,
                    "a window is `from` before `to` within one day, e.g. {from: 7h, to: 23h}; split windows that cross midnight",
                ));
            }
            if raw.electricity.time_of_use[..i]
                .iter()
                .any(|o| o.from.0 < t.to.0 && t.from.0 < o.to.0)
            {
                return Err(cx.err(at, "overlaps an earlier window"));
            }
        }
        let autoscaler = autoscaler_config(cx, &raw.autoscaler)?;

        // Groups.
        let mut groups = Vec::with_capacity(raw.groups.len());
        let mut by_name: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (i, doc) in raw.groups.into_iter().enumerate() {
            let at = format!("groups[{i}]");
            check_kind(
                cx,
                &at,
                doc.api_version.as_deref(),
                doc.kind.as_deref(),
                "Group",
            )?;
            let Some(name) = doc.metadata.name.clone().filter(|n| !n.is_empty()) else {
                return Err(cx.err(format!("{at}.metadata"), "metadata.name is required"));
            };
            let namespace = doc.metadata.namespace.clone().unwrap_or_default();
            if by_name
                .insert((namespace.clone(), name.clone()), i)
                .is_some()
            {
                return Err(cx.err(
                    format!("{at}.metadata.name"),
                    format!("a second Group named {name:?}; Group names must be unique"),
                ));
            }
            // Checked here for an error with its line; the CA model reads the options through
            // the provider (`NodeGroupGetOptions`).
            doc.spec
                .autoscaling_options(&format!("{at}."))
                .map_err(|e| cx.field_err(e))?;
            let priority = autoscaler.priorities.get(&name).copied().unwrap_or(0);
            let group = Group {
                metadata: doc.metadata,
                spec: doc.spec,
                status: None,
            };
            groups.push(GroupModel {
                name,
                min: 0,
                max: 0,
                priority,
                members: Vec::new(),
                group,
            });
        }
        if groups.is_empty() {
            return Err(cx.err("groups", "at least one Group is needed"));
        }
        for name in autoscaler.priorities.keys() {
            if !groups.iter().any(|g| &g.name == name) {
                return Err(cx.err(
                    "autoscaler.priorities",
                    format!("priority for unknown Group {name:?}"),
                ));
            }
        }

        // Machines.
        let defaults = raw.simulation;
        let mut machines = Vec::with_capacity(raw.machines.len());
        let mut seen = BTreeMap::new();
        for (i, doc) in raw.machines.into_iter().enumerate() {
            let at = format!("machines[{i}]");
            check_kind(
                cx,
                &at,
                doc.api_version.as_deref(),
                doc.kind.as_deref(),
                "Node",
            )?;
            let Some(name) = doc.metadata.name.clone().filter(|n| !n.is_empty()) else {
                return Err(cx.err(format!("{at}.metadata"), "metadata.name is required"));
            };
            let namespace = doc.metadata.namespace.clone().unwrap_or_default();
            if seen.insert((namespace.clone(), name.clone()), i).is_some() {
                return Err(cx.err(
                    format!("{at}.metadata.name"),
                    format!("a second Node named {name:?}; names must be unique"),
                ));
            }
            let group_name = doc
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(GROUP_LABEL))
                .cloned();
            let Some(group_name) = group_name else {
                return Err(cx.err(
                    format!("{at}.metadata"),
                    format!(
                        "Node {name:?} has no label {GROUP_LABEL}=<group>; every simulated machine belongs to a Group"
                    ),
                ));
            };
            let Some(&group) = by_name.get(&(namespace.clone(), group_name.clone())) else {
                return Err(cx.err(
                    format!("{at}.metadata.labels.{GROUP_LABEL}"),
                    format!(
                        "no Group {group_name:?} in namespace {namespace:?}; groups are {}",
                        groups
                            .iter()
                            .map(|g| g.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            let sim = doc.simulation.or(&defaults);
            let prefix = format!("{at}.");
            let soft_off = match doc.spec.power_driver(&prefix, Direction::Off) {
                Ok(PowerDriver::Redfish(r)) => Some(SoftOff {
                    force_off_after: r
                        .force_off_after(&format!("{prefix}spec.power.off.redfish"))
                        .map_err(|e| cx.field_err(e))?
                        .as_millis()
                        .try_into()
                        .unwrap_or(0),
                    ignored: sim.graceful_shutdown_ignored.unwrap_or_default().0,
                }),
                _ => None,
            };
            let action_time = |direction| {
                sim.power_action_time
                    .unwrap_or_else(|| driver_action_time(&doc.spec, direction))
            };
            let (power_on_action_time, power_off_action_time) =
                (action_time(Direction::On), action_time(Direction::Off));
            doc.spec
                .boot_timeout(&prefix)
                .map_err(|e| cx.field_err(e))?;
            doc.spec
                .shutdown_timeout(&prefix)
                .map_err(|e| cx.field_err(e))?;
            let hourly_rate = doc
                .spec
                .hourly_rate(&prefix)
                .map_err(|e| cx.field_err(e))?
                .unwrap_or(0.0);
            let cap = sim.capacity.clone().unwrap_or_default();
            let cpu = match cap.cpu {
                Some(c) => c.0,
                None => match quantity(&doc.spec.capacity, "cpu") {
                    Some(q) => parse_cpu(q).ok_or_else(|| {
                        cx.err(
                            format!("{at}.spec.capacity.cpu"),
                            format!("{q:?} is not a CPU quantity like \"4\" or \"3500m\""),
                        )
                    })?,
                    None => {
                        return Err(cx.err(
                            format!("{at}.spec"),
                            "no CPU capacity: set spec.capacity.cpu (e.g. \"4\") or simulation.capacity.cpu",
                        ));
                    }
                },
            };
            let memory = match cap.memory {
                Some(m) => m.0,
                None => match quantity(&doc.spec.capacity, "memory") {
                    Some(q) => parse_memory(q).ok_or_else(|| {
                        cx.err(
                            format!("{at}.spec.capacity.memory"),
                            format!("{q:?} is not a memory quantity like \"16Gi\""),
                        )
                    })?,
                    None => {
                        return Err(cx.err(
                            format!("{at}.spec"),
                            "no memory capacity: set spec.capacity.memory (e.g. \"16Gi\") or simulation.capacity.memory",
                        ));
                    }
                },
            };
            let max_pods = match cap.pods {
                Some(p) => p,
                None => match quantity(&doc.spec.capacity, "pods") {
                    Some(q) => q.parse().map_err(|_| {
                        cx.err(
                            format!("{at}.spec.capacity.pods"),
                            format!("{q:?} is not a whole number of pods like \"110\""),
                        )
                    })?,
                    None => 110,
                },
            };
            if cpu == 0 || memory == 0 || max_pods == 0 {
                return Err(cx.err(
                    format!("{at}.spec.capacity"),
                    "capacity must be more than zero CPU, memory and pods",
                ));
            }
            let spec_watts = doc.spec.watts.unwrap_or_default();
            let sim_watts = sim.watts.unwrap_or_default();
            let watts = Watts {
                idle: sim_watts.idle.or(spec_watts.idle),
                busy: sim_watts.busy.or(spec_watts.busy),
                off: sim_watts.off.or(spec_watts.off),
            };
            for (field, v) in [
                ("idle", watts.idle),
                ("busy", watts.busy),
                ("off", watts.off),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && v >= 0.0)
                {
                    return Err(cx.err(
                        format!("{at}.simulation.watts.{field}"),
                        format!("{v} is not a non-negative number of watts"),
                    ));
                }
            }
            if let Some(v) = sim.boot_watts
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(cx.err(
                    format!("{at}.simulation.bootWatts"),
                    format!("{v} is not a non-negative number of watts"),
                ));
            }
            if watts.idle.is_none() {
                return Err(cx.err(
                    format!("{at}.spec"),
                    "no idle power draw: set spec.watts.idle (e.g. 12) or simulation.watts.idle",
                ));
            }
            // The operator annotates a member's Node for its own flag or its Group's.
            let scale_down_disabled =
                doc.spec.scale_down_disabled() || groups[group].group.scale_down_disabled();
            let initially_on = doc.spec.power_state == PowerState::On;
            let machine = Machine {
                metadata: doc.metadata,
                spec: doc.spec,
                status: None,
            };
            groups[group].members.push(i);
            machines.push(MachineModel {
                machine,
                name,
                group,
                cpu,
                memory,
                max_pods,
                watts,
                boot_watts: sim.boot_watts,
                hourly_rate,
                boot_time: sim.boot_time.unwrap_or(Distribution::Fixed(90 * SECOND)),
                shutdown_time: sim
                    .shutdown_time
                    .unwrap_or(Distribution::Fixed(20 * SECOND)),
                power_on_action_time,
                power_off_action_time,
                soft_off,
                power_on_failure: sim.power_on_failure.unwrap_or_default().0,
                never_boots: sim.never_boots.unwrap_or_default().0,
                power_off_failure: sim.power_off_failure.unwrap_or_default().0,
                scale_down_disabled,
                initially_on,
            });
        }
        if machines.is_empty() {
            return Err(cx.err("machines", "at least one Node (machine) is needed"));
        }
        for (i, g) in groups.iter_mut().enumerate() {
            g.group
                .spec
                .check_size_bounds(&format!("groups[{i}]."), g.members.len())
                .map_err(|e| cx.field_err(e))?;
            let bounds = g.group.size_bounds(g.members.len());
            g.min = bounds.min;
            g.max = bounds.max;
        }

        // Workloads.
        let mut workloads = Vec::with_capacity(raw.workload.len());
        for (i, w) in raw.workload.into_iter().enumerate() {
            let at = format!("workload[{i}]");
            workloads.push(workload(cx, &at, i, w, traces)?);
        }
        if workloads.is_empty() {
            return Err(cx.err("workload", "at least one workload is needed"));
        }
        let start = raw.start.unwrap_or_else(default_start);
        let mut electricity = raw.electricity;
        electricity.start_of_day =
            u64::try_from(start.as_millisecond().rem_euclid(DAY as i64)).unwrap_or(0);
        let daemonset_cpu = raw.daemon_sets.iter().map(|d| d.cpu.0).sum();
        let daemonset_memory = raw.daemon_sets.iter().map(|d| d.memory.0).sum();
        for (i, m) in machines.iter().enumerate() {
            if m.cpu <= daemonset_cpu || m.memory <= daemonset_memory {
                return Err(cx.err(
                    "daemonSets",
                    format!(
                        "the DaemonSets request all of machine {}'s capacity (machines[{i}])",
                        m.name
                    ),
                ));
            }
        }
        let mut ignored = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let spec = &g.group.spec;
            if spec.scale_down_gpu_utilization_threshold.is_some() {
                ignored.push(format!(
                    "groups[{i}].spec.scaleDownGpuUtilizationThreshold: no GPUs are simulated"
                ));
            }
            if spec
                .remediation
                .as_ref()
                .is_some_and(|r| r.power_cycle_after.is_some())
            {
                ignored.push(format!(
                    "groups[{i}].spec.remediation.powerCycleAfter: simulated Nodes never go NotReady while their machine runs"
                ));
            }
            if let Some(t) = &spec.template {
                if !t.labels.is_empty() {
                    ignored.push(format!(
                        "groups[{i}].spec.template.labels: simulated pods have no node selectors"
                    ));
                }
                if !t.taints.is_empty() {
                    ignored.push(format!(
                        "groups[{i}].spec.template.taints: simulated pods tolerate every taint"
                    ));
                }
            }
        }
        Ok(Scenario {
            name: raw.name.unwrap_or_else(|| cx.file.to_owned()),
            description: raw.description,
            seed: raw.seed.unwrap_or(1),
            duration: raw.duration.0,
            start,
            electricity,
            autoscaler,
            scheduler: raw.scheduler,
            groups,
            machines,
            workloads,
            daemonset_cpu,
            daemonset_memory,
            ignored,
        })
    }
}

fn check_kind(
    cx: &Ctx,
    at: &str,
    api_version: Option<&str>,
    kind: Option<&str>,
    want: &str,
) -> Result<(), ScenarioError> {
    if let Some(v) = api_version
        && v != "infra.homecluster.dev/v1alpha1"
    {
        return Err(cx.err(
            format!("{at}.apiVersion"),
            format!("{v:?}: expected infra.homecluster.dev/v1alpha1"),
        ));
    }
    if let Some(k) = kind
        && k != want
    {
        return Err(cx.err(
            format!("{at}.kind"),
            format!("{k:?} in this list: expected {want}"),
        ));
    }
    Ok(())
}

fn autoscaler_config(cx: &Ctx, f: &AutoscalerFile) -> Result<AutoscalerConfig, ScenarioError> {
    let d = AutoscalerConfig::default();
    let c = AutoscalerConfig {
        scan_interval: f.scan_interval.map_or(d.scan_interval, |v| v.0),
        scale_down_unneeded_time: f
            .scale_down_unneeded_time
            .map_or(d.scale_down_unneeded_time, |v| v.0),
        scale_down_utilization_threshold: f
            .scale_down_utilization_threshold
            .unwrap_or(d.scale_down_utilization_threshold),
        scale_down_delay_after_add: f
            .scale_down_delay_after_add
            .map_or(d.scale_down_delay_after_add, |v| v.0),
        scale_down_delay_after_failure: f
            .scale_down_delay_after_failure
            .map_or(d.scale_down_delay_after_failure, |v| v.0),
        scale_down_delay_after_delete: f
            .scale_down_delay_after_delete
            .map_or(d.scale_down_delay_after_delete, |v| v.0),
        max_node_provision_time: f
            .max_node_provision_time
            .map_or(d.max_node_provision_time, |v| v.0),
        scale_down_enabled: f.scale_down_enabled.unwrap_or(d.scale_down_enabled),
        expander: f.expander.clone().unwrap_or(d.expander),
        priorities: f.priorities.clone(),
        backoff_initial: f
            .backoff
            .as_ref()
            .map_or(d.backoff_initial, |b| b.initial.0),
        backoff_max: f.backoff.as_ref().map_or(d.backoff_max, |b| b.max.0),
        backoff_reset: f
            .backoff
            .as_ref()
            .and_then(|b| b.reset_timeout)
            .map_or(d.backoff_reset, |v| v.0),
        max_nodes_total: f.max_nodes_total.unwrap_or(d.max_nodes_total),
        max_scale_down_parallelism: f
            .max_scale_down_parallelism
            .unwrap_or(d.max_scale_down_parallelism),
        max_drain_parallelism: f.max_drain_parallelism.unwrap_or(d.max_drain_parallelism),
        scale_down_unready_enabled: f
            .scale_down_unready_enabled
            .unwrap_or(d.scale_down_unready_enabled),
        scale_down_unready_time: f
            .scale_down_unready_time
            .map_or(d.scale_down_unready_time, |v| v.0),
        unremovable_node_recheck_timeout: f
            .unremovable_node_recheck_timeout
            .map_or(d.unremovable_node_recheck_timeout, |v| v.0),
        ignore_daemonsets_utilization: f
            .ignore_daemonsets_utilization
            .unwrap_or(d.ignore_daemonsets_utilization),
        skip_nodes_with_system_pods: f
            .skip_nodes_with_system_pods
            .unwrap_or(d.skip_nodes_with_system_pods),
        skip_nodes_with_local_storage: f
            .skip_nodes_with_local_storage
            .unwrap_or(d.skip_nodes_with_local_storage),
        skip_nodes_with_custom_controller_pods: f
            .skip_nodes_with_custom_controller_pods
            .unwrap_or(d.skip_nodes_with_custom_controller_pods),
        blocking_system_pod_disruption_timeout: f
            .blocking_system_pod_disruption_timeout
            .map_or(d.blocking_system_pod_disruption_timeout, |v| v.0),
        node_delete_delay_after_taint: f
            .node_delete_delay_after_taint
            .map_or(d.node_delete_delay_after_taint, |v| v.0),
    };
    if c.scan_interval < 100 {
        return Err(cx.err(
            "autoscaler.scanInterval",
            "must be at least 100ms (CA's default is 10s)",
        ));
    }
    if !(0.0..=1.0).contains(&c.scale_down_utilization_threshold) {
        return Err(cx.err(
            "autoscaler.scaleDownUtilizationThreshold",
            format!(
                "{} is not between 0 and 1 (CA's default is 0.5)",
                c.scale_down_utilization_threshold
            ),
        ));
    }
    if c.backoff_initial > c.backoff_max {
        return Err(cx.err(
            "autoscaler.backoff",
            "initial backoff is longer than max; swap them",
        ));
    }
    if c.expander.contains(Expander::Priority) && c.priorities.is_empty() {
        return Err(cx.err(
            "autoscaler.priorities",
            "the priority expander needs priorities: {<group>: <number>}, higher wins",
        ));
    }
    Ok(c)
}

fn workload(
    cx: &Ctx,
    at: &str,
    index: usize,
    w: WorkloadSpec,
    traces: &dyn TraceSource,
) -> Result<Workload, ScenarioError> {
    let kinds = [
        w.constant.is_some(),
        w.diurnal.is_some(),
        w.burst.is_some(),
        w.trace.is_some(),
        w.replicas.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if kinds != 1 {
        return Err(cx.err(
            at,
            format!(
                "workload {:?}: give exactly one of constant, diurnal, burst, trace or replicas (found {kinds})",
                w.name
            ),
        ));
    }
    let template = if w.trace.is_some() {
        None
    } else {
        let Some(cpu) = w.cpu else {
            return Err(cx.err(
                at,
                format!("workload {:?}: cpu request missing, e.g. cpu: 500m", w.name),
            ));
        };
        let Some(memory) = w.memory else {
            return Err(cx.err(
                at,
                format!(
                    "workload {:?}: memory request missing, e.g. memory: 1Gi",
                    w.name
                ),
            ));
        };
        let duration = match (w.duration, w.replicas.is_some()) {
            (Some(_), true) => {
                return Err(cx.err(
                    format!("{at}.duration"),
                    format!(
                        "workload {:?}: replicas run until the count goes down; remove duration",
                        w.name
                    ),
                ));
            }
            (None, true) => Distribution::Fixed(FOREVER),
            (Some(d), false) => d,
            (None, false) => {
                return Err(cx.err(
                    at,
                    format!(
                        "workload {:?}: duration missing, e.g. duration: 10m",
                        w.name
                    ),
                ));
            }
        };
        Some(PodTemplate {
            cpu: cpu.0,
            memory: memory.0,
            duration,
        })
    };
    let workload_index = u16::try_from(index).unwrap_or(u16::MAX);
    let drain = DrainTraits {
        kube_system: w.namespace.as_deref() == Some("kube-system"),
        controller: w.controller.unwrap_or(if w.replicas.is_some() {
            Controller::ReplicaSet
        } else {
            Controller::Job
        }),
        local_storage: w.local_storage.unwrap_or(false),
        safe_to_evict: w.safe_to_evict,
        pdb_max_unavailable: w.pdb.map(|p| p.max_unavailable),
    };
    let arrivals = if let Some(r) = w.replicas {
        let steps: Vec<(Millis, u32)> = match (r.count, r.schedule.is_empty()) {
            (Some(c), true) => vec![(0, c)],
            (None, false) => r.schedule.iter().map(|s| (s.at.0, s.count)).collect(),
            _ => {
                return Err(cx.err(
                    format!("{at}.replicas"),
                    "give exactly one of count or schedule: [{at: 0h, count: 2}, ...]",
                ));
            }
        };
        if let Some(e) = r.every
            && steps.iter().any(|s| s.0 >= e.0)
        {
            return Err(cx.err(
                format!("{at}.replicas.schedule"),
                "every step's `at` must be shorter than `every`",
            ));
        }
        Arrivals::Replicas {
            steps,
            every: r.every.map(|e| e.0),
        }
    } else if let Some(c) = w.constant {
        Arrivals::Constant { per_ms: c.rate.0 }
    } else if let Some(d) = w.diurnal {
        if !(d.weekend_factor.is_finite() && d.weekend_factor >= 0.0) {
            return Err(cx.err(
                format!("{at}.diurnal.weekendFactor"),
                "must be a non-negative number, e.g. 0.5",
            ));
        }
        Arrivals::Diurnal {
            peak: d.peak_rate.0,
            trough: d.trough_rate.0,
            peak_at: d.peak_at.0,
            weekend_factor: d.weekend_factor,
        }
    } else if let Some(b) = w.burst {
        Arrivals::Burst {
            at: b.at.0,
            every: b.every.map(|e| e.0),
            count: b.count,
            spread: b.spread.map_or(0, |s| s.0),
        }
    } else if let Some(t) = w.trace {
        let (text, field) = match (t.file, t.inline) {
            (Some(file), None) => {
                let text = traces
                    .read(&file)
                    .map_err(|e| cx.err(format!("{at}.trace.file"), e))?;
                (text, format!("{at}.trace.file"))
            }
            (None, Some(inline)) => (inline, format!("{at}.trace.inline")),
            _ => {
                return Err(cx.err(format!("{at}.trace"), "give exactly one of file or inline"));
            }
        };
        let rows =
            parse_trace(&text, workload_index).map_err(|e| cx.err(field, format!("CSV {e}")))?;
        Arrivals::Trace(rows)
    } else {
        return Err(cx.err(at, "no arrivals"));
    };
    Ok(Workload {
        name: w.name,
        arrivals,
        template,
        drain,
    })
}
