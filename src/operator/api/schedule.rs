//! Week-shaped settings of a Group (and, for wear, of a Node CR): schedule windows that change
//! the group's minimum and warm spares, warm spares themselves, wear limits with quiet hours,
//! and maintenance. The wall-clock arithmetic lives in `crate::operator::calendar`.
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel::*;
pub use crate::operator::calendar::Day;

/// One entry of a Group's `spec.schedule`: from `from` to `to` (wall clock of the Group's
/// `timeZone`) on each of `days`, the group keeps `minSize` machines on and `warmSpares`
/// spares ready. Outside every window the Group's own `minSize` and `warmSpares` hold; where
/// windows overlap, the one listed last holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": WINDOW_NOT_EMPTY_RULE, "message": WINDOW_NOT_EMPTY_MESSAGE}
]))]
pub struct ScheduleWindow {
    /// Shown in `fsm inspect` and Group status, e.g. `workday`.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Days the window starts on (default: every day). A window whose `to` is earlier than
    /// its `from` runs past midnight into the next day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub days: Vec<Day>,
    /// Start, `HH:MM` on a 24-hour clock, e.g. `07:30`.
    #[schemars(length(max = 5), extend("x-kubernetes-validations" = [
        {"rule": TIME_OF_DAY_RULE, "message": TIME_OF_DAY_MESSAGE}
    ]))]
    pub from: String,
    /// End (exclusive), `HH:MM`; `24:00` is midnight at the end of the day.
    #[schemars(length(max = 5), extend("x-kubernetes-validations" = [
        {"rule": TIME_OF_DAY_RULE, "message": TIME_OF_DAY_MESSAGE}
    ]))]
    pub to: String,
    /// Machines kept on during the window (default: the Group's `minSize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_size: Option<i32>,
    /// Warm spares during the window (default: the Group's `warmSpares`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_spares: Option<WarmSpares>,
}

/// Room kept free on machines that are already on, so the next pods start without waiting
/// for a boot. The operator keeps a Cluster Autoscaler `CapacityBuffer` of `count`
/// placeholder pods of this shape; CA powers machines on to hold them and real pods take
/// their place.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WarmSpares {
    /// Placeholder pods kept schedulable (0 turns warm spares off).
    #[schemars(range(min = 0, max = 1000))]
    pub count: i32,
    /// CPU of one placeholder, e.g. `"2"` (default: a whole machine of the group, less what
    /// its DaemonSets take).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory of one placeholder, e.g. `4Gi` (default as for `cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Limits that spare a machine's disks, fans and power supply. Set on a Group for all its
/// members; a Node CR's own `wear` overrides the Group's field by field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Wear {
    /// Power-ons per machine in any 24 hours. Scale-up prefers machines below it; a machine
    /// at its limit is still powered on when no other can take the pods, with an Event
    /// saying the limit was passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_boots_per_day: Option<i32>,
    /// Times when machines are left as they are (wall clock of the Group's `timeZone`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub quiet_hours: Vec<QuietHours>,
}

/// A quiet window: no power-offs in it (fans spinning up on the way down wake the house), and
/// power-ons only for pods that have waited at least `powerOnAfter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": WINDOW_NOT_EMPTY_RULE, "message": WINDOW_NOT_EMPTY_MESSAGE}
]))]
pub struct QuietHours {
    /// Days the window starts on (default: every day).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub days: Vec<Day>,
    /// Start, `HH:MM`, e.g. `22:00`.
    #[schemars(length(max = 5), extend("x-kubernetes-validations" = [
        {"rule": TIME_OF_DAY_RULE, "message": TIME_OF_DAY_MESSAGE}
    ]))]
    pub from: String,
    /// End (exclusive), `HH:MM`, e.g. `07:00` (earlier than `from`: past midnight).
    #[schemars(length(max = 5), extend("x-kubernetes-validations" = [
        {"rule": TIME_OF_DAY_RULE, "message": TIME_OF_DAY_MESSAGE}
    ]))]
    pub to: String,
    /// Hold power-offs during the window (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_power_off: Option<bool>,
    /// During the window, power a machine on only for pods pending at least this long, e.g.
    /// `"30m"` (default: power-ons are not held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": POSITIVE_DURATION_RULE, "message": POSITIVE_DURATION_MESSAGE}
    ]))]
    pub power_on_after: Option<String>,
}

/// What maintenance does to the machine's power.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MaintenancePower {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Power it on (after the drain, if it was on: e.g. to work on it over SSH).
    On,
    /// Power it off after the drain (e.g. for a disk swap).
    Off,
}

/// A Node CR under maintenance: drained, left alone by the Cluster Autoscaler and by the
/// operator's scale-up and scale-down until it ends (`kubectl homelab maintenance end`) or
/// `until` passes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Why, shown in `fsm inspect` and Events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
    /// What happens to the power (default `keep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<MaintenancePower>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// When it ends by itself (default: only when ended by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// Who started it (the CLI records the kubeconfig user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub by: Option<String>,
}
