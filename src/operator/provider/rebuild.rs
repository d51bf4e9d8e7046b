//! Building the inventory again after each change the watches report, converting only the
//! groups that changed.
//!
//! `run-operator` rebuilds after every write it makes and every change it sees. A full
//! [`Inventory::from_objects_with_ids`] converts every cached Node CR: at 2,000 machines about
//! 6 ms of CPU and 10 MiB of short-lived allocations each time, twice per `IncreaseSize` (after
//! the write, and when the watch delivers it), right when the controller needs the CPU to start
//! the power action (BENCHMARKS.md). A reflector store hands out the same `Arc` for an object
//! until the object changes, so a group whose Group and member Node CRs are all the same `Arc`s
//! as last time has the same [`GroupState`]: it is passed on, not rebuilt.
//!
//! Even so, a build reads every cached object to sort the machines into groups, and builds the
//! lookup tables anew: at 2,000 machines that was still the operator's largest use of CPU during
//! a run of `IncreaseSize` calls. [`InventoryBuilder::update`] builds on the last build from the
//! machines the watches reported changed, touching only their groups, and passes the lookup
//! tables on while no machine moved.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::operator::kube_node::KubeNode;

use super::convert::{HintsInterner, group_view, machine_view_sharing};
use super::inventory::{
    GroupIds, GroupNames, GroupState, Inventory, MachineView, NodeView, Tables, same_places,
};
use crate::operator::api::{Group, Machine};
use crate::operator::trust::TrustPolicy;

/// Builds inventories from the objects of the reflector stores, reusing the groups whose
/// objects did not change since the previous build. Equal to
/// [`Inventory::from_objects_with_ids`] on the same objects (tested).
#[derive(Default)]
pub struct InventoryBuilder {
    ids: GroupIds,
    built: HashMap<String, BuiltGroup>,
    /// What the last build left that is not per group: the machines in no known group (in no
    /// order), and the inventory's tables.
    last: Option<(Vec<Arc<Machine>>, Tables)>,
    /// Which Kubernetes Nodes a Node CR may adopt: the others are no machine's.
    trust: TrustPolicy,
}

/// A group as last built, with the objects it was built from.
struct BuiltGroup {
    group: Arc<Group>,
    members: Vec<Arc<Machine>>,
    state: Arc<GroupState>,
}

impl BuiltGroup {
    fn is_built_from(&self, group: &Arc<Group>, members: &[&Arc<Machine>]) -> bool {
        Arc::ptr_eq(&self.group, group)
            && self.members.len() == members.len()
            && self
                .members
                .iter()
                .zip(members)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl InventoryBuilder {
    pub fn new(ids: GroupIds) -> InventoryBuilder {
        InventoryBuilder {
            ids,
            built: HashMap::new(),
            last: None,
            trust: TrustPolicy::default(),
        }
    }

    /// Judges Kubernetes Nodes under `trust` from the next build on (which is a full one).
    pub fn set_trust(&mut self, trust: TrustPolicy) {
        self.trust = trust;
        self.last = None;
    }

    pub fn build(
        &mut self,
        groups: &[Arc<Group>],
        machines: &[Arc<Machine>],
        nodes: &[Arc<KubeNode>],
    ) -> Inventory {
        let names = GroupNames::new(self.ids, groups.iter().map(|g| name_of(&**g)));
        let by_key: HashMap<(&str, &str), &Arc<Group>> = groups
            .iter()
            .map(|g| ((namespace_of(&**g), name_of(&**g)), g))
            .collect();
        let mut members: HashMap<(&str, &str), Vec<&Arc<Machine>>> = HashMap::new();
        let mut ungrouped = Vec::new();
        for m in machines {
            let key = m.group().map(|g| (namespace_of(&**m), g));
            match key.filter(|k| by_key.contains_key(k)) {
                Some(k) => members.entry(k).or_default().push(m),
                None => ungrouped.push(m),
            }
        }

        let mut hints = HintsInterner::default();
        let mut built = HashMap::with_capacity(groups.len());
        let mut states = BTreeMap::new();
        for g in groups {
            let (namespace, name) = (namespace_of(&**g), name_of(&**g));
            let id = names.id(namespace, name);
            let mut ms = members.remove(&(namespace, name)).unwrap_or_default();
            // The inventory keeps members sorted by key; in one group the namespace is shared.
            ms.sort_by(|a, b| name_of(&***a).cmp(name_of(&***b)));
            let state = match self.built.remove(&id) {
                Some(b) if b.is_built_from(g, &ms) => b.state,
                _ => Arc::new(convert_group(g, &id, ms.iter().copied(), &mut hints)),
            };
            states.insert(id.clone(), state.clone());
            built.insert(
                id,
                BuiltGroup {
                    group: g.clone(),
                    members: ms.into_iter().cloned().collect(),
                    state,
                },
            );
        }
        // Groups gone since the last build are forgotten with the rest of the old map.
        self.built = built;

        let views = convert_ungrouped(ungrouped.iter().copied(), &mut hints);
        let nodes = nodes
            .iter()
            .map(|n| NodeView::from_k8s_under(n, &self.trust))
            .collect();
        let inv = Inventory::from_states(states, views, nodes);
        self.last = Some((ungrouped.into_iter().cloned().collect(), inv.tables()));
        inv
    }

    /// The inventory after the last build when only `changed` machines changed, each given by
    /// namespace, name and its object now (`None`: deleted). `groups` are all Groups now: the
    /// same set as last time, though any of them may have changed. `nodes` are all Kubernetes
    /// Nodes now, or `None` when none changed. `None` when the last build cannot be built on
    /// (there is none, or a Group came or went): [`build`](Self::build) then. Equal to a build
    /// from scratch on the same objects (tested).
    pub fn update(
        &mut self,
        groups: &[Arc<Group>],
        changed: &[(&str, &str, Option<Arc<Machine>>)],
        nodes: Option<&[Arc<KubeNode>]>,
    ) -> Option<Inventory> {
        let names = GroupNames::new(self.ids, groups.iter().map(|g| name_of(&**g)));
        let same_groups = groups.len() == self.built.len()
            && groups.iter().all(|g| {
                let (namespace, name) = (namespace_of(&**g), name_of(&**g));
                self.built.get(&names.id(namespace, name)).is_some_and(|b| {
                    namespace_of(&*b.group) == namespace && name_of(&*b.group) == name
                })
            });
        let (ungrouped, tables) = self.last.as_mut().filter(|_| same_groups)?;

        // Move each changed machine out of where it was and into where it is now.
        let mut touched: HashSet<String> = HashSet::new();
        let mut ungrouped_changed = false;
        for (namespace, name, now) in changed {
            let mut found = false;
            for (id, b) in self.built.iter_mut() {
                if namespace_of(&*b.group) != *namespace {
                    continue;
                }
                if let Ok(i) = b.members.binary_search_by(|m| name_of(&**m).cmp(name)) {
                    b.members.remove(i);
                    touched.insert(id.clone());
                    found = true;
                    break;
                }
            }
            if !found {
                let before = ungrouped.len();
                ungrouped.retain(|m| namespace_of(&**m) != *namespace || name_of(&**m) != *name);
                ungrouped_changed |= ungrouped.len() != before;
            }
            let Some(m) = now else { continue };
            let home = m
                .group()
                .map(|g| names.id(namespace, g))
                .and_then(|id| self.built.get_mut(&id).map(|b| (id, b)))
                .filter(|(_, b)| namespace_of(&*b.group) == *namespace);
            match home {
                Some((id, b)) => {
                    let at = b
                        .members
                        .binary_search_by(|x| name_of(&**x).cmp(name))
                        .unwrap_or_else(|at| at);
                    b.members.insert(at, m.clone());
                    touched.insert(id);
                }
                None => {
                    ungrouped.push(m.clone());
                    ungrouped_changed = true;
                }
            }
        }

        // Convert the groups whose members or Group changed; pass the others on.
        let mut hints = HintsInterner::default();
        let mut moved = false;
        let mut states = BTreeMap::new();
        for g in groups {
            let id = names.id(namespace_of(&**g), name_of(&**g));
            let b = self.built.get_mut(&id)?;
            if touched.contains(&id) || !Arc::ptr_eq(&b.group, g) {
                let state = convert_group(g, &id, b.members.iter(), &mut hints);
                moved |= !same_places(&b.state.machines, &state.machines);
                b.group = g.clone();
                b.state = Arc::new(state);
            }
            states.insert(id, b.state.clone());
        }
        let views = if ungrouped_changed {
            let mut views = convert_ungrouped(ungrouped.iter(), &mut hints);
            views.sort_by(|a, b| a.key.cmp(&b.key));
            moved |= !same_places(&tables.ungrouped, &views);
            Arc::new(views)
        } else {
            tables.ungrouped.clone()
        };
        let trust = &self.trust;
        let nodes = nodes.map(|n| {
            n.iter()
                .map(|n| NodeView::from_k8s_under(n, trust))
                .collect()
        });
        let inv = Inventory::assemble(states, views, nodes, Some((tables, moved)));
        *tables = inv.tables();
        Some(inv)
    }
}

/// The group `g` (id `id`) with these members, in the order given.
fn convert_group<'a>(
    g: &Group,
    id: &str,
    members: impl ExactSizeIterator<Item = &'a Arc<Machine>>,
    hints: &mut HintsInterner,
) -> GroupState {
    let mut spec = group_view(g, members.len());
    spec.id = id.to_owned();
    let machines = members
        .map(|m| {
            let mut v = machine_view_sharing(m, hints);
            v.group = Some(id.to_owned());
            v
        })
        .collect();
    GroupState { spec, machines }
}

/// Machines of no known group, in the order given.
fn convert_ungrouped<'a>(
    machines: impl Iterator<Item = &'a Arc<Machine>>,
    hints: &mut HintsInterner,
) -> Vec<MachineView> {
    machines
        .map(|m| {
            let mut v = machine_view_sharing(m, hints);
            v.group = None;
            v
        })
        .collect()
}

pub(super) fn namespace_of<K: kube::Resource>(o: &K) -> &str {
    o.meta().namespace.as_deref().unwrap_or_default()
}

pub(super) fn name_of<K: kube::Resource>(o: &K) -> &str {
    o.meta().name.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::operator::machine::PowerState;
    use crate::testing::{NodeExt as _, node};

    fn group(ns: &str, name: &str, max: u32) -> Arc<Group> {
        Arc::new(Group::test(name).namespace(ns).min(0).max(max).build())
    }

    fn machine(ns: &str, name: &str, group: Option<&str>, on: bool, cpu: u32) -> Arc<Machine> {
        let cpu = cpu.to_string();
        let mut m = Machine::test(name)
            .namespace(ns)
            .desired(if on { PowerState::On } else { PowerState::Off })
            .capacity([("cpu", cpu.as_str()), ("memory", "8Gi")]);
        if let Some(g) = group {
            m = m.group(g);
        }
        Arc::new(m.build())
    }

    /// One change the watches could report.
    #[derive(Clone, Debug)]
    enum Change {
        /// A machine's spec changes (a new object, as a watch event gives).
        Machine {
            index: usize,
            on: bool,
            cpu: u32,
        },
        /// A machine moves to another group (or to none, or to one that does not exist).
        Relabel {
            index: usize,
            group: Option<usize>,
        },
        /// A machine is created or deleted.
        AddMachine {
            ns: usize,
            group: Option<usize>,
        },
        RemoveMachine {
            index: usize,
        },
        /// A Group's spec changes, appears, or goes.
        Group {
            index: usize,
            max: u32,
        },
        AddGroup {
            ns: usize,
            name: usize,
        },
        RemoveGroup {
            index: usize,
        },
        /// A Kubernetes Node registers (with a providerID that may be a machine's) or goes.
        AddNode {
            machine: usize,
        },
        RemoveNode {
            index: usize,
        },
        /// Nothing changes (a rebuild for another reason).
        Nothing,
    }

    const NAMESPACES: [&str; 2] = ["lab", "attic"];
    const GROUP_NAMES: [&str; 4] = ["g0", "g1", "g2", "absent"];

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (0..64usize, any::<bool>(), 1..8u32).prop_map(|(index, on, cpu)| Change::Machine {
                index,
                on,
                cpu
            }),
            (0..64usize, proptest::option::of(0..4usize))
                .prop_map(|(index, group)| Change::Relabel { index, group }),
            (0..2usize, proptest::option::of(0..4usize))
                .prop_map(|(ns, group)| Change::AddMachine { ns, group }),
            (0..64usize).prop_map(|index| Change::RemoveMachine { index }),
            (0..8usize, 1..20u32).prop_map(|(index, max)| Change::Group { index, max }),
            (0..2usize, 0..3usize).prop_map(|(ns, name)| Change::AddGroup { ns, name }),
            (0..8usize).prop_map(|index| Change::RemoveGroup { index }),
            (0..64usize).prop_map(|machine| Change::AddNode { machine }),
            (0..8usize).prop_map(|index| Change::RemoveNode { index }),
            Just(Change::Nothing),
        ]
    }

    struct World {
        groups: Vec<Arc<Group>>,
        machines: Vec<Arc<Machine>>,
        nodes: Vec<Arc<KubeNode>>,
        next: usize,
    }

    /// What a change touched, as the watches report it.
    #[derive(Default)]
    struct Touched {
        machine: Option<(String, String)>,
        nodes: bool,
    }

    impl World {
        fn new() -> World {
            let mut w = World {
                groups: vec![group("lab", "g0", 10), group("lab", "g1", 10)],
                machines: Vec::new(),
                nodes: Vec::new(),
                next: 0,
            };
            for i in 0..6 {
                w.add_machine("lab", Some(GROUP_NAMES[i % 2]));
            }
            w
        }

        fn find(&self, ns: &str, name: &str) -> Option<Arc<Machine>> {
            self.machines
                .iter()
                .find(|m| namespace_of(&***m) == ns && name_of(&***m) == name)
                .cloned()
        }

        fn add_machine(&mut self, ns: &str, group: Option<&str>) {
            self.next += 1;
            let name = format!("m{}", self.next);
            self.machines.push(machine(ns, &name, group, false, 4));
        }

        fn apply(&mut self, c: &Change) -> Touched {
            let nm = self.machines.len();
            let ng = self.groups.len();
            let key = |m: &Machine| Some((namespace_of(m).to_owned(), name_of(m).to_owned()));
            let touched = match *c {
                Change::Machine { index, .. } | Change::Relabel { index, .. } if nm > 0 => {
                    key(&self.machines[index % nm])
                }
                Change::RemoveMachine { index } if nm > 0 => key(&self.machines[index % nm]),
                _ => None,
            };
            let nodes = matches!(*c, Change::AddNode { .. } | Change::RemoveNode { .. });
            match *c {
                Change::Machine { index, on, cpu } if nm > 0 => {
                    let old = &self.machines[index % nm];
                    self.machines[index % nm] =
                        machine(namespace_of(&**old), name_of(&**old), old.group(), on, cpu);
                }
                Change::Relabel { index, group: g } if nm > 0 => {
                    let old = &self.machines[index % nm];
                    self.machines[index % nm] = machine(
                        namespace_of(&**old),
                        name_of(&**old),
                        g.map(|g| GROUP_NAMES[g]),
                        old.spec.power_state == PowerState::On,
                        4,
                    );
                }
                Change::AddMachine { ns, group: g } => {
                    self.add_machine(NAMESPACES[ns], g.map(|g| GROUP_NAMES[g]));
                    let added = self.machines.last().and_then(|m| key(m));
                    return Touched {
                        machine: added,
                        nodes,
                    };
                }
                Change::RemoveMachine { index } if nm > 0 => {
                    self.machines.remove(index % nm);
                }
                Change::Group { index, max } if ng > 0 => {
                    let old = &self.groups[index % ng];
                    self.groups[index % ng] = group(namespace_of(&**old), name_of(&**old), max);
                }
                Change::AddGroup { ns, name } => {
                    let (ns, name) = (NAMESPACES[ns], GROUP_NAMES[name]);
                    if !self
                        .groups
                        .iter()
                        .any(|g| namespace_of(&**g) == ns && name_of(&**g) == name)
                    {
                        self.groups.push(group(ns, name, 5));
                    }
                }
                Change::RemoveGroup { index } if ng > 0 => {
                    self.groups.remove(index % ng);
                }
                Change::AddNode { machine } => {
                    // Named after a machine (or one that does not exist), its providerID the
                    // machine's; a second Node of the same name replaces the first.
                    // Every third is not labelled adoptable: no machine's.
                    let name = format!("m{}", machine % (self.next + 2));
                    self.nodes.retain(|n| n.name() != name);
                    let n = node(&name).provider_id(&format!("homelab://{name}"));
                    let n = if machine % 3 == 0 { n } else { n.adoptable() };
                    self.nodes.push(Arc::new(n.cached()));
                }
                Change::RemoveNode { index } if !self.nodes.is_empty() => {
                    let n = self.nodes.len();
                    self.nodes.remove(index % n);
                }
                _ => {}
            }
            Touched {
                machine: touched,
                nodes,
            }
        }
    }

    proptest! {
        /// After any sequence of changes, building on the previous builds gives the inventory a
        /// build from scratch gives, under both id schemes (a Group name in two namespaces is
        /// qualified under `Name`, which renames a reused group's id).
        #[test]
        fn an_incremental_build_equals_a_full_build(
            changes in proptest::collection::vec(change(), 1..40),
            namespaced in any::<bool>(),
        ) {
            let ids = if namespaced { GroupIds::NamespacedName } else { GroupIds::Name };
            let mut world = World::new();
            let mut builder = InventoryBuilder::new(ids);
            for c in &changes {
                world.apply(c);
                let incremental = builder.build(&world.groups, &world.machines, &world.nodes);
                let full = Inventory::from_objects_with_ids(ids, &world.groups, &world.machines, &world.nodes);
                prop_assert_eq!(incremental, full, "after {:?}", c);
            }
        }

        /// Updating the last build with only what the watches reported (the changed machine,
        /// whether Nodes changed), or building whole when it refuses, gives the inventory a
        /// build from scratch gives. Several changes may pile up between two builds.
        #[test]
        fn an_update_with_what_changed_equals_a_full_build(
            changes in proptest::collection::vec((change(), any::<bool>()), 1..40),
            namespaced in any::<bool>(),
        ) {
            let ids = if namespaced { GroupIds::NamespacedName } else { GroupIds::Name };
            let mut world = World::new();
            let mut builder = InventoryBuilder::new(ids);
            builder.build(&world.groups, &world.machines, &world.nodes);
            let mut machines = std::collections::BTreeSet::new();
            let mut nodes = false;
            for (c, build_now) in &changes {
                let t = world.apply(c);
                machines.extend(t.machine);
                nodes |= t.nodes;
                if !build_now {
                    continue;
                }
                let changed: Vec<_> = machines
                    .iter()
                    .map(|(ns, name)| (ns.as_str(), name.as_str(), world.find(ns, name)))
                    .collect();
                let updated = builder
                    .update(&world.groups, &changed, nodes.then_some(&world.nodes[..]))
                    .unwrap_or_else(|| builder.build(&world.groups, &world.machines, &world.nodes));
                let full = Inventory::from_objects_with_ids(ids, &world.groups, &world.machines, &world.nodes);
                prop_assert_eq!(updated, full, "after {:?}", c);
                machines.clear();
                nodes = false;
            }
        }
    }

    /// The update after one machine of `world` changed (`t`), the Groups the same.
    fn update_one(builder: &mut InventoryBuilder, world: &World, t: Touched) -> Inventory {
        let (ns, name) = t.machine.expect("a machine changed");
        let now = world.find(&ns, &name);
        builder
            .update(&world.groups, &[(&ns, &name, now)], None)
            .expect("the same Groups: an update")
    }

    #[test]
    fn an_update_passes_the_tables_on_while_no_machine_moved() {
        let mut world = World::new();
        world.apply(&Change::AddNode { machine: 1 });
        let mut builder = InventoryBuilder::default();
        let before = builder.build(&world.groups, &world.machines, &world.nodes);
        let turned_on = world.apply(&Change::Machine {
            index: 1,
            on: true,
            cpu: 4,
        });
        let after = update_one(&mut builder, &world, turned_on);
        assert!(
            after.tables().same_as(&before.tables()),
            "a power change moves no machine: the same tables"
        );
        assert_ne!(after, before, "the machine's change is in the update");

        let moved = world.apply(&Change::Relabel {
            index: 1,
            group: Some(0),
        });
        let relabelled = update_one(&mut builder, &world, moved);
        assert!(
            !relabelled.tables().same_as(&after.tables()),
            "a machine that changed groups changes the tables"
        );
    }

    #[test]
    fn an_update_refuses_when_a_group_came_or_went() {
        let mut world = World::new();
        let mut builder = InventoryBuilder::default();
        assert!(
            builder.update(&world.groups, &[], None).is_none(),
            "nothing built yet"
        );
        builder.build(&world.groups, &world.machines, &world.nodes);
        world.apply(&Change::AddGroup { ns: 0, name: 2 });
        assert!(builder.update(&world.groups, &[], None).is_none());
    }

    #[test]
    fn an_unchanged_group_is_passed_on_and_a_changed_one_rebuilt() {
        let mut world = World::new();
        let mut builder = InventoryBuilder::default();
        let before = builder.build(&world.groups, &world.machines, &[]);
        // m2 is in g1 (machines alternate g0, g1).
        world.apply(&Change::Machine {
            index: 1,
            on: true,
            cpu: 4,
        });
        let after = builder.build(&world.groups, &world.machines, &[]);
        let shared = |id: &str| match (before.group_arc(id), after.group_arc(id)) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
            _ => false,
        };
        assert!(shared("g0"), "g0 did not change and is the same GroupState");
        assert!(!shared("g1"), "g1's member changed and is rebuilt");
    }
}
