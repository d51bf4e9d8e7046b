//! The pure machine lifecycle core: no I/O, no clock, no tokio. Callers pass `now` in and
//! perform the returned effects.
mod types;
pub use types::*;
