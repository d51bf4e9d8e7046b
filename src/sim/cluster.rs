//! The simulated Kubernetes side: Node objects of powered-on machines, pods, and a scheduler
//! that places pending pods onto Ready, schedulable nodes.
//!
//! Simplifications: pods have only CPU and memory requests and a pod count; no affinity,
//! taints, DaemonSets or priorities. An evicted pod (drain before power-off) starts over on its
//! new node with its full duration.
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::units::Millis;
use super::workload::PodSpec;

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
}

/// A Node object for one machine (indexed like the machines).
#[derive(Clone, Debug, Default)]
pub struct NodeSlot {
    pub cpu: u64,
    pub memory: u64,
    pub max_pods: u32,
    pub cpu_used: u64,
    pub memory_used: u64,
    pub pods: Vec<PodId>,
    /// Registered and Ready.
    pub ready: bool,
    /// Cordoned or tainted `ToBeDeletedByClusterAutoscaler`.
    pub cordoned: bool,
}

impl NodeSlot {
    pub fn fits(&self, p: &PodSpec) -> bool {
        self.ready
            && !self.cordoned
            && self.cpu_used + p.cpu <= self.cpu
            && self.memory_used + p.memory <= self.memory
            && (self.pods.len() as u32) < self.max_pods
    }

    /// Requested share of the node, CA's way: the larger of CPU and memory.
    pub fn utilization(&self) -> f64 {
        let cpu = ratio(self.cpu_used, self.cpu);
        let mem = ratio(self.memory_used, self.memory);
        cpu.max(mem)
    }

    pub fn cpu_utilization(&self) -> f64 {
        ratio(self.cpu_used, self.cpu)
    }

    fn free_score(&self, p: &PodSpec) -> f64 {
        let cpu = ratio(self.cpu - self.cpu_used - p.cpu, self.cpu);
        let mem = ratio(self.memory - self.memory_used - p.memory, self.memory);
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
    pub policy: SchedulerPolicy,
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
            policy,
        }
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
        });
        match self.pick_node(&spec) {
            Some(n) => out.push(self.bind(id, n, now)),
            None => {
                self.pending.insert(id);
            }
        }
        id
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
        n.cpu_used += p.spec.cpu;
        n.memory_used += p.spec.memory;
        n.pods.push(pod);
        p.node = Some(node);
        p.placed_at = Some(now);
        if p.waited.is_none() {
            p.waited = Some(now.saturating_sub(p.spec.arrival));
            p.first_node = Some(node);
        }
        Placed {
            pod,
            node,
            finish_at: now + p.spec.duration,
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

    /// Places pending pods (oldest first) onto one node that gained room.
    pub fn fill_node(&mut self, node: NodeId, now: Millis, out: &mut Vec<Placed>) {
        if self.pending.is_empty() || !self.nodes[node].ready || self.nodes[node].cordoned {
            return;
        }
        let mut placed = Vec::new();
        for &pod in &self.pending {
            let n = &self.nodes[node];
            if n.cpu_used >= n.cpu || n.pods.len() as u32 >= n.max_pods {
                break;
            }
            if n.fits(&self.pods[pod as usize].spec) {
                placed.push(pod);
                let spec = self.pods[pod as usize].spec;
                let n = &mut self.nodes[node];
                // Reserve now so the next candidate sees the room taken.
                n.cpu_used += spec.cpu;
                n.memory_used += spec.memory;
                n.pods.push(pod);
            }
        }
        for pod in placed {
            self.pending.remove(&pod);
            let spec = self.pods[pod as usize].spec;
            let n = &mut self.nodes[node];
            n.cpu_used -= spec.cpu;
            n.memory_used -= spec.memory;
            if let Some(pos) = n.pods.iter().position(|&q| q == pod) {
                n.pods.swap_remove(pos);
            }
            out.push(self.bind(pod, node, now));
        }
    }

    /// Places pending pods anywhere they fit (after evictions).
    pub fn schedule_pending(&mut self, now: Millis, out: &mut Vec<Placed>) {
        let pending: Vec<PodId> = self.pending.iter().copied().collect();
        for pod in pending {
            let spec = self.pods[pod as usize].spec;
            if let Some(n) = self.pick_node(&spec) {
                self.pending.remove(&pod);
                out.push(self.bind(pod, n, now));
            }
        }
    }

    /// Evicts every pod from a node (a drain): they become pending again.
    pub fn evict_all(&mut self, node: NodeId) -> usize {
        let pods = std::mem::take(&mut self.nodes[node].pods);
        let count = pods.len();
        for pod in pods {
            let p = &mut self.pods[pod as usize];
            p.node = None;
            p.generation += 1;
            self.nodes[node].cpu_used -= p.spec.cpu;
            self.nodes[node].memory_used -= p.spec.memory;
            self.pending.insert(pod);
        }
        count
    }

    /// Free room of every Ready, schedulable node: `(node, cpu, memory, pod slots)`.
    pub fn free_rooms(&self) -> Vec<(NodeId, u64, u64, u32)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.ready && !n.cordoned)
            .map(|(i, n)| {
                (
                    i,
                    n.cpu - n.cpu_used,
                    n.memory - n.memory_used,
                    n.max_pods.saturating_sub(n.pods.len() as u32),
                )
            })
            .collect()
    }

    /// Whether every pod on `node` would fit on the other Ready nodes, not counting `excluded`
    /// ones (CA's scale-down simulation: first-fit on a scratch copy of free room).
    pub fn pods_fit_elsewhere(&self, node: NodeId, excluded: &[NodeId]) -> bool {
        let rooms = self.free_rooms();
        let mut scratch = Vec::new();
        self.pods_fit_in(node, excluded, &rooms, &mut scratch)
    }

    /// [`Cluster::pods_fit_elsewhere`] with the free rooms computed once by the caller and a
    /// reusable scratch buffer (the autoscaler checks many nodes per loop).
    pub fn pods_fit_in(
        &self,
        node: NodeId,
        excluded: &[NodeId],
        rooms: &[(NodeId, u64, u64, u32)],
        scratch: &mut Vec<(NodeId, u64, u64, u32)>,
    ) -> bool {
        let pods = &self.nodes[node].pods;
        if pods.is_empty() {
            return true;
        }
        scratch.clear();
        scratch.extend_from_slice(rooms);
        'pods: for &pod in pods {
            let s = &self.pods[pod as usize].spec;
            for f in scratch.iter_mut() {
                if f.0 != node
                    && f.1 >= s.cpu
                    && f.2 >= s.memory
                    && f.3 > 0
                    && !excluded.contains(&f.0)
                {
                    f.1 -= s.cpu;
                    f.2 -= s.memory;
                    f.3 -= 1;
                    continue 'pods;
                }
            }
            return false;
        }
        true
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
    fn eviction_and_fit_elsewhere() {
        let mut c = Cluster::new(2, SchedulerPolicy::FirstFit);
        c.nodes[0] = node(1000);
        c.nodes[1] = node(1000);
        let mut out = Vec::new();
        c.arrive(pod(600), 0, &mut out);
        c.arrive(pod(600), 0, &mut out);
        assert!(!c.pods_fit_elsewhere(0, &[]));
        c.nodes[1].pods.clear();
        c.nodes[1].cpu_used = 0;
        c.nodes[1].memory_used = 0;
        assert!(c.pods_fit_elsewhere(0, &[]));
        assert!(!c.pods_fit_elsewhere(0, &[1]));
        assert_eq!(c.evict_all(0), 1);
        assert_eq!(c.nodes[0].cpu_used, 0);
        assert_eq!(c.pending.len(), 1);
    }
}
