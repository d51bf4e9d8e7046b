//! The kube-backed CA provider against a real control plane (etcd + kube-apiserver from
//! tests/k8s-bins): reflectors see the cluster, desired-power writes are durable before they
//! return, and the gRPC server answers from the cluster.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubectl_homelab::operator::api::{Group, Machine};
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::operator::provider::kube::{KubeSource, Scope, WriteError};
use kubectl_homelab::operator::provider::{InventorySource as _, MachineKey, PowerChange};
use serde_json::json;
use support::{ControlPlane, FakeNode, World};

const SYNC: Duration = Duration::from_secs(30);

fn group(name: &str, min: i32, max: i32) -> anyhow::Result<Group> {
    serde_json::from_value(json!({
        "apiVersion": "infra.homecluster.dev/v1alpha1",
        "kind": "Group",
        "metadata": { "name": name },
        "spec": { "minSize": min, "maxSize": max },
    }))
    .context("building a Group")
}

/// A Node CR in the predecessor's style (startup/shutdown pod specs).
fn machine(name: &str, group: &str, power: &str) -> anyhow::Result<Machine> {
    let pod = json!({ "image": "busybox", "command": ["true"] });
    serde_json::from_value(json!({
        "apiVersion": "infra.homecluster.dev/v1alpha1",
        "kind": "Node",
        "metadata": { "name": name, "labels": { "group": group } },
        "spec": {
            "powerState": power,
            "kubernetesNodeName": name,
            "startupPodSpec": pod,
            "shutdownPodSpec": pod,
        },
    }))
    .context("building a Node CR")
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
    create_when_served(&groups, &group("g", 0, 3)?).await?;
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let mut names = Vec::new();
    for (i, power) in ["on", "off", "off"].into_iter().enumerate() {
        // Node names are cluster-wide: make them unique per test.
        let name = cp.unique_name(&format!("{prefix}-m{i}"));
        machines
            .create(&PostParams::default(), &machine(&name, "g", power)?)
            .await
            .with_context(|| format!("creating Node CR {name}"))?;
        names.push(name);
    }
    let world = World::new(client.clone());
    world
        .node_up(&FakeNode::new(&names[0]).provider_id(&format!("homelab://{ns}/{}", names[0])))
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

/// Waits until the source's objects satisfy `f` (watch events take a moment).
async fn eventually(
    source: &KubeSource,
    what: &str,
    f: impl Fn(&kubectl_homelab::operator::provider::kube::ClusterObjects) -> bool,
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
    let source = KubeSource::start(fx.client.clone(), Scope::Namespace(fx.ns.clone()));
    source.wait_until_ready(SYNC).await?;
    assert!(source.is_ready());
    let objects = source.objects();
    assert_eq!(objects.groups.len(), 1);
    assert_eq!(objects.machines.len(), 3);
    assert!(
        objects
            .nodes
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(fx.names[0].as_str()))
    );
    // Namespace scope: CRs of other namespaces are invisible.
    let g0 = source.generation();
    let other = fixture(cp, "src-other").await?;
    eventually(&source, "the other namespace's Node to arrive", |o| {
        o.nodes
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(other.names[0].as_str()))
    })
    .await?;
    assert!(source.generation() > g0);
    assert_eq!(source.objects().machines.len(), 3);

    // All namespaces: both fixtures' CRs.
    let all = KubeSource::start(fx.client.clone(), Scope::AllNamespaces);
    all.wait_until_ready(SYNC).await?;
    let mine = |o: &kubectl_homelab::operator::provider::kube::ClusterObjects| {
        o.machines
            .iter()
            .filter(|m| {
                let ns = m.metadata.namespace.as_deref();
                ns == Some(fx.ns.as_str()) || ns == Some(other.ns.as_str())
            })
            .count()
    };
    assert_eq!(mine(&all.objects()), 6);
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
    }
}

#[tokio::test]
async fn desired_power_is_durable_and_visible_at_once() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let fx = fixture(cp, "src-write").await?;
    let source = KubeSource::start(fx.client.clone(), Scope::Namespace(fx.ns.clone()));
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
    if source.generation() == after_generation(&source) {
        assert!(Arc::ptr_eq(&source.snapshot(), &source.snapshot()));
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
    let m2 = machines.get(&fx.names[2]).await?;
    machines
        .patch_status(
            &fx.names[2],
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "powerState": "on" } })),
        )
        .await?;
    let cached_rv = source
        .objects()
        .machines
        .iter()
        .find(|m| m.metadata.name.as_deref() == Some(fx.names[2].as_str()))
        .and_then(|m| m.metadata.resource_version.clone());
    let (_, result) = source
        .write_desired_power(&[change(&fx.ns, &fx.names[2], PowerState::Off)])
        .await;
    result?;
    assert_eq!(
        desired(&fx.client, &fx.ns, &fx.names[2]).await?,
        PowerState::Off
    );
    // (Only meaningful when the cache still held the pre-status version; usually it does.)
    let _ = (m2, cached_rv);

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

fn after_generation(source: &KubeSource) -> u64 {
    source.generation()
}

#[tokio::test]
async fn conflicting_write_is_not_blind() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let fx = fixture(cp, "src-conflict").await?;
    let source = KubeSource::start(fx.client.clone(), Scope::Namespace(fx.ns.clone()));
    source.wait_until_ready(SYNC).await?;
    // Someone else turns m1 on, then off again: its desired power is unchanged but its
    // resourceVersion moved twice. Our write of "on" re-reads and applies.
    let machines: Api<Machine> = Api::namespaced(fx.client.clone(), &fx.ns);
    for p in ["on", "off"] {
        machines
            .patch(
                &fx.names[1],
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "powerState": p } })),
            )
            .await?;
    }
    let (_, result) = source
        .write_desired_power(&[change(&fx.ns, &fx.names[1], PowerState::On)])
        .await;
    result?;
    assert_eq!(
        desired(&fx.client, &fx.ns, &fx.names[1]).await?,
        PowerState::On
    );
    Ok(())
}

#[tokio::test]
async fn sync_timeout_names_what_is_missing() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    // An identity without any RBAC: no list succeeds, so nothing syncs.
    let nobody = cp.user(&cp.unique_name("nobody"), None).await?;
    let source = KubeSource::start(nobody.client()?, Scope::Namespace("default".into()));
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
