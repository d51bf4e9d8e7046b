//! A model of the Cluster Autoscaler's main loop, calling the provider core exactly where the
//! real CA calls our gRPC server.
//!
//! Every `scanInterval` (CA's `--scan-interval`):
//! 1. **Failed and overdue instances.** `NodeGroupNodes` for groups with machines on their way
//!    up; an instance in `Creating` with `errorInfo`, or not registered within
//!    `maxNodeProvisionTime` of first being seen, is deleted (`DeleteNodes` with a fake node
//!    whose name and providerID are the instance id) and its group is backed off
//!    (exponentially, `backoff.initial` doubling to `backoff.max`, reset after 3 h without
//!    failure), so the next scale-up goes to another group or, after the backoff, to another
//!    machine the provider picks.
//! 2. **Scale-up.** Pending pods are first packed (first-fit) onto the free template capacity
//!    of nodes already on their way up; for what is left, every group that is not backed off and
//!    below its max is estimated by first-fit-decreasing bin-packing onto its template node (from
//!    the provider's `NodeGroupTemplateNodeInfo` logic); the expander picks one option and CA
//!    calls `IncreaseSize`. One scale-up per loop, as CA without balancing does.
//! 3. **Scale-down.** When no scale-up happened for `scaleDownDelayAfterAdd` (and no failed
//!    scale-down for `scaleDownDelayAfterFailure`): Ready nodes whose requested CPU or memory
//!    share is below the group's threshold are unneeded; once unneeded for the group's
//!    `scaleDownUnneededTime`, empty ones are removed in bulk and at most one non-empty node
//!    per loop, if its pods fit on the other nodes. CA taints and drains the node (the pods go
//!    back to the scheduler) and calls `DeleteNodes`; if that fails the node is untainted.
//!    Never below the group's min size, never a `scaleDownDisabled` machine.
//!
//! Simplified compared to the real CA: no node-group balancing, no `zeroOrMaxNodeScaling`, no
//! PodDisruptionBudgets, no pod priorities or preemption, no DaemonSets; the price expander
//! compares `hourlyRate × new nodes / pods helped`; the scale-up estimate looks at the oldest
//! 2,000 pending pods; utilization is requests, not usage; nodes are alike within a group (the
//! template is used for every new node, as CA does).
use rand::Rng;

use super::engine::Sim;
use super::scenario::{Expander, Scenario};
use super::units::{HOUR, Millis, format_millis};
use crate::operator::machine::{Phase, PowerState};
use crate::operator::provider::ops::{self, InstanceState, NodeRef};
use crate::operator::provider::template;

/// Pending pods looked at per scale-up estimate.
const MAX_PODS_ESTIMATED: usize = 2_000;
/// CA resets a group's backoff after this long without failures.
const BACKOFF_RESET: Millis = 3 * HOUR;

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Backoff {
    pub until: Millis,
    pub duration: Millis,
    pub last_failure: Option<Millis>,
}

/// Allocatable CPU (millicores), memory (bytes) and pods of a group's template node.
type Shape = (u64, u64, u32);

/// The CA model's memory between loops.
pub(super) struct CaState {
    pub last_scale_up: Option<Millis>,
    pub last_scale_down_failure: Option<Millis>,
    pub unneeded_since: Vec<Option<Millis>>,
    pub creating_since: Vec<Option<Millis>>,
    pub backoff: Vec<Backoff>,
    /// The provider's id of each scenario group (resolved once).
    pub group_ids: Vec<String>,
    templates: Option<Vec<Option<Shape>>>,
}

impl CaState {
    pub fn new(sc: &Scenario) -> CaState {
        CaState {
            last_scale_up: None,
            last_scale_down_failure: None,
            unneeded_since: vec![None; sc.machines.len()],
            creating_since: vec![None; sc.machines.len()],
            backoff: vec![Backoff::default(); sc.groups.len()],
            group_ids: Vec::new(),
            templates: None,
        }
    }

    /// Templates are read from the inventory; rebuilt with it.
    pub fn invalidate_templates(&mut self) {
        self.templates = None;
    }
}

fn parse_shape(t: &template::TemplateNode) -> Option<Shape> {
    let cpu = super::units::parse_cpu(t.allocatable.get("cpu")?)?;
    let mem = super::units::parse_memory(t.allocatable.get("memory")?)?;
    let pods = t
        .allocatable
        .get("pods")
        .and_then(|p| p.parse().ok())
        .unwrap_or(110);
    Some((cpu, mem, pods))
}

/// Free room on one (real or imagined) node during an estimate.
#[derive(Clone, Copy)]
struct Room {
    cpu: u64,
    mem: u64,
    pods: u32,
}

impl Room {
    fn take(&mut self, cpu: u64, mem: u64) -> bool {
        if self.cpu >= cpu && self.mem >= mem && self.pods > 0 {
            self.cpu -= cpu;
            self.mem -= mem;
            self.pods -= 1;
            true
        } else {
            false
        }
    }
}

struct Option_ {
    group: usize,
    nodes: u32,
    pods: usize,
    waste: f64,
    price: f64,
}

impl Sim<'_> {
    fn resolve_group_ids(&mut self) {
        if self.ca.group_ids.is_empty() {
            let sc = self.sc;
            let inv = self.inventory();
            let ids = sc
                .groups
                .iter()
                .map(|g| {
                    let ns = g.group.metadata.namespace.clone().unwrap_or_default();
                    inv.groups()
                        .find(|s| s.spec.namespace == ns && s.spec.name == g.name)
                        .map(|s| s.spec.id.clone())
                        .unwrap_or_else(|| g.name.clone())
                })
                .collect();
            self.ca.group_ids = ids;
        }
    }

    fn back_off(&mut self, g: usize, why: &str) {
        let initial = self.sc.autoscaler.backoff_initial;
        let max = self.sc.autoscaler.backoff_max;
        let now = self.now;
        let b = &mut self.ca.backoff[g];
        let recent = b.last_failure.is_some_and(|t| now - t < BACKOFF_RESET);
        b.duration = if recent && b.duration > 0 {
            (b.duration * 2).min(max)
        } else {
            initial
        };
        b.until = now + b.duration;
        b.last_failure = Some(now);
        let d = b.duration;
        self.counters.backoffs += 1;
        self.note(
            None,
            Some(g),
            format!("CA backs the group off for {}: {why}", format_millis(d)),
        );
    }

    pub(super) fn autoscaler_scan(&mut self) {
        self.counters.scans += 1;
        self.resolve_group_ids();
        let ids = std::mem::take(&mut self.ca.group_ids);
        self.handle_unhealthy_instances(&ids);
        let scaled_up = if self.cluster.pending.is_empty() {
            false
        } else {
            self.scale_up(&ids)
        };
        if !scaled_up && self.sc.autoscaler.scale_down_enabled {
            self.scale_down(&ids);
        }
        self.ca.group_ids = ids;
    }

    fn handle_unhealthy_instances(&mut self, ids: &[String]) {
        let sc = self.sc;
        for (g, group) in sc.groups.iter().enumerate() {
            let coming_up = group.members.iter().any(|&m| {
                self.machines[m].desired == PowerState::On && !self.cluster.nodes[m].ready
            });
            if !coming_up {
                for &m in &group.members {
                    self.ca.creating_since[m] = None;
                }
                continue;
            }
            let instances = match ops::node_group_nodes(self.inventory(), &ids[g]) {
                Ok(i) => i,
                Err(e) => {
                    self.violate(format!("NodeGroupNodes failed for a known group: {e}"));
                    return;
                }
            };
            let mut creating = vec![false; group.members.len()];
            let mut give_up: Vec<(NodeRef, String)> = Vec::new();
            for inst in &instances {
                if inst.state != InstanceState::Creating {
                    continue;
                }
                let Some(m) = self.machine_index(&inst.machine.namespace, &inst.machine.name)
                else {
                    continue;
                };
                if let Some(pos) = group.members.iter().position(|&x| x == m) {
                    creating[pos] = true;
                }
                let since = *self.ca.creating_since[m].get_or_insert(self.now);
                let reason = if let Some(err) = &inst.error {
                    Some(format!(
                        "instance {} has errorInfo {}: {}",
                        inst.id, err.code, err.message
                    ))
                } else if self.now - since >= group.max_node_provision_time {
                    Some(format!(
                        "instance {} not registered within maxNodeProvisionTime {}",
                        inst.id,
                        format_millis(group.max_node_provision_time)
                    ))
                } else {
                    None
                };
                if let Some(r) = reason {
                    give_up.push((
                        NodeRef {
                            provider_id: inst.id.clone(),
                            name: inst.id.clone(),
                        },
                        r,
                    ));
                }
            }
            for (pos, &m) in group.members.iter().enumerate() {
                if !creating[pos] {
                    self.ca.creating_since[m] = None;
                }
            }
            if give_up.is_empty() {
                continue;
            }
            let refs: Vec<NodeRef> = give_up.iter().map(|(r, _)| r.clone()).collect();
            let why = give_up
                .iter()
                .map(|(_, w)| w.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let ts = self.ts(self.now);
            match ops::delete_nodes(self.inventory(), &ids[g], &refs, ts) {
                Ok(d) => {
                    self.check_bounds(g, d.target_after, "DeleteNodes");
                    if !d.changes.is_empty() {
                        self.counters.failed_instances_deleted += d.changes.len() as u64;
                        self.note(
                            None,
                            Some(g),
                            format!(
                                "CA deletes failed instance(s) {}: target {} → {}",
                                names(&d.changes),
                                d.target_before,
                                d.target_after
                            ),
                        );
                        self.apply_changes(&d.changes);
                    }
                }
                Err(e) => {
                    self.note(None, Some(g), format!("CA: DeleteNodes refused: {e}"));
                }
            }
            for &m in &group.members {
                if refs.iter().any(|r| self.provider_id(m) == r.provider_id) {
                    self.ca.creating_since[m] = None;
                }
            }
            self.back_off(g, &why);
        }
    }

    fn provider_id(&self, m: usize) -> String {
        self.sc.machines[m].machine.expected_provider_id()
    }

    fn check_bounds(&mut self, g: usize, target: u32, call: &str) {
        let group = &self.sc.groups[g];
        if target > group.max {
            self.violate(format!(
                "{call} took group {} to target {target}, above its max {}",
                group.name, group.max
            ));
        }
    }

    fn templates(&mut self, ids: &[String]) -> Vec<Option<Shape>> {
        if let Some(t) = &self.ca.templates {
            return t.clone();
        }
        let inv = self.inventory();
        let t: Vec<Option<Shape>> = ids
            .iter()
            .map(|id| {
                template::template_node(inv, id)
                    .ok()
                    .as_ref()
                    .and_then(parse_shape)
            })
            .collect();
        self.ca.templates = Some(t.clone());
        t
    }

    fn scale_up(&mut self, ids: &[String]) -> bool {
        let sc = self.sc;
        let shapes = self.templates(ids);
        // Pods to help, oldest first.
        let mut pods: Vec<(u64, u64)> = self
            .cluster
            .pending
            .iter()
            .take(MAX_PODS_ESTIMATED)
            .map(|&p| {
                let s = &self.cluster.pods[p as usize].spec;
                (s.cpu, s.memory)
            })
            .collect();
        // Nodes on their way up take pods first.
        let mut upcoming: Vec<Room> = Vec::new();
        for (g, group) in sc.groups.iter().enumerate() {
            let Some((cpu, mem, np)) = shapes[g] else {
                continue;
            };
            for &m in &group.members {
                let ms = &self.machines[m];
                if ms.desired == PowerState::On
                    && !self.cluster.nodes[m].ready
                    && ms.lifecycle.phase() != Phase::Failed
                {
                    upcoming.push(Room { cpu, mem, pods: np });
                }
            }
        }
        if !upcoming.is_empty() {
            pods.retain(|&(c, m)| !upcoming.iter_mut().any(|r| r.take(c, m)));
        }
        if pods.is_empty() {
            return false;
        }
        pods.sort_by(|a, b| b.cmp(a));
        let mut options = Vec::new();
        for (g, group) in sc.groups.iter().enumerate() {
            if self.ca.backoff[g].until > self.now {
                continue;
            }
            let Some((cpu, mem, np)) = shapes[g] else {
                continue;
            };
            let target = match ops::target_size(self.inventory(), &ids[g]) {
                Ok(t) => t,
                Err(e) => {
                    self.violate(format!("TargetSize failed for a known group: {e}"));
                    return false;
                }
            };
            let room_left = group.max.saturating_sub(target);
            if room_left == 0 {
                continue;
            }
            let mut nodes: Vec<Room> = Vec::new();
            let mut helped = 0usize;
            for &(c, m) in &pods {
                if c > cpu || m > mem {
                    continue;
                }
                if nodes.iter_mut().any(|r| r.take(c, m)) {
                    helped += 1;
                    continue;
                }
                if nodes.len() as u32 >= room_left {
                    continue;
                }
                let mut r = Room { cpu, mem, pods: np };
                if r.take(c, m) {
                    nodes.push(r);
                    helped += 1;
                }
            }
            if helped == 0 {
                continue;
            }
            let n = nodes.len() as u32;
            let used_cpu: u64 = nodes.iter().map(|r| cpu - r.cpu).sum();
            let used_mem: u64 = nodes.iter().map(|r| mem - r.mem).sum();
            let waste = 1.0
                - (used_cpu as f64 / (cpu as f64 * n as f64)
                    + used_mem as f64 / (mem as f64 * n as f64))
                    / 2.0;
            let rate = self
                .inventory()
                .group(&ids[g])
                .map(ops::group_hourly_rate)
                .unwrap_or(0.0);
            options.push(Option_ {
                group: g,
                nodes: n,
                pods: helped,
                waste,
                price: rate * n as f64 / helped as f64,
            });
        }
        if options.is_empty() {
            return false;
        }
        let pick = match sc.autoscaler.expander {
            Expander::LeastWaste => best(&options, |a, b| {
                a.waste < b.waste - 1e-12 || ((a.waste - b.waste).abs() <= 1e-12 && a.pods > b.pods)
            }),
            Expander::Price => best(&options, |a, b| {
                a.price < b.price - 1e-12
                    || ((a.price - b.price).abs() <= 1e-12 && a.waste < b.waste)
            }),
            Expander::Random => self.rng.random_range(0..options.len()),
            Expander::Priority => {
                let top = options
                    .iter()
                    .map(|o| sc.groups[o.group].priority)
                    .max()
                    .unwrap_or(0);
                let tied: Vec<usize> = (0..options.len())
                    .filter(|&i| sc.groups[options[i].group].priority == top)
                    .collect();
                tied[self.rng.random_range(0..tied.len())]
            }
        };
        let o = &options[pick];
        let (g, n, helped) = (o.group, o.nodes, o.pods);
        let ts = self.ts(self.now);
        let delta = i32::try_from(n).unwrap_or(i32::MAX);
        match ops::increase_size(self.inventory(), &ids[g], delta, ts) {
            Ok(d) => {
                self.check_bounds(g, d.target_after, "IncreaseSize");
                self.counters.scale_ups += 1;
                self.ca.last_scale_up = Some(self.now);
                self.note(
                    None,
                    Some(g),
                    format!(
                        "CA scale-up +{n} for {helped} pending pod(s) ({} expander): target {} → {}, powering on {}",
                        sc.autoscaler.expander,
                        d.target_before,
                        d.target_after,
                        names(&d.changes)
                    ),
                );
                self.apply_changes(&d.changes);
                true
            }
            Err(e) => {
                self.counters.failed_scale_ups += 1;
                self.back_off(g, &format!("IncreaseSize failed: {e}"));
                false
            }
        }
    }

    fn scale_down(&mut self, ids: &[String]) {
        let sc = self.sc;
        let a = &sc.autoscaler;
        let now = self.now;
        let in_cooldown = self
            .ca
            .last_scale_up
            .is_some_and(|t| now < t + a.scale_down_delay_after_add)
            || self
                .ca
                .last_scale_down_failure
                .is_some_and(|t| now < t + a.scale_down_delay_after_failure);
        // Track unneeded nodes every loop (CA does, even in cooldown). A node is unneeded when
        // its utilization is below the threshold and its pods could run elsewhere.
        let rooms = self.cluster.free_rooms();
        let (free_cpu, free_mem) = rooms
            .iter()
            .fold((0u64, 0u64), |(c, m), r| (c + r.1, m + r.2));
        let mut scratch = Vec::with_capacity(rooms.len());
        let mut due: Vec<usize> = Vec::new();
        for (m, model) in sc.machines.iter().enumerate() {
            let slot = &self.cluster.nodes[m];
            let ms = &self.machines[m];
            let group = &sc.groups[model.group];
            let mut eligible = slot.ready
                && !slot.cordoned
                && ms.desired == PowerState::On
                && ms.lifecycle.phase() == Phase::Ready
                && !model.scale_down_disabled
                && slot.utilization() < group.scale_down_utilization_threshold;
            if eligible && !slot.pods.is_empty() {
                // Cheap necessary condition first: enough free room elsewhere in total.
                let own_free = (slot.cpu - slot.cpu_used, slot.memory - slot.memory_used);
                eligible = free_cpu - own_free.0 >= slot.cpu_used
                    && free_mem - own_free.1 >= slot.memory_used
                    && self.cluster.pods_fit_in(m, &[], &rooms, &mut scratch);
            }
            if !eligible {
                self.ca.unneeded_since[m] = None;
                continue;
            }
            let since = *self.ca.unneeded_since[m].get_or_insert(now);
            if now - since >= group.scale_down_unneeded_time {
                due.push(m);
            }
        }
        if in_cooldown || due.is_empty() {
            return;
        }
        // Empty nodes first, then the longest unneeded.
        due.sort_by_key(|&m| {
            (
                !self.cluster.nodes[m].pods.is_empty(),
                self.ca.unneeded_since[m],
                m,
            )
        });
        let mut removable: Vec<Option<u32>> = vec![None; sc.groups.len()];
        let mut chosen: Vec<usize> = Vec::new();
        let mut non_empty_taken = false;
        for m in due {
            let g = sc.machines[m].group;
            if removable[g].is_none() {
                let target = match ops::target_size(self.inventory(), &ids[g]) {
                    Ok(t) => t,
                    Err(e) => {
                        self.violate(format!("TargetSize failed for a known group: {e}"));
                        return;
                    }
                };
                removable[g] = Some(target.saturating_sub(sc.groups[g].min));
            }
            let left = removable[g].unwrap_or(0);
            if left == 0 {
                continue;
            }
            let empty = self.cluster.nodes[m].pods.is_empty();
            if !empty {
                if non_empty_taken || !self.cluster.pods_fit_in(m, &chosen, &rooms, &mut scratch) {
                    continue;
                }
                non_empty_taken = true;
            }
            removable[g] = Some(left - 1);
            chosen.push(m);
        }
        // One DeleteNodes per group, as CA batches empty nodes.
        for (g, _) in sc.groups.iter().enumerate() {
            let members: Vec<usize> = chosen
                .iter()
                .copied()
                .filter(|&m| sc.machines[m].group == g)
                .collect();
            if members.is_empty() {
                continue;
            }
            // Taint and drain first, as CA does before calling DeleteNodes.
            let mut evicted = 0;
            for &m in &members {
                self.cluster.nodes[m].cordoned = true;
                evicted += self.cluster.evict_all(m);
                self.update_watts(m);
            }
            if evicted > 0 {
                self.counters.evictions += evicted as u64;
                let mut out = Vec::new();
                self.cluster.schedule_pending(self.now, &mut out);
                self.after_placements(&mut out);
            }
            let refs: Vec<NodeRef> = members
                .iter()
                .map(|&m| {
                    let cr = &sc.machines[m].machine;
                    NodeRef {
                        provider_id: cr.expected_provider_id(),
                        name: cr.node_name().unwrap_or(&sc.machines[m].name).to_owned(),
                    }
                })
                .collect();
            let ts = self.ts(self.now);
            match ops::delete_nodes(self.inventory(), &ids[g], &refs, ts) {
                Ok(d) => {
                    if d.target_after < sc.groups[g].min {
                        self.violate(format!(
                            "DeleteNodes took group {} to target {}, below its min {}",
                            sc.groups[g].name, d.target_after, sc.groups[g].min
                        ));
                    }
                    self.counters.scale_downs += 1;
                    self.note(
                        None,
                        Some(g),
                        format!(
                            "CA scale-down: {} unneeded (evicted {evicted} pod(s)): target {} → {}",
                            names(&d.changes),
                            d.target_before,
                            d.target_after
                        ),
                    );
                    for &m in &members {
                        self.ca.unneeded_since[m] = None;
                    }
                    self.apply_changes(&d.changes);
                }
                Err(e) => {
                    self.ca.last_scale_down_failure = Some(self.now);
                    self.note(
                        None,
                        Some(g),
                        format!("CA: DeleteNodes refused: {e}; untainting"),
                    );
                    for &m in &members {
                        self.cluster.nodes[m].cordoned = false;
                        let mut out = Vec::new();
                        self.cluster.fill_node(m, self.now, &mut out);
                        self.after_placements(&mut out);
                    }
                }
            }
        }
    }
}

fn best(options: &[Option_], better: impl Fn(&Option_, &Option_) -> bool) -> usize {
    let mut b = 0;
    for i in 1..options.len() {
        if better(&options[i], &options[b]) {
            b = i;
        }
    }
    b
}

fn names(changes: &[crate::operator::provider::PowerChange]) -> String {
    changes
        .iter()
        .map(|c| c.machine.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
