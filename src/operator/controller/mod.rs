//! The operator's controllers: the edge of the lifecycle core. They read the world from the
//! operator's watch cache (`operator::cache`, one watch per kind, shared with the gRPC
//! provider), call the pure
//! core (`operator::machine::reconcile`) and carry out the effects it returns. No decision is
//! made here that the core could make.
//!
//! Triggers: every change the shared watches see (a Node CR, its Kubernetes Node, its power Job,
//! its Group) queues the machines it concerns; the core's `requeue_at` (deadlines, retries, the
//! end of a NotReady grace) queues it again later. There is no periodic resync: an idle machine
//! costs no API call.
#[cfg(test)]
pub(crate) mod fake_api;
pub mod group;
pub mod machine;
pub mod spares;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt as _};
use tokio::sync::broadcast;

use crate::lock;
use crate::operator::api::{Group, Machine};
use crate::operator::cache::{self, Cache, Change};
use crate::operator::leader::Leadership;
use crate::operator::provider::cluster::ClusterSource;

pub use crate::operator::FIELD_MANAGER;
/// Finalizer that keeps a Node CR until its Kubernetes Node is left clean.
pub const FINALIZER: &str = "infra.homecluster.dev/cleanup";

/// How long a Group's reconcile waits for more member changes before writing its status.
const GROUP_DEBOUNCE: Duration = Duration::from_secs(2);

/// Settings of the controllers (flags of `run-operator`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a drain may try before the power-off is refused and the machine left on.
    pub drain_timeout: Duration,
    /// How soon a machine is reconciled again after a power driver's `start` or `check` failed
    /// transiently (a BMC or the API server not answering): no watch event would bring it back.
    /// A drain in progress rechecks on its own interval.
    pub poll_interval: Duration,
    /// Reconciles running at once (different machines; one machine never twice at once).
    pub concurrency: u16,
    /// Backoff, retries and the NotReady grace; each machine's `bootTimeout` /
    /// `shutdownTimeout` override the timeouts in it.
    pub policy: crate::operator::machine::Policy,
    /// ServiceAccount of the pods the operator creates (power Jobs, node agents, Wake-on-LAN
    /// relays) when the Node CR names none; `None` leaves the namespace's `default`.
    pub pod_service_account: Option<String>,
    /// What Node CRs may ask the operator for (images, ServiceAccounts, privilege, which
    /// Kubernetes Nodes to adopt).
    pub trust: crate::operator::trust::TrustPolicy,
    /// The latest meter readings (`spec.meter`), which the energy accounting prefers over the
    /// `spec.watts` model; a meter that starts or stops answering queues its machine.
    pub meters: crate::operator::meter::Readings,
    /// How often a running machine's `status.energy` is written at most (transitions write
    /// it at once; a machine that is off and unchanged is never written).
    pub energy_write_interval: Duration,
    /// The tariff of machines whose Group sets no `electricity`.
    pub electricity: Option<crate::operator::api::Electricity>,
    /// The `--max-node-provision-time` the Cluster Autoscaler runs with, for Groups that set no
    /// `maxNodeProvisionTime`: the boot checks in Group status compare against it.
    pub max_node_provision_time: jiff::SignedDuration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            drain_timeout: crate::operator::node::drain::DEFAULT_DRAIN_TIMEOUT.unsigned_abs(),
            poll_interval: Duration::from_secs(5),
            concurrency: 16,
            policy: crate::operator::machine::Policy::default(),
            pod_service_account: None,
            trust: crate::operator::trust::TrustPolicy::default(),
            meters: crate::operator::meter::Readings::default(),
            energy_write_interval: Duration::from_secs(15 * 60),
            electricity: None,
            max_node_provision_time:
                crate::operator::provider::inventory::CA_DEFAULT_MAX_NODE_PROVISION,
        }
    }
}

/// Everything a reconcile needs: the API client, the shared caches, the Event recorder.
pub struct Context {
    pub client: Client,
    /// For evictions: a client that does not retry 429s (a PodDisruptionBudget refusing).
    pub drain: crate::operator::node::drain::DrainClient,
    /// The shared watch cache (Group CRs, Node CRs, Kubernetes Nodes).
    pub cache: Arc<Cache>,
    /// The CA provider's inventory over the same cache: the group controller reports what the
    /// provider answers CA (warnings in the Group's status).
    pub provider: Arc<ClusterSource>,
    pub jobs: Store<Job>,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Option<crate::operator::metrics::Metrics>,
    /// Whether this replica may act, read right before each physical action (see
    /// [`Context::ensure_leader`]).
    pub leadership: Leadership,
    /// Kubernetes Node name by providerID, kept current by the trigger task before it queues a
    /// machine, so a reconcile never misses the Node whose event woke it.
    node_index: Mutex<HashMap<String, String>>,
    /// Per Node CR (`namespace/name`), the resourceVersions its last reconcile's writes replaced
    /// (the operation recorded before acting, then the status): a cache still showing one of
    /// them has not seen those writes yet (see `machine::reconcile`).
    superseded: Mutex<HashMap<String, Vec<String>>>,
    /// When this operator process started: energy intervals before it were not watched (a gap
    /// is an estimate, see `operator::energy::account`).
    pub started: jiff::Timestamp,
    /// Per Node CR, the meter's cumulative counter (Wh) and when it was read, at the last
    /// energy accounting: the next one uses the counter's increase.
    pub(crate) meter_marks: Mutex<HashMap<String, (f64, jiff::Timestamp)>>,
}

impl Context {
    pub fn new(
        provider: Arc<ClusterSource>,
        drain: crate::operator::node::drain::DrainClient,
        jobs: Store<Job>,
        settings: Settings,
        metrics: Option<crate::operator::metrics::Metrics>,
    ) -> Context {
        let cache = provider.cache().clone();
        let client = cache.client().clone();
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            drain,
            cache,
            provider,
            jobs,
            settings,
            metrics,
            leadership: Leadership::always(),
            node_index: Mutex::new(HashMap::new()),
            superseded: Mutex::new(HashMap::new()),
            started: jiff::Timestamp::now(),
            meter_marks: Mutex::new(HashMap::new()),
        }
    }

    /// Acts only while `leadership` leads (the default: always).
    pub fn with_leadership(mut self, leadership: Leadership) -> Context {
        self.leadership = leadership;
        self
    }

    /// Fails unless this replica leads now, by the clock against the Lease's held-until time:
    /// called right before every physical action (a power driver's start or cancel, a cordon,
    /// a drain, a Node deleted), so a replica paused past its Lease acts no more once it runs
    /// again, even before its fence task has lowered the flag.
    pub(crate) fn ensure_leader(&self) -> Result<(), Error> {
        if self.leadership.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// This operator wrote the object `key` over `resource_version` (one more write of the
    /// current reconcile).
    pub(crate) fn supersede(&self, key: &str, resource_version: Option<String>) {
        /// A reconcile writes the Node CR at most three times (operation, adoption, status);
        /// a few more are kept in case one reconcile's writes were never seen by the next.
        const KEPT: usize = 8;
        let Some(rv) = resource_version else { return };
        let mut map = lock(&self.superseded);
        let written = map.entry(key.to_owned()).or_default();
        if written.len() >= KEPT {
            written.remove(0);
        }
        written.push(rv);
    }

    /// Forgets the writes over `key`: its cache caught up with them, or it is gone.
    pub(crate) fn forget_writes(&self, key: &str) {
        lock(&self.superseded).remove(key);
    }

    /// Whether `resource_version` of `key` is one this operator already wrote over.
    pub(crate) fn is_superseded(&self, key: &str, resource_version: Option<&str>) -> bool {
        resource_version.is_some_and(|rv| {
            lock(&self.superseded)
                .get(key)
                .is_some_and(|s| s.iter().any(|w| w == rv))
        })
    }

    /// The name of the Kubernetes Node that carries `provider_id`, if one is cached.
    pub fn node_by_provider_id(&self, provider_id: &str) -> Option<String> {
        lock(&self.node_index).get(provider_id).cloned()
    }

    fn index_node(&self, name: &str, provider_id: Option<&str>) {
        let mut idx = lock(&self.node_index);
        let exists = self.cache.nodes().get(&ObjectRef::new(name)).is_some();
        idx.retain(|_, n| n != name);
        if let (true, Some(p)) = (exists, provider_id.filter(|p| !p.is_empty())) {
            idx.insert(p.to_owned(), name.to_owned());
        }
    }

    fn reindex_nodes(&self) {
        let mut idx = lock(&self.node_index);
        idx.clear();
        for n in self.cache.nodes().state() {
            if let Some(p) = n.provider_id() {
                idx.insert(p.to_owned(), n.name().to_owned());
            }
        }
    }
}

/// The stores of a [`Context::test`], for the test to fill.
#[cfg(test)]
pub(crate) struct TestStores {
    cache: cache::FakeWriters,
    jobs: kube::runtime::reflector::store::Writer<Job>,
}

#[cfg(test)]
impl TestStores {
    fn apply<K>(writer: &mut kube::runtime::reflector::store::Writer<K>, object: K)
    where
        K: kube::runtime::reflector::Lookup + Clone + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(object));
    }

    pub(crate) fn machine(&mut self, m: Machine) {
        Self::apply(&mut self.cache.machines, m);
    }

    pub(crate) fn node(&mut self, n: k8s_openapi::api::core::v1::Node) {
        Self::apply(
            &mut self.cache.nodes,
            crate::operator::kube_node::KubeNode::from(n),
        );
    }

    pub(crate) fn group(&mut self, g: Group) {
        Self::apply(&mut self.cache.groups, g);
    }

    pub(crate) fn job(&mut self, j: Job) {
        Self::apply(&mut self.jobs, j);
    }
}

#[cfg(test)]
impl Context {
    /// A context for unit tests of the reconcilers: its client (the drain's too) talks to a
    /// fake API server (see `fake_api`), its caches watch nothing and are filled through the
    /// stores returned, its metrics are on. Scope: namespace `lab`. Needs a tokio runtime (the
    /// provider's inventory tasks).
    pub(crate) fn test() -> (Arc<Context>, fake_api::ApiServer, TestStores) {
        let (client, server) = fake_api::client();
        let (cache, writers) =
            Cache::fake(client.clone(), cache::Scope::Namespace("lab".to_owned()));
        let provider = Arc::new(ClusterSource::over(Arc::new(cache)));
        let (jobs, job_writer) = kube::runtime::reflector::store();
        let ctx = Context::new(
            provider,
            crate::operator::node::drain::DrainClient::from_client(client),
            jobs,
            Settings::default(),
            Some(crate::operator::metrics::Metrics::new()),
        );
        let stores = TestStores {
            cache: writers,
            jobs: job_writer,
        };
        (Arc::new(ctx), server, stores)
    }
}

/// Why a reconcile failed; it is retried with a short backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    NodeSide(String),
    #[error("not the leader any more: the Lease this replica held has run out")]
    NotLeader,
    #[error(transparent)]
    NodeWrite(#[from] crate::operator::node::NodeSideError),
    #[error("{0}")]
    Power(#[from] crate::operator::power::PowerError),
    #[error("serializing {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }

    /// A 409 from a write guarded by resourceVersion: our view was stale, look again at once.
    fn is_conflict(&self) -> bool {
        match self {
            Error::Kube {
                source: kube::Error::Api(s),
                ..
            } => s.code == 409,
            Error::NodeWrite(e) => e.is_conflict(),
            _ => false,
        }
    }
}

/// The `metadata.generation` of each Group as the trigger task last saw it. A machine's reconcile
/// reads only its Group's spec (see `machine::policy`), so a Group change whose generation did
/// not move (a status write, typically the group controller's own) concerns none of its members:
/// without this, every Group status write would reconcile its 40 members for nothing.
type GroupGenerations = HashMap<ObjectRef<Group>, Option<i64>>;

/// The machines and groups a change concerns.
fn affected(
    ctx: &Context,
    groups_seen: &mut GroupGenerations,
    change: &Change,
) -> (Vec<ObjectRef<Machine>>, Vec<ObjectRef<Group>>) {
    let machines = ctx.cache.machines();
    match change {
        Change::Machine { namespace, name } => {
            let m = ObjectRef::new(name).within(namespace);
            let group = machines
                .get(&m)
                .and_then(|mc| mc.group().map(|g| ObjectRef::new(g).within(namespace)));
            (vec![m], group.into_iter().collect())
        }
        Change::Group { namespace, name } => {
            let group = ObjectRef::new(name).within(namespace);
            let generation = ctx
                .cache
                .groups()
                .get(&group)
                .map(|g| g.metadata.generation);
            let before = match generation {
                Some(g) => groups_seen.insert(group.clone(), g),
                None => groups_seen.remove(&group),
            };
            if generation.is_some() && before == generation {
                return (Vec::new(), vec![group]);
            }
            let members = machines
                .state()
                .into_iter()
                .filter(|m| m.namespace().as_deref() == Some(namespace) && m.group() == Some(name))
                .map(|m| ObjectRef::from_obj(&*m))
                .collect();
            (members, vec![group])
        }
        Change::Node { name, provider_id } => {
            ctx.index_node(name, provider_id.as_deref());
            let members = machines
                .state()
                .into_iter()
                .filter(|m| {
                    m.node_name() == Some(name.as_str())
                        || provider_id
                            .as_deref()
                            .is_some_and(|p| m.expected_provider_id() == p)
                })
                .map(|m| ObjectRef::from_obj(&*m))
                .collect();
            (members, Vec::new())
        }
        Change::Resync => {
            ctx.reindex_nodes();
            *groups_seen = ctx
                .cache
                .groups()
                .state()
                .iter()
                .map(|g| (ObjectRef::from_obj(&**g), g.metadata.generation))
                .collect();
            let all = machines
                .state()
                .into_iter()
                .map(|m| ObjectRef::from_obj(&*m))
                .collect();
            let groups = ctx
                .cache
                .groups()
                .state()
                .into_iter()
                .map(|g| ObjectRef::from_obj(&*g))
                .collect();
            (all, groups)
        }
    }
}

/// Turns the shared caches' change feed into the two controllers' queues.
fn queues(
    ctx: Arc<Context>,
    mut rx: broadcast::Receiver<Change>,
) -> (
    impl Stream<Item = ObjectRef<Machine>> + Send + 'static,
    impl Stream<Item = ObjectRef<Group>> + Send + 'static,
) {
    let (mtx, mrx) = futures::channel::mpsc::unbounded();
    let (gtx, grx) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        // Start from everything: the caches synced before the controllers started.
        let mut next = Some(Change::Resync);
        let mut groups_seen = GroupGenerations::new();
        loop {
            let change = match next.take() {
                Some(c) => c,
                None => match rx.recv().await {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(missed = n, "change feed lagged; looking at every machine");
                        Change::Resync
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let (ms, gs) = affected(&ctx, &mut groups_seen, &change);
            for m in ms {
                if mtx.unbounded_send(m).is_err() {
                    return;
                }
            }
            for g in gs {
                if gtx.unbounded_send(g).is_err() {
                    return;
                }
            }
        }
    });
    (mrx, grx)
}

/// Runs the machine and group controllers until `shutdown` resolves (leadership lost or
/// SIGTERM). The provider's cache must have synced.
pub async fn run(
    provider: Arc<ClusterSource>,
    drain: crate::operator::node::drain::DrainClient,
    settings: Settings,
    metrics: Option<crate::operator::metrics::Metrics>,
    leadership: Leadership,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let cache = provider.cache().clone();
    let (jobs, job_triggers) = cache::jobs::watch(cache.client().clone(), cache.scope());
    let changes = cache.changes();
    let ctx = Arc::new(
        Context::new(provider, drain, jobs, settings, metrics).with_leadership(leadership),
    );
    let concurrency = ctx.settings.concurrency;
    let (machine_queue, group_queue) = queues(ctx.clone(), changes);
    let meter_triggers = ctx
        .settings
        .meters
        .subscribe()
        .filter_map(|key| async move {
            let (ns, name) = key.split_once('/')?;
            Some(ObjectRef::<Machine>::new(name).within(ns))
        });
    let machine_queue = futures::stream::select(
        futures::stream::select(machine_queue, job_triggers),
        meter_triggers,
    )
    .map(Ok::<_, std::convert::Infallible>);
    let group_queue = group_queue.map(Ok::<_, std::convert::Infallible>);

    let machines = controller::applier(
        |m, ctx| Box::pin(machine::reconcile(m, ctx)),
        machine::error_policy,
        ctx.clone(),
        cache.machines().clone(),
        machine_queue,
        controller::Config::default().concurrency(concurrency),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "machine controller");
        }
    });
    let groups = controller::applier(
        |g, ctx| Box::pin(group::reconcile(g, ctx)),
        group::error_policy,
        ctx.clone(),
        cache.groups().clone(),
        group_queue,
        // A Group's status sums its members: while many of them change at once (a first start,
        // a scale-up), write it once they settled rather than once per member change.
        controller::Config::default()
            .concurrency(2)
            .debounce(GROUP_DEBOUNCE),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "group controller");
        }
    });
    let spares = spares::run(ctx.clone(), cache.changes());
    tokio::select! {
        _ = machines => {}
        _ = groups => {}
        () = spares => {}
        _ = shutdown => {}
    }
}

/// Requeue after `d`, or wait for the next change when there is nothing to wait for.
pub(crate) fn requeue(d: Option<Duration>) -> Action {
    match d {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Kubernetes Node's change queues the machine it belongs to (by `kubernetesNodeName`
    /// here), and no other.
    #[tokio::test]
    async fn a_node_change_queues_the_machine_it_belongs_to() {
        let (ctx, _server, mut stores) = Context::test();
        for (name, node) in [("m1", "n1"), ("m2", "n2")] {
            let mut spec =
                crate::operator::api::MachineSpec::new(crate::operator::machine::PowerState::On);
            spec.kubernetes_node_name = Some(node.into());
            let mut m = Machine::new(name, spec);
            m.metadata.namespace = Some("lab".into());
            stores.machine(m);
        }
        let change = Change::Node {
            name: "n1".into(),
            provider_id: None,
        };
        let (machines, groups) = affected(&ctx, &mut GroupGenerations::new(), &change);
        assert_eq!(machines, [ObjectRef::new("m1").within("lab")]);
        assert!(groups.is_empty());
    }

    /// A Node that changed under a write is retried at once (the machine's error policy), not
    /// logged as a failed reconcile: it happens on every first registration, when the kubelet
    /// updates the Node while we label it.
    #[test]
    fn a_node_write_conflict_counts_as_a_conflict() {
        let conflict = Error::from(crate::operator::node::NodeSideError::Conflict {
            node: "desktop-0".into(),
            what: "labels".into(),
        });
        assert!(conflict.is_conflict());
        assert!(!Error::NodeSide("drain failed".into()).is_conflict());
    }
}
