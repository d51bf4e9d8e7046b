//! The trust boundary against a real control plane: a namespace-scoped user, who may write Node
//! CRs in its namespace and nothing else, cannot make the operator adopt a Kubernetes Node its
//! owner did not allow (a control-plane node, a Node without
//! `infra.homecluster.dev/adoptable=true` or the operator's `--adopt-node-selector`). The
//! operator runs in-process as in tests/operator.rs.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use kubectl_homelab::operator::api::{Machine, find_condition};
use kubectl_homelab::operator::controller::Settings;
use kubectl_homelab::operator::machine::{Phase, PowerState};
use kubectl_homelab::operator::power::job::MACHINE_LABEL;
use kubectl_homelab::operator::trust::{ADOPTABLE_LABEL, CONDITION_NOT_PERMITTED, TrustPolicy};
use serde_json::json;
use support::{Background, ControlPlane, FakeNode, World};

const WAIT: Duration = Duration::from_secs(45);
/// How long a refused machine is watched for a write it must not make, after its refusal was
/// written and after each change that would make an adopted machine act.
const QUIET: Duration = Duration::from_secs(3);

/// The operator on `ns`, with the admin's rights (every right the chart gives it and more: the
/// refusal is the operator's own, not RBAC's).
async fn start_operator(
    cp: &ControlPlane,
    ns: &str,
    trust: TrustPolicy,
) -> anyhow::Result<Background> {
    let settings = Settings {
        trust,
        ..Settings::default()
    };
    support::operator::start(cp, ns, settings).await
}

/// A namespace, a user who may only write Node CRs in it, the operator, the world.
struct Lab {
    ns: String,
    admin: Client,
    /// The namespace-scoped user's client.
    user: Client,
    world: World,
    _operator: Background,
}

impl Lab {
    async fn start(cp: &ControlPlane, prefix: &str, trust: TrustPolicy) -> anyhow::Result<Lab> {
        let ns = cp.namespace(prefix).await?;
        let user = cp.user(&cp.unique_name("family"), None).await?;
        cp.grant(
            &user,
            Some(&ns),
            vec![PolicyRule {
                api_groups: Some(vec!["infra.homecluster.dev".into()]),
                resources: Some(vec!["nodes".into()]),
                verbs: [
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ]
                .map(String::from)
                .to_vec(),
                ..PolicyRule::default()
            }],
        )
        .await?;
        let operator = start_operator(cp, &ns, trust).await?;
        Ok(Lab {
            world: World::new(cp.client()?),
            admin: cp.client()?,
            user: user.client()?,
            ns,
            _operator: operator,
        })
    }

    /// The user's Node CR `name` naming Kubernetes Node `node`, wanted `power`, asking for a
    /// label on it (what adoption would write).
    async fn user_creates(
        &self,
        name: &str,
        node: &str,
        power: PowerState,
    ) -> anyhow::Result<Machine> {
        let m = Machine::test(name)
            .namespace(&self.ns)
            .node_name(node)
            .desired(power)
            .node_label("homelab.example/claimed", "yes")
            .build();
        Api::<Machine>::namespaced(self.user.clone(), &self.ns)
            .create(&PostParams::default(), &m)
            .await
            .with_context(|| format!("the user creating Node CR {name}"))
    }

    async fn user_sets_power(&self, name: &str, power: &str) -> anyhow::Result<()> {
        Api::<Machine>::namespaced(self.user.clone(), &self.ns)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": { "powerState": power } })),
            )
            .await
            .with_context(|| format!("the user setting {name} {power}"))?;
        Ok(())
    }

    async fn wait_machine(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Machine) -> bool,
    ) -> anyhow::Result<Machine> {
        let api = Api::<Machine>::namespaced(self.admin.clone(), &self.ns);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = api.get(name).await?;
            if check(&m) {
                return Ok(m);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{name}: waited {WAIT:?} for {what}; status: {}",
                    serde_json::to_string_pretty(&m.status).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for `NotPermitted` True on `name` and returns its reason and message.
    async fn wait_refused(&self, name: &str) -> anyhow::Result<(String, String)> {
        let m = self
            .wait_machine(name, "NotPermitted True", |m| {
                not_permitted(m).is_some_and(|(status, _, _)| status == "True")
            })
            .await?;
        let (_, reason, message) = not_permitted(&m).context("no NotPermitted")?;
        Ok((reason, message))
    }

    async fn node(&self, name: &str) -> anyhow::Result<Node> {
        Api::<Node>::all(self.admin.clone())
            .get(name)
            .await
            .with_context(|| format!("reading Node {name}"))
    }

    async fn jobs(&self, machine: &str) -> anyhow::Result<Vec<Job>> {
        let lp = ListParams::default().labels(&format!("{MACHINE_LABEL}={machine}"));
        Ok(Api::<Job>::namespaced(self.admin.clone(), &self.ns)
            .list(&lp)
            .await?
            .items)
    }

    /// Watches for [`QUIET`]: Node `node` keeps resourceVersion `version` (nobody wrote it) and
    /// machine `machine` has no Job.
    async fn assert_untouched(
        &self,
        node: &str,
        version: &str,
        machine: &str,
    ) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + QUIET;
        while tokio::time::Instant::now() < until {
            let n = self.node(node).await?;
            if n.resource_version().as_deref() != Some(version) {
                bail!(
                    "Node {node} was written: {}",
                    serde_json::to_string_pretty(&n).unwrap_or_default()
                );
            }
            let jobs = self.jobs(machine).await?;
            if !jobs.is_empty() {
                let names: Vec<_> = jobs.iter().map(|j| j.name_any()).collect();
                bail!("{machine} has Jobs {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    }

    /// The refusal `reason` is in status and, for [`QUIET`] after each, neither the machine
    /// wanted off nor wanted on writes the Node or creates a Job.
    async fn assert_refused(
        &self,
        machine: &str,
        node: &str,
        version: &str,
        reason: &str,
    ) -> anyhow::Result<()> {
        let (got, message) = self.wait_refused(machine).await?;
        assert_eq!(got, reason, "{message}");
        assert!(
            message.contains(node),
            "the message names the Node: {message}"
        );
        self.assert_untouched(node, version, machine).await?;
        for power in ["on", "off"] {
            self.user_sets_power(machine, power).await?;
            self.assert_untouched(node, version, machine).await?;
        }
        Ok(())
    }
}

/// The machine's `NotPermitted` condition: status, reason, message.
fn not_permitted(m: &Machine) -> Option<(String, String, String)> {
    let c = find_condition(&m.status.as_ref()?.conditions, CONDITION_NOT_PERMITTED)?;
    Some((
        c.status.to_string(),
        c.reason.to_string(),
        c.message.to_string(),
    ))
}

/// A Node the operator would otherwise cordon, drain and power off (wanted off, Ready): a
/// control-plane node, even one labelled adoptable, is never written and gets no Job.
#[tokio::test]
async fn a_users_node_cr_naming_a_control_plane_node_is_refused_and_the_node_left_alone()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "trust-cp", TrustPolicy::default()).await?;
    let node = cp.unique_name("control-plane");
    let n = lab
        .world
        .node_up(
            &FakeNode::new(&node)
                .label("node-role.kubernetes.io/control-plane", "")
                .adoptable(),
        )
        .await?;
    let version = n.resource_version().context("no resourceVersion")?;
    lab.user_creates("steal-cp", &node, PowerState::Off).await?;
    lab.assert_refused("steal-cp", &node, &version, "ControlPlaneNode")
        .await
}

#[tokio::test]
async fn a_users_node_cr_naming_a_node_without_the_adoptable_label_is_refused_and_the_node_left_alone()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "trust-unlabelled", TrustPolicy::default()).await?;
    let node = cp.unique_name("someones-desktop");
    let n = lab.world.node_up(&FakeNode::new(&node)).await?;
    let version = n.resource_version().context("no resourceVersion")?;
    lab.user_creates("steal", &node, PowerState::Off).await?;
    lab.assert_refused("steal", &node, &version, "NodeNotAdoptable")
        .await
}

/// The Node's labels a Node CR of `machine` in `ns` gets on adoption: its providerID set and
/// the CR's `spec.labels` applied.
fn adopted(n: &Node, ns: &str, machine: &str) -> bool {
    let pid = n.spec.as_ref().and_then(|s| s.provider_id.as_deref());
    pid == Some(format!("homelab://{ns}/{machine}").as_str())
        && n.labels()
            .get("homelab.example/claimed")
            .map(String::as_str)
            == Some("yes")
}

async fn wait_adopted(lab: &Lab, node: &str, machine: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = lab.node(node).await?;
        if adopted(&n, &lab.ns, machine) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "Node {node} not adopted after {WAIT:?}: {}",
                serde_json::to_string_pretty(&n).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With the label, the same user's Node CR adopts the Node as before: providerID and labels
/// set, the machine Ready, no NotPermitted condition.
#[tokio::test]
async fn a_node_labelled_adoptable_is_adopted() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "trust-labelled", TrustPolicy::default()).await?;
    let node = cp.unique_name("desktop");
    lab.world.node_up(&FakeNode::new(&node).adoptable()).await?;
    lab.user_creates("mine", &node, PowerState::On).await?;
    wait_adopted(&lab, &node, "mine").await?;
    let m = lab
        .wait_machine("mine", "phase Ready", |m| {
            m.lifecycle().phase() == Phase::Ready
        })
        .await?;
    assert_eq!(not_permitted(&m), None, "never refused");
    Ok(())
}

/// With the operator's selector, a Node carrying its labels is adopted without the label.
#[tokio::test]
async fn a_node_matching_the_adopt_node_selector_is_adopted() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let trust = TrustPolicy {
        adopt_node_selector: BTreeMap::from([("homelab.example/pool".into(), "desktops".into())]),
        ..TrustPolicy::default()
    };
    let lab = Lab::start(cp, "trust-selector", trust).await?;
    let node = cp.unique_name("pooled");
    lab.world
        .node_up(&FakeNode::new(&node).label("homelab.example/pool", "desktops"))
        .await?;
    lab.user_creates("pooled", &node, PowerState::On).await?;
    wait_adopted(&lab, &node, "pooled").await
}

/// An adopted machine whose Node loses the label: NotPermitted, and asked to power off it
/// neither cordons the Node nor creates a Job. Labelled again, it acts: the power-off cordons.
#[tokio::test]
async fn a_machine_whose_node_loses_the_label_stops_acting_until_it_is_back() -> anyhow::Result<()>
{
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "trust-unlabel", TrustPolicy::default()).await?;
    let node = cp.unique_name("desktop");
    lab.world.node_up(&FakeNode::new(&node).adoptable()).await?;
    lab.user_creates("m1", &node, PowerState::On).await?;
    wait_adopted(&lab, &node, "m1").await?;
    lab.wait_machine("m1", "phase Ready", |m| {
        m.lifecycle().phase() == Phase::Ready
    })
    .await?;

    let unlabel = json!({ "metadata": { "labels": {
        (ADOPTABLE_LABEL): null } } });
    let n = Api::<Node>::all(lab.admin.clone())
        .patch(&node, &PatchParams::default(), &Patch::Merge(&unlabel))
        .await?;
    let version = n.resource_version().context("no resourceVersion")?;
    let (reason, _) = lab.wait_refused("m1").await?;
    assert_eq!(reason, "NodeNotAdoptable");
    lab.user_sets_power("m1", "off").await?;
    lab.assert_untouched(&node, &version, "m1").await?;

    let relabel = json!({ "metadata": { "labels": {
        (ADOPTABLE_LABEL): "true" } } });
    Api::<Node>::all(lab.admin.clone())
        .patch(&node, &PatchParams::default(), &Patch::Merge(&relabel))
        .await?;
    lab.wait_machine("m1", "NotPermitted False", |m| {
        not_permitted(m)
            .is_some_and(|(status, reason, _)| status == "False" && reason == "Permitted")
    })
    .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while lab.node(&node).await?.spec.and_then(|s| s.unschedulable) != Some(true) {
        if tokio::time::Instant::now() > deadline {
            bail!("Node {node} not cordoned for the power-off after the label came back");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
