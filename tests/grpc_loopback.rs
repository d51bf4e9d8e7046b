//! The CA externalgrpc provider over real sockets (127.0.0.1, ephemeral ports) with the tonic
//! client generated from the same proto: every RPC, every error code, rules 1-12 of
//! docs/ca-contract.md section 3, concurrency invariants, readiness, mTLS and ALPN h2.
mod support_grpc;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::SignedDuration;
use kubectl_homelab::operator::machine::{Phase, PowerState};
use kubectl_homelab::operator::provider::proto::cloud_provider_client::CloudProviderClient;
use kubectl_homelab::operator::provider::proto::instance_status::InstanceState;
use kubectl_homelab::operator::provider::proto::*;
use kubectl_homelab::operator::provider::{
    GpuConfig, InMemorySource, Inventory, InventorySource, PersistError, PowerChange, Provider,
    ProviderOptions, TaintView, TlsOptions,
};
use prost::Message;
use support_grpc::*;
use tonic::Code;
use tonic::transport::Channel;

type Client = CloudProviderClient<Channel>;

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) -> T {
    r.unwrap_or_else(|s| panic!("unexpected status {:?}: {}", s.code(), s.message()))
        .into_inner()
}

fn gnode(provider_id: &str, name: &str) -> ExternalGrpcNode {
    ExternalGrpcNode {
        provider_id: provider_id.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// A fake node, as CA sends for instances that never registered.
fn fake(machine: &str) -> ExternalGrpcNode {
    let id = pid(machine);
    ExternalGrpcNode {
        provider_id: id.clone(),
        name: id,
        labels: HashMap::new(),
        annotations: [(
            "k8s.io/cluster-autoscaler/fake-node-reason".to_string(),
            "unregistered".to_string(),
        )]
        .into(),
    }
}

/// Groups:
/// - small (min 1, max 4): s-a on+registered+Ready (providerID k3s://s-a, $0.10/h, seen as a
///   node), s-b on+Booting (unregistered), s-c, s-d, s-e off.
/// - gpu (min 0): g-a off, last seen with an NVIDIA label, $0.50/h; Group sets scaleDownUnneeded.
/// - flaky (min 0): f-a on but Failed (boot deadline), f-b off, f-c wanted off and PoweringOff.
/// - bare (min 0): x-a off, nothing known about its shape.
/// - roomy (max 10): r-a, r-b off.
/// - loose: a machine in no known group, registered. Plus a control-plane node we do not manage.
fn lab() -> Inventory {
    let mut sa = machine("s-a", "small", PowerState::On, Phase::Ready);
    sa.provider_id = "k3s://s-a".into();
    sa.hourly_rate = Some(0.10);
    sa.last_seen = Some(node_for(&sa, true));
    let sb = machine("s-b", "small", PowerState::On, Phase::Booting);
    let sc = machine("s-c", "small", PowerState::Off, Phase::Off);
    let sd = machine("s-d", "small", PowerState::Off, Phase::Off);
    let se = machine("s-e", "small", PowerState::Off, Phase::Off);

    let mut ga = machine("g-a", "gpu", PowerState::Off, Phase::Off);
    ga.hourly_rate = Some(0.50);
    let mut seen = node_for(&ga, false);
    seen.labels = seen.labels.with("nvidia.com/gpu.product", "RTX-4090");
    seen.taints = vec![TaintView {
        key: "ToBeDeletedByClusterAutoscaler".into(),
        value: Some("1".into()),
        effect: "NoSchedule".into(),
    }];
    ga.last_seen = Some(seen);
    let mut gpu = group("gpu", 0, None);
    gpu.options.scale_down_unneeded = Some(SignedDuration::from_mins(30));

    let mut fa = machine("f-a", "flaky", PowerState::On, Phase::Failed);
    fa.lifecycle.last_error = Some("boot deadline 10m passed without a Ready node".into());
    let fb = machine("f-b", "flaky", PowerState::Off, Phase::Off);
    let fc = machine("f-c", "flaky", PowerState::Off, Phase::PoweringOff);
    let xa = machine("x-a", "bare", PowerState::Off, Phase::Off);
    let ra = machine("r-a", "roomy", PowerState::Off, Phase::Off);
    let rb = machine("r-b", "roomy", PowerState::Off, Phase::Off);
    let loose = machine("loose", "no-such-group", PowerState::On, Phase::Ready);

    let mut cp = node_for(&loose, true);
    cp.name = "control-plane".into();
    cp.provider_id = "kind://control-plane".into();
    let nodes = vec![
        node_for(&sa, true),
        node_for(&loose, true),
        node_for(&fc, true),
        cp,
    ];
    Inventory::build(
        vec![
            group("small", 1, Some(4)),
            gpu,
            group("flaky", 0, None),
            group("bare", 0, None),
            group("roomy", 0, Some(10)),
        ],
        vec![sa, sb, sc, sd, se, ga, fa, fb, fc, xa, ra, rb, loose],
        nodes,
    )
}

async fn setup() -> (Arc<InMemorySource>, Running, Client) {
    let source = Arc::new(InMemorySource::new(lab()));
    let running = start(source.clone(), None).await;
    let c = client(running.addr).await;
    (source, running, c)
}

async fn target(c: &mut Client, id: &str) -> i32 {
    ok(
        c.node_group_target_size(NodeGroupTargetSizeRequest { id: id.into() })
            .await,
    )
    .target_size
}

async fn instances(
    c: &mut Client,
    id: &str,
) -> BTreeMap<String, (InstanceState, Option<InstanceErrorInfo>)> {
    ok(c.node_group_nodes(NodeGroupNodesRequest { id: id.into() })
        .await)
    .instances
    .into_iter()
    .map(|i| {
        let s = i.status.unwrap_or_default();
        (
            i.id,
            (
                InstanceState::try_from(s.instance_state).unwrap_or(InstanceState::Unspecified),
                s.error_info,
            ),
        )
    })
    .collect()
}

async fn group_for(c: &mut Client, n: ExternalGrpcNode) -> NodeGroup {
    ok(
        c.node_group_for_node(NodeGroupForNodeRequest { node: Some(n) })
            .await,
    )
    .node_group
    .unwrap_or_default()
}

fn changed(source: &InMemorySource) -> Vec<(String, PowerState)> {
    source
        .persisted()
        .into_iter()
        .map(|c| (c.machine.name, c.desired))
        .collect()
}

#[tokio::test]
async fn rule1_instance_ids_are_the_registered_provider_ids() {
    let (_s, running, mut c) = setup().await;
    let inst = instances(&mut c, "small").await;
    assert_eq!(
        inst.keys().cloned().collect::<Vec<_>>(),
        vec!["homelab://lab/s-b".to_string(), "k3s://s-a".to_string()]
    );
    assert_eq!(inst["k3s://s-a"].0, InstanceState::InstanceRunning);
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule2_node_group_for_node_by_provider_id_then_name() {
    let (_s, running, mut c) = setup().await;
    let all: HashSet<String> = ok(c.node_groups(NodeGroupsRequest {}).await)
        .node_groups
        .into_iter()
        .map(|g| g.id)
        .collect();
    // Real node by providerID; min/max filled.
    let g = group_for(&mut c, gnode("k3s://s-a", "misleading")).await;
    assert_eq!((g.id.as_str(), g.min_size, g.max_size), ("small", 1, 4));
    // By name when the providerID is unknown or empty.
    assert_eq!(group_for(&mut c, gnode("", "s-a")).await.id, "small");
    // Fake node for an unregistered instance.
    let g = group_for(&mut c, fake("s-b")).await;
    assert_eq!((g.id.as_str(), g.min_size, g.max_size), ("small", 1, 4));
    // Nodes we do not manage: id "".
    assert_eq!(
        group_for(&mut c, gnode("kind://control-plane", "control-plane"))
            .await
            .id,
        ""
    );
    assert_eq!(group_for(&mut c, gnode("", "loose")).await.id, "");
    assert_eq!(
        group_for(&mut c, gnode("aws:///x", "stranger")).await.id,
        ""
    );
    let mut probes: Vec<ExternalGrpcNode> = ["s-b", "g-a", "f-a", "x-a", "r-a"]
        .into_iter()
        .map(fake)
        .collect();
    probes.push(gnode("k3s://s-a", "s-a"));
    for n in probes {
        let id = group_for(&mut c, n.clone()).await.id;
        let n = n.name;
        assert!(all.contains(&id), "{n} → {id} not in NodeGroups {all:?}");
    }
    assert_eq!(
        code(
            c.node_group_for_node(NodeGroupForNodeRequest { node: None })
                .await
        ),
        Code::InvalidArgument
    );
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule3_target_follows_desired_state_at_once_even_when_the_source_lags() {
    let (source, running, mut c) = setup().await;
    assert_eq!(target(&mut c, "small").await, 2);
    source.set_lagging(true);
    ok(c.node_group_increase_size(NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "small".into(),
    })
    .await);
    // Persisted before the call returned, and the next TargetSize agrees.
    assert_eq!(changed(&source), vec![("s-c".to_string(), PowerState::On)]);
    assert_eq!(target(&mut c, "small").await, 3);
    assert_eq!(instances(&mut c, "small").await.len(), 3);
    ok(c.node_group_delete_nodes(NodeGroupDeleteNodesRequest {
        nodes: vec![fake("s-c")],
        id: "small".into(),
    })
    .await);
    assert_eq!(target(&mut c, "small").await, 2);
    // The source catching up changes nothing.
    source.catch_up();
    assert_eq!(target(&mut c, "small").await, 2);
    // A source that fails to persist: mutations fail Unavailable and change nothing; reads of
    // known groups never fail.
    source.set_lagging(false);
    source.fail_persist(Some("API server timeout".into()));
    let r = c
        .node_group_increase_size(NodeGroupIncreaseSizeRequest {
            delta: 1,
            id: "small".into(),
        })
        .await;
    assert_eq!(code(r), Code::Unavailable);
    assert_eq!(target(&mut c, "small").await, 2);
    ok(c.refresh(RefreshRequest {}).await);
    assert_eq!(instances(&mut c, "small").await.len(), 2);
    let _ = running.stop().await;
}

#[tokio::test]
async fn unknown_group_ids_are_not_found_everywhere() {
    let (_s, running, mut c) = setup().await;
    let id = || "nope".to_string();
    assert_eq!(
        code(
            c.node_group_target_size(NodeGroupTargetSizeRequest { id: id() })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(c.node_group_nodes(NodeGroupNodesRequest { id: id() }).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.node_group_increase_size(NodeGroupIncreaseSizeRequest { delta: 1, id: id() })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.node_group_delete_nodes(NodeGroupDeleteNodesRequest {
                nodes: vec![fake("s-a")],
                id: id()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.node_group_decrease_target_size(NodeGroupDecreaseTargetSizeRequest {
                delta: -1,
                id: id()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.node_group_template_node_info(NodeGroupTemplateNodeInfoRequest { id: id() })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.node_group_get_options(NodeGroupAutoscalingOptionsRequest {
                id: id(),
                defaults: None
            })
            .await
        ),
        Code::NotFound
    );
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule4_increase_size_validates_and_picks_by_policy() {
    let (source, running, mut c) = setup().await;
    let inc = |delta: i32, id: &str| NodeGroupIncreaseSizeRequest {
        delta,
        id: id.into(),
    };
    assert_eq!(
        code(c.node_group_increase_size(inc(0, "small")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.node_group_increase_size(inc(-2, "small")).await),
        Code::InvalidArgument
    );
    // 2 + 3 > max 4.
    assert_eq!(
        code(c.node_group_increase_size(inc(3, "small")).await),
        Code::FailedPrecondition
    );
    // roomy: max 10 but only 2 machines.
    assert_eq!(
        code(c.node_group_increase_size(inc(3, "roomy")).await),
        Code::ResourceExhausted
    );
    assert!(source.persisted().is_empty());
    ok(c.node_group_increase_size(inc(2, "small")).await);
    assert_eq!(
        changed(&source),
        vec![
            ("s-c".to_string(), PowerState::On),
            ("s-d".to_string(), PowerState::On)
        ]
    );
    assert_eq!(target(&mut c, "small").await, 4);
    // Now at max.
    assert_eq!(
        code(c.node_group_increase_size(inc(1, "small")).await),
        Code::FailedPrecondition
    );
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule5_delete_nodes_is_all_or_nothing() {
    let (source, running, mut c) = setup().await;
    let del = |nodes: Vec<ExternalGrpcNode>, id: &str| NodeGroupDeleteNodesRequest {
        nodes,
        id: id.into(),
    };
    // A node of another group, an unmanaged node: the whole call is rejected.
    let r = c
        .node_group_delete_nodes(del(vec![fake("s-b"), fake("g-a")], "small"))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    let r = c
        .node_group_delete_nodes(del(vec![fake("s-b"), gnode("", "control-plane")], "small"))
        .await;
    assert_eq!(code(r), Code::InvalidArgument);
    assert!(source.persisted().is_empty());
    assert_eq!(target(&mut c, "small").await, 2);
    // A real node by providerID.
    ok(
        c.node_group_delete_nodes(del(vec![gnode("k3s://s-a", "s-a")], "small"))
            .await,
    );
    assert_eq!(changed(&source), vec![("s-a".to_string(), PowerState::Off)]);
    assert_eq!(target(&mut c, "small").await, 1);
    // Repeating it is a no-op, not an error.
    ok(
        c.node_group_delete_nodes(del(vec![gnode("k3s://s-a", "s-a")], "small"))
            .await,
    );
    assert_eq!(source.persisted().len(), 1);
    // At min, the fake node of the last one (it never registered: a failed power-on) is
    // swapped for a spare (docs/ca-contract.md, rule 7): CA's `deleteCreatedNodesWithErrors`
    // (`core/static_autoscaler.go`) does not check minSize and would repeat a refused call.
    ok(c.node_group_delete_nodes(del(vec![fake("s-b")], "small"))
        .await);
    let last: Vec<(String, PowerState)> = changed(&source).into_iter().skip(1).collect();
    assert_eq!(
        last,
        vec![
            ("s-b".to_string(), PowerState::Off),
            // A spare that is down (s-c) before s-a, wanted off but still up (rule 4).
            ("s-c".to_string(), PowerState::On)
        ]
    );
    assert_eq!(target(&mut c, "small").await, 1);
    let _ = running.stop().await;
}

/// Below minSize with no failed power-on to swap, DeleteNodes is refused and nothing changes.
#[tokio::test]
async fn rule5_delete_nodes_below_min_is_refused() {
    let a = machine("a", "pair", PowerState::On, Phase::Ready);
    let b = machine("b", "pair", PowerState::On, Phase::Ready);
    let nodes = vec![node_for(&a, true), node_for(&b, true)];
    let inv = Inventory::build(vec![group("pair", 1, None)], vec![a, b], nodes);
    let source = Arc::new(InMemorySource::new(inv));
    let running = start(source.clone(), None).await;
    let mut c = client(running.addr).await;
    let r = c
        .node_group_delete_nodes(NodeGroupDeleteNodesRequest {
            nodes: vec![gnode(&pid("a"), "a"), gnode(&pid("b"), "b")],
            id: "pair".into(),
        })
        .await;
    assert_eq!(code(r), Code::FailedPrecondition);
    assert!(source.persisted().is_empty());
    assert_eq!(target(&mut c, "pair").await, 2);
    let _ = running.stop().await;
}

/// Identity reuse (docs/ca-contract.md, rule 7), over the wire as CA drives it. Measured with
/// CA 1.36.1: three machines off, the first accepts power-on and never registers; CA deletes it
/// as long-unregistered (`core/static_autoscaler.go` `removeOldUnregisteredNodes`) and, keeping its
/// "unregistered since" time while the id stays listed (`clusterstate/clusterstate.go`
/// `updateUnregisteredNodes`), deletes it again at once if IncreaseSize picks it again. The
/// provider records the failure in the same write and picks another machine.
#[tokio::test]
async fn a_machine_ca_deleted_as_unregistered_is_not_picked_again() {
    let ms = vec![
        machine("m1", "trio", PowerState::Off, Phase::Off),
        machine("m2", "trio", PowerState::Off, Phase::Off),
        machine("m3", "trio", PowerState::Off, Phase::Off),
        machine("solo", "one", PowerState::Off, Phase::Off),
    ];
    let inv = Inventory::build(
        vec![group("trio", 0, None), group("one", 0, None)],
        ms,
        vec![],
    );
    let source = Arc::new(InMemorySource::new(inv));
    let running = start(source.clone(), None).await;
    let mut c = client(running.addr).await;
    let inc = |id: &str| NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: id.into(),
    };
    let del = |m: &str, id: &str| NodeGroupDeleteNodesRequest {
        nodes: vec![fake(m)],
        id: id.into(),
    };
    let mut picked = Vec::new();
    for _ in 0..3 {
        ok(c.node_group_increase_size(inc("trio")).await);
        let on = source
            .persisted()
            .last()
            .map(|p| p.machine.name.clone())
            .unwrap_or_default();
        // It never registers: CA gives up on it.
        ok(c.node_group_delete_nodes(del(&on, "trio")).await);
        let last = source.persisted().last().cloned();
        assert_eq!(
            last.map(|p| (p.machine.name, p.desired, p.power_on_failed)),
            Some((on.clone(), PowerState::Off, true))
        );
        picked.push(on);
    }
    assert_eq!(picked, vec!["m1", "m2", "m3"], "every machine tried once");
    // Only failed machines are left: ResourceExhausted, so CA backs the group off.
    assert_eq!(
        code(c.node_group_increase_size(inc("trio")).await),
        Code::ResourceExhausted
    );
    // A one-machine group does not loop either.
    ok(c.node_group_increase_size(inc("one")).await);
    ok(c.node_group_delete_nodes(del("solo", "one")).await);
    let r = c.node_group_increase_size(inc("one")).await;
    assert_eq!(code(r), Code::ResourceExhausted);
    let calls = source.persisted().len();
    assert_eq!(
        calls,
        8,
        "3 x (on, off) + (on, off): {:?}",
        source.persisted()
    );
    let _ = running.stop().await;
}

/// A source whose writes land but whose answer is an error (the API server applied the patch
/// and the connection dropped before the response, say).
struct LandsThenErrs(InMemorySource);

impl InventorySource for LandsThenErrs {
    fn snapshot(&self) -> Arc<Inventory> {
        self.0.snapshot()
    }
    async fn set_desired_power(&self, changes: &[PowerChange]) -> Result<(), PersistError> {
        self.0.set_desired_power(changes).await?;
        Err(PersistError {
            applied: changes.to_vec(),
            message: "connection reset after the write".into(),
        })
    }
    async fn wait_ready(&self) {}
}

/// A mutation that landed is never reported as failed: on an IncreaseSize
/// error CA registers a failed scale-up and backs the group off
/// (`core/scaleup/orchestrator/executor.go`), on a DeleteNodes error it un-taints the nodes it
/// drained (`core/scaledown/actuation`).
#[tokio::test]
async fn a_change_that_landed_is_reported_as_done() {
    let source = Arc::new(LandsThenErrs(InMemorySource::new(lab())));
    let running = start(source.clone(), None).await;
    let mut c = client(running.addr).await;
    ok(c.node_group_increase_size(NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "small".into(),
    })
    .await);
    assert_eq!(target(&mut c, "small").await, 3);
    let _ = running.stop().await;
}

/// A source whose writes never answer, and that says when the first one started.
struct Hanging {
    inner: InMemorySource,
    started: tokio::sync::Notify,
}

impl InventorySource for Hanging {
    fn snapshot(&self) -> Arc<Inventory> {
        self.inner.snapshot()
    }
    async fn set_desired_power(&self, _: &[PowerChange]) -> Result<(), PersistError> {
        self.started.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }
    async fn wait_ready(&self) {}
}

/// Waiting for the group lock has its own budget: a caller queued behind a
/// hanging persist answers Unavailable once the lock budget is spent (the persist budget here is
/// an hour), and nothing of its change is made.
#[tokio::test]
async fn the_group_lock_wait_has_its_own_budget() {
    let source = Arc::new(Hanging {
        inner: InMemorySource::new(lab()),
        started: tokio::sync::Notify::new(),
    });
    let options = ProviderOptions {
        lock_timeout: Duration::from_millis(100),
        persist_timeout: Duration::from_secs(3600),
        ..ProviderOptions::default()
    };
    let running = start_with(Provider::with_options(source.clone(), options)).await;
    let mut first = client(running.addr).await;
    let mut second = client(running.addr).await;
    // The first caller holds the group lock while its persist hangs.
    let held = tokio::spawn(async move {
        first
            .node_group_increase_size(NodeGroupIncreaseSizeRequest {
                delta: 1,
                id: "small".into(),
            })
            .await
    });
    source.started.notified().await;
    let r = second
        .node_group_decrease_target_size(NodeGroupDecreaseTargetSizeRequest {
            delta: -1,
            id: "small".into(),
        })
        .await;
    let message = r.as_ref().err().map(|s| (s.code(), s.message().to_owned()));
    assert_eq!(message.as_ref().map(|m| m.0), Some(Code::Unavailable));
    let message = message.map(|m| m.1).unwrap_or_default();
    assert!(message.contains("still in progress"), "{message}");
    assert_eq!(target(&mut second, "small").await, 2);
    held.abort();
    let _ = running.stop().await;
}

/// Rule 6: without a Group setting, the provision time after which a cancelled power-on counts
/// as failed is CA's `--max-node-provision-time`, which CA sends as the `defaults` of every
/// NodeGroupGetOptions (`externalgrpc_node_group.go` `GetOptions`).
#[tokio::test]
async fn rule6_a_power_on_older_than_cas_provision_time_is_cancelled_as_failed() {
    let (source, running, mut c) = setup().await;
    let defaults = NodeGroupAutoscalingOptions {
        max_node_provision_duration: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    };
    ok(
        c.node_group_get_options(NodeGroupAutoscalingOptionsRequest {
            id: "small".into(),
            defaults: Some(defaults),
        })
        .await,
    );
    ok(c.node_group_increase_size(NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "small".into(),
    })
    .await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // s-c (requested over a second ago) first, then s-b (request time unknown: not failed).
    ok(
        c.node_group_decrease_target_size(NodeGroupDecreaseTargetSizeRequest {
            delta: -2,
            id: "small".into(),
        })
        .await,
    );
    let cancelled: Vec<(String, bool)> = source
        .persisted()
        .into_iter()
        .filter(|p| p.desired == PowerState::Off)
        .map(|p| (p.machine.name, p.power_on_failed))
        .collect();
    assert_eq!(
        cancelled,
        vec![("s-c".to_string(), true), ("s-b".to_string(), false)]
    );
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule6_decrease_target_size_cancels_pending_only() {
    let (source, running, mut c) = setup().await;
    let dec = |delta: i32, id: &str| NodeGroupDecreaseTargetSizeRequest {
        delta,
        id: id.into(),
    };
    assert_eq!(
        code(c.node_group_decrease_target_size(dec(0, "small")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.node_group_decrease_target_size(dec(1, "small")).await),
        Code::InvalidArgument
    );
    // 2 - 2 < 1 registered.
    assert_eq!(
        code(c.node_group_decrease_target_size(dec(-2, "small")).await),
        Code::FailedPrecondition
    );
    ok(c.node_group_increase_size(NodeGroupIncreaseSizeRequest {
        delta: 2,
        id: "small".into(),
    })
    .await);
    // target 4, registered 1: CA's size fix (delta = registered - target) must succeed.
    ok(c.node_group_decrease_target_size(dec(-3, "small")).await);
    assert_eq!(target(&mut c, "small").await, 1);
    let offs: HashSet<String> = changed(&source)
        .into_iter()
        .filter(|(_, p)| *p == PowerState::Off)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        offs,
        ["s-b", "s-c", "s-d"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule6_newest_pending_is_cancelled_first() {
    let (source, running, mut c) = setup().await;
    ok(c.node_group_increase_size(NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "small".into(),
    })
    .await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    ok(c.node_group_increase_size(NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "small".into(),
    })
    .await);
    ok(
        c.node_group_decrease_target_size(NodeGroupDecreaseTargetSizeRequest {
            delta: -1,
            id: "small".into(),
        })
        .await,
    );
    assert_eq!(
        changed(&source).last(),
        Some(&("s-d".to_string(), PowerState::Off))
    );
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule7_nodes_states_error_info_and_cancelling_a_failed_boot() {
    let (source, running, mut c) = setup().await;
    let small = instances(&mut c, "small").await;
    assert_eq!(small["k3s://s-a"].0, InstanceState::InstanceRunning);
    assert_eq!(small[&pid("s-b")].0, InstanceState::InstanceCreating);
    assert!(small[&pid("s-b")].1.is_none());
    assert!(
        !small.contains_key(&pid("s-c")),
        "idle off spares are never listed"
    );
    let flaky = instances(&mut c, "flaky").await;
    assert_eq!(flaky.len(), 2);
    let (state, err) = &flaky[&pid("f-a")];
    assert_eq!(*state, InstanceState::InstanceCreating);
    let err = err.clone().unwrap_or_default();
    assert_eq!(err.instance_error_class, 99);
    assert!(!err.error_code.is_empty());
    assert!(
        err.error_message.contains("boot deadline"),
        "{}",
        err.error_message
    );
    assert_eq!(flaky[&pid("f-c")].0, InstanceState::InstanceDeleting);
    // CA deletes the failed instance with a fake node: it is cancelled.
    ok(c.node_group_delete_nodes(NodeGroupDeleteNodesRequest {
        nodes: vec![fake("f-a")],
        id: "flaky".into(),
    })
    .await);
    assert_eq!(changed(&source), vec![("f-a".to_string(), PowerState::Off)]);
    assert_eq!(target(&mut c, "flaky").await, 0);
    let flaky = instances(&mut c, "flaky").await;
    assert!(
        flaky
            .values()
            .all(|(s, _)| *s != InstanceState::InstanceCreating),
        "{flaky:?}"
    );
    // And again the next loop: still fine.
    ok(c.node_group_delete_nodes(NodeGroupDeleteNodesRequest {
        nodes: vec![fake("f-a")],
        id: "flaky".into(),
    })
    .await);
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule8_template_node_is_complete_or_unimplemented() {
    let (_s, running, mut c) = setup().await;
    let r = ok(c
        .node_group_template_node_info(NodeGroupTemplateNodeInfoRequest { id: "gpu".into() })
        .await);
    assert!(!r.node_bytes.is_empty());
    let node = k8s_pb::api::core::v1::Node::decode(r.node_bytes.as_slice())
        .unwrap_or_else(|e| panic!("nodeBytes is not a v1.Node: {e}"));
    let meta = node.metadata.unwrap_or_default();
    // g-a's architecture is unknown: omitted, never guessed (docs/ca-contract.md, rule 8).
    assert_eq!(
        meta.labels.get("kubernetes.io/arch").map(String::as_str),
        None
    );
    assert_eq!(
        meta.labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(
        meta.labels
            .get("kubernetes.io/hostname")
            .map(String::as_str),
        Some("g-a")
    );
    assert_eq!(
        meta.labels
            .get("nvidia.com/gpu.product")
            .map(String::as_str),
        Some("RTX-4090")
    );
    let spec = node.spec.unwrap_or_default();
    assert!(
        spec.taints.is_empty(),
        "CA's taint must not be in the template: {:?}",
        spec.taints
    );
    let status = node.status.unwrap_or_default();
    assert_eq!(
        status.capacity.get("cpu").and_then(|q| q.string.as_deref()),
        Some("4")
    );
    assert_eq!(
        status
            .allocatable
            .get("memory")
            .and_then(|q| q.string.as_deref()),
        Some("16Gi")
    );
    assert!(status.capacity.contains_key("pods"));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.r#type.as_deref() == Some("Ready") && c.status.as_deref() == Some("True"))
    );
    let r = c
        .node_group_template_node_info(NodeGroupTemplateNodeInfoRequest { id: "bare".into() })
        .await;
    assert_eq!(code(r), Code::Unimplemented);
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule9_options_unset_unless_the_group_sets_them() {
    let (_s, running, mut c) = setup().await;
    let defaults = NodeGroupAutoscalingOptions {
        scale_down_utilization_threshold: 0.5,
        scale_down_gpu_utilization_threshold: 0.5,
        scale_down_unneeded_duration: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
        max_node_provision_duration: Some(prost_types::Duration {
            seconds: 900,
            nanos: 0,
        }),
        max_node_startup_duration: Some(prost_types::Duration {
            seconds: 900,
            nanos: 0,
        }),
        ..Default::default()
    };
    let r = ok(c
        .node_group_get_options(NodeGroupAutoscalingOptionsRequest {
            id: "small".into(),
            defaults: Some(defaults),
        })
        .await);
    assert_eq!(r.node_group_autoscaling_options, None);
    let r = ok(c
        .node_group_get_options(NodeGroupAutoscalingOptionsRequest {
            id: "gpu".into(),
            defaults: Some(defaults),
        })
        .await);
    let want = NodeGroupAutoscalingOptions {
        scale_down_unneeded_duration: Some(prost_types::Duration {
            seconds: 1800,
            nanos: 0,
        }),
        ..defaults
    };
    assert_eq!(r.node_group_autoscaling_options, Some(want));
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule10_cleanup_changes_nothing() {
    let (source, running, mut c) = setup().await;
    ok(c.cleanup(CleanupRequest {}).await);
    assert!(source.persisted().is_empty());
    assert_eq!(target(&mut c, "small").await, 2);
    assert_eq!(target(&mut c, "flaky").await, 1);
    let _ = running.stop().await;
}

#[tokio::test]
async fn rule11_pricing_and_gpus_from_real_data() {
    let (_s, running, mut c) = setup().await;
    let ts = |s: i64| {
        Some(prost_types::Timestamp {
            seconds: 1_800_000_000 + s,
            nanos: 0,
        })
    };
    let price = |node: ExternalGrpcNode, a: i64, b: i64| PricingNodePriceRequest {
        node: Some(node),
        start_timestamp: ts(a),
        end_timestamp: ts(b),
    };
    let p = ok(c
        .pricing_node_price(price(gnode("k3s://s-a", "s-a"), 0, 7200))
        .await)
    .price;
    assert!((p - 0.20).abs() < 1e-9, "{p}");
    let p = ok(c
        .pricing_node_price(price(
            gnode("", "template-node-for-gpu-8674665223082153551"),
            0,
            3600,
        ))
        .await)
    .price;
    assert!((p - 0.50).abs() < 1e-9, "{p}");
    assert_eq!(
        code(
            c.pricing_node_price(price(gnode("k3s://s-a", "s-a"), 10, 0))
                .await
        ),
        Code::InvalidArgument
    );
    let mut missing = price(gnode("k3s://s-a", "s-a"), 0, 10);
    missing.end_timestamp = None;
    assert_eq!(
        code(c.pricing_node_price(missing).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.pricing_node_price(price(gnode("", "control-plane"), 0, 10))
                .await
        ),
        Code::NotFound
    );
    let _ = running.stop().await;
}

/// Rule 11: CA asks GPULabel and GetAvailableGPUTypes once and caches the answers for
/// its lifetime (`cloudprovider/externalgrpc/externalgrpc_cloud_provider.go`, `GPULabel`,
/// `GetAvailableGPUTypes`), so they come from configuration, not from the machines seen so far:
/// lab() has a machine labelled RTX-4090, and the unconfigured answer does not mention it.
#[tokio::test]
async fn gpu_label_and_types_come_from_configuration() {
    let source = Arc::new(InMemorySource::new(lab()));
    let running = start(source.clone(), None).await;
    let mut c = client(running.addr).await;
    assert_eq!(
        ok(c.gpu_label(GpuLabelRequest {}).await).label,
        "nvidia.com/gpu.product"
    );
    let types = ok(c
        .get_available_gpu_types(GetAvailableGpuTypesRequest {})
        .await)
    .gpu_types;
    assert!(types.is_empty(), "{types:?}");
    let _ = running.stop().await;

    let options = ProviderOptions {
        gpu: GpuConfig {
            label: "amd.com/gpu.product-name".into(),
            types: ["MI50".to_owned(), "W7900".to_owned()].into(),
        },
        ..ProviderOptions::default()
    };
    let running = start_with(Provider::with_options(source, options)).await;
    let mut c = client(running.addr).await;
    assert_eq!(
        ok(c.gpu_label(GpuLabelRequest {}).await).label,
        "amd.com/gpu.product-name"
    );
    let types = ok(c
        .get_available_gpu_types(GetAvailableGpuTypesRequest {})
        .await)
    .gpu_types;
    assert_eq!(
        types
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        ["MI50".to_string(), "W7900".to_string()].into()
    );
    let _ = running.stop().await;
}

fn pod_bytes(cpu: Option<&str>, memory: Option<&str>) -> Vec<u8> {
    use k8s_pb::api::core::v1 as pb;
    use k8s_pb::apimachinery::pkg::api::resource::Quantity;
    let q = |v: &str| Quantity {
        string: Some(v.to_owned()),
    };
    let mut requests = BTreeMap::new();
    if let Some(v) = cpu {
        requests.insert("cpu".to_owned(), q(v));
    }
    if let Some(v) = memory {
        requests.insert("memory".to_owned(), q(v));
    }
    pb::Pod {
        metadata: Some(Default::default()),
        spec: Some(pb::PodSpec {
            containers: vec![pb::Container {
                name: Some("app".into()),
                resources: Some(pb::ResourceRequirements {
                    requests,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
    .encode_to_vec()
}

/// Rule 11: CA's `price` expander (`expander/price/price.go`, `BestOptions`) drops a
/// scale-up option whose PodPrice fails and divides by the pods' price plus its stabilization
/// pod's, so PodPrice answers > 0, deterministically. lab(): the cheapest priced machine is s-a
/// ($0.10/h; its Node has 4 CPUs and 16Gi).
#[tokio::test]
async fn pricing_pod_price_answers_from_requests_or_pod_rate() {
    let (source, running, mut c) = setup().await;
    let ts = |s: i64| {
        Some(prost_types::Timestamp {
            seconds: 1_800_000_000 + s,
            nanos: 0,
        })
    };
    let req = |bytes: Vec<u8>, hours: i64| PricingPodPriceRequest {
        pod_bytes: bytes,
        start_timestamp: ts(0),
        end_timestamp: ts(hours * 3600),
    };
    // 1 CPU of 4 (25%) outweighs 2Gi of 16Gi (12.5%): 0.25 x $0.10/h x 2h.
    let p = ok(c
        .pricing_pod_price(req(pod_bytes(Some("1"), Some("2Gi")), 2))
        .await)
    .price;
    assert!((p - 0.05).abs() < 1e-9, "{p}");
    let again = ok(c
        .pricing_pod_price(req(pod_bytes(Some("1"), Some("2Gi")), 2))
        .await)
    .price;
    assert_eq!(
        p.to_bits(),
        again.to_bits(),
        "same pod, same window, same price"
    );
    // Memory-bound: 8Gi of 16Gi.
    let p = ok(c
        .pricing_pod_price(req(pod_bytes(Some("100m"), Some("8Gi")), 1))
        .await)
    .price;
    assert!((p - 0.05).abs() < 1e-9, "{p}");
    // No requests at all (CA's stabilization pod may be tiny): still > 0.
    let p = ok(c.pricing_pod_price(req(pod_bytes(None, None), 1)).await).price;
    assert!(p > 0.0, "{p}");
    // spec.pricing.podRate wins when a machine sets it (the lowest set one).
    let mut machines: Vec<_> = lab().machines().cloned().collect();
    for m in &mut machines {
        if m.key.name == "s-c" {
            m.pod_rate = Some(0.02);
        }
        if m.key.name == "s-d" {
            m.pod_rate = Some(0.03);
        }
    }
    let groups: Vec<_> = lab().groups().map(|g| g.spec.clone()).collect();
    let nodes: Vec<_> = lab().nodes().cloned().collect();
    source.replace(Inventory::build(groups, machines, nodes));
    let p = ok(c
        .pricing_pod_price(req(pod_bytes(Some("1"), Some("2Gi")), 3))
        .await)
    .price;
    assert!((p - 0.06).abs() < 1e-9, "{p}");
    // Malformed input is an argument error, never a panic.
    let bad = req(vec![0xff, 0xff, 0xff], 1);
    assert_eq!(code(c.pricing_pod_price(bad).await), Code::InvalidArgument);
    let mut missing = req(pod_bytes(Some("1"), None), 1);
    missing.end_timestamp = None;
    assert_eq!(
        code(c.pricing_pod_price(missing).await),
        Code::InvalidArgument
    );
    let _ = running.stop().await;
}

#[tokio::test]
async fn no_call_is_served_before_the_source_is_ready() {
    let source = Arc::new(InMemorySource::new(lab()));
    source.set_ready(false);
    let running = start(source.clone(), None).await;
    let mut c = client(running.addr).await;
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        c.node_group_for_node(NodeGroupForNodeRequest {
            node: Some(gnode("k3s://s-a", "s-a")),
        }),
    )
    .await;
    assert!(
        early.is_err(),
        "answered before the caches synced: {early:?}"
    );
    source.set_ready(true);
    let g = tokio::time::timeout(
        Duration::from_secs(5),
        group_for(&mut c, gnode("k3s://s-a", "s-a")),
    )
    .await;
    assert_eq!(g.map(|g| g.id), Ok("small".to_string()));
    let _ = running.stop().await;
}

/// A source that checks the invariants at every persist (persists of one group are serialised by
/// the provider, so the state seen here is the state the decision was made on, plus the change).
struct Checking {
    inv: Mutex<Arc<Inventory>>,
    violations: Mutex<Vec<String>>,
    persisted: Mutex<Vec<PowerChange>>,
}

impl Checking {
    fn violate(&self, s: String) {
        self.violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s);
    }
}

impl InventorySource for Checking {
    fn snapshot(&self) -> Arc<Inventory> {
        self.inv.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn set_desired_power(&self, changes: &[PowerChange]) -> Result<(), PersistError> {
        // Yield so concurrent callers really interleave around the persist.
        tokio::task::yield_now().await;
        let mut guard = self.inv.lock().unwrap_or_else(|e| e.into_inner());
        let mut inv = (**guard).clone();
        let Some(gid) = changes
            .first()
            .and_then(|c| inv.group_of(&c.machine))
            .map(str::to_owned)
        else {
            self.violate(format!("changes for unknown machines: {changes:?}"));
            return Ok(());
        };
        let before = inv
            .group(&gid)
            .map(|g| g.machines.iter().filter(|m| m.wanted_on()).count())
            .unwrap_or(0);
        let mut seen = HashSet::new();
        for c in changes {
            if !seen.insert(c.machine.clone()) {
                self.violate(format!("{} picked twice in one decision", c.machine));
            }
            let m = inv.machines().find(|m| m.key == c.machine);
            if m.is_none_or(|m| m.desired == c.desired) {
                self.violate(format!(
                    "{} already {:?}: picked twice",
                    c.machine, c.desired
                ));
            }
        }
        // DecreaseTargetSize may go below minSize (rule 6: CA computes it from its registered
        // count); its decisions only cancel unregistered machines, unmarked.
        let cancel_only = changes.iter().all(|c| {
            c.desired == PowerState::Off
                && !c.power_on_failed
                && inv
                    .machines()
                    .find(|m| m.key == c.machine)
                    .is_some_and(|m| !inv.is_registered(m))
        });
        inv.apply_changes(changes);
        if let Some(g) = inv.group(&gid) {
            let after = g.machines.iter().filter(|m| m.wanted_on()).count() as u32;
            let registered = g
                .machines
                .iter()
                .filter(|m| m.wanted_on() && inv.is_registered(m))
                .count() as u32;
            if after > g.max_size() {
                self.violate(format!("{gid}: target {after} > max {}", g.max_size()));
            }
            if after < g.spec.min_size && (after as usize) < before && !cancel_only {
                self.violate(format!(
                    "{gid}: target {after} < min {} (registered {registered})",
                    g.spec.min_size
                ));
            }
            if after < registered {
                self.violate(format!("{gid}: target {after} < {registered} registered"));
            }
        }
        self.persisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(changes);
        *guard = Arc::new(inv);
        Ok(())
    }

    async fn wait_ready(&self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_under_64_concurrent_mutating_callers() {
    // 4 groups × 12 machines, min 2, max 9; 3 machines on and registered in each.
    let (mut gs, ms, ns) = big(4, 12, 3);
    for g in &mut gs {
        g.min_size = 2;
        g.max_size = Some(9);
    }
    let source = Arc::new(Checking {
        inv: Mutex::new(Arc::new(Inventory::build(gs, ms, ns))),
        violations: Mutex::new(Vec::new()),
        persisted: Mutex::new(Vec::new()),
    });
    // Budgets far beyond the run time: this checks invariants, not how fast a loaded machine
    // answers (the budgets have their own tests).
    let options = ProviderOptions {
        lock_timeout: Duration::from_secs(600),
        persist_timeout: Duration::from_secs(600),
        ..ProviderOptions::default()
    };
    let running = start_with(Provider::with_options(source.clone(), options)).await;
    let mut tasks = Vec::new();
    for caller in 0..64u64 {
        let addr = running.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            // Deterministic per caller, varied across callers.
            let mut x = caller.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut oks = 0u32;
            for _ in 0..15 {
                let gid = format!("g{:02}", next(4));
                let r = match next(3) {
                    0 => code(
                        c.node_group_increase_size(NodeGroupIncreaseSizeRequest {
                            delta: 1 + next(3) as i32,
                            id: gid,
                        })
                        .await,
                    ),
                    1 => {
                        let nodes = (0..1 + next(2)).map(|_| {
                            // Mostly members, sometimes another group's machine.
                            let g = if next(8) == 0 {
                                format!("g{:02}", next(4))
                            } else {
                                gid.clone()
                            };
                            fake(&format!("{g}-m{:03}", next(12)))
                        });
                        code(
                            c.node_group_delete_nodes(NodeGroupDeleteNodesRequest {
                                nodes: nodes.collect(),
                                id: gid,
                            })
                            .await,
                        )
                    }
                    _ => code(
                        c.node_group_decrease_target_size(NodeGroupDecreaseTargetSizeRequest {
                            delta: -1 - next(2) as i32,
                            id: gid,
                        })
                        .await,
                    ),
                };
                match r {
                    Code::Ok => oks += 1,
                    Code::InvalidArgument | Code::FailedPrecondition | Code::ResourceExhausted => {}
                    other => panic!("unexpected code {other:?}"),
                }
            }
            oks
        }));
    }
    let mut oks = 0;
    for t in tasks {
        oks += t.await.unwrap_or_else(|e| panic!("caller panicked: {e}"));
    }
    let violations = source
        .violations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        oks > 100,
        "too few successful mutations to mean anything: {oks}"
    );
    assert!(
        !source
            .persisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    );
    // Target equals the machines counted, per group, and the source agrees.
    let mut c = client(running.addr).await;
    let inv = source.snapshot();
    for g in inv.groups() {
        let id = g.spec.id.clone();
        let t = target(&mut c, &id).await;
        let counted = instances(&mut c, &id)
            .await
            .values()
            .filter(|(s, _)| *s != InstanceState::InstanceDeleting)
            .count() as i32;
        let wanted = g.machines.iter().filter(|m| m.wanted_on()).count() as i32;
        assert_eq!((t, counted), (wanted, wanted), "group {id}");
        assert!(t <= 9, "group {id}: {t}");
    }
    let _ = running.stop().await;
}

// ---------- mTLS and ALPN ----------

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    client_der: rustls::pki_types::CertificateDer<'static>,
    client_key_der: Vec<u8>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let fail = |e: rcgen::Error| -> ! { panic!("rcgen: {e}") };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap_or_else(|e| fail(e));
    let server_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .and_then(|p| p.signed_by(&server_key, &ca))
        .unwrap_or_else(|e| fail(e));
    let client_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let client = CertificateParams::new(vec!["cluster-autoscaler".to_string()])
        .and_then(|p| p.signed_by(&client_key, &ca))
        .unwrap_or_else(|e| fail(e));
    Pki {
        ca_pem: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
        ca_der: ca.der().clone(),
        client_der: client.der().clone(),
        client_key_der: client_key.serialize_der(),
    }
}

/// The server reads its TLS files from disk; the directory lives as long as the server.
async fn tls_server(p: &Pki) -> (tempfile::TempDir, Running) {
    let source = Arc::new(InMemorySource::new(lab()));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    };
    let tls = TlsOptions::new(
        file("tls.crt", &p.server_cert),
        file("tls.key", &p.server_key),
        Some(file("ca.crt", &p.ca_pem)),
    );
    let running = start(source, Some(tls)).await;
    (dir, running)
}

async fn tls_client(
    p: &Pki,
    addr: std::net::SocketAddr,
    with_cert: bool,
) -> Result<Client, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&p.ca_pem))
        .domain_name("localhost");
    if with_cert {
        tls = tls.identity(Identity::from_pem(&p.client_cert, &p.client_key));
    }
    // Dial 127.0.0.1; "localhost" is only the name the server certificate is verified against.
    let ch = Channel::from_shared(format!("https://{addr}"))
        .unwrap_or_else(|e| panic!("uri: {e}"))
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(CloudProviderClient::new(ch))
}

#[tokio::test]
async fn mtls_accepts_a_valid_client_certificate_and_refuses_none() {
    let p = pki();
    let (_dir, running) = tls_server(&p).await;
    let mut good = tls_client(&p, running.addr, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(target(&mut good, "small").await, 2);
    let mut anon = tls_client(&p, running.addr, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = anon
        .node_group_target_size(NodeGroupTargetSizeRequest { id: "small".into() })
        .await;
    assert!(r.is_err(), "served a client without a certificate: {r:?}");
    // Plaintext h2c against the TLS port fails too.
    let mut plain = client(running.addr).await;
    assert!(plain.node_groups(NodeGroupsRequest {}).await.is_err());
    let _ = running.stop().await;
}

#[tokio::test]
async fn tls_negotiates_alpn_h2() {
    let p = pki();
    let (_dir, running) = tls_server(&p).await;
    let addr = running.addr;
    let ca_der = p.ca_der.clone();
    let client_der = p.client_der.clone();
    let key_der = p.client_key_der.clone();
    let alpn = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, String> {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![client_der],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
            )
            .map_err(|e| e.to_string())?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut conn =
            rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
        let mut sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
        }
        Ok(conn.alpn_protocol().map(<[u8]>::to_vec))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(alpn, Ok(Some(b"h2".to_vec())));
    let _ = running.stop().await;
}

/// A source whose API server never answers a write. It logs when each write starts and when
/// the provider gives up on it (drops it at the persist budget), and says when the inventory is
/// read while a write hangs: in a mutation, that read comes right before waiting for the group
/// lock.
struct Stuck {
    inner: InMemorySource,
    write_started: tokio::sync::Notify,
    read_while_writing: tokio::sync::Notify,
    log: Mutex<Vec<&'static str>>,
}

impl Stuck {
    fn new(inventory: Inventory) -> Stuck {
        Stuck {
            inner: InMemorySource::new(inventory),
            write_started: tokio::sync::Notify::new(),
            read_while_writing: tokio::sync::Notify::new(),
            log: Mutex::new(Vec::new()),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Vec<&'static str>> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Logs "given up" when the provider drops a hanging write.
struct GivenUp<'a>(&'a Stuck);

impl Drop for GivenUp<'_> {
    fn drop(&mut self) {
        self.0.log().push("given up");
    }
}

impl InventorySource for Stuck {
    fn snapshot(&self) -> Arc<Inventory> {
        if self.log().last() == Some(&"write started") {
            self.read_while_writing.notify_one();
        }
        self.inner.snapshot()
    }
    async fn set_desired_power(&self, _: &[PowerChange]) -> Result<(), PersistError> {
        self.log().push("write started");
        let _given_up = GivenUp(self);
        self.write_started.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }
    async fn wait_ready(&self) {}
}

/// CA's `grpc_timeout` default (docs/ca-contract.md, section 2) as the call's deadline: an answer
/// later than that reaches the client as `Cancelled`, never as the provider's own status.
fn ca_deadline<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(Duration::from_secs(5));
    r
}

/// Rule 4: with the API server not answering, the caller holding the group lock and a caller
/// queued behind it both get the provider's Unavailable inside CA's deadline, and nothing
/// changes. The queued caller's write starts only after the first one was given up.
/// (`#[tokio::test]` runs everything on one thread: when the test wakes from
/// `read_while_writing`, the second call has already run up to its wait for the lock.)
#[tokio::test]
async fn rule4_mutations_answer_inside_the_deadline_when_persisting_hangs() {
    let source = Arc::new(Stuck::new(lab()));
    // The lock budget outlasts the persist budget: the queued caller gets the lock once the
    // first caller's write is given up, then its own write hangs.
    let options = ProviderOptions {
        lock_timeout: Duration::from_secs(3),
        persist_timeout: Duration::from_millis(300),
        ..ProviderOptions::default()
    };
    let running = start_with(Provider::with_options(source.clone(), options)).await;
    let mut first = client(running.addr).await;
    let mut second = client(running.addr).await;
    let held = tokio::spawn(async move {
        first
            .node_group_increase_size(ca_deadline(NodeGroupIncreaseSizeRequest {
                delta: 1,
                id: "small".into(),
            }))
            .await
    });
    // The first caller holds the group lock while its write hangs.
    source.write_started.notified().await;
    let queued = tokio::spawn(async move {
        second
            .node_group_decrease_target_size(ca_deadline(NodeGroupDecreaseTargetSizeRequest {
                delta: -1,
                id: "small".into(),
            }))
            .await
    });
    source.read_while_writing.notified().await;
    // The second caller is waiting for the lock: its write has not started.
    assert_eq!(*source.log(), ["write started"]);
    let queued = queued.await.unwrap_or_else(|e| panic!("{e}"));
    let message = queued.err().map(|s| (s.code(), s.message().to_owned()));
    assert_eq!(message.as_ref().map(|m| m.0), Some(Code::Unavailable));
    // Its own write's budget ran out, not the lock's.
    let message = message.map(|m| m.1).unwrap_or_default();
    assert!(message.contains("no answer within"), "{message}");
    let held = held.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code(held), Code::Unavailable);
    assert_eq!(
        *source.log(),
        ["write started", "given up", "write started", "given up"]
    );
    // Reads of the group still answer, unchanged.
    let mut c = client(running.addr).await;
    assert_eq!(target(&mut c, "small").await, 2);
    let _ = running.stop().await;
}

/// Rules 7, 2 and 8 over the wire, on a group whose only member came up:
/// - its Node went NotReady: still `instanceRunning`, no errorInfo (errorInfo makes CA's
///   `deleteCreatedNodesWithErrors` in `core/static_autoscaler.go` delete it undrained);
/// - a spare someone powered off left a NotReady Node behind: in no group;
/// - the template comes from the running member's live Node, the only shape known of it.
#[tokio::test]
async fn a_running_member_stays_running_and_shapes_the_template() {
    let up = machine("up", "solo", PowerState::On, Phase::Ready);
    let stale = machine("stale", "solo", PowerState::Off, Phase::Off);
    // The stale Node shows no capacity, so the running member's is the only shape known.
    let mut stale_node = node_for(&stale, false);
    stale_node.capacity = Default::default();
    let nodes = vec![node_for(&up, false), stale_node];
    let inv = Inventory::build(vec![group("solo", 0, None)], vec![up, stale], nodes);
    let source = Arc::new(InMemorySource::new(inv));
    let running = start(source, None).await;
    let mut c = client(running.addr).await;
    let solo = instances(&mut c, "solo").await;
    assert_eq!(solo.len(), 1, "{solo:?}");
    assert_eq!(solo[&pid("up")].0, InstanceState::InstanceRunning);
    assert!(solo[&pid("up")].1.is_none());
    assert_eq!(
        group_for(&mut c, gnode(&pid("stale"), "stale")).await.id,
        ""
    );
    assert_eq!(group_for(&mut c, gnode(&pid("up"), "up")).await.id, "solo");
    let r = ok(c
        .node_group_template_node_info(NodeGroupTemplateNodeInfoRequest { id: "solo".into() })
        .await);
    let node = k8s_pb::api::core::v1::Node::decode(r.node_bytes.as_slice())
        .unwrap_or_else(|e| panic!("nodeBytes is not a v1.Node: {e}"));
    let status = node.status.unwrap_or_default();
    assert_eq!(
        status.capacity.get("cpu").and_then(|q| q.string.as_deref()),
        Some("4")
    );
    let _ = running.stop().await;
}
