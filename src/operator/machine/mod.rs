//! The pure machine lifecycle core: no I/O, no clock, no tokio. Callers pass `now` in and
//! perform the returned effects.
//!
//! - [`TABLE`]: the transition table, the single definition of what may happen.
//! - [`step`]: one event → new lifecycle + effects (or [`Rejected`]).
//! - [`reconcile`]: level-triggered: the observed world → the events that follow, applied.
//! - [`next_wakeup`]: when to look again (deadlines, retries), from stored timestamps.
//! - `views`: what others see of a lifecycle (the predecessor's `status.progress` and
//!   `powerState`, CA's instance state).
//! - [`drive`]: the observe → decide → act loop of one reconcile, for the controller and the
//!   simulator alike.
//!
//! Maintenance (`spec.maintenance`) is not a phase: the lifecycle runs as for any machine,
//! towards the desired power maintenance left (`policy::maintenance`), without remediation.
//! `fsm inspect` shows the phase as `Ready (maintenance)` and a MAINTENANCE line with reason,
//! since, until and by below the table.
mod boot;
mod fsm;
mod graph;
mod passes;
mod reconcile;
mod table;
mod types;
mod views;

pub use boot::*;
pub use fsm::*;
pub use graph::*;
pub use passes::*;
pub use reconcile::*;
pub use table::*;
pub use types::*;
pub use views::*;

#[cfg(test)]
mod tests;
