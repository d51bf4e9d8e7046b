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
    pub scale_downs: u64,
    pub backoffs: u64,
    pub failed_instances_deleted: u64,
    /// Times the provider's inventory was rebuilt from the simulated world.
    pub inventory_builds: u64,
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

/// Pending-pod wait (arrival to first placement).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitStats {
    pub pods: u64,
    pub p50_ms: Millis,
    pub p95_ms: Millis,
    pub max_ms: Millis,
    pub mean_ms: f64,
}

impl WaitStats {
    /// Nearest-rank percentiles.
    pub fn from(mut waits: Vec<Millis>) -> WaitStats {
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
            pods: n as u64,
            p50_ms: rank(0.50),
            p95_ms: rank(0.95),
            max_ms: waits[n - 1],
            mean_ms: waits.iter().sum::<u64>() as f64 / n as f64,
        }
    }
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
    pub kwh: f64,
    /// Every machine on for the whole run, drawing idle power plus the same load.
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
    pub counters: Counters,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<TimelineEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<SeriesPoint>,
}

pub(super) fn build(sim: &Sim<'_>, end: Millis, series: Vec<SeriesPoint>) -> Report {
    let sc = sim.sc;
    let price = sc.electricity.price_per_kwh;
    let hours = end as f64 / HOUR as f64;
    let mut group_waits: Vec<Vec<Millis>> = vec![Vec::new(); sc.groups.len()];
    let mut all_waits = Vec::with_capacity(sim.cluster.pods.len());
    for p in &sim.cluster.pods {
        if let (Some(w), Some(n)) = (p.waited, p.first_node) {
            all_waits.push(w);
            group_waits[sc.machines[n].group].push(w);
        }
    }
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
        g.baseline_kwh += baseline;
        machines.push(MachineReport {
            name: model.name.clone(),
            group: sc.groups[model.group].name.clone(),
            hours_on: s.on_ms as f64 / HOUR as f64,
            boots: s.boots,
            failed_boots: s.failed_boots,
            kwh,
            final_phase: sim.machines[i].lifecycle.phase().to_string(),
        });
    }
    let mut total = GroupReport {
        name: "total".to_owned(),
        ..GroupReport::default()
    };
    for (g, waits) in groups.iter_mut().zip(group_waits) {
        g.cost = g.kwh * price;
        g.baseline_cost = g.baseline_kwh * price;
        g.savings = g.baseline_cost - g.cost;
        g.savings_percent = percent(g.baseline_kwh - g.kwh, g.baseline_kwh);
        g.wait = WaitStats::from(waits);
        total.machines += g.machines;
        total.min_size += g.min_size;
        total.max_size += g.max_size;
        total.machine_hours_on += g.machine_hours_on;
        total.boots += g.boots;
        total.failed_boots += g.failed_boots;
        total.power_offs += g.power_offs;
        total.kwh += g.kwh;
        total.baseline_kwh += g.baseline_kwh;
    }
    total.cost = total.kwh * price;
    total.baseline_cost = total.baseline_kwh * price;
    total.savings = total.baseline_cost - total.cost;
    total.savings_percent = percent(total.baseline_kwh - total.kwh, total.baseline_kwh);
    let wait = WaitStats::from(all_waits);
    total.wait = wait.clone();
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
        pods_never_placed: sim.cluster.pending.len() as u64,
        unschedulable_ms: sim.counters.unschedulable_ms,
        counters: sim.counters.clone(),
        timeline: sim.timeline.clone(),
        series,
    }
}

fn percent(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}
