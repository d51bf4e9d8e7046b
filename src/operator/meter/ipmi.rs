//! The `ipmi` meter: the BMC's DCMI power reading (Get Power Reading), over the IPMI driver's
//! own LAN session (`crate::operator::power::ipmi`). Every connection field left out of
//! `spec.meter.ipmi` comes from the machine's IPMI power driver.
use kube::Client;

use super::Sample;
use crate::operator::api::{Ipmi, IpmiMeter, Machine, PowerSpec};

/// Where the meter sits in a Node CR, for errors.
pub const FIELD: &str = "spec.meter.ipmi";

/// The BMC connection of `spec`: each field it leaves out taken from the machine's IPMI power
/// driver (`powerOn.ipmi`, else `powerOff.ipmi`).
pub fn connection(machine: &Machine, spec: &IpmiMeter) -> Result<Ipmi, String> {
    let power = machine.spec.power.as_deref();
    let driver = power
        .and_then(PowerSpec::on)
        .and_then(|o| o.ipmi.as_deref())
        .or_else(|| {
            power
                .and_then(PowerSpec::off)
                .and_then(|o| o.ipmi.as_deref())
        });
    let missing = |name: &str| {
        format!(
            "{FIELD}.{name} is not set, and the machine has no IPMI power driver \
             (spec.power.powerOn.ipmi or powerOff.ipmi) to take it from: set it"
        )
    };
    Ok(Ipmi {
        host: spec
            .host
            .clone()
            .or_else(|| driver.map(|d| d.host.clone()))
            .ok_or_else(|| missing("host"))?,
        port: spec.port.or_else(|| driver.and_then(|d| d.port)),
        credentials_secret: spec
            .credentials_secret
            .clone()
            .or_else(|| driver.map(|d| d.credentials_secret.clone()))
            .ok_or_else(|| missing("credentialsSecret"))?,
        // DCMI Get Power Reading needs only USER privilege: a read-only account will do.
        privilege: driver.and_then(|d| d.privilege),
        cipher_suite: spec
            .cipher_suite
            .or_else(|| driver.and_then(|d| d.cipher_suite)),
        allow_insecure: driver.and_then(|d| d.allow_insecure),
        force_off_after: None,
        timeout: spec
            .timeout
            .clone()
            .or_else(|| driver.and_then(|d| d.timeout.clone())),
    })
}

/// Reads the DCMI power reading of `machine`'s BMC. A BMC without DCMI power readings is an
/// error that says so (the machine has no meter there), so the `PowerMeter` condition tells the
/// owner to use another source.
pub async fn read(client: &Client, machine: &Machine, spec: &IpmiMeter) -> Result<Sample, String> {
    let connection = connection(machine, spec)?;
    let namespace = machine.metadata.namespace.as_deref().unwrap_or("default");
    match crate::operator::power::ipmi::read_power(client, namespace, &connection, FIELD).await {
        Ok(Some(watts)) => Ok(Sample {
            watts,
            energy_wh: None,
        }),
        Ok(None) => Err(format!(
            "BMC {}: no DCMI power reading (the BMC does not support it or has power \
             measurement off): no meter there; remove {FIELD} or read the socket with an http \
             meter",
            connection.host
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::api::IpmiPrivilege;

    fn driver() -> Ipmi {
        Ipmi {
            host: "10.0.0.21".into(),
            port: Some(6230),
            credentials_secret: "bmc".into(),
            privilege: Some(IpmiPrivilege::Administrator),
            cipher_suite: Some(3),
            ..Ipmi::default()
        }
    }

    #[test]
    fn an_empty_meter_reads_the_power_drivers_bmc() {
        let m = Machine::test("m1").ipmi(driver()).build();
        let c = connection(&m, &IpmiMeter::default()).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.cipher_suite),
            ("10.0.0.21", Some(6230), Some(3))
        );
        assert_eq!(c.credentials_secret, "bmc");
        assert_eq!(c.force_off_after, None);
    }

    #[test]
    fn the_meters_own_fields_win() {
        let m = Machine::test("m1").ipmi(driver()).build();
        let spec = IpmiMeter {
            credentials_secret: Some("bmc-readonly".into()),
            ..IpmiMeter::default()
        };
        assert_eq!(
            connection(&m, &spec).unwrap().credentials_secret,
            "bmc-readonly"
        );
    }

    #[test]
    fn without_a_driver_the_missing_field_is_named() {
        let m = Machine::test("m1").build();
        let e = connection(&m, &IpmiMeter::default()).unwrap_err();
        assert!(e.contains("spec.meter.ipmi.host is not set"), "{e}");
    }
}
