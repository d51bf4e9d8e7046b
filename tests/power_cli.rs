//! `kubectl homelab power on|off` as a process against a real control plane: it sets
//! `spec.powerState` by Node CR or Kubernetes node name, names close matches for unknown names,
//! refuses without a terminal to power off a node running pods (naming them) unless `--yes`,
//! and asks a Failed machine to retry. Also: `-l`, `--group`, `-A`, `--dry-run`, `-o`, the exit
//! codes, one name rule shared with `fsm inspect`, and completion from the cluster.

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
    /// The exit code (`kubectl homelab --help` documents them).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `kubectl-homelab power ARGS -n NS` with stdin not a terminal.
async fn power(cp: &ControlPlane, ns: &str, args: &[&str]) -> anyhow::Result<Run> {
    let mut all = vec!["power"];
    all.extend(args);
    all.extend(["-n", ns]);
    homelab(cp, &all).await
}

/// Runs `kubectl-homelab ARGS --kubeconfig <the control plane's>` with stdin not a terminal.
async fn homelab(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<Run> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .args(args)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .await
        .context("running kubectl-homelab")?;
    Ok(Run {
        success: out.status.success(),
        code: out.status.code(),
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
    assert_eq!(r.code, Some(3), "not found: {}", r.stderr);
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
    assert_eq!(r.code, Some(4), "refused: {}", r.stdout);
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
    assert_eq!(out.status.code(), Some(6), "failed: {stderr}");
    assert!(
        stderr.contains("bad: no Ready Node by the boot deadline"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn wait_gives_up_after_the_timeout_with_its_own_exit_code() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("power-timeout").await?;
    create_machine(cp, &ns, "slow", &cp.unique_name("slow"), PowerState::Off).await?;
    set_phase(cp, &ns, "slow", "Off", None).await?;
    // No operator runs: the phase never moves.
    let r = power(cp, &ns, &["on", "slow", "--wait", "--timeout", "2s"]).await?;
    assert_eq!(r.code, Some(5), "timed out: {}", r.stderr);
    assert!(r.stderr.contains("gave up after"), "{}", r.stderr);
    Ok(())
}

/// Creates Node CR `name` in `ns` with `labels` (`group` among them for a group), powered off.
async fn create_labelled(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<()> {
    let pod = job("busybox", &["true"]);
    let mut b = Machine::test(name)
        .namespace(ns)
        .desired(PowerState::Off)
        .node_name(&cp.unique_name(name))
        .legacy_jobs(pod.clone(), pod);
    for (k, v) in labels {
        b = b.label(k, v);
    }
    Api::<Machine>::namespaced(cp.client()?, ns)
        .create(&PostParams::default(), &b.build())
        .await
        .with_context(|| format!("creating Node CR {name}"))?;
    Ok(())
}

async fn desired(cp: &ControlPlane, ns: &str, name: &str) -> anyhow::Result<PowerState> {
    Ok(get(cp, ns, name).await?.spec.power_state)
}

/// `-l` and `--group` select by the Node CRs' labels, `-A` across namespaces, and `-o` prints
/// the machines as `fsm inspect` does; `--dry-run` (client or server) changes nothing.
#[tokio::test]
async fn selectors_groups_and_all_namespaces_pick_the_machines() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns1 = cp.namespace("power-sel").await?;
    let ns2 = cp.namespace("power-sel").await?;
    // Unique across the shared control plane, so -A sees only this test's machines.
    let group = cp.unique_name("grp");
    let rack = cp.unique_name("rack");
    create_labelled(cp, &ns1, "a", &[("group", &group), ("rack", &rack)]).await?;
    create_labelled(cp, &ns1, "b", &[("group", &group)]).await?;
    create_labelled(cp, &ns1, "c", &[("group", "other"), ("rack", &rack)]).await?;
    create_labelled(cp, &ns2, "d", &[("group", &group)]).await?;

    // Client dry run: the table of what would change, nothing changed.
    let r = power(
        cp,
        &ns1,
        &[
            "on",
            "-l",
            &format!("rack={rack}"),
            "--dry-run",
            "-o",
            "json",
        ],
    )
    .await?;
    assert!(r.success, "{}", r.stderr);
    let v: Vec<serde_json::Value> = serde_json::from_str(&r.stdout)?;
    let names: Vec<&str> = v.iter().filter_map(|m| m["name"].as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    assert!(v.iter().all(|m| m["desired"] == "on"), "{v:?}");
    assert_eq!(desired(cp, &ns1, "a").await?, PowerState::Off);

    // Server dry run: the API server sees the patch, stores nothing.
    let r = power(cp, &ns1, &["on", "c", "--dry-run=server"]).await?;
    assert!(r.success, "{}", r.stderr);
    assert_eq!(r.stdout, "c: powerState on (server dry run)\n");
    assert_eq!(desired(cp, &ns1, "c").await?, PowerState::Off);

    let r = power(cp, &ns1, &["on", "--group", &group, "-o", "name"]).await?;
    assert!(r.success, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "node.infra.homecluster.dev/a\nnode.infra.homecluster.dev/b\n"
    );
    for (name, want) in [
        ("a", PowerState::On),
        ("b", PowerState::On),
        ("c", PowerState::Off),
    ] {
        assert_eq!(desired(cp, &ns1, name).await?, want, "{name}");
    }
    assert_eq!(desired(cp, &ns2, "d").await?, PowerState::Off);

    // -A: the group's machines in every namespace, the table with a NAMESPACE column.
    let r = homelab(cp, &["power", "on", "--group", &group, "-A", "-o", "wide"]).await?;
    assert!(r.success, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("NAMESPACE ") && lines[0].contains("PHASE"),
        "{}",
        r.stdout
    );
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&ns2) && l.contains(" d ")),
        "{}",
        r.stdout
    );
    assert_eq!(desired(cp, &ns2, "d").await?, PowerState::On);
    Ok(())
}

#[tokio::test]
async fn empty_selections_say_so_on_stderr_and_unknown_groups_are_not_found() -> anyhow::Result<()>
{
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("power-empty").await?;
    let group = cp.unique_name("nucs");
    create_labelled(cp, &ns, "m", &[("group", &group)]).await?;

    let r = power(cp, &ns, &["on", "-l", "rack=none", "-o", "name"]).await?;
    assert!(r.success, "{}", r.stderr);
    assert_eq!(r.stdout, "", "stdout stays parseable");
    assert!(
        r.stderr
            .contains(&format!("No resources found in {ns} namespace.")),
        "{}",
        r.stderr
    );

    let r = power(cp, &ns, &["on", "-l", "rack=none", "-o", "json"]).await?;
    assert!(r.success, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "[]");

    let typo = format!("{group}x");
    let r = power(cp, &ns, &["on", "--group", &typo]).await?;
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("did you mean {group}?")),
        "{}",
        r.stderr
    );
    assert_eq!(desired(cp, &ns, "m").await?, PowerState::Off);
    Ok(())
}

/// Both commands find the same Node CR by its own name and by the Kubernetes node name it
/// registered as (`status.node.name`, no `spec.kubernetesNodeName`); a name two machines
/// answer to is refused with the usage exit code.
#[tokio::test]
async fn power_and_fsm_inspect_find_a_machine_by_the_same_names() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("power-names").await?;
    let node = cp.unique_name("registered");
    let pod = job("busybox", &["true"]);
    let m = Machine::test("cr-name")
        .namespace(&ns)
        .desired(PowerState::Off)
        .legacy_jobs(pod.clone(), pod)
        .build();
    let api = Api::<Machine>::namespaced(cp.client()?, &ns);
    api.create(&PostParams::default(), &m).await?;
    let status = json!({ "status": {
        "node": kubectl_homelab::testing::seen_node(&node),
    }});
    api.patch_status("cr-name", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("recording the registered node")?;
    create_machine(cp, &ns, "twin-1", "shared-host", PowerState::Off).await?;
    create_machine(cp, &ns, "twin-2", "shared-host", PowerState::Off).await?;

    for name in ["cr-name", node.as_str()] {
        let r = homelab(cp, &["fsm", "inspect", "-n", &ns, name, "-o", "name"]).await?;
        assert_eq!(
            r.stdout, "node.infra.homecluster.dev/cr-name\n",
            "fsm inspect {name}: {}",
            r.stderr
        );
        let r = power(cp, &ns, &["on", name, "--dry-run", "-o", "name"]).await?;
        assert_eq!(
            r.stdout, "node.infra.homecluster.dev/cr-name\n",
            "power on {name}: {}",
            r.stderr
        );
    }
    let r = power(cp, &ns, &["on", &node]).await?;
    assert!(r.success, "{}", r.stderr);
    assert_eq!(desired(cp, &ns, "cr-name").await?, PowerState::On);

    for args in [
        vec!["power", "on", "shared-host", "-n", &ns],
        vec!["fsm", "inspect", "shared-host", "-n", &ns],
    ] {
        let r = homelab(cp, &args).await?;
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("twin-1, twin-2"), "{}", r.stderr);
    }
    let r = homelab(cp, &["fsm", "inspect", "-n", &ns, "cr-nam"]).await?;
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("did you mean cr-name?"), "{}", r.stderr);
    Ok(())
}

/// Completion candidates from the cluster the line names; the protocol's `:4` (no files) ends
/// them. An unreachable cluster offers nothing and prints no error.
#[tokio::test]
async fn completion_offers_machines_groups_and_namespaces_from_the_cluster() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("power-complete").await?;
    let group = cp.unique_name("compgrp");
    create_labelled(cp, &ns, "alpha", &[("group", &group)]).await?;
    create_labelled(cp, &ns, "beta", &[]).await?;
    let kubeconfig = cp.kubeconfig().to_string_lossy().into_owned();
    let complete = |words: Vec<&str>| {
        let mut args = vec!["completion", "--complete", "--"];
        args.extend(words);
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
    };
    let names = |out: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
            .collect()
    };

    let out = complete(vec![
        "power",
        "on",
        "--kubeconfig",
        &kubeconfig,
        "-n",
        &ns,
        "",
    ])?;
    assert_eq!(names(&out), ["alpha", "beta", ":4"], "{out:?}");
    let out = complete(vec![
        "fsm",
        "inspect",
        "--kubeconfig",
        &kubeconfig,
        "-n",
        &ns,
        "al",
    ])?;
    assert_eq!(names(&out), ["alpha", ":4"], "{out:?}");
    let out = complete(vec![
        "power",
        "off",
        "--kubeconfig",
        &kubeconfig,
        "-n",
        &ns,
        "--group",
        "",
    ])?;
    assert_eq!(names(&out), [group.as_str(), ":4"], "{out:?}");
    let out = complete(vec![
        "fsm",
        "inspect",
        "--kubeconfig",
        &kubeconfig,
        "-n",
        "power-compl",
    ])?;
    assert!(names(&out).contains(&ns), "{out:?}");

    let dir = tempfile::tempdir()?;
    let dead = dir.path().join("kubeconfig");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        &dead,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:{closed}'}}\n\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: dead\n  context: {{cluster: c, user: u}}\n\
             current-context: dead\n"
        ),
    )?;
    let dead = dead.to_string_lossy().into_owned();
    let out = complete(vec!["power", "on", "--kubeconfig", &dead, ""])?;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), ":4\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no error output");
    Ok(())
}

/// The API server's refusals are "refused" (exit code 4): a user who may read the Node CRs but
/// not patch them, and `fsm inspect` for a user who may not even list them.
#[tokio::test]
async fn a_change_the_api_server_forbids_exits_as_refused() -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::PolicyRule;
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("power-forbidden").await?;
    create_machine(
        cp,
        &ns,
        "locked",
        &cp.unique_name("locked"),
        PowerState::Off,
    )
    .await?;
    let reader = cp.user(&cp.unique_name("reader"), None).await?;
    cp.grant(
        &reader,
        Some(&ns),
        vec![PolicyRule {
            api_groups: Some(vec!["infra.homecluster.dev".to_owned()]),
            resources: Some(vec!["nodes".to_owned()]),
            verbs: vec!["list".to_owned(), "get".to_owned()],
            ..PolicyRule::default()
        }],
    )
    .await?;
    let nobody = cp.user(&cp.unique_name("nobody"), None).await?;
    let run = |who: &support::Identity, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
            .args(args)
            .arg("--kubeconfig")
            .arg(who.kubeconfig())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
    };
    let out = run(&reader, &["power", "on", "locked", "-n", &ns])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("403 Forbidden"), "{stderr}");
    assert_eq!(desired(cp, &ns, "locked").await?, PowerState::Off);

    let out = run(&nobody, &["fsm", "inspect", "-n", &ns])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("not allowed to list"), "{stderr}");
    Ok(())
}

// --- `kubectl homelab maintenance`.

/// A pod labelled `app=<app>`, as a ReplicaSet's.
fn app_pod(name: &str, app: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": app } },
        "spec": { "containers": [{ "name": "c", "image": "busybox" }] },
    }))?)
}

/// A budget over `app=<app>` with `allowed` disruptions allowed; its status is written as the
/// disruption controller would (the Eviction API reads it).
async fn budget(cp: &ControlPlane, ns: &str, app: &str, allowed: i32) -> anyhow::Result<()> {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let api: Api<PodDisruptionBudget> = Api::namespaced(cp.client()?, ns);
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": { "name": app },
        "spec": { "maxUnavailable": 0, "selector": { "matchLabels": { "app": app } } },
    }))?;
    let created = api.create(&PostParams::default(), &pdb).await?;
    let status = json!({ "status": {
        "observedGeneration": created.metadata.generation,
        "currentHealthy": 1, "desiredHealthy": 1 - allowed, "expectedPods": 1,
        "disruptionsAllowed": allowed,
    }});
    api.patch_status(app, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

fn unschedulable(n: &k8s_openapi::api::core::v1::Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// `maintenance start` refuses without a terminal to drain a node running pods unless `--yes`;
/// its drain is the operator's (the node is cordoned, a PodDisruptionBudget that allows no
/// disruption holds the pod until `--drain-timeout`, exit code 5, the maintenance stays
/// recorded); run again once the budget is gone, it drains the node and applies `--power off`.
/// `maintenance end` clears `spec.maintenance` and uncordons the node.
#[tokio::test]
async fn maintenance_start_drains_honouring_budgets_then_powers_off_and_end_uncordons()
-> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use kubectl_homelab::operator::api::MaintenancePower;
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("maint").await?;
    let node = cp.unique_name("disk");
    create_machine(cp, &ns, "nuc", &node, PowerState::On).await?;
    let world = World::new(cp.client()?);
    world.node_up(&FakeNode::new(&node)).await?;
    world
        .create_bound_pod(&ns, app_pod("web", "web")?, &node)
        .await?;
    // Running and Ready: a pending or unready pod may be evicted whatever its budget says.
    world.run_pods(&node).await?;
    budget(cp, &ns, "web", 0).await?;
    // The kubelet's part: evicted pods finish terminating.
    let finisher = {
        let world = World::new(cp.client()?);
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                let _ = world.finish_terminating_pods(&node).await;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        })
    };
    let nodes: Api<Node> = Api::all(cp.client()?);

    let start = ["maintenance", "start", "nuc", "-n", &ns, "--power", "off"];
    let r = homelab(cp, &[&start[..], &["--reason", "swap a disk"]].concat()).await?;
    assert_eq!(r.code, Some(4), "refused without --yes: {}", r.stderr);
    assert!(r.stderr.contains(&format!("{ns}/web")), "{}", r.stderr);
    assert!(get(cp, &ns, "nuc").await?.spec.maintenance.is_none());

    let r = homelab(
        cp,
        &[
            &start[..],
            &["--reason", "swap a disk", "--yes", "--drain-timeout", "3s"],
        ]
        .concat(),
    )
    .await?;
    assert_eq!(r.code, Some(5), "the budget holds the pod: {}", r.stderr);
    let m = get(cp, &ns, "nuc").await?;
    let recorded = m.spec.maintenance.clone().context("maintenance recorded")?;
    assert_eq!(recorded.reason.as_deref(), Some("swap a disk"));
    assert_eq!(recorded.power, Some(MaintenancePower::Off));
    assert!(
        recorded.since.is_some() && recorded.by.is_some(),
        "{recorded:?}"
    );
    assert_eq!(
        m.spec.power_state,
        PowerState::On,
        "not off before the drain"
    );
    assert!(unschedulable(&nodes.get(&node).await?));
    assert_eq!(world.pods_on(&node).await?.len(), 1);

    Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(cp.client()?, &ns)
        .delete("web", &Default::default())
        .await?;
    let r = homelab(cp, &[&start[..], &["--yes", "--until", "2h"]].concat()).await?;
    assert!(r.success, "{}", r.stderr);
    assert!(r.stdout.contains("MAINTENANCE"), "{}", r.stdout);
    let m = get(cp, &ns, "nuc").await?;
    assert_eq!(m.spec.power_state, PowerState::Off);
    let again = m.spec.maintenance.clone().context("maintenance recorded")?;
    assert_eq!(again.since, recorded.since, "the start is kept");
    assert!(again.until.is_some());
    assert!(world.pods_on(&node).await?.is_empty());

    let r = homelab(cp, &["maintenance", "end", &node, "-n", &ns]).await?;
    assert!(r.success, "{}", r.stderr);
    assert!(get(cp, &ns, "nuc").await?.spec.maintenance.is_none());
    assert!(!unschedulable(&nodes.get(&node).await?));
    finisher.abort();
    Ok(())
}

/// `maintenance pause GROUP` sets `spec.paused` and records who paused it; `resume` clears both.
#[tokio::test]
async fn maintenance_pause_and_resume_set_spec_paused_and_who() -> anyhow::Result<()> {
    use kube::ResourceExt as _;
    use kubectl_homelab::operator::api::Group;
    use kubectl_homelab::operator::policy::maintenance::PAUSED_BY_ANNOTATION;
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("maint-pause").await?;
    let groups: Api<Group> = Api::namespaced(cp.client()?, &ns);
    groups
        .create(
            &PostParams::default(),
            &Group::test("nucs").namespace(&ns).build(),
        )
        .await?;
    let r = homelab(cp, &["maintenance", "pause", "nucs", "-n", &ns]).await?;
    assert!(r.success, "{}", r.stderr);
    let g = groups.get("nucs").await?;
    assert_eq!(g.spec.paused, Some(true));
    assert!(g.annotations().contains_key(PAUSED_BY_ANNOTATION), "{g:?}");
    let r = homelab(cp, &["maintenance", "resume", "nucs", "-n", &ns]).await?;
    assert!(r.success, "{}", r.stderr);
    let g = groups.get("nucs").await?;
    assert_eq!(g.spec.paused, None);
    assert!(!g.annotations().contains_key(PAUSED_BY_ANNOTATION));
    let r = homelab(cp, &["maintenance", "pause", "nope", "-n", &ns]).await?;
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    Ok(())
}
