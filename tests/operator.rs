//! The operator's controllers against a real control plane (etcd + kube-apiserver from
//! tests/k8s-bins), with the harness world playing the kubelets and the Job controller: machines
//! really move through their lifecycle, driven by power Jobs.

mod support;
mod support_power;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use kubectl_homelab::operator::api::{Direction, Group, Machine};
use kubectl_homelab::operator::ca::SCALE_DOWN_DISABLED;
use kubectl_homelab::operator::cache::Scope;
use kubectl_homelab::operator::controller::{self, Settings};
use kubectl_homelab::operator::machine::{Phase, Policy, PowerState};
use kubectl_homelab::operator::node::drain::DrainClient;
use kubectl_homelab::operator::power::job::{DIRECTION_LABEL, MACHINE_LABEL};
use kubectl_homelab::operator::provider::cluster::ClusterSource;
use kubectl_homelab::testing::{MachineBuilder, taint};
use serde_json::json;
use support::world::{JobOutcome, job_finished};
use support::{Background, ControlPlane, FakeNode, World};

const SYNC: Duration = Duration::from_secs(30);
/// How long a test waits for the operator to reach a state (it normally takes a second or two).
const WAIT: Duration = Duration::from_secs(45);

/// Everything the in-process operators of this test binary logged, for the checks that no
/// secret value is ever logged.
static OPERATOR_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Writes the operator's log to the test output (shown when a test fails) and to
/// [`OPERATOR_LOG`].
struct LogTee;

impl std::io::Write for LogTee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = OPERATOR_LOG.lock() {
            log.extend_from_slice(buf);
        }
        print!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A namespace with Group `g`, an operator running on it, and the world playing kubelets.
struct Lab {
    ns: String,
    client: Client,
    world: World,
    _operator: Background,
}

/// Short timings so a test takes seconds: retries after 1 s, 2 s; three attempts.
fn fast_settings() -> Settings {
    Settings {
        drain_timeout: Duration::from_secs(6),
        poll_interval: Duration::from_millis(500),
        concurrency: 4,
        policy: Policy {
            backoff_base: jiff::SignedDuration::from_secs(1),
            backoff_cap: jiff::SignedDuration::from_secs(2),
            max_attempts: 3,
            not_ready_grace: jiff::SignedDuration::from_secs(3),
            ..Policy::default()
        },
        ..Settings::default()
    }
}

impl Lab {
    async fn start(cp: &ControlPlane, prefix: &str) -> anyhow::Result<Lab> {
        Lab::start_with(cp, prefix, fast_settings()).await
    }

    /// [`Lab::start`] with the operator's settings `settings`.
    async fn start_with(
        cp: &ControlPlane,
        prefix: &str,
        settings: Settings,
    ) -> anyhow::Result<Lab> {
        // The operator's log in the test output (shown when a test fails).
        let _ = tracing_subscriber::fmt()
            .with_env_filter("kubectl_homelab=debug")
            .with_ansi(false)
            .with_writer(|| LogTee)
            .try_init();
        let ns = cp.namespace(prefix).await?;
        let client = cp.client()?;
        let group = Group::test("g").namespace(&ns).min(0).max(3).build();
        Api::<Group>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &group)
            .await
            .context("creating Group g")?;
        let operator = start_operator(cp, &ns, settings).await?;
        Ok(Lab {
            world: World::new(client.clone()),
            ns,
            client,
            _operator: operator,
        })
    }

    fn machines(&self) -> Api<Machine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Node CR `name` in Group `g`, as a homelab owner writes one: off, powered on and off by
    /// Jobs, with the capacity and a label its Node will have.
    fn machine(&self, name: &str) -> MachineBuilder {
        Machine::test(name)
            .namespace(&self.ns)
            .group("g")
            .desired(PowerState::Off)
            .capacity([("cpu", "4"), ("memory", "8Gi"), ("pods", "110")])
            .node_label("homelab.example/disk", "ssd")
    }

    async fn create(&self, m: MachineBuilder) -> anyhow::Result<Machine> {
        let m = m.build();
        self.machines()
            .create(&PostParams::default(), &m)
            .await
            .with_context(|| format!("creating Node CR {}", m.name_any()))
    }

    async fn set_power(&self, name: &str, p: &str) -> anyhow::Result<()> {
        let patch = json!({ "spec": { "powerState": p } });
        self.machines()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("setting {name} {p}"))?;
        Ok(())
    }

    /// Waits until `check` holds for the Node CR `name`; on timeout shows what it looked like.
    async fn wait_machine(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Machine) -> bool,
    ) -> anyhow::Result<Machine> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = self.machines().get(name).await?;
            if check(&m) {
                return Ok(m);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{name}: waited {WAIT:?} for {what}; status: {}",
                    serde_json::to_string_pretty(&m.status).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_phase(&self, name: &str, phase: Phase) -> anyhow::Result<Machine> {
        self.wait_machine(name, &format!("phase {phase}"), |m| {
            m.lifecycle().phase() == phase
        })
        .await
    }

    async fn jobs(&self, machine: &str) -> anyhow::Result<Vec<Job>> {
        let api: Api<Job> = Api::namespaced(self.client.clone(), &self.ns);
        let lp = ListParams::default().labels(&format!("{MACHINE_LABEL}={machine}"));
        Ok(api.list(&lp).await?.items)
    }

    /// Waits for the machine's unfinished power Job in `direction` and returns it.
    async fn wait_job(&self, machine: &str, direction: &str) -> anyhow::Result<Job> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let jobs = self.jobs(machine).await?;
            if let Some(j) = jobs.into_iter().find(|j| {
                j.labels().get(DIRECTION_LABEL).map(String::as_str) == Some(direction)
                    && !job_finished(j)
                    && j.metadata.deletion_timestamp.is_none()
            }) {
                return Ok(j);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{machine}: no power-{direction} Job after {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A machine that is already running: its Node registered Ready (as the kubelet would, with
    /// the machine's providerID) before its Node CR is created; waits until the operator adopted
    /// it as Ready. Returns the Kubernetes node name.
    async fn running(&self, cp: &ControlPlane, m: MachineBuilder) -> anyhow::Result<String> {
        let mut m = m.desired(PowerState::On).build();
        let name = m.name_any();
        let node = cp.unique_name(&name);
        let id = format!("homelab://{}/{name}", self.ns);
        self.world
            .node_up(
                &FakeNode::new(&node)
                    .adoptable()
                    .provider_id(&id)
                    .capacity("4", "8Gi"),
            )
            .await?;
        m.spec.kubernetes_node_name = Some(node.clone());
        self.machines()
            .create(&PostParams::default(), &m)
            .await
            .with_context(|| format!("creating Node CR {name}"))?;
        self.wait_phase(&name, Phase::Ready).await?;
        Ok(node)
    }

    async fn node(&self, name: &str) -> anyhow::Result<Option<Node>> {
        Ok(Api::<Node>::all(self.client.clone()).get_opt(name).await?)
    }

    /// Waits until `check` holds for the Kubernetes Node `name` (`None`: it does not exist).
    async fn wait_node(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(Option<&Node>) -> bool,
    ) -> anyhow::Result<Option<Node>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let n = self.node(name).await?;
            if check(n.as_ref()) {
                return Ok(n);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "Node {name}: waited {WAIT:?} for {what}; it is: {}",
                    serde_json::to_string_pretty(&n).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Desired on, the power-on Job completes, and the kubelet registers `node` bare (no labels,
    /// taints or providerID, as after a reinstall); waits until the machine is Ready.
    async fn boot(&self, machine: &str, node: &str) -> anyhow::Result<()> {
        self.set_power(machine, "on").await?;
        let job = self.wait_job(machine, "on").await?;
        self.world.complete_job(&self.ns, &job.name_any()).await?;
        self.world
            .node_up(&FakeNode::new(node).adoptable().capacity("4", "8Gi"))
            .await?;
        self.wait_phase(machine, Phase::Ready).await?;
        Ok(())
    }

    /// Desired off, the power-off Job completes and the node goes NotReady; waits until the
    /// machine is Off and its Node object deleted.
    async fn shut_down(&self, machine: &str, node: &str) -> anyhow::Result<()> {
        self.set_power(machine, "off").await?;
        let job = self.wait_job(machine, "off").await?;
        self.world.complete_job(&self.ns, &job.name_any()).await?;
        self.world.node_ready(node, false).await?;
        self.wait_phase(machine, Phase::Off).await?;
        self.wait_node(node, "deletion after the power-off", |n| n.is_none())
            .await?;
        Ok(())
    }

    async fn patch_group(&self, spec: serde_json::Value) -> anyhow::Result<()> {
        Api::<Group>::namespaced(self.client.clone(), &self.ns)
            .patch(
                "g",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .context("patching Group g")?;
        Ok(())
    }

    /// Applies `examples/<file>` into the namespace as `kubectl apply -f` would (strict field
    /// validation), each text `from` replaced by `to` first (endpoints the test must point at
    /// its own counterparts).
    async fn apply_example(&self, file: &str, replace: &[(&str, &str)]) -> anyhow::Result<()> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(file);
        support::apply::apply_file_moved(&self.client, &self.ns, &path, true, replace).await?;
        Ok(())
    }

    /// Fails naming where `secret` shows: an Event of the namespace, a Node CR (spec or
    /// status), or the log of the operators of this test binary.
    async fn assert_secret_never_shown(&self, secret: &str) -> anyhow::Result<()> {
        let events =
            Api::<k8s_openapi::api::core::v1::Event>::namespaced(self.client.clone(), &self.ns)
                .list(&ListParams::default())
                .await?;
        anyhow::ensure!(!events.items.is_empty(), "no Events recorded at all");
        for e in &events.items {
            let text = serde_json::to_string(e)?;
            anyhow::ensure!(!text.contains(secret), "a secret value in an Event: {text}");
        }
        for m in self.machines().list(&ListParams::default()).await? {
            let text = serde_json::to_string(&m)?;
            anyhow::ensure!(
                !text.contains(secret),
                "a secret value in a Node CR: {text}"
            );
        }
        let log = OPERATOR_LOG
            .lock()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        anyhow::ensure!(!log.is_empty(), "the operator logged nothing");
        if let Some(line) = log.lines().find(|l| l.contains(secret)) {
            bail!("a secret value in the operator's log: {line}");
        }
        Ok(())
    }
}

/// The driver's last readback recorded in the Node CR's `status.power`: direction and state.
fn readback(m: &Machine) -> Option<(Direction, Option<PowerState>)> {
    let p = m.status.as_ref()?.power.as_ref()?;
    Some((p.direction, p.readback))
}

/// The controllers of `run-operator`, in-process, scoped to `ns`.
async fn start_operator(
    cp: &ControlPlane,
    ns: &str,
    settings: Settings,
) -> anyhow::Result<Background> {
    support::operator::start(cp, ns, settings).await
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": "web" },
                      "ownerReferences": [] },
        "spec": { "containers": [{ "name": "c", "image": "example.org/web:1" }] },
    }))
    .unwrap_or_default()
}

/// A Node CR written before `powerOn` / `powerOff`, its Jobs under the quoted keys `"on"` /
/// `"off"`: the operator powers it on through the Job of `"on"`, marks it with a
/// `DeprecatedFields` condition naming the new keys, and leaves its power spec as written.
#[tokio::test]
async fn a_machine_with_the_deprecated_on_off_keys_still_powers_on() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-legacy").await?;
    let node = cp.unique_name("legacy");
    lab.create(lab.machine("m1").node_name(&node).deprecated_power_keys())
        .await?;
    lab.wait_phase("m1", Phase::Off).await?;
    lab.set_power("m1", "on").await?;
    let on_job = lab.wait_job("m1", "on").await?;
    lab.world.complete_job(&lab.ns, &on_job.name_any()).await?;
    let m = lab.wait_phase("m1", Phase::Booting).await?;
    let power = m.spec.power.as_deref().context("power kept")?;
    assert!(
        power.legacy_on.is_some() && power.legacy_off.is_some() && power.power_on.is_none(),
        "{power:?}"
    );
    let deprecated = m
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "DeprecatedFields"))
        .context("no DeprecatedFields condition")?;
    assert_eq!(deprecated.status, "True");
    assert!(
        deprecated
            .message
            .contains("spec.power.on is deprecated: rename it to spec.power.powerOn"),
        "{}",
        deprecated.message
    );
    Ok(())
}

/// Off → on: the power-on Job runs, the machine registers (with an empty providerID, as kubeadm
/// leaves it), becomes Ready; the operator sets the providerID and snapshots the node. Then off:
/// cordon, power-off Job placed away from the machine, node goes down, Node object deleted.
#[tokio::test]
async fn a_machine_powers_on_and_off_through_jobs() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-cycle").await?;
    let node = cp.unique_name("cycle");
    lab.create(lab.machine("m1").node_name(&node)).await?;
    lab.wait_phase("m1", Phase::Off).await?;

    lab.set_power("m1", "on").await?;
    let on_job = lab.wait_job("m1", "on").await?;
    lab.world.complete_job(&lab.ns, &on_job.name_any()).await?;
    lab.wait_phase("m1", Phase::Booting).await?;
    lab.world
        .node_up(&FakeNode::new(&node).adoptable().capacity("4", "8Gi"))
        .await?;
    let m = lab.wait_phase("m1", Phase::Ready).await?;
    let expected_id = format!("homelab://{}/m1", lab.ns);
    let registered = lab.node(&node).await?.context("node gone")?;
    assert_eq!(
        registered.spec.and_then(|s| s.provider_id).as_deref(),
        Some(expected_id.as_str()),
        "the operator sets the providerID the kubelet left empty"
    );
    let status = m.status.context("no status")?;
    assert_eq!(status.power_state, Some(PowerState::On));
    assert_eq!(status.recent_boot_seconds.len(), 1);
    assert!(status.node.is_some_and(|n| n.capacity.contains_key("cpu")));

    lab.set_power("m1", "off").await?;
    let off_job = lab.wait_job("m1", "off").await?;
    let cordoned = lab.node(&node).await?.context("node gone")?;
    assert_eq!(
        cordoned.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true)
    );
    let affinity = serde_json::to_string(
        &off_job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.affinity.as_ref()),
    )?;
    assert!(
        affinity.contains(&node),
        "power-off Job avoids its target: {affinity}"
    );
    lab.world.complete_job(&lab.ns, &off_job.name_any()).await?;
    lab.world.node_ready(&node, false).await?;
    let m = lab.wait_phase("m1", Phase::Off).await?;
    assert_eq!(m.status.and_then(|s| s.power_state), Some(PowerState::Off));
    lab.wait_machine("m1", "its Node object deleted", |_| true)
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while lab.node(&node).await?.is_some() {
        if tokio::time::Instant::now() > deadline {
            bail!("Node {node} still exists after a confirmed power-off");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lab.jobs("m1").await?.len(), 2, "one Job per power action");
    Ok(())
}

/// The nodeAgent driver powers a machine off from a Job pinned to the machine itself; the
/// evidence of power-off is the Node going NotReady (the agent's Job dies with the machine and
/// never completes).
#[tokio::test]
async fn a_node_agent_powers_its_own_machine_off() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-agent").await?;
    let node = lab.running(cp, lab.machine("m1").node_agent_off()).await?;
    lab.set_power("m1", "off").await?;
    let job = lab.wait_job("m1", "off").await?;
    let pod = job
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .context("Job without a pod spec")?;
    assert_eq!(pod.node_name.as_deref(), Some(node.as_str()));
    assert_eq!(pod.host_pid, Some(true));
    lab.world.start_job(&lab.ns, &job.name_any()).await?;
    lab.world.node_ready(&node, false).await?;
    lab.wait_phase("m1", Phase::Off).await?;
    Ok(())
}

/// A power-on Job that keeps failing is retried with backoff, then the machine stays Failed with
/// the Job's reason.
#[tokio::test]
async fn a_failing_power_job_backs_off_then_fails_with_its_reason() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-jobfail").await?;
    lab.create(lab.machine("m1").desired(PowerState::On))
        .await?;
    let _runner = lab.world.spawn_job_runner(
        &lab.ns,
        Duration::from_millis(100),
        |_| JobOutcome::Fail("relay unreachable".into()),
        |_, _| async { Ok(()) },
    );
    let m = lab
        .wait_machine("m1", "Failed after its last attempt", |m| {
            let lc = m.lifecycle();
            lc.phase() == Phase::Failed && lc.next_retry_time.is_none()
        })
        .await?;
    let lc = m.lifecycle();
    assert!(
        lc.last_error
            .as_deref()
            .is_some_and(|e| e.contains("relay unreachable")),
        "{:?}",
        lc.last_error
    );
    assert_eq!(lc.attempt, 3);
    let jobs = lab.jobs("m1").await?;
    assert_eq!(jobs.len(), 3, "one Job per attempt, kept for their logs");
    Ok(())
}

/// A power-on that succeeds but whose machine never registers fails at the boot deadline.
#[tokio::test]
async fn a_machine_that_never_boots_fails_at_its_boot_deadline() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-noboot").await?;
    lab.create(lab.machine("m1").desired(PowerState::On).boot_timeout("3s"))
        .await?;
    let job = lab.wait_job("m1", "on").await?;
    lab.world.complete_job(&lab.ns, &job.name_any()).await?;
    let m = lab.wait_phase("m1", Phase::Failed).await?;
    let err = m.lifecycle().last_error.unwrap_or_default();
    assert!(err.contains("no Ready Node"), "{err}");
    Ok(())
}

/// The Group's status sums up its members' recorded boots (p50/p95 over all, the slowest
/// member by its own p95) and warns when that p95 takes more than 80 % of the Group's
/// provision time, so a slow machine is not given up on by the Cluster Autoscaler.
#[tokio::test]
async fn the_group_reports_learned_boot_times_against_its_provision_time() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-boots").await?;
    lab.patch_group(json!({ "maxNodeProvisionTime": "5m" }))
        .await?;
    lab.create(lab.machine("fast").boot_timeout("auto")).await?;
    lab.create(lab.machine("slow").boot_timeout("auto")).await?;
    // Boots as the operator records them: newest last, in status.
    for (name, boots) in [
        ("fast", json!([40, 45, 50])),
        ("slow", json!([250, 280, 300])),
    ] {
        lab.machines()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "recentBootSeconds": boots } })),
            )
            .await
            .with_context(|| format!("recording boots of {name}"))?;
    }
    let groups: Api<Group> = Api::namespaced(lab.client.clone(), &lab.ns);
    let status = support::wait_for("the Group's boot summary", WAIT, || async {
        let g = groups.get("g").await?;
        Ok(g.status
            .filter(|s| s.boot.as_ref().is_some_and(|b| b.samples == 6)))
    })
    .await?;
    let boot = status.boot.as_ref().context("boot summary")?;
    assert_eq!((boot.p50_seconds, boot.p95_seconds), (50, 300));
    assert_eq!(
        (boot.slowest.as_str(), boot.slowest_p95_seconds),
        ("slow", 300)
    );
    let learned = status
        .conditions
        .iter()
        .find(|c| c.type_ == "LearnedBootBelowProvisionTime")
        .context("no LearnedBootBelowProvisionTime condition")?;
    assert_eq!(
        (learned.status.as_str(), learned.reason.as_str()),
        ("False", "SlowBoot")
    );
    assert!(
        learned.message.contains("slow boots in 300s"),
        "{}",
        learned.message
    );
    Ok(())
}

/// A manual power-off of a machine whose pod a PodDisruptionBudget protects: the operator evicts
/// through the Eviction API, the PDB refuses, and after the drain timeout the power-off is refused
/// with the reason; the machine stays on.
#[tokio::test]
async fn a_pdb_that_forbids_eviction_keeps_the_machine_on() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-pdb").await?;
    let node = lab.running(cp, lab.machine("m1")).await?;
    lab.world
        .create_bound_pod(&lab.ns, pod("web-0"), &node)
        .await?;
    lab.world.run_pods(&node).await?;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": { "name": "web" },
        "spec": { "maxUnavailable": 0, "selector": { "matchLabels": { "app": "web" } } },
    }))?;
    Api::<PodDisruptionBudget>::namespaced(lab.client.clone(), &lab.ns)
        .create(&PostParams::default(), &pdb)
        .await?;

    lab.set_power("m1", "off").await?;
    let m = lab
        .wait_machine("m1", "the drain given up", |m| {
            m.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Draining" && c.reason == "DrainTimedOut")
            })
        })
        .await?;
    assert_eq!(m.lifecycle().phase(), Phase::Ready, "the machine stays on");
    assert!(lab.jobs("m1").await?.is_empty(), "no power-off Job");
    let pods = Api::<Pod>::namespaced(lab.client.clone(), &lab.ns);
    assert!(
        pods.get_opt("web-0").await?.is_some(),
        "the protected pod still runs"
    );
    Ok(())
}

/// A Ready machine whose node blips NotReady for less than the grace period is left alone; a
/// longer loss is recorded (one warning Event, `nodeLostSince`) but power is not touched and the
/// provider keeps reporting the instance Running: CA's own `--scale-down-unready-time` decides
/// (docs/ca-contract.md, rule 7: CA deletes instances reported with errorInfo).
#[tokio::test]
async fn a_node_that_goes_not_ready_is_recorded_not_powered_off() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-blip").await?;
    let node = lab.running(cp, lab.machine("m1")).await?;

    // Shorter than the 3 s grace period: nothing at all.
    lab.world.node_ready(&node, false).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    lab.world.node_ready(&node, true).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = lab.machines().get("m1").await?;
    assert_eq!(m.lifecycle().phase(), Phase::Ready);
    assert!(
        m.lifecycle().node_lost_since.is_none(),
        "a blip is not a loss"
    );

    // Longer: recorded, power untouched.
    lab.world.node_ready(&node, false).await?;
    let m = lab
        .wait_machine("m1", "the loss recorded", |m| {
            m.lifecycle().node_lost_since.is_some()
        })
        .await?;
    assert_eq!(m.lifecycle().phase(), Phase::Ready);
    assert!(lab.jobs("m1").await?.is_empty(), "no power action");
    let source = ClusterSource::start(lab.client.clone(), Scope::Namespace(lab.ns.clone()));
    source.wait_until_ready(SYNC).await?;
    let group_id = kubectl_homelab::operator::provider::ops::node_groups(
        &source.inventory(),
        jiff::Timestamp::now(),
    )
    .into_iter()
    .map(|g| g.id)
    .next()
    .context("no group")?;
    let instances =
        kubectl_homelab::operator::provider::ops::node_group_nodes(&source.inventory(), &group_id)?;
    assert_eq!(instances.len(), 1);
    assert_eq!(
        instances[0].state,
        kubectl_homelab::operator::provider::ops::InstanceState::Running
    );
    assert!(
        instances[0].error.is_none(),
        "no errorInfo for a registered machine"
    );
    Ok(())
}

/// The operator stopped dead (its task dropped at an arbitrary await point, as a SIGKILL leaves
/// the API server) at 20 pseudo-random moments while ten machines power on and then off, and
/// started again each time: every machine ends where it is wanted, each operation has at most one
/// Job, and no Job of an abandoned operation is left running.
#[tokio::test]
async fn an_operator_killed_mid_transition_converges_without_duplicate_jobs() -> anyhow::Result<()>
{
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let mut lab = Lab::start(cp, "op-kill").await?;
    // This test starts and stops the operator itself.
    lab._operator = Background::from(tokio::spawn(async {}));
    let prefix = cp.unique_name("kill");
    let names: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    for n in &names {
        lab.create(lab.machine(n).node_name(&format!("{prefix}-{n}")))
            .await?;
    }
    let world = lab.world.clone();
    let ns = lab.ns.clone();
    let node_prefix = prefix.clone();
    let _runner = lab.world.spawn_job_runner(
        &lab.ns,
        Duration::from_millis(300),
        |_| JobOutcome::Succeed,
        move |job, _| {
            let world = world.clone();
            let ns = ns.clone();
            let node_prefix = node_prefix.clone();
            async move {
                let labels = job.labels();
                let machine = labels.get(MACHINE_LABEL).cloned().unwrap_or_default();
                let node = format!("{node_prefix}-{machine}");
                if labels.get(DIRECTION_LABEL).map(String::as_str) == Some("on") {
                    let id = format!("homelab://{ns}/{machine}");
                    world
                        .node_up(
                            &FakeNode::new(&node)
                                .adoptable()
                                .provider_id(&id)
                                .capacity("4", "8Gi"),
                        )
                        .await?;
                } else {
                    world.node_ready(&node, false).await?;
                }
                Ok(())
            }
        },
    );

    // A fixed seed: the kill points are arbitrary but the same on every run.
    let mut seed: u64 = 0x5eed_0001;
    let mut next_delay = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        Duration::from_millis(100 + seed % 1400)
    };
    for (round, (want, phase)) in [("on", Phase::Ready), ("off", Phase::Off)]
        .into_iter()
        .enumerate()
    {
        for n in &names {
            lab.set_power(n, want).await?;
        }
        for _ in 0..10 {
            let operator = start_operator(cp, &lab.ns, fast_settings()).await?;
            tokio::time::sleep(next_delay()).await;
            drop(operator);
        }
        let _operator = start_operator(cp, &lab.ns, fast_settings()).await?;
        for n in &names {
            let m = lab.wait_phase(n, phase).await?;
            let lc = m.lifecycle();
            let jobs = lab.jobs(n).await?;
            let mut ops: Vec<String> = jobs
                .iter()
                .filter_map(|j| {
                    j.labels()
                        .get(kubectl_homelab::operator::power::job::OPERATION_LABEL)
                        .cloned()
                })
                .collect();
            let total = ops.len();
            ops.sort();
            ops.dedup();
            assert_eq!(
                ops.len(),
                total,
                "{n}: one Job per operation (round {round})"
            );
            for j in &jobs {
                let op = j
                    .labels()
                    .get(kubectl_homelab::operator::power::job::OPERATION_LABEL);
                let current = lc.operation.as_ref().map(|o| &o.id);
                assert!(
                    job_finished(j) || j.metadata.deletion_timestamp.is_some() || op == current,
                    "{n}: Job {} of an abandoned operation still runs (round {round})",
                    j.name_any()
                );
            }
        }
    }
    Ok(())
}

/// The BMC examples/redfish.yaml expects: the sushy-tools emulator with its system
/// `System.Embedded.1`, off, and the user and password of the example's Secret; TLS from a test
/// CA, which the example's `insecureSkipVerify` accepts.
async fn example_bmc(ca: &support::pki::Ca) -> anyhow::Result<Option<support_power::sushy::Sushy>> {
    use support_power::sushy::{FakeSystem, Sushy, SushyOptions};
    Sushy::start(SushyOptions {
        systems: vec![FakeSystem::new("System.Embedded.1", "Off")],
        tls: Some(ca.serving()?),
        users: vec![("homelab".to_owned(), "change-me".to_owned())],
        disable_power_off: false,
    })
    .await
}

/// Powers the example's r730 on: Booting once the BMC reads back On (the kubelet has not
/// registered yet), then the kubelet registers as `node` with providerID
/// `homelab://homelab/<node>`, and it is Ready.
async fn power_on_r730(lab: &Lab, node: &str) -> anyhow::Result<()> {
    lab.wait_phase("r730", Phase::Off).await?;
    lab.set_power("r730", "on").await?;
    let m = lab
        .wait_machine("r730", "the BMC's PowerState On read back", |m| {
            readback(m) == Some((Direction::On, Some(PowerState::On)))
        })
        .await?;
    assert_eq!(
        m.lifecycle().phase(),
        Phase::Booting,
        "powered on at the BMC, waiting for the Node"
    );
    lab.world
        .node_up(
            &FakeNode::new(node)
                .adoptable()
                .provider_id(&format!("homelab://homelab/{node}")),
        )
        .await?;
    lab.wait_phase("r730", Phase::Ready).await?;
    Ok(())
}

/// examples/redfish.yaml as written, its BMC endpoint (`https://192.168.1.20`) pointed at the
/// emulator ([`example_bmc`]). The emulator switches 1 to 11 s after a reset and tells nobody:
/// the operator sees it only because the driver's recheck requeues the machine. On is the BMC's
/// `PowerState: On` before the kubelet registers; off is the BMC's `PowerState: Off`, then the
/// Node going NotReady.
#[tokio::test]
async fn the_redfish_example_powers_on_and_off_confirmed_by_the_bmc() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = support::pki::Ca::generate()?;
    let Some(sushy) = example_bmc(&ca).await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-redfish").await?;
    lab.apply_example("redfish.yaml", &[("https://192.168.1.20", &sushy.url)])
        .await?;
    power_on_r730(&lab, "r730").await?;

    lab.set_power("r730", "off").await?;
    let m = lab
        .wait_machine("r730", "the BMC's PowerState Off read back", |m| {
            readback(m) == Some((Direction::Off, Some(PowerState::Off)))
        })
        .await?;
    let power = m.status.as_ref().and_then(|s| s.power.clone());
    assert_eq!(
        power.map(|p| (p.driver, p.escalated)),
        Some(("redfish".to_owned(), false)),
        "GracefulShutdown was enough"
    );
    // The kubelet stops posting status with the machine.
    lab.world.node_ready("r730", false).await?;
    let m = lab.wait_phase("r730", Phase::Off).await?;
    assert_eq!(m.status.and_then(|s| s.power_state), Some(PowerState::Off));
    lab.assert_secret_never_shown("change-me").await?;
    drop(sushy);
    Ok(())
}

/// examples/redfish.yaml with an OS that ignores GracefulShutdown (a proxy in front of the
/// emulator swallows it), `forceOffAfter` shortened from the example's 3m to 3s so the test
/// waits seconds, and another Kubernetes node name (Nodes are cluster-wide, and the test above
/// registers `r730`): the operator sends ForceOff once the grace is over, the BMC reads Off, and
/// the escalation is recorded in `status.power.escalated` and a Warning Event.
#[tokio::test]
async fn an_ignored_graceful_shutdown_is_forced_off_and_recorded() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = support::pki::Ca::generate()?;
    let Some(sushy) = example_bmc(&ca).await? else {
        return Ok(());
    };
    let (proxy, seen) =
        support_power::proxy::ignoring_graceful_shutdown(sushy.url.clone(), &ca.serving()?, &ca)
            .await?;
    let lab = Lab::start(cp, "op-forceoff").await?;
    lab.apply_example(
        "redfish.yaml",
        &[
            ("https://192.168.1.20", &proxy.url),
            ("forceOffAfter: 3m", "forceOffAfter: 3s"),
            (
                "kubernetesNodeName: r730",
                "kubernetesNodeName: r730-forced",
            ),
            ("homelab://homelab/r730", "homelab://homelab/r730-forced"),
        ],
    )
    .await?;
    power_on_r730(&lab, "r730-forced").await?;

    lab.set_power("r730", "off").await?;
    let m = lab
        .wait_machine("r730", "the BMC's PowerState Off read back", |m| {
            readback(m) == Some((Direction::Off, Some(PowerState::Off)))
        })
        .await?;
    let power = m.status.and_then(|s| s.power).context("no status.power")?;
    assert!(power.escalated, "{power:?}");
    let mut resets = seen.lock().map(|s| s.clone()).unwrap_or_default();
    resets.dedup();
    assert_eq!(resets, ["On", "GracefulShutdown", "ForceOff"]);
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(lab.client.clone(), &lab.ns)
        .list(&ListParams::default())
        .await?;
    let escalations: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("PowerOffEscalated"))
        .collect();
    assert_eq!(escalations.len(), 1, "one Event for the escalation");
    assert_eq!(escalations[0].type_.as_deref(), Some("Warning"));
    let note = escalations[0].message.clone().unwrap_or_default();
    assert!(note.contains("ForceOff"), "{note}");

    lab.world.node_ready("r730-forced", false).await?;
    lab.wait_phase("r730", Phase::Off).await?;
    lab.assert_secret_never_shown("change-me").await?;
    Ok(())
}

/// examples/ipmi.yaml as written, its BMC (`192.168.1.21`, port 623) pointed at OpenIPMI's
/// ipmi_sim on loopback with the example's user and password, and `cipherSuite: 3` added (ipmi_sim
/// has no suite 17). On is Get Chassis Status reading on before the kubelet registers. Off: the
/// simulated OS ignores the soft shutdown, and with `forceOffAfter` shortened from 3m to 3s the
/// operator powers down once the grace is over; the chassis reads off, the escalation is in
/// `status.power.escalated` and a Warning Event, and ipmitool agrees the power is off.
#[tokio::test]
async fn the_ipmi_example_powers_on_and_forces_an_ignored_soft_off() -> anyhow::Result<()> {
    use support_power::ipmi_sim::{IpmiSim, SimOptions, User};
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let user = User {
        name: "homelab".to_owned(),
        password: "change-me".to_owned(),
        privilege: "operator",
    };
    let Some(sim) = IpmiSim::start(SimOptions {
        users: vec![user.clone()],
        power_on: false,
        honour_soft_off: false,
        kg: None,
    })
    .await?
    else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-ipmi").await?;
    let port = sim.port.to_string();
    let host = format!("host: 127.0.0.1\n        port: {port}\n        cipherSuite: 3");
    let endpoint = format!("ipmi://127.0.0.1:{port}");
    lab.apply_example(
        "ipmi.yaml",
        &[
            ("host: 192.168.1.21", &host),
            ("ipmi://192.168.1.21:623", &endpoint),
            ("forceOffAfter: 3m", "forceOffAfter: 3s"),
        ],
    )
    .await?;
    lab.wait_phase("x10", Phase::Off).await?;
    lab.set_power("x10", "on").await?;
    let m = lab
        .wait_machine("x10", "the chassis power read back on", |m| {
            readback(m) == Some((Direction::On, Some(PowerState::On)))
        })
        .await?;
    assert_eq!(m.lifecycle().phase(), Phase::Booting);
    assert!(sim.power_on());
    lab.world
        .node_up(
            &FakeNode::new("x10")
                .adoptable()
                .provider_id("homelab://homelab/x10"),
        )
        .await?;
    lab.wait_phase("x10", Phase::Ready).await?;

    lab.set_power("x10", "off").await?;
    let m = lab
        .wait_machine("x10", "the chassis power read back off", |m| {
            readback(m) == Some((Direction::Off, Some(PowerState::Off)))
        })
        .await?;
    let power = m.status.and_then(|s| s.power).context("no status.power")?;
    assert_eq!(power.driver, "ipmi");
    assert!(power.escalated, "{power:?}");
    let mut actions = sim.actions();
    actions.dedup();
    assert_eq!(actions, ["power 1", "shutdown 1", "power 0"]);
    let status = sim.ipmitool(&user, &["-L", "OPERATOR", "chassis", "power", "status"])?;
    assert_eq!(status.trim(), "Chassis Power is off");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(lab.client.clone(), &lab.ns)
        .list(&ListParams::default())
        .await?;
    let escalations: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("PowerOffEscalated"))
        .collect();
    assert_eq!(escalations.len(), 1, "one Event for the escalation");
    assert_eq!(escalations[0].type_.as_deref(), Some("Warning"));
    let note = escalations[0].message.clone().unwrap_or_default();
    assert!(note.contains("sent power down"), "{note}");

    lab.world.node_ready("x10", false).await?;
    lab.wait_phase("x10", Phase::Off).await?;
    lab.assert_secret_never_shown("change-me").await?;
    Ok(())
}

/// examples/redfish.yaml with the first GracefulShutdown refused by the BMC (503, transient),
/// `forceOffAfter` left at the example's 3m: the operator sends GracefulShutdown again, the BMC
/// reads Off long before the grace is over, and nothing is forced off.
#[tokio::test]
async fn a_graceful_shutdown_the_bmc_did_not_accept_is_sent_again() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = support::pki::Ca::generate()?;
    let Some(sushy) = example_bmc(&ca).await? else {
        return Ok(());
    };
    let (proxy, seen) = support_power::proxy::refusing_first(
        sushy.url.clone(),
        "GracefulShutdown",
        &ca.serving()?,
        &ca,
    )
    .await?;
    let lab = Lab::start(cp, "op-resend").await?;
    lab.apply_example(
        "redfish.yaml",
        &[
            ("https://192.168.1.20", &proxy.url),
            (
                "kubernetesNodeName: r730",
                "kubernetesNodeName: r730-resend",
            ),
            ("homelab://homelab/r730", "homelab://homelab/r730-resend"),
        ],
    )
    .await?;
    power_on_r730(&lab, "r730-resend").await?;

    lab.set_power("r730", "off").await?;
    let m = lab
        .wait_machine("r730", "the BMC's PowerState Off read back", |m| {
            readback(m) == Some((Direction::Off, Some(PowerState::Off)))
        })
        .await?;
    let power = m.status.and_then(|s| s.power).context("no status.power")?;
    assert!(!power.escalated, "{power:?}");
    let resets = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        resets.iter().filter(|r| *r == "GracefulShutdown").count(),
        2,
        "refused once, sent again once: {resets:?}"
    );
    assert!(!resets.iter().any(|r| r == "ForceOff"), "{resets:?}");
    Ok(())
}

/// Home Assistant as examples/http.yaml uses it: `POST /api/services/script/turn_on` runs the
/// script named in the body (with the bearer token of the example's Secret, else 401), and the
/// binary sensor `GET /api/states/binary_sensor.nas_power` reports the NAS's state a second after
/// a script switched it (a NAS takes a while), so the operator must read it back again.
struct HomeAssistant {
    server: support_power::server::Server,
    scripts: Arc<Mutex<Vec<String>>>,
}

async fn home_assistant(token: &'static str) -> anyhow::Result<HomeAssistant> {
    use support_power::server::{self, Received};
    // (wanted on, when a script last switched it); the NAS starts off, settled.
    let state = Arc::new(Mutex::new((false, None::<std::time::Instant>)));
    let scripts = Arc::new(Mutex::new(Vec::new()));
    let log = scripts.clone();
    let server = server::serve(None, move |req: Received| {
        let (state, log) = (state.clone(), log.clone());
        async move {
            let auth = req.headers.get(http::header::AUTHORIZATION);
            if auth.and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {token}")) {
                return server::answer(401, r#"{"message": "Unauthorized"}"#);
            }
            let Ok(mut state) = state.lock() else {
                return server::answer(500, "");
            };
            match (req.method.as_str(), req.path_and_query.as_str()) {
                ("POST", "/api/services/script/turn_on") => {
                    let body: serde_json::Value =
                        serde_json::from_slice(&req.body).unwrap_or_default();
                    let script = body["entity_id"].as_str().unwrap_or_default().to_owned();
                    let on = match script.as_str() {
                        "script.nas_power_on" => true,
                        "script.nas_power_off" => false,
                        _ => return server::answer(400, r#"{"message": "no such script"}"#),
                    };
                    *state = (on, Some(std::time::Instant::now()));
                    if let Ok(mut l) = log.lock() {
                        l.push(script);
                    }
                    server::answer(200, "[]")
                }
                ("GET", "/api/states/binary_sensor.nas_power") => {
                    let (wanted, since) = *state;
                    let on = if since.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        wanted
                    } else {
                        !wanted
                    };
                    let value = if on { "on" } else { "off" };
                    server::answer(
                        200,
                        format!(
                            r#"{{"entity_id": "binary_sensor.nas_power", "state": "{value}"}}"#
                        ),
                    )
                }
                _ => server::answer(404, r#"{"message": "Not found"}"#),
            }
        }
    })
    .await?;
    Ok(HomeAssistant { server, scripts })
}

/// examples/http.yaml as written, Home Assistant's address (`http://homeassistant.lan:8123`)
/// pointed at a server of the test playing it: on runs the power-on script and is confirmed by
/// the sensor reading "on" before the kubelet registers; off runs the power-off script and is
/// confirmed by the sensor reading "off".
#[tokio::test]
async fn the_http_example_powers_on_and_off_confirmed_by_the_status_url() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ha = home_assistant("change-me").await?;
    let lab = Lab::start(cp, "op-http").await?;
    lab.apply_example(
        "http.yaml",
        &[("http://homeassistant.lan:8123", &ha.server.url)],
    )
    .await?;
    lab.wait_phase("nas", Phase::Off).await?;

    lab.set_power("nas", "on").await?;
    let m = lab
        .wait_machine("nas", "the sensor's \"on\" read back", |m| {
            readback(m) == Some((Direction::On, Some(PowerState::On)))
        })
        .await?;
    assert_eq!(m.lifecycle().phase(), Phase::Booting);
    lab.world.node_up(&FakeNode::new("nas").adoptable()).await?;
    lab.wait_phase("nas", Phase::Ready).await?;

    lab.set_power("nas", "off").await?;
    lab.wait_machine("nas", "the sensor's \"off\" read back", |m| {
        readback(m) == Some((Direction::Off, Some(PowerState::Off)))
    })
    .await?;
    lab.world.node_ready("nas", false).await?;
    lab.wait_phase("nas", Phase::Off).await?;
    // Each script once: a reconcile on a cache that has not seen the operator's own last status
    // write yet does not call again.
    let scripts = ha.scripts.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(scripts, ["script.nas_power_on", "script.nas_power_off"]);
    lab.assert_secret_never_shown("change-me").await?;
    Ok(())
}

/// A UDP socket on loopback standing in for the LAN's broadcast address, and its port.
async fn lan_socket() -> anyhow::Result<(tokio::net::UdpSocket, u16)> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let port = socket.local_addr()?.port();
    Ok((socket, port))
}

async fn next_packet(socket: &tokio::net::UdpSocket) -> anyhow::Result<Vec<u8>> {
    let mut buf = [0u8; 256];
    let (n, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .context("no magic packet arrived")??;
    Ok(buf[..n].to_vec())
}

/// The magic packet as the Wake-on-LAN spec writes it (6 x 0xff, 16 x the MAC, the SecureOn
/// password), built here independently of the driver.
fn magic_packet(mac: [u8; 6], password: &[u8]) -> Vec<u8> {
    let mut p = vec![0xff; 6];
    for _ in 0..16 {
        p.extend_from_slice(&mac);
    }
    p.extend_from_slice(password);
    p
}

/// examples/wake-on-lan.yaml: minipc-1 has no `via`, so the operator sends its magic packet
/// itself; the example's broadcast address is moved to loopback (127.0.0.1, and the port of a
/// UDP socket of the test, as `port` is not in the example) where the packet arrives byte for
/// byte. Then the kubelet registers (Wake-on-LAN has no readback: the Node is the evidence), and
/// the example's nodeAgent powers it off from a Job pinned to the machine.
#[tokio::test]
async fn the_wake_on_lan_example_wakes_the_machine_and_its_node_agent_powers_it_off()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let (socket, port) = lan_socket().await?;
    let lab = Lab::start(cp, "op-wol").await?;
    let direct = format!("broadcast: 127.0.0.1\n        port: {port}\n    powerOff");
    lab.apply_example(
        "wake-on-lan.yaml",
        &[("broadcast: 192.168.1.255\n    powerOff", &direct)],
    )
    .await?;
    lab.wait_phase("minipc-1", Phase::Off).await?;

    lab.set_power("minipc-1", "on").await?;
    assert_eq!(
        next_packet(&socket).await?,
        magic_packet([0x3c, 0x7c, 0x3f, 0x1a, 0x2b, 0x01], &[]),
        "the magic packet for 3c:7c:3f:1a:2b:01"
    );
    let m = lab.wait_phase("minipc-1", Phase::Booting).await?;
    let power = m.status.and_then(|s| s.power).context("no status.power")?;
    assert_eq!(
        (power.driver.as_str(), power.direction, power.readback),
        ("wakeOnLan", Direction::On, None),
        "Wake-on-LAN cannot read power back"
    );
    lab.world
        .node_up(&FakeNode::new("minipc-1").adoptable())
        .await?;
    lab.wait_phase("minipc-1", Phase::Ready).await?;

    lab.set_power("minipc-1", "off").await?;
    let job = lab.wait_job("minipc-1", "off").await?;
    let pod = job
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .context("Job without a pod spec")?;
    assert_eq!(pod.node_name.as_deref(), Some("minipc-1"));
    lab.world.start_job(&lab.ns, &job.name_any()).await?;
    lab.world.node_ready("minipc-1", false).await?;
    let m = lab.wait_phase("minipc-1", Phase::Off).await?;
    let power = m.status.and_then(|s| s.power).context("no status.power")?;
    assert_eq!(
        (power.driver.as_str(), power.direction),
        ("nodeAgent", Direction::Off)
    );
    lab.assert_secret_never_shown("01:02:03:04:05:06").await?;
    Ok(())
}

/// The kubelet's part for a relay Job: runs its container's command here with the environment the
/// kubelet would give it (Secret references resolved from the API server), as the host network of
/// the node it runs on is the test's loopback.
async fn run_job_container(lab: &Lab, job: &Job) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let pod = job
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .context("Job without a pod spec")?;
    let container = pod.containers.first().context("Job without a container")?;
    let command = container.command.clone().unwrap_or_default();
    let (program, args) = command
        .split_first()
        .context("container without a command")?;
    let program = match program.as_str() {
        "python3" => std::env::var("KUBECTL_HOMELAB_PYTHON").unwrap_or_else(|_| program.clone()),
        _ => program.clone(),
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(args).env_clear();
    let secrets = Api::<Secret>::namespaced(lab.client.clone(), &lab.ns);
    for var in container.env.clone().unwrap_or_default() {
        let value = match var.value_from.and_then(|f| f.secret_key_ref) {
            Some(r) => {
                let secret = secrets.get(&r.name).await?;
                let bytes = secret
                    .data
                    .and_then(|d| d.get(&r.key).cloned())
                    .with_context(|| format!("Secret {} has no key {}", r.name, r.key))?;
                String::from_utf8(bytes.0)?
            }
            None => var.value.unwrap_or_default(),
        };
        cmd.env(&var.name, value);
    }
    let out = cmd
        .output()
        .await
        .with_context(|| format!("running {program} for Job {}", job.name_any()))?;
    anyhow::ensure!(
        out.status.success(),
        "Job {}'s command failed: {}",
        job.name_any(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// examples/wake-on-lan.yaml's minipc-2: its packet comes from a relay Job on another Ready node
/// of its LAN (`via.nodeSelector: homelab.dev/lan: home`), never on minipc-2 itself, with the
/// SecureOn password of the example's Secret. The broadcast address and port are moved to the
/// test's loopback socket and the Kubernetes node names made unique; the test plays the kubelet
/// that runs the Job (a real python3 runs the relay's program), and the packet arrives with the
/// password, byte for byte.
#[tokio::test]
async fn the_wake_on_lan_example_relays_minipc_2s_packet_from_a_job_on_its_lan()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let (socket, port) = lan_socket().await?;
    let lab = Lab::start(cp, "op-wol-relay").await?;
    let loopback = format!("broadcast: 127.0.0.1\n        port: {port}\n");
    // Nodes are cluster-wide: other names than the test above registers.
    let (node1, node2) = (cp.unique_name("minipc-1"), cp.unique_name("minipc-2"));
    lab.apply_example(
        "wake-on-lan.yaml",
        &[
            ("broadcast: 192.168.1.255\n        port: 9\n", &loopback),
            (
                "kubernetesNodeName: minipc-1",
                &format!("kubernetesNodeName: {node1}"),
            ),
            (
                "kubernetesNodeName: minipc-2",
                &format!("kubernetesNodeName: {node2}"),
            ),
        ],
    )
    .await?;
    let peer = cp.unique_name("lan-peer");
    lab.world
        .node_up(&FakeNode::new(&peer).label("homelab.dev/lan", "home"))
        .await?;
    lab.wait_phase("minipc-2", Phase::Off).await?;

    lab.set_power("minipc-2", "on").await?;
    let job = lab.wait_job("minipc-2", "on").await?;
    let pod = job
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .context("Job without a pod spec")?;
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("homelab.dev/lan"))
            .map(String::as_str),
        Some("home")
    );
    let avoid = serde_json::to_string(&pod.affinity)?;
    assert!(avoid.contains(&node2), "never on the target: {avoid}");
    run_job_container(&lab, &job).await?;
    assert_eq!(
        next_packet(&socket).await?,
        magic_packet([0x3c, 0x7c, 0x3f, 0x1a, 0x2b, 0x02], &[1, 2, 3, 4, 5, 6]),
        "the magic packet for 3c:7c:3f:1a:2b:02 with its SecureOn password"
    );
    lab.world.complete_job(&lab.ns, &job.name_any()).await?;
    lab.wait_phase("minipc-2", Phase::Booting).await?;
    lab.world
        .node_up(&FakeNode::new(&node2).adoptable())
        .await?;
    lab.wait_phase("minipc-2", Phase::Ready).await?;
    lab.assert_secret_never_shown("01:02:03:04:05:06").await?;
    Ok(())
}

/// Whether `node` carries the machine's label and taint from the builder above, and CA's
/// scale-down opt-out annotation.
fn carries_the_machines_identity(node: &Node) -> bool {
    let labelled = node
        .labels()
        .get("homelab.example/disk")
        .is_some_and(|v| v == "ssd");
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == "homelab.example/gpu"));
    labelled && tainted
}

fn scale_down_disabled(node: &Node) -> bool {
    node.annotations()
        .get(SCALE_DOWN_DISABLED)
        .is_some_and(|v| v == "true")
}

/// Through the operator, across two boots: each time the kubelet registers the machine's Node
/// bare, the machine's labels and taints come back, and the Group's `scaleDownDisabled` puts CA's
/// opt-out annotation on it (CA's `core/scaledown/eligibility` skips a node with it); clearing
/// the Group's flag takes the annotation away.
#[tokio::test]
async fn each_boot_restores_the_machines_labels_taints_and_its_groups_protection()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-identity").await?;
    lab.patch_group(json!({ "scaleDownDisabled": true }))
        .await?;
    let node = cp.unique_name("identity");
    lab.create(lab.machine("m1").node_name(&node).node_taint(taint(
        "homelab.example/gpu",
        "true",
        "NoSchedule",
    )))
    .await?;
    lab.wait_phase("m1", Phase::Off).await?;

    for boot in 1..=2 {
        lab.boot("m1", &node).await?;
        lab.wait_node(
            &node,
            &format!("labels, taints and the opt-out after boot {boot}"),
            |n| n.is_some_and(|n| carries_the_machines_identity(n) && scale_down_disabled(n)),
        )
        .await?;
        if boot == 1 {
            lab.shut_down("m1", &node).await?;
        }
    }

    lab.patch_group(json!({ "scaleDownDisabled": false }))
        .await?;
    let n = lab
        .wait_node(&node, "the opt-out gone with the Group's flag", |n| {
            n.is_some_and(|n| !scale_down_disabled(n))
        })
        .await?;
    assert!(n.as_ref().is_some_and(carries_the_machines_identity));
    Ok(())
}

fn cordoned(n: Option<&Node>) -> bool {
    n.and_then(|n| n.spec.as_ref())
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// A budget allowing no disruption of the `app: web` pods.
async fn forbid_disruption(lab: &Lab) -> anyhow::Result<()> {
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": { "name": "web" },
        "spec": { "maxUnavailable": 0, "selector": { "matchLabels": { "app": "web" } } },
    }))?;
    Api::<PodDisruptionBudget>::namespaced(lab.client.clone(), &lab.ns)
        .create(&PostParams::default(), &pdb)
        .await?;
    Ok(())
}

/// A lab whose NotReady grace outlasts the test, so only a new Ready transition counts as a
/// boot, with machine m1 Ready and then wanted off: its Node (still Ready) and its power-off Job.
async fn wanted_off_with_its_node_ready(
    cp: &ControlPlane,
    prefix: &str,
) -> anyhow::Result<(Lab, String, Job)> {
    let mut settings = fast_settings();
    settings.policy.not_ready_grace = jiff::SignedDuration::from_secs(120);
    let lab = Lab::start_with(cp, prefix, settings).await?;
    let node = lab.running(cp, lab.machine("m1")).await?;
    // Condition times have whole seconds: what follows comes in a later second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    lab.set_power("m1", "off").await?;
    let off_job = lab.wait_job("m1", "off").await?;
    Ok((lab, node, off_job))
}

/// CA deletes a machine (its power-off Job still running, its Node still Ready) and wants it
/// again: a power-on Job is created and the machine stays cordoned and not Ready while the Node
/// is the one Ready from before; it is Ready and uncordoned only after a new Ready transition.
#[tokio::test]
async fn a_machine_wanted_on_while_powering_off_is_powered_on_not_taken_as_ready()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let (lab, node, _) = wanted_off_with_its_node_ready(cp, "op-stale").await?;
    lab.wait_phase("m1", Phase::PoweringOff).await?;

    lab.set_power("m1", "on").await?;
    let m = lab
        .wait_machine("m1", "the desired on taken", |m| {
            matches!(m.lifecycle().phase(), Phase::PoweringOn | Phase::Ready)
        })
        .await?;
    assert_eq!(
        m.lifecycle().phase(),
        Phase::PoweringOn,
        "not Ready on the old Node"
    );
    let on_job = lab.wait_job("m1", "on").await?;
    lab.world.complete_job(&lab.ns, &on_job.name_any()).await?;
    lab.wait_phase("m1", Phase::Booting).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = lab.machines().get("m1").await?;
    assert_eq!(
        m.lifecycle().phase(),
        Phase::Booting,
        "still waiting for a boot"
    );
    assert!(cordoned(lab.node(&node).await?.as_ref()), "still cordoned");

    // The machine went down and booted: a new Ready transition.
    lab.world.node_ready(&node, false).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    lab.world.node_ready(&node, true).await?;
    lab.wait_phase("m1", Phase::Ready).await?;
    lab.wait_node(&node, "uncordoned", |n| n.is_some() && !cordoned(n))
        .await?;
    Ok(())
}

/// A Node registered with another providerID never counts as up, but the scheduler binds pods
/// to it: wanted off, it is drained first, and a budget that refuses the eviction keeps the
/// machine on (no power-off Job) past the drain timeout.
#[tokio::test]
async fn a_node_with_another_provider_id_is_drained_before_any_power_off() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-mismatch").await?;
    let node = cp.unique_name("mismatch");
    lab.create(
        lab.machine("m1")
            .node_name(&node)
            .provider_id("homelab://expected/m1"),
    )
    .await?;
    lab.wait_phase("m1", Phase::Off).await?;
    lab.set_power("m1", "on").await?;
    let on_job = lab.wait_job("m1", "on").await?;
    lab.world.complete_job(&lab.ns, &on_job.name_any()).await?;
    lab.wait_phase("m1", Phase::Booting).await?;
    lab.world
        .node_up(
            &FakeNode::new(&node)
                .adoptable()
                .provider_id("other://somewhere-else")
                .capacity("4", "8Gi"),
        )
        .await?;
    lab.world
        .create_bound_pod(&lab.ns, pod("web-0"), &node)
        .await?;
    lab.world.run_pods(&node).await?;
    forbid_disruption(&lab).await?;
    lab.wait_machine("m1", "the mismatch reported", |m| {
        m.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "IdentityMismatch" && c.status == "True")
        })
    })
    .await?;
    assert_eq!(
        lab.machines().get("m1").await?.lifecycle().phase(),
        Phase::Booting
    );

    lab.set_power("m1", "off").await?;
    lab.wait_machine("m1", "the drain given up", |m| {
        m.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Draining" && c.reason == "DrainTimedOut")
        })
    })
    .await?;
    let jobs = lab.jobs("m1").await?;
    assert!(
        jobs.iter()
            .all(|j| j.labels().get(DIRECTION_LABEL).map(String::as_str) != Some("off")),
        "no power-off Job under the pod"
    );
    assert!(
        cordoned(lab.node(&node).await?.as_ref()),
        "the Node is still there, cordoned"
    );
    let pods = Api::<Pod>::namespaced(lab.client.clone(), &lab.ns);
    assert!(pods.get_opt("web-0").await?.is_some(), "the pod still runs");
    Ok(())
}

/// CA's `ToBeDeletedByClusterAutoscaler` taint on `node` and the machine wanted off: what CA's
/// scale-down does before `DeleteNodes` (`MarkToBeDeleted`), then `DeleteNodes` itself.
async fn delete_as_ca_does(lab: &Lab, machine: &str, node: &str) -> anyhow::Result<()> {
    let ca_taint = serde_json::to_value(taint(
        "ToBeDeletedByClusterAutoscaler",
        "1700000000",
        "NoSchedule",
    ))?;
    Api::<Node>::all(lab.client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "taints": [ca_taint] } })),
        )
        .await?;
    lab.set_power(machine, "off").await
}

fn has_ca_taint(n: Option<&Node>) -> bool {
    n.and_then(|n| n.spec.as_ref())
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"))
}

/// CA deleted a machine and a pod is still on it (it arrived after CA's drain) that a budget
/// keeps from being evicted: the drain is tried, and at the drain timeout the deletion is given
/// back as CA gives back one whose own drain failed: the machine is wanted on again, its Node
/// uncordoned and untainted, no power-off Job, a warning Event naming the pod.
#[tokio::test]
async fn a_ca_deletion_whose_pods_cannot_be_evicted_is_given_back_at_the_drain_timeout()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-cagiveback").await?;
    let node = lab.running(cp, lab.machine("m1")).await?;
    lab.world
        .create_bound_pod(&lab.ns, pod("web-0"), &node)
        .await?;
    lab.world.run_pods(&node).await?;
    forbid_disruption(&lab).await?;
    let started = tokio::time::Instant::now();
    delete_as_ca_does(&lab, "m1", &node).await?;
    lab.wait_machine("m1", "the drain tried", |m| {
        m.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Draining" && c.reason == "Evicting")
        })
    })
    .await?;
    lab.wait_machine("m1", "wanted on again", |m| {
        m.desired_power() == PowerState::On
    })
    .await?;
    assert!(
        started.elapsed() >= fast_settings().drain_timeout,
        "given back only at the drain timeout"
    );
    lab.wait_node(&node, "uncordoned, CA's taint gone", |n| {
        n.is_some() && !cordoned(n) && !has_ca_taint(n)
    })
    .await?;
    let jobs = lab.jobs("m1").await?;
    assert!(
        jobs.iter()
            .all(|j| j.labels().get(DIRECTION_LABEL).map(String::as_str) != Some("off")),
        "no power-off Job under the pod"
    );
    let pods = Api::<Pod>::namespaced(lab.client.clone(), &lab.ns);
    assert!(pods.get_opt("web-0").await?.is_some(), "the pod still runs");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(lab.client.clone(), &lab.ns)
        .list(&ListParams::default())
        .await?;
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("DrainFailed")
                && e.type_.as_deref() == Some("Warning")
                && e.message.as_deref().is_some_and(|m| m.contains("web-0"))),
        "a warning Event names the pod left"
    );
    Ok(())
}

/// CA deleted a machine and a pod bound after CA's drain is still on it, with nothing keeping
/// it from eviction: the operator evicts it, and only then starts the power-off.
#[tokio::test]
async fn a_pod_bound_after_cas_drain_is_evicted_before_the_power_off() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-calate").await?;
    let node = lab.running(cp, lab.machine("m1")).await?;
    lab.world
        .create_bound_pod(&lab.ns, pod("web-0"), &node)
        .await?;
    lab.world.run_pods(&node).await?;
    delete_as_ca_does(&lab, "m1", &node).await?;
    let pods = Api::<Pod>::namespaced(lab.client.clone(), &lab.ns);
    // The kubelet's part: finish the deletion of what is evicted, until the power-off starts.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let off = loop {
        let evicted = pods
            .get_opt("web-0")
            .await?
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        let off = lab
            .jobs("m1")
            .await?
            .into_iter()
            .find(|j| j.labels().get(DIRECTION_LABEL).map(String::as_str) == Some("off"));
        if let Some(job) = off {
            assert!(evicted, "the pod was evicted before the power-off Job");
            break job;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no power-off Job; pod evicted: {evicted}"
        );
        lab.world.finish_terminating_pods(&node).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        pods.get_opt("web-0").await?.is_none(),
        "the pod is gone once {} exists",
        off.name_any()
    );
    Ok(())
}

/// Wanted on again once its power-off Job has completed (the machine may still be shutting
/// down, and a power-on sent now would be lost): the power-off finishes first, with no power-on
/// Job, and the machine is powered on as soon as its Node goes NotReady.
#[tokio::test]
async fn a_machine_wanted_on_after_its_power_off_action_finishes_the_power_off_first()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let (lab, node, off_job) = wanted_off_with_its_node_ready(cp, "op-finishoff").await?;
    lab.world.complete_job(&lab.ns, &off_job.name_any()).await?;
    lab.wait_machine("m1", "the power-off action done", |m| {
        m.lifecycle().phase() == Phase::PoweringOff
            && m.lifecycle()
                .operation
                .is_some_and(|o| o.completed.is_some())
    })
    .await?;

    lab.set_power("m1", "on").await?;
    let m = lab
        .wait_machine("m1", "the desired on taken", |m| {
            m.lifecycle().goal == Some(PowerState::On)
        })
        .await?;
    assert_eq!(m.lifecycle().phase(), Phase::PoweringOff);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let on_jobs = lab
        .jobs("m1")
        .await?
        .into_iter()
        .filter(|j| j.labels().get(DIRECTION_LABEL).map(String::as_str) == Some("on"))
        .count();
    assert_eq!(
        on_jobs, 0,
        "no power-on while the machine may still shut down"
    );
    assert!(cordoned(lab.node(&node).await?.as_ref()), "still cordoned");

    // NotReady: confirmed off, its Node object deleted (maybe before the harness is done with it).
    if let Err(e) = lab.world.node_ready(&node, false).await {
        anyhow::ensure!(lab.node(&node).await?.is_none(), "{e:#}");
    }
    let on_job = lab.wait_job("m1", "on").await?;
    lab.world.complete_job(&lab.ns, &on_job.name_any()).await?;
    lab.wait_phase("m1", Phase::Booting).await?;
    let id = format!("homelab://{}/m1", lab.ns);
    lab.world
        .node_up(
            &FakeNode::new(&node)
                .adoptable()
                .provider_id(&id)
                .capacity("4", "8Gi"),
        )
        .await?;
    lab.wait_phase("m1", Phase::Ready).await?;
    Ok(())
}

/// A machine controller over `cp` scoped to `ns`, for a test that calls its reconcile itself
/// (no queue, no watch triggers): the shared cache and the Job watch run, the controllers do
/// not.
async fn reconciler(
    cp: &ControlPlane,
    ns: &str,
) -> anyhow::Result<(Arc<controller::Context>, Background)> {
    let config = support::control_plane::load_kubeconfig(cp.kubeconfig()).await?;
    let drain = DrainClient::new(config.clone())?;
    let client = Client::try_from(config)?;
    let scope = Scope::Namespace(ns.to_owned());
    let source = Arc::new(ClusterSource::start(client.clone(), scope.clone()));
    source.wait_until_ready(SYNC).await?;
    let (jobs, triggers) = kubectl_homelab::operator::cache::jobs::watch(client, &scope);
    // The Job watch runs while its trigger stream is polled.
    let watch = Background::from(tokio::spawn(async move {
        use futures::StreamExt as _;
        triggers.for_each(|_| async {}).await;
    }));
    let ctx = controller::Context::new(source, drain, jobs, fast_settings(), None);
    Ok((Arc::new(ctx), watch))
}

/// Unfinished power Jobs of `machine` not being deleted, as (operation, direction, uid).
async fn running_jobs(lab: &Lab, machine: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let label = |j: &Job, l: &str| j.labels().get(l).cloned().unwrap_or_default();
    Ok(lab
        .jobs(machine)
        .await?
        .into_iter()
        .filter(|j| !job_finished(j) && j.metadata.deletion_timestamp.is_none())
        .map(|j| {
            let op = label(&j, kubectl_homelab::operator::power::job::OPERATION_LABEL);
            let dir = label(&j, DIRECTION_LABEL);
            (op, dir, j.uid().unwrap_or_default())
        })
        .collect())
}

/// Reconciles the Node CR as the API server has it now, until its status stops changing (the
/// Job watch catching up in between).
async fn settle(lab: &Lab, ctx: &Arc<controller::Context>, name: &str) -> anyhow::Result<Machine> {
    let mut last = None;
    for _ in 0..8 {
        let m = lab.machines().get(name).await?;
        if last.as_ref() == Some(&m.status) {
            return Ok(m);
        }
        last = Some(m.status.clone());
        if let Err(e) = controller::machine::reconcile(Arc::new(m), ctx.clone()).await {
            eprintln!("reconcile: {e}");
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    Ok(lab.machines().get(name).await?)
}

/// `spec.powerState` changed between the controller's read of a Node CR and its status write
/// (CA's `IncreaseSize`/`DeleteNodes` or `kubectl homelab power` writing in between): the
/// reconcile decided on the stale object, so its write is refused with a 409. Done six times,
/// flipping the desired power each round: after every refused reconcile no Job runs for an
/// operation the status does not record, an operation id is never given to a second operation,
/// and at the end no Job runs against the final desired power.
#[tokio::test]
async fn a_decision_on_a_stale_node_cr_starts_nothing_it_did_not_record() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let mut lab = Lab::start(cp, "op-stale").await?;
    // This test runs the reconciles itself.
    lab._operator = Background::from(tokio::spawn(async {}));
    let (ctx, _watch) = reconciler(cp, &lab.ns).await?;
    lab.create(lab.machine("m0")).await?;
    settle(&lab, &ctx, "m0").await?;

    // Operation id -> (its start time, the uid of its Job): an id is one operation, one Job.
    let mut seen: std::collections::HashMap<String, (String, Option<String>)> = Default::default();
    let mut remember = |m: &Machine, jobs: &[(String, String, String)]| -> anyhow::Result<()> {
        if let Some(op) = m.lifecycle().operation {
            let started = op.started.to_string();
            let entry = seen.entry(op.id.clone()).or_insert((started.clone(), None));
            anyhow::ensure!(entry.0 == started, "operation id {} given twice", op.id);
        }
        for (op, _, uid) in jobs {
            let entry = seen.entry(op.clone()).or_insert((String::new(), None));
            let first = entry.1.get_or_insert_with(|| uid.clone());
            anyhow::ensure!(*first == *uid, "operation {op} has a second Job");
        }
        Ok(())
    };
    let mut want = "off";
    for round in 0..6 {
        want = if round % 2 == 0 { "on" } else { "off" };
        let other = if want == "on" { "off" } else { "on" };
        lab.set_power("m0", want).await?;
        let m = settle(&lab, &ctx, "m0").await?;
        remember(&m, &running_jobs(&lab, "m0").await?)?;
        // Read, then the desired power flips and flips back: the object read is stale.
        lab.set_power("m0", other).await?;
        let stale = lab.machines().get("m0").await?;
        lab.set_power("m0", want).await?;
        let refused = controller::machine::reconcile(Arc::new(stale), ctx.clone()).await;
        anyhow::ensure!(
            refused.is_err(),
            "round {round}: a reconcile on a stale object wrote its status"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m = lab.machines().get("m0").await?;
        let current = m.lifecycle().operation.map(|o| o.id);
        let jobs = running_jobs(&lab, "m0").await?;
        for (op, dir, _) in &jobs {
            anyhow::ensure!(
                Some(op) == current.as_ref(),
                "round {round}: power-{dir} Job of operation {op} runs, the status records {current:?}"
            );
        }
        remember(&m, &jobs)?;
        let m = settle(&lab, &ctx, "m0").await?;
        remember(&m, &running_jobs(&lab, "m0").await?)?;
    }
    let against = if want == "on" { "off" } else { "on" };
    let jobs = running_jobs(&lab, "m0").await?;
    anyhow::ensure!(
        !jobs.iter().any(|(_, dir, _)| dir == against),
        "a power-{against} Job runs while the machine is wanted {want}: {jobs:?}"
    );
    Ok(())
}

/// A power Job that completed and was removed (a `ttlSecondsAfterFinished` of 0, or the operator
/// down longer than the TTL) before the operator saw its completion: its operation's Job is not
/// created a second time.
#[tokio::test]
async fn a_power_job_removed_before_its_completion_was_seen_is_not_run_again() -> anyhow::Result<()>
{
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let mut lab = Lab::start(cp, "op-ttl").await?;
    // This test runs the reconciles itself.
    lab._operator = Background::from(tokio::spawn(async {}));
    let (ctx, _watch) = reconciler(cp, &lab.ns).await?;
    lab.create(lab.machine("m0")).await?;
    settle(&lab, &ctx, "m0").await?;
    lab.set_power("m0", "on").await?;
    settle(&lab, &ctx, "m0").await?;
    let job = lab.wait_job("m0", "on").await?;
    let (name, uid) = (job.name_any(), job.uid());
    lab.world.complete_job(&lab.ns, &name).await?;
    let jobs: Api<Job> = Api::namespaced(lab.client.clone(), &lab.ns);
    // Background, as the TTL controller deletes (without a garbage collector in this control
    // plane, an orphaning delete would wait for it).
    let background = kube::api::DeleteParams::background();
    jobs.delete(&name, &background).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while jobs.get_opt(&name).await?.is_some() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "Job {name} never went"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The Job watch sees it gone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = settle(&lab, &ctx, "m0").await?;
    let again: Vec<_> = lab
        .jobs("m0")
        .await?
        .into_iter()
        .map(|j| (j.name_any(), j.uid()))
        .collect();
    anyhow::ensure!(
        again.is_empty(),
        "Job {name} ({uid:?}) ran and was removed, yet Jobs were created again: {again:?}; \
         status: {}",
        serde_json::to_string(&m.status)?
    );
    Ok(())
}

// --- Maintenance.

/// A machine under maintenance (off, `until` a few seconds away) is not what a scale-up picks:
/// `IncreaseSize`, decided on the inventory the provider builds from the Node CRs, powers on
/// the other spare, and MaxSize counts only that one. At `until` the operator clears
/// `spec.maintenance` with a `MaintenanceEnded` Event, and the machine is a spare again.
#[tokio::test]
async fn a_machine_under_maintenance_is_not_picked_by_a_scale_up_and_ends_at_until()
-> anyhow::Result<()> {
    use k8s_openapi::api::events::v1::Event;
    use kubectl_homelab::operator::api::{Maintenance, MaintenancePower};
    use kubectl_homelab::operator::provider::ops;
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-maint").await?;
    let now = jiff::Timestamp::now();
    let until = now + jiff::SignedDuration::from_secs(8);
    lab.create(lab.machine("a-disk").spec_with(|s| {
        s.maintenance = Some(Box::new(Maintenance {
            reason: Some("swap a disk".to_owned()),
            power: Some(MaintenancePower::Off),
            since: Some(now),
            until: Some(until),
            by: Some("owner".to_owned()),
        }))
    }))
    .await?;
    lab.create(lab.machine("b-spare")).await?;

    let source = ClusterSource::start(lab.client.clone(), Scope::Namespace(lab.ns.clone()));
    source.wait_until_ready(SYNC).await?;
    let picked = |inv: &kubectl_homelab::operator::provider::inventory::Inventory| {
        ops::increase_size(inv, "g", 1, jiff::Timestamp::now()).map(|d| {
            d.changes
                .into_iter()
                .map(|c| c.machine.name)
                .collect::<Vec<_>>()
        })
    };
    let max = |inv: &kubectl_homelab::operator::provider::inventory::Inventory| {
        ops::node_groups(inv, jiff::Timestamp::now())
            .into_iter()
            .map(|g| g.max_size)
            .next()
    };
    let inv = source.inventory();
    assert_eq!(picked(&inv)?, vec!["b-spare".to_owned()]);
    assert_eq!(max(&inv), Some(1));
    assert!(ops::increase_size(&inv, "g", 2, jiff::Timestamp::now()).is_err());

    let m = lab
        .wait_machine("a-disk", "the maintenance ended at until", |m| {
            m.spec.maintenance.is_none()
        })
        .await?;
    assert!(
        jiff::Timestamp::now() >= until,
        "not before until: {:?}",
        m.spec
    );
    assert_eq!(m.spec.power_state, PowerState::Off, "power untouched");
    let events: Api<Event> = Api::namespaced(lab.client.clone(), &lab.ns);
    let ended = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .any(|e| e.reason.as_deref() == Some("MaintenanceEnded"));
    assert!(ended, "a MaintenanceEnded Event");
    let deadline = tokio::time::Instant::now() + WAIT;
    while max(&source.inventory()) != Some(2) {
        if tokio::time::Instant::now() > deadline {
            bail!("the ended machine never became a spare again");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        picked(&source.inventory())?,
        vec!["a-disk".to_owned()],
        "the first by name again"
    );
    Ok(())
}

/// `spec.paused` set with `kubectl edit` (no annotation): the Group's `Paused` condition turns
/// True naming the field manager that set it; set back, the condition turns False.
#[tokio::test]
async fn a_paused_group_says_so_and_who_paused_it() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-paused").await?;
    lab.create(lab.machine("m1")).await?;
    let groups: Api<Group> = Api::namespaced(lab.client.clone(), &lab.ns);
    let edit = PatchParams {
        field_manager: Some("kubectl-edit".to_owned()),
        ..PatchParams::default()
    };
    let paused_condition = |g: &Group| {
        g.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Paused")
                .map(|c| (c.status.to_string(), c.message.to_string()))
        })
    };
    groups
        .patch(
            "g",
            &edit,
            &Patch::Merge(json!({ "spec": { "paused": true } })),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let g = groups.get("g").await?;
        if let Some((status, message)) = paused_condition(&g)
            && status == "True"
        {
            assert!(message.contains("kubectl-edit"), "{message}");
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no Paused condition: {:?}",
            g.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    groups
        .patch(
            "g",
            &edit,
            &Patch::Merge(json!({ "spec": { "paused": false } })),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while paused_condition(&groups.get("g").await?).map(|c| c.0) != Some("False".to_owned()) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the Paused condition never turned False"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

// --- Warm spares: the CapacityBuffer and PodTemplate the operator keeps for a Group's
// spec.warmSpares (src/operator/controller/spares.rs), against the real API server.

/// The Group `g`'s CapacityBuffer (a dynamic object: the CRD is CA's).
fn capacity_buffers(client: &Client, ns: &str) -> Api<kube::api::DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("autoscaling.x-k8s.io", "v1beta1", "CapacityBuffer");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "capacitybuffers");
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// The `WarmSpares` condition of Group `g`: (status, reason).
async fn warm_spares_condition(lab: &Lab) -> anyhow::Result<Option<(String, String)>> {
    let g = Api::<Group>::namespaced(lab.client.clone(), &lab.ns)
        .get("g")
        .await?;
    Ok(g.status.and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "WarmSpares")
            .map(|c| (c.status.to_string(), c.reason.to_string()))
    }))
}

/// Without the CapacityBuffer CRD, a Group asking for warm spares gets the condition WarmSpares
/// False, reason CapacityBufferCRDMissing, and the operator goes on (its machine controller
/// still adopts a new Node CR). Once the CRD is served and the Group changes, the buffer
/// (`g-warm-spares`, 2 replicas of its PodTemplate, owned by the Group) and the PodTemplate (a
/// whole 4-CPU 8 GiB machine, no DaemonSets) are there and the condition is True; count 0
/// deletes both and the condition turns False, reason NoWarmSpares.
#[tokio::test]
async fn warm_spares_keep_a_capacity_buffer_or_say_why_not() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "spares").await?;
    lab.create(lab.machine("m1")).await?;
    let groups: Api<Group> = Api::namespaced(lab.client.clone(), &lab.ns);
    let spares = |count: i32| json!({ "spec": { "warmSpares": { "count": count } } });
    groups
        .patch("g", &PatchParams::default(), &Patch::Merge(spares(2)))
        .await?;
    let missing = ("False".to_owned(), "CapacityBufferCRDMissing".to_owned());
    support::wait_for("WarmSpares False for the missing CRD", WAIT, || async {
        Ok((warm_spares_condition(&lab).await?.as_ref() == Some(&missing)).then_some(()))
    })
    .await?;
    lab.create(lab.machine("m2")).await?;
    support::wait_for("the operator to go on with m2", WAIT, || async {
        let m = lab.machines().get("m2").await?;
        Ok(m.metadata
            .finalizers
            .is_some_and(|f| !f.is_empty())
            .then_some(()))
    })
    .await?;

    support::spares::install_capacity_buffer_crd(cp).await?;
    groups
        .patch("g", &PatchParams::default(), &Patch::Merge(spares(3)))
        .await?;
    groups
        .patch("g", &PatchParams::default(), &Patch::Merge(spares(2)))
        .await?;
    let buffers = capacity_buffers(&lab.client, &lab.ns);
    let buffer = support::wait_for("the Group's CapacityBuffer", WAIT, || async {
        let b = buffers.get_opt("g-warm-spares").await?;
        Ok(b.filter(|b| b.data["spec"]["replicas"] == 2))
    })
    .await?;
    let group = groups.get("g").await?;
    let owner = buffer.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owner.len(), 1);
    assert_eq!(owner[0].kind, "Group");
    assert_eq!(Some(&owner[0].uid), group.metadata.uid.as_ref());
    assert_eq!(
        buffer.data["spec"]["podTemplateRef"]["name"],
        "g-warm-spares"
    );
    assert_eq!(
        buffer.data["spec"]["provisioningStrategy"],
        "buffer.x-k8s.io/active-capacity"
    );
    let templates: Api<k8s_openapi::api::core::v1::PodTemplate> =
        Api::namespaced(lab.client.clone(), &lab.ns);
    let template = templates.get("g-warm-spares").await?;
    let spec = template
        .template
        .and_then(|t| t.spec)
        .context("the PodTemplate's pod spec")?;
    let requests = spec.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .unwrap_or_default();
    assert_eq!(requests["cpu"].0, "4");
    assert_eq!(requests["memory"].0, "8Gi");
    let applied = ("True".to_owned(), "BufferApplied".to_owned());
    support::wait_for("WarmSpares True", WAIT, || async {
        Ok((warm_spares_condition(&lab).await?.as_ref() == Some(&applied)).then_some(()))
    })
    .await?;

    groups
        .patch("g", &PatchParams::default(), &Patch::Merge(spares(0)))
        .await?;
    support::wait_for("the buffer and its PodTemplate deleted", WAIT, || async {
        let gone = buffers.get_opt("g-warm-spares").await?.is_none()
            && templates.get_opt("g-warm-spares").await?.is_none();
        Ok(gone.then_some(()))
    })
    .await?;
    let removed = ("False".to_owned(), "NoWarmSpares".to_owned());
    support::wait_for("WarmSpares False", WAIT, || async {
        Ok((warm_spares_condition(&lab).await?.as_ref() == Some(&removed)).then_some(()))
    })
    .await?;
    Ok(())
}

// --- Wear limits and quiet hours (docs/ca-contract.md, "Wear limits and quiet hours").

/// A provider view of the Lab's namespace, synced.
async fn provider_view(lab: &Lab) -> anyhow::Result<ClusterSource> {
    let source = ClusterSource::start(lab.client.clone(), Scope::Namespace(lab.ns.clone()));
    source.wait_until_ready(SYNC).await?;
    Ok(source)
}

/// Waits until the provider's inventory shows `machine` with `boots` recorded boot starts.
async fn wait_boots_seen(
    source: &ClusterSource,
    machine: &str,
    boots: usize,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let inv = source.inventory();
        let seen = inv
            .machines()
            .find(|m| m.key.name == machine)
            .and_then(|m| m.wear.as_ref())
            .map_or(0, |w| w.boot_starts.len());
        if seen == boots {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{machine}: the provider sees {seen} boot start(s), not {boots}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Group `g` allows one boot per machine a day. After m1 booted once, a scale-up of one picks
/// m2 although m1 comes first by name; once both booted, the scale-up boots m1 anyway and a
/// warning Event on its Node CR says the limit was passed.
#[tokio::test]
async fn a_machine_at_its_boot_limit_is_passed_over_then_booted_with_an_event_when_all_are()
-> anyhow::Result<()> {
    use kubectl_homelab::operator::provider::ops::increase_size;
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-wear-limit").await?;
    lab.patch_group(json!({ "wear": { "maxBootsPerDay": 1 } }))
        .await?;
    let (n1, n2) = (cp.unique_name("wear1"), cp.unique_name("wear2"));
    lab.create(lab.machine("m1").node_name(&n1)).await?;
    lab.create(lab.machine("m2").node_name(&n2)).await?;
    lab.wait_phase("m1", Phase::Off).await?;
    lab.wait_phase("m2", Phase::Off).await?;

    lab.boot("m1", &n1).await?;
    lab.shut_down("m1", &n1).await?;
    let m1 = lab.machines().get("m1").await?;
    assert_eq!(
        m1.status.as_ref().map(|s| s.recent_boot_starts.len()),
        Some(1),
        "the boot start recorded"
    );
    let source = provider_view(&lab).await?;
    wait_boots_seen(&source, "m1", 1).await?;
    let picked = increase_size(&source.inventory(), "g", 1, jiff::Timestamp::now())?;
    let names: Vec<&str> = picked
        .changes
        .iter()
        .map(|c| c.machine.name.as_str())
        .collect();
    assert_eq!(names, ["m2"], "m1 is at its limit, m2 is not");

    lab.boot("m2", &n2).await?;
    lab.shut_down("m2", &n2).await?;
    wait_boots_seen(&source, "m2", 1).await?;
    let picked = increase_size(&source.inventory(), "g", 1, jiff::Timestamp::now())?;
    let names: Vec<&str> = picked
        .changes
        .iter()
        .map(|c| c.machine.name.as_str())
        .collect();
    assert_eq!(names, ["m1"], "both at their limit: name order");
    let (_, written) = source.write_desired_power(&picked.changes).await;
    written?;
    lab.wait_job("m1", "on").await?;
    lab.wait_machine("m1", "the second boot start recorded", |m| {
        m.status
            .as_ref()
            .is_some_and(|s| s.recent_boot_starts.len() == 2)
    })
    .await?;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(lab.client.clone(), &lab.ns)
        .list(&ListParams::default())
        .await?;
    let passed: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("BootLimitPassed"))
        .collect();
    assert_eq!(passed.len(), 1, "one Event, on m1's second boot");
    assert_eq!(passed[0].involved_object.name.as_deref(), Some("m1"));
    assert_eq!(passed[0].type_.as_deref(), Some("Warning"));
    let note = passed[0].message.clone().unwrap_or_default();
    assert!(
        note.contains("already booted 1 time(s)") && note.contains("maxBootsPerDay 1"),
        "{note}"
    );
    Ok(())
}

/// `HH:MM` of `t` in UTC.
fn hh_mm(t: jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%H:%M")
        .to_string()
}

/// Quiet hours from this minute to the next minute edge at least 20 s away (UTC): the running
/// machine's Node carries CA's scale-down opt-out, DeleteNodes refuses it naming the window's
/// end, and when the window ends the annotation goes (the controller comes back at the edge).
#[tokio::test]
async fn quiet_hours_annotate_the_node_refuse_delete_nodes_and_end_on_time() -> anyhow::Result<()> {
    use kubectl_homelab::operator::provider::ops::{NodeRef, delete_nodes};
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-quiet").await?;
    let node = lab.running(cp, lab.machine("m1")).await?;
    assert!(
        !lab.node(&node)
            .await?
            .as_ref()
            .is_some_and(scale_down_disabled),
        "no opt-out before quiet hours"
    );
    let now = jiff::Timestamp::now();
    let minute = jiff::Timestamp::from_second(now.as_second() - now.as_second().rem_euclid(60))?;
    let mut end = minute + jiff::SignedDuration::from_mins(1);
    if end.duration_since(now) < jiff::SignedDuration::from_secs(20) {
        end += jiff::SignedDuration::from_mins(1);
    }
    lab.patch_group(json!({ "wear": { "quietHours": [
        { "from": hh_mm(minute), "to": hh_mm(end) }
    ] } }))
    .await?;
    lab.wait_node(&node, "CA's opt-out in quiet hours", |n| {
        n.is_some_and(scale_down_disabled)
    })
    .await?;

    let source = provider_view(&lab).await?;
    let id = format!("homelab://{}/m1", lab.ns);
    let refused = delete_nodes(
        &source.inventory(),
        "g",
        &[NodeRef {
            provider_id: id,
            name: node.clone(),
        }],
        jiff::Timestamp::now(),
    );
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("quiet hours") && message.contains(&end.to_string()),
        "{message}"
    );

    // The window's end: the annotation goes without any change to the objects.
    let deadline = tokio::time::Instant::now() + WAIT + Duration::from_secs(90);
    loop {
        let n = lab.node(&node).await?;
        if n.as_ref().is_some_and(|n| !scale_down_disabled(n)) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("Node {node}: the opt-out still there after the window ended at {end}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        jiff::Timestamp::now() >= end,
        "the opt-out went at the window's end, not before"
    );
    Ok(())
}

/// Quiet hours all day with `powerOnAfter: 15s`: MaxSize is the target (0) while no pod waits,
/// and stays so until a pod marked unschedulable (as the scheduler marks it) has waited 15 s;
/// then the spare counts again (the provider reads pending pods itself: the watch cache keeps
/// none).
#[tokio::test]
async fn quiet_hours_hold_max_size_until_a_pod_has_waited_power_on_after() -> anyhow::Result<()> {
    use kubectl_homelab::operator::provider::ops::node_groups;
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-quiet-on").await?;
    lab.patch_group(json!({ "wear": { "quietHours": [
        { "from": "00:00", "to": "24:00", "powerOnAfter": "15s" }
    ] } }))
    .await?;
    lab.create(lab.machine("m1")).await?;
    lab.wait_phase("m1", Phase::Off).await?;
    let source = provider_view(&lab).await?;
    let max = |source: &ClusterSource| {
        node_groups(&source.inventory(), jiff::Timestamp::now())
            .first()
            .map(|g| g.max_size)
    };
    assert_eq!(max(&source), Some(0), "held: no pod waits");

    let mut p = pod("waits");
    if let Some(spec) = p.spec.as_mut() {
        spec.node_selector = Some([("homelab.example/none".to_owned(), "x".to_owned())].into());
    }
    let pods = Api::<Pod>::namespaced(lab.client.clone(), &lab.ns);
    pods.create(&PostParams::default(), &p).await?;
    // What kube-scheduler writes for a pod no node fits (this control plane runs no scheduler).
    let condition = json!({ "status": { "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "lastTransitionTime": jiff::Timestamp::now().to_string(),
    }] } });
    pods.patch_status("waits", &PatchParams::default(), &Patch::Merge(&condition))
        .await?;
    let created = tokio::time::Instant::now();
    let deadline = created + WAIT;
    loop {
        if max(&source) == Some(1) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let now = Api::<Pod>::namespaced(lab.client.clone(), &lab.ns)
                .get("waits")
                .await?;
            bail!(
                "MaxSize still {:?} {WAIT:?} after the pod; its status: {}",
                max(&source),
                serde_json::to_string(&now.status)?
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        created.elapsed() >= Duration::from_secs(14),
        "MaxSize rose after {:?}, before the pod waited powerOnAfter",
        created.elapsed()
    );
    Ok(())
}

// --- Schedule windows -------------------------------------------------------------------------

/// The next whole minute at least `lead` from now (windows are minute-grained).
fn next_minute(lead: jiff::SignedDuration) -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    let secs = now.as_second();
    let mut start = secs - secs.rem_euclid(60) + 60;
    if start - secs < lead.as_secs() {
        start += 60;
    }
    jiff::Timestamp::from_second(start).expect("a timestamp")
}

fn wall_clock(t: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> String {
    t.to_zoned(tz.clone()).strftime("%H:%M").to_string()
}

/// A schedule window that starts (in the Group's `timeZone`, here +05:30) at the next minute and
/// raises `minSize` from 0 to 2: the operator wakes at the edge and wants the first two spares by
/// `powerOnOrder` on, with no pods pending and no Cluster Autoscaler running; before the edge
/// nothing is wanted on and Group status names the next change.
#[tokio::test]
async fn a_schedule_window_starting_wants_the_groups_spares_on_at_its_start() -> anyhow::Result<()>
{
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "op-sched").await?;
    for name in ["m1", "m2", "m3"] {
        lab.create(lab.machine(name)).await?;
    }
    let tz = jiff::tz::TimeZone::get("Asia/Kolkata")?;
    let start = next_minute(jiff::SignedDuration::from_secs(10));
    let end = start + jiff::SignedDuration::from_mins(30);
    let groups: Api<Group> = Api::namespaced(lab.client.clone(), &lab.ns);
    let patch = json!({ "spec": {
        "timeZone": "Asia/Kolkata",
        "schedule": [{
            "name": "morning",
            "from": wall_clock(start, &tz),
            "to": wall_clock(end, &tz),
            "minSize": 2,
        }],
    }});
    groups
        .patch("g", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;

    let status = support::wait_for("status.schedule before the window", WAIT, || async {
        let g = groups.get("g").await?;
        Ok(g.status
            .and_then(|s| s.schedule)
            .filter(|s| s.next_change.is_some()))
    })
    .await?;
    assert_eq!(status.window, None);
    assert_eq!(status.min_size, 0);
    assert_eq!(status.next_change, Some(start));
    assert_eq!(status.next_window.as_deref(), Some("morning"));
    let wanted_on = || async {
        let list = lab.machines().list(&ListParams::default()).await?;
        let mut on: Vec<String> = list
            .items
            .iter()
            .filter(|m| m.desired_power() == PowerState::On)
            .map(|m| m.name_any())
            .collect();
        on.sort();
        anyhow::Ok(on)
    };
    let before = start - jiff::SignedDuration::from_secs(2);
    let wait = before.duration_since(jiff::Timestamp::now());
    if wait.is_positive() {
        tokio::time::sleep(wait.unsigned_abs()).await;
    }
    assert_eq!(
        wanted_on().await?,
        Vec::<String>::new(),
        "before the window"
    );

    // Within a few seconds of the edge (no member change wakes the group: the timer does).
    let on = support::wait_for(
        "two machines wanted on",
        Duration::from_secs(20),
        || async {
            let on = wanted_on().await?;
            Ok((on.len() >= 2).then_some(on))
        },
    )
    .await?;
    let late = jiff::Timestamp::now().duration_since(start);
    assert!(
        late < jiff::SignedDuration::from_secs(10),
        "{late:#} after the start"
    );
    assert_eq!(on, ["m1", "m2"], "by powerOnOrder (cheapest, then name)");
    let status = support::wait_for("status.schedule in the window", WAIT, || async {
        let g = groups.get("g").await?;
        Ok(g.status
            .and_then(|s| s.schedule)
            .filter(|s| s.window.is_some()))
    })
    .await?;
    assert_eq!(status.window.as_deref(), Some("morning"));
    assert_eq!(status.min_size, 2);
    assert_eq!(status.next_change, Some(end));
    assert_eq!(status.next_window, None);
    // Held at two: the operator raises to the minimum, no further.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(wanted_on().await?, ["m1", "m2"]);
    Ok(())
}
