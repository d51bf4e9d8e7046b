//! How a machine is powered on and off: the predecessor's pod specs and the new `power` drivers.
use std::collections::BTreeMap;

use jiff::SignedDuration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cel::*;

/// The predecessor's `MinimalPodSpec`: a container run as a Job to power a machine on or off.
/// Also the `job` driver of `power.powerOn` / `power.powerOff`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MinimalPodSpec {
    /// Container image of the power Job.
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Secrets or ConfigMaps mounted read-only into the container. A Secret is mounted only if
    /// the operator may read it itself (the Helm chart's `credentialSecrets`); otherwise the
    /// Job is not created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMountSpec>,
    /// ServiceAccount the Job's pod runs as, with its token mounted: one the operator allows
    /// (`--job-service-account`, the chart's `security.jobServiceAccounts`), never the
    /// operator's own. Default: the operator's `--pod-service-account` (else the namespace's
    /// `default`), without a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Run the container privileged. Refused unless the operator runs with
    /// `--allow-privileged-jobs`. Without it the pod gets the restricted Pod Security profile
    /// (non-root, no privilege escalation, no capabilities, the runtime's seccomp profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    /// Run the pod in the host's network namespace (e.g. to reach a device only the host's LAN
    /// sees). Refused unless the operator runs with `--allow-privileged-jobs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_network: Option<bool>,
    /// Seconds a finished Job is kept (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

/// Default lifetime of a finished power Job, as in the predecessor.
pub const DEFAULT_JOB_TTL_SECONDS: i32 = 600;

impl MinimalPodSpec {
    pub fn ttl_seconds_after_finished(&self) -> i32 {
        self.ttl_seconds_after_finished
            .unwrap_or(DEFAULT_JOB_TTL_SECONDS)
    }

    /// Each volume names exactly one of `secretName` / `configMapName` (the schema's rule).
    pub fn validate_volumes(&self, field: &str) -> Result<(), super::FieldError> {
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        match self
            .volumes
            .iter()
            .position(|v| set(&v.secret_name) == set(&v.config_map_name))
        {
            None => Ok(()),
            Some(i) => Err(super::FieldError::Invalid {
                field: format!("{field}.volumes[{i}]"),
                problem: ONE_VOLUME_SOURCE_MESSAGE.to_owned(),
            }),
        }
    }
}

/// A Secret or ConfigMap mounted read-only into a power Job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": ONE_VOLUME_SOURCE_RULE, "message": ONE_VOLUME_SOURCE_MESSAGE}
]))]
pub struct VolumeMountSpec {
    pub name: String,
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
}

/// `spec.power`: how to power the machine on and off. Each direction takes exactly one driver.
/// A direction left out here falls back to `startupPodSpec` / `shutdownPodSpec`.
///
/// The directions were first named `on` and `off`, which YAML 1.1 (kubectl's) reads as the
/// booleans true and false when unquoted. They are `powerOn` and `powerOff` now; the quoted
/// `"on"` / `"off"` keys are still read (the legacy fields below), and every reader goes
/// through [`PowerSpec::on`] / [`PowerSpec::off`]. The operator never writes `spec.power`: its
/// writes to a Node CR are merge patches of metadata, `spec.powerState` and status
/// (src/operator/controller/machine/writes.rs, src/operator/provider/cluster.rs), so a CR
/// written with the old keys keeps them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": POWER_ON_NOT_LEGACY_RULE, "message": POWER_ON_NOT_LEGACY_MESSAGE},
    {"rule": POWER_OFF_NOT_LEGACY_RULE, "message": POWER_OFF_NOT_LEGACY_MESSAGE}
]))]
pub struct PowerSpec {
    /// How to power the machine on: exactly one driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_on: Option<PowerOn>,
    /// How to power the machine off: exactly one driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_off: Option<PowerOff>,
    /// Deprecated: use powerOn (the same driver under a name YAML cannot misread). Still read
    /// when quoted as "on"; an unquoted on: is the boolean true in YAML 1.1.
    #[serde(rename = "on", default, skip_serializing_if = "Option::is_none")]
    pub legacy_on: Option<PowerOn>,
    /// Deprecated: use powerOff (the same driver under a name YAML cannot misread). Still read
    /// when quoted as "off"; an unquoted off: is the boolean false in YAML 1.1.
    #[serde(rename = "off", default, skip_serializing_if = "Option::is_none")]
    pub legacy_off: Option<PowerOff>,
}

impl PowerSpec {
    /// The power-on driver: `powerOn`, else the deprecated `"on"`.
    pub fn on(&self) -> Option<&PowerOn> {
        self.power_on.as_ref().or(self.legacy_on.as_ref())
    }

    /// The power-off driver: `powerOff`, else the deprecated `"off"`.
    pub fn off(&self) -> Option<&PowerOff> {
        self.power_off.as_ref().or(self.legacy_off.as_ref())
    }

    /// The key `direction`'s driver is read from: the deprecated `on` / `off` when only it is
    /// set, else `powerOn` / `powerOff`. Messages name the field the way the CR writes it.
    pub fn key(&self, direction: Direction) -> &'static str {
        match direction {
            Direction::On if self.power_on.is_none() && self.legacy_on.is_some() => "on",
            Direction::Off if self.power_off.is_none() && self.legacy_off.is_some() => "off",
            d => d.power_key(),
        }
    }

    /// The deprecated keys this spec uses, with the key that replaces each.
    pub fn deprecated_keys(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self.legacy_on.is_some() {
            out.push(("spec.power.on", "spec.power.powerOn"));
        }
        if self.legacy_off.is_some() {
            out.push(("spec.power.off", "spec.power.powerOff"));
        }
        out
    }
}

/// Power-on driver: exactly one of `job`, `wakeOnLan`, `redfish`, `http`, `ipmi`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": ONE_ON_DRIVER_RULE, "message": ONE_ON_DRIVER_MESSAGE}
]))]
// Drivers are boxed: a machine uses one per direction, and every cached Node CR would otherwise
// carry the inline size of all of them (over 1 KiB; see the heap profiles in BENCHMARKS.md).
pub struct PowerOn {
    /// Run this container as a Job (e.g. a script that talks to a smart plug).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<MinimalPodSpec>>,
    /// Send a Wake-on-LAN magic packet (from a Job on the host network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_on_lan: Option<Box<WakeOnLan>>,
    /// Ask the machine's BMC (Redfish `ComputerSystem.Reset`, `On`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redfish: Option<Box<Redfish>>,
    /// Call an HTTP endpoint (e.g. a smart plug or Home Assistant webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Box<HttpAction>>,
    /// Ask the machine's BMC over IPMI 2.0 LAN (Chassis Control, power up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipmi: Option<Box<Ipmi>>,
}

/// Power-off driver: exactly one of `job`, `nodeAgent`, `redfish`, `http`, `ipmi`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": ONE_OFF_DRIVER_RULE, "message": ONE_OFF_DRIVER_MESSAGE}
]))]
pub struct PowerOff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<MinimalPodSpec>>,
    /// Shut the OS down from a privileged Job pinned to the node itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_agent: Option<Box<NodeAgent>>,
    /// Ask the machine's BMC (Redfish `ComputerSystem.Reset`, `GracefulShutdown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redfish: Option<Box<Redfish>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Box<HttpAction>>,
    /// Ask the machine's BMC over IPMI 2.0 LAN (Chassis Control soft-shutdown, then power
    /// down after `forceOffAfter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipmi: Option<Box<Ipmi>>,
}

/// Default Wake-on-LAN broadcast address and UDP port.
pub const DEFAULT_WOL_BROADCAST: &str = "255.255.255.255";
pub const DEFAULT_WOL_PORT: u16 = 9;

/// Wake-on-LAN settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WakeOnLan {
    /// MAC address of the network card, e.g. `aa:bb:cc:dd:ee:ff`.
    #[schemars(length(max = 17), extend("x-kubernetes-validations" = [
        {"rule": MAC_RULE, "message": MAC_MESSAGE}
    ]))]
    pub mac: String,
    /// IPv4 broadcast address of the machine's LAN (default 255.255.255.255).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 15), extend("x-kubernetes-validations" = [
        {"rule": IPV4_RULE, "message": IPV4_MESSAGE}
    ]))]
    pub broadcast: Option<String>,
    /// UDP port (default 9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Name of a Secret (same namespace) whose key `password` holds the card's SecureOn
    /// password: 4 or 6 hex octets, e.g. `01:02:03:04:05:06`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_on_secret: Option<String>,
    /// Send the packet from a short-lived Job on the host network of another Ready node of the
    /// same LAN (never the target), for an operator whose pod cannot reach the LAN broadcast
    /// domain. Without it the operator sends the packet itself (it then needs hostNetwork).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<WakeOnLanRelay>,
}

/// Where and how a Wake-on-LAN relay Job runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WakeOnLanRelay {
    /// Labels of the nodes that share the target's LAN (empty: any Ready node but the target).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Image with `python3` that sends the packet (default: [`DEFAULT_WOL_RELAY_IMAGE`]). It
    /// runs on the host's network, so it must be one the operator allows (`--allowed-image`,
    /// the chart's `security.allowedImages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

pub const DEFAULT_WOL_RELAY_IMAGE: &str = "python:3.13-alpine";

impl WakeOnLanRelay {
    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_WOL_RELAY_IMAGE)
    }
}

impl WakeOnLan {
    /// The checks of the schema's rules, for objects read from files.
    pub fn validate(&self, field: &str) -> Vec<super::FieldError> {
        let mut errors = Vec::new();
        errors.extend(super::parse_mac(&format!("{field}.mac"), &self.mac).err());
        if let Some(b) = self.broadcast.as_deref()
            && b.parse::<std::net::Ipv4Addr>().is_err()
        {
            errors.push(super::FieldError::Invalid {
                field: format!("{field}.broadcast"),
                problem: format!("{b:?} {IPV4_MESSAGE}"),
            });
        }
        errors
    }

    pub fn broadcast(&self) -> &str {
        self.broadcast.as_deref().unwrap_or(DEFAULT_WOL_BROADCAST)
    }

    /// The UDP port; an out-of-range value (only possible without the schema) gives the default.
    pub fn port(&self) -> u16 {
        self.port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .unwrap_or(DEFAULT_WOL_PORT)
    }
}

/// A Redfish BMC. The credentials Secret (same namespace) holds the keys `username` and
/// `password`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": TLS_CHOICE_RULE, "message": TLS_CHOICE_MESSAGE},
    {"rule": REDFISH_HTTPS_RULE, "message": REDFISH_HTTPS_MESSAGE}
]))]
pub struct Redfish {
    /// Base URL of the BMC, e.g. `https://10.0.0.20`.
    #[schemars(length(max = 2048), extend("x-kubernetes-validations" = [
        {"rule": URL_RULE, "message": URL_MESSAGE}
    ]))]
    pub endpoint: String,
    /// Redfish system id (default: the only member of `/redfish/v1/Systems`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_id: Option<String>,
    /// Name of a Secret with keys `username` and `password`.
    pub credentials_secret: String,
    /// Accept the BMC's self-signed certificate (common on homelab BMCs). The credentials
    /// then go to whoever answers at the address: the Node CR gets an `InsecureTransport`
    /// condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Allow an `http://` endpoint: the credentials cross the network in clear text. Without
    /// it only `https://` is used. The Node CR gets an `InsecureTransport` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure: Option<bool>,
    /// PEM certificates of the CA that signed the BMC's certificate (trusted in addition to the
    /// system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
    /// Power-off: how long after `GracefulShutdown` the BMC may still report `PowerState: On`
    /// before `ForceOff` is sent (default 2m; `0s` sends `ForceOff` at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": DURATION_RULE, "message": DURATION_MESSAGE}
    ]))]
    pub force_off_after: Option<String>,
    /// Timeout of each request to the BMC (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": POSITIVE_DURATION_RULE, "message": POSITIVE_DURATION_MESSAGE}
    ]))]
    pub timeout: Option<String>,
}

/// Defaults of the network drivers.
pub const DEFAULT_FORCE_OFF_AFTER: SignedDuration = SignedDuration::from_secs(120);
pub const DEFAULT_REQUEST_TIMEOUT: SignedDuration = SignedDuration::from_secs(10);

impl Redfish {
    /// `forceOffAfter`; `field` is the path of this driver in the Node (for errors).
    pub fn force_off_after(&self, field: &str) -> Result<SignedDuration, super::FieldError> {
        match self.force_off_after.as_deref() {
            None => Ok(DEFAULT_FORCE_OFF_AFTER),
            Some(v) => super::parse_duration(&format!("{field}.forceOffAfter"), v),
        }
    }

    pub fn timeout(&self, field: &str) -> Result<SignedDuration, super::FieldError> {
        request_timeout(&format!("{field}.timeout"), self.timeout.as_deref())
    }

    pub fn tls(&self) -> TlsSettings<'_> {
        TlsSettings {
            ca_bundle: self.ca_bundle.as_deref(),
            insecure_skip_verify: self.insecure_skip_verify.unwrap_or(false),
        }
    }

    /// The checks of the schema's rules, for objects read from files.
    pub fn validate(&self, field: &str) -> Vec<super::FieldError> {
        let mut errors = Vec::new();
        errors.extend(check_url(&format!("{field}.endpoint"), &self.endpoint).err());
        errors.extend(self.force_off_after(field).err());
        errors.extend(self.timeout(field).err());
        errors.extend(self.tls().validate(field).err());
        errors.extend(self.check_https(field).err());
        errors
    }

    /// The schema's rule that the credentials go over TLS: the endpoint is `https://` unless
    /// `allowInsecure: true`. Also checked by the driver before it reads the Secret, for objects
    /// stored before the rule (the API server's ratcheting keeps them updatable).
    pub fn check_https(&self, field: &str) -> Result<(), super::FieldError> {
        if is_https(&self.endpoint) || self.allow_insecure == Some(true) {
            return Ok(());
        }
        Err(super::FieldError::Invalid {
            field: format!("{field}.endpoint"),
            problem: format!(
                "{:?} is not https://: the BMC's username and password would cross the network \
                 in clear text; use https:// (with {field}.caBundle for a self-signed \
                 certificate), or set {field}.allowInsecure: true to send them anyway",
                self.endpoint
            ),
        })
    }

    /// Whether the credentials are sent in clear text (an `http://` endpoint allowed by
    /// `allowInsecure`).
    pub fn plaintext_credentials(&self) -> bool {
        !is_https(&self.endpoint) && self.allow_insecure == Some(true)
    }
}

/// Default IPMI LAN (RMCP+) UDP port and cipher suite.
pub const DEFAULT_IPMI_PORT: u16 = 623;
pub const DEFAULT_IPMI_CIPHER_SUITE: u8 = 17;
/// Key of the credentials Secret holding the BMC's Kg key (optional).
pub const SECRET_KEY_KG: &str = "kg";

/// Privilege level of an IPMI session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum IpmiPrivilege {
    #[serde(rename = "USER")]
    User,
    /// Enough for Chassis Control (the default).
    #[default]
    #[serde(rename = "OPERATOR")]
    Operator,
    #[serde(rename = "ADMINISTRATOR")]
    Administrator,
}

/// A BMC that speaks IPMI 2.0 over LAN (RMCP+), e.g. older Supermicro, Dell iDRAC and HP iLO
/// boards. The credentials Secret (same namespace) holds the keys `username` and `password`,
/// and `kg` when the BMC has a Kg (BMC) key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": IPMI_CIPHER_SUITE_RULE, "message": IPMI_CIPHER_SUITE_MESSAGE}
]))]
pub struct Ipmi {
    /// Address or host name of the BMC, e.g. `10.0.0.21`.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// UDP port (default 623).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Name of a Secret with keys `username` and `password` (and `kg` for a BMC with a Kg
    /// key).
    pub credentials_secret: String,
    /// Privilege level of the session: USER, OPERATOR (default; enough to switch power) or
    /// ADMINISTRATOR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privilege: Option<IpmiPrivilege>,
    /// RMCP+ cipher suite: 17 (default: RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128), 3
    /// (the same with SHA1, for older boards) or 0 (no authentication, integrity or encryption:
    /// anyone on the LAN can switch the machine; only with `allowInsecure: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 17))]
    pub cipher_suite: Option<i32>,
    /// Allow cipher suite 0. The Node CR gets an `InsecureTransport` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure: Option<bool>,
    /// Power-off: how long after the soft shutdown (ACPI) the chassis may still read on before
    /// it is powered down hard (default 2m; `0s` powers down at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": DURATION_RULE, "message": DURATION_MESSAGE}
    ]))]
    pub force_off_after: Option<String>,
    /// How long one exchange with the BMC (a request and its answer, resent while lost) may
    /// take (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": POSITIVE_DURATION_RULE, "message": POSITIVE_DURATION_MESSAGE}
    ]))]
    pub timeout: Option<String>,
}

impl Ipmi {
    pub fn port(&self) -> u16 {
        self.port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .unwrap_or(DEFAULT_IPMI_PORT)
    }

    pub fn privilege(&self) -> IpmiPrivilege {
        self.privilege.unwrap_or_default()
    }

    /// The cipher suite, checked: 0, 3 or 17, and 0 only with `allowInsecure: true` (the
    /// schema's rule; also checked by the driver before it reads the Secret, for objects
    /// stored before the rule).
    pub fn cipher_suite(&self, field: &str) -> Result<u8, super::FieldError> {
        let suite = self
            .cipher_suite
            .unwrap_or(i32::from(DEFAULT_IPMI_CIPHER_SUITE));
        match suite {
            3 | 17 => Ok(suite as u8),
            0 if self.allow_insecure == Some(true) => Ok(0),
            0 => Err(super::FieldError::Invalid {
                field: format!("{field}.cipherSuite"),
                problem: "is 0: the session has no authentication, integrity or encryption, so                           anyone on the LAN can switch the machine; use 17 or 3, or set                           allowInsecure: true to use it anyway"
                    .to_owned(),
            }),
            other => Err(super::FieldError::Invalid {
                field: format!("{field}.cipherSuite"),
                problem: format!("is {other}; use 17 or 3 (or 0 with allowInsecure: true)"),
            }),
        }
    }

    /// The `ipmi://host:port` form of the BMC's address, matched against the credentials
    /// Secret's endpoints annotation.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("ipmi://[{}]:{}", self.host, self.port())
        } else {
            format!("ipmi://{}:{}", self.host, self.port())
        }
    }

    pub fn force_off_after(&self, field: &str) -> Result<SignedDuration, super::FieldError> {
        match self.force_off_after.as_deref() {
            None => Ok(DEFAULT_FORCE_OFF_AFTER),
            Some(v) => super::parse_duration(&format!("{field}.forceOffAfter"), v),
        }
    }

    pub fn timeout(&self, field: &str) -> Result<SignedDuration, super::FieldError> {
        request_timeout(&format!("{field}.timeout"), self.timeout.as_deref())
    }

    /// Whether the session is unprotected (cipher suite 0, allowed by `allowInsecure`).
    pub fn unprotected(&self) -> bool {
        self.cipher_suite == Some(0) && self.allow_insecure == Some(true)
    }

    /// The checks of the schema's rules, for objects read from files.
    pub fn validate(&self, field: &str) -> Vec<super::FieldError> {
        let mut errors = Vec::new();
        if self.host.is_empty() {
            errors.push(super::FieldError::Invalid {
                field: format!("{field}.host"),
                problem: "must name the BMC".to_owned(),
            });
        }
        errors.extend(self.cipher_suite(field).err());
        errors.extend(self.force_off_after(field).err());
        errors.extend(self.timeout(field).err());
        errors
    }
}

/// Whether `url` uses TLS (the schema's rules compare the same lowercase prefix).
fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

/// TLS settings shared by the Redfish and HTTP drivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsSettings<'a> {
    pub ca_bundle: Option<&'a str>,
    pub insecure_skip_verify: bool,
}

impl TlsSettings<'_> {
    fn validate(&self, field: &str) -> Result<(), super::FieldError> {
        if self.ca_bundle.is_some() && self.insecure_skip_verify {
            return Err(super::FieldError::Invalid {
                field: field.to_owned(),
                problem: TLS_CHOICE_MESSAGE.to_owned(),
            });
        }
        Ok(())
    }
}

fn check_url(field: &str, u: &str) -> Result<(), super::FieldError> {
    if u.starts_with("http://") || u.starts_with("https://") {
        Ok(())
    } else {
        Err(super::FieldError::Invalid {
            field: field.to_owned(),
            problem: format!("{u:?} {URL_MESSAGE}"),
        })
    }
}

fn request_timeout(field: &str, value: Option<&str>) -> Result<SignedDuration, super::FieldError> {
    let Some(v) = value else {
        return Ok(DEFAULT_REQUEST_TIMEOUT);
    };
    let d = super::parse_duration(field, v)?;
    if d.is_zero() {
        return Err(super::FieldError::Invalid {
            field: field.to_owned(),
            problem: "must be longer than 0s; leave it out for the default".to_owned(),
        });
    }
    Ok(d)
}

/// Keys read from a Redfish credentials Secret or an HTTP driver's Secret.
pub const SECRET_KEY_USERNAME: &str = "username";
pub const SECRET_KEY_PASSWORD: &str = "password";
pub const SECRET_KEY_TOKEN: &str = "token";

/// HTTP method of an [`HttpAction`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    #[default]
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

/// An HTTP call that powers the machine on or off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": TLS_CHOICE_RULE, "message": TLS_CHOICE_MESSAGE},
    {"rule": HTTP_HTTPS_RULE, "message": HTTP_HTTPS_MESSAGE}
]))]
pub struct HttpAction {
    #[schemars(length(max = 2048), extend("x-kubernetes-validations" = [
        {"rule": URL_RULE, "message": URL_MESSAGE}
    ]))]
    pub url: String,
    /// Default POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Name of a Secret (same namespace): key `token` is sent as a bearer token, or keys
    /// `username` and `password` as basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Status codes that mean the action was accepted (default: any 2xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(range(min = 100, max = 599)))]
    pub expected_status: Vec<i32>,
    /// Timeout of each request (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": POSITIVE_DURATION_RULE, "message": POSITIVE_DURATION_MESSAGE}
    ]))]
    pub timeout: Option<String>,
    /// Accept a self-signed certificate. The Node CR gets an `InsecureTransport` condition
    /// when a `secret` is sent this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Allow an `http://` URL while a `secret` is set: the credentials cross the network in
    /// clear text. The Node CR gets an `InsecureTransport` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_insecure: Option<bool>,
    /// PEM certificates of the CA that signed the server's certificate (trusted in addition to
    /// the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
    /// Power readback: a URL whose JSON answer tells whether the action took effect. Without
    /// it, the action's accepted status is taken as done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<HttpStatusCheck>,
}

/// A GET whose JSON answer holds the power state: `field` (JSONPath, e.g. `$.output`) reads
/// `value` once the action has taken effect; anything else reads as the opposite state. Sent
/// with the action's headers, credentials and TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpStatusCheck {
    #[schemars(length(max = 2048), extend("x-kubernetes-validations" = [
        {"rule": URL_RULE, "message": URL_MESSAGE}
    ]))]
    pub url: String,
    /// JSONPath (RFC 9535) of the field, e.g. `$.output` or `$.state`.
    #[schemars(length(max = 256))]
    pub field: String,
    /// The field's value, as text (`true`, `on`, `1`), once the action has taken effect.
    #[schemars(length(max = 256))]
    pub value: String,
}

impl HttpAction {
    pub fn method(&self) -> HttpMethod {
        self.method.unwrap_or_default()
    }

    pub fn timeout(&self, field: &str) -> Result<SignedDuration, super::FieldError> {
        request_timeout(&format!("{field}.timeout"), self.timeout.as_deref())
    }

    pub fn tls(&self) -> TlsSettings<'_> {
        TlsSettings {
            ca_bundle: self.ca_bundle.as_deref(),
            insecure_skip_verify: self.insecure_skip_verify.unwrap_or(false),
        }
    }

    /// The URLs the `secret`'s credentials are sent to: `url` and `status.url` (with their
    /// fields' names).
    fn credential_urls(&self) -> Vec<(&'static str, &str)> {
        let mut urls = vec![("url", self.url.as_str())];
        if let Some(s) = &self.status {
            urls.push(("status.url", s.url.as_str()));
        }
        urls
    }

    /// The schema's rule that a `secret` goes over TLS: `url` and `status.url` are `https://`
    /// unless there is no `secret` or `allowInsecure: true`. Also checked by the driver before
    /// it reads the Secret, for objects stored before the rule.
    pub fn check_https(&self, field: &str) -> Result<(), super::FieldError> {
        if self.secret.is_none() || self.allow_insecure == Some(true) {
            return Ok(());
        }
        match self
            .credential_urls()
            .into_iter()
            .find(|(_, u)| !is_https(u))
        {
            None => Ok(()),
            Some((name, url)) => Err(super::FieldError::Invalid {
                field: format!("{field}.{name}"),
                problem: format!(
                    "{url:?} is not https://: the credentials of {field}.secret would cross the \
                     network in clear text; use https:// (with {field}.caBundle for a \
                     self-signed certificate), or set {field}.allowInsecure: true to send them \
                     anyway"
                ),
            }),
        }
    }

    /// The fields whose `http://` URL gets the `secret`'s credentials in clear text (allowed by
    /// `allowInsecure`).
    pub fn plaintext_credentials(&self) -> Vec<&'static str> {
        if self.secret.is_none() || self.allow_insecure != Some(true) {
            return Vec::new();
        }
        self.credential_urls()
            .into_iter()
            .filter(|(_, u)| !is_https(u))
            .map(|(name, _)| name)
            .collect()
    }

    /// Whether `code` means the action was accepted.
    pub fn accepts(&self, code: u16) -> bool {
        if self.expected_status.is_empty() {
            (200..300).contains(&code)
        } else {
            self.expected_status.iter().any(|c| *c == i32::from(code))
        }
    }

    /// The checks of the schema's rules, for objects read from files.
    pub fn validate(&self, field: &str) -> Vec<super::FieldError> {
        let mut errors = Vec::new();
        errors.extend(check_url(&format!("{field}.url"), &self.url).err());
        errors.extend(self.timeout(field).err());
        errors.extend(self.tls().validate(field).err());
        errors.extend(self.check_https(field).err());
        if let Some(i) = self
            .expected_status
            .iter()
            .position(|c| !(100..=599).contains(c))
        {
            errors.push(super::FieldError::Invalid {
                field: format!("{field}.expectedStatus[{i}]"),
                problem: "must be an HTTP status code between 100 and 599".to_owned(),
            });
        }
        if let Some(s) = &self.status {
            errors.extend(check_url(&format!("{field}.status.url"), &s.url).err());
            if let Err(e) = jsonpath_rust::JsonPath::query(&serde_json::Value::Null, &s.field) {
                errors.push(super::FieldError::Invalid {
                    field: format!("{field}.status.field"),
                    problem: format!(
                        "{:?} is not a JSONPath ({e}); write it like $.output",
                        s.field
                    ),
                });
            }
        }
        errors
    }
}

/// Power off by running the OS shutdown from a privileged Job on the node itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeAgent {
    /// Image of the agent Job (default: [`DEFAULT_NODE_AGENT_IMAGE`]). It runs privileged in
    /// the host's PID namespace, so it must be one the operator allows (`--allowed-image`, the
    /// chart's `security.allowedImages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Command run as root on the host through `nsenter` (default `systemctl poweroff`): one
    /// the operator allows, word for word (`--node-agent-command`, the chart's
    /// `security.nodeAgentCommands`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

pub const DEFAULT_NODE_AGENT_IMAGE: &str = "busybox:1.37";
pub const DEFAULT_NODE_AGENT_COMMAND: [&str; 2] = ["systemctl", "poweroff"];

impl NodeAgent {
    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_NODE_AGENT_IMAGE)
    }

    pub fn command(&self) -> Vec<String> {
        if self.command.is_empty() {
            DEFAULT_NODE_AGENT_COMMAND
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            self.command.clone()
        }
    }
}

/// Which way a driver is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    On,
    Off,
}

impl Direction {
    /// The key of `spec.power` that holds this direction's driver.
    pub fn power_key(self) -> &'static str {
        match self {
            Direction::On => "powerOn",
            Direction::Off => "powerOff",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::On => "on",
            Direction::Off => "off",
        })
    }
}

/// The one driver resolved for a direction (see `MachineSpec::power_driver`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PowerDriver<'a> {
    /// `power.<dir>.job`, or the predecessor's `startupPodSpec` / `shutdownPodSpec`.
    Job(&'a MinimalPodSpec),
    WakeOnLan(&'a WakeOnLan),
    Redfish(&'a Redfish),
    Http(&'a HttpAction),
    NodeAgent(&'a NodeAgent),
    Ipmi(&'a Ipmi),
}

impl PowerDriver<'_> {
    /// Short name for logs, Events and `fsm inspect`.
    pub fn kind(&self) -> &'static str {
        match self {
            PowerDriver::Job(_) => "job",
            PowerDriver::WakeOnLan(_) => "wakeOnLan",
            PowerDriver::Redfish(_) => "redfish",
            PowerDriver::Http(_) => "http",
            PowerDriver::NodeAgent(_) => "nodeAgent",
            PowerDriver::Ipmi(_) => "ipmi",
        }
    }
}

impl PowerOn {
    /// All drivers set, in schema order (the schema allows exactly one).
    pub fn drivers(&self) -> Vec<PowerDriver<'_>> {
        let mut out = Vec::new();
        if let Some(j) = &self.job {
            out.push(PowerDriver::Job(j));
        }
        if let Some(w) = &self.wake_on_lan {
            out.push(PowerDriver::WakeOnLan(w));
        }
        if let Some(r) = &self.redfish {
            out.push(PowerDriver::Redfish(r));
        }
        if let Some(h) = &self.http {
            out.push(PowerDriver::Http(h));
        }
        if let Some(i) = &self.ipmi {
            out.push(PowerDriver::Ipmi(i));
        }
        out
    }
}

impl PowerOff {
    pub fn drivers(&self) -> Vec<PowerDriver<'_>> {
        let mut out = Vec::new();
        if let Some(j) = &self.job {
            out.push(PowerDriver::Job(j));
        }
        if let Some(n) = &self.node_agent {
            out.push(PowerDriver::NodeAgent(n));
        }
        if let Some(r) = &self.redfish {
            out.push(PowerDriver::Redfish(r));
        }
        if let Some(h) = &self.http {
            out.push(PowerDriver::Http(h));
        }
        if let Some(i) = &self.ipmi {
            out.push(PowerDriver::Ipmi(i));
        }
        out
    }
}

/// Node condition: a network driver sends credentials without the protection TLS gives (an
/// `http://` URL allowed by `allowInsecure`, or a certificate not verified because of
/// `insecureSkipVerify`). Abnormal-true: it warns, the operator still acts.
pub const CONDITION_INSECURE_TRANSPORT: &str = "InsecureTransport";
/// Reasons of [`CONDITION_INSECURE_TRANSPORT`].
pub const REASON_PLAINTEXT_CREDENTIALS: &str = "PlaintextCredentials";
pub const REASON_CERTIFICATE_NOT_VERIFIED: &str = "CertificateNotVerified";

/// Why the credentials of a Node's drivers are exposed: [`REASON_PLAINTEXT_CREDENTIALS`] when
/// any goes in clear text, else [`REASON_CERTIFICATE_NOT_VERIFIED`]; the message names every
/// field concerned and its fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsecureTransport {
    pub reason: &'static str,
    pub message: String,
}

impl PowerSpec {
    /// The [`CONDITION_INSECURE_TRANSPORT`] finding for these drivers, `None` when every
    /// credential goes over verified TLS (or none is sent). An HTTP driver without `secret`
    /// sends no credentials, so its `http://` or unverified URL is not reported.
    pub fn insecure_transport(&self) -> Option<InsecureTransport> {
        let mut plaintext = Vec::new();
        let mut unverified = Vec::new();
        let on = self.on().map(|d| d.drivers()).unwrap_or_default();
        let off = self.off().map(|d| d.drivers()).unwrap_or_default();
        let drivers = on
            .into_iter()
            .map(|d| (Direction::On, d))
            .chain(off.into_iter().map(|d| (Direction::Off, d)));
        for (direction, driver) in drivers {
            let field = format!("spec.power.{}.{}", self.key(direction), driver.kind());
            match driver {
                PowerDriver::Redfish(r) if r.plaintext_credentials() => plaintext.push(format!(
                    "{field}.endpoint is {} (allowInsecure: true): the BMC's username and \
                     password cross the network in clear text; use an https:// endpoint",
                    r.endpoint
                )),
                PowerDriver::Redfish(r) if r.tls().insecure_skip_verify => {
                    unverified.push(format!(
                        "{field}.insecureSkipVerify: true sends the BMC's username and password \
                         to whoever answers at {}; give the CA of its certificate in \
                         {field}.caBundle instead",
                        r.endpoint
                    ))
                }
                PowerDriver::Ipmi(i) if i.unprotected() => plaintext.push(format!(
                    "{field}.cipherSuite is 0 (allowInsecure: true): the IPMI session to {} has \
                     no authentication, integrity or encryption, so anyone on the LAN can \
                     switch the machine; use cipher suite 17 or 3",
                    i.host
                )),
                PowerDriver::Http(h) => {
                    let clear = h.plaintext_credentials();
                    if !clear.is_empty() {
                        plaintext.push(format!(
                            "{} {} http:// (allowInsecure: true): the credentials of \
                             {field}.secret cross the network in clear text; use https:// URLs",
                            clear
                                .iter()
                                .map(|f| format!("{field}.{f}"))
                                .collect::<Vec<_>>()
                                .join(" and "),
                            if clear.len() == 1 { "is" } else { "are" }
                        ));
                    }
                    let sent_over_tls = h.credential_urls().iter().any(|(_, u)| is_https(u));
                    if h.secret.is_some() && h.tls().insecure_skip_verify && sent_over_tls {
                        unverified.push(format!(
                            "{field}.insecureSkipVerify: true sends the credentials of \
                             {field}.secret to whoever answers at {}; give the CA of its \
                             certificate in {field}.caBundle instead",
                            h.url
                        ));
                    }
                }
                _ => {}
            }
        }
        let reason = if !plaintext.is_empty() {
            REASON_PLAINTEXT_CREDENTIALS
        } else if !unverified.is_empty() {
            REASON_CERTIFICATE_NOT_VERIFIED
        } else {
            return None;
        };
        plaintext.extend(unverified);
        Some(InsecureTransport {
            reason,
            message: plaintext.join("; "),
        })
    }
}
