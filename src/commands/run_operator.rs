//! `kubectl homelab run-operator`: the CA gRPC provider, the controllers (while leading) and the
//! health/metrics server in one process, over one set of reflector caches.
//!
//! Start-up: health server (so liveness answers at once) → caches synced → leader election →
//! gRPC provider + controllers. SIGTERM: not ready → controllers stopped → Lease released (so
//! mutating calls answer `Unavailable` from here on) → gRPC drained → health server stopped.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use super::kube_args::Cluster;
use super::serve_grpc::{self, server_tls, shutdown_signal};
use crate::operator::cache::Scope;
use crate::operator::controller::{self, Settings};
use crate::operator::health::{self, Readiness};
use crate::operator::leader::{
    DEFAULT_LEASE_NAME, Election, Leadership, LeaseSettings, default_identity,
};
use crate::operator::metrics::{GrpcMetricsLayer, Metrics};
use crate::operator::provider::cluster::ClusterSource;
use crate::operator::provider::{Provider, serve_provider_with_layer};
use crate::operator::runtime::{OperatorContext, Shutdown, run_while_leader, set, when_set};

use crate::operator::api::parse_duration_arg as parse_duration;

/// Where Kubernetes mounts the pod's namespace.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, clap::Args)]
// serve-grpc's flattened `Args` already takes the default group id "Args".
#[group(id = "RunOperatorArgs")]
pub struct Args {
    #[command(flatten)]
    pub serve: serve_grpc::Args,

    /// Elect one leader among the replicas through a Lease: only the leader reconciles and
    /// answers mutating gRPC calls. `false` for a single replica.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the leader election Lease.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_LEASE_NAME)]
    pub lease_name: String,

    /// Namespace of the Lease (default: the pod's namespace, else the Group/Node CRs' namespace).
    #[arg(long, value_name = "NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This replica's holder identity (default: pod name, process id and start time).
    #[arg(long, value_name = "ID")]
    pub lease_identity: Option<String>,

    /// How long the Lease stays valid after a renewal; a killed leader is replaced after about
    /// this long (whole seconds).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// Renew the Lease this long before it expires (whole seconds, less than --lease-duration).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub lease_renew_grace: Duration,

    /// With --leader-elect: report ready only while leading, so a Service in front of the
    /// replicas sends the Cluster Autoscaler to the leader (followers answer mutating calls
    /// with Unavailable).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub readiness_requires_leader: bool,

    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8081")]
    pub health_address: SocketAddr,

    /// How long the controllers and gRPC calls in flight get to finish after SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// How long a drain for a power-off not started by the Cluster Autoscaler may try to evict
    /// pods (PodDisruptionBudgets may refuse) before the power-off is given up and the machine
    /// left on, with the reason in its status.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How long a running machine's Node may be NotReady before it is recorded as lost (a
    /// shorter blip is ignored).
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = parse_duration)]
    pub not_ready_grace: Duration,

    /// Delay before retrying a failed power operation; doubles per failed attempt.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub retry_backoff: Duration,

    /// Longest delay between retries.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub retry_backoff_max: Duration,

    /// Failed attempts after which a machine stays Failed until its desired power changes or
    /// someone runs `kubectl homelab power on|off` again.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Machines reconciled at once (one machine is never reconciled twice at once).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// ServiceAccount of the pods the operator creates (power Jobs, node agents, Wake-on-LAN
    /// relays) when a Node CR's pod spec names none; give it no API rights (the Helm chart's
    /// `<release>-power`). Default: the namespace's `default`.
    #[arg(long, value_name = "NAME")]
    pub pod_service_account: Option<String>,
}

impl Args {
    /// The controllers' settings from the flags.
    pub fn controller_settings(&self) -> Settings {
        let signed =
            |d: Duration| jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
        let defaults = Settings::default();
        Settings {
            drain_timeout: self.drain_timeout,
            concurrency: self.concurrency,
            policy: crate::operator::machine::Policy {
                backoff_base: signed(self.retry_backoff),
                backoff_cap: signed(self.retry_backoff_max),
                max_attempts: self.max_attempts,
                not_ready_grace: signed(self.not_ready_grace),
                ..defaults.policy
            },
            pod_service_account: self.pod_service_account.clone(),
            ..defaults
        }
    }
}

/// The pod's namespace from its service account mount, if running in a pod.
fn pod_namespace(path: &Path) -> Option<String> {
    let ns = std::fs::read_to_string(path).ok()?;
    let ns = ns.trim();
    (!ns.is_empty()).then(|| ns.to_owned())
}

/// `--lease-namespace`, else the pod's namespace, else the watched namespace, else the
/// kubeconfig's default namespace.
fn lease_namespace(args: &Args, pod_ns: Option<String>, scope: &Scope, default_ns: &str) -> String {
    if let Some(ns) = &args.lease_namespace {
        return ns.clone();
    }
    if let Some(ns) = pod_ns {
        return ns;
    }
    match scope {
        Scope::Namespace(ns) => ns.clone(),
        Scope::AllNamespaces => default_ns.to_owned(),
    }
}

/// Runs the controllers until `shutdown` resolves; called only while this replica leads and
/// dropped at once when it stops leading.
async fn run_controllers(
    ctx: OperatorContext,
    settings: Settings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    controller::run(ctx.source, ctx.drain, settings, Some(ctx.metrics), shutdown).await;
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.serve.print_cloud_config {
        super::print_stdout(&serve_grpc::cloud_config_yaml(&args.serve))?;
        return Ok(());
    }
    let tls = server_tls(&args.serve)?;
    let config = args.serve.kube.cluster.config().await?;
    let drain = crate::operator::node::drain::DrainClient::new(config.clone())
        .context("cannot build the Kubernetes client for evictions")?;
    let cluster = Cluster::from_config(config)?;
    let scope = serve_grpc::scope(&args.serve.kube, &cluster);
    let default_namespace = cluster.default_namespace.clone();
    let client = cluster.client;
    let settings = LeaseSettings {
        name: args.lease_name.clone(),
        namespace: lease_namespace(
            &args,
            pod_namespace(Path::new(POD_NAMESPACE_FILE)),
            &scope,
            &default_namespace,
        ),
        identity: args.lease_identity.clone().unwrap_or_else(default_identity),
        duration: args.lease_duration,
        renew_grace: args.lease_renew_grace,
    };
    if args.leader_elect {
        settings.validate()?;
    }
    // Bind both ports before anything else: a port in use is a start-up error, not a late one.
    let grpc_listener = tokio::net::TcpListener::bind(args.serve.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", args.serve.listen))?;
    let health_listener = tokio::net::TcpListener::bind(args.health_address)
        .await
        .with_context(|| format!("cannot listen on --health-address {}", args.health_address))?;
    eprintln!(
        "run-operator: {scope}; gRPC on {}{}; health and metrics on {}; {}",
        args.serve.listen,
        if tls.is_some() { " (TLS)" } else { "" },
        args.health_address,
        if args.leader_elect {
            format!(
                "leader election as {:?} on Lease {}/{} ({:?}, renewed {:?} before expiry)",
                settings.identity,
                settings.namespace,
                settings.name,
                settings.duration,
                settings.renew_grace
            )
        } else {
            "no leader election (--leader-elect=false): this replica always acts".to_owned()
        }
    );

    let metrics = Metrics::new();
    let source = Arc::new(
        ClusterSource::start(client.clone(), scope.clone())
            .with_write_timeout(args.serve.api_timeout),
    );
    let (stopping_tx, stopping) = watch::channel(false);
    let leadership_cell: Arc<OnceLock<Leadership>> = Arc::new(OnceLock::new());
    let readiness = readiness(
        source.clone(),
        leadership_cell.clone(),
        stopping.clone(),
        args.leader_elect && args.readiness_requires_leader,
    );
    let (health_stop, health_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut health = tokio::spawn(health::serve(
        health_listener,
        metrics.clone(),
        readiness,
        async {
            let _ = health_stopped.await;
        },
    ));

    // Relay the first SIGTERM/Ctrl-C to every part.
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        stopping_tx.send_replace(true);
    });

    let outcome = serve_after_sync(
        &args,
        client,
        drain,
        scope,
        source,
        tls,
        grpc_listener,
        settings,
        metrics,
        leadership_cell,
        stopping,
        &mut health,
    )
    .await;

    signal.abort();
    let _ = health_stop.send(());
    match tokio::time::timeout(Duration::from_secs(5), &mut health).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "health server"),
        Ok(Err(e)) => tracing::warn!(error = %e, "health server task"),
        Err(_) => health.abort(),
        Ok(Ok(Ok(()))) => {}
    }
    tracing::info!("stopped");
    outcome
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

#[allow(clippy::too_many_arguments)]
async fn serve_after_sync(
    args: &Args,
    client: kube::Client,
    drain: crate::operator::node::drain::DrainClient,
    scope: Scope,
    source: Arc<ClusterSource>,
    tls: Option<crate::operator::provider::TlsOptions>,
    grpc_listener: tokio::net::TcpListener,
    settings: LeaseSettings,
    metrics: Metrics,
    leadership_cell: Arc<OnceLock<Leadership>>,
    mut stopping: watch::Receiver<bool>,
    health: &mut tokio::task::JoinHandle<Result<(), health::HealthError>>,
) -> anyhow::Result<()> {
    tracing::info!(%scope, "waiting for the caches to sync");
    tokio::select! {
        r = source.wait_until_ready(args.serve.sync_timeout) => r?,
        () = set(&mut stopping) => return Ok(()),
        r = &mut *health => return Err(health_ended(r)),
    }

    let election = if args.leader_elect {
        let e = tokio::select! {
            e = Election::start(client.clone(), settings) => e?,
            () = set(&mut stopping) => return Ok(()),
        };
        Some(e)
    } else {
        None
    };
    let leadership = election
        .as_ref()
        .map(Election::leadership)
        .unwrap_or_else(Leadership::always);
    let _ = leadership_cell.set(leadership.clone());
    let mirror = tokio::spawn(mirror_leadership(leadership.clone(), metrics.clone()));

    let mut provider =
        Provider::with_options(source.clone(), serve_grpc::provider_options(&args.serve));
    if args.leader_elect {
        provider = provider.with_mutation_gate(leadership.subscribe());
    }
    let (grpc_stop, grpc_stopped) = watch::channel(false);
    let mut grpc = tokio::spawn(serve_provider_with_layer(
        grpc_listener,
        provider,
        tls,
        GrpcMetricsLayer::new(metrics.clone()),
        when_set(grpc_stopped),
    ));

    let ctx = OperatorContext {
        client,
        drain,
        source,
        scope,
        metrics,
        leadership: leadership.clone(),
    };
    let controller_settings = args.controller_settings();
    let controllers = run_while_leader(
        leadership,
        stopping.clone(),
        args.shutdown_timeout,
        move |shutdown| run_controllers(ctx.clone(), controller_settings.clone(), shutdown),
    );

    // Runs until SIGTERM, or until a server fails.
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
    if failure.is_none() {
        grpc_stop.send_replace(true);
        match tokio::time::timeout(args.shutdown_timeout, &mut grpc).await {
            Ok(r) => flatten_grpc(r)?,
            Err(_) => {
                tracing::warn!(
                    "gRPC calls still open after {:?}; closing",
                    args.shutdown_timeout
                );
                grpc.abort();
            }
        }
    } else {
        grpc.abort();
    }
    failure.map_or(Ok(()), Err)
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

type GrpcResult = Result<Result<(), crate::operator::provider::ServeError>, tokio::task::JoinError>;

fn flatten_grpc(r: GrpcResult) -> anyhow::Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the gRPC server failed")),
        Err(e) => Err(anyhow::Error::new(e).context("the gRPC server task failed")),
    }
}

fn grpc_ended(r: GrpcResult) -> anyhow::Error {
    match flatten_grpc(r) {
        Ok(()) => anyhow::anyhow!("the gRPC server stopped unexpectedly"),
        Err(e) => e,
    }
}

fn health_ended(
    r: Result<Result<(), health::HealthError>, tokio::task::JoinError>,
) -> anyhow::Error {
    match r {
        Ok(Ok(())) => anyhow::anyhow!("the health server stopped unexpectedly"),
        Ok(Err(e)) => anyhow::Error::new(e),
        Err(e) => anyhow::Error::new(e).context("the health server task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Args {
        let mut full = vec!["run-operator"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full) {
            Ok(c) => c.args,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_whole_cli_definition_is_consistent() {
        // clap checks group ids and flag names only when a command is built.
        <crate::commands::Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn defaults_elect_a_leader_and_require_it_for_readiness() {
        let a = parse(&[]);
        assert!(a.leader_elect);
        assert!(a.readiness_requires_leader);
        assert_eq!(a.lease_name, DEFAULT_LEASE_NAME);
        assert_eq!(a.lease_duration, Duration::from_secs(15));
        assert_eq!(a.serve.listen.port(), serve_grpc::DEFAULT_PORT);
        let a = parse(&["--leader-elect=false"]);
        assert!(!a.leader_elect);
    }

    #[test]
    fn lease_namespace_prefers_the_flag_then_the_pod_then_the_scope() {
        let scope = Scope::Namespace("lab".into());
        let a = parse(&["--lease-namespace", "ops"]);
        assert_eq!(lease_namespace(&a, Some("pod".into()), &scope, "d"), "ops");
        let a = parse(&[]);
        assert_eq!(lease_namespace(&a, Some("pod".into()), &scope, "d"), "pod");
        assert_eq!(lease_namespace(&a, None, &scope, "d"), "lab");
        assert_eq!(lease_namespace(&a, None, &Scope::AllNamespaces, "d"), "d");
    }

    #[test]
    fn pod_namespace_is_read_from_the_service_account_mount() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let f = dir.path().join("namespace");
        if let Err(e) = std::fs::write(&f, "homelab\n") {
            panic!("{e}");
        }
        assert_eq!(pod_namespace(&f), Some("homelab".into()));
        assert_eq!(pod_namespace(&dir.path().join("missing")), None);
    }
}
