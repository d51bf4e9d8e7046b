//! Scenario files: the homelab (Groups and Nodes in the CRD shapes, plus a `simulation:` block
//! per machine), the Cluster Autoscaler's settings, the workload, electricity price, duration
//! and seed. Parsing is strict (unknown fields are errors) and every error names the file, the
//! line and the field.
//!
//! `format.rs` is the file as written (serde shapes), `validate.rs` turns it into the model the
//! engine runs (`model.rs`).
use std::fmt;

use crate::operator::api::{Group, Machine};

mod format;
mod model;
mod validate;

pub use format::{
    CapacityFile, DaemonSetSpec, Electricity, Expander, ExpanderChain, MachineSimulation, Tariff,
};
pub use model::{
    AutoscalerConfig, GroupModel, MachineModel, MaintenanceModel, Scenario, SoftOff, default_start,
    driver_action_time,
};

use format::{GroupDoc, MachineDoc, ScenarioFile};

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

impl Scenario {
    /// Parses and validates a scenario. `file` names it in errors; `traces` reads trace files.
    pub fn parse(
        file: &str,
        text: &str,
        traces: &dyn TraceSource,
    ) -> Result<Scenario, ScenarioError> {
        let raw = ScenarioFile::parse(file, text)?;
        validate::scenario(file, text, false, raw, traces)
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
        let mut raw = ScenarioFile::parse(file, text)?;
        raw.groups = groups.into_iter().map(GroupDoc::from).collect();
        raw.machines = machines.into_iter().map(MachineDoc::observed).collect();
        validate::scenario(file, text, true, raw, traces)
    }

    /// The embedded default scenario.
    pub fn default_scenario() -> Result<Scenario, ScenarioError> {
        Self::parse(DEFAULT_SCENARIO_NAME, DEFAULT_SCENARIO, &NoTraceFiles)
    }
}
