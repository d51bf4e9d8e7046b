//! Drain against a real kube-apiserver: the Eviction API, PodDisruptionBudgets and cordons are
//! the API server's own; the simulated world plays the kubelet (finishing terminating pods) and
//! the disruption controller (a budget's status, which the Eviction API reads).

mod support;

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kubectl_homelab::operator::node::drain::{
    self, DrainClient, DrainOptions, DrainOutcome, DrainProgress, PodRef, cordon,
};
use kubectl_homelab::operator::node::{CORDONED, DRAIN_STARTED};
use support::{ControlPlane, FakeNode, World};

// --- Fixture builders.

/// A pod of a ReplicaSet-like workload labelled `app=<app>`.
fn pod(name: &str, app: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                image: Some("registry.invalid/app:1".to_owned()),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn owned_by_daemonset(mut p: Pod) -> Pod {
    p.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".to_owned(),
        kind: "DaemonSet".to_owned(),
        name: "node-exporter".to_owned(),
        uid: "0b0c5d1e-0000-4000-8000-000000000001".to_owned(),
        controller: Some(true),
        block_owner_deletion: None,
    }]);
    p
}

/// The API server's copy of a static pod, as the kubelet creates it.
fn mirror(mut p: Pod) -> Pod {
    p.metadata.annotations = Some(BTreeMap::from([(
        "kubernetes.io/config.mirror".to_owned(),
        "5f1b0c2d".to_owned(),
    )]));
    p
}

/// A policy/v1 budget over `app=<app>` allowing `max_unavailable` pods down.
fn budget(name: &str, app: &str, max_unavailable: i32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_owned(), app.to_owned())])),
                ..LabelSelector::default()
            }),
            max_unavailable: Some(IntOrString::Int(max_unavailable)),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// Creates `pdb` and plays the disruption controller: its status says `healthy` pods are
/// healthy and `allowed` disruptions are allowed (what the Eviction API checks).
async fn create_budget(
    cp: &ControlPlane,
    ns: &str,
    pdb: PodDisruptionBudget,
    healthy: i32,
    allowed: i32,
) -> anyhow::Result<()> {
    let api: Api<PodDisruptionBudget> = Api::namespaced(cp.client()?, ns);
    let name = pdb.metadata.name.clone().unwrap_or_default();
    let created = api.create(&PostParams::default(), &pdb).await?;
    let status = serde_json::json!({
        "status": {
            "observedGeneration": created.metadata.generation,
            "currentHealthy": healthy,
            "desiredHealthy": healthy - allowed,
            "expectedPods": healthy,
            "disruptionsAllowed": allowed,
        }
    });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// The client the operator drains with (kube's retry of 429s off).
async fn drain_client(cp: &ControlPlane) -> anyhow::Result<DrainClient> {
    let config = support::control_plane::load_kubeconfig(cp.kubeconfig()).await?;
    Ok(DrainClient::new(config)?)
}

async fn node(cp: &ControlPlane, name: &str) -> anyhow::Result<Node> {
    Ok(Api::<Node>::all(cp.client()?).get(name).await?)
}

fn unschedulable(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

fn annotation<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn names(refs: &[PodRef]) -> Vec<&str> {
    refs.iter().map(|r| r.name.as_str()).collect()
}

fn in_progress(outcome: DrainOutcome) -> anyhow::Result<DrainProgress> {
    match outcome {
        DrainOutcome::Draining(p) => Ok(p),
        other => anyhow::bail!("expected Draining, got {other:?}"),
    }
}

/// A Ready simulated machine with its pods running.
async fn machine_with_pods(
    cp: &ControlPlane,
    world: &World,
    ns: &str,
    pods: Vec<Pod>,
) -> anyhow::Result<String> {
    let name = cp.unique_name("drain");
    world.node_up(&FakeNode::new(&name)).await?;
    for p in pods {
        world.create_bound_pod(ns, p, &name).await?;
    }
    world.run_pods(&name).await?;
    Ok(name)
}

#[tokio::test]
async fn drain_cordons_evicts_and_is_done_once_the_kubelet_stopped_the_pods() -> anyhow::Result<()>
{
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("drain-evicts").await?;
    let drainer = drain_client(cp).await?;
    let world = World::new(cp.client()?);
    let name = machine_with_pods(
        cp,
        &world,
        &ns,
        vec![pod("web-1", "web"), pod("web-2", "web")],
    )
    .await?;
    let opts = DrainOptions::new(Timestamp::now());

    let first = in_progress(drain::drain(&drainer, &name, &opts).await?)?;
    assert_eq!(names(&first.evicted), ["web-1", "web-2"]);
    assert_eq!(
        names(&first.remaining),
        ["web-1", "web-2"],
        "terminating, not gone"
    );
    assert!(first.blocked_by.is_empty());
    let n = node(cp, &name).await?;
    assert!(unschedulable(&n));
    assert_eq!(annotation(&n, CORDONED), Some("true"));
    assert_eq!(
        annotation(&n, DRAIN_STARTED),
        Some(first.started.to_string().as_str())
    );

    // A second pass does not evict terminating pods again.
    let second = in_progress(drain::drain(&drainer, &name, &opts).await?)?;
    assert!(second.evicted.is_empty());
    assert_eq!(second.started, first.started);

    assert_eq!(world.finish_terminating_pods(&name).await?, 2);
    assert_eq!(
        drain::drain(&drainer, &name, &opts).await?,
        DrainOutcome::Drained
    );
    assert!(world.pods_on(&name).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_budget_allowing_no_disruption_blocks_the_drain_and_the_timeout_names_it()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("drain-pdb").await?;
    let drainer = drain_client(cp).await?;
    let world = World::new(cp.client()?);
    create_budget(cp, &ns, budget("web-budget", "web", 0), 1, 0).await?;
    let name = machine_with_pods(
        cp,
        &world,
        &ns,
        vec![pod("web-1", "web"), pod("job-1", "batch")],
    )
    .await?;
    let start = Timestamp::now();
    let opts = DrainOptions::new(start).timeout(SignedDuration::from_mins(10));

    let p = in_progress(drain::drain(&drainer, &name, &opts).await?)?;
    assert_eq!(names(&p.evicted), ["job-1"]);
    assert_eq!(p.blocked_by.len(), 1);
    assert_eq!(p.blocked_by[0].pod.name, "web-1");
    assert_eq!(p.blocked_by[0].budgets, ["web-budget"]);
    assert!(
        p.blocked_by[0].reason.contains("web-budget"),
        "{}",
        p.blocked_by[0].reason
    );
    world.finish_terminating_pods(&name).await?;

    // Still refused on later passes, until the deadline (the clock is the caller's).
    let later = DrainOptions::new(start + SignedDuration::from_mins(5))
        .timeout(SignedDuration::from_mins(10));
    let p = in_progress(drain::drain(&drainer, &name, &later).await?)?;
    assert_eq!(names(&p.remaining), ["web-1"]);
    assert_eq!(p.blocked_by[0].budgets, ["web-budget"]);

    let past = DrainOptions::new(start + SignedDuration::from_mins(11))
        .timeout(SignedDuration::from_mins(10));
    let outcome = drain::drain(&drainer, &name, &past).await?;
    let DrainOutcome::TimedOut(p) = &outcome else {
        anyhow::bail!("expected TimedOut, got {outcome:?}");
    };
    assert_eq!(names(&p.remaining), ["web-1"]);
    assert_eq!(p.blocked_by[0].budgets, ["web-budget"]);
    let text = outcome.to_string();
    assert!(text.contains(&format!("{ns}/web-1")), "{text}");
    assert!(
        text.contains(&format!("PodDisruptionBudget {ns}/web-budget")),
        "{text}"
    );
    assert!(outcome.pods_present());
    Ok(())
}

#[tokio::test]
async fn a_drain_past_its_deadline_evicts_nothing() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("drain-late").await?;
    let client = cp.client()?;
    let drainer = drain_client(cp).await?;
    let world = World::new(cp.client()?);
    let name = machine_with_pods(cp, &world, &ns, vec![pod("web-1", "web")]).await?;
    let start = Timestamp::now();
    let opts = DrainOptions::new(start).timeout(SignedDuration::from_mins(10));
    in_progress(drain::drain(&drainer, &name, &opts).await?)?;
    world.finish_terminating_pods(&name).await?;
    // A pod bound after the first pass (e.g. one tolerating the cordon).
    world
        .create_bound_pod(&ns, pod("late-1", "late"), &name)
        .await?;

    let past = DrainOptions::new(start + SignedDuration::from_mins(11))
        .timeout(SignedDuration::from_mins(10));
    let outcome = drain::drain(&drainer, &name, &past).await?;
    let DrainOutcome::TimedOut(p) = &outcome else {
        anyhow::bail!("expected TimedOut, got {outcome:?}");
    };
    assert_eq!(names(&p.remaining), ["late-1"]);
    assert!(p.evicted.is_empty());
    let late = Api::<Pod>::namespaced(client.clone(), &ns)
        .get("late-1")
        .await?;
    assert!(
        late.metadata.deletion_timestamp.is_none(),
        "a timed-out drain left late-1 alone"
    );
    Ok(())
}

#[tokio::test]
async fn a_budget_that_allows_a_disruption_lets_the_eviction_through() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("drain-pdb-ok").await?;
    let drainer = drain_client(cp).await?;
    let world = World::new(cp.client()?);
    create_budget(cp, &ns, budget("web-budget", "web", 1), 2, 1).await?;
    let name = machine_with_pods(cp, &world, &ns, vec![pod("web-1", "web")]).await?;

    let p =
        in_progress(drain::drain(&drainer, &name, &DrainOptions::new(Timestamp::now())).await?)?;
    assert_eq!(names(&p.evicted), ["web-1"]);
    assert!(p.blocked_by.is_empty());
    Ok(())
}

#[tokio::test]
async fn daemonset_and_mirror_pods_stay_and_do_not_hold_up_the_drain() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("drain-ds").await?;
    let drainer = drain_client(cp).await?;
    let world = World::new(cp.client()?);
    let name = machine_with_pods(
        cp,
        &world,
        &ns,
        vec![
            owned_by_daemonset(pod("exporter", "exporter")),
            mirror(pod("static-web", "static")),
        ],
    )
    .await?;

    let outcome = drain::drain(&drainer, &name, &DrainOptions::new(Timestamp::now())).await?;
    assert_eq!(outcome, DrainOutcome::Drained);
    let left = world.pods_on(&name).await?;
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|p| p.metadata.deletion_timestamp.is_none()));
    assert!(
        unschedulable(&node(cp, &name).await?),
        "cordoned all the same"
    );
    Ok(())
}

#[tokio::test]
async fn cordon_and_uncordon_touch_only_our_own_cordon() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let client = cp.client()?;
    let world = World::new(cp.client()?);

    let ours = cp.unique_name("cordon");
    world.node_up(&FakeNode::new(&ours)).await?;
    cordon(&client, &ours, true).await?;
    assert!(unschedulable(&node(cp, &ours).await?));
    cordon(&client, &ours, false).await?;
    let n = node(cp, &ours).await?;
    assert!(!unschedulable(&n));
    assert_eq!(annotation(&n, CORDONED), None);

    // Cordoned by a person before we came: stays cordoned.
    let theirs = cp.unique_name("cordon");
    world.node_up(&FakeNode::new(&theirs)).await?;
    let person = serde_json::json!({ "spec": { "unschedulable": true } });
    Api::<Node>::all(client.clone())
        .patch(&theirs, &PatchParams::default(), &Patch::Merge(&person))
        .await?;
    cordon(&client, &theirs, true).await?;
    cordon(&client, &theirs, false).await?;
    assert!(unschedulable(&node(cp, &theirs).await?));
    Ok(())
}

#[tokio::test]
async fn a_machine_without_a_node_object_has_nothing_to_drain() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let client = cp.client()?;
    let drainer = drain_client(cp).await?;
    let name = cp.unique_name("gone");
    let outcome = drain::drain(&drainer, &name, &DrainOptions::new(Timestamp::now())).await?;
    assert_eq!(outcome, DrainOutcome::NodeGone);
    assert!(cordon(&client, &name, true).await?.is_none());
    Ok(())
}
