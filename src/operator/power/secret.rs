//! The one Secret a network power driver names (`credentialsSecret`, `secret`,
//! `secureOnSecret`): read by name from the machine's namespace, so the operator's RBAC can be
//! limited to those names (`resourceNames`). Values never reach a log, an Event or an error: they
//! are wrapped in [`SecretValue`] (no `Debug`/`Display` of the content) and every text a driver
//! reports goes through a [`Redactor`] holding them.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::PowerError;
use crate::operator::api::{SECRET_KEY_PASSWORD, SECRET_KEY_USERNAME};
pub use crate::operator::error_chain;

/// Annotation on a credential Secret listing where its credentials may be sent: URL prefixes
/// separated by commas or spaces (`https://10.0.0.20, https://bmc2.lan:8443/redfish`). Without
/// it the Secret goes to whatever endpoint a Node CR names; with it, a Node CR writer cannot
/// point the operator (which may read the Secret) at a server of their own.
pub const ENDPOINTS_ANNOTATION: &str = "infra.homecluster.dev/endpoints";

/// The keys of one Secret, and where it was named (for errors).
pub struct SecretData {
    /// `namespace/name`.
    object: String,
    /// The spec field that names it, e.g. `spec.power.powerOn.redfish.credentialsSecret`.
    field: String,
    data: BTreeMap<String, Vec<u8>>,
    /// The [`ENDPOINTS_ANNOTATION`] prefixes, when the Secret's owner set it.
    endpoints: Option<Vec<String>>,
}

/// A secret string. Its `Debug` shows `***`; read it with [`SecretValue::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The prefixes of an [`ENDPOINTS_ANNOTATION`] value.
fn parse_endpoints(value: &str) -> Vec<String> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether `prefix` covers `url`: the same URL, or `url` continues it at a path, query or
/// fragment boundary, so `https://10.0.0.2` does not cover `https://10.0.0.20` and
/// `https://bmc.lan` does not cover `https://bmc.lan.attacker.example`.
fn covers(prefix: &str, url: &str) -> bool {
    match url.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => prefix.ends_with('/') || rest.starts_with(['/', '?', '#']),
        None => false,
    }
}

/// Reads Secret `name` in `namespace`. `field` is the spec field naming it.
pub async fn read(
    client: &Client,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<SecretData, PowerError> {
    let object = format!("{namespace}/{name}");
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get(name).await {
        Ok(secret) => Ok(SecretData {
            object,
            field: field.to_owned(),
            endpoints: secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ENDPOINTS_ANNOTATION))
                .map(|v| parse_endpoints(v)),
            data: secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        }),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(PowerError::Config(format!(
            "Secret {object} (named by {field}) does not exist: create it in the Node's namespace"
        ))),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(PowerError::Config(format!(
            "the operator may not read Secret {object} (named by {field}): grant it `get` on \
             secrets with resourceNames [{name}] in namespace {namespace}"
        ))),
        Err(e) => Err(PowerError::Transient(format!(
            "reading Secret {object} (named by {field}): {}",
            error_chain(&e)
        ))),
    }
}

impl SecretData {
    /// Whether the Secret has `key`.
    pub fn has(&self, key: &str) -> bool {
        self.data.contains_key(key)
    }

    /// The UTF-8 value of `key` (surrounding whitespace, e.g. a trailing newline from
    /// `kubectl create secret --from-file`, removed).
    pub fn get(&self, key: &str) -> Result<SecretValue, PowerError> {
        let Some(bytes) = self.data.get(key) else {
            return Err(PowerError::Config(format!(
                "Secret {} (named by {}) has no key `{key}`: add it",
                self.object, self.field
            )));
        };
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(SecretValue(s.trim().to_owned())),
            Err(_) => Err(PowerError::Config(format!(
                "Secret {} (named by {}): key `{key}` is not UTF-8 text",
                self.object, self.field
            ))),
        }
    }

    /// Whether this Secret's credentials may be sent to `url` (named by `url_field`): always,
    /// unless the Secret carries [`ENDPOINTS_ANNOTATION`] and no prefix of it covers `url`.
    pub fn allow_endpoint(&self, url: &str, url_field: &str) -> Result<(), PowerError> {
        match &self.endpoints {
            Some(allowed) if !allowed.iter().any(|p| covers(p, url)) => {
                Err(PowerError::Config(format!(
                    "{url_field} {url:?} is not where Secret {} may be sent: its annotation \
                     {ENDPOINTS_ANNOTATION} allows {}; point {url_field} at one of those, or have \
                     the Secret's owner add it",
                    self.object,
                    if allowed.is_empty() {
                        "nothing".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                )))
            }
            _ => Ok(()),
        }
    }

    /// `namespace/name`.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// A redactor for every value of this Secret, in the forms a server may echo back: as
    /// sent, base64 (a Secret's own encoding), and the basic-auth pair `username:password` in
    /// base64 (the `Authorization: Basic` header's value).
    pub fn redactor(&self) -> Redactor {
        let mut r = Redactor::default();
        for v in self.data.values() {
            r.add_base64(v);
            if let Ok(s) = std::str::from_utf8(v) {
                r.add(s.trim());
                r.add_base64(s.trim().as_bytes());
            }
        }
        let key = |k: &str| {
            self.data
                .get(k)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::trim)
        };
        if let (Some(user), Some(password)) = (key(SECRET_KEY_USERNAME), key(SECRET_KEY_PASSWORD)) {
            r.add_base64(format!("{user}:{password}").as_bytes());
        }
        r
    }
}

/// Replaces known secret values in text a driver reports (errors, notes, failure reasons):
/// the last guard in case a server echoes a credential back in its error message.
#[derive(Clone, Default)]
pub struct Redactor {
    values: Vec<String>,
}

impl Redactor {
    pub fn add(&mut self, value: &str) {
        // Very short values would blank out ordinary words; they are not credentials anyone uses.
        if value.len() >= 4 {
            self.values.push(value.to_owned());
            self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }

    /// Adds `value` in base64, with and without padding.
    pub fn add_base64(&mut self, value: &[u8]) {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        self.add(encoded.trim_end_matches('='));
        self.add(&encoded);
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }

    pub fn error(&self, e: PowerError) -> PowerError {
        match e {
            PowerError::Transient(m) => PowerError::Transient(self.scrub(&m)),
            PowerError::Config(m) => PowerError::Config(self.scrub(&m)),
        }
    }

    pub fn report(&self, mut r: super::Report) -> super::Report {
        r.note = r.note.map(|n| self.scrub(&n));
        if let super::OpProgress::Failed { reason } = &r.progress {
            r.progress = super::OpProgress::Failed {
                reason: self.scrub(reason),
            };
        }
        r
    }

    /// A driver call's outcome with every secret scrubbed, report or error.
    pub fn outcome(
        &self,
        r: Result<super::Report, PowerError>,
    ) -> Result<super::Report, PowerError> {
        r.map(|r| self.report(r)).map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound_to(annotation: Option<&str>) -> SecretData {
        SecretData {
            object: "lab/bmc".to_owned(),
            field: "spec.power.powerOn.redfish.credentialsSecret".to_owned(),
            data: BTreeMap::new(),
            endpoints: annotation.map(parse_endpoints),
        }
    }

    #[test]
    fn a_secret_without_the_annotation_goes_anywhere() {
        let s = bound_to(None);
        assert!(s.allow_endpoint("https://anything.example", "f").is_ok());
    }

    #[test]
    fn an_annotated_secret_goes_only_under_its_prefixes() {
        let s = bound_to(Some("https://10.0.0.2, https://bmc.lan:8443/redfish/"));
        for ok in [
            "https://10.0.0.2",
            "https://10.0.0.2/redfish/v1",
            "https://bmc.lan:8443/redfish/v1/Systems",
        ] {
            assert!(s.allow_endpoint(ok, "f").is_ok(), "{ok}");
        }
        for refused in [
            "https://10.0.0.20",
            "http://10.0.0.2",
            "https://10.0.0.2.attacker.example",
            "https://bmc.lan:8443/other",
            "https://bmc.lan",
        ] {
            let Err(e) = s.allow_endpoint(refused, "spec.power.powerOn.redfish.endpoint") else {
                panic!("{refused} was allowed");
            };
            let e = e.to_string();
            assert!(
                e.contains("spec.power.powerOn.redfish.endpoint")
                    && e.contains("lab/bmc")
                    && e.contains(ENDPOINTS_ANNOTATION),
                "{e}"
            );
        }
    }

    #[test]
    fn an_empty_annotation_allows_nothing() {
        let s = bound_to(Some(" "));
        assert!(s.allow_endpoint("https://10.0.0.2", "f").is_err());
    }

    #[test]
    fn redactor_replaces_every_value_and_debug_hides_it() {
        let mut r = Redactor::default();
        r.add("hunter22");
        r.add("hunter22-long");
        assert_eq!(
            r.scrub("login hunter22-long failed, hunter22 too"),
            "login *** failed, *** too"
        );
        assert_eq!(format!("{:?}", SecretValue("hunter22".into())), "***");
    }

    #[test]
    fn redactor_hides_the_base64_forms_a_server_may_echo() {
        let secret = SecretData {
            object: "ns/bmc".to_owned(),
            field: "spec.power.powerOn.redfish.credentialsSecret".to_owned(),
            data: BTreeMap::from([
                ("username".to_owned(), b"homelab".to_vec()),
                ("password".to_owned(), b"s3cret-pw\n".to_vec()),
            ]),
            endpoints: None,
        };
        let r = secret.redactor();
        // `homelab:s3cret-pw`, as in `Authorization: Basic ...`.
        assert_eq!(
            r.scrub("bad header Basic aG9tZWxhYjpzM2NyZXQtcHc="),
            "bad header Basic ***"
        );
        // The password alone, with and without its newline, padded or not.
        assert_eq!(r.scrub("got czNjcmV0LXB3"), "got ***");
        assert_eq!(r.scrub("got czNjcmV0LXB3Cg=="), "got ***");
        assert_eq!(r.scrub("plain s3cret-pw"), "plain ***");
    }
}
