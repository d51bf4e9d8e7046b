//! Live energy accounting against the pure model: the real operator (its controllers against a
//! real control plane, the harness world playing the kubelet and the Job controller) drives a
//! machine through a scripted timeline (off, power-on, busy pods, idle, power-off, a power-on
//! whose machine never boots), and its `status.energy` is compared with what the pure core
//! (`operator::energy`, which `simulate` uses too) computes for the same timeline and model.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use kubectl_homelab::operator::api::{
    Electricity, EnergyCounters, EnergySource, Group, Machine, TimeOfUse, Watts,
};
use kubectl_homelab::operator::controller::Settings;
use kubectl_homelab::operator::energy::{self, PowerPhase, Span, Tariff};
use kubectl_homelab::operator::machine::{Phase, Policy, PowerState};
use serde_json::json;
use support::{Background, ControlPlane, FakeNode, World};

const WAIT: Duration = Duration::from_secs(45);
/// `--energy-write-interval` of the test: short, so the counters are written every second
/// while the machine is on.
const WRITE_INTERVAL: Duration = Duration::from_secs(1);

fn model() -> Watts {
    Watts {
        standby: Some(2.0),
        boot: Some(45.0),
        idle: Some(20.0),
        busy: Some(60.0),
        shutdown: Some(25.0),
        ..Watts::default()
    }
}

/// The Group's tariff: half price in the first half of each UTC day.
fn group_tariff() -> Electricity {
    Electricity {
        price_per_kwh: 0.40,
        currency: Some("CHF".into()),
        time_of_use: vec![TimeOfUse {
            from: "0s".into(),
            to: "12h".into(),
            price_per_kwh: 0.20,
        }],
        time_zone: None,
    }
}

async fn start_operator(cp: &ControlPlane, ns: &str) -> anyhow::Result<Background> {
    let settings = Settings {
        poll_interval: Duration::from_millis(500),
        concurrency: 4,
        energy_write_interval: WRITE_INTERVAL,
        // Overridden by the Group's tariff.
        electricity: Some(Electricity {
            price_per_kwh: 1.0,
            currency: Some("EUR".into()),
            ..Electricity::default()
        }),
        policy: Policy {
            backoff_base: jiff::SignedDuration::from_secs(1),
            backoff_cap: jiff::SignedDuration::from_secs(2),
            max_attempts: 1,
            ..Policy::default()
        },
        ..Settings::default()
    };
    support::operator::start(cp, ns, settings).await
}

fn busy_pod(name: &str, cpu: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "containers": [{ "name": "c", "image": "example.org/work:1",
                                   "resources": { "requests": { "cpu": cpu } } }] },
    }))?)
}

struct Lab {
    ns: String,
    client: Client,
    world: World,
}

impl Lab {
    fn machines(&self) -> Api<Machine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn set_power(&self, p: &str) -> anyhow::Result<()> {
        let patch = json!({ "spec": { "powerState": p } });
        self.machines()
            .patch("m1", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn wait(&self, what: &str, check: impl Fn(&Machine) -> bool) -> anyhow::Result<Machine> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let m = self.machines().get("m1").await?;
            if check(&m) {
                return Ok(m);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "waited {WAIT:?} for {what}; status: {}",
                    serde_json::to_string_pretty(&m.status).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_phase(&self, phase: Phase) -> anyhow::Result<Machine> {
        self.wait(&format!("phase {phase}"), |m| {
            m.lifecycle().phase() == phase
        })
        .await
    }

    /// Completes the machine's unfinished power Job of `direction`.
    async fn complete_job(&self, direction: &str) -> anyhow::Result<()> {
        use kubectl_homelab::operator::power::job::{DIRECTION_LABEL, MACHINE_LABEL};
        let api: Api<k8s_openapi::api::batch::v1::Job> =
            Api::namespaced(self.client.clone(), &self.ns);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let lp = kube::api::ListParams::default().labels(&format!("{MACHINE_LABEL}=m1"));
            let job = api.list(&lp).await?.items.into_iter().find(|j| {
                j.labels().get(DIRECTION_LABEL).map(String::as_str) == Some(direction)
                    && !support::world::job_finished(j)
            });
            if let Some(j) = job {
                self.world.complete_job(&self.ns, &j.name_any()).await?;
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no power-{direction} Job after {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every version of the Node CR `m1` the watch delivers, in order.
fn record(api: Api<Machine>) -> (Arc<Mutex<Vec<Machine>>>, Background) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=m1");
        let mut stream = watcher(api, config).applied_objects().boxed();
        while let Some(item) = stream.next().await {
            if let (Ok(m), Ok(mut seen)) = (item, sink.lock()) {
                seen.push(m);
            }
        }
    });
    (seen, Background::from(task))
}

/// Each accounting the operator wrote: `until` and the power phase from then on (the phase of
/// the first version that carries that `until`).
fn accountings(versions: &[Machine]) -> Vec<(Timestamp, PowerPhase)> {
    let mut out: Vec<(Timestamp, PowerPhase)> = Vec::new();
    for m in versions {
        let Some(status) = &m.status else { continue };
        let Some(until) = status.energy.as_ref().and_then(|e| e.until) else {
            continue;
        };
        if out.last().is_none_or(|(u, _)| *u != until) {
            out.push((
                until,
                PowerPhase::of(status.lifecycle.phase(), status.power_state),
            ));
        }
    }
    out
}

fn within(what: &str, got: f64, want: f64, rel: f64) -> anyhow::Result<()> {
    let tolerance = want.abs() * rel + 1e-9;
    anyhow::ensure!(
        (got - want).abs() <= tolerance,
        "{what}: the operator says {got}, the model {want} (more than {:.1} % apart)",
        rel * 100.0
    );
    Ok(())
}

/// The operator's `status.energy` after off → on → busy → idle → off → a failed boot equals,
/// within 1 %, the pure core's accrual of the same phases (each interval between two of the
/// operator's accountings at the phase in force, on at the CPU load of the pods present) and
/// the same tariff; boots count the completed power-ons only, the Group's tariff wins over the
/// operator's, and nothing is estimated.
#[tokio::test]
async fn status_energy_matches_the_pure_model_over_a_scripted_timeline() -> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("energy").await?;
    let client = cp.client()?;
    let mut group = Group::test("g").namespace(&ns).min(0).max(3).build();
    group.spec.electricity = Some(group_tariff());
    Api::<Group>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &group)
        .await
        .context("creating Group g")?;
    let _operator = start_operator(cp, &ns).await?;
    let lab = Lab {
        world: World::new(client.clone()),
        ns: ns.clone(),
        client: client.clone(),
    };
    let (versions, _recorder) = record(lab.machines());
    let node = cp.unique_name("energy");
    let m = Machine::test("m1")
        .namespace(&ns)
        .group("g")
        .desired(PowerState::Off)
        .capacity([("cpu", "4"), ("memory", "8Gi"), ("pods", "110")])
        .node_name(&node)
        .boot_timeout("3s")
        .spec_with(|s| s.watts = Some(model()))
        .build();
    lab.machines().create(&PostParams::default(), &m).await?;
    lab.wait_phase(Phase::Off).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Power on, boot, Ready.
    lab.set_power("on").await?;
    lab.complete_job("on").await?;
    lab.wait_phase(Phase::Booting).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.world
        .node_up(&FakeNode::new(&node).adoptable().capacity("4", "8Gi"))
        .await?;
    lab.wait_phase(Phase::Ready).await?;

    // Busy: 2 of 4 CPUs requested.
    let busy_from = Timestamp::now();
    for name in ["work-1", "work-2"] {
        lab.world
            .create_bound_pod(&ns, busy_pod(name, "1")?, &node)
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Idle again.
    let busy_until = Timestamp::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for name in ["work-1", "work-2"] {
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Power off.
    lab.set_power("off").await?;
    lab.complete_job("off").await?;
    lab.world.node_ready(&node, false).await?;
    lab.wait_phase(Phase::Off).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A power-on whose machine never registers: Failed at its boot deadline (one attempt).
    lab.set_power("on").await?;
    lab.complete_job("on").await?;
    lab.wait_phase(Phase::Failed).await?;
    // Failed with the power observed on keeps being accounted every interval; observed off, the
    // Failed transition was the last write. Either way, the latest counters are compared.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = lab.machines().get("m1").await?;
    let got: EnergyCounters = last
        .status
        .as_ref()
        .and_then(|s| s.energy.as_deref())
        .cloned()
        .context("no status.energy")?;
    // The watch may deliver the last version a moment after the GET.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let versions = versions.lock().map(|v| v.clone()).unwrap_or_default();
    let marks: Vec<_> = accountings(&versions)
        .into_iter()
        .filter(|(u, _)| Some(*u) <= got.until)
        .collect();
    anyhow::ensure!(marks.len() > 10, "too few accountings seen: {marks:?}");
    anyhow::ensure!(
        marks.last().map(|m| m.0) == got.until,
        "the watch did not see the last accounting: {marks:?} vs {:?}",
        got.until
    );

    // The same timeline through the pure core.
    let tariff = Tariff::from_api(&group_tariff(), TimeZone::UTC).map_err(anyhow::Error::msg)?;
    let watts = model();
    let mut want = EnergyCounters::default();
    for pair in marks.windows(2) {
        let ((from, phase), (to, _)) = (pair[0], pair[1]);
        // The operator reads the load when it accounts: the pods present at `to`.
        let load = if busy_from < to && to < busy_until {
            0.5
        } else {
            0.0
        };
        want = energy::accrue(
            &want,
            &Span {
                from,
                to,
                phase,
                watts: energy::draw(Some(&watts), phase, load),
                metered: false,
                baseline_watts: energy::baseline_draw(Some(&watts)),
                estimated: false,
            },
            Some(&tariff),
        );
    }
    let phases: Vec<PowerPhase> = marks.iter().map(|m| m.1).collect();
    for p in [
        PowerPhase::Off,
        PowerPhase::Booting,
        PowerPhase::On,
        PowerPhase::ShuttingDown,
    ] {
        anyhow::ensure!(
            phases.contains(&p),
            "the timeline never was {p:?}: {marks:?}"
        );
    }
    let (on, off) = (got.on_seconds as f64, got.off_seconds as f64);
    within("on seconds", on, want.on_seconds as f64, 0.01)?;
    within("off seconds", off, want.off_seconds as f64, 0.01)?;
    within("watt-hours", got.watt_hours, want.watt_hours, 0.01)?;
    within(
        "busy watt-hours (on)",
        got.watt_hours_by_phase.on,
        want.watt_hours_by_phase.on,
        0.01,
    )?;
    within(
        "baseline watt-hours",
        got.baseline_watt_hours,
        want.baseline_watt_hours,
        0.01,
    )?;
    within("cost", got.cost, want.cost, 0.01)?;
    within("baseline cost", got.baseline_cost, want.baseline_cost, 0.01)?;
    anyhow::ensure!(
        got.watt_hours_by_phase.on
            > energy::draw(Some(&watts), PowerPhase::On, 0.0).unwrap_or(0.0) * 8.0 / 3600.0,
        "the busy pods raised the draw above idle: {got:?}"
    );
    assert_eq!(
        got.boots, 1,
        "one completed power-on; the failed boot is not one"
    );
    assert_eq!(got.currency.as_deref(), Some("CHF"), "the Group's tariff");
    assert_eq!(got.source, Some(EnergySource::Model));
    assert_eq!(got.estimated_seconds, 0);
    assert_eq!(got.metered_watt_hours, 0.0);
    let day_seconds: u64 = got.days.iter().map(|d| d.on_seconds + d.off_seconds).sum();
    assert_eq!(day_seconds, got.on_seconds + got.off_seconds);
    Ok(())
}

/// A restarted operator continues the counters it finds: the time it was not running is
/// accounted at the phase on both sides (on: the on draw) and counted in `estimatedSeconds`,
/// and the time since at the model as usual.
#[tokio::test]
async fn a_restarted_operator_continues_the_counters_and_estimates_its_downtime()
-> anyhow::Result<()> {
    let Some(cp) = support::shared().await? else {
        return Ok(());
    };
    let ns = cp.namespace("energy-restart").await?;
    let client = cp.client()?;
    let group = Group::test("g").namespace(&ns).min(0).max(3).build();
    Api::<Group>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &group)
        .await
        .context("creating Group g")?;
    let lab = Lab {
        world: World::new(client.clone()),
        ns: ns.clone(),
        client: client.clone(),
    };
    // A machine already running when its Node CR is created: adopted as Ready.
    let node = cp.unique_name("restart");
    lab.world
        .node_up(
            &FakeNode::new(&node)
                .adoptable()
                .provider_id(&format!("homelab://{ns}/m1"))
                .capacity("4", "8Gi"),
        )
        .await?;
    let m = Machine::test("m1")
        .namespace(&ns)
        .group("g")
        .desired(PowerState::On)
        .node_name(&node)
        .spec_with(|s| s.watts = Some(model()))
        .build();
    lab.machines().create(&PostParams::default(), &m).await?;
    let first = start_operator(cp, &ns).await?;
    lab.wait_phase(Phase::Ready).await?;
    let energy = |m: &Machine| m.status.as_ref().and_then(|s| s.energy.as_deref()).cloned();
    let before = lab
        .wait("2 s on accounted", |m| {
            energy(m).is_some_and(|e| e.on_seconds >= 2)
        })
        .await?;
    drop(first);
    let before = energy(&before).context("no status.energy")?;
    // Let an in-flight write land, then take the counters the next operator will find.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = energy(&lab.machines().get("m1").await?).context("no status.energy")?;
    anyhow::ensure!(stopped.since == before.since);
    let down = Duration::from_secs(5);
    tokio::time::sleep(down).await;
    let _second = start_operator(cp, &ns).await?;
    let stopped_until = stopped.until.context("no until")?;
    let after = lab
        .wait("an accounting by the restarted operator", |m| {
            energy(m).is_some_and(|e| e.until.is_some_and(|u| u > stopped_until))
        })
        .await?;
    let after = energy(&after).context("no status.energy")?;
    assert_eq!(after.since, stopped.since, "the counters continue");
    let until = after.until.context("no until")?;
    // Whole seconds between the floors of the ends, as the counters count them.
    let elapsed = u64::try_from(until.as_second() - stopped_until.as_second())?;
    assert!(
        after.estimated_seconds >= down.as_secs() && after.estimated_seconds <= elapsed,
        "the downtime ({down:?}) is an estimate: {after:?}"
    );
    assert_eq!(after.off_seconds, 0);
    assert_eq!(after.on_seconds, stopped.on_seconds + elapsed);
    let on_watts = energy::draw(Some(&model()), PowerPhase::On, 0.0).unwrap_or(0.0);
    within(
        "watt-hours across the restart",
        after.watt_hours - stopped.watt_hours,
        on_watts * until.duration_since(stopped_until).as_secs_f64() / 3600.0,
        0.01,
    )?;
    assert_eq!(
        after.currency.as_deref(),
        Some("EUR"),
        "the operator's tariff"
    );
    Ok(())
}
