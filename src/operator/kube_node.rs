//! A Kubernetes Node (`core/v1`) as the operator keeps it in memory: only the fields the
//! operator reads, with the strings that repeat from Node to Node (label keys and values,
//! resource names and quantities, architecture and OS) stored once and shared.
//!
//! A cluster's Nodes are mostly the same strings: every kubelet reports the same dozen label
//! keys, the same resource names and, on one kind of machine, the same quantities. Kept as
//! k8s-openapi's `Node` (every optional field inline, one heap string and one B-tree entry per
//! label and quantity), 2,000 trimmed Nodes took 8.5 MiB of the operator's heap; kept as
//! [`KubeNode`] they take a fraction of that (BENCHMARKS.md, "Beside 2,000 Kubernetes Nodes").
//!
//! Pure data: the watch cache (`cache`) builds these from what the API server sends, the
//! node side (`node`), the trust boundary and the provider read them.
use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Taint};

use crate::operator::interned::{Shared, Strings, intern};

/// The Node's `Ready` condition, as far as the operator reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeReady {
    /// `True`, `False` or `Unknown`.
    pub status: Shared,
    pub since: Option<Timestamp>,
}

impl NodeReady {
    pub fn is_true(&self) -> bool {
        self.status.as_ref() == "True"
    }
}

/// A Kubernetes Node with the fields the operator reads (see the module docs): its name and
/// resourceVersion, labels, the annotations the cache keeps, `spec.providerID`, taints and
/// `unschedulable`, the `Ready` condition, capacity, allocatable, and the architecture and OS
/// from `nodeInfo`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubeNode {
    name: Box<str>,
    resource_version: Option<Box<str>>,
    deleting: bool,
    labels: Strings,
    annotations: Strings,
    provider_id: Option<Box<str>>,
    taints: Box<[Taint]>,
    unschedulable: bool,
    ready: Option<NodeReady>,
    capacity: Strings,
    allocatable: Strings,
    architecture: Option<Shared>,
    operating_system: Option<Shared>,
}

impl KubeNode {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// `metadata.deletionTimestamp` is set.
    pub fn is_deleting(&self) -> bool {
        self.deleting
    }

    pub fn labels(&self) -> &Strings {
        &self.labels
    }

    pub fn annotations(&self) -> &Strings {
        &self.annotations
    }

    /// `spec.providerID`, `None` when empty.
    pub fn provider_id(&self) -> Option<&str> {
        self.provider_id.as_deref().filter(|p| !p.is_empty())
    }

    pub fn taints(&self) -> &[Taint] {
        &self.taints
    }

    pub fn unschedulable(&self) -> bool {
        self.unschedulable
    }

    pub fn ready(&self) -> Option<&NodeReady> {
        self.ready.as_ref()
    }

    /// The `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.ready.as_ref().is_some_and(NodeReady::is_true)
    }

    pub fn capacity(&self) -> &Strings {
        &self.capacity
    }

    pub fn allocatable(&self) -> &Strings {
        &self.allocatable
    }

    /// `status.nodeInfo.architecture` (`amd64`), if reported.
    pub fn architecture(&self) -> Option<&str> {
        self.architecture.as_deref().filter(|a| !a.is_empty())
    }

    /// `status.nodeInfo.operatingSystem` (`linux`), if reported.
    pub fn operating_system(&self) -> Option<&str> {
        self.operating_system.as_deref().filter(|o| !o.is_empty())
    }
}

/// Keeps what [`KubeNode`] holds; every annotation of `node` is kept (the watch cache drops the
/// ones the operator does not read before this).
impl From<&Node> for KubeNode {
    fn from(node: &Node) -> KubeNode {
        let meta = &node.metadata;
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let quantities = |m: Option<&BTreeMap<String, _>>| -> Strings {
            m.into_iter()
                .flatten()
                .map(
                    |(k, q): (
                        &String,
                        &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                    )| { (k, &q.0) },
                )
                .collect()
        };
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| NodeReady {
                status: intern(&c.status),
                since: c.last_transition_time.as_ref().map(|t| t.0),
            });
        let info = status.and_then(|s| s.node_info.as_ref());
        KubeNode {
            name: meta.name.as_deref().unwrap_or_default().into(),
            resource_version: meta.resource_version.as_deref().map(Box::from),
            deleting: meta.deletion_timestamp.is_some(),
            labels: meta.labels.iter().flatten().collect(),
            annotations: meta.annotations.iter().flatten().collect(),
            provider_id: spec.and_then(|s| s.provider_id.as_deref()).map(Box::from),
            taints: spec
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into(),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            ready,
            capacity: quantities(status.and_then(|s| s.capacity.as_ref())),
            allocatable: quantities(status.and_then(|s| s.allocatable.as_ref())),
            architecture: info.map(|i| intern(&i.architecture)),
            operating_system: info.map(|i| intern(&i.operating_system)),
        }
    }
}

impl From<Node> for KubeNode {
    fn from(node: Node) -> KubeNode {
        KubeNode::from(&node)
    }
}

/// The reflector's store keys Nodes by name (cluster-scoped, so no namespace).
impl kube::runtime::reflector::Lookup for KubeNode {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }

    /// Not kept: nothing reads a Node's UID, and the store's keys would hold a copy of it.
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NodeExt as _, node, taint};

    #[test]
    fn a_cached_node_keeps_what_the_operator_reads() {
        let since = Timestamp::UNIX_EPOCH;
        let full = node("n1")
            .provider_id("homelab://lab/n1")
            .annotation("infra.homecluster.dev/cordoned", "true")
            .taint(taint("homelab/gpu", "", "NoSchedule"))
            .cordoned()
            .ready_since(false, since)
            .capacity([("cpu", "4"), ("memory", "8Gi")])
            .allocatable([("cpu", "3800m")])
            .at_version("42");
        let n = KubeNode::from(&full);
        assert_eq!(n.name(), "n1");
        assert_eq!(n.resource_version(), Some("42"));
        assert_eq!(n.provider_id(), Some("homelab://lab/n1"));
        assert_eq!(n.labels().get("kubernetes.io/hostname"), Some("n1"));
        assert_eq!(
            n.annotations().get("infra.homecluster.dev/cordoned"),
            Some("true")
        );
        assert_eq!(n.taints().len(), 1);
        assert!(n.unschedulable());
        assert!(!n.is_ready());
        assert_eq!(n.ready().and_then(|r| r.since), Some(since));
        assert_eq!(n.capacity().get("memory"), Some("8Gi"));
        assert_eq!(n.allocatable().get("cpu"), Some("3800m"));
        assert!(!n.is_deleting());
    }

    #[test]
    fn an_empty_provider_id_reads_as_none() {
        assert_eq!(
            KubeNode::from(&node("n1").provider_id("")).provider_id(),
            None
        );
    }
}
