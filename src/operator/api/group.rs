//! The `Group` custom resource: a set of alike machines that CA scales as one node group.
use std::collections::BTreeMap;

use jiff::SignedDuration;
use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel::*;
use super::conditions::Condition;
use super::energy::Electricity;
use super::parse::{FieldError, parse_duration, parse_threshold};
use super::schedule::{ScheduleWindow, WarmSpares, Wear};
use super::{Health, object_ref};

/// Membership: a Node CR belongs to the Group named by this label's value.
pub const GROUP_LABEL: &str = "group";

/// Group condition: True when every member's `bootTimeout` ends comfortably (a minute or
/// more) before the group's provision time (`maxNodeProvisionTime`, else CA's 15m default);
/// False names the members whose boot CA gives up on before the operator does.
pub const CONDITION_BOOT_TIMEOUT_BELOW_PROVISION: &str = "BootTimeoutBelowProvisionTime";
/// Group condition: the slowest member's learned p95 boot is comfortably (at most
/// [`LEARNED_BOOT_SHARE`] of it) below the provision time, so CA does not give up on a machine
/// that is merely slow. Normal-true.
pub const CONDITION_LEARNED_BOOT_BELOW_PROVISION: &str = "LearnedBootBelowProvisionTime";
/// The share of the provision time the slowest learned p95 boot may take.
pub const LEARNED_BOOT_SHARE: f64 = 0.8;

/// A group of alike machines, scaled by the Cluster Autoscaler as one node group. Members are
/// the Node CRs in the same namespace labelled `group=<name>`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "infra.homecluster.dev",
    version = "v1alpha1",
    kind = "Group",
    namespaced,
    status = "GroupStatus",
    shortname = "hlg",
    category = "homelab",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".status.minSize"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".status.maxSize"}"#,
    printcolumn = r#"{"name":"Target","type":"integer","jsonPath":".status.target"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","priority":1,"jsonPath":".status.members"}"#,
    printcolumn = r#"{"name":"Window","type":"string","priority":1,"jsonPath":".status.schedule.window"}"#,
    printcolumn = r#"{"name":"Next Change","type":"string","priority":1,"jsonPath":".status.schedule.nextChange"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": MIN_LE_MAX_RULE, "message": MIN_LE_MAX_MESSAGE}
]))]
pub struct GroupSpec {
    // --- Compat with the predecessor: per-group Cluster Autoscaler options. Unset means
    // CA's own flag applies (docs/ca-contract.md, rule 9), so they stay optional.
    /// Scale a node down when its CPU/memory utilization is below this fraction, e.g. `"0.5"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), extend("x-kubernetes-validations" = [
        {"rule": THRESHOLD_RULE, "message": THRESHOLD_MESSAGE}
    ]))]
    pub scale_down_utilization_threshold: Option<String>,
    /// As `scaleDownUtilizationThreshold`, for GPU nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), extend("x-kubernetes-validations" = [
        {"rule": THRESHOLD_RULE, "message": THRESHOLD_MESSAGE}
    ]))]
    pub scale_down_gpu_utilization_threshold: Option<String>,
    /// How long a node must be unneeded before it is powered off, e.g. `"10m"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": DURATION_RULE, "message": DURATION_MESSAGE}
    ]))]
    pub scale_down_unneeded_time: Option<String>,
    /// How long an unready node must be unneeded before it is powered off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": DURATION_RULE, "message": DURATION_MESSAGE}
    ]))]
    pub scale_down_unready_time: Option<String>,
    /// How long CA waits for a powered-on machine to register before giving up on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": DURATION_RULE, "message": DURATION_MESSAGE}
    ]))]
    pub max_node_provision_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_or_max_node_scaling: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_daemon_sets_utilization: Option<bool>,

    // --- New.
    /// Machines kept on at least (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_size: Option<i32>,
    /// Machines on at most (default and cap: the number of members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_size: Option<i32>,
    /// Which powered-off machine to power on first (default `cheapest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_on_order: Option<PowerOnOrder>,
    /// What a new node of this group looks like, for scale-from-zero when no member has been
    /// seen yet; overrides the members' hints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<NodeTemplate>,
    /// How long a machine whose power-on failed is skipped by scale-up, e.g. `"30m"` (default:
    /// twice `maxNodeProvisionTime`, else twice the Cluster Autoscaler's default of 15m). The
    /// machine keeps its instance id, which CA may still hold as long-unregistered: picking it
    /// again at once makes CA delete it again at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": DURATION_RULE, "message": DURATION_MESSAGE}
    ]))]
    pub power_on_failure_cooldown: Option<String>,
    /// Never let the Cluster Autoscaler power a member off (default false), as each member's
    /// own `spec.scaleDownDisabled` does: the operator puts CA's
    /// `cluster-autoscaler.kubernetes.io/scale-down-disabled` annotation on every member's
    /// Node, and DeleteNodes refuses registered members. Scale-up still powers members on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_disabled: Option<bool>,
    /// What to do about a running member whose Node stays NotReady or disappears (default:
    /// nothing; the Cluster Autoscaler's `--scale-down-unready-time` decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<Remediation>,
    /// What electricity costs for this group's machines (default: the operator's
    /// `--electricity`), for `status.energy` cost and savings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub electricity: Option<Electricity>,
    /// IANA time zone of `schedule` and `wear.quietHours`, e.g. `Europe/Berlin` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// Weekly windows with their own `minSize` and `warmSpares`, e.g. weekdays 07:30-18:00
    /// keep 2 on. Outside every window `minSize` and `warmSpares` hold; where windows
    /// overlap, the one listed last holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub schedule: Vec<ScheduleWindow>,
    /// Room for pods kept free on machines that are already on (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_spares: Option<WarmSpares>,
    /// Boots per day and quiet hours for every member (a member's own `spec.wear` overrides
    /// field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wear: Option<Wear>,
    /// Stop every power action in the group, the autoscaler's and the operator's own, until
    /// set back to false. Machines stay as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// Opt-in remediation of members whose Node is lost while they run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Remediation {
    /// Power-cycle (power off through the driver, then on again) a member whose Node has been
    /// NotReady past the grace period, or gone, for this long, e.g. `"15m"`. Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": POSITIVE_DURATION_RULE, "message": POSITIVE_DURATION_MESSAGE}
    ]))]
    pub power_cycle_after: Option<String>,
}

/// Which powered-off machine is powered on first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PowerOnOrder {
    /// Lowest `pricing.hourlyRate` first (then by name).
    #[default]
    Cheapest,
    /// Shortest recent boot time first (then by name).
    FastestBoot,
    /// Longest powered off first: spreads wear across machines.
    LeastRecentlyUsed,
    /// By Node CR name.
    Name,
}

impl PowerOnOrder {
    pub const ALL: [PowerOnOrder; 4] = [
        PowerOnOrder::Cheapest,
        PowerOnOrder::FastestBoot,
        PowerOnOrder::LeastRecentlyUsed,
        PowerOnOrder::Name,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PowerOnOrder::Cheapest => "cheapest",
            PowerOnOrder::FastestBoot => "fastestBoot",
            PowerOnOrder::LeastRecentlyUsed => "leastRecentlyUsed",
            PowerOnOrder::Name => "name",
        }
    }
}

/// Labels, taints and capacity of a node that has not been seen yet (scale-from-zero).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Resource capacity, e.g. `cpu: "8"`, `memory: 32Gi`, `pods: "110"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
}

/// The members' recent boots: p50/p95 over all of them, and the slowest member by its own p95.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupBoot {
    /// Boots the figures are from (each member keeps its 10 most recent).
    pub samples: i32,
    pub p50_seconds: i64,
    pub p95_seconds: i64,
    /// The member with the highest p95.
    #[schemars(length(max = 253))]
    pub slowest: String,
    pub slowest_p95_seconds: i64,
}

/// Observed state of a Group, written by the group controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupStatus {
    /// Upserted by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Compat with the predecessor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Node CRs labelled into this group.
    #[serde(default)]
    pub members: i32,
    /// Resolved bounds (see [`GroupSpec::size_bounds`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<i32>,
    /// Machines wanted on (CA's target size).
    #[serde(default)]
    pub target: i32,
    #[serde(default)]
    pub ready: i32,
    #[serde(default)]
    pub powering_on: i32,
    #[serde(default)]
    pub powering_off: i32,
    #[serde(default)]
    pub failed: i32,
    #[serde(default)]
    pub off: i32,
    /// What the members' recent boots say (absent before the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<GroupBoot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What `spec.schedule` puts in force now and when that changes (absent without a
    /// schedule). `minSize` above is the minimum in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Box<ScheduleStatus>>,
}

/// A Group's schedule as of the group controller's last look.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// The window in force (absent: none, the Group's own `minSize` holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub window: Option<String>,
    /// The minimum in force (what the Cluster Autoscaler reads as the group's MinSize).
    pub min_size: i32,
    /// When the window in force next changes (absent: not within eight days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_change: Option<jiff::Timestamp>,
    /// The window in force from `nextChange` (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub next_window: Option<String>,
}

/// A group's size bounds after defaults: `min <= max <= members`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeBounds {
    pub min: u32,
    pub max: u32,
}

/// CA's per-group options parsed from the compat fields; `None` = not set by the Group.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AutoscalingOptions {
    pub scale_down_utilization_threshold: Option<f64>,
    pub scale_down_gpu_utilization_threshold: Option<f64>,
    pub scale_down_unneeded_time: Option<SignedDuration>,
    pub scale_down_unready_time: Option<SignedDuration>,
    pub max_node_provision_time: Option<SignedDuration>,
    pub zero_or_max_node_scaling: Option<bool>,
    pub ignore_daemon_sets_utilization: Option<bool>,
}

impl AutoscalingOptions {
    /// Whether the Group sets any option (if not, CA's flags apply: docs/ca-contract.md, rule 9).
    pub fn any_set(&self) -> bool {
        *self != AutoscalingOptions::default()
    }
}

fn to_u32(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

impl GroupSpec {
    pub fn power_on_order(&self) -> PowerOnOrder {
        self.power_on_order.unwrap_or_default()
    }

    /// `spec.powerOnFailureCooldown`; `None` when unset (the provider's default applies).
    pub fn power_on_failure_cooldown(
        &self,
        field_prefix: &str,
    ) -> Result<Option<SignedDuration>, FieldError> {
        self.power_on_failure_cooldown
            .as_deref()
            .map(|v| parse_duration(&format!("{field_prefix}spec.powerOnFailureCooldown"), v))
            .transpose()
    }

    /// `spec.remediation.powerCycleAfter` (the FSM's `Policy::remediate_after`); `None`: off.
    pub fn remediate_after(
        &self,
        field_prefix: &str,
    ) -> Result<Option<SignedDuration>, FieldError> {
        let field = format!("{field_prefix}spec.remediation.powerCycleAfter");
        let Some(v) = self
            .remediation
            .as_ref()
            .and_then(|r| r.power_cycle_after.as_deref())
        else {
            return Ok(None);
        };
        let d = parse_duration(&field, v)?;
        if d.is_zero() {
            return Err(FieldError::Invalid {
                field,
                problem: "must be longer than 0s; leave it out to turn remediation off".to_owned(),
            });
        }
        Ok(Some(d))
    }

    /// Bounds given the current number of members: `min` defaults to 0, `max` to the member
    /// count and is capped at it (there are no more machines to power on); `min` is capped at
    /// `max`. Use [`GroupSpec::check_size_bounds`] to report a `minSize` that cannot be met.
    pub fn size_bounds(&self, members: usize) -> SizeBounds {
        let members = u32::try_from(members).unwrap_or(u32::MAX);
        let max = self.max_size.map_or(members, to_u32).min(members);
        let min = self.min_size.map_or(0, to_u32).min(max);
        SizeBounds { min, max }
    }

    /// Errors when the declared sizes cannot be honoured with `members` machines.
    pub fn check_size_bounds(&self, field_prefix: &str, members: usize) -> Result<(), FieldError> {
        let min = self.min_size.unwrap_or(0);
        let max = self.max_size.unwrap_or(i32::MAX);
        let have = i64::try_from(members).unwrap_or(i64::MAX);
        if min > max {
            return Err(FieldError::Invalid {
                field: format!("{field_prefix}spec.minSize"),
                problem: format!("minSize {min} is greater than maxSize {max}"),
            });
        }
        if i64::from(min) > have {
            return Err(FieldError::Invalid {
                field: format!("{field_prefix}spec.minSize"),
                problem: format!(
                    "minSize {min} but only {members} Node(s) carry the label {GROUP_LABEL}=<this group>; add machines or lower minSize"
                ),
            });
        }
        Ok(())
    }

    /// Every check the CRD's schema rules make (thresholds, durations, minSize <= maxSize), for
    /// objects that did not come through the API server.
    pub fn validate(&self, field_prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Err(e) = self.autoscaling_options(field_prefix) {
            errors.push(e);
        }
        if let Err(e) = self.power_on_failure_cooldown(field_prefix) {
            errors.push(e);
        }
        if let Err(e) = self.remediate_after(field_prefix) {
            errors.push(e);
        }
        if let (Some(min), Some(max)) = (self.min_size, self.max_size)
            && min > max
        {
            errors.push(FieldError::Invalid {
                field: format!("{field_prefix}spec.minSize"),
                problem: format!("{MIN_LE_MAX_MESSAGE} ({min} > {max})"),
            });
        }
        if let Err(e) = self.time_zone(field_prefix) {
            errors.push(e);
        }
        for (i, w) in self.schedule.iter().enumerate() {
            let field = format!("{field_prefix}spec.schedule[{i}]");
            if let Err(e) =
                crate::operator::calendar::Weekly::parse(&field, &w.days, &w.from, &w.to)
            {
                errors.push(e.into());
            }
        }
        for (name, v) in [("minSize", self.min_size), ("maxSize", self.max_size)] {
            if v.is_some_and(|v| v < 0) {
                errors.push(FieldError::Invalid {
                    field: format!("{field_prefix}spec.{name}"),
                    problem: "must be 0 or more".to_owned(),
                });
            }
        }
        errors
    }

    /// `spec.timeZone` resolved from the tz database (UTC when unset). Reads the database: call
    /// it at the edges, not from the pure policies.
    pub fn time_zone(&self, field_prefix: &str) -> Result<jiff::tz::TimeZone, FieldError> {
        let Some(name) = self.time_zone.as_deref() else {
            return Ok(jiff::tz::TimeZone::UTC);
        };
        jiff::tz::TimeZone::get(name).map_err(|e| FieldError::Invalid {
            field: format!("{field_prefix}spec.timeZone"),
            problem: format!(
                "{name:?} is not a time zone of the tz database ({e}); write an IANA name such as Europe/Berlin or America/New_York, or leave timeZone out for UTC"
            ),
        })
    }

    /// Parses the compat CA options. `field_prefix` (e.g. `"Group homelab/g1 "`) starts each
    /// error's field path.
    pub fn autoscaling_options(
        &self,
        field_prefix: &str,
    ) -> Result<AutoscalingOptions, FieldError> {
        let threshold = |name: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| parse_threshold(&format!("{field_prefix}spec.{name}"), v))
                .transpose()
        };
        let duration = |name: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| parse_duration(&format!("{field_prefix}spec.{name}"), v))
                .transpose()
        };
        Ok(AutoscalingOptions {
            scale_down_utilization_threshold: threshold(
                "scaleDownUtilizationThreshold",
                &self.scale_down_utilization_threshold,
            )?,
            scale_down_gpu_utilization_threshold: threshold(
                "scaleDownGpuUtilizationThreshold",
                &self.scale_down_gpu_utilization_threshold,
            )?,
            scale_down_unneeded_time: duration(
                "scaleDownUnneededTime",
                &self.scale_down_unneeded_time,
            )?,
            scale_down_unready_time: duration(
                "scaleDownUnreadyTime",
                &self.scale_down_unready_time,
            )?,
            max_node_provision_time: duration(
                "maxNodeProvisionTime",
                &self.max_node_provision_time,
            )?,
            zero_or_max_node_scaling: self.zero_or_max_node_scaling,
            ignore_daemon_sets_utilization: self.ignore_daemon_sets_utilization,
        })
    }
}

impl Group {
    /// `Group <namespace>/<name>`, for messages.
    pub fn object_ref(&self) -> String {
        object_ref("Group", &self.metadata)
    }

    /// [`GroupSpec::autoscaling_options`] with errors naming this Group.
    pub fn autoscaling_options(&self) -> Result<AutoscalingOptions, FieldError> {
        self.spec
            .autoscaling_options(&format!("{} ", self.object_ref()))
    }

    pub fn size_bounds(&self, members: usize) -> SizeBounds {
        self.spec.size_bounds(members)
    }

    /// [`GroupSpec::power_on_failure_cooldown`] with errors naming this Group.
    pub fn power_on_failure_cooldown(&self) -> Result<Option<SignedDuration>, FieldError> {
        self.spec
            .power_on_failure_cooldown(&format!("{} ", self.object_ref()))
    }

    /// [`GroupSpec::remediate_after`] with errors naming this Group: the operator builds each
    /// member's FSM `Policy::remediate_after` from it.
    pub fn remediate_after(&self) -> Result<Option<SignedDuration>, FieldError> {
        self.spec
            .remediate_after(&format!("{} ", self.object_ref()))
    }

    /// `spec.scaleDownDisabled`, unset meaning false.
    pub fn scale_down_disabled(&self) -> bool {
        self.spec.scale_down_disabled.unwrap_or(false)
    }

    /// Whether `machine` is a member: same namespace and labelled `group=<this group's name>`.
    pub fn has_member(&self, machine: &super::Machine) -> bool {
        self.metadata
            .name
            .as_deref()
            .is_some_and(|n| machine.group() == Some(n))
            && self.metadata.namespace == machine.metadata.namespace
    }

    /// [`GroupSpec::validate`] with errors naming this Group.
    pub fn validate(&self) -> Vec<FieldError> {
        let prefix = format!("{} ", self.object_ref());
        let mut errors = self.spec.validate(&prefix);
        if self.metadata.name.as_deref().is_some_and(|n| n.len() > 63) {
            errors.push(FieldError::Invalid {
                field: format!("{prefix}metadata.name"),
                problem: GROUP_NAME_MESSAGE.to_owned(),
            });
        }
        errors
    }
}
