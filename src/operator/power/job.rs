//! Power through Kubernetes Jobs: the `job` driver (the predecessor's `startupPodSpec` /
//! `shutdownPodSpec`, or `power.<dir>.job`) and the `nodeAgent` power-off driver (a privileged
//! Job pinned to the machine itself that runs the OS shutdown).
//!
//! The Job is named after the operation (deterministic), labelled with the machine and owned by
//! the Node CR, so a restarted operator finds the Job it started instead of starting a second
//! one (docs/pitfalls.md, pitfalls 1 and 3), and its completion wakes the controller through the
//! Job watch.
use std::collections::BTreeMap;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, EnvVar, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PodSecurityContext, PodSpec, PodTemplateSpec,
    SeccompProfile, SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt as _};

use super::{Driver, OpContext, OpProgress, PowerError, Report};
use crate::operator::api::{Direction, Machine, MinimalPodSpec, NodeAgent, PowerSpec};
use crate::operator::trust::TrustPolicy;

/// Label on everything the operator creates (Jobs, relay pods): the Job watch selects on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "kubectl-homelab";
/// The Node CR a power Job acts for (its name; the Job lives in the CR's namespace).
pub const MACHINE_LABEL: &str = "infra.homecluster.dev/machine";
/// The operation id (`on-3`, `off-4`).
pub const OPERATION_LABEL: &str = "infra.homecluster.dev/operation";
/// `on` or `off`.
pub const DIRECTION_LABEL: &str = "infra.homecluster.dev/direction";
/// Node label the scheduler matches hosts by.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// How long a power Job may run before Kubernetes stops it, when the operation's deadline is
/// further away (a power action is seconds; the rest of the deadline is boot or shutdown time).
const MAX_ACTION_SECONDS: i64 = 600;

/// The label selector of the Job watch.
pub fn job_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Kubernetes names and label values are at most 63 characters: a long machine name keeps a
/// readable prefix and gets a short hash of the whole name, so two long names never collide.
pub fn job_name(resource_name: &str) -> String {
    const MAX: usize = 63;
    if resource_name.len() <= MAX {
        return resource_name.to_owned();
    }
    let hash = fnv1a(resource_name.as_bytes());
    let suffix = format!("-{hash:08x}");
    let mut prefix: String = resource_name.chars().take(MAX - suffix.len()).collect();
    while prefix.ends_with('-') || prefix.ends_with('.') {
        prefix.pop();
    }
    format!("{prefix}{suffix}")
}

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// What the Job runs.
#[derive(Clone, Copy, Debug)]
pub enum JobKind<'a> {
    /// The owner's container (`job` driver).
    Custom(&'a MinimalPodSpec),
    /// The OS shutdown on the machine itself (`nodeAgent`, power-off only).
    NodeAgent(&'a NodeAgent),
}

/// The `job` and `nodeAgent` drivers.
#[derive(Clone)]
pub struct JobDriver<'a> {
    pub client: Client,
    /// The operator's Job cache (selected by [`job_selector`]); `check` reads it, never the API.
    pub jobs: Store<Job>,
    pub kind: JobKind<'a>,
    /// The machine's Kubernetes node name, when known: a power-off Job never runs there (it
    /// would kill itself), a node agent runs only there.
    pub node_name: Option<&'a str>,
    /// ServiceAccount of the Job's pod when the Node CR names none (`run-operator
    /// --pod-service-account`).
    pub service_account: Option<&'a str>,
    /// What Node CRs may ask for (`Settings.trust`): checked again right before the Job is
    /// created, so a pod outside it is never created even if the controller's check was missed.
    pub trust: &'a TrustPolicy,
}

impl JobDriver<'_> {
    fn api(&self, machine: &Machine) -> Api<Job> {
        Api::namespaced(
            self.client.clone(),
            machine.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    fn cached(&self, cx: &OpContext<'_>) -> Option<std::sync::Arc<Job>> {
        let ns = cx
            .machine
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        self.jobs
            .get(&ObjectRef::new(&job_name(cx.resource_name)).within(ns))
            .filter(|j| belongs_to(j, cx))
    }
}

/// Runs the Job's pod as `name` unless its spec already names a ServiceAccount, so the pods the
/// operator creates can get an account of their own, with no API rights, instead of the
/// namespace's `default`.
pub fn default_service_account(job: &mut Job, name: Option<&str>) {
    let Some(name) = name else { return };
    if let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.service_account_name
            .get_or_insert_with(|| name.to_owned());
    }
}

fn namespace(machine: &Machine) -> &str {
    machine.metadata.namespace.as_deref().unwrap_or("default")
}

/// The field of `machine`'s `job` driver for `direction`: `spec.power.powerOn.job` (or
/// `powerOff`, or the deprecated `on` / `off` the CR uses), or the predecessor's
/// `spec.startupPodSpec` / `spec.shutdownPodSpec` when the power spec has no driver that way.
pub fn job_field(machine: &Machine, direction: Direction) -> String {
    let power = machine.spec.power.as_deref();
    let (set, legacy) = match direction {
        Direction::On => (
            power.and_then(PowerSpec::on).is_some(),
            "spec.startupPodSpec",
        ),
        Direction::Off => (
            power.and_then(PowerSpec::off).is_some(),
            "spec.shutdownPodSpec",
        ),
    };
    if set {
        format!("{}.job", machine.spec.power_field(direction))
    } else {
        legacy.to_owned()
    }
}

/// The trust boundary's rules, checked again on the Job about to be created (the controller
/// checks the Node CR first; this keeps a pod outside the policy from ever being created):
/// a node agent's image and command, a `job` driver's ServiceAccount and privilege, and no
/// pod running as the operator's own ServiceAccount, however it got there.
pub fn admit(
    cx: &OpContext<'_>,
    kind: JobKind<'_>,
    job: &Job,
    policy: &TrustPolicy,
) -> Result<(), PowerError> {
    let ns = namespace(cx.machine);
    let (refusals, named_by) = match kind {
        JobKind::Custom(spec) => {
            let field = job_field(cx.machine, cx.direction);
            let named_by = spec
                .service_account
                .is_some()
                .then(|| format!("{field}.serviceAccount"));
            (policy.check_job(&field, spec, ns), named_by)
        }
        JobKind::NodeAgent(agent) => (
            policy.check_node_agent(
                &format!("{}.nodeAgent", cx.machine.spec.power_field(cx.direction)),
                agent,
            ),
            None,
        ),
    };
    refuse(&refusals)?;
    let pod = job.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    refuse_operator_account(pod, named_by.as_deref(), ns, policy)
}

/// Fails with every refusal in `refusals`, if any.
pub(crate) fn refuse(refusals: &[crate::operator::trust::Refusal]) -> Result<(), PowerError> {
    if refusals.is_empty() {
        return Ok(());
    }
    Err(PowerError::Config(
        refusals
            .iter()
            .map(|r| format!("{r} ({})", r.reason))
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

/// Fails when `pod` would run as the operator's own ServiceAccount in `namespace`: named by the
/// Node CR at `named_by`, given by `run-operator --pod-service-account`, or the namespace's
/// `default` when the operator itself runs as that.
pub(crate) fn refuse_operator_account(
    pod: Option<&PodSpec>,
    named_by: Option<&str>,
    namespace: &str,
    policy: &TrustPolicy,
) -> Result<(), PowerError> {
    let given = pod.and_then(|p| p.service_account_name.as_deref());
    let account = given.unwrap_or("default");
    if !policy.is_operator_service_account(namespace, account) {
        return Ok(());
    }
    let how = match (named_by, given) {
        (Some(field), _) => format!("{field} names it"),
        (None, Some(_)) => "run-operator --pod-service-account names it; give the power pods \
                            a ServiceAccount of their own (the chart's power ServiceAccount)"
            .to_owned(),
        (None, None) => "it is the namespace's default ServiceAccount, which a pod that names \
                         none runs as; set run-operator --pod-service-account to a \
                         ServiceAccount of the power pods' own"
            .to_owned(),
    };
    Err(PowerError::Config(format!(
        "not creating a pod that runs as {namespace}/{account}, the operator's own \
         ServiceAccount, whose rights a power pod must never get: {how}"
    )))
}

/// Asks the API server (a SelfSubjectAccessReview, which every authenticated user may create
/// through `system:basic-user`) whether the operator may itself `get` each Secret
/// `(field, name)` in `namespace`, and fails naming the first it may not: a pod the operator
/// creates mounts only Secrets its owner gave the operator, so a Node CR cannot hand any
/// Secret of the namespace to a container of its choosing.
pub(crate) async fn ensure_readable(
    client: &Client,
    namespace: &str,
    secrets: &[(String, &str)],
) -> Result<(), PowerError> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    for (field, name) in secrets {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_owned()),
                    verb: Some("get".to_owned()),
                    group: Some(String::new()),
                    resource: Some("secrets".to_owned()),
                    name: Some((*name).to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let what = format!("asking whether the operator may read Secret {namespace}/{name}");
        let answer = match api.create(&PostParams::default(), &review).await {
            Ok(answer) => answer,
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(PowerError::Config(format!(
                    "{what}: forbidden ({}); the operator's ServiceAccount needs the \
                     system:basic-user ClusterRole (bound to every authenticated user by \
                     default)",
                    s.message
                )));
            }
            Err(e) => return Err(api_error(&what, e)),
        };
        if !answer.status.is_some_and(|s| s.allowed) {
            return Err(PowerError::Config(format!(
                "{field}: the operator may not read Secret {namespace}/{name}, so it does not \
                 mount it into a pod; add {name} to the chart's credentialSecrets (the \
                 operator's get on Secrets by name) if this Node CR may use it"
            )));
        }
    }
    Ok(())
}

/// The restricted Pod Security Standard for a pod: not root (65532, the conventional
/// "nonroot" user of distroless images), the container runtime's default seccomp profile.
pub(crate) fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// The restricted Pod Security Standard for a container: no privilege escalation, no
/// capability.
pub(crate) fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// User and group id of the pods that run restricted.
const NON_ROOT_ID: i64 = 65532;

/// A Job of the same name that is not for this machine and operation is someone else's:
/// never adopt it.
pub(crate) fn belongs_to(job: &Job, cx: &OpContext<'_>) -> bool {
    let labels = job.labels();
    labels.get(MACHINE_LABEL).map(String::as_str) == cx.machine.metadata.name.as_deref()
        && labels.get(OPERATION_LABEL) == Some(&cx.op.id)
}

impl Driver for JobDriver<'_> {
    fn kind(&self) -> &'static str {
        match self.kind {
            JobKind::Custom(_) => "job",
            JobKind::NodeAgent(_) => "nodeAgent",
        }
    }

    async fn start(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        if let Some(job) = self.cached(cx) {
            return Ok(Report::new(progress(&job)).accepted(job.uid()));
        }
        if let Some(uid) = created_before(cx) {
            // Created once and gone since: never a second run of the same operation.
            return Ok(removed(cx, uid));
        }
        let mut job = build_job(cx, self.kind, self.node_name)?;
        default_service_account(&mut job, self.service_account);
        admit(cx, self.kind, &job, self.trust)?;
        if let JobKind::Custom(spec) = self.kind {
            let field = job_field(cx.machine, cx.direction);
            let secrets: Vec<(String, &str)> = spec
                .volumes
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let name = v.secret_name.as_deref().filter(|n| !n.is_empty())?;
                    Some((format!("{field}.volumes[{i}].secretName"), name))
                })
                .collect();
            ensure_readable(&self.client, namespace(cx.machine), &secrets).await?;
        }
        let name = job.name_any();
        cx.ensure_leader()?;
        match self
            .api(cx.machine)
            .create(&PostParams::default(), &job)
            .await
        {
            Ok(created) => Ok(Report::new(OpProgress::Running).accepted(created.uid())),
            // Created by us before a restart, not yet in the cache: adopt it.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Report::new(OpProgress::Running)),
            Err(e) => Err(api_error(&format!("creating power Job {name}"), e)),
        }
    }

    async fn check(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        Ok(match (self.cached(cx), created_before(cx)) {
            (Some(job), _) => Report::new(progress(&job)).accepted(job.uid()),
            (None, Some(uid)) => removed(cx, uid),
            (None, None) => Report::new(OpProgress::Absent),
        })
    }

    async fn cancel(&self, cx: &OpContext<'_>) -> Result<(), PowerError> {
        if self
            .cached(cx)
            .is_some_and(|j| progress(&j) != OpProgress::Running)
        {
            // Finished: it cannot act any more, and its pod's log says what happened. The TTL
            // removes it.
            return Ok(());
        }
        cx.ensure_leader()?;
        delete_job(&self.api(cx.machine), &job_name(cx.resource_name)).await
    }
}

/// The uid of the Job the status records as created for `cx`'s operation.
fn created_before<'a>(cx: &OpContext<'a>) -> Option<&'a str> {
    let power = cx.machine.status.as_ref()?.power.as_deref();
    crate::operator::api::DriverReadback::accepted_for(power, &cx.op.id)
}

/// The operation's Job was created (`uid`) and is gone: removed by its TTL after it finished
/// (a `ttlSecondsAfterFinished` of 0, or the operator down longer than the TTL) or deleted by
/// hand, before its result was seen. Running it again would switch the machine twice, so it is
/// taken as done and the machine's Node decides: Ready by the boot deadline after a power-on,
/// NotReady or gone by the shutdown deadline after a power-off, else the operation fails there.
fn removed(cx: &OpContext<'_>, uid: &str) -> Report {
    tracing::info!(
        machine = %cx.machine.object_ref(),
        operation = %cx.op.id,
        job_uid = uid,
        "the power Job was removed before its result was seen; not running it again, the Node decides"
    );
    Report::new(OpProgress::Succeeded)
}

/// Deletes Job `name` and, by background propagation, its pods, so a stale action cannot act
/// late. A Job already gone is fine.
async fn delete_job(api: &Api<Job>, name: &str) -> Result<(), PowerError> {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_error(&format!("deleting power Job {name}"), e)),
    }
}

/// The unfinished Jobs in the Job cache that act for `machine` (by [`MACHINE_LABEL`], in its
/// namespace) for an operation other than `current`, and are not being deleted already.
pub fn stale_jobs(jobs: &Store<Job>, machine: &Machine, current: Option<&str>) -> Vec<String> {
    let (Some(name), ns) = (
        machine.metadata.name.as_deref(),
        machine.metadata.namespace.as_deref(),
    ) else {
        return Vec::new();
    };
    jobs.state()
        .into_iter()
        .filter(|j| j.metadata.namespace.as_deref() == ns)
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter(|j| {
            let labels = j.labels();
            labels.get(MACHINE_LABEL).map(String::as_str) == Some(name)
                && labels.get(OPERATION_LABEL).map(String::as_str) != current
        })
        .filter(|j| progress(j) == OpProgress::Running)
        .map(|j| j.name_any())
        .collect()
}

/// Cancels the Jobs [`stale_jobs`] finds: each operation of a machine but its current one was
/// replaced or given up, so nothing may act for it any more (a Job created by a start whose
/// record was lost, or whose cancel failed). Returns the names of the Jobs deleted.
pub async fn cancel_stale_jobs(
    client: &Client,
    jobs: &Store<Job>,
    machine: &Machine,
    current: Option<&str>,
) -> Result<Vec<String>, PowerError> {
    let stale = stale_jobs(jobs, machine, current);
    if stale.is_empty() {
        return Ok(stale);
    }
    let api: Api<Job> = Api::namespaced(
        client.clone(),
        machine.metadata.namespace.as_deref().unwrap_or("default"),
    );
    for name in &stale {
        delete_job(&api, name).await?;
    }
    Ok(stale)
}

pub(crate) fn api_error(what: &str, e: kube::Error) -> PowerError {
    match &e {
        kube::Error::Api(s) if s.code == 403 => PowerError::Config(format!(
            "{what}: forbidden ({}); grant the operator get/list/watch/create/delete on jobs.batch \
             in the Node's namespace",
            s.message
        )),
        kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 429 => {
            PowerError::Config(format!("{what}: rejected by the API server: {}", s.message))
        }
        _ => PowerError::Transient(format!("{what}: {}", crate::operator::error_chain(&e))),
    }
}

/// The Job's progress from its status conditions.
pub fn progress(job: &Job) -> OpProgress {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let is_true = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if is_true("Complete").is_some() {
        return OpProgress::Succeeded;
    }
    if let Some(c) = is_true("Failed").or_else(|| is_true("FailureTarget")) {
        let why = c
            .message
            .as_deref()
            .filter(|m| !m.is_empty())
            .or(c.reason.as_deref())
            .unwrap_or("the Job failed");
        return OpProgress::Failed {
            reason: format!("power Job {} failed: {why}", job.name_any()),
        };
    }
    OpProgress::Running
}

/// The Job for `cx` (pure: tests check its shape without an API server).
pub fn build_job(
    cx: &OpContext<'_>,
    kind: JobKind<'_>,
    node_name: Option<&str>,
) -> Result<Job, PowerError> {
    let machine = cx.machine;
    let machine_name = machine.metadata.name.clone().unwrap_or_default();
    let (metadata, labels) = job_metadata(cx, job_name(cx.resource_name))?;
    let until_deadline = (cx.op.deadline.as_second() - cx.now.as_second()).max(1);
    let env = vec![
        env("HOMELAB_MACHINE", &machine_name),
        env(
            "HOMELAB_NAMESPACE",
            machine.metadata.namespace.as_deref().unwrap_or("default"),
        ),
        env("HOMELAB_DIRECTION", &cx.direction.to_string()),
        env("HOMELAB_OPERATION", &cx.op.id),
        env("HOMELAB_NODE_NAME", node_name.unwrap_or_default()),
    ];
    let (pod, ttl) = match kind {
        JobKind::Custom(spec) => (
            custom_pod(spec, env, cx.direction, node_name),
            spec.ttl_seconds_after_finished(),
        ),
        JobKind::NodeAgent(agent) => {
            let Some(node) = node_name else {
                return Err(PowerError::Config(format!(
                    "{}: the nodeAgent driver runs on the machine's own node, and its name is not \
                     known (no registered Node and no spec.kubernetesNodeName)",
                    machine.object_ref()
                )));
            };
            (
                node_agent_pod(agent, env, node),
                crate::operator::api::DEFAULT_JOB_TTL_SECONDS,
            )
        }
    };
    Ok(Job {
        metadata,
        spec: Some(JobSpec {
            // The lifecycle core retries with backoff; one pod retry covers a flaky image pull.
            backoff_limit: Some(1),
            active_deadline_seconds: Some(until_deadline.min(MAX_ACTION_SECONDS)),
            ttl_seconds_after_finished: Some(ttl),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

/// The metadata of every Job the operator creates for an operation (power Jobs, node agents,
/// Wake-on-LAN relays): named `name` in the machine's namespace, owned by its Node CR (deleted
/// with it), and labelled so the Job watch selects it and [`belongs_to`] recognises it. Also
/// returns the labels for the Job's pod template.
pub(crate) fn job_metadata(
    cx: &OpContext<'_>,
    name: String,
) -> Result<(ObjectMeta, BTreeMap<String, String>), PowerError> {
    let machine = cx.machine;
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (
            MACHINE_LABEL.to_owned(),
            machine.metadata.name.clone().unwrap_or_default(),
        ),
        (OPERATION_LABEL.to_owned(), cx.op.id.clone()),
        (DIRECTION_LABEL.to_owned(), cx.direction.to_string()),
    ]);
    let metadata = ObjectMeta {
        name: Some(name),
        namespace: machine.metadata.namespace.clone(),
        labels: Some(labels.clone()),
        owner_references: Some(vec![owner_reference(machine)?]),
        ..ObjectMeta::default()
    };
    Ok((metadata, labels))
}

fn owner_reference(machine: &Machine) -> Result<OwnerReference, PowerError> {
    let uid = machine.metadata.uid.clone().ok_or_else(|| {
        PowerError::Config(format!(
            "{} has no uid (not read from the API server): it cannot own a Job",
            machine.object_ref()
        ))
    })?;
    Ok(OwnerReference {
        api_version: Machine::api_version(&()).into_owned(),
        kind: Machine::kind(&()).into_owned(),
        name: machine.metadata.name.clone().unwrap_or_default(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The owner's container. A power-off Job must not land on the machine it switches off.
///
/// It runs under the restricted Pod Security Standard unless the spec asked for more (which
/// [`admit`] allows only with `allow_privileged_jobs`): `privileged` makes the container
/// privileged and leaves out every restricted setting that would contradict it (non-root,
/// no escalation, no capability, the seccomp profile); `hostNetwork` puts the pod on the host's
/// network and changes nothing else. The ServiceAccount token is mounted only when the spec
/// names a ServiceAccount, the one case where the pod is meant to call the API.
fn custom_pod(
    spec: &MinimalPodSpec,
    env: Vec<EnvVar>,
    direction: Direction,
    node_name: Option<&str>,
) -> PodSpec {
    let (volumes, mounts): (Vec<_>, Vec<_>) = spec
        .volumes
        .iter()
        .map(|v| {
            let volume = Volume {
                name: v.name.clone(),
                secret: v.secret_name.as_ref().map(|s| SecretVolumeSource {
                    secret_name: Some(s.clone()),
                    ..SecretVolumeSource::default()
                }),
                config_map: v.config_map_name.as_ref().map(|c| ConfigMapVolumeSource {
                    name: c.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            };
            let mount = VolumeMount {
                name: v.name.clone(),
                mount_path: v.mount_path.clone(),
                read_only: Some(true),
                ..VolumeMount::default()
            };
            (volume, mount)
        })
        .unzip();
    let avoid_target = node_name
        .filter(|_| direction == Direction::Off)
        .map(|n| Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: HOSTNAME_LABEL.to_owned(),
                            operator: "NotIn".to_owned(),
                            values: Some(vec![n.to_owned()]),
                        }]),
                        ..NodeSelectorTerm::default()
                    }],
                }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        });
    let privileged = spec.privileged == Some(true);
    let (pod_security, container_security) = if privileged {
        (
            None,
            SecurityContext {
                privileged: Some(true),
                ..SecurityContext::default()
            },
        )
    } else {
        (
            Some(restricted_pod_security()),
            restricted_container_security(),
        )
    };
    PodSpec {
        restart_policy: Some("Never".to_owned()),
        service_account_name: spec.service_account.clone(),
        automount_service_account_token: spec.service_account.is_none().then_some(false),
        host_network: (spec.host_network == Some(true)).then_some(true),
        security_context: pod_security,
        affinity: avoid_target,
        containers: vec![Container {
            name: "power".to_owned(),
            image: Some(spec.image.clone()),
            command: (!spec.command.is_empty()).then(|| spec.command.clone()),
            args: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(env),
            volume_mounts: (!mounts.is_empty()).then_some(mounts),
            security_context: Some(container_security),
            ..Container::default()
        }],
        volumes: (!volumes.is_empty()).then_some(volumes),
        ..PodSpec::default()
    }
}

/// A privileged pod on the machine itself that enters the host's namespaces and runs the
/// shutdown command. Bound by `nodeName` (no scheduler: the node is cordoned and may carry CA's
/// NoSchedule taint), tolerating every taint. It needs no API access.
fn node_agent_pod(agent: &NodeAgent, env: Vec<EnvVar>, node: &str) -> PodSpec {
    let mut command: Vec<String> = ["nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    command.extend(agent.command());
    PodSpec {
        node_name: Some(node.to_owned()),
        host_pid: Some(true),
        restart_policy: Some("Never".to_owned()),
        automount_service_account_token: Some(false),
        tolerations: Some(vec![Toleration {
            operator: Some("Exists".to_owned()),
            ..Toleration::default()
        }]),
        security_context: Some(PodSecurityContext {
            run_as_user: Some(0),
            ..PodSecurityContext::default()
        }),
        containers: vec![Container {
            name: "shutdown".to_owned(),
            image: Some(agent.image().to_owned()),
            command: Some(command),
            env: Some(env),
            security_context: Some(SecurityContext {
                privileged: Some(true),
                ..SecurityContext::default()
            }),
            ..Container::default()
        }],
        ..PodSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::machine::{Operation, OperationKind};
    use jiff::{SignedDuration, Timestamp};

    fn operation(id: &str) -> Operation {
        let started = Timestamp::UNIX_EPOCH;
        Operation {
            kind: OperationKind::PowerOff,
            id: id.to_owned(),
            started,
            deadline: started + SignedDuration::from_mins(5),
            completed: None,
        }
    }

    fn context<'a>(m: &'a Machine, op: &'a Operation, name: &'a str) -> OpContext<'a> {
        OpContext {
            machine: m,
            direction: Direction::Off,
            op,
            resource_name: name,
            now: op.started,
            fence: None,
        }
    }

    fn pod_spec(job: &Job) -> &PodSpec {
        job.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .unwrap_or_else(|| panic!("job without pod spec"))
    }

    #[test]
    fn long_names_fit_a_label_and_stay_distinct() {
        let a = job_name(&format!("{}-off-1", "a".repeat(70)));
        let b = job_name(&format!("{}-off-2", "a".repeat(70)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert_eq!(job_name("m1-on-1"), "m1-on-1");
    }

    #[test]
    fn a_power_off_job_is_owned_labelled_and_kept_off_its_target() -> Result<(), PowerError> {
        let m = Machine::test("m1").uid("uid-1").build();
        let op = operation("off-2");
        let spec = MinimalPodSpec {
            image: "example/poweroff:1".to_owned(),
            ..MinimalPodSpec::default()
        };
        let job = build_job(
            &context(&m, &op, "m1-off-2"),
            JobKind::Custom(&spec),
            Some("node-m1"),
        )?;
        assert_eq!(job.metadata.name.as_deref(), Some("m1-off-2"));
        let owner = &job.metadata.owner_references.as_deref().unwrap_or_default()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "uid-1"));
        assert_eq!(
            job.labels().get(OPERATION_LABEL).map(String::as_str),
            Some("off-2")
        );
        let affinity = serde_json::to_string(&pod_spec(&job).affinity).unwrap_or_default();
        assert!(
            affinity.contains("NotIn") && affinity.contains("node-m1"),
            "{affinity}"
        );
        let deadline = job.spec.as_ref().and_then(|s| s.active_deadline_seconds);
        assert_eq!(deadline, Some(300));
        Ok(())
    }

    #[test]
    fn the_operators_pod_service_account_applies_only_where_the_node_cr_names_none()
    -> Result<(), PowerError> {
        let m = Machine::test("m1").uid("uid-1").build();
        let op = operation("off-2");
        let cx = context(&m, &op, "m1-off-2");
        let plain = MinimalPodSpec {
            image: "example/poweroff:1".to_owned(),
            ..MinimalPodSpec::default()
        };
        let own = MinimalPodSpec {
            service_account: Some("bmc-reader".to_owned()),
            ..plain.clone()
        };
        let account = |spec: &MinimalPodSpec, default: Option<&str>| {
            let mut job = build_job(&cx, JobKind::Custom(spec), None)?;
            default_service_account(&mut job, default);
            Ok::<_, PowerError>(pod_spec(&job).service_account_name.clone())
        };
        assert_eq!(
            account(&plain, Some("lab-power"))?.as_deref(),
            Some("lab-power")
        );
        assert_eq!(
            account(&own, Some("lab-power"))?.as_deref(),
            Some("bmc-reader")
        );
        assert_eq!(account(&plain, None)?, None);
        Ok(())
    }

    #[test]
    fn a_node_agent_runs_privileged_on_its_own_node_only() -> Result<(), PowerError> {
        let m = Machine::test("m1").uid("uid-1").build();
        let op = operation("off-1");
        let agent = NodeAgent::default();
        let job = build_job(
            &context(&m, &op, "m1-off-1"),
            JobKind::NodeAgent(&agent),
            Some("node-m1"),
        )?;
        let pod = pod_spec(&job);
        assert_eq!(pod.node_name.as_deref(), Some("node-m1"));
        assert_eq!(pod.host_pid, Some(true));
        let c = &pod.containers[0];
        assert_eq!(
            c.security_context.as_ref().and_then(|s| s.privileged),
            Some(true)
        );
        let cmd = c.command.clone().unwrap_or_default();
        assert_eq!(&cmd[..2], ["nsenter", "-t"]);
        assert_eq!(&cmd[cmd.len() - 2..], ["systemctl", "poweroff"]);
        Ok(())
    }

    fn custom(spec: &MinimalPodSpec) -> Result<PodSpec, PowerError> {
        let m = Machine::test("m1").uid("uid-1").build();
        let op = operation("off-2");
        let job = build_job(
            &context(&m, &op, "m1-off-2"),
            JobKind::Custom(spec),
            Some("node-m1"),
        )?;
        Ok(pod_spec(&job).clone())
    }

    fn restricted_pod(pod: &PodSpec) -> bool {
        let sc = pod.security_context.clone().unwrap_or_default();
        sc.run_as_non_root == Some(true)
            && sc.run_as_user == Some(65532)
            && sc.run_as_group == Some(65532)
            && sc.seccomp_profile.map(|p| p.type_).as_deref() == Some("RuntimeDefault")
    }

    fn restricted_container(c: &Container) -> bool {
        let sc = c.security_context.clone().unwrap_or_default();
        sc.allow_privilege_escalation == Some(false)
            && sc.privileged != Some(true)
            && sc.capabilities.and_then(|c| c.drop) == Some(vec!["ALL".to_owned()])
    }

    #[test]
    fn a_job_drivers_pod_is_restricted_and_gets_no_token() -> Result<(), PowerError> {
        let pod = custom(&crate::testing::job(
            crate::testing::POWER_IMAGE,
            &["/power"],
        ))?;
        assert!(restricted_pod(&pod), "{:?}", pod.security_context);
        assert!(
            restricted_container(&pod.containers[0]),
            "{:?}",
            pod.containers[0].security_context
        );
        assert_eq!(pod.host_network, None);
        assert_eq!(pod.automount_service_account_token, Some(false));
        Ok(())
    }

    #[test]
    fn a_job_that_names_its_service_account_gets_its_token() -> Result<(), PowerError> {
        let pod = custom(&MinimalPodSpec {
            service_account: Some("plug".to_owned()),
            ..crate::testing::job(crate::testing::POWER_IMAGE, &[])
        })?;
        assert_eq!(pod.service_account_name.as_deref(), Some("plug"));
        assert_eq!(pod.automount_service_account_token, None);
        assert!(restricted_pod(&pod) && restricted_container(&pod.containers[0]));
        Ok(())
    }

    #[test]
    fn a_privileged_job_is_privileged_and_nothing_restricted_contradicts_it()
    -> Result<(), PowerError> {
        let pod = custom(&MinimalPodSpec {
            privileged: Some(true),
            ..crate::testing::job(crate::testing::POWER_IMAGE, &[])
        })?;
        let sc = pod.containers[0]
            .security_context
            .clone()
            .unwrap_or_default();
        assert_eq!(sc.privileged, Some(true));
        // The API server refuses privileged with allowPrivilegeEscalation false; a privileged
        // container runs as whoever its image says, with every capability.
        assert_eq!(sc.allow_privilege_escalation, None);
        assert_eq!(sc.capabilities, None);
        let psc = pod.security_context.clone().unwrap_or_default();
        assert_eq!((psc.run_as_non_root, psc.run_as_user), (None, None));
        assert_eq!(pod.host_network, None);
        Ok(())
    }

    #[test]
    fn a_host_network_job_is_otherwise_restricted() -> Result<(), PowerError> {
        let pod = custom(&MinimalPodSpec {
            host_network: Some(true),
            ..crate::testing::job(crate::testing::POWER_IMAGE, &[])
        })?;
        assert_eq!(pod.host_network, Some(true));
        assert!(restricted_pod(&pod) && restricted_container(&pod.containers[0]));
        Ok(())
    }

    /// `admit` on the Job `kind` builds for `m`, with the pod ServiceAccount `default_sa`.
    fn admitted(
        m: &Machine,
        kind: JobKind<'_>,
        default_sa: Option<&str>,
        policy: &TrustPolicy,
    ) -> Result<(), PowerError> {
        let op = operation("off-2");
        let cx = context(m, &op, "m1-off-2");
        let mut job = build_job(&cx, kind, Some("node-m1"))?;
        default_service_account(&mut job, default_sa);
        admit(&cx, kind, &job, policy)
    }

    fn config_error(r: Result<(), PowerError>) -> String {
        match r {
            Err(PowerError::Config(m)) => m,
            other => panic!("not a configuration error: {other:?}"),
        }
    }

    #[test]
    fn a_node_agent_outside_the_policy_is_never_created() {
        let m = Machine::test("m1").uid("uid-1").build();
        let policy = TrustPolicy::default();
        assert!(admitted(&m, JobKind::NodeAgent(&NodeAgent::default()), None, &policy).is_ok());
        let foreign = NodeAgent {
            image: Some("evil.example/root:1".to_owned()),
            command: vec!["sh".to_owned(), "-c".to_owned(), "id".to_owned()],
        };
        let msg = config_error(admitted(&m, JobKind::NodeAgent(&foreign), None, &policy));
        assert!(
            msg.contains("spec.power.powerOff.nodeAgent.image")
                && msg.contains("spec.power.powerOff.nodeAgent.command"),
            "{msg}"
        );
    }

    #[test]
    fn a_job_asking_for_privilege_is_created_only_with_the_policy() {
        let m = Machine::test("m1").uid("uid-1").build();
        let asking = MinimalPodSpec {
            privileged: Some(true),
            ..crate::testing::job(crate::testing::POWER_IMAGE, &[])
        };
        let mut policy = TrustPolicy::default();
        let msg = config_error(admitted(&m, JobKind::Custom(&asking), None, &policy));
        assert!(msg.contains("spec.power.powerOff.job.privileged"), "{msg}");
        policy.allow_privileged_jobs = true;
        assert!(admitted(&m, JobKind::Custom(&asking), None, &policy).is_ok());
    }

    #[test]
    fn no_pod_runs_as_the_operators_service_account_however_it_is_named() {
        let m = Machine::test("m1").uid("uid-1").build();
        let policy = TrustPolicy {
            operator_service_account: Some(("lab".to_owned(), "homelab".to_owned())),
            ..TrustPolicy::default()
        };
        let plain = crate::testing::job(crate::testing::POWER_IMAGE, &[]);
        let agent = NodeAgent::default();
        for kind in [JobKind::Custom(&plain), JobKind::NodeAgent(&agent)] {
            let msg = config_error(admitted(&m, kind, Some("homelab"), &policy));
            assert!(
                msg.contains("lab/homelab") && msg.contains("--pod-service-account"),
                "{msg}"
            );
            assert!(admitted(&m, kind, Some("lab-power"), &policy).is_ok());
        }
        // An operator running as its namespace's `default` is what a pod naming none gets.
        let as_default = TrustPolicy {
            operator_service_account: Some(("lab".to_owned(), "default".to_owned())),
            ..TrustPolicy::default()
        };
        let msg = config_error(admitted(&m, JobKind::Custom(&plain), None, &as_default));
        assert!(msg.contains("lab/default"), "{msg}");
    }

    #[test]
    fn a_node_agent_without_a_node_name_is_a_config_error() {
        let m = Machine::test("m1").uid("uid-1").build();
        let op = operation("off-1");
        let agent = NodeAgent::default();
        let err = build_job(
            &context(&m, &op, "m1-off-1"),
            JobKind::NodeAgent(&agent),
            None,
        );
        assert!(matches!(err, Err(PowerError::Config(msg)) if msg.contains("kubernetesNodeName")));
    }
}
