//! End to end with the real Cluster Autoscaler 1.36.1 (built by tests/k8s-bins/build.sh): our
//! `run-operator` binary, a real kube-apiserver and kube-scheduler, and simulated machines.
//!
//! Each scenario runs in a lab of its own (control plane, operator, CA): a Group `desktops` of
//! powered-off machines that never registered, so CA must scale from zero on our template node
//! (built from the capacity each Node CR declares, as the README tells a user), and one always-on
//! node outside the group, tainted so the scenario's pods fit only on group machines. The
//! operator powers machines through Jobs; `support::Machines` runs those Jobs, boots a machine
//! whose power-on Job succeeded (its kubelet registers a Ready Node after a boot delay) and stops
//! one whose power-off Job succeeded (its Node goes NotReady; the operator deletes it).
//!
//! Libtest runs the scenarios side by side (each has its own processes and ports).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kubectl_homelab::operator::api::{Group, Machine};
use kubectl_homelab::operator::machine::{Phase, PowerState};
use kubectl_homelab::operator::provider::proto;
use kubectl_homelab::sim::scenario::NoTraceFiles;
use kubectl_homelab::sim::workload::replica_steps;
use kubectl_homelab::sim::{RunOptions, Scenario, Sim};
use kubectl_homelab::testing::job;
use serde_json::json;
use support::ca::CallCounts;
use support::machines::{Happened, JOB_RUNS};
use support::{
    Assets, Boot, CaOptions, ClusterAutoscaler, ControlPlane, FakeNode, Machines, MachinesConfig,
    Options, Provider, ProviderCommand, ProviderIdBy, Transport, World,
};

/// The Group's name, which is CA's node group id.
const GROUP: &str = "desktops";
/// How long CA may take for what a scenario waits for (many CA loops; the machine is shared).
const PATIENCE: Duration = Duration::from_secs(150);
/// Boot delay of a simulated machine (power-on Job succeeded to Ready Node).
const BOOT: Duration = Duration::from_secs(3);
/// `spec.bootTimeout` of the machines in the failed-boot scenarios: the operator gives a boot up
/// (and reports errorInfo to CA) well before CA's `--max-node-provision-time` there, yet a good
/// machine (Job 1 s + boot 3 s) makes it with room to spare on a loaded machine.
const BOOT_TIMEOUT: &str = "15s";

/// What a lab looks like.
struct LabSpec {
    name: &'static str,
    machines: usize,
    /// Per machine index; the rest boot after [`BOOT`].
    broken: Vec<usize>,
    provider_id_by: ProviderIdBy,
    transport: Transport,
    ca: CaOptions,
    hourly_rate: Option<&'static str>,
    /// `spec.bootTimeout` of every machine (the operator's default, 10 minutes, when `None`).
    boot_timeout: Option<&'static str>,
    /// From a machine's power-on Job succeeding to its Node registering Ready.
    boot: Duration,
    /// From a machine's power-off Job succeeding to its Node going NotReady.
    shutdown: Duration,
}

impl LabSpec {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            machines: 3,
            broken: Vec::new(),
            provider_id_by: ProviderIdBy::Kubelet,
            transport: Transport::Plaintext,
            ca: CaOptions::default(),
            hourly_rate: None,
            boot_timeout: None,
            boot: BOOT,
            shutdown: Duration::ZERO,
        }
    }
}

/// One scenario's world. Fields drop in order: the machines and CA stop before the control plane.
struct Lab {
    machines: Machines,
    ca: ClusterAutoscaler,
    provider: Provider,
    world: World,
    client: kube::Client,
    ns: String,
    /// Node CR names (also their Kubernetes node names), in the group's power-on order.
    names: Vec<String>,
    started: std::time::Instant,
    cp: ControlPlane,
}

/// Machine `i`'s Node CR (and Kubernetes node) name.
fn machine_name(i: usize) -> String {
    format!("desktop-{i}")
}

/// A powered-off machine with the capacity a user declares for scale-from-zero and Job-style
/// power actions (which `support::Machines` runs).
fn machine_cr(lab: &LabSpec, ns: &str, name: &str) -> Machine {
    let pod = job("busybox:1.37", &["true"]);
    let mut m = Machine::test(name)
        .namespace(ns)
        .group(GROUP)
        .desired(PowerState::Off)
        .node_name(name)
        .legacy_jobs(pod.clone(), pod)
        .capacity([("cpu", "2"), ("memory", "4Gi"), ("pods", "110")])
        .node_label("homelab.dev/class", "desktop");
    if let Some(rate) = lab.hourly_rate {
        m = m.pricing(rate, "0");
    }
    if let Some(t) = lab.boot_timeout {
        m = m.boot_timeout(t);
    }
    m.build()
}

/// A bare pod asking for 600m CPU and 1 GiB: two fit one 2-CPU, 4 GiB machine, and none fits
/// the tainted always-on node.
fn pod(name: &str) -> anyhow::Result<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": "scenario" } },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "app",
                "image": "registry.k8s.io/pause:3.10",
                "resources": { "requests": { "cpu": "600m", "memory": "1Gi" } },
            }],
        },
    }))
    .context("building a pod")
}

impl Lab {
    /// `Ok(None)`: binaries missing and not required (skipped).
    async fn start(spec: LabSpec) -> anyhow::Result<Option<Lab>> {
        let Some(assets) = Assets::locate(Assets::WITH_CA)? else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let cp = ControlPlane::start(&assets, &Options::default().with_scheduler()).await?;
        let ns = cp.namespace(spec.name).await?;
        let client = cp.client()?;
        create_when_served(
            &Api::namespaced(client.clone(), &ns),
            &Group::test(GROUP)
                .namespace(&ns)
                .min(0)
                .max(u32::try_from(spec.machines)?)
                .build(),
        )
        .await?;
        let crs: Api<Machine> = Api::namespaced(client.clone(), &ns);
        let names: Vec<String> = (0..spec.machines).map(machine_name).collect();
        for name in &names {
            crs.create(&PostParams::default(), &machine_cr(&spec, &ns, name))
                .await
                .with_context(|| format!("creating Node CR {ns}/{name}"))?;
        }
        let world = World::new(client.clone());
        world.node_up(&FakeNode::always_on()).await?;

        let mut config = MachinesConfig::new(&ns, spec.boot)
            .provider_id_by(spec.provider_id_by)
            .shutdown_delay(spec.shutdown);
        for i in &spec.broken {
            config = config.machine(&machine_name(*i), Boot::Never);
        }
        let machines = Machines::start(&world, config);
        let provider =
            Provider::start(&cp, &ns, ProviderCommand::RunOperator, spec.transport).await?;
        let ca = ClusterAutoscaler::start(&cp, &provider, &spec.ca)?;
        Ok(Some(Lab {
            machines,
            ca,
            provider,
            world,
            client,
            ns,
            names,
            started,
            cp,
        }))
    }

    /// Creates scenario pods `app-0`..`app-{n-1}`.
    async fn create_pods(&self, n: usize) -> anyhow::Result<()> {
        self.set_pods(0, n).await
    }

    /// From `live` scenario pods (`app-0`..) to `count`: creates the missing ones or deletes
    /// the newest.
    async fn set_pods(&self, live: usize, count: usize) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        for i in live..count {
            pods.create(&PostParams::default(), &pod(&format!("app-{i}"))?)
                .await
                .with_context(|| format!("creating pod app-{i}"))?;
        }
        for i in count..live {
            pods.delete(&format!("app-{i}"), &DeleteParams::default())
                .await
                .with_context(|| format!("deleting pod app-{i}"))?;
        }
        Ok(())
    }

    async fn delete_pods(&self) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        pods.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .context("deleting the scenario's pods")?;
        Ok(())
    }

    /// The scenario's pods, from the API server.
    async fn pods(&self) -> anyhow::Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        Ok(pods
            .list(&ListParams::default())
            .await
            .context("listing the scenario's pods")?
            .items)
    }

    /// The node each scenario pod is bound to (`None`: pending).
    async fn placements(&self) -> anyhow::Result<Vec<Option<String>>> {
        Ok(self
            .pods()
            .await?
            .into_iter()
            .map(|p| p.spec.and_then(|s| s.node_name))
            .collect())
    }

    /// How many scenario pods the scheduler marked Unschedulable.
    async fn unschedulable(&self) -> anyhow::Result<usize> {
        Ok(self
            .pods()
            .await?
            .iter()
            .filter(|p| {
                let conditions = p.status.as_ref().and_then(|s| s.conditions.as_ref());
                conditions.is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                    })
                })
            })
            .count())
    }

    /// The one node all pods are bound to, once they are.
    async fn all_pods_on_one_node(&self) -> anyhow::Result<Option<String>> {
        let placed = self.placements().await?;
        let nodes: BTreeSet<Option<String>> = placed.iter().cloned().collect();
        Ok(match nodes.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(node)] if !placed.is_empty() => Some(node.clone()),
            _ => None,
        })
    }

    /// The group's Node CRs, from the API server.
    async fn crs(&self) -> anyhow::Result<Vec<Machine>> {
        let crs: Api<Machine> = Api::namespaced(self.client.clone(), &self.ns);
        Ok(crs
            .list(&ListParams::default())
            .await
            .context("listing Node CRs")?
            .items)
    }

    /// `spec.powerState` of every machine that is `on` now, from the API server.
    async fn wanted_on(&self) -> anyhow::Result<BTreeSet<String>> {
        Ok(self
            .crs()
            .await?
            .into_iter()
            .filter(|m| m.spec.power_state == PowerState::On)
            .map(|m| m.name_any())
            .collect())
    }

    /// The operator's phase of every machine, from the API server.
    async fn phases(&self) -> anyhow::Result<BTreeMap<String, Phase>> {
        Ok(self
            .crs()
            .await?
            .into_iter()
            .map(|m| (m.name_any(), m.lifecycle().phase()))
            .collect())
    }

    /// Waits until the operator reports every machine Off.
    async fn all_off(&self) -> anyhow::Result<()> {
        self.until("the operator to report every machine Off", || async {
            let phases = self.phases().await?;
            Ok(phases.values().all(|p| *p == Phase::Off).then_some(()))
        })
        .await
    }

    /// Group machines that have a Kubernetes Node object.
    async fn registered(&self) -> anyhow::Result<BTreeSet<String>> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let names: BTreeSet<String> = nodes
            .list(&ListParams::default())
            .await
            .context("listing Nodes")?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        Ok(self
            .names
            .iter()
            .filter(|m| names.contains(*m))
            .cloned()
            .collect())
    }

    /// Polls `check` until it yields a value, failing after [`PATIENCE`] or when CA exited.
    async fn until<T, F, Fut>(&self, what: &str, mut check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            self.ca.ensure_running()?;
            if let Some(v) = check().await? {
                return Ok(v);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until CA's status ConfigMap reports `target` for the group.
    async fn ca_target(&self, target: i64) -> anyhow::Result<()> {
        self.until(
            &format!("CA's status ConfigMap to show target {target}"),
            || async { Ok((self.ca.status_target(GROUP).await? == Some(target)).then_some(())) },
        )
        .await
    }

    /// SIGKILLs the operator and starts it again, checking that no group machine registered
    /// before the kill (the scenario needs the boot in flight).
    async fn kill_and_restart_operator_before_registration(&self) -> anyhow::Result<()> {
        let registered = self.registered().await?;
        anyhow::ensure!(
            registered.is_empty(),
            "{registered:?} registered before the kill: the boot is no longer in flight"
        );
        self.provider.kill();
        self.provider.restart().await
    }

    /// Adds CA's and the provider's logs and the machines' history to a failure, and prints
    /// the scenario's wall time.
    fn finish(&self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        eprintln!(
            "scenario in {} ({}) took {:.1} s; CA's calls: {}",
            self.ns,
            self.cp.dir().display(),
            self.started.elapsed().as_secs_f64(),
            self.ca.calls()
        );
        let result = result.map_err(|e| {
            e.context(format!(
                "what the machines saw (power Jobs, phases, registrations):\n{}",
                self.machines.history()
            ))
        });
        self.ca.with_logs(&self.provider, result)
    }
}

impl Drop for Lab {
    /// A failed assertion panics past [`Lab::finish`]: show what CA and the machines did.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let shown = self.finish(Err(anyhow::anyhow!("the scenario panicked")));
            if let Err(e) = shown {
                eprintln!("{e:?}");
            }
        }
    }
}

/// Creates `obj`, retrying while the API server answers 404 for a CRD it just established.
async fn create_when_served<K>(api: &Api<K>, obj: &K) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match api.create(&PostParams::default(), obj).await {
            Err(kube::Error::Api(s)) if s.code == 404 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => return r.context("creating the first custom resource"),
        }
    }
}

/// Scenario A: two pods that fit one machine power exactly one machine on, once (a provider whose
/// target lagged would get IncreaseSize again and power on more); deleting the pods makes CA
/// taint and drain the node and call DeleteNodes once, the operator's power-off Job runs, the
/// Node object goes away, and CA's target is back to 0 with every machine Off.
#[tokio::test]
async fn a_scales_one_machine_up_for_two_pods_and_back_to_zero() -> anyhow::Result<()> {
    let Some(lab) = Lab::start(LabSpec::new("ca-a")).await? else {
        return Ok(());
    };
    let result = async {
        lab.create_pods(2).await?;
        let node = lab
            .until("both pods to be bound to one node", || {
                lab.all_pods_on_one_node()
            })
            .await?;
        assert_eq!(
            lab.machines.ever_powered_on(),
            BTreeSet::from([node.clone()]),
            "only the machine the pods run on was ever powered on"
        );
        assert_eq!(
            lab.machines.ever_wanted_on(),
            BTreeSet::from([node.clone()]),
            "the other machines never got spec.powerState: on"
        );

        lab.delete_pods().await?;
        lab.until("the machine's Node object to be deleted", || async {
            Ok(lab.registered().await?.is_empty().then_some(()))
        })
        .await?;
        lab.ca_target(0).await?;
        lab.all_off().await?;

        assert_eq!(
            lab.machines.powered_off_tainted_by_ca(),
            BTreeSet::from([node.clone()]),
            "CA tainted (and so drained) the node before the power-off"
        );
        assert_eq!(lab.wanted_on().await?, BTreeSet::new(), "every machine off");
        let once = BTreeMap::from([(node.clone(), 1)]);
        assert_eq!(lab.machines.power_ons(), once, "one power-on Job in all");
        assert_eq!(lab.machines.power_offs(), once, "one power-off Job in all");
        let calls = lab.ca.calls();
        assert_eq!(calls.increase_size(), 1, "{calls}");
        assert_eq!(calls.delete_nodes(), 1, "{calls}");
        lab.ca.ensure_no_provider_errors(&[])
    }
    .await;
    lab.finish(result)
}

/// CA's scan interval (`--scan-interval` in tests/support/ca.rs).
const SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// Scenario A2: a scale-up while the machine CA just removed is still shutting down. Two
/// machines; pods run on desktop-0; once they are gone CA drains it and calls DeleteNodes, and
/// its shutdown takes 20 s during which its Node stays Ready. New pods arrive in that window:
/// CA's scale-up orchestrator picks the group and a node count
/// (`core/scaleup/orchestrator/orchestrator.go` `ScaleUp`, then `executor.go` `executeScaleUp`
/// calls IncreaseSize(1)); which machine that powers on is the provider's choice, and it must
/// be desktop-1, which is off, not desktop-0 again. The pods run on desktop-1 within one boot
/// plus two CA scan intervals (and some slack for a loaded machine, still well under the 20 s
/// shutdown), and desktop-0 is never wanted on again.
#[tokio::test]
async fn a2_scale_up_during_a_shutdown_powers_on_the_machine_that_is_off() -> anyhow::Result<()> {
    const SHUTDOWN: Duration = Duration::from_secs(20);
    let mut spec = LabSpec::new("ca-a2");
    spec.machines = 2;
    spec.shutdown = SHUTDOWN;
    let Some(lab) = Lab::start(spec).await? else {
        return Ok(());
    };
    let result = async {
        let (first, other) = (lab.names[0].clone(), lab.names[1].clone());
        lab.create_pods(2).await?;
        let node = lab
            .until("both pods to be bound to one node", || {
                lab.all_pods_on_one_node()
            })
            .await?;
        assert_eq!(
            node, first,
            "the group's powerOnOrder (name) picks {first} first"
        );
        lab.delete_pods().await?;
        lab.until(
            &format!("{first} to be shutting down, its Node still Ready"),
            || async {
                let powering_off = lab.phases().await?.get(&first) == Some(&Phase::PoweringOff);
                let off_job = lab.machines.power_offs().contains_key(&first);
                let up = lab.registered().await?.contains(&first);
                Ok((powering_off && off_job && up).then_some(()))
            },
        )
        .await?;
        let since = Instant::now();
        lab.create_pods(2).await?;
        let placed = lab
            .until("the new pods to run on one node", || async {
                let running =
                    lab.pods().await?.iter().all(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    });
                Ok(match lab.all_pods_on_one_node().await? {
                    Some(n) if running => Some(n),
                    _ => None,
                })
            })
            .await?;
        let took = since.elapsed();
        let wanted = lab.machines.desired_changes_since(since);
        assert!(
            !wanted
                .iter()
                .any(|(_, m, p)| *m == first && *p == PowerState::On),
            "{first}, still shutting down, was not picked again: {wanted:?}"
        );
        assert_eq!(placed, other, "the pods run on the machine that was off");
        let bound = JOB_RUNS + BOOT + 2 * SCAN_INTERVAL + Duration::from_secs(6);
        assert!(
            took <= bound,
            "pods running after {took:?}, more than {bound:?} (one boot, two CA scans, slack)"
        );
        let calls = lab.ca.calls();
        assert_eq!(calls.increase_size(), 2, "{calls}");
        lab.ca.ensure_no_provider_errors(&[])
    }
    .await;
    lab.finish(result)
}

/// Scenario B: the first machine picked accepts the power-on and never registers. At its
/// `spec.bootTimeout` the operator marks it Failed (with the reason in `status.lastError`) and
/// reports the instance `instanceCreating` with errorInfo. CA reads that in
/// `clusterstate/clusterstate.go` (`handleInstanceCreationErrorsForNodeGroup`: the scale-up
/// failed, the group is backed off) and removes the instance with DeleteNodes
/// (`core/static_autoscaler.go` `deleteCreatedNodesWithErrors`), so the operator powers it off.
/// After the backoff CA's retry gets another machine (the failed one is picked last), where the
/// pods land; nothing that no pod needs stays on.
#[tokio::test]
async fn b_failed_boot_is_given_up_and_the_pods_land_on_another_machine() -> anyhow::Result<()> {
    let mut spec = LabSpec::new("ca-b");
    spec.broken = vec![0];
    spec.boot_timeout = Some(BOOT_TIMEOUT);
    // Longer than the boot timeout: the operator's errorInfo, not CA's own provision timeout
    // (`removeOldUnregisteredNodes`), is what gives the machine up.
    spec.ca = CaOptions::default().max_node_provision_time(Duration::from_secs(60));
    let Some(lab) = Lab::start(spec).await? else {
        return Ok(());
    };
    let result = async {
        let broken = machine_name(0);
        lab.create_pods(2).await?;
        let node = lab
            .until("both pods to be bound to one node", || {
                lab.all_pods_on_one_node()
            })
            .await?;
        assert_ne!(node, broken, "the pods run on a machine that booted");
        assert!(
            lab.machines.ever_powered_on().contains(&broken),
            "the broken machine was tried first (power-on order: name)"
        );
        lab.until("the broken machine to be Off", || async {
            Ok((lab.phases().await?.get(&broken) == Some(&Phase::Off)).then_some(()))
        })
        .await?;
        let reasons = lab.machines.errors_in_phase(&broken, Phase::Failed);
        assert!(
            reasons.iter().any(|r| r.contains("Ready")),
            "the broken machine was Failed with the boot timeout as its reason: {reasons:?}"
        );
        // Off now (CA's DeleteNodes cancelled it, docs/ca-contract.md, rule 7), the failure kept:
        // it is what makes the provider pick the other machines first.
        let crs: Api<Machine> = Api::namespaced(lab.client.clone(), &lab.ns);
        assert!(
            crs.get(&broken)
                .await?
                .lifecycle()
                .last_power_on_failure
                .is_some(),
            "the broken machine's status keeps lastPowerOnFailure"
        );
        assert_eq!(
            lab.wanted_on().await?,
            BTreeSet::from([node.clone()]),
            "only the machine the pods run on stays on"
        );
        assert_eq!(
            lab.machines.ever_wanted_on(),
            BTreeSet::from([broken.clone(), node.clone()]),
            "the third machine never got spec.powerState: on"
        );
        assert_eq!(
            lab.machines.power_ons(),
            BTreeMap::from([(broken.clone(), 1), (node.clone(), 1)]),
            "one power-on each: the broken machine is not retried while CA wants it off"
        );
        assert_eq!(
            lab.machines.power_offs(),
            BTreeMap::from([(broken.clone(), 1)]),
            "the broken machine was powered off"
        );
        let calls = lab.ca.calls();
        assert_eq!(
            calls.increase_size(),
            2,
            "one IncreaseSize for the broken machine, one for the retry: {calls}"
        );
        assert_eq!(
            calls.delete_nodes(),
            1,
            "one DeleteNodes for the broken machine: {calls}"
        );
        lab.ca.ensure_no_provider_errors(&[])
    }
    .await;
    lab.finish(result)
}

/// Scenario B with a one-machine group whose machine never registers, given up by CA itself
/// (the operator's boot timeout is its default, 10 minutes): after `--max-node-provision-time`
/// CA removes the long-unregistered instance (`core/static_autoscaler.go`
/// `removeOldUnregisteredNodes`: DeleteNodes; when its scale-up request times out first,
/// `clusterstate/clusterstate.go` `updateScaleRequests` reverts it with DecreaseTargetSize, so
/// both are counted) and backs the group off. No IncreaseSize/DeleteNodes loop (a provider that
/// re-picks the machine CA still lists as long-unregistered makes CA call both every loop, ~30 a
/// minute at a 2 s scan). Counted over a 45 s window after CA first gave up: CA's exponential
/// backoff (10 s, 20 s, 40 s, `utils/backoff/exponential_backoff.go`) allows the first IncreaseSize
/// and three retries (at once, 10 s and 30 s later), each refused (the only machine is cooling down
/// after its failed boot).
#[tokio::test]
async fn b_one_machine_group_with_a_failed_boot_does_not_loop() -> anyhow::Result<()> {
    let mut spec = LabSpec::new("ca-b1");
    spec.machines = 1;
    spec.broken = vec![0];
    spec.ca = CaOptions::default().max_node_provision_time(Duration::from_secs(15));
    let Some(lab) = Lab::start(spec).await? else {
        return Ok(());
    };
    let result = async {
        lab.create_pods(1).await?;
        lab.until("CA to give up on the machine", || async {
            let calls = lab.ca.calls();
            Ok((calls.delete_nodes() + calls.decrease_target_size() > 0).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(45)).await;
        let calls = lab.ca.calls();
        assert!(
            calls.increase_size() <= 4,
            "IncreaseSize called {} times: a retry loop ({calls})",
            calls.increase_size()
        );
        assert!(
            calls.delete_nodes() <= 2,
            "DeleteNodes called {} times: a retry loop ({calls})",
            calls.delete_nodes()
        );
        assert!(
            calls.decrease_target_size() <= 2,
            "DecreaseTargetSize called {} times: a retry loop ({calls})",
            calls.decrease_target_size()
        );
        assert_eq!(
            lab.placements().await?,
            vec![None],
            "the pod stays pending: nothing can host it"
        );
        let machine = machine_name(0);
        assert_eq!(
            lab.machines.power_ons(),
            BTreeMap::from([(machine.clone(), 1)]),
            "the failed machine is not powered on again"
        );
        assert_eq!(lab.wanted_on().await?, BTreeSet::new(), "it is wanted off");
        lab.all_off().await?;
        // With only a machine whose power-on just failed left, IncreaseSize is refused with
        // ResourceExhausted (CA backs the group off): expected, not a provider error.
        lab.ca.ensure_no_provider_errors(&[
            "NodeGroupIncreaseSize: rpc error: code = ResourceExhausted",
        ])
    }
    .await;
    lab.finish(result)
}

/// Scenario C: CA restarted while every machine is off and pods are pending still scales up:
/// nothing registered is left to copy, so the new CA has only our template node. Runs over
/// mutual TLS, and the machines' kubelets register without a providerID (the operator sets it).
#[tokio::test]
async fn c_restarted_ca_scales_up_from_zero_over_mtls() -> anyhow::Result<()> {
    let mut spec = LabSpec::new("ca-c");
    spec.transport = Transport::Mtls;
    spec.provider_id_by = ProviderIdBy::Operator;
    let Some(lab) = Lab::start(spec).await? else {
        return Ok(());
    };
    let result = async {
        // CA ran (and talked to the provider over mTLS) before it is stopped.
        lab.ca_target(0).await?;
        lab.ca.stop(Duration::from_secs(5)).await;
        lab.create_pods(2).await?;
        lab.until("the scheduler to find no room for the pods", || async {
            Ok((lab.unschedulable().await? == 2).then_some(()))
        })
        .await?;
        assert_eq!(
            lab.wanted_on().await?,
            BTreeSet::new(),
            "all off while CA is away"
        );
        lab.ca.restart(Duration::from_secs(5)).await?;

        let node = lab
            .until("both pods to be bound to one node", || {
                lab.all_pods_on_one_node()
            })
            .await?;
        assert_eq!(
            lab.machines.power_ons(),
            BTreeMap::from([(node.clone(), 1)])
        );
        let id = format!("homelab://{}/{node}", lab.ns);
        lab.until("the operator to set the Node's providerID", || async {
            let n = Api::<Node>::all(lab.client.clone()).get(&node).await?;
            Ok((n.spec.and_then(|s| s.provider_id).as_deref() == Some(id.as_str())).then_some(()))
        })
        .await?;
        assert!(lab.ca.healthy().await?, "the restarted CA reports healthy");
        let calls = lab.ca.calls();
        assert_eq!(calls.increase_size(), 1, "{calls}");
        assert_eq!(calls.delete_nodes(), 0, "{calls}");
        assert!(
            calls.get("Cleanup") >= 1,
            "CA said goodbye when stopped: {calls}"
        );
        lab.ca.ensure_no_provider_errors(&[])
    }
    .await;
    lab.finish(result)
}

/// Scenario D (a SIGKILL restart of the real `run-operator` binary): the operator is SIGKILLed
/// twice between CA's IncreaseSize and the machine's registration, and started again each time:
/// once as soon as its power-on Job exists (usually still running), once after the Job succeeded
/// while the machine boots. Each restarted operator picks the boot up from the Node
/// CR's status and the Job (deterministic name): no second power-on Job, the machine ends Ready,
/// CA sees one machine and the pods bind.
#[tokio::test]
async fn d_operator_killed_mid_boot_finishes_it_after_a_restart() -> anyhow::Result<()> {
    let mut spec = LabSpec::new("ca-d");
    // Room for the second kill and restart between the power-on Job's success and the boot.
    spec.boot = Duration::from_secs(8);
    let Some(lab) = Lab::start(spec).await? else {
        return Ok(());
    };
    let result = async {
        lab.create_pods(2).await?;
        let machine = lab
            .until("the operator to create a power-on Job", || async {
                Ok(lab.machines.ever_powered_on().into_iter().next())
            })
            .await?;
        lab.kill_and_restart_operator_before_registration().await?;
        lab.until("the power-on Job to succeed", || async {
            let done = Happened::PowerJobDone("on".to_owned());
            Ok(lab.machines.saw(&machine, &done).then_some(()))
        })
        .await?;
        lab.kill_and_restart_operator_before_registration().await?;

        let node = lab
            .until("both pods to be bound to one node", || {
                lab.all_pods_on_one_node()
            })
            .await?;
        assert_eq!(node, machine, "the pods run on the machine being booted");
        lab.until("the operator to report the machine Ready", || async {
            Ok((lab.phases().await?.get(&machine) == Some(&Phase::Ready)).then_some(()))
        })
        .await?;
        lab.ca_target(1).await?;
        assert_eq!(
            lab.machines.power_ons(),
            BTreeMap::from([(machine.clone(), 1)]),
            "one power-on Job across both kills"
        );
        assert_eq!(
            lab.machines.ever_wanted_on(),
            BTreeSet::from([machine.clone()])
        );
        assert_eq!(instances(&lab).await?.len(), 1, "CA is told of one machine");
        let calls = lab.ca.calls();
        assert_eq!(calls.increase_size(), 1, "{calls}");
        assert_eq!(calls.delete_nodes(), 0, "{calls}");
        // While the operator is down CA's calls find nobody listening.
        lab.ca.ensure_no_provider_errors(&["code = Unavailable"])
    }
    .await;
    lab.finish(result)
}

/// What the provider tells CA about the group's instances (the same RPC CA calls).
async fn instances(lab: &Lab) -> anyhow::Result<Vec<proto::Instance>> {
    let mut c = lab.provider.client().await?;
    Ok(
        c.node_group_nodes(proto::NodeGroupNodesRequest { id: GROUP.into() })
            .await
            .context("NodeGroupNodes")?
            .into_inner()
            .instances,
    )
}

/// Scenario E: a running machine's node goes NotReady for a while (20 s, ten CA loops; with
/// run-operator, longer than its NotReady grace) while its pods run there. The provider keeps
/// reporting the instance Running without errorInfo (docs/ca-contract.md, rule 7: errorInfo there
/// would make CA delete it undrained), CA calls no DeleteNodes (its `--scale-down-unready-time`,
/// 20 min, decides), and nothing powers the machine off.
#[tokio::test]
async fn e_not_ready_blip_powers_nothing_off() -> anyhow::Result<()> {
    // run-operator's NotReady grace is 3 s here (`support::Provider`).
    let Some(lab) = Lab::start(LabSpec::new("ca-e")).await? else {
        return Ok(());
    };
    let result = async {
        lab.create_pods(2).await?;
        let node = lab
            .until("both pods to be bound to one node", || {
                lab.all_pods_on_one_node()
            })
            .await?;
        lab.until("the pods to run", || async {
            Ok(lab.world.run_pods(&node).await.is_ok().then_some(()))
        })
        .await?;
        // A running machine: the operator has seen it Ready (the scheduler binds pods as soon as
        // the Node is Ready, which can be before the operator's status says so).
        lab.until("the machine to be Running for CA", || async {
            let listed = instances(&lab).await?;
            Ok((!listed.is_empty()
                && listed.iter().all(|i| {
                    i.status.as_ref().is_some_and(|s| {
                        s.instance_state
                            == proto::instance_status::InstanceState::InstanceRunning as i32
                    })
                }))
            .then_some(()))
        })
        .await?;

        lab.world.node_ready(&node, false).await?;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let listed = instances(&lab).await?;
            let states: Vec<(String, i32, bool)> = listed
                .iter()
                .map(|i| {
                    let s = i.status.clone().unwrap_or_default();
                    (i.id.clone(), s.instance_state, s.error_info.is_some())
                })
                .collect();
            assert_eq!(
                states,
                vec![(
                    format!("homelab://{}/{node}", lab.ns),
                    proto::instance_status::InstanceState::InstanceRunning as i32,
                    false
                )],
                "a NotReady registered machine stays Running, without errorInfo"
            );
        }
        lab.world.node_ready(&node, true).await?;
        // A few more loops: CA would act on a failed instance in its next loops.
        tokio::time::sleep(Duration::from_secs(6)).await;

        assert_eq!(lab.wanted_on().await?, BTreeSet::from([node.clone()]));
        assert_eq!(
            lab.machines.power_ons(),
            [(node.clone(), 1)].into_iter().collect()
        );
        assert_eq!(lab.all_pods_on_one_node().await?, Some(node));
        assert_eq!(
            lab.machines.power_offs(),
            BTreeMap::new(),
            "no power-off Job"
        );
        let calls = lab.ca.calls();
        assert_eq!(calls.delete_nodes(), 0, "{calls}");
        assert_eq!(calls.increase_size(), 1, "{calls}");
        lab.ca.ensure_no_provider_errors(&[])
    }
    .await;
    lab.finish(result)
}

/// With `--expander=price` CA scales up (docs/ca-contract.md, rule 11). `expander/price/price.go`
/// drops every option whose pod price (PricingPodPrice) or node price (PricingNodePrice) fails, so
/// a provider that cannot price a pod gets no scale-up at all.
#[tokio::test]
async fn price_expander_scales_up() -> anyhow::Result<()> {
    let mut spec = LabSpec::new("ca-price");
    spec.ca = CaOptions::default().expander("price");
    spec.hourly_rate = Some("0.05");
    let Some(lab) = Lab::start(spec).await? else {
        return Ok(());
    };
    let result = async {
        lab.create_pods(2).await?;
        let node = lab
            .until("both pods to be bound to one node", || {
                lab.all_pods_on_one_node()
            })
            .await?;
        assert_eq!(
            lab.machines.ever_wanted_on(),
            BTreeSet::from([node.clone()])
        );
        assert_eq!(lab.machines.power_ons(), BTreeMap::from([(node, 1)]));
        let calls = lab.ca.calls();
        assert_eq!(calls.increase_size(), 1, "{calls}");
        assert_eq!(calls.delete_nodes(), 0, "{calls}");
        assert!(
            calls.get("PricingPodPrice") >= 1,
            "the price expander ran: {calls}"
        );
        lab.ca.ensure_no_provider_errors(&[])
    }
    .await;
    lab.finish(result)
}

/// Scenario F: `simulate` against the real CA. tests/data/sim/versus-ca.yaml
/// describes this lab (three 2-CPU machines, the Job and boot times of `support::Machines`, CA's
/// flags) and a workload of bare 600m pods: 2 from 0 s, 5 from 20 s, none from 60 s. `simulate`
/// runs it on virtual time; then CA 1.36.1 runs it here on wall time with the flags read from the
/// same file, the test creating and deleting the pods on the file's schedule. The real run must
/// change the same machines' `spec.powerState` the same way (which machines, on/off, how many),
/// in the same order, each within the scan interval plus a machine's power action and boot of
/// the simulated time, and call IncreaseSize as often as the simulation did.
#[tokio::test]
async fn f_simulate_agrees_with_the_real_ca() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sim/versus-ca.yaml");
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let sc = Scenario::parse(path, &text, &NoTraceFiles).map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = RunOptions {
        timeline: true,
        ..RunOptions::default()
    };
    let sim = Sim::new(&sc, opts)
        .run(&mut |_, _| {})
        .map_err(|e| anyhow::anyhow!("simulate {path}: {e}"))?;
    let expected: Vec<PowerChange> = sim
        .power_requests
        .iter()
        .map(|p| PowerChange {
            at: Duration::from_millis(p.at),
            machine: p.machine.clone(),
            desired: p.desired,
        })
        .collect();
    let machine = sc.machines.first().context("no machine in the scenario")?;
    let tolerance = Duration::from_millis(
        sc.autoscaler.scan_interval
            + machine.power_on_action_time.mean()
            + machine.boot_time.mean(),
    );
    let spec = LabSpec {
        ca: ca_flags_of(&sc),
        ..LabSpec::new("ca-f")
    };
    let Some(lab) = Lab::start(spec).await? else {
        return Ok(());
    };
    let result = async {
        // CA has gone through its loops once (its status shows the group) when the clock starts.
        lab.ca_target(0).await?;
        let t0 = Instant::now();
        let mut live = 0;
        for (at, _, count) in replica_steps(&sc.workloads, sc.duration) {
            tokio::time::sleep_until((t0 + Duration::from_millis(at)).into()).await;
            lab.set_pods(live, count as usize).await?;
            live = count as usize;
        }
        let real = lab
            .until("as many power changes as the simulation made", || async {
                let seen = lab.machines.desired_changes_since(t0);
                Ok((seen.len() >= expected.len()).then_some(seen))
            })
            .await?;
        let real: Vec<PowerChange> = real
            .into_iter()
            .map(|(at, machine, desired)| PowerChange {
                at,
                machine,
                desired,
            })
            .collect();
        eprintln!("simulated: {expected:?}\nreal CA:   {real:?}\ntolerance: {tolerance:?}");
        agree(&expected, &real, tolerance)?;
        anyhow::ensure!(
            lab.ca.calls().increase_size() == sim.counters.scale_ups as usize,
            "CA called IncreaseSize {} times, the simulation {}",
            lab.ca.calls().increase_size(),
            sim.counters.scale_ups
        );
        lab.ca.ensure_no_provider_errors(&[])
    }
    .await;
    lab.finish(result)
}

/// A desired-power change of one machine, at a time from the start of the workload.
#[derive(Debug, Clone, PartialEq)]
struct PowerChange {
    at: Duration,
    machine: String,
    desired: PowerState,
}

/// The CA flags a scenario's `autoscaler:` section stands for (Go durations in milliseconds).
fn ca_flags_of(sc: &Scenario) -> CaOptions {
    let a = &sc.autoscaler;
    let ms = |v: u64| format!("{v}ms");
    let flags = [
        ("scan-interval", ms(a.scan_interval)),
        ("max-node-provision-time", ms(a.max_node_provision_time)),
        ("scale-down-unneeded-time", ms(a.scale_down_unneeded_time)),
        (
            "scale-down-delay-after-add",
            ms(a.scale_down_delay_after_add),
        ),
        (
            "scale-down-delay-after-delete",
            ms(a.scale_down_delay_after_delete),
        ),
        (
            "scale-down-delay-after-failure",
            ms(a.scale_down_delay_after_failure),
        ),
        (
            "unremovable-node-recheck-timeout",
            ms(a.unremovable_node_recheck_timeout),
        ),
        ("initial-node-group-backoff-duration", ms(a.backoff_initial)),
        ("max-node-group-backoff-duration", ms(a.backoff_max)),
        (
            "node-delete-delay-after-taint",
            ms(a.node_delete_delay_after_taint),
        ),
        (
            "scale-down-utilization-threshold",
            a.scale_down_utilization_threshold.to_string(),
        ),
    ];
    flags
        .into_iter()
        .fold(CaOptions::default(), |o, (flag, v)| {
            o.arg(&format!("--{flag}={v}"))
        })
}

/// Whether the real run made the simulated changes: the same machines, each with the same
/// sequence of desired states, each change within `tolerance` of its simulated time; and
/// changes the simulation spaced more than `tolerance` apart in the same order.
fn agree(
    expected: &[PowerChange],
    real: &[PowerChange],
    tolerance: Duration,
) -> anyhow::Result<()> {
    let by_machine = |changes: &[PowerChange]| {
        let mut out: BTreeMap<String, Vec<(Duration, PowerState)>> = BTreeMap::new();
        for c in changes {
            out.entry(c.machine.clone())
                .or_default()
                .push((c.at, c.desired));
        }
        out
    };
    let (want, got) = (by_machine(expected), by_machine(real));
    let states = |m: &BTreeMap<String, Vec<(Duration, PowerState)>>| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|c| c.1).collect::<Vec<_>>()))
            .collect::<BTreeMap<_, _>>()
    };
    anyhow::ensure!(
        states(&want) == states(&got),
        "different power changes per machine: simulated {:?}, real {:?}",
        states(&want),
        states(&got)
    );
    for (machine, changes) in &want {
        for (k, (at, desired)) in changes.iter().enumerate() {
            let real_at = got[machine][k].0;
            anyhow::ensure!(
                real_at.abs_diff(*at) <= tolerance,
                "{machine} wanted {desired:?} at {real_at:?} with the real CA, at {at:?} in the \
                 simulation (more than {tolerance:?} apart)"
            );
        }
    }
    // The k-th change of a machine in `real`, for the order check.
    let real_at = |c: &PowerChange, k: usize| got[&c.machine][k].0;
    let nth = |changes: &[PowerChange], i: usize| {
        changes[..i]
            .iter()
            .filter(|c| c.machine == changes[i].machine)
            .count()
    };
    for i in 0..expected.len() {
        for j in i + 1..expected.len() {
            let (a, b) = (&expected[i], &expected[j]);
            if b.at > a.at + tolerance {
                anyhow::ensure!(
                    real_at(a, nth(expected, i)) <= real_at(b, nth(expected, j)),
                    "the simulation wanted {} {:?} before {} {:?}; the real CA the other way round",
                    a.machine,
                    a.desired,
                    b.machine,
                    b.desired
                );
            }
        }
    }
    Ok(())
}

#[test]
fn counts_calls_from_cas_v5_lines() {
    let log = [
        "I1129 20:01:02.000000 1 externalgrpc_cloud_provider.go:327] Performing gRPC call Refresh",
        "I1129 20:01:02.1 1 externalgrpc_node_group.go:86] Performing gRPC call NodeGroupIncreaseSize for node group g",
        "I1129 20:01:02.2 1 externalgrpc_node_group.go:114] Performing gRPC call NodeGroupDeleteNodes for node group g",
        "I1129 20:01:02.3 1 externalgrpc_cloud_provider.go:124] Returning cached information for NodeGroupForNode for node a - b",
        "I1129 20:01:04.1 1 externalgrpc_node_group.go:86] Performing gRPC call NodeGroupIncreaseSize for node group g",
    ];
    let c = CallCounts::from_log(log.into_iter());
    assert_eq!(c.increase_size(), 2);
    assert_eq!(c.delete_nodes(), 1);
    assert_eq!(c.get("Refresh"), 1);
    assert_eq!(c.get("NodeGroupForNode"), 0);
}

#[test]
fn finds_provider_errors_and_skips_expected_ones() {
    let log = [
        "I1129 1 externalgrpc_node_group.go:92] Error on gRPC call NodeGroupIncreaseSize: rpc error: code = ResourceExhausted desc = x",
        "E1129 1 static_autoscaler.go:478] Failed to fix node group sizes: boom",
        "I1129 1 static_autoscaler.go:1] all fine",
    ];
    assert_eq!(support::ca::provider_errors(log.into_iter(), &[]).len(), 2);
    let left = support::ca::provider_errors(log.into_iter(), &["code = ResourceExhausted"]);
    assert_eq!(left.len(), 1);
    assert!(left[0].contains("Failed to fix"), "{left:?}");
}

// --- Maintenance: a machine under maintenance is outside CA's view of its group.

/// Two machines; two pods power desktop-0 on. `kubectl homelab maintenance start` drains it
/// (keeping it on), and two new pods arrive: the drained node is cordoned, so CA must power on
/// ANOTHER machine, and it does (IncreaseSize picks desktop-1). The machine under maintenance is
/// no node of the group for CA (`NodeGroupForNode` answers none: CA's
/// `core/scaledown/eligibility/eligibility.go` skips it as not autoscaled) and no instance
/// (`NodeGroupNodes` leaves it out: `clusterstate/clusterstate.go` `getNotRegisteredNodes` never
/// sees it), so over several scale-down windows CA never sends it to DeleteNodes and logs no
/// provider error and nothing about it being unregistered or failed.
#[tokio::test]
async fn maintenance_a_drained_machine_is_never_scaled_down_and_another_one_powers_on()
-> anyhow::Result<()> {
    let mut spec = LabSpec::new("ca-maint");
    spec.machines = 2;
    let Some(lab) = Lab::start(spec).await? else {
        return Ok(());
    };
    let result = async {
        lab.create_pods(2).await?;
        let node = lab
            .until("both pods to be bound to one node", || {
                lab.all_pods_on_one_node()
            })
            .await?;
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
            .args(["maintenance", "start", &node, "-n", &lab.ns, "--yes"])
            .args(["--power", "keep", "--reason", "swap a disk"])
            .arg("--kubeconfig")
            .arg(lab.cp.kubeconfig())
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("running kubectl-homelab maintenance start")?;
        anyhow::ensure!(
            out.status.success(),
            "maintenance start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.set_pods(2, 4).await?;
        let other = lab
            .until("the new pods to be bound to one other node", || async {
                let placed: Vec<Option<String>> = lab.placements().await?;
                let nodes: BTreeSet<Option<String>> = placed.into_iter().collect();
                Ok(match nodes.into_iter().collect::<Vec<_>>().as_slice() {
                    [Some(n)] if *n != node => Some(n.clone()),
                    _ => None,
                })
            })
            .await?;
        // Several of CA's scale-down windows (15 s unneeded time) with the maintenance node
        // empty: an ordinary node of the group would be removed by now.
        tokio::time::sleep(Duration::from_secs(45)).await;
        lab.ca.ensure_running()?;

        assert_eq!(
            lab.machines.ever_wanted_on(),
            BTreeSet::from([node.clone(), other.clone()])
        );
        assert!(
            lab.wanted_on().await?.contains(&node),
            "--power keep: still on"
        );
        let nodes: Api<Node> = Api::all(lab.client.clone());
        let n = nodes.get(&node).await?;
        assert_eq!(
            n.spec.and_then(|s| s.unschedulable),
            Some(true),
            "still cordoned"
        );
        let calls = lab.ca.calls();
        assert_eq!(calls.increase_size(), 2, "{calls}");
        assert_eq!(calls.delete_nodes(), 0, "{calls}");
        let about_it: Vec<String> = lab
            .ca
            .log_lines()
            .into_iter()
            .filter(|l| {
                let lower = l.to_ascii_lowercase();
                l.contains(&node)
                    && ["unregistered", "errorinfo", "failed", "deletenodes"]
                        .iter()
                        .any(|w| lower.contains(w))
            })
            .collect();
        assert!(about_it.is_empty(), "{about_it:#?}");
        lab.ca.ensure_no_provider_errors(&[])
    }
    .await;
    lab.finish(result)
}

// --- Warm spares: CA's CapacityBuffer controller and pod injection (flags as the chart passes
// them, tests/support/spares.rs) with the buffer the operator keeps for a Group's
// spec.warmSpares (src/operator/controller/spares.rs).

/// Warm spares with the real CA. Two machines, both off, and `warmSpares: {count: 1}` (a whole
/// machine). CA's buffer controller (`capacitybuffer/controller/controller.go`) resolves the
/// operator's CapacityBuffer into one fake pod, its pod list processor
/// (`processors/capacitybuffer/pod_list_processor.go`, `Process`) adds it to the unschedulable
/// pods, and CA powers desktop-0 on for it. Past the scale-down unneeded time CA keeps it on
/// (the fake pod, placed on it by `filterOutSchedulablePodListProcessor` in the cluster
/// snapshot, makes it used). Two real pods then land on desktop-0 with no further IncreaseSize
/// or power-on before they are bound; the placeholder no longer fits there, and CA powers
/// desktop-1 on to hold it: one IncreaseSize and one power-on Job per machine in all.
#[tokio::test]
async fn warm_spare_is_held_on_a_running_machine_and_replaced_after_a_burst() -> anyhow::Result<()>
{
    let mut spec = LabSpec::new("ca-spares");
    spec.machines = 2;
    for flag in support::spares::CA_BUFFER_FLAGS {
        spec.ca = spec.ca.arg(flag);
    }
    let hold = spec.ca.scale_down_after + SCAN_INTERVAL * 3;
    let Some(lab) = Lab::start(spec).await? else {
        return Ok(());
    };
    let result = async {
        // CA waits at start-up for its buffer informer, which syncs once the CRD is served.
        support::spares::install_capacity_buffer_crd(&lab.cp).await?;
        let groups: Api<Group> = Api::namespaced(lab.client.clone(), &lab.ns);
        groups
            .patch(
                GROUP,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({ "spec": { "warmSpares": { "count": 1 } } })),
            )
            .await
            .context("asking for one warm spare")?;
        let first = lab.names[0].clone();
        let second = lab.names[1].clone();

        lab.until("desktop-0 to register for the warm spare", || async {
            Ok(lab.registered().await?.contains(&first).then_some(()))
        })
        .await?;
        tokio::time::sleep(hold).await;
        assert_eq!(
            lab.machines.power_ons(),
            BTreeMap::from([(first.clone(), 1)]),
            "one machine powered on for the placeholder, and kept on"
        );
        assert_eq!(
            lab.wanted_on().await?,
            BTreeSet::from([first.clone()]),
            "{hold:?} later"
        );
        let calls = lab.ca.calls();
        assert_eq!(calls.increase_size(), 1, "{calls}");
        assert_eq!(calls.delete_nodes(), 0, "{calls}");

        // The burst: bound to the machine already on, polled tightly so that CA's next loops
        // (the replacement) cannot have happened before it is seen.
        lab.create_pods(2).await?;
        let deadline = Instant::now() + PATIENCE;
        let node = loop {
            if let Some(node) = lab.all_pods_on_one_node().await? {
                break node;
            }
            anyhow::ensure!(Instant::now() < deadline, "the burst was not bound");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let calls_at_binding = lab.ca.calls();
        let power_ons_at_binding = lab.machines.power_ons();
        assert_eq!(node, first, "the burst ran on the spare machine");
        assert_eq!(
            calls_at_binding.increase_size(),
            1,
            "no scale-up before the burst was bound: {calls_at_binding}"
        );
        assert_eq!(
            power_ons_at_binding,
            BTreeMap::from([(first.clone(), 1)]),
            "no power-on before the burst was bound"
        );
        assert_eq!(lab.unschedulable().await?, 0);

        lab.until(
            "desktop-1 to register to hold the placeholder again",
            || async { Ok(lab.registered().await?.contains(&second).then_some(())) },
        )
        .await?;
        tokio::time::sleep(SCAN_INTERVAL * 3).await;
        assert_eq!(
            lab.machines.power_ons(),
            BTreeMap::from([(first.clone(), 1), (second.clone(), 1)]),
            "one power-on Job per machine in all"
        );
        let calls = lab.ca.calls();
        assert_eq!(calls.increase_size(), 2, "{calls}");
        assert_eq!(calls.delete_nodes(), 0, "{calls}");

        // The buffer CA read is the operator's, owned by the Group, resolved to one replica.
        let gvk =
            kube::api::GroupVersionKind::gvk("autoscaling.x-k8s.io", "v1beta1", "CapacityBuffer");
        let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "capacitybuffers");
        let buffers: Api<kube::api::DynamicObject> =
            Api::namespaced_with(lab.client.clone(), &lab.ns, &resource);
        let buffer = buffers
            .get(&format!("{GROUP}-warm-spares"))
            .await
            .context("the Group's CapacityBuffer")?;
        assert_eq!(
            buffer
                .metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].kind.as_str()),
            Some("Group")
        );
        assert_eq!(buffer.data["status"]["replicas"], 1, "{:?}", buffer.data);
        lab.ca.ensure_no_provider_errors(&[])
    }
    .await;
    lab.finish(result)
}

// --- Schedule windows: MinSize by window ----------------------------------------------------

/// Sets the Group's `spec.schedule` (a JSON array; `[]` removes every window).
async fn set_schedule(lab: &Lab, windows: serde_json::Value) -> anyhow::Result<()> {
    let groups: Api<Group> = Api::namespaced(lab.client.clone(), &lab.ns);
    let patch = json!({ "spec": { "schedule": windows } });
    groups
        .patch(
            GROUP,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .context("setting the Group's schedule")?;
    Ok(())
}

/// A schedule window in force raises the group's minimum from 0 to 1 with no pods at all; the
/// first machine comes on and CA keeps it while the window holds, then removes it once the
/// window is gone.
///
/// Without `--enforce-node-group-min-size` CA never scales a group up to its MinSize: only
/// `RunOnce` (`core/static_autoscaler.go`) calls `ScaleUpToNodeGroupMinSize`
/// (`core/scaleup/orchestrator/orchestrator.go`), and only under that flag; so the operator
/// raises the target itself and CA sees the machine as an upcoming node (TargetSize 1). CA's
/// scale-down does not go below MinSize: `RemovableAt` (`core/scaledown/unneeded/nodes.go`)
/// drops a node as `NodeGroupMinSizeReached` when the group's TargetSize less deletions in
/// progress is at MinSize (`verifyMinSize`). With the flag, CA computes `MinSize - TargetSize`
/// from a TargetSize read right before its IncreaseSize, so whichever of CA and the operator
/// comes second adds nothing: one machine either way.
async fn schedule_window_keeps_one_machine(
    name: &'static str,
    enforce: bool,
) -> anyhow::Result<()> {
    let mut spec = LabSpec::new(name);
    spec.machines = 2;
    spec.ca.scale_down_after = Duration::from_secs(4);
    if enforce {
        spec.ca = spec.ca.arg("--enforce-node-group-min-size=true");
    }
    let Some(lab) = Lab::start(spec).await? else {
        return Ok(());
    };
    let result = async {
        // The whole day: the window holds for the whole test.
        set_schedule(
            &lab,
            json!([{ "name": "always", "from": "00:00", "to": "24:00", "minSize": 1 }]),
        )
        .await?;
        let first = lab.names[0].clone();
        lab.until("the first machine to register", || async {
            Ok(lab.registered().await?.contains(&first).then_some(()))
        })
        .await?;
        lab.ca_target(1).await?;
        // Unneeded (no pods) for well past --scale-down-unneeded-time: CA keeps it.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(
            lab.wanted_on().await?,
            BTreeSet::from([first.clone()]),
            "kept on while the window holds"
        );
        assert_eq!(lab.ca.calls().delete_nodes(), 0, "{}", lab.ca.calls());
        assert_eq!(
            lab.machines.ever_wanted_on(),
            BTreeSet::from([first.clone()]),
            "one machine wanted on, not one by CA and one by the operator"
        );
        if !enforce {
            assert_eq!(lab.ca.calls().increase_size(), 0, "{}", lab.ca.calls());
        }

        // The window gone: the operator powers nothing off, CA's scale-down removes it.
        set_schedule(&lab, json!([])).await?;
        lab.until("the machine's Node object to be deleted", || async {
            Ok(lab.registered().await?.is_empty().then_some(()))
        })
        .await?;
        lab.ca_target(0).await?;
        assert_eq!(lab.ca.calls().delete_nodes(), 1, "{}", lab.ca.calls());
        lab.ca.ensure_no_provider_errors(&[])
    }
    .await;
    lab.finish(result)
}

#[tokio::test]
async fn g_schedule_window_min_size_keeps_a_machine_on_without_cas_min_size_flag()
-> anyhow::Result<()> {
    schedule_window_keeps_one_machine("ca-sched", false).await
}

#[tokio::test]
async fn g_schedule_window_min_size_with_enforce_node_group_min_size_adds_one_machine()
-> anyhow::Result<()> {
    schedule_window_keeps_one_machine("ca-sched-enf", true).await
}
