//! CRD types of `infra.homecluster.dev/v1alpha1`: `Group` and kind `Node` (Rust `Machine`),
//! a strict superset of the Go predecessor's API, with validation (enums, ranges, CEL rules)
//! in the generated schema.
pub mod cel;
mod conditions;
mod group;
mod machine;
mod parse;
mod power;
#[cfg(test)]
mod tests;

/// The predecessor's `status.progress` (defined with the lifecycle, which maps phases onto it).
pub use crate::operator::machine::StatusProgress;
pub use conditions::*;
pub use group::*;
pub use machine::*;
pub use parse::{
    FieldError, duration_problem, format_duration, is_mac, parse_decimal, parse_duration,
    parse_duration_arg, parse_mac, parse_threshold,
};
pub use power::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    ValidationRule,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The string-keyed maps of the CRs (labels, capacity, allocatable): a sorted vector with the
/// API of a `BTreeMap` and its JSON. A map of one to a few entries costs its entries instead of
/// a 552-byte B-tree leaf, and the reflector keeps one Node CR per machine (BENCHMARKS.md,
/// "The memory target met"). Fields of this type take their schema from the `BTreeMap` they replace:
/// `#[schemars(with = "BTreeMap<String, V>")]`.
pub type FlatMap<V> = litemap::LiteMap<String, V>;

/// API group of both CRDs.
pub const API_GROUP: &str = "infra.homecluster.dev";
pub const API_VERSION: &str = "v1alpha1";

/// The predecessor's `health` (Node and Group status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Offline,
    Unknown,
}

/// `<Kind> <namespace>/<name>` for messages.
fn object_ref(kind: &str, meta: &ObjectMeta) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or("-"),
        meta.name.as_deref().unwrap_or("-")
    )
}

/// Both CRDs, Group first.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![group_crd(), machine_crd()]
}

/// The Group CRD, cleaned up for the API server (see [`clean_schema`]).
pub fn group_crd() -> CustomResourceDefinition {
    let mut crd = clean_crd(Group::crd());
    // A root rule: the derive only attaches rules to spec/status types.
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema
                .x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(ValidationRule {
                    rule: cel::GROUP_NAME_RULE.to_owned(),
                    message: Some(cel::GROUP_NAME_MESSAGE.to_owned()),
                    ..ValidationRule::default()
                });
        }
    }
    crd
}

/// The Node CRD, cleaned up for the API server (see [`clean_schema`]).
pub fn machine_crd() -> CustomResourceDefinition {
    clean_crd(Machine::crd())
}

fn clean_crd(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            clean_schema(schema);
        }
    }
    crd
}

/// Fixes what the derive leaves that the API server dislikes: schemars lists `null` among the
/// values of an optional enum (the field is already `nullable`).
fn clean_schema(schema: &mut JSONSchemaProps) {
    if let Some(values) = schema.enum_.as_mut() {
        values.retain(|v| !v.0.is_null());
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(
            schema
                .additional_properties
                .iter_mut()
                .filter_map(|a| match a {
                    JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                }),
        )
        .chain(schema.items.iter_mut().flat_map(|i| match i {
            JSONSchemaPropsOrArray::Schema(s) => vec![s.as_mut()],
            JSONSchemaPropsOrArray::Schemas(v) => v.iter_mut().collect(),
        }));
    for child in children {
        clean_schema(child);
    }
}

/// Both CRDs as one multi-document YAML, deterministic (what `crd gen` prints).
pub fn crds_yaml() -> Result<String, crate::yaml::YamlError> {
    crate::yaml::to_multi_doc(&crds())
}
