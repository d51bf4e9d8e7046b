//! Energy: where a machine's measured power comes from (`spec.meter`), what electricity costs
//! (`Group.spec.electricity`, or the operator's `--electricity`), and the counters the operator
//! keeps in `status.energy`.
use std::collections::BTreeMap;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel::*;

/// A power meter for the machine. Its readings are preferred over the `spec.watts` model while
/// they arrive; when a read fails the model is used and the `PowerMeter` condition says why.
/// Set exactly one source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": ONE_METER_SOURCE_RULE, "message": ONE_METER_SOURCE_MESSAGE}
]))]
pub struct Meter {
    /// The BMC's Chassis power reading (`Power.PowerControl[].PowerConsumedWatts`, or
    /// `PowerSubsystem` / `EnvironmentMetrics.PowerWatts` on newer BMCs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redfish: Option<Box<RedfishMeter>>,
    /// A smart plug or energy monitor with a JSON API (Shelly, Tasmota, Home Assistant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Box<HttpMeter>>,
    /// The BMC's DCMI power reading over IPMI LAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipmi: Option<Box<IpmiMeter>>,
    /// How often the meter is read (default 60s, at least 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": POSITIVE_DURATION_RULE, "message": POSITIVE_DURATION_MESSAGE}
    ]))]
    pub interval: Option<String>,
}

/// Power readings from a Redfish BMC. Every connection field left out is taken from the
/// machine's Redfish power driver (`spec.power.powerOn.redfish`, else `powerOff.redfish`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": TLS_CHOICE_RULE, "message": TLS_CHOICE_MESSAGE}
]))]
pub struct RedfishMeter {
    /// Base URL of the BMC (default: the Redfish power driver's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), extend("x-kubernetes-validations" = [
        {"rule": URL_RULE, "message": URL_MESSAGE}
    ]))]
    pub endpoint: Option<String>,
    /// Redfish chassis id (default: the system's `Links.Chassis`, else the only member of
    /// `/redfish/v1/Chassis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub chassis_id: Option<String>,
    /// Name of a Secret with keys `username` and `password` (default: the power driver's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub credentials_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
    /// Timeout of each request (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": POSITIVE_DURATION_RULE, "message": POSITIVE_DURATION_MESSAGE}
    ]))]
    pub timeout: Option<String>,
}

/// Power readings from an IPMI BMC (DCMI Get Power Reading). Every field left out is taken
/// from the machine's IPMI power driver (`spec.power.powerOn.ipmi`, else `powerOff.ipmi`); a
/// BMC without DCMI power readings has no meter, which the `PowerMeter` condition says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpmiMeter {
    /// Address or host name of the BMC (default: the IPMI power driver's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub host: Option<String>,
    /// UDP port (default: the driver's, else 623).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Name of a Secret with keys `username` and `password` (default: the driver's). A
    /// USER-privilege account is enough to read power.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub credentials_secret: Option<String>,
    /// RMCP+ cipher suite, 17 or 3 (default: the driver's, else 17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suite: Option<i32>,
    /// Timeout of one exchange with the BMC (default: the driver's, else 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": POSITIVE_DURATION_RULE, "message": POSITIVE_DURATION_MESSAGE}
    ]))]
    pub timeout: Option<String>,
}

/// A GET whose JSON answer holds the power in watts, and optionally a cumulative energy
/// counter: Shelly Gen2 `/rpc/Switch.GetStatus?id=0` (`$.apower`, `$.aenergy.total` in Wh),
/// Tasmota `/cm?cmnd=Status%208` (`$.StatusSNS.ENERGY.Power`, `$.StatusSNS.ENERGY.Total` in
/// kWh), Home Assistant `/api/states/sensor.x` (`$.state`, with a bearer token).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": TLS_CHOICE_RULE, "message": TLS_CHOICE_MESSAGE},
    {"rule": HTTP_METER_HTTPS_RULE, "message": HTTP_METER_HTTPS_MESSAGE}
]))]
pub struct HttpMeter {
    #[schemars(length(max = 2048), extend("x-kubernetes-validations" = [
        {"rule": URL_RULE, "message": URL_MESSAGE}
    ]))]
    pub url: String,
    /// JSONPath (RFC 9535) of the power in watts; a number, or a string holding one.
    #[schemars(length(max = 256))]
    pub watts_path: String,
    /// JSONPath of a cumulative energy counter, in `energyUnit`. When present, energy is
    /// accounted from the counter's increase rather than from the sampled watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub energy_path: Option<String>,
    /// Unit of the energy counter (default `Wh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_unit: Option<EnergyUnit>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Name of a Secret (same namespace): key `token` is sent as a bearer token, or keys
    /// `username` and `password` as basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret: Option<String>,
    /// Timeout of each request (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": POSITIVE_DURATION_RULE, "message": POSITIVE_DURATION_MESSAGE}
    ]))]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Allow an `http://` URL while a `secret` is set (the credentials cross the network in
    /// clear text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EnergyUnit {
    #[default]
    Wh,
    #[serde(rename = "kWh")]
    KWh,
}

/// What electricity costs: `pricePerKWh`, or during each `timeOfUse` window (time of day in
/// `timeZone`) that window's price. The same shape as a `simulate` scenario's `electricity`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Electricity {
    /// Price of one kWh in `currency`.
    #[serde(rename = "pricePerKWh")]
    #[schemars(range(min = 0.0))]
    pub price_per_kwh: f64,
    /// Currency code shown with costs (default `EUR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub currency: Option<String>,
    /// Windows with their own price, e.g. an off-peak night rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 24))]
    pub time_of_use: Vec<TimeOfUse>,
    /// IANA time zone of the windows, e.g. `Europe/Berlin` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
}

/// `[from, to)` as durations from midnight (`7h`, `22h30m`); `from > to` wraps past midnight.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeOfUse {
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": DURATION_RULE, "message": DURATION_MESSAGE}
    ]))]
    pub from: String,
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": DURATION_RULE, "message": DURATION_MESSAGE}
    ]))]
    pub to: String,
    #[serde(rename = "pricePerKWh")]
    #[schemars(range(min = 0.0))]
    pub price_per_kwh: f64,
}

/// Where the watts of an interval came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EnergySource {
    /// `spec.watts` and the phase (and CPU requests while on).
    #[default]
    Model,
    /// A meter's reading (`spec.meter`).
    Meter,
    /// Neither: no `spec.watts` and no meter. Time and boots are counted, energy is not.
    Unknown,
}

/// Energy accounting since `since`, written on lifecycle transitions and at most every
/// `--energy-write-interval` while the machine is on; never while nothing changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnergyCounters {
    /// When accounting began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
    /// Up to when the counters are accounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    #[serde(default)]
    pub on_seconds: u64,
    #[serde(default)]
    pub off_seconds: u64,
    /// Energy used, all phases.
    #[serde(default)]
    pub watt_hours: f64,
    /// Of `wattHours`, what a meter measured (the rest is the model's).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub metered_watt_hours: f64,
    #[serde(default, skip_serializing_if = "EnergyByPhase::is_zero")]
    pub watt_hours_by_phase: EnergyByPhase,
    /// What the machine would have used always on at its idle draw over the same time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub baseline_watt_hours: f64,
    #[serde(default)]
    pub boots: u64,
    /// Cost of `wattHours` at the tariff in force when it was used.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cost: f64,
    /// Cost of `baselineWattHours`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub baseline_cost: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub currency: Option<String>,
    /// The price of a kWh in force at `until`: what `kubectl homelab energy` costs the time
    /// since the last write at.
    #[serde(
        rename = "pricePerKWh",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 0.0))]
    pub price_per_kwh: Option<f64>,
    /// Seconds accounted across a gap while the operator was not running, from the phase on
    /// both sides of it: an estimate.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub estimated_seconds: u64,
    /// The draw at `until` and where it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watts: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EnergySource>,
    /// Per UTC day, newest last, at most [`ENERGY_DAYS_MAX`]: what `kubectl homelab energy
    /// --since` sums.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 14))]
    pub days: Vec<EnergyDay>,
}

/// Days of history kept in `status.energy.days`.
pub const ENERGY_DAYS_MAX: usize = 14;

/// Watt-hours by lifecycle phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnergyByPhase {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub off: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub booting: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub on: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shutting_down: f64,
}

/// One UTC day of [`EnergyCounters`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnergyDay {
    /// `YYYY-MM-DD` (UTC).
    #[schemars(length(max = 10))]
    pub date: String,
    #[serde(default)]
    pub watt_hours: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub metered_watt_hours: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub baseline_watt_hours: f64,
    #[serde(default)]
    pub on_seconds: u64,
    #[serde(default)]
    pub off_seconds: u64,
    #[serde(default)]
    pub boots: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cost: f64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub baseline_cost: f64,
}

impl EnergyByPhase {
    pub fn is_zero(&self) -> bool {
        *self == EnergyByPhase::default()
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
