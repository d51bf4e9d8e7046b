//! The poller: reads the meter of every Node CR with `spec.meter` (from the shared watch cache)
//! every `interval` and records the outcome in [`Readings`].
//!
//! - Only machines with a meter are read; each at most once per interval (default 60s, never
//!   more often than [`PollSettings::min_interval`]), with one read in flight per machine.
//! - The first read of a machine is delayed by a random part of its interval (at most
//!   [`PollSettings::max_first_delay`]), so that many meters added at once (or an operator
//!   start) do not fire together.
//! - At most [`PollSettings::concurrency`] reads run at once; each is its own task with its own
//!   HTTP client and timeouts, so a slow meter delays no other machine's read, and nothing here
//!   holds what a power action needs.
//! - A failed read records [`MeterState::Failed`] with the last good reading; the machine
//!   controller turns that into the `PowerMeter` condition and accounts with the model.
//! - A machine deleted, or whose meter was removed, has its reading removed.
//!
//! `run-operator` runs the poller beside the controllers, so only the leader reads the meters
//! (a standby would double the load on every BMC for readings nobody writes).
use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::Client;
use tokio::sync::Semaphore;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{MeterState, Reading, Readings, Sample};
use crate::operator::api::{Machine, Meter, parse_duration};
use crate::operator::cache::{Cache, Change};

/// `spec.meter.interval` when left out.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest interval honoured: a shorter one is read at this rate.
pub const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// How the poller paces its reads.
#[derive(Clone, Debug)]
pub struct PollSettings {
    /// Reads running at once, over all machines.
    pub concurrency: usize,
    /// The shortest interval honoured (tests lower it).
    pub min_interval: Duration,
    /// The longest random delay of a machine's first read.
    pub max_first_delay: Duration,
    /// Longest one read may take, all its requests together (each request also has the
    /// meter's `timeout`).
    pub read_timeout: Duration,
}

impl Default for PollSettings {
    fn default() -> Self {
        PollSettings {
            concurrency: 8,
            min_interval: MIN_INTERVAL,
            max_first_delay: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// Reads the meter of Node CR `machine` once.
pub async fn read(client: &Client, machine: &Machine) -> Result<Sample, String> {
    let namespace = machine.metadata.namespace.as_deref().unwrap_or("default");
    match machine.spec.meter.as_deref() {
        Some(Meter {
            redfish: Some(r), ..
        }) => super::redfish::read(client, machine, r).await,
        Some(Meter { http: Some(h), .. }) => super::http::read(client, namespace, h).await,
        Some(Meter { ipmi: Some(i), .. }) => super::ipmi::read(client, machine, i).await,
        _ => Err("spec.meter sets none of redfish, http or ipmi: set one".to_owned()),
    }
}

/// The interval of `meter`: `interval`, the default when left out or unreadable, never below
/// `min`.
pub fn interval(meter: &Meter, min: Duration) -> Duration {
    let parsed = meter.interval.as_deref().and_then(|v| {
        parse_duration("spec.meter.interval", v)
            .ok()
            .and_then(|d| Duration::try_from(d).ok())
    });
    parsed.unwrap_or(DEFAULT_INTERVAL).max(min)
}

/// One machine the poller reads.
struct Entry {
    machine: Arc<Machine>,
    meter: Meter,
    interval: Duration,
    next: Instant,
    /// A read is in flight.
    busy: bool,
    /// Moves when the meter changes, so that a read of the old meter is not recorded.
    epoch: u64,
}

/// The outcome of one read, for the machine `key` at `epoch`.
struct Outcome {
    key: String,
    epoch: u64,
    result: Result<Sample, String>,
}

/// Polls until dropped (the caller's task ends it; reads in flight are aborted with it).
pub async fn run(cache: Arc<Cache>, readings: Readings, settings: PollSettings) {
    let mut poller = Poller {
        cache,
        readings,
        entries: HashMap::new(),
        permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
        tasks: JoinSet::new(),
        jitter: std::hash::RandomState::new(),
        settings,
        epochs: 0,
    };
    let mut changes = poller.cache.changes();
    let mut dirty = true;
    loop {
        if dirty {
            poller.rescan();
            dirty = false;
        }
        poller.dispatch();
        let next = poller
            .entries
            .values()
            .filter(|e| !e.busy)
            .map(|e| e.next)
            .min();
        tokio::select! {
            change = changes.recv() => match change {
                // Groups and Kubernetes Nodes hold no meter.
                Ok(Change::Machine { .. } | Change::Resync) | Err(RecvError::Lagged(_)) => {
                    dirty = true;
                }
                Ok(_) => {}
                // The cache is gone: nothing changes any more; keep reading what is known.
                Err(RecvError::Closed) => changes = poller.cache.changes(),
            },
            Some(done) = poller.tasks.join_next() => {
                if let Ok(outcome) = done {
                    poller.record(outcome);
                }
            }
            () = sleep_until(next) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Poller {
    cache: Arc<Cache>,
    readings: Readings,
    entries: HashMap<String, Entry>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<Outcome>,
    jitter: std::hash::RandomState,
    settings: PollSettings,
    epochs: u64,
}

impl Poller {
    /// Follows the cache: machines with a meter are added (first read jittered) or updated;
    /// the rest are dropped and their readings removed.
    fn rescan(&mut self) {
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for machine in self.cache.machines().state() {
            let Some(meter) = machine.spec.meter.as_deref() else {
                continue;
            };
            let key = format!(
                "{}/{}",
                machine.metadata.namespace.as_deref().unwrap_or("default"),
                machine.metadata.name.as_deref().unwrap_or_default()
            );
            let interval = interval(meter, self.settings.min_interval);
            seen.insert(key.clone());
            match self.entries.get_mut(&key) {
                Some(e) if e.meter == *meter => {
                    e.machine = machine.clone();
                    if e.interval != interval {
                        e.next = e.next.min(now + interval);
                        e.interval = interval;
                    }
                }
                _ => {
                    self.epochs += 1;
                    let first = now + self.first_delay(&key, interval);
                    self.entries.insert(
                        key,
                        Entry {
                            machine: machine.clone(),
                            meter: meter.clone(),
                            interval,
                            next: first,
                            busy: false,
                            epoch: self.epochs,
                        },
                    );
                }
            }
        }
        self.entries.retain(|k, _| seen.contains(k));
        for (key, _) in self.readings.all() {
            if !seen.contains(&key) {
                self.readings.remove(&key);
            }
        }
    }

    /// A random part of `interval`, at most `max_first_delay`.
    fn first_delay(&self, key: &str, interval: Duration) -> Duration {
        let span = interval.min(self.settings.max_first_delay);
        let nanos = u64::try_from(span.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.jitter.hash_one(key) % nanos)
    }

    /// Starts the reads that are due.
    fn dispatch(&mut self) {
        let now = Instant::now();
        for (key, e) in &mut self.entries {
            if e.busy || e.next > now {
                continue;
            }
            e.busy = true;
            e.next = now + e.interval;
            let (key, epoch) = (key.clone(), e.epoch);
            let machine = e.machine.clone();
            let client = self.cache.client().clone();
            let permits = self.permits.clone();
            let limit = self.settings.read_timeout;
            self.tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let result = match tokio::time::timeout(limit, read(&client, &machine)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "reading the meter (spec.meter) took longer than {limit:?}; stopped"
                    )),
                };
                Outcome { key, epoch, result }
            });
        }
    }

    /// Records a finished read, unless its machine or meter is gone meanwhile.
    fn record(&mut self, outcome: Outcome) {
        let Some(e) = self.entries.get_mut(&outcome.key) else {
            return;
        };
        if e.epoch != outcome.epoch {
            return;
        }
        e.busy = false;
        let now = Timestamp::now();
        let previous = self.readings.get(&outcome.key);
        let state = match outcome.result {
            Ok(sample) => {
                if matches!(previous, Some(MeterState::Failed { .. })) {
                    tracing::info!(machine = %outcome.key, watts = sample.watts, "meter reads again");
                }
                MeterState::Ok(Reading {
                    watts: sample.watts,
                    energy_wh: sample.energy_wh,
                    at: now,
                })
            }
            Err(error) => {
                let (since, last) = match previous {
                    Some(MeterState::Failed { since, last, .. }) => (since, last),
                    Some(MeterState::Ok(r)) => (now, Some(r)),
                    None => (now, None),
                };
                if since == now {
                    tracing::warn!(machine = %outcome.key, %error, "meter read failed");
                } else {
                    tracing::debug!(machine = %outcome.key, %error, "meter read failed");
                }
                MeterState::Failed { error, since, last }
            }
        };
        self.readings.set(&outcome.key, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_defaults_and_has_a_floor() {
        let mut m = Meter::default();
        assert_eq!(interval(&m, MIN_INTERVAL), DEFAULT_INTERVAL);
        m.interval = Some("2s".to_owned());
        assert_eq!(interval(&m, MIN_INTERVAL), MIN_INTERVAL);
        m.interval = Some("5m".to_owned());
        assert_eq!(interval(&m, MIN_INTERVAL), Duration::from_secs(300));
    }
}
