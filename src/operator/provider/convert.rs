//! Pure conversion from the CR objects and Kubernetes Nodes (as reflector stores hold them) to the
//! provider's [`Inventory`].
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Deref;
use std::sync::Arc;

use jiff::SignedDuration;
use k8s_openapi::api::core::v1::Taint;

use crate::operator::kube_node::KubeNode;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::inventory::{
    GroupIds, GroupOptions, GroupView, Inventory, MachineView, NodeView,
    POWER_ON_FAILED_ANNOTATION, TaintView, TemplateHints,
};
use crate::operator::api::{FlatMap, Group, Machine};
use crate::operator::policy::schedule::{MinSizes, Schedule};
use crate::operator::policy::wear::{self, GroupWear, MachineWear, Quiet};
use crate::operator::trust::TrustPolicy;

fn taints(ts: &[Taint]) -> Vec<TaintView> {
    TaintView::all_from(ts)
}

fn quantities<'a>(
    m: impl IntoIterator<Item = (&'a String, &'a Quantity)>,
) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

fn owned(m: &FlatMap<String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A Group CR with `members` Node CRs. Size bounds follow `GroupSpec::size_bounds` (what the
/// group controller shows in status). An option that does not parse (CEL rejects those at
/// admission) leaves every option unset, i.e. CA's flags apply; the group controller reports it.
/// A `spec.timeZone` is looked up in the tz database (jiff caches it).
pub fn group_view(g: &Group, members: usize) -> GroupView {
    let bounds = g.size_bounds(members);
    let options = g
        .autoscaling_options()
        .map(|o| GroupOptions {
            scale_down_utilization_threshold: o.scale_down_utilization_threshold,
            scale_down_gpu_utilization_threshold: o.scale_down_gpu_utilization_threshold,
            zero_or_max_node_scaling: o.zero_or_max_node_scaling,
            ignore_daemon_sets_utilization: o.ignore_daemon_sets_utilization,
            scale_down_unneeded: o.scale_down_unneeded_time,
            scale_down_unready: o.scale_down_unready_time,
            max_node_provision: o.max_node_provision_time,
        })
        .unwrap_or_default();
    let template = g
        .spec
        .template
        .as_ref()
        .map(|t| TemplateHints {
            labels: t.labels.clone(),
            taints: taints(&t.taints),
            capacity: quantities(&t.capacity),
            allocatable: BTreeMap::new(),
        })
        .unwrap_or_default();
    GroupView {
        id: String::new(),
        namespace: g.metadata.namespace.clone().unwrap_or_default(),
        name: g.metadata.name.clone().unwrap_or_default(),
        min_size: bounds.min,
        max_size: Some(bounds.max),
        power_on_order: g.spec.power_on_order(),
        options,
        template,
        // Unparsable (CEL rejects it at admission): the default applies.
        power_on_failure_cooldown: g.power_on_failure_cooldown().ok().flatten(),
        scale_down_disabled: g.scale_down_disabled(),
        paused: g.spec.paused.unwrap_or(false),
        wear: group_wear(g).map(Arc::new),
        // An unknown zone or a window that does not parse: the Group's own minSize holds and
        // the group controller reports the problem in the Group's conditions.
        schedule: Schedule::of_group(g)
            .ok()
            .and_then(|s| MinSizes::of(&g.spec, s))
            .map(Arc::new),
    }
}

/// The Group's `spec.timeZone` resolved from the tz database; UTC when unset or unknown (CEL
/// cannot check a zone name at admission).
pub fn time_zone(g: &Group) -> jiff::tz::TimeZone {
    g.spec
        .time_zone
        .as_deref()
        .and_then(|name| jiff::tz::TimeZone::get(name).ok())
        .unwrap_or(jiff::tz::TimeZone::UTC)
}

/// The Group's wear as the provider reads it; `None` when it sets neither `wear` nor
/// `timeZone`. Quiet hours that do not parse (CEL rejects them at admission) count as none.
pub fn group_wear(g: &Group) -> Option<GroupWear> {
    if g.spec.wear.is_none() && g.spec.time_zone.is_none() {
        return None;
    }
    let w = g.spec.wear.as_ref();
    let quiet = w
        .and_then(|w| Quiet::parse("spec.wear.quietHours", &w.quiet_hours).ok())
        .unwrap_or_default();
    Some(GroupWear {
        max_boots_per_day: w.and_then(wear::limit),
        time_zone: time_zone(g),
        quiet,
    })
}

/// The Node CR's own wear and its recorded boot starts; `None` when it has neither.
pub fn machine_wear(m: &Machine) -> Option<MachineWear> {
    let own = m.spec.wear.as_deref();
    let starts = m
        .status
        .as_ref()
        .map(|s| s.recent_boot_starts.clone())
        .unwrap_or_default();
    if own.is_none() && starts.is_empty() {
        return None;
    }
    Some(MachineWear {
        max_boots_per_day: own.and_then(wear::limit),
        quiet: own
            .filter(|w| !w.quiet_hours.is_empty())
            .and_then(|w| Quiet::parse("spec.wear.quietHours", &w.quiet_hours).ok()),
        boot_starts: starts,
    })
}

/// A Node CR. An unparsable `pricing.hourlyRate` counts as no rate.
pub fn machine_view(m: &Machine) -> MachineView {
    machine_view_sharing(m, &mut HintsInterner::default())
}

/// One shared copy of each distinct [`TemplateHints`] while building an inventory.
#[derive(Default)]
pub(crate) struct HintsInterner(HashSet<Arc<TemplateHints>>);

impl HintsInterner {
    fn intern(&mut self, hints: TemplateHints) -> Arc<TemplateHints> {
        if let Some(shared) = self.0.get(&hints) {
            return shared.clone();
        }
        let shared = Arc::new(hints);
        self.0.insert(shared.clone());
        shared
    }
}

pub(crate) fn machine_view_sharing(m: &Machine, hints: &mut HintsInterner) -> MachineView {
    let namespace = m.metadata.namespace.clone().unwrap_or_default();
    let name = m.metadata.name.clone().unwrap_or_default();
    let mut v = MachineView::new(&namespace, &name, m.group());
    v.desired = m.desired_power();
    v.lifecycle = m.lifecycle();
    v.provider_id = m.expected_provider_id();
    v.node_name = m.node_name().unwrap_or(&name).to_owned();
    v.hints = hints.intern(TemplateHints {
        labels: owned(&m.spec.labels),
        taints: taints(&m.spec.taints),
        capacity: quantities(&m.spec.capacity),
        allocatable: BTreeMap::new(),
    });
    v.taints_to_remove = taints(&m.spec.taints_to_remove);
    v.hourly_rate = m.hourly_rate().ok().flatten();
    v.pod_rate = m.pod_rate().ok().flatten();
    v.scale_down_disabled = m.scale_down_disabled();
    v.maintenance = m.spec.maintenance.is_some();
    v.wear = machine_wear(m).map(Arc::new);
    v.power_on_failed_at = m
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POWER_ON_FAILED_ANNOTATION))
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    if let Some(s) = &m.status {
        v.last_power_on = s.last_startup_time;
        v.last_power_off = s.last_shutdown_time;
        v.boot_durations = s
            .recent_boot_seconds
            .iter()
            .map(|s| SignedDuration::from_secs(i64::from(*s)))
            .collect();
        v.last_seen = s.node.as_ref().map(|n| NodeView {
            name: n.name.clone(),
            provider_id: n.provider_id.clone().unwrap_or_default(),
            labels: n.labels.clone(),
            taints: taints(&n.taints),
            capacity: n.capacity.clone(),
            allocatable: n.allocatable.clone(),
            ready: false,
            unschedulable: false,
            refused: false,
        });
    }
    v
}

/// The Kubernetes node a machine registers as according to its declared hints (name,
/// providerID, spec labels, taints and capacity; allocatable = capacity where the hints give
/// none), neither Ready nor cordoned. For worlds without a real kubelet: the simulator registers
/// exactly this node when a simulated machine finishes booting.
pub fn declared_node(m: &MachineView) -> NodeView {
    let allocatable = if m.hints.allocatable.is_empty() {
        &m.hints.capacity
    } else {
        &m.hints.allocatable
    };
    NodeView {
        name: m.node_name.clone(),
        provider_id: m.provider_id.clone(),
        labels: m.hints.labels.iter().collect(),
        taints: m.hints.taints.clone(),
        capacity: m.hints.capacity.iter().collect(),
        allocatable: allocatable.iter().collect(),
        ready: false,
        unschedulable: false,
        refused: false,
    }
}

impl Inventory {
    /// [`Inventory::from_objects_with_ids`] with ids = Group names.
    pub fn from_objects<G, M, N>(groups: &[G], machines: &[M], nodes: &[N]) -> Inventory
    where
        G: Deref<Target = Group>,
        M: Deref<Target = Machine>,
        N: Deref<Target = KubeNode>,
    {
        Inventory::from_objects_with_ids(GroupIds::Name, groups, machines, nodes)
    }

    /// Builds the inventory from the objects a reflector store holds (`Arc<T>` or `&T`), the
    /// Kubernetes Nodes judged under the default trust policy (only Nodes labelled adoptable
    /// are machines').
    pub fn from_objects_with_ids<G, M, N>(
        ids: GroupIds,
        groups: &[G],
        machines: &[M],
        nodes: &[N],
    ) -> Inventory
    where
        G: Deref<Target = Group>,
        M: Deref<Target = Machine>,
        N: Deref<Target = KubeNode>,
    {
        let mut members: HashMap<(String, String), usize> = HashMap::new();
        for m in machines {
            if let Some(g) = m.group() {
                let ns = m.metadata.namespace.clone().unwrap_or_default();
                *members.entry((ns, g.to_owned())).or_default() += 1;
            }
        }
        let groups = groups
            .iter()
            .map(|g| {
                let key = (
                    g.metadata.namespace.clone().unwrap_or_default(),
                    g.metadata.name.clone().unwrap_or_default(),
                );
                group_view(g, members.get(&key).copied().unwrap_or(0))
            })
            .collect();
        Inventory::build_with_ids(
            ids,
            groups,
            {
                let mut hints = HintsInterner::default();
                machines
                    .iter()
                    .map(|m| machine_view_sharing(m, &mut hints))
                    .collect()
            },
            nodes
                .iter()
                .map(|n| NodeView::from_k8s_under(n, &TrustPolicy::default()))
                .collect(),
        )
    }
}
