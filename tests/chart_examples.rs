//! Every example under examples/ works with the Helm chart as the README installs it: one
//! control plane without our CRDs, `helm install` (the chart brings the CRDs), every example
//! applied with kubectl as a user would, and the operator run with the chart's arguments and
//! ServiceAccount. Each driver's own lifecycle is run elsewhere (tests/power_*.rs,
//! tests/operator.rs); this only checks that the examples and the chart fit together.

mod support;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use kubectl_homelab::operator::api::Machine;
use kubectl_homelab::operator::machine::Phase;
use kubectl_homelab::operator::power::job::MACHINE_LABEL;
use kubectl_homelab::operator::trust::CONDITION_NOT_PERMITTED;
use serde_json::json;
use support::Options;
use support::helm::{CHART, ChartOperator, Helm, KUBECTL, kubectl_admin, readme_values, repo};

/// How long the test waits for the API server or the operator (normally a second or two).
const WAIT: Duration = Duration::from_secs(60);
const RELEASE: &str = "homelab";
/// The operator's tariff in this test, per kWh.
const TARIFF: f64 = 0.25;

/// What the examples need besides the README's values, each said in the example's comments:
/// the Secrets they name (the README's two and the others'), `default` as a power Job's
/// account (examples/predecessor-compat.yaml), and the host network (examples/wake-on-lan.yaml:
/// minipc-1 is woken by the operator itself).
fn values_for_the_examples() -> anyhow::Result<serde_json::Value> {
    let mut values: serde_json::Value = serde_yaml::from_str(&readme_values()?)
        .context("the README's homelab-values.yaml is not YAML")?;
    let secrets = values["credentialSecrets"]
        .as_array_mut()
        .context("the README's values list credentialSecrets")?;
    for name in [
        "r730-bmc",
        "desktop-ssh-key",
        "home-assistant",
        "minipc-2-secureon",
        "legacy-power-creds",
        "x10-bmc",
    ] {
        if !secrets.contains(&json!(name)) {
            secrets.push(json!(name));
        }
    }
    values["security"] = json!({ "jobServiceAccounts": ["default"] });
    values["hostNetwork"] = json!(true);
    // A tariff for the whole operator, so `kubectl homelab energy` has costs to show.
    values["operator"]["electricity"] = json!({ "pricePerKWh": TARIFF, "currency": "EUR" });
    Ok(values)
}

async fn wait_for<T, F, Fut>(what: &str, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    support::wait_for(what, WAIT, f).await
}

/// A Node CR whose power-on Job mounts a Secret that credentialSecrets does not list, in the
/// predecessor's field names: the chart's admission policy refuses it.
fn unlisted_secret_cr() -> String {
    r#"apiVersion: infra.homecluster.dev/v1alpha1
kind: Node
metadata:
  name: probe
  labels:
    group: probe
spec:
  powerState: "off"
  kubernetesNodeName: probe
  startupPodSpec:
    image: busybox:1.37
    command: ["true"]
    volumes:
      - name: s
        mountPath: /s
        secretName: not-listed
  shutdownPodSpec:
    image: busybox:1.37
    command: ["true"]
"#
    .to_owned()
}

/// The examples' Node CRs, by name: the phase each is in and whether it carries NotPermitted.
async fn states(machines: &Api<Machine>) -> anyhow::Result<Vec<(String, Phase, bool)>> {
    let mut out = Vec::new();
    for m in machines.list(&Default::default()).await? {
        let status = serde_json::to_value(&m.status)?;
        let refused = status["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == CONDITION_NOT_PERMITTED && c["status"] == "True")
        });
        out.push((m.name_any(), m.lifecycle().phase(), refused));
    }
    Ok(out)
}

/// `helm install` of the chart with the README's values and what the examples need, on a
/// control plane without our CRDs (the chart installs them); every file of examples/ applied
/// with `kubectl apply --server-side` into the release namespace is accepted by the CRDs'
/// schema and CEL rules and by the chart's admission policy (shown to be in force first: it
/// refuses a CR naming a Secret not listed). The operator, run with the chart's arguments and
/// its ServiceAccount's token, takes every Node CR out of phase Unknown without a NotPermitted
/// condition; the job-style example's power Job runs as the chart's power ServiceAccount
/// (`<fullname>-power`, which the chart created). After `helm uninstall`, the CRDs and the Node
/// CRs are still there (crds.keep).
#[tokio::test]
async fn every_example_is_accepted_and_reconciled_under_the_charts_install() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let Some(cp) = support::own(Options::default().without_crds()).await? else {
        return Ok(());
    };
    let ns = cp.namespace("homelab").await?;
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("homelab-values.yaml");
    std::fs::write(&values, serde_json::to_string(&values_for_the_examples()?)?)?;
    let values = values.to_str().context("temp path is not UTF-8")?;
    helm.on(&cp, &ns, &["install", RELEASE, CHART, "-f", values])?;

    let client = cp.client()?;
    cp.wait_established(&[
        "groups.infra.homecluster.dev",
        "nodes.infra.homecluster.dev",
    ])
    .await?;

    // The admission policy is in force (a new policy takes a moment to be enforced).
    let probe = dir.path().join("probe.yaml");
    std::fs::write(&probe, unlisted_secret_cr())?;
    let probe = probe.to_str().context("temp path is not UTF-8")?;
    let dry_run = || {
        Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .args([
                "apply",
                "--server-side",
                "--dry-run=server",
                "-n",
                &ns,
                "-f",
                probe,
            ])
            .output()
    };
    wait_for(
        "the chart's admission policy to refuse an unlisted Secret",
        || async {
            let out = dry_run()?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            Ok((!out.status.success() && stderr.contains("startupPodSpec.volumes")).then_some(()))
        },
    )
    .await
    .map_err(|e| match dry_run() {
        Ok(out) => e.context(format!(
            "kubectl said: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(io) => e.context(io),
    })?;

    // The Secret examples/job-style.yaml says to create first, with its command.
    let key = dir.path().join("id_ed25519");
    std::fs::write(&key, "not a real key\n")?;
    let key_arg = format!("--from-file=id_ed25519={}", key.display());
    kubectl_admin(
        &cp,
        &[
            "create",
            "secret",
            "generic",
            "desktop-ssh-key",
            "-n",
            &ns,
            &key_arg,
        ],
    )?;

    let mut files: Vec<_> = std::fs::read_dir(repo().join("examples"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    ensure!(files.len() >= 5, "examples/ has {files:?}");
    for file in &files {
        let path = file.to_str().context("example path is not UTF-8")?;
        kubectl_admin(&cp, &["apply", "--server-side", "-n", &ns, "-f", path])
            .with_context(|| format!("applying {path}"))?;
    }

    let manifest = helm.on(&cp, &ns, &["get", "manifest", RELEASE])?;
    let objects = support::apply::parse_multi_doc("helm get manifest", &manifest)?;
    let operator = ChartOperator::start(&cp, &ns, &objects, "homelab-kubectl-homelab").await?;
    let machines: Api<Machine> = Api::namespaced(client.clone(), &ns);
    let all_reconciled = wait_for("every Node CR out of phase Unknown", || async {
        let s = states(&machines).await?;
        if let Some((name, _, _)) = s.iter().find(|(_, _, refused)| *refused) {
            bail!("{name} is NotPermitted: {s:?}");
        }
        Ok((!s.is_empty() && s.iter().all(|(_, p, _)| *p != Phase::Unknown)).then_some(s))
    })
    .await
    .map_err(|e| e.context(operator.log_tail(40)))?;
    // Every example's Node CR is among them.
    let names: Vec<&str> = all_reconciled.iter().map(|(n, _, _)| n.as_str()).collect();
    for want in [
        "desktop-1",
        "legacy-1",
        "minipc-1",
        "minipc-2",
        "r730",
        "nas",
    ] {
        ensure!(names.contains(&want), "{want} not in {names:?}");
    }
    // `kubectl homelab energy` on the examples: every machine with a power model that has been
    // off since its counters began has used its standby draw since then and saved its idle
    // draw less that, at the operator's tariff (the model's figures, within 1 %).
    let off_since_counting = wait_for("the off examples' energy counters", || async {
        let mut out = Vec::new();
        for m in machines.list(&Default::default()).await? {
            let lc = m.lifecycle();
            let Some(c) = m.status.as_ref().and_then(|s| s.energy.as_deref()) else {
                continue;
            };
            let (Some(w), Some(_)) = (m.spec.watts, c.since) else {
                continue;
            };
            let p = &c.watt_hours_by_phase;
            let only_off = p.booting == 0.0 && p.on == 0.0 && p.shutting_down == 0.0;
            if lc.phase() == Phase::Off && only_off && c.boots == 0 {
                out.push((m.name_any(), w));
            }
        }
        Ok((out.len() >= 3).then_some(out))
    })
    .await
    .map_err(|e| e.context(operator.log_tail(40)))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
        .args(["energy", "-n", &ns, "-o", "json", "--kubeconfig"])
        .arg(cp.kubeconfig())
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let to: jiff::Timestamp = report["to"].as_str().context("to")?.parse()?;
    let near = |got: f64, want: f64| (got - want).abs() <= want.abs() * 0.01 + 1e-12;
    for (name, w) in &off_since_counting {
        let row = report["machines"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == name.as_str()))
            .with_context(|| format!("{name} not in the energy report"))?;
        let since: jiff::Timestamp = row["since"].as_str().context("since")?.parse()?;
        let hours = to.duration_since(since).as_secs_f64() / 3600.0;
        let kwh = w.standby() * hours / 1000.0;
        let baseline = w.idle() * hours / 1000.0;
        let got = |field: &str| row[field].as_f64().unwrap_or(f64::NAN);
        ensure!(
            near(got("kwh"), kwh),
            "{name}: kwh {} vs {kwh}: {row}",
            got("kwh")
        );
        ensure!(
            near(got("savedKwh"), baseline - kwh),
            "{name}: savedKwh: {row}"
        );
        ensure!(near(got("cost"), kwh * TARIFF), "{name}: cost: {row}");
        ensure!(
            near(got("savedCost"), (baseline - kwh) * TARIFF),
            "{name}: savedCost: {row}"
        );
        ensure!(
            row["currency"] == "EUR" && row["source"] == "model",
            "{name}: {row}"
        );
    }

    // examples/job-style.yaml's desktop-1 is wanted on: its power Job runs as the chart's
    // power account, which the chart created.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let lp = ListParams::default().labels(&format!("{MACHINE_LABEL}=desktop-1"));
    let job = wait_for("desktop-1's power Job", || async {
        Ok(jobs.list(&lp).await?.items.into_iter().next())
    })
    .await
    .map_err(|e| e.context(operator.log_tail(40)))?;
    let account = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.service_account_name.clone());
    assert_eq!(account.as_deref(), Some("homelab-kubectl-homelab-power"));
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get("homelab-kubectl-homelab-power")
        .await
        .context("the chart's power ServiceAccount")?;
    drop(operator);

    helm.on(&cp, &ns, &["uninstall", RELEASE])?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in [
        "groups.infra.homecluster.dev",
        "nodes.infra.homecluster.dev",
    ] {
        ensure!(
            crds.get_opt(name).await?.is_some(),
            "CRD {name} removed by helm uninstall"
        );
    }
    ensure!(
        machines.get_opt("desktop-1").await?.is_some(),
        "Node CRs outlive the release"
    );
    Ok(())
}
