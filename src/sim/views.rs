//! The smallest adapter between the simulated world and the provider core: builds the
//! provider's `Inventory` from the scenario's CRs (through the provider's own conversion,
//! `provider::convert`, as the operator does from its reflector caches) and the simulator's
//! state. No decisions and no field translation of its own are taken here.
use std::collections::BTreeMap;
use std::sync::Arc;

use super::engine::Sim;
use super::scenario::Scenario;
use crate::operator::provider::convert::{declared_node, group_view, machine_view};
use crate::operator::provider::{GroupView, Inventory, MachineView, NodeView};

/// Capacity in the simulator's units, as Kubernetes quantities.
fn capacity(cpu: u64, memory: u64, pods: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cpu".to_owned(), format!("{cpu}m")),
        ("memory".to_owned(), memory.to_string()),
        ("pods".to_owned(), pods.to_string()),
    ])
}

/// The parts of the provider's views that never change during a run, built once.
#[derive(Clone, Debug, Default)]
pub(super) struct BaseViews {
    groups: Vec<GroupView>,
    machines: Vec<MachineView>,
    /// The node each machine registers as (Ready and cordoned filled in per build).
    nodes: Vec<NodeView>,
}

pub(super) fn base_views(sc: &Scenario) -> BaseViews {
    let groups = sc
        .groups
        .iter()
        .map(|g| group_view(&g.group, g.members.len()))
        .collect();
    let mut machines = Vec::with_capacity(sc.machines.len());
    let mut nodes = Vec::with_capacity(sc.machines.len());
    for model in &sc.machines {
        let mut v = machine_view(&model.machine);
        // The scenario's `simulation.capacity` may override (or supply) spec.capacity: the
        // capacity the simulated machine really has is what its node reports.
        Arc::make_mut(&mut v.hints).capacity = capacity(model.cpu, model.memory, model.max_pods);
        nodes.push(declared_node(&v));
        machines.push(v);
    }
    BaseViews {
        groups,
        machines,
        nodes,
    }
}

/// The inventory for the current state. The machines' last-seen node snapshot is left out:
/// in the simulation it always equals the declared hints the template falls back to.
pub(super) fn build_inventory(sim: &Sim<'_>, base: &BaseViews) -> Inventory {
    let mut machines = base.machines.clone();
    let mut nodes = Vec::new();
    for (i, v) in machines.iter_mut().enumerate() {
        let state = &sim.machines[i];
        v.desired = state.desired;
        v.lifecycle = state.lifecycle.clone();
        v.last_power_on = state.last_power_on;
        v.boot_durations = state.boot_durations.clone();
        v.power_on_requested = state.power_on_requested;
        if state.node_registered {
            let slot = &sim.cluster.nodes[i];
            let mut node = base.nodes[i].clone();
            node.ready = slot.ready;
            node.unschedulable = slot.cordoned || slot.maintenance;
            nodes.push(node);
        }
    }
    let mut groups = base.groups.clone();
    // The min size in force (a schedule window's), as the provider reports it to CA.
    for (g, min) in groups.iter_mut().zip(&sim.group_min) {
        g.min_size = *min;
    }
    Inventory::build(groups, machines, nodes)
}
