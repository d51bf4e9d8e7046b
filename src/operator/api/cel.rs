//! The CEL rules and patterns embedded in the CRD schema (`x-kubernetes-validations`), in one
//! place so the derive attributes, the tests and `tests/data/cel_cases.yaml` agree.
//!
//! The regexes use RE2 syntax (what the API server's CEL `matches` runs) and avoid backslashes
//! so they read the same in Rust, CEL and YAML. Every string checked by a rule also has a
//! `maxLength`, which keeps the API server's CEL cost estimate inside its budget.

/// A Go duration without sign (what [`parse_duration`](super::parse_duration) accepts).
pub const DURATION_PATTERN: &str = "^(0|(([0-9]+[.]?[0-9]*|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$";
/// A non-negative decimal without sign or exponent.
pub const DECIMAL_PATTERN: &str = "^([0-9]+[.]?[0-9]*|[.][0-9]+)$";
/// Six hex octets separated by `:` or by `-`.
pub const MAC_PATTERN: &str =
    "^([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5})$";
/// A dotted-quad IPv4 address.
pub const IPV4_PATTERN: &str = "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])[.]){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$";

/// Lengths that bound the CEL cost of the string rules.
pub const MAX_DURATION_LEN: u32 = 64;
pub const MAX_DECIMAL_LEN: u32 = 32;

// Field rules (on the field itself; `self` is the string).
pub const DURATION_RULE: &str = "self.matches('^(0|(([0-9]+[.]?[0-9]*|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$') && duration(self) >= duration('0s')";
pub const DURATION_MESSAGE: &str =
    "must be a duration such as 90s, 10m or 1h30m (units ns, us, ms, s, m, h)";
pub const POSITIVE_DURATION_RULE: &str = "self.matches('^(0|(([0-9]+[.]?[0-9]*|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$') && duration(self) > duration('0s')";
pub const POSITIVE_DURATION_MESSAGE: &str =
    "must be a positive duration such as 90s, 10m or 1h30m (units ns, us, ms, s, m, h)";
pub const BOOT_TIMEOUT_RULE: &str = "self == 'auto' || (self.matches('^(0|(([0-9]+[.]?[0-9]*|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$') && duration(self) > duration('0s'))";
pub const BOOT_TIMEOUT_MESSAGE: &str = "must be a positive duration such as 90s, 10m or 1h30m (units ns, us, ms, s, m, h), or auto (learned from the machine's recent boots)";
pub const THRESHOLD_RULE: &str =
    "self.matches('^([0-9]+[.]?[0-9]*|[.][0-9]+)$') && double(self) <= 1.0";
pub const THRESHOLD_MESSAGE: &str = "must be a decimal between 0 and 1 written as a string, e.g. \"0.5\"; a percentage is a fraction here: for 70% write \"0.7\", not \"70\"";
pub const DECIMAL_RULE: &str = "self.matches('^([0-9]+[.]?[0-9]*|[.][0-9]+)$')";
pub const DECIMAL_MESSAGE: &str =
    "must be a non-negative decimal written as a string, e.g. \"0.12\"";
pub const MAC_RULE: &str =
    "self.matches('^([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{2}(-[0-9A-Fa-f]{2}){5})$')";
pub const MAC_MESSAGE: &str =
    "must be a MAC address: six hex octets separated by ':' or '-', e.g. aa:bb:cc:dd:ee:ff";
pub const IPV4_RULE: &str = "self.matches('^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])[.]){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$')";
pub const IPV4_MESSAGE: &str =
    "must be an IPv4 broadcast address such as 192.168.1.255 or 255.255.255.255";
pub const URL_RULE: &str = "self.startsWith('http://') || self.startsWith('https://')";
pub const URL_MESSAGE: &str = "must be an http:// or https:// URL";
/// The prefix of the labels the project reserves for a Node's owner and the operator
/// (`infra.homecluster.dev/adoptable` lets a Node CR adopt a Node).
pub const RESERVED_LABEL_PREFIX: &str = "infra.homecluster.dev/";
/// On `spec.labels` (`self` is the map; `all` ranges over its keys).
pub const NO_RESERVED_LABEL_RULE: &str = "self.all(k, !k.startsWith('infra.homecluster.dev/'))";
pub const NO_RESERVED_LABEL_MESSAGE: &str = "label keys must not start with infra.homecluster.dev/: that prefix is reserved (infra.homecluster.dev/adoptable is set by a Node's owner, not by a Node CR)";

// Object rules (on a struct; `self` is the object).
pub const MIN_LE_MAX_RULE: &str =
    "!has(self.minSize) || !has(self.maxSize) || self.minSize <= self.maxSize";
pub const MIN_LE_MAX_MESSAGE: &str = "minSize must not be greater than maxSize";

pub const ONE_ON_DRIVER_RULE: &str = "[has(self.job), has(self.wakeOnLan), has(self.redfish), has(self.http), has(self.ipmi)].filter(x, x).size() == 1";
pub const ONE_ON_DRIVER_MESSAGE: &str =
    "powerOn must set exactly one driver: job, wakeOnLan, redfish, http or ipmi";
pub const ONE_OFF_DRIVER_RULE: &str = "[has(self.job), has(self.nodeAgent), has(self.redfish), has(self.http), has(self.ipmi)].filter(x, x).size() == 1";
pub const ONE_OFF_DRIVER_MESSAGE: &str =
    "powerOff must set exactly one driver: job, nodeAgent, redfish, http or ipmi";

// On the Node spec. `power.on` / `power.off` are the deprecated names of `powerOn` /
// `powerOff` (quoted "on" / "off" in YAML), so each rule counts both. A bare `on:` / `off:` key
// (`power.true` / `power.false`, see below) counts as a driver here, so its own rule's message
// is the only one the user reads.
pub const ON_NOT_BOTH_RULE: &str = "!(has(self.startupPodSpec) && has(self.power) && (has(self.power.powerOn) || has(self.power.on)))";
pub const ON_NOT_BOTH_MESSAGE: &str =
    "set either power.powerOn or startupPodSpec (the predecessor's job style), not both";
pub const OFF_NOT_BOTH_RULE: &str = "!(has(self.shutdownPodSpec) && has(self.power) && (has(self.power.powerOff) || has(self.power.off)))";
pub const OFF_NOT_BOTH_MESSAGE: &str =
    "set either power.powerOff or shutdownPodSpec (the predecessor's job style), not both";
pub const NEEDS_ON_RULE: &str = "has(self.startupPodSpec) || (has(self.power) && (has(self.power.powerOn) || has(self.power.on) || has(self.power.__true__)))";
pub const NEEDS_ON_MESSAGE: &str = "a Node needs a way to power on: set power.powerOn (job, wakeOnLan, redfish or http) or startupPodSpec";
pub const NEEDS_OFF_RULE: &str = "has(self.shutdownPodSpec) || (has(self.power) && (has(self.power.powerOff) || has(self.power.off) || has(self.power.__false__)))";
pub const NEEDS_OFF_MESSAGE: &str = "a Node needs a way to power off: set power.powerOff (job, nodeAgent, redfish or http) or shutdownPodSpec";

// On `spec.power` and `spec.watts`: a field and its deprecated name are the same setting, so
// only one may be written.
pub const POWER_ON_NOT_LEGACY_RULE: &str = "!(has(self.powerOn) && has(self.on))";
pub const POWER_ON_NOT_LEGACY_MESSAGE: &str =
    "set powerOn or the deprecated \"on\" (its old name), not both: remove \"on\"";
pub const POWER_OFF_NOT_LEGACY_RULE: &str = "!(has(self.powerOff) && has(self.off))";
pub const POWER_OFF_NOT_LEGACY_MESSAGE: &str =
    "set powerOff or the deprecated \"off\" (its old name), not both: remove \"off\"";
pub const STANDBY_NOT_LEGACY_RULE: &str = "!(has(self.standby) && has(self.off))";
pub const STANDBY_NOT_LEGACY_MESSAGE: &str =
    "set standby or the deprecated \"off\" (its old name), not both: remove \"off\"";

// YAML 1.1 (what kubectl reads) turns an unquoted `on:` / `off:` key into the key `true` /
// `false`. `spec.power` and `spec.watts` list those two keys (with the type of what they hold),
// so strict field validation lets them through and these rules refuse them with the fix. The API server
// escapes property names that are CEL keywords as `__true__` / `__false__`.
pub const BARE_ON_KEY_RULE: &str = "!has(self.__true__)";
pub const BARE_ON_KEY_MESSAGE: &str =
    "a bare `on:` key is read by YAML as true; write powerOn: (or quote \"on\")";
pub const BARE_OFF_KEY_RULE: &str = "!has(self.__false__)";
pub const BARE_OFF_KEY_MESSAGE: &str =
    "a bare `off:` key is read by YAML as false; write powerOff: (or quote \"off\")";
pub const BARE_WATTS_OFF_KEY_MESSAGE: &str =
    "a bare `off:` key is read by YAML as false; write standby: (or quote \"off\")";
pub const BARE_WATTS_ON_KEY_MESSAGE: &str =
    "a bare `on:` key is read by YAML as true; watts are written as idle:, busy: and standby:";

pub const ONE_VOLUME_SOURCE_RULE: &str = "(has(self.secretName) && self.secretName != '') != (has(self.configMapName) && self.configMapName != '')";
pub const ONE_VOLUME_SOURCE_MESSAGE: &str =
    "a volume mounts exactly one of secretName or configMapName";

pub const TLS_CHOICE_RULE: &str =
    "!(has(self.caBundle) && has(self.insecureSkipVerify) && self.insecureSkipVerify)";
pub const TLS_CHOICE_MESSAGE: &str = "set either caBundle (verify the server against this CA) or insecureSkipVerify: true (no verification), not both";

// Credentials go over TLS unless the owner opted in to plain HTTP (`self` is the driver object).
// The messages name the field relative to the driver and say both fixes.
pub const REDFISH_HTTPS_RULE: &str =
    "self.endpoint.startsWith('https://') || (has(self.allowInsecure) && self.allowInsecure)";
pub const REDFISH_HTTPS_MESSAGE: &str = "endpoint must be an https:// URL: over http:// the BMC's username and password cross the network in clear text; use https:// (with caBundle for a self-signed certificate), or set allowInsecure: true to send them anyway";
// An IPMI session is protected (cipher suite 3 or 17) unless the owner allowed suite 0.
pub const IPMI_CIPHER_SUITE_RULE: &str = "!has(self.cipherSuite) || self.cipherSuite == 3 || self.cipherSuite == 17 || (self.cipherSuite == 0 && has(self.allowInsecure) && self.allowInsecure)";
pub const IPMI_CIPHER_SUITE_MESSAGE: &str = "cipherSuite must be 17 or 3: cipher suite 0 has no authentication, integrity or encryption, so anyone on the LAN can switch the machine; set allowInsecure: true to use it anyway";
pub const HTTP_HTTPS_RULE: &str = "!has(self.secret) || (has(self.allowInsecure) && self.allowInsecure) || (self.url.startsWith('https://') && (!has(self.status) || self.status.url.startsWith('https://')))";
pub const HTTP_HTTPS_MESSAGE: &str = "url and status.url must be https:// URLs when a secret is sent: over http:// the credentials cross the network in clear text; use https:// (with caBundle for a self-signed certificate), or set allowInsecure: true to send them anyway";

// A meter reads one source (`self` is `spec.meter`).
pub const ONE_METER_SOURCE_RULE: &str =
    "[has(self.redfish), has(self.http), has(self.ipmi)].filter(x, x).size() == 1";
pub const ONE_METER_SOURCE_MESSAGE: &str =
    "a meter reads exactly one source: set one of redfish, http or ipmi";
pub const HTTP_METER_HTTPS_RULE: &str = "!has(self.secret) || (has(self.allowInsecure) && self.allowInsecure) || self.url.startsWith('https://')";
pub const HTTP_METER_HTTPS_MESSAGE: &str = "url must be an https:// URL when a secret is sent: over http:// the credentials cross the network in clear text; use https:// (with caBundle for a self-signed certificate), or set allowInsecure: true to send them anyway";

// Wall-clock times of weekly windows (schedule, quiet hours): `HH:MM`, `24:00` ends a day.
pub const TIME_OF_DAY_PATTERN: &str = "^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$";
pub const TIME_OF_DAY_RULE: &str = "self.matches('^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$')";
pub const TIME_OF_DAY_MESSAGE: &str = crate::operator::calendar::TIME_OF_DAY_MESSAGE;
// A window (`self`) covers some time: `from == to` would be empty.
pub const WINDOW_NOT_EMPTY_RULE: &str = "self.from != self.to";
pub const WINDOW_NOT_EMPTY_MESSAGE: &str = crate::operator::calendar::WINDOW_NOT_EMPTY_MESSAGE;

// Root rule of the Group CRD (`self` is the whole object; CEL sees only name/generateName of
// its metadata).
pub const GROUP_NAME_RULE: &str = "self.metadata.name.size() <= 63";
pub const GROUP_NAME_MESSAGE: &str = "a Group's name is the value of the `group` label on its Nodes, so it must be at most 63 characters";

/// Every rule with its message, for tests and docs.
pub const ALL_RULES: &[(&str, &str)] = &[
    (DURATION_RULE, DURATION_MESSAGE),
    (POSITIVE_DURATION_RULE, POSITIVE_DURATION_MESSAGE),
    (BOOT_TIMEOUT_RULE, BOOT_TIMEOUT_MESSAGE),
    (THRESHOLD_RULE, THRESHOLD_MESSAGE),
    (DECIMAL_RULE, DECIMAL_MESSAGE),
    (MAC_RULE, MAC_MESSAGE),
    (IPV4_RULE, IPV4_MESSAGE),
    (URL_RULE, URL_MESSAGE),
    (MIN_LE_MAX_RULE, MIN_LE_MAX_MESSAGE),
    (ONE_ON_DRIVER_RULE, ONE_ON_DRIVER_MESSAGE),
    (ONE_OFF_DRIVER_RULE, ONE_OFF_DRIVER_MESSAGE),
    (ON_NOT_BOTH_RULE, ON_NOT_BOTH_MESSAGE),
    (OFF_NOT_BOTH_RULE, OFF_NOT_BOTH_MESSAGE),
    (NEEDS_ON_RULE, NEEDS_ON_MESSAGE),
    (NEEDS_OFF_RULE, NEEDS_OFF_MESSAGE),
    (POWER_ON_NOT_LEGACY_RULE, POWER_ON_NOT_LEGACY_MESSAGE),
    (POWER_OFF_NOT_LEGACY_RULE, POWER_OFF_NOT_LEGACY_MESSAGE),
    (STANDBY_NOT_LEGACY_RULE, STANDBY_NOT_LEGACY_MESSAGE),
    (BARE_ON_KEY_RULE, BARE_ON_KEY_MESSAGE),
    (BARE_OFF_KEY_RULE, BARE_OFF_KEY_MESSAGE),
    (BARE_OFF_KEY_RULE, BARE_WATTS_OFF_KEY_MESSAGE),
    (BARE_ON_KEY_RULE, BARE_WATTS_ON_KEY_MESSAGE),
    (ONE_VOLUME_SOURCE_RULE, ONE_VOLUME_SOURCE_MESSAGE),
    (TLS_CHOICE_RULE, TLS_CHOICE_MESSAGE),
    (REDFISH_HTTPS_RULE, REDFISH_HTTPS_MESSAGE),
    (HTTP_HTTPS_RULE, HTTP_HTTPS_MESSAGE),
    (IPMI_CIPHER_SUITE_RULE, IPMI_CIPHER_SUITE_MESSAGE),
    (ONE_METER_SOURCE_RULE, ONE_METER_SOURCE_MESSAGE),
    (HTTP_METER_HTTPS_RULE, HTTP_METER_HTTPS_MESSAGE),
    (GROUP_NAME_RULE, GROUP_NAME_MESSAGE),
    (NO_RESERVED_LABEL_RULE, NO_RESERVED_LABEL_MESSAGE),
    (TIME_OF_DAY_RULE, TIME_OF_DAY_MESSAGE),
    (WINDOW_NOT_EMPTY_RULE, WINDOW_NOT_EMPTY_MESSAGE),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_rules_embed_the_shared_patterns() {
        assert!(DURATION_RULE.contains(DURATION_PATTERN));
        assert!(POSITIVE_DURATION_RULE.contains(DURATION_PATTERN));
        assert!(BOOT_TIMEOUT_RULE.contains(DURATION_PATTERN));
        assert!(THRESHOLD_RULE.contains(DECIMAL_PATTERN));
        assert!(DECIMAL_RULE.contains(DECIMAL_PATTERN));
        assert!(MAC_RULE.contains(MAC_PATTERN));
        assert!(IPV4_RULE.contains(IPV4_PATTERN));
        assert!(NO_RESERVED_LABEL_RULE.contains(RESERVED_LABEL_PREFIX));
        assert!(TIME_OF_DAY_RULE.contains(TIME_OF_DAY_PATTERN));
        for (rule, _) in ALL_RULES {
            assert!(
                !rule.contains('\\'),
                "no escapes, so the rule reads the same everywhere: {rule}"
            );
        }
    }
}
