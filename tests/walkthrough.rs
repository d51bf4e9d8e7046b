//! The README's "Your first machine", followed as far as a machine without kubelets or
//! hardware allows: its shell commands and YAML run as written (the chart from the checkout,
//! kubectl reading the YAML as YAML 1.1, the plugin through `kubectl homelab`) against a real
//! control plane with a scheduler; the chart's operator and Cluster Autoscaler run as processes
//! with the rendered arguments and their ServiceAccounts; the mini PC and the k3s server are
//! simulated Nodes (tests/support/machines.rs completes the relay and node-agent Jobs, which no
//! kubelet runs here, and registers or stops the mini PC's Node).
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use kubectl_homelab::operator::api::Machine;
use kubectl_homelab::operator::machine::Phase;
use serde_json::json;
use support::assets::Assets;
use support::chart::Release;
use support::control_plane::{ControlPlane, Options};
use support::helm::{CHART, ChartOperator, Helm, find, repo};
use support::machines::{Happened, Machines, MachinesConfig};
use support::world::{FakeNode, World};

/// What a walk-through step may take here: CA scans every 2 s, the simulated mini PC boots in
/// 2 s, CA finds it unneeded after 15 s; the rest is the apiserver and the scheduler.
const STEP: Duration = Duration::from_secs(120);

/// The body of the README code block whose first line is `first`.
fn readme_block(first: &str) -> anyhow::Result<String> {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let mut in_block = false;
    let mut body = Vec::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            if in_block && body.first().is_some_and(|l: &&str| l.trim() == first) {
                return Ok(body.join("\n") + "\n");
            }
            in_block = !in_block;
            body.clear();
        } else if in_block {
            body.push(line);
        }
    }
    anyhow::bail!("README.md has no code block starting with {first:?}")
}

/// The README's shell block that contains `line`, each command run in order by bash in `dir`
/// with kubectl, helm and the plugin on PATH and the control plane as the current cluster.
fn run_readme_commands(
    cp: &ControlPlane,
    helm: &Helm,
    dir: &Path,
    containing: &str,
) -> anyhow::Result<String> {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let script = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains(containing))
        .with_context(|| format!("README.md has no sh block with {containing:?}"))?
        // The chart is the checkout's, wherever the test runs.
        .replace(CHART, &repo().join(CHART).display().to_string());
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .parent()
        .context("the plugin's directory")?;
    let helm_bin = support::helm::tool("helm")?.context("helm is not built")?;
    let helm_dir = helm_bin.parent().context("helm's directory")?;
    let path = format!(
        "{}:{}:{}",
        plugin.display(),
        helm_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // helm's own config, cache and data directories, as the other chart tests use them.
    let helm_env = helm.command(&[]);
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir)
        .envs(helm_env.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("PATH", path)
        .env("KUBECONFIG", cp.kubeconfig());
    let out = cmd.output().context("running the README's commands")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "the README's commands failed ({}):\n{script}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// [`support::wait_for`] a walk-through step; a timeout shows the operator's log.
async fn until<T, F, Fut>(what: &str, log: &Path, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    support::wait_for(what, STEP, check)
        .await
        .map_err(|e| e.context(support::process::log_tail(log, 40)))
}

async fn phase_of(machines: &Api<Machine>, name: &str) -> anyhow::Result<Option<Phase>> {
    Ok(machines.get_opt(name).await?.map(|m| m.lifecycle().phase()))
}

/// Steps 2 to 5 of the walk-through: the joined mini PC is found on, labelled managed and kept
/// clear of the chart's Deployments; idle, CA has it powered off through the node agent; a pod
/// that does not fit on the server has CA power it on through the relay, and the pod runs there.
#[tokio::test]
async fn the_first_machine_walkthrough_powers_the_mini_pc_off_when_idle_and_on_for_a_pod()
-> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let Some(assets) = Assets::locate(Assets::WITH_CA)? else {
        return Ok(());
    };
    // No CRDs: the chart installs them.
    let cp =
        ControlPlane::start(&assets, &Options::default().with_scheduler().without_crds()).await?;
    let client = cp.client()?;
    let world = World::new(client.clone());

    // The cluster the walk-through starts from: a k3s server too small for the test's pod, and
    // (step 2) the mini PC joined with the adoptable label, on.
    world
        .node_up(&FakeNode::new("server-1").capacity("2", "4Gi"))
        .await?;
    world
        .node_up(&FakeNode::new("minipc-1").adoptable().capacity("8", "32Gi"))
        .await?;

    // Step 3: the values file and the commands, as written.
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("first-machine-values.yaml"),
        readme_block("# first-machine-values.yaml")?,
    )?;
    run_readme_commands(&cp, &helm, dir.path(), "helm install homelab")?;
    let release = Release::installed(&helm, &cp, "homelab", "homelab")?;
    // The pause before the next command, in which the new CRDs come to be served.
    cp.wait_established(&[
        "groups.infra.homecluster.dev",
        "nodes.infra.homecluster.dev",
    ])
    .await?;

    // Step 4: the Group and the Node CR, applied and inspected as written.
    std::fs::write(
        dir.path().join("first-machine.yaml"),
        readme_block("# first-machine.yaml")?,
    )?;
    let machines_sim = Machines::start(
        &world,
        MachinesConfig::new("homelab", Duration::from_secs(2))
            .hardware("minipc-1", "8", "32Gi")
            .on_at_start("minipc-1"),
    );
    let operator =
        ChartOperator::start(&cp, "homelab", &release.objects, "homelab-kubectl-homelab").await?;
    let log = operator.log.clone();
    let inspected = run_readme_commands(&cp, &helm, dir.path(), "first-machine.yaml")?;
    ensure!(inspected.contains("minipc-1"), "fsm inspect:\n{inspected}");
    let machines: Api<Machine> = Api::namespaced(client.clone(), "homelab");
    until("minipc-1 found on: Ready", &log, || async {
        Ok((phase_of(&machines, "minipc-1").await? == Some(Phase::Ready)).then_some(()))
    })
    .await?;

    // Kept off the machine the operator powers off: the Node is labelled managed, and both of
    // the chart's Deployments require Nodes without that label.
    let nodes: Api<Node> = Api::all(client.clone());
    until("minipc-1 labelled managed", &log, || async {
        Ok(nodes
            .get("minipc-1")
            .await?
            .labels()
            .get("infra.homecluster.dev/managed")
            .filter(|v| *v == "true")
            .map(|_| ()))
    })
    .await?;
    for deployment in [
        "homelab-kubectl-homelab",
        "homelab-kubectl-homelab-cluster-autoscaler",
    ] {
        let d = find(&release.objects, "Deployment", deployment)?;
        let required = &d.data["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
        ensure!(
            required.to_string().contains(
                &json!({"key": "infra.homecluster.dev/managed", "operator": "DoesNotExist"})
                    .to_string()
            ),
            "{deployment} may land on a managed Node: {required}"
        );
    }

    // Step 5: with nothing to run, CA has the mini PC powered off (drain, node agent, Node
    // gone NotReady and deleted).
    let ca = release
        .run_cluster_autoscaler(
            &cp,
            operator.grpc_port,
            &[
                "--scan-interval=2s",
                "--scale-down-unneeded-time=15s",
                "--scale-down-delay-after-add=15s",
                "--unremovable-node-recheck-timeout=15s",
                "--v=5",
            ],
        )
        .await?;
    until("minipc-1 powered off by CA", &log, || async {
        Ok((phase_of(&machines, "minipc-1").await? == Some(Phase::Off)).then_some(()))
    })
    .await?;
    ensure!(
        machines_sim.saw("minipc-1", &Happened::PowerJob("off".to_owned())),
        "powered off without the node agent"
    );
    ensure!(
        ca.calls().delete_nodes() >= 1,
        "CA never called DeleteNodes"
    );

    // A pod that does not fit on the server: CA asks for the mini PC, the relay Job "sends the
    // packet", it boots and the scheduler places the pod there.
    let apps = cp.namespace("apps").await?;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "build-0" },
        "spec": { "containers": [{
            "name": "c", "image": "example.org/build:1",
            "resources": { "requests": { "cpu": "3", "memory": "1Gi" } },
        }] },
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);
    pods.create(&PostParams::default(), &pod).await?;
    let node = until("build-0 scheduled", &log, || async {
        Ok(pods.get("build-0").await?.spec.and_then(|s| s.node_name))
    })
    .await?;
    assert_eq!(node, "minipc-1");
    ensure!(
        machines_sim.saw("minipc-1", &Happened::PowerJob("on".to_owned())),
        "powered on without the relay Job"
    );
    ensure!(
        ca.calls().increase_size() >= 1,
        "CA never called IncreaseSize"
    );
    ca.ensure_no_provider_errors(&[])?;
    Ok(())
}
