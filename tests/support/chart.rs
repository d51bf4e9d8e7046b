//! An installed release of the chart, its bundled Cluster Autoscaler run as its Deployment
//! would run it where no kubelet runs: a process with the rendered command and its
//! ServiceAccount's token, its ports on loopback (the operator: [`super::helm::ChartOperator`]).
use anyhow::Context as _;
use kube::api::DynamicObject;

use super::ControlPlane;
use super::ca::ClusterAutoscaler;
use super::helm::{Helm, kind_of};
use super::process;

/// The rendered objects of a release (`helm get manifest`).
pub struct Release {
    pub namespace: String,
    pub objects: Vec<DynamicObject>,
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

    /// Starts the chart's Cluster Autoscaler with its rendered command and cloud-config
    /// (dialling the operator on loopback `grpc_port` instead of the Service), as its ServiceAccount, with `extra` flags after
    /// the chart's (CA's flag parsing lets a later flag win).
    pub async fn run_cluster_autoscaler(
        &self,
        cp: &ControlPlane,
        grpc_port: u16,
        extra: &[&str],
    ) -> anyhow::Result<ClusterAutoscaler> {
        let deployment = self
            .objects
            .iter()
            .filter(|o| kind_of(o) == "Deployment")
            .find(|o| {
                o.data["spec"]["template"]["spec"]["containers"][0]["command"][0]
                    .as_str()
                    .is_some_and(|a| a.ends_with("cluster-autoscaler"))
            })
            .context("no Deployment runs cluster-autoscaler")?;
        let account = deployment.data["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .context("the Cluster Autoscaler's Deployment names no ServiceAccount")?;
        let identity = cp.service_account(&self.namespace, account).await?;
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
                    format!("address: \"127.0.0.1:{grpc_port}\"\n")
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
