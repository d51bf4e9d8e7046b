//! What `run-operator` and `serve-grpc` orchestrate, as library calls the commands feed with a
//! typed configuration: bind the ports, then run until a shutdown future resolves.
//!
//! [`run`] (the operator): both ports bound first, so a port in use is a start-up error → the
//! health server (liveness answers at once) → the watch cache synced (abortable by shutdown) →
//! leader election → the gRPC provider (mutations gated on leadership), and the controllers and
//! the meter poller while leading. On shutdown: not ready → controllers stopped with grace →
//! Lease released (mutating calls answer `Unavailable` from here on) → gRPC drained → health
//! server stopped.
//!
//! [`run_provider`] (the provider alone): the gRPC port bound → the cache synced → gRPC served
//! until shutdown.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinError, JoinHandle};

use super::cache::{Scope, SyncError};
use super::controller::{self, Settings};
use super::health::{self, HealthError, Readiness};
use super::leader::{Election, LeaderError, Leadership, LeaseSettings};
use super::meter;
use super::metrics::{GrpcMetricsLayer, Metrics};
use super::node::drain::DrainClient;
use super::provider::cluster::ClusterSource;
use super::provider::{
    Provider, ProviderOptions, ServeError, TlsOptions, serve_provider, serve_provider_with_layer,
};
use super::runtime::{run_while_leader, set, when_set};

/// How long the health server gets to finish its requests at the very end.
const HEALTH_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a server listens: an address to bind, or a listener already bound (a test's port 0).
#[derive(Debug)]
pub enum Listen {
    Address(SocketAddr),
    Bound(TcpListener),
}

impl From<SocketAddr> for Listen {
    fn from(a: SocketAddr) -> Listen {
        Listen::Address(a)
    }
}

impl From<TcpListener> for Listen {
    fn from(l: TcpListener) -> Listen {
        Listen::Bound(l)
    }
}

impl Listen {
    async fn bind(self, server: Server) -> Result<TcpListener, RunError> {
        match self {
            Listen::Bound(l) => Ok(l),
            Listen::Address(address) => {
                TcpListener::bind(address)
                    .await
                    .map_err(|source| RunError::Bind {
                        server,
                        address,
                        source,
                    })
            }
        }
    }
}

/// The servers the operator runs, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Grpc,
    Health,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Server::Grpc => "gRPC",
            Server::Health => "health and metrics",
        })
    }
}

/// The CA provider's gRPC server.
pub struct GrpcConfig {
    pub listen: Listen,
    /// `None`: plaintext h2c.
    pub tls: Option<TlsOptions>,
    pub provider: ProviderOptions,
    /// Deadline of the API server writes of one mutating call.
    pub write_timeout: Duration,
}

/// The provider alone (`serve-grpc`), and the part of the operator it shares.
pub struct ProviderConfig {
    /// Which Group and Node CRs the cache reads.
    pub scope: Scope,
    pub grpc: GrpcConfig,
    /// How long to wait for the cache's initial lists before giving up.
    pub sync_timeout: Duration,
}

/// Leader election among replicas.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub lease: LeaseSettings,
    /// `/readyz` only while leading, so a Service routes the Cluster Autoscaler to the leader.
    pub readiness_requires_leader: bool,
}

/// The whole operator (`run-operator`).
pub struct OperatorConfig {
    pub provider: ProviderConfig,
    /// The `/healthz`, `/readyz` and `/metrics` server.
    pub health: Listen,
    /// `None`: no election, this replica always leads (a single replica).
    pub election: Option<ElectionConfig>,
    pub controllers: Settings,
    /// How long the controllers and the gRPC calls in flight get to finish on shutdown.
    pub shutdown_timeout: Duration,
}

/// The API clients the operator acts through.
#[derive(Clone)]
pub struct Clients {
    pub api: kube::Client,
    /// For evictions: no retries of 429s (see [`DrainClient`]).
    pub drain: DrainClient,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen for the {server} server on {address}")]
    Bind {
        server: Server,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lease(#[from] LeaderError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("the gRPC server failed")]
    Grpc(#[source] ServeError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error("the {0} server stopped unexpectedly")]
    Stopped(Server),
    #[error("the {server} server task failed")]
    Task {
        server: Server,
        #[source]
        source: JoinError,
    },
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C: the `shutdown` both commands
/// pass.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Runs `body` with a flag that turns `true` once `shutdown` resolves, so every stage can watch
/// the one shutdown (the future itself can be awaited only once).
async fn with_stop_flag<T, Fut>(
    shutdown: impl Future<Output = ()>,
    body: impl FnOnce(watch::Receiver<bool>) -> Fut,
) -> T
where
    Fut: Future<Output = T>,
{
    let (tx, rx) = watch::channel(false);
    let relay = async move {
        shutdown.await;
        tx.send_replace(true);
        // Keeps the sender, so the flag never reads as closed while `body` runs.
        std::future::pending::<Infallible>().await
    };
    tokio::select! {
        t = body(rx) => t,
        never = relay => match never {},
    }
}

/// Serves the CA provider alone until `shutdown` resolves: binds the gRPC port, syncs the cache
/// (giving up quietly if `shutdown` comes first), then serves and drains the calls in flight.
pub async fn run_provider(
    client: kube::Client,
    config: ProviderConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let ProviderConfig {
        scope,
        grpc,
        sync_timeout,
    } = config;
    let listener = grpc.listen.bind(Server::Grpc).await?;
    warn_about_exposure(&listener, grpc.tls.as_ref());
    let source = Arc::new(
        ClusterSource::start(client, scope.clone()).with_write_timeout(grpc.write_timeout),
    );
    with_stop_flag(shutdown, |mut stopping| async move {
        tracing::info!(%scope, "waiting for the caches to sync");
        tokio::select! {
            r = source.wait_until_ready(sync_timeout) => r?,
            () = set(&mut stopping) => return Ok(()),
        }
        tracing::info!(
            listen = %local_address(&listener),
            tls = grpc.tls.is_some(),
            client_auth = grpc.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            %scope,
            "caches synced; serving"
        );
        let provider = Provider::with_options(source, grpc.provider);
        serve_provider(listener, provider, grpc.tls, when_set(stopping))
            .await
            .map_err(RunError::Grpc)?;
        tracing::info!("stopped");
        Ok(())
    })
    .await
}

/// Logs who can call the provider on this listener, when that is more than it should be
/// ([`super::provider::tls::exposure_warnings`]).
fn warn_about_exposure(listener: &TcpListener, tls: Option<&TlsOptions>) {
    let Ok(listen) = listener.local_addr() else {
        return;
    };
    for w in super::provider::tls::exposure_warnings(listen, tls) {
        tracing::warn!("{w}");
    }
}

fn local_address(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string())
}

/// Runs the operator until `shutdown` resolves: [`OperatorConfig::bind`], then
/// [`Operator::run`].
pub async fn run(
    clients: Clients,
    config: OperatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    config.bind().await?.run(clients, shutdown).await
}

/// The operator with its ports bound, ready to [`run`](Operator::run).
pub struct Operator {
    grpc_listener: TcpListener,
    health_listener: TcpListener,
    plan: Plan,
}

/// The configuration left once the ports are bound.
struct Plan {
    scope: Scope,
    tls: Option<TlsOptions>,
    provider: ProviderOptions,
    write_timeout: Duration,
    sync_timeout: Duration,
    election: Option<ElectionConfig>,
    controllers: Settings,
    shutdown_timeout: Duration,
}

impl OperatorConfig {
    /// Checks the Lease timings, then binds both ports: a wrong setting or a port in use fails
    /// here, before anything talks to the API server.
    pub async fn bind(self) -> Result<Operator, RunError> {
        let OperatorConfig {
            provider:
                ProviderConfig {
                    scope,
                    grpc,
                    sync_timeout,
                },
            health,
            election,
            controllers,
            shutdown_timeout,
        } = self;
        if let Some(e) = &election {
            e.lease.validate()?;
        }
        let grpc_listener = grpc.listen.bind(Server::Grpc).await?;
        warn_about_exposure(&grpc_listener, grpc.tls.as_ref());
        let health_listener = health.bind(Server::Health).await?;
        Ok(Operator {
            grpc_listener,
            health_listener,
            plan: Plan {
                scope,
                tls: grpc.tls,
                provider: grpc.provider,
                write_timeout: grpc.write_timeout,
                sync_timeout,
                election,
                controllers,
                shutdown_timeout,
            },
        })
    }
}

/// What the stages after the cache sync share.
struct Running {
    clients: Clients,
    source: Arc<ClusterSource>,
    metrics: Metrics,
    /// Set once the election started; `/readyz` reads it.
    leadership: Arc<OnceLock<Leadership>>,
    stopping: watch::Receiver<bool>,
}

type HealthTask = JoinHandle<Result<(), HealthError>>;

impl Operator {
    /// Runs until `shutdown` resolves or a server fails; see the module documentation for the
    /// order of start-up and shutdown.
    pub async fn run(
        self,
        clients: Clients,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), RunError> {
        let Operator {
            grpc_listener,
            health_listener,
            plan,
        } = self;
        let metrics = Metrics::new();
        let source = Arc::new(
            ClusterSource::start(clients.api.clone(), plan.scope.clone())
                .with_write_timeout(plan.write_timeout)
                .with_trust(plan.controllers.trust.clone()),
        );
        metrics.watch_fleet(
            source.cache().machines().clone(),
            plan.controllers.meters.clone(),
        );
        let leadership: Arc<OnceLock<Leadership>> = Arc::new(OnceLock::new());
        let requires_leader = plan
            .election
            .as_ref()
            .is_some_and(|e| e.readiness_requires_leader);
        let (health_stop, health_stopped) = oneshot::channel::<()>();
        let outcome = with_stop_flag(shutdown, |stopping| {
            let readiness = readiness(
                source.clone(),
                leadership.clone(),
                stopping.clone(),
                requires_leader,
            );
            let mut health = tokio::spawn(health::serve(
                health_listener,
                metrics.clone(),
                readiness,
                async {
                    let _ = health_stopped.await;
                },
            ));
            let running = Running {
                clients,
                source,
                metrics,
                leadership,
                stopping,
            };
            async move {
                let outcome = serve_after_sync(plan, grpc_listener, running, &mut health).await;
                (outcome, health)
            }
        })
        .await;
        let (outcome, mut health) = outcome;
        let _ = health_stop.send(());
        match tokio::time::timeout(HEALTH_STOP_TIMEOUT, &mut health).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "health server"),
            Ok(Err(e)) => tracing::warn!(error = %e, "health server task"),
            Err(_) => health.abort(),
            Ok(Ok(Ok(()))) => {}
        }
        tracing::info!("stopped");
        outcome
    }
}

/// `/readyz`: not while stopping; caches synced; and, when required, leading.
fn readiness(
    source: Arc<ClusterSource>,
    leadership: Arc<OnceLock<Leadership>>,
    stopping: watch::Receiver<bool>,
    requires_leader: bool,
) -> Readiness {
    Arc::new(move || {
        if *stopping.borrow() {
            return Err("shutting down".into());
        }
        if !source.is_ready() {
            return Err("caches of Groups, Node CRs and Kubernetes Nodes not synced yet".into());
        }
        if requires_leader && !leadership.get().is_some_and(Leadership::is_leader) {
            return Err(
                "not the leader (--readiness-requires-leader): mutating calls need the leader"
                    .into(),
            );
        }
        Ok(())
    })
}

/// Everything from the cache sync to the Lease release and the gRPC drain.
async fn serve_after_sync(
    plan: Plan,
    grpc_listener: TcpListener,
    running: Running,
    health: &mut HealthTask,
) -> Result<(), RunError> {
    let Running {
        clients,
        source,
        metrics,
        leadership: leadership_cell,
        mut stopping,
    } = running;
    tracing::info!(scope = %plan.scope, "waiting for the caches to sync");
    tokio::select! {
        r = source.wait_until_ready(plan.sync_timeout) => r?,
        () = set(&mut stopping) => return Ok(()),
        r = &mut *health => return Err(health_ended(r)),
    }

    let election = match &plan.election {
        Some(e) => tokio::select! {
            r = Election::start(clients.api.clone(), e.lease.clone()) => Some(r?),
            () = set(&mut stopping) => return Ok(()),
        },
        None => None,
    };
    let leadership = election
        .as_ref()
        .map(Election::leadership)
        .unwrap_or_else(Leadership::always);
    let _ = leadership_cell.set(leadership.clone());
    let mirror = tokio::spawn(mirror_leadership(leadership.clone(), metrics.clone()));

    let mut provider = Provider::with_options(source.clone(), plan.provider);
    if election.is_some() {
        provider = provider.with_mutation_gate(leadership.clone());
    }
    let (grpc_stop, grpc_stopped) = watch::channel(false);
    let mut grpc = tokio::spawn(serve_provider_with_layer(
        grpc_listener,
        provider,
        plan.tls,
        GrpcMetricsLayer::new(metrics.clone()),
        when_set(grpc_stopped),
    ));

    let settings = plan.controllers;
    let drain = clients.drain;
    let fence = leadership.clone();
    let controllers = run_while_leader(
        leadership,
        stopping.clone(),
        plan.shutdown_timeout,
        move |shutdown| {
            // The meters are read by the leader only, beside its controllers (see
            // `meter::poll`); the poller never returns and ends when the controllers do.
            let poll = meter::poll::run(
                source.cache().clone(),
                settings.meters.clone(),
                meter::poll::PollSettings::default(),
            );
            let run = controller::run(
                source.clone(),
                drain.clone(),
                settings.clone(),
                Some(metrics.clone()),
                fence.clone(),
                shutdown,
            );
            async move {
                tokio::select! {
                    () = run => {}
                    () = poll => {}
                }
                Ok(())
            }
        },
    );

    // Runs until shutdown, or until a server fails.
    let failure = {
        let mut controllers = std::pin::pin!(controllers);
        tokio::select! {
            () = &mut controllers => None,
            r = &mut grpc => Some(grpc_ended(r)),
            r = &mut *health => Some(health_ended(r)),
        }
    };
    mirror.abort();
    if let Some(e) = election {
        e.release().await;
    }
    if let Some(e) = failure {
        grpc.abort();
        return Err(e);
    }
    grpc_stop.send_replace(true);
    match tokio::time::timeout(plan.shutdown_timeout, &mut grpc).await {
        Ok(r) => flatten_grpc(r),
        Err(_) => {
            tracing::warn!(
                "gRPC calls still open after {:?}; closing",
                plan.shutdown_timeout
            );
            grpc.abort();
            Ok(())
        }
    }
}

async fn mirror_leadership(leadership: Leadership, metrics: Metrics) {
    let mut rx = leadership.subscribe();
    loop {
        metrics.set_leader(*rx.borrow_and_update());
        if rx.changed().await.is_err() {
            metrics.set_leader(false);
            return;
        }
    }
}

type GrpcResult = Result<Result<(), ServeError>, JoinError>;

fn flatten_grpc(r: GrpcResult) -> Result<(), RunError> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RunError::Grpc(e)),
        Err(source) => Err(RunError::Task {
            server: Server::Grpc,
            source,
        }),
    }
}

fn grpc_ended(r: GrpcResult) -> RunError {
    match flatten_grpc(r) {
        Ok(()) => RunError::Stopped(Server::Grpc),
        Err(e) => e,
    }
}

fn health_ended(r: Result<Result<(), HealthError>, JoinError>) -> RunError {
    match r {
        Ok(Ok(())) => RunError::Stopped(Server::Health),
        Ok(Err(e)) => RunError::Health(e),
        Err(source) => RunError::Task {
            server: Server::Health,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listener() -> TcpListener {
        match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("bind: {e}"),
        }
    }

    fn addr_of(l: &TcpListener) -> SocketAddr {
        match l.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    fn config(grpc: Listen, health: Listen, election: Option<ElectionConfig>) -> OperatorConfig {
        OperatorConfig {
            provider: ProviderConfig {
                scope: Scope::Namespace("lab".into()),
                grpc: GrpcConfig {
                    listen: grpc,
                    tls: None,
                    provider: ProviderOptions::default(),
                    write_timeout: Duration::from_secs(2),
                },
                sync_timeout: Duration::from_secs(60),
            },
            health,
            election,
            controllers: Settings::default(),
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_start_up_error_naming_the_server() {
        let taken = listener().await;
        let err = config(
            Listen::Address(addr_of(&taken)),
            Listen::Bound(listener().await),
            None,
        )
        .bind()
        .await
        .err();
        assert!(
            matches!(err, Some(RunError::Bind { server: Server::Grpc, address, .. }) if address == addr_of(&taken)),
            "{err:?}"
        );

        let err = config(
            Listen::Bound(listener().await),
            Listen::Address(addr_of(&taken)),
            None,
        )
        .bind()
        .await
        .err();
        assert!(
            matches!(
                err,
                Some(RunError::Bind {
                    server: Server::Health,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn lease_timings_are_checked_before_the_ports_are_bound() {
        let taken = listener().await;
        let lease = LeaseSettings {
            name: "l".into(),
            namespace: "lab".into(),
            identity: "me".into(),
            duration: Duration::from_secs(5),
            renew_grace: Duration::from_secs(5),
        };
        let election = ElectionConfig {
            lease,
            readiness_requires_leader: true,
        };
        let err = config(
            Listen::Address(addr_of(&taken)),
            Listen::Address(addr_of(&taken)),
            Some(election),
        )
        .bind()
        .await
        .err();
        assert!(
            matches!(err, Some(RunError::Lease(LeaderError::Timing { .. }))),
            "{err:?}"
        );
    }

    use crate::operator::health::test_http::get;

    /// An API server that refuses connections: the cache never syncs.
    fn unreachable_clients() -> Clients {
        let url = match "http://127.0.0.1:1".parse() {
            Ok(u) => u,
            Err(e) => panic!("{e}"),
        };
        let config = kube::Config::new(url);
        let api = match kube::Client::try_from(config.clone()) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let drain = match DrainClient::new(config) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        Clients { api, drain }
    }

    #[tokio::test]
    async fn health_answers_while_the_caches_sync_and_shutdown_ends_the_wait() {
        let health = listener().await;
        let health_addr = addr_of(&health);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(
            unreachable_clients(),
            config(Listen::Bound(listener().await), Listen::Bound(health), None),
            async {
                let _ = stopped.await;
            },
        ));
        let h = get(health_addr, "/healthz").await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        let r = get(health_addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("not synced"), "{r}");

        let _ = stop.send(());
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("run did not stop cleanly: {other:?}"),
        }
        // The health server stopped with it.
        assert!(tokio::net::TcpStream::connect(health_addr).await.is_err());
    }
}
