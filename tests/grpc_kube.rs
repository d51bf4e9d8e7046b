//! The kube-backed CA provider against a real control plane (etcd + kube-apiserver from
//! tests/k8s-bins): reflectors see the cluster, desired-power writes are durable before they
//! return, and the gRPC server answers from the cluster.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubectl_homelab::operator::api::{Group, Machine};
use kubectl_homelab::operator::cache::Scope;
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::operator::provider::cluster::{ClusterSource, WriteError};
use kubectl_homelab::operator::provider::{
    InventorySource as _, MachineKey, POWER_ON_FAILED_ANNOTATION, PowerChange,
};
use kubectl_homelab::testing::job;
use serde_json::json;
use support::{ControlPlane, FakeNode, World};

const SYNC: Duration = Duration::from_secs(30);

/// A Node CR in the predecessor's style (startup/shutdown pod specs) in Group `group`,
/// registering as Kubernetes node `name`.
fn predecessor_style(ns: &str, name: &str, group: &str, power: PowerState) -> Machine {
    let pod = job("busybox", &["true"]);
    Machine::test(name)
        .namespace(ns)
        .group(group)
        .desired(power)
        .node_name(name)
        .legacy_jobs(pod.clone(), pod)
        .build()
}

/// A namespace with Group `g` (min 0, max 3) and machines m0 (on, registered), m1, m2 (off).
struct Fixture {
    ns: String,
    client: kube::Client,
    names: Vec<String>,
}

async fn fixture(cp: &ControlPlane, prefix: &str) -> anyhow::Result<Fixture> {
    let ns = cp.namespace(prefix).await?;
    let client = cp.client()?;
    let groups: Api<Group> = Api::namespaced(client.clone(), &ns);
    create_when_served(
        &groups,
        &Group::test("g").namespace(&ns).min(0).max(3).build(),
    )
    .await?;
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let mut names = Vec::new();
    for (i, power) in [PowerState::On, PowerState::Off, PowerState::Off]
        .into_iter()
        .enumerate()
    {
        // Node names are cluster-wide: make them unique per test.
        let name = cp.unique_name(&format!("{prefix}-m{i}"));
        machines
            .create(
                &PostParams::default(),
                &predecessor_style(&ns, &name, "g", power),
            )
            .await
            .with_context(|| format!("creating Node CR {name}"))?;
        names.push(name);
    }
    let world = World::new(client.clone());
    world
        .node_up(
            &FakeNode::new(&names[0])
                .adoptable()
                .provider_id(&format!("homelab://{ns}/{}", names[0])),
        )
        .await?;
    Ok(Fixture { ns, client, names })
}

/// Creates `obj`, retrying while the API server answers 404 for the resource itself: right after
/// a CRD is Established its REST handler can take a moment to appear.
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

async fn desired(client: &kube::Client, ns: &str, name: &str) -> anyhow::Result<PowerState> {
    let m = Api::<Machine>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("reading Node CR {ns}/{name}"))?;
    Ok(m.spec.power_state)
}

async fn failed_at(client: &kube::Client, ns: &str, name: &str) -> anyhow::Result<Option<String>> {
    let m = Api::<Machine>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("reading Node CR {ns}/{name}"))?;
    Ok(m.metadata
        .annotations
        .and_then(|a| a.get(POWER_ON_FAILED_ANNOTATION).cloned()))
}

/// Waits until the source's objects satisfy `f` (watch events take a moment).
async fn eventually(
    source: &ClusterSource,
    what: &str,
    f: impl Fn(&kubectl_homelab::operator::provider::cluster::ClusterObjects) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut rx = source.subscribe();
    loop {
        if f(&source.objects()) {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            anyhow::bail!("timed out waiting for {what}");
        }
    }
}

#[tokio::test]
async fn source_syncs_and_sees_the_cluster() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let fx = fixture(cp, "src-sync").await?;
    let source = ClusterSource::start(fx.client.clone(), Scope::Namespace(fx.ns.clone()));
    // Concurrent waiters all wake (kube's `Store::wait_until_ready` keeps only one waker).
    let (a, ()) = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join(source.wait_until_ready(SYNC), source.wait_ready()),
    )
    .await
    .context("concurrent waiters for the caches were not all woken")?;
    a?;
    assert!(source.is_ready());
    let objects = source.objects();
    assert_eq!(objects.groups.len(), 1);
    assert_eq!(objects.machines.len(), 3);
    assert!(objects.nodes.iter().any(|n| n.name() == fx.names[0]));
    // Namespace scope: CRs of other namespaces are invisible.
    let g0 = source.generation();
    let other = fixture(cp, "src-other").await?;
    eventually(&source, "the other namespace's Node to arrive", |o| {
        o.nodes.iter().any(|n| n.name() == other.names[0])
    })
    .await?;
    assert!(source.generation() > g0);
    assert_eq!(source.objects().machines.len(), 3);

    // The inventory follows the cluster in the background, without any write of ours.
    assert_eq!(source.snapshot().machines().count(), 3);
    let extra = cp.unique_name("src-sync-extra");
    Api::<Machine>::namespaced(fx.client.clone(), &fx.ns)
        .create(
            &PostParams::default(),
            &predecessor_style(&fx.ns, &extra, "g", PowerState::Off),
        )
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while source.snapshot().machines().count() != 4 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the inventory never showed the new Node CR"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // All namespaces: both fixtures' CRs.
    let all = ClusterSource::start(fx.client.clone(), Scope::AllNamespaces);
    all.wait_until_ready(SYNC).await?;
    let mine = |o: &kubectl_homelab::operator::provider::cluster::ClusterObjects| {
        o.machines
            .iter()
            .filter(|m| {
                let ns = m.metadata.namespace.as_deref();
                ns == Some(fx.ns.as_str()) || ns == Some(other.ns.as_str())
            })
            .count()
    };
    assert_eq!(mine(&all.objects()), 7, "3 + the extra one here, 3 there");
    // Across namespaces every id is `<namespace>/<name>`, from the start, so
    // the second namespace's Group `g` renamed nothing (CA keys backoff and requests by id).
    let ids: Vec<String> = all.snapshot().group_ids().map(str::to_owned).collect();
    assert!(ids.contains(&format!("{}/g", fx.ns)), "{ids:?}");
    assert!(ids.contains(&format!("{}/g", other.ns)), "{ids:?}");
    assert_eq!(source.snapshot().group_ids().collect::<Vec<_>>(), vec!["g"]);
    Ok(())
}

fn change(ns: &str, name: &str, desired: PowerState) -> PowerChange {
    PowerChange {
        machine: MachineKey {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        },
        desired,
        at: jiff::Timestamp::UNIX_EPOCH,
        power_on_failed: false,
    }
}

#[tokio::test]
async fn desired_power_is_durable_and_visible_at_once() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let fx = fixture(cp, "src-write").await?;
    let source = ClusterSource::start(fx.client.clone(), Scope::Namespace(fx.ns.clone()));
    source.wait_until_ready(SYNC).await?;
    let before = source.snapshot();
    let g0 = source.generation();
    let wanted = [
        change(&fx.ns, &fx.names[1], PowerState::On),
        change(&fx.ns, &fx.names[2], PowerState::On),
    ];
    let (applied, result) = source.write_desired_power(&wanted).await;
    result?;
    assert_eq!(applied.len(), 2);
    // Durable: the API server has it when the call returns.
    assert_eq!(
        desired(&fx.client, &fx.ns, &fx.names[1]).await?,
        PowerState::On
    );
    assert_eq!(
        desired(&fx.client, &fx.ns, &fx.names[2]).await?,
        PowerState::On
    );
    // Visible at once, without waiting for the watch, and a new snapshot.
    assert!(source.generation() > g0);
    let on: Vec<_> = source
        .objects()
        .machines
        .iter()
        .filter(|m| m.spec.power_state == PowerState::On)
        .map(|m| m.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(on.len(), 3, "{on:?}");
    let after = source.snapshot();
    assert!(!Arc::ptr_eq(&before, &after));
    let wanted_on = after.machines().filter(|m| m.wanted_on()).count();
    assert_eq!(wanted_on, 3);
    // Unchanged generation: the same snapshot, no rebuild.
    let g = source.generation();
    let (a, b) = (source.snapshot(), source.snapshot());
    if source.generation() == g {
        assert!(Arc::ptr_eq(&a, &b));
    }

    // Idempotent: already on is success and writes nothing.
    let rv = Api::<Machine>::namespaced(fx.client.clone(), &fx.ns)
        .get(&fx.names[1])
        .await?
        .metadata
        .resource_version;
    let (applied, result) = source
        .write_desired_power(&[change(&fx.ns, &fx.names[1], PowerState::On)])
        .await;
    result?;
    assert_eq!(applied.len(), 1);
    let rv_after = Api::<Machine>::namespaced(fx.client.clone(), &fx.ns)
        .get(&fx.names[1])
        .await?
        .metadata
        .resource_version;
    assert_eq!(
        rv, rv_after,
        "an idempotent write must not touch the object"
    );

    // A status write moved the resourceVersion behind the cache's back: the precondition fails,
    // the machine is re-read and the write goes through.
    let machines: Api<Machine> = Api::namespaced(fx.client.clone(), &fx.ns);
    machines
        .patch_status(
            &fx.names[2],
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "powerState": "on" } })),
        )
        .await?;
    let (_, result) = source
        .write_desired_power(&[change(&fx.ns, &fx.names[2], PowerState::Off)])
        .await;
    result?;
    assert_eq!(
        desired(&fx.client, &fx.ns, &fx.names[2]).await?,
        PowerState::Off
    );

    // A machine that does not exist: NotFound, nothing applied.
    let (applied, result) = source
        .write_desired_power(&[change(&fx.ns, "no-such-machine", PowerState::On)])
        .await;
    let err = result
        .err()
        .context("writing a missing machine must fail")?;
    assert!(matches!(err, WriteError::NotFound { .. }), "{err}");
    assert!(applied.is_empty());
    Ok(())
}

/// Counts the API server's 409 Conflict answers to one kube client's requests (a tap on the
/// real traffic: nothing is answered in the API server's place).
#[derive(Clone, Default)]
struct Conflicts(Arc<AtomicUsize>);

impl Conflicts {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl<S> tower_layer::Layer<S> for Conflicts {
    type Service = CountConflicts<S>;
    fn layer(&self, inner: S) -> CountConflicts<S> {
        CountConflicts {
            inner,
            count: self.0.clone(),
        }
    }
}

struct CountConflicts<S> {
    inner: S,
    count: Arc<AtomicUsize>,
}

impl<S, Req, Body> tower_service::Service<http::Request<Req>> for CountConflicts<S>
where
    S: tower_service::Service<http::Request<Req>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    Body: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Req>) -> Self::Future {
        let count = self.count.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answer = answer.await;
            if answer
                .as_ref()
                .is_ok_and(|r| r.status() == http::StatusCode::CONFLICT)
            {
                count.fetch_add(1, Ordering::SeqCst);
            }
            answer
        })
    }
}

/// Someone else sets Node CR `ns/name`'s desired power to each of `powers` in turn, from its own
/// thread and runtime, while the calling thread blocks: a `#[tokio::test]` runtime has one
/// thread, so no watch event reaches a source running on it meanwhile, and its copy of the
/// machine is stale once this returns. Returns the resourceVersion the last change left.
fn change_unseen(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    powers: &[&str],
) -> anyhow::Result<String> {
    let someone_else = || -> anyhow::Result<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting a second tokio runtime")?;
        rt.block_on(async {
            let machines: Api<Machine> = Api::namespaced(cp.client()?, ns);
            let mut version = None;
            for p in powers {
                let m = machines
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "spec": { "powerState": p } })),
                    )
                    .await
                    .with_context(|| format!("setting {ns}/{name} {p}"))?;
                version = m.metadata.resource_version;
            }
            version.with_context(|| format!("{ns}/{name} has no resourceVersion"))
        })
    };
    std::thread::scope(|s| {
        s.spawn(someone_else)
            .join()
            .map_err(|_| anyhow::anyhow!("the concurrent writer panicked"))?
    })
}

/// A write is guarded by the resourceVersion the source last saw. Someone else turns m1 on and
/// off again unseen by the source: its copy still says off at the old resourceVersion, so its
/// patch is refused with 409 (once), and the retry re-reads the machine and writes on top of
/// the other writer's version.
#[tokio::test]
async fn conflicting_write_is_not_blind() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let fx = fixture(cp, "src-conflict").await?;
    let conflicts = Conflicts::default();
    let config = support::control_plane::load_kubeconfig(cp.kubeconfig()).await?;
    let client = kube::client::ClientBuilder::try_from(config)
        .context("building the tapped kube client")?
        .with_layer(&conflicts)
        .build();
    let source = ClusterSource::start(client, Scope::Namespace(fx.ns.clone()));
    source.wait_until_ready(SYNC).await?;
    let theirs = change_unseen(cp, &fx.ns, &fx.names[1], &["on", "off"])?;
    let (applied, result) = source
        .write_desired_power(&[change(&fx.ns, &fx.names[1], PowerState::On)])
        .await;
    result?;
    assert_eq!(applied.len(), 1);
    assert_eq!(conflicts.count(), 1, "the stale-guarded patch must get 409");
    let m = Api::<Machine>::namespaced(fx.client.clone(), &fx.ns)
        .get(&fx.names[1])
        .await?;
    assert_eq!(m.spec.power_state, PowerState::On);
    // Written on top of the other writer's last version (resourceVersions are opaque: only
    // compared for equality).
    assert_ne!(m.metadata.resource_version, Some(theirs));
    Ok(())
}

#[tokio::test]
async fn sync_timeout_names_what_is_missing() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    // An identity without any RBAC: no list succeeds, so nothing syncs.
    let nobody = cp.user(&cp.unique_name("nobody"), None).await?;
    let source = ClusterSource::start(nobody.client()?, Scope::Namespace("default".into()));
    let err = source
        .wait_until_ready(Duration::from_secs(3))
        .await
        .err()
        .context("a source without RBAC must not sync")?;
    let text = err.to_string();
    assert!(
        text.contains("Groups") && text.contains("Kubernetes Nodes"),
        "{text}"
    );
    assert!(text.contains("forbidden"), "{text}");
    assert!(!source.is_ready());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The gRPC server over the kube source.

use kubectl_homelab::operator::provider::proto::cloud_provider_client::CloudProviderClient;
use kubectl_homelab::operator::provider::proto::{self, instance_status::InstanceState};
use tonic::transport::Channel;

/// A running server on 127.0.0.1; stops when dropped.
struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn start_server(client: kube::Client, ns: &str) -> anyhow::Result<Server> {
    let source = Arc::new(ClusterSource::start(
        client,
        Scope::Namespace(ns.to_owned()),
    ));
    source.wait_until_ready(SYNC).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(e) =
            kubectl_homelab::operator::provider::serve(listener, source, None, shutdown).await
        {
            eprintln!("gRPC server failed: {e}");
        }
    });
    Ok(Server {
        addr,
        stop: Some(stop),
        task,
    })
}

async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<CloudProviderClient<Channel>> {
    CloudProviderClient::connect(format!("http://{addr}"))
        .await
        .with_context(|| format!("connecting to the provider at {addr}"))
}

async fn target(c: &mut CloudProviderClient<Channel>, id: &str) -> anyhow::Result<i32> {
    Ok(
        c.node_group_target_size(proto::NodeGroupTargetSizeRequest { id: id.into() })
            .await?
            .into_inner()
            .target_size,
    )
}

fn grpc_node(provider_id: &str, name: &str) -> proto::ExternalGrpcNode {
    proto::ExternalGrpcNode {
        provider_id: provider_id.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// The scenario every server variant must pass: reads reflect the cluster; IncreaseSize and
/// DeleteNodes are in the API server before they return and TargetSize agrees at once.
async fn exercise(
    c: &mut CloudProviderClient<Channel>,
    admin: &kube::Client,
    fx: &Fixture,
) -> anyhow::Result<()> {
    let groups = c
        .node_groups(proto::NodeGroupsRequest {})
        .await?
        .into_inner()
        .node_groups;
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0].id, "g");
    assert_eq!((groups[0].min_size, groups[0].max_size), (0, 3));

    let m0_id = format!("homelab://{}/{}", fx.ns, fx.names[0]);
    let found = c
        .node_group_for_node(proto::NodeGroupForNodeRequest {
            node: Some(grpc_node(&m0_id, &fx.names[0])),
        })
        .await?
        .into_inner()
        .node_group
        .context("NodeGroupForNode returned no group")?;
    assert_eq!(found.id, "g");

    assert_eq!(target(c, "g").await?, 1);
    let instances = c
        .node_group_nodes(proto::NodeGroupNodesRequest { id: "g".into() })
        .await?
        .into_inner()
        .instances;
    assert_eq!(instances.len(), 1, "{instances:?}");
    assert_eq!(instances[0].id, m0_id);
    assert_eq!(
        instances[0].status.as_ref().map(|s| s.instance_state),
        Some(InstanceState::InstanceRunning as i32)
    );

    // IncreaseSize: durable before the reply, TargetSize agrees immediately.
    c.node_group_increase_size(proto::NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "g".into(),
    })
    .await?;
    let mut on = Vec::new();
    for name in &fx.names[1..] {
        if desired(admin, &fx.ns, name).await? == PowerState::On {
            on.push(name.clone());
        }
    }
    assert_eq!(on.len(), 1, "exactly one off machine is wanted on: {on:?}");
    assert_eq!(target(c, "g").await?, 2);
    let instances = c
        .node_group_nodes(proto::NodeGroupNodesRequest { id: "g".into() })
        .await?
        .into_inner()
        .instances;
    let creating = instances
        .iter()
        .filter(|i| {
            i.status.as_ref().map(|s| s.instance_state)
                == Some(InstanceState::InstanceCreating as i32)
        })
        .count();
    assert_eq!(creating, 1, "{instances:?}");

    // Above max: refused, nothing written.
    let err = c
        .node_group_increase_size(proto::NodeGroupIncreaseSizeRequest {
            delta: 5,
            id: "g".into(),
        })
        .await
        .err()
        .context("IncreaseSize above max must fail")?;
    assert_ne!(err.code(), tonic::Code::Ok);
    assert_eq!(target(c, "g").await?, 2);

    // DeleteNodes: the registered machine is wanted off in the API server before the reply.
    c.node_group_delete_nodes(proto::NodeGroupDeleteNodesRequest {
        nodes: vec![grpc_node(&m0_id, &fx.names[0])],
        id: "g".into(),
    })
    .await?;
    assert_eq!(desired(admin, &fx.ns, &fx.names[0]).await?, PowerState::Off);
    assert_eq!(target(c, "g").await?, 1);
    assert_eq!(
        failed_at(admin, &fx.ns, &fx.names[0]).await?,
        None,
        "a scale-down is no failure"
    );

    // DeleteNodes of the machine that never registered (CA gave up on it): its failed power-on
    // is recorded in the same write, and the next IncreaseSize picks another machine (CA's
    // clusterstate.go keeps the old "unregistered since" of a re-listed id: docs/ca-contract.md,
    // rule 7).
    let pending = on[0].clone();
    let pending_id = format!("homelab://{}/{pending}", fx.ns);
    c.node_group_delete_nodes(proto::NodeGroupDeleteNodesRequest {
        nodes: vec![grpc_node(&pending_id, &pending_id)],
        id: "g".into(),
    })
    .await?;
    assert_eq!(desired(admin, &fx.ns, &pending).await?, PowerState::Off);
    let at = failed_at(admin, &fx.ns, &pending).await?;
    assert!(
        at.as_deref()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
        "{at:?}"
    );
    c.node_group_increase_size(proto::NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "g".into(),
    })
    .await?;
    assert_eq!(desired(admin, &fx.ns, &pending).await?, PowerState::Off);
    assert_eq!(target(c, "g").await?, 1);

    // Unknown group: NotFound. Bad delta: InvalidArgument.
    let err = c
        .node_group_target_size(proto::NodeGroupTargetSizeRequest { id: "nope".into() })
        .await
        .err()
        .context("an unknown group must fail")?;
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .node_group_increase_size(proto::NodeGroupIncreaseSizeRequest {
            delta: 0,
            id: "g".into(),
        })
        .await
        .err()
        .context("delta 0 must fail")?;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn grpc_server_over_the_cluster() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let fx = fixture(cp, "grpc-admin").await?;
    let server = start_server(fx.client.clone(), &fx.ns).await?;
    let mut c = connect(server.addr).await?;
    exercise(&mut c, &fx.client, &fx).await
}

/// Exactly the RBAC the provider needs (keep in sync with the README's serve-grpc section):
/// read Groups and Node CRs in the watched namespace, patch Node CRs there; read Kubernetes
/// Nodes cluster-wide.
fn namespaced_rules() -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    use k8s_openapi::api::rbac::v1::PolicyRule;
    let s = |v: &[&str]| Some(v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>());
    vec![
        PolicyRule {
            api_groups: s(&["infra.homecluster.dev"]),
            resources: s(&["groups"]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        },
        PolicyRule {
            api_groups: s(&["infra.homecluster.dev"]),
            resources: s(&["nodes"]),
            verbs: vec!["get".into(), "list".into(), "watch".into(), "patch".into()],
            ..Default::default()
        },
    ]
}

fn cluster_rules() -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    use k8s_openapi::api::rbac::v1::PolicyRule;
    vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["nodes".into()]),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..Default::default()
    }]
}

#[tokio::test]
async fn grpc_server_with_the_shipped_rbac_only() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let fx = fixture(cp, "grpc-rbac").await?;
    let sa = cp.service_account(&fx.ns, "homelab-provider").await?;
    cp.grant(&sa, Some(&fx.ns), namespaced_rules()).await?;
    cp.grant(&sa, None, cluster_rules()).await?;
    let server = start_server(sa.client()?, &fx.ns).await?;
    let mut c = connect(server.addr).await?;
    exercise(&mut c, &fx.client, &fx).await
}

#[tokio::test]
async fn serve_grpc_binary_serves_the_cluster() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let fx = fixture(cp, "grpc-bin").await?;
    let bin = env!("CARGO_BIN_EXE_kubectl-homelab");

    // --print-cloud-config matches the flags.
    let out = tokio::process::Command::new(bin)
        .args([
            "serve-grpc",
            "--listen",
            "127.0.0.1:18086",
            "--print-cloud-config",
        ])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout)?;
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml)?;
    assert_eq!(v["address"].as_str(), Some("127.0.0.1:18086"), "{yaml}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let log_path = cp.dir().join(format!("{}-serve-grpc.log", fx.ns));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = tokio::process::Command::new(bin)
        .args(["serve-grpc", "--listen", &addr.to_string(), "-n", &fx.ns])
        .env("KUBECONFIG", cp.kubeconfig())
        .env("KUBECTL_HOMELAB_LOG", "info")
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting kubectl-homelab serve-grpc")?;
    // The server accepts connections only once its caches synced.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        match CloudProviderClient::connect(format!("http://{addr}")).await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    anyhow::bail!("serve-grpc exited early with {status}: {e}\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => anyhow::bail!("serve-grpc did not accept connections: {e}"),
        }
    };
    assert_eq!(target(&mut c, "g").await?, 1);
    c.node_group_increase_size(proto::NodeGroupIncreaseSizeRequest {
        delta: 2,
        id: "g".into(),
    })
    .await?;
    assert_eq!(target(&mut c, "g").await?, 3);
    for name in &fx.names {
        assert_eq!(desired(&fx.client, &fx.ns, name).await?, PowerState::On);
    }

    // SIGTERM: a clean exit.
    let pid = child.id().context("serve-grpc has no pid")?;
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(status.success(), "serve-grpc exited with {status}");
    Ok(())
}

/// Not a test: measures the kube source with 2,000 machines in 50 groups (and 1,000 registered
/// Nodes) on the real API server. Run with
/// `cargo test --release --test grpc_kube -- --ignored --nocapture measure_2000_machines`.
#[tokio::test]
#[ignore = "measurement, not a test"]
async fn measure_2000_machines() -> anyhow::Result<()> {
    use futures::StreamExt as _;
    kubectl_homelab::logging::init("kubectl_homelab=info,kube_runtime=info");
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("measure").await?;
    let client = cp.client()?;
    let groups: Api<Group> = Api::namespaced(client.clone(), &ns);
    create_when_served(
        &groups,
        &Group::test("g0").namespace(&ns).min(0).max(40).build(),
    )
    .await?;
    for g in 1..50 {
        groups
            .create(
                &PostParams::default(),
                &Group::test(&format!("g{g}"))
                    .namespace(&ns)
                    .min(0)
                    .max(40)
                    .build(),
            )
            .await?;
    }
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let world = World::new(client.clone());
    let started = std::time::Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..2000)
        .map(|i| {
            let (machines, world, ns) = (&machines, &world, &ns);
            async move {
                let name = format!("{ns}-m{i:04}");
                let on = i % 2 == 0;
                machines
                    .create(
                        &PostParams::default(),
                        &predecessor_style(
                            ns,
                            &name,
                            &format!("g{}", i % 50),
                            if on { PowerState::On } else { PowerState::Off },
                        ),
                    )
                    .await?;
                if on {
                    world
                        .node_up(
                            &FakeNode::new(&name)
                                .adoptable()
                                .provider_id(&format!("homelab://{ns}/{name}")),
                        )
                        .await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    println!(
        "created 2000 Node CRs + 1000 Nodes in {:?}",
        started.elapsed()
    );

    let started = std::time::Instant::now();
    let source = Arc::new(ClusterSource::start(
        client.clone(),
        Scope::Namespace(ns.clone()),
    ));
    source.wait_until_ready(Duration::from_secs(120)).await?;
    println!("caches synced in {:?}", started.elapsed());
    // Let the watch settle, then time a rebuild (forced by a generation bump) and cached reads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = source.snapshot();
    let n = 20;
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    let mut visible = Vec::new();
    for i in 0..n {
        let name = format!("{ns}-m{:04}", i * 2 + 1);
        let t = std::time::Instant::now();
        let (_, r) = source
            .write_desired_power(&[change(&ns, &name, PowerState::On)])
            .await;
        r?;
        writes.push(t.elapsed());
        // Someone else's change: visible after the background rebuild.
        let other = format!("{ns}-m{:04}", i * 2 + 1001);
        let t = std::time::Instant::now();
        machines
            .patch(
                &other,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "powerState": "on" } })),
            )
            .await?;
        loop {
            let r = std::time::Instant::now();
            let inv = source.snapshot();
            reads.push(r.elapsed());
            if inv.machines().any(|m| m.key.name == other && m.wanted_on()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        visible.push(t.elapsed());
    }
    for v in [&mut writes, &mut reads, &mut visible] {
        v.sort();
    }
    println!(
        "write_desired_power(1) incl. rebuild: median {:?}, max {:?}",
        writes[n / 2],
        writes[n - 1]
    );
    println!(
        "someone else's patch -> visible in snapshot: median {:?}, max {:?}",
        visible[n / 2],
        visible[n - 1]
    );
    println!(
        "snapshot() during rebuilds: p50 {:?}, p99 {:?}, max {:?} ({} calls)",
        reads[reads.len() / 2],
        reads[reads.len() * 99 / 100],
        reads[reads.len() - 1],
        reads.len()
    );
    let t = std::time::Instant::now();
    let objects = source.objects();
    let copy = t.elapsed();
    let t = std::time::Instant::now();
    let inv = kubectl_homelab::operator::provider::Inventory::from_objects(
        &objects.groups,
        &objects.machines,
        &objects.nodes,
    );
    println!(
        "of which: copying the stores {copy:?}, Inventory::from_objects {:?} ({} machines)",
        t.elapsed(),
        inv.machines().count()
    );
    let t = std::time::Instant::now();
    for _ in 0..10_000 {
        std::hint::black_box(source.snapshot());
    }
    println!("cached snapshot: {:?} per call", t.elapsed() / 10_000);

    let server = start_server(client.clone(), &ns).await?;
    let mut c = connect(server.addr).await?;
    let mut lat = Vec::new();
    // Odd groups hold only powered-off machines (even-numbered machines are on).
    for g in 0..20 {
        let t = std::time::Instant::now();
        c.node_group_increase_size(proto::NodeGroupIncreaseSizeRequest {
            delta: 1,
            id: format!("g{}", 2 * g + 1),
        })
        .await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "IncreaseSize(1) -> spec.powerState patched: median {:?}, max {:?}",
        lat[10], lat[19]
    );
    Ok(())
}

#[tokio::test]
async fn serve_grpc_binary_with_mtls() -> anyhow::Result<()> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let fx = fixture(cp, "grpc-mtls").await?;
    let bin = env!("CARGO_BIN_EXE_kubectl-homelab");
    let ca = support::pki::Ca::generate()?;
    let server_pair = ca.serving()?;
    let client_pair = ca.client("cluster-autoscaler", &[])?;
    let dir = tempfile::tempdir()?;
    let path = |f: &str| dir.path().join(f);
    std::fs::write(path("tls.crt"), &server_pair.cert_pem)?;
    std::fs::write(path("tls.key"), &server_pair.key_pem)?;
    std::fs::write(path("ca.crt"), &ca.cert_pem)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let listen = format!("127.0.0.1:{port}");
    let tls_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["serve-grpc", "--listen", &listen, "-n", &fx.ns]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for (flag, file) in [
            ("--tls-cert", "tls.crt"),
            ("--tls-key", "tls.key"),
            ("--client-ca", "ca.crt"),
        ] {
            v.push(flag.to_owned());
            v.push(path(file).display().to_string());
        }
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };

    // The printed cloud-config asks CA for its client certificate.
    let out = tokio::process::Command::new(bin)
        .args(tls_args(&[
            "--advertise-address",
            &format!("localhost:{port}"),
            "--print-cloud-config",
        ]))
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_yaml::Value = serde_yaml::from_slice(&out.stdout)?;
    assert_eq!(
        v["address"].as_str(),
        Some(format!("localhost:{port}").as_str())
    );
    assert!(v["cert"].as_str().is_some() && v["key"].as_str().is_some());
    assert!(v["cacert"].as_str().is_some());

    let log_path = cp.dir().join(format!("{}-serve-grpc-mtls.log", fx.ns));
    let log = std::fs::File::create(&log_path)?;
    let mut child = tokio::process::Command::new(bin)
        .args(tls_args(&[]))
        .env("KUBECONFIG", cp.kubeconfig())
        .env("KUBECTL_HOMELAB_LOG", "info")
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting kubectl-homelab serve-grpc with mTLS")?;

    let endpoint = |identity: bool| -> anyhow::Result<Endpoint> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca.cert_pem))
            .domain_name("localhost");
        if identity {
            tls = tls.identity(Identity::from_pem(
                &client_pair.cert_pem,
                &client_pair.key_pem,
            ));
        }
        Ok(Endpoint::from_shared(format!("https://localhost:{port}"))?.tls_config(tls)?)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let channel = loop {
        match endpoint(true)?.connect().await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() < deadline => {
                if let Some(status) = child.try_wait()? {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    anyhow::bail!("serve-grpc exited early with {status}: {e}\n{log}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => anyhow::bail!("serve-grpc (mTLS) did not accept connections: {e}"),
        }
    };
    let mut c = CloudProviderClient::new(channel);
    assert_eq!(target(&mut c, "g").await?, 1);

    // Without a client certificate: refused.
    let refused = match endpoint(false)?.connect().await {
        Err(_) => true,
        Ok(ch) => CloudProviderClient::new(ch)
            .node_groups(proto::NodeGroupsRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");

    let pid = child.id().context("serve-grpc has no pid")?;
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(status.success(), "serve-grpc exited with {status}");
    Ok(())
}
