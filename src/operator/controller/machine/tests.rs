//! The reconcile's effects, one test each, against a fake API server (`Context::test`): the
//! requests it makes (method, path, the body fields that matter) and the Action it returns.
//! What needs a real API server to mean anything (a drain that times out against a
//! PodDisruptionBudget, an operation adopted after a restart, the watch-driven requeues) is
//! covered by tests/operator.rs.
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};

use crate::operator::kube_node::KubeNode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{error_policy, reconcile};
use crate::operator::api::{CONDITION_INVALID_SPEC, Machine};
use crate::operator::controller::fake_api::{Log, Seen, expect};
use crate::operator::controller::{Context, FINALIZER};
use crate::operator::machine::{Lifecycle, Operation, OperationKind, Phase, PowerState};
use crate::testing::NodeExt as _;

// Fixtures: one machine `lab/m1` whose Kubernetes Node is `n1`, power Jobs both ways, built with
// the shared builders of `crate::testing`.

const MACHINE: &str = "/apis/infra.homecluster.dev/v1alpha1/namespaces/lab/nodes/m1";
const STATUS: &str = "/apis/infra.homecluster.dev/v1alpha1/namespaces/lab/nodes/m1/status";
const NODE: &str = "/api/v1/nodes/n1";
const PODS: &str = "/api/v1/pods";
const JOBS: &str = "/apis/batch/v1/namespaces/lab/jobs";

/// Machine `lab/m1`, wanted `desired`, in lifecycle `lc`, with its finalizer; its Kubernetes
/// Node is `n1` and it powers on and off with the predecessor's Jobs.
fn machine(desired: PowerState, lc: Lifecycle) -> Machine {
    let job = || crate::testing::job("busybox", &[]);
    Machine::test("m1")
        .desired(desired)
        .node_name("n1")
        .legacy_jobs(job(), job())
        .uid("5f0e7a52-m1")
        .at_version("7", 1)
        .finalizer(FINALIZER)
        .lifecycle(lc)
        .build()
}

fn lifecycle(phase: Phase, goal: PowerState, since: Timestamp) -> Lifecycle {
    Lifecycle {
        phase: Some(phase),
        phase_since: Some(since),
        goal: Some(goal),
        ..Lifecycle::default()
    }
}

fn operation(kind: OperationKind, id: &str, started: Timestamp) -> Operation {
    Operation {
        kind,
        id: id.into(),
        started,
        deadline: started + SignedDuration::from_mins(10),
        completed: None,
    }
}

/// Node `n1`, registered as m1's (providerID set, restored, labelled managed), Ready or not
/// since `since`.
fn node(ready: bool, since: Timestamp) -> Node {
    use crate::operator::node::{MANAGED_LABEL, OWNED_LABELS, RESTORED};
    crate::testing::node("n1")
        .adoptable()
        .at_version("3")
        .annotation(RESTORED, "true")
        .label(MANAGED_LABEL, "true")
        .annotation(OWNED_LABELS, MANAGED_LABEL)
        .provider_id("homelab://lab/m1")
        .ready_since(ready, since)
}

fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("lab".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some("n1".into()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

fn pod_list(pods: &[Pod]) -> Value {
    json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods })
}

fn to_json<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or_else(|e| panic!("fixture to JSON: {e}"))
}

/// The power Job of `op`, finished successfully.
fn completed_job(op: &str) -> Job {
    let mut job = running_job(op);
    job.status = Some(JobStatus {
        conditions: Some(vec![JobCondition {
            type_: "Complete".into(),
            status: "True".into(),
            ..JobCondition::default()
        }]),
        ..JobStatus::default()
    });
    job
}

/// The power Job of `op`, not finished.
fn running_job(op: &str) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some(format!("m1-{op}")),
            namespace: Some("lab".into()),
            labels: Some(
                [
                    (
                        crate::operator::power::job::MACHINE_LABEL.to_owned(),
                        "m1".to_owned(),
                    ),
                    (
                        crate::operator::power::job::OPERATION_LABEL.to_owned(),
                        op.to_owned(),
                    ),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        ..Job::default()
    }
}

/// Runs one reconcile of `m` (with a deadline: a request the script does not answer would
/// otherwise hang it).
async fn reconcile_once(ctx: &Arc<Context>, m: &Machine) -> Result<Action, super::Error> {
    tokio::time::timeout(
        Duration::from_secs(5),
        reconcile(Arc::new(m.clone()), ctx.clone()),
    )
    .await
    .unwrap_or_else(|_| panic!("the reconcile did not finish"))
}

/// The requeue an Action asks for (`Action` keeps it private; its Debug shows it).
fn requeue_secs(a: &Action) -> Option<f64> {
    let text = format!("{a:?}");
    let (_, rest) = text.split_once("Some(")?;
    rest.split_once("s)")?.0.parse().ok()
}

fn request<'a>(log: &'a Log, method: Method, path: &str) -> &'a Seen {
    log.requests
        .iter()
        .find(|s| s.method == method && s.uri.split('?').next() == Some(path))
        .unwrap_or_else(|| panic!("no {method} {path} in {:?}", log.requests))
}

/// The last `method` request on `path` (the status written after acting, when one was written
/// before too).
fn last_request<'a>(log: &'a Log, method: Method, path: &str) -> &'a Seen {
    log.requests
        .iter()
        .rev()
        .find(|s| s.method == method && s.uri.split('?').next() == Some(path))
        .unwrap_or_else(|| panic!("no {method} {path} in {:?}", log.requests))
}

fn position(log: &Log, method: Method, path: &str) -> Option<usize> {
    log.requests
        .iter()
        .position(|s| s.method == method && s.uri.split('?').next() == Some(path))
}

/// The condition of `type_` in a status patch: (status, reason).
fn condition_in(patch: &Seen, type_: &str) -> Option<(String, String)> {
    patch
        .at("/status/conditions")
        .as_array()?
        .iter()
        .find_map(|c| {
            (c["type"] == type_).then(|| {
                (
                    c["status"].as_str().unwrap_or_default().to_owned(),
                    c["reason"].as_str().unwrap_or_default().to_owned(),
                )
            })
        })
}

fn metrics_text(ctx: &Context) -> String {
    ctx.metrics.as_ref().map(|m| m.encode()).unwrap_or_default()
}

#[tokio::test]
async fn a_machine_without_the_finalizer_gets_it_before_anything_else() {
    let (ctx, server, _) = Context::test();
    let mut m = machine(PowerState::On, Lifecycle::default());
    m.metadata.finalizers = None;
    let serving = server.serve(vec![expect(Method::PATCH, MACHINE).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert_eq!(action.ok(), Some(Action::await_change()));
    let patch = request(&log, Method::PATCH, MACHINE);
    assert_eq!(patch.at("/metadata/finalizers"), &json!([FINALIZER]));
    assert_eq!(patch.at("/metadata/resourceVersion"), &json!("7"));
}

#[tokio::test]
async fn a_deleted_machine_without_a_node_loses_its_finalizer() {
    let (ctx, server, _) = Context::test();
    let mut m = machine(PowerState::On, Lifecycle::default());
    m.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let serving = server.serve(vec![expect(Method::PATCH, MACHINE).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert_eq!(action.ok(), Some(Action::await_change()));
    let patch = request(&log, Method::PATCH, MACHINE);
    assert_eq!(patch.at("/metadata/finalizers"), &json!([]));
}

#[tokio::test]
async fn a_machine_wanted_on_gets_a_power_on_job_and_phase_powering_on() {
    let (ctx, server, _) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let m = machine(PowerState::On, lifecycle(Phase::Off, PowerState::Off, then));
    let mut recorded = m.clone();
    recorded.metadata.resource_version = Some("8".into());
    let serving = server.serve(vec![
        expect(Method::PATCH, STATUS).answer(to_json(&recorded)),
        expect(Method::POST, JOBS).echo(),
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
    ]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    let job = request(&log, Method::POST, JOBS);
    assert_eq!(job.at("/metadata/name"), &json!("m1-on-1"));
    // The operation is recorded before its Job is created, over the version decided on.
    let ahead = request(&log, Method::PATCH, STATUS);
    assert!(position(&log, Method::PATCH, STATUS) < position(&log, Method::POST, JOBS));
    assert_eq!(ahead.at("/status/phase"), &json!("PoweringOn"));
    assert_eq!(ahead.at("/status/operation/id"), &json!("on-1"));
    assert_eq!(ahead.at("/metadata/resourceVersion"), &json!("7"));
    // The rest of the status follows, over the version the first write left.
    let status = last_request(&log, Method::PATCH, STATUS);
    assert_eq!(status.at("/metadata/resourceVersion"), &json!("8"));
    assert_eq!(log.event_reasons(), ["PowerOnStarted"]);
    // Back at the boot deadline (10 minutes) unless something happens first.
    let secs = action.as_ref().ok().and_then(requeue_secs);
    assert!(
        secs.is_some_and(|s| (590.0..=601.0).contains(&s)),
        "{action:?}"
    );
}

/// The operation cannot be recorded (the Node CR changed since it was read): no Job is created,
/// and the reconcile runs again at once.
#[tokio::test]
async fn a_conflict_recording_the_operation_starts_nothing_and_is_retried_at_once() {
    let (ctx, server, _) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let m = machine(PowerState::On, lifecycle(Phase::Off, PowerState::Off, then));
    let serving = server.serve(vec![expect(Method::PATCH, STATUS).fails(409, "Conflict")]);
    let result = reconcile_once(&ctx, &m).await;
    serving.finish().await;
    let Err(e) = result else {
        panic!("a conflict is an error: {result:?}")
    };
    assert_eq!(
        error_policy(Arc::new(m), &e, ctx.clone()),
        Action::requeue(Duration::from_millis(200))
    );
}

#[tokio::test]
async fn a_ready_machine_wanted_off_is_cordoned_before_its_power_off_job() {
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let n = node(true, then);
    stores.node(n.clone());
    let m = machine(
        PowerState::Off,
        lifecycle(Phase::Ready, PowerState::On, then),
    );
    let cordoned = cordoned_node(&n);
    let serving = server.serve(vec![
        // Cordoned before its pods are listed: none can be bound after the look.
        expect(Method::GET, NODE).answer(to_json(&n)),
        expect(Method::PATCH, NODE).answer(to_json(&cordoned)),
        expect(Method::GET, PODS).answer(pod_list(&[])),
        // The operation is recorded before anything is started.
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
        // The Cordon effect finds it cordoned.
        expect(Method::GET, NODE).answer(to_json(&cordoned)),
        expect(Method::POST, JOBS).echo(),
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
    ]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert!(action.is_ok(), "{action:?}");
    assert_eq!(
        request(&log, Method::PATCH, NODE).at("/spec/unschedulable"),
        &json!(true)
    );
    assert!(position(&log, Method::PATCH, NODE) < position(&log, Method::GET, PODS));
    assert!(position(&log, Method::PATCH, NODE) < position(&log, Method::POST, JOBS));
    assert_eq!(
        request(&log, Method::POST, JOBS).at("/metadata/name"),
        &json!("m1-off-1")
    );
    assert_eq!(
        request(&log, Method::PATCH, STATUS).at("/status/phase"),
        &json!("PoweringOff")
    );
    // The operation is recorded before its Job is created.
    assert!(position(&log, Method::PATCH, STATUS) < position(&log, Method::POST, JOBS));
}

#[tokio::test]
async fn a_drain_evicts_the_pods_on_the_node_and_says_so_in_status() {
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let n = node(true, then);
    stores.node(n.clone());
    let m = machine(
        PowerState::Off,
        lifecycle(Phase::Ready, PowerState::On, then),
    );
    let pods = [pod("web-0")];
    let cordoned = cordoned_node(&n);
    let serving = server.serve(vec![
        // The cordon before the look at the pods, the Cordon effect finding it done, then the
        // drain's own (recording when it started).
        expect(Method::GET, NODE).answer(to_json(&n)),
        expect(Method::PATCH, NODE).answer(to_json(&cordoned)),
        expect(Method::GET, PODS).answer(pod_list(&pods)),
        expect(Method::GET, NODE).answer(to_json(&cordoned)),
        expect(Method::GET, NODE).answer(to_json(&cordoned)),
        expect(Method::PATCH, NODE).answer(to_json(&cordoned)),
        expect(Method::GET, PODS).answer(pod_list(&pods)),
        expect(Method::POST, "/api/v1/namespaces/lab/pods/web-0/eviction")
            .answer(json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" })),
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
    ]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    let status = request(&log, Method::PATCH, STATUS);
    assert_eq!(
        condition_in(status, super::CONDITION_DRAINING),
        Some(("True".into(), "Evicting".into()))
    );
    assert_eq!(status.at("/status/phase"), &json!(null), "still Ready");
    assert!(
        position(&log, Method::POST, JOBS).is_none(),
        "no power-off yet"
    );
    // Pods leaving send no event: the drain looks again on its own.
    assert_eq!(
        action.ok(),
        Some(Action::requeue(crate::operator::node::drain::DRAIN_RECHECK))
    );
}

#[tokio::test]
async fn a_machine_confirmed_off_has_its_node_deleted() {
    let (ctx, server, mut stores) = Context::test();
    let now = Timestamp::now();
    let started = now - SignedDuration::from_mins(2);
    let n = node(false, now - SignedDuration::from_secs(30));
    stores.node(n.clone());
    let mut lc = lifecycle(Phase::PoweringOff, PowerState::Off, started);
    lc.operation = Some(Operation {
        completed: Some(started + SignedDuration::from_secs(20)),
        ..operation(OperationKind::PowerOff, "off-1", started)
    });
    let m = machine(PowerState::Off, lc);
    let serving = server.serve(vec![
        expect(Method::GET, PODS).answer(pod_list(&[])),
        expect(Method::DELETE, NODE).answer(to_json(&n)),
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
    ]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert!(action.is_ok(), "{action:?}");
    let status = request(&log, Method::PATCH, STATUS);
    assert_eq!(status.at("/status/phase"), &json!("Off"));
    assert_eq!(status.at("/status/powerState"), &json!("off"));
}

#[tokio::test]
async fn an_adopted_machine_is_recorded_as_wanted_on() {
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let n = node(true, then);
    stores.node(n.clone());
    let m = machine(PowerState::Off, Lifecycle::default());
    let serving = server.serve(vec![
        expect(Method::GET, PODS).answer(pod_list(&[])),
        expect(Method::PATCH, MACHINE).answer(to_json(&m)),
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
    ]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert!(action.is_ok(), "{action:?}");
    let spec = request(&log, Method::PATCH, MACHINE);
    assert_eq!(spec.at("/spec/powerState"), &json!("on"));
    assert_eq!(
        request(&log, Method::PATCH, STATUS).at("/status/phase"),
        &json!("Ready")
    );
}

#[tokio::test]
async fn a_power_driver_the_spec_lacks_is_reported_in_status() {
    let (ctx, server, _) = Context::test();
    let started = Timestamp::now() - SignedDuration::from_secs(10);
    let mut lc = lifecycle(Phase::PoweringOn, PowerState::On, started);
    lc.operation = Some(operation(OperationKind::PowerOn, "on-1", started));
    let mut m = machine(PowerState::On, lc);
    m.spec.startup_pod_spec = None;
    // The failed operation is recorded before it is cancelled, then the rest of the status.
    let serving = server.serve(vec![
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
    ]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert!(action.is_ok(), "{action:?}");
    let status = last_request(&log, Method::PATCH, STATUS);
    assert_eq!(
        condition_in(status, CONDITION_INVALID_SPEC),
        Some(("True".into(), "DriverUnavailable".into()))
    );
    assert_eq!(
        request(&log, Method::PATCH, STATUS).at("/status/phase"),
        &json!("Failed")
    );
}

#[tokio::test]
async fn a_finished_power_job_is_timed_from_the_operations_start() {
    let (ctx, server, mut stores) = Context::test();
    let started = Timestamp::now() - SignedDuration::from_secs(42);
    let mut lc = lifecycle(Phase::PoweringOn, PowerState::On, started);
    lc.operation = Some(operation(OperationKind::PowerOn, "on-1", started));
    let m = machine(PowerState::On, lc);
    stores.job(completed_job("on-1"));
    let serving = server.serve(vec![expect(Method::PATCH, STATUS).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert!(action.is_ok(), "{action:?}");
    assert_eq!(
        request(&log, Method::PATCH, STATUS).at("/status/phase"),
        &json!("Booting")
    );
    let text = metrics_text(&ctx);
    let count = r#"homelab_power_operation_duration_seconds_count{driver="job",direction="on"} 1"#;
    assert!(text.contains(count), "{text}");
    // 42 s: in the 60 s bucket, not in the 30 s one.
    let le = |b: &str, n: u32| {
        format!(
            r#"homelab_power_operation_duration_seconds_bucket{{le="{b}",driver="job",direction="on"}} {n}"#
        )
    };
    assert!(
        text.contains(&le("30.0", 0)) && text.contains(&le("60.0", 1)),
        "{text}"
    );
}

/// A boot is counted once its status is written: a reconcile whose status write conflicts
/// counts nothing, and its retry counts the boot once.
#[tokio::test]
async fn a_boot_is_counted_once_even_when_its_status_write_conflicts() {
    let boots = |ctx: &Context| {
        metrics_text(ctx)
            .lines()
            .find_map(|l| l.strip_prefix(r#"homelab_boot_duration_seconds_count{group=""} "#))
            .map(str::to_owned)
    };
    let (ctx, server, mut stores) = Context::test();
    let started = Timestamp::now() - SignedDuration::from_secs(90);
    let mut lc = lifecycle(Phase::Booting, PowerState::On, started);
    let mut op = operation(OperationKind::PowerOn, "on-1", started);
    op.completed = Some(started + SignedDuration::from_secs(5));
    lc.operation = Some(op);
    let m = machine(PowerState::On, lc);
    let n = node(true, Timestamp::now() - SignedDuration::from_secs(1));
    stores.node(n.clone());
    // Ready: the Uncordon effect finds the Node schedulable, then the status is written.
    let serving = server.serve(vec![
        expect(Method::GET, NODE).answer(to_json(&n)),
        expect(Method::PATCH, STATUS).fails(409, "Conflict"),
        expect(Method::GET, NODE).answer(to_json(&n)),
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
    ]);
    let result = reconcile_once(&ctx, &m).await;
    assert!(result.is_err(), "a conflict is an error: {result:?}");
    assert_eq!(
        boots(&ctx),
        None,
        "nothing counted before the status is written"
    );

    let result = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(
        last_request(&log, Method::PATCH, STATUS).at("/status/phase"),
        &json!("Ready")
    );
    assert_eq!(boots(&ctx).as_deref(), Some("1"));
}

#[tokio::test]
async fn a_ready_machines_node_going_not_ready_is_counted() {
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    // The status says the Node was Ready; it went NotReady a moment ago (within the grace
    // period: the lifecycle does not move).
    let mut m = machine(
        PowerState::On,
        lifecycle(Phase::Ready, PowerState::On, then),
    );
    let up = node(true, then);
    if let Some(s) = &mut m.status {
        *s = super::status::derive(
            s.clone(),
            &super::status::Facts {
                lifecycle: &s.lifecycle,
                desired: PowerState::On,
                node: Some(&up.cached()),
                node_now: Some(&up.cached()),
                mismatch: None,
                spec_error: None,
                drained: false,
                generation: Some(1),
                now: then,
            },
        )
        .status;
    }
    stores.node(node(false, Timestamp::now() - SignedDuration::from_secs(5)));
    let serving = server.serve(vec![expect(Method::PATCH, STATUS).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert!(action.is_ok(), "{action:?}");
    assert_eq!(
        condition_in(
            request(&log, Method::PATCH, STATUS),
            super::CONDITION_NODE_READY
        ),
        Some(("False".into(), "NodeNotReady".into()))
    );
    let text = metrics_text(&ctx);
    assert!(
        text.contains(r#"homelab_node_not_ready_total{group=""} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_group_spec_that_cannot_be_read_is_reported_in_status_and_nothing_is_done() {
    let (ctx, server, mut stores) = Context::test();
    let group: crate::operator::api::Group = serde_json::from_value(json!({
        "apiVersion": "infra.homecluster.dev/v1alpha1", "kind": "Group",
        "metadata": { "name": "g", "namespace": "lab" },
        "spec": { "remediation": { "powerCycleAfter": "0s" } }
    }))
    .unwrap_or_else(|e| panic!("group fixture: {e}"));
    stores.group(group);
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let mut m = machine(PowerState::On, lifecycle(Phase::Off, PowerState::Off, then));
    m.metadata.labels = Some([("group".to_owned(), "g".to_owned())].into());
    let serving = server.serve(vec![expect(Method::PATCH, STATUS).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert_eq!(action.ok(), Some(Action::await_change()));
    let status = request(&log, Method::PATCH, STATUS);
    assert_eq!(
        condition_in(status, CONDITION_INVALID_SPEC),
        Some(("True".into(), "InvalidSpec".into()))
    );
    assert_eq!(
        status.at("/status/phase"),
        &json!(null),
        "the lifecycle waits"
    );
}

/// `n` cordoned (as the API server answers our cordon).
fn cordoned_node(n: &Node) -> Node {
    let mut c = n.clone();
    c.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
    c
}

/// Node `n1` as [`node`] makes it, without the label that lets a Node CR adopt it.
fn node_not_adoptable(ready: bool, since: Timestamp) -> Node {
    let mut n = node(ready, since);
    if let Some(l) = &mut n.metadata.labels {
        l.remove(crate::operator::trust::ADOPTABLE_LABEL);
    }
    n
}

#[tokio::test]
async fn a_machine_wanted_off_whose_node_is_not_adoptable_only_gets_not_permitted() {
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    stores.node(node_not_adoptable(true, then));
    let m = machine(
        PowerState::Off,
        lifecycle(Phase::Ready, PowerState::On, then),
    );
    // Only the status write: no cordon, no pod listing, no Job.
    let serving = server.serve(vec![expect(Method::PATCH, STATUS).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert_eq!(action.ok(), Some(Action::await_change()));
    assert_eq!(log.requests.len(), 1, "{:?}", log.requests);
    let status = request(&log, Method::PATCH, STATUS);
    assert_eq!(
        condition_in(status, crate::operator::trust::CONDITION_NOT_PERMITTED),
        Some(("True".into(), "NodeNotAdoptable".into()))
    );
    assert_eq!(
        status.at("/status/phase"),
        &json!(null),
        "the lifecycle waits"
    );
    assert_eq!(log.event_reasons(), ["NotPermitted"]);
}

#[tokio::test]
async fn a_control_plane_node_is_not_adopted_even_when_labelled_adoptable() {
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    stores.node(node(true, then).label("node-role.kubernetes.io/control-plane", ""));
    // Unadopted (wanted off, no lifecycle): adopting would patch spec.powerState and the Node.
    let m = machine(PowerState::Off, Lifecycle::default());
    let serving = server.serve(vec![expect(Method::PATCH, STATUS).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert_eq!(action.ok(), Some(Action::await_change()));
    assert_eq!(log.requests.len(), 1, "{:?}", log.requests);
    assert_eq!(
        condition_in(
            request(&log, Method::PATCH, STATUS),
            crate::operator::trust::CONDITION_NOT_PERMITTED
        ),
        Some(("True".into(), "ControlPlaneNode".into()))
    );
}

#[tokio::test]
async fn a_machine_mid_power_off_whose_node_loses_the_label_stops_its_job_and_waits() {
    let (ctx, server, mut stores) = Context::test();
    let started = Timestamp::now() - SignedDuration::from_secs(20);
    stores.node(node_not_adoptable(true, started));
    stores.job(running_job("off-1"));
    let mut lc = lifecycle(Phase::PoweringOff, PowerState::Off, started);
    lc.operation = Some(operation(OperationKind::PowerOff, "off-1", started));
    let m = machine(PowerState::Off, lc);
    let serving = server.serve(vec![
        expect(Method::DELETE, &format!("{JOBS}/m1-off-1")).answer(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Success"
        })),
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
    ]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    // No timed retry: the Node's and the CR's watches bring it back when either changes.
    assert_eq!(action.ok(), Some(Action::await_change()));
    assert_eq!(log.requests.len(), 2, "{:?}", log.requests);
    let status = request(&log, Method::PATCH, STATUS);
    assert_eq!(
        condition_in(status, crate::operator::trust::CONDITION_NOT_PERMITTED),
        Some(("True".into(), "NodeNotAdoptable".into()))
    );
    assert_eq!(
        status.at("/status/operation"),
        &json!(null),
        "the operation stays recorded as it was"
    );
}

#[tokio::test]
async fn a_refused_machine_that_is_deleted_leaves_its_node_untouched() {
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    stores.node(node_not_adoptable(true, then).cordoned());
    let mut m = machine(
        PowerState::On,
        lifecycle(Phase::Ready, PowerState::On, then),
    );
    m.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let serving = server.serve(vec![expect(Method::PATCH, MACHINE).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert_eq!(action.ok(), Some(Action::await_change()));
    assert_eq!(
        log.requests.len(),
        1,
        "only the finalizer goes: {:?}",
        log.requests
    );
    assert_eq!(
        request(&log, Method::PATCH, MACHINE).at("/metadata/finalizers"),
        &json!([])
    );
}

#[tokio::test]
async fn a_fixed_refusal_turns_not_permitted_false_and_the_machine_acts_again() {
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let n = node(true, then);
    stores.node(n.clone());
    let mut m = machine(
        PowerState::Off,
        lifecycle(Phase::Ready, PowerState::On, then),
    );
    if let Some(s) = &mut m.status {
        let refusal = crate::operator::trust::check_node(
            &node_not_adoptable(true, then).cached(),
            &crate::operator::trust::TrustPolicy::default(),
        )
        .err()
        .into_iter()
        .collect::<Vec<_>>();
        *s = super::status::permission(s.clone(), &refusal, Some(1), then).0;
    }
    let cordoned = cordoned_node(&n);
    let serving = server.serve(vec![
        expect(Method::GET, NODE).answer(to_json(&n)),
        expect(Method::PATCH, NODE).answer(to_json(&cordoned)),
        expect(Method::GET, PODS).answer(pod_list(&[])),
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
        expect(Method::GET, NODE).answer(to_json(&cordoned)),
        expect(Method::POST, JOBS).echo(),
        expect(Method::PATCH, STATUS).answer(to_json(&m)),
    ]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert!(action.is_ok(), "{action:?}");
    assert!(position(&log, Method::POST, JOBS).is_some(), "acts again");
    assert_eq!(
        condition_in(
            request(&log, Method::PATCH, STATUS),
            crate::operator::trust::CONDITION_NOT_PERMITTED
        ),
        Some(("False".into(), "Permitted".into()))
    );
    assert!(log.event_reasons().iter().all(|r| r != "NotPermitted"));
}

/// `m`'s status as its last reconcile at `at` left it (with `node` as it found it), and energy
/// counters last accounted at `accounted`.
fn settled(
    mut m: Machine,
    node: Option<&KubeNode>,
    at: Timestamp,
    accounted: Timestamp,
) -> Machine {
    let Some(s) = &mut m.status else {
        panic!("the fixture has a status")
    };
    let mut derived = super::status::derive(
        s.clone(),
        &super::status::Facts {
            lifecycle: &s.lifecycle,
            desired: m.spec.power_state,
            node,
            node_now: node,
            mismatch: None,
            spec_error: None,
            drained: false,
            generation: Some(1),
            now: at,
        },
    )
    .status;
    super::status::insecure_transport(&mut derived, m.spec.power.as_deref(), Some(1), at);
    super::status::deprecated_fields(&mut derived, &m.spec, Some(1), at);
    derived.energy = Some(Box::new(crate::operator::api::EnergyCounters {
        since: Some(accounted),
        until: Some(accounted),
        ..Default::default()
    }));
    *s = derived;
    m
}

fn watts(idle: f64) -> crate::operator::api::Watts {
    crate::operator::api::Watts {
        idle: Some(idle),
        standby: Some(1.0),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_off_machine_with_nothing_new_is_not_written_for_its_energy_nor_requeued() {
    let (ctx, server, _stores) = Context::test();
    let days_ago = Timestamp::now() - SignedDuration::from_hours(72);
    let mut m = machine(
        PowerState::Off,
        lifecycle(Phase::Off, PowerState::Off, days_ago),
    );
    m.spec.watts = Some(watts(20.0));
    let m = settled(m, None, days_ago, days_ago);
    let serving = server.serve(vec![]);
    let action = reconcile_once(&ctx, &m).await;
    serving.finish().await;
    assert_eq!(action.ok(), Some(Action::await_change()));
}

#[tokio::test]
async fn a_ready_machines_energy_is_written_when_due_and_it_comes_back_at_the_next_due_time() {
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let accounted = Timestamp::now() - SignedDuration::from_mins(20);
    let mut m = machine(
        PowerState::On,
        lifecycle(Phase::Ready, PowerState::On, then),
    );
    m.spec.watts = Some(watts(30.0));
    let up = node(true, then);
    let m = settled(m, Some(&up.cached()), then, accounted);
    stores.node(up);
    let serving = server.serve(vec![expect(Method::PATCH, STATUS).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    let patch = request(&log, Method::PATCH, STATUS);
    let on = patch.at("/status/energy/onSeconds").as_u64().unwrap_or(0);
    assert!((1200..1210).contains(&on), "{}", patch.body);
    let wh = patch.at("/status/energy/wattHours").as_f64().unwrap_or(0.0);
    assert!((wh - 10.0).abs() < 0.1, "20 min at 30 W: {}", patch.body);
    assert_eq!(patch.at("/status/energy/source"), &json!("model"));
    assert_eq!(
        patch.at("/status/phase"),
        &json!(null),
        "only the energy changed"
    );
    let secs = requeue_secs(&action.unwrap_or_else(|e| panic!("{e}")));
    assert!(
        secs.is_some_and(|s| (890.0..=901.0).contains(&s)),
        "requeued at the next write: {secs:?}"
    );
}

#[tokio::test]
async fn a_ready_machine_written_recently_is_not_written_again() {
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let accounted = Timestamp::now() - SignedDuration::from_mins(5);
    let mut m = machine(
        PowerState::On,
        lifecycle(Phase::Ready, PowerState::On, then),
    );
    m.spec.watts = Some(watts(30.0));
    let up = node(true, then);
    let m = settled(m, Some(&up.cached()), then, accounted);
    stores.node(up);
    let serving = server.serve(vec![]);
    let action = reconcile_once(&ctx, &m).await;
    serving.finish().await;
    let secs = requeue_secs(&action.unwrap_or_else(|e| panic!("{e}")));
    assert!(
        secs.is_some_and(|s| (590.0..=601.0).contains(&s)),
        "{secs:?}"
    );
}

#[tokio::test]
async fn a_failing_meter_is_a_false_power_meter_condition_and_the_model_counts() {
    use crate::operator::api::{HttpMeter, Meter};
    use crate::operator::meter::MeterState;
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let accounted = Timestamp::now() - SignedDuration::from_mins(20);
    let mut m = machine(
        PowerState::On,
        lifecycle(Phase::Ready, PowerState::On, then),
    );
    m.spec.watts = Some(watts(30.0));
    m.spec.meter = Some(Box::new(Meter {
        http: Some(Box::new(HttpMeter {
            url: "http://plug.lan/rpc".into(),
            watts_path: "$.apower".into(),
            ..HttpMeter::default()
        })),
        ..Meter::default()
    }));
    let up = node(true, then);
    let m = settled(m, Some(&up.cached()), then, accounted);
    stores.node(up);
    ctx.settings.meters.set(
        "lab/m1",
        MeterState::Failed {
            error: "connection refused".into(),
            since: then,
            last: None,
        },
    );
    let serving = server.serve(vec![expect(Method::PATCH, STATUS).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert!(action.is_ok(), "{action:?}");
    let patch = request(&log, Method::PATCH, STATUS);
    assert_eq!(
        condition_in(patch, super::CONDITION_POWER_METER),
        Some(("False".into(), "Unreachable".into()))
    );
    let message = patch.at("/status/conditions").to_string();
    assert!(
        message.contains("connection refused; using the spec.watts model"),
        "{message}"
    );
    assert_eq!(patch.at("/status/energy/source"), &json!("model"));
}

#[tokio::test]
async fn a_working_meters_reading_is_what_the_energy_counts() {
    use crate::operator::api::Meter;
    use crate::operator::meter::{MeterState, Reading};
    let (ctx, server, mut stores) = Context::test();
    let then = Timestamp::now() - SignedDuration::from_hours(1);
    let accounted = Timestamp::now() - SignedDuration::from_mins(24);
    let mut m = machine(
        PowerState::On,
        lifecycle(Phase::Ready, PowerState::On, then),
    );
    m.spec.watts = Some(watts(30.0));
    m.spec.meter = Some(Box::new(Meter {
        http: Some(Box::default()),
        ..Meter::default()
    }));
    let up = node(true, then);
    let m = settled(m, Some(&up.cached()), then, accounted);
    stores.node(up);
    ctx.settings.meters.set(
        "lab/m1",
        MeterState::Ok(Reading {
            watts: 50.0,
            energy_wh: None,
            at: Timestamp::now(),
        }),
    );
    let serving = server.serve(vec![expect(Method::PATCH, STATUS).answer(to_json(&m))]);
    let action = reconcile_once(&ctx, &m).await;
    let log = serving.finish().await;
    assert!(action.is_ok(), "{action:?}");
    let patch = request(&log, Method::PATCH, STATUS);
    assert_eq!(
        condition_in(patch, super::CONDITION_POWER_METER),
        Some(("True".into(), "Reading".into()))
    );
    assert_eq!(patch.at("/status/energy/source"), &json!("meter"));
    let metered = patch
        .at("/status/energy/meteredWattHours")
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        (metered - 20.0).abs() < 0.1,
        "24 min at 50 W: {}",
        patch.body
    );
    assert_eq!(patch.at("/status/energy/estimatedSeconds"), &json!(null));
}

/// The Group's remediation holds for a member, but not while the member is under maintenance
/// nor while the Group is paused: the operator's own power actions stop there.
#[tokio::test]
async fn remediation_stops_for_a_machine_under_maintenance_and_in_a_paused_group() {
    use crate::operator::api::{Group, Maintenance, Remediation};
    let (ctx, _server, mut stores) = Context::test();
    let group = |paused: bool| {
        Group::test("g")
            .spec_with(|s| {
                s.remediation = Some(Remediation {
                    power_cycle_after: Some("15m".to_owned()),
                });
                s.paused = paused.then_some(true);
            })
            .build()
    };
    let member = |maintenance: bool| {
        Machine::test("m1")
            .group("g")
            .spec_with(|s| {
                s.maintenance = maintenance.then(|| Box::new(Maintenance::default()));
            })
            .build()
    };
    stores.group(group(false));
    let after = |m: &Machine| super::policy(&ctx, m).ok().and_then(|p| p.remediate_after);
    assert_eq!(after(&member(false)), Some(SignedDuration::from_mins(15)));
    assert_eq!(after(&member(true)), None);
    stores.group(group(true));
    assert_eq!(after(&member(false)), None);
}
