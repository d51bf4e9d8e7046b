//! The `redfish` meter: the BMC's Chassis power reading. Newer BMCs link the chassis'
//! `EnvironmentMetrics` (`PowerWatts.Reading`, and `EnergykWh.Reading` as the energy counter);
//! the older `Power` resource has `PowerControl[0].PowerConsumedWatts`. The first that holds a
//! reading is used.
//!
//! Every connection field left out of `spec.meter.redfish` comes from the machine's Redfish power
//! driver, and the BMC is reached through the driver's own client
//! (`crate::operator::power::redfish`): the same Secret handling, TLS, retries, and the rule that
//! a path the BMC names stays on the BMC.
use kube::Client;
use serde_json::Value;

use super::Sample;
use crate::operator::api::{Machine, PowerSpec, Redfish, RedfishMeter};
use crate::operator::power::PowerError;
use crate::operator::power::redfish::Bmc;

/// Where the meter sits in a Node CR, for errors.
pub const FIELD: &str = "spec.meter.redfish";
const CHASSIS: &str = "/redfish/v1/Chassis";

/// The BMC connection of `spec`: each field it leaves out taken from the machine's Redfish power
/// driver (`powerOn.redfish`, else `powerOff.redfish`).
pub fn connection(machine: &Machine, spec: &RedfishMeter) -> Result<Redfish, String> {
    let power = machine.spec.power.as_deref();
    let driver = power
        .and_then(PowerSpec::on)
        .and_then(|o| o.redfish.as_deref())
        .or_else(|| {
            power
                .and_then(PowerSpec::off)
                .and_then(|o| o.redfish.as_deref())
        });
    let missing = |name: &str| {
        format!(
            "{FIELD}.{name} is not set, and the machine has no Redfish power driver \
             (spec.power.powerOn.redfish or powerOff.redfish) to take it from: set it"
        )
    };
    let endpoint = spec
        .endpoint
        .clone()
        .or_else(|| driver.map(|d| d.endpoint.clone()))
        .ok_or_else(|| missing("endpoint"))?;
    let credentials_secret = spec
        .credentials_secret
        .clone()
        .or_else(|| driver.map(|d| d.credentials_secret.clone()))
        .ok_or_else(|| missing("credentialsSecret"))?;
    // The TLS choice is taken whole, the meter's or the driver's: a `caBundle` of one and an
    // `insecureSkipVerify` of the other would contradict each other.
    let own_tls = spec.ca_bundle.is_some() || spec.insecure_skip_verify.is_some();
    let (ca_bundle, insecure_skip_verify) = match driver {
        Some(d) if !own_tls => (d.ca_bundle.clone(), d.insecure_skip_verify),
        _ => (spec.ca_bundle.clone(), spec.insecure_skip_verify),
    };
    Ok(Redfish {
        endpoint,
        system_id: driver.and_then(|d| d.system_id.clone()),
        credentials_secret,
        insecure_skip_verify,
        allow_insecure: spec
            .allow_insecure
            .or_else(|| driver.and_then(|d| d.allow_insecure)),
        ca_bundle,
        force_off_after: None,
        timeout: spec
            .timeout
            .clone()
            .or_else(|| driver.and_then(|d| d.timeout.clone())),
    })
}

/// Reads the chassis power of `machine`'s BMC. The error says what was read, from where and why
/// it failed, without the credentials.
pub async fn read(
    client: &Client,
    machine: &Machine,
    spec: &RedfishMeter,
) -> Result<Sample, String> {
    let connection = connection(machine, spec)?;
    let namespace = machine.metadata.namespace.as_deref().unwrap_or("default");
    let bmc = Bmc::connect(client, namespace, &connection, FIELD.to_owned())
        .await
        .map_err(|e| e.to_string())?;
    read_bmc(&bmc, spec)
        .await
        .map_err(|e| bmc.redactor().scrub(&e.to_string()))
}

async fn read_bmc(bmc: &Bmc, spec: &RedfishMeter) -> Result<Sample, PowerError> {
    let chassis_path = chassis_path(bmc, spec).await?;
    let chassis = bmc.get(&chassis_path).await?;
    let mut tried = Vec::new();
    if let Some(path) = chassis["EnvironmentMetrics"]["@odata.id"].as_str() {
        let metrics = bmc.get(path).await?;
        if let Some(watts) = metrics["PowerWatts"]["Reading"].as_f64() {
            return Ok(Sample {
                watts,
                energy_wh: metrics["EnergykWh"]["Reading"]
                    .as_f64()
                    .map(|kwh| kwh * 1000.0),
            });
        }
        tried.push(format!("{path} has no PowerWatts.Reading"));
    }
    if let Some(path) = chassis["Power"]["@odata.id"].as_str() {
        let power = bmc.get(path).await?;
        if let Some(watts) = power["PowerControl"][0]["PowerConsumedWatts"].as_f64() {
            return Ok(Sample {
                watts,
                energy_wh: None,
            });
        }
        tried.push(format!("{path} has no PowerControl[0].PowerConsumedWatts"));
    }
    if tried.is_empty() {
        tried.push("it links neither EnvironmentMetrics nor Power".to_owned());
    }
    Err(PowerError::Config(format!(
        "BMC {}: chassis {chassis_path} reports no power reading ({}): set {FIELD}.chassisId to \
         a chassis that has one, or use an http meter",
        bmc.endpoint(),
        tried.join("; ")
    )))
}

/// `chassisId`, else the chassis the system links (`Links.Chassis`), else the only member of
/// the Chassis collection.
async fn chassis_path(bmc: &Bmc, spec: &RedfishMeter) -> Result<String, PowerError> {
    if let Some(id) = &spec.chassis_id {
        return Ok(format!("{CHASSIS}/{id}"));
    }
    if let Ok(system) = bmc.system_path().await
        && let Ok(body) = bmc.get(&system).await
        && let Some(path) = first_link(&body["Links"]["Chassis"])
    {
        return Ok(path);
    }
    let collection = bmc.get(CHASSIS).await?;
    let members: Vec<&str> = collection["Members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["@odata.id"].as_str())
        .collect();
    match members.as_slice() {
        [one] => Ok((*one).trim_end_matches('/').to_owned()),
        [] => Err(PowerError::Config(format!(
            "BMC {} lists no chassis in {CHASSIS}",
            bmc.endpoint()
        ))),
        many => Err(PowerError::Config(format!(
            "BMC {} lists {} chassis ({}): set {FIELD}.chassisId to one of them",
            bmc.endpoint(),
            many.len(),
            many.iter()
                .map(|m| m.trim_end_matches('/').rsplit('/').next().unwrap_or(m))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn first_link(links: &Value) -> Option<String> {
    links
        .as_array()?
        .first()?
        .get("@odata.id")?
        .as_str()
        .map(|s| s.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::machine::PowerState;

    fn bmc() -> Redfish {
        Redfish {
            endpoint: "https://bmc".to_owned(),
            system_id: Some("1".to_owned()),
            credentials_secret: "bmc".to_owned(),
            insecure_skip_verify: Some(true),
            timeout: Some("5s".to_owned()),
            ..Redfish::default()
        }
    }

    #[test]
    fn fields_left_out_come_from_the_power_driver() {
        let m = Machine::test("r730")
            .desired(PowerState::Off)
            .redfish(bmc())
            .build();
        let c = connection(&m, &RedfishMeter::default()).unwrap_or_default();
        assert_eq!(c.endpoint, "https://bmc");
        assert_eq!(c.credentials_secret, "bmc");
        assert_eq!(c.system_id.as_deref(), Some("1"));
        assert_eq!(c.insecure_skip_verify, Some(true));
        assert_eq!(c.timeout.as_deref(), Some("5s"));
        // The meter's own TLS choice replaces the driver's whole.
        let own = RedfishMeter {
            ca_bundle: Some("pem".to_owned()),
            ..RedfishMeter::default()
        };
        let c = connection(&m, &own).unwrap_or_default();
        assert_eq!(
            (c.ca_bundle.as_deref(), c.insecure_skip_verify),
            (Some("pem"), None)
        );
    }

    #[test]
    fn without_a_driver_the_endpoint_is_required() {
        let m = Machine::test("nuc").build();
        let Err(e) = connection(&m, &RedfishMeter::default()) else {
            panic!("no endpoint anywhere");
        };
        assert!(e.contains("spec.meter.redfish.endpoint is not set"), "{e}");
    }
}
