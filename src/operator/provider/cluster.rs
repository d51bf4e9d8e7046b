//! The provider's inventory source on a live cluster: it reads the operator's watch cache
//! ([`Cache`]: Group CRs, Node CRs, Kubernetes Nodes), keeps the inventory the pure core answers
//! from, and writes desired power to the Node CRs' `spec.powerState` with merge patches guarded
//! by resourceVersion preconditions (with the `infra.homecluster.dev/power-on-failed-at`
//! annotation in the same patch when CA gave up on a power-on). Group ids are names for one
//! namespace, `<namespace>/<name>` for all.
//!
//! Why it is shaped like this:
//! - Read RPCs never build anything: they get the newest inventory (a pointer clone). A
//!   background task rebuilds it after the cache reports changes (bumping this source's
//!   generation counter), coalesced to at most one build per [`MIN_REBUILD_INTERVAL`]: building
//!   2,000 machines costs milliseconds.
//! - A rebuild looks at what changed, not at everything: the cache's change feed names the Node
//!   CRs that changed, and [`InventoryBuilder::update`] moves only those into the last build. A
//!   re-list, a lagging feed, or more changes than [`DIRTY_LIMIT`] reads everything again.
//! - A write is visible in the inventory when it returns: the patched object returned by the API
//!   server overrides the cached one until the watch delivers that generation (or a newer one),
//!   and the inventory is rebuilt before returning, so `TargetSize` agrees with `IncreaseSize`
//!   before the watch event arrives.
//! - Every write runs under one deadline below CA's 5 s `grpc_timeout`.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::operator::kube_node::KubeNode;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt as _};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::lock;
use crate::operator::api::{Group, Machine};
use crate::operator::cache::trim::strip_custom_resource;
use crate::operator::cache::{Cache, Change, Scope, SyncError};
use crate::operator::machine::PowerState;
use crate::operator::provider::inventory::{
    GroupIds, Inventory, POWER_ON_FAILED_ANNOTATION, PowerChange,
};
use crate::operator::provider::rebuild::{InventoryBuilder, name_of, namespace_of};
use crate::operator::provider::service::{InventorySource, PersistError};

/// Field manager of our `spec.powerState` writes (shows in `managedFields`).
pub const FIELD_MANAGER: &str = "kubectl-homelab-provider";

/// Default deadline of one desired-power write: inside the service's 3 s persist bound and CA's
/// 5 s `grpc_timeout`, so the caller learns which writes landed rather than hitting its own
/// deadline.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_millis(2500);

/// How often a write retries after a conflict caused by someone else's unrelated change
/// (typically the operator writing status) before giving up with `Conflict`.
const CONFLICT_RETRIES: usize = 3;

/// Why a desired-power write failed. The gRPC layer maps these to status codes.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The API server did not answer in time or is unreachable: CA should retry later.
    #[error(
        "the API server did not confirm spec.powerState of {done} of {total} Node CRs within \
         {timeout:?}; the ones confirmed stay written"
    )]
    Timeout {
        done: usize,
        total: usize,
        timeout: Duration,
    },
    #[error("Node {namespace}/{name}: the API server is unavailable: {source}")]
    Unavailable {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Someone else changed the machine's desired power since our view was taken: the decision
    /// was made on stale data, so CA must retry on its next loop.
    #[error("Node {namespace}/{name}: {detail}; retry with a fresh view")]
    Conflict {
        namespace: String,
        name: String,
        detail: String,
    },
    #[error("Node {namespace}/{name} no longer exists")]
    NotFound { namespace: String, name: String },
    #[error(
        "Node {namespace}/{name}: not allowed to patch it ({message}); grant `patch` on \
         nodes.infra.homecluster.dev to the provider's ServiceAccount"
    )]
    Forbidden {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("Node {namespace}/{name}: the API server rejected spec.powerState={to}: {message}")]
    Rejected {
        namespace: String,
        name: String,
        to: &'static str,
        message: String,
    },
}

impl WriteError {
    /// True when retrying later can succeed (timeouts, unavailability, conflicts).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            WriteError::Timeout { .. }
                | WriteError::Unavailable { .. }
                | WriteError::Conflict { .. }
                | WriteError::NotFound { .. }
        )
    }
}

/// Everything the provider core needs from the cluster, as shared pointers into the stores.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    pub groups: Vec<Arc<Group>>,
    pub machines: Vec<Arc<Machine>>,
    pub nodes: Vec<Arc<KubeNode>>,
    /// Bumped by every watch event and every confirmed write: equal generations, equal objects.
    pub generation: u64,
}

/// Keeps the source's tasks alive as long as the source; aborts them when it is dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

type MachineKey = (String, String);

/// The inventory and what it is built from; shared with the background tasks.
struct State {
    cache: Arc<Cache>,
    /// Moves with every change the cache reports (after it is noted in `dirty`) and every
    /// confirmed write: equal generations, equal objects.
    generation: watch::Sender<u64>,
    /// Objects returned by our own patches, newer than the store until the watch catches up.
    written: Mutex<HashMap<MachineKey, Arc<Machine>>>,
    /// The newest inventory built and the generation it was built at.
    inventory: Mutex<Option<(u64, Arc<Inventory>)>>,
    /// Builds each inventory on the last one (group ids: names in one namespace,
    /// `<namespace>/<name>` across all, stable either way). Rebuilds take turns on it.
    builder: Mutex<InventoryBuilder>,
    /// What changed since the last rebuild, for it to look at only that.
    dirty: Mutex<Dirty>,
    /// Since when the longest-waiting unschedulable pod has been unschedulable, as last read
    /// by [`follow_unschedulable_pods`]; every inventory built carries it.
    unschedulable_since: Mutex<Option<jiff::Timestamp>>,
}

/// The objects changed since the last inventory build: Node CRs by key, whether any Kubernetes
/// Node did, or everything (a watch listed again, or more changes than a full build costs).
/// Groups are few and always read whole.
#[derive(Debug, Default)]
struct Dirty {
    all: bool,
    machines: HashSet<MachineKey>,
    nodes: bool,
}

/// Past this many changed Node CRs a rebuild reads all of them anyway.
const DIRTY_LIMIT: usize = 128;

impl Dirty {
    fn note(&mut self, change: &Change) {
        match change {
            Change::Machine { namespace, name } => self.machine(namespace, name),
            Change::Node { .. } => self.nodes = true,
            Change::Group { .. } => {}
            Change::Resync => self.all = true,
        }
    }

    fn machine(&mut self, namespace: &str, name: &str) {
        if self.all {
            return;
        }
        if self.machines.len() >= DIRTY_LIMIT {
            self.all = true;
            self.machines = HashSet::new();
            return;
        }
        self.machines
            .insert((namespace.to_owned(), name.to_owned()));
    }
}

/// The CA provider's view of a live cluster: the inventory over the shared [`Cache`], plus
/// desired-power writes.
pub struct ClusterSource {
    client: Client,
    state: Arc<State>,
    write_timeout: Duration,
    _tasks: Tasks,
}

/// Building the inventory of 2,000 machines from scratch takes milliseconds, far too long for a
/// read RPC (target p99 < 1 ms): it runs in the background, at most this often, and reads return
/// the newest one built. Mutations rebuild before returning, so their effect is visible at once.
const MIN_REBUILD_INTERVAL: Duration = Duration::from_millis(200);

impl std::fmt::Debug for ClusterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSource")
            .field("scope", self.scope())
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

impl ClusterSource {
    /// Starts a watch cache of its own and reads it (`serve-grpc`, tests). `run-operator`
    /// shares one cache between the provider and the controllers: [`over`](Self::over).
    pub fn start(client: Client, scope: Scope) -> Self {
        Self::over(Arc::new(Cache::start(client, scope)))
    }

    /// A source over `cache`, which may already be running and synced: the first build reads
    /// everything. Call [`wait_until_ready`](Self::wait_until_ready) before serving.
    pub fn over(cache: Arc<Cache>) -> Self {
        let (generation, _) = watch::channel(0u64);
        // Subscribed before anything else happens here: every later change is on the feed, and
        // everything earlier is covered by the first build reading everything.
        let feed = cache.changes();
        let state = Arc::new(State {
            builder: Mutex::new(InventoryBuilder::new(match cache.scope() {
                Scope::Namespace(_) => GroupIds::Name,
                Scope::AllNamespaces => GroupIds::NamespacedName,
            })),
            cache,
            generation,
            written: Mutex::new(HashMap::new()),
            inventory: Mutex::new(None),
            dirty: Mutex::new(Dirty {
                all: true,
                ..Dirty::default()
            }),
            unschedulable_since: Mutex::new(None),
        });
        let follow = tokio::spawn(follow_changes(state.clone(), feed));
        let rebuild = tokio::spawn(rebuild_on_change(state.clone()));
        let pods = tokio::spawn(follow_unschedulable_pods(state.clone()));
        ClusterSource {
            client: state.cache.client().clone(),
            state,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            _tasks: Tasks(vec![follow, rebuild, pods]),
        }
    }

    /// Judges Kubernetes Nodes under `trust` (the operator's `--adopt-node-selector`): a Node
    /// no Node CR may adopt is no machine's, so CA is told it is in no group. Default: only
    /// Nodes labelled `infra.homecluster.dev/adoptable=true`. Call before
    /// [`wait_until_ready`](Self::wait_until_ready).
    pub fn with_trust(self, trust: crate::operator::trust::TrustPolicy) -> Self {
        lock(&self.state.builder).set_trust(trust);
        lock(&self.state.dirty).all = true;
        self
    }

    /// Deadline of one [`write_desired_power`](Self::write_desired_power) call.
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    pub fn scope(&self) -> &Scope {
        self.state.cache.scope()
    }

    /// The watch cache this source reads.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.state.cache
    }

    /// Waits until all three caches hold a complete initial list, then builds the first
    /// inventory from them.
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<(), SyncError> {
        self.state.cache.wait_until_ready(timeout).await?;
        rebuild_now(&self.state).await;
        // The initial lists were read, copied into the stores and converted: most of what that
        // allocated is free again, in holes glibc keeps.
        crate::memory::release_free_memory();
        Ok(())
    }

    /// True once all three caches synced (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.state.cache.is_ready()
    }

    /// The current generation: changes whenever the objects may have changed.
    pub fn generation(&self) -> u64 {
        self.state.generation()
    }

    /// A receiver that wakes on every generation bump (for rebuild-on-change consumers).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.state.generation.subscribe()
    }

    /// The objects as of now, our own confirmed writes included.
    pub fn objects(&self) -> ClusterObjects {
        self.state.objects()
    }

    /// The newest inventory built (see [`MIN_REBUILD_INTERVAL`]); built here only the first time.
    pub fn inventory(&self) -> Arc<Inventory> {
        if let Some((_, inv)) = lock(&self.state.inventory).as_ref() {
            return inv.clone();
        }
        self.state.rebuild()
    }

    /// Writes each machine's desired power (`spec.powerState`) and returns once the API server
    /// confirmed all of them, or with the first error and the changes that did land. Writes run
    /// concurrently under one deadline. Each is guarded by a resourceVersion precondition, so a
    /// concurrent change by someone else is never overwritten blindly: after a conflict the
    /// machine is re-read, and the write repeated only if the desired power still differs.
    /// Idempotent: a machine already at the desired power is left alone and counts as applied.
    pub async fn write_desired_power(
        &self,
        changes: &[PowerChange],
    ) -> (Vec<PowerChange>, Result<(), WriteError>) {
        if changes.is_empty() {
            return (Vec::new(), Ok(()));
        }
        let applied = Mutex::new(Vec::new());
        let writes = futures::future::join_all(changes.iter().map(|c| async {
            let r = self.write_one(c).await;
            if r.is_ok() {
                lock(&applied).push(c.clone());
            }
            r
        }));
        let outcome = tokio::time::timeout(self.write_timeout, writes).await;
        // Our confirmed writes are in `written`: show them in the inventory before returning.
        self.state.bump();
        rebuild_now(&self.state).await;
        let applied = applied.into_inner().unwrap_or_else(|p| p.into_inner());
        let result = match outcome {
            Ok(results) => results
                .into_iter()
                .collect::<Result<Vec<()>, _>>()
                .map(|_| ()),
            Err(_) => Err(WriteError::Timeout {
                done: applied.len(),
                total: changes.len(),
                timeout: self.write_timeout,
            }),
        };
        (applied, result)
    }

    async fn write_one(&self, change: &PowerChange) -> Result<(), WriteError> {
        let (namespace, name) = (&change.machine.namespace, &change.machine.name);
        let api: Api<Machine> = Api::namespaced(self.client.clone(), namespace);
        let key = (namespace.clone(), name.clone());
        let mut current = self.cached_machine(&key);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let to = power_str(change.desired);
        for _ in 0..=CONFLICT_RETRIES {
            let (machine, fresh) = match current.take() {
                Some(m) => (m, false),
                None => (
                    Arc::new(api.get(name).await.map_err(|e| classify(e, change))?),
                    true,
                ),
            };
            if machine.spec.power_state == change.desired {
                if fresh {
                    return Ok(());
                }
                // The cache may be behind (on, then off again by someone else): only the
                // server's copy may declare the write unnecessary.
                continue;
            }
            let Some(rv) = machine.resource_version() else {
                // Only objects built locally lack one; read the server's copy.
                continue;
            };
            let mut metadata = serde_json::json!({ "resourceVersion": rv });
            if change.power_on_failed {
                // CA gave up on this power-on: recorded in the same write as the desired power,
                // so the two never disagree (the provider never writes status).
                metadata["annotations"] =
                    serde_json::json!({ POWER_ON_FAILED_ANNOTATION: change.at.to_string() });
            }
            let patch = serde_json::json!({
                "metadata": metadata,
                "spec": { "powerState": to },
            });
            match api.patch(name, &params, &Patch::Merge(&patch)).await {
                Ok(mut patched) => {
                    tracing::debug!(machine = %format!("{namespace}/{name}"), desired = to, "desired power written");
                    strip_custom_resource(&mut patched);
                    lock(&self.state.written).insert(key, Arc::new(patched));
                    // After the object is in place: a rebuild that takes the change finds it.
                    lock(&self.state.dirty).machine(namespace, name);
                    return Ok(());
                }
                // resourceVersion moved: usually a status write by the operator. Re-read and
                // check that the desired power is still what we decided on.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(classify(e, change)),
            }
        }
        Err(WriteError::Conflict {
            namespace: namespace.clone(),
            name: name.clone(),
            detail: format!(
                "changed concurrently {} times in a row",
                CONFLICT_RETRIES + 1
            ),
        })
    }

    fn cached_machine(&self, key: &MachineKey) -> Option<Arc<Machine>> {
        let cached = self
            .state
            .cache
            .machines()
            .get(&ObjectRef::new(&key.1).within(&key.0));
        let written = lock(&self.state.written).get(key).cloned();
        match (cached, written) {
            (Some(c), Some(w)) if generation_of(&w) > generation_of(&c) => Some(w),
            (Some(c), _) => Some(c),
            (None, _) => None,
        }
    }
}

impl State {
    fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn objects(&self) -> ClusterObjects {
        // Read the generation first: a change racing with the copy bumps it again, so a consumer
        // caching by generation rebuilds once more rather than missing the change.
        let generation = self.generation();
        let mut machines = self.cache.machines().state();
        {
            let mut written = lock(&self.written);
            if !written.is_empty() {
                // Our writes still newer than the store; the others are dropped below (the
                // watch delivered them, or something newer, or the machine was deleted).
                let mut newer = HashSet::new();
                for m in &mut machines {
                    let (namespace, name) = (namespace_of(&**m), name_of(&**m));
                    let w = written
                        .iter()
                        .find(|((ns, n), _)| ns == namespace && n == name);
                    if let Some((key, w)) = w
                        && generation_of(w) > generation_of(m)
                    {
                        newer.insert(key.clone());
                        *m = w.clone();
                    }
                }
                written.retain(|k, _| newer.contains(k));
            }
        }
        ClusterObjects {
            groups: self.cache.groups().state(),
            machines,
            nodes: self.cache.nodes().state(),
            generation,
        }
    }

    /// A Node CR as the inventory should see it: the store's, or our own write while the
    /// store has not caught up with it (see [`objects`](Self::objects)).
    fn machine_now(&self, namespace: &str, name: &str) -> Option<Arc<Machine>> {
        let stored = self
            .cache
            .machines()
            .get(&ObjectRef::new(name).within(namespace));
        let mut written = lock(&self.written);
        let key = (namespace.to_owned(), name.to_owned());
        let Some(w) = written.get(&key) else {
            return stored;
        };
        match stored {
            Some(s) if generation_of(&s) >= generation_of(w) => {
                written.remove(&key);
                Some(s)
            }
            Some(_) => Some(w.clone()),
            None => {
                written.remove(&key);
                None
            }
        }
    }

    /// Builds the inventory from the objects now and keeps it unless a newer one was kept
    /// meanwhile; returns the one kept.
    fn rebuild(&self) -> Arc<Inventory> {
        let (generation, inv) = {
            // Objects read under the builder's lock, so builds go in the order of what they
            // saw (an older view after a newer one would only convert groups back and forth).
            let mut builder = lock(&self.builder);
            // Read before taking the changes: each change is noted before its generation bump,
            // so every change up to this generation is in what is taken.
            let generation = self.generation();
            let dirty = std::mem::take(&mut *lock(&self.dirty));
            let inv = if dirty.all {
                None
            } else {
                let changed: Vec<_> = dirty
                    .machines
                    .iter()
                    .map(|(ns, name)| (ns.as_str(), name.as_str(), self.machine_now(ns, name)))
                    .collect();
                let nodes = dirty.nodes.then(|| self.cache.nodes().state());
                builder.update(&self.cache.groups().state(), &changed, nodes.as_deref())
            };
            let mut inv = inv.unwrap_or_else(|| {
                let objects = self.objects();
                builder.build(&objects.groups, &objects.machines, &objects.nodes)
            });
            inv.set_unschedulable_since(*lock(&self.unschedulable_since));
            (generation, Arc::new(inv))
        };
        let mut kept = lock(&self.inventory);
        match kept.as_ref() {
            Some((g, newer)) if *g > generation => newer.clone(),
            _ => {
                let old = kept.replace((generation, inv.clone()));
                // Freeing the groups it alone held takes a while: not while readers wait.
                drop(kept);
                drop(old);
                inv
            }
        }
    }

    fn is_current(&self) -> bool {
        lock(&self.inventory)
            .as_ref()
            .is_some_and(|(g, _)| *g == self.generation())
    }
}

/// Rebuilds off the async worker threads (the build is CPU work of milliseconds).
async fn rebuild_now(state: &Arc<State>) {
    let state = state.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || state.rebuild()).await {
        tracing::error!(error = %e, "building the inventory failed");
    }
}

/// Notes each change the cache reports for the next rebuild, then moves the generation: a build
/// tagged with a generation has seen every change up to it.
async fn follow_changes(state: Arc<State>, mut feed: broadcast::Receiver<Change>) {
    loop {
        match feed.recv().await {
            Ok(change) => lock(&state.dirty).note(&change),
            Err(broadcast::error::RecvError::Lagged(_)) => lock(&state.dirty).all = true,
            Err(broadcast::error::RecvError::Closed) => return,
        }
        state.bump();
    }
}

/// How often unschedulable pods are read while a Group's quiet hours have a `powerOnAfter`.
const UNSCHEDULABLE_POLL: Duration = Duration::from_secs(10);

/// Whether any Group's quiet hours hold power-ons for pods (`powerOnAfter`): only then are
/// pods read.
fn any_power_on_after(cache: &Cache) -> bool {
    cache.groups().state().iter().any(|g| {
        g.spec
            .wear
            .as_ref()
            .is_some_and(|w| w.quiet_hours.iter().any(|q| q.power_on_after.is_some()))
    })
}

/// Reads the unscheduled pending pods every [`UNSCHEDULABLE_POLL`] while some Group's quiet
/// hours have a `powerOnAfter`, and records since when the longest-waiting one has been
/// unschedulable (the watch cache keeps no pods: a list of the few pending ones, by field
/// selector, costs less than a watch of every pod). A change moves the generation, so the
/// next inventory carries it. Any unschedulable pod counts: which group CA would power on for
/// it is CA's to simulate.
async fn follow_unschedulable_pods(state: Arc<State>) {
    let api: Api<Pod> = Api::all(state.cache.client().clone());
    let params = ListParams::default().fields("spec.nodeName=,status.phase=Pending");
    loop {
        tokio::time::sleep(UNSCHEDULABLE_POLL).await;
        let since = if any_power_on_after(&state.cache) {
            match api.list(&params).await {
                Ok(list) => crate::operator::policy::wear::unschedulable_since(&list.items),
                Err(e) => {
                    tracing::info!(error = %e, "could not read the pending pods for quiet hours; keeping the last answer");
                    continue;
                }
            }
        } else {
            None
        };
        let changed = {
            let mut kept = lock(&state.unschedulable_since);
            std::mem::replace(&mut *kept, since) != since
        };
        if changed {
            state.bump();
        }
    }
}

/// Keeps the inventory current in the background: after a change, at most every
/// [`MIN_REBUILD_INTERVAL`], and only once the caches synced (before that nothing is served).
async fn rebuild_on_change(state: Arc<State>) {
    let mut rx = state.generation.subscribe();
    while rx.changed().await.is_ok() {
        if state.cache.is_ready() && !state.is_current() {
            rebuild_now(&state).await;
        }
        tokio::time::sleep(MIN_REBUILD_INTERVAL).await;
    }
}

impl InventorySource for ClusterSource {
    fn snapshot(&self) -> Arc<Inventory> {
        self.inventory()
    }

    async fn set_desired_power(&self, changes: &[PowerChange]) -> Result<(), PersistError> {
        let (applied, result) = self.write_desired_power(changes).await;
        result.map_err(|e| {
            if e.is_transient() {
                tracing::info!(error = %e, "desired power not written; CA retries on its next loop");
            } else {
                tracing::warn!(error = %e, "desired power not written");
            }
            PersistError {
                applied,
                message: e.to_string(),
            }
        })
    }

    async fn wait_ready(&self) {
        self.state.cache.synced().await;
        rebuild_now(&self.state).await;
    }
}

fn power_str(p: PowerState) -> &'static str {
    match p {
        PowerState::On => "on",
        PowerState::Off => "off",
    }
}

fn classify(e: kube::Error, change: &PowerChange) -> WriteError {
    let namespace = change.machine.namespace.clone();
    let name = change.machine.name.clone();
    match e {
        kube::Error::Api(s) => match s.code {
            404 => WriteError::NotFound { namespace, name },
            409 => WriteError::Conflict {
                namespace,
                name,
                detail: s.message.clone(),
            },
            401 | 403 => WriteError::Forbidden {
                namespace,
                name,
                message: s.message.clone(),
            },
            429 | 500..=599 => WriteError::Unavailable {
                namespace,
                name,
                source: kube::Error::Api(s),
            },
            _ => WriteError::Rejected {
                namespace,
                name,
                to: power_str(change.desired),
                message: s.message.clone(),
            },
        },
        other => WriteError::Unavailable {
            namespace,
            name,
            source: other,
        },
    }
}

fn generation_of(m: &Machine) -> i64 {
    m.metadata.generation.unwrap_or(0)
}
