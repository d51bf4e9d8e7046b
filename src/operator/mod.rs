//! The operator: CRD types, the pure lifecycle and provider cores, and the edges that drive them.
pub mod api;
pub mod controller;
pub mod drain;
pub mod machine;
pub mod power;
pub mod provider;
