//! kubectl-homelab: powers homelab machines on and off for the Kubernetes Cluster Autoscaler.
pub mod commands;
pub mod logging;
pub mod memory;
pub mod operator;
pub mod quantity;
pub mod sim;
pub mod yaml;
