//! The operator: CRD types, the pure lifecycle and provider cores, and the edges that drive them.
pub mod api;
pub mod health;
pub mod leader;
pub mod machine;
pub mod metrics;
pub mod power;
pub mod provider;
pub mod runtime;
