//! The pure machine lifecycle core: no I/O, no clock, no tokio. Callers pass `now` in and
//! perform the returned effects.
//!
//! - [`TABLE`]: the transition table, the single definition of what may happen.
//! - [`step`]: one event → new lifecycle + effects (or [`Rejected`]).
//! - [`reconcile`]: level-triggered: the observed world → the events that follow, applied.
//! - [`next_wakeup`]: when to look again (deadlines, retries), from stored timestamps.
//! - [`drive`]: the observe → decide → act loop of one reconcile, for the controller and the
//!   simulator alike.
mod compat;
mod fsm;
mod graph;
mod passes;
mod reconcile;
mod table;
mod types;

pub use compat::*;
pub use fsm::*;
pub use graph::*;
pub use passes::*;
pub use reconcile::*;
pub use table::*;
pub use types::*;

#[cfg(test)]
mod tests;
