//! Power meters (`spec.meter`): the latest reading of each machine's meter, shared by the
//! poller that reads the meters, the machine controller (energy accounting and the `PowerMeter`
//! condition) and the metrics.
//!
//! The poller is [`poll`]; the sources it reads are [`redfish`] (a BMC's chassis power) and
//! [`http`] (a smart plug or energy monitor with a JSON API).
pub mod http;
pub mod ipmi;
pub mod poll;
pub mod redfish;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::channel::mpsc;
use jiff::Timestamp;

/// One successful read of a meter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub watts: f64,
    /// The meter's cumulative energy counter in watt-hours, when it has one.
    pub energy_wh: Option<f64>,
    pub at: Timestamp,
}

/// What one read of a meter found, before it is stamped into a [`Reading`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub watts: f64,
    /// The meter's cumulative energy counter, converted to watt-hours.
    pub energy_wh: Option<f64>,
}

/// What the poller knows of one machine's meter.
#[derive(Clone, Debug, PartialEq)]
pub enum MeterState {
    Ok(Reading),
    /// The latest read failed (`error` says why, without secrets); `last` is the latest good
    /// reading, if any.
    Failed {
        error: String,
        since: Timestamp,
        last: Option<Reading>,
    },
}

impl MeterState {
    /// The reading to account with: only a current one.
    pub fn reading(&self) -> Option<&Reading> {
        match self {
            MeterState::Ok(r) => Some(r),
            MeterState::Failed { .. } => None,
        }
    }
}

/// Meter states by Node CR (`namespace/name`). Cheap to clone: one shared map.
#[derive(Clone, Default)]
pub struct Readings {
    states: Arc<RwLock<HashMap<String, MeterState>>>,
    changed: Arc<RwLock<Option<mpsc::UnboundedSender<String>>>>,
}

impl std::fmt::Debug for Readings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.states.read().map_or(0, |s| s.len());
        f.debug_struct("Readings").field("meters", &n).finish()
    }
}

impl Readings {
    /// The state of the meter of Node CR `key` (`namespace/name`).
    pub fn get(&self, key: &str) -> Option<MeterState> {
        self.states.read().ok()?.get(key).cloned()
    }

    /// Every machine's meter state.
    pub fn all(&self) -> Vec<(String, MeterState)> {
        self.states.read().map_or_else(
            |_| Vec::new(),
            |s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        )
    }

    /// Records `state` for `key`. A change between working and failing (or a first state) is
    /// sent to the subscriber, so the machine's condition is written at once; a new reading
    /// of a working meter is not (the controller accounts it at its next write).
    pub fn set(&self, key: &str, state: MeterState) {
        let Ok(mut states) = self.states.write() else {
            return;
        };
        let flipped = match states.get(key) {
            None => true,
            Some(prev) => {
                std::mem::discriminant(prev) != std::mem::discriminant(&state)
                    || matches!((prev, &state), (MeterState::Failed { error: a, .. }, MeterState::Failed { error: b, .. }) if a != b)
            }
        };
        states.insert(key.to_owned(), state);
        drop(states);
        if flipped {
            self.notify(key);
        }
    }

    /// Forgets `key` (its machine was deleted or no longer has a meter).
    pub fn remove(&self, key: &str) {
        if let Ok(mut states) = self.states.write()
            && states.remove(key).is_some()
        {
            drop(states);
            self.notify(key);
        }
    }

    /// Keys (`namespace/name`) whose meter state flipped, from now on (one subscriber).
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded();
        if let Ok(mut changed) = self.changed.write() {
            *changed = Some(tx);
        }
        rx
    }

    fn notify(&self, key: &str) {
        if let Ok(changed) = self.changed.read()
            && let Some(tx) = changed.as_ref()
        {
            let _ = tx.unbounded_send(key.to_owned());
        }
    }
}
