//! kubectl's cluster flags (`--kubeconfig`, `--context`, `-n/--namespace`, `-A`), shared by
//! every command that talks to a cluster: flatten [`KubeArgs`] into the command's arguments and
//! call [`KubeArgs::connect`].
use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// `--kubeconfig` and `--context`: which cluster, as whom.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod's
    /// service account).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// [`ClusterArgs`] with `-n`/`-A`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KubeArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Namespace (default: the context's namespace, or the pod's).
    #[arg(
        short = 'n',
        long,
        value_name = "NAMESPACE",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// A client and what the configuration said about where it points.
#[derive(Clone)]
pub struct Cluster {
    pub client: kube::Client,
    /// The context's namespace (or the pod's); what `-n` defaults to.
    pub default_namespace: String,
    /// The API server's URL, for error messages.
    pub server: String,
}

/// Which namespaces a command reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    One(String),
    All,
}

impl std::fmt::Display for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Namespaces::One(ns) => write!(f, "namespace {ns}"),
            Namespaces::All => f.write_str("all namespaces"),
        }
    }
}

/// Why no client could be built. The kube error stays the `source`, so the edge prints why
/// (file missing, context unknown, bad certificate data).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot use --kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot use --context {context} (from $KUBECONFIG or ~/.kube/config)")]
    Context {
        context: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration found: set KUBECONFIG, pass --kubeconfig, or run in a pod"
    )]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client for {server}")]
    Client {
        server: String,
        #[source]
        source: kube::Error,
    },
}

impl ClusterArgs {
    /// A client from `--kubeconfig`/`--context`, else the usual inference (KUBECONFIG,
    /// ~/.kube/config, in-cluster). Nothing is sent to the server yet.
    pub async fn connect(&self) -> Result<Cluster, ConnectError> {
        Cluster::from_config(self.config().await?)
    }

    /// The client configuration [`ClusterArgs::connect`] uses, for clients built differently
    /// (the drain's client without kube's retries).
    pub async fn config(&self) -> Result<kube::Config, ConnectError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let path_text = path.display().to_string();
                let kubeconfig = |source| ConnectError::Kubeconfig {
                    path: path_text.clone(),
                    source,
                };
                let file = Kubeconfig::read_from(path).map_err(kubeconfig)?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(kubeconfig)?
            }
            (None, Some(context)) => {
                kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(|source| ConnectError::Context {
                        context: context.clone(),
                        source,
                    })?
            }
            (None, None) => kube::Config::infer()
                .await
                .map_err(ConnectError::NoConfig)?,
        };
        Ok(config)
    }
}

impl Cluster {
    /// A client for `config`. Nothing is sent to the server yet.
    pub fn from_config(config: kube::Config) -> Result<Cluster, ConnectError> {
        let server = config.cluster_url.to_string();
        let default_namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).map_err(|source| ConnectError::Client {
            server: server.clone(),
            source,
        })?;
        Ok(Cluster {
            client,
            default_namespace,
            server,
        })
    }
}

impl KubeArgs {
    /// See [`ClusterArgs::connect`].
    pub async fn connect(&self) -> Result<Cluster, ConnectError> {
        self.cluster.connect().await
    }

    /// `-A`, else `-n`, else the configuration's namespace.
    pub fn namespaces(&self, cluster: &Cluster) -> Namespaces {
        if self.all_namespaces {
            Namespaces::All
        } else {
            Namespaces::One(
                self.namespace
                    .clone()
                    .unwrap_or_else(|| cluster.default_namespace.clone()),
            )
        }
    }

    /// [`namespaces`](Self::namespaces) as the operator's cache scope.
    pub fn scope(&self, cluster: &Cluster) -> crate::operator::cache::Scope {
        use crate::operator::cache::Scope;
        match self.namespaces(cluster) {
            Namespaces::All => Scope::AllNamespaces,
            Namespaces::One(ns) => Scope::Namespace(ns),
        }
    }
}

/// A kube error for people: an answer of the API server reads `403 Forbidden: <message>`
/// (kube's own text adds a debug dump of the Status); a transport failure keeps its causes
/// (`source()`: connection refused, DNS, TLS trust), which the edge prints.
#[derive(Debug)]
pub struct KubeError(pub kube::Error);

impl KubeError {
    /// The HTTP status of an API server answer, `None` when no answer came.
    pub fn code(&self) -> Option<u16> {
        match &self.0 {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        }
    }
}

impl std::fmt::Display for KubeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            kube::Error::Api(s) => write!(f, "{} {}: {}", s.code, s.reason, s.message),
            other => other.fmt(f),
        }
    }
}

impl std::error::Error for KubeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            kube::Error::Api(_) => None,
            other => other.source(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kube: KubeArgs,
    }

    #[test]
    fn flags_read_like_kubectl() {
        let c = Cli::try_parse_from([
            "x",
            "--kubeconfig",
            "/k",
            "--context",
            "lab",
            "-n",
            "homelab",
        ]);
        let Ok(c) = c else {
            panic!("flags rejected");
        };
        assert_eq!(c.kube.cluster.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(c.kube.cluster.context.as_deref(), Some("lab"));
        assert_eq!(c.kube.namespace.as_deref(), Some("homelab"));
        assert!(Cli::try_parse_from(["x", "-n", "a", "-A"]).is_err());
        assert!(
            Cli::try_parse_from(["x", "--all-namespaces"]).is_ok_and(|c| c.kube.all_namespaces)
        );
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_names_the_flag_and_keeps_the_io_cause() {
        let args = ClusterArgs {
            kubeconfig: Some(PathBuf::from("/nonexistent/homelab-kubeconfig")),
            ..Default::default()
        };
        let err = match args.connect().await {
            Ok(_) => panic!("connected without a kubeconfig"),
            Err(e) => e,
        };
        let text = crate::commands::render_chain(&err);
        assert!(
            text.contains("--kubeconfig /nonexistent/homelab-kubeconfig"),
            "{text}"
        );
        assert!(text.contains("No such file or directory"), "{text}");
    }
}
