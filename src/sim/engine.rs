//! The discrete-event engine: a virtual clock (integer milliseconds, converted to
//! `jiff::Timestamp` only at the boundary of the operator's cores), a binary-heap event queue
//! and seeded RNG streams: the workload's, one per machine for its hardware (power actions,
//! boots, shutdowns: the k-th power-on of a machine fails or not whatever the autoscaler did
//! before) and the Cluster Autoscaler's tie-breaks, so changing a CA setting does not change
//! which boots fail. It plays the parts the real world plays for the operator: the machines'
//! power actions, boots and shutdowns, the kubelet registering Node objects, the scheduler and
//! the pods. The decisions are taken by the operator's own code: the machine lifecycle FSM
//! (`operator::machine::reconcile_mut`) for every machine, and the provider core
//! (`operator::provider::ops`) for every call the Cluster Autoscaler model makes.
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use futures::FutureExt as _;
use jiff::{SignedDuration, Timestamp};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::cluster::{Cluster, NodeId, Placed, PodId};
use super::report::{Counters, PowerRequest, Report, SeriesPoint, TimelineEntry};
use super::scenario::Scenario;
use super::units::{HOUR, Millis};
use super::workload::{self, PodSpec};
use crate::operator::machine::{
    Edge, Effect, EventKind, Lifecycle, NodeObs, Observed, OpStatus, OperationKind, Outcome, Phase,
    Policy, PowerState, drive,
};
use crate::operator::provider::{Inventory, PowerChange};

/// What a run should record beyond the summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Keep every event for `--timeline` / JSON.
    pub timeline: bool,
    /// Keep the machines-on / pending-pods series for `--plot` / JSON.
    pub series: bool,
    /// Also run the baselines (autoscaler off: all machines on; the initial subset on).
    pub baselines: bool,
    /// No Cluster Autoscaler: machines keep the power state they start in (baselines).
    pub autoscaler_off: bool,
}

/// A run that broke one of the operator's safety invariants: a bug, never a statistic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invariant violated at {at} (virtual time {offset}) in scenario {scenario:?} (seed {seed}): {what}\n\
     This is a bug in kubectl-homelab's decision code or in the simulator. Please report it with \
     the scenario file and this message."
)]
pub struct InvariantViolation {
    pub scenario: String,
    pub seed: u64,
    pub at: Timestamp,
    pub offset: String,
    pub what: String,
}

/// What the simulated hardware is doing (the truth the operator can only observe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Physical {
    Off,
    /// Powered, booting; `will_boot` false = hangs (never registers).
    Booting {
        will_boot: bool,
    },
    On,
    ShuttingDown,
}

/// The simulated power action (Job, WoL packet, BMC call) for the lifecycle's operation.
#[derive(Clone, Debug)]
pub(super) struct SimOp {
    pub id: String,
    pub kind: OperationKind,
    pub status: SimOpStatus,
    pub succeeds: bool,
    /// A soft power-off confirmed by readback (Redfish): whether it was escalated to a hard one.
    pub soft_off: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum SimOpStatus {
    Running,
    Succeeded,
    Failed(String),
}

/// The simulator's record of one machine.
#[derive(Clone, Debug)]
pub(super) struct MachineSim {
    pub desired: PowerState,
    pub lifecycle: Lifecycle,
    pub policy: Policy,
    pub op: Option<SimOp>,
    pub physical: Physical,
    /// The Node object: `None` = absent; `Some(since)` = registered, NotReady since `since`
    /// when `ready` is false.
    pub node_registered: bool,
    pub node_not_ready_since: Option<Millis>,
    /// When the Node last became Ready (`None`: not Ready).
    pub node_ready_since: Option<Millis>,
    /// Bumped to invalidate pending hardware timers (a cancelled action, a new cycle).
    pub generation: u32,
    /// Scheduled FSM wake-up (deadline / retry), to avoid queueing duplicates.
    pub wake_at: Option<Millis>,
    pub last_power_on: Option<Timestamp>,
    pub boot_durations: Vec<SignedDuration>,
    pub power_on_requested: Option<Timestamp>,
    /// Energy accounting: watts since `watts_since`.
    pub watts: f64,
    pub watts_busy_part: f64,
    pub watts_since: Millis,
    pub powered_since: Option<Millis>,
    pub stats: MachineCounters,
    /// When its power-ons of the last 24 hours started (for `maxBootsPerDay`).
    pub power_ons: Vec<Millis>,
    /// The maintenance it is in (an index into `Scenario::maintenance`).
    pub maintenance: Option<usize>,
}

/// Per-machine totals.
#[derive(Clone, Debug, Default)]
pub(super) struct MachineCounters {
    pub on_ms: Millis,
    pub boots: u32,
    pub failed_boots: u32,
    pub power_offs: u32,
    pub wh: f64,
    pub busy_wh: f64,
    pub cost: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum EventKindSim {
    /// The power action of machine `m` reports done.
    ActionDone {
        m: usize,
        generation: u32,
    },
    /// Machine `m` finished booting: its kubelet registers a Ready Node.
    BootDone {
        m: usize,
        generation: u32,
    },
    /// Machine `m` is off: its Node goes NotReady.
    ShutdownDone {
        m: usize,
        generation: u32,
    },
    /// Reconcile machine `m` (a deadline or retry the FSM asked to be woken for).
    Wake {
        m: usize,
    },
    PodFinish {
        pod: PodId,
        generation: u32,
    },
    /// A `replicas` workload's count changes.
    Replicas {
        workload: u16,
        count: u32,
    },
    AutoscalerScan,
    /// CA's delay after tainting group `group`'s scale-down nodes is over.
    CaDeleteNodes {
        group: usize,
    },
    /// Group `group`'s schedule window in force changes.
    ScheduleChange {
        group: usize,
    },
    /// Maintenance `index` of the scenario starts.
    MaintenanceStart {
        index: usize,
    },
    /// Maintenance `index` of the scenario ends.
    MaintenanceEnd {
        index: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    at: Millis,
    seq: u64,
    kind: EventKindSim,
}

/// The simulation state. Fields are shared with the autoscaler model (`super::autoscaler`).
pub struct Sim<'s> {
    pub(super) sc: &'s Scenario,
    pub(super) opts: RunOptions,
    pub(super) now: Millis,
    start_ms: i64,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    /// Per machine: power actions, boots, shutdowns.
    hw_rng: Vec<SmallRng>,
    /// The Cluster Autoscaler model's random tie-breaks.
    pub(super) ca_rng: SmallRng,
    arrivals: Vec<PodSpec>,
    /// Live pods of each `replicas` workload, oldest first.
    replicas: Vec<Vec<PodId>>,
    next_arrival: usize,
    pub(super) cluster: Cluster,
    pub(super) machines: Vec<MachineSim>,
    pub(super) ca: super::autoscaler::CaState,
    inventory: Option<Inventory>,
    base_views: super::views::BaseViews,
    pub(super) counters: Counters,
    pub(super) timeline: Vec<TimelineEntry>,
    pub(super) power_requests: Vec<PowerRequest>,
    series: Vec<SeriesPoint>,
    last_series: (u32, u32, u32),
    pending_since: Option<Millis>,
    pub(super) placed_buf: Vec<Placed>,
    violation: Option<String>,
    /// Each group's min size in force (its schedule's window, else its `minSize`).
    pub(super) group_min: Vec<u32>,
    /// Each group's warm spares in force.
    pub(super) warm_spares: Vec<Option<crate::operator::api::WarmSpares>>,
}

impl<'s> Sim<'s> {
    pub fn new(sc: &'s Scenario, opts: RunOptions) -> Sim<'s> {
        let mut rng = SmallRng::seed_from_u64(stream_seed(sc.seed, STREAM_WORKLOAD, 0));
        let start_ms = sc.start.as_millisecond();
        let arrivals = workload::generate(&sc.workloads, sc.duration, sc.start, &mut rng);
        let mut cluster = Cluster::new(sc.machines.len(), sc.scheduler);
        cluster.pods.reserve(arrivals.len());
        let machines = sc
            .machines
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let slot = &mut cluster.nodes[i];
                slot.cpu = m.cpu;
                slot.memory = m.memory;
                slot.max_pods = m.max_pods;
                slot.ds_cpu = sc.daemonset_cpu;
                slot.ds_memory = sc.daemonset_memory;
                slot.ds_pods = u32::from(sc.daemonset_cpu > 0 || sc.daemonset_memory > 0);
                slot.no_scale_down = m.scale_down_disabled;
                let boot_durations: Vec<SignedDuration> = m
                    .recent_boots
                    .iter()
                    .map(|&s| SignedDuration::from_secs(i64::from(s)))
                    .collect();
                let policy = Policy {
                    boot_timeout: boot_timeout(m, &boot_durations),
                    shutdown_timeout: m
                        .machine
                        .spec
                        .shutdown_timeout("")
                        .unwrap_or(crate::operator::api::DEFAULT_SHUTDOWN_TIMEOUT),
                    ..Policy::default()
                };
                let on = m.initially_on;
                if on {
                    slot.ready = true;
                }
                MachineSim {
                    desired: m.machine.spec.power_state,
                    // Unknown: the FSM resolves the start state from the (simulated) cluster.
                    lifecycle: Lifecycle::default(),
                    policy,
                    op: None,
                    physical: if on { Physical::On } else { Physical::Off },
                    node_registered: on,
                    node_not_ready_since: None,
                    node_ready_since: on.then_some(0),
                    generation: 0,
                    wake_at: None,
                    last_power_on: None,
                    boot_durations,
                    power_on_requested: None,
                    watts: 0.0,
                    watts_busy_part: 0.0,
                    watts_since: 0,
                    powered_since: on.then_some(0),
                    stats: MachineCounters::default(),
                    power_ons: Vec::new(),
                    maintenance: None,
                }
            })
            .collect();
        let ca = super::autoscaler::CaState::new(sc);
        let mut sim = Sim {
            sc,
            opts,
            now: 0,
            start_ms,
            queue: BinaryHeap::new(),
            seq: 0,
            hw_rng: (0..sc.machines.len())
                .map(|m| SmallRng::seed_from_u64(stream_seed(sc.seed, STREAM_HARDWARE, m as u64)))
                .collect(),
            ca_rng: SmallRng::seed_from_u64(stream_seed(sc.seed, STREAM_CA, 0)),
            replicas: vec![Vec::new(); sc.workloads.len()],
            arrivals,
            next_arrival: 0,
            cluster,
            machines,
            ca,
            inventory: None,
            base_views: super::views::base_views(sc),
            counters: Counters::default(),
            timeline: Vec::new(),
            power_requests: Vec::new(),
            series: Vec::new(),
            last_series: (u32::MAX, u32::MAX, u32::MAX),
            pending_since: None,
            placed_buf: Vec::new(),
            violation: None,
            group_min: sc.groups.iter().map(|g| g.min).collect(),
            warm_spares: sc
                .groups
                .iter()
                .map(|g| g.group.spec.warm_spares.clone())
                .collect(),
        };
        for m in 0..sim.machines.len() {
            sim.update_watts(m);
        }
        for (at, workload, count) in workload::replica_steps(&sc.workloads, sc.duration) {
            sim.schedule(at, EventKindSim::Replicas { workload, count });
        }
        sim
    }

    /// Virtual time → the timestamp handed to the cores.
    pub(super) fn ts(&self, t: Millis) -> Timestamp {
        let ms = self
            .start_ms
            .saturating_add(i64::try_from(t).unwrap_or(i64::MAX));
        Timestamp::from_millisecond(ms).unwrap_or(Timestamp::MAX)
    }

    /// Timestamp from a core → virtual time (never before now: a deadline in the past is due).
    fn millis_of(&self, t: Timestamp) -> Millis {
        let ms = t.as_millisecond() - self.start_ms;
        u64::try_from(ms).unwrap_or(0).max(self.now)
    }

    pub(super) fn schedule(&mut self, at: Millis, kind: EventKindSim) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            kind,
        }));
    }

    pub(super) fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    pub(super) fn note(&mut self, machine: Option<usize>, group: Option<usize>, what: String) {
        if self.opts.timeline {
            let group = group.or_else(|| machine.map(|m| self.sc.machines[m].group));
            self.timeline.push(TimelineEntry {
                at: self.now,
                time: self.ts(self.now),
                machine: machine.map(|m| self.sc.machines[m].name.clone()),
                group: group.map(|g| self.sc.groups[g].name.clone()),
                what,
            });
        }
    }

    /// Runs to the end. `progress` is called with the virtual time about every virtual hour.
    pub fn run(
        mut self,
        progress: &mut dyn FnMut(Millis, Millis),
    ) -> Result<Report, InvariantViolation> {
        let end = self.sc.duration;
        // The operator starts: every machine is reconciled once from Unknown.
        for m in 0..self.machines.len() {
            self.reconcile(m);
        }
        if !self.opts.autoscaler_off {
            // The operator's schedule, then the maintenance the scenario plans.
            for g in 0..self.sc.groups.len() {
                self.apply_schedule(g);
            }
            for (index, mt) in self.sc.maintenance.iter().enumerate() {
                self.schedule(mt.from, EventKindSim::MaintenanceStart { index });
                if let Some(to) = mt.to {
                    self.schedule(to, EventKindSim::MaintenanceEnd { index });
                }
            }
            self.schedule(0, EventKindSim::AutoscalerScan);
        }
        let mut next_progress = HOUR;
        loop {
            let next_event = self.queue.peek().map(|Reverse(q)| q.at);
            let next_pod = self.arrivals.get(self.next_arrival).map(|p| p.arrival);
            let (at, is_pod) = match (next_event, next_pod) {
                (Some(e), Some(p)) if p < e => (p, true),
                (Some(e), _) => (e, false),
                (None, Some(p)) => (p, true),
                (None, None) => break,
            };
            if at >= end {
                break;
            }
            self.advance(at);
            if at >= next_progress {
                progress(at, end);
                next_progress = (at / HOUR + 1) * HOUR;
            }
            if is_pod {
                let spec = self.arrivals[self.next_arrival];
                self.next_arrival += 1;
                self.pod_arrives(spec);
            } else if let Some(Reverse(q)) = self.queue.pop() {
                self.handle(q.kind);
            }
            if let Some(what) = self.cluster.overcommit.take() {
                self.violate(format!("overcommit: {what}"));
            }
            if let Some(what) = self.violation.take() {
                return Err(InvariantViolation {
                    scenario: self.sc.name.clone(),
                    seed: self.sc.seed,
                    at: self.ts(self.now),
                    offset: super::units::format_millis(self.now),
                    what,
                });
            }
            self.record_series();
        }
        self.advance(end);
        progress(end, end);
        if let Some(what) = self.pods_unaccounted() {
            return Err(InvariantViolation {
                scenario: self.sc.name.clone(),
                seed: self.sc.seed,
                at: self.ts(self.now),
                offset: super::units::format_millis(self.now),
                what,
            });
        }
        Ok(self.finish())
    }

    /// Every pod that arrived is finished, deleted, running on a node or pending, exactly once.
    fn pods_unaccounted(&self) -> Option<String> {
        let c = &self.cluster;
        let running: usize = c.nodes.iter().map(|n| n.pods.len()).sum();
        let finished = c.pods.iter().filter(|p| p.finished).count();
        let deleted = c.pods.iter().filter(|p| p.deleted && !p.finished).count();
        let pending = c.pending.len();
        let arrived = c.pods.len();
        (running + finished + deleted + pending != arrived
            || self.counters.pods != arrived as u64)
            .then(|| {
                format!(
                    "pods not accounted for at the end: {arrived} arrived ({} counted), {finished} finished, {deleted} deleted, {running} running, {pending} pending",
                    self.counters.pods
                )
            })
    }

    /// Drains a node for CA or the operator: every pod back to pending, their lost work and
    /// eviction counted.
    pub(super) fn evict_node(&mut self, m: usize) -> usize {
        let evicted = self.cluster.evict_all(m, self.now);
        if evicted > 0 {
            self.counters.evictions += evicted as u64;
            self.update_watts(m);
        }
        evicted
    }

    fn replicas_to(&mut self, workload: u16, count: u32) {
        let w = usize::from(workload);
        let Some(wl) = self.sc.workloads.get(w) else {
            return;
        };
        let live = self.replicas[w].len() as u32;
        let mut out = std::mem::take(&mut self.placed_buf);
        if count > live {
            let Some(t) = wl.template else { return };
            for _ in live..count {
                let spec = PodSpec {
                    arrival: self.now,
                    cpu: t.cpu,
                    memory: t.memory,
                    duration: workload::FOREVER,
                    workload,
                };
                let id = self.cluster.arrive(spec, self.now, &mut out);
                self.counters.pods += 1;
                self.replicas[w].push(id);
            }
        } else if count < live {
            // A ReplicaSet scaling down deletes unscheduled pods first, then the newest.
            let mut victims: Vec<PodId> = self.replicas[w]
                .iter()
                .copied()
                .filter(|&p| self.cluster.pods[p as usize].node.is_none())
                .rev()
                .collect();
            victims.extend(
                self.replicas[w]
                    .iter()
                    .copied()
                    .filter(|&p| self.cluster.pods[p as usize].node.is_some())
                    .rev(),
            );
            victims.truncate((live - count) as usize);
            for &p in &victims {
                let node = self.cluster.pods[p as usize].node;
                self.cluster.delete(p, self.now, &mut out);
                if let Some(n) = node {
                    self.update_watts(n);
                }
            }
            self.replicas[w].retain(|p| !victims.contains(p));
        }
        self.note(
            None,
            None,
            format!("workload {}: {live} → {count} replicas", wl.name),
        );
        self.after_placements(&mut out);
        self.placed_buf = out;
    }

    fn advance(&mut self, to: Millis) {
        if !self.cluster.pending.is_empty()
            && let Some(since) = self.pending_since
        {
            self.counters.unschedulable_ms += to - since;
            self.pending_since = Some(to);
        }
        self.now = to;
    }

    fn record_series(&mut self) {
        let pending = self.cluster.pending.len() as u32;
        if pending > 0 && self.pending_since.is_none() {
            self.pending_since = Some(self.now);
        } else if pending == 0 {
            self.pending_since = None;
        }
        if !self.opts.series {
            return;
        }
        let on = self
            .machines
            .iter()
            .filter(|m| m.physical != Physical::Off)
            .count() as u32;
        let ready = self.cluster.nodes.iter().filter(|n| n.ready).count() as u32;
        let point = (on, ready, pending);
        if point != self.last_series {
            self.last_series = point;
            self.series.push(SeriesPoint {
                at: self.now,
                powered: on,
                ready,
                pending,
            });
        }
    }

    fn handle(&mut self, kind: EventKindSim) {
        match kind {
            EventKindSim::PodFinish { pod, generation } => {
                let node = self.cluster.pods[pod as usize].node;
                let mut out = std::mem::take(&mut self.placed_buf);
                self.cluster.finish(pod, generation, self.now, &mut out);
                if let Some(n) = node {
                    self.update_watts(n);
                }
                self.after_placements(&mut out);
                self.placed_buf = out;
                if let Some(n) = node
                    && self.cluster.nodes[n].pods.is_empty()
                    && self.machines[n].desired == PowerState::Off
                {
                    // A draining node became empty: the operator's controller sees it.
                    self.reconcile(n);
                }
            }
            EventKindSim::Replicas { workload, count } => self.replicas_to(workload, count),
            EventKindSim::AutoscalerScan => {
                self.autoscaler_scan();
                let next = self.now + self.sc.autoscaler.scan_interval;
                self.schedule(next, EventKindSim::AutoscalerScan);
            }
            EventKindSim::CaDeleteNodes { group } => self.ca_delete_nodes(group),
            EventKindSim::ScheduleChange { group } => self.apply_schedule(group),
            EventKindSim::MaintenanceStart { index } => self.maintenance_start(index),
            EventKindSim::MaintenanceEnd { index } => self.maintenance_end(index),
            EventKindSim::Wake { m } => {
                if self.machines[m].wake_at == Some(self.now) {
                    self.machines[m].wake_at = None;
                }
                self.reconcile(m);
            }
            EventKindSim::ActionDone { m, generation } => {
                if self.machines[m].generation != generation {
                    return;
                }
                self.action_done(m);
                self.reconcile(m);
            }
            EventKindSim::BootDone { m, generation } => {
                if self.machines[m].generation != generation {
                    return;
                }
                self.machines[m].physical = Physical::On;
                self.machines[m].node_registered = true;
                self.machines[m].node_not_ready_since = None;
                self.machines[m].node_ready_since = Some(self.now);
                self.cluster.nodes[m].ready = true;
                // The operator annotates the Node of a scaleDownDisabled machine so CA leaves it
                // alone (`cluster-autoscaler.kubernetes.io/scale-down-disabled`).
                self.cluster.nodes[m].no_scale_down = self.sc.machines[m].scale_down_disabled;
                self.invalidate_inventory();
                self.update_watts(m);
                self.note(Some(m), None, "node registered and Ready".to_owned());
                self.reconcile(m);
                let mut out = std::mem::take(&mut self.placed_buf);
                self.cluster.fill_node(m, self.now, &mut out);
                self.after_placements(&mut out);
                self.placed_buf = out;
            }
            EventKindSim::ShutdownDone { m, generation } => {
                if self.machines[m].generation != generation {
                    return;
                }
                if !self.cluster.nodes[m].pods.is_empty() {
                    let n = self.cluster.nodes[m].pods.len();
                    self.violate(format!(
                        "machine {} powered off with {n} pod(s) still bound to its node",
                        self.sc.machines[m].name
                    ));
                }
                self.set_physical(m, Physical::Off);
                self.machines[m].stats.power_offs += 1;
                if self.machines[m].node_registered {
                    self.machines[m].node_not_ready_since = Some(self.now);
                }
                self.cluster.nodes[m].ready = false;
                self.invalidate_inventory();
                self.note(Some(m), None, "powered off".to_owned());
                self.reconcile(m);
            }
        }
    }

    fn pod_arrives(&mut self, spec: PodSpec) {
        let mut out = std::mem::take(&mut self.placed_buf);
        self.cluster.arrive(spec, self.now, &mut out);
        self.counters.pods += 1;
        self.after_placements(&mut out);
        self.placed_buf = out;
    }

    /// Schedules finish events for placed pods and updates the nodes' power draw.
    pub(super) fn after_placements(&mut self, out: &mut Vec<Placed>) {
        for p in out.drain(..) {
            // A finish after the end never happens.
            if p.finish_at < self.sc.duration {
                self.schedule(
                    p.finish_at,
                    EventKindSim::PodFinish {
                        pod: p.pod,
                        generation: p.generation,
                    },
                );
            }
            self.update_watts(p.node);
        }
    }

    /// The Inventory the provider core decides from, rebuilt from the simulated world only when
    /// something it reads has changed.
    pub(super) fn inventory(&mut self) -> &mut Inventory {
        if self.inventory.is_none() {
            self.counters.inventory_builds += 1;
            self.inventory = Some(super::views::build_inventory(self, &self.base_views));
        }
        self.inventory.get_or_insert_with(Inventory::default)
    }

    pub(super) fn invalidate_inventory(&mut self) {
        self.inventory = None;
        self.ca.invalidate_templates();
    }

    /// Applies the provider's decision the way the gRPC service does (desired `spec.powerState`
    /// patched), then lets the machine controller react.
    pub(super) fn apply_changes(&mut self, changes: &[PowerChange]) {
        for c in changes {
            let Some(m) = self.machine_index(&c.machine.namespace, &c.machine.name) else {
                self.violate(format!(
                    "the provider decided on machine {} which the simulation does not know",
                    c.machine
                ));
                continue;
            };
            if self.opts.timeline && self.machines[m].desired != c.desired {
                self.power_requests.push(PowerRequest {
                    at: self.now,
                    machine: self.sc.machines[m].name.clone(),
                    desired: c.desired,
                });
            }
            self.machines[m].desired = c.desired;
            if c.desired == PowerState::On {
                self.machines[m].power_on_requested = Some(c.at);
            }
        }
        self.invalidate_inventory();
        for c in changes {
            if let Some(m) = self.machine_index(&c.machine.namespace, &c.machine.name) {
                self.reconcile(m);
            }
        }
    }

    pub(super) fn machine_index(&self, namespace: &str, name: &str) -> Option<usize> {
        self.sc.machines.iter().position(|m| {
            m.name == name && m.machine.metadata.namespace.as_deref().unwrap_or("") == namespace
        })
    }

    /// The machine controller: observe, call the FSM, perform its effects; repeat while the
    /// effects changed what it observes (e.g. a drain emptied the node). The loop is the core's
    /// (`operator::machine::drive`), the one the operator's controller runs.
    pub(super) fn reconcile(&mut self, m: usize) {
        let now = self.ts(self.now);
        let policy = self.machines[m].policy;
        let mut edge = SimPass {
            sim: self,
            m,
            before: Phase::Unknown,
        };
        // The simulator's acts are synchronous: the loop's future is ready on its first poll.
        if drive(&mut edge, now, &policy).now_or_never().is_none() {
            self.violate("the machine controller's pass loop waited on something".to_owned());
        }
    }

    /// Takes one pass's decision for machine `m` (whose phase was `before`): bookkeeping, the
    /// effects, the wake-up. Returns whether the effects changed what the next pass observes.
    fn act(&mut self, m: usize, before: Phase, outcome: Outcome) -> bool {
        if let Some(r) = outcome.rejected {
            self.violate(format!(
                "the machine lifecycle rejected an event for {}: {r}",
                self.sc.machines[m].name
            ));
            return false;
        }
        if !outcome.fired.is_empty() {
            self.invalidate_inventory();
            self.counters.transitions += outcome.fired.len() as u64;
            let after = self.machines[m].lifecycle.phase();
            for row in &outcome.fired {
                if row.to == Phase::Failed
                    && matches!(
                        row.event,
                        EventKind::ActionFailed | EventKind::BootDeadlinePassed
                    )
                    && matches!(row.from, Phase::PoweringOn | Phase::Booting)
                {
                    self.machines[m].stats.failed_boots += 1;
                }
            }
            if before != after {
                self.note(Some(m), None, format!("lifecycle {before} → {after}"));
            }
        }
        let mut again = false;
        for effect in outcome.effects {
            again |= self.perform(m, effect);
        }
        if let Some(at) = outcome.requeue_at {
            let at = self.millis_of(at);
            if self.machines[m]
                .wake_at
                .is_none_or(|w| w > at || w < self.now)
            {
                self.machines[m].wake_at = Some(at);
                self.schedule(at, EventKindSim::Wake { m });
            }
        }
        again
    }

    /// Performs one FSM effect on the simulated world. Returns whether the machine should be
    /// reconciled again at once (what it observes changed).
    fn perform(&mut self, m: usize, effect: Effect) -> bool {
        match effect {
            Effect::StartPowerOn { op, .. } => {
                let now = self.now;
                let ons = &mut self.machines[m].power_ons;
                ons.retain(|&t| t + super::units::DAY > now);
                ons.push(now);
                self.start_action(m, op, OperationKind::PowerOn);
                false
            }
            Effect::StartPowerOff { op, .. } => {
                if !self.cluster.nodes[m].pods.is_empty() {
                    let n = self.cluster.nodes[m].pods.len();
                    self.violate(format!(
                        "power-off of machine {} started with {n} pod(s) on its node",
                        self.sc.machines[m].name
                    ));
                }
                self.start_action(m, op, OperationKind::PowerOff);
                false
            }
            Effect::CancelOperation { op } => {
                if self.machines[m].op.as_ref().is_some_and(|o| o.id == op) {
                    let ms = &mut self.machines[m];
                    if ms
                        .op
                        .as_ref()
                        .is_some_and(|o| o.status == SimOpStatus::Running)
                    {
                        // The action had not acted yet: it never will.
                        ms.generation += 1;
                    }
                    ms.op = None;
                }
                false
            }
            Effect::Cordon => {
                self.cluster.nodes[m].cordoned = true;
                false
            }
            Effect::Uncordon => {
                self.cluster.nodes[m].cordoned = false;
                let mut out = std::mem::take(&mut self.placed_buf);
                self.cluster.fill_node(m, self.now, &mut out);
                self.after_placements(&mut out);
                self.placed_buf = out;
                false
            }
            Effect::Drain => {
                let evicted = self.evict_node(m);
                if evicted == 0 {
                    return false;
                }
                self.note(Some(m), None, format!("drained: {evicted} pod(s) evicted"));
                let mut out = std::mem::take(&mut self.placed_buf);
                self.cluster.schedule_pending(self.now, &mut out);
                self.after_placements(&mut out);
                self.placed_buf = out;
                true
            }
            Effect::DeleteNode => {
                if self.machines[m].node_registered {
                    self.machines[m].node_registered = false;
                    self.machines[m].node_not_ready_since = None;
                    self.cluster.nodes[m].ready = false;
                    self.cluster.nodes[m].cordoned = false;
                    self.invalidate_inventory();
                }
                false
            }
            Effect::AdoptAsWantedOn => {
                if self.machines[m].desired != PowerState::On {
                    self.machines[m].desired = PowerState::On;
                    self.invalidate_inventory();
                    return true;
                }
                false
            }
            Effect::PowerObserved { state, at } => {
                if state == PowerState::On {
                    self.machines[m].last_power_on = Some(at);
                }
                false
            }
            Effect::BootDuration(d) => {
                let ms = &mut self.machines[m];
                ms.stats.boots += 1;
                ms.boot_durations.push(d);
                let excess = ms.boot_durations.len().saturating_sub(10);
                ms.boot_durations.drain(..excess);
                // `bootTimeout: auto` follows the boots as they are learned, as the operator's
                // `Machine::boot_timeout` does from `status.recentBootSeconds`.
                ms.policy.boot_timeout = boot_timeout(&self.sc.machines[m], &ms.boot_durations);
                false
            }
            Effect::Emit(e) => {
                if self.opts.timeline {
                    let kind = if e.warning { "warning" } else { "event" };
                    self.note(Some(m), None, format!("{kind} {}: {}", e.reason, e.message));
                }
                false
            }
        }
    }

    fn start_action(&mut self, m: usize, op: String, kind: OperationKind) {
        let model = &self.sc.machines[m];
        let fail_p = match kind {
            OperationKind::PowerOn => model.power_on_failure,
            OperationKind::PowerOff => model.power_off_failure,
        };
        let rng = &mut self.hw_rng[m];
        let succeeds = !(fail_p > 0.0 && rng.random::<f64>() < fail_p);
        let mut took = match kind {
            OperationKind::PowerOn => model.power_on_action_time.sample(rng),
            OperationKind::PowerOff => model.power_off_action_time.sample(rng),
        };
        let mut soft_off = None;
        if let (OperationKind::PowerOff, Some(soft), true) = (kind, &model.soft_off, succeeds) {
            // Done once the BMC reads Off: after the OS shut down, or when it cut the power.
            let ignored = soft.ignored > 0.0 && rng.random::<f64>() < soft.ignored;
            let shutdown = model.shutdown_time.sample(rng);
            let escalated = ignored || shutdown > soft.force_off_after;
            took += if escalated {
                soft.force_off_after
            } else {
                shutdown
            };
            soft_off = Some(escalated);
        }
        let ms = &mut self.machines[m];
        ms.generation += 1;
        ms.op = Some(SimOp {
            id: op,
            kind,
            status: SimOpStatus::Running,
            succeeds,
            soft_off,
        });
        let generation = ms.generation;
        self.schedule(self.now + took, EventKindSim::ActionDone { m, generation });
    }

    fn action_done(&mut self, m: usize) {
        let Some(op) = self.machines[m].op.clone() else {
            return;
        };
        if op.status != SimOpStatus::Running {
            return;
        }
        if !op.succeeds {
            let reason = match op.kind {
                OperationKind::PowerOn => "simulated power-on action failure",
                OperationKind::PowerOff => "simulated power-off action failure",
            };
            if let Some(o) = self.machines[m].op.as_mut() {
                o.status = SimOpStatus::Failed(reason.to_owned());
            }
            return;
        }
        if let Some(o) = self.machines[m].op.as_mut() {
            o.status = SimOpStatus::Succeeded;
        }
        let generation = self.machines[m].generation;
        match op.kind {
            OperationKind::PowerOn => {
                if matches!(self.machines[m].physical, Physical::On) {
                    return;
                }
                let model = &self.sc.machines[m];
                let rng = &mut self.hw_rng[m];
                let will_boot =
                    !(model.never_boots > 0.0 && rng.random::<f64>() < model.never_boots);
                let boot = model.boot_time.sample(rng);
                self.set_physical(m, Physical::Booting { will_boot });
                if will_boot {
                    self.schedule(self.now + boot, EventKindSim::BootDone { m, generation });
                } else {
                    self.note(Some(m), None, "hangs while booting (simulated)".to_owned());
                }
            }
            OperationKind::PowerOff => {
                if self.machines[m].physical == Physical::Off {
                    return;
                }
                // A readback-confirmed power-off is done when the machine is off already.
                let took = match op.soft_off {
                    Some(escalated) => {
                        if escalated {
                            self.note(
                                Some(m),
                                None,
                                "GracefulShutdown not done within forceOffAfter: ForceOff \
                                 (simulated)"
                                    .to_owned(),
                            );
                        }
                        0
                    }
                    None => self.sc.machines[m]
                        .shutdown_time
                        .sample(&mut self.hw_rng[m]),
                };
                // The kubelet stops: the node is NotReady from here on.
                self.cluster.nodes[m].ready = false;
                if !self.cluster.nodes[m].pods.is_empty() {
                    let n = self.cluster.nodes[m].pods.len();
                    self.violate(format!(
                        "machine {} shuts down with {n} pod(s) still on its node",
                        self.sc.machines[m].name
                    ));
                }
                self.set_physical(m, Physical::ShuttingDown);
                self.schedule(
                    self.now + took,
                    EventKindSim::ShutdownDone { m, generation },
                );
            }
        }
    }

    fn set_physical(&mut self, m: usize, p: Physical) {
        let was_off = self.machines[m].physical == Physical::Off;
        self.machines[m].physical = p;
        let is_off = p == Physical::Off;
        if was_off && !is_off {
            self.machines[m].powered_since = Some(self.now);
        } else if !was_off
            && is_off
            && let Some(s) = self.machines[m].powered_since.take()
        {
            self.machines[m].stats.on_ms += self.now - s;
        }
        self.update_watts(m);
    }

    /// Accounts energy up to now at the old draw and sets the new one: the draw of the
    /// machine's power phase by the operator's model (`operator::energy::draw`), on at the
    /// node's CPU utilization.
    pub(super) fn update_watts(&mut self, m: NodeId) {
        use crate::operator::energy::{PowerPhase, draw};
        let model = &self.sc.machines[m];
        let (phase, load) = match self.machines[m].physical {
            Physical::Off => (PowerPhase::Off, 0.0),
            Physical::Booting { .. } => (PowerPhase::Booting, 0.0),
            Physical::ShuttingDown => (PowerPhase::ShuttingDown, 0.0),
            Physical::On => (PowerPhase::On, self.cluster.nodes[m].cpu_utilization()),
        };
        let watts = draw(Some(&model.watts), phase, load).unwrap_or(0.0);
        let busy_part = match phase {
            PowerPhase::On => watts - draw(Some(&model.watts), phase, 0.0).unwrap_or(0.0),
            _ => 0.0,
        };
        let ms = &mut self.machines[m];
        let hours = (self.now - ms.watts_since) as f64 / HOUR as f64;
        ms.stats.cost += self.sc.electricity.cost(ms.watts_since, self.now, ms.watts);
        ms.stats.wh += ms.watts * hours;
        ms.stats.busy_wh += ms.watts_busy_part * hours;
        ms.watts = watts;
        ms.watts_busy_part = busy_part;
        ms.watts_since = self.now;
    }

    fn finish(mut self) -> Report {
        let end = self.sc.duration;
        for m in 0..self.machines.len() {
            self.update_watts(m);
            if let Some(s) = self.machines[m].powered_since.take() {
                self.machines[m].stats.on_ms += end - s;
            }
        }
        let series = std::mem::take(&mut self.series);
        super::report::build(&self, end, series)
    }
}

/// The machine's boot deadline: `spec.bootTimeout`, or with `auto` the operator's learned one
/// (`BootStats::auto_timeout`) from the boots so far, the default until there are enough.
fn boot_timeout(model: &super::scenario::MachineModel, boots: &[SignedDuration]) -> SignedDuration {
    let spec = &model.machine.spec;
    if spec.boot_timeout_auto() {
        let secs: Vec<u32> = boots
            .iter()
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
            .collect();
        return crate::operator::machine::BootStats::of(&secs)
            .and_then(|s| s.auto_timeout())
            .unwrap_or(crate::operator::api::DEFAULT_BOOT_TIMEOUT);
    }
    spec.boot_timeout("")
        .unwrap_or(crate::operator::api::DEFAULT_BOOT_TIMEOUT)
}

const STREAM_WORKLOAD: u64 = 1;
const STREAM_HARDWARE: u64 = 2;
const STREAM_CA: u64 = 3;

/// The seed of one random stream: the scenario seed, the stream and its index mixed
/// (SplitMix64's finaliser), so streams do not overlap.
fn stream_seed(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The simulated machine controller's side of the core's pass loop, for machine `m`.
struct SimPass<'a, 's> {
    sim: &'a mut Sim<'s>,
    m: usize,
    /// The phase before the current pass's decision.
    before: Phase,
}

impl Edge for SimPass<'_, '_> {
    type Error = std::convert::Infallible;

    fn observe(&mut self) -> (&mut Lifecycle, Observed<'_>) {
        let (sim, m) = (&mut *self.sim, self.m);
        let node = if sim.machines[m].node_registered {
            NodeObs::Registered {
                ready: sim.cluster.nodes[m].ready,
                provider_id_matches: true,
                not_ready_since: sim.machines[m].node_not_ready_since.map(|t| sim.ts(t)),
                ready_since: sim.machines[m]
                    .node_ready_since
                    .filter(|_| sim.cluster.nodes[m].ready)
                    .map(|t| sim.ts(t)),
            }
        } else {
            NodeObs::Absent
        };
        let pods_present = !sim.cluster.nodes[m].pods.is_empty();
        let ms = &mut sim.machines[m];
        self.before = ms.lifecycle.phase();
        let operation = match (&ms.lifecycle.operation, &ms.op) {
            (Some(lop), Some(sop)) if lop.id == sop.id => match &sop.status {
                SimOpStatus::Running => OpStatus::Running,
                SimOpStatus::Succeeded => OpStatus::Succeeded,
                SimOpStatus::Failed(r) => OpStatus::Failed { reason: r },
            },
            _ => OpStatus::Absent,
        };
        let observed = Observed {
            desired: ms.desired,
            node,
            operation,
            pods_present,
            manual_retry: false,
        };
        (&mut ms.lifecycle, observed)
    }

    async fn act(&mut self, outcome: Outcome) -> Result<bool, Self::Error> {
        Ok(self.sim.act(self.m, self.before, outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scenario::NoTraceFiles;

    fn one_burst() -> Scenario {
        let text = include_str!("../../tests/data/sim/one-burst.yaml");
        match Scenario::parse("one-burst.yaml", text, &NoTraceFiles) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn powering_off_a_node_with_pods_is_a_violation_not_a_statistic() {
        let sc = one_burst();
        let mut sim = Sim::new(&sc, RunOptions::default());
        // The machine is up with a pod on it.
        sim.machines[0].physical = Physical::On;
        sim.machines[0].node_registered = true;
        sim.cluster.nodes[0].ready = true;
        let mut out = Vec::new();
        sim.cluster.arrive(sim.arrivals[0], 0, &mut out);
        assert_eq!(out.len(), 1);
        let off = Effect::StartPowerOff {
            op: "off-1".to_owned(),
            deadline: sim.ts(60_000),
        };
        sim.perform(0, off);
        let what = sim.violation.clone().expect("a violation");
        assert!(
            what.contains("power-off of machine box started with 1 pod(s)"),
            "{what}"
        );
        // The run stops with a bug-report message.
        let err = sim.run(&mut |_, _| {}).expect_err("the run must fail");
        assert!(err.to_string().contains("This is a bug"), "{err}");
    }

    #[test]
    fn virtual_time_converts_to_timestamps_and_back() {
        let sc = one_burst();
        let sim = Sim::new(&sc, RunOptions::default());
        let t = sim.ts(90_000);
        assert_eq!(t.as_second() - sc.start.as_second(), 90);
        assert_eq!(sim.millis_of(t), 90_000);
    }

    /// The every-pod-accounted-for invariant: a pod that vanished from the pending queue
    /// without being placed, finished or deleted fails the run.
    #[test]
    fn a_pod_lost_by_the_simulation_fails_the_run() {
        let sc = one_burst();
        let mut sim = Sim::new(&sc, RunOptions::default());
        let mut out = Vec::new();
        let spec = sim.arrivals[0];
        sim.cluster.arrive(spec, 0, &mut out);
        sim.counters.pods += 1;
        sim.cluster.pending.clear();
        let err = sim.run(&mut |_, _| {}).expect_err("the run must fail");
        assert!(err.what.contains("not accounted for"), "{err}");
    }

    /// `bootTimeout: auto`: the deadline starts from the boots recorded before the run
    /// (`status.recentBootSeconds`, kept by `--from-cluster`) and follows each boot as the
    /// operator's `BootStats::auto_timeout` does; the default before three boots.
    #[test]
    fn an_auto_boot_timeout_starts_from_the_recorded_boots_and_follows_new_ones() {
        let text = include_str!("../../tests/data/sim/one-burst.yaml").replace(
            "      powerState: \"off\"\n",
            "      powerState: \"off\"\n      bootTimeout: auto\n",
        );
        let mut sc = match Scenario::parse("one-burst.yaml", &text, &NoTraceFiles) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let sim = Sim::new(&sc, RunOptions::default());
        assert_eq!(
            sim.machines[0].policy.boot_timeout,
            crate::operator::api::DEFAULT_BOOT_TIMEOUT
        );
        sc.machines[0].recent_boots = vec![200, 200, 200];
        let mut sim = Sim::new(&sc, RunOptions::default());
        // p95 200 s plus half of it.
        assert_eq!(
            sim.machines[0].policy.boot_timeout,
            SignedDuration::from_secs(300)
        );
        sim.perform(0, Effect::BootDuration(SignedDuration::from_secs(400)));
        // p95 of [200, 200, 200, 400] is 400 s, plus half of it.
        assert_eq!(
            sim.machines[0].policy.boot_timeout,
            SignedDuration::from_secs(600)
        );
    }

    /// The simulator draws what the operator's model (`operator::energy::draw`) says for each
    /// physical phase, and the older `simulation.bootWatts` is the same as `watts.boot`.
    #[test]
    fn each_physical_phase_draws_the_operator_models_watts_and_boot_watts_is_watts_boot() {
        use crate::operator::energy::{PowerPhase, draw};
        let base = include_str!("../../tests/data/sim/one-burst.yaml");
        let parse = |text: &str| match Scenario::parse("one-burst.yaml", text, &NoTraceFiles) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let old = parse(&base.replace(
            "  powerActionTime: 5s\n",
            "  powerActionTime: 5s\n  bootWatts: 50\n",
        ));
        let new = parse(&base.replace(
            "watts: {idle: 10, busy: 30, standby: 1}",
            "watts: {idle: 10, busy: 30, standby: 1, boot: 50, shutdown: 12}",
        ));
        assert_eq!(old.machines[0].watts.boot, Some(50.0));
        assert_eq!(new.machines[0].watts.boot, Some(50.0));
        let mut sim = Sim::new(&new, RunOptions::default());
        let w = new.machines[0].watts;
        for (physical, phase) in [
            (Physical::Off, PowerPhase::Off),
            (Physical::Booting { will_boot: true }, PowerPhase::Booting),
            (Physical::On, PowerPhase::On),
            (Physical::ShuttingDown, PowerPhase::ShuttingDown),
        ] {
            sim.machines[0].physical = physical;
            sim.update_watts(0);
            assert_eq!(
                Some(sim.machines[0].watts),
                draw(Some(&w), phase, 0.0),
                "{phase:?}"
            );
        }
        assert_eq!(
            sim.machines[0].watts, 12.0,
            "shutting down at watts.shutdown"
        );
    }
}
