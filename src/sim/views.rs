//! The smallest adapter between the simulated world and the provider core: builds the
//! provider's `Inventory` (groups, machines, registered nodes) from the scenario's CRs and the
//! simulator's state, the way the operator builds it from its reflector caches. Field
//! translation only: no decisions are taken here.
use std::collections::BTreeMap;

use super::engine::Sim;
use super::scenario::Scenario;
use crate::operator::api;
use crate::operator::provider::inventory::GroupOptions;
use crate::operator::provider::{
    GroupView, Inventory, MachineView, NodeView, PowerOnOrder, TaintView, TemplateHints,
};

fn order(o: api::PowerOnOrder) -> PowerOnOrder {
    match o {
        api::PowerOnOrder::Cheapest => PowerOnOrder::Cheapest,
        api::PowerOnOrder::FastestBoot => PowerOnOrder::FastestBoot,
        api::PowerOnOrder::LeastRecentlyUsed => PowerOnOrder::LeastRecentlyUsed,
        api::PowerOnOrder::Name => PowerOnOrder::Name,
    }
}

fn taints(ts: &[k8s_openapi::api::core::v1::Taint]) -> Vec<TaintView> {
    ts.iter()
        .map(|t| TaintView {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
        })
        .collect()
}

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
    nodes: Vec<NodeView>,
}

pub(super) fn base_views(sc: &Scenario) -> BaseViews {
    let groups = sc
        .groups
        .iter()
        .map(|g| {
            let o = g.group.autoscaling_options().unwrap_or_default();
            let template = g.group.spec.template.as_ref();
            GroupView {
                id: g.name.clone(),
                namespace: g.group.metadata.namespace.clone().unwrap_or_default(),
                name: g.name.clone(),
                min_size: g.min,
                max_size: Some(g.max),
                power_on_order: order(g.group.spec.power_on_order()),
                options: GroupOptions {
                    scale_down_utilization_threshold: o.scale_down_utilization_threshold,
                    scale_down_gpu_utilization_threshold: o.scale_down_gpu_utilization_threshold,
                    zero_or_max_node_scaling: o.zero_or_max_node_scaling,
                    ignore_daemon_sets_utilization: o.ignore_daemon_sets_utilization,
                    scale_down_unneeded: o.scale_down_unneeded_time,
                    scale_down_unready: o.scale_down_unready_time,
                    max_node_provision: o.max_node_provision_time,
                },
                template: TemplateHints {
                    labels: template.map(|t| t.labels.clone()).unwrap_or_default(),
                    taints: template.map(|t| taints(&t.taints)).unwrap_or_default(),
                    capacity: template
                        .map(|t| {
                            t.capacity
                                .iter()
                                .map(|(k, v)| (k.clone(), v.0.clone()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    allocatable: BTreeMap::new(),
                },
            }
        })
        .collect();
    let mut machines = Vec::with_capacity(sc.machines.len());
    let mut nodes = Vec::with_capacity(sc.machines.len());
    for model in &sc.machines {
        let cr = &model.machine;
        let namespace = cr.metadata.namespace.clone().unwrap_or_default();
        let mut v = MachineView::new(&namespace, &model.name, cr.group());
        v.provider_id = cr.expected_provider_id();
        v.node_name = cr.node_name().unwrap_or(&model.name).to_owned();
        v.hints = TemplateHints {
            labels: cr.spec.labels.clone(),
            taints: taints(&cr.spec.taints),
            capacity: capacity(model.cpu, model.memory, model.max_pods),
            allocatable: BTreeMap::new(),
        };
        v.taints_to_remove = taints(&cr.spec.taints_to_remove);
        v.hourly_rate = cr.spec.hourly_rate("").ok().flatten();
        v.scale_down_disabled = model.scale_down_disabled;
        nodes.push(NodeView {
            name: v.node_name.clone(),
            provider_id: v.provider_id.clone(),
            labels: cr.spec.labels.clone(),
            taints: taints(&cr.spec.taints),
            capacity: capacity(model.cpu, model.memory, model.max_pods),
            allocatable: capacity(model.cpu, model.memory, model.max_pods),
            ready: false,
            unschedulable: false,
        });
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
            node.unschedulable = slot.cordoned;
            nodes.push(node);
        }
    }
    Inventory::build(base.groups.clone(), machines, nodes)
}
