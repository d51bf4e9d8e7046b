//! The `ipmi` driver: a BMC's Chassis Control over IPMI 2.0 LAN (RMCP+, see [`lan`]), for boards
//! without a Redfish service worth trusting. It behaves as the Redfish driver does
//! (src/operator/power/redfish.rs): power-on sends "power up"; power-off sends "initiate soft
//! shutdown" (ACPI) and, when Get Chassis Status still reads the power on after
//! `forceOffAfter` (counted from the operation's start, so a restarted operator escalates on
//! time), "power down". Get Chassis Status is the readback both ways: an operation succeeds only
//! when the BMC reports the state it was for.
//!
//! [`read_power`] reads the BMC's power meter (DCMI Get Power Reading) for the meter poller.
pub mod lan;

use std::net::SocketAddr;
use std::time::Duration;

use jiff::SignedDuration;
use kube::Client;

use super::redfish::{FORCE_OFF_REPEAT, POLL_INTERVAL};
use super::secret::{self, Redactor};
use super::{Driver, OpContext, OpProgress, PowerError, Report};
use crate::operator::api::{
    Direction, Ipmi, IpmiPrivilege, SECRET_KEY_KG, SECRET_KEY_PASSWORD, SECRET_KEY_USERNAME,
    format_duration,
};
use crate::operator::machine::PowerState;
use lan::{CipherSuite, LanError, Privilege, Session, Settings};

/// Chassis Control's actions (IPMI 2.0 section 28.3).
const POWER_DOWN: u8 = 0x00;
const POWER_UP: u8 = 0x01;
const SOFT_SHUTDOWN: u8 = 0x05;

const NETFN_CHASSIS: u8 = 0x00;
const CMD_GET_CHASSIS_STATUS: u8 = 0x01;
const CMD_CHASSIS_CONTROL: u8 = 0x02;
const NETFN_GROUP_EXTENSION: u8 = 0x2c;
const CMD_DCMI_GET_POWER_READING: u8 = 0x02;
const DCMI_GROUP: u8 = 0xdc;

/// The IPMI driver for one machine and direction.
pub struct IpmiDriver<'a> {
    client: Client,
    spec: &'a Ipmi,
}

/// The credentials and settings of one BMC, read for one driver call.
struct Bmc {
    address: SocketAddr,
    host: String,
    username: secret::SecretValue,
    password: secret::SecretValue,
    kg: Option<Vec<u8>>,
    privilege: Privilege,
    suite: CipherSuite,
    timeout: Duration,
    /// `namespace/name` of the credentials Secret.
    secret: String,
    redactor: Redactor,
    field: String,
}

impl<'a> IpmiDriver<'a> {
    /// `client` reads the credentials Secret (only that one, by name) in the machine's namespace.
    pub fn new(client: Client, spec: &'a Ipmi) -> IpmiDriver<'a> {
        IpmiDriver { client, spec }
    }

    async fn connect(&self, cx: &OpContext<'_>) -> Result<Bmc, PowerError> {
        let field = format!("{}.ipmi", cx.machine.spec.power_field(cx.direction));
        let namespace = cx
            .machine
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        bmc(&self.client, namespace, self.spec, field).await
    }

    async fn start_inner(&self, cx: &OpContext<'_>, bmc: &Bmc) -> Result<Report, PowerError> {
        let mut s = bmc.session().await?;
        let r = self.start_in(cx, bmc, &mut s).await;
        let _ = s.close().await;
        r
    }

    async fn start_in(
        &self,
        cx: &OpContext<'_>,
        bmc: &Bmc,
        s: &mut Session,
    ) -> Result<Report, PowerError> {
        let readback = bmc.power_state(s).await?;
        match cx.direction {
            Direction::On => {
                if readback == PowerState::On {
                    return Ok(Report::new(OpProgress::Succeeded).with_readback(Some(readback)));
                }
                cx.ensure_leader()?;
                bmc.control(s, POWER_UP).await?;
                Ok(Report::new(OpProgress::Running)
                    .with_readback(Some(readback))
                    .accepted(Some("power up".to_owned()))
                    .recheck_after(POLL_INTERVAL))
            }
            Direction::Off => {
                if readback == PowerState::Off {
                    return Ok(Report::new(OpProgress::Succeeded).with_readback(Some(readback)));
                }
                let grace = self.grace(bmc)?;
                if grace.is_zero() {
                    cx.ensure_leader()?;
                    bmc.control(s, POWER_DOWN).await?;
                    return Ok(Report::new(OpProgress::Running)
                        .with_readback(Some(readback))
                        .accepted(Some("power down".to_owned()))
                        .with_note("sent power down at once (forceOffAfter is 0s)")
                        .escalated()
                        .recheck_after(POLL_INTERVAL));
                }
                cx.ensure_leader()?;
                bmc.control(s, SOFT_SHUTDOWN).await?;
                Ok(Report::new(OpProgress::Running)
                    .with_readback(Some(readback))
                    .accepted(Some("soft shutdown".to_owned()))
                    .recheck_after(POLL_INTERVAL.min(grace.unsigned_abs())))
            }
        }
    }

    async fn check_inner(&self, cx: &OpContext<'_>, bmc: &Bmc) -> Result<Report, PowerError> {
        let mut s = bmc.session().await?;
        let r = self.check_in(cx, bmc, &mut s).await;
        let _ = s.close().await;
        r
    }

    async fn check_in(
        &self,
        cx: &OpContext<'_>,
        bmc: &Bmc,
        s: &mut Session,
    ) -> Result<Report, PowerError> {
        let readback = bmc.power_state(s).await?;
        let want = match cx.direction {
            Direction::On => PowerState::On,
            Direction::Off => PowerState::Off,
        };
        if readback == want {
            return Ok(Report::new(OpProgress::Succeeded).with_readback(Some(readback)));
        }
        let running = Report::new(OpProgress::Running).with_readback(Some(readback));
        if cx.direction == Direction::On {
            return Ok(running.recheck_after(POLL_INTERVAL));
        }
        // The Redfish driver's escalation rule: after forceOffAfter, power down in the first
        // POLL_INTERVAL of every FORCE_OFF_REPEAT while the chassis still reads on.
        let grace = self.grace(bmc)?;
        let elapsed = cx.now.duration_since(cx.op.started);
        let repeat = SignedDuration::try_from(FORCE_OFF_REPEAT).unwrap_or(SignedDuration::MAX);
        let slot = SignedDuration::try_from(POLL_INTERVAL).unwrap_or(SignedDuration::ZERO);
        let in_force_off_slot =
            elapsed >= grace && (elapsed - grace).as_secs() % repeat.as_secs() < slot.as_secs();
        if in_force_off_slot {
            cx.ensure_leader()?;
            bmc.control(s, POWER_DOWN).await?;
            return Ok(running
                .with_note(format!(
                    "the BMC still reported the chassis power on {} after the soft shutdown \
                     (forceOffAfter {}): sent power down",
                    format_duration(elapsed),
                    format_duration(grace)
                ))
                .escalated()
                .recheck_after(POLL_INTERVAL));
        }
        if elapsed >= grace {
            return Ok(running.recheck_after(POLL_INTERVAL));
        }
        let left = (grace - elapsed).max(SignedDuration::from_secs(1));
        Ok(running.recheck_after(POLL_INTERVAL.min(left.unsigned_abs())))
    }

    fn grace(&self, bmc: &Bmc) -> Result<SignedDuration, PowerError> {
        self.spec
            .force_off_after(&bmc.field)
            .map_err(|e| PowerError::Config(e.to_string()))
    }
}

impl Driver for IpmiDriver<'_> {
    fn kind(&self) -> &'static str {
        "ipmi"
    }

    async fn start(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        let bmc = self.connect(cx).await?;
        bmc.redactor.outcome(self.start_inner(cx, &bmc).await)
    }

    async fn check(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        let bmc = self.connect(cx).await?;
        bmc.redactor.outcome(self.check_inner(cx, &bmc).await)
    }

    /// A Chassis Control cannot be called back, and nothing of ours keeps running.
    async fn cancel(&self, _cx: &OpContext<'_>) -> Result<(), PowerError> {
        Ok(())
    }
}

/// The BMC's power meter, for the meter poller: DCMI Get Power Reading ("system power
/// statistics"), in watts. `Ok(None)` when the BMC has no meter: it does not speak DCMI, or
/// says the measurement is not active. `field` names the `ipmi` object in the Node CR (for
/// errors); `namespace` is where its credentials Secret is.
pub async fn read_power(
    client: &Client,
    namespace: &str,
    spec: &Ipmi,
    field: &str,
) -> Result<Option<f64>, PowerError> {
    let bmc = bmc(client, namespace, spec, field.to_owned()).await?;
    let r = async {
        let mut s = bmc.session().await?;
        let r = s
            .command(
                NETFN_GROUP_EXTENSION,
                CMD_DCMI_GET_POWER_READING,
                &[DCMI_GROUP, 0x01, 0x00, 0x00],
            )
            .await
            .map_err(|e| bmc.lan_error(e));
        let _ = s.close().await;
        let r = r?;
        match r.completion {
            0xc0 | 0xc3 | 0xff => Err(PowerError::Transient(format!(
                "BMC {}: DCMI Get Power Reading answered completion code {:#04x} (busy or \
                 timed out)",
                bmc.host, r.completion
            ))),
            cc => Ok(power_reading(cc, &r.data)),
        }
    }
    .await;
    r.map_err(|e| bmc.redactor.error(e))
}

/// Watts of a DCMI Get Power Reading answer, `None` when there is no meter reading: any other
/// error completion code than busy (0xc1 invalid command, 0xcc invalid data, 0xd5/0xd6 not
/// available: a BMC without DCMI power management; also 0xd4, insufficient privilege, which
/// ipmi_sim answers for a command it does not know, and DCMI needs only USER privilege), a short
/// answer, or the "measurement active" bit clear.
fn power_reading(completion: u8, data: &[u8]) -> Option<f64> {
    if completion != 0 || data.first() != Some(&DCMI_GROUP) || data.len() < 18 {
        return None;
    }
    let active = data[17] & 0x40 != 0;
    active.then(|| f64::from(u16::from_le_bytes([data[1], data[2]])))
}

async fn bmc(
    client: &Client,
    namespace: &str,
    spec: &Ipmi,
    field: String,
) -> Result<Bmc, PowerError> {
    let config = |e: crate::operator::api::FieldError| PowerError::Config(e.to_string());
    // Refused before the Secret is read: the session is protected unless the owner opted out
    // (the schema refuses the same; an object stored before that rule gets here).
    let suite_id = spec.cipher_suite(&field).map_err(config)?;
    let suite = CipherSuite::by_id(suite_id).ok_or_else(|| {
        PowerError::Config(format!("{field}.cipherSuite {suite_id} is not supported"))
    })?;
    let timeout = spec.timeout(&field).map_err(config)?.unsigned_abs();
    let secret = secret::read(
        client,
        namespace,
        &spec.credentials_secret,
        &format!("{field}.credentialsSecret"),
    )
    .await?;
    secret.allow_endpoint(&spec.endpoint(), &format!("{field}.host"))?;
    let username = secret.get(SECRET_KEY_USERNAME)?;
    let password = secret.get(SECRET_KEY_PASSWORD)?;
    let kg = if secret.has(SECRET_KEY_KG) {
        Some(kg_bytes(secret.get(SECRET_KEY_KG)?.expose()).ok_or_else(|| {
            PowerError::Config(format!(
                "Secret {} (named by {field}.credentialsSecret): key `kg` is neither text of at \
                 most 20 bytes nor 0x and at most 40 hex digits",
                secret.object()
            ))
        })?)
    } else {
        None
    };
    let port = spec.port();
    let address = tokio::net::lookup_host((spec.host.as_str(), port))
        .await
        .map_err(|e| {
            PowerError::Transient(format!(
                "BMC {} ({field}.host) cannot be resolved: {e}",
                spec.host
            ))
        })?
        .next()
        .ok_or_else(|| {
            PowerError::Transient(format!("BMC {} ({field}.host) has no address", spec.host))
        })?;
    Ok(Bmc {
        address,
        host: format!("{}:{port}", spec.host),
        username,
        password,
        kg,
        privilege: match spec.privilege() {
            IpmiPrivilege::User => Privilege::User,
            IpmiPrivilege::Operator => Privilege::Operator,
            IpmiPrivilege::Administrator => Privilege::Administrator,
        },
        suite,
        timeout,
        secret: secret.object().to_owned(),
        redactor: secret.redactor(),
        field,
    })
}

/// The Kg key: `0x` and hex digits (ipmitool's `-y`), else the text itself (`-k`).
fn kg_bytes(v: &str) -> Option<Vec<u8>> {
    let bytes = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) if hex.len() % 2 == 0 => (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?,
        Some(_) => return None,
        None => v.as_bytes().to_vec(),
    };
    (bytes.len() <= 20).then_some(bytes)
}

impl Bmc {
    async fn session(&self) -> Result<Session, PowerError> {
        Session::open(&Settings {
            address: self.address,
            username: self.username.expose(),
            password: self.password.expose(),
            kg: self.kg.as_deref(),
            privilege: self.privilege,
            suite: self.suite,
            timeout: self.timeout,
        })
        .await
        .map_err(|e| self.lan_error(e))
    }

    fn lan_error(&self, e: LanError) -> PowerError {
        match e {
            LanError::Timeout { what, timeout } => PowerError::Transient(format!(
                "BMC {} ({}.host) is unreachable: {what}: no answer within {timeout:?} \
                 ({}.timeout)",
                self.host, self.field, self.field
            )),
            LanError::Network(m) => PowerError::Transient(format!("BMC {}: {m}", self.host)),
            LanError::Credentials(m) => PowerError::Config(format!(
                "BMC {} refused the credentials of Secret {}: {m}",
                self.host, self.secret
            )),
            LanError::Refused(m) => PowerError::Config(format!(
                "BMC {}: {m} (set {}.cipherSuite to one it offers)",
                self.host, self.field
            )),
        }
    }

    /// Get Chassis Status: bit 0 of the current power state.
    async fn power_state(&self, s: &mut Session) -> Result<PowerState, PowerError> {
        let r = s
            .command(NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, &[])
            .await
            .map_err(|e| self.lan_error(e))?;
        match (r.completion, r.data.first()) {
            (0, Some(state)) if state & 0x01 != 0 => Ok(PowerState::On),
            (0, Some(_)) => Ok(PowerState::Off),
            (0, None) => Err(PowerError::Transient(format!(
                "BMC {}: Get Chassis Status answered without data",
                self.host
            ))),
            (cc, _) => Err(PowerError::Transient(format!(
                "BMC {}: Get Chassis Status answered completion code {cc:#04x}",
                self.host
            ))),
        }
    }

    async fn control(&self, s: &mut Session, action: u8) -> Result<(), PowerError> {
        let what = match action {
            POWER_UP => "power up",
            POWER_DOWN => "power down",
            _ => "soft shutdown",
        };
        let r = s
            .command(NETFN_CHASSIS, CMD_CHASSIS_CONTROL, &[action])
            .await
            .map_err(|e| self.lan_error(e))?;
        match r.completion {
            0 => Ok(()),
            0xd4 => Err(PowerError::Config(format!(
                "BMC {}: Chassis Control ({what}) needs a higher privilege (completion code \
                 0xd4); set {}.privilege to OPERATOR or ADMINISTRATOR and give the user that \
                 privilege",
                self.host, self.field
            ))),
            0xcc | 0xc1 if action == SOFT_SHUTDOWN => Err(PowerError::Config(format!(
                "BMC {}: Chassis Control does not offer soft shutdown (completion code {:#04x}); \
                 set {}.forceOffAfter: 0s to power down hard",
                self.host, r.completion, self.field
            ))),
            0xc0 | 0xc3 | 0xff => Err(PowerError::Transient(format!(
                "BMC {}: Chassis Control ({what}) answered completion code {:#04x} (busy or \
                 timed out)",
                self.host, r.completion
            ))),
            cc => Err(PowerError::Config(format!(
                "BMC {}: Chassis Control ({what}) answered completion code {cc:#04x}",
                self.host
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_reading_is_watts_only_while_the_measurement_is_active() {
        let mut data = vec![0u8; 18];
        data[0] = DCMI_GROUP;
        data[1..3].copy_from_slice(&187u16.to_le_bytes());
        data[17] = 0x40;
        assert_eq!(power_reading(0, &data), Some(187.0));
        data[17] = 0;
        assert_eq!(power_reading(0, &data), None);
        // No DCMI (invalid command), or a short answer: no meter.
        assert_eq!(power_reading(0xc1, &[]), None);
        assert_eq!(power_reading(0, &[DCMI_GROUP, 1, 0]), None);
    }

    #[test]
    fn kg_is_text_or_0x_hex_of_at_most_20_bytes() {
        assert_eq!(kg_bytes("0x0102ff"), Some(vec![1, 2, 0xff]));
        assert_eq!(kg_bytes("abc"), Some(b"abc".to_vec()));
        assert_eq!(kg_bytes("0x012"), None);
        assert_eq!(kg_bytes("0xzz"), None);
        assert_eq!(kg_bytes(&"a".repeat(21)), None);
    }
}
