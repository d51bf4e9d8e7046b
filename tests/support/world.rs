//! A simulated world for a control plane without kubelets or kube-controller-manager: the
//! harness plays the kubelet of each simulated machine (registers its Node, keeps it Ready,
//! runs and finally deletes its pods) and the Job controller (marks Jobs succeeded or failed).

use std::collections::BTreeMap;

use anyhow::Context as _;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Pod, PodCondition,
    Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};

/// The Node a simulated machine's kubelet registers.
#[derive(Debug, Clone)]
pub struct FakeNode {
    pub name: String,
    pub provider_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Capacity and allocatable (the same: no system reservations).
    pub capacity: BTreeMap<String, Quantity>,
    pub taints: Vec<Taint>,
}

impl FakeNode {
    /// A linux/amd64 node with 4 CPUs, 8 GiB and 110 pods, labelled like a kubelet labels it.
    pub fn new(name: &str) -> Self {
        let labels = [
            ("kubernetes.io/hostname", name),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            name: name.to_owned(),
            provider_id: None,
            labels,
            capacity: BTreeMap::new(),
            taints: Vec::new(),
        }
        .capacity("4", "8Gi")
    }

    pub fn provider_id(mut self, id: &str) -> Self {
        self.provider_id = Some(id.to_owned());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// The label a machine's owner gives its kubelet (`--node-labels`) so that a Node CR may
    /// adopt the Node: `infra.homecluster.dev/adoptable=true`.
    pub fn adoptable(self) -> Self {
        self.label(
            kubectl_homelab::operator::trust::ADOPTABLE_LABEL,
            kubectl_homelab::operator::trust::ADOPTABLE_VALUE,
        )
    }

    /// The node that is always on, where no test pod may land: tainted as a control plane is.
    pub fn always_on() -> Self {
        FakeNode::new("always-on").taint("node-role.kubernetes.io/control-plane", "", "NoSchedule")
    }

    /// Sets CPU and memory capacity (Kubernetes quantities, e.g. "4", "8Gi"); pods stay 110.
    pub fn capacity(mut self, cpu: &str, memory: &str) -> Self {
        for (k, v) in [("cpu", cpu), ("memory", memory), ("pods", "110")] {
            self.capacity.insert(k.to_owned(), Quantity(v.to_owned()));
        }
        self
    }

    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints.push(Taint {
            key: key.to_owned(),
            value: Some(value.to_owned()),
            effect: effect.to_owned(),
            time_added: None,
        });
        self
    }
}

/// Plays kubelets and the Job controller against one API server.
#[derive(Clone)]
pub struct World {
    client: kube::Client,
}

/// What the background Job runner does with a Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Succeed,
    Fail(String),
    /// Leave it running forever (a power action that hangs).
    Hang,
}

/// A background task of the world; stops when dropped.
#[derive(Debug)]
pub struct Background(tokio::task::JoinHandle<()>);

impl From<tokio::task::JoinHandle<()>> for Background {
    /// Any task of a test that must stop with it (e.g. an in-process operator).
    fn from(task: tokio::task::JoinHandle<()>) -> Self {
        Background(task)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Field manager of the simulated kubelets and Job controller.
const MANAGER: &str = "kubectl-homelab-test-world";

impl World {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Registers the machine's Node (or updates its labels, providerID, taints) and reports it
    /// Ready, as a kubelet does after boot.
    pub async fn node_up(&self, node: &FakeNode) -> anyhow::Result<Node> {
        let obj = Node {
            metadata: ObjectMeta {
                name: Some(node.name.clone()),
                labels: Some(node.labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: node.provider_id.clone(),
                // Left out when empty so a re-registration does not drop others' taints.
                taints: (!node.taints.is_empty()).then(|| node.taints.clone()),
                ..NodeSpec::default()
            }),
            status: None,
        };
        // providerID is immutable once set; apply fails loudly if a test tries to change it.
        self.nodes()
            .patch(
                &node.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .with_context(|| format!("registering Node {}", node.name))?;
        let status = NodeStatus {
            capacity: Some(node.capacity.clone()),
            allocatable: Some(node.capacity.clone()),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_owned(),
                    address: "127.0.0.1".to_owned(),
                },
                NodeAddress {
                    type_: "Hostname".to_owned(),
                    address: node.name.clone(),
                },
            ]),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".to_owned(),
                operating_system: "linux".to_owned(),
                kubelet_version: "v1.36.3".to_owned(),
                kube_proxy_version: String::new(),
                os_image: "simulated".to_owned(),
                kernel_version: "simulated".to_owned(),
                container_runtime_version: "simulated://1".to_owned(),
                machine_id: node.name.clone(),
                system_uuid: node.name.clone(),
                boot_id: node.name.clone(),
                ..NodeSystemInfo::default()
            }),
            conditions: Some(node_conditions(true, Timestamp::now())),
            ..NodeStatus::default()
        };
        self.patch_node_status(&node.name, &status).await?;
        self.sync_lifecycle_taints(&node.name, true).await
    }

    /// Reports the Node Ready (a heartbeat) or NotReady (the kubelet stopped posting status,
    /// as after a power-off, when no node-lifecycle controller does it for us).
    pub async fn node_ready(&self, name: &str, ready: bool) -> anyhow::Result<Node> {
        let status = NodeStatus {
            conditions: Some(node_conditions(ready, Timestamp::now())),
            ..NodeStatus::default()
        };
        self.patch_node_status(name, &status).await?;
        self.sync_lifecycle_taints(name, ready).await
    }

    /// Plays the node-lifecycle controller's part for taints: the apiserver's
    /// TaintNodesByCondition admission puts `node.kubernetes.io/not-ready:NoSchedule` on every
    /// new Node, and only that controller removes it, so without this no pod would ever be
    /// scheduled to a simulated node. A NotReady node gets the `unreachable` taints.
    async fn sync_lifecycle_taints(&self, name: &str, ready: bool) -> anyhow::Result<Node> {
        const LIFECYCLE: [&str; 2] = [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ];
        for _attempt in 0..5 {
            let node = self
                .nodes()
                .get(name)
                .await
                .with_context(|| format!("reading Node {name}"))?;
            let old = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let mut taints: Vec<Taint> = old
                .iter()
                .filter(|t| !LIFECYCLE.contains(&t.key.as_str()))
                .cloned()
                .collect();
            if !ready {
                for effect in ["NoSchedule", "NoExecute"] {
                    taints.push(Taint {
                        key: "node.kubernetes.io/unreachable".to_owned(),
                        value: None,
                        effect: effect.to_owned(),
                        time_added: (effect == "NoExecute").then(|| Time(Timestamp::now())),
                    });
                }
            }
            let same = taints.len() == old.len()
                && taints
                    .iter()
                    .zip(&old)
                    .all(|(a, b)| a.key == b.key && a.effect == b.effect);
            if same {
                return Ok(node);
            }
            // resourceVersion makes the merge patch fail with 409 if someone changed the Node
            // meanwhile (the list is replaced whole).
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": node.metadata.resource_version },
                "spec": { "taints": taints },
            });
            match self
                .nodes()
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(node) => return Ok(node),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e).with_context(|| format!("updating taints of Node {name}")),
            }
        }
        anyhow::bail!("Node {name} kept changing while updating its taints (5 conflicts)")
    }

    async fn patch_node_status(&self, name: &str, status: &NodeStatus) -> anyhow::Result<Node> {
        let mut status = status.clone();
        // A condition's lastTransitionTime changes only when its status does (readiness age is
        // what autoscalers look at).
        if let Some(conditions) = status.conditions.as_mut() {
            let current = self
                .nodes()
                .get_opt(name)
                .await
                .with_context(|| format!("reading Node {name}"))?;
            let old = current
                .and_then(|n| n.status)
                .and_then(|s| s.conditions)
                .unwrap_or_default();
            for c in conditions.iter_mut() {
                if let Some(prev) = old
                    .iter()
                    .find(|o| o.type_ == c.type_ && o.status == c.status)
                {
                    c.last_transition_time = prev.last_transition_time.clone();
                }
            }
        }
        // A merge patch replaces the whole conditions list, which is what a kubelet's update does.
        let patch = serde_json::json!({ "status": status });
        self.nodes()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("updating the status of Node {name}"))
    }

    /// Deletes the Node (a machine that is gone for good). Missing is fine.
    pub async fn node_delete(&self, name: &str) -> anyhow::Result<()> {
        match self.nodes().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting Node {name}")),
        }
    }

    /// Pods bound to `node`, in all namespaces.
    pub async fn pods_on(&self, node: &str) -> anyhow::Result<Vec<Pod>> {
        let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
        Ok(Api::<Pod>::all(self.client.clone())
            .list(&lp)
            .await
            .with_context(|| format!("listing pods on Node {node}"))?
            .items)
    }

    /// Sets every pod bound to `node` that is not terminating to Running and Ready. Returns
    /// how many it changed.
    pub async fn run_pods(&self, node: &str) -> anyhow::Result<usize> {
        let now = Time(Timestamp::now());
        let mut changed = 0;
        for pod in self.pods_on(node).await? {
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let (ns, name) = pod_key(&pod);
            let conditions: Vec<PodCondition> =
                ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
                    .into_iter()
                    .map(|t| PodCondition {
                        type_: t.to_owned(),
                        status: "True".to_owned(),
                        last_transition_time: Some(now.clone()),
                        ..PodCondition::default()
                    })
                    .collect();
            let patch = serde_json::json!({
                "status": {
                    "phase": "Running",
                    "startTime": now,
                    "hostIP": "127.0.0.1",
                    "conditions": conditions,
                }
            });
            Api::<Pod>::namespaced(self.client.clone(), &ns)
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("setting pod {ns}/{name} Running"))?;
            changed += 1;
        }
        Ok(changed)
    }

    /// Finishes the deletion of every terminating pod bound to `node` (what the kubelet does once
    /// the containers stopped), so drains do not wait for their timeout. Returns how many.
    pub async fn finish_terminating_pods(&self, node: &str) -> anyhow::Result<usize> {
        let mut finished = 0;
        for pod in self.pods_on(node).await? {
            if pod.metadata.deletion_timestamp.is_none() {
                continue;
            }
            let (ns, name) = pod_key(&pod);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            match Api::<Pod>::namespaced(self.client.clone(), &ns)
                .delete(&name, &dp)
                .await
            {
                Ok(_) => finished += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("finishing deletion of pod {ns}/{name}"));
                }
            }
        }
        Ok(finished)
    }

    fn jobs(&self, namespace: &str) -> Api<Job> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Marks the Job started: one active pod and a startTime, as the Job controller does when
    /// it creates the pod.
    pub async fn start_job(&self, namespace: &str, name: &str) -> anyhow::Result<Job> {
        let job = self.get_job(namespace, name).await?;
        let status = JobStatus {
            start_time: Some(start_time(&job)),
            active: Some(1),
            ready: Some(0),
            ..JobStatus::default()
        };
        self.patch_job_status(namespace, name, &status).await
    }

    /// Marks the Job succeeded the way the 1.36 Job controller does, which the apiserver's status
    /// validation requires: startTime kept (or set), completionTime, `succeeded` = completions,
    /// no active pods, and both SuccessCriteriaMet=True and Complete=True.
    pub async fn complete_job(&self, namespace: &str, name: &str) -> anyhow::Result<Job> {
        let job = self.get_job(namespace, name).await?;
        let now = Timestamp::now();
        let completions = job.spec.as_ref().and_then(|s| s.completions).unwrap_or(1);
        let reason = "CompletionsReached";
        let message = "Reached expected number of succeeded pods";
        let status = JobStatus {
            start_time: Some(start_time(&job)),
            completion_time: Some(Time(now)),
            active: Some(0),
            ready: Some(0),
            terminating: Some(0),
            succeeded: Some(completions),
            failed: job.status.as_ref().and_then(|s| s.failed),
            conditions: Some(vec![
                job_condition("SuccessCriteriaMet", reason, message, now),
                job_condition("Complete", reason, message, now),
            ]),
            ..JobStatus::default()
        };
        self.patch_job_status(namespace, name, &status).await
    }

    /// Marks the Job failed the way the Job controller does: FailureTarget=True, then
    /// Failed=True, a failed pod, no active pods, startTime kept (or set), no completionTime.
    pub async fn fail_job(
        &self,
        namespace: &str,
        name: &str,
        message: &str,
    ) -> anyhow::Result<Job> {
        let job = self.get_job(namespace, name).await?;
        let now = Timestamp::now();
        let reason = "BackoffLimitExceeded";
        let failed = job.status.as_ref().and_then(|s| s.failed).unwrap_or(0) + 1;
        let status = JobStatus {
            start_time: Some(start_time(&job)),
            active: Some(0),
            ready: Some(0),
            terminating: Some(0),
            failed: Some(failed),
            succeeded: job.status.as_ref().and_then(|s| s.succeeded),
            conditions: Some(vec![
                job_condition("FailureTarget", reason, message, now),
                job_condition("Failed", reason, message, now),
            ]),
            ..JobStatus::default()
        };
        self.patch_job_status(namespace, name, &status).await
    }

    async fn get_job(&self, namespace: &str, name: &str) -> anyhow::Result<Job> {
        self.jobs(namespace)
            .get(name)
            .await
            .with_context(|| format!("reading Job {namespace}/{name}"))
    }

    async fn patch_job_status(
        &self,
        namespace: &str,
        name: &str,
        status: &JobStatus,
    ) -> anyhow::Result<Job> {
        let patch = serde_json::json!({ "status": status });
        self.jobs(namespace)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("updating the status of Job {namespace}/{name}"))
    }

    /// Plays the Job controller in `namespace` in the background: every Job it sees is marked
    /// started, and `delay` after it was first seen finished as `decide` says. `on_done` runs
    /// after a Job succeeded or failed (e.g. to boot a machine: `world.node_up(..)`). Runs until
    /// the returned guard is dropped; errors are printed and retried.
    pub fn spawn_job_runner<D, F, Fut>(
        &self,
        namespace: &str,
        delay: std::time::Duration,
        decide: D,
        on_done: F,
    ) -> Background
    where
        D: Fn(&Job) -> JobOutcome + Send + Sync + 'static,
        F: Fn(Job, JobOutcome) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
    {
        let world = self.clone();
        let ns = namespace.to_owned();
        Background(tokio::spawn(async move {
            let mut first_seen: BTreeMap<String, std::time::Instant> = BTreeMap::new();
            loop {
                if let Err(e) = world
                    .job_runner_pass(&ns, delay, &decide, &on_done, &mut first_seen)
                    .await
                {
                    eprintln!("simulated Job runner in {ns}: {e:#}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }))
    }

    async fn job_runner_pass<D, F, Fut>(
        &self,
        ns: &str,
        delay: std::time::Duration,
        decide: &D,
        on_done: &F,
        first_seen: &mut BTreeMap<String, std::time::Instant>,
    ) -> anyhow::Result<()>
    where
        D: Fn(&Job) -> JobOutcome + Sync,
        F: Fn(Job, JobOutcome) -> Fut + Sync,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
    {
        let jobs = self
            .jobs(ns)
            .list(&ListParams::default())
            .await
            .context("listing Jobs")?;
        for job in jobs.items {
            let name = job.metadata.name.clone().unwrap_or_default();
            if job_finished(&job) || job.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = job.metadata.uid.clone().unwrap_or_default();
            let Some(seen) = first_seen.get(&uid).copied() else {
                first_seen.insert(uid, std::time::Instant::now());
                self.start_job(ns, &name).await?;
                continue;
            };
            if seen.elapsed() < delay {
                continue;
            }
            let outcome = decide(&job);
            let done = match &outcome {
                JobOutcome::Succeed => self.complete_job(ns, &name).await?,
                JobOutcome::Fail(message) => self.fail_job(ns, &name, message).await?,
                JobOutcome::Hang => continue,
            };
            on_done(done, outcome).await?;
        }
        Ok(())
    }

    /// Creates `pod` bound to `node` directly (no scheduler needed), in `namespace`.
    pub async fn create_bound_pod(
        &self,
        namespace: &str,
        mut pod: Pod,
        node: &str,
    ) -> anyhow::Result<Pod> {
        pod.spec.get_or_insert_with(Default::default).node_name = Some(node.to_owned());
        let name = pod.metadata.name.clone().unwrap_or_default();
        Api::<Pod>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {namespace}/{name} on Node {node}"))
    }
}

/// Complete or Failed.
pub fn job_finished(job: &Job) -> bool {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| {
        cs.iter()
            .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
    })
}

fn pod_key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// The job's startTime, or now if the "controller" never started it.
fn start_time(job: &Job) -> Time {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()))
}

fn job_condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.to_owned(),
        status: "True".to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn node_conditions(ready: bool, now: Timestamp) -> Vec<NodeCondition> {
    let cond = |type_: &str, status: bool, reason: &str, message: &str| NodeCondition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "Unknown" }.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    let fine = |type_: &str, reason: &str| NodeCondition {
        type_: type_.to_owned(),
        status: "False".to_owned(),
        reason: Some(reason.to_owned()),
        message: None,
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    if ready {
        vec![
            fine("MemoryPressure", "KubeletHasSufficientMemory"),
            fine("DiskPressure", "KubeletHasNoDiskPressure"),
            fine("PIDPressure", "KubeletHasSufficientPID"),
            cond(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
            ),
        ]
    } else {
        // What the node-lifecycle controller writes when heartbeats stop.
        ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
            .into_iter()
            .map(|t| {
                cond(
                    t,
                    false,
                    "NodeStatusUnknown",
                    "Kubelet stopped posting node status.",
                )
            })
            .collect()
    }
}
