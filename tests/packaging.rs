//! The installable product: the Helm chart (deploy/helm/kubectl-homelab) and the plugin on PATH
//! (the krew manifest and release archives: tests/release.rs), checked with the real tools (helm
//! built by tests/k8s-bins/build.sh, /usr/bin/kubectl) and, for the
//! chart, the real apiserver of tests/support: `helm install` / `upgrade` / `uninstall`, and the
//! operator binary run with exactly the chart's arguments and the chart's ServiceAccount token
//! through a power cycle with a drain.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use kubectl_homelab::operator::api::{Group, Machine};
use kubectl_homelab::operator::machine::{Phase, PowerState};
use kubectl_homelab::operator::power::job::{DIRECTION_LABEL, MACHINE_LABEL};
use serde_json::json;
use support::chart::Release;
use support::helm::{
    CHART, ChartOperator, Helm, KUBECTL, find, kinds, kubectl_admin, operator_args, repo, stdout_of,
};
use support::pod_security::{namespace_enforcing, template, violations};
use support::world::job_finished;
use support::{ControlPlane, FakeNode, World};

/// How long a test waits for the operator to reach a state (normally a second or two).
const WAIT: Duration = Duration::from_secs(60);

/// Every optional part of the chart switched on.
const EVERYTHING_ON: &[&str] = &[
    "clusterAutoscaler.enabled=true",
    "tls.mode=certManager",
    "tls.certManager.issuerRef.name=lab-ca",
    "serviceMonitor.enabled=true",
    "dashboard.enabled=true",
    "prometheusRule.enabled=true",
    "podDisruptionBudget.enabled=true",
    "credentialSecrets={bmc-lab1,wol-secureon}",
];

/// The options of [`helm_template_renders_the_set_up_options`], together.
const SET_UP_OPTIONS: &[&str] = &[
    "hostNetwork=true",
    "serviceAccount.create=false",
    "serviceAccount.name=ops-homelab",
    "fullnameOverride=power",
    "podLabels.team=ops",
    "crds.keep=false",
    "clusterAutoscaler.enabled=true",
    "topologySpreadConstraints[0].maxSkew=1",
    "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
    "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
];

fn run_binary(args: &[String]) -> anyhow::Result<String> {
    stdout_of(Command::new(env!("CARGO_BIN_EXE_kubectl-homelab")).args(args))
}

#[test]
fn the_chart_version_is_the_crates() -> anyhow::Result<()> {
    let chart = std::fs::read_to_string(repo().join(CHART).join("Chart.yaml"))?;
    let want = env!("CARGO_PKG_VERSION");
    assert!(chart.contains(&format!("\nversion: {want}\n")), "{chart}");
    assert!(
        chart.contains(&format!("\nappVersion: \"{want}\"\n")),
        "{chart}"
    );
    Ok(())
}

/// `helm lint` passes with the defaults and with every option on; the default rendering is the
/// operator alone, hardened; with every option on it adds the Certificates, the ServiceMonitor,
/// the budget, the credential Secrets rule and a Cluster Autoscaler whose cloud-config is what
/// `run-operator --print-cloud-config` prints given the chart's own arguments (which also shows
/// the binary accepts every argument the chart passes).
#[test]
fn helm_lint_and_template_render_the_operator_and_every_option() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    helm.ok(&["lint", "--strict", CHART])?;
    let mut lint_all = vec!["lint", "--strict", CHART];
    for s in EVERYTHING_ON {
        lint_all.extend(["--set", s]);
    }
    helm.ok(&lint_all)?;

    let defaults = helm.template("lab", "homelab", &[])?;
    assert_eq!(
        kinds(&defaults),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Deployment",
            "NetworkPolicy",
            "Pod",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    let deployment = find(&defaults, "Deployment", "lab-kubectl-homelab")?;
    let spec = &deployment.data["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        "ghcr.io/homecluster-dev/kubectl-homelab:0.1.0"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args = operator_args(deployment)?;
    assert_eq!(args[0], "run-operator");
    for want in [
        "--leader-elect=true",
        "--namespace=homelab",
        "--pod-service-account=lab-kubectl-homelab-power",
        "--operator-service-account=homelab/lab-kubectl-homelab",
        "--allowed-image=busybox:1.37",
        "--node-agent-command=systemctl poweroff",
        "--allow-privileged-jobs=false",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    let power = find(&defaults, "ServiceAccount", "lab-kubectl-homelab-power")?;
    assert_eq!(power.data["automountServiceAccountToken"], false);
    // The pods carry the recommended labels; the default affinity keeps them off managed Nodes
    // and prefers the replicas apart; no host network.
    let labels = &spec["template"]["metadata"]["labels"];
    for key in [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/component",
        "helm.sh/chart",
    ] {
        assert!(labels.get(key).is_some(), "{key} not in {labels}");
    }
    assert_eq!(pod["affinity"]["nodeAffinity"], off_managed_nodes());
    assert!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            .is_array(),
        "{}",
        pod["affinity"]
    );
    assert_eq!(pod.get("hostNetwork"), None);
    assert_eq!(pod["dnsPolicy"], "ClusterFirst");
    // The CRDs are templates, kept on uninstall.
    for crd in [
        "groups.infra.homecluster.dev",
        "nodes.infra.homecluster.dev",
    ] {
        let crd = find(&defaults, "CustomResourceDefinition", crd)?;
        assert_eq!(
            crd.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("helm.sh/resource-policy"))
                .map(String::as_str),
            Some("keep")
        );
    }
    // Aggregated roles: `view` reads Groups and Node CRs, `edit` writes them (spec.powerState).
    let view = find(&defaults, "ClusterRole", "lab-kubectl-homelab-homelab-view")?;
    assert_eq!(
        view.metadata.labels.as_ref().and_then(|l| l
            .get("rbac.authorization.k8s.io/aggregate-to-view")
            .cloned()),
        Some("true".to_owned())
    );
    assert_eq!(
        view.data["rules"][0]["verbs"],
        json!(["get", "list", "watch"])
    );
    let edit = find(&defaults, "ClusterRole", "lab-kubectl-homelab-homelab-edit")?;
    assert_eq!(
        edit.metadata.labels.as_ref().and_then(|l| l
            .get("rbac.authorization.k8s.io/aggregate-to-edit")
            .cloned()),
        Some("true".to_owned())
    );
    assert_eq!(
        edit.data["rules"][0]["resources"],
        json!(["groups", "nodes"])
    );
    assert!(
        edit.data["rules"][0]["verbs"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("patch"))),
        "{}",
        edit.data
    );
    // `helm test`: a hook pod asking the metrics Service for /readyz.
    let test = find(&defaults, "Pod", "lab-kubectl-homelab-test-readyz")?;
    assert_eq!(
        test.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("helm.sh/hook"))
            .map(String::as_str),
        Some("test")
    );
    assert!(
        test.data["spec"]
            .to_string()
            .contains("http://lab-kubectl-homelab-metrics.homelab.svc:8081/readyz"),
        "{}",
        test.data
    );
    let role = find(&defaults, "Role", "lab-kubectl-homelab")?;
    assert!(
        !role.data.to_string().contains("secrets"),
        "no Secret is readable unless named: {}",
        role.data
    );

    let all = helm.template("lab", "homelab", EVERYTHING_ON)?;
    for (kind, name) in [
        ("Certificate", "lab-kubectl-homelab-grpc-server"),
        ("Certificate", "lab-kubectl-homelab-ca-client"),
        ("ServiceMonitor", "lab-kubectl-homelab"),
        ("PodDisruptionBudget", "lab-kubectl-homelab"),
        ("Deployment", "lab-kubectl-homelab-cluster-autoscaler"),
        ("ConfigMap", "lab-kubectl-homelab-cloud-config"),
        ("ConfigMap", "lab-kubectl-homelab-dashboard"),
        ("PrometheusRule", "lab-kubectl-homelab"),
    ] {
        find(&all, kind, name)?;
    }
    // Only the leader is Ready: a budget below 100% would make the leader unevictable.
    let pdb = find(&all, "PodDisruptionBudget", "lab-kubectl-homelab")?;
    assert_eq!(pdb.data["spec"]["maxUnavailable"], "100%");
    let role = find(&all, "Role", "lab-kubectl-homelab")?;
    let secrets_rule = role.data["rules"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["resources"] == json!(["secrets"])))
        .context("a secrets rule")?;
    assert_eq!(
        secrets_rule["resourceNames"],
        json!(["bmc-lab1", "wol-secureon"])
    );
    assert_eq!(secrets_rule["verbs"], json!(["get"]));

    let server_cert = find(&all, "Certificate", "lab-kubectl-homelab-grpc-server")?;
    let names = server_cert.data["spec"]["dnsNames"].to_string();
    assert!(
        names.contains("\"lab-kubectl-homelab-grpc.homelab.svc\""),
        "{names}"
    );

    // The chart's cloud-config is the binary's, given the chart's own arguments.
    let args = operator_args(find(&all, "Deployment", "lab-kubectl-homelab")?)?;
    assert!(
        args.iter().any(|a| a.starts_with("--tls-cert=")),
        "{args:?}"
    );
    let mut print = args.clone();
    print.push("--print-cloud-config".to_owned());
    let printed = run_binary(&print)?;
    let config_map = find(&all, "ConfigMap", "lab-kubectl-homelab-cloud-config")?;
    assert_eq!(config_map.data["data"]["cloud-config.yaml"], printed);
    let printed_plain = {
        let mut a = operator_args(deployment)?;
        a.push("--print-cloud-config".to_owned());
        run_binary(&a)?
    };
    let plain = helm.template("lab", "homelab", &["clusterAutoscaler.enabled=true"])?;
    let config_map = find(&plain, "ConfigMap", "lab-kubectl-homelab-cloud-config")?;
    assert_eq!(config_map.data["data"]["cloud-config.yaml"], printed_plain);

    // tls.mode=secret mounts the Secrets named, for the operator and for CA.
    let named = helm.template(
        "lab",
        "homelab",
        &[
            "tls.mode=secret",
            "tls.serverSecret=op-tls",
            "tls.clientSecret=ca-tls",
            "clusterAutoscaler.enabled=true",
        ],
    )?;
    let volume = |deployment: &str| -> anyhow::Result<serde_json::Value> {
        let d = find(&named, "Deployment", deployment)?;
        Ok(d.data["spec"]["template"]["spec"]["volumes"].clone())
    };
    assert!(
        volume("lab-kubectl-homelab")?
            .to_string()
            .contains(r#""secretName":"op-tls""#)
    );
    let ca_volumes = volume("lab-kubectl-homelab-cluster-autoscaler")?.to_string();
    assert!(
        ca_volumes.contains(r#""secretName":"ca-tls""#),
        "{ca_volumes}"
    );
    assert!(!kinds(&named).contains(&"Certificate".to_owned()));

    // CA mounts its client certificate where the cloud-config says, and has the slow-boot flags.
    let ca = find(&all, "Deployment", "lab-kubectl-homelab-cluster-autoscaler")?;
    let ca_spec = &ca.data["spec"]["template"]["spec"];
    assert_eq!(ca_spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(ca_spec["affinity"]["nodeAffinity"], off_managed_nodes());
    assert_eq!(ca_spec["affinity"].get("podAntiAffinity"), None);
    let ca_pod = ca_spec.to_string();
    assert!(
        ca_pod.contains("/etc/cluster-autoscaler/homelab-grpc"),
        "{ca_pod}"
    );
    // Its metrics Service and ServiceMonitor, and the priority expander's ConfigMap readable.
    let ca_metrics = find(&all, "Service", "lab-kubectl-homelab-cluster-autoscaler")?;
    assert_eq!(ca_metrics.data["spec"]["ports"][0]["port"], 8085);
    assert_eq!(
        ca_metrics.data["spec"]["selector"],
        ca.data["spec"]["selector"]["matchLabels"]
    );
    find(
        &all,
        "ServiceMonitor",
        "lab-kubectl-homelab-cluster-autoscaler",
    )?;
    let ca_role = find(&all, "Role", "lab-kubectl-homelab-cluster-autoscaler")?;
    assert!(
        ca_role.data["rules"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["resourceNames"]
                == json!(["cluster-autoscaler-priority-expander"])
                && r["verbs"] == json!(["get"]))),
        "{}",
        ca_role.data
    );
    for flag in [
        "--cloud-provider=externalgrpc",
        "--max-node-provision-time=20m",
        "--max-node-startup-time=20m",
    ] {
        assert!(ca_pod.contains(flag), "{flag} not in {ca_pod}");
    }
    Ok(())
}

/// Warm spares in the chart: with the bundled CA (and the chart's CRDs) the CapacityBuffer CRD
/// is rendered, CA runs its buffer controller and pod injection without the pod dry run, and
/// may read buffers, write their status and manage PodTemplates; the operator may apply and
/// delete buffers and PodTemplates and list DaemonSets. With crds.enabled=false the CRD and the
/// flags are left out (CA with the flags waits for the CRD at start-up) and the RBAC stays;
/// podDryRun=true passes the flag and grants CA pods create; capacityBuffers.enabled=false
/// leaves all of it out.
#[test]
fn the_chart_sets_up_capacity_buffers_with_the_bundled_ca() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let ca_role = "lab-kubectl-homelab-homelab-cluster-autoscaler";
    let rules_of = |objs: &[DynamicObject], kind: &str, name: &str| -> anyhow::Result<String> {
        Ok(find(objs, kind, name)?.data["rules"].to_string())
    };
    let ca_args = |objs: &[DynamicObject]| -> anyhow::Result<String> {
        let ca = find(objs, "Deployment", "lab-kubectl-homelab-cluster-autoscaler")?;
        Ok(ca.data["spec"]["template"]["spec"]["containers"][0]["command"].to_string())
    };
    let buffers_crd = |objs: &[DynamicObject]| {
        objs.iter().any(|o| {
            o.types
                .as_ref()
                .is_some_and(|t| t.kind == "CustomResourceDefinition")
                && o.metadata.name.as_deref() == Some("capacitybuffers.autoscaling.x-k8s.io")
        })
    };

    let on = helm.template("lab", "homelab", &["clusterAutoscaler.enabled=true"])?;
    assert!(buffers_crd(&on), "the CapacityBuffer CRD is rendered");
    let args = ca_args(&on)?;
    for flag in [
        "--capacity-buffer-controller-enabled=true",
        "--capacity-buffer-pod-injection-enabled=true",
        "--capacity-buffer-pod-dry-run-enabled=false",
    ] {
        assert!(args.contains(flag), "{flag} not in {args}");
    }
    let ca_rules = rules_of(&on, "ClusterRole", ca_role)?;
    for rule in [
        r#"{"apiGroups":["autoscaling.x-k8s.io"],"resources":["capacitybuffers"],"verbs":["get","list","watch"]}"#,
        r#"{"apiGroups":["autoscaling.x-k8s.io"],"resources":["capacitybuffers/status"],"verbs":["update","patch"]}"#,
        r#"{"apiGroups":[""],"resources":["podtemplates"],"verbs":["get","list","watch","create","update"]}"#,
        r#"{"apiGroups":[""],"resources":["resourcequotas"],"verbs":["get","list","watch"]}"#,
        r#"{"apiGroups":["apps"],"resources":["deployments"],"verbs":["get","list","watch"]}"#,
    ] {
        assert!(ca_rules.contains(rule), "{rule} not in {ca_rules}");
    }
    assert!(!ca_rules.contains(r#""resources":["pods"],"verbs":["create"]"#));
    let op_rules = rules_of(&on, "Role", "lab-kubectl-homelab")?;
    for rule in [
        r#"{"apiGroups":["autoscaling.x-k8s.io"],"resources":["capacitybuffers"],"verbs":["create","patch","delete"]}"#,
        r#"{"apiGroups":[""],"resources":["podtemplates"],"verbs":["create","patch","delete"]}"#,
    ] {
        assert!(op_rules.contains(rule), "{rule} not in {op_rules}");
    }
    let op_cluster_rules = rules_of(&on, "ClusterRole", "lab-kubectl-homelab-homelab")?;
    assert!(
        op_cluster_rules
            .contains(r#"{"apiGroups":["apps"],"resources":["daemonsets"],"verbs":["list"]}"#),
        "{op_cluster_rules}"
    );

    let no_crds = helm.template(
        "lab",
        "homelab",
        &["clusterAutoscaler.enabled=true", "crds.enabled=false"],
    )?;
    assert!(!buffers_crd(&no_crds));
    assert!(!ca_args(&no_crds)?.contains("capacity-buffer"));
    assert!(rules_of(&no_crds, "ClusterRole", ca_role)?.contains("capacitybuffers"));

    let dry_run = helm.template(
        "lab",
        "homelab",
        &[
            "clusterAutoscaler.enabled=true",
            "clusterAutoscaler.capacityBuffers.podDryRun=true",
        ],
    )?;
    assert!(ca_args(&dry_run)?.contains("--capacity-buffer-pod-dry-run-enabled=true"));
    assert!(
        rules_of(&dry_run, "ClusterRole", ca_role)?
            .contains(r#"{"apiGroups":[""],"resources":["pods"],"verbs":["create"]}"#)
    );

    let off = helm.template(
        "lab",
        "homelab",
        &[
            "clusterAutoscaler.enabled=true",
            "clusterAutoscaler.capacityBuffers.enabled=false",
        ],
    )?;
    assert!(!buffers_crd(&off));
    assert!(!ca_args(&off)?.contains("capacity-buffer"));
    assert!(!rules_of(&off, "ClusterRole", ca_role)?.contains("capacitybuffers"));
    Ok(())
}

/// The default nodeAffinity of both Deployments: never on a Node the operator manages.
fn off_managed_nodes() -> serde_json::Value {
    json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
        "matchExpressions": [{"key": "infra.homecluster.dev/managed", "operator": "DoesNotExist"}]
    }]}})
}

/// The options a user sets for their own set-up: the host network (Wake-on-LAN without a relay)
/// with the matching DNS policy and the replicas required apart; an existing ServiceAccount;
/// other names; the CRDs left to the user or not kept; an own affinity; extra pod labels.
#[test]
fn helm_template_renders_the_set_up_options() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let host = helm.template("lab", "homelab", &["hostNetwork=true"])?;
    let pod = &find(&host, "Deployment", "lab-kubectl-homelab")?.data["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let anti = &pod["affinity"]["podAntiAffinity"];
    assert_eq!(
        anti["requiredDuringSchedulingIgnoredDuringExecution"],
        json!([{
            "labelSelector": {"matchLabels": {
                "app.kubernetes.io/component": "operator",
                "app.kubernetes.io/instance": "lab",
                "app.kubernetes.io/name": "kubectl-homelab",
            }},
            "topologyKey": "kubernetes.io/hostname",
        }])
    );
    assert_eq!(
        anti.get("preferredDuringSchedulingIgnoredDuringExecution"),
        None
    );
    assert_eq!(pod["affinity"]["nodeAffinity"], off_managed_nodes());
    let dns = helm.template("lab", "homelab", &["hostNetwork=true", "dnsPolicy=Default"])?;
    let pod = &find(&dns, "Deployment", "lab-kubectl-homelab")?.data["spec"]["template"]["spec"];
    assert_eq!(pod["dnsPolicy"], "Default");

    // An existing ServiceAccount: not created, but run as, bound, and excluded from power Jobs.
    let own_sa = helm.template(
        "lab",
        "homelab",
        &[
            "serviceAccount.create=false",
            "serviceAccount.name=ops-homelab",
        ],
    )?;
    let accounts: Vec<&str> = own_sa
        .iter()
        .filter(|o| support::helm::kind_of(o) == "ServiceAccount")
        .filter_map(|o| o.metadata.name.as_deref())
        .collect();
    assert_eq!(accounts, ["lab-kubectl-homelab-power"]);
    let d = find(&own_sa, "Deployment", "lab-kubectl-homelab")?;
    assert_eq!(
        d.data["spec"]["template"]["spec"]["serviceAccountName"],
        "ops-homelab"
    );
    assert!(
        operator_args(d)?
            .iter()
            .any(|a| a == "--operator-service-account=homelab/ops-homelab"),
        "{:?}",
        operator_args(d)?
    );
    for (kind, name) in [
        ("RoleBinding", "lab-kubectl-homelab"),
        ("ClusterRoleBinding", "lab-kubectl-homelab-homelab"),
    ] {
        let b = find(&own_sa, kind, name)?;
        assert_eq!(b.data["subjects"][0]["name"], "ops-homelab");
    }
    let annotated = helm.template("lab", "homelab", &["serviceAccount.annotations.team=ops"])?;
    let sa = find(&annotated, "ServiceAccount", "lab-kubectl-homelab")?;
    assert_eq!(
        sa.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("team"))
            .map(String::as_str),
        Some("ops")
    );

    // fullnameOverride names every object, the power account and the Lease with it.
    let renamed = helm.template(
        "lab",
        "homelab",
        &["fullnameOverride=power", "clusterAutoscaler.enabled=true"],
    )?;
    let d = find(&renamed, "Deployment", "power")?;
    let args = operator_args(d)?;
    for want in [
        "--pod-service-account=power-power",
        "--lease-name=power-leader",
        "--operator-service-account=homelab/power",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    find(&renamed, "ServiceAccount", "power-power")?;
    find(&renamed, "Deployment", "power-cluster-autoscaler")?;
    find(&renamed, "ClusterRole", "power-homelab-view")?;
    assert!(
        renamed
            .iter()
            .filter_map(|o| o.metadata.name.as_deref())
            // A CRD's name is its plural and group: ours, and CA's CapacityBuffer.
            .all(|n| n.starts_with("power")
                || n.ends_with(".infra.homecluster.dev")
                || n == "capacitybuffers.autoscaling.x-k8s.io"),
        "{:?}",
        renamed
            .iter()
            .map(|o| o.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    let named = helm.template("lab", "homelab", &["nameOverride=homelab"])?;
    let d = find(&named, "Deployment", "lab-homelab")?;
    assert_eq!(
        d.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "homelab"
    );

    // CRDs: left out, or rendered without the keep policy.
    let no_crds = helm.template("lab", "homelab", &["crds.enabled=false"])?;
    assert!(!kinds(&no_crds).contains(&"CustomResourceDefinition".to_owned()));
    let not_kept = helm.template("lab", "homelab", &["crds.keep=false"])?;
    let crd = find(
        &not_kept,
        "CustomResourceDefinition",
        "nodes.infra.homecluster.dev",
    )?;
    assert_eq!(
        crd.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("helm.sh/resource-policy")),
        None
    );

    // An own affinity replaces the default; pod labels and a spread go onto the pods.
    let own = helm.template(
        "lab",
        "homelab",
        &[
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=role",
            "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
            "podLabels.team=ops",
            "topologySpreadConstraints[0].maxSkew=1",
            "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
            "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
            "clusterAutoscaler.enabled=true",
        ],
    )?;
    let d = find(&own, "Deployment", "lab-kubectl-homelab")?;
    let pod = &d.data["spec"]["template"];
    assert_eq!(
        pod["spec"]["affinity"],
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "role", "operator": "Exists"}]}]
        }}})
    );
    assert_eq!(pod["metadata"]["labels"]["team"], "ops");
    assert_eq!(pod["spec"]["topologySpreadConstraints"][0]["maxSkew"], 1);
    let ca = find(&own, "Deployment", "lab-kubectl-homelab-cluster-autoscaler")?;
    assert_eq!(
        ca.data["spec"]["template"]["metadata"]["labels"]["team"],
        "ops"
    );
    assert_eq!(
        ca.data["spec"]["template"]["spec"]["affinity"]["nodeAffinity"],
        off_managed_nodes(),
        "the operator's affinity is not the Cluster Autoscaler's"
    );
    Ok(())
}

/// The `from` peers of the NetworkPolicy rule for `port`, or `None` if no rule names the port.
fn peers_for_port(policy: &DynamicObject, port: u16) -> Option<serde_json::Value> {
    policy.data["spec"]["ingress"]
        .as_array()?
        .iter()
        .find(|r| {
            r["ports"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["port"] == port))
        })
        .map(|r| r["from"].clone())
}

/// The NetworkPolicy is on by default: it selects the operator's pods and admits the gRPC port
/// only from Cluster Autoscaler pods (any namespace, by their name label; with the chart's own
/// Cluster Autoscaler, by its Deployment's selector labels), the health port from every pod by
/// default; it is absent with `networkPolicy.enabled=false`, and an empty peer list renders no
/// rule rather than a rule that admits everyone.
#[test]
fn the_network_policy_admits_only_the_cluster_autoscaler_to_grpc() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let defaults = helm.template("lab", "homelab", &[])?;
    let policy = find(&defaults, "NetworkPolicy", "lab-kubectl-homelab")?;
    let deployment = find(&defaults, "Deployment", "lab-kubectl-homelab")?;
    assert_eq!(
        policy.data["spec"]["podSelector"]["matchLabels"],
        deployment.data["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(policy.data["spec"]["policyTypes"], json!(["Ingress"]));
    let grpc = peers_for_port(policy, 8086).context("a rule for the gRPC port")?;
    assert_eq!(
        grpc,
        json!([{
            "namespaceSelector": {},
            "podSelector": {"matchExpressions": [{
                "key": "app.kubernetes.io/name",
                "operator": "In",
                "values": ["cluster-autoscaler", "externalgrpc-cluster-autoscaler"]
            }]}
        }])
    );
    assert_eq!(
        peers_for_port(policy, 8081),
        Some(json!([{"namespaceSelector": {}}]))
    );
    let ports = &deployment.data["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert_eq!(ports[0]["containerPort"], 8086);
    assert_eq!(ports[1]["containerPort"], 8081);

    // The chart's own Cluster Autoscaler: its pods' selector labels, and only those.
    let with_ca = helm.template("lab", "homelab", &["clusterAutoscaler.enabled=true"])?;
    let policy = find(&with_ca, "NetworkPolicy", "lab-kubectl-homelab")?;
    let ca = find(
        &with_ca,
        "Deployment",
        "lab-kubectl-homelab-cluster-autoscaler",
    )?;
    assert_eq!(
        peers_for_port(policy, 8086),
        Some(json!([{
            "podSelector": {"matchLabels": ca.data["spec"]["selector"]["matchLabels"]}
        }]))
    );

    // Another port follows grpc.port.
    let moved = helm.template("lab", "homelab", &["grpc.port=9443"])?;
    let policy = find(&moved, "NetworkPolicy", "lab-kubectl-homelab")?;
    assert!(peers_for_port(policy, 9443).is_some(), "{}", policy.data);

    let empty = helm.template(
        "lab",
        "homelab",
        &[
            "networkPolicy.grpcFrom=null",
            "networkPolicy.metricsFrom=null",
        ],
    )?;
    let policy = find(&empty, "NetworkPolicy", "lab-kubectl-homelab")?;
    assert_eq!(peers_for_port(policy, 8086), None, "{}", policy.data);
    assert_eq!(peers_for_port(policy, 8081), None, "{}", policy.data);

    let off = helm.template("lab", "homelab", &["networkPolicy.enabled=false"])?;
    assert!(!kinds(&off).contains(&"NetworkPolicy".to_owned()));
    Ok(())
}

/// The monitoring extras: the Grafana dashboard ConfigMap carries the sidecar's label (or the
/// labels, annotations and namespace given) and the dashboard file unchanged; the
/// PrometheusRule carries the labels a ruleSelector matches and the provision time given; the
/// ServiceMonitor keeps the metrics' own `namespace` label.
#[test]
fn the_dashboard_and_alerts_render_with_their_labels() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let on = helm.template(
        "lab",
        "homelab",
        &[
            "dashboard.enabled=true",
            "prometheusRule.enabled=true",
            "serviceMonitor.enabled=true",
        ],
    )?;
    let dashboard = find(&on, "ConfigMap", "lab-kubectl-homelab-dashboard")?;
    assert_eq!(dashboard.metadata.namespace.as_deref(), Some("homelab"));
    assert_eq!(
        dashboard
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("grafana_dashboard"))
            .map(String::as_str),
        Some("1")
    );
    let file = std::fs::read_to_string(
        repo()
            .join(CHART)
            .join("files/dashboards/kubectl-homelab.json"),
    )?;
    assert_eq!(
        dashboard.data["data"]["kubectl-homelab.json"].as_str(),
        Some(file.trim_end())
    );
    let parsed: serde_json::Value = serde_json::from_str(&file)?;
    assert_eq!(parsed["uid"], "kubectl-homelab");
    let monitor = find(&on, "ServiceMonitor", "lab-kubectl-homelab")?;
    assert_eq!(monitor.data["spec"]["endpoints"][0]["honorLabels"], true);

    let moved = helm.template(
        "lab",
        "homelab",
        &[
            "dashboard.enabled=true",
            "dashboard.namespace=monitoring",
            "dashboard.labels.dash=homelab",
            "dashboard.annotations.grafana_folder=Homelab",
            "prometheusRule.enabled=true",
            "prometheusRule.labels.release=kube-prometheus-stack",
            "prometheusRule.maxNodeProvisionTime=20m",
        ],
    )?;
    let dashboard = find(&moved, "ConfigMap", "lab-kubectl-homelab-dashboard")?;
    assert_eq!(dashboard.metadata.namespace.as_deref(), Some("monitoring"));
    let labels = dashboard.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("dash").map(String::as_str), Some("homelab"));
    assert_eq!(
        dashboard
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("grafana_folder"))
            .map(String::as_str),
        Some("Homelab")
    );
    let rule = find(&moved, "PrometheusRule", "lab-kubectl-homelab")?;
    assert_eq!(
        rule.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("release"))
            .map(String::as_str),
        Some("kube-prometheus-stack")
    );
    // 80 % of 20m.
    let text = rule.data.to_string();
    assert!(text.contains("> 960"), "{text}");
    Ok(())
}

/// Every object the chart renders, with the defaults, with every option on and with the set-up
/// options (host network, an existing ServiceAccount, other names, an own affinity), passes the
/// real apiserver's validation (a server-side dry-run apply: the CRDs exist there already).
/// Kinds whose CRDs the test apiserver does not have (cert-manager's Certificate, the
/// Prometheus Operator's ServiceMonitor and PrometheusRule) are skipped, and named in the assertion that they were
/// the only ones.
#[tokio::test]
async fn every_rendered_object_passes_a_server_side_dry_run() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("helm-dry-run").await?;
    let client = cp.client()?;
    let mut skipped = std::collections::BTreeSet::new();
    let mut checked = std::collections::BTreeSet::new();
    for set in [&[][..], EVERYTHING_ON, SET_UP_OPTIONS] {
        for obj in helm.template("lab", &ns, set)? {
            let types = obj.types.clone().unwrap_or_default();
            let gvk = kube::core::GroupVersionKind::try_from(&types)?;
            let Ok((resource, caps)) = kube::discovery::pinned_kind(&client, &gvk).await else {
                skipped.insert(types.kind.clone());
                continue;
            };
            let api: Api<DynamicObject> = match caps.scope {
                kube::discovery::Scope::Namespaced => {
                    Api::namespaced_with(client.clone(), &ns, &resource)
                }
                kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
            };
            let pp = PatchParams::apply("helm-dry-run").force().dry_run();
            let name = obj.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &pp, &Patch::Apply(&obj))
                .await
                .with_context(|| format!("dry-run apply of {} {name}", types.kind))?;
            checked.insert(types.kind);
        }
    }
    assert_eq!(
        skipped.into_iter().collect::<Vec<_>>(),
        ["Certificate", "PrometheusRule", "ServiceMonitor"]
    );
    for kind in ["NetworkPolicy", "CustomResourceDefinition", "Pod"] {
        assert!(checked.contains(kind), "{kind} not in {checked:?}");
    }
    Ok(())
}

/// The Dockerfile's image is what the chart expects: the user the pod runs as (non-root, so a
/// mismatch would not start), the static binary as entrypoint taking the chart's arguments, and
/// the repository the chart pulls by default.
#[test]
fn the_dockerfile_builds_the_image_the_chart_runs() -> anyhow::Result<()> {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile"))?;
    let values = std::fs::read_to_string(repo().join(CHART).join("values.yaml"))?;
    let deployment = std::fs::read_to_string(repo().join(CHART).join("templates/deployment.yaml"))?;
    assert!(dockerfile.contains("\nUSER 65532:65532\n"), "{dockerfile}");
    assert!(deployment.contains("runAsUser: 65532") && deployment.contains("runAsGroup: 65532"));
    assert!(dockerfile.contains("amd64) target=x86_64-unknown-linux-musl ;;"));
    assert!(dockerfile.contains("FROM gcr.io/distroless/static"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/kubectl-homelab"]"#));
    let repository = values
        .lines()
        .find_map(|l| l.trim().strip_prefix("repository: ghcr.io/"))
        .context("image.repository in values.yaml")?;
    assert!(
        dockerfile.contains(&format!("docker build -t ghcr.io/{repository}:")),
        "the Dockerfile's build line tags the chart's default repository ghcr.io/{repository}"
    );
    Ok(())
}

/// Values the schema refuses, each with the message helm prints naming the key.
#[test]
fn bad_values_fail_with_the_key_named() -> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    // helm names the key as a JSON pointer.
    let cases: &[(&str, &str)] = &[
        ("replicas=0", "at '/replicas': minimum: got 0, want 1"),
        (
            "tls.mode=mutual",
            "at '/tls/mode': value must be one of 'none', 'certManager', 'secret'",
        ),
        (
            "operator.drainTimeout=five minutes",
            "at '/operator/drainTimeout': 'five minutes' does not match",
        ),
        (
            "credentialSecrets={Not_A_Name}",
            "at '/credentialSecrets/0': 'Not_A_Name' does not match",
        ),
        (
            "replicaCount=2",
            "additional properties 'replicaCount' not allowed",
        ),
        (
            "tls.mode=secret",
            "at '/tls/serverSecret': minLength: got 0, want 1",
        ),
        (
            "tls.mode=certManager",
            "at '/tls/certManager/issuerRef/name': minLength: got 0, want 1",
        ),
        (
            "leaderElection.enabled=false",
            "at '/replicas': value must be 1",
        ),
        (
            "networkPolicy.grpcFrom[0].podSelectr.matchLabels.app=ca",
            "at '/networkPolicy/grpcFrom/0': additional properties 'podSelectr' not allowed",
        ),
        (
            "networkPolicy.enabled=yes",
            "at '/networkPolicy/enabled': got string, want boolean",
        ),
        (
            "hostNetwork=yes",
            "at '/hostNetwork': got string, want boolean",
        ),
        (
            "dnsPolicy=ClusterFirstWithHostNetwork",
            "at '/dnsPolicy': value must be one of",
        ),
        (
            "serviceAccount.create=false",
            "at '/serviceAccount/name': minLength: got 0, want 1",
        ),
        (
            "serviceAccount.nam=ops",
            "at '/serviceAccount': additional properties 'nam' not allowed",
        ),
        (
            "fullnameOverride=Power_Ops",
            "at '/fullnameOverride': 'Power_Ops' does not match",
        ),
        (
            "crds.enabled=yes",
            "at '/crds/enabled': got string, want boolean",
        ),
        (
            "crds.kep=false",
            "at '/crds': additional properties 'kep' not allowed",
        ),
        (
            "podLabels.team[0]=ops",
            "at '/podLabels/team': got array, want string",
        ),
    ];
    for (set, key) in cases {
        let out = helm.run(&["template", "lab", CHART, "--set", set])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema"),
            "--set {set}: not a schema error: {stderr}"
        );
        assert!(
            stderr.contains(key),
            "--set {set}: {key} not named in: {stderr}"
        );
    }
    // One replica without leader election is valid.
    helm.ok(&[
        "template",
        "lab",
        CHART,
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "replicas=1",
    ])?;
    Ok(())
}

/// The README's Install section against the real apiserver (no kubelet: objects, not pods):
/// `helm install` with its values file, `kubectl apply` of the example, `kubectl get homelab`;
/// the chart's `-view` / `-edit` ClusterRoles bound in the namespace (list for both; patching a
/// Node CR, not its status, for edit only); then `helm upgrade` changing a value, and
/// `helm uninstall`, after which the Node CRs remain.
/// The shared control plane has the CRDs already (not the chart's: `crds.enabled=false`
/// here); tests/chart_examples.rs installs them with the chart on a control plane without
/// them, and checks they stay after `helm uninstall`.
#[tokio::test]
async fn the_readmes_install_upgrade_and_uninstall_work_against_the_apiserver() -> anyhow::Result<()>
{
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("helm-life").await?;
    let dir = tempfile::tempdir()?;
    let values = dir.path().join("homelab-values.yaml");
    std::fs::write(&values, support::helm::readme_values()?)?;
    let values = values.to_str().context("temp path is not UTF-8")?;
    let client = cp.client()?;

    let no_crds = "crds.enabled=false";
    helm.on(
        cp,
        &ns,
        &["install", "homelab", CHART, "-f", values, "--set", no_crds],
    )?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = deployments.get("homelab-kubectl-homelab").await?;
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(2));
    deployments
        .get("homelab-kubectl-homelab-cluster-autoscaler")
        .await
        .context("the README's values enable the Cluster Autoscaler")?;
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
    let role = serde_json::to_value(roles.get("homelab-kubectl-homelab").await?)?;
    assert!(
        role["rules"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| {
                r["resources"] == json!(["secrets"])
                    && r["resourceNames"] == json!(["r730-bmc", "desktop-ssh-key"])
            })),
        "{role}"
    );
    kubectl_admin(cp, &["apply", "-n", &ns, "-f", "examples/job-style.yaml"])?;

    // The aggregated roles, bound in the namespace as the built-in ones they join would be:
    // `edit` may change spec.powerState (`kubectl homelab power`), `view` only reads.
    for (user, role) in [("viewer", "view"), ("editor", "edit")] {
        let cluster_role = format!("--clusterrole=homelab-kubectl-homelab-{ns}-{role}");
        let user_arg = format!("--user={user}");
        kubectl_admin(
            cp,
            &[
                "create",
                "rolebinding",
                user,
                &cluster_role,
                &user_arg,
                "-n",
                &ns,
            ],
        )?;
    }
    let can = |user: &str, args: &[&str]| -> anyhow::Result<bool> {
        let mut all = args.to_vec();
        let as_user = format!("--as={user}");
        all.extend(["-n", &ns, &as_user]);
        can_i(cp.kubeconfig(), &all)
    };
    for user in ["viewer", "editor"] {
        for what in [
            "nodes.infra.homecluster.dev",
            "groups.infra.homecluster.dev",
        ] {
            ensure!(can(user, &["list", what])?, "{user} cannot list {what}");
        }
    }
    ensure!(can(
        "editor",
        &["patch", "nodes.infra.homecluster.dev/desktop-1"]
    )?);
    ensure!(can("editor", &["create", "groups.infra.homecluster.dev"])?);
    ensure!(!can(
        "viewer",
        &["patch", "nodes.infra.homecluster.dev/desktop-1"]
    )?);
    ensure!(!can(
        "editor",
        &[
            "patch",
            "nodes.infra.homecluster.dev/desktop-1",
            "--subresource=status"
        ]
    )?);
    let listed = kubectl_admin(cp, &["get", "homelab", "-n", &ns])?;
    assert!(
        listed.contains("group.infra.homecluster.dev/desktops")
            && listed.contains("node.infra.homecluster.dev/desktop-1"),
        "{listed}"
    );

    helm.on(
        cp,
        &ns,
        &[
            "upgrade",
            "homelab",
            CHART,
            "-f",
            values,
            "--set",
            no_crds,
            "--set",
            "replicas=3",
        ],
    )?;
    let d = deployments.get("homelab-kubectl-homelab").await?;
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(3));
    let history = helm.on(cp, &ns, &["history", "homelab"])?;
    assert!(history.contains("Upgrade complete"), "{history}");

    helm.on(cp, &ns, &["uninstall", "homelab"])?;
    assert!(
        deployments
            .get_opt("homelab-kubectl-homelab")
            .await?
            .is_none()
    );
    assert!(roles.get_opt("homelab-kubectl-homelab").await?.is_none());
    assert!(
        Api::<Machine>::namespaced(client, &ns)
            .get_opt("desktop-1")
            .await?
            .is_some(),
        "Node CRs outlive the release"
    );
    Ok(())
}

/// `kubectl auth can-i` as the operator's ServiceAccount (its own token, so the apiserver
/// answers for exactly that identity).
fn can_i(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<bool> {
    let out = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["auth", "can-i"])
        .args(args)
        .output()
        .with_context(|| format!("running {KUBECTL} auth can-i {args:?}"))?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match answer.as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!(
            "kubectl auth can-i {args:?}: {answer:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

async fn wait_for<T, F, Fut>(what: &str, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    support::wait_for(what, WAIT, f).await
}

async fn phase(machines: &Api<Machine>, name: &str, want: Phase) -> anyhow::Result<()> {
    wait_for(&format!("{name} in phase {want}"), || async {
        let m = machines.get(name).await?;
        Ok((m.lifecycle().phase() == want).then_some(()))
    })
    .await
}

async fn power_job(
    client: &Client,
    ns: &str,
    machine: &str,
    direction: &str,
) -> anyhow::Result<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{MACHINE_LABEL}={machine}"));
    wait_for(
        &format!("the power-{direction} Job of {machine}"),
        || async {
            Ok(api.list(&lp).await?.items.into_iter().find(|j| {
                j.labels().get(DIRECTION_LABEL).map(String::as_str) == Some(direction)
                    && !job_finished(j)
            }))
        },
    )
    .await
}

async fn set_power(machines: &Api<Machine>, name: &str, power: &str) -> anyhow::Result<()> {
    let patch = json!({ "spec": { "powerState": power } });
    machines
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting {name} {power}"))?;
    Ok(())
}

/// The chart installed with `helm install`; the operator binary runs with the Deployment's own
/// arguments (ports moved to free loopback ones) and a TokenRequest token of the chart's
/// ServiceAccount, so it has exactly the chart's RBAC. A machine goes off → on → off through
/// power Jobs (the harness plays the Job controller and the kubelet); the power-off drains a pod
/// of another namespace through the Eviction API, and both power Jobs pass the API server's
/// `restricted` Pod Security level. Then `kubectl auth can-i` with the same token
/// shows what the chart does NOT allow:
/// - reading a Secret not listed in credentialSecrets, listing Secrets (the listed one: yes);
/// - reading or writing Node CRs and Groups of another namespace; creating or deleting Node CRs
///   (the operator only patches them) or Groups in its own;
/// - creating Jobs in another namespace; reading Leases other than its own;
/// - creating, deleting or patching pods (it evicts; it only lists them), writing PDBs;
/// - creating Kubernetes Nodes (it patches and deletes existing ones; node names are not known
///   in advance, so those cannot be narrowed by name);
/// - creating Roles, RoleBindings, ClusterRoleBindings, ServiceAccount tokens; changing CRDs,
///   Deployments (its own included), ConfigMaps.
///
/// The Node it manages carries `infra.homecluster.dev/managed=true` once Ready.
///
/// The power pods' ServiceAccount (`<fullname>-power`, on every power Job) can do none of the
/// operator's things.
#[tokio::test]
async fn the_operator_with_only_the_charts_rbac_powers_a_machine_on_and_off_with_a_drain()
-> anyhow::Result<()> {
    let Some(helm) = Helm::locate()? else {
        return Ok(());
    };
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("helm-op").await?;
    let apps = cp.namespace("helm-apps").await?;
    let other = cp.namespace("helm-other").await?;
    helm.on(
        cp,
        &ns,
        &[
            "install",
            "lab",
            CHART,
            "--set",
            "crds.enabled=false",
            "--set",
            "credentialSecrets={bmc-m1}",
            "--set",
            "clusterAutoscaler.enabled=true",
            // The priority expander reads its ConfigMap through a reflector.
            "--set",
            "clusterAutoscaler.extraArgs={--expander=priority}",
        ],
    )?;
    let manifest = helm.on(cp, &ns, &["get", "manifest", "lab"])?;
    let objects = support::apply::parse_multi_doc("helm get manifest", &manifest)?;
    let mut running = ChartOperator::start(cp, &ns, &objects, "lab-kubectl-homelab").await?;
    let log = running.log.clone();
    let operator = &running.identity;
    let with_log = |e: anyhow::Error| e.context(support::process::log_tail(&log, 40));

    let admin = cp.client()?;
    let world = World::new(admin.clone());
    let group = Group::test("g").namespace(&ns).min(0).max(1).build();
    Api::<Group>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &group)
        .await?;
    let node = cp.unique_name("helm-m1");
    let machine = Machine::test("m1")
        .namespace(&ns)
        .group("g")
        .desired(PowerState::Off)
        .node_name(&node)
        .capacity([("cpu", "4"), ("memory", "8Gi"), ("pods", "110")])
        .build();
    let machines: Api<Machine> = Api::namespaced(admin.clone(), &ns);
    machines.create(&PostParams::default(), &machine).await?;
    phase(&machines, "m1", Phase::Off).await.map_err(with_log)?;

    // On: the power Job runs as the power account; the machine registers and is Ready.
    set_power(&machines, "m1", "on").await?;
    let on = power_job(&admin, &ns, "m1", "on").await.map_err(with_log)?;
    let pod_spec = on.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    assert_eq!(
        pod_spec.and_then(|p| p.service_account_name.as_deref()),
        Some("lab-kubectl-homelab-power")
    );
    world.complete_job(&ns, &on.name_any()).await?;
    world
        .node_up(&FakeNode::new(&node).adoptable().capacity("4", "8Gi"))
        .await?;
    phase(&machines, "m1", Phase::Ready)
        .await
        .map_err(with_log)?;
    // The Node it manages carries the label the chart's Deployments keep away from.
    let nodes: Api<Node> = Api::all(admin.clone());
    let managed = nodes.get(&node).await?;
    assert_eq!(
        managed
            .labels()
            .get(kubectl_homelab::operator::node::MANAGED_LABEL)
            .map(String::as_str),
        Some("true"),
        "{:?}",
        managed.labels()
    );

    // A workload of another namespace on it.
    let web: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web-0", "labels": { "app": "web" } },
        "spec": { "containers": [{ "name": "c", "image": "example.org/web:1" }] },
    }))?;
    world.create_bound_pod(&apps, web, &node).await?;
    world.run_pods(&node).await?;

    // Off: cordon, evict (the world finishes the terminating pod as a kubelet would), Job.
    set_power(&machines, "m1", "off").await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &apps);
    wait_for("web-0 evicted", || async {
        world.finish_terminating_pods(&node).await?;
        Ok(pods.get_opt("web-0").await?.is_none().then_some(()))
    })
    .await
    .map_err(with_log)?;
    let off = power_job(&admin, &ns, "m1", "off")
        .await
        .map_err(with_log)?;
    world.complete_job(&ns, &off.name_any()).await?;
    world.node_ready(&node, false).await?;
    phase(&machines, "m1", Phase::Off).await.map_err(with_log)?;
    // Both pods it made are within the restricted Pod Security level, as the API server judges.
    let restricted = namespace_enforcing(cp, "helm-restricted", "restricted").await?;
    for job in [&on, &off] {
        if let Some(broken) = violations(cp, &restricted, "restricted", template(job)?).await? {
            bail!("power Job {} is not restricted: {broken}", job.name_any());
        }
    }
    wait_for("the powered-off Node deleted", || async {
        Ok(nodes.get_opt(&node).await?.is_none().then_some(()))
    })
    .await
    .map_err(with_log)?;

    // Nothing the operator did was refused (a refused Event or status write is only logged).
    let text = std::fs::read_to_string(&log)?;
    // (Not a bare "403": the log's timestamps contain it, e.g. 20:18:33.440379.)
    let lower = text.to_lowercase();
    assert!(
        !lower.contains("forbidden") && !lower.contains("code: 403"),
        "the operator was refused something:\n{text}"
    );

    // What the token may do: the listed Secret, and nothing else on the lists above.
    let kc = operator.kubeconfig();
    let yes = |args: &[&str]| -> anyhow::Result<()> {
        ensure!(can_i(kc, args)?, "the operator should be able to: {args:?}");
        Ok(())
    };
    let no = |args: &[&str]| -> anyhow::Result<()> {
        ensure!(
            !can_i(kc, args)?,
            "the operator must NOT be able to: {args:?}"
        );
        Ok(())
    };
    yes(&["get", "secret/bmc-m1", "-n", &ns])?;
    no(&["get", "secret/bmc-m2", "-n", &ns])?;
    no(&["list", "secrets", "-n", &ns])?;
    no(&["get", "secret/bmc-m1", "-n", &other])?;
    for verb in ["get", "list", "patch"] {
        no(&[verb, "nodes.infra.homecluster.dev", "-n", &other])?;
        no(&[verb, "groups.infra.homecluster.dev", "-n", &other])?;
    }
    no(&[
        "patch",
        "nodes.infra.homecluster.dev",
        "--subresource=status",
        "-n",
        &other,
    ])?;
    no(&["create", "nodes.infra.homecluster.dev", "-n", &ns])?;
    no(&["delete", "nodes.infra.homecluster.dev", "-n", &ns])?;
    no(&["create", "groups.infra.homecluster.dev", "-n", &ns])?;
    no(&["delete", "groups.infra.homecluster.dev", "-n", &ns])?;
    no(&["create", "jobs.batch", "-n", &other])?;
    yes(&["create", "jobs.batch", "-n", &ns])?;
    no(&["get", "leases.coordination.k8s.io/someone-else", "-n", &ns])?;
    yes(&[
        "get",
        "leases.coordination.k8s.io/lab-kubectl-homelab-leader",
        "-n",
        &ns,
    ])?;
    for verb in ["create", "delete", "patch", "get"] {
        no(&[verb, "pods", "-n", &apps])?;
    }
    yes(&["create", "pods", "--subresource=eviction", "-n", &apps])?;
    no(&["create", "poddisruptionbudgets.policy", "-n", &apps])?;
    no(&["delete", "poddisruptionbudgets.policy", "-n", &apps])?;
    no(&["create", "nodes"])?;
    no(&["patch", "nodes", "--subresource=status"])?;
    no(&["create", "roles.rbac.authorization.k8s.io", "-n", &ns])?;
    no(&[
        "create",
        "rolebindings.rbac.authorization.k8s.io",
        "-n",
        &ns,
    ])?;
    no(&["create", "clusterrolebindings.rbac.authorization.k8s.io"])?;
    no(&[
        "create",
        "serviceaccounts",
        "--subresource=token",
        "-n",
        &ns,
    ])?;
    no(&["patch", "customresourcedefinitions.apiextensions.k8s.io"])?;
    no(&["patch", "deployments.apps/lab-kubectl-homelab", "-n", &ns])?;
    no(&["create", "configmaps", "-n", &ns])?;

    // The Cluster Autoscaler with the chart's arguments, its ServiceAccount's token and the
    // chart's cloud-config (dialling the operator on loopback instead of the Service): it elects
    // itself, runs its loops against the operator and writes its status, refused nothing (its
    // priority expander, on here, lists the ConfigMaps of its namespace).
    run_chart_cluster_autoscaler(cp, &ns, &objects, running.grpc_port).await?;

    // The power pods' account: nothing.
    let power = format!("--as=system:serviceaccount:{ns}:lab-kubectl-homelab-power");
    let admin_kc = cp.kubeconfig();
    for args in [
        vec!["get", "pods", "-n", &ns],
        vec!["get", "secret/bmc-m1", "-n", &ns],
        vec!["list", "nodes.infra.homecluster.dev", "-n", &ns],
        vec!["create", "jobs.batch", "-n", &ns],
        vec!["list", "nodes"],
    ] {
        let mut a = args.clone();
        a.push(&power);
        ensure!(
            !can_i(admin_kc, &a)?,
            "the power account must NOT be able to: {args:?}"
        );
    }

    // SIGTERM: the operator releases its Lease (a patch the chart allows) and exits cleanly.
    let pid = running.child.id().context("the operator exited early")?;
    // SAFETY: sends a signal to our own child process.
    ensure!(
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } == 0,
        "kill(SIGTERM)"
    );
    let status = tokio::time::timeout(WAIT, running.child.wait())
        .await
        .context("the operator did not exit after SIGTERM")??;
    let text = std::fs::read_to_string(&log)?;
    ensure!(status.success(), "{status:?}\n{text}");
    ensure!(!text.contains("forbidden"), "refused at shutdown:\n{text}");
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin, &ns)
        .get("lab-kubectl-homelab-leader")
        .await?;
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None, "{text}");
    Ok(())
}

/// Runs the chart's Cluster Autoscaler Deployment as a process until it wrote its status
/// ConfigMap (one full loop, after taking its Lease), then fails on anything the apiserver
/// refused it.
async fn run_chart_cluster_autoscaler(
    cp: &ControlPlane,
    ns: &str,
    objects: &[DynamicObject],
    grpc_port: u16,
) -> anyhow::Result<()> {
    let release = Release {
        namespace: ns.to_owned(),
        objects: objects.to_vec(),
    };
    let ca = release
        .run_cluster_autoscaler(cp, grpc_port, &["--scan-interval=2s"])
        .await?;
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(cp.client()?, ns);
    wait_for("CA's status ConfigMap in the release namespace", || async {
        Ok(maps.get_opt("cluster-autoscaler-status").await?)
    })
    .await
    .map_err(|e| {
        let lines = ca.log_lines();
        e.context(lines[lines.len().saturating_sub(40)..].join("\n"))
    })?;
    let refused: Vec<String> = ca
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("forbidden"))
        .collect();
    ensure!(
        refused.is_empty(),
        "the chart's Cluster Autoscaler was refused:\n{}",
        refused.join("\n")
    );
    Ok(())
}

/// Installed as `kubectl-homelab` on PATH (what krew does), kubectl finds the plugin: `kubectl
/// homelab --help` is ours and kubectl's completion of `kubectl homelab ...` asks
/// `kubectl_complete-homelab` (completions/), which asks the binary.
#[test]
fn kubectl_runs_the_plugin_and_completes_it_from_path() -> anyhow::Result<()> {
    if !Path::new(KUBECTL).exists() {
        ensure!(
            std::env::var(support::assets::REQUIRE_ENV).as_deref() != Ok("1"),
            "{KUBECTL} is missing"
        );
        return Ok(());
    }
    let bin = tempfile::tempdir()?;
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_kubectl-homelab"),
        bin.path().join("kubectl-homelab"),
    )?;
    std::fs::copy(
        repo().join("completions/kubectl_complete-homelab"),
        bin.path().join("kubectl_complete-homelab"),
    )?;
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    let kubectl = |args: &[&str]| -> anyhow::Result<String> {
        stdout_of(
            Command::new(KUBECTL)
                .args(args)
                .env("PATH", &path)
                .env_remove("KUBECONFIG"),
        )
    };
    let help = kubectl(&["homelab", "--help"])?;
    assert!(help.contains("Usage: kubectl homelab"), "{help}");
    assert!(help.contains("run-operator"), "{help}");
    let plugins = kubectl(&["plugin", "list", "--name-only"])?;
    assert!(
        plugins.lines().any(|l| l.trim() == "kubectl-homelab"),
        "{plugins}"
    );
    let completions = kubectl(&["__complete", "homelab", "run-op"])?;
    assert!(
        completions.lines().any(|l| l.starts_with("run-operator")),
        "{completions}"
    );
    let flags = kubectl(&["__complete", "homelab", "run-operator", "--pod-service"])?;
    assert!(
        flags
            .lines()
            .any(|l| l.starts_with("--pod-service-account")),
        "{flags}"
    );
    Ok(())
}
