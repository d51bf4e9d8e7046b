//! An in-memory [`InventorySource`] for tests and benchmarks (the simulator calls the provider
//! core directly and needs no source): persisting applies the change to the snapshot at once
//! (or, with `set_lagging`, only records it, as a slow reflector would).
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::inventory::{Inventory, PowerChange};
use super::service::{InventorySource, PersistError};

pub struct InMemorySource {
    state: Mutex<State>,
    ready: watch::Sender<bool>,
}

struct State {
    inventory: Arc<Inventory>,
    persisted: Vec<PowerChange>,
    fail: Option<String>,
    lagging: bool,
}

impl InMemorySource {
    /// A ready source holding `inventory`.
    pub fn new(inventory: Inventory) -> InMemorySource {
        InMemorySource {
            state: Mutex::new(State {
                inventory: Arc::new(inventory),
                persisted: Vec::new(),
                fail: None,
                lagging: false,
            }),
            ready: watch::Sender::new(true),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.send_replace(ready);
    }

    /// Replaces the inventory (as a reflector update would).
    pub fn replace(&self, inventory: Inventory) {
        self.lock().inventory = Arc::new(inventory);
    }

    /// Every change persisted so far, in order.
    pub fn persisted(&self) -> Vec<PowerChange> {
        self.lock().persisted.clone()
    }

    /// Makes every persist fail with `message` (None: succeed again).
    pub fn fail_persist(&self, message: Option<String>) {
        self.lock().fail = message;
    }

    /// While lagging, persisted changes are recorded but not shown in the snapshot.
    pub fn set_lagging(&self, lagging: bool) {
        self.lock().lagging = lagging;
    }

    /// Applies every persisted change to the snapshot (a lagging reflector catching up).
    pub fn catch_up(&self) {
        let mut s = self.lock();
        let mut inv = (*s.inventory).clone();
        inv.apply_changes(&s.persisted);
        s.inventory = Arc::new(inv);
    }
}

impl InventorySource for InMemorySource {
    fn snapshot(&self) -> Arc<Inventory> {
        self.lock().inventory.clone()
    }

    async fn set_desired_power(&self, changes: &[PowerChange]) -> Result<(), PersistError> {
        let mut s = self.lock();
        if let Some(message) = &s.fail {
            return Err(PersistError {
                applied: Vec::new(),
                message: message.clone(),
            });
        }
        s.persisted.extend_from_slice(changes);
        if !s.lagging {
            let mut inv = (*s.inventory).clone();
            inv.apply_changes(changes);
            s.inventory = Arc::new(inv);
        }
        Ok(())
    }

    async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives as long as self, so this only ends when ready.
        let _ = rx.wait_for(|r| *r).await;
    }
}
