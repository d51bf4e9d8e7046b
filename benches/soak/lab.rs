//! The soak's lab: a private control plane with a scheduler, one Group of powered-off machines
//! played by `support::Machines`, two `run-operator` replicas electing a leader through a Lease,
//! a loopback proxy in front of them that plays the Service (it sends CA to the replica whose
//! `/readyz` answers 200, the leader), and the real Cluster Autoscaler dialling that proxy.
//!
//! `support::Provider` runs one replica with `--leader-elect=false` and `support::ClusterAutoscaler`
//! needs a `Provider`, so both are built here from the same pieces (`support::process::Managed`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kubectl_homelab::operator::api::{Group, Machine};
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::testing::job;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

use crate::support::ca::{CaOptions, ClusterAutoscaler};
use crate::support::control_plane::{lock, write};
use crate::support::process::{self, Managed};
use crate::support::{
    Assets, Background, ControlPlane, FakeNode, Machines, MachinesConfig, Options, World,
};

/// The Group's name: CA's node group id.
pub const GROUP: &str = "soak";
/// From a machine's power-on Job succeeding to its Node registering Ready.
pub const BOOT: Duration = Duration::from_secs(3);
/// CA's `--scan-interval`, as `support::ca` starts it.
pub const SCAN: Duration = Duration::from_secs(2);
/// `--lease-duration` of the replicas: a stopped or killed leader is replaced after about this.
pub const LEASE: Duration = Duration::from_secs(6);
/// CA's `--scale-down-unneeded-time` and `--scale-down-delay-after-add`: short, so machines go
/// off again soon after their pods are gone and power cycles add up.
const SCALE_DOWN_AFTER: Duration = Duration::from_secs(10);
/// Demand pods that fit one machine (600m CPU and 1 GiB each on a 2-CPU, 4 GiB machine).
pub const PODS_PER_MACHINE: usize = 3;
/// Label of the demand pods.
const APP_LABEL: &str = "soak-demand";

/// One soak's world. Fields drop in order: CA, proxy and replicas stop before the machines and
/// the control plane.
pub struct Lab {
    pub ca: ClusterAutoscaler,
    _proxy: Background,
    _router: Background,
    pub replicas: Vec<Replica>,
    pub machines: Machines,
    pub client: kube::Client,
    pub ns: String,
    /// Node CR names, which are also their Kubernetes node names.
    pub names: Vec<String>,
    pub cp: ControlPlane,
}

/// Machine `i`'s Node CR (and Kubernetes node) name.
fn machine_name(i: usize) -> String {
    format!("soak-{i}")
}

/// A powered-off machine with the capacity a user declares for scale-from-zero and Job power
/// actions each way (which `support::Machines` runs).
fn machine_cr(ns: &str, name: &str) -> Machine {
    let pod = job("busybox:1.37", &["true"]);
    Machine::test(name)
        .namespace(ns)
        .group(GROUP)
        .desired(PowerState::Off)
        .node_name(name)
        .legacy_jobs(pod.clone(), pod)
        .capacity([("cpu", "2"), ("memory", "4Gi"), ("pods", "110")])
        .node_label("homelab.dev/class", "soak")
        .build()
}

/// A bare demand pod: [`PODS_PER_MACHINE`] fit one machine, none fits the tainted always-on
/// node. `safe-to-evict` lets CA drain it when it consolidates (CA refuses to remove a node with
/// a pod no controller re-creates otherwise, `simulator/drainability/rules/replicated`, unless it
/// carries `utils/drain/drain.go`'s `PodSafeToEvictKey`); the soak
/// re-creates what a drain removed.
pub fn demand_pod(name: &str) -> anyhow::Result<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": { "app": APP_LABEL },
            "annotations": { "cluster-autoscaler.kubernetes.io/safe-to-evict": "true" },
        },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "app",
                "image": "registry.k8s.io/pause:3.10",
                "resources": { "requests": { "cpu": "600m", "memory": "1Gi" } },
            }],
        },
    }))
    .context("building a demand pod")
}

impl Lab {
    /// `Ok(None)`: binaries missing and not required (skipped).
    pub async fn start(machines: usize) -> anyhow::Result<Option<Lab>> {
        let Some(assets) = Assets::locate(Assets::WITH_CA)? else {
            return Ok(None);
        };
        let cp = ControlPlane::start(&assets, &Options::default().with_scheduler()).await?;
        let ns = cp.namespace("soak").await?;
        let client = cp.client()?;
        create_when_served(
            &Api::namespaced(client.clone(), &ns),
            &Group::test(GROUP)
                .namespace(&ns)
                .min(0)
                .max(u32::try_from(machines)?)
                .build(),
        )
        .await?;
        let crs: Api<Machine> = Api::namespaced(client.clone(), &ns);
        let names: Vec<String> = (0..machines).map(machine_name).collect();
        for name in &names {
            crs.create(&PostParams::default(), &machine_cr(&ns, name))
                .await
                .with_context(|| format!("creating Node CR {ns}/{name}"))?;
        }
        let world = World::new(client.clone());
        world.node_up(&FakeNode::always_on()).await?;
        let machines = Machines::start(&world, MachinesConfig::new(&ns, BOOT));

        let ports = process::free_ports(5).context("picking ports")?;
        let proxy_addr = format!("127.0.0.1:{}", ports[0]);
        let replicas = vec![
            Replica::start(&cp, &ns, 0, ports[1], ports[2])?,
            Replica::start(&cp, &ns, 1, ports[3], ports[4])?,
        ];
        let (route, _) = watch::channel(None);
        let router = route_to_ready(
            route.clone(),
            replicas.iter().map(|r| (r.grpc, r.health)).collect(),
        );
        let proxy = proxy(&proxy_addr, route.clone()).await?;
        wait_for_route(&route, Duration::from_secs(120)).await?;
        let cloud_config = cloud_config(&cp, &ns, &proxy_addr).await?;
        let ca = start_autoscaler(&cp, &cloud_config)?;
        Ok(Some(Lab {
            ca,
            _proxy: proxy,
            _router: router,
            replicas,
            machines,
            client,
            ns,
            names,
            cp,
        }))
    }

    /// The demand pods that are neither finished nor being deleted, from the API server.
    pub async fn live_pods(&self) -> anyhow::Result<Vec<Pod>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        Ok(pods
            .list(&ListParams::default().labels(&format!("app={APP_LABEL}")))
            .await
            .context("listing demand pods")?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    pub async fn create_pod(&self, name: &str) -> anyhow::Result<()> {
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &demand_pod(name)?)
            .await
            .with_context(|| format!("creating pod {name}"))?;
        Ok(())
    }

    pub async fn delete_pod(&self, name: &str) -> anyhow::Result<()> {
        match Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting pod {name}")),
        }
    }

    /// Kube-controller-manager's pod garbage collector, which does not run here: force-deletes
    /// pods bound to a Node that no longer exists (a machine that went off with pods on it).
    /// Returns how many.
    pub async fn collect_pods_of_deleted_nodes(&self) -> anyhow::Result<usize> {
        let nodes: Vec<String> = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .context("listing Nodes")?
            .items
            .iter()
            .map(|n| n.name_any())
            .collect();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        let mut n = 0;
        for p in pods
            .list(&ListParams::default())
            .await
            .context("listing pods")?
            .items
        {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            if node.is_some_and(|node| !nodes.contains(&node)) {
                let _ = pods
                    .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                    .await;
                n += 1;
            }
        }
        Ok(n)
    }

    /// What `kubectl homelab power on|off` writes: the Node CR's `spec.powerState`.
    pub async fn set_desired(&self, machine: &str, power: PowerState) -> anyhow::Result<()> {
        let patch = json!({ "spec": { "powerState": power } });
        Api::<Machine>::namespaced(self.client.clone(), &self.ns)
            .patch(machine, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("setting spec.powerState={power:?} on {machine}"))?;
        Ok(())
    }

    pub async fn desired(&self, machine: &str) -> anyhow::Result<PowerState> {
        Ok(Api::<Machine>::namespaced(self.client.clone(), &self.ns)
            .get(machine)
            .await
            .with_context(|| format!("reading Node CR {machine}"))?
            .spec
            .power_state)
    }

    /// The replica holding the Lease (by `--lease-identity`), if any holds it.
    pub async fn leader(&self) -> anyhow::Result<Option<usize>> {
        use k8s_openapi::api::coordination::v1::Lease;
        let leases = Api::<Lease>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .context("listing Leases")?;
        let holder = leases
            .items
            .iter()
            .filter_map(|l| l.spec.as_ref().and_then(|s| s.holder_identity.clone()))
            .next();
        Ok(holder.and_then(|h| self.replicas.iter().position(|r| r.identity == h)))
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

/// The operator binary cargo built for this bench.
fn operator_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
}

/// One `run-operator` replica with leader election on, as a child process that can be
/// SIGKILLed, restarted, SIGSTOPped and SIGCONTed.
pub struct Replica {
    pub identity: String,
    args: Vec<String>,
    child: Mutex<Option<Managed>>,
    runs: AtomicUsize,
    dir: PathBuf,
    pub grpc: u16,
    pub health: u16,
}

impl Replica {
    fn start(
        cp: &ControlPlane,
        ns: &str,
        index: usize,
        grpc: u16,
        health: u16,
    ) -> anyhow::Result<Replica> {
        let identity = format!("replica-{index}");
        let dir = cp.dir().join(format!("soak-{identity}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let args: Vec<String> = [
            "run-operator",
            "--listen",
            &format!("127.0.0.1:{grpc}"),
            "-n",
            ns,
            "--kubeconfig",
            &cp.kubeconfig().display().to_string(),
            "--leader-elect=true",
            "--lease-identity",
            &identity,
            "--lease-duration",
            &format!("{}s", LEASE.as_secs()),
            "--lease-renew-grace",
            "2s",
            "--health-address",
            &format!("127.0.0.1:{health}"),
            // As `support::Provider` runs it: a NotReady grace short enough for a scenario.
            "--not-ready-grace",
            "3s",
            "--shutdown-timeout",
            "2s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let replica = Replica {
            identity,
            args,
            child: Mutex::new(None),
            runs: AtomicUsize::new(0),
            dir,
            grpc,
            health,
        };
        replica.spawn()?;
        Ok(replica)
    }

    fn spawn(&self) -> anyhow::Result<()> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.join(format!("run-operator.{run}.log"));
        let child = Managed::spawn_with_env(
            &self.identity,
            operator_bin(),
            &self.args,
            &log,
            &[("KUBECTL_HOMELAB_LOG", "info")],
        )
        .with_context(|| format!("starting {} {}", self.identity, self.args.join(" ")))?;
        *lock(&self.child) = Some(child);
        Ok(())
    }

    /// SIGKILL (no shutdown path runs).
    pub fn kill(&self) {
        if let Some(mut c) = lock(&self.child).take() {
            c.kill();
        }
    }

    /// Starts it again with the same flags (a new log file).
    pub fn restart(&self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to the replica's process group.
    pub fn freeze(&self, stop: bool) {
        if let Some(c) = lock(&self.child).as_ref() {
            let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: a plain syscall on a process group this harness created.
            unsafe { libc::killpg(c.pid() as libc::pid_t, signal) };
        }
    }

    /// The log of the current run.
    pub fn log(&self) -> Option<PathBuf> {
        lock(&self.child).as_ref().map(|c| c.log.clone())
    }
}

/// `/readyz` of a replica answers 200 within half a second (a stopped process does not).
async fn ready(health: u16) -> bool {
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", health)).await?;
        conn.write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    match tokio::time::timeout(Duration::from_millis(500), ask).await {
        Ok(Ok(answer)) => {
            String::from_utf8_lossy(&answer)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                == Some("200")
        }
        _ => false,
    }
}

/// Plays the Service's endpoints: every 250 ms, routes to the gRPC port of a replica whose
/// `/readyz` answers 200 (the operator reports ready only while leading,
/// `--readiness-requires-leader`), keeping the current one while it stays ready.
fn route_to_ready(route: watch::Sender<Option<u16>>, replicas: Vec<(u16, u16)>) -> Background {
    Background::from(tokio::spawn(async move {
        loop {
            let mut readiness = Vec::new();
            for (grpc, health) in &replicas {
                readiness.push((*grpc, ready(*health).await));
            }
            let current = *route.borrow();
            let keep = current.filter(|c| readiness.contains(&(*c, true)));
            let next = keep.or_else(|| readiness.iter().find(|r| r.1).map(|r| r.0));
            if next != current {
                route.send_replace(next);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }))
}

async fn wait_for_route(
    route: &watch::Sender<Option<u16>>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut rx = route.subscribe();
    tokio::time::timeout(timeout, rx.wait_for(Option::is_some))
        .await
        .context("no replica became ready (leader)")?
        .context("the router stopped")?;
    Ok(())
}

/// A TCP proxy on `addr` to the routed replica. A connection ends when the route changes, as
/// one to a pod that left the Service does for its client, so CA reconnects to the new leader.
async fn proxy(addr: &str, route: watch::Sender<Option<u16>>) -> anyhow::Result<Background> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the proxy on {addr}"))?;
    Ok(Background::from(tokio::spawn(async move {
        loop {
            let Ok((mut down, _)) = listener.accept().await else {
                continue;
            };
            let mut rx = route.subscribe();
            let Some(port) = *rx.borrow_and_update() else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                    _ = rx.changed() => {}
                }
            });
        }
    })))
}

/// The cloud-config CA gets, as `run-operator --print-cloud-config` prints it for the proxy's
/// address (what a user pastes, pointing at the Service).
async fn cloud_config(cp: &ControlPlane, ns: &str, addr: &str) -> anyhow::Result<PathBuf> {
    let out = tokio::process::Command::new(operator_bin())
        .args(["run-operator", "--listen", addr, "-n", ns])
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .arg("--print-cloud-config")
        .output()
        .await
        .context("running run-operator --print-cloud-config")?;
    anyhow::ensure!(
        out.status.success(),
        "--print-cloud-config failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = cp.dir().join("soak-cloud-config.yaml");
    write(
        &path,
        &String::from_utf8(out.stdout).context("the cloud-config is not UTF-8")?,
    )?;
    Ok(path)
}

/// The real Cluster Autoscaler with the harness's short timings (`support::ca`), scale-down
/// sooner ([`SCALE_DOWN_AFTER`]) and `--scale-down-delay-after-failure` as short as the rest: its
/// default, 3 minutes (`config/const.go`, `DefaultScaleDownDelayAfterFailure`), would stop
/// scale-down for most of a smoke run after one DeleteNodes refused while no replica led.
fn start_autoscaler(cp: &ControlPlane, cloud_config: &Path) -> anyhow::Result<ClusterAutoscaler> {
    let opts = CaOptions {
        scale_down_after: SCALE_DOWN_AFTER,
        ..CaOptions::default()
    }
    .arg(&format!(
        "--scale-down-delay-after-failure={}s",
        SCALE_DOWN_AFTER.as_secs()
    ));
    ClusterAutoscaler::start_with_cloud_config(cp, cloud_config, &opts)
}
