//! Builders of the objects tests and benches feed the operator: the `Node` CR (Rust
//! [`Machine`]), the [`Group`] CR and the core Kubernetes `Node`. For tests and benches only;
//! not part of the operator or the plugin. It lives in the library (not behind `cfg(test)`) so
//! the unit tests in `src/`, the integration tests in `tests/` and the benches in `benches/` share
//! one set of fixtures; it uses only the library's own dependencies.
//!
//! Each builder starts from an object the API server would accept and reads like prose:
//!
//! ```
//! use kubectl_homelab::operator::api::{Group, Machine};
//! use kubectl_homelab::operator::machine::{Phase, PowerState};
//! use kubectl_homelab::testing::{NodeExt as _, node};
//!
//! let g = Group::test("g").min(0).max(3).build();
//! let m = Machine::test("m1").group("g").desired(PowerState::Off).phase(Phase::Off).build();
//! let n = node("n1").provider_id("homelab://lab/m1").ready();
//! # assert!(g.has_member(&m) && m.validate().is_empty() && n.spec.is_some());
//! ```
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::operator::api::{
    GROUP_LABEL, Group, GroupSpec, HttpAction, Machine, MachineSpec, MachineStatus, Meter,
    MinimalPodSpec, NodeAgent, NodeSnapshot, NodeTemplate, PowerOff, PowerOn, PowerOnOrder,
    PowerSpec, Pricing, Redfish, WakeOnLan,
};
use crate::operator::kube_node::KubeNode;
use crate::operator::machine::{Lifecycle, Operation, Phase, PowerState};

/// Namespace of every built CR unless [`MachineBuilder::namespace`] / [`GroupBuilder::namespace`]
/// says otherwise.
pub const NAMESPACE: &str = "lab";

/// Image of the power Jobs [`Machine::test`] declares.
pub const POWER_IMAGE: &str = "example.org/power:1";

/// A power Job's container: `image` running `command`.
pub fn job(image: &str, command: &[&str]) -> MinimalPodSpec {
    MinimalPodSpec {
        image: image.to_owned(),
        command: command.iter().map(|c| (*c).to_owned()).collect(),
        ..MinimalPodSpec::default()
    }
}

/// A taint; an empty `value` is left out, as the API server returns it.
pub fn taint(key: &str, value: &str, effect: &str) -> Taint {
    Taint {
        key: key.to_owned(),
        value: (!value.is_empty()).then(|| value.to_owned()),
        effect: effect.to_owned(),
        time_added: None,
    }
}

/// The Kubernetes Node `name` as last seen by the operator, at the Unix epoch and nothing else
/// recorded; fill in the rest with struct update syntax (`..seen_node("n1")`).
pub fn seen_node(name: &str) -> NodeSnapshot {
    NodeSnapshot {
        name: name.to_owned(),
        seen: Timestamp::UNIX_EPOCH,
        ..NodeSnapshot::default()
    }
}

fn quantities<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> impl Iterator<Item = (String, Quantity)> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
}

fn insert(map: &mut Option<BTreeMap<String, String>>, key: &str, value: &str) {
    map.get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.to_owned());
}

// --- Node CR.

/// Builds a [`Machine`]; see [`Machine::test`].
#[derive(Clone, Debug)]
#[must_use = "finish with .build()"]
pub struct MachineBuilder(Machine);

impl Machine {
    /// Node CR `lab/<name>`, desired on (the CRD's default), in no Group, powered on and off by
    /// a Job running [`POWER_IMAGE`] (the CRD requires a way each direction), no status.
    #[doc(hidden)]
    pub fn test(name: &str) -> MachineBuilder {
        let pod = job(POWER_IMAGE, &["/power"]);
        let mut m = Machine::new(name, MachineSpec::new(PowerState::On));
        m.metadata.namespace = Some(NAMESPACE.to_owned());
        m.spec.power = Some(Box::new(PowerSpec {
            power_on: Some(PowerOn {
                job: Some(Box::new(pod.clone())),
                ..PowerOn::default()
            }),
            power_off: Some(PowerOff {
                job: Some(Box::new(pod)),
                ..PowerOff::default()
            }),
            ..PowerSpec::default()
        }));
        MachineBuilder(m)
    }
}

impl MachineBuilder {
    pub fn build(self) -> Machine {
        self.0
    }

    // Metadata.

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.0.metadata.namespace = Some(namespace.to_owned());
        self
    }

    /// Member of Group `group` (the `group` label).
    pub fn group(self, group: &str) -> Self {
        self.label(GROUP_LABEL, group)
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.0.metadata.labels, key, value);
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.0.metadata.annotations, key, value);
        self
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.0.metadata.uid = Some(uid.to_owned());
        self
    }

    /// `metadata.resourceVersion` and `metadata.generation`, as read from the API server.
    pub fn at_version(mut self, resource_version: &str, generation: i64) -> Self {
        self.0.metadata.resource_version = Some(resource_version.to_owned());
        self.0.metadata.generation = Some(generation);
        self
    }

    pub fn finalizer(mut self, finalizer: &str) -> Self {
        self.0
            .metadata
            .finalizers
            .get_or_insert_with(Vec::new)
            .push(finalizer.to_owned());
        self
    }

    // Spec.

    /// `spec.powerState`.
    pub fn desired(mut self, power: PowerState) -> Self {
        self.0.spec.power_state = power;
        self
    }

    /// `spec.kubernetesNodeName`.
    pub fn node_name(mut self, node: &str) -> Self {
        self.0.spec.kubernetes_node_name = Some(node.to_owned());
        self
    }

    /// `spec.providerID`.
    pub fn provider_id(mut self, id: &str) -> Self {
        self.0.spec.provider_id = Some(id.to_owned());
        self
    }

    /// `spec.capacity`, e.g. `[("cpu", "4"), ("memory", "8Gi")]`, added to what is set.
    pub fn capacity<'a>(mut self, resources: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.0.spec.capacity.extend(quantities(resources));
        self
    }

    /// A label of `spec.labels` (one the machine's Kubernetes Node will carry).
    pub fn node_label(mut self, key: &str, value: &str) -> Self {
        self.0.spec.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// A taint of `spec.taints` (one the machine's Kubernetes Node will carry).
    pub fn node_taint(mut self, taint: Taint) -> Self {
        self.0.spec.taints.push(taint);
        self
    }

    /// A taint of `spec.taintsToRemove`.
    pub fn taint_to_remove(mut self, taint: Taint) -> Self {
        self.0.spec.taints_to_remove.push(taint);
        self
    }

    /// `spec.scaleDownDisabled`.
    pub fn scale_down_disabled(mut self, disabled: bool) -> Self {
        self.0.spec.scale_down_disabled = Some(disabled);
        self
    }

    /// `spec.pricing`.
    pub fn pricing(mut self, hourly_rate: &str, pod_rate: &str) -> Self {
        self.0.spec.pricing = Some(Pricing {
            hourly_rate: Some(hourly_rate.to_owned()),
            pod_rate: Some(pod_rate.to_owned()),
        });
        self
    }

    /// `spec.bootTimeout`, e.g. `"3s"`.
    pub fn boot_timeout(mut self, timeout: &str) -> Self {
        self.0.spec.boot_timeout = Some(timeout.to_owned());
        self
    }

    /// Any other spec field.
    pub fn spec_with(mut self, f: impl FnOnce(&mut MachineSpec)) -> Self {
        f(&mut self.0.spec);
        self
    }

    /// `spec.meter`.
    pub fn meter(mut self, meter: Meter) -> Self {
        self.0.spec.meter = Some(Box::new(meter));
        self
    }

    // Power drivers; each replaces the driver(s) of its direction(s).

    fn power(&mut self) -> &mut PowerSpec {
        self.0.spec.power.get_or_insert_with(Default::default)
    }

    fn power_on(mut self, on: PowerOn) -> Self {
        self.power().power_on = Some(on);
        self
    }

    fn power_off(mut self, off: PowerOff) -> Self {
        self.power().power_off = Some(off);
        self
    }

    /// `power.powerOn.job` and `power.powerOff.job`.
    pub fn jobs(self, pod: MinimalPodSpec) -> Self {
        self.power_on(PowerOn {
            job: Some(Box::new(pod.clone())),
            ..PowerOn::default()
        })
        .power_off(PowerOff {
            job: Some(Box::new(pod)),
            ..PowerOff::default()
        })
    }

    /// Moves the power drivers under the deprecated keys `"on"` / `"off"`, as a CR written
    /// before `powerOn` / `powerOff` has them (call it after the driver builders).
    pub fn deprecated_power_keys(mut self) -> Self {
        if let Some(p) = self.0.spec.power.as_deref_mut() {
            p.legacy_on = p.power_on.take().or(p.legacy_on.take());
            p.legacy_off = p.power_off.take().or(p.legacy_off.take());
        }
        self
    }

    /// The predecessor's `startupPodSpec` / `shutdownPodSpec`, and no `power`.
    pub fn legacy_jobs(mut self, startup: MinimalPodSpec, shutdown: MinimalPodSpec) -> Self {
        self.0.spec.power = None;
        self.0.spec.startup_pod_spec = Some(Box::new(startup));
        self.0.spec.shutdown_pod_spec = Some(Box::new(shutdown));
        self
    }

    /// `power.powerOn.wakeOnLan`.
    pub fn wol(self, wol: WakeOnLan) -> Self {
        self.power_on(PowerOn {
            wake_on_lan: Some(Box::new(wol)),
            ..PowerOn::default()
        })
    }

    /// `power.powerOn.redfish` and `power.powerOff.redfish`.
    pub fn redfish(self, bmc: Redfish) -> Self {
        self.power_on(PowerOn {
            redfish: Some(Box::new(bmc.clone())),
            ..PowerOn::default()
        })
        .power_off(PowerOff {
            redfish: Some(Box::new(bmc)),
            ..PowerOff::default()
        })
    }

    /// `power.powerOn.ipmi` and `power.powerOff.ipmi`, the same BMC.
    pub fn ipmi(self, bmc: crate::operator::api::Ipmi) -> Self {
        self.power_on(PowerOn {
            ipmi: Some(Box::new(bmc.clone())),
            ..PowerOn::default()
        })
        .power_off(PowerOff {
            ipmi: Some(Box::new(bmc)),
            ..PowerOff::default()
        })
    }

    /// `power.powerOn.http` and `power.powerOff.http`.
    pub fn http(self, on: HttpAction, off: HttpAction) -> Self {
        self.power_on(PowerOn {
            http: Some(Box::new(on)),
            ..PowerOn::default()
        })
        .power_off(PowerOff {
            http: Some(Box::new(off)),
            ..PowerOff::default()
        })
    }

    /// `power.powerOff.nodeAgent` with its defaults.
    pub fn node_agent_off(self) -> Self {
        self.power_off(PowerOff {
            node_agent: Some(Box::new(NodeAgent::default())),
            ..PowerOff::default()
        })
    }

    /// No way to power off: a power-on driver under test alone (the API server refuses it).
    pub fn no_power_off(mut self) -> Self {
        self.power().power_off = None;
        self
    }

    // Status.

    fn status(&mut self) -> &mut MachineStatus {
        self.0.status.get_or_insert_with(MachineStatus::default)
    }

    /// `status.phase`, entered at the Unix epoch unless [`MachineBuilder::phase_since`] says
    /// when (the FSM always writes both).
    pub fn phase(mut self, phase: Phase) -> Self {
        let lifecycle = &mut self.status().lifecycle;
        lifecycle.phase = Some(phase);
        lifecycle.phase_since.get_or_insert(Timestamp::UNIX_EPOCH);
        self
    }

    /// The whole lifecycle part of the status (phase, goal, operation, …).
    pub fn lifecycle(mut self, lifecycle: Lifecycle) -> Self {
        self.status().lifecycle = lifecycle;
        self
    }

    /// `status.phaseSince`.
    pub fn phase_since(mut self, since: Timestamp) -> Self {
        self.status().lifecycle.phase_since = Some(since);
        self
    }

    /// `status.powerState`.
    pub fn observed(mut self, power: PowerState) -> Self {
        self.status().power_state = Some(power);
        self
    }

    /// `status.operation`.
    pub fn operation(mut self, op: Operation) -> Self {
        self.status().lifecycle.operation = Some(op);
        self
    }

    /// `status.node`: the Kubernetes Node as last seen (see [`seen_node`]).
    pub fn node_snapshot(mut self, node: NodeSnapshot) -> Self {
        self.status().node = Some(Box::new(node));
        self
    }

    /// `status.recentBootSeconds`.
    pub fn recent_boots(mut self, seconds: &[u32]) -> Self {
        self.status().recent_boot_seconds = seconds.to_vec();
        self
    }
}

// --- Group CR.

fn size(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Builds a [`Group`]; see [`Group::test`].
#[derive(Clone, Debug)]
#[must_use = "finish with .build()"]
pub struct GroupBuilder(Group);

impl Group {
    /// Group `lab/<name>` with every spec field unset (no size bounds), no status.
    #[doc(hidden)]
    pub fn test(name: &str) -> GroupBuilder {
        let mut g = Group::new(name, GroupSpec::default());
        g.metadata.namespace = Some(NAMESPACE.to_owned());
        GroupBuilder(g)
    }
}

impl GroupBuilder {
    pub fn build(self) -> Group {
        self.0
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.0.metadata.namespace = Some(namespace.to_owned());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.0.metadata.annotations, key, value);
        self
    }

    /// `spec.minSize`. Sizes are counts here (saturating at `i32::MAX`); a test of what the
    /// schema does with a negative one writes the object out itself.
    pub fn min(mut self, min: u32) -> Self {
        self.0.spec.min_size = Some(size(min));
        self
    }

    /// `spec.maxSize` (as [`GroupBuilder::min`]).
    pub fn max(mut self, max: u32) -> Self {
        self.0.spec.max_size = Some(size(max));
        self
    }

    /// `spec.powerOnOrder`.
    pub fn power_on_order(mut self, order: PowerOnOrder) -> Self {
        self.0.spec.power_on_order = Some(order);
        self
    }

    /// `spec.scaleDownDisabled`.
    pub fn scale_down_disabled(mut self, disabled: bool) -> Self {
        self.0.spec.scale_down_disabled = Some(disabled);
        self
    }

    /// `spec.template`.
    pub fn template(mut self, template: NodeTemplate) -> Self {
        self.0.spec.template = Some(template);
        self
    }

    /// `spec.warmSpares`: `count` placeholders, each `cpu` and `memory` where given (else a
    /// whole machine of the group).
    pub fn warm_spares(mut self, count: i32, cpu: Option<&str>, memory: Option<&str>) -> Self {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        self.0.spec.warm_spares = Some(crate::operator::api::WarmSpares {
            count,
            cpu: cpu.map(|c| Quantity(c.to_owned())),
            memory: memory.map(|m| Quantity(m.to_owned())),
        });
        self
    }

    /// Any other spec field.
    pub fn spec_with(mut self, f: impl FnOnce(&mut GroupSpec)) -> Self {
        f(&mut self.0.spec);
        self
    }
}

// --- Core Kubernetes Node: a foreign type, so a free function starts it and an extension trait
// adds to it (which also works on a Node a test got back from the code under test).

/// Kubernetes Node `name` as a kubelet registers it: the hostname, os (linux) and arch (amd64)
/// labels, an empty spec (no providerID) and no status yet (so not Ready). Add to it with
/// [`NodeExt`].
pub fn node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/hostname".to_owned(), name.to_owned()),
                ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec::default()),
        status: None,
    }
}

/// Builder methods on a core Kubernetes [`Node`] (see [`node`]). Names differ from
/// `kube::ResourceExt`'s so both can be in scope.
pub trait NodeExt: Sized {
    fn label(self, key: &str, value: &str) -> Self;
    /// The label its owner puts on a Node a Node CR may adopt
    /// (`infra.homecluster.dev/adoptable=true`, a kubelet's `--node-labels`).
    fn adoptable(self) -> Self;
    fn annotation(self, key: &str, value: &str) -> Self;
    /// `metadata.resourceVersion`.
    fn at_version(self, version: &str) -> Self;
    /// `spec.providerID`.
    fn provider_id(self, id: &str) -> Self;
    /// Appends to `spec.taints`.
    fn taint(self, taint: Taint) -> Self;
    /// `spec.unschedulable`.
    fn cordoned(self) -> Self;
    /// The `Ready` condition `True` (replacing any `Ready` condition).
    fn ready(self) -> Self;
    /// The `Ready` condition `False` (replacing any `Ready` condition).
    fn not_ready(self) -> Self;
    /// The `Ready` condition `True` or `False` since `since` (its last transition).
    fn ready_since(self, ready: bool, since: Timestamp) -> Self;
    /// `status.capacity`, e.g. `[("cpu", "4"), ("memory", "8Gi")]`, added to what is set.
    fn capacity<'a>(self, resources: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self;
    /// `status.allocatable`, added to what is set.
    fn allocatable<'a>(self, resources: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self;
    /// The Node as the operator's cache keeps it.
    fn cached(&self) -> KubeNode;
}

fn ready_condition(node: Node, status: &str) -> Node {
    ready_condition_since(node, status, None)
}

fn ready_condition_since(mut node: Node, status: &str, since: Option<Timestamp>) -> Node {
    let conditions = node
        .status
        .get_or_insert_with(NodeStatus::default)
        .conditions
        .get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != "Ready");
    conditions.push(NodeCondition {
        type_: "Ready".to_owned(),
        status: status.to_owned(),
        last_transition_time: since.map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        ..NodeCondition::default()
    });
    node
}

impl NodeExt for Node {
    fn cached(&self) -> KubeNode {
        KubeNode::from(self)
    }

    fn label(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.metadata.labels, key, value);
        self
    }

    fn adoptable(self) -> Self {
        self.label(
            crate::operator::trust::ADOPTABLE_LABEL,
            crate::operator::trust::ADOPTABLE_VALUE,
        )
    }

    fn annotation(mut self, key: &str, value: &str) -> Self {
        insert(&mut self.metadata.annotations, key, value);
        self
    }

    fn at_version(mut self, version: &str) -> Self {
        self.metadata.resource_version = Some(version.to_owned());
        self
    }

    fn provider_id(mut self, id: &str) -> Self {
        self.spec.get_or_insert_with(NodeSpec::default).provider_id = Some(id.to_owned());
        self
    }

    fn taint(mut self, taint: Taint) -> Self {
        self.spec
            .get_or_insert_with(NodeSpec::default)
            .taints
            .get_or_insert_with(Vec::new)
            .push(taint);
        self
    }

    fn cordoned(mut self) -> Self {
        self.spec
            .get_or_insert_with(NodeSpec::default)
            .unschedulable = Some(true);
        self
    }

    fn ready_since(self, ready: bool, since: Timestamp) -> Self {
        ready_condition_since(self, if ready { "True" } else { "False" }, Some(since))
    }

    fn ready(self) -> Self {
        ready_condition(self, "True")
    }

    fn not_ready(self) -> Self {
        ready_condition(self, "False")
    }

    fn capacity<'a>(mut self, resources: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.status
            .get_or_insert_with(NodeStatus::default)
            .capacity
            .get_or_insert_with(BTreeMap::new)
            .extend(quantities(resources));
        self
    }

    fn allocatable<'a>(mut self, resources: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        self.status
            .get_or_insert_with(NodeStatus::default)
            .allocatable
            .get_or_insert_with(BTreeMap::new)
            .extend(quantities(resources));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::api::Direction;

    /// The defaults a test relies on without spelling them out.
    #[test]
    fn a_test_machine_is_in_lab_ungrouped_desired_on_and_valid() {
        let m = Machine::test("m1").build();
        assert_eq!(m.metadata.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(m.group(), None, "membership is opt-in");
        assert_eq!(m.desired_power(), PowerState::On);
        assert!(m.validate().is_empty(), "{:?}", m.validate());
        assert_eq!(m.status, None);
        let since = Machine::test("m1")
            .phase(Phase::Off)
            .build()
            .lifecycle()
            .phase_since;
        assert_eq!(since, Some(Timestamp::UNIX_EPOCH), "a phase has a since");
        let g = Group::test("g").build();
        assert!(g.has_member(&Machine::test("m1").group("g").build()));
        assert!(!g.has_member(&Machine::test("m1").group("g").namespace("x").build()));
    }

    /// A driver shortcut replaces the driver of its direction instead of adding a second one
    /// (which validation would refuse).
    #[test]
    fn a_driver_replaces_the_default_job() {
        let m = Machine::test("m1").node_agent_off().build();
        assert!(m.validate().is_empty(), "{:?}", m.validate());
        assert_eq!(
            m.power_driver(Direction::Off).map(|d| d.kind()).ok(),
            Some("nodeAgent")
        );
        let legacy = Machine::test("m1")
            .legacy_jobs(job("on", &[]), job("off", &[]))
            .build();
        assert!(legacy.validate().is_empty(), "{:?}", legacy.validate());
    }

    /// A Node carries the kubelet's labels; a taint's empty value is absent, as the API server
    /// returns it; Ready replaces NotReady.
    #[test]
    fn a_node_is_as_the_kubelet_registers_it() {
        let n = node("n1");
        let labels = n.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get("kubernetes.io/hostname").map(String::as_str),
            Some("n1")
        );
        assert_eq!(labels.len(), 3, "{labels:?}");
        assert_eq!(n.status, None, "not Ready until it says so");
        assert_eq!(taint("k", "", "NoSchedule").value, None);
        let n = node("n1").not_ready().ready();
        let conditions = n.status.and_then(|s| s.conditions).unwrap_or_default();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].status, "True");
    }
}
