//! `kubectl homelab run-operator`: turns the flags into `operator::run`'s configuration and runs
//! it (the CA gRPC provider, the controllers while leading and the health/metrics server in one
//! process, over one watch cache; the start-up and shutdown order is described there).
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::grpc_args::{GrpcArgs, cloud_config_yaml, name_the_flag, provider_config, server_tls};
use super::kube_args::Cluster;
use crate::operator::cache::Scope;
use crate::operator::controller::Settings;
use crate::operator::leader::{DEFAULT_LEASE_NAME, LeaseSettings, default_identity};
use crate::operator::node::drain::DrainClient;
use crate::operator::provider::TlsOptions;
use crate::operator::run::{Clients, ElectionConfig, OperatorConfig, shutdown_signal};

use crate::operator::api::parse_duration_arg as parse_duration;

/// Where Kubernetes mounts the pod's namespace.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
/// The pod's ServiceAccount token: names the operator's own ServiceAccount when
/// `--operator-service-account` is not given.
const POD_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub serve: GrpcArgs,

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
    pub health_address: std::net::SocketAddr,

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
    /// `<fullname>-power`, e.g. `homelab-kubectl-homelab-power`). Default: the namespace's `default`.
    #[arg(long, value_name = "NAME")]
    pub pod_service_account: Option<String>,

    /// An image the privileged node agent and the host-network Wake-on-LAN relay may run:
    /// exact, or a prefix ending in `*`; repeat for several. A Node CR naming another is refused.
    #[arg(long = "allowed-image", value_name = "IMAGE", default_values_t = default_allowed_images())]
    pub allowed_images: Vec<String>,

    /// A command the node agent may run on the host (words separated by spaces); repeat for
    /// several. A Node CR naming another is refused.
    #[arg(long = "node-agent-command", value_name = "COMMAND", default_values_t = default_node_agent_commands())]
    pub node_agent_commands: Vec<String>,

    /// A ServiceAccount a Node CR's `job` driver may name (in the CR's namespace); repeat for
    /// several. Without it a CR that names one is refused. The operator's own is always refused.
    #[arg(long = "job-service-account", value_name = "NAME")]
    pub job_service_accounts: Vec<String>,

    /// The operator's own ServiceAccount, NAMESPACE/NAME, which no pod it creates may use.
    /// Default: read from the pod's service-account token.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_service_account)]
    pub operator_service_account: Option<(String, String)>,

    /// Let a Node CR's `job` driver ask for a privileged container or the host's network.
    #[arg(long, value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_privileged_jobs: bool,

    /// Kubernetes Nodes with these labels (KEY=VALUE,...) may be adopted by a Node CR without
    /// the `infra.homecluster.dev/adoptable=true` label. Control-plane nodes never are.
    #[arg(long, value_name = "KEY=VALUE,...", value_parser = parse_label_selector)]
    pub adopt_node_selector: Option<std::collections::BTreeMap<String, String>>,

    /// The `--max-node-provision-time` the Cluster Autoscaler runs with (give both the same
    /// value): Groups without `maxNodeProvisionTime` check their members' boot timeouts and
    /// learned boot times against it.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub max_node_provision_time: Duration,

    /// How often a running machine's energy counters (`status.energy`) are written at most.
    /// Lifecycle transitions write them at once; a machine that is off is not written.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub energy_write_interval: Duration,

    /// The electricity tariff of machines whose Group sets none, as JSON or YAML in the shape
    /// of a Group's `spec.electricity`, e.g. '{pricePerKWh: 0.30, currency: EUR}'.
    #[arg(long, value_name = "TARIFF", value_parser = parse_electricity)]
    pub electricity: Option<crate::operator::api::Electricity>,
}

fn parse_electricity(s: &str) -> Result<crate::operator::api::Electricity, String> {
    let e: crate::operator::api::Electricity = serde_yaml::from_str(s).map_err(|e| {
        format!("{e}; write the tariff like '{{pricePerKWh: 0.30, currency: EUR}}'")
    })?;
    if !(e.price_per_kwh.is_finite() && e.price_per_kwh >= 0.0) {
        return Err(format!(
            "pricePerKWh {} is not a non-negative price; write it like 0.30",
            e.price_per_kwh
        ));
    }
    Ok(e)
}

fn default_allowed_images() -> Vec<String> {
    crate::operator::trust::TrustPolicy::default().allowed_images
}

fn default_node_agent_commands() -> Vec<String> {
    crate::operator::trust::TrustPolicy::default()
        .node_agent_commands
        .iter()
        .map(|c| c.join(" "))
        .collect()
}

fn parse_service_account(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!(
            "{s:?} is not NAMESPACE/NAME; write it like kube-system/kubectl-homelab"
        )),
    }
}

fn parse_label_selector(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => {
                return Err(format!(
                    "{pair:?} is not KEY=VALUE; write the selector like homelab.lan/pool=lab,zone=a"
                ));
            }
        }
    }
    Ok(out)
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
            energy_write_interval: self.energy_write_interval,
            max_node_provision_time: signed(self.max_node_provision_time),
            electricity: self.electricity.clone(),
            meters: defaults.meters.clone(),
            trust: crate::operator::trust::TrustPolicy {
                allowed_images: self.allowed_images.clone(),
                node_agent_commands: self
                    .node_agent_commands
                    .iter()
                    .map(|c| c.split_whitespace().map(str::to_owned).collect())
                    .collect(),
                job_service_accounts: self.job_service_accounts.clone(),
                operator_service_account: self.operator_service_account.clone(),
                allow_privileged_jobs: self.allow_privileged_jobs,
                adopt_node_selector: self.adopt_node_selector.clone().unwrap_or_default(),
            },
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

/// The ServiceAccount (namespace, name) a service-account token is for: its JWT payload's
/// `sub`, `system:serviceaccount:NAMESPACE:NAME`. The signature is not checked: the token is
/// the pod's own, read from its mount. `Err` says what is wrong with it.
fn token_service_account(token: &str) -> Result<(String, String), String> {
    use base64::Engine as _;
    let payload = token
        .trim()
        .split('.')
        .nth(1)
        .ok_or("not a JWT (no payload part)")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("the payload is not base64url: {e}"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("the payload is not JSON: {e}"))?;
    let sub = claims
        .get("sub")
        .and_then(|s| s.as_str())
        .ok_or("the payload has no \"sub\"")?;
    match sub
        .strip_prefix("system:serviceaccount:")
        .map(|r| r.split(':').collect::<Vec<_>>())
    {
        Some(parts) if parts.len() == 2 && parts.iter().all(|p| !p.is_empty()) => {
            Ok((parts[0].to_owned(), parts[1].to_owned()))
        }
        _ => Err(format!(
            "its subject {sub:?} is not system:serviceaccount:NAMESPACE:NAME"
        )),
    }
}

/// The operator's own ServiceAccount from the pod's token at `path`: `None` outside a pod (no
/// token), or with a warning when the token cannot be read as one (pass
/// `--operator-service-account` then).
fn pod_service_account(path: &Path) -> Option<(String, String)> {
    let token = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the pod's service-account token; pass --operator-service-account so no pod the operator creates runs as its ServiceAccount");
            return None;
        }
    };
    match token_service_account(&token) {
        Ok(sa) => Some(sa),
        Err(problem) => {
            tracing::warn!(path = %path.display(), %problem, "the pod's service-account token does not name a ServiceAccount; pass --operator-service-account so no pod the operator creates runs as its ServiceAccount");
            None
        }
    }
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

/// The operator's configuration from the flags; `pod_ns` and `default_ns` decide the Lease's
/// namespace when `--lease-namespace` is not given.
fn operator_config(
    args: &Args,
    scope: Scope,
    default_ns: &str,
    pod_ns: Option<String>,
    tls: Option<TlsOptions>,
) -> OperatorConfig {
    let election = args.leader_elect.then(|| ElectionConfig {
        lease: LeaseSettings {
            name: args.lease_name.clone(),
            namespace: lease_namespace(args, pod_ns, &scope, default_ns),
            identity: args.lease_identity.clone().unwrap_or_else(default_identity),
            duration: args.lease_duration,
            renew_grace: args.lease_renew_grace,
        },
        readiness_requires_leader: args.readiness_requires_leader,
    });
    OperatorConfig {
        provider: provider_config(&args.serve, scope, tls),
        health: args.health_address.into(),
        election,
        controllers: args.controller_settings(),
        shutdown_timeout: args.shutdown_timeout,
    }
}

/// The start-up line: what this replica serves and how it elects.
fn banner(args: &Args, config: &OperatorConfig) -> String {
    format!(
        "run-operator: {}; gRPC on {}{}; health and metrics on {}; {}",
        config.provider.scope,
        args.serve.listen,
        if config.provider.grpc.tls.is_some() {
            " (TLS)"
        } else {
            ""
        },
        args.health_address,
        match &config.election {
            Some(ElectionConfig { lease, .. }) => format!(
                "leader election as {:?} on Lease {}/{} ({:?}, renewed {:?} before expiry)",
                lease.identity, lease.namespace, lease.name, lease.duration, lease.renew_grace
            ),
            None =>
                "no leader election (--leader-elect=false): this replica always acts".to_owned(),
        }
    )
}

pub async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.serve.print_cloud_config {
        super::print_stdout(&cloud_config_yaml(&args.serve))?;
        return Ok(());
    }
    if args.operator_service_account.is_none() {
        args.operator_service_account = pod_service_account(Path::new(POD_TOKEN_FILE));
    }
    let tls = server_tls(&args.serve)?;
    let kube_config = args.serve.kube.cluster.config().await?;
    let drain = DrainClient::new(kube_config.clone())
        .context("cannot build the Kubernetes client for evictions")?;
    let cluster = Cluster::from_config(kube_config)?;
    let config = operator_config(
        &args,
        args.serve.kube.scope(&cluster),
        &cluster.default_namespace,
        pod_namespace(Path::new(POD_NAMESPACE_FILE)),
        tls,
    );
    let banner = banner(&args, &config);
    // Binding first: a port in use or a wrong Lease timing fails before the banner.
    let operator = config.bind().await.map_err(name_the_flag)?;
    eprintln!("{banner}");
    let clients = Clients {
        api: cluster.client,
        drain,
    };
    operator
        .run(clients, shutdown_signal())
        .await
        .map_err(name_the_flag)?;
    Ok(())
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
        assert_eq!(a.serve.listen.port(), super::super::grpc_args::DEFAULT_PORT);
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

    /// The flags' defaults are written as text for `--help`; the library's constants are the
    /// one definition, and these keep the two equal.
    #[test]
    fn drain_timeout_default_is_the_drain_codes() {
        assert_eq!(
            parse(&[]).drain_timeout,
            crate::operator::node::drain::DEFAULT_DRAIN_TIMEOUT.unsigned_abs()
        );
    }

    #[test]
    fn controller_defaults_are_the_librarys() {
        let flags = parse(&[]).controller_settings();
        let library = Settings::default();
        assert_eq!(flags.drain_timeout, library.drain_timeout);
        assert_eq!(flags.concurrency, library.concurrency);
        assert_eq!(flags.policy, library.policy);
        assert_eq!(flags.pod_service_account, library.pod_service_account);
        assert_eq!(flags.poll_interval, library.poll_interval);
    }

    #[test]
    fn lease_defaults_are_the_librarys() {
        use crate::operator::leader::{DEFAULT_LEASE_DURATION, DEFAULT_RENEW_GRACE};
        let a = parse(&[]);
        assert_eq!(a.lease_name, DEFAULT_LEASE_NAME);
        assert_eq!(a.lease_duration, DEFAULT_LEASE_DURATION);
        assert_eq!(a.lease_renew_grace, DEFAULT_RENEW_GRACE);
    }

    #[test]
    fn the_configuration_follows_the_flags() {
        let scope = Scope::Namespace("lab".into());
        let c = operator_config(&parse(&[]), scope.clone(), "d", None, None);
        assert_eq!(c.provider.scope, scope);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(20));
        let e = c
            .election
            .as_ref()
            .map(|e| (e.lease.namespace.clone(), e.readiness_requires_leader));
        assert_eq!(e, Some(("lab".to_owned(), true)));
        assert!(banner(&parse(&[]), &c).contains("on Lease lab/kubectl-homelab-operator"));

        let a = parse(&["--leader-elect=false", "--lease-identity", ""]);
        let c = operator_config(&a, scope, "d", None, None);
        assert!(c.election.is_none());
        assert!(banner(&a, &c).contains("no leader election"));
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

    /// A JWT whose payload is `claims` (header and signature are not read).
    fn jwt(claims: &serde_json::Value) -> String {
        use base64::Engine as _;
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","kid":"k"}"#),
            b64(claims.to_string().as_bytes()),
            b64(b"signature")
        )
    }

    #[test]
    fn the_operators_service_account_is_read_from_its_token() {
        let token = jwt(&serde_json::json!({
            "aud": ["https://kubernetes.default.svc"],
            "sub": "system:serviceaccount:homelab:kubectl-homelab",
            "kubernetes.io": { "namespace": "homelab" },
        }));
        assert_eq!(
            token_service_account(&format!("{token}\n")),
            Ok(("homelab".into(), "kubectl-homelab".into()))
        );
    }

    #[test]
    fn a_token_that_names_no_service_account_is_an_error_not_a_panic() {
        for bad in [
            String::new(),
            "not-a-jwt".to_owned(),
            "a.%%%.c".to_owned(),
            jwt(&serde_json::json!("a string")),
            jwt(&serde_json::json!({ "iss": "kubernetes" })),
            jwt(&serde_json::json!({ "sub": "alice" })),
            jwt(&serde_json::json!({ "sub": "system:serviceaccount:homelab" })),
            jwt(&serde_json::json!({ "sub": "system:serviceaccount:homelab:a:b" })),
            jwt(&serde_json::json!({ "sub": "system:serviceaccount::name" })),
        ] {
            assert!(token_service_account(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_missing_or_bad_token_file_gives_no_service_account() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(pod_service_account(&dir.path().join("missing")), None);
        let bad = dir.path().join("token");
        if let Err(e) = std::fs::write(&bad, "garbage") {
            panic!("{e}");
        }
        assert_eq!(pod_service_account(&bad), None);
        let good = dir.path().join("good");
        let token = jwt(&serde_json::json!({ "sub": "system:serviceaccount:ns:sa" }));
        if let Err(e) = std::fs::write(&good, token) {
            panic!("{e}");
        }
        assert_eq!(pod_service_account(&good), Some(("ns".into(), "sa".into())));
    }
}
