//! A model of the Cluster Autoscaler's main loop (`core/static_autoscaler.go` `RunOnce`), calling
//! the provider core exactly where the real CA calls our gRPC server. CA 1.36.1's code is the
//! reference; the functions followed are named where they are modelled, and each rule has a
//! test citing them (this module's tests and `tests/simulate.rs`).
//!
//! Every `scanInterval` (CA's `--scan-interval`):
//! 1. **Failed and overdue instances.** `NodeGroupNodes` for groups with machines on their way
//!    up; an instance in `Creating` with `errorInfo`, or not registered within the group's
//!    max node provision time, is deleted (`DeleteNodes` with a fake node whose name and
//!    providerID are the instance id) and its group is backed off (`utils/backoff`
//!    `exponentialBackoff.Backoff`: the duration is kept while the group is backed off and
//!    doubles, up to the max, only once the backoff has expired; forgotten after the reset
//!    timeout without failures).
//! 2. **Scale-up** (`core/scaleup/orchestrator`). Skipped when the Ready nodes reach
//!    `maxNodesTotal`. Pending pods are first packed onto the free template capacity of nodes on
//!    their way up; for the rest, every group not backed off and below its max is estimated by
//!    first-fit-decreasing bin-packing onto its template node (the provider's
//!    `NodeGroupTemplateNodeInfo` logic, minus the DaemonSet pods CA adds to a template); the
//!    node count is capped by the group's max and by `maxNodesTotal`; a `zeroOrMaxNodeScaling`
//!    group scales straight to its max. The expander chain narrows the options and a random
//!    pick (the CA stream) breaks the ties left; CA calls `IncreaseSize`.
//! 3. **Scale-down** (`core/scaledown/planner`, every loop, also in cooldown): nodes found
//!    unremovable are skipped until `unremovableNodeRecheckTimeout` passes; a node whose Kubernetes
//!    Node carries `cluster-autoscaler.kubernetes.io/scale-down-disabled: "true"` (the operator
//!    sets it on `scaleDownDisabled` machines) is never a candidate; a node is underused when its
//!    requested share (the larger of CPU and memory; DaemonSet pods counted as the group's
//!    `ignoreDaemonSetsUtilization` says) is **at or below** the threshold. Candidates are then
//!    simulated one after another: the drain rules (`simulator/drainability/rules`) may block a
//!    pod, the others must fit on the other Ready nodes, each simulation keeping the moves of
//!    the ones before, and a node found removable is no destination for later ones. After
//!    `scaleDownDelayAfterAdd` / `scaleDownDelayAfterFailure`, nodes unneeded for longer than the
//!    group's unneeded time (unready time for NotReady nodes) are removed, never taking a group
//!    to its min size, at most `maxScaleDownParallelism` per loop of which at most
//!    `maxDrainParallelism` need a drain (`core/scaledown/budgets`). CA taints and drains the node
//!    (the pods go back to the scheduler) and calls `DeleteNodes`; if that fails the node is
//!    untainted.
//!
//! Simplified compared to the real CA: no node-group balancing, no pod priorities or
//! preemption, no scale-up of unschedulable pods "too new" to consider; the price expander
//! compares `hourlyRate × new nodes / pods helped`; utilization is requests, not usage; nodes
//! are alike within a group (the template is used for every new node, as CA does); drains and
//! deletions complete within the loop (CA's are asynchronous); a PDB blocks a pod when its
//! remaining disruptions are used up, and a node whose pods would exceed it together is drained
//! anyway (CA marks it risky and drains it last).
use rand::Rng;

use super::engine::{EventKindSim, Sim};
use super::scenario::{Expander, Scenario};
use super::units::{Millis, format_millis};
use super::workload::Controller;
use crate::operator::machine::{Phase, PowerState};
use crate::operator::provider::ops::{self, InstanceState, NodeRef};
use crate::operator::provider::template;

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Backoff {
    pub until: Millis,
    pub duration: Millis,
    pub last_failure: Option<Millis>,
}

/// Allocatable CPU (millicores), memory (bytes) and pods of a group's template node.
type Shape = (u64, u64, u32);

/// A group's autoscaling options as CA resolves them: the Group's `NodeGroupGetOptions` answer
/// (from `ops::node_group_options`) over CA's flags.
#[derive(Clone, Copy, Debug)]
pub(super) struct GroupOptions {
    pub threshold: f64,
    pub unneeded: Millis,
    pub unready: Millis,
    pub provision: Millis,
    pub zero_or_max: bool,
    pub ignore_daemonsets: bool,
}

/// The CA model's memory between loops.
pub(super) struct CaState {
    pub last_scale_up: Option<Millis>,
    pub last_scale_down_failure: Option<Millis>,
    pub last_scale_down: Option<Millis>,
    /// When each node was first found unneeded (`core/scaledown/unneeded` `Nodes.since`).
    pub unneeded_since: Vec<Option<Millis>>,
    /// Whether the unneeded node needs a drain (it had pods to move when last simulated).
    pub unneeded_drain: Vec<bool>,
    /// Until when a node found unremovable is not re-checked (`unremovable.Nodes` TTLs).
    pub unremovable_until: Vec<Millis>,
    /// When a tainted node is drained and deleted (after --node-delete-delay-after-taint).
    pub delete_due: Vec<Option<Millis>>,
    pub creating_since: Vec<Option<Millis>>,
    pub backoff: Vec<Backoff>,
    /// The provider's id of each scenario group (resolved once).
    pub group_ids: Vec<String>,
    pub options: Vec<GroupOptions>,
    templates: Option<Vec<Option<Shape>>>,
}

impl CaState {
    pub fn new(sc: &Scenario) -> CaState {
        CaState {
            last_scale_up: None,
            last_scale_down_failure: None,
            last_scale_down: None,
            unneeded_since: vec![None; sc.machines.len()],
            unneeded_drain: vec![false; sc.machines.len()],
            unremovable_until: vec![0; sc.machines.len()],
            delete_due: vec![None; sc.machines.len()],
            creating_since: vec![None; sc.machines.len()],
            backoff: vec![Backoff::default(); sc.groups.len()],
            group_ids: Vec::new(),
            options: Vec::new(),
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

#[derive(Clone, Copy, Debug)]
struct Option_ {
    group: usize,
    nodes: u32,
    pods: usize,
    waste: f64,
    price: f64,
}

fn millis(d: Option<jiff::SignedDuration>, default: Millis) -> Millis {
    d.and_then(|d| u64::try_from(d.as_millis()).ok())
        .unwrap_or(default)
}

fn duration(ms: Millis) -> jiff::SignedDuration {
    jiff::SignedDuration::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// What a drain rule says about one pod (`drainability.Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Drain {
    Movable,
    Blocked(&'static str),
}

impl Sim<'_> {
    fn resolve_group_ids(&mut self) {
        if !self.ca.group_ids.is_empty() {
            return;
        }
        let sc = self.sc;
        let inv = self.inventory();
        let ids: Vec<String> = sc
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
        // CA asks each group for its options (`NodeGroupGetOptions`, sending its flags as the
        // defaults) through `processors/nodegroupconfig`; `None` means "use the flags".
        let a = &sc.autoscaler;
        let defaults = ops::AutoscalingOptions {
            scale_down_utilization_threshold: a.scale_down_utilization_threshold,
            scale_down_gpu_utilization_threshold: a.scale_down_utilization_threshold,
            zero_or_max_node_scaling: false,
            ignore_daemon_sets_utilization: a.ignore_daemonsets_utilization,
            scale_down_unneeded: Some(duration(a.scale_down_unneeded_time)),
            scale_down_unready: Some(duration(a.scale_down_unready_time)),
            max_node_provision: Some(duration(a.max_node_provision_time)),
            max_node_startup: None,
            allow_non_atomic_scale_up_to_max: false,
        };
        let mut options = Vec::with_capacity(ids.len());
        for id in &ids {
            let o = match ops::node_group_options(inv, id, Some(defaults.clone())) {
                Ok(o) => o.unwrap_or_else(|| defaults.clone()),
                Err(_) => defaults.clone(),
            };
            options.push(GroupOptions {
                threshold: o.scale_down_utilization_threshold,
                unneeded: millis(o.scale_down_unneeded, a.scale_down_unneeded_time),
                unready: millis(o.scale_down_unready, a.scale_down_unready_time),
                provision: millis(o.max_node_provision, a.max_node_provision_time),
                zero_or_max: o.zero_or_max_node_scaling,
                ignore_daemonsets: o.ignore_daemon_sets_utilization,
            });
        }
        self.ca.options = options;
        self.ca.group_ids = ids;
    }

    /// `utils/backoff` `exponentialBackoff.Backoff`: a group already backed off keeps its
    /// duration (concurrent failures must not escalate it); once the backoff has expired the
    /// next failure doubles it, up to the max; after the reset timeout without failures
    /// (`RemoveStaleBackoffData`) it starts over at the initial duration.
    pub(super) fn back_off(&mut self, g: usize, why: &str) {
        let a = &self.sc.autoscaler;
        let (initial, max, reset) = (a.backoff_initial, a.backoff_max, a.backoff_reset);
        let now = self.now;
        let b = &mut self.ca.backoff[g];
        let known = b.duration > 0 && b.last_failure.is_some_and(|t| t + reset >= now);
        b.duration = if !known {
            initial
        } else if b.until < now {
            (b.duration * 2).min(max)
        } else {
            b.duration
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

    /// The delay after the taint of group `g`'s removed nodes is over (an event between loops).
    pub(super) fn ca_delete_nodes(&mut self, g: usize) {
        self.resolve_group_ids();
        let ids = std::mem::take(&mut self.ca.group_ids);
        self.delete_tainted(&ids, g);
        self.ca.group_ids = ids;
    }

    pub(super) fn autoscaler_scan(&mut self) {
        self.counters.scans += 1;
        self.resolve_group_ids();
        let ids = std::mem::take(&mut self.ca.group_ids);
        self.handle_unhealthy_instances(&ids);
        if !self.cluster.pending.is_empty() {
            self.scale_up(&ids);
        }
        if self.sc.autoscaler.scale_down_enabled {
            // Runs every loop: the unneeded nodes are tracked even in cooldown
            // (`static_autoscaler.go` `scaleDown`).
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
                } else if self.now - since >= self.ca.options[g].provision {
                    Some(format!(
                        "instance {} not registered within maxNodeProvisionTime {}",
                        inst.id,
                        format_millis(self.ca.options[g].provision)
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
                    if d.target_after < group.min && d.target_after < d.target_before {
                        self.violate(format!(
                            "DeleteNodes of failed instances took group {} to target {}, below its min {}",
                            group.name, d.target_after, group.min
                        ));
                    }
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

    /// Each group's template node as CA builds it: the provider's template, with the DaemonSet
    /// pods CA adds to it taking their share (`simulator/node_info_utils.go`).
    fn templates(&mut self, ids: &[String]) -> Vec<Option<Shape>> {
        if let Some(t) = &self.ca.templates {
            return t.clone();
        }
        let (ds_cpu, ds_mem) = (self.sc.daemonset_cpu, self.sc.daemonset_memory);
        let inv = self.inventory();
        let t: Vec<Option<Shape>> = ids
            .iter()
            .map(|id| {
                template::template_node(inv, id)
                    .ok()
                    .as_ref()
                    .and_then(parse_shape)
                    .and_then(|(c, m, p)| {
                        (c > ds_cpu && m > ds_mem && p > 0).then(|| {
                            let ds_pods = u32::from(ds_cpu > 0 || ds_mem > 0);
                            (c - ds_cpu, m - ds_mem, p.saturating_sub(ds_pods).max(1))
                        })
                    })
            })
            .collect();
        self.ca.templates = Some(t.clone());
        t
    }

    /// One scale-up attempt. Returns whether `IncreaseSize` succeeded.
    fn scale_up(&mut self, ids: &[String]) -> bool {
        let sc = self.sc;
        let a = &sc.autoscaler;
        // `static_autoscaler.go`: no scale-up once the Ready nodes reach --max-nodes-total.
        if a.max_nodes_total > 0 {
            let ready = self.cluster.nodes.iter().filter(|n| n.ready).count() as u32;
            if ready >= a.max_nodes_total {
                return false;
            }
        }
        let shapes = self.templates(ids);
        // Pods to help, oldest first, by shape.
        let mut classes = self.cluster.pending_classes();
        // Nodes on their way up take pods first (`addUpcomingNodesToClusterSnapshot`).
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
        for c in classes.iter_mut() {
            for r in upcoming.iter_mut() {
                c.2 -= take_many(r, c.0, c.1, c.2);
                if c.2 == 0 {
                    break;
                }
            }
        }
        classes.retain(|c| c.2 > 0);
        if classes.is_empty() {
            return false;
        }
        // First-fit decreasing, as CA's binpacking estimator sorts pods by size.
        classes.sort_by_key(|c| std::cmp::Reverse((c.0, c.1)));
        let mut total_target = 0u32;
        let mut targets = Vec::with_capacity(sc.groups.len());
        for id in ids {
            let t = match ops::target_size(self.inventory(), id) {
                Ok(t) => t,
                Err(e) => {
                    self.violate(format!("TargetSize failed for a known group: {e}"));
                    return false;
                }
            };
            total_target += t;
            targets.push(t);
        }
        // `core/scaleup/orchestrator`: new nodes are capped so the cluster stays within
        // --max-nodes-total.
        let total_left = if a.max_nodes_total > 0 {
            a.max_nodes_total.saturating_sub(total_target)
        } else {
            u32::MAX
        };
        let mut options = Vec::new();
        for (g, group) in sc.groups.iter().enumerate() {
            if self.ca.backoff[g].until > self.now {
                continue;
            }
            let Some((cpu, mem, np)) = shapes[g] else {
                continue;
            };
            let room_left = group.max.saturating_sub(targets[g]).min(total_left);
            if room_left == 0 {
                continue;
            }
            let mut nodes: Vec<Room> = Vec::new();
            let mut helped = 0usize;
            for &(c, m, count) in &classes {
                if c > cpu || m > mem {
                    continue;
                }
                let mut left = count;
                for r in nodes.iter_mut() {
                    left -= take_many(r, c, m, left);
                    if left == 0 {
                        break;
                    }
                }
                while left > 0 && (nodes.len() as u32) < room_left {
                    let mut r = Room { cpu, mem, pods: np };
                    let took = take_many(&mut r, c, m, left);
                    if took == 0 {
                        break;
                    }
                    left -= took;
                    nodes.push(r);
                }
                helped += (count - left) as usize;
            }
            if helped == 0 {
                continue;
            }
            let mut n = nodes.len() as u32;
            if self.ca.options[g].zero_or_max {
                // An atomic group scales from its current size straight to its max
                // (`orchestrator.go` for `ZeroOrMaxNodeScaling`); if that exceeds the
                // cluster's limit the option is dropped.
                let to_max = group.max.saturating_sub(targets[g]);
                if to_max > total_left {
                    continue;
                }
                n = to_max;
            }
            let used_cpu: u64 = nodes.iter().map(|r| cpu - r.cpu).sum();
            let used_mem: u64 = nodes.iter().map(|r| mem - r.mem).sum();
            // `expander/waste`: wasted CPU share plus wasted memory share.
            let waste = (1.0 - used_cpu as f64 / (cpu as f64 * n as f64))
                + (1.0 - used_mem as f64 / (mem as f64 * n as f64));
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
        let pick = self.expand(options);
        let (g, n, helped) = (pick.group, pick.nodes, pick.pods);
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

    /// `expander/factory/chain.go`: each expander of the chain keeps its best options; a single
    /// one left wins, and what is left at the end is picked at random (the CA stream).
    fn expand(&mut self, options: Vec<Option_>) -> Option_ {
        let sc = self.sc;
        let mut left = options;
        for e in &sc.autoscaler.expander.0 {
            left = match e {
                Expander::LeastWaste => keep_best(left, |o| -o.waste),
                Expander::MostPods => keep_best(left, |o| o.pods as f64),
                Expander::Price => keep_best(left, |o| -o.price),
                Expander::Random => {
                    let i = self.ca_rng.random_range(0..left.len());
                    vec![left[i]]
                }
                Expander::Priority => {
                    // `expander/priority`: groups not in the priority list are not used,
                    // unless no option's group is listed at all.
                    let listed: Vec<Option_> = left
                        .iter()
                        .copied()
                        .filter(|o| {
                            sc.autoscaler
                                .priorities
                                .contains_key(&sc.groups[o.group].name)
                        })
                        .collect();
                    if listed.is_empty() {
                        left
                    } else {
                        keep_best(listed, |o| f64::from(sc.groups[o.group].priority))
                    }
                }
            };
            if left.len() == 1 {
                return left[0];
            }
        }
        let i = self.ca_rng.random_range(0..left.len());
        left[i]
    }

    /// CA's drain rules (`simulator/drainability/rules/rules.go` `Default`, in their order) for
    /// one pod of workload `w` created at `created`: the first rule with an opinion decides.
    /// DaemonSet pods are the node's overhead, not in this list, and are never moved.
    pub(super) fn drain_rule(&self, w: u16, created: Millis, pdb_left: &[i64]) -> Drain {
        let a = &self.sc.autoscaler;
        let Some(wl) = self.sc.workloads.get(usize::from(w)) else {
            return Drain::Movable;
        };
        let t = &wl.drain;
        // `safetoevict`: the annotation "true" makes any pod drainable.
        if t.safe_to_evict == Some(true) {
            return Drain::Movable;
        }
        // `replicated`: bare pods are never moved; pods of a controller CA does not know only
        // with --skip-nodes-with-custom-controller-pods=false.
        match t.controller {
            Controller::None => return Drain::Blocked("a pod without a controller"),
            Controller::Custom if a.skip_nodes_with_custom_controller_pods => {
                return Drain::Blocked("a pod of a custom controller");
            }
            _ => {}
        }
        // `system`: kube-system pods without a PDB, until the blocking-system-pod disruption
        // timeout has passed since their creation.
        if t.kube_system
            && a.skip_nodes_with_system_pods
            && t.pdb_max_unavailable.is_none()
            && self.now <= created + a.blocking_system_pod_disruption_timeout
        {
            return Drain::Blocked("a kube-system pod without a PodDisruptionBudget");
        }
        // `notsafetoevict`.
        if t.safe_to_evict == Some(false) {
            return Drain::Blocked("a pod annotated safe-to-evict: \"false\"");
        }
        // `localstorage`.
        if t.local_storage && a.skip_nodes_with_local_storage {
            return Drain::Blocked("a pod with local storage (emptyDir/hostPath)");
        }
        // `pdb`: no disruptions left in its budget.
        if t.pdb_max_unavailable.is_some() && pdb_left[usize::from(w)] < 1 {
            return Drain::Blocked("a PodDisruptionBudget with no disruptions allowed");
        }
        Drain::Movable
    }

    /// The remaining disruptions of each workload's PDB this loop
    /// (`core/scaledown/pdb` `BasicRemainingPdbTracker`): `maxUnavailable` minus the pods not
    /// running (pending ones, e.g. evicted earlier and not placed yet).
    fn pdb_remaining(&self) -> Vec<i64> {
        self.sc
            .workloads
            .iter()
            .enumerate()
            .map(|(w, wl)| match wl.drain.pdb_max_unavailable {
                Some(max) => i64::from(max) - i64::from(self.cluster.pending_of(w)),
                None => 0,
            })
            .collect()
    }

    /// Whether CA counts a registered node as a scale-down candidate at all: not being deleted,
    /// not annotated scale-down-disabled (`eligibility.go` `HasNoScaleDownAnnotation`), in one of
    /// our groups, Ready or (with --scale-down-unready-enabled) NotReady.
    fn scale_down_candidate(&self, m: usize) -> bool {
        let slot = &self.cluster.nodes[m];
        let ms = &self.machines[m];
        ms.node_registered
            && !slot.cordoned
            && ms.desired == PowerState::On
            && !slot.no_scale_down
            && (slot.ready || self.sc.autoscaler.scale_down_unready_enabled)
    }

    /// `planner.go` `unneededNodesLimit`: simulating more nodes than CA could remove over its
    /// next loops is skipped.
    fn unneeded_limit(&self) -> usize {
        let a = &self.sc.autoscaler;
        let n = a.max_scale_down_parallelism as usize;
        let already = self
            .ca
            .unneeded_since
            .iter()
            .filter(|s| s.is_some())
            .count();
        let limit = already + 2 * n;
        let u = a.scale_down_unneeded_time.max(a.scan_interval);
        let upper = n * (u / a.scan_interval.max(1)) as usize + n;
        limit.min(upper)
    }

    fn scale_down(&mut self, ids: &[String]) {
        let sc = self.sc;
        let a = &sc.autoscaler;
        let now = self.now;
        // `planner.go` `categorizeNodes`: previously unneeded nodes first
        // (`processors/scaledowncandidates` sorting), then the others in node order.
        let mut order: Vec<usize> = (0..sc.machines.len())
            .filter(|&m| self.scale_down_candidate(m))
            .collect();
        order.sort_by_key(|&m| (self.ca.unneeded_since[m].is_none(), m));
        let mut rooms = self.cluster.free_rooms();
        let mut is_destination: Vec<bool> = vec![false; sc.machines.len()];
        for r in &rooms {
            is_destination[r.0] = true;
        }
        // Pods moved onto a node by an earlier candidate's simulation: `(cpu, memory,
        // workload, created)`; they move again if that node is removed too.
        let mut moved_in: Vec<Vec<(u64, u64, u16, Millis)>> = vec![Vec::new(); sc.machines.len()];
        let mut pdb_left = self.pdb_remaining();
        let limit = self.unneeded_limit();
        let mut removable: Vec<(usize, bool)> = Vec::new();
        for m in order {
            let g = sc.machines[m].group;
            let opts = self.ca.options[g];
            // `unremovable.Nodes.IsRecent`: found unremovable within the recheck timeout.
            if self.ca.unremovable_until[m] > now {
                continue;
            }
            // `eligibility.go` `isNodeAtOrBelowUtilizationThreshold`: at the threshold counts.
            let slot = &self.cluster.nodes[m];
            if slot.utilization(opts.ignore_daemonsets) > opts.threshold {
                continue;
            }
            if removable.len() >= limit {
                break;
            }
            // `simulator/cluster.go` `SimulateNodeRemoval`: every pod must be drainable...
            let mut pods: Vec<(u64, u64, u16, Millis)> = slot
                .pods
                .iter()
                .map(|&p| {
                    let s = &self.cluster.pods[p as usize].spec;
                    (s.cpu, s.memory, s.workload, s.arrival)
                })
                .collect();
            pods.extend(moved_in[m].iter().copied());
            let blocked = pods.iter().find_map(|&(_, _, w, created)| {
                match self.drain_rule(w, created, &pdb_left) {
                    Drain::Blocked(why) => Some(why),
                    Drain::Movable => None,
                }
            });
            // ...and fit on the destinations left, this node and removed ones excluded.
            let fits = blocked.is_none() && {
                // First fit onto the rooms; undone unless every pod found a place.
                let mut placed: Vec<usize> = Vec::with_capacity(pods.len());
                let ok = pods.iter().all(|&(c, mem, _, _)| {
                    rooms
                        .iter_mut()
                        .enumerate()
                        .find(|(_, r)| {
                            r.0 != m && is_destination[r.0] && r.1 >= c && r.2 >= mem && r.3 > 0
                        })
                        .map(|(i, r)| {
                            r.1 -= c;
                            r.2 -= mem;
                            r.3 -= 1;
                            placed.push(i);
                        })
                        .is_some()
                });
                if ok {
                    // `withForkedSnapshot` commits: later candidates see these moves.
                    for (&i, &pod) in placed.iter().zip(&pods) {
                        moved_in[rooms[i].0].push(pod);
                    }
                } else {
                    for (&i, &(c, mem, _, _)) in placed.iter().zip(&pods) {
                        let r = &mut rooms[i];
                        r.1 += c;
                        r.2 += mem;
                        r.3 += 1;
                    }
                }
                ok
            };
            if !fits {
                // `unremovableNodes.AddTimeout(..., latestUpdate + UnremovableNodeRecheckTimeout)`.
                self.ca.unremovable_until[m] = now + a.unremovable_node_recheck_timeout;
                continue;
            }
            is_destination[m] = false;
            for &(_, _, w, _) in &pods {
                if sc.workloads[usize::from(w)]
                    .drain
                    .pdb_max_unavailable
                    .is_some()
                {
                    pdb_left[usize::from(w)] -= 1;
                }
            }
            removable.push((m, !pods.is_empty()));
        }
        // `unneeded.Nodes.Update`: removable nodes keep their since (new ones start now); the
        // others are no longer unneeded.
        let mut still = vec![false; sc.machines.len()];
        for &(m, drain) in &removable {
            still[m] = true;
            self.ca.unneeded_drain[m] = drain;
            self.ca.unneeded_since[m].get_or_insert(now);
        }
        for (m, s) in still.iter().enumerate() {
            if !s {
                self.ca.unneeded_since[m] = None;
            }
        }
        // `static_autoscaler.go` `isScaleDownInCooldown`.
        let in_cooldown = self
            .ca
            .last_scale_up
            .is_some_and(|t| t + a.scale_down_delay_after_add > now)
            || self
                .ca
                .last_scale_down_failure
                .is_some_and(|t| t + a.scale_down_delay_after_failure > now)
            || self
                .ca
                .last_scale_down
                .is_some_and(|t| t + a.scale_down_delay_after_delete > now);
        if in_cooldown || removable.is_empty() {
            return;
        }
        self.remove_unneeded(ids, &removable);
    }

    /// `planner.go` `NodesToDelete` and `budgets.go` `CropNodes`, then the actuator.
    fn remove_unneeded(&mut self, ids: &[String], removable: &[(usize, bool)]) {
        let sc = self.sc;
        let a = &sc.autoscaler;
        let now = self.now;
        // `unneeded.Nodes.RemovableAt`: unneeded (unready) for longer than the group's unneeded
        // (unready) time, strictly; never taking a group to its min size.
        let mut sizes: Vec<Option<u32>> = vec![None; sc.groups.len()];
        let mut empty: Vec<usize> = Vec::new();
        let mut drain: Vec<usize> = Vec::new();
        for &(m, needs_drain) in removable {
            let g = sc.machines[m].group;
            let opts = self.ca.options[g];
            let Some(since) = self.ca.unneeded_since[m] else {
                continue;
            };
            let threshold = if self.cluster.nodes[m].ready {
                opts.unneeded
            } else {
                opts.unready
            };
            if threshold > 0 && since + threshold >= now {
                continue;
            }
            if sizes[g].is_none() {
                match ops::target_size(self.inventory(), &ids[g]) {
                    Ok(t) => sizes[g] = Some(t),
                    Err(e) => {
                        self.violate(format!("TargetSize failed for a known group: {e}"));
                        return;
                    }
                }
            }
            let size = sizes[g].unwrap_or(0);
            if size <= sc.groups[g].min {
                continue;
            }
            sizes[g] = Some(size - 1);
            if needs_drain {
                drain.push(m);
            } else {
                empty.push(m);
            }
        }
        // Atomic (`zeroOrMaxNodeScaling`) groups go all at once or not at all.
        let mut atomic_ok = vec![true; sc.groups.len()];
        for (g, group) in sc.groups.iter().enumerate() {
            if !self.ca.options[g].zero_or_max {
                continue;
            }
            let registered = group
                .members
                .iter()
                .filter(|&&m| {
                    self.machines[m].node_registered && self.machines[m].desired == PowerState::On
                })
                .count();
            let chosen = empty
                .iter()
                .chain(&drain)
                .filter(|&&m| sc.machines[m].group == g)
                .count();
            atomic_ok[g] = chosen == registered;
        }
        empty.retain(|&m| atomic_ok[sc.machines[m].group]);
        drain.retain(|&m| atomic_ok[sc.machines[m].group]);
        // `CropNodes`: empty nodes within --max-scale-down-parallelism, then nodes needing a
        // drain within what is left and --max-drain-parallelism.
        let mut budget = a.max_scale_down_parallelism as usize;
        empty.truncate(budget);
        budget -= empty.len();
        drain.truncate(budget.min(a.max_drain_parallelism as usize));
        let chosen: Vec<usize> = empty.into_iter().chain(drain).collect();
        if chosen.is_empty() {
            return;
        }
        // `actuator.go` `StartDeletion`: the nodes are tainted now (no new pods; the cooldown
        // after a delete starts), and each is drained and deleted after
        // --node-delete-delay-after-taint (`deleteNodesAsync`).
        self.ca.last_scale_down = Some(now);
        let due = now + a.node_delete_delay_after_taint;
        for &m in &chosen {
            self.cluster.nodes[m].cordoned = true;
            self.ca.delete_due[m] = Some(due);
        }
        for (g, _) in sc.groups.iter().enumerate() {
            if !chosen.iter().any(|&m| sc.machines[m].group == g) {
                continue;
            }
            if due == now {
                self.delete_tainted(ids, g);
            } else {
                self.schedule(due, EventKindSim::CaDeleteNodes { group: g });
            }
        }
    }

    /// Drains and deletes the nodes of group `g` whose delay after the taint is over. CA calls
    /// DeleteNodes once per node (`delete_in_batch.go` `AddNodes` with no batching interval),
    /// and once for all nodes of a `zeroOrMaxNodeScaling` group (`ScheduleDeletion` waits for
    /// the whole batch).
    pub(super) fn delete_tainted(&mut self, ids: &[String], g: usize) {
        let sc = self.sc;
        let now = self.now;
        let due: Vec<usize> = sc.groups[g]
            .members
            .iter()
            .copied()
            .filter(|&m| self.ca.delete_due[m].is_some_and(|t| t <= now))
            .collect();
        for &m in &due {
            self.ca.delete_due[m] = None;
        }
        let batches: Vec<Vec<usize>> = if self.ca.options[g].zero_or_max {
            vec![due]
        } else {
            due.into_iter().map(|m| vec![m]).collect()
        };
        for batch in batches.into_iter().filter(|b| !b.is_empty()) {
            self.delete_batch(ids, g, &batch);
        }
    }

    fn delete_batch(&mut self, ids: &[String], g: usize, members: &[usize]) {
        let sc = self.sc;
        let now = self.now;
        let mut evicted = 0;
        for &m in members {
            evicted += self.evict_node(m);
        }
        if evicted > 0 {
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
                for &m in members {
                    self.ca.unneeded_since[m] = None;
                }
                self.apply_changes(&d.changes);
            }
            Err(e) => {
                self.ca.last_scale_down_failure = Some(now);
                self.counters.failed_scale_downs += 1;
                self.note(
                    None,
                    Some(g),
                    format!("CA: DeleteNodes refused: {e}; untainting"),
                );
                for &m in members {
                    self.cluster.nodes[m].cordoned = false;
                    let mut out = Vec::new();
                    self.cluster.fill_node(m, self.now, &mut out);
                    self.after_placements(&mut out);
                }
            }
        }
    }
}

/// Takes up to `n` pods of `(cpu, mem)` from a room; returns how many fit.
fn take_many(r: &mut Room, cpu: u64, mem: u64, n: u32) -> u32 {
    let by_cpu = r.cpu.checked_div(cpu).unwrap_or(u64::MAX);
    let by_mem = r.mem.checked_div(mem).unwrap_or(u64::MAX);
    let k = u64::from(n).min(by_cpu).min(by_mem).min(u64::from(r.pods)) as u32;
    r.cpu -= cpu * u64::from(k);
    r.mem -= mem * u64::from(k);
    r.pods -= k;
    k
}

/// The options with the highest score (exact ties kept, as CA's expanders keep them).
fn keep_best(options: Vec<Option_>, score: impl Fn(&Option_) -> f64) -> Vec<Option_> {
    let best = options.iter().map(&score).fold(f64::NEG_INFINITY, f64::max);
    options.into_iter().filter(|o| score(o) == best).collect()
}

fn names(changes: &[crate::operator::provider::PowerChange]) -> String {
    changes
        .iter()
        .map(|c| c.machine.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    //! Each test names the CA 1.36.1 function (in the CA source tree) whose behaviour it checks.
    use super::*;
    use crate::sim::RunOptions;
    use crate::sim::scenario::NoTraceFiles;
    use crate::sim::units::{HOUR, MINUTE, SECOND};
    use crate::sim::workload::PodSpec;

    /// Machines `(name, group, cpu)` of 8Gi, all on; groups `(name, spec)`; `autoscaler` and
    /// `extra` (top-level) YAML lines; workloads 0.. as given (none arrive: they only give pods
    /// placed by hand their drain traits).
    fn lab(
        autoscaler: &str,
        groups: &[(&str, &str)],
        machines: &[(&str, &str, u32)],
        workloads: &[&str],
        extra: &str,
    ) -> Scenario {
        let mut y = format!(
            "duration: 24h\nscheduler: firstFit\n{extra}\nautoscaler:\n  scanInterval: 10s\n{autoscaler}\ngroups:\n"
        );
        for (name, spec) in groups {
            y.push_str(&format!(
                "  - metadata: {{name: {name}, namespace: lab}}\n    spec: {spec}\n"
            ));
        }
        y.push_str("machines:\n");
        for (name, group, cpu) in machines {
            y.push_str(&format!(
                "  - metadata: {{name: {name}, namespace: lab, labels: {{group: {group}}}}}\n    spec:\n      powerState: \"on\"\n      capacity: {{cpu: \"{cpu}\", memory: 8Gi, pods: \"110\"}}\n      watts: {{idle: 10}}\n"
            ));
        }
        y.push_str("workload:\n");
        for w in workloads {
            y.push_str(&format!(
                "  - {{burst: {{at: 720h, count: 1}}, cpu: \"1\", memory: 1Gi, duration: 1h, {w}}}\n"
            ));
        }
        let mut sc = match Scenario::parse("lab.yaml", &y, &NoTraceFiles) {
            Ok(s) => s,
            Err(e) => panic!("{e}\n{y}"),
        };
        // The decision tests see DeleteNodes in the loop that decides it; the delay after the
        // taint has its own test.
        if !autoscaler.contains("nodeDeleteDelayAfterTaint") {
            sc.autoscaler.node_delete_delay_after_taint = 0;
        }
        sc
    }

    fn sim(sc: &Scenario) -> Sim<'_> {
        let mut s = Sim::new(sc, RunOptions::default());
        for m in 0..s.machines.len() {
            s.reconcile(m);
        }
        s
    }

    /// Puts a pod of `workload` requesting `cpu` millicores and `mem` GiB on node `m`.
    fn put(s: &mut Sim<'_>, m: usize, cpu: u64, mem: u64, workload: u16) {
        let cordoned: Vec<bool> = s.cluster.nodes.iter().map(|n| n.cordoned).collect();
        for (i, n) in s.cluster.nodes.iter_mut().enumerate() {
            n.cordoned = i != m;
        }
        let spec = PodSpec {
            arrival: s.now,
            cpu,
            memory: mem << 30,
            duration: 10 * HOUR,
            workload,
        };
        let mut out = Vec::new();
        s.cluster.arrive(spec, s.now, &mut out);
        assert_eq!(out.len(), 1, "pod did not fit on node {m}");
        s.counters.pods += 1;
        for (n, c) in s.cluster.nodes.iter_mut().zip(cordoned) {
            n.cordoned = c;
        }
    }

    fn scan_at(s: &mut Sim<'_>, t: Millis) {
        s.now = t;
        s.autoscaler_scan();
    }

    fn unneeded(s: &Sim<'_>) -> Vec<usize> {
        (0..s.machines.len())
            .filter(|&m| s.ca.unneeded_since[m].is_some())
            .collect()
    }

    fn wanted_off(s: &Sim<'_>) -> Vec<usize> {
        (0..s.machines.len())
            .filter(|&m| s.machines[m].desired == PowerState::Off)
            .collect()
    }

    const TWO: &[(&str, &str, u32)] = &[("a", "g", 4), ("b", "g", 4)];
    const G: &[(&str, &str)] = &[("g", "{minSize: 0}")];

    /// `core/scaledown/eligibility/eligibility.go` `isNodeAtOrBelowUtilizationThreshold`:
    /// `utilization > threshold` is what keeps a node, so exactly 50 % is underused.
    #[test]
    fn a_node_at_exactly_the_threshold_is_underused() {
        let sc = lab("", G, &[("a", "g", 4), ("b", "g", 8)], &["name: w"], "");
        let mut s = sim(&sc);
        put(&mut s, 0, 2000, 1, 0);
        put(&mut s, 1, 4200, 1, 0);
        scan_at(&mut s, 0);
        assert_eq!(
            unneeded(&s),
            vec![0],
            "a at 50 % is unneeded, b at 52.5 % is not"
        );
    }

    /// `core/scaledown/unneeded/nodes.go` `unremovableReason`: removable only once
    /// `since + scaleDownUnneededTime` is *before* the loop's time, not at it.
    #[test]
    fn removal_waits_strictly_longer_than_the_unneeded_time() {
        let sc = lab(
            "  scaleDownUnneededTime: 10m\n  scaleDownDelayAfterAdd: 0s\n",
            G,
            TWO,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        put(&mut s, 1, 3000, 1, 0);
        scan_at(&mut s, 0);
        assert_eq!(unneeded(&s), vec![0]);
        scan_at(&mut s, 10 * MINUTE);
        assert!(
            wanted_off(&s).is_empty(),
            "removed at exactly the unneeded time"
        );
        scan_at(&mut s, 10 * MINUTE + 10 * SECOND);
        assert_eq!(wanted_off(&s), vec![0]);
    }

    /// `core/scaledown/planner/planner.go` `categorizeNodes` (`unremovableNodes.AddTimeout`) and
    /// `core/scaledown/unremovable/nodes.go` `IsRecent`: a node whose pods had nowhere to go is
    /// not simulated again for `--unremovable-node-recheck-timeout` (5m), even once room
    /// appears.
    #[test]
    fn an_unremovable_node_is_not_rechecked_before_the_timeout() {
        let machines = &[("a", "g", 4), ("b", "g", 4), ("c", "g", 4)];
        let sc = lab("", G, machines, &["name: w"], "");
        let mut s = sim(&sc);
        put(&mut s, 0, 1000, 1, 0);
        put(&mut s, 1, 3500, 1, 0);
        put(&mut s, 2, 2500, 1, 0);
        put(&mut s, 2, 1000, 1, 0);
        scan_at(&mut s, 0);
        assert!(unneeded(&s).is_empty());
        assert_eq!(s.ca.unremovable_until[0], 5 * MINUTE);
        // c frees 1 CPU (still busy, 62.5 %): a's pod would fit now, but a is not looked at
        // again until 5m.
        let pod = s.cluster.nodes[2].pods[1];
        let mut out = Vec::new();
        s.cluster.finish(pod, 0, MINUTE, &mut out);
        scan_at(&mut s, MINUTE);
        assert!(unneeded(&s).is_empty());
        scan_at(&mut s, 5 * MINUTE + 10 * SECOND);
        assert_eq!(unneeded(&s), vec![0]);
    }

    /// `simulator/cluster.go` `SimulateNodeRemoval` (the forked snapshot is committed: later
    /// candidates see the earlier moves) and `planner.go` `categorizeNodes`
    /// (`delete(podDestinations, ...)`: a removable node is no destination). a's and b's pods
    /// cannot both move onto c's one free CPU, so only one of them is unneeded.
    #[test]
    fn candidates_are_simulated_in_turn_keeping_earlier_moves() {
        let machines = &[("a", "g", 4), ("b", "g", 4), ("c", "g", 4)];
        let sc = lab("", G, machines, &["name: w"], "");
        let mut s = sim(&sc);
        put(&mut s, 0, 1000, 1, 0);
        put(&mut s, 1, 1000, 1, 0);
        put(&mut s, 2, 3000, 1, 0);
        scan_at(&mut s, 0);
        // a moves to c (the only room); b may not go to a (removed) nor c (now full).
        assert_eq!(unneeded(&s), vec![0]);
    }

    /// `utils/backoff/exponential_backoff.go` `Backoff`: while the group is backed off its
    /// duration is kept; after it expired the next failure doubles it (up to the max); after
    /// the reset timeout without failure it starts over.
    #[test]
    fn backoff_keeps_its_duration_while_backed_off_and_doubles_after() {
        let sc = lab(
            "  backoff: {initial: 5m, max: 20m}\n",
            G,
            TWO,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        let at = |s: &mut Sim<'_>, t: Millis| {
            s.now = t;
            s.back_off(0, "test");
            s.ca.backoff[0].duration
        };
        assert_eq!(at(&mut s, 0), 5 * MINUTE);
        assert_eq!(at(&mut s, MINUTE), 5 * MINUTE, "still backed off: kept");
        assert_eq!(s.ca.backoff[0].until, 6 * MINUTE);
        assert_eq!(at(&mut s, 7 * MINUTE), 10 * MINUTE, "expired: doubled");
        assert_eq!(at(&mut s, 18 * MINUTE), 20 * MINUTE);
        assert_eq!(at(&mut s, 40 * MINUTE), 20 * MINUTE, "capped at the max");
        assert_eq!(
            at(&mut s, 4 * HOUR),
            5 * MINUTE,
            "reset after 3h without failure"
        );
    }

    /// `simulator/drainability/rules/rules.go` `Default` with CA's default flags: `replicated`
    /// (bare and custom-controller pods), `system` (kube-system without a PDB, until
    /// --blocking-system-pod-distruption-timeout), `notsafetoevict`, `localstorage`, `pdb`
    /// (no disruptions left) block; `safetoevict` ("true") lets any pod go.
    #[test]
    fn pods_that_block_scale_down_in_cas_defaults() {
        let workloads = [
            "name: job",
            "name: bare, controller: none",
            "name: custom, controller: custom",
            "name: sys, namespace: kube-system",
            "name: pinned, safeToEvict: false",
            "name: scratch, localStorage: true",
            "name: budget, pdb: {maxUnavailable: 0}",
            "name: budget1, pdb: {maxUnavailable: 1}",
            "name: forced, controller: none, localStorage: true, safeToEvict: true",
        ];
        let sc = lab("", G, TWO, &workloads, "");
        let s = sim(&sc);
        let left = s.pdb_remaining();
        assert_eq!(left[6], 0);
        assert_eq!(left[7], 1);
        let blocked = |w: u16, created: Millis| s.drain_rule(w, created, &left) != Drain::Movable;
        assert!(!blocked(0, 0), "a Job's pod moves");
        for w in 1..=6 {
            assert!(
                blocked(w, 0),
                "workload {} must block",
                workloads[usize::from(w)]
            );
        }
        assert!(!blocked(7, 0), "one disruption allowed");
        assert!(!blocked(8, 0), "safe-to-evict: true overrides");
        let mut later = sim(&sc);
        later.now = HOUR + SECOND;
        let left = later.pdb_remaining();
        assert_eq!(
            later.drain_rule(3, 0, &left),
            Drain::Movable,
            "a kube-system pod older than the 1h timeout moves"
        );
    }

    /// The same rules end to end: a node holding a bare pod is never unneeded, while a Job's
    /// pod lets it go (`SimulateNodeRemoval` returns `BlockedByPod`).
    #[test]
    fn a_blocking_pod_keeps_its_node() {
        let sc = lab(
            "",
            G,
            TWO,
            &["name: job", "name: bare, controller: none"],
            "",
        );
        let mut s = sim(&sc);
        put(&mut s, 0, 500, 1, 1);
        put(&mut s, 1, 500, 1, 0);
        scan_at(&mut s, 0);
        assert_eq!(unneeded(&s), vec![1]);
        assert_eq!(s.ca.unremovable_until[0], 5 * MINUTE);
    }

    /// `simulator/utilization/info.go` `Calculate`: DaemonSet pods count as requests, or with
    /// --ignore-daemonsets-utilization (or the Group's `ignoreDaemonSetsUtilization`, through
    /// `NodeGroupGetOptions`) come off the allocatable instead.
    #[test]
    fn daemonsets_count_toward_utilization_unless_ignored() {
        let ds = "daemonSets:\n  - {name: agent, cpu: \"1\", memory: 1Gi}";
        let groups = &[
            ("keep", "{minSize: 0}"),
            ("skip", "{minSize: 0, ignoreDaemonSetsUtilization: true}"),
        ];
        let machines = &[("a", "keep", 4), ("b", "skip", 4), ("c", "keep", 4)];
        let sc = lab("", groups, machines, &["name: w"], ds);
        let mut s = sim(&sc);
        // 1 CPU pod + 1 CPU DaemonSet of 4: 50 % counted, 33 % ignored: both underused at 0.5.
        put(&mut s, 0, 1000, 1, 0);
        put(&mut s, 1, 1000, 1, 0);
        assert_eq!(s.cluster.nodes[0].utilization(false), 0.5);
        assert!((s.cluster.nodes[1].utilization(true) - 1.0 / 3.0).abs() < 1e-9);
        // 1.5 CPU: 62.5 % counted (kept), 50 % ignored (underused).
        put(&mut s, 0, 500, 1, 0);
        put(&mut s, 1, 500, 1, 0);
        put(&mut s, 2, 100, 1, 0);
        scan_at(&mut s, 0);
        let u = unneeded(&s);
        assert!(!u.contains(&0) && u.contains(&1), "{u:?}");
    }

    /// `core/static_autoscaler.go` `RunOnce`: with the Ready nodes at --max-nodes-total no
    /// scale-up is tried; below it, the new nodes are capped (`core/scaleup/orchestrator`).
    #[test]
    fn max_nodes_total_limits_scale_up() {
        let machines = &[("a", "g", 4), ("b", "g", 4), ("c", "g", 4), ("d", "g", 4)];
        let sc = lab("  maxNodesTotal: 2\n", G, machines, &["name: w"], "");
        let mut s = sim(&sc);
        for m in [1, 2, 3] {
            s.cluster.nodes[m].ready = false;
            s.machines[m].desired = PowerState::Off;
            s.machines[m].node_registered = false;
            s.invalidate_inventory();
        }
        // Six 4-CPU pods pending: the cap leaves room for one more node.
        for _ in 0..6 {
            let spec = PodSpec {
                arrival: 0,
                cpu: 4000,
                memory: 1 << 30,
                duration: HOUR,
                workload: 0,
            };
            let mut out = Vec::new();
            s.cluster.arrive(spec, 0, &mut out);
        }
        scan_at(&mut s, 0);
        let on: Vec<usize> = (0..4)
            .filter(|&m| s.machines[m].desired == PowerState::On)
            .collect();
        assert_eq!(on.len(), 2, "{on:?}");
        // Two Ready nodes: nothing more.
        s.cluster.nodes[on[1]].ready = true;
        s.ca.backoff[0] = Backoff::default();
        scan_at(&mut s, 10 * SECOND);
        assert_eq!(
            (0..4)
                .filter(|&m| s.machines[m].desired == PowerState::On)
                .count(),
            2
        );
    }

    /// `core/scaledown/budgets/budgets.go` `CropNodes`: at most --max-scale-down-parallelism
    /// nodes per loop, of which at most --max-drain-parallelism need a drain; and
    /// `planner.go` `unneededNodesLimit`: the first loop looks at `2 × parallelism` candidates.
    #[test]
    fn parallelism_budgets_limit_each_loop() {
        let mut m: Vec<(String, &str, u32)> = vec![("big".to_owned(), "g", 16)];
        m.extend((1..14).map(|i| (format!("m{i:02}"), "g", 4)));
        let m: Vec<(&str, &str, u32)> = m.iter().map(|(n, g, c)| (n.as_str(), *g, *c)).collect();
        let sc = lab(
            "  maxScaleDownParallelism: 3\n  maxDrainParallelism: 1\n  scaleDownUnneededTime: 1m\n  scaleDownDelayAfterAdd: 0s\n",
            G,
            &m,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        // The big node is busy (62.5 %) with room for the small pods of m01..m04; the rest
        // are empty.
        put(&mut s, 0, 10_000, 1, 0);
        for n in 1..=4 {
            put(&mut s, n, 500, 1, 0);
        }
        scan_at(&mut s, 0);
        assert_eq!(
            unneeded(&s),
            vec![1, 2, 3, 4, 5, 6],
            "6 = 2 × parallelism looked at"
        );
        scan_at(&mut s, MINUTE + 10 * SECOND);
        // Empty m05, m06 and one node to drain (m01): 3 = the parallelism, 1 drain.
        assert_eq!(wanted_off(&s), vec![1, 5, 6]);
    }

    /// `core/static_autoscaler.go` `isScaleDownInCooldown`: after a deletion, scale-down waits
    /// --scale-down-delay-after-delete (0 by default: the next loop may delete again).
    #[test]
    fn scale_down_delay_after_delete_spaces_deletions() {
        let machines = &[("a", "g", 4), ("b", "g", 4), ("c", "g", 4)];
        let sc = lab(
            "  maxScaleDownParallelism: 1\n  scaleDownUnneededTime: 1m\n  scaleDownDelayAfterDelete: 5m\n",
            G,
            machines,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        put(&mut s, 2, 3000, 1, 0);
        scan_at(&mut s, 0);
        scan_at(&mut s, MINUTE + 10 * SECOND);
        assert_eq!(wanted_off(&s), vec![0]);
        scan_at(&mut s, MINUTE + 20 * SECOND);
        scan_at(&mut s, 6 * MINUTE);
        assert_eq!(wanted_off(&s), vec![0], "still in the delay after delete");
        scan_at(&mut s, 6 * MINUTE + 20 * SECOND);
        assert_eq!(wanted_off(&s), vec![0, 1]);
    }

    /// `core/scaledown/unneeded/nodes.go` `lookupAndSetRemovalThreshold`: a NotReady node waits
    /// --scale-down-unready-time (20m), not the unneeded time.
    #[test]
    fn unready_nodes_wait_the_unready_time() {
        let sc = lab(
            "  scaleDownUnneededTime: 1m\n  scaleDownDelayAfterAdd: 0s\n",
            G,
            TWO,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        s.cluster.nodes[0].ready = false;
        put(&mut s, 1, 3000, 1, 0);
        scan_at(&mut s, 0);
        assert_eq!(unneeded(&s), vec![0]);
        scan_at(&mut s, 2 * MINUTE);
        assert!(wanted_off(&s).is_empty(), "the unneeded time is not enough");
        scan_at(&mut s, 20 * MINUTE + 10 * SECOND);
        assert_eq!(wanted_off(&s), vec![0]);
    }

    /// `core/scaledown/eligibility/eligibility.go` `HasNoScaleDownAnnotation`: the operator
    /// annotates a `scaleDownDisabled` machine's Node, so CA never considers it (it is never
    /// drained; `DeleteNodes` is never asked to refuse).
    #[test]
    fn scale_down_disabled_machines_are_never_candidates() {
        let mut sc = lab("  scaleDownUnneededTime: 1m\n", G, TWO, &["name: w"], "");
        // As `spec.scaleDownDisabled: true` in the file gives.
        sc.machines[0].scale_down_disabled = true;
        sc.machines[0].machine.spec.scale_down_disabled = Some(true);
        let opts = RunOptions {
            timeline: true,
            ..RunOptions::default()
        };
        let mut sc2 = sc.clone();
        sc2.duration = 2 * HOUR;
        let r = Sim::new(&sc2, opts)
            .run(&mut |_, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            r.timeline.iter().all(|e| !e.what.contains("refused")),
            "no refused DeleteNodes"
        );
        let a = r
            .machines
            .iter()
            .find(|m| m.name == "a")
            .map(|m| m.hours_on);
        assert_eq!(a, Some(2.0), "the protected machine stays on");
        let b = r
            .machines
            .iter()
            .find(|m| m.name == "b")
            .map(|m| m.hours_on);
        assert!(
            b.is_some_and(|h| h < 0.2),
            "the other one is scaled down: {b:?}"
        );
    }

    /// `core/scaledown/actuation/actuator.go` `deleteNodesAsync`: CA taints the nodes it removes,
    /// waits --node-delete-delay-after-taint, then drains and deletes each with a DeleteNodes of
    /// its own (`delete_in_batch.go` `AddNodes`, no batching interval). Two empty nodes found
    /// removable at the 70 s loop (unneeded since 0 s, strictly longer than 1 m) are wanted off
    /// 5 s later, one call each.
    #[test]
    fn removed_nodes_are_deleted_one_call_each_after_the_delay_after_taint() {
        let mut sc = lab(
            "  scaleDownUnneededTime: 1m\n  scaleDownDelayAfterAdd: 0s\n  nodeDeleteDelayAfterTaint: 5s\n",
            G,
            TWO,
            &["name: w"],
            "",
        );
        sc.duration = 10 * MINUTE;
        let opts = RunOptions {
            timeline: true,
            ..RunOptions::default()
        };
        let r = Sim::new(&sc, opts)
            .run(&mut |_, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let offs: Vec<(Millis, &str)> = r
            .power_requests
            .iter()
            .filter(|p| p.desired == PowerState::Off)
            .map(|p| (p.at, p.machine.as_str()))
            .collect();
        assert_eq!(offs, vec![(75 * SECOND, "a"), (75 * SECOND, "b")]);
        assert_eq!(r.counters.scale_downs, 2);
    }

    /// The Group's `scaleDownDisabled` protects every member as the operator does
    /// (`controller/node_side.rs` annotates each member's Node): both machines stay on.
    #[test]
    fn a_groups_scale_down_disabled_keeps_every_member_on() {
        let groups = &[("g", "{minSize: 0, scaleDownDisabled: true}")];
        let mut sc = lab(
            "  scaleDownUnneededTime: 1m\n",
            groups,
            TWO,
            &["name: w"],
            "",
        );
        assert!(sc.machines.iter().all(|m| m.scale_down_disabled));
        sc.duration = 2 * HOUR;
        let r = Sim::new(&sc, RunOptions::default())
            .run(&mut |_, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let hours: Vec<f64> = r.machines.iter().map(|m| m.hours_on).collect();
        assert_eq!(hours, vec![2.0, 2.0]);
    }

    fn option(group: usize, nodes: u32, pods: usize, waste: f64) -> Option_ {
        Option_ {
            group,
            nodes,
            pods,
            waste,
            price: 0.0,
        }
    }

    /// `expander/mostpods`, `expander/waste` and `expander/factory/chain.go`: each expander keeps
    /// its best options (exact ties kept), the chain stops at one, and the ties left are
    /// broken at random.
    #[test]
    fn expander_chains_narrow_then_pick_at_random() {
        let groups = &[("x", "{}"), ("y", "{}"), ("z", "{}")];
        let machines = &[("a", "x", 4), ("b", "y", 4), ("c", "z", 4)];
        let sc = lab(
            "  expander: most-pods,least-waste\n",
            groups,
            machines,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        let opts = vec![
            option(0, 1, 3, 0.5),
            option(1, 2, 5, 0.9),
            option(2, 1, 5, 0.2),
        ];
        assert_eq!(
            s.expand(opts.clone()).group,
            2,
            "most pods, then least waste"
        );
        // least-waste alone with a tie between y and z: both get picked over seeds.
        let sc = lab(
            "  expander: least-waste\n",
            groups,
            machines,
            &["name: w"],
            "",
        );
        let tie = vec![
            option(0, 1, 3, 0.5),
            option(1, 1, 5, 0.2),
            option(2, 1, 5, 0.2),
        ];
        let mut picked = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let mut sc = sc.clone();
            sc.seed = seed;
            let mut s = sim(&sc);
            picked.insert(s.expand(tie.clone()).group);
        }
        assert_eq!(picked.into_iter().collect::<Vec<_>>(), vec![1, 2]);
    }

    /// `expander/priority/priority.go` `BestOptions`: a group not in the priority list is not
    /// used ("The group won't be used"), unless no option's group is listed at all.
    #[test]
    fn the_priority_expander_excludes_unlisted_groups() {
        let groups = &[("x", "{}"), ("y", "{}")];
        let machines = &[("a", "x", 4), ("b", "y", 4)];
        let sc = lab(
            "  expander: priority,least-waste\n  priorities: {x: 1}\n",
            groups,
            machines,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        let opts = vec![option(0, 1, 1, 0.9), option(1, 1, 1, 0.1)];
        assert_eq!(s.expand(opts).group, 0, "y is cheaper to run but unlisted");
        assert_eq!(
            s.expand(vec![option(1, 1, 1, 0.1)]).group,
            1,
            "nothing listed: unfiltered"
        );
    }

    /// `core/scaleup/orchestrator` for `ZeroOrMaxNodeScaling` (the Group's
    /// `zeroOrMaxNodeScaling`, read through `NodeGroupGetOptions`): the group scales straight
    /// to its max.
    #[test]
    fn zero_or_max_groups_scale_to_their_max() {
        let groups = &[("g", "{zeroOrMaxNodeScaling: true}")];
        let machines = &[("a", "g", 4), ("b", "g", 4), ("c", "g", 4)];
        let sc = lab("", groups, machines, &["name: w"], "");
        let mut s = sim(&sc);
        for m in 0..3 {
            s.cluster.nodes[m].ready = false;
            s.machines[m].desired = PowerState::Off;
            s.machines[m].node_registered = false;
        }
        s.invalidate_inventory();
        let spec = PodSpec {
            arrival: 0,
            cpu: 1000,
            memory: 1 << 30,
            duration: HOUR,
            workload: 0,
        };
        let mut out = Vec::new();
        s.cluster.arrive(spec, 0, &mut out);
        scan_at(&mut s, 0);
        assert!(s.ca.options[0].zero_or_max);
        assert_eq!(
            (0..3)
                .filter(|&m| s.machines[m].desired == PowerState::On)
                .count(),
            3
        );
    }

    /// `processors/nodegroupconfig` reads per-group options through `NodeGroupGetOptions`
    /// (the provider's `ops::node_group_options`), over CA's flags.
    #[test]
    fn group_options_come_through_node_group_get_options() {
        let groups = &[
            (
                "x",
                "{scaleDownUnneededTime: 3m, scaleDownUnreadyTime: 7m, maxNodeProvisionTime: 4m, scaleDownUtilizationThreshold: \"0.7\"}",
            ),
            ("y", "{}"),
        ];
        let machines = &[("a", "x", 4), ("b", "y", 4)];
        let sc = lab(
            "  scaleDownUnneededTime: 11m\n",
            groups,
            machines,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        scan_at(&mut s, 0);
        let (x, y) = (s.ca.options[0], s.ca.options[1]);
        assert_eq!(
            (x.unneeded, x.unready, x.provision),
            (3 * MINUTE, 7 * MINUTE, 4 * MINUTE)
        );
        assert_eq!(x.threshold, 0.7);
        assert_eq!(
            (y.unneeded, y.unready, y.provision),
            (11 * MINUTE, 20 * MINUTE, 15 * MINUTE)
        );
        assert_eq!(y.threshold, 0.5);
    }
}
