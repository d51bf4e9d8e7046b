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
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use super::convert::{HintsInterner, group_view, machine_view_sharing};
use super::inventory::{GroupIds, GroupNames, GroupState, Inventory, NodeView};
use crate::operator::api::{Group, Machine};

/// Builds inventories from the objects of the reflector stores, reusing the groups whose
/// objects did not change since the previous build. Equal to
/// [`Inventory::from_objects_with_ids`] on the same objects (tested).
#[derive(Default)]
pub struct InventoryBuilder {
    ids: GroupIds,
    built: HashMap<String, BuiltGroup>,
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
        }
    }

    pub fn build(
        &mut self,
        groups: &[Arc<Group>],
        machines: &[Arc<Machine>],
        nodes: &[Arc<Node>],
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
                _ => {
                    let mut spec = group_view(g, ms.len());
                    spec.id = id.clone();
                    let machines = ms
                        .iter()
                        .map(|m| {
                            let mut v = machine_view_sharing(m, &mut hints);
                            v.group = Some(id.clone());
                            v
                        })
                        .collect();
                    Arc::new(GroupState { spec, machines })
                }
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

        let ungrouped = ungrouped
            .into_iter()
            .map(|m| {
                let mut v = machine_view_sharing(m, &mut hints);
                v.group = None;
                v
            })
            .collect();
        let nodes = nodes.iter().map(|n| NodeView::from_k8s(n)).collect();
        Inventory::from_states(states, ungrouped, nodes)
    }
}

fn namespace_of<K: kube::Resource>(o: &K) -> &str {
    o.meta().namespace.as_deref().unwrap_or_default()
}

fn name_of<K: kube::Resource>(o: &K) -> &str {
    o.meta().name.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn group(ns: &str, name: &str, max: u32) -> Arc<Group> {
        Arc::new(parse(json!({
            "apiVersion": "infra.homecluster.dev/v1alpha1", "kind": "Group",
            "metadata": { "name": name, "namespace": ns },
            "spec": { "minSize": 0, "maxSize": max },
        })))
    }

    fn machine(ns: &str, name: &str, group: Option<&str>, on: bool, cpu: u32) -> Arc<Machine> {
        let mut labels = serde_json::Map::new();
        if let Some(g) = group {
            labels.insert("group".into(), g.into());
        }
        Arc::new(parse(json!({
            "apiVersion": "infra.homecluster.dev/v1alpha1", "kind": "Node",
            "metadata": { "name": name, "namespace": ns, "labels": labels },
            "spec": { "powerState": if on { "on" } else { "off" },
                      "capacity": { "cpu": cpu.to_string(), "memory": "8Gi" } },
        })))
    }

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("test fixture parses")
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
            Just(Change::Nothing),
        ]
    }

    struct World {
        groups: Vec<Arc<Group>>,
        machines: Vec<Arc<Machine>>,
        next: usize,
    }

    impl World {
        fn new() -> World {
            let mut w = World {
                groups: vec![group("lab", "g0", 10), group("lab", "g1", 10)],
                machines: Vec::new(),
                next: 0,
            };
            for i in 0..6 {
                w.add_machine("lab", Some(GROUP_NAMES[i % 2]));
            }
            w
        }

        fn add_machine(&mut self, ns: &str, group: Option<&str>) {
            self.next += 1;
            let name = format!("m{}", self.next);
            self.machines.push(machine(ns, &name, group, false, 4));
        }

        fn apply(&mut self, c: &Change) {
            let nm = self.machines.len();
            let ng = self.groups.len();
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
                        old.spec.power_state == crate::operator::machine::PowerState::On,
                        4,
                    );
                }
                Change::AddMachine { ns, group: g } => {
                    self.add_machine(NAMESPACES[ns], g.map(|g| GROUP_NAMES[g]))
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
                _ => {}
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
            let nodes: Vec<Arc<Node>> = Vec::new();
            for c in &changes {
                world.apply(c);
                let incremental = builder.build(&world.groups, &world.machines, &nodes);
                let full = Inventory::from_objects_with_ids(ids, &world.groups, &world.machines, &nodes);
                prop_assert_eq!(incremental, full, "after {:?}", c);
            }
        }
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
