//! The gRPC provider's flags, shared by `serve-grpc` (the provider alone) and `run-operator`
//! (which flattens them): listen address, TLS, the cluster and scope, timeouts, GPU answers,
//! and `--print-cloud-config`. Both commands turn them into `operator::run`'s configuration here.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::kube_args::KubeArgs;
use crate::operator::cache::Scope;
use crate::operator::provider::service::DEFAULT_GPU_LABEL;
use crate::operator::provider::{GpuConfig, ProviderOptions, TlsOptions};
use crate::operator::run::{GrpcConfig, ProviderConfig, RunError, Server};

/// Default port: what the Helm chart's Service and the printed cloud-config use.
pub const DEFAULT_PORT: u16 = 8086;

#[derive(Debug, clap::Args)]
pub struct GrpcArgs {
    /// Address to serve gRPC on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8086")]
    pub listen: SocketAddr,

    /// host:port the Cluster Autoscaler dials, for `--print-cloud-config` (with mTLS, the host
    /// must be a name in the server certificate). Default: the listen address, or 127.0.0.1 when
    /// listening on every interface.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_address: Option<String>,

    /// The cluster and the namespace of the Group and Node CRs (`-A`: every namespace).
    #[command(flatten)]
    pub kube: KubeArgs,

    /// PEM server certificate (chain) for TLS; needs --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: when given, clients must present a certificate it signed (mTLS).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// Deadline for the API server writes of one mutating RPC; keep it below 3s (the
    /// provider's own bound) and the Cluster Autoscaler's grpc_timeout (5s by default), so CA
    /// gets our error, not its own timeout.
    #[arg(long, value_name = "DURATION", default_value = "2.5s", value_parser = parse_duration)]
    pub api_timeout: Duration,

    /// How long to wait for the caches to sync before giving up at start-up.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub sync_timeout: Duration,

    /// Node label whose value names a machine's GPU model: the Cluster Autoscaler's GPULabel.
    /// CA asks once and keeps the answer for its lifetime.
    #[arg(long, value_name = "LABEL", default_value = DEFAULT_GPU_LABEL)]
    pub gpu_label: String,

    /// A GPU model (a value of --gpu-label) for the Cluster Autoscaler's GetAvailableGPUTypes;
    /// repeat for several. CA asks once and keeps the answer for its lifetime.
    #[arg(long = "gpu-type", value_name = "TYPE")]
    pub gpu_types: Vec<String>,

    /// Print the Cluster Autoscaler cloud-config YAML for this server and exit.
    #[arg(long)]
    pub print_cloud_config: bool,

    /// Directory where the Cluster Autoscaler pod mounts its client certificate (tls.crt,
    /// tls.key) and the CA of our server certificate (ca.crt), for `--print-cloud-config`.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/etc/cluster-autoscaler/homelab-grpc"
    )]
    pub cloud_config_tls_dir: PathBuf,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::operator::api::parse_duration_arg(s)
}

/// The provider's configuration from the flags (budgets stay at their defaults).
pub fn provider_options(args: &GrpcArgs) -> ProviderOptions {
    ProviderOptions {
        gpu: GpuConfig {
            label: args.gpu_label.clone(),
            types: args.gpu_types.iter().cloned().collect(),
        },
        ..ProviderOptions::default()
    }
}

/// The address the Cluster Autoscaler should dial.
pub fn advertised_address(args: &GrpcArgs) -> String {
    if let Some(a) = &args.advertise_address {
        return a.clone();
    }
    let ip = args.listen.ip();
    if ip.is_unspecified() {
        format!("127.0.0.1:{}", args.listen.port())
    } else {
        args.listen.to_string()
    }
}

/// The `--cloud-config` file for `cluster-autoscaler --cloud-provider=externalgrpc`.
pub fn cloud_config_yaml(args: &GrpcArgs) -> String {
    let mut out = String::new();
    out.push_str("# cluster-autoscaler --cloud-provider=externalgrpc --cloud-config=<this file>\n");
    out.push_str(&format!(
        "address: {}\n",
        yaml_string(&advertised_address(args))
    ));
    if args.tls_cert.is_some() {
        let dir = &args.cloud_config_tls_dir;
        out.push_str(
            "# CA's client certificate and key (signed by the CA given to --client-ca), and the CA\n\
             # that signed this server's --tls-cert; the host in `address` must be in that certificate.\n",
        );
        for (key, file) in [
            ("cert", "tls.crt"),
            ("key", "tls.key"),
            ("cacert", "ca.crt"),
        ] {
            out.push_str(&format!(
                "{key}: {}\n",
                yaml_string(&dir.join(file).display().to_string())
            ));
        }
    }
    // The server answers mutations within --api-timeout; CA's default deadline is 5s.
    out.push_str("grpc_timeout: 5s\n");
    out
}

fn yaml_string(s: &str) -> String {
    // JSON strings are valid YAML scalars, so quoting never changes the meaning.
    serde_json::Value::String(s.to_owned()).to_string()
}

/// TLS settings from `--tls-cert`, `--tls-key`, `--client-ca`; `None` for plaintext h2c. The
/// server offers ALPN `h2` (CA's grpc-go requires it) and, with `--client-ca`, requires a client
/// certificate signed by it. The files are read and checked now, so a wrong file fails at
/// start-up with the flag and the path named; the server then re-reads them when they change.
pub fn server_tls(args: &GrpcArgs) -> anyhow::Result<Option<TlsOptions>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let tls = TlsOptions::new(cert.clone(), key.clone(), args.client_ca.clone());
    tls.check()?;
    Ok(Some(tls))
}

/// The provider's configuration for `operator::run`, with TLS as read by [`server_tls`] and the
/// scope from `KubeArgs::scope`.
pub fn provider_config(args: &GrpcArgs, scope: Scope, tls: Option<TlsOptions>) -> ProviderConfig {
    ProviderConfig {
        scope,
        grpc: GrpcConfig {
            listen: args.listen.into(),
            tls,
            provider: provider_options(args),
            write_timeout: args.api_timeout,
        },
        sync_timeout: args.sync_timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GrpcArgs,
    }

    fn parse(argv: &[&str]) -> GrpcArgs {
        let mut full = vec!["serve-grpc"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full) {
            Ok(c) => c.args,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn cloud_config_plaintext_uses_loopback_for_wildcard_listen() {
        let y = cloud_config_yaml(&parse(&[]));
        assert!(y.contains("address: \"127.0.0.1:8086\"\n"), "{y}");
        assert!(!y.contains("cert:"), "{y}");
        assert!(y.contains("grpc_timeout: 5s"), "{y}");
    }

    #[test]
    fn cloud_config_tls_names_the_client_files() {
        let a = parse(&[
            "--tls-cert",
            "/s/tls.crt",
            "--tls-key",
            "/s/tls.key",
            "--client-ca",
            "/s/ca.crt",
            "--advertise-address",
            "homelab.kube-system.svc:8086",
            "--cloud-config-tls-dir",
            "/etc/x",
        ]);
        let y = cloud_config_yaml(&a);
        let v: serde_yaml::Value = match serde_yaml::from_str(&y) {
            Ok(v) => v,
            Err(e) => panic!("{e}: {y}"),
        };
        assert_eq!(v["address"].as_str(), Some("homelab.kube-system.svc:8086"));
        assert_eq!(v["cert"].as_str(), Some("/etc/x/tls.crt"));
        assert_eq!(v["key"].as_str(), Some("/etc/x/tls.key"));
        assert_eq!(v["cacert"].as_str(), Some("/etc/x/ca.crt"));
        assert_eq!(v["grpc_timeout"].as_str(), Some("5s"));
    }

    #[test]
    fn namespace_and_all_namespaces_conflict() {
        let r = Cli::try_parse_from(["serve-grpc", "-n", "x", "-A"]);
        assert!(r.is_err());
    }

    #[test]
    fn tls_errors_name_the_flag_and_path() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let missing = dir.path().join("nope.crt");
        let key = dir.path().join("k.pem");
        if let Err(e) = std::fs::write(&key, "not a key") {
            panic!("{e}");
        }
        let a = parse(&[
            "--tls-cert",
            missing.to_str().unwrap_or_default(),
            "--tls-key",
            key.to_str().unwrap_or_default(),
        ]);
        let err = format!(
            "{:#}",
            server_tls(&a)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        );
        assert!(
            err.contains("--tls-cert") && err.contains("nope.crt"),
            "{err}"
        );

        let cert = dir.path().join("c.pem");
        if let Err(e) = std::fs::write(&cert, "garbage") {
            panic!("{e}");
        }
        let err = tls_error(&cert, &key);
        assert!(err.contains("--tls-cert") && err.contains("c.pem"), "{err}");
    }

    /// What `server_tls` says of `--tls-cert cert --tls-key key` (empty: accepted).
    fn tls_error(cert: &std::path::Path, key: &std::path::Path) -> String {
        let a = parse(&[
            "--tls-cert",
            cert.to_str().unwrap_or_default(),
            "--tls-key",
            key.to_str().unwrap_or_default(),
        ]);
        server_tls(&a)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    }

    /// The server refuses a key that is not the certificate's, so start-up checks the pair.
    #[test]
    fn a_key_of_another_certificate_fails_at_start_naming_both_files() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let pair = || match rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let (a, b) = (pair(), pair());
        let cert = dir.path().join("a.crt");
        let key = dir.path().join("b.key");
        for (path, pem) in [(&cert, a.cert.pem()), (&key, b.signing_key.serialize_pem())] {
            if let Err(e) = std::fs::write(path, pem) {
                panic!("{e}");
            }
        }
        let err = tls_error(&cert, &key);
        assert!(
            err.contains("--tls-key") && err.contains("b.key") && err.contains("a.crt"),
            "{err}"
        );
    }

    /// CA caches GPULabel and GetAvailableGPUTypes for its lifetime
    /// (`cloudprovider/externalgrpc/externalgrpc_cloud_provider.go`), so they come from flags.
    #[test]
    fn gpu_answers_come_from_flags() {
        let o = provider_options(&parse(&[]));
        assert_eq!(o.gpu.label, "nvidia.com/gpu.product");
        assert!(o.gpu.types.is_empty());
        let o = provider_options(&parse(&[
            "--gpu-label",
            "amd.com/gpu.product-name",
            "--gpu-type",
            "MI50",
            "--gpu-type",
            "W7900",
        ]));
        assert_eq!(o.gpu.label, "amd.com/gpu.product-name");
        assert_eq!(
            o.gpu.types.into_iter().collect::<Vec<_>>(),
            vec!["MI50".to_owned(), "W7900".to_owned()]
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
    }

    /// A flag's default is written as text for `--help`; the library's constant is the one
    /// definition, and this keeps the two equal.
    #[test]
    fn defaults_are_the_librarys() {
        let a = parse(&[]);
        assert_eq!(
            a.api_timeout,
            crate::operator::provider::cluster::DEFAULT_WRITE_TIMEOUT
        );
        assert_eq!(a.listen.port(), DEFAULT_PORT);
        assert_eq!(a.gpu_label, DEFAULT_GPU_LABEL);
        let c = provider_config(&a, Scope::AllNamespaces, None);
        assert_eq!(c.grpc.provider, ProviderOptions::default());
    }
}

/// A start-up error as the user should read it: a port that cannot be bound names the flag that
/// sets it (`--listen`, `--health-address`), so the fix is one look away.
pub fn name_the_flag(e: RunError) -> anyhow::Error {
    match e {
        RunError::Bind {
            server,
            address,
            source,
        } => {
            let flag = match server {
                Server::Grpc => "--listen",
                Server::Health => "--health-address",
            };
            anyhow::Error::new(source).context(format!(
                "cannot listen on {flag} {address} (the {server} server); another process has \
                 the port, or choose another address"
            ))
        }
        other => other.into(),
    }
}

#[cfg(test)]
mod flag_tests {
    use super::*;

    #[test]
    fn a_port_in_use_names_its_flag() {
        let bind = |server| RunError::Bind {
            server,
            address: SocketAddr::from(([127, 0, 0, 1], 8086)),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let grpc = format!("{:#}", name_the_flag(bind(Server::Grpc)));
        assert!(grpc.contains("--listen 127.0.0.1:8086"), "{grpc}");
        let health = format!("{:#}", name_the_flag(bind(Server::Health)));
        assert!(
            health.contains("--health-address 127.0.0.1:8086"),
            "{health}"
        );
    }
}
