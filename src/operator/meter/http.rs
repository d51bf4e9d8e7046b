//! The `http` meter: one GET whose JSON answer holds the power in watts (`wattsPath`) and
//! optionally a cumulative energy counter (`energyPath`, in `energyUnit`): a Shelly, a Tasmota
//! or a Home Assistant sensor. The request goes out like the HTTP power driver's
//! (`crate::operator::power::http`): the same Secret keys, endpoint binding, TLS settings and
//! JSONPath evaluation, and every error is scrubbed of the Secret's values.
use std::time::Duration;

use http::Method;
use kube::Client;
use serde_json::Value;

use super::Sample;
use crate::operator::api::{EnergyUnit, HttpMeter, TlsSettings, parse_duration};
use crate::operator::power::http::{query_first, secret_auth};
use crate::operator::power::secret::{self, Redactor};
use crate::operator::power::tls;
use crate::operator::power::web::{Auth, WebClient, WebError};

/// Where the meter sits in a Node CR, for errors.
pub const FIELD: &str = "spec.meter.http";
/// Timeout of a request when `timeout` is left out.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the meter of a Node CR in `namespace`. The error says what was read, from where and
/// why it failed, without any value of the Secret.
pub async fn read(client: &Client, namespace: &str, spec: &HttpMeter) -> Result<Sample, String> {
    check_https(spec)?;
    let (auth, redactor, secret) = match &spec.secret {
        None => (Auth::None, Redactor::default(), None),
        Some(name) => {
            let s = secret::read(client, namespace, name, &format!("{FIELD}.secret"))
                .await
                .map_err(|e| e.to_string())?;
            s.allow_endpoint(&spec.url, &format!("{FIELD}.url"))
                .map_err(|e| e.to_string())?;
            let auth = secret_auth(&s, FIELD).map_err(|e| e.to_string())?;
            (auth, s.redactor(), Some(s.object().to_owned()))
        }
    };
    read_with(spec, &auth, secret.as_deref())
        .await
        .map_err(|e| redactor.scrub(&e))
}

/// The schema's rule that a `secret` goes over TLS, for objects stored before it (the HTTP
/// driver checks the same before it reads its Secret).
fn check_https(spec: &HttpMeter) -> Result<(), String> {
    if spec.secret.is_none()
        || spec.allow_insecure == Some(true)
        || spec.url.starts_with("https://")
    {
        return Ok(());
    }
    Err(format!(
        "{FIELD}.url {:?} is not https://: the credentials of {FIELD}.secret would cross the \
         network in clear text; use https:// (with {FIELD}.caBundle for a self-signed \
         certificate), or set {FIELD}.allowInsecure: true to send them anyway",
        spec.url
    ))
}

fn timeout(spec: &HttpMeter) -> Result<Duration, String> {
    let Some(v) = spec.timeout.as_deref() else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let d = parse_duration(&format!("{FIELD}.timeout"), v).map_err(|e| e.to_string())?;
    match Duration::try_from(d) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{FIELD}.timeout {v:?} must be longer than 0s")),
    }
}

async fn read_with(spec: &HttpMeter, auth: &Auth, secret: Option<&str>) -> Result<Sample, String> {
    let tls = tls::client_config(
        TlsSettings {
            ca_bundle: spec.ca_bundle.as_deref(),
            insecure_skip_verify: spec.insecure_skip_verify.unwrap_or(false),
        },
        FIELD,
    )
    .map_err(|e| e.to_string())?;
    let web = WebClient::new(tls, timeout(spec)?);
    let mut headers: Vec<(&str, &str)> = vec![("Accept", "application/json")];
    headers.extend(spec.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let what = format!("GET {}", spec.url);
    let answer = web
        .send(Method::GET, &spec.url, &headers, auth, None)
        .await
        .map_err(|e| match e {
            e @ (WebError::Unreachable { .. } | WebError::Timeout { .. }) => {
                format!("meter {FIELD}.url: {e}")
            }
            e => e.into_power(FIELD).to_string(),
        })?;
    if !(200..300).contains(&answer.status) {
        let hint = match (answer.status, secret) {
            (401 | 403, Some(s)) => format!(
                ": the meter refused the credentials of Secret {s}; check its `token` (or \
                 `username` and `password`)"
            ),
            (401 | 403, None) => {
                format!(": the meter wants credentials; name a Secret in {FIELD}.secret")
            }
            (404, _) => format!(": check {FIELD}.url"),
            _ => String::new(),
        };
        return Err(format!("{what} answered {}{hint}", answer.status));
    }
    let Some(json) = answer.json() else {
        return Err(format!(
            "{what} answered {} with a body that is not JSON: check {FIELD}.url",
            answer.status
        ));
    };
    let watts = number_at(&json, &spec.watts_path, "wattsPath", &what)?;
    let watts = watts * power_scale(&json, &spec.watts_path, &what)?;
    let energy_wh = match &spec.energy_path {
        None => None,
        Some(path) => {
            let v = number_at(&json, path, "energyPath", &what)?;
            Some(match spec.energy_unit.unwrap_or_default() {
                EnergyUnit::Wh => v,
                EnergyUnit::KWh => v * 1000.0,
            })
        }
    };
    Ok(Sample { watts, energy_wh })
}

/// The number JSONPath `path` (the meter's field `name`) selects in `json`: a JSON number, or a
/// string holding one (Home Assistant's `state`).
fn number_at(json: &Value, path: &str, name: &str, what: &str) -> Result<f64, String> {
    let found = query_first(json, path)
        .map_err(|e| format!("{FIELD}.{name} {path:?} is not a JSONPath: {e}"))?;
    let Some(value) = found else {
        let keys = json
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        return Err(format!(
            "{what}: {FIELD}.{name} {path} matched nothing in the answer (its top-level keys: \
             {keys}): check the path"
        ));
    };
    let n = match &value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n.is_finite() => Ok(n),
        _ => Err(format!(
            "{what}: {FIELD}.{name} {path} is {value}, not a number (a sensor that is \
             unavailable reads so until it reports again)"
        )),
    }
}

/// Watts per unit of the power value: Home Assistant's `/api/states/<entity>` answer carries
/// the sensor's unit in `attributes.unit_of_measurement` beside `state`; a `kW` sensor is
/// scaled, and a sensor of something other than power is an error. Other answers are in W.
fn power_scale(json: &Value, watts_path: &str, what: &str) -> Result<f64, String> {
    let is_state = matches!(watts_path.trim(), "$.state" | "$['state']" | "$[\"state\"]");
    let unit = json["attributes"]["unit_of_measurement"].as_str();
    match (is_state, unit) {
        (true, Some("W")) | (false, _) | (true, None) => Ok(1.0),
        (true, Some("kW")) => Ok(1000.0),
        (true, Some("mW")) => Ok(0.001),
        (true, Some(other)) => Err(format!(
            "{what}: the sensor's attributes.unit_of_measurement is {other:?}, not W or kW: \
             point {FIELD}.url at a power sensor (an energy sensor in kWh belongs in \
             energyPath of a meter that reports both)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_numbers_and_strings() {
        let json = serde_json::json!({"apower": 12.5, "state": " 140.2 ", "bad": "unavailable"});
        assert_eq!(number_at(&json, "$.apower", "wattsPath", "GET x"), Ok(12.5));
        assert_eq!(number_at(&json, "$.state", "wattsPath", "GET x"), Ok(140.2));
        let Err(e) = number_at(&json, "$.bad", "wattsPath", "GET x") else {
            panic!("unavailable is not a number");
        };
        assert!(
            e.contains("not a number") && e.contains("\"unavailable\""),
            "{e}"
        );
        let Err(e) = number_at(&json, "$.power", "wattsPath", "GET x") else {
            panic!("nothing matched");
        };
        assert!(
            e.contains("matched nothing") && e.contains("apower, bad, state"),
            "{e}"
        );
    }

    #[test]
    fn home_assistant_units_scale_or_refuse() {
        let kw = serde_json::json!({"state": "1.2", "attributes": {"unit_of_measurement": "kW"}});
        assert_eq!(power_scale(&kw, "$.state", "GET x"), Ok(1000.0));
        let kwh = serde_json::json!({"state": "1.2", "attributes": {"unit_of_measurement": "kWh"}});
        assert!(power_scale(&kwh, "$.state", "GET x").is_err());
        // Another path is not Home Assistant's state: its unit is W.
        assert_eq!(power_scale(&kwh, "$.power", "GET x"), Ok(1.0));
    }
}
