//! The trust boundary: what a Node CR may make the operator do. The operator holds rights the
//! CR's author may not (it creates privileged and host-network pods, patches, drains and powers
//! Kubernetes Nodes, reads credentials), so every use of them that a CR chooses is checked here
//! against what the operator's owner allowed (`run-operator` flags, the Helm chart's `security`
//! values). The chart's ValidatingAdmissionPolicy rejects the same CRs at `kubectl apply`; these
//! checks run again at reconcile time because a policy can be absent. SECURITY.md describes the
//! model.
//!
//! Pure: no I/O, no clock. The controller and the drivers call these functions with what they
//! observed.
mod node;
mod spec;

use std::collections::BTreeMap;

pub use node::check_node;
pub use spec::check_spec;

use crate::operator::api::{
    DEFAULT_NODE_AGENT_COMMAND, DEFAULT_NODE_AGENT_IMAGE, DEFAULT_WOL_RELAY_IMAGE,
};

/// Condition on a Node CR (abnormal-true, like `InvalidSpec`): the operator refuses to act on
/// the machine because its spec or its Kubernetes Node breaks a rule of the trust boundary.
/// The reason names the rule, the message the field and the fix.
pub const CONDITION_NOT_PERMITTED: &str = "NotPermitted";

/// Label an administrator puts on a Kubernetes Node (or a kubelet's `--node-labels`) to let a
/// Node CR adopt it: providerID, labels, taints, cordon, drain and power.
pub const ADOPTABLE_LABEL: &str = "infra.homecluster.dev/adoptable";
pub const ADOPTABLE_VALUE: &str = "true";

/// Labels that mark a control-plane node; such a node is never adopted.
pub const CONTROL_PLANE_LABELS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// What the operator's owner allows Node CRs to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Images the privileged node agent and the host-network Wake-on-LAN relay may run: an
    /// exact reference, or a prefix ending in `*` (`registry.lan/tools/*`).
    pub allowed_images: Vec<String>,
    /// Commands the node agent may run on the host, word by word.
    pub node_agent_commands: Vec<Vec<String>>,
    /// ServiceAccounts a `job` driver may name (a CR that names none gets
    /// `Settings::pod_service_account`, or the namespace's `default`).
    pub job_service_accounts: Vec<String>,
    /// The operator's own ServiceAccount (namespace, name): never given to a pod it creates,
    /// whatever the lists above say.
    pub operator_service_account: Option<(String, String)>,
    /// Whether a `job` driver may ask for a privileged container or the host's namespaces.
    pub allow_privileged_jobs: bool,
    /// Kubernetes Nodes with all these labels may be adopted without [`ADOPTABLE_LABEL`]
    /// (empty: only Nodes carrying the label).
    pub adopt_node_selector: BTreeMap<String, String>,
}

impl Default for TrustPolicy {
    /// The images and command the project documents, no extra ServiceAccount, no privilege,
    /// only Nodes labelled adoptable.
    fn default() -> Self {
        TrustPolicy {
            allowed_images: vec![
                DEFAULT_NODE_AGENT_IMAGE.to_owned(),
                DEFAULT_WOL_RELAY_IMAGE.to_owned(),
            ],
            node_agent_commands: vec![
                DEFAULT_NODE_AGENT_COMMAND
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
            ],
            job_service_accounts: Vec::new(),
            operator_service_account: None,
            allow_privileged_jobs: false,
            adopt_node_selector: BTreeMap::new(),
        }
    }
}

/// One rule a Node CR or its Kubernetes Node breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The condition's reason: the rule, in CamelCase (`ImageNotAllowed`).
    pub reason: &'static str,
    /// The field of the Node CR (`spec.power.powerOff.nodeAgent.image`), or the Kubernetes Node.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
