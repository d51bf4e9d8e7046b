//! The provider's view of the world: groups, machines and registered Kubernetes nodes.
//!
//! Pure data, built from the CR objects and reflector caches by the edges (or by the simulator
//! from its virtual world). Groups own their machines behind an `Arc`, so applying a desired-power
//! change clones one group, not the whole inventory (the gRPC service does that on every mutation).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use crate::operator::interned::Strings;
use crate::operator::kube_node::KubeNode;
use crate::operator::machine::{Lifecycle, OperationKind, Phase, PowerState};

/// Label CA reads to tell which node group a node belongs to is not ours; this is the CR label
/// that makes a Node CR a member of a Group (as in the Go predecessor).
pub const GROUP_LABEL: &str = "group";

/// Which powered-off machine `IncreaseSize` picks first: the Group CR's own type, so the
/// provider and the API cannot drift apart.
pub use crate::operator::api::PowerOnOrder;

/// Group-level autoscaling options (CA's `NodeGroupAutoscalingOptions`); `None` = not set by the
/// Group, so CA's own default applies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupOptions {
    pub scale_down_utilization_threshold: Option<f64>,
    pub scale_down_gpu_utilization_threshold: Option<f64>,
    pub zero_or_max_node_scaling: Option<bool>,
    pub ignore_daemon_sets_utilization: Option<bool>,
    pub scale_down_unneeded: Option<SignedDuration>,
    pub scale_down_unready: Option<SignedDuration>,
    pub max_node_provision: Option<SignedDuration>,
}

impl GroupOptions {
    pub fn is_empty(&self) -> bool {
        *self == GroupOptions::default()
    }
}

/// A taint, independent of the Kubernetes client types.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaintView {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

impl TaintView {
    pub fn all_from(taints: &[k8s_openapi::api::core::v1::Taint]) -> Vec<TaintView> {
        taints
            .iter()
            .map(|t| TaintView {
                key: t.key.clone(),
                value: t.value.clone(),
                effect: t.effect.clone(),
            })
            .collect()
    }
}

/// What a machine's Kubernetes node looks like (or looked like): a registered node, the last-seen
/// snapshot kept in the Node CR status, or the capacity/labels/taints hints in a spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub provider_id: String,
    /// Shared with the cached Node it was read from (and interned when built otherwise), so a
    /// view costs pointers, not copies of every label and quantity.
    pub labels: Strings,
    pub taints: Vec<TaintView>,
    /// Quantities as Kubernetes strings (`"4"`, `"16Gi"`).
    pub capacity: Strings,
    pub allocatable: Strings,
    /// The `Ready` condition is `True`.
    pub ready: bool,
    pub unschedulable: bool,
    /// The trust boundary refuses this registered Node to every Node CR (a control-plane node,
    /// or one its owner did not label adoptable: `operator::trust::check_node`). It is no
    /// machine's: CA is told it belongs to no group.
    pub refused: bool,
}

impl NodeView {
    /// Reads a Kubernetes Node (as the reflector caches it).
    pub fn from_k8s(node: &KubeNode) -> NodeView {
        NodeView {
            name: node.name().to_owned(),
            provider_id: node.provider_id().unwrap_or_default().to_owned(),
            labels: node.labels().clone(),
            taints: TaintView::all_from(node.taints()),
            capacity: node.capacity().clone(),
            allocatable: node.allocatable().clone(),
            ready: node.is_ready(),
            unschedulable: node.unschedulable(),
            refused: false,
        }
    }

    /// [`from_k8s`](Self::from_k8s), refused when `trust` does not let a Node CR adopt it.
    pub fn from_k8s_under(
        node: &KubeNode,
        trust: &crate::operator::trust::TrustPolicy,
    ) -> NodeView {
        NodeView {
            refused: crate::operator::trust::check_node(node, trust).is_err(),
            ..NodeView::from_k8s(node)
        }
    }
}

/// Declared shape for a machine or group never seen as a node (scale-from-zero).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TemplateHints {
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<TaintView>,
    pub capacity: BTreeMap<String, String>,
    /// Defaults to `capacity` when empty.
    pub allocatable: BTreeMap<String, String>,
}

impl TemplateHints {
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
            && self.taints.is_empty()
            && self.capacity.is_empty()
            && self.allocatable.is_empty()
    }
}

/// One node group (a Group CR).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupView {
    /// The id CA sees (see `Inventory::build` for how it is chosen).
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub min_size: u32,
    /// `None`: the number of members.
    pub max_size: Option<u32>,
    pub power_on_order: PowerOnOrder,
    pub options: GroupOptions,
    /// Template overrides for scale-from-zero.
    pub template: TemplateHints,
    /// How long a machine whose power-on failed is not picked by `IncreaseSize`
    /// (`spec.powerOnFailureCooldown`); `None`: [`GroupView::failure_cooldown`]'s default.
    pub power_on_failure_cooldown: Option<SignedDuration>,
    /// `spec.scaleDownDisabled`: every member is protected as by its own flag.
    pub scale_down_disabled: bool,
    /// `spec.paused`: no power action in the group; CA is answered min = max = target
    /// (`policy::maintenance::paused_bounds`).
    pub paused: bool,
    /// `spec.wear` and `spec.timeZone`; `None` when the Group sets neither.
    pub wear: Option<Arc<crate::operator::policy::wear::GroupWear>>,
    /// `spec.schedule` windows that set their own `minSize` (`None`: `min_size` always holds).
    /// Shared: rebuilding the inventory does not copy it.
    pub schedule: Option<Arc<crate::operator::policy::schedule::MinSizes>>,
}

/// CA's default `--max-node-provision-time`.
pub const CA_DEFAULT_MAX_NODE_PROVISION: SignedDuration = SignedDuration::from_mins(15);

/// How long CA may still list an instance after we stopped listing it: its node-instances cache
/// serves entries up to 5 minutes old (`CloudProviderNodeInstancesCacheEntryFreshnessThreshold`
/// in CA's `clusterstate/utils/node_instances_cache.go`).
pub const CA_INSTANCE_CACHE_FRESHNESS: SignedDuration = SignedDuration::from_mins(5);

impl GroupView {
    /// The minimum in force at `now`: a schedule window's `minSize` while one holds, else
    /// `min_size`; never above the Group's own maximum (`max_of`, what
    /// [`GroupState::max_size`] resolves). CA reads it as the node group's `MinSize`.
    pub fn min_size_at(&self, max_of: u32, now: Timestamp) -> u32 {
        match &self.schedule {
            Some(s) => s.at(self.min_size, max_of, now),
            None => self.min_size.min(max_of),
        }
    }

    /// How long CA waits for a powered-on machine to register: the Group's
    /// `maxNodeProvisionTime`, else CA's default (`--max-node-provision-time`, 15m in CA's
    /// `config/flags/flags.go`).
    pub fn provision_time(&self) -> SignedDuration {
        self.options
            .max_node_provision
            .unwrap_or(CA_DEFAULT_MAX_NODE_PROVISION)
    }

    /// The cool-down after a failed power-on: the Group's setting, else twice the group's
    /// provision time ([`GroupView::provision_time`]).
    pub fn failure_cooldown(&self) -> SignedDuration {
        self.power_on_failure_cooldown.unwrap_or_else(|| {
            self.provision_time()
                .checked_mul(2)
                .unwrap_or(SignedDuration::MAX)
        })
    }
}

/// Identifies a machine (a Node CR).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for MachineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One physical machine (a Node CR), as the provider needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineView {
    pub key: MachineKey,
    /// The Group CR name from the `group` label (same namespace), if any.
    pub group: Option<String>,
    /// Desired power (`spec.powerState`).
    pub desired: PowerState,
    pub lifecycle: Lifecycle,
    /// The providerID its Node object carries (or will carry) once registered: the instance id.
    pub provider_id: String,
    /// The Kubernetes node name it registers as.
    pub node_name: String,
    /// What its node looked like when last seen (kept in status).
    pub last_seen: Option<NodeView>,
    /// Declared capacity/labels/taints in the spec. Shared: the members of a group usually
    /// declare the same shape, and 2,000 private copies were the inventory's largest part.
    pub hints: Arc<TemplateHints>,
    pub taints_to_remove: Vec<TaintView>,
    pub hourly_rate: Option<f64>,
    pub scale_down_disabled: bool,
    /// Last time it was powered on (status `lastStartupTime`), for `leastRecentlyUsed`.
    pub last_power_on: Option<Timestamp>,
    /// Recent boot durations, for `fastestBoot`.
    pub boot_durations: Vec<SignedDuration>,
    /// When it was last asked to be on; orders `DecreaseTargetSize` (newest first).
    pub power_on_requested: Option<Timestamp>,
    /// When CA gave up on its last power-on (the [`POWER_ON_FAILED_ANNOTATION`] the provider
    /// writes with `spec.powerState: off` in `DeleteNodes` of a never-registered machine).
    pub power_on_failed_at: Option<Timestamp>,
    /// Last confirmed power-off (status `lastShutdownTime`).
    pub last_power_off: Option<Timestamp>,
    /// `spec.pricing.podRate`: price of one pod-hour on this machine.
    pub pod_rate: Option<f64>,
    /// `spec.maintenance` is set: the machine is outside CA's view of its group (not an
    /// instance, not in the target, not a spare to pick; `policy::maintenance::allowed`).
    pub maintenance: bool,
    /// Its own `spec.wear` and `status.recentBootStarts`; `None` when it has neither.
    pub wear: Option<Arc<crate::operator::policy::wear::MachineWear>>,
}

/// Annotation on a Node CR: when the Cluster Autoscaler last gave up on the machine's power-on
/// (RFC 3339). Written by the provider in the same patch as `spec.powerState: off`, so the
/// provider never writes status; the newer of it and `status.lastPowerOnFailure` counts.
pub const POWER_ON_FAILED_ANNOTATION: &str = "infra.homecluster.dev/power-on-failed-at";

impl MachineView {
    /// A machine with defaults: desired off, no history, providerID `homelab://<ns>/<name>`.
    pub fn new(namespace: &str, name: &str, group: Option<&str>) -> MachineView {
        MachineView {
            key: MachineKey {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            group: group.map(str::to_owned),
            desired: PowerState::Off,
            lifecycle: Lifecycle::default(),
            provider_id: default_provider_id(namespace, name),
            node_name: name.to_owned(),
            last_seen: None,
            hints: Arc::default(),
            taints_to_remove: Vec::new(),
            hourly_rate: None,
            scale_down_disabled: false,
            last_power_on: None,
            boot_durations: Vec::new(),
            power_on_requested: None,
            power_on_failed_at: None,
            last_power_off: None,
            pod_rate: None,
            maintenance: false,
            wear: None,
        }
    }

    /// When its last power-on failed, if that failure still counts: the newer of the FSM's
    /// `lastPowerOnFailure` (cleared once the machine comes up) and CA's verdict recorded by
    /// `DeleteNodes` (counted only when newer than the last time the machine was up).
    pub fn last_power_on_failure(&self) -> Option<Timestamp> {
        let ca = self
            .power_on_failed_at
            .filter(|f| self.last_power_on.is_none_or(|up| *f > up));
        self.lifecycle.last_power_on_failure.max(ca)
    }

    pub fn wanted_on(&self) -> bool {
        self.desired == PowerState::On
    }

    /// Median of recent boot durations.
    pub fn typical_boot(&self) -> Option<SignedDuration> {
        let mut d = self.boot_durations.clone();
        d.sort();
        d.get(d.len() / 2).copied()
    }

    /// The time a power-on was last requested or started, best known.
    pub fn requested_at(&self) -> Option<Timestamp> {
        self.power_on_requested
            .or_else(|| {
                self.lifecycle
                    .operation
                    .as_ref()
                    .filter(|o| o.kind == OperationKind::PowerOn)
                    .map(|o| o.started)
            })
            .or_else(|| match self.lifecycle.phase() {
                Phase::PoweringOn | Phase::Booting => self.lifecycle.phase_since,
                _ => None,
            })
    }

    /// Whether the machine is (believed) fully off: nothing to report to CA when it is unwanted.
    pub fn is_down(&self, registered: bool) -> bool {
        match self.lifecycle.phase() {
            Phase::Off => true,
            Phase::Unknown => !registered,
            _ => false,
        }
    }
}

/// The providerID the operator sets on a Node the kubelet registered without one.
pub fn default_provider_id(namespace: &str, name: &str) -> String {
    format!("homelab://{namespace}/{name}")
}

/// A group and its member machines (sorted by name).
#[derive(Clone, Debug, PartialEq)]
pub struct GroupState {
    pub spec: GroupView,
    pub machines: Vec<MachineView>,
}

impl GroupState {
    pub fn max_size(&self) -> u32 {
        self.spec
            .max_size
            .unwrap_or(u32::try_from(self.machines.len()).unwrap_or(u32::MAX))
    }

    /// [`GroupView::min_size_at`] for this group.
    pub fn min_size(&self, now: Timestamp) -> u32 {
        self.spec.min_size_at(self.max_size(), now)
    }
}

/// Where a machine lives in the inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineRef {
    InGroup {
        group: String,
        index: usize,
    },
    /// Not a member of any known group.
    Ungrouped {
        index: usize,
    },
}

/// Everything the provider decides from. Cheap to clone (shared parts behind `Arc`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory {
    groups: BTreeMap<String, Arc<GroupState>>,
    ungrouped: Arc<Vec<MachineView>>,
    /// Registered Kubernetes nodes by providerID.
    nodes: Arc<SortedIndex<NodeView>>,
    by_provider_id: Arc<SortedIndex<MachineRef>>,
    by_node_name: Arc<SortedIndex<MachineRef>>,
    /// Registered nodes by name (for name lookups of nodes whose providerID is unknown to us).
    node_name_to_provider_id: Arc<SortedIndex<String>>,
    /// The names and providerIDs of registered Nodes the trust boundary refuses: they resolve
    /// to no machine.
    refused_nodes: Arc<SortedIndex<()>>,
    /// Since when the longest-waiting unschedulable pod has been unschedulable (`None`: no
    /// pod is, or pods are not read); quiet hours' `powerOnAfter` compares it with its wait.
    unschedulable_since: Option<Timestamp>,
}

/// A lookup table built with each inventory and then only read: a vector sorted by key. A
/// `HashMap` of the same entries keeps up to twice the buckets it needs (2,000 machines: 4,096
/// buckets per index), and the operator holds an inventory for as long as it runs.
#[derive(Clone, Debug, PartialEq)]
struct SortedIndex<V>(Vec<(String, V)>);

impl<V> Default for SortedIndex<V> {
    fn default() -> Self {
        SortedIndex(Vec::new())
    }
}

impl<V> SortedIndex<V> {
    fn get(&self, key: &str) -> Option<&V> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }
}

/// Built from a map, so a key given twice keeps the entry the map kept.
impl<V> From<HashMap<String, V>> for SortedIndex<V> {
    fn from(m: HashMap<String, V>) -> Self {
        let mut entries: Vec<(String, V)> = m.into_iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        SortedIndex(entries)
    }
}

/// An inventory's lookup tables and its machines in no group, shared (not copied) by the
/// inventories built on it.
#[derive(Clone, Debug)]
pub struct Tables {
    pub ungrouped: Arc<Vec<MachineView>>,
    nodes: Arc<SortedIndex<NodeView>>,
    by_provider_id: Arc<SortedIndex<MachineRef>>,
    by_node_name: Arc<SortedIndex<MachineRef>>,
    node_name_to_provider_id: Arc<SortedIndex<String>>,
    refused_nodes: Arc<SortedIndex<()>>,
}

impl Tables {
    /// Whether `other` holds these very tables (not equal copies).
    pub fn same_as(&self, other: &Tables) -> bool {
        Arc::ptr_eq(&self.nodes, &other.nodes)
            && Arc::ptr_eq(&self.by_provider_id, &other.by_provider_id)
            && Arc::ptr_eq(&self.by_node_name, &other.by_node_name)
            && Arc::ptr_eq(&self.refused_nodes, &other.refused_nodes)
            && Arc::ptr_eq(
                &self.node_name_to_provider_id,
                &other.node_name_to_provider_id,
            )
    }
}

/// Machines by providerID and by node name. A providerID or node name claimed twice resolves to
/// a group member before a machine in no group: among members to the one in the last group by
/// id, among the others to the first by key.
fn machine_tables(
    groups: &BTreeMap<String, Arc<GroupState>>,
    ungrouped: &[MachineView],
) -> (SortedIndex<MachineRef>, SortedIndex<MachineRef>) {
    let machines = groups.values().map(|g| g.machines.len()).sum::<usize>() + ungrouped.len();
    let mut by_provider_id = HashMap::with_capacity(machines);
    let mut by_node_name = HashMap::with_capacity(machines);
    for (id, s) in groups {
        for (index, m) in s.machines.iter().enumerate() {
            let r = MachineRef::InGroup {
                group: id.clone(),
                index,
            };
            by_provider_id.insert(m.provider_id.clone(), r.clone());
            by_node_name.insert(m.node_name.clone(), r);
        }
    }
    for (index, m) in ungrouped.iter().enumerate() {
        by_provider_id
            .entry(m.provider_id.clone())
            .or_insert(MachineRef::Ungrouped { index });
        by_node_name
            .entry(m.node_name.clone())
            .or_insert(MachineRef::Ungrouped { index });
    }
    (by_provider_id.into(), by_node_name.into())
}

/// Whether the two machine lists place the same machines, providerIDs and node names at the
/// same positions: what the machine tables of [`Inventory::assemble`] are built from.
pub fn same_places(a: &[MachineView], b: &[MachineView]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.key == y.key && x.provider_id == y.provider_id && x.node_name == y.node_name
        })
}

/// How group ids are formed. CA keys its backoff, scale-up requests and metrics by id, so an id
/// must never change while the group exists: the scheme depends only on the provider's scope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupIds {
    /// The Group's name: for a provider reading one namespace, where names are unique.
    #[default]
    Name,
    /// `<namespace>/<name>` for every group: for a provider reading every namespace, so a
    /// same-named Group created in another namespace never renames an existing group.
    NamespacedName,
}

/// The id of each Group under a [`GroupIds`] scheme, given every Group name in scope.
pub struct GroupNames {
    ids: GroupIds,
    /// Names held by Groups of more than one namespace.
    shared: HashSet<String>,
}

impl GroupNames {
    pub fn new<'a>(ids: GroupIds, names: impl IntoIterator<Item = &'a str>) -> GroupNames {
        let mut seen = HashSet::new();
        let mut shared = HashSet::new();
        for n in names {
            if !seen.insert(n) {
                shared.insert(n.to_owned());
            }
        }
        GroupNames { ids, shared }
    }

    pub fn id(&self, namespace: &str, name: &str) -> String {
        if self.ids == GroupIds::NamespacedName || self.shared.contains(name) {
            format!("{namespace}/{name}")
        } else {
            name.to_owned()
        }
    }
}

impl Inventory {
    /// [`Inventory::build_with_ids`] with ids = Group names ([`GroupIds::Name`]).
    pub fn build(
        groups: Vec<GroupView>,
        machines: Vec<MachineView>,
        nodes: Vec<NodeView>,
    ) -> Inventory {
        Inventory::build_with_ids(GroupIds::Name, groups, machines, nodes)
    }

    /// Builds the inventory. A Group's id follows `ids`; with [`GroupIds::Name`], names held by
    /// Groups in several namespaces (a misconfiguration for that scope) are qualified as
    /// `<namespace>/<name>` so ids stay unique for CA. Machines whose `group` label names no
    /// Group in their namespace are kept as ungrouped (their nodes resolve to `id: ""`). Nodes
    /// without a providerID are only reachable by name.
    pub fn build_with_ids(
        ids: GroupIds,
        groups: Vec<GroupView>,
        machines: Vec<MachineView>,
        nodes: Vec<NodeView>,
    ) -> Inventory {
        let names = GroupNames::new(ids, groups.iter().map(|g| g.name.as_str()));
        let mut by_ns_name: HashMap<(String, String), String> = HashMap::new();
        let mut states: BTreeMap<String, GroupState> = BTreeMap::new();
        for mut g in groups {
            g.id = names.id(&g.namespace, &g.name);
            by_ns_name.insert((g.namespace.clone(), g.name.clone()), g.id.clone());
            states.insert(
                g.id.clone(),
                GroupState {
                    spec: g,
                    machines: Vec::new(),
                },
            );
        }
        let mut ungrouped = Vec::new();
        for mut m in machines {
            let id = m
                .group
                .as_ref()
                .and_then(|g| by_ns_name.get(&(m.key.namespace.clone(), g.clone())));
            match id.and_then(|id| states.get_mut(id)) {
                Some(state) => {
                    m.group = Some(state.spec.id.clone());
                    state.machines.push(m);
                }
                None => {
                    m.group = None;
                    ungrouped.push(m);
                }
            }
        }
        let states = states
            .into_iter()
            .map(|(id, mut s)| {
                s.machines.sort_by(|a, b| a.key.cmp(&b.key));
                // Pushing one by one leaves up to half of each group's vector unused.
                s.machines.shrink_to_fit();
                (id, Arc::new(s))
            })
            .collect();
        Inventory::from_states(states, ungrouped, nodes)
    }

    /// The inventory of these groups (members sorted by key, each machine's `group` its
    /// group's id), machines in no group, and registered nodes: the lookup indexes are built
    /// here. The groups are shared as given (an incremental build passes unchanged ones on).
    pub fn from_states(
        groups: BTreeMap<String, Arc<GroupState>>,
        mut ungrouped: Vec<MachineView>,
        nodes: Vec<NodeView>,
    ) -> Inventory {
        ungrouped.sort_by(|a, b| a.key.cmp(&b.key));
        ungrouped.shrink_to_fit();
        Inventory::assemble(groups, Arc::new(ungrouped), Some(nodes), None)
    }

    /// The inventory of these groups, machines in no group (sorted by key) and, when given,
    /// registered nodes. `previous` passes on an earlier inventory's lookup tables: its node
    /// tables when `nodes` is `None`, and its machine tables when `machines_moved` is false,
    /// i.e. every group id, member position, providerID and node name is as it was then.
    /// Building the machine tables copies and sorts two strings per machine, which at 2,000
    /// machines was most of an inventory build after a one-machine change (BENCHMARKS.md).
    pub fn assemble(
        groups: BTreeMap<String, Arc<GroupState>>,
        ungrouped: Arc<Vec<MachineView>>,
        nodes: Option<Vec<NodeView>>,
        previous: Option<(&Tables, bool)>,
    ) -> Inventory {
        let (by_provider_id, by_node_name) = match previous {
            Some((t, false)) => (t.by_provider_id.clone(), t.by_node_name.clone()),
            _ => {
                let (p, n) = machine_tables(&groups, &ungrouped);
                (Arc::new(p), Arc::new(n))
            }
        };
        let (nodes, node_name_to_provider_id, refused_nodes) = match (nodes, previous) {
            (None, Some((t, _))) => (
                t.nodes.clone(),
                t.node_name_to_provider_id.clone(),
                t.refused_nodes.clone(),
            ),
            (nodes, _) => {
                let mut node_map = HashMap::new();
                let mut node_names = HashMap::new();
                let mut refused = HashMap::new();
                for n in nodes.unwrap_or_default() {
                    // The one place Kubernetes Nodes meet machines: a refused Node is no
                    // machine's, whatever its name or providerID says.
                    if n.refused {
                        for key in [n.name, n.provider_id] {
                            if !key.is_empty() {
                                refused.insert(key, ());
                            }
                        }
                        continue;
                    }
                    if n.provider_id.is_empty() {
                        continue;
                    }
                    node_names.insert(n.name.clone(), n.provider_id.clone());
                    node_map.insert(n.provider_id.clone(), n);
                }
                (
                    Arc::new(node_map.into()),
                    Arc::new(node_names.into()),
                    Arc::new(refused.into()),
                )
            }
        };
        Inventory {
            groups,
            ungrouped,
            nodes,
            by_provider_id,
            by_node_name,
            node_name_to_provider_id,
            refused_nodes,
            unschedulable_since: None,
        }
    }

    /// Since when the longest-waiting unschedulable pod has been unschedulable, as the edge
    /// that reads pods last saw it.
    pub fn unschedulable_since(&self) -> Option<Timestamp> {
        self.unschedulable_since
    }

    /// Records [`unschedulable_since`](Self::unschedulable_since).
    pub fn set_unschedulable_since(&mut self, since: Option<Timestamp>) {
        self.unschedulable_since = since;
    }

    /// The lookup tables, for [`Inventory::assemble`] to pass on to the next inventory.
    pub fn tables(&self) -> Tables {
        Tables {
            ungrouped: self.ungrouped.clone(),
            nodes: self.nodes.clone(),
            by_provider_id: self.by_provider_id.clone(),
            by_node_name: self.by_node_name.clone(),
            node_name_to_provider_id: self.node_name_to_provider_id.clone(),
            refused_nodes: self.refused_nodes.clone(),
        }
    }

    /// The shared state of one group (tests check what an incremental build reused).
    #[cfg(test)]
    pub(crate) fn group_arc(&self, id: &str) -> Option<Arc<GroupState>> {
        self.groups.get(id).cloned()
    }

    pub fn groups(&self) -> impl Iterator<Item = &GroupState> {
        self.groups.values().map(|g| g.as_ref())
    }

    pub fn group(&self, id: &str) -> Option<&GroupState> {
        self.groups.get(id).map(|g| g.as_ref())
    }

    pub fn group_ids(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    /// Every machine, grouped first.
    pub fn machines(&self) -> impl Iterator<Item = &MachineView> {
        self.groups
            .values()
            .flat_map(|g| g.machines.iter())
            .chain(self.ungrouped.iter())
    }

    /// Registered nodes by providerID.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeView> {
        self.nodes.values()
    }

    /// The registered Kubernetes node carrying this providerID.
    pub fn node(&self, provider_id: &str) -> Option<&NodeView> {
        self.nodes.get(provider_id)
    }

    /// The machine's node has registered (a Node with its providerID exists).
    pub fn is_registered(&self, m: &MachineView) -> bool {
        self.nodes.contains_key(&m.provider_id)
    }

    /// Registered and Ready.
    pub fn is_ready(&self, m: &MachineView) -> bool {
        self.nodes.get(&m.provider_id).is_some_and(|n| n.ready)
    }

    pub fn machine(&self, r: &MachineRef) -> Option<&MachineView> {
        match r {
            MachineRef::InGroup { group, index } => self.groups.get(group)?.machines.get(*index),
            MachineRef::Ungrouped { index } => self.ungrouped.get(*index),
        }
    }

    /// A registered Kubernetes Node the trust boundary refuses carries this name or providerID.
    pub fn is_refused_node(&self, name_or_provider_id: &str) -> bool {
        self.refused_nodes.contains_key(name_or_provider_id)
    }

    /// Finds a machine by providerID first, then by node name (rule 2). Empty strings never match,
    /// and neither does a Node the trust boundary refuses.
    pub fn resolve(&self, provider_id: &str, name: &str) -> Option<MachineRef> {
        if self.is_refused_node(name) || self.is_refused_node(provider_id) {
            return None;
        }
        if !provider_id.is_empty()
            && let Some(r) = self.by_provider_id.get(provider_id)
        {
            return Some(r.clone());
        }
        if name.is_empty() {
            return None;
        }
        if let Some(r) = self.by_node_name.get(name) {
            return Some(r.clone());
        }
        // A fake node's name is the instance id; a registered node may be known by name only.
        if let Some(r) = self.by_provider_id.get(name) {
            return Some(r.clone());
        }
        self.node_name_to_provider_id
            .get(name)
            .and_then(|p| self.by_provider_id.get(p))
            .cloned()
    }

    /// The group id a machine belongs to.
    pub fn group_of(&self, key: &MachineKey) -> Option<&str> {
        self.groups
            .iter()
            .find(|(_, g)| g.machines.binary_search_by(|m| m.key.cmp(key)).is_ok())
            .map(|(id, _)| id.as_str())
    }

    /// Applies changes to whichever groups hold the machines.
    pub fn apply_changes(&mut self, changes: &[PowerChange]) {
        for c in changes {
            if let Some(g) = self.group_of(&c.machine).map(str::to_owned) {
                self.apply(&g, std::slice::from_ref(c));
            }
        }
    }

    /// Sets desired power on machines of one group (an applied decision or a pending overlay).
    /// Unknown machines are ignored: the decision was computed on this inventory.
    pub fn apply(&mut self, group: &str, changes: &[PowerChange]) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        let state = Arc::make_mut(state);
        for c in changes {
            if let Ok(i) = state.machines.binary_search_by(|m| m.key.cmp(&c.machine)) {
                let m = &mut state.machines[i];
                m.desired = c.desired;
                if c.desired == PowerState::On {
                    m.power_on_requested = Some(c.at);
                }
                if c.power_on_failed {
                    m.power_on_failed_at = Some(c.at);
                }
            }
        }
    }
}

/// One desired-power change the provider decided on; the edge persists it (`spec.powerState`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PowerChange {
    pub machine: MachineKey,
    pub desired: PowerState,
    /// When it was decided (orders cancellations newest first).
    pub at: Timestamp,
    /// The machine never registered and CA gave up on it: record its power-on as failed at
    /// `at` ([`POWER_ON_FAILED_ANNOTATION`]), in the same write as the desired power.
    pub power_on_failed: bool,
}
