//! The owner's week as pure decisions: which minimum and warm spares a schedule puts in force,
//! what wear limits and quiet hours allow, and what maintenance or a paused group hold back.
//! No I/O and no clock: the provider, the controllers and `simulate` pass `now` in and act on
//! the answers.
pub mod maintenance;
pub mod schedule;
pub mod wear;
