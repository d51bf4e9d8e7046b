//! The meter poller against real counterparts, reading Node CRs from a real API server through
//! the operator's watch cache: a Redfish mockup with chassis power readings served by
//! `sushy-static` over HTTPS (tests/support_power/redfish_mockup.rs), and stand-ins answering the
//! documented JSON of Shelly Gen1 and Gen2, Tasmota and Home Assistant
//! (tests/support_power/meter_servers.rs). The poller runs with a floor of 1 s on the interval
//! so that a few intervals fit in a test.
mod support;
mod support_power;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kubectl_homelab::operator::api::{
    EnergyUnit, HttpMeter, Machine, Meter, Redfish, RedfishMeter,
};
use kubectl_homelab::operator::cache::{Cache, Scope};
use kubectl_homelab::operator::meter::poll::{self, PollSettings};
use kubectl_homelab::operator::meter::{MeterState, Reading, Readings};
use support::ControlPlane;
use support::pki::Ca;
use support_power::create_secret;
use support_power::meter_servers::{Device, MeterServer};
use support_power::redfish_mockup::RedfishMockup;

const HA_TOKEN: &str = "ha-long-lived-token-7c41d9e2";
const WRONG_TOKEN: &str = "ha-wrong-token-3b8f0a61";
const BMC_PASSWORD: &str = "bmc-Pa55-9d2e";
const WRONG_PASSWORD: &str = "bmc-wrong-Pa55-41c7";

/// A namespace, the operator's cache over it and a poller writing into `readings`.
struct Lab {
    ns: String,
    client: kube::Client,
    readings: Readings,
    poller: tokio::task::JoinHandle<()>,
    _cache: Arc<Cache>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Lab {
    /// A new namespace on `cp`, its cache synced, and the poller (interval floor 1 s) running.
    async fn start(cp: &ControlPlane, prefix: &str, readings: Readings) -> anyhow::Result<Lab> {
        let ns = cp.namespace(prefix).await?;
        let client = cp.client()?;
        let cache = Arc::new(Cache::start(client.clone(), Scope::Namespace(ns.clone())));
        cache.wait_until_ready(Duration::from_secs(30)).await?;
        let settings = PollSettings {
            min_interval: Duration::from_secs(1),
            max_first_delay: Duration::from_millis(300),
            read_timeout: Duration::from_secs(20),
            ..PollSettings::default()
        };
        let poller = tokio::spawn(poll::run(cache.clone(), readings.clone(), settings));
        Ok(Lab {
            ns,
            client,
            readings,
            poller,
            _cache: cache,
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.ns)
    }

    fn api(&self) -> Api<Machine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn create(&self, m: kubectl_homelab::testing::MachineBuilder) -> anyhow::Result<()> {
        let m = m.namespace(&self.ns).build();
        self.api().create(&PostParams::default(), &m).await?;
        Ok(())
    }

    async fn secret(&self, name: &str, pairs: &[(&str, &str)]) -> anyhow::Result<()> {
        create_secret(&self.client, &self.ns, name, pairs).await
    }

    /// Waits (up to 20 s) until the state of `name`'s meter satisfies `ok`.
    async fn wait(
        &self,
        name: &str,
        what: &str,
        ok: impl Fn(Option<&MeterState>) -> bool,
    ) -> anyhow::Result<Option<MeterState>> {
        let key = self.key(name);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.readings.get(&key);
            if ok(state.as_ref()) {
                return Ok(state);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{key}: {what} not seen within 20 s; last state {state:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for a reading of `name` with `watts` (and `energy_wh`, when given).
    async fn reading(
        &self,
        name: &str,
        watts: f64,
        energy_wh: Option<f64>,
    ) -> anyhow::Result<Reading> {
        let state = self
            .wait(name, &format!("a reading of {watts} W"), |s| {
                s.and_then(MeterState::reading)
                    .is_some_and(|r| close(r.watts, watts) && same_energy(r.energy_wh, energy_wh))
            })
            .await?;
        state
            .as_ref()
            .and_then(MeterState::reading)
            .copied()
            .context("no reading")
    }

    /// Waits for `name`'s meter to fail; its error.
    async fn failure(&self, name: &str) -> anyhow::Result<(String, Option<Reading>)> {
        match self
            .wait(name, "a failed read", |s| {
                matches!(s, Some(MeterState::Failed { .. }))
            })
            .await?
        {
            Some(MeterState::Failed { error, last, .. }) => Ok((error, last)),
            other => bail!("not failed: {other:?}"),
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * b.abs().max(1.0)
}

fn same_energy(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => close(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// An http meter of `server` read every second.
fn http_meter(server: &MeterServer, watts_path: &str) -> HttpMeter {
    HttpMeter {
        url: server.url(),
        watts_path: watts_path.to_owned(),
        ..HttpMeter::default()
    }
}

fn every_second(http: HttpMeter) -> Meter {
    Meter {
        http: Some(Box::new(http)),
        interval: Some("1s".to_owned()),
        ..Meter::default()
    }
}

fn machine(name: &str) -> kubectl_homelab::testing::MachineBuilder {
    Machine::test(name)
}

fn home_assistant(unit: &str) -> Device {
    Device::HomeAssistant {
        entity: "sensor.rack_power".to_owned(),
        token: HA_TOKEN.to_owned(),
        unit: unit.to_owned(),
    }
}

/// Home Assistant's sensor over http:// on the LAN, with the token of Secret `secret`.
fn ha_meter(server: &MeterServer, secret: &str) -> HttpMeter {
    HttpMeter {
        secret: Some(secret.to_owned()),
        allow_insecure: Some(true),
        ..http_meter(server, "$.state")
    }
}

async fn control_plane() -> anyhow::Result<Option<&'static ControlPlane>> {
    support::shared().await
}

#[tokio::test]
async fn socket_meters_give_watts_and_their_energy_counter_in_watt_hours() -> anyhow::Result<()> {
    let Some(cp) = control_plane().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "meter-sockets", Readings::default()).await?;
    let gen2 = MeterServer::start(Device::ShellyGen2, 120.5, 5000.0).await?;
    let gen1 = MeterServer::start(Device::ShellyGen1, 60.0, 100.0).await?;
    let tasmota = MeterServer::start(Device::Tasmota, 88.0, 12_345.0).await?;
    let ha = MeterServer::start(home_assistant("kW"), 1500.0, 0.0).await?;
    lab.secret("ha", &[("token", HA_TOKEN)]).await?;

    lab.create(machine("gen2").meter(every_second(HttpMeter {
        energy_path: Some("$.aenergy.total".to_owned()),
        ..http_meter(&gen2, "$.apower")
    })))
    .await?;
    lab.create(machine("gen1").meter(every_second(http_meter(&gen1, "$.meters[0].power"))))
        .await?;
    lab.create(machine("tasmota").meter(every_second(HttpMeter {
        energy_path: Some("$.StatusSNS.ENERGY.Total".to_owned()),
        energy_unit: Some(EnergyUnit::KWh),
        ..http_meter(&tasmota, "$.StatusSNS.ENERGY.Power")
    })))
    .await?;
    lab.create(machine("ha").meter(every_second(ha_meter(&ha, "ha"))))
        .await?;

    lab.reading("gen2", 120.5, Some(5000.0)).await?;
    lab.reading("gen1", 60.0, None).await?;
    // Tasmota's Total is in kWh: 12.345 kWh.
    lab.reading("tasmota", 88.0, Some(12_345.0)).await?;
    // Home Assistant's state "1.5" in kW.
    lab.reading("ha", 1500.0, None).await?;
    assert!(
        ha.authorization()
            .iter()
            .all(|a| a == &format!("Bearer {HA_TOKEN}")),
        "{:?}",
        ha.authorization()
    );

    // A new draw is read at the next interval.
    gen2.set(310.0, 5012.5);
    lab.reading("gen2", 310.0, Some(5012.5)).await?;

    // A machine whose meter is removed, or which is deleted, has no reading any more.
    lab.api()
        .patch(
            "gen1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"meter": null}})),
        )
        .await?;
    lab.api()
        .delete("tasmota", &DeleteParams::default())
        .await?;
    lab.wait("gen1", "no reading", |s| s.is_none()).await?;
    lab.wait("tasmota", "no reading", |s| s.is_none()).await?;
    assert!(lab.readings.get(&lab.key("gen2")).is_some());
    Ok(())
}

#[tokio::test]
async fn redfish_chassis_power_is_read_from_the_bmc() -> anyhow::Result<()> {
    let Some(cp) = control_plane().await? else {
        return Ok(());
    };
    let ca = Ca::generate()?;
    let Some(bmc) = RedfishMockup::start(
        "redfish-meter-mockup",
        &ca.serving()?,
        ("root", BMC_PASSWORD),
    )
    .await?
    else {
        return Ok(());
    };
    let lab = Lab::start(cp, "meter-redfish", Readings::default()).await?;
    lab.secret("bmc", &[("username", "root"), ("password", BMC_PASSWORD)])
        .await?;
    let driver = Redfish {
        endpoint: bmc.url.clone(),
        credentials_secret: "bmc".to_owned(),
        ca_bundle: Some(ca.cert_pem.clone()),
        ..Redfish::default()
    };
    // Everything from the power driver; the chassis the system links (`1U`), whose
    // EnvironmentMetrics has the power and an energy counter in kWh.
    lab.create(machine("r730").redfish(driver).meter(Meter {
        redfish: Some(Box::default()),
        interval: Some("1s".to_owned()),
        ..Meter::default()
    }))
    .await?;
    // Its own connection and a chassis with only the older Power resource.
    lab.create(machine("blade").meter(Meter {
        redfish: Some(Box::new(RedfishMeter {
            endpoint: Some(bmc.url.clone()),
            chassis_id: Some("Enclosure".to_owned()),
            credentials_secret: Some("bmc".to_owned()),
            ca_bundle: Some(ca.cert_pem.clone()),
            ..RedfishMeter::default()
        })),
        interval: Some("1s".to_owned()),
        ..Meter::default()
    }))
    .await?;

    // The BMC refuses a wrong password: the error names the Secret and the 401, not the
    // password.
    lab.secret(
        "bmc-wrong",
        &[("username", "root"), ("password", WRONG_PASSWORD)],
    )
    .await?;
    lab.create(machine("wrong").meter(Meter {
        redfish: Some(Box::new(RedfishMeter {
            endpoint: Some(bmc.url.clone()),
            credentials_secret: Some("bmc-wrong".to_owned()),
            ca_bundle: Some(ca.cert_pem.clone()),
            ..RedfishMeter::default()
        })),
        interval: Some("1s".to_owned()),
        ..Meter::default()
    }))
    .await?;

    lab.reading("r730", 351.0, Some(1_234_500.0)).await?;
    lab.reading("blade", 95.0, None).await?;
    let (error, _) = lab.failure("wrong").await?;
    assert!(
        error.contains(&format!("Secret {}/bmc-wrong", lab.ns)) && error.contains("401"),
        "{error}"
    );
    assert!(!error.contains(WRONG_PASSWORD), "{error}");

    bmc.set(
        "/redfish/v1/Chassis/1U/EnvironmentMetrics",
        "/PowerWatts/Reading",
        serde_json::json!(402.5),
    )?;
    bmc.set(
        "/redfish/v1/Chassis/Enclosure/Power",
        "/PowerControl/0/PowerConsumedWatts",
        serde_json::json!(120.0),
    )?;
    lab.reading("r730", 402.5, Some(1_234_500.0)).await?;
    lab.reading("blade", 120.0, None).await?;
    Ok(())
}

#[tokio::test]
async fn failed_reads_name_the_cause_without_the_secret() -> anyhow::Result<()> {
    let Some(cp) = control_plane().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "meter-fail", Readings::default()).await?;
    let ha = MeterServer::start(home_assistant("W"), 140.0, 0.0).await?;
    let gen2 = MeterServer::start(Device::ShellyGen2, 20.0, 1.0).await?;
    lab.secret("ha-wrong", &[("token", WRONG_TOKEN)]).await?;
    lab.create(machine("ha").meter(every_second(ha_meter(&ha, "ha-wrong"))))
        .await?;
    lab.create(machine("gen2").meter(every_second(http_meter(&gen2, "$.power"))))
        .await?;

    let (error, _) = lab.failure("ha").await?;
    assert!(
        error.contains("answered 401")
            && error.contains(&format!("Secret {}/ha-wrong", lab.ns))
            && error.contains("/api/states/sensor.rack_power"),
        "{error}"
    );
    // The server saw the token; the error does not show it.
    assert!(
        ha.authorization()
            .contains(&format!("Bearer {WRONG_TOKEN}"))
    );
    assert!(!error.contains(WRONG_TOKEN), "{error}");

    let (error, _) = lab.failure("gen2").await?;
    assert!(
        error.contains("spec.meter.http.wattsPath $.power matched nothing")
            && error.contains("apower"),
        "{error}"
    );
    for (key, state) in lab.readings.all() {
        assert!(!format!("{state:?}").contains(WRONG_TOKEN), "{key}");
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_meter_fails_then_recovers_and_the_subscriber_sees_each_flip()
-> anyhow::Result<()> {
    let Some(cp) = control_plane().await? else {
        return Ok(());
    };
    let readings = Readings::default();
    let mut flips = readings.subscribe();
    let lab = Lab::start(cp, "meter-flip", readings).await?;
    let mut gen2 = MeterServer::start(Device::ShellyGen2, 75.0, 10.0).await?;
    lab.create(machine("plug").meter(every_second(http_meter(&gen2, "$.apower"))))
        .await?;
    let key = lab.key("plug");
    let good = lab.reading("plug", 75.0, None).await?;
    let next_flip = async |flips: &mut futures::channel::mpsc::UnboundedReceiver<String>| {
        tokio::time::timeout(Duration::from_secs(20), flips.next())
            .await
            .ok()
            .flatten()
    };
    assert_eq!(next_flip(&mut flips).await.as_deref(), Some(key.as_str()));

    gen2.stop();
    let (error, last) = lab.failure("plug").await?;
    assert!(
        error.contains(&gen2.url()) && error.contains("unreachable") && error.contains("refused"),
        "{error}"
    );
    assert_eq!(last.map(|r| r.watts), Some(good.watts));
    assert_eq!(next_flip(&mut flips).await.as_deref(), Some(key.as_str()));

    gen2.set(80.0, 11.0);
    gen2.restart().await?;
    lab.reading("plug", 80.0, None).await?;
    assert_eq!(next_flip(&mut flips).await.as_deref(), Some(key.as_str()));
    Ok(())
}

#[tokio::test]
async fn the_interval_bounds_the_reads_and_a_slow_meter_delays_no_other() -> anyhow::Result<()> {
    let Some(cp) = control_plane().await? else {
        return Ok(());
    };
    let lab = Lab::start(cp, "meter-pace", Readings::default()).await?;
    let fast = MeterServer::start(Device::ShellyGen2, 50.0, 1.0).await?;
    let slow = MeterServer::start(Device::ShellyGen1, 70.0, 1.0).await?;
    slow.slow(Duration::from_secs(4));
    lab.create(machine("fast").meter(every_second(http_meter(&fast, "$.apower"))))
        .await?;
    lab.create(machine("slow").meter(every_second(HttpMeter {
        timeout: Some("2s".to_owned()),
        ..http_meter(&slow, "$.meters[0].power")
    })))
    .await?;
    lab.reading("fast", 50.0, None).await?;

    let (fast_before, slow_before) = (fast.requests(), slow.requests());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fast_reads = fast.requests() - fast_before;
    let slow_reads = slow.requests() - slow_before;
    // About one read a second (never more; a loaded machine may start one late), whatever the
    // slow meter does meanwhile.
    assert!((3..=6).contains(&fast_reads), "{fast_reads} reads in 5 s");
    // Each slow read gives up after its 2 s timeout; the next starts only then.
    assert!(
        slow_reads <= 3,
        "{slow_reads} reads of the slow meter in 5 s"
    );
    let (error, _) = lab.failure("slow").await?;
    assert!(error.contains("no answer within 2s"), "{error}");
    let fresh = lab
        .readings
        .get(&lab.key("fast"))
        .and_then(|s| s.reading().copied())
        .context("the fast meter has a reading")?;
    let age = jiff::Timestamp::now().duration_since(fresh.at);
    assert!(age < jiff::SignedDuration::from_millis(1500), "{age:?}");
    Ok(())
}
