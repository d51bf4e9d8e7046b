//! The machine controller's energy edge: what the pure accounting (`operator::energy`) is
//! given (the Group's or the operator's tariff with its time zone resolved, the meter's
//! reading, the CPU requested on the Node), and when `status.energy` is written: on a
//! lifecycle transition, a completed power-on, a write made for another reason, or every
//! `--energy-write-interval` while powered. An unpowered machine that is unchanged is never
//! written.
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;

use crate::operator::kube_node::KubeNode;
use kube::ResourceExt as _;

use super::{group_of, pods_on};
use crate::lock;
use crate::operator::api::{Electricity, Machine, MachineStatus};
use crate::operator::controller::Context;
use crate::operator::energy::{self, Accounting, Metered, PowerPhase, Tariff};
use crate::operator::meter::MeterState;

/// The tariff in force for `m`: its Group's `spec.electricity`, else the operator's
/// `--electricity`, else none.
fn tariff(ctx: &Context, m: &Machine) -> Option<Tariff> {
    let group = group_of(ctx, m);
    let e: &Electricity = group
        .as_deref()
        .and_then(|g| g.spec.electricity.as_ref())
        .or(ctx.settings.electricity.as_ref())?;
    let zone = match e.time_zone.as_deref() {
        None => TimeZone::UTC,
        Some(name) => TimeZone::get(name).unwrap_or_else(|err| {
            tracing::warn!(machine = %m.object_ref(), zone = name, error = %err, "unknown electricity timeZone; pricing by UTC");
            TimeZone::UTC
        }),
    };
    match Tariff::from_api(e, zone) {
        Ok(t) => Some(t),
        Err(problem) => {
            tracing::warn!(machine = %m.object_ref(), problem, "electricity tariff not usable; no cost is counted");
            None
        }
    }
}

/// CPU requested by the pods running on `node` over its allocatable CPU (0 when unknown).
pub(super) fn cpu_fraction(node: Option<&KubeNode>, pods: &[Pod]) -> f64 {
    let allocatable = node
        .and_then(|n| n.allocatable().get("cpu"))
        .and_then(crate::quantity::parse_quantity)
        .unwrap_or(0.0);
    if allocatable <= 0.0 {
        return 0.0;
    }
    let requested: f64 = pods
        .iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| &s.containers)
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("cpu"))
        .filter_map(|q| crate::quantity::parse_quantity(&q.0))
        .sum();
    requested / allocatable
}

/// What the energy step needs from the reconcile.
pub(super) struct Step<'a> {
    pub m: &'a Machine,
    /// The status as stored when the reconcile began.
    pub stored: &'a MachineStatus,
    /// The status as last written (the stored one, or this reconcile's write before acting).
    pub written: &'a MachineStatus,
    pub node: Option<&'a KubeNode>,
    pub node_name: Option<&'a str>,
    pub booted: u64,
    pub now: Timestamp,
}

/// Sets `status.energy` when a write is due (see the module doc), else keeps the written
/// counters so an unchanged machine is not written. Returns when the counters are next due.
pub(super) async fn account(
    ctx: &Context,
    step: &Step<'_>,
    status: &mut MachineStatus,
) -> Option<Timestamp> {
    let (m, now) = (step.m, step.now);
    let interval = SignedDuration::try_from(ctx.settings.energy_write_interval)
        .unwrap_or(SignedDuration::from_mins(15));
    let before = PowerPhase::of(step.stored.lifecycle.phase(), step.stored.power_state);
    let after = PowerPhase::of(status.lifecycle.phase(), status.power_state);
    let stored = step.stored.energy.as_deref();
    let other_change = {
        let mut probe = status.clone();
        probe.energy = step.written.energy.clone();
        probe != *step.written
    };
    let due = energy::needs_write(stored, before, interval, now)
        || energy::needs_write(stored, after, interval, now);
    if !(other_change || before != after || step.booted > 0 || due) {
        status.energy = step.written.energy.clone();
        return energy::next_write(stored, after, interval);
    }
    let watts = m.spec.watts.as_ref();
    // Load matters only while on, and only when busy differs from idle: the pods are listed
    // then (at most once per write interval), not on every reconcile.
    let cpu_fraction = match (before, watts, step.node_name) {
        (PowerPhase::On, Some(w), Some(node)) if w.busy() != w.idle() => {
            match pods_on(ctx, node).await {
                Ok(pods) => cpu_fraction(step.node, &pods),
                Err(e) => {
                    tracing::warn!(machine = %m.object_ref(), error = %crate::operator::error_chain(&e), "listing pods for the load figure failed; counting idle");
                    0.0
                }
            }
        }
        _ => 0.0,
    };
    let key = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
    let metered = m.spec.meter.as_ref().and_then(|_| {
        let state = ctx.settings.meters.get(&key)?;
        let reading = *state.reading()?;
        let mut marks = lock(&ctx.meter_marks);
        let average = energy::metered_watts(
            marks.get(&key).copied(),
            reading.watts,
            reading.energy_wh,
            reading.at,
        );
        match reading.energy_wh {
            Some(wh) => marks.insert(key.clone(), (wh, reading.at)),
            None => marks.remove(&key),
        };
        Some(Metered {
            average,
            current: reading.watts,
        })
    });
    let tariff = tariff(ctx, m);
    let counters = energy::account(
        stored,
        &Accounting {
            before,
            after,
            watts,
            cpu_fraction,
            metered,
            tariff: tariff.as_ref(),
            started: ctx.started,
            write_interval: interval,
            boots: step.booted,
            now,
        },
    );
    let next = energy::next_write(Some(&counters), after, interval);
    status.energy = Some(Box::new(counters));
    next
}

/// The meter state of `m`, when it has `spec.meter`.
pub(super) fn meter_state(ctx: &Context, m: &Machine) -> Option<Option<MeterState>> {
    m.spec.meter.as_ref()?;
    let key = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
    Some(ctx.settings.meters.get(&key))
}
