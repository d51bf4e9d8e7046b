//! Energy accounting, pure: what a machine draws in each phase (`model`), what electricity
//! costs over an interval (`tariff`), and how `status.energy` advances (`account`). No I/O, no
//! clock, no tokio: `now` comes in, and a tariff's time zone is resolved by the caller. The
//! operator's machine controller and `simulate` use the same functions, so both agree.
//! docs/energy.md describes the model.
mod account;
mod model;
mod tariff;

pub use account::*;
pub use model::*;
pub use tariff::*;
