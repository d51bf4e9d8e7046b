//! `kubectl homelab power on|off` as a process against a real control plane: it sets
//! `spec.powerState` by Node CR or Kubernetes node name, names close matches for unknown names,
//! refuses without a terminal to power off a node running pods (naming them) unless `--yes`,
//! and asks a Failed machine to retry.

mod support;

use std::process::Stdio;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubectl_homelab::operator::api::Machine;
use kubectl_homelab::operator::api::RETRY_ANNOTATION;
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::testing::job;
use serde_json::json;
use support::{ControlPlane, FakeNode, World};

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `kubectl-homelab power ARGS -n NS` with stdin not a terminal.
async fn power(cp: &ControlPlane, ns: &str, args: &[&str]) -> anyhow::Result<Run> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .arg("power")
        .args(args)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["-n", ns])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running kubectl-homelab power")?;
    Ok(Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Creates Node CR `name` in Group `g`, in the predecessor's style (startup/shutdown pod specs),
/// registering as Kubernetes node `node`.
async fn create_machine(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    node: &str,
    power: PowerState,
) -> anyhow::Result<()> {
    let pod = job("busybox", &["true"]);
    let m = Machine::test(name)
        .namespace(ns)
        .group("g")
        .desired(power)
        .node_name(node)
        .legacy_jobs(pod.clone(), pod)
        .build();
    Api::<Machine>::namespaced(cp.client()?, ns)
        .create(&PostParams::default(), &m)
        .await
        .with_context(|| format!("creating Node CR {name}"))?;
    Ok(())
}

async fn get(cp: &ControlPlane, ns: &str, name: &str) -> anyhow::Result<Machine> {
    Api::<Machine>::namespaced(cp.client()?, ns)
        .get(name)
        .await
        .with_context(|| format!("reading Node CR {name}"))
}

fn pod(name: &str, daemon_set: bool) -> anyhow::Result<Pod> {
    let mut v = json!({
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "c", "image": "busybox" }] },
    });
    if daemon_set {
        v["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agents",
            "uid": "00000000-0000-0000-0000-000000000001", "controller": true,
        }]);
    }
    Ok(serde_json::from_value(v)?)
}

#[tokio::test]
async fn on_and_off_set_desired_power_by_node_cr_or_kubernetes_node_name() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("power").await?;
    let node = cp.unique_name("nuc");
    create_machine(cp, &ns, "worker-1", &node, PowerState::Off).await?;

    let r = power(cp, &ns, &["on", &node]).await?;
    assert!(r.success, "{}", r.stderr);
    assert!(r.stdout.contains("worker-1"), "{}", r.stdout);
    assert_eq!(
        get(cp, &ns, "worker-1").await?.spec.power_state,
        PowerState::On
    );

    // No Node object and so no pods: nothing to confirm.
    let r = power(cp, &ns, &["off", "worker-1"]).await?;
    assert!(r.success, "{}", r.stderr);
    assert_eq!(
        get(cp, &ns, "worker-1").await?.spec.power_state,
        PowerState::Off
    );
    Ok(())
}

#[tokio::test]
async fn unknown_names_fail_listing_close_matches() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("power-unknown").await?;
    create_machine(cp, &ns, "worker-1", &cp.unique_name("a"), PowerState::Off).await?;
    create_machine(cp, &ns, "worker-2", &cp.unique_name("b"), PowerState::Off).await?;
    create_machine(cp, &ns, "gpu-box", &cp.unique_name("c"), PowerState::Off).await?;

    let r = power(cp, &ns, &["on", "worker-3"]).await?;
    assert!(!r.success);
    assert!(
        r.stderr.contains("did you mean worker-1, worker-2?"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("gpu-box"), "{}", r.stderr);
    for name in ["worker-1", "worker-2", "gpu-box"] {
        assert_eq!(get(cp, &ns, name).await?.spec.power_state, PowerState::Off);
    }
    Ok(())
}

#[tokio::test]
async fn off_without_a_terminal_refuses_a_node_with_pods_naming_them_and_yes_proceeds()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("power-pods").await?;
    let node = cp.unique_name("busy");
    create_machine(cp, &ns, "busy", &node, PowerState::On).await?;
    let world = World::new(cp.client()?);
    world.node_up(&FakeNode::new(&node)).await?;
    world
        .create_bound_pod(&ns, pod("web", false)?, &node)
        .await?;
    world
        .create_bound_pod(&ns, pod("agent", true)?, &node)
        .await?;

    let r = power(cp, &ns, &["off", "busy"]).await?;
    assert!(!r.success, "{}", r.stdout);
    assert!(r.stderr.contains(&format!("{ns}/web")), "{}", r.stderr);
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("agent"),
        "DaemonSet pods are not evicted: {}",
        r.stderr
    );
    assert_eq!(get(cp, &ns, "busy").await?.spec.power_state, PowerState::On);

    let r = power(cp, &ns, &["off", "busy", "--yes"]).await?;
    assert!(r.success, "{}", r.stderr);
    assert_eq!(
        get(cp, &ns, "busy").await?.spec.power_state,
        PowerState::Off
    );
    Ok(())
}

#[tokio::test]
async fn on_for_a_failed_machine_requests_a_retry() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("power-retry").await?;
    create_machine(cp, &ns, "flaky", &cp.unique_name("flaky"), PowerState::On).await?;
    let status = json!({ "status": {
        "phase": "Failed",
        "phaseSince": "2026-01-01T00:00:00Z",
        "lastError": "power Job failed 5 times",
    }});
    Api::<Machine>::namespaced(cp.client()?, &ns)
        .patch_status("flaky", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("marking flaky Failed")?;

    let r = power(cp, &ns, &["on", "flaky"]).await?;
    assert!(r.success, "{}", r.stderr);
    assert!(r.stdout.contains("retry requested"), "{}", r.stdout);
    let m = get(cp, &ns, "flaky").await?;
    let at: Option<jiff::Timestamp> = m
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RETRY_ANNOTATION))
        .and_then(|v| v.parse().ok());
    assert!(
        at.is_some_and(|at| at
            > "2026-01-01T00:00:00Z"
                .parse()
                .unwrap_or(jiff::Timestamp::MAX)),
        "{:?}",
        m.metadata.annotations
    );
    Ok(())
}

/// Plays the operator's part: writes the lifecycle phase (and error) into status.
async fn set_phase(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    phase: &str,
    error: Option<&str>,
) -> anyhow::Result<()> {
    let status = json!({ "status": {
        "phase": phase,
        "phaseSince": jiff::Timestamp::now(),
        "lastError": error,
    }});
    Api::<Machine>::namespaced(cp.client()?, ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("setting {name} to phase {phase}"))?;
    Ok(())
}

/// Waits until the CLI has written the desired power (it lists, then patches, then watches).
async fn until_desired(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    want: PowerState,
) -> anyhow::Result<()> {
    for _ in 0..300 {
        if get(cp, ns, name).await?.spec.power_state == want {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("{name} never got spec.powerState {want:?}")
}

fn spawn_power(
    cp: &ControlPlane,
    ns: &str,
    args: &[&str],
) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .arg("power")
        .args(args)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["-n", ns])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting kubectl-homelab power --wait")
}

#[tokio::test]
async fn wait_follows_the_phase_until_ready_or_failed() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("power-wait").await?;
    create_machine(cp, &ns, "good", &cp.unique_name("good"), PowerState::Off).await?;
    create_machine(cp, &ns, "bad", &cp.unique_name("bad"), PowerState::Off).await?;
    set_phase(cp, &ns, "good", "Off", None).await?;
    set_phase(cp, &ns, "bad", "Off", None).await?;

    let child = spawn_power(cp, &ns, &["on", "good", "--wait", "--timeout", "2m"])?;
    until_desired(cp, &ns, "good", PowerState::On).await?;
    set_phase(cp, &ns, "good", "PoweringOn", None).await?;
    set_phase(cp, &ns, "good", "Ready", None).await?;
    let out = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("good: Ready"), "{stderr}");

    let child = spawn_power(cp, &ns, &["on", "bad", "--wait", "--timeout", "2m"])?;
    until_desired(cp, &ns, "bad", PowerState::On).await?;
    set_phase(
        cp,
        &ns,
        "bad",
        "Failed",
        Some("no Ready Node by the boot deadline"),
    )
    .await?;
    let out = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad: no Ready Node by the boot deadline"),
        "{stderr}"
    );
    Ok(())
}
