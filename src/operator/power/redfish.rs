//! The `redfish` driver: a BMC's `ComputerSystem.Reset` (DMTF Redfish over HTTPS, basic auth from
//! the credentials Secret). Power-on posts `On`; power-off posts `GracefulShutdown` and, when the
//! BMC still reports `PowerState: On` after `forceOffAfter` (counted from the operation's start,
//! so a restarted operator escalates on time), `ForceOff`. The BMC's `PowerState` is the readback
//! both ways: an operation succeeds only when the BMC reports the state it was for.
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use jiff::SignedDuration;
use kube::Client;
use serde_json::Value;

use super::secret::{self, Redactor};
use super::tls;
use super::web::{Answer, Auth, WebClient, WebError};
use super::{Driver, OpContext, OpProgress, PowerError, Report};
use crate::operator::api::{
    Direction, Redfish, SECRET_KEY_PASSWORD, SECRET_KEY_USERNAME, format_duration,
};
use crate::operator::machine::PowerState;

/// How often the BMC's `PowerState` is read while an operation runs.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// After `forceOffAfter`, `ForceOff` is sent by the checks in the first [`POLL_INTERVAL`] of
/// every such period while the BMC still says On: once, then again only if it did not take,
/// without keeping a record of what was sent (a second reset sent while one is pending restarts
/// it on some BMCs).
pub const FORCE_OFF_REPEAT: Duration = Duration::from_secs(60);
/// Retries of a read that found the BMC unreachable, and the first pause (doubled each time).
const READ_RETRIES: u32 = 2;
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(250);

const SYSTEMS: &str = "/redfish/v1/Systems";

/// The Redfish driver for one machine and direction.
pub struct RedfishDriver<'a> {
    client: Client,
    spec: &'a Redfish,
}

impl<'a> RedfishDriver<'a> {
    /// `client` reads the credentials Secret (only that one, by name) in the machine's namespace.
    pub fn new(client: Client, spec: &'a Redfish) -> RedfishDriver<'a> {
        RedfishDriver { client, spec }
    }

    async fn connect(&self, cx: &OpContext<'_>) -> Result<Bmc, PowerError> {
        let field = format!("{}.redfish", cx.machine.spec.power_field(cx.direction));
        let namespace = cx
            .machine
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        Bmc::connect(&self.client, namespace, self.spec, field).await
    }

    async fn start_inner(&self, cx: &OpContext<'_>, bmc: &Bmc) -> Result<Report, PowerError> {
        let system = bmc.system().await?;
        let readback = system.power_state();
        match cx.direction {
            Direction::On => {
                if readback == Some(PowerState::On) {
                    return Ok(Report::new(OpProgress::Succeeded).with_readback(readback));
                }
                cx.ensure_leader()?;
                bmc.reset(&system, "On").await?;
                Ok(Report::new(OpProgress::Running)
                    .with_readback(readback)
                    .accepted(Some("On".to_owned()))
                    .recheck_after(POLL_INTERVAL))
            }
            Direction::Off => {
                if readback == Some(PowerState::Off) {
                    return Ok(Report::new(OpProgress::Succeeded).with_readback(readback));
                }
                let grace = self.grace(bmc)?;
                if grace.is_zero() {
                    cx.ensure_leader()?;
                    bmc.reset(&system, "ForceOff").await?;
                    return Ok(Report::new(OpProgress::Running)
                        .with_readback(readback)
                        .accepted(Some("ForceOff".to_owned()))
                        .with_note("sent ForceOff at once (forceOffAfter is 0s)")
                        .escalated()
                        .recheck_after(POLL_INTERVAL));
                }
                cx.ensure_leader()?;
                bmc.reset(&system, "GracefulShutdown").await?;
                Ok(Report::new(OpProgress::Running)
                    .with_readback(readback)
                    .accepted(Some("GracefulShutdown".to_owned()))
                    .recheck_after(POLL_INTERVAL.min(grace.unsigned_abs())))
            }
        }
    }

    async fn check_inner(&self, cx: &OpContext<'_>, bmc: &Bmc) -> Result<Report, PowerError> {
        let system = bmc.system().await?;
        let readback = system.power_state();
        let want = match cx.direction {
            Direction::On => PowerState::On,
            Direction::Off => PowerState::Off,
        };
        if readback == Some(want) {
            return Ok(Report::new(OpProgress::Succeeded).with_readback(readback));
        }
        let running = Report::new(OpProgress::Running).with_readback(readback);
        if cx.direction == Direction::On {
            return Ok(running.recheck_after(POLL_INTERVAL));
        }
        let grace = self.grace(bmc)?;
        let elapsed = cx.now.duration_since(cx.op.started);
        let repeat = SignedDuration::try_from(FORCE_OFF_REPEAT).unwrap_or(SignedDuration::MAX);
        let slot = SignedDuration::try_from(POLL_INTERVAL).unwrap_or(SignedDuration::ZERO);
        let in_force_off_slot =
            elapsed >= grace && (elapsed - grace).as_secs() % repeat.as_secs() < slot.as_secs();
        if readback == Some(PowerState::On) && in_force_off_slot {
            cx.ensure_leader()?;
            bmc.reset(&system, "ForceOff").await?;
            return Ok(running
                .with_note(format!(
                    "the BMC still reported PowerState On {} after GracefulShutdown \
                     (forceOffAfter {}): sent ForceOff",
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
        self.spec.force_off_after(&bmc.field).map_err(config)
    }
}

fn config(e: crate::operator::api::FieldError) -> PowerError {
    PowerError::Config(e.to_string())
}

impl Driver for RedfishDriver<'_> {
    fn kind(&self) -> &'static str {
        "redfish"
    }

    async fn start(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        let bmc = self.connect(cx).await?;
        bmc.redactor.outcome(self.start_inner(cx, &bmc).await)
    }

    async fn check(&self, cx: &OpContext<'_>) -> Result<Report, PowerError> {
        let bmc = self.connect(cx).await?;
        bmc.redactor.outcome(self.check_inner(cx, &bmc).await)
    }

    /// A posted reset cannot be called back, and nothing of ours keeps running.
    async fn cancel(&self, _cx: &OpContext<'_>) -> Result<(), PowerError> {
        Ok(())
    }
}

/// `https://bmc` of `https://bmc/`, `https://bmc/redfish/v1`: the Redfish paths are absolute.
fn origin(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    e.strip_suffix("/redfish/v1").unwrap_or(e).to_owned()
}

/// `origin` joined with `path`, a path the BMC gave (`@odata.id`, an action's `target`) or ours,
/// only when the result is still on `origin`: `path` must be absolute (`/redfish/...`). Joined
/// as text, `.attacker.example/x` after `https://bmc` would name another host, and the
/// credentials would go there.
fn on_bmc(origin: &str, path: &str) -> Option<String> {
    let url = format!("{origin}{path}");
    let same = |a: &str, b: &str| {
        let (Ok(a), Ok(b)) = (a.parse::<http::Uri>(), b.parse::<http::Uri>()) else {
            return false;
        };
        a.scheme() == b.scheme() && a.authority() == b.authority()
    };
    (path.starts_with('/') && !path.starts_with("//") && same(origin, &url)).then_some(url)
}

/// One BMC, connected for one driver call (or one meter read).
pub(crate) struct Bmc {
    web: WebClient,
    auth: Auth,
    origin: String,
    endpoint: String,
    system_id: Option<String>,
    /// `namespace/name` of the credentials Secret.
    secret: String,
    redactor: Redactor,
    field: String,
}

/// What the driver reads of a `ComputerSystem`.
struct System {
    path: String,
    power_state: Option<String>,
    reset_target: String,
    allowed: Option<Vec<String>>,
}

impl System {
    fn power_state(&self) -> Option<PowerState> {
        match self.power_state.as_deref() {
            Some("On") => Some(PowerState::On),
            Some("Off") => Some(PowerState::Off),
            // PoweringOn, PoweringOff, Paused: neither yet.
            _ => None,
        }
    }
}

impl Bmc {
    /// The BMC `spec` names, with the credentials of its Secret in `namespace`; `field` is the
    /// path of `spec` in the Node (for errors). Shared by the driver and the Redfish meter
    /// (`crate::operator::meter::redfish`).
    pub(crate) async fn connect(
        client: &Client,
        namespace: &str,
        spec: &Redfish,
        field: String,
    ) -> Result<Bmc, PowerError> {
        // Refused before the Secret is read: the credentials go over TLS unless the owner
        // opted in (the schema refuses the same; an object stored before that rule gets here).
        spec.check_https(&field).map_err(config)?;
        let secret = secret::read(
            client,
            namespace,
            &spec.credentials_secret,
            &format!("{field}.credentialsSecret"),
        )
        .await?;
        secret.allow_endpoint(&spec.endpoint, &format!("{field}.endpoint"))?;
        let auth = Auth::Basic {
            username: secret.get(SECRET_KEY_USERNAME)?,
            password: secret.get(SECRET_KEY_PASSWORD)?,
        };
        let timeout = spec.timeout(&field).map_err(config)?;
        let tls = tls::client_config(spec.tls(), &field)?;
        Ok(Bmc {
            web: WebClient::new(tls, timeout.unsigned_abs()),
            auth,
            origin: origin(&spec.endpoint),
            endpoint: spec.endpoint.clone(),
            system_id: spec.system_id.clone(),
            secret: secret.object().to_owned(),
            redactor: secret.redactor(),
            field,
        })
    }

    /// Scrubs this BMC's credentials from what is reported.
    pub(crate) fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The URL of `path` on this BMC (see [`on_bmc`]).
    fn url(&self, path: &str) -> Result<String, PowerError> {
        on_bmc(&self.origin, path).ok_or_else(|| {
            PowerError::Config(format!(
                "BMC {} named {path:?} as a path of its own; that is not a path on {}, and the \
                 credentials go only there",
                self.endpoint, self.origin
            ))
        })
    }

    /// GET `path`, retrying a BMC that did not answer; maps the answers a driver cannot use
    /// to errors that say what to fix.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, PowerError> {
        let url = self.url(path)?;
        let mut pause = FIRST_RETRY_PAUSE;
        let mut attempt = 0;
        let answer = loop {
            match self
                .web
                .send(
                    Method::GET,
                    &url,
                    &[("Accept", "application/json")],
                    &self.auth,
                    None,
                )
                .await
            {
                Ok(a) if a.status >= 500 && attempt < READ_RETRIES => {}
                Ok(a) => break a,
                Err(WebError::Unreachable { .. }) if attempt < READ_RETRIES => {}
                Err(e) => return Err(self.unreachable(e)),
            }
            attempt += 1;
            tokio::time::sleep(pause).await;
            pause *= 2;
        };
        match answer.status {
            200..=299 => answer.json().ok_or_else(|| {
                PowerError::Transient(format!(
                    "BMC {}: GET {path} answered {} with a body that is not JSON",
                    self.endpoint, answer.status
                ))
            }),
            _ => Err(self.refused(&answer, &format!("GET {path}"))),
        }
    }

    fn unreachable(&self, e: WebError) -> PowerError {
        match e {
            WebError::Unreachable { what, why } => PowerError::Transient(format!(
                "BMC {} ({}.endpoint) is unreachable: {what}: {why}",
                self.endpoint, self.field
            )),
            WebError::Timeout { what, timeout } => PowerError::Transient(format!(
                "BMC {} ({}.endpoint) is unreachable: {what}: no answer within {timeout:?} \
                 ({}.timeout)",
                self.endpoint, self.field, self.field
            )),
            e => e.into_power(&self.field),
        }
    }

    /// An answer outside 2xx.
    fn refused(&self, answer: &Answer, what: &str) -> PowerError {
        let detail = redfish_message(answer)
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        match answer.status {
            401 | 403 => PowerError::Config(format!(
                "BMC {} refused the credentials of Secret {} ({} on {what}){detail}: check its \
                 username and password",
                self.endpoint, self.secret, answer.status
            )),
            404 => PowerError::Config(format!(
                "BMC {}: {what} not found (404){detail}: check {}.endpoint and systemId",
                self.endpoint, self.field
            )),
            s if s >= 500 || s == 429 || s == 408 => PowerError::Transient(format!(
                "BMC {}: {what} answered {s}{detail}",
                self.endpoint
            )),
            s => PowerError::Config(format!(
                "BMC {}: {what} answered {s}{detail}",
                self.endpoint
            )),
        }
    }

    /// The system's path: `systemId`, else the only member of the Systems collection.
    pub(crate) async fn system_path(&self) -> Result<String, PowerError> {
        if let Some(id) = &self.system_id {
            return Ok(format!("{SYSTEMS}/{id}"));
        }
        let members = self.members().await?;
        match members.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(PowerError::Config(format!(
                "BMC {} lists no system in {SYSTEMS}: check {}.endpoint",
                self.endpoint, self.field
            ))),
            many => Err(PowerError::Config(format!(
                "BMC {} lists {} systems ({}): set {}.systemId to one of them",
                self.endpoint,
                many.len(),
                many.iter()
                    .map(|m| m.rsplit('/').next().unwrap_or(m))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.field
            ))),
        }
    }

    async fn members(&self) -> Result<Vec<String>, PowerError> {
        let collection = self.get(SYSTEMS).await?;
        Ok(collection["Members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["@odata.id"].as_str())
            .map(|s| s.trim_end_matches('/').to_owned())
            .collect())
    }

    async fn system(&self) -> Result<System, PowerError> {
        let path = self.system_path().await?;
        let body = match self.get(&path).await {
            Ok(body) => body,
            Err(PowerError::Config(m)) if m.contains("(404)") && self.system_id.is_some() => {
                let listed = self
                    .members()
                    .await
                    .map(|m| {
                        m.iter()
                            .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_else(|_| "unknown".to_owned());
                return Err(PowerError::Config(format!(
                    "BMC {} has no system {:?} (GET {path} answered 404): set {}.systemId to \
                     one it lists ({listed}), or leave it out when there is only one",
                    self.endpoint,
                    self.system_id.as_deref().unwrap_or_default(),
                    self.field
                )));
            }
            Err(e) => return Err(e),
        };
        let action = &body["Actions"]["#ComputerSystem.Reset"];
        let reset_target = action["target"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
        let allowed = action["ResetType@Redfish.AllowableValues"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            });
        Ok(System {
            path,
            power_state: body["PowerState"].as_str().map(str::to_owned),
            reset_target,
            allowed,
        })
    }

    async fn reset(&self, system: &System, reset_type: &str) -> Result<(), PowerError> {
        if let Some(refused) = disallowed(system, reset_type, &self.endpoint, &self.field) {
            return Err(refused);
        }
        let url = self.url(&system.reset_target)?;
        let body = serde_json::json!({ "ResetType": reset_type }).to_string();
        let answer = self
            .web
            .send(
                Method::POST,
                &url,
                &[
                    ("Content-Type", "application/json"),
                    ("Accept", "application/json"),
                ],
                &self.auth,
                Some(Bytes::from(body)),
            )
            .await
            .map_err(|e| self.unreachable(e))?;
        if (200..300).contains(&answer.status) {
            Ok(())
        } else {
            Err(self.refused(
                &answer,
                &format!("ResetType {reset_type} (POST {})", system.reset_target),
            ))
        }
    }
}

/// The error for a reset type the system's `ResetType@Redfish.AllowableValues` leaves out (a BMC
/// that lists none allows any).
fn disallowed(
    system: &System,
    reset_type: &str,
    endpoint: &str,
    field: &str,
) -> Option<PowerError> {
    let allowed = system.allowed.as_ref()?;
    if allowed.iter().any(|a| a == reset_type) {
        return None;
    }
    let hint = if reset_type == "GracefulShutdown" && allowed.iter().any(|a| a == "ForceOff") {
        format!("; set {field}.forceOffAfter: 0s to power off with ForceOff")
    } else {
        String::new()
    };
    Some(PowerError::Config(format!(
        "BMC {endpoint} does not allow ResetType {reset_type} on {} (it allows: {}){hint}",
        system.path,
        allowed.join(", ")
    )))
}

/// The message of a Redfish error answer (`error.@Message.ExtendedInfo[].Message`, else
/// `error.message`).
fn redfish_message(answer: &Answer) -> Option<String> {
    let v = answer.json()?;
    let err = &v["error"];
    let extended: Vec<&str> = err["@Message.ExtendedInfo"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["Message"].as_str())
        .collect();
    if !extended.is_empty() {
        return Some(extended.join("; "));
    }
    err["message"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(allowed: Option<&[&str]>) -> System {
        System {
            path: "/redfish/v1/Systems/1".to_owned(),
            power_state: Some("On".to_owned()),
            reset_target: "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset".to_owned(),
            allowed: allowed.map(|a| a.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    #[test]
    fn a_reset_type_the_bmc_does_not_list_is_refused_with_what_it_allows() {
        let field = "spec.power.powerOff.redfish";
        let only_force = system(Some(&["On", "ForceOff"]));
        let Some(PowerError::Config(msg)) =
            disallowed(&only_force, "GracefulShutdown", "https://bmc", field)
        else {
            panic!("GracefulShutdown is not allowed");
        };
        assert!(
            msg.contains("allows: On, ForceOff") && msg.contains("forceOffAfter: 0s"),
            "{msg}"
        );
        assert!(disallowed(&only_force, "ForceOff", "https://bmc", field).is_none());
        assert!(disallowed(&system(None), "GracefulShutdown", "https://bmc", field).is_none());
    }

    #[test]
    fn paths_from_the_bmc_stay_on_its_origin() {
        assert_eq!(
            on_bmc("https://bmc", "/redfish/v1/Systems/1").as_deref(),
            Some("https://bmc/redfish/v1/Systems/1")
        );
        assert_eq!(
            on_bmc("https://bmc:8443", "/redfish/v1").as_deref(),
            Some("https://bmc:8443/redfish/v1")
        );
        // Joined as text, each would name another host or port.
        for path in [
            ".attacker.example/redfish/v1",
            "@attacker.example/redfish/v1",
            ":8080/redfish/v1",
            "//attacker.example/redfish/v1",
            "https://attacker.example/redfish/v1",
        ] {
            assert_eq!(on_bmc("https://bmc", path), None, "{path}");
        }
    }

    #[test]
    fn origin_drops_a_trailing_service_root() {
        assert_eq!(origin("https://bmc/"), "https://bmc");
        assert_eq!(origin("https://bmc:8443/redfish/v1/"), "https://bmc:8443");
        assert_eq!(origin("https://10.0.0.20"), "https://10.0.0.20");
    }
}
