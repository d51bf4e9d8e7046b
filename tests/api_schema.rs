//! The generated CRD schemas: every CEL rule where it belongs, structural, compatible with the Go
//! predecessor's fields, and the examples and `tests/data/cel_cases.yaml` behave as documented.
//! CEL rules run locally through kube-cel; the control-plane tests repeat the cases against a
//! real kube-apiserver.
use std::path::{Path, PathBuf};

use kube::core::cel::{ErrorKind, Validator, compile_schema};
use kubectl_homelab::operator::api::{self, Direction, Group, Machine, cel};
use kubectl_homelab::yaml;
use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The openAPIV3Schema of the CRD for `kind` as JSON.
fn schema(kind: &str) -> Value {
    let crd = api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("derived CRDs carry a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// Walks `path` (`spec.power.powerOn`, `[]` for array items, `{}` for map values).
fn node_at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut node = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        node = match part {
            "[]" => &node["items"],
            "{}" => &node["additionalProperties"],
            name => &node["properties"][name],
        };
        assert!(!node.is_null(), "schema has no {path} (stopped at {part})");
    }
    node
}

fn rules_at(schema: &Value, path: &str) -> Vec<(String, String)> {
    node_at(schema, path)["x-kubernetes-validations"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    (
                        r["rule"].as_str().unwrap_or_default().to_owned(),
                        r["message"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Where each rule must sit. Keep in step with src/operator/api.
fn expected_rules() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    let mut out = vec![];
    for field in [
        "scaleDownUtilizationThreshold",
        "scaleDownGpuUtilizationThreshold",
    ] {
        out.push(("Group", field, cel::THRESHOLD_RULE, cel::THRESHOLD_MESSAGE));
    }
    for field in [
        "scaleDownUnneededTime",
        "scaleDownUnreadyTime",
        "maxNodeProvisionTime",
    ] {
        out.push(("Group", field, cel::DURATION_RULE, cel::DURATION_MESSAGE));
    }
    out.push((
        "Group",
        "powerOnFailureCooldown",
        cel::DURATION_RULE,
        cel::DURATION_MESSAGE,
    ));
    out.push((
        "Group",
        "remediation.powerCycleAfter",
        cel::POSITIVE_DURATION_RULE,
        cel::POSITIVE_DURATION_MESSAGE,
    ));
    out.push(("Group", "", cel::MIN_LE_MAX_RULE, cel::MIN_LE_MAX_MESSAGE));
    let node = [
        ("", cel::ON_NOT_BOTH_RULE, cel::ON_NOT_BOTH_MESSAGE),
        (
            "labels",
            cel::NO_RESERVED_LABEL_RULE,
            cel::NO_RESERVED_LABEL_MESSAGE,
        ),
        ("", cel::OFF_NOT_BOTH_RULE, cel::OFF_NOT_BOTH_MESSAGE),
        ("", cel::NEEDS_ON_RULE, cel::NEEDS_ON_MESSAGE),
        ("", cel::NEEDS_OFF_RULE, cel::NEEDS_OFF_MESSAGE),
        (
            "power",
            cel::POWER_ON_NOT_LEGACY_RULE,
            cel::POWER_ON_NOT_LEGACY_MESSAGE,
        ),
        (
            "power",
            cel::POWER_OFF_NOT_LEGACY_RULE,
            cel::POWER_OFF_NOT_LEGACY_MESSAGE,
        ),
        ("power", cel::BARE_ON_KEY_RULE, cel::BARE_ON_KEY_MESSAGE),
        ("power", cel::BARE_OFF_KEY_RULE, cel::BARE_OFF_KEY_MESSAGE),
        (
            "watts",
            cel::STANDBY_NOT_LEGACY_RULE,
            cel::STANDBY_NOT_LEGACY_MESSAGE,
        ),
        (
            "watts",
            cel::BARE_ON_KEY_RULE,
            cel::BARE_WATTS_ON_KEY_MESSAGE,
        ),
        (
            "watts",
            cel::BARE_OFF_KEY_RULE,
            cel::BARE_WATTS_OFF_KEY_MESSAGE,
        ),
        // The deprecated keys hold the same driver types, with their rules.
        (
            "power.on",
            cel::ONE_ON_DRIVER_RULE,
            cel::ONE_ON_DRIVER_MESSAGE,
        ),
        (
            "power.off",
            cel::ONE_OFF_DRIVER_RULE,
            cel::ONE_OFF_DRIVER_MESSAGE,
        ),
        (
            "bootTimeout",
            cel::BOOT_TIMEOUT_RULE,
            cel::BOOT_TIMEOUT_MESSAGE,
        ),
        (
            "shutdownTimeout",
            cel::POSITIVE_DURATION_RULE,
            cel::POSITIVE_DURATION_MESSAGE,
        ),
        (
            "pricing.hourlyRate",
            cel::DECIMAL_RULE,
            cel::DECIMAL_MESSAGE,
        ),
        ("pricing.podRate", cel::DECIMAL_RULE, cel::DECIMAL_MESSAGE),
        (
            "power.powerOn",
            cel::ONE_ON_DRIVER_RULE,
            cel::ONE_ON_DRIVER_MESSAGE,
        ),
        (
            "power.powerOff",
            cel::ONE_OFF_DRIVER_RULE,
            cel::ONE_OFF_DRIVER_MESSAGE,
        ),
        (
            "power.powerOn.wakeOnLan.mac",
            cel::MAC_RULE,
            cel::MAC_MESSAGE,
        ),
        (
            "power.powerOn.wakeOnLan.broadcast",
            cel::IPV4_RULE,
            cel::IPV4_MESSAGE,
        ),
        (
            "power.powerOn.redfish.endpoint",
            cel::URL_RULE,
            cel::URL_MESSAGE,
        ),
        (
            "power.powerOff.redfish.endpoint",
            cel::URL_RULE,
            cel::URL_MESSAGE,
        ),
        ("power.powerOn.http.url", cel::URL_RULE, cel::URL_MESSAGE),
        ("power.powerOff.http.url", cel::URL_RULE, cel::URL_MESSAGE),
        (
            "startupPodSpec.volumes.[]",
            cel::ONE_VOLUME_SOURCE_RULE,
            cel::ONE_VOLUME_SOURCE_MESSAGE,
        ),
        (
            "shutdownPodSpec.volumes.[]",
            cel::ONE_VOLUME_SOURCE_RULE,
            cel::ONE_VOLUME_SOURCE_MESSAGE,
        ),
        (
            "power.powerOn.job.volumes.[]",
            cel::ONE_VOLUME_SOURCE_RULE,
            cel::ONE_VOLUME_SOURCE_MESSAGE,
        ),
        (
            "power.powerOff.job.volumes.[]",
            cel::ONE_VOLUME_SOURCE_RULE,
            cel::ONE_VOLUME_SOURCE_MESSAGE,
        ),
    ];
    out.extend(node.into_iter().map(|(p, r, m)| ("Node", p, r, m)));
    // The network drivers' settings, in both directions.
    let drivers = [
        (
            "power.powerOn.redfish",
            cel::TLS_CHOICE_RULE,
            cel::TLS_CHOICE_MESSAGE,
        ),
        (
            "power.powerOn.redfish.forceOffAfter",
            cel::DURATION_RULE,
            cel::DURATION_MESSAGE,
        ),
        (
            "power.powerOn.redfish.timeout",
            cel::POSITIVE_DURATION_RULE,
            cel::POSITIVE_DURATION_MESSAGE,
        ),
        (
            "power.powerOn.http",
            cel::TLS_CHOICE_RULE,
            cel::TLS_CHOICE_MESSAGE,
        ),
        (
            "power.powerOn.http.timeout",
            cel::POSITIVE_DURATION_RULE,
            cel::POSITIVE_DURATION_MESSAGE,
        ),
        (
            "power.powerOn.http.status.url",
            cel::URL_RULE,
            cel::URL_MESSAGE,
        ),
        (
            "power.powerOff.redfish",
            cel::TLS_CHOICE_RULE,
            cel::TLS_CHOICE_MESSAGE,
        ),
        (
            "power.powerOff.redfish.forceOffAfter",
            cel::DURATION_RULE,
            cel::DURATION_MESSAGE,
        ),
        (
            "power.powerOff.redfish.timeout",
            cel::POSITIVE_DURATION_RULE,
            cel::POSITIVE_DURATION_MESSAGE,
        ),
        (
            "power.powerOff.http",
            cel::TLS_CHOICE_RULE,
            cel::TLS_CHOICE_MESSAGE,
        ),
        (
            "power.powerOff.http.timeout",
            cel::POSITIVE_DURATION_RULE,
            cel::POSITIVE_DURATION_MESSAGE,
        ),
        (
            "power.powerOff.http.status.url",
            cel::URL_RULE,
            cel::URL_MESSAGE,
        ),
        (
            "power.powerOn.redfish",
            cel::REDFISH_HTTPS_RULE,
            cel::REDFISH_HTTPS_MESSAGE,
        ),
        (
            "power.powerOff.redfish",
            cel::REDFISH_HTTPS_RULE,
            cel::REDFISH_HTTPS_MESSAGE,
        ),
        (
            "power.powerOn.http",
            cel::HTTP_HTTPS_RULE,
            cel::HTTP_HTTPS_MESSAGE,
        ),
        (
            "power.powerOn.ipmi",
            cel::IPMI_CIPHER_SUITE_RULE,
            cel::IPMI_CIPHER_SUITE_MESSAGE,
        ),
        (
            "power.powerOff.ipmi",
            cel::IPMI_CIPHER_SUITE_RULE,
            cel::IPMI_CIPHER_SUITE_MESSAGE,
        ),
        (
            "power.powerOff.ipmi.forceOffAfter",
            cel::DURATION_RULE,
            cel::DURATION_MESSAGE,
        ),
        (
            "power.powerOff.ipmi.timeout",
            cel::POSITIVE_DURATION_RULE,
            cel::POSITIVE_DURATION_MESSAGE,
        ),
        (
            "power.powerOff.http",
            cel::HTTP_HTTPS_RULE,
            cel::HTTP_HTTPS_MESSAGE,
        ),
    ];
    out.extend(drivers.into_iter().map(|(p, r, m)| ("Node", p, r, m)));
    let meter = [
        (
            "meter",
            cel::ONE_METER_SOURCE_RULE,
            cel::ONE_METER_SOURCE_MESSAGE,
        ),
        (
            "meter.interval",
            cel::POSITIVE_DURATION_RULE,
            cel::POSITIVE_DURATION_MESSAGE,
        ),
        (
            "meter.redfish",
            cel::TLS_CHOICE_RULE,
            cel::TLS_CHOICE_MESSAGE,
        ),
        ("meter.redfish.endpoint", cel::URL_RULE, cel::URL_MESSAGE),
        (
            "meter.redfish.timeout",
            cel::POSITIVE_DURATION_RULE,
            cel::POSITIVE_DURATION_MESSAGE,
        ),
        ("meter.http", cel::TLS_CHOICE_RULE, cel::TLS_CHOICE_MESSAGE),
        (
            "meter.http",
            cel::HTTP_METER_HTTPS_RULE,
            cel::HTTP_METER_HTTPS_MESSAGE,
        ),
        ("meter.http.url", cel::URL_RULE, cel::URL_MESSAGE),
        (
            "meter.http.timeout",
            cel::POSITIVE_DURATION_RULE,
            cel::POSITIVE_DURATION_MESSAGE,
        ),
    ];
    out.extend(meter.into_iter().map(|(p, r, m)| ("Node", p, r, m)));
    for field in ["from", "to"] {
        out.push((
            "Group",
            if field == "from" {
                "electricity.timeOfUse.[].from"
            } else {
                "electricity.timeOfUse.[].to"
            },
            cel::DURATION_RULE,
            cel::DURATION_MESSAGE,
        ));
    }
    // Weekly windows: the schedule on the Group, quiet hours on both kinds.
    let windows = [
        ("Group", "schedule.[]", "schedule.[].from", "schedule.[].to"),
        (
            "Group",
            "wear.quietHours.[]",
            "wear.quietHours.[].from",
            "wear.quietHours.[].to",
        ),
        (
            "Node",
            "wear.quietHours.[]",
            "wear.quietHours.[].from",
            "wear.quietHours.[].to",
        ),
    ];
    for (kind, window, from, to) in windows {
        out.push((
            kind,
            window,
            cel::WINDOW_NOT_EMPTY_RULE,
            cel::WINDOW_NOT_EMPTY_MESSAGE,
        ));
        for field in [from, to] {
            out.push((kind, field, cel::TIME_OF_DAY_RULE, cel::TIME_OF_DAY_MESSAGE));
        }
    }
    for kind in ["Group", "Node"] {
        out.push((
            kind,
            "wear.quietHours.[].powerOnAfter",
            cel::POSITIVE_DURATION_RULE,
            cel::POSITIVE_DURATION_MESSAGE,
        ));
    }
    out
}

#[test]
fn every_cel_rule_sits_where_it_belongs() {
    for (kind, field, rule, message) in expected_rules() {
        let s = schema(kind);
        let path = format!("spec.{field}");
        let rules = rules_at(&s, &path);
        assert!(
            rules.iter().any(|(r, m)| r == rule && m == message),
            "{kind} {path} lacks rule {rule:?}; has {rules:?}"
        );
    }
    let root = rules_at(&schema("Group"), "");
    assert!(
        root.contains(&(
            cel::GROUP_NAME_RULE.to_owned(),
            cel::GROUP_NAME_MESSAGE.to_owned()
        )),
        "Group root rules: {root:?}"
    );
    // Every rule of cel::ALL_RULES is used somewhere.
    for (rule, _) in cel::ALL_RULES {
        assert!(
            *rule == cel::GROUP_NAME_RULE || expected_rules().iter().any(|(_, _, r, _)| r == rule),
            "rule {rule:?} is in cel::ALL_RULES but not in the schema"
        );
    }
}

/// Collects (path, rule) of every x-kubernetes-validations entry.
fn all_rules(node: &Value, path: &str, out: &mut Vec<(String, String)>) {
    if let Some(rules) = node["x-kubernetes-validations"].as_array() {
        for r in rules {
            out.push((
                path.to_owned(),
                r["rule"].as_str().unwrap_or_default().to_owned(),
            ));
            assert!(
                r["message"].as_str().is_some_and(|m| !m.is_empty()),
                "rule at {path} has no message: {r}"
            );
        }
    }
    if let Some(props) = node["properties"].as_object() {
        for (k, v) in props {
            all_rules(v, &format!("{path}.{k}"), out);
        }
    }
    for key in ["items", "additionalProperties"] {
        if node[key].is_object() {
            all_rules(&node[key], &format!("{path}.{key}"), out);
        }
    }
}

#[test]
fn no_rule_outside_the_table_and_all_compile() {
    for kind in ["Group", "Node"] {
        let s = schema(kind);
        let mut found = vec![];
        all_rules(&s, "", &mut found);
        for (path, rule) in &found {
            assert!(
                cel::ALL_RULES.iter().any(|(r, _)| r == rule),
                "{kind}{path}: rule {rule:?} is not in cel::ALL_RULES"
            );
        }
        let compiled = compile_schema(&s);
        assert!(
            !has_compile_errors(&compiled),
            "{kind}: a CEL rule does not compile"
        );
    }
}

fn has_compile_errors(c: &kube::core::cel::CompiledSchema) -> bool {
    c.has_errors()
        || c.properties.values().any(has_compile_errors)
        || c.items.as_deref().is_some_and(has_compile_errors)
        || c.additional_properties
            .as_deref()
            .is_some_and(has_compile_errors)
}

/// The API server's structural-schema rules that a derive can break.
fn check_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        problems.push(format!("{path}: schema is not an object"));
        return;
    };
    for banned in [
        "$ref",
        "definitions",
        "$defs",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "const",
    ] {
        if obj.contains_key(banned) {
            problems.push(format!("{path}: has {banned}"));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let ty = obj.get("type").and_then(Value::as_str);
    if ty.is_none() && !int_or_string && !preserve {
        problems.push(format!("{path}: no type"));
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array)
        && values.iter().any(Value::is_null)
    {
        problems.push(format!("{path}: null in enum"));
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(required) = obj.get("required").and_then(Value::as_array) {
        for r in required {
            let name = r.as_str().unwrap_or_default();
            if obj["properties"].get(name).is_none() {
                problems.push(format!("{path}: required {name} is not a property"));
            }
        }
    }
    if ty == Some("array") && !obj.get("items").is_some_and(Value::is_object) {
        problems.push(format!("{path}: array without items"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            check_structural(v, &format!("{path}.{k}"), problems);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = obj.get(key).filter(|v| v.is_object()) {
            check_structural(v, &format!("{path}.{key}"), problems);
        }
    }
    // A string checked by a CEL rule needs a maxLength, or the API server's cost estimate of a
    // regex over a 3 MB string can exceed its budget and the CRD is refused.
    if ty == Some("string")
        && obj.contains_key("x-kubernetes-validations")
        && !obj.contains_key("maxLength")
    {
        problems.push(format!("{path}: string with CEL rules but no maxLength"));
    }
}

#[test]
fn schemas_are_structural() {
    for kind in ["Group", "Node"] {
        let mut problems = vec![];
        check_structural(&schema(kind), kind, &mut problems);
        assert!(
            problems.is_empty(),
            "{kind} schema is not structural:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn crd_metadata_printer_columns_and_names() {
    for crd in api::crds() {
        let names = &crd.spec.names;
        assert_eq!(crd.spec.group, api::API_GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            names.categories.as_deref(),
            Some(&["homelab".to_owned()][..])
        );
        let short = names.short_names.clone().unwrap_or_default();
        assert!(!short.is_empty(), "{} has no shortName", names.kind);
        for s in &short {
            assert!(
                !["no", "node", "nodes", "g", "group"].contains(&s.as_str()),
                "shortName {s} clashes"
            );
        }
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, api::API_VERSION);
        assert!(v.served && v.storage);
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let cols: Vec<String> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        let want: &[&str] = match names.kind.as_str() {
            "Node" => &["Desired", "Observed", "Phase", "Group", "Age"],
            "Group" => &["Min", "Max", "Target", "Ready", "Age"],
            other => panic!("unexpected CRD kind {other}"),
        };
        for w in want {
            assert!(
                cols.iter().any(|c| c == w),
                "{} lacks printer column {w}: {cols:?}",
                names.kind
            );
        }
    }
}

/// Field paths and OpenAPI types of the Go predecessor's v1alpha1 spec (from its published
/// CRDs). Each must exist with the same type so its YAML applies under strict validation.
const PREDECESSOR_FIELDS: &[(&str, &str, &str)] = &[
    ("Group", "scaleDownUtilizationThreshold", "string"),
    ("Group", "scaleDownGpuUtilizationThreshold", "string"),
    ("Group", "scaleDownUnneededTime", "string"),
    ("Group", "scaleDownUnreadyTime", "string"),
    ("Group", "maxNodeProvisionTime", "string"),
    ("Group", "zeroOrMaxNodeScaling", "boolean"),
    ("Group", "ignoreDaemonSetsUtilization", "boolean"),
    ("Node", "powerState", "string"),
    ("Node", "kubernetesNodeName", "string"),
    ("Node", "pricing", "object"),
    ("Node", "pricing.hourlyRate", "string"),
    ("Node", "pricing.podRate", "string"),
    ("Node", "taintsToRemove", "array"),
    ("Node", "taintsToRemove.[].key", "string"),
    ("Node", "taintsToRemove.[].value", "string"),
    ("Node", "taintsToRemove.[].effect", "string"),
    ("Node", "taintsToRemove.[].timeAdded", "string"),
    ("Node", "startupPodSpec", "object"),
    ("Node", "shutdownPodSpec", "object"),
    ("Node", "startupPodSpec.image", "string"),
    ("Node", "startupPodSpec.command", "array"),
    ("Node", "startupPodSpec.args", "array"),
    ("Node", "startupPodSpec.serviceAccount", "string"),
    ("Node", "startupPodSpec.ttlSecondsAfterFinished", "integer"),
    ("Node", "startupPodSpec.volumes.[].name", "string"),
    ("Node", "startupPodSpec.volumes.[].mountPath", "string"),
    ("Node", "startupPodSpec.volumes.[].secretName", "string"),
    ("Node", "startupPodSpec.volumes.[].configMapName", "string"),
    ("Node", "shutdownPodSpec.volumes.[].secretName", "string"),
];

const PREDECESSOR_STATUS: &[(&str, &str, &str)] = &[
    ("Node", "powerState", "string"),
    ("Node", "progress", "string"),
    ("Node", "lastStartupTime", "string"),
    ("Node", "lastShutdownTime", "string"),
    ("Node", "health", "string"),
    ("Node", "conditions", "array"),
    ("Group", "health", "string"),
    ("Group", "conditions", "array"),
];

#[test]
fn predecessor_fields_exist_with_their_types() {
    for (kind, field, ty) in PREDECESSOR_FIELDS {
        let s = schema(kind);
        assert_eq!(
            node_at(&s, &format!("spec.{field}"))["type"],
            *ty,
            "{kind} spec.{field}"
        );
    }
    for (kind, field, ty) in PREDECESSOR_STATUS {
        let s = schema(kind);
        assert_eq!(
            node_at(&s, &format!("status.{field}"))["type"],
            *ty,
            "{kind} status.{field}"
        );
    }
    let n = schema("Node");
    assert_eq!(
        node_at(&n, "spec.powerState")["enum"],
        serde_json::json!(["on", "off"])
    );
    assert_eq!(
        node_at(&n, "status.progress")["enum"],
        serde_json::json!(["shutdown", "startingup", "ready", "shuttingdown"])
    );
    assert_eq!(
        node_at(&n, "status.health")["enum"],
        serde_json::json!(["healthy", "offline", "unknown"])
    );
    // Conditions are a map keyed by type, so server-side apply and patches upsert them.
    for kind in ["Group", "Node"] {
        let c = node_at(&schema(kind), "status.conditions").clone();
        assert_eq!(c["x-kubernetes-list-type"], "map", "{kind}");
        assert_eq!(
            c["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"]),
            "{kind}"
        );
    }
    // Only what a machine needs is required of a predecessor object: its spec's own required
    // lists must not name more than the predecessor's did.
    let spec_required = node_at(&n, "spec")["required"].clone();
    assert!(
        spec_required.is_null(),
        "Node spec requires {spec_required}"
    );
    let g = schema("Group");
    assert!(node_at(&g, "spec")["required"].is_null());
}

/// A small OpenAPI checker: unknown fields (kubectl's strict validation), types, enums,
/// required, bounds. Enough to tell a valid example from a broken one offline.
fn check_object(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != Value::Bool(true) {
            errors.push(format!("{path}: null"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !(value.is_i64() || value.is_u64() || value.is_string()) {
            errors.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(value)
    {
        errors.push(format!("{path}: Unsupported value {value}"));
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(obj) = value.as_object() else {
                errors.push(format!("{path}: must be an object"));
                return;
            };
            for (k, v) in obj {
                let p = format!("{path}.{k}");
                if let Some(child) = schema["properties"].get(k) {
                    check_object(child, v, &p, errors);
                } else if schema["additionalProperties"].is_object() {
                    check_object(&schema["additionalProperties"], v, &p, errors);
                } else if path.is_empty()
                    && ["apiVersion", "kind", "metadata"].contains(&k.as_str())
                {
                } else if schema["x-kubernetes-preserve-unknown-fields"] != Value::Bool(true) {
                    errors.push(format!("{p}: unknown field"));
                }
            }
            for r in schema["required"].as_array().into_iter().flatten() {
                let name = r.as_str().unwrap_or_default();
                if !obj.contains_key(name) {
                    errors.push(format!("{path}.{name}: Required value"));
                }
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => {
                if schema["maxItems"]
                    .as_u64()
                    .is_some_and(|max| items.len() as u64 > max)
                {
                    errors.push(format!("{path}: too many items"));
                }
                for (i, item) in items.iter().enumerate() {
                    check_object(&schema["items"], item, &format!("{path}[{i}]"), errors);
                }
            }
            None => errors.push(format!("{path}: must be an array")),
        },
        Some("string") => match value.as_str() {
            Some(s) => {
                if schema["maxLength"]
                    .as_u64()
                    .is_some_and(|m| s.chars().count() as u64 > m)
                {
                    errors.push(format!("{path}: too long"));
                }
                if schema["format"] == "date-time" && s.parse::<jiff::Timestamp>().is_err() {
                    errors.push(format!("{path}: not a date-time"));
                }
            }
            None => errors.push(format!("{path}: must be of type string")),
        },
        Some("integer") | Some("number") => {
            let Some(n) = value.as_f64() else {
                errors.push(format!("{path}: must be a number"));
                return;
            };
            if schema["type"] == "integer" && !(value.is_i64() || value.is_u64()) {
                errors.push(format!("{path}: must be an integer"));
            }
            if schema["minimum"].as_f64().is_some_and(|m| n < m) {
                errors.push(format!(
                    "{path}: should be greater than or equal to {}",
                    schema["minimum"]
                ));
            }
            if schema["maximum"].as_f64().is_some_and(|m| n > m) {
                errors.push(format!(
                    "{path}: should be less than or equal to {}",
                    schema["maximum"]
                ));
            }
        }
        Some("boolean") if !value.is_boolean() => {
            errors.push(format!("{path}: must be a boolean"));
        }
        _ => {}
    }
}

fn schema_errors(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let mut errors = vec![];
    check_object(&schema(kind), object, "", &mut errors);
    errors
}

fn cel_errors(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap_or_default();
    match Validator::new().validate(&schema(kind), object, None) {
        Ok(()) => vec![],
        Err(errors) => errors
            .iter()
            .map(|e| {
                // A rule that cannot even be evaluated is a bug in the rule, not a rejection.
                assert!(
                    matches!(e.kind, ErrorKind::ValidationFailure),
                    "rule {:?} did not evaluate on {object}: {e}",
                    e.rule
                );
                e.to_string()
            })
            .collect(),
    }
}

#[derive(Deserialize)]
struct CelCase {
    name: String,
    check: String,
    message: String,
    object: Value,
}

fn cel_cases() -> Vec<CelCase> {
    let path = root().join("tests/data/cel_cases.yaml");
    let text = std::fs::read_to_string(&path).expect("tests/data/cel_cases.yaml is readable");
    yaml::from_str(&path.display().to_string(), &text).expect("cel_cases.yaml parses")
}

#[test]
fn each_cel_case_is_rejected_with_its_message() {
    let cases = cel_cases();
    assert!(cases.len() >= 20, "too few cases: {}", cases.len());
    let mut names = std::collections::BTreeSet::new();
    for case in &cases {
        assert!(
            names.insert(case.name.clone()),
            "duplicate case {}",
            case.name
        );
        let schema_errs = schema_errors(&case.object);
        match case.check.as_str() {
            "cel" => {
                // Valid for the schema, so the API server gets as far as the rule and shows our
                // message.
                assert!(
                    schema_errs.is_empty(),
                    "{}: schema rejects it first: {schema_errs:?}",
                    case.name
                );
                let errs = cel_errors(&case.object);
                assert!(
                    errs.iter().any(|e| e.contains(&case.message)),
                    "{}: expected a CEL error containing {:?}, got {errs:?}",
                    case.name,
                    case.message
                );
                // The case's message is really one of ours.
                assert!(
                    cel::ALL_RULES
                        .iter()
                        .any(|(_, m)| m.contains(&case.message)),
                    "{}: {:?} is not part of any rule message",
                    case.name,
                    case.message
                );
            }
            "schema" => assert!(!schema_errs.is_empty(), "{}: schema accepts it", case.name),
            other => panic!("{}: unknown check {other}", case.name),
        }
    }
}

#[test]
fn threshold_message_says_to_write_a_fraction() {
    assert!(cel::THRESHOLD_MESSAGE.contains("\"0.7\""));
    let case = cel_cases()
        .into_iter()
        .find(|c| c.object["spec"]["scaleDownUtilizationThreshold"] == "70")
        .expect("a case with threshold \"70\"");
    assert!(cel_errors(&case.object).iter().any(|e| e.contains("0.7")));
}

/// Values the rules accept, checked one at a time on a valid base object.
#[test]
fn rules_accept_valid_values() {
    let base_group = serde_json::json!({
        "apiVersion": "infra.homecluster.dev/v1alpha1", "kind": "Group",
        "metadata": {"name": "g"}, "spec": {}
    });
    for (field, value) in [
        ("scaleDownUtilizationThreshold", "0.5"),
        ("scaleDownUtilizationThreshold", "1"),
        ("scaleDownUtilizationThreshold", "0"),
        ("scaleDownUtilizationThreshold", ".25"),
        ("scaleDownUnneededTime", "10m"),
        ("scaleDownUnneededTime", "1h30m"),
        ("scaleDownUnneededTime", "0"),
        ("scaleDownUnneededTime", "0s"),
        ("maxNodeProvisionTime", "1.5h"),
        ("maxNodeProvisionTime", "15m0s"),
        ("scaleDownUnreadyTime", "300ms"),
    ] {
        let mut g = base_group.clone();
        g["spec"][field] = Value::from(value);
        assert_eq!(cel_errors(&g), Vec::<String>::new(), "{field}={value}");
        // The Rust parsers agree with the rules.
        let typed: Group = serde_json::from_value(g).expect("typed");
        assert!(typed.autoscaling_options().is_ok(), "{field}={value}");
    }
    // The power-on failure cool-down and the opt-in remediation.
    let mut g = base_group.clone();
    g["spec"]["powerOnFailureCooldown"] = "45m".into();
    g["spec"]["remediation"] = serde_json::json!({"powerCycleAfter": "15m"});
    assert_eq!(cel_errors(&g), Vec::<String>::new());
    assert_eq!(schema_errors(&g), Vec::<String>::new());
    let typed: Group = serde_json::from_value(g).expect("typed");
    assert_eq!(
        typed.power_on_failure_cooldown().ok().flatten(),
        Some(jiff::SignedDuration::from_mins(45))
    );
    assert_eq!(
        typed.remediate_after().ok().flatten(),
        Some(jiff::SignedDuration::from_mins(15))
    );
    let mut g = base_group.clone();
    g["spec"]["minSize"] = 2.into();
    g["spec"]["maxSize"] = 2.into();
    assert!(cel_errors(&g).is_empty());
    for mac in [
        "aa:bb:cc:dd:ee:ff",
        "AA-BB-CC-DD-EE-FF",
        "00:11:22:33:44:55",
    ] {
        let n = serde_json::json!({
            "apiVersion": "infra.homecluster.dev/v1alpha1", "kind": "Node",
            "metadata": {"name": "n"},
            "spec": {"power": {"powerOn": {"wakeOnLan": {"mac": mac, "broadcast": "10.0.0.255"}},
                               "powerOff": {"http": {"url": "https://plug/off", "method": "PUT"}}},
                     "bootTimeout": "90s", "pricing": {"hourlyRate": "0.12"}}
        });
        assert_eq!(cel_errors(&n), Vec::<String>::new(), "{mac}");
        assert_eq!(schema_errors(&n), Vec::<String>::new(), "{mac}");
        let m: Machine = serde_json::from_value(n).expect("typed");
        assert!(api::parse_mac("mac", mac).is_ok());
        assert!(m.boot_timeout().is_ok() && m.hourly_rate().is_ok());
    }
    // A boot deadline learned from the machine's boots.
    let n = serde_json::json!({
        "apiVersion": "infra.homecluster.dev/v1alpha1", "kind": "Node",
        "metadata": {"name": "n"},
        "spec": {"power": {"powerOn": {"wakeOnLan": {"mac": "aa:bb:cc:dd:ee:ff"}},
                           "powerOff": {"nodeAgent": {}}},
                 "bootTimeout": "auto"}
    });
    assert_eq!(cel_errors(&n), Vec::<String>::new());
    let m: Machine = serde_json::from_value(n).expect("typed");
    assert_eq!(m.boot_timeout(), Ok(api::DEFAULT_BOOT_TIMEOUT));
}

/// The rules that keep credentials on TLS accept what the owner may write: an `https://`
/// endpoint, an `http://` one with `allowInsecure: true`, an `http://` URL that sends no
/// `secret`; the Rust-side `validate()` agrees.
#[test]
fn https_rules_accept_tls_opt_ins_and_calls_without_credentials() {
    let node = |on: Value, off: Value| {
        serde_json::json!({
            "apiVersion": "infra.homecluster.dev/v1alpha1", "kind": "Node",
            "metadata": {"name": "n", "labels": {"group": "g"}},
            "spec": {"powerState": "off", "power": {"powerOn": on, "powerOff": off}}
        })
    };
    let bmc = |endpoint: &str, allow: Option<bool>| {
        let mut r = serde_json::json!({"endpoint": endpoint, "credentialsSecret": "bmc"});
        if let Some(a) = allow {
            r["allowInsecure"] = a.into();
        }
        serde_json::json!({ "redfish": r })
    };
    let accepted = [
        node(bmc("https://bmc", None), bmc("https://bmc", Some(false))),
        node(bmc("http://bmc", Some(true)), bmc("http://bmc", Some(true))),
        node(
            serde_json::json!({"ipmi": {"host": "bmc", "credentialsSecret": "bmc",
                "cipherSuite": 3}}),
            serde_json::json!({"ipmi": {"host": "bmc", "credentialsSecret": "bmc",
                "cipherSuite": 0, "allowInsecure": true}}),
        ),
        node(
            serde_json::json!({"http": {"url": "http://plug/on",
                "status": {"url": "http://plug/s", "field": "$.on", "value": "true"}}}),
            serde_json::json!({"http": {"url": "http://plug/off", "secret": "plug",
                "allowInsecure": true,
                "status": {"url": "http://plug/s", "field": "$.on", "value": "false"}}}),
        ),
        node(
            serde_json::json!({"http": {"url": "https://plug/on", "secret": "plug",
                "status": {"url": "https://plug/s", "field": "$.on", "value": "true"}}}),
            serde_json::json!({"nodeAgent": {}}),
        ),
    ];
    for n in accepted {
        assert_eq!(cel_errors(&n), Vec::<String>::new(), "{n}");
        assert_eq!(schema_errors(&n), Vec::<String>::new(), "{n}");
        let m: Machine = serde_json::from_value(n.clone()).expect("typed");
        assert_eq!(m.validate(), vec![], "{n}");
    }
}

/// Every `cel` case is also refused by the Rust-side `validate()`, so objects read from files
/// (`fsm inspect -f`, `simulate`) fail the same way, with errors naming the object and field.
/// Except the `bare-*` cases (keys `true` / `false`): those keys come from kubectl's YAML 1.1
/// reader; the files' YAML 1.2 reader keeps a bare `on:` / `off:` as the deprecated key names.
#[test]
fn rust_validate_refuses_what_the_rules_refuse() {
    for case in cel_cases()
        .into_iter()
        .filter(|c| c.check == "cel" && !c.name.starts_with("bare-"))
    {
        let errors = match case.object["kind"].as_str() {
            Some("Group") => {
                let g: Group = serde_json::from_value(case.object.clone()).expect("Group");
                g.validate()
            }
            Some("Node") => {
                let m: Machine = serde_json::from_value(case.object.clone()).expect("Node");
                m.validate()
            }
            other => panic!("{}: unexpected kind {other:?}", case.name),
        };
        assert!(
            !errors.is_empty(),
            "{}: validate() accepts what the CRD refuses",
            case.name
        );
        let name = case.object["metadata"]["name"].as_str().unwrap_or_default();
        for e in &errors {
            assert!(
                e.to_string().contains(name),
                "{}: error does not name the object: {e}",
                case.name
            );
        }
    }
}

/// YAML `9` and Rust `9.0` are the same watts.
fn numbers_as_f64(v: Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map_or(Value::Number(n), Value::from),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect())
        }
        other => other,
    }
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("example readable");
    yaml::from_multi_doc(&path.display().to_string(), &text).expect("example parses")
}

#[test]
fn examples_are_valid_and_deserialize() {
    let files = example_files();
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for want in [
        "wake-on-lan.yaml",
        "redfish.yaml",
        "http.yaml",
        "job-style.yaml",
        "predecessor-compat.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "examples/{want} missing: {names:?}"
        );
    }
    for file in &files {
        let mut groups = 0;
        let mut machines = vec![];
        for doc in docs(file) {
            if doc["apiVersion"] != "infra.homecluster.dev/v1alpha1" {
                continue;
            }
            let errs = schema_errors(&doc);
            assert!(errs.is_empty(), "{}: {errs:?}", file.display());
            let errs = cel_errors(&doc);
            assert!(errs.is_empty(), "{}: {errs:?}", file.display());
            match doc["kind"].as_str() {
                Some("Group") => {
                    let g: Group = serde_json::from_value(doc.clone()).expect("Group deserializes");
                    assert_eq!(g.validate(), vec![], "{}", file.display());
                    // Nothing is lost: the typed object writes back what the file says.
                    assert_eq!(
                        numbers_as_f64(serde_json::to_value(&g).expect("ser")),
                        numbers_as_f64(doc),
                        "{}",
                        file.display()
                    );
                    groups += 1;
                }
                Some("Node") => {
                    let m: Machine =
                        serde_json::from_value(doc.clone()).expect("Node deserializes");
                    assert_eq!(m.validate(), vec![], "{}", file.display());
                    assert!(
                        m.group().is_some(),
                        "{}: {} has no group label",
                        file.display(),
                        m.object_ref()
                    );
                    assert_eq!(
                        numbers_as_f64(serde_json::to_value(&m).expect("ser")),
                        numbers_as_f64(doc),
                        "{}",
                        file.display()
                    );
                    machines.push(m);
                }
                other => panic!("{}: unexpected kind {other:?}", file.display()),
            }
        }
        assert!(
            groups >= 1 && !machines.is_empty(),
            "{}: needs a Group and machines",
            file.display()
        );
    }
}

#[test]
fn examples_use_the_drivers_they_are_named_for() {
    let kinds = |file: &str| -> Vec<(String, String)> {
        docs(&root().join("examples").join(file))
            .into_iter()
            .filter(|d| d["kind"] == "Node")
            .map(|d| {
                let m: Machine = serde_json::from_value(d).expect("Node");
                let on = m
                    .power_driver(Direction::On)
                    .map(|d| d.kind())
                    .unwrap_or("none");
                let off = m
                    .power_driver(Direction::Off)
                    .map(|d| d.kind())
                    .unwrap_or("none");
                (on.to_owned(), off.to_owned())
            })
            .collect()
    };
    for (on, off) in kinds("wake-on-lan.yaml") {
        assert_eq!((on.as_str(), off.as_str()), ("wakeOnLan", "nodeAgent"));
    }
    for (on, off) in kinds("redfish.yaml") {
        assert_eq!((on.as_str(), off.as_str()), ("redfish", "redfish"));
    }
    for (on, off) in kinds("ipmi.yaml") {
        assert_eq!((on.as_str(), off.as_str()), ("ipmi", "ipmi"));
    }
    for (on, off) in kinds("http.yaml") {
        assert_eq!((on.as_str(), off.as_str()), ("http", "http"));
    }
    for file in ["job-style.yaml", "predecessor-compat.yaml"] {
        for (on, off) in kinds(file) {
            assert_eq!((on.as_str(), off.as_str()), ("job", "job"), "{file}");
        }
    }
    // The predecessor's file uses no field it did not have.
    for doc in docs(&root().join("examples/predecessor-compat.yaml")) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let spec = doc["spec"].as_object().cloned().unwrap_or_default();
        for key in spec.keys() {
            let known = PREDECESSOR_FIELDS
                .iter()
                .any(|(k, f, _)| *k == kind && f == key);
            assert!(
                known,
                "predecessor-compat.yaml: {kind} spec.{key} is not a predecessor field"
            );
        }
    }
}

#[test]
fn structural_checker_catches_what_the_api_server_refuses() {
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "nullEnum": {"type": "string", "nullable": true, "enum": ["a", null]},
            "oneOf": {"type": "object", "oneOf": [{"required": ["a"]}]},
            "regex": {"type": "string", "x-kubernetes-validations": [{"rule": "self.matches('a')", "message": "m"}]},
            "list": {"type": "array"}
        },
        "required": ["missing"]
    });
    let mut problems = vec![];
    check_structural(&bad, "bad", &mut problems);
    for want in [
        "untyped: no type",
        "null in enum",
        "has oneOf",
        "no maxLength",
        "array without items",
        "required missing",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "checker missed {want:?}: {problems:?}"
        );
    }
    // The derive's raw output needs our clean-up (null in optional enums).
    let raw = serde_json::to_value(<Machine as kube::CustomResourceExt>::crd()).expect("crd json");
    let raw_schema = &raw["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut raw_problems = vec![];
    check_structural(raw_schema, "raw", &mut raw_problems);
    assert!(
        raw_problems.iter().any(|p| p.contains("null in enum")),
        "{raw_problems:?}"
    );
}

/// The deprecated keys say so where `kubectl explain` shows them, naming their replacement; the
/// keys `true` / `false` are described as what YAML made of a bare key.
#[test]
fn deprecated_keys_are_described_as_deprecated_with_their_replacement() {
    let s = schema("Node");
    for (path, replacement) in [
        ("spec.power.on", "powerOn"),
        ("spec.power.off", "powerOff"),
        ("spec.watts.off", "standby"),
    ] {
        let description = node_at(&s, path)["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            description.starts_with(&format!("Deprecated: use {replacement} ")),
            "{path}: {description:?}"
        );
    }
    for path in [
        "spec.power.true",
        "spec.power.false",
        "spec.watts.true",
        "spec.watts.false",
    ] {
        let description = node_at(&s, path)["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            description.starts_with("Not a field"),
            "{path}: {description:?}"
        );
    }
}
