//! The Redfish driver against a real BMC: the sushy-tools emulator (tests/support_power/sushy.rs)
//! on loopback with TLS (a test CA) and basic auth, credentials in a Secret of a real API server
//! read by an operator that may get only that Secret. Power state changes in the emulator take
//! effect 1 to 11 s after the reset, so each test polls `check` as the controller would.
mod support;
mod support_power;

use std::time::Duration;

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use kubectl_homelab::operator::api::{Direction, Machine, Redfish};
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::operator::power::redfish::RedfishDriver;
use kubectl_homelab::operator::power::{Driver as _, OpProgress, Report};
use support::pki::Ca;
use support_power::proxy::ignoring_graceful_shutdown;
use support_power::sushy::{FakeSystem, Sushy, SushyOptions};
use support_power::{Op, Transcript, create_secret};

const USER: &str = "homelab";
const PASSWORD: &str = "bmc-Pa55word-9f3k";
const SECRET: &str = "r730-bmc";

/// A BMC (the emulator) with one system in `power_state`, TLS from `ca`, one user.
async fn bmc(ca: &Ca, power_state: &'static str) -> anyhow::Result<Option<Sushy>> {
    Sushy::start(SushyOptions {
        systems: vec![FakeSystem::new("r730", power_state)],
        tls: Some(ca.serving()?),
        users: vec![(USER.to_owned(), PASSWORD.to_owned())],
        disable_power_off: false,
    })
    .await
}

fn redfish(endpoint: &str, ca: &Ca) -> Redfish {
    Redfish {
        endpoint: endpoint.to_owned(),
        credentials_secret: SECRET.to_owned(),
        ca_bundle: Some(ca.cert_pem.clone()),
        ..Redfish::default()
    }
}

/// A plain-HTTP server that answers every request 404 and counts them: the count shows whether
/// a driver sent anything (and so its credentials) at all.
async fn counting_server() -> anyhow::Result<(
    support_power::server::Server,
    std::sync::Arc<std::sync::Mutex<usize>>,
)> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(0_usize));
    let count = seen.clone();
    let listener = support_power::server::serve(None, move |_req| {
        let count = count.clone();
        async move {
            if let Ok(mut c) = count.lock() {
                *c += 1;
            }
            support_power::server::answer(404, "")
        }
    })
    .await?;
    Ok((listener, seen))
}

/// Calls `check` at the times `at` gives until the operation is no longer running.
async fn poll_until_done(
    driver: &RedfishDriver<'_>,
    op: &Op,
    at: impl Fn() -> Timestamp,
    said: &mut Transcript,
) -> anyhow::Result<Report> {
    // The emulator applies a reset within 11 s; 60 s only bounds a broken run.
    for _ in 0..120 {
        let report = said
            .record(&driver.check(&op.at(at())).await)
            .map_err(anyhow::Error::msg)?;
        if report.progress != OpProgress::Running {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("the operation was still running after 60 s")
}

#[tokio::test]
async fn power_on_and_graceful_off_are_confirmed_by_the_bmc() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = Ca::generate()?;
    let Some(sushy) = bmc(&ca, "Off").await? else {
        return Ok(());
    };
    let ns = cp.namespace("redfish-cycle").await?;
    create_secret(
        &cp.client()?,
        &ns,
        SECRET,
        &[("username", USER), ("password", PASSWORD)],
    )
    .await?;
    // The operator may read this one Secret and nothing else.
    let operator = support_power::operator_reading(cp, &ns, &[SECRET]).await?;
    // No systemId: the driver finds the BMC's only system.
    let spec = redfish(&sushy.url, &ca);
    let driver = RedfishDriver::new(operator.client()?, &spec);
    let m = Machine::test("r730")
        .namespace(&ns)
        .desired(PowerState::Off)
        .redfish(spec.clone())
        .build();
    let mut said = Transcript::default();

    let on = Op::new(m.clone(), Direction::On, "on-1", Timestamp::now());
    let started = said
        .record(&driver.start(&on.at(Timestamp::now())).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        started.progress,
        OpProgress::Running,
        "the BMC has not switched yet"
    );
    assert_eq!(started.readback, Some(PowerState::Off));
    assert!(started.recheck_after.is_some(), "a BMC is polled");
    let done = poll_until_done(&driver, &on, Timestamp::now, &mut said).await?;
    assert_eq!(done.progress, OpProgress::Succeeded);
    assert_eq!(
        done.readback,
        Some(PowerState::On),
        "on is what the BMC reports"
    );
    // Starting it again finds it on: nothing more to do.
    let adopted = driver.start(&on.at(Timestamp::now())).await?;
    assert_eq!(
        (adopted.progress, adopted.readback),
        (OpProgress::Succeeded, Some(PowerState::On))
    );

    let off = Op::new(m, Direction::Off, "off-2", Timestamp::now());
    let started = said
        .record(&driver.start(&off.at(Timestamp::now())).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(started.progress, OpProgress::Running);
    let done = poll_until_done(&driver, &off, Timestamp::now, &mut said).await?;
    assert_eq!(done.progress, OpProgress::Succeeded);
    assert_eq!(
        done.readback,
        Some(PowerState::Off),
        "off is confirmed by the BMC"
    );
    assert!(
        said.lines().iter().all(|l| !l.contains("ForceOff")),
        "a graceful shutdown that worked needs no ForceOff: {:?}",
        said.lines()
    );
    said.assert_never_shows(PASSWORD);
    drop(sushy);
    Ok(())
}

#[tokio::test]
async fn an_ignored_graceful_shutdown_escalates_to_force_off_after_the_grace() -> anyhow::Result<()>
{
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = Ca::generate()?;
    let Some(sushy) = bmc(&ca, "On").await? else {
        return Ok(());
    };
    let (proxy, seen) = ignoring_graceful_shutdown(sushy.url.clone(), &ca.serving()?, &ca).await?;
    let ns = cp.namespace("redfish-escalate").await?;
    create_secret(
        &cp.client()?,
        &ns,
        SECRET,
        &[("username", USER), ("password", PASSWORD)],
    )
    .await?;
    let mut spec = redfish(&proxy.url, &ca);
    spec.force_off_after = Some("2m".to_owned());
    let driver = RedfishDriver::new(cp.client()?, &spec);
    let t0 = Timestamp::now();
    let off = Op::new(
        Machine::test("r730")
            .namespace(&ns)
            .desired(PowerState::Off)
            .redfish(spec.clone())
            .build(),
        Direction::Off,
        "off-1",
        t0,
    );
    let mut said = Transcript::default();
    let resets = || seen.lock().map(|s| s.clone()).unwrap_or_default();

    let started = said
        .record(&driver.start(&off.at(t0)).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(started.progress, OpProgress::Running);
    assert_eq!(resets(), vec!["GracefulShutdown"]);

    // Within the grace the driver waits, whatever the BMC says.
    let waiting = said
        .record(
            &driver
                .check(&off.at(t0 + SignedDuration::from_secs(30)))
                .await,
        )
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        (waiting.progress, waiting.readback, waiting.note),
        (OpProgress::Running, Some(PowerState::On), None)
    );
    assert_eq!(
        resets(),
        vec!["GracefulShutdown"],
        "no ForceOff within the grace"
    );

    // The grace is over and the BMC still says On: ForceOff, with a note for the Event.
    let after_grace = t0 + SignedDuration::from_secs(121);
    let escalated = said
        .record(&driver.check(&off.at(after_grace)).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(escalated.progress, OpProgress::Running);
    let note = escalated.note.context("the escalation is reported")?;
    assert!(note.contains("ForceOff") && note.contains("2m"), "{note}");
    assert_eq!(resets(), vec!["GracefulShutdown", "ForceOff"]);

    // Later checks (outside the moment of escalation) only read the state back.
    let later = t0 + SignedDuration::from_secs(130);
    let done = poll_until_done(&driver, &off, || later, &mut said).await?;
    assert_eq!(
        (done.progress, done.readback),
        (OpProgress::Succeeded, Some(PowerState::Off))
    );
    assert_eq!(resets(), vec!["GracefulShutdown", "ForceOff"]);
    said.assert_never_shows(PASSWORD);
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_is_named_but_never_shown() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = Ca::generate()?;
    let Some(sushy) = bmc(&ca, "Off").await? else {
        return Ok(());
    };
    let ns = cp.namespace("redfish-401").await?;
    let wrong = "not-the-Pa55word-x7";
    create_secret(
        &cp.client()?,
        &ns,
        SECRET,
        &[("username", USER), ("password", wrong)],
    )
    .await?;
    let spec = redfish(&sushy.url, &ca);
    let driver = RedfishDriver::new(cp.client()?, &spec);
    let on = Op::new(
        Machine::test("r730")
            .namespace(&ns)
            .desired(PowerState::Off)
            .redfish(spec.clone())
            .build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let mut said = Transcript::default();
    let result = driver.start(&on.at(Timestamp::now())).await;
    assert!(
        matches!(
            result,
            Err(kubectl_homelab::operator::power::PowerError::Config(_))
        ),
        "refused credentials fail the operation: {result:?}"
    );
    let err = said.record(&result).err().unwrap_or_default();
    assert!(
        err.contains("401") && err.contains(&format!("{ns}/{SECRET}")) && err.contains("password"),
        "{err}"
    );
    said.assert_never_shows(wrong);
    said.assert_never_shows(PASSWORD);
    Ok(())
}

#[tokio::test]
async fn an_unknown_system_id_lists_the_ones_the_bmc_has() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = Ca::generate()?;
    let Some(sushy) = Sushy::start(SushyOptions {
        systems: vec![
            FakeSystem::new("r730", "Off"),
            FakeSystem::new("r630", "Off"),
        ],
        tls: Some(ca.serving()?),
        users: vec![(USER.to_owned(), PASSWORD.to_owned())],
        disable_power_off: false,
    })
    .await?
    else {
        return Ok(());
    };
    let ns = cp.namespace("redfish-404").await?;
    create_secret(
        &cp.client()?,
        &ns,
        SECRET,
        &[("username", USER), ("password", PASSWORD)],
    )
    .await?;
    let mut spec = redfish(&sushy.url, &ca);
    spec.system_id = Some("System.Embedded.9".to_owned());
    let driver = RedfishDriver::new(cp.client()?, &spec);
    let on = Op::new(
        Machine::test("r730")
            .namespace(&ns)
            .desired(PowerState::Off)
            .redfish(spec.clone())
            .build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let err = driver
        .start(&on.at(Timestamp::now()))
        .await
        .err()
        .context("an unknown system is an error")?
        .to_string();
    let r730 = FakeSystem::new("r730", "Off").uuid;
    assert!(
        err.contains("System.Embedded.9") && err.contains("404") && err.contains(&r730),
        "{err}"
    );

    // Two systems and no systemId: the driver does not guess.
    spec.system_id = None;
    let driver = RedfishDriver::new(cp.client()?, &spec);
    let err = driver
        .start(&on.at(Timestamp::now()))
        .await
        .err()
        .context("two systems need a systemId")?
        .to_string();
    assert!(
        err.contains("2 systems") && err.contains("systemId"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_bmc_down_mid_operation_is_transient_and_the_operation_resumes() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = Ca::generate()?;
    let Some(mut sushy) = bmc(&ca, "Off").await? else {
        return Ok(());
    };
    let ns = cp.namespace("redfish-down").await?;
    create_secret(
        &cp.client()?,
        &ns,
        SECRET,
        &[("username", USER), ("password", PASSWORD)],
    )
    .await?;
    let spec = redfish(&sushy.url, &ca);
    let driver = RedfishDriver::new(cp.client()?, &spec);
    let on = Op::new(
        Machine::test("r730")
            .namespace(&ns)
            .desired(PowerState::Off)
            .redfish(spec.clone())
            .build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let mut said = Transcript::default();
    said.record(&driver.start(&on.at(Timestamp::now())).await)
        .map_err(anyhow::Error::msg)?;

    sushy.stop();
    let result = driver.check(&on.at(Timestamp::now())).await;
    assert!(
        matches!(
            result,
            Err(kubectl_homelab::operator::power::PowerError::Transient(_))
        ),
        "an unreachable BMC is retried, not a failed attempt: {result:?}"
    );
    let err = said.record(&result).err().unwrap_or_default();
    assert!(
        err.contains("unreachable") && err.contains(&sushy.url),
        "{err}"
    );

    // Back with the state it had: the operation carries on to the readback.
    sushy.restart().await?;
    let done = poll_until_done(&driver, &on, Timestamp::now, &mut said).await?;
    assert_eq!(
        (done.progress, done.readback),
        (OpProgress::Succeeded, Some(PowerState::On))
    );
    said.assert_never_shows(PASSWORD);
    Ok(())
}

#[tokio::test]
async fn tls_is_verified_unless_the_owner_opts_out() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = Ca::generate()?;
    let Some(sushy) = bmc(&ca, "On").await? else {
        return Ok(());
    };
    let ns = cp.namespace("redfish-tls").await?;
    create_secret(
        &cp.client()?,
        &ns,
        SECRET,
        &[("username", USER), ("password", PASSWORD)],
    )
    .await?;
    let mut spec = redfish(&sushy.url, &ca);
    spec.ca_bundle = None;
    let on = Op::new(
        Machine::test("r730")
            .namespace(&ns)
            .desired(PowerState::Off)
            .redfish(spec.clone())
            .build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    let err = RedfishDriver::new(cp.client()?, &spec)
        .start(&on.at(Timestamp::now()))
        .await
        .err()
        .context("a certificate from an unknown CA is refused")?
        .to_string();
    assert!(
        err.contains("caBundle") && err.contains("insecureSkipVerify"),
        "{err}"
    );

    spec.insecure_skip_verify = Some(true);
    let report = RedfishDriver::new(cp.client()?, &spec)
        .start(&on.at(Timestamp::now()))
        .await?;
    assert_eq!(
        (report.progress, report.readback),
        (OpProgress::Succeeded, Some(PowerState::On))
    );
    Ok(())
}

#[tokio::test]
async fn a_reset_the_bmc_refuses_fails_with_its_message() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = Ca::generate()?;
    let Some(sushy) = Sushy::start(SushyOptions {
        systems: vec![FakeSystem::new("r730", "On")],
        tls: Some(ca.serving()?),
        users: vec![(USER.to_owned(), PASSWORD.to_owned())],
        disable_power_off: true,
    })
    .await?
    else {
        return Ok(());
    };
    let ns = cp.namespace("redfish-refused").await?;
    create_secret(
        &cp.client()?,
        &ns,
        SECRET,
        &[("username", USER), ("password", PASSWORD)],
    )
    .await?;
    let spec = redfish(&sushy.url, &ca);
    let off = Op::new(
        Machine::test("r730")
            .namespace(&ns)
            .desired(PowerState::Off)
            .redfish(spec.clone())
            .build(),
        Direction::Off,
        "off-1",
        Timestamp::now(),
    );
    let result = RedfishDriver::new(cp.client()?, &spec)
        .start(&off.at(Timestamp::now()))
        .await;
    let Err(kubectl_homelab::operator::power::PowerError::Config(err)) = result else {
        panic!("a refused reset fails the operation: {result:?}");
    };
    assert!(
        err.contains("GracefulShutdown") && err.contains("400") && err.contains("disabled"),
        "{err}"
    );
    Ok(())
}

/// examples/redfish.yaml as written (its Secret, its driver settings, `systemId:
/// System.Embedded.1` which the emulator serves by redirecting the name to its id), with only
/// the endpoint pointed at the emulator.
#[tokio::test]
async fn the_redfish_example_powers_the_emulated_server_on_and_off() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ca = Ca::generate()?;
    let Some(sushy) = Sushy::start(SushyOptions {
        systems: vec![FakeSystem::new("System.Embedded.1", "Off")],
        tls: Some(ca.serving()?),
        users: vec![("homelab".to_owned(), "change-me".to_owned())],
        disable_power_off: false,
    })
    .await?
    else {
        return Ok(());
    };
    let ns = cp.namespace("redfish-example").await?;
    let client = cp.client()?;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/redfish.yaml");
    support::apply::apply_file_moved(
        &client,
        &ns,
        &example,
        true,
        &[("https://192.168.1.20", &sushy.url)],
    )
    .await?;
    let m = kube::Api::<kubectl_homelab::operator::api::Machine>::namespaced(client.clone(), &ns)
        .get("r730")
        .await?;
    let mut said = Transcript::default();
    for (direction, id, want) in [
        (Direction::On, "on-1", PowerState::On),
        (Direction::Off, "off-2", PowerState::Off),
    ] {
        let kubectl_homelab::operator::api::PowerDriver::Redfish(written) =
            m.power_driver(direction)?
        else {
            panic!("examples/redfish.yaml uses redfish both ways");
        };
        let driver = RedfishDriver::new(client.clone(), written);
        let op = Op::new(m.clone(), direction, id, Timestamp::now());
        said.record(&driver.start(&op.at(Timestamp::now())).await)
            .map_err(anyhow::Error::msg)?;
        let done = poll_until_done(&driver, &op, Timestamp::now, &mut said).await?;
        assert_eq!(
            (done.progress, done.readback),
            (OpProgress::Succeeded, Some(want))
        );
    }
    said.assert_never_shows("change-me");
    Ok(())
}

/// The BMC's credentials go over TLS unless the owner opted in: an `http://` endpoint is refused
/// before the Secret is read (a listener at the address gets no request at all), naming the
/// field and both fixes; with `allowInsecure: true` the same driver powers the emulator on over
/// plain HTTP.
#[tokio::test]
async fn an_http_endpoint_is_refused_unless_allow_insecure() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("redfish-http").await?;
    create_secret(
        &cp.client()?,
        &ns,
        SECRET,
        &[("username", USER), ("password", PASSWORD)],
    )
    .await?;
    let (listener, seen) = counting_server().await?;
    let plain = Redfish {
        endpoint: listener.url.clone(),
        credentials_secret: SECRET.to_owned(),
        ..Redfish::default()
    };
    let on = |spec: &Redfish| {
        Op::new(
            Machine::test("r730")
                .namespace(&ns)
                .desired(PowerState::Off)
                .redfish(spec.clone())
                .build(),
            Direction::On,
            "on-1",
            Timestamp::now(),
        )
    };
    let op = on(&plain);
    let result = RedfishDriver::new(cp.client()?, &plain)
        .start(&op.at(Timestamp::now()))
        .await;
    let Err(kubectl_homelab::operator::power::PowerError::Config(err)) = result else {
        panic!("an http:// endpoint is a setting to fix: {result:?}");
    };
    assert!(
        err.starts_with("spec.power.powerOn.redfish.endpoint: ")
            && err.contains("use https://")
            && err.contains("spec.power.powerOn.redfish.allowInsecure: true"),
        "{err}"
    );
    assert_eq!(seen.lock().map(|c| *c).unwrap_or(usize::MAX), 0);

    let Some(sushy) = Sushy::start(SushyOptions {
        systems: vec![FakeSystem::new("r730", "On")],
        tls: None,
        users: vec![(USER.to_owned(), PASSWORD.to_owned())],
        disable_power_off: false,
    })
    .await?
    else {
        return Ok(());
    };
    assert!(sushy.url.starts_with("http://"), "{}", sushy.url);
    let allowed = Redfish {
        endpoint: sushy.url.clone(),
        allow_insecure: Some(true),
        ..plain
    };
    let op = on(&allowed);
    let report = RedfishDriver::new(cp.client()?, &allowed)
        .start(&op.at(Timestamp::now()))
        .await?;
    assert_eq!(
        (report.progress, report.readback),
        (OpProgress::Succeeded, Some(PowerState::On))
    );
    Ok(())
}

/// A credentials Secret whose owner annotated it with `infra.homecluster.dev/endpoints` is
/// sent only there: a Node CR naming another endpoint is refused before any request (the
/// field, the Secret and the annotation named), and the listed endpoint gets the request.
#[tokio::test]
async fn an_annotated_secret_goes_only_to_the_endpoints_it_lists() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("redfish-bound").await?;
    let client = cp.client()?;
    create_secret(
        &client,
        &ns,
        SECRET,
        &[("username", USER), ("password", PASSWORD)],
    )
    .await?;
    let (listener, seen) = counting_server().await?;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), &ns);
    let bind = |endpoints: String| {
        serde_json::json!({ "metadata": { "annotations": {
            kubectl_homelab::operator::power::secret::ENDPOINTS_ANNOTATION: endpoints
        }}})
    };
    let spec = Redfish {
        endpoint: listener.url.clone(),
        credentials_secret: SECRET.to_owned(),
        allow_insecure: Some(true),
        ..Redfish::default()
    };
    let op = Op::new(
        Machine::test("r730")
            .namespace(&ns)
            .desired(PowerState::Off)
            .redfish(spec.clone())
            .build(),
        Direction::On,
        "on-1",
        Timestamp::now(),
    );
    // The driver's error, if it refused to start.
    let start = || async {
        RedfishDriver::new(client.clone(), &spec)
            .start(&op.at(Timestamp::now()))
            .await
            .err()
            .map(|e| e.to_string())
    };

    secrets
        .patch(
            SECRET,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(bind("https://bmc.lan".to_owned())),
        )
        .await?;
    let refused = start()
        .await
        .context("an endpoint the Secret does not list was used")?;
    assert!(
        refused.contains("spec.power.powerOn.redfish.endpoint")
            && refused.contains(&format!("{ns}/{SECRET}"))
            && refused.contains("infra.homecluster.dev/endpoints"),
        "{refused}"
    );
    assert_eq!(seen.lock().map(|c| *c).unwrap_or(usize::MAX), 0);

    secrets
        .patch(
            SECRET,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(bind(format!("https://bmc.lan, {}", listener.url))),
        )
        .await?;
    let _ = start().await;
    assert!(
        seen.lock().map(|c| *c).unwrap_or_default() > 0,
        "the endpoint the Secret lists was never called"
    );
    Ok(())
}
