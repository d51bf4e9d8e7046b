//! Errors of the provider core. Each names the group, node or field and what to do; the gRPC
//! service maps them to status codes with [`ProviderError::kind`].
use thiserror::Error;

/// The class of an error, which the gRPC edge turns into a status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
}

#[derive(Clone, Debug, Error, PartialEq)]
pub enum ProviderError {
    #[error(
        "node group {id:?} not found (known groups: {known}); check the Group CR exists in a watched namespace"
    )]
    GroupNotFound { id: String, known: String },
    #[error("node group {group:?}: delta must be positive for IncreaseSize, got {delta}")]
    DeltaNotPositive { group: String, delta: i32 },
    #[error("node group {group:?}: delta must be negative for DecreaseTargetSize, got {delta}")]
    DeltaNotNegative { group: String, delta: i32 },
    #[error(
        "node group {group:?}: target {target} + {delta} would exceed maxSize {max}; raise spec.maxSize or add machines"
    )]
    AboveMax {
        group: String,
        target: u32,
        delta: i32,
        max: u32,
    },
    #[error(
        "node group {group:?}: {wanted} machine(s) requested but only {available} powered-off machine(s) can be powered on{held_back}"
    )]
    NotEnoughMachines {
        group: String,
        wanted: u32,
        available: u32,
        /// `; held back after a failed power-on: ...` or empty.
        held_back: String,
    },
    #[error(
        "node group {group:?}: node {node:?} is not a member (it belongs to {actual}); nothing was changed"
    )]
    NodeNotInGroup {
        group: String,
        node: String,
        actual: String,
    },
    #[error(
        "node group {group:?}: deleting {count} node(s) from target {target} would go below minSize {min}; nothing was changed"
    )]
    BelowMin {
        group: String,
        target: u32,
        count: u32,
        min: u32,
    },
    #[error(
        "node group {group:?}: machine {machine} is registered and {by} has spec.scaleDownDisabled=true; nothing was changed (set it to false to let the Cluster Autoscaler power the machine off)"
    )]
    ScaleDownDisabled {
        group: String,
        machine: String,
        by: String,
    },
    #[error(
        "node group {group:?}: machine {machine} is registered and in the quiet hours of {by} (wear.quietHours with noPowerOff) until {until}; nothing was changed"
    )]
    QuietHours {
        group: String,
        machine: String,
        by: String,
        until: String,
    },
    #[error(
        "node group {group:?}: target {target} + {delta} would be below the {registered} registered node(s); only pending machines can be cancelled"
    )]
    BelowRegistered {
        group: String,
        target: u32,
        delta: i32,
        registered: u32,
    },
    #[error(
        "node group {group:?}: machine {machine} is under maintenance (spec.maintenance); nothing was changed (end it with `kubectl homelab maintenance end`)"
    )]
    UnderMaintenance { group: String, machine: String },
    #[error(
        "node group {group:?} is paused (spec.paused); nothing was changed (resume it with `kubectl homelab maintenance resume`)"
    )]
    Paused { group: String },
    #[error("node {node:?} is not managed by any node group")]
    NodeNotManaged { node: String },
    #[error("price window for node {node:?} ends before it starts ({start} .. {end})")]
    InvalidWindow {
        node: String,
        start: String,
        end: String,
    },
    #[error("request is missing field {field:?}")]
    MissingField { field: &'static str },
    #[error("pod_bytes is not a protobuf-encoded k8s.io.api.core.v1.Pod: {message}")]
    BadPod { message: String },
    #[error(
        "node group {group:?}: no template node: no member was ever seen as a node and neither the Node CRs (spec.capacity) nor the Group (spec.template) declare capacity"
    )]
    NoTemplate { group: String },
    #[error("{what} is not implemented by this provider")]
    Unimplemented { what: &'static str },
    #[error("node group {group:?}: could not persist desired power: {message}")]
    Persist { group: String, message: String },
    #[error("inventory not ready: {message}")]
    NotReady { message: String },
    #[error(
        "this replica is not the leader; mutating calls go to the leader (route the Cluster Autoscaler through the Service, which selects ready replicas only)"
    )]
    NotLeader,
}

impl ProviderError {
    pub fn kind(&self) -> ErrorKind {
        use ProviderError::*;
        match self {
            GroupNotFound { .. } | NodeNotManaged { .. } => ErrorKind::NotFound,
            DeltaNotPositive { .. }
            | DeltaNotNegative { .. }
            | NodeNotInGroup { .. }
            | InvalidWindow { .. }
            | MissingField { .. }
            | BadPod { .. } => ErrorKind::InvalidArgument,
            AboveMax { .. }
            | BelowMin { .. }
            | ScaleDownDisabled { .. }
            | BelowRegistered { .. }
            | UnderMaintenance { .. }
            | Paused { .. }
            | QuietHours { .. } => ErrorKind::FailedPrecondition,
            NotEnoughMachines { .. } => ErrorKind::ResourceExhausted,
            Persist { .. } | NotReady { .. } | NotLeader => ErrorKind::Unavailable,
            NoTemplate { .. } | Unimplemented { .. } => ErrorKind::Unimplemented,
        }
    }
}
