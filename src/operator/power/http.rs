//! The `http` driver: one HTTP call switches the machine (a smart plug, a Proxmox or VM host API,
//! a home-automation webhook). The answer's status says whether it was accepted; an optional
//! status URL is the readback (a JSONPath field compared with the value it has once the action
//! took effect), and then the operation succeeds only when the readback says so.
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use jsonpath_rust::JsonPath as _;
use kube::Client;
use serde_json::Value;

use super::secret::{self, Redactor};
use super::tls;
use super::web::{Auth, WebClient};
use super::{Driver, OpContext, OpProgress, PowerError, Report};
use crate::operator::api::{
    Direction, HttpAction, HttpMethod, HttpStatusCheck, SECRET_KEY_PASSWORD, SECRET_KEY_TOKEN,
    SECRET_KEY_USERNAME,
};
use crate::operator::machine::PowerState;

/// How often the status URL is read while the action has not shown yet.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The HTTP driver for one machine and direction.
pub struct HttpDriver<'a> {
    client: Client,
    spec: &'a HttpAction,
}

impl<'a> HttpDriver<'a> {
    /// `client` reads the Secret named by `secret` (only that one) in the machine's namespace.
    pub fn new(client: Client, spec: &'a HttpAction) -> HttpDriver<'a> {
        HttpDriver { client, spec }
    }

    async fn connect(&self, cx: &OpContext<'_>) -> Result<Endpoint, PowerError> {
        let field = format!("{}.http", cx.machine.spec.power_field(cx.direction));
        // Refused before the Secret is read: its credentials go over TLS unless the owner
        // opted in (the schema refuses the same; an object stored before that rule gets here).
        self.spec
            .check_https(&field)
            .map_err(|e| PowerError::Config(e.to_string()))?;
        let (auth, redactor) = match &self.spec.secret {
            None => (Auth::None, Redactor::default()),
            Some(name) => {
                let namespace = cx
                    .machine
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or("default");
                let s =
                    secret::read(&self.client, namespace, name, &format!("{field}.secret")).await?;
                // The action and its readback both carry the credentials.
                s.allow_endpoint(&self.spec.url, &format!("{field}.url"))?;
                if let Some(status) = &self.spec.status {
                    s.allow_endpoint(&status.url, &format!("{field}.status.url"))?;
                }
                (secret_auth(&s, &field)?, s.redactor())
            }
        };
        let timeout = self
            .spec
            .timeout(&field)
            .map_err(|e| PowerError::Config(e.to_string()))?;
        let tls = tls::client_config(self.spec.tls(), &field)?;
        Ok(Endpoint {
            web: WebClient::new(tls, timeout.unsigned_abs()),
            auth,
            redactor,
            field,
        })
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        self.spec
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    async fn start_inner(&self, cx: &OpContext<'_>, ep: &Endpoint) -> Result<Report, PowerError> {
        let want = wanted(cx.direction);
        // Already there (e.g. the action was sent before a restart): do not act twice.
        if let Some(status) = &self.spec.status
            && self.readback(ep, status, want).await? == Some(want)
        {
            return Ok(Report::new(OpProgress::Succeeded).with_readback(Some(want)));
        }
        let method = method(self.spec.method());
        let what = format!("{method} {}", self.spec.url);
        cx.ensure_leader()?;
        let answer = ep
            .web
            .send(
                method,
                &self.spec.url,
                &self.headers(),
                &ep.auth,
                self.spec.body.clone().map(Bytes::from),
            )
            .await
            .map_err(|e| field_error(&ep.field, "url", e))?;
        if !self.spec.accepts(answer.status) {
            let expected = if self.spec.expected_status.is_empty() {
                "2xx".to_owned()
            } else {
                self.spec
                    .expected_status
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let reason = format!(
                "{what} answered {}, expected {expected} ({}.expectedStatus){}",
                answer.status,
                ep.field,
                if matches!(answer.status, 401 | 403) {
                    ": check the credentials in the Secret"
                } else {
                    ""
                }
            );
            // The server is busy or broken: try again rather than fail the attempt.
            if answer.status >= 500 || matches!(answer.status, 408 | 429) {
                return Err(PowerError::Transient(reason));
            }
            return Ok(Report::new(OpProgress::Failed { reason }));
        }
        // Recorded in status: a check that reads the old state later waits for this call to
        // take effect instead of sending it again.
        let accepted = Some(format!("answered {}", answer.status));
        match &self.spec.status {
            None => Ok(Report::new(OpProgress::Succeeded).accepted(accepted)),
            Some(status) => match self.readback(ep, status, want).await {
                Ok(readback) => Ok(progress(want, readback).accepted(accepted)),
                // The call was accepted: a status URL not answering is for the checks to read,
                // not a reason to send the call again.
                Err(PowerError::Transient(_)) => Ok(Report::new(OpProgress::Running)
                    .accepted(accepted)
                    .recheck_after(POLL_INTERVAL)),
                Err(e) => Err(e),
            },
        }
    }

    async fn check_inner(&self, cx: &OpContext<'_>, ep: &Endpoint) -> Result<Report, PowerError> {
        match &self.spec.status {
            // No readback: nothing tells whether the call was made (e.g. before a restart), so
            // the lifecycle sends it again (a switch call is idempotent).
            None => Ok(Report::new(OpProgress::Absent)),
            Some(status) => {
                let want = wanted(cx.direction);
                let readback = self.readback(ep, status, want).await?;
                Ok(progress(want, readback))
            }
        }
    }

    /// Reads the status URL: `want` when the field holds the expected value, the other state
    /// otherwise.
    async fn readback(
        &self,
        ep: &Endpoint,
        status: &HttpStatusCheck,
        want: PowerState,
    ) -> Result<Option<PowerState>, PowerError> {
        let answer = ep
            .web
            .send(Method::GET, &status.url, &self.headers(), &ep.auth, None)
            .await
            .map_err(|e| field_error(&ep.field, "status.url", e))?;
        let what = format!("GET {}", status.url);
        if !(200..300).contains(&answer.status) {
            return Err(PowerError::Transient(format!(
                "{what} ({}.status.url) answered {}",
                ep.field, answer.status
            )));
        }
        let Some(json) = answer.json() else {
            return Err(PowerError::Config(format!(
                "{what} ({}.status.url) did not answer JSON",
                ep.field
            )));
        };
        let found = query_first(&json, &status.field).map_err(|e| {
            PowerError::Config(format!(
                "{}.status.field {:?} is not a JSONPath: {e}",
                ep.field, status.field
            ))
        })?;
        let Some(value) = found else {
            return Err(PowerError::Config(format!(
                "{what} has no field {} ({}.status.field)",
                status.field, ep.field
            )));
        };
        Ok(Some(if as_text(&value) == status.value {
            want
        } else {
            opposite(want)
        }))
    }
}

/// The credentials of an HTTP endpoint's Secret (`field.secret`): key `token` as a bearer
/// token, else keys `username` and `password` as basic auth. Shared by the HTTP driver and the
/// HTTP meter (`crate::operator::meter::http`).
pub(crate) fn secret_auth(s: &secret::SecretData, field: &str) -> Result<Auth, PowerError> {
    if s.has(SECRET_KEY_TOKEN) {
        Ok(Auth::Bearer(s.get(SECRET_KEY_TOKEN)?))
    } else if s.has(SECRET_KEY_USERNAME) || s.has(SECRET_KEY_PASSWORD) {
        Ok(Auth::Basic {
            username: s.get(SECRET_KEY_USERNAME)?,
            password: s.get(SECRET_KEY_PASSWORD)?,
        })
    } else {
        Err(PowerError::Config(format!(
            "Secret {} (named by {field}.secret) has neither key `{SECRET_KEY_TOKEN}` nor keys \
             `{SECRET_KEY_USERNAME}` and `{SECRET_KEY_PASSWORD}`: add them",
            s.object()
        )))
    }
}

/// The first value JSONPath (RFC 9535) `path` selects in `json` (`None`: it matched nothing);
/// `Err` says why `path` is not a JSONPath. Shared by the HTTP driver's readback and the HTTP
/// meter.
pub(crate) fn query_first(json: &Value, path: &str) -> Result<Option<Value>, String> {
    let found = json.query(path).map_err(|e| e.to_string())?;
    Ok(found.first().map(|v| (*v).clone()))
}

fn field_error(field: &str, sub: &str, e: super::web::WebError) -> PowerError {
    match e {
        e @ super::web::WebError::BadRequest(_) => e.into_power(&format!("{field}.{sub}")),
        e => e.into_power(field),
    }
}

fn progress(want: PowerState, readback: Option<PowerState>) -> Report {
    if readback == Some(want) {
        Report::new(OpProgress::Succeeded).with_readback(readback)
    } else {
        Report::new(OpProgress::Running)
            .with_readback(readback)
            .recheck_after(POLL_INTERVAL)
    }
}

/// A JSON value as the text an owner writes in `status.value`: strings bare, the rest as JSON.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn wanted(direction: Direction) -> PowerState {
    match direction {
        Direction::On => PowerState::On,
        Direction::Off => PowerState::Off,
    }
}

fn opposite(state: PowerState) -> PowerState {
    match state {
        PowerState::On => PowerState::Off,
        PowerState::Off => PowerState::On,
    }
}

fn method(m: HttpMethod) -> Method {
    match m {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
    }
}

/// One endpoint, connected for one driver call.
struct Endpoint {
    web: WebClient,
    auth: Auth,
    redactor: Redactor,
    field: String,
}

impl Driver for HttpDriver<'_> {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn start(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        let ep = self.connect(cx).await?;
        ep.redactor.outcome(self.start_inner(cx, &ep).await)
    }

    async fn check(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        let ep = self.connect(cx).await?;
        ep.redactor.outcome(self.check_inner(cx, &ep).await)
    }

    /// The call is made and answered within `start`; nothing is left running.
    async fn cancel(&self, _cx: &OpContext<'_>) -> Result<(), PowerError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_values_compare_as_the_text_an_owner_writes() {
        assert_eq!(as_text(&Value::Bool(true)), "true");
        assert_eq!(as_text(&Value::String("ON".into())), "ON");
        assert_eq!(as_text(&serde_json::json!(1)), "1");
    }
}
