//! `kubectl homelab run-operator` as a process against a real etcd + kube-apiserver (tests/support,
//! a private control plane: Nodes are cluster-scoped), with 2,000 machines in 50 groups using the
//! Job power driver and 2,000 Kubernetes Nodes the size a kubelet reports them (`kubelet_node`):
//! 1,000 of them registered by the machines that are on (half of each group, desired on, with
//! matching providerIDs), 1,000 not managed here; the other 1,000 machines are off. Measured:
//! - cold start: spawn → `NodeGroups` answers with every group (polled every 10 ms);
//! - writes right after start (Node CRs, Groups, Jobs, Events, Leases) until the objects are quiet;
//! - an idle window (default 300 s): CPU seconds of the process (/proc/<pid>/stat utime+stime) and
//!   the writes it makes, counted as resourceVersion changes seen by watches;
//! - CA's `NodeGroupIncreaseSize(1)` on a different group each call → the power-on Job seen by a
//!   watch, p50/p99 (the Job watch's delivery is included, so this is an upper bound), and → the
//!   operator's `power action started` log line, written when the apiserver answered its Job
//!   create (the same clock: both processes read the system time); the operator's CPU seconds
//!   over the calls;
//! - VmRSS / VmHWM, and RSS split into anonymous and file-backed (/proc/<pid>/status) after start,
//!   after the idle window and after the calls.
//!
//! Run: `cargo bench --bench operator` (`-- --idle SECS` shortens the idle window, `--groups N`
//! and `--per-group N` change the scale, e.g. a homelab's `--groups 2 --per-group 10 --nodes 12`;
//! `--calls N` makes N IncreaseSize calls instead of 50: with 50 the p99 is
//! the slowest call, with 200 the third slowest; `--nodes N` creates N Kubernetes Nodes instead,
//! half of them for machines that are on: `--nodes 0` is the bench as it was before it had Nodes,
//! all machines off). Without `--bench` (`cargo test --benches`) it runs a smoke version: 2 groups
//! of 10, 8 Nodes (4 for machines that are on), a 5 s idle window, and checks every answer. `OPBENCH_HEAPTRACK=/tmp/op.heap` records the
//! operator's allocations with heaptrack (one raw trace per start: `/tmp/op.heap.0`, `.1`);
//! `OPBENCH_BIN=path` runs that build of `kubectl-homelab` instead of the one cargo built;
//! `OPBENCH_KEEP_LOG=path` keeps the (restarted) operator's log there (`OPBENCH_LOG` its filter).
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt as _};
use kubectl_homelab::operator::api::{Group, Machine};
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::operator::power::job::{DIRECTION_LABEL, MACHINE_LABEL};
use kubectl_homelab::operator::provider::proto;
use kubectl_homelab::operator::provider::proto::cloud_provider_client::CloudProviderClient;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

#[derive(Clone, Copy)]
struct Size {
    groups: usize,
    per_group: usize,
    calls: usize,
    /// Kubernetes Nodes: the first half registered by machines that are on (one per machine,
    /// spread over the groups), the rest not managed here.
    nodes: usize,
    idle: Duration,
    /// Start-up writes are over once the watched objects were unchanged for this long.
    quiet: Duration,
}

const BENCH: Size = Size {
    groups: 50,
    per_group: 40,
    calls: 50,
    nodes: 2000,
    idle: Duration::from_secs(300),
    quiet: Duration::from_secs(10),
};

const SMOKE: Size = Size {
    groups: 2,
    per_group: 10,
    calls: 4,
    nodes: 8,
    idle: Duration::from_secs(5),
    quiet: Duration::from_secs(2),
};

/// Upper bound for anything that normally takes a second (a loaded machine is slow; a debug
/// build under heaptrack took over 120 s to write the first start's status with 2,000 Nodes).
const PATIENCE: Duration = Duration::from_secs(300);

impl Size {
    fn machines(&self) -> usize {
        self.groups * self.per_group
    }

    /// Machines that are on, each with its Kubernetes Node: half the Nodes, at most all machines.
    fn on(&self) -> usize {
        (self.nodes / 2).min(self.machines())
    }

    /// Whether machine `m` of group `g` is on: the on machines are dealt out over the groups in
    /// turn, so every group has the same number (± 1) and the low indexes are the on ones.
    fn is_on(&self, g: usize, m: usize) -> bool {
        m * self.groups + g < self.on()
    }

    /// How many machines of group `g` are on.
    fn on_in_group(&self, g: usize) -> usize {
        (0..self.per_group).filter(|&m| self.is_on(g, m)).count()
    }
}

fn group_id(g: usize) -> String {
    format!("g{g:02}")
}

fn machine_name(g: usize, m: usize) -> String {
    format!("g{g:02}-m{m:03}")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1).and_then(|v| v.parse().ok())
    };
    let mut size = if args.iter().any(|a| a == "--bench") {
        BENCH
    } else {
        println!("operator bench (smoke; `cargo bench --bench operator` measures)");
        SMOKE
    };
    if let Some(s) = flag("--idle") {
        size.idle = Duration::from_secs(s);
    }
    if let Some(n) = flag("--groups") {
        size.groups = n as usize;
    }
    if let Some(n) = flag("--per-group") {
        size.per_group = n as usize;
    }
    if let Some(n) = flag("--calls") {
        size.calls = n as usize;
    }
    if let Some(n) = flag("--nodes") {
        size.nodes = n as usize;
    }
    // Each group must have an off machine for each of its calls.
    let off_per_group = size.per_group - size.on_in_group(0);
    if size.calls > size.groups * off_per_group {
        eprintln!(
            "--calls {}: at most {} (one power-on per machine that is off)",
            size.calls,
            size.groups * off_per_group
        );
        std::process::exit(2);
    }
    let rt = support::bench_runtime();
    if let Err(e) = rt.block_on(run(size)) {
        eprintln!("operator bench failed: {e:#}");
        std::process::exit(1);
    }
}

/// Writes to one kind of object seen by a watch: creations, deletions and resourceVersion
/// changes after the watch's first list.
struct Writes {
    count: Arc<AtomicU64>,
    synced: Arc<AtomicBool>,
    _task: support::Background,
}

impl Writes {
    fn get(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

/// Starts counting writes to `api`'s objects; new objects are also sent to `created`.
fn count_writes<K>(api: Api<K>, created: Option<mpsc::UnboundedSender<(K, Instant)>>) -> Writes
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let count = Arc::new(AtomicU64::new(0));
    let synced = Arc::new(AtomicBool::new(false));
    let (c, s) = (count.clone(), synced.clone());
    let task = tokio::spawn(async move {
        let mut versions: HashMap<String, String> = HashMap::new();
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(ev) = stream.next().await {
            let (obj, initial) = match ev {
                Ok(watcher::Event::Apply(o)) => (o, false),
                Ok(watcher::Event::InitApply(o)) => (o, true),
                Ok(watcher::Event::Delete(o)) => {
                    versions.remove(&o.name_any());
                    c.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    s.store(true, Ordering::SeqCst);
                    continue;
                }
                Ok(watcher::Event::Init) | Err(_) => continue,
            };
            let rv = obj.resource_version().unwrap_or_default();
            match versions.insert(obj.name_any(), rv.clone()) {
                Some(old) if old != rv => {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                Some(_) => {}
                None if !initial => {
                    c.fetch_add(1, Ordering::SeqCst);
                    if let Some(tx) = &created {
                        let _ = tx.send((obj, Instant::now()));
                    }
                }
                None => {}
            }
        }
    });
    Writes {
        count,
        synced,
        _task: support::Background::from(task),
    }
}

/// The watched kinds in the namespace.
struct AllWrites {
    machines: Writes,
    groups: Writes,
    jobs: Writes,
    events: Writes,
    leases: Writes,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    machines: u64,
    groups: u64,
    jobs: u64,
    events: u64,
    leases: u64,
}

impl AllWrites {
    fn counts(&self) -> Counts {
        Counts {
            machines: self.machines.get(),
            groups: self.groups.get(),
            jobs: self.jobs.get(),
            events: self.events.get(),
            leases: self.leases.get(),
        }
    }

    fn synced(&self) -> bool {
        [
            &self.machines,
            &self.groups,
            &self.jobs,
            &self.events,
            &self.leases,
        ]
        .iter()
        .all(|w| w.synced.load(Ordering::SeqCst))
    }
}

impl Counts {
    fn since(self, before: Counts) -> Counts {
        Counts {
            machines: self.machines - before.machines,
            groups: self.groups - before.groups,
            jobs: self.jobs - before.jobs,
            events: self.events - before.events,
            leases: self.leases - before.leases,
        }
    }

    /// Writes to the objects the controllers own (the Lease is leader election's renewals).
    fn objects(self) -> u64 {
        self.machines + self.groups + self.jobs + self.events
    }

    fn show(self) -> String {
        format!(
            "Node CRs {}, Groups {}, Jobs {}, Events {}, Lease {}",
            self.machines, self.groups, self.jobs, self.events, self.leases
        )
    }
}

/// A process's memory from `/proc/<pid>/status`, in KiB.
struct Memory {
    rss: u64,
    hwm: u64,
    /// Heap, stacks: what the process allocated.
    anon: u64,
    /// Mapped files: the binary's and libraries' pages.
    file: u64,
}

impl Memory {
    fn of(pid: u32) -> anyhow::Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Memory {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
        })
    }

    fn show(&self) -> String {
        format!(
            "{} / {} (anonymous {}, file-backed {})",
            mib(self.rss),
            mib(self.hwm),
            mib(self.anon),
            mib(self.file)
        )
    }
}

/// CPU time (user + system) the process has used.
fn cpu(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("no command name in {path}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {} of {path}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    Ok(Duration::from_secs_f64(total as f64 / hz as f64))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// GET over HTTP/1.1: the status code.
async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status line in {out:?}"))
}

/// The groups and their powered-off machines.
async fn fixtures(client: &kube::Client, ns: &str, size: Size) -> anyhow::Result<()> {
    let groups: Api<Group> = Api::namespaced(client.clone(), ns);
    for g in 0..size.groups {
        let group = Group::test(&group_id(g))
            .namespace(ns)
            .min(0)
            .max(u32::try_from(size.per_group)?)
            .build();
        groups
            .create(&PostParams::default(), &group)
            .await
            .with_context(|| format!("creating Group {}", group_id(g)))?;
    }
    let machines: Api<Machine> = Api::namespaced(client.clone(), ns);
    let all: Vec<(usize, usize)> = (0..size.groups)
        .flat_map(|g| (0..size.per_group).map(move |m| (g, m)))
        .collect();
    futures::stream::iter(all)
        .map(|(g, m)| {
            let machines = machines.clone();
            async move {
                machines
                    .create(
                        &PostParams::default(),
                        &Machine::test(&machine_name(g, m))
                            .namespace(ns)
                            .group(&group_id(g))
                            .desired(if size.is_on(g, m) {
                                PowerState::On
                            } else {
                                PowerState::Off
                            })
                            .capacity([("cpu", "4"), ("memory", "8Gi"), ("pods", "110")])
                            .build(),
                    )
                    .await
                    .with_context(|| format!("creating Node CR {}", machine_name(g, m)))
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    let on: Vec<(usize, usize)> = (0..size.groups)
        .flat_map(|g| (0..size.per_group).map(move |m| (g, m)))
        .filter(|&(g, m)| size.is_on(g, m))
        .collect();
    let mut nodes: Vec<(String, Option<String>)> = on
        .into_iter()
        .map(|(g, m)| {
            let name = machine_name(g, m);
            let id = format!("homelab://{ns}/{name}");
            (name, Some(id))
        })
        .collect();
    let managed = nodes.len();
    nodes.extend((managed..size.nodes).map(|i| (format!("worker-{i:04}"), None)));
    let api: Api<Node> = Api::all(client.clone());
    futures::stream::iter(nodes.into_iter().enumerate())
        .map(|(i, (name, provider_id))| {
            let api = api.clone();
            async move {
                let node = kubelet_node(&name, provider_id.as_deref(), i)?;
                let status = serde_json::json!({ "status": node.status });
                api.create(&PostParams::default(), &node)
                    .await
                    .with_context(|| format!("creating Node {name}"))?;
                // The status as the kubelet reports it (a create may drop it).
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .with_context(|| format!("writing the status of Node {name}"))
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// A Kubernetes Node the size a kubelet (kubeadm, flannel, node-problem-detector) reports it:
/// labels, annotations, podCIDRs, capacity and allocatable, 14 conditions with messages,
/// addresses, nodeInfo, 40 container images with their sizes. `i` varies the details.
fn kubelet_node(name: &str, provider_id: Option<&str>, i: usize) -> anyhow::Result<Node> {
    use serde_json::json;
    let ip = format!("10.{}.{}.{}", 20 + i / 65_000, (i / 250) % 256, 1 + i % 250);
    let cidr = format!("10.244.{}.0/24", i % 256);
    let heartbeat = "2026-12-05T10:00:00Z";
    let since = "2026-12-01T08:00:00Z";
    let condition = |t: &str, s: &str, reason: &str, message: &str| {
        json!({
            "type": t, "status": s, "reason": reason, "message": message,
            "lastHeartbeatTime": heartbeat, "lastTransitionTime": since,
        })
    };
    let problems = [
        (
            "KernelDeadlock",
            "KernelHasNoDeadlock",
            "kernel has no deadlock",
        ),
        (
            "ReadonlyFilesystem",
            "FilesystemIsNotReadOnly",
            "Filesystem is not read-only",
        ),
        (
            "FrequentKubeletRestart",
            "NoFrequentKubeletRestart",
            "kubelet is functioning properly",
        ),
        (
            "FrequentDockerRestart",
            "NoFrequentDockerRestart",
            "docker is functioning properly",
        ),
        (
            "FrequentContainerdRestart",
            "NoFrequentContainerdRestart",
            "containerd is functioning properly",
        ),
        (
            "FrequentUnregisterNetDevice",
            "NoFrequentUnregisterNetDevice",
            "node is functioning properly",
        ),
        (
            "CorruptDockerOverlay2",
            "NoCorruptDockerOverlay2",
            "docker overlay2 is functioning properly",
        ),
        ("KubeletProblem", "KubeletIsUp", "kubelet service is up"),
        (
            "ContainerRuntimeProblem",
            "ContainerRuntimeIsUp",
            "container runtime service is up",
        ),
    ];
    let mut conditions = vec![condition(
        "NetworkUnavailable",
        "False",
        "FlannelIsUp",
        "Flannel is running on this node",
    )];
    conditions.extend(
        problems
            .iter()
            .map(|(t, reason, message)| condition(t, "False", reason, message)),
    );
    conditions.extend([
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]);
    let images: Vec<serde_json::Value> = (0..40)
        .map(|k| {
            let repo = match k % 4 {
                0 => format!("registry.k8s.io/component-{k}"),
                1 => format!("docker.io/library/app-{k}"),
                2 => format!("ghcr.io/example/service-{k}"),
                _ => format!("quay.io/example/tool-{k}"),
            };
            let digest = format!(
                "{:064x}",
                (k as u128 + 1) * 0x9e37_79b9_7f4a_7c15 + (i % 7) as u128
            );
            json!({
                "names": [format!("{repo}@sha256:{digest}"), format!("{repo}:v1.{k}.{}", i % 3)],
                "sizeBytes": 10_000_000 + k * 1_234_567,
            })
        })
        .collect();
    let mut spec = json!({ "podCIDR": cidr, "podCIDRs": [cidr] });
    if let Some(id) = provider_id {
        spec["providerID"] = json!(id);
    }
    let resources = |cpu: &str, memory: &str, storage: &str| {
        json!({
            "cpu": cpu, "ephemeral-storage": storage, "hugepages-1Gi": "0",
            "hugepages-2Mi": "0", "memory": memory, "pods": "110",
        })
    };
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "homelab-4c8g",
                "topology.kubernetes.io/zone": format!("rack{}", i % 4),
            },
            "annotations": {
                "flannel.alpha.coreos.com/backend-data":
                    format!("{{\"VNI\":1,\"VtepMAC\":\"0a:58:0a:f4:{:02x}:{:02x}\"}}", i / 256 % 256, i % 256),
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": ip,
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "csi.volume.kubernetes.io/nodeid": format!("{{\"driver.longhorn.io\":\"{name}\"}}"),
            },
        },
        "spec": spec,
        "status": {
            "capacity": resources("4", "8038532Ki", "102625208Ki"),
            "allocatable": resources("4", "7936132Ki", "94580335255"),
            "conditions": conditions,
            "addresses": [
                { "type": "InternalIP", "address": ip },
                { "type": "Hostname", "address": name },
            ],
            "daemonEndpoints": { "kubeletEndpoint": { "Port": 10250 } },
            "nodeInfo": {
                "machineID": format!("{:032x}", i as u128 * 0x1234_5678_9abc_def1),
                "systemUUID": format!("4c4c4544-0042-{:04x}-8031-b4c04f{:06x}", i % 65_536, i),
                "bootID": format!("{:08x}-1c2d-4e5f-8a9b-{:012x}", i, i * 31),
                "kernelVersion": "6.12.48+deb13-amd64",
                "osImage": "Debian GNU/Linux 13 (trixie)",
                "containerRuntimeVersion": "containerd://2.1.4",
                "kubeletVersion": "v1.36.3", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64",
            },
            "images": images,
            "runtimeHandlers": [
                { "name": "runc", "features": { "recursiveReadOnlyMounts": true, "userNamespaces": true } },
                { "name": "", "features": { "recursiveReadOnlyMounts": true, "userNamespaces": true } },
            ],
            "features": { "supplementalGroupsPolicy": true },
        },
    });
    serde_json::from_value(node).with_context(|| format!("the fixture Node {name}"))
}

/// Polls until `NodeGroups` lists exactly the fixture's groups with their max size.
async fn correct_node_groups(addr: SocketAddr, size: Size) -> bool {
    let Ok(mut c) = CloudProviderClient::connect(format!("http://{addr}")).await else {
        return false;
    };
    let Ok(r) = c.node_groups(proto::NodeGroupsRequest {}).await else {
        return false;
    };
    let got: BTreeMap<String, i32> = r
        .into_inner()
        .node_groups
        .into_iter()
        .map(|g| (g.id, g.max_size))
        .collect();
    let want: BTreeMap<String, i32> = (0..size.groups)
        .map(|g| (group_id(g), size.per_group as i32))
        .collect();
    got == want
}

struct Operator {
    child: tokio::process::Child,
    pid: u32,
    grpc: SocketAddr,
    health: SocketAddr,
    log: std::path::PathBuf,
}

impl Operator {
    fn start(cp: &support::ControlPlane, ns: &str, dir: &Path) -> anyhow::Result<Operator> {
        let ports = support::process::free_ports(2).context("picking free ports")?;
        let grpc: SocketAddr = ([127, 0, 0, 1], ports[0]).into();
        let health: SocketAddr = ([127, 0, 0, 1], ports[1]).into();
        let log = dir.join("operator.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // OPBENCH_BIN measures another build of the binary (another profile, the image's).
        let bin = std::env::var_os("OPBENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_kubectl-homelab").into());
        let mut command = tokio::process::Command::new(bin);
        if let Some(out) = std::env::var_os("OPBENCH_HEAPTRACK") {
            // heaptrack's recorder, preloaded into the operator only (not this bench): one raw
            // trace per start, read afterwards with heaptrack_interpret and heaptrack_print.
            let mut out = std::path::PathBuf::from(out);
            static STARTS: AtomicU64 = AtomicU64::new(0);
            out.as_mut_os_string()
                .push(format!(".{}", STARTS.fetch_add(1, Ordering::Relaxed)));
            command
                .env("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so")
                .env("DUMP_HEAPTRACK_OUTPUT", out);
        }
        let child = command
            .arg("run-operator")
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .args(["-n", ns, "--lease-namespace", ns])
            .args(["--listen", &grpc.to_string()])
            .args(["--health-address", &health.to_string()])
            .args([
                "--log".to_owned(),
                std::env::var("OPBENCH_LOG").unwrap_or_else(|_| "info".to_owned()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("starting kubectl-homelab run-operator")?;
        let pid = child.id().context("the operator exited at once")?;
        Ok(Operator {
            child,
            pid,
            grpc,
            health,
            log,
        })
    }

    fn log_tail(&self) -> String {
        support::process::log_tail(&self.log, 30)
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("the operator exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }
}

/// One start of the operator: time to correct answers and to ready, and the writes until quiet.
struct Start {
    cold: Duration,
    ready: Duration,
    writes: Counts,
    settled: Duration,
}

async fn start(
    cp: &support::ControlPlane,
    ns: &str,
    dir: &Path,
    size: Size,
    writes: &AllWrites,
) -> anyhow::Result<(Operator, Start)> {
    let at_spawn = writes.counts();
    let spawned = Instant::now();
    let mut op = Operator::start(cp, ns, dir)?;
    loop {
        if correct_node_groups(op.grpc, size).await {
            break;
        }
        op.check_alive()?;
        if spawned.elapsed() > PATIENCE {
            bail!(
                "NodeGroups did not list the {} groups within {PATIENCE:?}\n{}",
                size.groups,
                op.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cold = spawned.elapsed();
    loop {
        if matches!(http_status(op.health, "/readyz").await, Ok(200)) {
            break;
        }
        op.check_alive()?;
        if spawned.elapsed() > PATIENCE {
            bail!("/readyz not 200 within {PATIENCE:?}\n{}", op.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = spawned.elapsed();
    let mut last = writes.counts().objects();
    let mut last_change = Instant::now();
    while last_change.elapsed() < size.quiet {
        if spawned.elapsed() > PATIENCE {
            bail!(
                "the operator kept writing for {PATIENCE:?} after start\n{}",
                op.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = writes.counts().objects();
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    op.check_alive()?;
    let st = Start {
        cold,
        ready,
        writes: writes.counts().since(at_spawn),
        settled: last_change.saturating_duration_since(spawned),
    };
    Ok((op, st))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

async fn run(size: Size) -> anyhow::Result<()> {
    let Some(cp) = support::own(support::Options::default()).await? else {
        println!("skipped: Kubernetes test binaries not found (see tests/support/README.md)");
        return Ok(());
    };
    let client = cp.client()?;
    let ns = cp.namespace("opbench").await?;
    let t = Instant::now();
    fixtures(&client, &ns, size).await?;
    println!(
        "{} machines (Job driver, {} on with a Node, the rest off) in {} groups and {} Kubernetes \
         Nodes ({} not managed here) created in {:.1} s; idle window {} s",
        size.machines(),
        size.on(),
        size.groups,
        size.nodes,
        size.nodes - size.on(),
        t.elapsed().as_secs_f64(),
        size.idle.as_secs()
    );

    let (job_tx, mut job_rx) = mpsc::unbounded_channel();
    let writes = AllWrites {
        machines: count_writes(Api::<Machine>::namespaced(client.clone(), &ns), None),
        groups: count_writes(Api::<Group>::namespaced(client.clone(), &ns), None),
        jobs: count_writes(Api::<Job>::namespaced(client.clone(), &ns), Some(job_tx)),
        events: count_writes(Api::<CoreEvent>::namespaced(client.clone(), &ns), None),
        leases: count_writes(Api::<Lease>::namespaced(client.clone(), &ns), None),
    };
    let deadline = Instant::now() + PATIENCE;
    while !writes.synced() {
        if Instant::now() > deadline {
            bail!("the write-counting watches did not sync in {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // (1) Cold start: first on objects no operator has touched, then a restart (SIGKILL) over
    // the status the first one wrote, which is the start that happens in a cluster every day.
    let dir = tempfile::tempdir()?;
    let (mut op, first) = start(&cp, &ns, dir.path(), size, &writes).await?;
    op.child
        .kill()
        .await
        .context("killing the first operator")?;
    let (mut op, second) = start(&cp, &ns, dir.path(), size, &writes).await?;
    let mem_start = Memory::of(op.pid)?;
    let cpu_start = cpu(op.pid)?;

    // (4) Idle window.
    let idle_before = writes.counts();
    let cpu_before = cpu(op.pid)?;
    let t = Instant::now();
    tokio::time::sleep(size.idle).await;
    let idle_wall = t.elapsed();
    let idle_cpu = cpu(op.pid)?.saturating_sub(cpu_before);
    let idle = writes.counts().since(idle_before);
    op.check_alive()?;
    let mem_idle = Memory::of(op.pid)?;

    // (2) IncreaseSize(1) → power-on Job, each call on the next group. Jobs from before (there
    // should be none; they are counted above) are not the calls'.
    while job_rx.try_recv().is_ok() {}
    let mut c = CloudProviderClient::connect(format!("http://{}", op.grpc))
        .await
        .context("connecting to the operator's gRPC")?;
    let cpu_calls = cpu(op.pid)?;
    let calls_began = Instant::now();
    let mut rpc = Vec::with_capacity(size.calls);
    let mut to_job = Vec::with_capacity(size.calls);
    // (machine, when its call was made) for the operator's log lines.
    let mut called = Vec::with_capacity(size.calls);
    for i in 0..size.calls {
        let g = group_id(i % size.groups);
        let wall0 = std::time::SystemTime::now();
        let t0 = Instant::now();
        c.node_group_increase_size(proto::NodeGroupIncreaseSizeRequest {
            id: g.clone(),
            delta: 1,
        })
        .await
        .with_context(|| format!("IncreaseSize(1) on {g}"))?;
        rpc.push(t0.elapsed());
        let (job, seen) = tokio::time::timeout(PATIENCE, job_rx.recv())
            .await
            .ok()
            .flatten()
            .with_context(|| {
                format!("no power Job after IncreaseSize on {g}\n{}", op.log_tail())
            })?;
        to_job.push(seen.duration_since(t0));
        if std::env::var_os("OPBENCH_TRACE").is_some() {
            eprintln!(
                "TRACE call {i} group {g} start {:?} rpc {:?} job {:?} {}",
                std::time::SystemTime::now() - seen.elapsed() - seen.duration_since(t0),
                rpc.last(),
                seen.duration_since(t0),
                job.name_any()
            );
        }
        let labels = job.labels();
        let m = labels.get(MACHINE_LABEL).cloned().unwrap_or_default();
        let dir = labels.get(DIRECTION_LABEL).cloned().unwrap_or_default();
        if dir != "on" || !m.starts_with(&format!("{g}-")) {
            bail!(
                "IncreaseSize on {g} was followed by Job {} for machine {m:?} direction {dir:?}",
                job.name_any()
            );
        }
        called.push((m, wall0));
    }
    let calls_wall = calls_began.elapsed();
    let calls_cpu = cpu(op.pid)?.saturating_sub(cpu_calls);
    // Jobs for other machines would arrive here: one call, one Job.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Ok((job, _)) = job_rx.try_recv() {
        bail!("an extra power Job appeared: {}", job.name_any());
    }
    op.check_alive()?;
    let mem_calls = Memory::of(op.pid)?;
    if let Some(keep) = std::env::var_os("OPBENCH_KEEP_LOG") {
        std::fs::copy(&op.log, &keep)
            .with_context(|| format!("copying the operator's log to {keep:?}"))?;
    }
    let mut to_started = power_actions_started(&op.log, &ns, &called)?;
    rpc.sort();
    to_job.sort();
    to_started.sort();

    println!("| measure | value |");
    println!("|---|---|");
    for (name, st) in [("first start", &first), ("restart after SIGKILL", &second)] {
        println!(
            "| {name}: spawn → NodeGroups lists all groups | {} |",
            ms(st.cold)
        );
        println!(
            "| {name}: spawn → /readyz 200 (leader) | {} |",
            ms(st.ready)
        );
        println!(
            "| {name}: writes until {} s quiet (last at {:.1} s) | {} |",
            size.quiet.as_secs(),
            st.settled.as_secs_f64(),
            st.writes.show()
        );
    }
    println!(
        "| CPU used by the restart (incl. settling) | {:.2} s |",
        cpu_start.as_secs_f64()
    );
    println!(
        "| RSS / HWM after the restart settled | {} |",
        mem_start.show()
    );
    println!(
        "| idle {:.0} s: CPU | {:.2} s ({:.3} % of a core) |",
        idle_wall.as_secs_f64(),
        idle_cpu.as_secs_f64(),
        100.0 * idle_cpu.as_secs_f64() / idle_wall.as_secs_f64()
    );
    println!(
        "| idle {:.0} s: writes | {} |",
        idle_wall.as_secs_f64(),
        idle.show()
    );
    println!("| RSS / HWM after idle | {} |", mem_idle.show());
    println!(
        "| IncreaseSize(1) RPC, {} calls: p50 / p99 / max | {} / {} / {} |",
        rpc.len(),
        ms(percentile(&rpc, 0.5)),
        ms(percentile(&rpc, 0.99)),
        ms(percentile(&rpc, 1.0))
    );
    println!(
        "| IncreaseSize(1) → power-on Job seen: p50 / p99 / max | {} / {} / {} |",
        ms(percentile(&to_job, 0.5)),
        ms(percentile(&to_job, 0.99)),
        ms(percentile(&to_job, 1.0))
    );
    println!(
        "| IncreaseSize(1) → power action started (Job create answered, operator's log): p50 / p99 / max | {} / {} / {} |",
        ms(percentile(&to_started, 0.5)),
        ms(percentile(&to_started, 0.99)),
        ms(percentile(&to_started, 1.0))
    );
    println!(
        "| operator CPU during the calls ({:.1} s) | {:.2} s ({:.1} ms per call) |",
        calls_wall.as_secs_f64(),
        calls_cpu.as_secs_f64(),
        calls_cpu.as_secs_f64() * 1000.0 / size.calls.max(1) as f64
    );
    println!("| RSS / HWM after the calls | {} |", mem_calls.show());
    Ok(())
}

/// For each call, the time from the call to the operator's `power action started` line for its
/// machine's power-on (logged when the Job create was answered). Each call must have one.
fn power_actions_started(
    log: &Path,
    ns: &str,
    called: &[(String, std::time::SystemTime)],
) -> anyhow::Result<Vec<Duration>> {
    let text = std::fs::read_to_string(log)
        .with_context(|| format!("reading the operator's log {}", log.display()))?;
    let mut started: HashMap<&str, jiff::Timestamp> = HashMap::new();
    let prefix = format!("machine=Node {ns}/");
    for line in text.lines() {
        if !line.contains("power action started") || !line.contains(" direction=on") {
            continue;
        }
        let Some(machine) = line
            .split_once(&prefix)
            .and_then(|(_, rest)| rest.split(' ').next())
        else {
            continue;
        };
        let at = line
            .split(' ')
            .next()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .with_context(|| format!("no timestamp in the operator's log line {line:?}"))?;
        // The first power-on of each machine is the call's.
        started.entry(machine).or_insert(at);
    }
    called
        .iter()
        .map(|(m, at)| {
            let t = started.get(m.as_str()).with_context(|| {
                format!("no `power action started` line for {m} in the operator's log (OPBENCH_LOG must keep info)")
            })?;
            let call = jiff::Timestamp::try_from(*at).context("the call's time")?;
            Ok(Duration::try_from(t.duration_since(call)).unwrap_or(Duration::ZERO))
        })
        .collect()
}
