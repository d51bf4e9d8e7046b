//! The tonic `CloudProvider` service over the pure core.
//!
//! Reads answer from memory: the source's inventory snapshot with an overlay of the desired-power
//! changes this server persisted and the source does not reflect yet, so a `TargetSize` right after
//! an `IncreaseSize` agrees with it (rule 3). Mutations are serialised per group, computed by
//! [`super::ops`], persisted through the source before the RPC returns, then recorded in the
//! overlay.
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::error::{ErrorKind, ProviderError};
use super::inventory::{Inventory, MachineKey, PowerChange};
use super::ops::{self, AutoscalingOptions, Decision, ErrorClass, InstanceState, NodeRef};
use super::proto;
use super::proto::cloud_provider_server::{CloudProvider, CloudProviderServer};
use super::tls::{ReloadingTls, TlsFileError, TlsIncoming, TlsOptions};
use super::{pricing, template};

/// A failed or partial persist. `applied` lists the changes that did reach durable storage (the
/// source should undo what it can first; whatever remains is reported here and kept in the view).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistError {
    pub applied: Vec<PowerChange>,
    pub message: String,
}

/// Where the provider's inventory comes from and where its decisions go: the kube-backed source
/// (reflectors + Node CR patches) in the operator, an in-memory one in tests and benches.
pub trait InventorySource: Send + Sync + 'static {
    /// The current inventory. Called on every RPC: return the same `Arc` until something changes.
    fn snapshot(&self) -> Arc<Inventory>;

    /// Durably records desired power (`spec.powerState`) for these machines. Must be idempotent.
    fn set_desired_power(
        &self,
        changes: &[PowerChange],
    ) -> impl Future<Output = Result<(), PersistError>> + Send;

    /// Resolves once the inventory is complete (caches synced); the server accepts no connection
    /// before.
    fn wait_ready(&self) -> impl Future<Output = ()> + Send;
}

/// How long a recorded change overrides a source that does not show it yet (the source normally
/// catches up within a second; this only bounds the damage if a later write by someone else is
/// never distinguishable from ours).
pub const DEFAULT_OVERLAY_TTL: Duration = Duration::from_secs(60);
/// Bound on waiting for other mutations of the same group. Separate from the persist budget,
/// so a queue of callers cannot eat the time a write needs; the two stay inside CA's default
/// 5 s call deadline.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_millis(1500);
/// Bound on a persist (the kube source bounds its own writes below it, at 2.5 s).
pub const DEFAULT_PERSIST_TIMEOUT: Duration = Duration::from_secs(3);
/// The node label CA reads GPU models from unless configured otherwise (NVIDIA's GPU feature
/// discovery sets it).
pub const DEFAULT_GPU_LABEL: &str = "nvidia.com/gpu.product";

/// `GPULabel` / `GetAvailableGPUTypes` answers. CA asks once and caches both for its lifetime
/// (`cloudprovider/externalgrpc/externalgrpc_cloud_provider.go`), so they come from
/// configuration, never from the machines seen at the first call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuConfig {
    pub label: String,
    pub types: std::collections::BTreeSet<String>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            label: DEFAULT_GPU_LABEL.to_owned(),
            types: Default::default(),
        }
    }
}

/// Budgets and configuration of a [`Provider`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderOptions {
    pub overlay_ttl: Duration,
    pub lock_timeout: Duration,
    pub persist_timeout: Duration,
    pub gpu: GpuConfig,
}

impl Default for ProviderOptions {
    fn default() -> Self {
        ProviderOptions {
            overlay_ttl: DEFAULT_OVERLAY_TTL,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            persist_timeout: DEFAULT_PERSIST_TIMEOUT,
            gpu: GpuConfig::default(),
        }
    }
}

struct Pending {
    change: PowerChange,
    recorded: Instant,
}

struct View {
    base: Arc<Inventory>,
    effective: Arc<Inventory>,
    pending: HashMap<MachineKey, Pending>,
}

struct Inner<S> {
    source: Arc<S>,
    view: Mutex<View>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    options: ProviderOptions,
    /// CA's `--max-node-provision-time`, as the defaults of its last `NodeGroupGetOptions`
    /// carried it (CA sends them with every call: `GetOptions` in
    /// `cloudprovider/externalgrpc/externalgrpc_node_group.go`).
    ca_provision_time: Mutex<Option<SignedDuration>>,
}

/// The provider: a cheap-to-clone handle usable directly (simulator checks, tests) or as the
/// tonic service ([`Provider::into_server`]).
pub struct Provider<S> {
    inner: Arc<Inner<S>>,
    /// While it reads `false`, mutations answer `Unavailable` (a follower of leader election).
    mutation_gate: Option<crate::operator::leader::Leadership>,
}

impl<S> Clone for Provider<S> {
    fn clone(&self) -> Self {
        Provider {
            inner: self.inner.clone(),
            mutation_gate: self.mutation_gate.clone(),
        }
    }
}

impl<S: InventorySource> Provider<S> {
    pub fn new(source: Arc<S>) -> Provider<S> {
        Provider::with_options(source, ProviderOptions::default())
    }

    pub fn with_options(source: Arc<S>, options: ProviderOptions) -> Provider<S> {
        let base = source.snapshot();
        Provider {
            inner: Arc::new(Inner {
                source,
                view: Mutex::new(View {
                    effective: base.clone(),
                    base,
                    pending: HashMap::new(),
                }),
                locks: Mutex::new(HashMap::new()),
                options,
                ca_provision_time: Mutex::new(None),
            }),
            mutation_gate: None,
        }
    }

    /// Mutations are allowed only while `gate` leads, read against the clock (checked before
    /// deciding and again before persisting); reads are always served.
    pub fn with_mutation_gate(mut self, gate: crate::operator::leader::Leadership) -> Provider<S> {
        self.mutation_gate = Some(gate);
        self
    }

    fn check_mutation_gate(&self) -> Result<(), ProviderError> {
        match &self.mutation_gate {
            Some(gate) if !gate.is_leader() => Err(ProviderError::NotLeader),
            _ => Ok(()),
        }
    }

    pub fn into_server(self) -> CloudProviderServer<Provider<S>> {
        CloudProviderServer::new(self)
    }

    /// The inventory as the provider answers from it: the source's snapshot plus pending changes.
    pub fn view(&self) -> Arc<Inventory> {
        let base = self.inner.source.snapshot();
        // A poisoned lock only means a panic elsewhere mid-update; the data is still consistent
        // enough to rebuild from the source.
        let mut v = self.inner.view.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let expired = v
            .pending
            .values()
            .any(|p| now.duration_since(p.recorded) > self.inner.options.overlay_ttl);
        if Arc::ptr_eq(&base, &v.base) && !expired {
            return v.effective.clone();
        }
        let ttl = self.inner.options.overlay_ttl;
        v.pending.retain(|key, p| {
            let reflected = base
                .group_of(key)
                .and_then(|g| base.group(g))
                .and_then(|g| {
                    g.machines
                        .binary_search_by(|m| m.key.cmp(key))
                        .ok()
                        .map(|i| g.machines[i].desired == p.change.desired)
                })
                // A machine that is gone needs no overlay.
                .unwrap_or(true);
            !reflected && now.duration_since(p.recorded) <= ttl
        });
        v.effective = if v.pending.is_empty() {
            base.clone()
        } else {
            let mut effective = (*base).clone();
            let changes: Vec<PowerChange> = v.pending.values().map(|p| p.change.clone()).collect();
            effective.apply_changes(&changes);
            Arc::new(effective)
        };
        v.base = base;
        v.effective.clone()
    }

    fn record(&self, group: &str, changes: &[PowerChange]) {
        if changes.is_empty() {
            return;
        }
        let mut v = self.inner.view.lock().unwrap_or_else(|e| e.into_inner());
        let recorded = Instant::now();
        for c in changes {
            v.pending.insert(
                c.machine.clone(),
                Pending {
                    change: c.clone(),
                    recorded,
                },
            );
        }
        let mut effective = (*v.effective).clone();
        effective.apply(group, changes);
        v.effective = Arc::new(effective);
    }

    fn group_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(id.to_owned()).or_default().clone()
    }

    /// Runs one mutation for a group: serialised with every other mutation of the group,
    /// decided on the current view, persisted, then recorded. Waiting for the group and
    /// persisting have separate budgets. A decision that reached durable storage is reported
    /// as done even when the source answered with an error or late: CA backs the group off (or
    /// un-taints the nodes) on an error, which is wrong for a change that landed.
    pub async fn mutate(
        &self,
        id: &str,
        decide: impl FnOnce(&Inventory, Timestamp) -> Result<Decision, ProviderError>,
    ) -> Result<Decision, ProviderError> {
        self.check_mutation_gate()?;
        // Unknown ids fail before a lock is created for them.
        ops::target_size(&self.view(), id)?;
        let options = &self.inner.options;
        let lock = self.group_lock(id);
        let Ok(_guard) = tokio::time::timeout(options.lock_timeout, lock.lock()).await else {
            return Err(ProviderError::Persist {
                group: id.to_owned(),
                message: format!(
                    "other changes to the group still in progress after {:?}; nothing was changed",
                    options.lock_timeout
                ),
            });
        };
        let decision = decide(&self.view(), Timestamp::now())?;
        if decision.is_noop() {
            return Ok(decision);
        }
        // Leadership may have ended while this call waited for the group.
        self.check_mutation_gate()?;
        let persisted = tokio::time::timeout(
            options.persist_timeout,
            self.inner.source.set_desired_power(&decision.changes),
        )
        .await;
        let failure = match persisted {
            Ok(Ok(())) => None,
            Ok(Err(e)) => {
                let all_applied = decision.changes.iter().all(|c| e.applied.contains(c));
                if all_applied {
                    tracing::warn!(group = %decision.group, error = %e.message, "persist reported an error after every change landed; answering success");
                    None
                } else {
                    self.record(&decision.group, &e.applied);
                    Some(e.message)
                }
            }
            Err(_) if self.landed(&decision.changes) => {
                tracing::warn!(group = %decision.group, "persist answered late but the changes are visible; answering success");
                None
            }
            Err(_) => Some(format!(
                "no answer within {:?}; the change may still land",
                options.persist_timeout
            )),
        };
        if let Some(message) = failure {
            return Err(ProviderError::Persist {
                group: id.to_owned(),
                message,
            });
        }
        self.record(&decision.group, &decision.changes);
        tracing::info!(
            group = %decision.group,
            target_before = decision.target_before,
            target_after = decision.target_after,
            machines = ?decision.changes.iter().map(|c| c.machine.to_string()).collect::<Vec<_>>(),
            "desired power persisted"
        );
        Ok(decision)
    }

    /// Whether the source's current snapshot shows every change (desired power as decided).
    fn landed(&self, changes: &[PowerChange]) -> bool {
        let base = self.inner.source.snapshot();
        changes.iter().all(|c| {
            base.machines()
                .any(|m| m.key == c.machine && m.desired == c.desired)
        })
    }
}

/// Maps a core error to the gRPC status CA sees (rule 12: only `Unimplemented` is special).
pub fn status(e: &ProviderError) -> Status {
    let code = match e.kind() {
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Unimplemented => tonic::Code::Unimplemented,
    };
    Status::new(code, e.to_string())
}

fn fail(e: ProviderError) -> Status {
    match e.kind() {
        ErrorKind::Unavailable => tracing::warn!(error = %e, "provider call failed"),
        _ => tracing::debug!(error = %e, "provider call rejected"),
    }
    status(&e)
}

fn node_ref(n: &proto::ExternalGrpcNode) -> NodeRef {
    NodeRef {
        provider_id: n.provider_id.clone(),
        name: n.name.clone(),
    }
}

fn group_pb(g: ops::NodeGroupInfo) -> proto::NodeGroup {
    proto::NodeGroup {
        id: g.id,
        min_size: i32::try_from(g.min_size).unwrap_or(i32::MAX),
        max_size: i32::try_from(g.max_size).unwrap_or(i32::MAX),
        debug: g.debug,
    }
}

fn ts(t: Option<prost_types::Timestamp>, field: &'static str) -> Result<Timestamp, ProviderError> {
    let t = t.ok_or(ProviderError::MissingField { field })?;
    Timestamp::new(t.seconds, t.nanos).map_err(|_| ProviderError::MissingField { field })
}

fn dur_from_pb(d: Option<prost_types::Duration>) -> Option<SignedDuration> {
    d.map(|d| SignedDuration::new(d.seconds, d.nanos))
}

fn dur_to_pb(d: Option<SignedDuration>) -> Option<prost_types::Duration> {
    d.map(|d| prost_types::Duration {
        seconds: d.as_secs(),
        nanos: d.subsec_nanos(),
    })
}

/// Wire options → core options.
pub fn options_from_pb(o: proto::NodeGroupAutoscalingOptions) -> AutoscalingOptions {
    AutoscalingOptions {
        scale_down_utilization_threshold: o.scale_down_utilization_threshold,
        scale_down_gpu_utilization_threshold: o.scale_down_gpu_utilization_threshold,
        zero_or_max_node_scaling: o.zero_or_max_node_scaling,
        ignore_daemon_sets_utilization: o.ignore_daemon_sets_utilization,
        scale_down_unneeded: dur_from_pb(o.scale_down_unneeded_duration),
        scale_down_unready: dur_from_pb(o.scale_down_unready_duration),
        max_node_provision: dur_from_pb(o.max_node_provision_duration),
        max_node_startup: dur_from_pb(o.max_node_startup_duration),
        allow_non_atomic_scale_up_to_max: o.allow_non_atomic_scale_up_to_max,
    }
}

/// Core options → wire options.
pub fn options_to_pb(o: AutoscalingOptions) -> proto::NodeGroupAutoscalingOptions {
    proto::NodeGroupAutoscalingOptions {
        scale_down_utilization_threshold: o.scale_down_utilization_threshold,
        scale_down_gpu_utilization_threshold: o.scale_down_gpu_utilization_threshold,
        zero_or_max_node_scaling: o.zero_or_max_node_scaling,
        ignore_daemon_sets_utilization: o.ignore_daemon_sets_utilization,
        scale_down_unneeded_duration: dur_to_pb(o.scale_down_unneeded),
        scale_down_unready_duration: dur_to_pb(o.scale_down_unready),
        max_node_provision_duration: dur_to_pb(o.max_node_provision),
        max_node_startup_duration: dur_to_pb(o.max_node_startup),
        allow_non_atomic_scale_up_to_max: o.allow_non_atomic_scale_up_to_max,
    }
}

fn instance_pb(i: ops::InstanceInfo) -> proto::Instance {
    use proto::instance_status::InstanceState as S;
    let state = match i.state {
        InstanceState::Running => S::InstanceRunning,
        InstanceState::Creating => S::InstanceCreating,
        InstanceState::Deleting => S::InstanceDeleting,
    };
    proto::Instance {
        id: i.id,
        status: Some(proto::InstanceStatus {
            instance_state: state as i32,
            error_info: i.error.map(|e| proto::InstanceErrorInfo {
                error_code: e.code,
                error_message: e.message,
                instance_error_class: match e.class {
                    ErrorClass::OutOfResources => 1,
                    ErrorClass::Other => 99,
                },
            }),
        }),
    }
}

#[tonic::async_trait]
impl<S: InventorySource> CloudProvider for Provider<S> {
    async fn node_groups(
        &self,
        _: Request<proto::NodeGroupsRequest>,
    ) -> Result<Response<proto::NodeGroupsResponse>, Status> {
        let inv = self.view();
        Ok(Response::new(proto::NodeGroupsResponse {
            node_groups: ops::node_groups(&inv, Timestamp::now())
                .into_iter()
                .map(group_pb)
                .collect(),
        }))
    }

    async fn node_group_for_node(
        &self,
        req: Request<proto::NodeGroupForNodeRequest>,
    ) -> Result<Response<proto::NodeGroupForNodeResponse>, Status> {
        let node = req
            .into_inner()
            .node
            .ok_or_else(|| fail(ProviderError::MissingField { field: "node" }))?;
        let inv = self.view();
        let g = ops::node_group_for_node(&inv, &node_ref(&node), Timestamp::now());
        Ok(Response::new(proto::NodeGroupForNodeResponse {
            node_group: Some(g.map(group_pb).unwrap_or_default()),
        }))
    }

    async fn pricing_node_price(
        &self,
        req: Request<proto::PricingNodePriceRequest>,
    ) -> Result<Response<proto::PricingNodePriceResponse>, Status> {
        let r = req.into_inner();
        let node = r
            .node
            .ok_or_else(|| fail(ProviderError::MissingField { field: "node" }))?;
        let start = ts(r.start_timestamp, "startTimestamp").map_err(fail)?;
        let end = ts(r.end_timestamp, "endTimestamp").map_err(fail)?;
        let price = ops::node_price(&self.view(), &node_ref(&node), start, end, Timestamp::now())
            .map_err(fail)?;
        Ok(Response::new(proto::PricingNodePriceResponse { price }))
    }

    async fn pricing_pod_price(
        &self,
        req: Request<proto::PricingPodPriceRequest>,
    ) -> Result<Response<proto::PricingPodPriceResponse>, Status> {
        let r = req.into_inner();
        let pod = pricing::PodRequests::decode(&r.pod_bytes).map_err(fail)?;
        let start = ts(r.start_timestamp, "startTimestamp").map_err(fail)?;
        let end = ts(r.end_timestamp, "endTimestamp").map_err(fail)?;
        let price = pricing::pod_price(&self.view(), &pod, start, end).map_err(fail)?;
        Ok(Response::new(proto::PricingPodPriceResponse { price }))
    }

    async fn gpu_label(
        &self,
        _: Request<proto::GpuLabelRequest>,
    ) -> Result<Response<proto::GpuLabelResponse>, Status> {
        Ok(Response::new(proto::GpuLabelResponse {
            label: self.inner.options.gpu.label.clone(),
        }))
    }

    async fn get_available_gpu_types(
        &self,
        _: Request<proto::GetAvailableGpuTypesRequest>,
    ) -> Result<Response<proto::GetAvailableGpuTypesResponse>, Status> {
        Ok(Response::new(proto::GetAvailableGpuTypesResponse {
            gpu_types: self
                .inner
                .options
                .gpu
                .types
                .iter()
                .map(|t| (t.clone(), prost_types::Any::default()))
                .collect(),
        }))
    }

    /// Rule 10: CA shutting down must never power anything off.
    async fn cleanup(
        &self,
        _: Request<proto::CleanupRequest>,
    ) -> Result<Response<proto::CleanupResponse>, Status> {
        Ok(Response::new(proto::CleanupResponse {}))
    }

    /// The view is always current (reflectors + overlay): nothing to reload, nothing to fail.
    async fn refresh(
        &self,
        _: Request<proto::RefreshRequest>,
    ) -> Result<Response<proto::RefreshResponse>, Status> {
        self.view();
        Ok(Response::new(proto::RefreshResponse {}))
    }

    async fn node_group_target_size(
        &self,
        req: Request<proto::NodeGroupTargetSizeRequest>,
    ) -> Result<Response<proto::NodeGroupTargetSizeResponse>, Status> {
        let t = ops::target_size(&self.view(), &req.into_inner().id).map_err(fail)?;
        Ok(Response::new(proto::NodeGroupTargetSizeResponse {
            target_size: i32::try_from(t).unwrap_or(i32::MAX),
        }))
    }

    async fn node_group_increase_size(
        &self,
        req: Request<proto::NodeGroupIncreaseSizeRequest>,
    ) -> Result<Response<proto::NodeGroupIncreaseSizeResponse>, Status> {
        let r = req.into_inner();
        self.mutate(&r.id, |inv, now| {
            ops::increase_size(inv, &r.id, r.delta, now)
        })
        .await
        .map_err(fail)?;
        Ok(Response::new(proto::NodeGroupIncreaseSizeResponse {}))
    }

    async fn node_group_delete_nodes(
        &self,
        req: Request<proto::NodeGroupDeleteNodesRequest>,
    ) -> Result<Response<proto::NodeGroupDeleteNodesResponse>, Status> {
        let r = req.into_inner();
        let nodes: Vec<NodeRef> = r.nodes.iter().map(node_ref).collect();
        self.mutate(&r.id, |inv, now| ops::delete_nodes(inv, &r.id, &nodes, now))
            .await
            .map_err(fail)?;
        Ok(Response::new(proto::NodeGroupDeleteNodesResponse {}))
    }

    async fn node_group_decrease_target_size(
        &self,
        req: Request<proto::NodeGroupDecreaseTargetSizeRequest>,
    ) -> Result<Response<proto::NodeGroupDecreaseTargetSizeResponse>, Status> {
        let r = req.into_inner();
        let ca_provision = *self
            .inner
            .ca_provision_time
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.mutate(&r.id, |inv, now| {
            ops::decrease_target_size(inv, &r.id, r.delta, now, ca_provision)
        })
        .await
        .map_err(fail)?;
        Ok(Response::new(proto::NodeGroupDecreaseTargetSizeResponse {}))
    }

    async fn node_group_nodes(
        &self,
        req: Request<proto::NodeGroupNodesRequest>,
    ) -> Result<Response<proto::NodeGroupNodesResponse>, Status> {
        let instances = ops::node_group_nodes(&self.view(), &req.into_inner().id).map_err(fail)?;
        Ok(Response::new(proto::NodeGroupNodesResponse {
            instances: instances.into_iter().map(instance_pb).collect(),
        }))
    }

    async fn node_group_template_node_info(
        &self,
        req: Request<proto::NodeGroupTemplateNodeInfoRequest>,
    ) -> Result<Response<proto::NodeGroupTemplateNodeInfoResponse>, Status> {
        let t = template::template_node(&self.view(), &req.into_inner().id).map_err(fail)?;
        Ok(Response::new(proto::NodeGroupTemplateNodeInfoResponse {
            node_bytes: t.encode(),
            resource_slice_bytes: Vec::new(),
        }))
    }

    async fn node_group_get_options(
        &self,
        req: Request<proto::NodeGroupAutoscalingOptionsRequest>,
    ) -> Result<Response<proto::NodeGroupAutoscalingOptionsResponse>, Status> {
        let r = req.into_inner();
        let defaults = r.defaults.map(options_from_pb);
        if let Some(p) = defaults
            .as_ref()
            .and_then(|d| d.max_node_provision)
            .filter(|p| p.is_positive())
        {
            *self
                .inner
                .ca_provision_time
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(p);
        }
        let o = ops::node_group_options(&self.view(), &r.id, defaults).map_err(fail)?;
        Ok(Response::new(proto::NodeGroupAutoscalingOptionsResponse {
            node_group_autoscaling_options: o.map(options_to_pb),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid TLS configuration: {0}")]
    Tls(#[source] TlsFileError),
    #[error("gRPC server failed: {0}")]
    Transport(#[source] tonic::transport::Error),
}

/// Serves the provider on `listener` until `shutdown` resolves. No connection is accepted before
/// the source is ready (CA's first `NodeGroupForNode` can arrive before any `Refresh`).
pub async fn serve<S: InventorySource>(
    listener: TcpListener,
    source: Arc<S>,
    tls: Option<TlsOptions>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_provider(listener, Provider::new(source), tls, shutdown).await
}

/// [`serve`] with a provider built by the caller (e.g. [`Provider::with_options`]).
pub async fn serve_provider<S: InventorySource>(
    listener: TcpListener,
    provider: Provider<S>,
    tls: Option<TlsOptions>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_provider_with_layer(
        listener,
        provider,
        tls,
        tower_layer::Identity::new(),
        shutdown,
    )
    .await
}

/// [`serve_provider`] with a tower layer around the service (e.g. the operator's gRPC metrics).
pub async fn serve_provider_with_layer<S, L>(
    listener: TcpListener,
    provider: Provider<S>,
    tls: Option<TlsOptions>,
    layer: L,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    S: InventorySource,
    L: tower_layer::Layer<CloudProviderServer<Provider<S>>>,
    L::Service: tower_service::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower_service::Service<http::Request<tonic::body::Body>>>::Future:
        Send + 'static,
{
    // Read before waiting for the source, so a wrong file fails at once.
    let tls = match tls {
        Some(t) => Some(Arc::new(ReloadingTls::load(t).map_err(ServeError::Tls)?)),
        None => None,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        () = provider.inner.source.wait_ready() => {}
        () = &mut shutdown => return Ok(()),
    }
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        tls = tls.is_some(),
        client_auth = tls.as_ref().is_some_and(|t| t.options().client_ca.is_some()),
        "serving the Cluster Autoscaler externalgrpc provider"
    );
    let router = Server::builder().add_service(layer.layer(provider.into_server()));
    // Without TCP_NODELAY a reply split over several writes waits for the client's delayed
    // ACK (~40 ms); CA calls hundreds of these per loop.
    let tcp = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(TlsIncoming::new(tcp, tls), shutdown)
                .await
        }
        None => router.serve_with_incoming_shutdown(tcp, shutdown).await,
    }
    .map_err(ServeError::Transport)
}
