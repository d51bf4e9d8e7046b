//! Warm spares in tests: the Cluster Autoscaler's CapacityBuffer CRD the chart ships, installed
//! into a test API server, and the CA flags that turn its buffer controller and pod injection on.
use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::ControlPlane;

/// The CRD, generated from CA 1.36.1's API package (its header says how), in the chart.
pub const CAPACITY_BUFFER_CRD: &str =
    "deploy/helm/kubectl-homelab/files/ca-crds/capacitybuffers.autoscaling.x-k8s.io.yaml";

/// What the chart passes CA with `clusterAutoscaler.capacityBuffers.enabled`.
pub const CA_BUFFER_FLAGS: [&str; 3] = [
    "--capacity-buffer-controller-enabled=true",
    "--capacity-buffer-pod-injection-enabled=true",
    "--capacity-buffer-pod-dry-run-enabled=false",
];

/// The CapacityBuffer CRD from the chart's file.
pub fn capacity_buffer_crd() -> anyhow::Result<CustomResourceDefinition> {
    let path = super::helm::repo().join(CAPACITY_BUFFER_CRD);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut docs = super::apply::parse_multi_doc(CAPACITY_BUFFER_CRD, &text)?;
    anyhow::ensure!(
        docs.len() == 1,
        "{CAPACITY_BUFFER_CRD}: one document expected"
    );
    let value = serde_json::to_value(docs.remove(0))?;
    serde_json::from_value(value).context("the CapacityBuffer CRD")
}

/// Installs the CapacityBuffer CRD and waits until it is served.
pub async fn install_capacity_buffer_crd(cp: &ControlPlane) -> anyhow::Result<()> {
    cp.install_crds(&[capacity_buffer_crd()?]).await
}
