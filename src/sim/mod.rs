//! The discrete-event simulator behind `kubectl homelab simulate`: the operator's real decision
//! code (the machine lifecycle FSM and the provider core) on virtual time, against simulated
//! machines, a model of the Cluster Autoscaler and a workload. Deterministic for a seed; pure
//! (no I/O, no clock): the command reads files and renders the [`Report`].
//!
//! What it simplifies (see also [`autoscaler`]):
//! - Machines: a power action takes `powerActionTime` (default by driver, see
//!   [`scenario::driver_action_time`]) and fails with `powerOnFailure` / `powerOffFailure`; a
//!   successful power-on boots in `bootTime` or, with `neverBoots`, hangs until the operator
//!   gives up. A Redfish power-off is done when the BMC reads Off: after `shutdownTime`, or at
//!   `forceOffAfter` (ForceOff) when the OS is slower or ignores it (`gracefulShutdownIgnored`). Booting and shutting down draw idle power; on, power grows
//!   linearly from idle to busy with the requested CPU share; off draws `watts.standby`.
//! - Kubernetes: a Node object appears Ready when the boot completes and goes NotReady when the
//!   machine is off; the operator deletes it (the FSM's `DeleteNode`). Pods request CPU, memory
//!   and a pod slot only; an evicted pod restarts from scratch; the operator reacts to a change
//!   at once (no controller or API latency).
//! - Energy baseline: every machine on for the whole run at idle power plus the same load energy
//!   as measured.
//! - The owner's week ([`schedule`]): a Group's schedule windows (min size in force, machines
//!   powered on at a window's start), warm spares (CA's CapacityBuffer placeholder pods, see
//!   `autoscaler/buffer.rs`), `maxBootsPerDay` and quiet hours, scenario-level maintenance and
//!   paused groups. Boot times read from a cluster are the learned p50/p95 of each machine, and
//!   `bootTimeout: auto` follows the boots as the run learns them.
pub mod autoscaler;
pub mod batch;
pub mod cluster;
pub mod engine;
mod locate;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod units;
mod views;
pub mod workload;

pub use engine::{InvariantViolation, RunOptions, Sim};
pub use report::{PowerRequest, Report};
pub use scenario::{Scenario, ScenarioError};

/// Runs a scenario to the end (and, with `options.baselines`, its baselines).
pub fn run(
    scenario: &Scenario,
    options: RunOptions,
    progress: &mut dyn FnMut(units::Millis, units::Millis),
) -> Result<Report, InvariantViolation> {
    let mut report = Sim::new(scenario, options).run(progress)?;
    if options.baselines {
        let (list, always_on) = baselines(scenario)?;
        report.baselines = list;
        // The measured always-on run replaces the estimate (idle power plus this run's load)
        // as what each group's savings are counted against.
        for (g, on) in report
            .groups
            .iter_mut()
            .chain(std::iter::once(&mut report.total))
            .zip(
                always_on
                    .groups
                    .iter()
                    .chain(std::iter::once(&always_on.total)),
            )
        {
            g.baseline_kwh = on.kwh;
            g.baseline_cost = on.cost;
            g.savings = g.baseline_cost - g.cost;
            g.savings_percent = if on.kwh > 0.0 {
                100.0 * (on.kwh - g.kwh) / on.kwh
            } else {
                0.0
            };
        }
    }
    Ok(report)
}

/// The same workload (same seed) with the autoscaler off: every machine on, and only the
/// machines the scenario starts with on. Each has its own energy, cost and pod waits, so the
/// autoscaler's savings are measured against what the owner would really run otherwise.
/// Also returns the always-on run's report.
pub fn baselines(
    scenario: &Scenario,
) -> Result<(Vec<report::BaselineReport>, Report), InvariantViolation> {
    let off = RunOptions {
        autoscaler_off: true,
        ..RunOptions::default()
    };
    let mut all_on = scenario.clone();
    for m in &mut all_on.machines {
        m.initially_on = true;
        m.machine.spec.power_state = crate::operator::machine::PowerState::On;
    }
    let subset = scenario.machines.iter().filter(|m| m.initially_on).count() as u32;
    let always_on = Sim::new(&all_on, off).run(&mut |_, _| {})?;
    let fixed = Sim::new(scenario, off).run(&mut |_, _| {})?;
    let entry = |name: &str, on: u32, r: &Report| report::BaselineReport {
        name: name.to_owned(),
        machines_on: on,
        kwh: r.total.kwh,
        cost: r.total.cost,
        wait: r.wait.clone(),
    };
    let list = vec![
        entry("always on", scenario.machines.len() as u32, &always_on),
        entry("fixed subset", subset, &fixed),
    ];
    Ok((list, always_on))
}
