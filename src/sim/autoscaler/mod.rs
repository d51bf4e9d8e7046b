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
//!
//! Step 1 is in `health.rs`, step 2 in `scale_up.rs`, step 3 in `scale_down.rs` with the drain
//! rules in `drain.rs`; this file holds the CA model's state and the loop itself.
use super::engine::Sim;
use super::scenario::Scenario;
use super::units::Millis;
use crate::operator::provider::ops;

mod buffer;
mod drain;
mod health;
mod scale_down;
mod scale_up;
#[cfg(test)]
mod test_support;

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
    /// This loop's warm-spare placeholder pods (`buffer.rs`).
    pub placeholders: buffer::Placeholders,
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
            placeholders: buffer::Placeholders::default(),
        }
    }

    /// Templates are read from the inventory; rebuilt with it.
    pub fn invalidate_templates(&mut self) {
        self.templates = None;
    }
}

fn millis(d: Option<jiff::SignedDuration>, default: Millis) -> Millis {
    d.and_then(|d| u64::try_from(d.as_millis()).ok())
        .unwrap_or(default)
}

fn duration(ms: Millis) -> jiff::SignedDuration {
    jiff::SignedDuration::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

impl Sim<'_> {
    pub(in crate::sim) fn resolve_group_ids(&mut self) {
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
        // Warm spares' placeholder pods join the pending pods
        // (`processors/capacitybuffer/pod_list_processor.go` `Process`).
        self.ca.placeholders = self.place_placeholders(&ids);
        if !self.cluster.pending.is_empty() || self.ca.placeholders.any_unplaced() {
            self.scale_up(&ids);
        }
        if self.sc.autoscaler.scale_down_enabled {
            // Runs every loop: the unneeded nodes are tracked even in cooldown
            // (`static_autoscaler.go` `scaleDown`).
            self.scale_down(&ids);
        }
        self.ca.group_ids = ids;
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
}

pub(in crate::sim) fn names(changes: &[crate::operator::provider::PowerChange]) -> String {
    changes
        .iter()
        .map(|c| c.machine.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    //! Each test names the CA 1.36.1 function (in the CA source tree) whose behaviour it checks.
    use crate::sim::autoscaler::test_support::*;
    use crate::sim::units::MINUTE;

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
