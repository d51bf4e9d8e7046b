//! A test-side stand-in for `kubectl homelab run-operator` AND the machines' kubelets, for tests
//! that run `serve-grpc` (which only records CA's decisions in each Node CR's `spec.powerState`;
//! nothing switches machines). [`OperatorStandIn`] watches the Node CRs of one namespace:
//!
//! - `spec.powerState: on` (the operator's power-on): after the machine's boot delay its kubelet
//!   registers a Ready Kubernetes Node shaped like the CR declares it (`spec.capacity`,
//!   `spec.labels`), with the machine's providerID set by the kubelet, or registered without one
//!   and then set by the operator part, which is what run-operator does for a kubelet started
//!   without `--provider-id`;
//! - `spec.powerState: off` (the operator's power-off, after CA drained the node): the kubelet
//!   stops (NotReady) and the operator deletes the Node object;
//! - while a node is up, its kubelet runs the pods bound to it and finishes their deletion.
//!
//! Failure injection: [`Boot::Never`], a machine that accepts the power-on and never registers.
//!
//! It writes no Node CR status: that is the operator's FSM, which this stand-in does not
//! imitate. Once run-operator lands, a test replaces this with run-operator (the `Provider`'s
//! `ProviderCommand::RunOperator`) plus `World::spawn_job_runner`, whose `on_done` boots the
//! machine with the same [`register`] this module uses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kubectl_homelab::operator::api::Machine;
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::operator::provider::inventory::default_provider_id;

use super::control_plane::lock;
use super::world::{Background, FakeNode, World};

/// What a simulated machine does after its power-on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// Its kubelet registers a Ready Node this long after the power-on.
    After(Duration),
    /// Accepts the power-on and never registers (broken boot disk, wrong network).
    Never,
}

/// Who puts the providerID on the machine's Kubernetes Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderIdBy {
    /// The kubelet registers with `--provider-id` (the Node CR's, or `homelab://<ns>/<name>`).
    Kubelet,
    /// The kubelet registers without one; the operator then writes it into the Node.
    Operator,
}

/// One thing the stand-in saw or did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// `spec.powerState` turned `on` (or was `on` when first seen).
    PowerOn,
    /// `spec.powerState` turned `off` after having been `on`.
    PowerOff,
    /// The kubelet registered a Ready Node.
    Registered,
    /// The operator deleted the Node object after the power-off.
    NodeDeleted,
    /// At the power-off, the Node carried CA's `ToBeDeletedByClusterAutoscaler` taint
    /// (`utils/taints/taints.go`): CA had tainted and drained it before DeleteNodes.
    PoweredOffTaintedByCa,
}

/// The taint CA puts on a node it is removing, before draining it.
pub const CA_DELETION_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug, Default)]
struct Machines {
    /// Last seen `spec.powerState` per Node CR.
    desired: BTreeMap<String, PowerState>,
    /// Bumped on every power change: a boot still sleeping for an older generation is dropped.
    generation: BTreeMap<String, u64>,
    /// Kubernetes node names that are up (registered by the stand-in and not deleted).
    up: BTreeSet<String>,
    log: Vec<(Duration, String, Happened)>,
}

/// The operator + kubelets stand-in; stops when dropped.
pub struct OperatorStandIn {
    state: Arc<Mutex<Machines>>,
    _watch: Background,
    _kubelets: Background,
}

/// How the stand-in treats the machines of its namespace.
#[derive(Debug, Clone)]
pub struct StandInConfig {
    pub namespace: String,
    /// Boot delay of every machine not in `boots`.
    pub boot: Boot,
    /// Per Node CR name.
    pub boots: BTreeMap<String, Boot>,
    pub provider_id_by: ProviderIdBy,
}

impl StandInConfig {
    pub fn new(namespace: &str, boot_delay: Duration) -> Self {
        Self {
            namespace: namespace.to_owned(),
            boot: Boot::After(boot_delay),
            boots: BTreeMap::new(),
            provider_id_by: ProviderIdBy::Kubelet,
        }
    }
    pub fn machine(mut self, name: &str, boot: Boot) -> Self {
        self.boots.insert(name.to_owned(), boot);
        self
    }
    pub fn provider_id_by(mut self, by: ProviderIdBy) -> Self {
        self.provider_id_by = by;
        self
    }
}

impl OperatorStandIn {
    /// Starts watching the Node CRs of `config.namespace` (machines already `on` are booted).
    pub fn start(client: kube::Client, config: StandInConfig) -> OperatorStandIn {
        let state = Arc::new(Mutex::new(Machines::default()));
        let started = Instant::now();
        let world = World::new(client.clone());
        let config = Arc::new(config);
        let watch = {
            let (state, world, config) = (state.clone(), world.clone(), config.clone());
            let api: Api<Machine> = Api::namespaced(client, &config.namespace);
            Background::from(tokio::spawn(async move {
                let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
                while let Some(event) = events.next().await {
                    match event {
                        Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                            on_change(&state, &world, &config, started, &m)
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("operator stand-in: watching Node CRs: {e}");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }))
        };
        let kubelets = {
            let (state, world) = (state.clone(), world.clone());
            Background::from(tokio::spawn(async move {
                loop {
                    let up: Vec<String> = lock(&state).up.iter().cloned().collect();
                    for node in up {
                        // A node deleted meanwhile makes these fail; the next pass is right.
                        let _ = world.run_pods(&node).await;
                        let _ = world.finish_terminating_pods(&node).await;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }))
        };
        OperatorStandIn {
            state,
            _watch: watch,
            _kubelets: kubelets,
        }
    }

    /// Node CRs that were ever `spec.powerState: on` while watched.
    pub fn ever_powered_on(&self) -> BTreeSet<String> {
        self.count(&Happened::PowerOn).into_keys().collect()
    }

    /// How many power-ons each Node CR got.
    pub fn power_ons(&self) -> BTreeMap<String, usize> {
        self.count(&Happened::PowerOn)
    }

    fn count(&self, what: &Happened) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (_, m, h) in &lock(&self.state).log {
            if h == what {
                *out.entry(m.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// Machines powered off while their Node carried CA's deletion taint.
    pub fn powered_off_tainted_by_ca(&self) -> BTreeSet<String> {
        self.count(&Happened::PoweredOffTaintedByCa)
            .into_keys()
            .collect()
    }

    /// Node CRs whose `spec.powerState` is `on` now.
    pub fn wanted_on(&self) -> BTreeSet<String> {
        lock(&self.state)
            .desired
            .iter()
            .filter(|(_, d)| **d == PowerState::On)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// Everything that happened, with the time since the stand-in started (for failure
    /// messages).
    pub fn history(&self) -> String {
        const SHOWN: usize = 40;
        let s = lock(&self.state);
        if s.log.is_empty() {
            return "(no power action)".to_owned();
        }
        let skipped = s.log.len().saturating_sub(SHOWN);
        let mut lines: Vec<String> = Vec::new();
        if skipped > 0 {
            lines.push(format!("({skipped} earlier events left out)"));
        }
        lines.extend(
            s.log[skipped..]
                .iter()
                .map(|(t, m, h)| format!("{:6.1}s {m} {h:?}", t.as_secs_f64())),
        );
        lines.join("\n")
    }
}

fn on_change(
    state: &Arc<Mutex<Machines>>,
    world: &World,
    config: &Arc<StandInConfig>,
    started: Instant,
    m: &Machine,
) {
    let name = m.metadata.name.clone().unwrap_or_default();
    let desired = m.spec.power_state;
    let generation = {
        let mut s = lock(state);
        let before = s.desired.insert(name.clone(), desired);
        if before == Some(desired) {
            return;
        }
        let happened = match (before, desired) {
            (_, PowerState::On) => Happened::PowerOn,
            // First seen off: nothing to do.
            (None, PowerState::Off) => return,
            (Some(_), PowerState::Off) => Happened::PowerOff,
        };
        s.log.push((started.elapsed(), name.clone(), happened));
        let g = s.generation.entry(name.clone()).or_insert(0);
        *g += 1;
        *g
    };
    let node = FakeNode::for_machine(m);
    let provider_id = m
        .spec
        .provider_id
        .clone()
        .unwrap_or_else(|| default_provider_id(&config.namespace, &name));
    let (state, world, config) = (state.clone(), world.clone(), config.clone());
    // Detached: a boot outlives nothing but the runtime, and checks its generation first.
    tokio::spawn(async move {
        let current = |s: &Machines| s.generation.get(&name).copied() == Some(generation);
        match desired {
            PowerState::On => {
                let boot = config.boots.get(&name).copied().unwrap_or(config.boot);
                let Boot::After(delay) = boot else { return };
                tokio::time::sleep(delay).await;
                if !current(&lock(&state)) {
                    return;
                }
                match register(&world, &node, &provider_id, config.provider_id_by).await {
                    Ok(()) => {
                        let mut s = lock(&state);
                        s.up.insert(node.name.clone());
                        s.log
                            .push((started.elapsed(), name.clone(), Happened::Registered));
                    }
                    Err(e) => eprintln!("operator stand-in: booting {name}: {e:#}"),
                }
            }
            PowerState::Off => {
                let was_up = lock(&state).up.remove(&node.name);
                if was_up
                    && let Ok(Some(n)) = Api::<Node>::all(world.client()).get_opt(&node.name).await
                {
                    let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
                    if taints.iter().any(|t| t.key == CA_DELETION_TAINT) {
                        lock(&state).log.push((
                            started.elapsed(),
                            name.clone(),
                            Happened::PoweredOffTaintedByCa,
                        ));
                    }
                }
                // The kubelet stops posting status, then the operator removes the Node object.
                if was_up && let Err(e) = world.node_ready(&node.name, false).await {
                    eprintln!("operator stand-in: powering off {name}: {e:#}");
                }
                match world.node_delete(&node.name).await {
                    Ok(()) if was_up => {
                        lock(&state).log.push((
                            started.elapsed(),
                            name.clone(),
                            Happened::NodeDeleted,
                        ));
                    }
                    Ok(()) => {}
                    Err(e) => eprintln!("operator stand-in: deleting Node {}: {e:#}", node.name),
                }
            }
        }
    });
}

/// The machine's kubelet registers its Node, Ready; with [`ProviderIdBy::Operator`] it does so
/// without a providerID and the operator's part then writes `provider_id` into the Node.
pub async fn register(
    world: &World,
    node: &FakeNode,
    provider_id: &str,
    by: ProviderIdBy,
) -> anyhow::Result<()> {
    match by {
        ProviderIdBy::Kubelet => {
            world
                .node_up(&node.clone().provider_id(provider_id))
                .await?;
        }
        ProviderIdBy::Operator => {
            world.node_up(node).await?;
            let patch = serde_json::json!({ "spec": { "providerID": provider_id } });
            Api::<Node>::all(world.client())
                .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("setting spec.providerID of Node {}", node.name))?;
        }
    }
    Ok(())
}

impl FakeNode {
    /// The Node a machine's kubelet registers: named `spec.kubernetesNodeName` (else the CR's
    /// name), with the capacity and labels the Node CR declares (110 pods unless declared).
    pub fn for_machine(m: &Machine) -> FakeNode {
        let cr = m.metadata.name.clone().unwrap_or_default();
        let name = m.spec.kubernetes_node_name.clone().unwrap_or(cr);
        let mut node = FakeNode::new(&name);
        node.capacity = m.spec.capacity.clone();
        node.capacity
            .entry("pods".to_owned())
            .or_insert_with(|| Quantity("110".to_owned()));
        for (k, v) in &m.spec.labels {
            node = node.label(k, v);
        }
        node
    }
}
