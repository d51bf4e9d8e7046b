//! Server-side apply of YAML manifests (as `kubectl apply --server-side` does), any kind.

use std::path::Path;

use anyhow::Context as _;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde::Deserialize as _;

use super::control_plane::FIELD_MANAGER;

/// Every non-empty document of a multi-document YAML text.
pub fn parse_multi_doc(source: &str, text: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc)
            .with_context(|| format!("{source}: document {} is not valid YAML", i + 1))?;
        if value.is_null() {
            continue; // empty document (only comments, or a trailing `---`)
        }
        let obj: DynamicObject = serde_json::from_value(value)
            .with_context(|| format!("{source}: document {} is not a Kubernetes object", i + 1))?;
        objects.push(obj);
    }
    Ok(objects)
}

/// Applies one object (server-side, forced, field manager [`FIELD_MANAGER`]); namespaced kinds
/// go to `namespace`. With `strict`, unknown or duplicate fields are errors
/// (`fieldValidation=Strict`). An API server error is returned as the bare `kube::Error`
/// (`err.downcast_ref::<kube::Error>()`), for tests that expect a rejection.
pub async fn apply_object(
    client: &kube::Client,
    namespace: &str,
    obj: &DynamicObject,
    strict: bool,
) -> anyhow::Result<DynamicObject> {
    let types = obj.types.clone().unwrap_or_default();
    let gvk = GroupVersionKind::try_from(&types).with_context(|| {
        format!(
            "apiVersion {:?} of {} {:?}",
            types.api_version, types.kind, obj.metadata.name
        )
    })?;
    let (resource, caps) = discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut pp = PatchParams::apply(FIELD_MANAGER).force();
    if strict {
        pp = pp.validation_strict();
    }
    let mut obj = obj.clone();
    if caps.scope == Scope::Namespaced {
        obj.metadata.namespace = Some(namespace.to_owned());
    }
    let name = obj.metadata.name.clone().unwrap_or_default();
    Ok(api.patch(&name, &pp, &Patch::Apply(&obj)).await?)
}

/// Applies every object of a YAML file, in order; errors name the file and the object.
pub async fn apply_file(
    client: &kube::Client,
    namespace: &str,
    path: &Path,
    strict: bool,
) -> anyhow::Result<Vec<DynamicObject>> {
    apply_file_moved(client, namespace, path, strict, &[]).await
}

/// [`apply_file`] with each `(from, to)` of `replace` replaced in the text first, e.g. an
/// example's BMC address by a test server's, wherever the example writes it.
pub async fn apply_file_moved(
    client: &kube::Client,
    namespace: &str,
    path: &Path,
    strict: bool,
    replace: &[(&str, &str)],
) -> anyhow::Result<Vec<DynamicObject>> {
    let source = path.display().to_string();
    let mut text = std::fs::read_to_string(path).with_context(|| format!("reading {source}"))?;
    for (from, to) in replace {
        anyhow::ensure!(text.contains(from), "{source} no longer has {from}");
        text = text.replace(from, to);
    }
    let mut applied = Vec::new();
    for obj in parse_multi_doc(&source, &text)? {
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let name = obj.metadata.name.clone().unwrap_or_default();
        let done = apply_object(client, namespace, &obj, strict)
            .await
            .with_context(|| {
                format!("{source}: applying {kind} {name} in namespace {namespace}")
            })?;
        applied.push(done);
    }
    Ok(applied)
}
