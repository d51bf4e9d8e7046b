//! The API server's own Pod Security admission as the judge of a pod's shape: a namespace that
//! enforces a level, and a server-side dry-run create of a Pod from a template.
use anyhow::Context as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec};
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::ControlPlane;

/// A fresh namespace whose Pod Security admission enforces `level`.
pub async fn namespace_enforcing(
    cp: &ControlPlane,
    prefix: &str,
    level: &str,
) -> anyhow::Result<String> {
    let ns = cp.namespace(prefix).await?;
    let patch = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": level,
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(cp.client()?)
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("labelling namespace {ns}"))?;
    Ok(ns)
}

pub fn template(job: &Job) -> anyhow::Result<PodSpec> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .context("the Job has a pod template")
}

/// A server-side dry-run create of a Pod with `spec` in `ns`: `Ok` when every admission
/// plugin (Pod Security among them) accepts it, else the API server's message.
pub async fn dry_run_pod(
    cp: &ControlPlane,
    ns: &str,
    spec: PodSpec,
) -> anyhow::Result<Result<(), String>> {
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(cp.unique_name("probe")),
            ..Default::default()
        },
        spec: Some(spec),
        ..Pod::default()
    };
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match Api::<Pod>::namespaced(cp.client()?, ns)
        .create(&params, &pod)
        .await
    {
        Ok(_) => Ok(Ok(())),
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(Err(s.message)),
        Err(e) => Err(e.into()),
    }
}

/// What Pod Security says a template violates at `level` (after `violates PodSecurity
/// "<level>:latest": `), or `None` when it is accepted.
pub async fn violations(
    cp: &ControlPlane,
    ns: &str,
    level: &str,
    spec: PodSpec,
) -> anyhow::Result<Option<String>> {
    Ok(match dry_run_pod(cp, ns, spec).await? {
        Ok(()) => None,
        Err(message) => {
            let marker = format!("violates PodSecurity \"{level}:latest\": ");
            let at = message
                .find(&marker)
                .with_context(|| format!("not a Pod Security refusal: {message}"))?;
            Some(message[at + marker.len()..].to_owned())
        }
    })
}
