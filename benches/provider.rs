//! The CA provider over loopback: latency (p50/p99) and throughput of the read RPCs CA calls every
//! loop, and of IncreaseSize → desired state persisted (in-memory source), with 2,000 machines in
//! 50 groups. Run: `cargo bench --bench provider` (client and server share this machine's cores).
//!
//! Without `--bench` (`cargo test --benches`) it runs a smoke version: 3 groups of 8, a few
//! dozen calls per RPC, the same assertions on every answer.
#[path = "../tests/support_grpc/mod.rs"]
mod support_grpc;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubectl_homelab::operator::provider::ops;
use kubectl_homelab::operator::provider::proto::*;
use kubectl_homelab::operator::provider::{InMemorySource, Inventory, InventorySource, NodeRef};
use support_grpc::*;

/// How big a run is: the measurement, or the smoke version `cargo test --benches` runs.
#[derive(Clone, Copy)]
struct Size {
    groups: usize,
    per_group: usize,
    on_per_group: usize,
    samples: usize,
    warm_up: usize,
    callers: usize,
    throughput_time: Duration,
    /// The smoke version is a test: a failed call in the throughput loop fails it.
    smoke: bool,
}

const BENCH: Size = Size {
    groups: 50,
    per_group: 40,
    on_per_group: 10,
    samples: 5_000,
    warm_up: 300,
    callers: 16,
    throughput_time: Duration::from_secs(2),
    smoke: false,
};

const SMOKE: Size = Size {
    groups: 3,
    per_group: 8,
    on_per_group: 2,
    samples: 40,
    warm_up: 5,
    callers: 2,
    throughput_time: Duration::from_millis(50),
    smoke: true,
};

struct Stats {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        max: v.last().copied().unwrap_or_default(),
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

/// Sequential latency of `call(i)` over `size.samples` calls (after a warm-up).
async fn latency<F, Fut>(size: Size, mut call: F) -> Stats
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..size.warm_up {
        call(i).await;
    }
    let mut v = Vec::with_capacity(size.samples);
    for i in 0..size.samples {
        let t = Instant::now();
        call(i).await;
        v.push(t.elapsed());
    }
    stats(v)
}

type Client = cloud_provider_client::CloudProviderClient<tonic::transport::Channel>;

/// Successful calls per second with `size.callers` concurrent callers, each on its own
/// connection, and how many calls failed. `make` answers whether the call succeeded (with the
/// answer checked); only those count. The clock starts once every caller is connected, so
/// connection set-up is not in the figure.
async fn throughput<F, Fut>(size: Size, addr: std::net::SocketAddr, make: F) -> (f64, usize)
where
    F: Fn(Client, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let connected = Arc::new(tokio::sync::Barrier::new(size.callers + 1));
    let mut tasks = Vec::new();
    for caller in 0..size.callers {
        let make = make.clone();
        let connected = connected.clone();
        tasks.push(tokio::spawn(async move {
            let c = client(addr).await;
            // Every caller and the clock below start together, once all are connected.
            connected.wait().await;
            let start = Instant::now();
            let (mut ok, mut failed) = (0, 0);
            let mut n = caller;
            while start.elapsed() < size.throughput_time {
                if make(c.clone(), n).await {
                    ok += 1;
                } else {
                    failed += 1;
                }
                n += size.callers;
            }
            (ok, failed)
        }));
    }
    connected.wait().await;
    let start = Instant::now();
    let (mut ok, mut failed) = (0usize, 0usize);
    for t in tasks {
        let (o, f) = t.await.unwrap_or((0, 1));
        ok += o;
        failed += f;
    }
    (ok as f64 / start.elapsed().as_secs_f64(), failed)
}

/// One table row; `tput` is (successful calls per second, failed calls).
fn row(name: &str, s: &Stats, tput: Option<(f64, usize)>) {
    let tput = match tput {
        None => "-".to_owned(),
        Some((t, 0)) => format!("{t:.0}/s"),
        Some((t, failed)) => format!("{t:.0}/s ({failed} failed)"),
    };
    println!(
        "| {name:<40} | {:>8} | {:>8} | {:>8} | {:>12} |",
        us(s.p50),
        us(s.p99),
        us(s.max),
        tput
    );
}

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            std::process::exit(1);
        }
    };
    let size = if std::env::args().any(|a| a == "--bench") {
        BENCH
    } else {
        println!("provider bench (smoke; `cargo bench --bench provider` measures)");
        SMOKE
    };
    rt.block_on(run(size));
}

async fn run(size: Size) {
    let (gs, ms, ns) = big(size.groups, size.per_group, size.on_per_group);
    let provider_ids: Arc<Vec<String>> =
        Arc::new(ns.iter().map(|n| n.provider_id.clone()).collect());
    let group_ids: Arc<Vec<String>> =
        Arc::new((0..size.groups).map(|g| format!("g{g:02}")).collect());
    let source = Arc::new(InMemorySource::new(Inventory::build(gs, ms, ns)));
    let running = start(source.clone(), None).await;
    let addr = running.addr;
    let mut c = client(addr).await;

    println!(
        "{} machines in {} groups ({} registered nodes), loopback h2c, 2 tokio workers shared by client and server",
        size.groups * size.per_group,
        size.groups,
        provider_ids.len()
    );
    println!(
        "| RPC | p50 | p99 | max | throughput ({} callers) |",
        size.callers
    );
    println!("|---|---|---|---|---|");

    // NodeGroupForNode.
    let s = {
        let pids = provider_ids.clone();
        let c = &mut c;
        latency(size, move |i| {
            let req = NodeGroupForNodeRequest {
                node: Some(ExternalGrpcNode {
                    provider_id: pids[i % pids.len()].clone(),
                    name: String::new(),
                    ..Default::default()
                }),
            };
            let mut c = c.clone();
            async move {
                let r = c.node_group_for_node(req).await;
                assert!(
                    r.is_ok_and(|r| !r.into_inner().node_group.unwrap_or_default().id.is_empty())
                );
            }
        })
        .await
    };
    let pids = provider_ids.clone();
    let t = throughput(size, addr, move |mut c, n| {
        let pids = pids.clone();
        async move {
            let req = NodeGroupForNodeRequest {
                node: Some(ExternalGrpcNode {
                    provider_id: pids[n % pids.len()].clone(),
                    ..Default::default()
                }),
            };
            let r = c.node_group_for_node(req).await;
            r.is_ok_and(|r| !r.into_inner().node_group.unwrap_or_default().id.is_empty())
        }
    })
    .await;
    assert!(
        !size.smoke || t.1 == 0,
        "NodeGroupForNode: {} calls failed",
        t.1
    );
    row("NodeGroupForNode", &s, Some(t));

    // NodeGroupTargetSize.
    let s = {
        let gids = group_ids.clone();
        let c = &mut c;
        latency(size, move |i| {
            let id = gids[i % gids.len()].clone();
            let mut c = c.clone();
            async move {
                let r = c
                    .node_group_target_size(NodeGroupTargetSizeRequest { id })
                    .await;
                assert!(r.is_ok());
            }
        })
        .await
    };
    let gids = group_ids.clone();
    let t = throughput(size, addr, move |mut c, n| {
        let gids = gids.clone();
        async move {
            c.node_group_target_size(NodeGroupTargetSizeRequest {
                id: gids[n % gids.len()].clone(),
            })
            .await
            .is_ok()
        }
    })
    .await;
    assert!(
        !size.smoke || t.1 == 0,
        "NodeGroupTargetSize: {} calls failed",
        t.1
    );
    row("NodeGroupTargetSize", &s, Some(t));

    // NodeGroupNodes.
    let s = {
        let gids = group_ids.clone();
        let c = &mut c;
        latency(size, move |i| {
            let id = gids[i % gids.len()].clone();
            let mut c = c.clone();
            async move {
                let r = c.node_group_nodes(NodeGroupNodesRequest { id }).await;
                assert!(r.is_ok_and(|r| r.into_inner().instances.len() >= size.on_per_group));
            }
        })
        .await
    };
    let gids = group_ids.clone();
    let t = throughput(size, addr, move |mut c, n| {
        let gids = gids.clone();
        async move {
            let r = c
                .node_group_nodes(NodeGroupNodesRequest {
                    id: gids[n % gids.len()].clone(),
                })
                .await;
            r.is_ok_and(|r| r.into_inner().instances.len() >= size.on_per_group)
        }
    })
    .await;
    assert!(
        !size.smoke || t.1 == 0,
        "NodeGroupNodes: {} calls failed",
        t.1
    );
    row("NodeGroupNodes", &s, Some(t));

    // IncreaseSize → desired power persisted; each is undone by DecreaseTargetSize (not timed)
    // so the group never fills up.
    let before = source.persisted().len();
    let mut inc = Vec::with_capacity(size.samples / 5);
    for i in 0..size.samples / 5 {
        let id = group_ids[i % group_ids.len()].clone();
        let t0 = Instant::now();
        let r = c
            .node_group_increase_size(NodeGroupIncreaseSizeRequest {
                delta: 1,
                id: id.clone(),
            })
            .await;
        inc.push(t0.elapsed());
        assert!(r.is_ok(), "{r:?}");
        let r = c
            .node_group_decrease_target_size(NodeGroupDecreaseTargetSizeRequest { delta: -1, id })
            .await;
        assert!(r.is_ok(), "{r:?}");
    }
    assert_eq!(source.persisted().len() - before, 2 * (size.samples / 5));
    row(
        "IncreaseSize (persisted, in-memory source)",
        &stats(inc),
        None,
    );
    let _ = running.stop().await;

    // The pure core alone (no gRPC, no scheduler hops): what the provider itself costs per call.
    let inv = source.snapshot();
    let core = |name: &str, f: &dyn Fn(usize)| {
        let mut v = Vec::with_capacity(size.samples);
        for i in 0..size.samples {
            let t = Instant::now();
            f(i);
            v.push(t.elapsed());
        }
        row(name, &stats(v), None);
    };
    core("core: ops::node_group_for_node", &|i| {
        let n = NodeRef {
            provider_id: provider_ids[i % provider_ids.len()].clone(),
            name: String::new(),
        };
        assert!(ops::node_group_for_node(&inv, &n, jiff::Timestamp::UNIX_EPOCH).is_some());
    });
    core("core: ops::target_size", &|i| {
        assert!(ops::target_size(&inv, &group_ids[i % group_ids.len()]).is_ok());
    });
    core("core: ops::node_group_nodes", &|i| {
        assert!(ops::node_group_nodes(&inv, &group_ids[i % group_ids.len()]).is_ok());
    });
    core("core: ops::increase_size (decision only)", &|i| {
        let d = ops::increase_size(
            &inv,
            &group_ids[i % group_ids.len()],
            1,
            jiff::Timestamp::UNIX_EPOCH,
        );
        assert!(d.is_ok());
    });
    inventory_build(size);
}

/// What `run-operator` does after every change it sees (`ClusterSource`'s rebuild): the inventory
/// built from the cached Group and Node CR objects.
fn inventory_build(size: Size) {
    use kubectl_homelab::operator::api::{Group, Machine};
    use kubectl_homelab::operator::machine::{Phase, PowerState};
    use kubectl_homelab::operator::provider::GroupIds;
    use kubectl_homelab::operator::provider::rebuild::InventoryBuilder;
    let per_group = u32::try_from(size.per_group).unwrap_or(u32::MAX);
    let groups: Vec<Arc<Group>> = (0..size.groups)
        .map(|g| {
            Arc::new(
                Group::test(&format!("g{g:02}"))
                    .min(0)
                    .max(per_group)
                    .build(),
            )
        })
        .collect();
    let machines: Vec<Arc<Machine>> = (0..size.groups * size.per_group)
        .map(|i| {
            let g = i / size.per_group;
            let m = Machine::test(&format!("g{g:02}-m{i:04}"))
                .group(&format!("g{g:02}"))
                .desired(PowerState::Off)
                .capacity([("cpu", "4"), ("memory", "8Gi"), ("pods", "110")])
                .phase(Phase::Off)
                .recent_boots(&[61, 58, 64]);
            Arc::new(m.build())
        })
        .collect();
    let nodes: Vec<Arc<kubectl_homelab::operator::kube_node::KubeNode>> = Vec::new();
    let samples = if size.smoke { 3 } else { 200 };
    let mut v = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let inv = Inventory::from_objects_with_ids(GroupIds::Name, &groups, &machines, &nodes);
        v.push(t.elapsed());
        assert_eq!(inv.groups().count(), size.groups);
    }
    row(
        &format!(
            "core: inventory from {} Node CRs, full build",
            machines.len()
        ),
        &stats(v),
        None,
    );

    // A build on the last build after one Node CR changed (a new object in the store): it
    // reads every object but converts only the changed one's group.
    let mut machines = machines;
    let mut builder = InventoryBuilder::new(GroupIds::Name);
    builder.build(&groups, &machines, &nodes);
    let mut v = Vec::with_capacity(samples);
    for i in 0..samples {
        let changed = i * 7 % machines.len();
        machines[changed] = Arc::new((*machines[changed]).clone());
        let t = Instant::now();
        let inv = builder.build(&groups, &machines, &nodes);
        v.push(t.elapsed());
        assert_eq!(inv.groups().count(), size.groups);
    }
    row(
        "core: the same after one Node CR changed (rebuild)",
        &stats(v),
        None,
    );

    // What run-operator does: update the last build with the one Node CR the watch reported
    // changed, touching only its group and passing the lookup tables on.
    let mut v = Vec::with_capacity(samples);
    for i in 0..samples {
        let changed = i * 7 % machines.len();
        machines[changed] = Arc::new((*machines[changed]).clone());
        let m = &machines[changed];
        let key = [(
            m.metadata.namespace.as_deref().unwrap_or_default(),
            m.metadata.name.as_deref().unwrap_or_default(),
            Some(m.clone()),
        )];
        let t = Instant::now();
        let inv = builder.update(&groups, &key, None);
        v.push(t.elapsed());
        assert_eq!(inv.map(|i| i.groups().count()), Some(size.groups));
    }
    row(
        "core: the same after one Node CR changed (update with the change)",
        &stats(v),
        None,
    );
}
