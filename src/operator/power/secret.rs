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

/// The keys of one Secret, and where it was named (for errors).
pub struct SecretData {
    /// `namespace/name`.
    object: String,
    /// The spec field that names it, e.g. `spec.power.on.redfish.credentialsSecret`.
    field: String,
    data: BTreeMap<String, Vec<u8>>,
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
            field: "spec.power.on.redfish.credentialsSecret".to_owned(),
            data: BTreeMap::from([
                ("username".to_owned(), b"homelab".to_vec()),
                ("password".to_owned(), b"s3cret-pw\n".to_vec()),
            ]),
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
