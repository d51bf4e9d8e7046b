//! What a run produces: per-group and total figures, pod wait percentiles, the autoscaler's
//! activity, and optionally the timeline and the machines/pending series.
use jiff::Timestamp;
use serde::Serialize;

use super::engine::Sim;
use super::units::{HOUR, Millis, format_millis};

/// Counters the engine and the CA model bump.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub pods: u64,
    pub evictions: u64,
    pub unschedulable_ms: Millis,
    pub transitions: u64,
    pub scans: u64,
    pub scale_ups: u64,
    pub failed_scale_ups: u64,
    pub failed_scale_downs: u64,
    pub scale_downs: u64,
    pub backoffs: u64,
    pub failed_instances_deleted: u64,
    /// Times the provider's inventory was rebuilt from the simulated world.
    pub inventory_builds: u64,
    /// Machines the operator powered on at a schedule window's start (to its min size).
    pub schedule_power_ons: u64,
    /// Scale-ups the Cluster Autoscaler made for warm spares (placeholder pods) alone.
    pub warm_spare_scale_ups: u64,
    /// Picks moved from a machine at its `maxBootsPerDay` to one below it.
    pub wear_spared: u64,
    /// Machines powered on past their `maxBootsPerDay` (no other could take the pods).
    pub wear_limit_passed: u64,
    /// Scans in which quiet hours held a group's power-ons (pods had not waited
    /// `powerOnAfter` yet).
    pub quiet_held_power_ons: u64,
    /// Scans in which quiet hours kept an unneeded node on.
    pub quiet_held_power_offs: u64,
    /// Machines that went into maintenance.
    pub maintenances: u64,
}

/// One line of `--timeline`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// Virtual milliseconds since the start.
    pub at: Millis,
    pub time: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub what: String,
}

/// A desired-power change the provider decided for CA (`spec.powerState` patched by IncreaseSize,
/// DeleteNodes or DecreaseTargetSize), recorded with the timeline: the record to compare with a
/// real Cluster Autoscaler's run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PowerRequest {
    /// Virtual milliseconds since the start.
    pub at: Millis,
    pub machine: String,
    pub desired: crate::operator::machine::PowerState,
}

/// A change in the number of machines powered / nodes Ready / pods pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    pub at: Millis,
    /// Machines drawing more than standby power (booting, on, shutting down).
    pub powered: u32,
    pub ready: u32,
    pub pending: u32,
}

/// Pending-pod wait (arrival to first placement). Pods never placed count with their wait
/// until the end of the run (a lower bound), and are also counted apart.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitStats {
    /// Pods placed at least once.
    pub pods: u64,
    /// Pods still waiting for their first placement at the end.
    pub never_placed: u64,
    pub p50_ms: Millis,
    pub p95_ms: Millis,
    pub p99_ms: Millis,
    pub max_ms: Millis,
    pub mean_ms: f64,
}

impl WaitStats {
    /// Nearest-rank percentiles over `waits` (placed pods) and `never` (waits so far of pods
    /// never placed).
    pub fn from(mut waits: Vec<Millis>, never: &[Millis]) -> WaitStats {
        let placed = waits.len() as u64;
        waits.extend_from_slice(never);
        if waits.is_empty() {
            return WaitStats::default();
        }
        waits.sort_unstable();
        let n = waits.len();
        let rank = |p: f64| {
            let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            waits[i]
        };
        WaitStats {
            pods: placed,
            never_placed: never.len() as u64,
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            p99_ms: rank(0.99),
            max_ms: waits[n - 1],
            mean_ms: waits.iter().sum::<u64>() as f64 / n as f64,
        }
    }
}

/// What drains cost the pods they evicted.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EvictionReport {
    pub evictions: u64,
    /// Work finite pods had done before their eviction and do again.
    pub lost_work_ms: Millis,
    /// Total and longest wait of evicted pods to be placed again.
    pub rewait_ms: Millis,
    pub rewait_max_ms: Millis,
}

/// A run of the same workload with the autoscaler off.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineReport {
    /// `always on` or `fixed subset`.
    pub name: String,
    /// Machines on for the whole run.
    pub machines_on: u32,
    pub kwh: f64,
    pub cost: f64,
    pub wait: WaitStats,
}

/// Figures for one group, or the total.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupReport {
    pub name: String,
    pub machines: u32,
    pub min_size: u32,
    pub max_size: u32,
    pub machine_hours_on: f64,
    pub boots: u32,
    pub failed_boots: u32,
    pub power_offs: u32,
    /// Boots per machine per day (wear).
    pub boots_per_machine_day: f64,
    pub kwh: f64,
    /// Every machine on for the whole run: measured by the always-on baseline run when the
    /// run has baselines, else estimated as idle power plus this run's load.
    pub baseline_kwh: f64,
    pub cost: f64,
    pub baseline_cost: f64,
    pub savings: f64,
    pub savings_percent: f64,
    /// Pods whose first placement was on this group's nodes.
    pub wait: WaitStats,
}

/// Per machine.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineReport {
    pub name: String,
    pub group: String,
    pub hours_on: f64,
    pub boots: u32,
    pub failed_boots: u32,
    pub kwh: f64,
    pub cost: f64,
    pub final_phase: String,
}

/// Everything a run produces (`-o json` prints this).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub start: Timestamp,
    pub duration_ms: Millis,
    pub duration: String,
    pub currency: String,
    pub price_per_kwh: f64,
    pub groups: Vec<GroupReport>,
    pub total: GroupReport,
    pub machines: Vec<MachineReport>,
    /// All pods placed at least once.
    pub wait: WaitStats,
    pub pods_arrived: u64,
    /// Pods still pending at the end (never placed).
    pub pods_never_placed: u64,
    /// Time with at least one pod pending.
    pub unschedulable_ms: Millis,
    pub eviction: EvictionReport,
    /// The same workload with the autoscaler off (filled when the run asked for them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub baselines: Vec<BaselineReport>,
    /// Things the owner should know about the figures (pods that fit no machine).
    pub warnings: Vec<String>,
    /// Scenario fields read but not modelled.
    pub ignored: Vec<String>,
    pub counters: Counters,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineEntry>,
    /// With the timeline: every desired-power change, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub power_requests: Vec<PowerRequest>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesPoint>,
}

pub(super) fn build(sim: &Sim<'_>, end: Millis, series: Vec<SeriesPoint>) -> Report {
    let sc = sim.sc;
    let price = sc.electricity.price_per_kwh;
    let hours = end as f64 / HOUR as f64;
    let mut group_waits: Vec<Vec<Millis>> = vec![Vec::new(); sc.groups.len()];
    let mut all_waits = Vec::with_capacity(sim.cluster.pods.len());
    let mut never = Vec::new();
    for p in &sim.cluster.pods {
        if let (Some(w), Some(n)) = (p.waited, p.first_node) {
            all_waits.push(w);
            group_waits[sc.machines[n].group].push(w);
        } else if !p.deleted {
            never.push(end.saturating_sub(p.spec.arrival));
        }
    }
    let days = end as f64 / super::units::DAY as f64;
    let mut machines = Vec::with_capacity(sc.machines.len());
    let mut groups: Vec<GroupReport> = sc
        .groups
        .iter()
        .map(|g| GroupReport {
            name: g.name.clone(),
            machines: g.members.len() as u32,
            min_size: g.min,
            max_size: g.max,
            ..GroupReport::default()
        })
        .collect();
    for (i, model) in sc.machines.iter().enumerate() {
        let s = &sim.machines[i].stats;
        let g = &mut groups[model.group];
        let kwh = s.wh / 1000.0;
        let idle = model.watts.idle.unwrap_or(0.0);
        let baseline = (idle * hours + s.busy_wh) / 1000.0;
        g.machine_hours_on += s.on_ms as f64 / HOUR as f64;
        g.boots += s.boots;
        g.failed_boots += s.failed_boots;
        g.power_offs += s.power_offs;
        g.kwh += kwh;
        g.cost += s.cost;
        g.baseline_kwh += baseline;
        machines.push(MachineReport {
            name: model.name.clone(),
            group: sc.groups[model.group].name.clone(),
            hours_on: s.on_ms as f64 / HOUR as f64,
            boots: s.boots,
            failed_boots: s.failed_boots,
            kwh,
            cost: s.cost,
            final_phase: sim.machines[i].lifecycle.phase().to_string(),
        });
    }
    let mut total = GroupReport {
        name: "total".to_owned(),
        ..GroupReport::default()
    };
    let mean_price = sc.electricity.mean_price(end);
    for (g, waits) in groups.iter_mut().zip(group_waits) {
        g.baseline_cost = g.baseline_kwh * mean_price;
        g.savings = g.baseline_cost - g.cost;
        g.savings_percent = percent(g.baseline_kwh - g.kwh, g.baseline_kwh);
        g.boots_per_machine_day = per_machine_day(g.boots, g.machines, days);
        g.wait = WaitStats::from(waits, &[]);
        total.machines += g.machines;
        total.min_size += g.min_size;
        total.max_size += g.max_size;
        total.machine_hours_on += g.machine_hours_on;
        total.boots += g.boots;
        total.failed_boots += g.failed_boots;
        total.power_offs += g.power_offs;
        total.kwh += g.kwh;
        total.cost += g.cost;
        total.baseline_kwh += g.baseline_kwh;
    }
    total.baseline_cost = total.baseline_kwh * mean_price;
    total.savings = total.baseline_cost - total.cost;
    total.savings_percent = percent(total.baseline_kwh - total.kwh, total.baseline_kwh);
    total.boots_per_machine_day = per_machine_day(total.boots, total.machines, days);
    let wait = WaitStats::from(all_waits, &never);
    total.wait = wait.clone();
    let cost = &sim.cluster.eviction_cost;
    let eviction = EvictionReport {
        evictions: sim.counters.evictions,
        lost_work_ms: cost.lost_work_ms,
        rewait_ms: cost.rewait_ms,
        rewait_max_ms: cost.rewait_max_ms,
    };
    Report {
        scenario: sc.name.clone(),
        seed: sc.seed,
        start: sc.start,
        duration_ms: end,
        duration: format_millis(end),
        currency: sc.electricity.currency.clone(),
        price_per_kwh: price,
        groups,
        total,
        machines,
        wait,
        pods_arrived: sim.counters.pods,
        pods_never_placed: never.len() as u64,
        unschedulable_ms: sim.counters.unschedulable_ms,
        eviction,
        baselines: Vec::new(),
        warnings: warnings(sc),
        ignored: sc.ignored.clone(),
        counters: sim.counters.clone(),
        timeline: sim.timeline.clone(),
        power_requests: sim.power_requests.clone(),
        series,
    }
}

fn per_machine_day(boots: u32, machines: u32, days: f64) -> f64 {
    if machines == 0 || days <= 0.0 {
        0.0
    } else {
        f64::from(boots) / f64::from(machines) / days
    }
}

/// Workloads whose pods fit no machine, even an empty one: they wait forever.
fn warnings(sc: &super::scenario::Scenario) -> Vec<String> {
    let mut out = Vec::new();
    let fits = |cpu: u64, mem: u64| {
        sc.machines
            .iter()
            .any(|m| cpu + sc.daemonset_cpu <= m.cpu && mem + sc.daemonset_memory <= m.memory)
    };
    for w in &sc.workloads {
        let shapes: Vec<(u64, u64)> = match (&w.template, &w.arrivals) {
            (Some(t), _) => vec![(t.cpu, t.memory)],
            (None, super::workload::Arrivals::Trace(rows)) => {
                rows.iter().map(|r| (r.cpu, r.memory)).collect()
            }
            _ => Vec::new(),
        };
        let too_big = shapes.iter().filter(|&&(c, m)| !fits(c, m)).count();
        if too_big > 0 {
            out.push(format!(
                "workload {:?}: {too_big} pod request(s) fit no machine (even empty, after DaemonSets); those pods are never placed",
                w.name
            ));
        }
    }
    out
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}
