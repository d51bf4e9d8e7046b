//! The machines behind `kubectl homelab run-operator`: what happens outside the operator when it
//! runs a power Job. [`Machines`] plays, for the Node CRs of one namespace,
//!
//! - the Job controller ([`World::spawn_job_runner`]): every power Job the operator creates
//!   succeeds shortly after it appears;
//! - the machine: a completed power-on Job boots it, and after its boot delay its kubelet
//!   registers a Ready Kubernetes Node shaped like the CR declares it (`spec.capacity`,
//!   `spec.labels`), with the machine's providerID set by the kubelet, or without one (the
//!   operator then writes it, as for a kubelet started without `--provider-id`); a completed
//!   power-off Job stops it: after its shutdown delay (zero unless set) its Node goes NotReady
//!   (the Node stays Ready meanwhile, as a real Node does until the node lifecycle controller
//!   notices the kubelet stopped posting status); the operator then deletes the Node object;
//! - while a node is up, its kubelet runs the pods bound to it and finishes their deletion.
//!
//! Failure injection: [`Boot::Never`], a machine that accepts the power-on and never registers.
//! It records what it saw (power Jobs created, phases the operator wrote, registrations) so a
//! test can count power actions and show the history when it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt as _;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kubectl_homelab::operator::api::Machine;
use kubectl_homelab::operator::machine::{Phase, PowerState};
use kubectl_homelab::operator::power::job::{DIRECTION_LABEL, MACHINE_LABEL, job_selector};

use super::control_plane::lock;
use super::world::{Background, FakeNode, JobOutcome, World};

/// How long a power Job "runs" before the simulated Job controller marks it succeeded.
pub const JOB_RUNS: Duration = Duration::from_secs(1);

/// What a simulated machine does after its power-on Job succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// Its kubelet registers a Ready Node this long after the power-on Job succeeded.
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

/// One thing the machines saw or did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// The operator created a power Job in this direction (`on` / `off`).
    PowerJob(String),
    /// A power Job in this direction succeeded.
    PowerJobDone(String),
    /// The kubelet registered a Ready Node.
    Registered,
    /// The power-off stopped the kubelet: the Node went NotReady.
    Stopped,
    /// At the power-off, the Node carried CA's `ToBeDeletedByClusterAutoscaler` taint
    /// (`utils/taints/taints.go`): CA had tainted and drained it before DeleteNodes.
    PoweredOffTaintedByCa,
    /// The operator wrote this phase (and `status.lastError`) into the Node CR.
    Phase(Phase, Option<String>),
    /// `spec.powerState` became this (CA's IncreaseSize / DeleteNodes, through the provider).
    Desired(PowerState),
}

/// The taint CA puts on a node it is removing, before draining it.
pub const CA_DELETION_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug, Default)]
struct Seen {
    /// Bumped on every finished power Job: a boot still sleeping for an older one is dropped.
    generation: BTreeMap<String, u64>,
    /// Power Jobs seen, by uid.
    jobs: BTreeSet<String>,
    /// Last phase and error seen per Node CR.
    phases: BTreeMap<String, (Phase, Option<String>)>,
    /// Last `spec.powerState` seen per Node CR.
    desired: BTreeMap<String, PowerState>,
    /// Kubernetes node names that are up (registered here and not stopped).
    up: BTreeSet<String>,
    log: Vec<(Duration, String, Happened)>,
}

/// The simulated machines, Job controller and kubelets of one namespace; stop when dropped.
pub struct Machines {
    seen: Arc<Mutex<Seen>>,
    started: Instant,
    _runner: Background,
    _jobs: Background,
    _crs: Background,
    _kubelets: Background,
}

/// How the machines of a namespace behave.
#[derive(Debug, Clone)]
pub struct MachinesConfig {
    pub namespace: String,
    /// Boot of every machine not in `boots`.
    pub boot: Boot,
    /// Per Node CR name.
    pub boots: BTreeMap<String, Boot>,
    pub provider_id_by: ProviderIdBy,
    /// From a power-off Job succeeding to the machine's Node going NotReady: the OS shutting
    /// down plus the node lifecycle controller's grace period.
    pub shutdown: Duration,
    /// CPU and memory a machine's kubelet reports, per Node CR name, for a CR that declares no
    /// `spec.capacity` (its Group's template says what CA should expect instead).
    pub hardware: BTreeMap<String, (String, String)>,
    /// Kubernetes node names of machines already on (registered before the harness started):
    /// their kubelets run pods and a power-off stops them.
    pub on_at_start: BTreeSet<String>,
}

impl MachinesConfig {
    pub fn new(namespace: &str, boot_delay: Duration) -> Self {
        Self {
            namespace: namespace.to_owned(),
            boot: Boot::After(boot_delay),
            boots: BTreeMap::new(),
            provider_id_by: ProviderIdBy::Kubelet,
            shutdown: Duration::ZERO,
            hardware: BTreeMap::new(),
            on_at_start: BTreeSet::new(),
        }
    }
    /// Every machine's Node stays Ready for `delay` after its power-off Job succeeded.
    pub fn shutdown_delay(mut self, delay: Duration) -> Self {
        self.shutdown = delay;
        self
    }
    pub fn machine(mut self, name: &str, boot: Boot) -> Self {
        self.boots.insert(name.to_owned(), boot);
        self
    }
    /// The machine whose Kubernetes Node is `node` is on when the harness starts.
    pub fn on_at_start(mut self, node: &str) -> Self {
        self.on_at_start.insert(node.to_owned());
        self
    }
    /// Machine `name`'s kubelet reports `cpu` and `memory` (Kubernetes quantities).
    pub fn hardware(mut self, name: &str, cpu: &str, memory: &str) -> Self {
        self.hardware
            .insert(name.to_owned(), (cpu.to_owned(), memory.to_owned()));
        self
    }
    pub fn provider_id_by(mut self, by: ProviderIdBy) -> Self {
        self.provider_id_by = by;
        self
    }
}

/// Shared by the background tasks.
struct Shared {
    seen: Arc<Mutex<Seen>>,
    world: World,
    config: MachinesConfig,
    started: Instant,
}

impl Shared {
    fn record(&self, machine: &str, happened: Happened) {
        lock(&self.seen)
            .log
            .push((self.started.elapsed(), machine.to_owned(), happened));
    }
}

impl Machines {
    /// Starts playing the Job controller, machines and kubelets of `config.namespace`.
    pub fn start(world: &World, config: MachinesConfig) -> Machines {
        let seen = Seen {
            up: config.on_at_start.clone(),
            ..Seen::default()
        };
        let shared = Arc::new(Shared {
            seen: Arc::new(Mutex::new(seen)),
            world: world.clone(),
            config,
            started: Instant::now(),
        });
        let ns = shared.config.namespace.clone();
        let runner = {
            let shared = shared.clone();
            world.spawn_job_runner(
                &ns,
                JOB_RUNS,
                |_| JobOutcome::Succeed,
                move |job, _| {
                    let shared = shared.clone();
                    async move {
                        // Detached: a boot sleeps, and the runner must go on finishing Jobs.
                        tokio::spawn(power_job_done(shared, job));
                        Ok(())
                    }
                },
            )
        };
        let jobs = {
            let shared = shared.clone();
            let api: Api<Job> = Api::namespaced(world.client(), &ns);
            let config = watcher::Config::default().labels(&job_selector());
            watch_each(api, config, "power Jobs", move |j| on_job(&shared, &j))
        };
        let crs = {
            let shared = shared.clone();
            let api: Api<Machine> = Api::namespaced(world.client(), &ns);
            watch_each(api, watcher::Config::default(), "Node CRs", move |m| {
                on_machine(&shared, &m)
            })
        };
        let kubelets = {
            let shared = shared.clone();
            Background::from(tokio::spawn(async move {
                loop {
                    let up: Vec<String> = lock(&shared.seen).up.iter().cloned().collect();
                    for node in up {
                        // A node deleted meanwhile makes these fail; the next pass is right.
                        let _ = shared.world.run_pods(&node).await;
                        let _ = shared.world.finish_terminating_pods(&node).await;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }))
        };
        Machines {
            seen: shared.seen.clone(),
            started: shared.started,
            _runner: runner,
            _jobs: jobs,
            _crs: crs,
            _kubelets: kubelets,
        }
    }

    fn count(&self, what: &Happened) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (_, m, h) in &lock(&self.seen).log {
            if h == what {
                *out.entry(m.clone()).or_insert(0) += 1;
            }
        }
        out
    }

    /// Whether `machine` went through `what` so far.
    pub fn saw(&self, machine: &str, what: &Happened) -> bool {
        lock(&self.seen)
            .log
            .iter()
            .any(|(_, m, h)| m == machine && h == what)
    }

    /// How many power-on Jobs the operator created per Node CR.
    pub fn power_ons(&self) -> BTreeMap<String, usize> {
        self.count(&Happened::PowerJob("on".to_owned()))
    }

    /// How many power-off Jobs the operator created per Node CR.
    pub fn power_offs(&self) -> BTreeMap<String, usize> {
        self.count(&Happened::PowerJob("off".to_owned()))
    }

    /// Node CRs the operator ever created a power-on Job for.
    pub fn ever_powered_on(&self) -> BTreeSet<String> {
        self.power_ons().into_keys().collect()
    }

    /// Every change of a Node CR's `spec.powerState` seen after `since`, with its time from
    /// `since`, in order (the first sighting of each Node CR counts: ask after they were seen).
    pub fn desired_changes_since(&self, since: Instant) -> Vec<(Duration, String, PowerState)> {
        lock(&self.seen)
            .log
            .iter()
            .filter_map(|(at, m, h)| match h {
                Happened::Desired(p) => (self.started + *at)
                    .checked_duration_since(since)
                    .map(|d| (d, m.clone(), *p)),
                _ => None,
            })
            .collect()
    }

    /// Node CRs whose `spec.powerState` was ever seen `on`.
    pub fn ever_wanted_on(&self) -> BTreeSet<String> {
        self.count(&Happened::Desired(PowerState::On))
            .into_keys()
            .collect()
    }

    /// Machines powered off while their Node carried CA's deletion taint.
    pub fn powered_off_tainted_by_ca(&self) -> BTreeSet<String> {
        self.count(&Happened::PoweredOffTaintedByCa)
            .into_keys()
            .collect()
    }

    /// Every `status.lastError` the operator wrote with phase `phase` for Node CR `machine`.
    pub fn errors_in_phase(&self, machine: &str, phase: Phase) -> Vec<String> {
        lock(&self.seen)
            .log
            .iter()
            .filter_map(|(_, m, h)| match h {
                Happened::Phase(p, Some(e)) if m == machine && *p == phase => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Everything that happened, with the time since the start (for failure messages).
    pub fn history(&self) -> String {
        const SHOWN: usize = 60;
        let s = lock(&self.seen);
        if s.log.is_empty() {
            return "(nothing happened)".to_owned();
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

/// Calls `f` with every object of `api` as it is created or changes, in the background.
fn watch_each<K, F>(api: Api<K>, config: watcher::Config, what: &'static str, f: F) -> Background
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(K) + Send + 'static,
{
    Background::from(tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config));
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => f(o),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("simulated machines: watching {what}: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }))
}

/// The Node CR a power Job acts for and its direction (`on` / `off`).
fn job_target(job: &Job) -> (String, String) {
    let label = |k: &str| job.labels().get(k).cloned().unwrap_or_default();
    (label(MACHINE_LABEL), label(DIRECTION_LABEL))
}

fn on_job(shared: &Shared, job: &Job) {
    let uid = job.metadata.uid.clone().unwrap_or_default();
    if !lock(&shared.seen).jobs.insert(uid) {
        return;
    }
    let (machine, direction) = job_target(job);
    shared.record(&machine, Happened::PowerJob(direction));
}

fn on_machine(shared: &Shared, m: &Machine) {
    let name = m.name_any();
    let desired = m.spec.power_state;
    let before = lock(&shared.seen).desired.insert(name.clone(), desired);
    if before != Some(desired) {
        shared.record(&name, Happened::Desired(desired));
    }
    let lc = m.lifecycle();
    let now = (lc.phase(), lc.last_error.clone());
    let changed = lock(&shared.seen).phases.insert(name.clone(), now.clone()) != Some(now.clone());
    if changed {
        shared.record(&name, Happened::Phase(now.0, now.1));
    }
}

/// A power Job succeeded: the machine boots (and registers after its delay) or stops.
async fn power_job_done(shared: Arc<Shared>, job: Job) {
    let (name, direction) = job_target(&job);
    shared.record(&name, Happened::PowerJobDone(direction.clone()));
    let generation = {
        let mut s = lock(&shared.seen);
        let g = s.generation.entry(name.clone()).or_insert(0);
        *g += 1;
        *g
    };
    let ns = &shared.config.namespace;
    let m = match Api::<Machine>::namespaced(shared.world.client(), ns)
        .get(&name)
        .await
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("simulated machines: reading Node CR {ns}/{name}: {e}");
            return;
        }
    };
    let mut node = FakeNode::for_machine(&m);
    if let Some((cpu, memory)) = shared.config.hardware.get(&name) {
        node = node.capacity(cpu, memory);
    }
    if direction == "on" {
        let boot = shared
            .config
            .boots
            .get(&name)
            .copied()
            .unwrap_or(shared.config.boot);
        let Boot::After(delay) = boot else { return };
        tokio::time::sleep(delay).await;
        if lock(&shared.seen).generation.get(&name) != Some(&generation) {
            return;
        }
        let provider_id = m.expected_provider_id();
        match register(
            &shared.world,
            &node,
            &provider_id,
            shared.config.provider_id_by,
        )
        .await
        {
            Ok(()) => {
                lock(&shared.seen).up.insert(node.name.clone());
                shared.record(&name, Happened::Registered);
            }
            Err(e) => eprintln!("simulated machines: booting {name}: {e:#}"),
        }
        return;
    }
    if !lock(&shared.seen).up.remove(&node.name) {
        return;
    }
    if let Ok(Some(n)) = Api::<Node>::all(shared.world.client())
        .get_opt(&node.name)
        .await
    {
        let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
        if taints.iter().any(|t| t.key == CA_DELETION_TAINT) {
            shared.record(&name, Happened::PoweredOffTaintedByCa);
        }
    }
    // The OS shuts down; its Node stays Ready meanwhile. A power Job finishing in between
    // (the machine is powered on again) owns the machine from then on.
    if !shared.config.shutdown.is_zero() {
        tokio::time::sleep(shared.config.shutdown).await;
        if lock(&shared.seen).generation.get(&name) != Some(&generation) {
            return;
        }
    }
    // The kubelet stops posting status; the operator sees the Node NotReady and deletes it.
    match shared.world.node_ready(&node.name, false).await {
        Ok(_) => shared.record(&name, Happened::Stopped),
        Err(e) => eprintln!("simulated machines: powering off {name}: {e:#}"),
    }
}

/// The machine's kubelet registers its Node, Ready; with [`ProviderIdBy::Operator`] it does so
/// without a providerID (the operator then writes it).
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
        }
    }
    Ok(())
}

impl FakeNode {
    /// The Node a machine's kubelet registers: named `spec.kubernetesNodeName` (else the CR's
    /// name), with the capacity and labels the Node CR declares (110 pods unless declared), and
    /// labelled adoptable as its owner's kubelet would be (`--node-labels`).
    pub fn for_machine(m: &Machine) -> FakeNode {
        let cr = m.metadata.name.clone().unwrap_or_default();
        let name = m.spec.kubernetes_node_name.clone().unwrap_or(cr);
        let mut node = FakeNode::new(&name).adoptable();
        node.capacity = m
            .spec
            .capacity
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        node.capacity
            .entry("pods".to_owned())
            .or_insert_with(|| Quantity("110".to_owned()));
        for (k, v) in &m.spec.labels {
            node = node.label(k, v);
        }
        node
    }
}
