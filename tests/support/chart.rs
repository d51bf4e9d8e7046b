//! An installed release of the chart, run as its Deployments would run it where no kubelet
//! runs: the operator and the bundled Cluster Autoscaler as processes with the rendered
//! arguments and their own ServiceAccounts' tokens, the ports moved to loopback.
use std::path::PathBuf;

use anyhow::Context as _;
use kube::api::DynamicObject;

use super::ControlPlane;
use super::ca::ClusterAutoscaler;
use super::helm::{Helm, kind_of, operator_args};
use super::process::{self, Managed};

/// The rendered objects of a release (`helm get manifest`).
pub struct Release {
    pub namespace: String,
    pub objects: Vec<DynamicObject>,
}

/// The chart's operator, running.
pub struct Operator {
    pub process: Managed,
    pub log: PathBuf,
    /// `127.0.0.1:<port>` of its gRPC provider.
    pub grpc: String,
}

impl Release {
    /// The objects helm installed for `release` in `namespace`.
    pub fn installed(
        helm: &Helm,
        cp: &ControlPlane,
        namespace: &str,
        release: &str,
    ) -> anyhow::Result<Release> {
        let manifest = helm.on(cp, namespace, &["get", "manifest", release])?;
        Ok(Release {
            namespace: namespace.to_owned(),
            objects: super::apply::parse_multi_doc("helm get manifest", &manifest)?,
        })
    }

    /// The Deployment whose first container's arguments (or command) start with `first`.
    fn deployment(&self, field: &str, first: &str) -> anyhow::Result<&DynamicObject> {
        self.objects
            .iter()
            .filter(|o| kind_of(o) == "Deployment")
            .find(|o| {
                o.data["spec"]["template"]["spec"]["containers"][0][field][0]
                    .as_str()
                    .is_some_and(|a| a.ends_with(first))
            })
            .with_context(|| format!("no Deployment runs {first}"))
    }

    fn service_account(deployment: &DynamicObject) -> anyhow::Result<String> {
        deployment.data["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .map(str::to_owned)
            .context("the Deployment names no ServiceAccount")
    }

    /// Starts `run-operator` with the chart's arguments (listen and health addresses on free
    /// loopback ports) as the chart's operator ServiceAccount.
    pub async fn run_operator(&self, cp: &ControlPlane) -> anyhow::Result<Operator> {
        let deployment = self.deployment("args", "run-operator")?;
        let identity = cp
            .service_account(&self.namespace, &Self::service_account(deployment)?)
            .await?;
        let ports = process::free_ports(2)?;
        let grpc = format!("127.0.0.1:{}", ports[0]);
        let mut args: Vec<String> = operator_args(deployment)?
            .into_iter()
            .map(|a| {
                if a.starts_with("--listen=") {
                    format!("--listen={grpc}")
                } else if a.starts_with("--health-address=") {
                    format!("--health-address=127.0.0.1:{}", ports[1])
                } else {
                    a
                }
            })
            .collect();
        args.push(format!("--kubeconfig={}", identity.kubeconfig().display()));
        let log = cp.dir().join(format!("operator-{}.log", self.namespace));
        let process = Managed::spawn_with_env(
            "run-operator",
            std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-homelab")),
            &args,
            &log,
            &[("POD_NAME", "operator-0")],
        )
        .context("starting run-operator")?;
        Ok(Operator { process, log, grpc })
    }

    /// Starts the chart's Cluster Autoscaler with its rendered command and cloud-config
    /// (dialling `grpc` instead of the Service), as its ServiceAccount, with `extra` flags after
    /// the chart's (CA's flag parsing lets a later flag win).
    pub async fn run_cluster_autoscaler(
        &self,
        cp: &ControlPlane,
        grpc: &str,
        extra: &[&str],
    ) -> anyhow::Result<ClusterAutoscaler> {
        let deployment = self.deployment("command", "cluster-autoscaler")?;
        let identity = cp
            .service_account(&self.namespace, &Self::service_account(deployment)?)
            .await?;
        let command: Vec<String> = serde_json::from_value(
            deployment.data["spec"]["template"]["spec"]["containers"][0]["command"].clone(),
        )
        .context("the Cluster Autoscaler container's command")?;
        let cloud_config = self
            .objects
            .iter()
            .filter(|o| kind_of(o) == "ConfigMap")
            .find_map(|o| o.data["data"]["cloud-config.yaml"].as_str())
            .context("no cloud-config ConfigMap rendered")?;
        // The address line is the Service's name; the rest (TLS files, timeouts) stays.
        let cloud_config: String = cloud_config
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("address:") {
                    format!("address: \"{grpc}\"\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let path = cp
            .dir()
            .join(format!("cloud-config-{}.yaml", self.namespace));
        std::fs::write(&path, cloud_config)
            .with_context(|| format!("writing {}", path.display()))?;
        let port = process::free_ports(1)?[0];
        let mut args: Vec<String> = command
            .iter()
            .skip(1)
            .map(|a| {
                if a.starts_with("--cloud-config=") {
                    format!("--cloud-config={}", path.display())
                } else {
                    a.clone()
                }
            })
            .collect();
        args.extend([
            format!("--kubeconfig={}", identity.kubeconfig().display()),
            format!("--address=127.0.0.1:{port}"),
        ]);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        ClusterAutoscaler::start_with_args(cp, args, port)
    }
}
