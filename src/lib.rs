//! kubectl-homelab: powers homelab machines on and off for the Kubernetes Cluster Autoscaler.
pub mod commands;
pub mod logging;
pub mod memory;
pub mod operator;
pub mod quantity;
pub mod sim;
/// Builders of test objects, for the tests and benches (src/testing.rs).
#[doc(hidden)]
pub mod testing;
pub mod yaml;

/// Locks a mutex whose data stays valid after a panic elsewhere (plain maps and counters): the
/// operator keeps serving instead of propagating the poison.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
