//! Drain before a power-off that CA did not start (a person, `power off`): cordon, then evict
//! the Node's pods through the Eviction API (policy/v1), which honours PodDisruptionBudgets.
//!
//! One call does one pass and returns at once, so the machine controller calls it on every
//! reconcile while the lifecycle core keeps deriving `DesiredOff { pods_present }`: it issues the
//! evictions it can, reports what is left and what blocks it, and powers off only once nothing
//! is left (the core decides that, from [`DrainOutcome::pods_present`]). The drain's start is
//! recorded on the Node ([`DRAIN_STARTED`]), so the timeout survives an operator restart; past
//! it, a pass evicts nothing more and reports which pods remain and which budgets refuse them.
//! [`cordon`]`(.., false)` (a cancelled power-off) clears the record, so a new drain starts
//! afresh.
//!
//! A power-off CA started ([`is_ca_deleting`]) is drained the same way: CA drained the Node
//! before it called `NodeGroupDeleteNodes` (docs/ca-contract.md, rule 5), so what is left are
//! pods that arrived after (tolerating its taint) or that its drain did not wait for. Its
//! timeout differs (the machine controller powers off then): see its `drain_pass`.
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, ListParams, PostParams};
use kube::core::{Selector, SelectorExt as _};
use kube::{Client, ResourceExt as _};

use super::{DRAIN_STARTED, NodeEdit, NodeSideError};
use crate::operator::ca;
use crate::operator::kube_node::KubeNode;

/// How long a drain may take before it gives up and leaves the machine on, unless
/// `run-operator --drain-timeout` says otherwise (its default is this value; a test there
/// checks that the two agree).
pub const DEFAULT_DRAIN_TIMEOUT: SignedDuration = SignedDuration::from_secs(5 * 60);
/// How soon to call [`drain`] again while it is in progress: pod deletions are not watched by
/// the machine controller, so it requeues.
pub const DRAIN_RECHECK: Duration = Duration::from_secs(5);

/// Annotation the kubelet puts on the API server's copy of a static pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// `StatusCause.type` the Eviction API gives a refusal by a PodDisruptionBudget.
const DISRUPTION_BUDGET_CAUSE: &str = "DisruptionBudget";

/// Whether CA started this power-off: its `ToBeDeletedByClusterAutoscaler` taint is on the Node
/// (`utils/taints/taints.go`, `MarkToBeDeleted`). CA drained it already; do not drain again.
pub fn is_ca_deleting(node: &KubeNode) -> bool {
    node.taints()
        .iter()
        .any(|t| t.key == ca::TO_BE_DELETED_TAINT)
}

/// Whether `pod` is a DaemonSet's (owned by one, or marked as one the way CA accepts).
pub fn is_daemonset_pod(pod: &Pod) -> bool {
    let owned = pod.metadata.owner_references.as_ref().is_some_and(|os| {
        os.iter()
            .any(|o| o.controller == Some(true) && o.kind == "DaemonSet")
    });
    owned || pod.annotations().get(ca::DAEMONSET_POD).map(String::as_str) == Some("true")
}

/// Whether `pod` is the API server's copy of a static pod (it cannot be evicted; it goes with
/// the machine).
pub fn is_mirror_pod(pod: &Pod) -> bool {
    pod.annotations().contains_key(MIRROR_POD_ANNOTATION)
}

/// Whether `pod` has finished (Succeeded or Failed): nothing of it runs any more.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The pods that keep a machine from being powered off: not DaemonSet, not mirror, not
/// finished. Terminating pods count: their containers still run until the kubelet stops them.
pub fn pods_blocking_power_off(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|p| !is_daemonset_pod(p) && !is_mirror_pod(p) && !is_finished(p))
        .collect()
}

/// How long past its grace period a terminating pod is still waited for; CA's
/// `PodLongTerminatingExtraThreshold` (`utils/drain/drain.go`).
pub const LONG_TERMINATING_EXTRA: SignedDuration = SignedDuration::from_secs(30);
/// The grace period of a pod that sets none (`DefaultTerminationGracePeriodSeconds`).
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Whether `pod` was deleted longer ago than its termination grace period plus
/// [`LONG_TERMINATING_EXTRA`] at `now`: CA's `IsPodLongTerminating` (`utils/drain/drain.go`),
/// which its drainability rule `simulator/drainability/rules/longterminating` skips. Its kubelet
/// is stuck or gone; waiting longer keeps the machine on for nothing.
pub fn is_long_terminating(pod: &Pod, now: Timestamp) -> bool {
    let Some(deleted) = pod.metadata.deletion_timestamp.as_ref() else {
        return false;
    };
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    let until = deleted
        .0
        .saturating_add(SignedDuration::from_secs(grace.max(0)))
        .and_then(|t| t.saturating_add(LONG_TERMINATING_EXTRA))
        .unwrap_or(deleted.0);
    until < now
}

/// [`pods_blocking_power_off`] at `now`, leaving out what CA's own drain leaves out as well:
/// DaemonSet and mirror pods (`core/scaledown/actuation/drain.go`, `podsToEvict`), finished pods
/// (`simulator/drainability/rules/terminal`) and long-terminating pods
/// ([`is_long_terminating`]).
pub fn pods_blocking_power_off_at(pods: &[Pod], now: Timestamp) -> Vec<&Pod> {
    pods_blocking_power_off(pods)
        .into_iter()
        .filter(|p| !is_long_terminating(p, now))
        .collect()
}

/// `namespace/name` of a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    pub fn of(pod: &Pod) -> PodRef {
        PodRef {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod whose eviction was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub pod: PodRef,
    /// The PodDisruptionBudgets that refused it (names, in the pod's namespace).
    pub budgets: Vec<String>,
    /// What the API server said, e.g. "The disruption budget web needs 2 healthy pods and has
    /// 2 currently".
    pub reason: String,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.pod)?;
        if !self.budgets.is_empty() {
            let budgets: Vec<String> = self
                .budgets
                .iter()
                .map(|b| format!("{}/{b}", self.pod.namespace))
                .collect();
            write!(f, " by PodDisruptionBudget {}", budgets.join(", "))?;
        }
        write!(f, " ({})", self.reason)
    }
}

/// Where a drain stands after one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainProgress {
    /// When the drain started (recorded on the Node).
    pub started: Timestamp,
    /// When it gives up.
    pub deadline: Timestamp,
    /// Pods still on the Node that keep it from powering off (terminating ones included).
    pub remaining: Vec<PodRef>,
    /// Evictions this pass issued.
    pub evicted: Vec<PodRef>,
    /// Pods whose eviction was refused, and by what.
    pub blocked_by: Vec<Blocked>,
}

impl fmt::Display for DrainProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.remaining.iter().map(PodRef::to_string).collect();
        write!(
            f,
            "{} pod(s) remain ({})",
            self.remaining.len(),
            names.join(", ")
        )?;
        if !self.blocked_by.is_empty() {
            let blocked: Vec<String> = self.blocked_by.iter().map(Blocked::to_string).collect();
            write!(f, "; eviction refused for {}", blocked.join("; "))?;
        }
        Ok(())
    }
}

/// What one [`drain`] pass found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// No pod keeps the machine from powering off.
    Drained,
    /// Evictions issued or refused; call again after [`DRAIN_RECHECK`].
    Draining(DrainProgress),
    /// Past the deadline with pods left: nothing more is evicted; stop, report why (status and
    /// an Event, from the Display text) and leave the machine on.
    TimedOut(DrainProgress),
    /// No Node object: nothing to cordon, and its pods cannot stop gracefully without a kubelet.
    NodeGone,
}

impl DrainOutcome {
    /// For the lifecycle core's `Observed::pods_present`.
    pub fn pods_present(&self) -> bool {
        matches!(self, DrainOutcome::Draining(_) | DrainOutcome::TimedOut(_))
    }
}

impl fmt::Display for DrainOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainOutcome::Drained => f.write_str("drained: no pods left that block power-off"),
            DrainOutcome::Draining(p) => write!(f, "draining since {}: {p}", p.started),
            DrainOutcome::TimedOut(p) => write!(
                f,
                "drain did not finish by {} (started {}): {p}; the machine stays on. Let the \
                 budgets allow a disruption or move the pods, then set spec.powerState off again",
                p.deadline, p.started
            ),
            DrainOutcome::NodeGone => f.write_str("no Node object: nothing to drain"),
        }
    }
}

/// Settings of one [`drain`] pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainOptions {
    /// The reconcile's clock reading.
    pub now: Timestamp,
    /// From the drain's start until it gives up.
    pub timeout: SignedDuration,
}

impl DrainOptions {
    pub fn new(now: Timestamp) -> DrainOptions {
        DrainOptions {
            now,
            timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    pub fn timeout(mut self, timeout: SignedDuration) -> DrainOptions {
        self.timeout = timeout;
        self
    }
}

/// Why a drain pass could not run (the API server refused or failed); retried on the next
/// reconcile. A PodDisruptionBudget refusing an eviction is not an error: see
/// [`DrainOutcome::Draining`].
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("cordoning before the drain: {0}")]
    Cordon(#[from] NodeSideError),
    #[error("Kubernetes Node {node}: listing its pods failed: {source}")]
    ListPods {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "pod {pod}: not allowed to evict it ({message}); grant `create` on pods/eviction to the \
         operator's ServiceAccount"
    )]
    Forbidden { pod: PodRef, message: String },
    #[error("pod {pod}: the eviction failed: {source}")]
    Evict {
        pod: PodRef,
        #[source]
        source: kube::Error,
    },
}

/// The client drains run with. kube's default client retries a 429 answer up to 15 times, with
/// a backoff growing to minutes (`kube::Config::default_retry`); from the Eviction API a 429 is
/// a PodDisruptionBudget refusing, which a pass must report at once, not sleep on.
#[derive(Clone)]
pub struct DrainClient {
    client: Client,
}

impl DrainClient {
    /// A client from `config` with kube's retry of 429/503/504 turned off (a failed pass is
    /// retried on the next reconcile anyway).
    pub fn new(mut config: kube::Config) -> Result<DrainClient, kube::Error> {
        config.default_retry = false;
        Ok(DrainClient {
            client: Client::try_from(config)?,
        })
    }

    /// A drain client over `client` as it is (unit tests, over a fake API server).
    #[cfg(test)]
    pub(crate) fn from_client(client: Client) -> DrainClient {
        DrainClient { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// When the drain of `node` started, from its [`DRAIN_STARTED`] record.
pub fn drain_started(node: &KubeNode) -> Option<Timestamp> {
    node.annotations()
        .get(DRAIN_STARTED)
        .and_then(|v| v.parse().ok())
}

/// Cordon `node` (`on`: marks it unschedulable, recorded as ours unless someone cordoned it
/// before) or undo a cancelled power-off (`!on`: our cordon, the drain record and CA's two
/// taints go; see `NodeEdit::uncordon`). Returns the Node as written; `None` if it does not exist.
pub async fn cordon(
    client: &Client,
    node: &str,
    on: bool,
) -> Result<Option<KubeNode>, NodeSideError> {
    super::update_node(client, node, |n| super::cordon_change(n, on)).await
}

/// One drain pass over Node `node_name`: cordon (recording the start), then evict each pod that
/// blocks power-off and is not terminating yet. Past the timeout nothing is evicted: evictions
/// are only tried as dry runs, to report what refuses them. See the module docs.
pub async fn drain(
    client: &DrainClient,
    node_name: &str,
    opts: &DrainOptions,
) -> Result<DrainOutcome, DrainError> {
    let client = &client.client;
    let now = opts.now;
    let node = super::update_node(client, node_name, |n| {
        NodeEdit::new(n).cordon().drain_started(now).change()
    })
    .await?;
    let Some(node) = node else {
        return Ok(DrainOutcome::NodeGone);
    };
    let started = drain_started(&node).unwrap_or(now);
    let deadline = started.saturating_add(opts.timeout).unwrap_or(started);
    let timed_out = now >= deadline;

    let lp = ListParams::default().fields(&format!("spec.nodeName={node_name}"));
    let pods = Api::<Pod>::all(client.clone())
        .list(&lp)
        .await
        .map_err(|source| DrainError::ListPods {
            node: node_name.to_owned(),
            source,
        })?
        .items;

    let mut progress = DrainProgress {
        started,
        deadline,
        remaining: Vec::new(),
        evicted: Vec::new(),
        blocked_by: Vec::new(),
    };
    let mut budgets = BudgetCache::default();
    for pod in pods_blocking_power_off_at(&pods, now) {
        let at = PodRef::of(pod);
        if pod.metadata.deletion_timestamp.is_some() {
            progress.remaining.push(at);
            continue;
        }
        match evict(client, &at, timed_out).await? {
            Eviction::Gone => continue,
            Eviction::Issued => progress.evicted.push(at.clone()),
            Eviction::NotTried => {}
            Eviction::Refused {
                budgets: named,
                reason,
            } => {
                let names = if named.is_empty() {
                    budgets.matching(client, pod).await
                } else {
                    named
                };
                progress.blocked_by.push(Blocked {
                    pod: at.clone(),
                    budgets: names,
                    reason,
                });
            }
        }
        progress.remaining.push(at);
    }
    Ok(if progress.remaining.is_empty() {
        DrainOutcome::Drained
    } else if timed_out {
        DrainOutcome::TimedOut(progress)
    } else {
        DrainOutcome::Draining(progress)
    })
}

enum Eviction {
    Issued,
    /// A dry run that would have been allowed: the drain gave up before this pod.
    NotTried,
    Gone,
    Refused {
        budgets: Vec<String>,
        reason: String,
    },
}

/// Evicts `pod` (only as a dry run when `dry_run`: the API server checks the budgets and acts on
/// nothing).
async fn evict(client: &Client, pod: &PodRef, dry_run: bool) -> Result<Eviction, DrainError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let params = EvictParams {
        delete_options: None,
        post_options: PostParams {
            dry_run,
            ..PostParams::default()
        },
    };
    match api.evict(&pod.name, &params).await {
        Ok(_) if dry_run => Ok(Eviction::NotTried),
        Ok(_) => Ok(Eviction::Issued),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Eviction::Gone),
        // 429: a budget allows no disruption now (or its status is not computed yet). 500 with a
        // budget cause: the pod matches several budgets, which the Eviction API refuses.
        Err(kube::Error::Api(s)) if s.code == 429 || (s.code == 500 && has_budget_cause(&s)) => {
            Ok(Eviction::Refused {
                budgets: budget_names(&s),
                reason: refusal_reason(&s),
            })
        }
        Err(kube::Error::Api(s)) if s.code == 403 => Err(DrainError::Forbidden {
            pod: pod.clone(),
            message: s.message.clone(),
        }),
        Err(source) => Err(DrainError::Evict {
            pod: pod.clone(),
            source,
        }),
    }
}

fn has_budget_cause(s: &kube::core::Status) -> bool {
    s.message.contains("PodDisruptionBudget")
        || causes(s).any(|(t, _)| t == DISRUPTION_BUDGET_CAUSE)
}

fn causes(s: &kube::core::Status) -> impl Iterator<Item = (&str, &str)> {
    s.details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| (c.reason.as_str(), c.message.as_str()))
}

/// Budget names from the causes the Eviction API gives ("The disruption budget NAME needs 2
/// healthy pods and has 2 currently", "The disruption budget NAME is still being processed by
/// the server.").
fn budget_names(s: &kube::core::Status) -> Vec<String> {
    let mut names: Vec<String> = causes(s)
        .filter(|(t, _)| *t == DISRUPTION_BUDGET_CAUSE)
        .filter_map(|(_, m)| m.strip_prefix("The disruption budget "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn refusal_reason(s: &kube::core::Status) -> String {
    let mut parts: Vec<&str> = causes(s)
        .filter(|(t, _)| *t == DISRUPTION_BUDGET_CAUSE)
        .map(|(_, m)| m)
        .collect();
    if parts.is_empty() {
        parts.push(s.message.as_str());
    }
    parts.join("; ")
}

/// The budgets of each namespace, read once per pass and only when a refusal does not name them.
#[derive(Default)]
struct BudgetCache {
    by_namespace: BTreeMap<String, Vec<PodDisruptionBudget>>,
}

impl BudgetCache {
    /// Names of the budgets whose selector matches `pod` (as the Eviction API matches them: an
    /// empty selector matches every pod, a missing one none). Empty if they cannot be read: the
    /// refusal's own reason is still reported.
    async fn matching(&mut self, client: &Client, pod: &Pod) -> Vec<String> {
        let namespace = pod.namespace().unwrap_or_default();
        if !self.by_namespace.contains_key(&namespace) {
            let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &namespace);
            let items = api
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            self.by_namespace.insert(namespace.clone(), items);
        }
        let labels = pod.labels();
        let mut names: Vec<String> = self
            .by_namespace
            .get(&namespace)
            .into_iter()
            .flatten()
            .filter(|pdb| budget_selects(pdb, labels))
            .map(|pdb| pdb.name_any())
            .collect();
        names.sort();
        names
    }
}

fn budget_selects(pdb: &PodDisruptionBudget, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = pdb.spec.as_ref().and_then(|s| s.selector.clone()) else {
        return false;
    };
    Selector::try_from(selector).is_ok_and(|s| s.matches(labels))
}

#[cfg(test)]
mod tests;
