//! The IPMI driver against a real BMC: OpenIPMI's `ipmi_sim` (tests/support_power/ipmi_sim.rs)
//! on loopback, its chassis a script whose power state the test reads, with `ipmitool` as an
//! independent client that cross-checks the state. Credentials are in a Secret of a real API
//! server, read by an operator that may get only that Secret.
//!
//! ipmi_sim 2.0.33 speaks RAKP-HMAC-SHA1 only, so these sessions use cipher suite 3; suite 17
//! (the default) is exercised here only as far as the BMC's refusal of it.
mod support;
mod support_power;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kubectl_homelab::operator::api::{Direction, Ipmi, Machine};
use kubectl_homelab::operator::machine::PowerState;
use kubectl_homelab::operator::power::ipmi::{IpmiDriver, read_power};
use kubectl_homelab::operator::power::{Driver as _, OpProgress, PowerError};
use support_power::ipmi_sim::{IpmiSim, LossyRelay, SimOptions, User};
use support_power::{Op, Transcript, create_secret};

const USER: &str = "homelab";
const PASSWORD: &str = "ipmi-Pa55word-7q2z";
const SECRET: &str = "x10-bmc";

fn admin() -> User {
    User {
        name: USER.to_owned(),
        password: PASSWORD.to_owned(),
        privilege: "admin",
    }
}

async fn sim(power_on: bool, honour_soft_off: bool) -> anyhow::Result<Option<IpmiSim>> {
    IpmiSim::start(SimOptions {
        users: vec![admin()],
        power_on,
        honour_soft_off,
        kg: None,
    })
    .await
}

/// The driver's spec for a BMC on loopback `port`, cipher suite 3 (what ipmi_sim offers).
fn ipmi(port: u16) -> Ipmi {
    Ipmi {
        host: "127.0.0.1".to_owned(),
        port: Some(i32::from(port)),
        credentials_secret: SECRET.to_owned(),
        cipher_suite: Some(3),
        timeout: Some("3s".to_owned()),
        ..Ipmi::default()
    }
}

fn machine(ns: &str, spec: &Ipmi) -> Machine {
    Machine::test("x10")
        .namespace(ns)
        .desired(PowerState::Off)
        .ipmi(spec.clone())
        .build()
}

async fn namespace_with_secret(
    cp: &support::ControlPlane,
    name: &str,
    password: &str,
) -> anyhow::Result<String> {
    let ns = cp.namespace(name).await?;
    create_secret(
        &cp.client()?,
        &ns,
        SECRET,
        &[("username", USER), ("password", password)],
    )
    .await?;
    Ok(ns)
}

/// What ipmitool says of the chassis power: `on` or `off`.
fn ipmitool_power(sim: &IpmiSim) -> anyhow::Result<String> {
    let out = sim.ipmitool(&admin(), &["chassis", "power", "status"])?;
    Ok(out
        .trim()
        .strip_prefix("Chassis Power is ")
        .unwrap_or(out.trim())
        .to_owned())
}

#[tokio::test]
async fn power_on_and_soft_off_are_confirmed_by_the_bmc_and_ipmitool() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let Some(sim) = sim(false, true).await? else {
        return Ok(());
    };
    let ns = namespace_with_secret(cp, "ipmi-cycle", PASSWORD).await?;
    let operator = support_power::operator_reading(cp, &ns, &[SECRET]).await?;
    let spec = ipmi(sim.port);
    let driver = IpmiDriver::new(operator.client()?, &spec);
    let m = machine(&ns, &spec);
    let mut said = Transcript::default();

    let on = Op::new(m.clone(), Direction::On, "on-1", Timestamp::now());
    let started = said
        .record(&driver.start(&on.at(Timestamp::now())).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(started.progress, OpProgress::Running);
    assert_eq!(
        started.readback,
        Some(PowerState::Off),
        "read before the power up"
    );
    assert_eq!(started.accepted.as_deref(), Some("power up"));
    assert!(started.recheck_after.is_some(), "a BMC is polled");
    assert!(sim.power_on(), "the chassis got the power up");
    let done = said
        .record(&driver.check(&on.at(Timestamp::now())).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        (done.progress, done.readback),
        (OpProgress::Succeeded, Some(PowerState::On)),
        "done when Get Chassis Status reads on"
    );
    assert_eq!(ipmitool_power(&sim)?, "on");
    // Starting it again finds it on: nothing more is sent.
    let adopted = driver.start(&on.at(Timestamp::now())).await?;
    assert_eq!(adopted.progress, OpProgress::Succeeded);
    assert_eq!(sim.actions(), ["power 1"]);

    let off = Op::new(m, Direction::Off, "off-2", Timestamp::now());
    let started = said
        .record(&driver.start(&off.at(Timestamp::now())).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(started.progress, OpProgress::Running);
    assert_eq!(started.accepted.as_deref(), Some("soft shutdown"));
    assert!(!started.escalated);
    let done = said
        .record(&driver.check(&off.at(Timestamp::now())).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        (done.progress, done.readback),
        (OpProgress::Succeeded, Some(PowerState::Off))
    );
    assert_eq!(ipmitool_power(&sim)?, "off");
    assert_eq!(
        sim.actions(),
        ["power 1", "shutdown 1"],
        "an honoured soft shutdown needs no power down"
    );
    said.assert_never_shows(PASSWORD);
    Ok(())
}

#[tokio::test]
async fn an_ignored_soft_shutdown_is_followed_by_power_down_after_force_off_after()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let Some(sim) = sim(true, false).await? else {
        return Ok(());
    };
    let ns = namespace_with_secret(cp, "ipmi-escalate", PASSWORD).await?;
    let mut spec = ipmi(sim.port);
    spec.force_off_after = Some("2m".to_owned());
    let driver = IpmiDriver::new(cp.client()?, &spec);
    let t0 = Timestamp::now();
    let off = Op::new(machine(&ns, &spec), Direction::Off, "off-1", t0);
    let mut said = Transcript::default();

    let started = said
        .record(&driver.start(&off.at(t0)).await)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(started.accepted.as_deref(), Some("soft shutdown"));
    assert_eq!(started.readback, Some(PowerState::On));
    // The OS ignores it: within the grace the driver waits.
    let waiting = said
        .record(
            &driver
                .check(&off.at(t0 + SignedDuration::from_secs(30)))
                .await,
        )
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        (waiting.progress.clone(), waiting.escalated),
        (OpProgress::Running, false)
    );
    assert_eq!(sim.actions(), ["shutdown 1"]);
    assert_eq!(ipmitool_power(&sim)?, "on");
    // After forceOffAfter (counted from the operation's start) it powers down, once.
    let escalated = said
        .record(
            &driver
                .check(&off.at(t0 + SignedDuration::from_secs(121)))
                .await,
        )
        .map_err(anyhow::Error::msg)?;
    assert!(escalated.escalated, "{escalated:?}");
    let note = escalated.note.clone().unwrap_or_default();
    assert!(
        note.contains("after the soft shutdown") && note.contains("sent power down"),
        "{note}"
    );
    assert_eq!(sim.actions(), ["shutdown 1", "power 0"]);
    let done = said
        .record(
            &driver
                .check(&off.at(t0 + SignedDuration::from_secs(126)))
                .await,
        )
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        (done.progress, done.readback),
        (OpProgress::Succeeded, Some(PowerState::Off))
    );
    assert_eq!(ipmitool_power(&sim)?, "off");
    said.assert_never_shows(PASSWORD);
    Ok(())
}

#[tokio::test]
async fn a_wrong_password_is_a_config_error_naming_the_secret_not_the_password()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let Some(sim) = sim(false, true).await? else {
        return Ok(());
    };
    let wrong = "not-the-Pa55word-x81";
    let ns = namespace_with_secret(cp, "ipmi-wrong-password", wrong).await?;
    let spec = ipmi(sim.port);
    let driver = IpmiDriver::new(cp.client()?, &spec);
    let on = Op::new(machine(&ns, &spec), Direction::On, "on-1", Timestamp::now());
    let mut said = Transcript::default();
    let result = driver.start(&on.at(Timestamp::now())).await;
    let _ = said.record(&result);
    let Err(PowerError::Config(msg)) = result else {
        panic!("a refused password is not retried: {result:?}");
    };
    assert!(
        msg.contains(&format!("{ns}/{SECRET}")) && msg.contains("check the password"),
        "{msg}"
    );
    assert!(!sim.power_on());
    assert!(sim.actions().is_empty(), "nothing was switched");
    said.assert_never_shows(wrong);
    said.assert_never_shows(PASSWORD);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_bmc_is_transient_and_the_next_call_succeeds() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let Some(mut sim) = sim(false, true).await? else {
        return Ok(());
    };
    let ns = namespace_with_secret(cp, "ipmi-unreachable", PASSWORD).await?;
    let mut spec = ipmi(sim.port);
    spec.timeout = Some("1s".to_owned());
    let driver = IpmiDriver::new(cp.client()?, &spec);
    let on = Op::new(machine(&ns, &spec), Direction::On, "on-1", Timestamp::now());
    sim.stop();
    let begun = std::time::Instant::now();
    let result = driver.start(&on.at(Timestamp::now())).await;
    let Err(PowerError::Transient(msg)) = &result else {
        panic!("an unreachable BMC is transient: {result:?}");
    };
    assert!(
        msg.contains("is unreachable") && msg.contains(".timeout"),
        "{msg}"
    );
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "bounded by the timeout"
    );
    // The BMC is back: the retry (the next reconcile) goes through.
    sim.restart().await?;
    let started = driver.start(&on.at(Timestamp::now())).await?;
    assert_eq!(started.accepted.as_deref(), Some("power up"));
    assert!(sim.power_on());
    Ok(())
}

#[tokio::test]
async fn lost_datagrams_are_sent_again_within_one_call() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let Some(sim) = sim(false, true).await? else {
        return Ok(());
    };
    // The first two datagrams (the Open Session request and its first resend) are lost.
    let relay = LossyRelay::start(sim.port, 2).await?;
    let ns = namespace_with_secret(cp, "ipmi-lossy", PASSWORD).await?;
    let spec = ipmi(relay.port);
    let driver = IpmiDriver::new(cp.client()?, &spec);
    let on = Op::new(machine(&ns, &spec), Direction::On, "on-1", Timestamp::now());
    let started = driver.start(&on.at(Timestamp::now())).await?;
    assert_eq!(started.accepted.as_deref(), Some("power up"));
    assert_eq!(relay.dropped.lock().map(|d| *d).unwrap_or_default(), 2);
    assert!(sim.power_on());
    assert_eq!(ipmitool_power(&sim)?, "on");
    Ok(())
}

#[tokio::test]
async fn a_bmc_without_cipher_suite_17_is_told_apart_from_bad_credentials() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let Some(sim) = sim(false, true).await? else {
        return Ok(());
    };
    let ns = namespace_with_secret(cp, "ipmi-suite", PASSWORD).await?;
    let mut spec = ipmi(sim.port);
    spec.cipher_suite = None; // the default, 17
    let driver = IpmiDriver::new(cp.client()?, &spec);
    let on = Op::new(machine(&ns, &spec), Direction::On, "on-1", Timestamp::now());
    let result = driver.start(&on.at(Timestamp::now())).await;
    let Err(PowerError::Config(msg)) = &result else {
        panic!("a suite the BMC lacks is a configuration error: {result:?}");
    };
    assert!(
        msg.contains("cipher suite 17") && msg.contains("spec.power.powerOn.ipmi.cipherSuite"),
        "{msg}"
    );
    assert!(sim.actions().is_empty());
    Ok(())
}

#[tokio::test]
async fn read_power_of_a_bmc_without_dcmi_is_no_meter() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let Some(sim) = sim(true, true).await? else {
        return Ok(());
    };
    let ns = namespace_with_secret(cp, "ipmi-meter", PASSWORD).await?;
    let spec = ipmi(sim.port);
    let watts = read_power(&cp.client()?, &ns, &spec, "spec.meter.ipmi").await?;
    assert_eq!(watts, None, "ipmi_sim has no DCMI power reading");
    // ipmitool agrees that there is nothing to read.
    assert!(
        sim.ipmitool(&admin(), &["dcmi", "power", "reading"])
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn cipher_suite_0_is_used_only_with_allow_insecure() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let Some(sim) = sim(false, true).await? else {
        return Ok(());
    };
    let ns = namespace_with_secret(cp, "ipmi-suite-0", PASSWORD).await?;
    let mut spec = ipmi(sim.port);
    spec.cipher_suite = Some(0);
    let driver = IpmiDriver::new(cp.client()?, &spec);
    let on = Op::new(machine(&ns, &spec), Direction::On, "on-1", Timestamp::now());
    let result = driver.start(&on.at(Timestamp::now())).await;
    let Err(PowerError::Config(msg)) = &result else {
        panic!("suite 0 without allowInsecure is refused: {result:?}");
    };
    assert!(msg.contains("allowInsecure: true"), "{msg}");
    assert!(sim.actions().is_empty(), "refused before anything was sent");

    spec.allow_insecure = Some(true);
    let driver = IpmiDriver::new(cp.client()?, &spec);
    let on = Op::new(machine(&ns, &spec), Direction::On, "on-2", Timestamp::now());
    let started = driver.start(&on.at(Timestamp::now())).await?;
    assert_eq!(started.accepted.as_deref(), Some("power up"));
    assert!(sim.power_on());
    Ok(())
}
