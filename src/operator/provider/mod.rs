//! The Cluster Autoscaler `externalgrpc` cloud provider (CA-CONTRACT.md).
//!
//! - [`inventory`]: the pure view of groups, machines and registered nodes.
//! - [`ops`]: one pure function per contract rule, returning answers or [`ops::Decision`]s.
//! - [`template`]: the template node (rule 8).
//! - [`service`]: the tonic service over the core, generic over an [`service::InventorySource`].
//! - [`proto`]: generated wire types, server and client.
pub mod convert;
pub mod error;
pub mod inventory;
pub mod kube;
pub mod ops;
pub mod proto;

pub use error::{ErrorKind, ProviderError};
pub use inventory::{
    GroupOptions, GroupView, Inventory, MachineKey, MachineView, NodeView, PowerChange,
    PowerOnOrder, TaintView, TemplateHints,
};
pub use ops::{Decision, NodeRef};
pub mod memory;
pub mod service;
pub mod template;

pub use memory::MemorySource;
pub use service::{
    InventorySource, PersistError, Provider, ServeError, TlsOptions, serve, serve_provider,
    serve_provider_with_layer,
};

#[cfg(test)]
mod tests;
