//! The Cluster Autoscaler `externalgrpc` cloud provider (docs/ca-contract.md).
//!
//! - [`inventory`]: the pure view of groups, machines and registered nodes.
//! - [`ops`]: one pure function per contract rule, returning answers or [`ops::Decision`]s.
//! - [`template`]: the template node (rule 8).
//! - [`pricing`]: pod prices (rule 11).
//! - [`warnings`]: what a Group's status should warn about (options cost, no template).
//! - [`service`]: the tonic service over the core, generic over an [`service::InventorySource`].
//! - [`proto`]: generated wire types, server and client.
//! - [`tls`]: the server's TLS, reloaded when its files change, and the start-up exposure
//!   warnings.
//! - [`cluster`]: the inventory source over the operator's watch cache, and desired-power writes.
//! - [`rebuild`]: the inventory rebuilt after each change, converting only changed groups.
pub mod cluster;
pub mod convert;
pub mod error;
pub mod inventory;
pub mod ops;
pub mod pricing;
pub mod proto;
pub mod rebuild;
pub mod warnings;

pub use error::{ErrorKind, ProviderError};
pub use inventory::{
    GroupIds, GroupOptions, GroupView, Inventory, MachineKey, MachineView, NodeView,
    POWER_ON_FAILED_ANNOTATION, PowerChange, PowerOnOrder, TaintView, TemplateHints,
};
pub use ops::{Decision, NodeRef};
pub mod in_memory;
pub mod service;
pub mod template;
pub mod tls;

pub use in_memory::InMemorySource;
pub use service::{
    GpuConfig, InventorySource, PersistError, Provider, ProviderOptions, ServeError, serve,
    serve_provider, serve_provider_with_layer,
};
pub use tls::{TlsFileError, TlsOptions};

#[cfg(test)]
mod tests;
