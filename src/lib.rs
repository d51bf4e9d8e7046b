//! kubectl-homelab: powers homelab machines on and off for the Kubernetes Cluster Autoscaler.
pub mod commands;
pub mod logging;
pub mod memory;
pub mod operator;
pub mod sim;
/// Builders of test objects, for the tests and benches (src/testing.rs).
#[doc(hidden)]
pub mod testing;
pub mod yaml;
