//! The HTTP driver against a real HTTPS server started by the test: a smart plug that switches on
//! a POST with a bearer token or basic auth and reports its relay state as JSON (the readback),
//! behind a certificate from a test CA.
mod support;
mod support_power;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use kubectl_homelab::operator::api::{Direction, HttpAction, HttpMethod, HttpStatusCheck, Machine};
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::operator::power::http::HttpDriver;
use kubectl_homelab::operator::power::{Driver as _, OpProgress, PowerError};
use support::pki::Ca;
use support_power::server::{self, Received, Server};
use support_power::{Op, Transcript, create_secret};

const TOKEN: &str = "plug-token-5b9e2c71";
const USER: &str = "admin";
const PASSWORD: &str = "plug-Pa55-c0ffee";

/// A smart plug: `POST /relay?turn=on|off` with the right credentials switches it, `GET /status`
/// answers `{"output": <bool>}`. Answers 401 to anything without them.
struct Plug {
    server: Server,
    on: Arc<Mutex<bool>>,
    requests: Arc<Mutex<Vec<Received>>>,
}

async fn plug(ca: &Ca) -> anyhow::Result<Plug> {
    let on = Arc::new(Mutex::new(false));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (state, log) = (on.clone(), requests.clone());
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{USER}:{PASSWORD}")
        )
    );
    let server = server::serve(Some(&ca.serving()?), move |req: Received| {
        let (state, log, basic) = (state.clone(), log.clone(), basic.clone());
        async move {
            if let Ok(mut l) = log.lock() {
                l.push(req.clone());
            }
            let auth = req
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if auth != format!("Bearer {TOKEN}") && auth != basic {
                return server::answer(401, r#"{"error": "unauthorized"}"#);
            }
            if req.path_and_query == "/slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
                return server::answer(200, "");
            }
            let Ok(mut on) = state.lock() else {
                return server::answer(500, "");
            };
            match (req.method.as_str(), req.path_and_query.as_str()) {
                ("POST", "/relay?turn=on") => {
                    *on = true;
                    server::answer(200, r#"{"was_on": false}"#)
                }
                ("POST", "/relay?turn=off") => {
                    *on = false;
                    server::answer(200, r#"{"was_on": true}"#)
                }
                ("GET", "/status") => server::answer(200, format!(r#"{{"output": {}}}"#, *on)),
                _ => server::answer(404, r#"{"error": "no such path"}"#),
            }
        }
    })
    .await?;
    Ok(Plug {
        server,
        on,
        requests,
    })
}

fn action(plug: &Plug, ca: &Ca, turn: &str, value: &str) -> HttpAction {
    HttpAction {
        url: format!("{}/relay?turn={turn}", plug.server.url),
        method: Some(HttpMethod::Post),
        headers: BTreeMap::from([("Content-Type".to_owned(), "application/json".to_owned())]),
        body: Some(r#"{"source": "kubectl-homelab"}"#.to_owned()),
        secret: Some("plug".to_owned()),
        ca_bundle: Some(ca.cert_pem.clone()),
        status: Some(HttpStatusCheck {
            url: format!("{}/status", plug.server.url),
            field: "$.output".to_owned(),
            value: value.to_owned(),
        }),
        ..HttpAction::default()
    }
}

#[tokio::test]
async fn the_plug_switches_on_and_off_and_the_readback_confirms_it() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("http-plug").await?;
    let ca = Ca::generate()?;
    let plug = plug(&ca).await?;
    create_secret(&cp.client()?, &ns, "plug", &[("token", TOKEN)]).await?;
    let operator = support_power::operator_reading(cp, &ns, &["plug"]).await?;
    let on = action(&plug, &ca, "on", "true");
    let off = action(&plug, &ca, "off", "false");
    let m = Machine::test("nuc")
        .namespace(&ns)
        .desired(PowerState::Off)
        .http(on.clone(), off.clone())
        .build();
    let mut said = Transcript::default();

    let op = Op::new(m.clone(), Direction::On, "on-1", Timestamp::now());
    let driver = HttpDriver::new(operator.client()?, &on);
    let report = said
        .record(&driver.start(&op.at(Timestamp::now())).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        (report.progress, report.readback),
        (OpProgress::Succeeded, Some(PowerState::On))
    );
    assert!(plug.on.lock().is_ok_and(|on| *on));
    let sent = plug
        .requests
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.method == http::Method::POST)
        .context("the action was sent")?;
    assert_eq!(sent.body, r#"{"source": "kubectl-homelab"}"#);
    assert_eq!(
        sent.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let checked = driver.check(&op.at(Timestamp::now())).await?;
    assert_eq!(checked.readback, Some(PowerState::On));

    // Off with basic auth instead of a token.
    let admin = cp.client()?;
    create_secret(
        &admin,
        &ns,
        "plug-basic",
        &[("username", USER), ("password", PASSWORD)],
    )
    .await?;
    let mut off = off;
    off.secret = Some("plug-basic".to_owned());
    let op = Op::new(m, Direction::Off, "off-2", Timestamp::now());
    let driver = HttpDriver::new(admin, &off);
    let report = said
        .record(&driver.start(&op.at(Timestamp::now())).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        (report.progress, report.readback),
        (OpProgress::Succeeded, Some(PowerState::Off))
    );
    assert!(plug.on.lock().is_ok_and(|on| !*on));
    said.assert_never_shows(TOKEN);
    said.assert_never_shows(PASSWORD);
    Ok(())
}

#[tokio::test]
async fn an_action_the_readback_does_not_confirm_keeps_running() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("http-unconfirmed").await?;
    let ca = Ca::generate()?;
    let plug = plug(&ca).await?;
    create_secret(&cp.client()?, &ns, "plug", &[("token", TOKEN)]).await?;
    // The plug accepts the call but its status never reads what this action expects.
    let on = action(&plug, &ca, "on", "switched-on");
    let m = Machine::test("nuc")
        .namespace(&ns)
        .desired(PowerState::Off)
        .http(on.clone(), on.clone())
        .build();
    let op = Op::new(m, Direction::On, "on-1", Timestamp::now());
    let driver = HttpDriver::new(cp.client()?, &on);
    let report = driver.start(&op.at(Timestamp::now())).await?;
    assert_eq!(
        (report.progress, report.readback),
        (OpProgress::Running, Some(PowerState::Off))
    );
    assert!(report.recheck_after.is_some());
    Ok(())
}

#[tokio::test]
async fn an_unexpected_status_fails_the_action_and_says_why() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("http-status").await?;
    let ca = Ca::generate()?;
    let plug = plug(&ca).await?;
    create_secret(&cp.client()?, &ns, "plug", &[("token", TOKEN)]).await?;
    let mut said = Transcript::default();

    let mut on = action(&plug, &ca, "on", "true");
    on.status = None;
    on.expected_status = vec![204];
    let m = Machine::test("nuc")
        .namespace(&ns)
        .desired(PowerState::Off)
        .http(on.clone(), on.clone())
        .build();
    let op = Op::new(m.clone(), Direction::On, "on-1", Timestamp::now());
    let report = said
        .record(
            &HttpDriver::new(cp.client()?, &on)
                .start(&op.at(Timestamp::now()))
                .await,
        )
        .map_err(anyhow::Error::msg)?;
    let OpProgress::Failed { reason } = report.progress else {
        panic!("expected Failed, got {report:?}");
    };
    assert!(reason.contains("answered 200, expected 204"), "{reason}");

    // A wrong token: refused, named, not shown.
    let wrong = "wrong-token-41d1";
    create_secret(&cp.client()?, &ns, "wrong", &[("token", wrong)]).await?;
    on.expected_status = vec![];
    on.secret = Some("wrong".to_owned());
    let report = said
        .record(
            &HttpDriver::new(cp.client()?, &on)
                .start(&op.at(Timestamp::now()))
                .await,
        )
        .map_err(anyhow::Error::msg)?;
    let OpProgress::Failed { reason } = report.progress else {
        panic!("expected Failed, got {report:?}");
    };
    assert!(
        reason.contains("401") && reason.contains("credentials"),
        "{reason}"
    );

    // Without a status URL nothing tells whether the call was made: check says Absent.
    let checked = HttpDriver::new(cp.client()?, &on)
        .check(&op.at(Timestamp::now()))
        .await?;
    assert_eq!(checked.progress, OpProgress::Absent);
    said.assert_never_shows(wrong);
    said.assert_never_shows(TOKEN);
    Ok(())
}

#[tokio::test]
async fn a_server_slower_than_the_timeout_is_a_transient_error() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("http-timeout").await?;
    let ca = Ca::generate()?;
    let plug = plug(&ca).await?;
    create_secret(&cp.client()?, &ns, "plug", &[("token", TOKEN)]).await?;
    let mut on = action(&plug, &ca, "on", "true");
    on.url = format!("{}/slow", plug.server.url);
    on.status = None;
    on.timeout = Some("1s".to_owned());
    let op = Op::new(
        Machine::test("nuc")
            .namespace(&ns)
            .desired(PowerState::Off)
            .http(on.clone(), on.clone())
            .build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let result = HttpDriver::new(cp.client()?, &on)
        .start(&op.at(Timestamp::now()))
        .await;
    let Err(PowerError::Transient(err)) = result else {
        panic!("a timeout is retried: {result:?}");
    };
    assert!(
        err.contains("no answer within 1s") && err.contains("/slow"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused_unless_its_ca_is_given() -> anyhow::Result<()>
{
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("http-tls").await?;
    let ca = Ca::generate()?;
    let plug = plug(&ca).await?;
    create_secret(&cp.client()?, &ns, "plug", &[("token", TOKEN)]).await?;
    let mut on = action(&plug, &ca, "on", "true");
    let other_ca = Ca::generate()?;
    on.ca_bundle = Some(other_ca.cert_pem.clone());
    let op = Op::new(
        Machine::test("nuc")
            .namespace(&ns)
            .desired(PowerState::Off)
            .http(on.clone(), on.clone())
            .build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let result = HttpDriver::new(cp.client()?, &on)
        .start(&op.at(Timestamp::now()))
        .await;
    let Err(PowerError::Config(err)) = result else {
        panic!("an untrusted certificate is a setting to fix: {result:?}");
    };
    assert!(
        err.contains("not trusted") && err.contains("spec.power.powerOn.http.caBundle"),
        "{err}"
    );
    assert!(plug.on.lock().is_ok_and(|on| !*on), "nothing was switched");

    on.ca_bundle = Some(ca.cert_pem.clone());
    let report = HttpDriver::new(cp.client()?, &on)
        .start(&op.at(Timestamp::now()))
        .await?;
    assert_eq!(report.progress, OpProgress::Succeeded);
    Ok(())
}

/// examples/http.yaml as written (its Secret, calls and readback), with only Home Assistant's
/// address pointed at a server that plays its REST API: `POST /api/services/script/turn_on`
/// runs a script, `GET /api/states/binary_sensor.nas_power` tells the sensor's state.
#[tokio::test]
async fn the_http_example_switches_the_nas_through_home_assistant() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let sensor = Arc::new(Mutex::new("off".to_owned()));
    let state = sensor.clone();
    let home_assistant = server::serve(None, move |req: Received| {
        let state = state.clone();
        async move {
            let authorized = req
                .headers
                .get(http::header::AUTHORIZATION)
                .is_some_and(|v| v == "Bearer change-me");
            if !authorized {
                return server::answer(401, "");
            }
            let Ok(mut sensor) = state.lock() else {
                return server::answer(500, "");
            };
            match (req.method.as_str(), req.path_and_query.as_str()) {
                ("POST", "/api/services/script/turn_on") => {
                    let script = serde_json::from_slice::<serde_json::Value>(&req.body)
                        .ok()
                        .and_then(|v| v["entity_id"].as_str().map(str::to_owned));
                    match script.as_deref() {
                        Some("script.nas_power_on") => *sensor = "on".to_owned(),
                        Some("script.nas_power_off") => *sensor = "off".to_owned(),
                        _ => return server::answer(400, ""),
                    }
                    server::answer(200, "[]")
                }
                ("GET", "/api/states/binary_sensor.nas_power") => server::answer(
                    200,
                    format!(r#"{{"entity_id": "binary_sensor.nas_power", "state": "{sensor}"}}"#),
                ),
                _ => server::answer(404, ""),
            }
        }
    })
    .await?;
    let ns = cp.namespace("http-example").await?;
    let client = cp.client()?;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/http.yaml");
    support::apply::apply_file_moved(
        &client,
        &ns,
        &example,
        true,
        &[("http://homeassistant.lan:8123", &home_assistant.url)],
    )
    .await?;
    let m = kube::Api::<kubectl_homelab::operator::api::Machine>::namespaced(client.clone(), &ns)
        .get("nas")
        .await?;
    let mut said = Transcript::default();
    for (direction, id, want) in [
        (Direction::On, "on-1", PowerState::On),
        (Direction::Off, "off-2", PowerState::Off),
    ] {
        let kubectl_homelab::operator::api::PowerDriver::Http(written) =
            m.power_driver(direction)?
        else {
            panic!("examples/http.yaml uses http both ways");
        };
        let op = Op::new(m.clone(), direction, id, Timestamp::now());
        let report = said
            .record(
                &HttpDriver::new(client.clone(), written)
                    .start(&op.at(Timestamp::now()))
                    .await,
            )
            .map_err(anyhow::Error::msg)?;
        assert_eq!(
            (report.progress, report.readback),
            (OpProgress::Succeeded, Some(want))
        );
    }
    assert_eq!(sensor.lock().map(|s| s.clone()).unwrap_or_default(), "off");
    said.assert_never_shows("change-me");
    Ok(())
}

/// A plain-HTTP plug that records every request and switches on `POST /relay?turn=on` with the
/// bearer token.
async fn plain_plug() -> anyhow::Result<(Server, Arc<Mutex<Vec<Received>>>)> {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    let server = server::serve(None, move |req: Received| {
        let log = log.clone();
        async move {
            let authorized = req
                .headers
                .get(http::header::AUTHORIZATION)
                .is_some_and(|v| v.to_str().ok() == Some(&format!("Bearer {TOKEN}")));
            if let Ok(mut l) = log.lock() {
                l.push(req);
            }
            if authorized {
                server::answer(200, "{}")
            } else {
                server::answer(401, "")
            }
        }
    })
    .await?;
    Ok((server, requests))
}

/// A `secret` goes over TLS unless the owner opted in: an `http://` url (or status url) with a
/// secret is refused before the Secret is read (the plug gets no request), naming the field and
/// both fixes; with `allowInsecure: true` the call is made; without a secret an `http://` url
/// needs no opt-in.
#[tokio::test]
async fn an_http_url_with_a_secret_is_refused_unless_allow_insecure() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("http-plain").await?;
    create_secret(&cp.client()?, &ns, "plug", &[("token", TOKEN)]).await?;
    let (plug, requests) = plain_plug().await?;
    let on = HttpAction {
        url: format!("{}/relay?turn=on", plug.url),
        secret: Some("plug".to_owned()),
        ..HttpAction::default()
    };
    let op = Op::new(
        Machine::test("nuc")
            .namespace(&ns)
            .desired(PowerState::Off)
            .http(on.clone(), on.clone())
            .build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let start = |spec: HttpAction| {
        let client = cp.client();
        let op = &op;
        async move {
            HttpDriver::new(client?, &spec)
                .start(&op.at(Timestamp::now()))
                .await
                .map_err(anyhow::Error::from)
        }
    };
    let err = start(on.clone())
        .await
        .err()
        .context("http:// with a secret is refused")?
        .to_string();
    assert!(
        err.starts_with("spec.power.powerOn.http.url: ")
            && err.contains("use https://")
            && err.contains("spec.power.powerOn.http.allowInsecure: true"),
        "{err}"
    );
    let readback_plain = HttpAction {
        url: "https://127.0.0.1:9/relay".to_owned(),
        status: Some(HttpStatusCheck {
            url: format!("{}/status", plug.url),
            field: "$.on".to_owned(),
            value: "true".to_owned(),
        }),
        ..on.clone()
    };
    let err = start(readback_plain)
        .await
        .err()
        .context("an http:// status url with a secret is refused")?
        .to_string();
    assert!(
        err.starts_with("spec.power.powerOn.http.status.url: "),
        "{err}"
    );
    assert!(requests.lock().is_ok_and(|r| r.is_empty()), "no request");

    let allowed = HttpAction {
        allow_insecure: Some(true),
        ..on.clone()
    };
    assert_eq!(start(allowed).await?.progress, OpProgress::Succeeded);
    // Without a secret there is nothing to protect (the plug answers 401 to no token).
    let anonymous = HttpAction {
        secret: None,
        expected_status: vec![401],
        ..on
    };
    assert_eq!(start(anonymous).await?.progress, OpProgress::Succeeded);
    let seen = requests.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].headers.contains_key(http::header::AUTHORIZATION));
    assert!(!seen[1].headers.contains_key(http::header::AUTHORIZATION));
    Ok(())
}

/// The client follows a redirect only on the same scheme, host and port (with the credentials);
/// one to another origin, or to plain HTTP, is returned as the answer instead: its target never
/// gets a request, so never the `Authorization` header, and the action fails naming the status.
#[tokio::test]
async fn redirects_never_carry_credentials_to_another_origin_or_to_http() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("http-redirect").await?;
    create_secret(&cp.client()?, &ns, "plug", &[("token", TOKEN)]).await?;
    let ca = Ca::generate()?;
    let record = |log: Arc<Mutex<Vec<Received>>>| {
        move |req: Received| {
            let log = log.clone();
            async move {
                if let Ok(mut l) = log.lock() {
                    l.push(req);
                }
                server::answer(200, "{}")
            }
        }
    };
    // Another origin over TLS (same CA, another port), and a plain-HTTP one.
    let elsewhere_seen = Arc::new(Mutex::new(Vec::new()));
    let elsewhere = server::serve(Some(&ca.serving()?), record(elsewhere_seen.clone())).await?;
    let plain_seen = Arc::new(Mutex::new(Vec::new()));
    let plain = server::serve(None, record(plain_seen.clone())).await?;
    let plug_seen = Arc::new(Mutex::new(Vec::new()));
    let (to_elsewhere, to_plain) = (
        format!("{}/relay", elsewhere.url),
        format!("{}/relay", plain.url),
    );
    let log = plug_seen.clone();
    let plug = server::serve(Some(&ca.serving()?), move |req: Received| {
        let (log, to_elsewhere, to_plain) = (log.clone(), to_elsewhere.clone(), to_plain.clone());
        async move {
            let path = req.path_and_query.clone();
            if let Ok(mut l) = log.lock() {
                l.push(req);
            }
            let moved = |to: &str| {
                let mut a = server::answer(307, "");
                if let Ok(v) = http::HeaderValue::from_str(to) {
                    a.headers_mut().insert(http::header::LOCATION, v);
                }
                a
            };
            match path.as_str() {
                "/same" => moved("/relay"),
                "/cross" => moved(&to_elsewhere),
                "/down" => moved(&to_plain),
                _ => server::answer(200, "{}"),
            }
        }
    })
    .await?;
    let action = |path: &str| HttpAction {
        url: format!("{}{path}", plug.url),
        secret: Some("plug".to_owned()),
        ca_bundle: Some(ca.cert_pem.clone()),
        ..HttpAction::default()
    };
    let op = Op::new(
        Machine::test("nuc")
            .namespace(&ns)
            .desired(PowerState::Off)
            .http(action("/same"), action("/same"))
            .build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let mut said = Transcript::default();
    for path in ["/cross", "/down"] {
        let spec = action(path);
        let report = said
            .record(
                &HttpDriver::new(cp.client()?, &spec)
                    .start(&op.at(Timestamp::now()))
                    .await,
            )
            .map_err(anyhow::Error::msg)?;
        let OpProgress::Failed { reason } = report.progress else {
            panic!("{path}: a redirect elsewhere is not followed: {report:?}");
        };
        assert!(reason.contains("answered 307"), "{path}: {reason}");
    }
    assert!(elsewhere_seen.lock().is_ok_and(|s| s.is_empty()));
    assert!(plain_seen.lock().is_ok_and(|s| s.is_empty()));
    // The same origin is followed, with the credentials.
    let spec = action("/same");
    let report = HttpDriver::new(cp.client()?, &spec)
        .start(&op.at(Timestamp::now()))
        .await?;
    assert_eq!(report.progress, OpProgress::Succeeded);
    let seen = plug_seen.lock().map(|s| s.clone()).unwrap_or_default();
    let relay = seen
        .iter()
        .find(|r| r.path_and_query == "/relay")
        .context("the same-origin redirect was followed")?;
    assert_eq!(
        relay
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    said.assert_never_shows(TOKEN);
    Ok(())
}
