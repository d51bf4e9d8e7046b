//! The operator's watch cache: one reflector per kind (Group CRs, Node CRs, Kubernetes Nodes)
//! and the power Jobs' watch, shared by the CA provider and the controllers, so the API server
//! sees one watch per kind whatever reads it.
//!
//! - [`Cache`] holds the three reflector stores, says when their initial lists are complete, and
//!   publishes a feed of which object changed ([`Change`]) and a generation counter that moves
//!   with every watch event.
//! - [`trim`] decides what each cached object keeps: only what the operator reads.
//! - [`jobs`] watches the operator's own power Jobs (only `run-operator` needs them).
//!
//! The cache never writes. The provider's desired-power writes and its inventory live in
//! `provider::cluster`; the controllers' writes in `controller`.
pub mod jobs;
pub mod trim;

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::lock;
use crate::operator::api::{Group, Machine};
use crate::operator::kube_node::KubeNode;
use trim::{ListedNode, strip_custom_resource};

/// Which Group and Node CRs (and power Jobs) the operator reads. Kubernetes Nodes are
/// cluster-scoped and always read in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    AllNamespaces,
}

impl Scope {
    /// An API for a namespaced kind in this scope.
    pub fn api<K>(&self, client: Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::Namespace(ns) => Api::namespaced(client, ns),
            Scope::AllNamespaces => Api::all(client),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Namespace(ns) => write!(f, "namespace {ns}"),
            Scope::AllNamespaces => f.write_str("all namespaces"),
        }
    }
}

/// The caches could not sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "the caches of {pending} did not sync within {timeout:?}{last_error}: the API server is \
         unreachable or slow, the CRDs are not installed (`kubectl homelab crd gen | kubectl apply \
         -f -`), or RBAC does not allow list and watch (check `kubectl auth can-i watch \
         nodes.infra.homecluster.dev`)"
    )]
    Timeout {
        pending: String,
        timeout: Duration,
        /// `; last error: ...` when a watch reported one.
        last_error: String,
    },
}

/// One object changed in a cache (applied or deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Group {
        namespace: String,
        name: String,
    },
    Machine {
        namespace: String,
        name: String,
    },
    Node {
        name: String,
        provider_id: Option<String>,
    },
    /// A watch listed again: objects deleted meanwhile sent no event, so look at everything.
    Resync,
}

/// Capacity of the change feed; a receiver that falls further behind gets a `Lagged` error and
/// must treat it as [`Change::Resync`].
const CHANGE_BUFFER: usize = 4096;

/// Objects per page of the caches' initial lists (and re-lists); kube's default is 500. A page
/// is parsed whole before its objects reach the cache, and what the parse leaves behind (the
/// managedFields the cache drops, the parsed originals the reflector copies) is freed in small
/// blocks between the cached objects: holes the allocator cannot give back. 2,000 machines at
/// 500 per page left the operator at 19.7 MiB anonymous, at 100 per page 13.7 MiB; the restart
/// reads 20 pages instead of 4 and was no slower (BENCHMARKS.md, "The memory target met").
const LIST_PAGE_SIZE: u32 = 100;

/// Keeps the reflector tasks alive as long as the cache; aborts them when it is dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The kinds the cache watches, in the order of [`Cache`]'s sync flags.
const KINDS: [&str; 3] = ["Group", "Node CR", "Kubernetes Node"];

/// Reflectors on Group CRs, Node CRs and Kubernetes Nodes.
pub struct Cache {
    client: Client,
    scope: Scope,
    groups: Store<Group>,
    machines: Store<Machine>,
    nodes: Store<KubeNode>,
    /// Moves after every watch event, once the store shows it.
    generation: watch::Sender<u64>,
    /// Which object changed (the generation only says that something did).
    changes: broadcast::Sender<Change>,
    /// The last error each watch reported, for the sync-timeout message.
    last_errors: Arc<Mutex<HashMap<&'static str, String>>>,
    /// Per kind (see [`KINDS`]): the initial list is complete.
    synced: [Arc<AtomicBool>; 3],
    _tasks: Tasks,
}

impl Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Starts the three reflectors on the current tokio runtime. Call
    /// [`wait_until_ready`](Self::wait_until_ready) before reading.
    pub fn start(client: Client, scope: Scope) -> Self {
        let (generation, _) = watch::channel(0u64);
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let last_errors = Arc::new(Mutex::new(HashMap::new()));
        let synced: [Arc<AtomicBool>; 3] = Default::default();
        let feed = Feed {
            generation: generation.clone(),
            changes: changes.clone(),
            last_errors: last_errors.clone(),
        };
        let (groups, g) = feed.spawn(
            scope.api::<Group>(client.clone()),
            KINDS[0],
            synced[0].clone(),
            describe_group,
            stripped,
        );
        let (machines, m) = feed.spawn(
            scope.api::<Machine>(client.clone()),
            KINDS[1],
            synced[1].clone(),
            describe_machine,
            stripped,
        );
        // Read as `ListedNode`: the parser skips what the cache would drop (see `trim`).
        let (nodes, n) = feed.spawn(
            Api::<ListedNode>::all(client.clone()),
            KINDS[2],
            synced[2].clone(),
            describe_node,
            |n| KubeNode::from(Node::from(n)),
        );
        Cache {
            client,
            scope,
            groups,
            machines,
            nodes,
            generation,
            changes,
            last_errors,
            synced,
            _tasks: Tasks(vec![g, m, n]),
        }
    }

    /// A cache with no watches, whose stores the caller fills through the writers returned
    /// (`Writer::apply_watcher_event`): for unit tests of what reads the cache. It counts as
    /// synced; nothing is published on its change feed.
    #[cfg(test)]
    pub(crate) fn fake(client: Client, scope: Scope) -> (Self, FakeWriters) {
        let (groups, group_writer) = reflector::store();
        let (machines, machine_writer) = reflector::store();
        let (nodes, node_writer) = reflector::store();
        let cache = Cache {
            client,
            scope,
            groups,
            machines,
            nodes,
            generation: watch::channel(0u64).0,
            changes: broadcast::channel(CHANGE_BUFFER).0,
            last_errors: Arc::default(),
            synced: std::array::from_fn(|_| Arc::new(AtomicBool::new(true))),
            _tasks: Tasks(Vec::new()),
        };
        let writers = FakeWriters {
            groups: group_writer,
            machines: machine_writer,
            nodes: node_writer,
        };
        (cache, writers)
    }

    /// The API client the cache was started with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The Group CR store.
    pub fn groups(&self) -> &Store<Group> {
        &self.groups
    }

    /// The Node CR store.
    pub fn machines(&self) -> &Store<Machine> {
        &self.machines
    }

    /// The Kubernetes Node store.
    pub fn nodes(&self) -> &Store<KubeNode> {
        &self.nodes
    }

    /// True once all three caches hold a complete initial list (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.synced.iter().all(|s| s.load(Ordering::Acquire))
    }

    /// Resolves once all three caches synced. (Not `Store::wait_until_ready`: its one-shot
    /// receiver keeps only the last waiter's waker, so concurrent waiters can miss the wake-up.)
    pub async fn synced(&self) {
        let mut rx = self.generation.subscribe();
        while !self.is_ready() {
            if rx.changed().await.is_err() {
                // Cannot happen while `self` holds a sender; never report a false "ready".
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until all three caches hold a complete initial list.
    pub async fn wait_until_ready(&self, timeout: Duration) -> Result<(), SyncError> {
        match tokio::time::timeout(timeout, self.synced()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.sync_timeout_error(timeout)),
        }
    }

    fn sync_timeout_error(&self, timeout: Duration) -> SyncError {
        let mut pending = Vec::new();
        let errors = lock(&self.last_errors);
        let mut last_error = String::new();
        for (kind, ready) in KINDS.iter().zip(&self.synced) {
            if !ready.load(Ordering::Acquire) {
                pending.push(format!("{kind}s"));
                if let Some(e) = errors.get(kind) {
                    last_error = format!("; last error: {e}");
                }
            }
        }
        SyncError::Timeout {
            pending: pending.join(", "),
            timeout,
            last_error,
        }
    }

    /// The current generation: it moves whenever a cached object may have changed.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Which objects change, as the watches see them. A new receiver sees changes from now on:
    /// start from the stores, then follow the feed.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

/// The writers of a [`Cache::fake`]'s stores.
#[cfg(test)]
pub(crate) struct FakeWriters {
    pub groups: reflector::store::Writer<Group>,
    pub machines: reflector::store::Writer<Machine>,
    pub nodes: reflector::store::Writer<KubeNode>,
}

/// What every reflector task publishes into.
struct Feed {
    generation: watch::Sender<u64>,
    changes: broadcast::Sender<Change>,
    last_errors: Arc<Mutex<HashMap<&'static str, String>>>,
}

impl Feed {
    /// Watches `api` and keeps what `keep` makes of each object (only what the operator reads;
    /// see [`trim`]) in a store.
    fn spawn<W, K>(
        &self,
        api: Api<W>,
        kind: &'static str,
        synced: Arc<AtomicBool>,
        describe: fn(&K) -> Change,
        keep: fn(W) -> K,
    ) -> (Store<K>, JoinHandle<()>)
    where
        W: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
        K: reflector::Lookup + Clone + Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    {
        let (reader, mut writer) = reflector::store();
        // What `reflect` does, for a cached type that is not the wire type's `Resource`.
        let stream = watcher(api, watcher::Config::default().page_size(LIST_PAGE_SIZE))
            .default_backoff()
            .map_ok(move |e| kept(e, keep))
            .inspect_ok(move |e| writer.apply_watcher_event(e));
        let generation = self.generation.clone();
        let changes = self.changes.clone();
        let last_errors = self.last_errors.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(e) => {
                        // The store has swapped in the complete list when InitDone passes here.
                        let change = match &e {
                            watcher::Event::InitDone => {
                                synced.store(true, Ordering::Release);
                                Some(Change::Resync)
                            }
                            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                                Some(describe(o))
                            }
                            watcher::Event::Init | watcher::Event::InitApply(_) => None,
                        };
                        if let Some(c) = change {
                            // No receiver (nothing subscribed yet) is fine.
                            let _ = changes.send(c);
                        }
                        generation.send_modify(|g| *g = g.wrapping_add(1));
                    }
                    Err(e) => {
                        tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
                        lock(&last_errors).insert(kind, e.to_string());
                    }
                }
            }
        });
        (reader, task)
    }
}

/// A Group or Node CR as the cache keeps it.
fn stripped<K: Resource>(mut obj: K) -> K {
    strip_custom_resource(&mut obj);
    obj
}

/// The watch event with `keep` applied to its object.
fn kept<W, K>(e: watcher::Event<W>, keep: fn(W) -> K) -> watcher::Event<K> {
    match e {
        watcher::Event::Apply(o) => watcher::Event::Apply(keep(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(keep(o)),
        watcher::Event::InitApply(o) => watcher::Event::InitApply(keep(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn describe_group(g: &Group) -> Change {
    Change::Group {
        namespace: g.namespace().unwrap_or_default(),
        name: g.name_any(),
    }
}

fn describe_machine(m: &Machine) -> Change {
    Change::Machine {
        namespace: m.namespace().unwrap_or_default(),
        name: m.name_any(),
    }
}

fn describe_node(n: &KubeNode) -> Change {
    Change::Node {
        name: n.name().to_owned(),
        provider_id: n.provider_id().map(str::to_owned),
    }
}
