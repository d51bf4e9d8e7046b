//! The simulated Kubernetes side: Node objects of powered-on machines, pods, and a scheduler
//! that places pending pods onto Ready, schedulable nodes.
//!
//! Simplifications: pods have only CPU and memory requests and a pod count; no affinity,
//! taints or priorities; DaemonSet pods are a fixed overhead on every node. An evicted pod
//! (drain before power-off) starts over on its new node with its full duration: the time it had
//! run is lost work, the time until it is placed again is re-wait.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::units::Millis;
use super::workload::{FOREVER, PodSpec};

/// How the scheduler picks among the nodes a pod fits on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SchedulerPolicy {
    /// kube-scheduler's default scoring: the node left with the most free room (spreads pods).
    #[default]
    LeastAllocated,
    /// Bin-packing (kube-scheduler's `MostAllocated`): the node left with the least free room.
    MostAllocated,
    /// The first node, in machine order, with room.
    FirstFit,
}

pub type PodId = u32;
pub type NodeId = usize;

#[derive(Clone, Debug)]
pub struct Pod {
    pub spec: PodSpec,
    pub node: Option<NodeId>,
    /// When it was (last) placed.
    pub placed_at: Option<Millis>,
    /// Bumped on eviction so a stale finish event is ignored.
    pub generation: u32,
    pub finished: bool,
    /// Wait before its first placement, recorded once.
    pub waited: Option<Millis>,
    /// The node of its first placement (for per-group wait figures).
    pub first_node: Option<NodeId>,
    /// Deleted by its controller (a replica count going down).
    pub deleted: bool,
    /// When it was last evicted, until it is placed again.
    pub evicted_at: Option<Millis>,
}

/// What evictions cost the pods.
#[derive(Clone, Debug, Default)]
pub struct EvictionCost {
    /// Time evicted finite pods had run before their eviction (they start over).
    pub lost_work_ms: Millis,
    /// Time evicted pods waited to be placed again, summed.
    pub rewait_ms: Millis,
    pub rewait_max_ms: Millis,
    /// Evicted pods placed again.
    pub replaced: u64,
}

/// A Node object for one machine (indexed like the machines).
#[derive(Clone, Debug, Default)]
pub struct NodeSlot {
    /// Allocatable.
    pub cpu: u64,
    pub memory: u64,
    pub max_pods: u32,
    /// What the DaemonSet pods take (on every node).
    pub ds_cpu: u64,
    pub ds_memory: u64,
    pub ds_pods: u32,
    /// The Kubernetes Node carries `cluster-autoscaler.kubernetes.io/scale-down-disabled: "true"`
    /// (set by the operator for `scaleDownDisabled` machines).
    pub no_scale_down: bool,
    pub cpu_used: u64,
    pub memory_used: u64,
    pub pods: Vec<PodId>,
    /// Registered and Ready.
    pub ready: bool,
    /// Cordoned or tainted `ToBeDeletedByClusterAutoscaler`.
    pub cordoned: bool,
    /// Cordoned for maintenance (apart from `cordoned`, which the power-off flow sets and
    /// clears).
    pub maintenance: bool,
}

impl NodeSlot {
    pub fn fits(&self, p: &PodSpec) -> bool {
        self.schedulable() && self.has_room(p.cpu, p.memory)
    }

    /// Ready and neither cordoned nor in maintenance.
    pub fn schedulable(&self) -> bool {
        self.ready && !self.cordoned && !self.maintenance
    }

    fn has_room(&self, cpu: u64, memory: u64) -> bool {
        self.cpu_used + self.ds_cpu + cpu <= self.cpu
            && self.memory_used + self.ds_memory + memory <= self.memory
            && (self.pods.len() as u32) + self.ds_pods < self.max_pods
    }

    /// Free CPU, memory and pod slots.
    pub fn free(&self) -> (u64, u64, u32) {
        (
            self.cpu.saturating_sub(self.cpu_used + self.ds_cpu),
            self.memory
                .saturating_sub(self.memory_used + self.ds_memory),
            self.max_pods
                .saturating_sub(self.pods.len() as u32 + self.ds_pods),
        )
    }

    /// Requested share of the node, CA's way (`simulator/utilization` `Calculate`): the larger
    /// of CPU and memory; DaemonSet pods count as requests, or with `ignore_daemonsets` come off
    /// the allocatable instead.
    pub fn utilization(&self, ignore_daemonsets: bool) -> f64 {
        self.utilization_with((0, 0), ignore_daemonsets)
    }

    /// [`NodeSlot::utilization`] with `(cpu, memory)` more requested (pods only CA's snapshot
    /// has: warm-spare placeholders).
    pub fn utilization_with(&self, extra: (u64, u64), ignore_daemonsets: bool) -> f64 {
        let (cpu_used, memory_used) = (self.cpu_used + extra.0, self.memory_used + extra.1);
        let (cpu, mem) = if ignore_daemonsets {
            (
                ratio(cpu_used, self.cpu.saturating_sub(self.ds_cpu)),
                ratio(memory_used, self.memory.saturating_sub(self.ds_memory)),
            )
        } else {
            (
                ratio(cpu_used + self.ds_cpu, self.cpu),
                ratio(memory_used + self.ds_memory, self.memory),
            )
        };
        cpu.max(mem)
    }

    /// Requested CPU share, DaemonSets included (for power draw).
    pub fn cpu_utilization(&self) -> f64 {
        ratio(self.cpu_used + self.ds_cpu, self.cpu)
    }

    fn free_score(&self, p: &PodSpec) -> f64 {
        let (cpu, mem, _) = self.free();
        let cpu = ratio(cpu.saturating_sub(p.cpu), self.cpu);
        let mem = ratio(mem.saturating_sub(p.memory), self.memory);
        (cpu + mem) / 2.0
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Pods and nodes. The engine calls these and schedules the finish events they return.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub pods: Vec<Pod>,
    pub nodes: Vec<NodeSlot>,
    /// Pending pods in arrival order (pod ids grow with arrival).
    pub pending: BTreeSet<PodId>,
    /// Pending pods by `(cpu, memory)` request, and by workload.
    pending_shapes: BTreeMap<(u64, u64), BTreeSet<PodId>>,
    pending_workloads: Vec<u32>,
    pub policy: SchedulerPolicy,
    pub eviction_cost: EvictionCost,
    /// A node given more than its allocatable: an invariant violation for the engine to report.
    pub overcommit: Option<String>,
}

/// A pod placed by the scheduler: the engine schedules its finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    pub pod: PodId,
    pub node: NodeId,
    pub finish_at: Millis,
    pub generation: u32,
}

impl Cluster {
    pub fn new(node_count: usize, policy: SchedulerPolicy) -> Cluster {
        Cluster {
            pods: Vec::new(),
            nodes: vec![NodeSlot::default(); node_count],
            pending: BTreeSet::new(),
            pending_shapes: BTreeMap::new(),
            pending_workloads: Vec::new(),
            policy,
            eviction_cost: EvictionCost::default(),
            overcommit: None,
        }
    }

    fn add_pending(&mut self, pod: PodId) {
        if self.pending.insert(pod) {
            let s = self.pods[pod as usize].spec;
            self.pending_shapes
                .entry((s.cpu, s.memory))
                .or_default()
                .insert(pod);
            let w = usize::from(s.workload);
            if self.pending_workloads.len() <= w {
                self.pending_workloads.resize(w + 1, 0);
            }
            self.pending_workloads[w] += 1;
        }
    }

    fn remove_pending(&mut self, pod: PodId) -> bool {
        if !self.pending.remove(&pod) {
            return false;
        }
        let s = self.pods[pod as usize].spec;
        if let Some(set) = self.pending_shapes.get_mut(&(s.cpu, s.memory)) {
            set.remove(&pod);
            if set.is_empty() {
                self.pending_shapes.remove(&(s.cpu, s.memory));
            }
        }
        if let Some(n) = self.pending_workloads.get_mut(usize::from(s.workload)) {
            *n = n.saturating_sub(1);
        }
        true
    }

    /// Pending pods by request: `(cpu, memory, count)`.
    pub fn pending_classes(&self) -> Vec<(u64, u64, u32)> {
        self.pending_shapes
            .iter()
            .map(|(&(c, m), set)| (c, m, set.len() as u32))
            .collect()
    }

    /// Pending pods of one workload.
    pub fn pending_of(&self, workload: usize) -> u32 {
        self.pending_workloads.get(workload).copied().unwrap_or(0)
    }

    /// A new pod arrives; it is placed at once if a node has room.
    pub fn arrive(&mut self, spec: PodSpec, now: Millis, out: &mut Vec<Placed>) -> PodId {
        let id = self.pods.len() as PodId;
        self.pods.push(Pod {
            spec,
            node: None,
            placed_at: None,
            generation: 0,
            finished: false,
            waited: None,
            first_node: None,
            deleted: false,
            evicted_at: None,
        });
        match self.pick_node(&spec) {
            Some(n) => out.push(self.bind(id, n, now)),
            None => self.add_pending(id),
        }
        id
    }

    /// A pod deleted by its controller: gone from its node (whose room pending pods may take)
    /// or from the pending queue.
    pub fn delete(&mut self, pod: PodId, now: Millis, out: &mut Vec<Placed>) {
        let p = &mut self.pods[pod as usize];
        if p.finished || p.deleted {
            return;
        }
        p.deleted = true;
        p.generation += 1;
        if !self.remove_pending(pod)
            && let Some(node) = self.unbind(pod)
        {
            self.fill_node(node, now, out);
        }
    }

    fn pick_node(&self, p: &PodSpec) -> Option<NodeId> {
        let fitting = self.nodes.iter().enumerate().filter(|(_, n)| n.fits(p));
        match self.policy {
            SchedulerPolicy::FirstFit => fitting.map(|(i, _)| i).next(),
            SchedulerPolicy::LeastAllocated => {
                best_by(fitting.map(|(i, n)| (i, n.free_score(p))), |a, b| a > b)
            }
            SchedulerPolicy::MostAllocated => {
                best_by(fitting.map(|(i, n)| (i, n.free_score(p))), |a, b| a < b)
            }
        }
    }

    fn bind(&mut self, pod: PodId, node: NodeId, now: Millis) -> Placed {
        let p = &mut self.pods[pod as usize];
        let n = &mut self.nodes[node];
        if self.overcommit.is_none() && !n.has_room(p.spec.cpu, p.spec.memory) {
            self.overcommit = Some(format!(
                "pod {pod} ({}m CPU, {} bytes) placed on node {node} with {:?} free (CPU, memory, pods)",
                p.spec.cpu,
                p.spec.memory,
                n.free()
            ));
        }
        n.cpu_used += p.spec.cpu;
        n.memory_used += p.spec.memory;
        n.pods.push(pod);
        p.node = Some(node);
        p.placed_at = Some(now);
        if p.waited.is_none() {
            p.waited = Some(now.saturating_sub(p.spec.arrival));
            p.first_node = Some(node);
        }
        if let Some(at) = p.evicted_at.take() {
            let c = &mut self.eviction_cost;
            let w = now.saturating_sub(at);
            c.rewait_ms += w;
            c.rewait_max_ms = c.rewait_max_ms.max(w);
            c.replaced += 1;
        }
        Placed {
            pod,
            node,
            finish_at: now.saturating_add(p.spec.duration),
            generation: p.generation,
        }
    }

    fn unbind(&mut self, pod: PodId) -> Option<NodeId> {
        let p = &mut self.pods[pod as usize];
        let node = p.node.take()?;
        let n = &mut self.nodes[node];
        n.cpu_used -= p.spec.cpu;
        n.memory_used -= p.spec.memory;
        if let Some(pos) = n.pods.iter().position(|&q| q == pod) {
            n.pods.swap_remove(pos);
        }
        Some(node)
    }

    /// A pod's finish event; stale ones (evicted since) are ignored. Frees room on its node,
    /// which pending pods may take.
    pub fn finish(&mut self, pod: PodId, generation: u32, now: Millis, out: &mut Vec<Placed>) {
        let p = &self.pods[pod as usize];
        if p.finished || p.generation != generation || p.node.is_none() {
            return;
        }
        self.pods[pod as usize].finished = true;
        if let Some(node) = self.unbind(pod) {
            self.fill_node(node, now, out);
        }
    }

    /// The oldest pending pod whose request passes `ok`, looking only at each request's oldest
    /// pod: pending pods are kept per request, so a long queue of pods too big for the room
    /// costs nothing (the engine stays near-linear when pods pile up).
    fn oldest_pending(&self, mut ok: impl FnMut(u64, u64) -> bool) -> Option<PodId> {
        self.pending_shapes
            .iter()
            .filter(|(k, _)| ok(k.0, k.1))
            .filter_map(|(_, set)| set.first().copied())
            .min()
    }

    /// Places pending pods (oldest first among those that fit) onto one node that gained room.
    pub fn fill_node(&mut self, node: NodeId, now: Millis, out: &mut Vec<Placed>) {
        if !self.nodes[node].schedulable() {
            return;
        }
        loop {
            let n = &self.nodes[node];
            let (cpu, mem, slots) = n.free();
            if slots == 0 {
                break;
            }
            let Some(pod) = self.oldest_pending(|c, m| c <= cpu && m <= mem) else {
                break;
            };
            self.remove_pending(pod);
            out.push(self.bind(pod, node, now));
        }
    }

    /// Places pending pods anywhere they fit (after evictions), oldest first. A request that
    /// fits no node is not looked at again in this call (rooms only shrink during it).
    pub fn schedule_pending(&mut self, now: Millis, out: &mut Vec<Placed>) {
        let mut hopeless: BTreeSet<(u64, u64)> = BTreeSet::new();
        while let Some(pod) = self.oldest_pending(|c, m| !hopeless.contains(&(c, m))) {
            let spec = self.pods[pod as usize].spec;
            match self.pick_node(&spec) {
                Some(n) => {
                    self.remove_pending(pod);
                    out.push(self.bind(pod, n, now));
                }
                None => {
                    hopeless.insert((spec.cpu, spec.memory));
                }
            }
        }
    }

    /// Evicts every pod from a node (a drain): they become pending again.
    pub fn evict_all(&mut self, node: NodeId, now: Millis) -> usize {
        let pods = std::mem::take(&mut self.nodes[node].pods);
        let count = pods.len();
        for pod in pods {
            let p = &mut self.pods[pod as usize];
            p.node = None;
            p.generation += 1;
            p.evicted_at = Some(now);
            if p.spec.duration != FOREVER {
                self.eviction_cost.lost_work_ms += now.saturating_sub(p.placed_at.unwrap_or(now));
            }
            self.nodes[node].cpu_used -= p.spec.cpu;
            self.nodes[node].memory_used -= p.spec.memory;
            self.add_pending(pod);
        }
        count
    }

    /// Free room of every Ready, schedulable node: `(node, cpu, memory, pod slots)`.
    pub fn free_rooms(&self) -> Vec<(NodeId, u64, u64, u32)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.schedulable())
            .map(|(i, n)| {
                let (c, m, p) = n.free();
                (i, c, m, p)
            })
            .collect()
    }
}

fn best_by(
    it: impl Iterator<Item = (NodeId, f64)>,
    better: impl Fn(f64, f64) -> bool,
) -> Option<NodeId> {
    let mut best: Option<(NodeId, f64)> = None;
    for (i, s) in it {
        match best {
            Some((_, b)) if !better(s, b) => {}
            _ => best = Some((i, s)),
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cpu: u64) -> NodeSlot {
        NodeSlot {
            cpu,
            memory: 8 << 30,
            max_pods: 110,
            ready: true,
            ..NodeSlot::default()
        }
    }

    fn pod(cpu: u64) -> PodSpec {
        PodSpec {
            arrival: 0,
            cpu,
            memory: 1 << 30,
            duration: 1000,
            workload: 0,
        }
    }

    #[test]
    fn policies_pick_as_documented() {
        for (policy, expect) in [
            (SchedulerPolicy::FirstFit, 0),
            (SchedulerPolicy::LeastAllocated, 1),
            (SchedulerPolicy::MostAllocated, 0),
        ] {
            let mut c = Cluster::new(2, policy);
            c.nodes[0] = node(2000);
            c.nodes[1] = node(4000);
            let mut out = Vec::new();
            c.arrive(pod(500), 0, &mut out);
            assert_eq!(out[0].node, expect, "{policy:?}");
        }
    }

    #[test]
    fn pending_until_room_then_fifo() {
        let mut c = Cluster::new(1, SchedulerPolicy::FirstFit);
        c.nodes[0] = node(1000);
        let mut out = Vec::new();
        let a = c.arrive(pod(1000), 0, &mut out);
        let b = c.arrive(pod(600), 5, &mut out);
        let d = c.arrive(pod(400), 6, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(c.pending.len(), 2);
        out.clear();
        c.finish(a, 0, 1000, &mut out);
        assert_eq!(out.iter().map(|p| p.pod).collect::<Vec<_>>(), vec![b, d]);
        // Arrived at 0 (the spec's arrival), placed at 1000.
        assert_eq!(c.pods[b as usize].waited, Some(1000));
        assert!(c.pending.is_empty());
    }

    #[test]
    fn eviction_makes_pods_pending_again() {
        let mut c = Cluster::new(2, SchedulerPolicy::FirstFit);
        c.nodes[0] = node(1000);
        c.nodes[1] = node(1000);
        let mut out = Vec::new();
        c.arrive(pod(600), 0, &mut out);
        c.arrive(pod(600), 0, &mut out);
        assert_eq!(c.evict_all(0, 0), 1);
        assert_eq!(c.nodes[0].cpu_used, 0);
        assert_eq!(c.pending.len(), 1);
    }

    /// The no-overcommit invariant: a bind that exceeds the node's allocatable (a scheduler
    /// bug) is recorded for the engine to report.
    #[test]
    fn a_bind_beyond_allocatable_is_recorded_as_overcommit() {
        let mut c = Cluster::new(1, SchedulerPolicy::FirstFit);
        c.nodes[0] = node(1000);
        let mut out = Vec::new();
        c.arrive(pod(800), 0, &mut out);
        assert!(c.overcommit.is_none());
        c.pods.push(Pod {
            spec: pod(800),
            node: None,
            placed_at: None,
            generation: 0,
            finished: false,
            waited: None,
            first_node: None,
            deleted: false,
            evicted_at: None,
        });
        c.bind(1, 0, 0);
        let what = c.overcommit.clone().unwrap_or_default();
        assert!(what.contains("pod 1") && what.contains("node 0"), "{what}");
    }
}
