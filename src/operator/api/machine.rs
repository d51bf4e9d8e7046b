//! The `Node` custom resource (Rust: `Machine`): one physical machine that can be powered on
//! and off. Named `Machine` in Rust so it never gets mixed up with the core/v1 `Node`.
use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel::*;
use super::conditions::Condition;
use super::energy::{EnergyCounters, Meter};
use super::group::GROUP_LABEL;
use super::parse::{FieldError, parse_decimal, parse_duration};
use super::power::{Direction, MinimalPodSpec, PowerDriver, PowerSpec};
use super::schedule::{Maintenance, Wear};
use super::{FlatMap, Health, object_ref};
use crate::operator::interned::Strings;
use crate::operator::machine::{BootStats, Lifecycle, PowerState, StatusProgress};

/// Default time from power-on to the Node object being Ready.
pub const DEFAULT_BOOT_TIMEOUT: SignedDuration = SignedDuration::from_secs(10 * 60);
/// Default time from the power-off action to power-off evidence.
pub const DEFAULT_SHUTDOWN_TIMEOUT: SignedDuration = SignedDuration::from_secs(5 * 60);
/// Scheme of the providerID the operator assigns when neither the spec nor the kubelet has one.
pub const PROVIDER_ID_SCHEME: &str = "homelab://";
/// How many recent boot durations status keeps.
pub const RECENT_BOOTS_MAX: usize = 10;
/// `spec.bootTimeout` learned from the machine's recent boots.
pub const BOOT_TIMEOUT_AUTO: &str = "auto";
/// Annotation a person (or `kubectl homelab power`) sets on a Node CR to retry a Failed machine
/// now instead of waiting for its backoff: an RFC 3339 time, honoured once when newer than
/// `status.phaseSince`.
pub const RETRY_ANNOTATION: &str = "infra.homecluster.dev/retry-requested-at";

// The custom resource's kind is `Node` (`nodes.infra.homecluster.dev`, short name `hln`), the
// predecessor's name, kept so its YAML applies. In Rust it is `Machine`, so it never reads
// like the core Kubernetes `Node` (`k8s_openapi::api::core::v1::Node`) that the same machine
// registers as once it boots; messages to users say "Node CR" for this one. (A plain comment:
// the doc comment below becomes the CRD's description, which is for users.)
/// A physical machine that is (or becomes) a Kubernetes node, powered on and off on demand.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infra.homecluster.dev",
    version = "v1alpha1",
    kind = "Node",
    root = "Machine",
    namespaced,
    status = "MachineStatus",
    shortname = "hln",
    category = "homelab",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Desired","type":"string","jsonPath":".spec.powerState"}"#,
    printcolumn = r#"{"name":"Observed","type":"string","jsonPath":".status.powerState"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Group","type":"string","jsonPath":".metadata.labels.group"}"#,
    printcolumn = r#"{"name":"Node","type":"string","priority":1,"jsonPath":".status.node.name"}"#,
    printcolumn = r#"{"name":"Error","type":"string","priority":1,"jsonPath":".status.lastError"}"#,
    printcolumn = r#"{"name":"Readback","type":"string","priority":1,"jsonPath":".status.power.readback"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": ON_NOT_BOTH_RULE, "message": ON_NOT_BOTH_MESSAGE},
    {"rule": OFF_NOT_BOTH_RULE, "message": OFF_NOT_BOTH_MESSAGE},
    {"rule": NEEDS_ON_RULE, "message": NEEDS_ON_MESSAGE},
    {"rule": NEEDS_OFF_RULE, "message": NEEDS_OFF_MESSAGE}
]))]
pub struct MachineSpec {
    // --- Compat with the predecessor.
    /// Desired power state, `"on"` or `"off"` (quote it: YAML reads a bare on/off as a
    /// boolean). Default `"on"`, so adding a running machine never powers it off by surprise.
    #[serde(default = "default_power_state")]
    pub power_state: PowerState,
    /// Name of the Kubernetes Node this machine registers as (default: learned by providerID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_node_name: Option<String>,
    /// The predecessor's power-on Job; same as `power.powerOn.job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_pod_spec: Option<Box<MinimalPodSpec>>,
    /// The predecessor's power-off Job; same as `power.powerOff.job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_pod_spec: Option<Box<MinimalPodSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// Taints left out of the template node CA sees (e.g. taints a boot script adds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints_to_remove: Vec<Taint>,

    // --- New.
    /// ProviderID the machine's Node object carries (default: the one it registered with,
    /// else `homelab://<namespace>/<name>`, which the operator writes into the Node).
    #[serde(
        rename = "providerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,
    /// Power drivers; a direction left out uses `startupPodSpec` / `shutdownPodSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<Box<PowerSpec>>,
    /// From power-on until the Node is Ready (default 10m). `auto` learns it from the
    /// machine's recent boots (`status.recentBootSeconds`): their p95 plus half of it (at
    /// least 1m more, at least 2m in all), the default until 3 boots were seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": BOOT_TIMEOUT_RULE, "message": BOOT_TIMEOUT_MESSAGE}
    ]))]
    pub boot_timeout: Option<String>,
    /// From the power-off action until the machine is confirmed off (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": POSITIVE_DURATION_RULE, "message": POSITIVE_DURATION_MESSAGE}
    ]))]
    pub shutdown_timeout: Option<String>,
    /// Capacity of the machine's node before it was ever seen (scale-from-zero).
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    #[schemars(with = "BTreeMap<String, Quantity>")]
    pub capacity: FlatMap<Quantity>,
    /// Labels the node will carry, before it was ever seen (scale-from-zero). Keys under
    /// `infra.homecluster.dev/` are reserved.
    #[serde(default, skip_serializing_if = "FlatMap::is_empty")]
    #[schemars(with = "BTreeMap<String, String>", extend("x-kubernetes-validations" = [
        {"rule": NO_RESERVED_LABEL_RULE, "message": NO_RESERVED_LABEL_MESSAGE}
    ]))]
    pub labels: FlatMap<String>,
    /// Taints the node will carry, before it was ever seen (scale-from-zero).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Power draw, for energy accounting and `simulate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watts: Option<Watts>,
    /// A power meter whose readings are preferred over `watts` (Redfish chassis power, or a
    /// smart plug's JSON API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<Box<Meter>>,
    /// Never powered off by the autoscaler (a person can still power it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_disabled: Option<bool>,
    /// Boots per day and quiet hours for this machine, overriding its Group's `wear` field
    /// by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wear: Option<Box<Wear>>,
    /// Set while the machine is under maintenance (`kubectl homelab maintenance start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Box<Maintenance>>,
}

/// Node condition: the spec still uses the deprecated names `spec.power.on` / `spec.power.off`
/// / `spec.watts.off` (read as `powerOn` / `powerOff` / `standby`). Abnormal-true: it only
/// informs, the operator acts on the spec as written.
pub const CONDITION_DEPRECATED_FIELDS: &str = "DeprecatedFields";
/// Reasons of [`CONDITION_DEPRECATED_FIELDS`].
pub const REASON_DEPRECATED_FIELD_NAMES: &str = "DeprecatedFieldNames";
pub const REASON_CURRENT_FIELD_NAMES: &str = "CurrentFieldNames";

fn default_power_state() -> PowerState {
    PowerState::On
}

/// The predecessor's pricing: decimal strings. `hourlyRate` feeds CA's `price` expander and
/// `powerOnOrder: cheapest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), extend("x-kubernetes-validations" = [
        {"rule": DECIMAL_RULE, "message": DECIMAL_MESSAGE}
    ]))]
    pub hourly_rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), extend("x-kubernetes-validations" = [
        {"rule": DECIMAL_RULE, "message": DECIMAL_MESSAGE}
    ]))]
    pub pod_rate: Option<String>,
}

/// Power draw in watts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": STANDBY_NOT_LEGACY_RULE, "message": STANDBY_NOT_LEGACY_MESSAGE}
]))]
pub struct Watts {
    /// On, without load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub idle: Option<f64>,
    /// On, fully loaded (default: `idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub busy: Option<f64>,
    /// Powered off: the standby draw that keeps Wake-on-LAN or the BMC listening (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub standby: Option<f64>,
    /// Deprecated: use standby (the same value under a name YAML cannot misread). Still read
    /// when quoted as "off"; an unquoted off: is the boolean false in YAML 1.1.
    #[serde(rename = "off", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub legacy_off: Option<f64>,
    /// While booting: disks spinning up, fans at full speed (default: `idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub boot: Option<f64>,
    /// While shutting down (default: `idle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub shutdown: Option<f64>,
}

/// Observed state of a machine. The lifecycle fields (`phase`, `phaseSince`, `attempt`,
/// `operation`, `lastError`, `nextRetryTime`) are the FSM's; the rest is for compat, CA and
/// people.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachineStatus {
    /// Observed power state (compat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_state: Option<PowerState>,
    /// The phase in the predecessor's words (compat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<StatusProgress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_startup_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_shutdown_time: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Upserted by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(flatten)]
    pub lifecycle: Lifecycle,
    /// The Kubernetes Node as last seen registered (kept after the Node object is deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Box<NodeSnapshot>>,
    /// Recent boot durations in seconds, newest last, at most [`RECENT_BOOTS_MAX`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub recent_boot_seconds: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<Box<EnergyCounters>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the power driver of the latest operation last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<Box<DriverReadback>>,
    /// When the power-ons of the last 24 hours started, oldest first: what `wear.maxBootsPerDay`
    /// counts. At most the limit plus one (24 without a limit); recorded when a power-on starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1001))]
    pub recent_boot_starts: Vec<Timestamp>,
}

/// The power driver's last word on an operation: which driver, which way, and the power state
/// the hardware reported back (Redfish `PowerState`, an HTTP status URL; drivers without a
/// readback, such as `wakeOnLan` or a Job, leave `readback` out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriverReadback {
    /// `job`, `nodeAgent`, `wakeOnLan`, `redfish` or `http`.
    #[schemars(length(max = 32))]
    pub driver: String,
    pub direction: Direction,
    /// The operation (`status.operation.id`) this is about.
    #[schemars(length(max = 64))]
    pub operation: String,
    /// The power state the hardware reports; absent while it reports neither (e.g. Redfish
    /// `PoweringOn`) or when the driver cannot read it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readback: Option<PowerState>,
    /// When the driver first reported this readback for this operation (not refreshed by every
    /// poll, so polling a BMC does not write status each time).
    pub observed_at: Timestamp,
    /// The power-off was made a hard one (Redfish `ForceOff`, after an ignored `GracefulShutdown`
    /// or at once with `forceOffAfter: 0s`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub escalated: bool,
    /// The start of the operation was accepted, and what by: for a Job, the uid of the Job
    /// created for it (a Job of this operation missing afterwards was removed, by its TTL or by
    /// hand, and is never created a second time); for a call, what the endpoint accepted (the
    /// Redfish ResetType, the HTTP answer). Absent while a driver that reads the power back has
    /// not had its call accepted: a check reading the old state then sends it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub accepted: Option<String>,
}

impl DriverReadback {
    /// What accepted the start of `operation`, as `power` records it.
    pub fn accepted_for<'a>(power: Option<&'a DriverReadback>, operation: &str) -> Option<&'a str> {
        power
            .filter(|p| p.operation == operation)
            .and_then(|p| p.accepted.as_deref())
    }

    /// The record after a driver reported `readback` (and `escalated`) for `operation`:
    /// `previous` carries over its time while the readback is unchanged, and an escalation
    /// and what accepted the start stay recorded for the rest of the operation.
    pub fn next(
        previous: Option<&DriverReadback>,
        driver: &str,
        direction: Direction,
        operation: &str,
        readback: Option<PowerState>,
        escalated: bool,
        now: Timestamp,
    ) -> DriverReadback {
        let same_op = previous.filter(|p| p.operation == operation && p.driver == driver);
        DriverReadback {
            driver: driver.to_owned(),
            direction,
            operation: operation.to_owned(),
            readback,
            observed_at: same_op
                .filter(|p| p.readback == readback)
                .map_or(now, |p| p.observed_at),
            escalated: escalated || same_op.is_some_and(|p| p.escalated),
            accepted: same_op.and_then(|p| p.accepted.clone()),
        }
    }
}

/// What the machine's Kubernetes Node looked like when last seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSnapshot {
    pub name: String,
    #[serde(
        rename = "providerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_id: Option<String>,
    // Labels and quantities are interned (`operator::interned`): a thousand machines' snapshots
    // share one copy of each repeated text in the operator's cache.
    #[serde(default, skip_serializing_if = "Strings::is_empty")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub labels: Strings,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    #[serde(default, skip_serializing_if = "Strings::is_empty")]
    #[schemars(with = "BTreeMap<String, Quantity>")]
    pub capacity: Strings,
    #[serde(default, skip_serializing_if = "Strings::is_empty")]
    #[schemars(with = "BTreeMap<String, Quantity>")]
    pub allocatable: Strings,
    pub seen: Timestamp,
}

impl MachineSpec {
    /// A spec with only the desired power state set (tests and builders start here).
    pub fn new(power_state: PowerState) -> Self {
        MachineSpec {
            power_state,
            kubernetes_node_name: None,
            startup_pod_spec: None,
            shutdown_pod_spec: None,
            pricing: None,
            taints_to_remove: Vec::new(),
            provider_id: None,
            power: None,
            boot_timeout: None,
            shutdown_timeout: None,
            capacity: FlatMap::new(),
            labels: FlatMap::new(),
            taints: Vec::new(),
            watts: None,
            meter: None,
            scale_down_disabled: None,
            wear: None,
            maintenance: None,
        }
    }

    pub fn scale_down_disabled(&self) -> bool {
        self.scale_down_disabled.unwrap_or(false)
    }

    /// The field that holds `direction`'s driver, from `spec.`: `spec.power.powerOn` /
    /// `spec.power.powerOff`, or the deprecated `spec.power.on` / `spec.power.off` when the CR
    /// still uses it.
    pub fn power_field(&self, direction: Direction) -> String {
        let key = self
            .power
            .as_deref()
            .map_or(direction.power_key(), |p| p.key(direction));
        format!("spec.power.{key}")
    }

    /// The deprecated keys this spec uses (`spec.power.on`, `spec.watts.off`, ...), each with
    /// the key that replaces it; empty when it uses none.
    pub fn deprecated_keys(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = self
            .power
            .as_deref()
            .map(PowerSpec::deprecated_keys)
            .unwrap_or_default();
        if self.watts.is_some_and(|w| w.legacy_off.is_some()) {
            out.push(("spec.watts.off", "spec.watts.standby"));
        }
        out
    }

    /// The [`CONDITION_DEPRECATED_FIELDS`] finding: `(reason, message)` naming each deprecated
    /// key this spec uses and its replacement, `None` when it uses none.
    pub fn deprecated_fields(&self) -> Option<(&'static str, String)> {
        let keys = self.deprecated_keys();
        if keys.is_empty() {
            return None;
        }
        let renames: Vec<String> = keys
            .iter()
            .map(|(old, new)| format!("{old} is deprecated: rename it to {new} (same content)"))
            .collect();
        Some((
            REASON_DEPRECATED_FIELD_NAMES,
            format!(
                "{}; the old names are the quoted YAML keys \"on\" / \"off\", which an unquoted \
                 on: / off: turns into true / false",
                renames.join("; ")
            ),
        ))
    }

    /// The one driver for `direction`: `power.powerOn`/`power.powerOff` if set, else the predecessor's
    /// `startupPodSpec`/`shutdownPodSpec`. Errors (naming `field_prefix` + the field) when none
    /// or several are set, which the schema rejects but a file may contain.
    pub fn power_driver(
        &self,
        field_prefix: &str,
        direction: Direction,
    ) -> Result<PowerDriver<'_>, FieldError> {
        let power = self.power.as_deref();
        let field = self.power_field(direction);
        let (drivers, legacy, legacy_name) = match direction {
            Direction::On => (
                power.and_then(PowerSpec::on).map(|d| d.drivers()),
                self.startup_pod_spec.as_ref(),
                "startupPodSpec",
            ),
            Direction::Off => (
                power.and_then(PowerSpec::off).map(|d| d.drivers()),
                self.shutdown_pod_spec.as_ref(),
                "shutdownPodSpec",
            ),
        };
        let invalid = |problem: String| FieldError::Invalid {
            field: format!("{field_prefix}{field}"),
            problem,
        };
        match (drivers, legacy) {
            (Some(_), Some(_)) => Err(invalid(format!(
                "set either {field} or spec.{legacy_name}, not both"
            ))),
            (None, Some(job)) => Ok(PowerDriver::Job(job)),
            (None, None) => Err(invalid(format!(
                "no way to power {direction}: set {field} or spec.{legacy_name}"
            ))),
            (Some(ds), None) => match ds.as_slice() {
                [one] => Ok(*one),
                [] => Err(invalid("no driver set; set exactly one".to_owned())),
                many => Err(invalid(format!(
                    "{} drivers set ({}); set exactly one",
                    many.len(),
                    many.iter()
                        .map(PowerDriver::kind)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            },
        }
    }

    /// Every check the CRD's schema rules make, for objects that did not come through the API
    /// server (files for `fsm inspect -f`, `simulate` scenarios). Returns all problems found.
    pub fn validate(&self, field_prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut check = |r: Result<(), FieldError>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };
        for direction in [Direction::On, Direction::Off] {
            check(self.power_driver(field_prefix, direction).map(drop));
        }
        // A field and its deprecated name are one setting (the schema's rules).
        let power = self.power.as_deref();
        for (both, field, message) in [
            (
                power.is_some_and(|p| p.power_on.is_some() && p.legacy_on.is_some()),
                "spec.power",
                POWER_ON_NOT_LEGACY_MESSAGE,
            ),
            (
                power.is_some_and(|p| p.power_off.is_some() && p.legacy_off.is_some()),
                "spec.power",
                POWER_OFF_NOT_LEGACY_MESSAGE,
            ),
            (
                self.watts
                    .is_some_and(|w| w.standby.is_some() && w.legacy_off.is_some()),
                "spec.watts",
                STANDBY_NOT_LEGACY_MESSAGE,
            ),
        ] {
            if both {
                check(Err(FieldError::Invalid {
                    field: format!("{field_prefix}{field}"),
                    problem: message.to_owned(),
                }));
            }
        }
        check(self.boot_timeout(field_prefix).map(drop));
        check(self.shutdown_timeout(field_prefix).map(drop));
        check(self.hourly_rate(field_prefix).map(drop));
        check(self.pod_rate(field_prefix).map(drop));
        for (key, _) in self
            .labels
            .iter()
            .filter(|(k, _)| k.starts_with(RESERVED_LABEL_PREFIX))
        {
            check(Err(FieldError::Invalid {
                field: format!("{field_prefix}spec.labels[{key}]"),
                problem: NO_RESERVED_LABEL_MESSAGE.to_owned(),
            }));
        }
        for (direction, drivers) in [
            (
                Direction::On,
                power.and_then(PowerSpec::on).map(|d| d.drivers()),
            ),
            (
                Direction::Off,
                power.and_then(PowerSpec::off).map(|d| d.drivers()),
            ),
        ] {
            for driver in drivers.into_iter().flatten() {
                let field = format!(
                    "{field_prefix}{}.{}",
                    self.power_field(direction),
                    driver.kind()
                );
                match driver {
                    PowerDriver::WakeOnLan(w) => {
                        w.validate(&field).into_iter().for_each(|e| check(Err(e)))
                    }
                    PowerDriver::Redfish(r) => {
                        r.validate(&field).into_iter().for_each(|e| check(Err(e)))
                    }
                    PowerDriver::Http(h) => {
                        h.validate(&field).into_iter().for_each(|e| check(Err(e)))
                    }
                    PowerDriver::Job(j) => {
                        check(j.validate_volumes(&field));
                    }
                    PowerDriver::Ipmi(i) => {
                        i.validate(&field).into_iter().for_each(|e| check(Err(e)))
                    }
                    PowerDriver::NodeAgent(_) => {}
                }
            }
        }
        for (name, spec) in [
            ("startupPodSpec", &self.startup_pod_spec),
            ("shutdownPodSpec", &self.shutdown_pod_spec),
        ] {
            if let Some(spec) = spec {
                check(spec.validate_volumes(&format!("{field_prefix}spec.{name}")));
            }
        }
        errors
    }

    /// The boot deadline as written; `auto` reads as the default here (a Node CR resolves it
    /// from its learned boots: [`Machine::boot_timeout`]).
    pub fn boot_timeout(&self, field_prefix: &str) -> Result<SignedDuration, FieldError> {
        if self.boot_timeout_auto() {
            return Ok(DEFAULT_BOOT_TIMEOUT);
        }
        positive_duration(
            field_prefix,
            "spec.bootTimeout",
            &self.boot_timeout,
            DEFAULT_BOOT_TIMEOUT,
        )
    }

    /// `bootTimeout: auto`.
    pub fn boot_timeout_auto(&self) -> bool {
        self.boot_timeout.as_deref() == Some(BOOT_TIMEOUT_AUTO)
    }

    pub fn shutdown_timeout(&self, field_prefix: &str) -> Result<SignedDuration, FieldError> {
        positive_duration(
            field_prefix,
            "spec.shutdownTimeout",
            &self.shutdown_timeout,
            DEFAULT_SHUTDOWN_TIMEOUT,
        )
    }

    /// `pricing.hourlyRate` as a number; `None` when unset.
    pub fn hourly_rate(&self, field_prefix: &str) -> Result<Option<f64>, FieldError> {
        self.pricing
            .as_ref()
            .and_then(|p| p.hourly_rate.as_deref())
            .map(|v| parse_decimal(&format!("{field_prefix}spec.pricing.hourlyRate"), v))
            .transpose()
    }

    /// `pricing.podRate` as a number; `None` when unset.
    pub fn pod_rate(&self, field_prefix: &str) -> Result<Option<f64>, FieldError> {
        self.pricing
            .as_ref()
            .and_then(|p| p.pod_rate.as_deref())
            .map(|v| parse_decimal(&format!("{field_prefix}spec.pricing.podRate"), v))
            .transpose()
    }
}

fn positive_duration(
    prefix: &str,
    field: &str,
    value: &Option<String>,
    default: SignedDuration,
) -> Result<SignedDuration, FieldError> {
    let Some(v) = value.as_deref() else {
        return Ok(default);
    };
    let field = format!("{prefix}{field}");
    let d = parse_duration(&field, v)?;
    if d.is_zero() {
        return Err(FieldError::Invalid {
            field,
            problem: "must be longer than 0s; leave it out for the default".to_owned(),
        });
    }
    Ok(d)
}

impl Watts {
    pub fn idle(&self) -> f64 {
        self.idle.unwrap_or(0.0)
    }
    pub fn busy(&self) -> f64 {
        self.busy.unwrap_or_else(|| self.idle())
    }
    /// The standby draw as written: `standby`, else the deprecated `"off"`.
    pub fn standby_watts(&self) -> Option<f64> {
        self.standby.or(self.legacy_off)
    }
    /// The standby draw (default 0).
    pub fn standby(&self) -> f64 {
        self.standby_watts().unwrap_or(0.0)
    }
}

impl MachineStatus {
    /// Appends a boot duration, keeping the newest [`RECENT_BOOTS_MAX`].
    pub fn record_boot(&mut self, seconds: u32) {
        self.recent_boot_seconds.push(seconds);
        let excess = self
            .recent_boot_seconds
            .len()
            .saturating_sub(RECENT_BOOTS_MAX);
        self.recent_boot_seconds.drain(..excess);
    }

    /// Mean of the recent boot durations, if any.
    pub fn mean_boot_seconds(&self) -> Option<f64> {
        let n = self.recent_boot_seconds.len();
        (n > 0).then(|| {
            self.recent_boot_seconds
                .iter()
                .map(|s| f64::from(*s))
                .sum::<f64>()
                / n as f64
        })
    }
}

impl Machine {
    /// `Node <namespace>/<name>`, for messages.
    pub fn object_ref(&self) -> String {
        object_ref("Node", &self.metadata)
    }

    fn prefix(&self) -> String {
        format!("{} ", self.object_ref())
    }

    /// The Group this machine belongs to (the `group` label), if any.
    pub fn group(&self) -> Option<&str> {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GROUP_LABEL))
            .map(String::as_str)
            .filter(|g| !g.is_empty())
    }

    /// Desired power state (`spec.powerState`).
    pub fn desired_power(&self) -> PowerState {
        self.spec.power_state
    }

    /// Observed power state (`status.powerState`), if known.
    pub fn observed_power(&self) -> Option<PowerState> {
        self.status.as_ref().and_then(|s| s.power_state)
    }

    /// The lifecycle part of status (default when there is no status yet).
    pub fn lifecycle(&self) -> Lifecycle {
        self.status
            .as_ref()
            .map(|s| s.lifecycle.clone())
            .unwrap_or_default()
    }

    /// The providerID the machine's Node object carries (docs/ca-contract.md, rule 1):
    /// `spec.providerID`, else the one it last registered with, else
    /// `homelab://<namespace>/<name>`.
    pub fn expected_provider_id(&self) -> String {
        if let Some(id) = self.spec.provider_id.as_deref().filter(|s| !s.is_empty()) {
            return id.to_owned();
        }
        if let Some(id) = self
            .status
            .as_ref()
            .and_then(|s| s.node.as_ref())
            .and_then(|n| n.provider_id.as_deref())
            .filter(|s| !s.is_empty())
        {
            return id.to_owned();
        }
        default_provider_id(
            self.metadata.namespace.as_deref().unwrap_or("default"),
            self.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    /// The Kubernetes node name: `spec.kubernetesNodeName`, else the last-seen node's name.
    pub fn node_name(&self) -> Option<&str> {
        self.spec
            .kubernetes_node_name
            .as_deref()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                self.status
                    .as_ref()
                    .and_then(|s| s.node.as_ref())
                    .map(|n| n.name.as_str())
            })
    }

    /// [`MachineSpec::validate`] with errors naming this Node.
    pub fn validate(&self) -> Vec<FieldError> {
        self.spec.validate(&self.prefix())
    }

    pub fn power_driver(&self, direction: Direction) -> Result<PowerDriver<'_>, FieldError> {
        self.spec.power_driver(&self.prefix(), direction)
    }

    /// The boot deadline: `spec.bootTimeout`, or with `auto` the one learned from the recent
    /// boots ([`BootStats::auto_timeout`]), the default until there are enough of them.
    pub fn boot_timeout(&self) -> Result<SignedDuration, FieldError> {
        if self.spec.boot_timeout_auto() {
            return Ok(self
                .boot_stats()
                .and_then(|s| s.auto_timeout())
                .unwrap_or(DEFAULT_BOOT_TIMEOUT));
        }
        self.spec.boot_timeout(&self.prefix())
    }

    /// p50/p95 of the recent boots; `None` before the first.
    pub fn boot_stats(&self) -> Option<BootStats> {
        BootStats::of(&self.status.as_ref()?.recent_boot_seconds)
    }

    pub fn shutdown_timeout(&self) -> Result<SignedDuration, FieldError> {
        self.spec.shutdown_timeout(&self.prefix())
    }

    pub fn hourly_rate(&self) -> Result<Option<f64>, FieldError> {
        self.spec.hourly_rate(&self.prefix())
    }

    pub fn pod_rate(&self) -> Result<Option<f64>, FieldError> {
        self.spec.pod_rate(&self.prefix())
    }

    pub fn scale_down_disabled(&self) -> bool {
        self.spec.scale_down_disabled()
    }
}

/// `homelab://<namespace>/<name>`.
pub fn default_provider_id(namespace: &str, name: &str) -> String {
    format!("{PROVIDER_ID_SCHEME}{namespace}/{name}")
}
