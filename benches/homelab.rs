//! A homelab-sized fleet with the real Cluster Autoscaler: how long a pending pod waits for the
//! power action, and what the operator costs in memory and CPU at that size.
//!
//! Each size is a lab as in tests/ca_e2e.rs: a private etcd + kube-apiserver + kube-scheduler,
//! the real `kubectl-homelab run-operator` (Job power driver), CA 1.36.1 (`--scan-interval=2s`
//! unless `--scan-interval SECS`), one Group of N powered-off machines (2 CPU, 4 GiB each) and a
//! tainted always-on node outside it. `support::Machines` runs the power Jobs (1 s each) and boots
//! a machine 3 s after its power-on Job. Each round creates one pod that needs a machine of its
//! own (1.5 CPU, 3 GiB) and measures, from its creation:
//! - CA's decision: the Node CR's `spec.powerState` becoming `on` (CA's IncreaseSize through the
//!   provider; seen by a watch);
//! - the power action: the operator's power-on Job seen by a watch (polled every 20 ms);
//! - the pod Running (boot, registration, scheduling: mostly the simulated 1 s Job + 3 s boot).
//!   Rounds run one after another, each on the next machine.
//!
//! Then the operator process's VmRSS and its CPU time while idle for `--idle SECS` (default 30;
//! CA still polls it every scan). The numbers for the scale of 2,000 machines are
//! benches/operator.rs's.
//!
//! Run: `cargo bench --bench homelab` (sizes 3, 10 and 20 machines, 5 rounds each or one per
//! machine; `-- --machines N` for one size, `--rounds R`, `--idle SECS`, `--scan-interval SECS`).
//! Without `--bench` (`cargo test --benches`) a smoke run: 3 machines, 1 round, 2 s idle.
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kubectl_homelab::operator::api::{Group, Machine};
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::testing::job;
use serde_json::json;
use support::{
    Assets, CaOptions, ClusterAutoscaler, ControlPlane, FakeNode, Machines, MachinesConfig,
    Options, Provider, ProviderCommand, Transport, World,
};

const GROUP: &str = "lab";
const BOOT: Duration = Duration::from_secs(3);
/// Upper bound for one round (CA scans, a boot, a loaded machine).
const PATIENCE: Duration = Duration::from_secs(120);

struct Plan {
    sizes: Vec<usize>,
    rounds: usize,
    idle: Duration,
    scan_interval: Option<u64>,
    smoke: bool,
}

/// One round's times from the pod's creation.
struct Round {
    desired_on: Duration,
    job: Duration,
    running: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1).and_then(|v| v.parse().ok())
    };
    let smoke = !args.iter().any(|a| a == "--bench");
    let mut plan = if smoke {
        println!("homelab bench (smoke; `cargo bench --bench homelab` measures)");
        Plan {
            sizes: vec![3],
            rounds: 1,
            idle: Duration::from_secs(2),
            scan_interval: None,
            smoke,
        }
    } else {
        Plan {
            sizes: vec![3, 10, 20],
            rounds: 5,
            idle: Duration::from_secs(30),
            scan_interval: None,
            smoke,
        }
    };
    if let Some(n) = flag("--machines") {
        plan.sizes = vec![n as usize];
    }
    if let Some(r) = flag("--rounds") {
        plan.rounds = r as usize;
    }
    if let Some(s) = flag("--idle") {
        plan.idle = Duration::from_secs(s);
    }
    plan.scan_interval = flag("--scan-interval");
    let rt = support::bench_runtime();
    if let Err(e) = rt.block_on(run(plan)) {
        eprintln!("homelab bench failed: {e:#}");
        std::process::exit(1);
    }
}

async fn run(plan: Plan) -> anyhow::Result<()> {
    let Some(assets) = Assets::locate(Assets::WITH_CA)? else {
        println!("skipped: the Kubernetes test binaries are missing");
        return Ok(());
    };
    let scan = plan
        .scan_interval
        .map_or_else(|| "2 s".to_owned(), |s| format!("{s} s"));
    println!("CA scan interval {scan}; simulated power Job 1 s, boot {BOOT:?}");
    println!(
        "| machines | rounds | pod → spec.powerState on: median / max | pod → power-on Job: median / max | pod → Running: median / max | operator RSS | operator CPU idle |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &n in &plan.sizes {
        let rounds = plan.rounds.min(n).max(1);
        let (results, rss_kib, idle_cpu) = lab(&assets, &plan, n, rounds).await?;
        let col = |f: fn(&Round) -> Duration| {
            let mut v: Vec<Duration> = results.iter().map(f).collect();
            v.sort();
            format!(
                "{:.2} / {:.2} s",
                v[v.len() / 2].as_secs_f64(),
                v[v.len() - 1].as_secs_f64()
            )
        };
        println!(
            "| {n} | {rounds} | {} | {} | {} | {:.1} MiB | {:.3} % of a core |",
            col(|r| r.desired_on),
            col(|r| r.job),
            col(|r| r.running),
            rss_kib as f64 / 1024.0,
            idle_cpu * 100.0
        );
        if plan.smoke {
            // The smoke run checks the order of events, not their speed.
            for r in &results {
                anyhow::ensure!(r.desired_on <= r.job && r.job <= r.running, "out of order");
            }
        }
    }
    Ok(())
}

/// One lab of `n` machines: `rounds` pods, one after another; returns the rounds, the operator's
/// VmRSS (KiB) after them and its CPU share while idle.
async fn lab(
    assets: &Assets,
    plan: &Plan,
    n: usize,
    rounds: usize,
) -> anyhow::Result<(Vec<Round>, u64, f64)> {
    let cp = ControlPlane::start(assets, &Options::default().with_scheduler()).await?;
    let ns = cp.namespace(&format!("homelab-{n}")).await?;
    let client = cp.client()?;
    create_when_served(
        &Api::namespaced(client.clone(), &ns),
        &Group::test(GROUP)
            .namespace(&ns)
            .min(0)
            .max(u32::try_from(n)?)
            .build(),
    )
    .await?;
    let crs: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let action = job("busybox:1.37", &["true"]);
    for i in 0..n {
        let name = format!("m{i:02}");
        let m = Machine::test(&name)
            .namespace(&ns)
            .group(GROUP)
            .desired(PowerState::Off)
            .node_name(&name)
            .legacy_jobs(action.clone(), action.clone())
            .capacity([("cpu", "2"), ("memory", "4Gi"), ("pods", "110")])
            .build();
        crs.create(&PostParams::default(), &m)
            .await
            .with_context(|| format!("creating Node CR {ns}/{name}"))?;
    }
    let world = World::new(client.clone());
    world.node_up(&FakeNode::always_on()).await?;
    let machines = Machines::start(&world, MachinesConfig::new(&ns, BOOT));
    let provider =
        Provider::start(&cp, &ns, ProviderCommand::RunOperator, Transport::Plaintext).await?;
    let mut opts = CaOptions::default();
    if let Some(s) = plan.scan_interval {
        opts = opts.arg(&format!("--scan-interval={s}s"));
    }
    let ca = ClusterAutoscaler::start(&cp, &provider, &opts)?;
    // CA has gone through its loops (its status shows the group) before the first pod.
    until("CA's status to show the group", || async {
        ca.ensure_running()?;
        Ok((ca.status_target(GROUP).await? == Some(0)).then_some(()))
    })
    .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut results = Vec::new();
    for r in 0..rounds {
        let since = Instant::now();
        pods.create(&PostParams::default(), &pod(&format!("p{r}"))?)
            .await?;
        let desired_on = until("spec.powerState on", || async {
            ca.ensure_running()?;
            Ok(machines
                .desired_changes_since(since)
                .iter()
                .find(|(_, _, p)| *p == PowerState::On)
                .map(|(d, _, _)| *d))
        })
        .await?;
        let job = until("the power-on Job", || async {
            let jobs: usize = machines.power_ons().values().sum();
            Ok((jobs > r).then(|| since.elapsed()))
        })
        .await?;
        let running = until("the pod Running", || async {
            let p = pods.get(&format!("p{r}")).await?;
            let phase = p.status.and_then(|s| s.phase);
            Ok((phase.as_deref() == Some("Running")).then(|| since.elapsed()))
        })
        .await?;
        results.push(Round {
            desired_on,
            job,
            running,
        });
    }
    let pid = provider.pid();
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(plan.idle).await;
    let idle = (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64();
    let rss = vm_rss_kib(pid)?;
    Ok((results, rss, idle))
}

/// A bare pod of 1.5 CPU and 3 GiB: one per 2-CPU, 4 GiB machine, none on the tainted node.
fn pod(name: &str) -> anyhow::Result<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "app",
                "image": "registry.k8s.io/pause:3.10",
                "resources": { "requests": { "cpu": "1500m", "memory": "3Gi" } },
            }],
        },
    }))
    .context("building a pod")
}

/// Polls `check` every 20 ms until it yields a value, failing after [`PATIENCE`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "waited {PATIENCE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// User + system CPU seconds of process `pid` (/proc/<pid>/stat fields 14 and 15).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat.rsplit_once(')').context("/proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz as f64)
}

fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/<pid>/status")
}

/// Creates `obj`, retrying while the API server answers 404 for a CRD it just established.
async fn create_when_served<K>(api: &Api<K>, obj: &K) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match api.create(&PostParams::default(), obj).await {
            Err(kube::Error::Api(s)) if s.code == 404 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => return r.context("creating the first custom resource"),
        }
    }
}
