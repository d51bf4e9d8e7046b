//! The harness itself and the first tests against a real control plane (etcd + kube-apiserver
//! built by tests/k8s-bins/build.sh).

mod support;

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, NodeStatus, Pod};
use k8s_openapi::api::rbac::v1::PolicyRule;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kubectl_homelab::operator::api::{Direction, Group, Machine, PowerDriver, cel};
use support::apply::{apply_file, apply_object, parse_multi_doc};
use support::{FakeNode, JobOutcome, World};

/// The example manifests shipped in examples/.
fn examples() -> anyhow::Result<Vec<std::path::PathBuf>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no examples in {}", dir.display());
    Ok(files)
}

#[tokio::test]
async fn crds_install_and_are_established() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let crds: Api<CustomResourceDefinition> = Api::all(cp.client()?);
    let ours = support::our_crds();
    assert_eq!(ours.len(), 2, "Group and Node");
    for crd in &ours {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let live = crds.get(&name).await?;
        let conditions = live.status.and_then(|s| s.conditions).unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            let status = conditions
                .iter()
                .find(|c| c.type_ == wanted)
                .map(|c| c.status.as_str());
            assert_eq!(status, Some("True"), "CRD {name} condition {wanted}");
        }
    }
    // Both kinds are served and the typed clients can list them.
    let ns = cp.namespace("crds").await?;
    assert!(
        Api::<Group>::namespaced(cp.client()?, &ns)
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    assert!(
        Api::<Machine>::namespaced(cp.client()?, &ns)
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn crd_gen_output_is_what_the_harness_installs_and_applies_strictly() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let (ok, stdout, stderr) = kubectl_homelab(cp.kubeconfig(), &["crd", "gen"]).await?;
    assert!(ok, "crd gen failed: {stderr}");
    let printed: Vec<CustomResourceDefinition> = parse_multi_doc("crd gen", &stdout)?
        .into_iter()
        .map(|o| serde_json::to_value(o).and_then(serde_json::from_value))
        .collect::<Result<_, _>>()?;
    let names = |crds: &[CustomResourceDefinition]| -> Vec<String> {
        crds.iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect()
    };
    assert_eq!(names(&printed), names(&support::our_crds()));
    // What `kubectl apply -f -` would send passes the API server's strict validation (dry run:
    // the shared plane keeps the CRDs the harness installed).
    let api: Api<CustomResourceDefinition> = Api::all(cp.client()?);
    let pp = kube::api::PatchParams::apply("crd-gen-test")
        .force()
        .validation_strict()
        .dry_run();
    for crd in &printed {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &pp, &kube::api::Patch::Apply(crd)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn every_example_applies_and_reads_back_typed() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let client = cp.client()?;
    for file in examples()? {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("example");
        let ns = cp.namespace(stem).await?;
        let applied = apply_file(&client, &ns, &file, true).await?;
        assert!(!applied.is_empty(), "{} has no objects", file.display());
        // What the API server stored deserializes into our types (no field our structs reject).
        let groups = Api::<Group>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await?;
        let machines = Api::<Machine>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await?;
        let count = |kind: &str| {
            applied
                .iter()
                .filter(|o| {
                    o.types.as_ref().is_some_and(|t| {
                        t.kind == kind && t.api_version.starts_with("infra.homecluster.dev/")
                    })
                })
                .count()
        };
        assert_eq!(groups.items.len(), count("Group"), "{}", file.display());
        assert_eq!(machines.items.len(), count("Node"), "{}", file.display());
    }
    Ok(())
}

#[tokio::test]
async fn predecessor_shaped_yaml_applies_unchanged_with_strict_validation() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let client = cp.client()?;
    let ns = cp.namespace("compat").await?;
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/predecessor-compat.yaml");
    let text = std::fs::read_to_string(&file)?;
    let objects = parse_multi_doc("predecessor-compat.yaml", &text)?;
    let kinds: Vec<_> = objects
        .iter()
        .filter_map(|o| o.types.as_ref().map(|t| t.kind.as_str()))
        .collect();
    assert_eq!(kinds, ["Group", "Node"]);
    for obj in &objects {
        // Strict: an unknown field would be an error, not silently pruned.
        let stored = apply_object(&client, &ns, obj, true).await?;
        // Nothing the predecessor wrote was pruned or changed.
        let sent = serde_json::to_value(&obj.data)?;
        let kept = serde_json::to_value(&stored.data)?;
        assert_subset(&sent, &kept, &format!("{:?}", obj.metadata.name))?;
    }
    Ok(())
}

/// Every value in `sent` is in `stored` (which may add defaults).
fn assert_subset(
    sent: &serde_json::Value,
    stored: &serde_json::Value,
    at: &str,
) -> anyhow::Result<()> {
    match (sent, stored) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in a {
                let Some(w) = b.get(k) else {
                    anyhow::bail!("{at}.{k} was dropped by the API server");
                };
                assert_subset(v, w, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        _ => {
            anyhow::ensure!(sent == stored, "{at}: sent {sent}, stored {stored}");
            Ok(())
        }
    }
}

/// Runs the kubectl-homelab binary with `KUBECONFIG`; returns (success, stdout, stderr).
async fn kubectl_homelab(
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .kill_on_drop(true)
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn fsm_inspect_lists_the_example_machines_from_the_live_api() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let client = cp.client()?;
    let ns = cp.namespace("inspect").await?;
    let mut names = Vec::new();
    for file in examples()? {
        for obj in apply_file(&client, &ns, &file, true).await? {
            let ours = obj.types.as_ref().is_some_and(|t| {
                t.kind == "Node" && t.api_version.starts_with("infra.homecluster.dev/")
            });
            if ours {
                names.push(obj.metadata.name.clone().unwrap_or_default());
            }
        }
    }
    assert!(names.len() >= 3, "examples define machines: {names:?}");

    // As admin, and as a user that may only read our Node CRs in this namespace (so inspect
    // needs no more RBAC than that).
    let reader = cp.user("inspector", None).await?;
    let rules = vec![PolicyRule {
        api_groups: Some(vec!["infra.homecluster.dev".into()]),
        resources: Some(vec!["nodes".into()]),
        verbs: vec!["get".into(), "list".into()],
        ..PolicyRule::default()
    }];
    cp.grant(&reader, Some(&ns), rules).await?;
    for kubeconfig in [cp.kubeconfig(), reader.kubeconfig()] {
        let (ok, stdout, stderr) =
            kubectl_homelab(kubeconfig, &["fsm", "inspect", "-n", &ns]).await?;
        assert!(
            ok,
            "fsm inspect failed with {}:\n{stderr}",
            kubeconfig.display()
        );
        for name in &names {
            assert!(
                stdout.contains(name.as_str()),
                "{name} missing from:\n{stdout}"
            );
        }
    }
    // Another namespace has none of them.
    let empty = cp.namespace("inspect-empty").await?;
    let (ok, stdout, stderr) =
        kubectl_homelab(cp.kubeconfig(), &["fsm", "inspect", "-n", &empty]).await?;
    assert!(ok, "{stderr}");
    for name in &names {
        assert!(
            !stdout.contains(name.as_str()),
            "{name} listed in an empty namespace:\n{stdout}"
        );
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct CelCase {
    name: String,
    check: String,
    message: String,
    object: serde_json::Value,
}

#[tokio::test]
async fn every_validation_rule_rejects_its_bad_object_with_its_message() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let client = cp.client()?;
    let ns = cp.namespace("cel").await?;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cel_cases.yaml");
    let cases: Vec<CelCase> = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    assert!(
        cases.iter().any(|c| c.check == "cel"),
        "no CEL cases in {}",
        path.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let obj = serde_json::from_value(case.object.clone())?;
        match apply_object(&client, &ns, &obj, true).await {
            Ok(_) => failures.push(format!("{}: accepted", case.name)),
            Err(e) => match e.downcast_ref::<kube::Error>() {
                Some(kube::Error::Api(status)) if status.code == 422 => {
                    if !status.message.contains(&case.message) {
                        failures.push(format!(
                            "{} ({}): message {:?} does not contain {:?}",
                            case.name, case.check, status.message, case.message
                        ));
                    }
                }
                _ => failures.push(format!("{}: unexpected error {e:#}", case.name)),
            },
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn simulated_kubelet_registers_a_ready_node_and_stops() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let world = World::new(cp.client()?);
    let name = cp.unique_name("machine-a");
    let node = FakeNode::new(&name)
        .provider_id(&format!("homelab://group-a/{name}"))
        .label("homelab.example/group", "group-a")
        .capacity("2", "4Gi");
    world.node_up(&node).await?;
    let nodes: Api<Node> = Api::all(cp.client()?);
    let got = nodes.get(&name).await?;
    let provider_id = got.spec.as_ref().and_then(|s| s.provider_id.clone());
    assert_eq!(provider_id, Some(format!("homelab://group-a/{name}")));
    let labels = got.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("homelab.example/group").map(String::as_str),
        Some("group-a")
    );
    let allocatable = got.status.as_ref().and_then(|s| s.allocatable.clone());
    assert_eq!(
        allocatable
            .and_then(|a| a.get("memory").cloned())
            .map(|q| q.0),
        Some("4Gi".into())
    );
    assert_eq!(ready(&got.status), Some("True"));
    // The not-ready taint the apiserver's admission adds is gone, as the node-lifecycle
    // controller would have removed it.
    assert_eq!(taint_keys(&got), Vec::<String>::new());
    let first_transition = ready_transition(&got.status);

    // A heartbeat keeps the transition time; NotReady changes it.
    let beat = world.node_ready(&name, true).await?;
    assert_eq!(ready_transition(&beat.status), first_transition);
    let down = world.node_ready(&name, false).await?;
    assert_eq!(ready(&down.status), Some("Unknown"));
    assert_eq!(taint_keys(&down), vec!["node.kubernetes.io/unreachable"; 2]);
    assert_eq!(ready(&nodes.get(&name).await?.status), Some("Unknown"));

    world.node_delete(&name).await?;
    assert!(nodes.get_opt(&name).await?.is_none());
    world.node_delete(&name).await?; // already gone: fine
    Ok(())
}

#[tokio::test]
async fn simulated_job_runner_completes_and_fails_jobs() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("jobs").await?;
    let jobs: Api<Job> = Api::namespaced(cp.client()?, &ns);
    let world = World::new(cp.client()?);
    for name in ["power-on", "power-off", "never-started"] {
        jobs.create(&PostParams::default(), &job(name)?).await?;
    }

    world.start_job(&ns, "power-on").await?;
    let done = world.complete_job(&ns, "power-on").await?;
    let status = done.status.clone().unwrap_or_default();
    assert_eq!(status.succeeded, Some(1));
    assert!(status.completion_time.is_some());
    assert_eq!(
        condition(&jobs.get("power-on").await?, "Complete"),
        Some("True")
    );

    world.start_job(&ns, "power-off").await?;
    world
        .fail_job(&ns, "power-off", "BMC did not answer")
        .await?;
    let failed = jobs.get("power-off").await?;
    assert_eq!(condition(&failed, "Failed"), Some("True"));
    assert_eq!(failed.status.and_then(|s| s.failed), Some(1));

    // Finishing a Job nobody started also passes the apiserver's validation.
    world.complete_job(&ns, "never-started").await?;
    assert_eq!(
        condition(&jobs.get("never-started").await?, "Complete"),
        Some("True")
    );
    Ok(())
}

#[tokio::test]
async fn background_job_runner_plays_a_power_cycle() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("runner").await?;
    let machine = cp.unique_name("nuc");
    let world = World::new(cp.client()?);
    let booter = world.clone();
    let node = FakeNode::new(&machine).provider_id(&format!("homelab://{ns}/{machine}"));
    let _runner = world.spawn_job_runner(
        &ns,
        Duration::from_millis(300),
        |job: &Job| match job.metadata.name.as_deref() {
            Some(n) if n.contains("-on-") => JobOutcome::Succeed,
            Some(n) if n.contains("-hang-") => JobOutcome::Hang,
            _ => JobOutcome::Fail("BMC unreachable".into()),
        },
        move |_job, outcome| {
            // A successful power-on boots the machine: its kubelet registers the Node.
            let (booter, node) = (booter.clone(), node.clone());
            async move {
                if outcome == JobOutcome::Succeed {
                    booter.node_up(&node).await?;
                }
                Ok(())
            }
        },
    );
    let jobs: Api<Job> = Api::namespaced(cp.client()?, &ns);
    for name in [
        format!("{machine}-on-1"),
        format!("{machine}-off-2"),
        format!("{machine}-hang-3"),
    ] {
        jobs.create(&PostParams::default(), &job(&name)?).await?;
    }
    let nodes: Api<Node> = Api::all(cp.client()?);
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let on = jobs.get(&format!("{machine}-on-1")).await?;
            let off = jobs.get(&format!("{machine}-off-2")).await?;
            let booted = nodes.get_opt(&machine).await?.is_some();
            if condition(&on, "Complete") == Some("True")
                && condition(&off, "Failed") == Some("True")
                && booted
            {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    let hanging = jobs.get(&format!("{machine}-hang-3")).await?;
    assert_eq!(
        hanging.status.and_then(|s| s.active),
        Some(1),
        "started, never finished"
    );
    world.node_delete(&machine).await?;
    Ok(())
}

#[tokio::test]
async fn simulated_kubelet_runs_pods_and_finishes_their_deletion() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("pods").await?;
    let world = World::new(cp.client()?);
    let node = cp.unique_name("machine-b");
    world.node_up(&FakeNode::new(&node)).await?;
    world.create_bound_pod(&ns, pod("app")?, &node).await?;

    assert_eq!(world.run_pods(&node).await?, 1);
    let pods: Api<Pod> = Api::namespaced(cp.client()?, &ns);
    let phase = pods.get("app").await?.status.and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Running"));
    assert_eq!(world.run_pods(&node).await?, 0, "already running");

    // Without a kubelet a deleted pod on a node stays Terminating...
    pods.delete("app", &DeleteParams::default()).await?;
    let terminating = pods.get("app").await?;
    assert!(terminating.metadata.deletion_timestamp.is_some());
    // ...until the simulated kubelet finishes it.
    assert_eq!(world.finish_terminating_pods(&node).await?, 1);
    assert!(pods.get_opt("app").await?.is_none());
    world.node_delete(&node).await?;
    Ok(())
}

#[tokio::test]
async fn identities_get_only_the_rbac_they_are_granted() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("rbac").await?;
    let rules = vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".into()]),
        verbs: vec!["get".into(), "list".into()],
        ..PolicyRule::default()
    }];

    let sa = cp.service_account(&ns, "operator").await?;
    assert_eq!(sa.username, format!("system:serviceaccount:{ns}:operator"));
    let user = cp.user("autoscaler", Some("homelab:autoscalers")).await?;
    for id in [&sa, &user] {
        let cms: Api<ConfigMap> = Api::namespaced(id.client()?, &ns);
        let err = cms.list(&ListParams::default()).await.err();
        assert!(
            matches!(&err, Some(kube::Error::Api(e)) if e.code == 403),
            "{} listed configmaps before any grant: {err:?}",
            id.username
        );
        cp.grant(id, Some(&ns), rules.clone()).await?;
        cms.list(&ListParams::default()).await?;
        // Granted list, not create.
        let err = cms
            .create(&PostParams::default(), &ConfigMap::default())
            .await
            .err();
        assert!(
            matches!(&err, Some(kube::Error::Api(e)) if e.code == 403),
            "{err:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn own_control_plane_schedules_pods_and_dies_with_a_panicking_test() -> anyhow::Result<()> {
    let Some(assets) = support::Assets::locate(&["etcd", "kube-apiserver", "kube-scheduler"])?
    else {
        return Ok(());
    };
    let opts = support::Options::default().with_scheduler();
    let cp = support::ControlPlane::start(&assets, &opts).await?;
    let pids = cp.pids();
    assert_eq!(pids.len(), 3, "etcd, kube-apiserver, kube-scheduler");

    let ns = cp.namespace("sched").await?;
    let world = World::new(cp.client()?);
    world.node_up(&FakeNode::new("only-node")).await?;
    let pods: Api<Pod> = Api::namespaced(cp.client()?, &ns);
    pods.create(&PostParams::default(), &pod("pending")?)
        .await?;
    let scheduled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let node = pods.get("pending").await?.spec.and_then(|s| s.node_name);
            if node.is_some() {
                return anyhow::Ok(node);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await??;
    assert_eq!(scheduled.as_deref(), Some("only-node"));

    // The apiserver comes back on the same port with the same data.
    cp.restart_apiserver().await?;
    assert_eq!(
        pods.get("pending")
            .await?
            .spec
            .and_then(|s| s.node_name)
            .as_deref(),
        Some("only-node")
    );
    assert_eq!(cp.pids().len(), 3);

    // A test that panics while owning the control plane still kills it.
    let panicked = tokio::spawn(async move {
        let _owned = cp;
        panic!("deliberate panic with a control plane in scope");
    })
    .await;
    assert!(panicked.is_err_and(|e| e.is_panic()));
    for pid in pids {
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "process {pid} outlived its control plane");
    }
    Ok(())
}

#[test]
fn missing_binaries_skip_or_fail_as_configured() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir()?;
    let wanted = ["etcd", "kube-apiserver"];
    let locate =
        |required| support::Assets::locate_in(Some(dir.path().to_owned()), required, &wanted);
    assert!(locate(false)?.is_none(), "missing and not required: skip");
    let err = format!(
        "{:#}",
        locate(true)
            .err()
            .ok_or_else(|| anyhow::anyhow!("required but missing must fail"))?
    );
    assert!(
        err.contains("tests/k8s-bins/build.sh") && err.contains("kube-apiserver"),
        "{err}"
    );
    for b in wanted {
        let path = dir.path().join(b);
        std::fs::write(&path, "")?;
        assert!(locate(true).is_err(), "{b} present but not executable");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    assert_eq!(
        locate(true)?.map(|a| a.kube_apiserver()),
        Some(dir.path().join("kube-apiserver"))
    );
    let none = support::Assets::locate_in(None, true, &wanted)
        .err()
        .map(|e| e.to_string());
    assert!(none.is_some_and(|e| e.contains("KUBECTL_HOMELAB_TEST_ASSETS")));
    Ok(())
}

fn job(name: &str) -> anyhow::Result<Job> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "power", "image": "busybox", "command": ["true"] }]
            }}
        }
    }))?)
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "app", "image": "busybox" }] }
    }))?)
}

fn condition<'a>(job: &'a Job, type_: &str) -> Option<&'a str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

fn taint_keys(node: &Node) -> Vec<String> {
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone());
    taints
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect()
}

fn ready(status: &Option<NodeStatus>) -> Option<&str> {
    ready_condition(status).map(|c| c.status.as_str())
}

fn ready_transition(status: &Option<NodeStatus>) -> Option<jiff::Timestamp> {
    ready_condition(status)?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

fn ready_condition(
    status: &Option<NodeStatus>,
) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// `kubectl apply -n <ns> -f -` of `manifest` with `KUBECONFIG`: (success, stdout + stderr).
fn kubectl_apply(
    kubeconfig: &std::path::Path,
    ns: &str,
    manifest: &str,
    extra: &[&str],
) -> anyhow::Result<(bool, String)> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-n", ns, "-f", "-"])
        .args(extra)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(manifest.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// A Node CR in YAML as a person types it, with `power` and `watts` given as YAML text
/// (indented under `spec:`).
fn node_yaml(name: &str, power_state: &str, rest: &str) -> String {
    format!(
        "apiVersion: infra.homecluster.dev/v1alpha1\nkind: Node\nmetadata:\n  name: {name}\n  \
         labels:\n    group: lab\nspec:\n  powerState: {power_state}\n{rest}"
    )
}

/// kubectl reads YAML 1.1: bare `on:` / `off:` keys reach the API server as `true` / `false`.
/// Instead of strict validation's "unknown field spec.power.true", the rules on `spec.power`
/// and `spec.watts` say what was meant and what to write, each under its field.
#[tokio::test]
async fn bare_on_off_keys_are_refused_by_kubectl_apply_with_what_to_write() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("bare-keys").await?;
    let bare = node_yaml(
        "bare",
        "\"off\"",
        "  power:\n    on:\n      wakeOnLan:\n        mac: \"aa:bb:cc:dd:ee:01\"\n    off:\n      \
         nodeAgent: {}\n  watts:\n    idle: 9\n    off: 1\n",
    );
    let (ok, out) = kubectl_apply(cp.kubeconfig(), &ns, &bare, &[])?;
    assert!(!ok, "applied: {out}");
    for (field, message) in [
        ("spec.power", cel::BARE_ON_KEY_MESSAGE),
        ("spec.power", cel::BARE_OFF_KEY_MESSAGE),
        ("spec.watts", cel::BARE_WATTS_OFF_KEY_MESSAGE),
    ] {
        assert!(
            out.contains(&format!("{field}: Invalid value: {message}")),
            "{field}: {message:?} missing from: {out}"
        );
    }
    // Only what was meant: no "unknown field", no "needs a way to power on".
    assert!(
        !out.contains("unknown field") && !out.contains("needs a way"),
        "{out}"
    );

    // The same CR with the keys YAML reads as written applies.
    let fixed = node_yaml(
        "fixed",
        "\"off\"",
        "  power:\n    powerOn:\n      wakeOnLan:\n        mac: \"aa:bb:cc:dd:ee:01\"\n    \
         powerOff:\n      nodeAgent: {}\n  watts:\n    idle: 9\n    standby: 1\n",
    );
    let (ok, out) = kubectl_apply(cp.kubeconfig(), &ns, &fixed, &[])?;
    assert!(ok, "{out}");
    assert!(!out.contains("Warning"), "{out}");

    // A bare value: YAML makes `powerState: on` the boolean true. The schema's type check comes
    // before any CEL rule (which would need the field untyped, losing the enum), so the API
    // server's own words are what the user reads: the field, the boolean it got and the values
    // it takes (the field's description says to quote them).
    let bare_value = node_yaml(
        "bare-value",
        "on",
        "  power:\n    powerOn:\n      wakeOnLan:\n        mac: \"aa:bb:cc:dd:ee:01\"\n    \
         powerOff:\n      nodeAgent: {}\n",
    );
    let (ok, out) = kubectl_apply(cp.kubeconfig(), &ns, &bare_value, &[])?;
    assert!(!ok, "applied: {out}");
    assert!(
        out.contains(r#"spec.powerState: Unsupported value: true: supported values: "on", "off""#),
        "{out}"
    );
    Ok(())
}

/// A Node CR written before the rename, with the quoted keys `"on"` / `"off"`, still applies
/// under strict field validation without a warning, and keeps its keys through a desired-power
/// write (a merge patch of `spec.powerState`, the only spec field the operator and `kubectl
/// homelab power` write).
#[tokio::test]
async fn legacy_quoted_on_off_keys_still_apply_and_survive_a_power_state_patch()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("legacy-keys").await?;
    let legacy = node_yaml(
        "legacy",
        "\"off\"",
        "  power:\n    \"on\":\n      wakeOnLan:\n        mac: \"aa:bb:cc:dd:ee:01\"\n    \
         \"off\":\n      nodeAgent: {}\n  watts:\n    idle: 9\n    \"off\": 1\n",
    );
    let (ok, out) = kubectl_apply(cp.kubeconfig(), &ns, &legacy, &[])?;
    assert!(ok, "{out}");
    assert!(!out.contains("Warning"), "{out}");
    let api: Api<Machine> = Api::namespaced(cp.client()?, &ns);
    let patch = serde_json::json!({"spec": {"powerState": "on"}});
    let m = api
        .patch(
            "legacy",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    let power = m.spec.power.as_deref().context("power kept")?;
    assert!(power.legacy_on.is_some() && power.legacy_off.is_some());
    assert!(matches!(
        m.power_driver(Direction::On),
        Ok(PowerDriver::WakeOnLan(w)) if w.mac == "aa:bb:cc:dd:ee:01"
    ));
    assert!(matches!(
        m.power_driver(Direction::Off),
        Ok(PowerDriver::NodeAgent(_))
    ));
    assert_eq!(m.spec.watts.map(|w| w.standby()), Some(1.0));

    // Where an owner looks the keys up, the old ones say what replaces them.
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["explain", "hln.spec.power"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Deprecated: use powerOn",
        "Deprecated: use powerOff",
        "powerOn\t",
    ] {
        assert!(text.contains(line), "{line:?} missing from: {text}");
    }
    Ok(())
}

/// `kubectl apply` of the committed CRDs prints no warning (an unknown `format` such as
/// `uint64` makes the API server answer `Warning: unrecognized format "uint64"`).
#[tokio::test]
async fn the_committed_crds_apply_without_a_warning() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crds");
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
        ])
        .arg(&dir)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("serverside-applied"), "{text}");
    assert!(!text.contains("Warning"), "{text}");
    Ok(())
}
