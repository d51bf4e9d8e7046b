//! CRD types of `infra.homecluster.dev/v1alpha1`: `Group` and kind `Node` (Rust `Machine`),
//! a strict superset of the Go predecessor's API, with validation (enums, ranges, CEL rules)
//! in the generated schema.
pub mod cel;
mod conditions;
mod energy;
mod group;
mod machine;
mod parse;
mod power;
mod schedule;
#[cfg(test)]
mod tests;

/// The predecessor's `status.progress` (defined with the lifecycle, which maps phases onto it).
pub use crate::operator::machine::StatusProgress;
pub use conditions::*;
pub use energy::*;
pub use group::*;
pub use machine::*;
pub use parse::{
    FieldError, duration_problem, format_duration, is_mac, parse_decimal, parse_duration,
    parse_duration_arg, parse_mac, parse_threshold,
};
pub use power::*;
pub use schedule::*;

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

/// The Node CRD, cleaned up for the API server (see [`clean_schema`]), with the catchers of
/// YAML 1.1's bare `on:` / `off:` keys (see [`add_bare_key_catchers`]).
pub fn machine_crd() -> CustomResourceDefinition {
    let mut crd = clean_crd(Machine::crd());
    for version in &mut crd.spec.versions {
        if let Some(spec) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
        {
            add_bare_key_catchers(spec);
        }
    }
    crd
}

/// `kubectl apply` reads YAML 1.1, where an unquoted `on:` key is the boolean `true` and `off:`
/// is `false`; the API server then sees a key `true` / `false` and its strict field validation
/// says only "unknown field spec.power.true". The objects where people write those keys
/// (`spec.power`, `spec.watts`) list `true` and `false` as properties of the type the misread
/// key holds (a driver object, kept whole; a number of watts), so the request gets as far as
/// CEL, whose rules refuse them with the fix (src/operator/api/cel.rs). They need a type: the
/// API server leaves an untyped property out of the CEL object, and a rule naming it would not
/// compile.
fn add_bare_key_catchers(spec: &mut JSONSchemaProps) {
    /// A misread key (`true` / `false`), the rule that refuses it and the rule's message.
    type Catcher = (&'static str, &'static str, &'static str);
    let catchers: [(&str, &str, [Catcher; 2]); 2] = [
        (
            "power",
            "object",
            [
                ("true", cel::BARE_ON_KEY_RULE, cel::BARE_ON_KEY_MESSAGE),
                ("false", cel::BARE_OFF_KEY_RULE, cel::BARE_OFF_KEY_MESSAGE),
            ],
        ),
        (
            "watts",
            "number",
            [
                (
                    "true",
                    cel::BARE_ON_KEY_RULE,
                    cel::BARE_WATTS_ON_KEY_MESSAGE,
                ),
                (
                    "false",
                    cel::BARE_OFF_KEY_RULE,
                    cel::BARE_WATTS_OFF_KEY_MESSAGE,
                ),
            ],
        ),
    ];
    for (field, type_, keys) in catchers {
        let Some(object) = spec.properties.as_mut().and_then(|p| p.get_mut(field)) else {
            continue;
        };
        for (key, rule, message) in keys {
            let word = if key == "true" { "on" } else { "off" };
            object
                .properties
                .get_or_insert_with(Default::default)
                .insert(
                    key.to_owned(),
                    JSONSchemaProps {
                        description: Some(format!(
                            "Not a field: what YAML 1.1 makes of an unquoted `{word}:` key, listed \
                         so that it is refused with a message saying what to write instead."
                        )),
                        type_: Some(type_.to_owned()),
                        x_kubernetes_preserve_unknown_fields: (type_ == "object").then_some(true),
                        ..JSONSchemaProps::default()
                    },
                );
            object
                .x_kubernetes_validations
                .get_or_insert_with(Vec::new)
                .push(ValidationRule {
                    rule: rule.to_owned(),
                    message: Some(message.to_owned()),
                    ..ValidationRule::default()
                });
        }
    }
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

/// The string formats the API server knows, written without `-` as it compares them
/// (apiextensions-apiserver, pkg/apiserver/validation/formats.go). Its `k8s-short-name` and
/// `k8s-long-name` are left out: only API servers from 1.34 on know them, and the CRDs install
/// on older ones too.
const KNOWN_STRING_FORMATS: &[&str] = &[
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "isbn",
    "isbn10",
    "isbn13",
    "creditcard",
    "ssn",
    "hexcolor",
    "rgbcolor",
    "byte",
    "password",
    "date",
    "duration",
    "datetime",
];

/// Whether the API server knows `format` for a schema of type `type_` (the same check as its
/// `GetUnrecognizedFormats`): an integer takes `int32` / `int64`, a number `float` / `double`,
/// a string (or an untyped schema) one of [`KNOWN_STRING_FORMATS`], anything else none. Any
/// other format makes `kubectl apply` of the CRD print `Warning: unrecognized format`.
pub fn is_known_format(type_: Option<&str>, format: &str) -> bool {
    match type_.unwrap_or_default() {
        "integer" => matches!(format, "int32" | "int64"),
        "number" => matches!(format, "float" | "double"),
        "" | "string" => KNOWN_STRING_FORMATS.contains(&format.replace('-', "").as_str()),
        _ => false,
    }
}

/// A format the API server knows in place of one schemars writes: its integer formats
/// (`uint32`, `uint64`, `int8`, ...) become `int32` / `int64` by range (the schema keeps the
/// `minimum: 0` of an unsigned one; a `u64` above `i64::MAX` is not a value this API holds),
/// and any other unknown format is dropped.
fn known_format(type_: Option<&str>, format: &str) -> Option<String> {
    if is_known_format(type_, format) {
        return Some(format.to_owned());
    }
    match (type_, format) {
        (Some("integer"), "int8" | "int16" | "uint8" | "uint16") => Some("int32".to_owned()),
        (Some("integer"), "uint32" | "uint64" | "uint") => Some("int64".to_owned()),
        _ => None,
    }
}

/// Fixes what the derive leaves that the API server dislikes: schemars lists `null` among the
/// values of an optional enum (the field is already `nullable`), and gives unsigned integers
/// formats such as `uint64` that the API server does not know (see [`known_format`]).
fn clean_schema(schema: &mut JSONSchemaProps) {
    if let Some(values) = schema.enum_.as_mut() {
        values.retain(|v| !v.0.is_null());
    }
    if let Some(format) = schema.format.take() {
        schema.format = known_format(schema.type_.as_deref(), &format);
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
