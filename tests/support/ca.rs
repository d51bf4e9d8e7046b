//! The real Cluster Autoscaler (CA 1.36.1, built by tests/k8s-bins/build.sh) against our provider
//! binary: [`Provider`] starts `kubectl-homelab run-operator` (or `serve-grpc`) as a child
//! process (and can SIGKILL and restart it), [`ClusterAutoscaler`] starts CA with
//! `--cloud-provider=externalgrpc` and the cloud-config our binary prints, and reads back what CA
//! did: the gRPC calls it made (from its `--v=5` log), its status ConfigMap, and any provider
//! errors it logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kubectl_homelab::operator::provider::proto::NodeGroupsRequest;
use kubectl_homelab::operator::provider::proto::cloud_provider_client::CloudProviderClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::control_plane::{ControlPlane, lock, write};
use super::pki::Ca;
use super::process::{self, Managed};

/// Which of our binary's commands serves CA's gRPC. Both take the same serving flags
/// (`--listen`, `-n`, `--tls-cert`, `--tls-key`, `--client-ca`, `--print-cloud-config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderCommand {
    /// `serve-grpc`: records CA's decisions as each Node CR's `spec.powerState`; nothing switches
    /// machines.
    ServeGrpc,
    /// `run-operator`: the provider plus the controllers that carry power out through Jobs.
    RunOperator,
}

impl ProviderCommand {
    pub fn subcommand(self) -> &'static str {
        match self {
            ProviderCommand::ServeGrpc => "serve-grpc",
            ProviderCommand::RunOperator => "run-operator",
        }
    }
}

/// How CA reaches the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// h2c, no TLS.
    Plaintext,
    /// Mutual TLS with certificates this harness generates: the provider requires a client
    /// certificate signed by the test CA, and CA verifies the provider's serving certificate.
    Mtls,
}

/// TLS material of one provider: the server's files and CA's client files.
struct TlsFiles {
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_ca: PathBuf,
    /// Directory holding CA's `tls.crt`, `tls.key`, `ca.crt` (named by the cloud-config).
    ca_client_dir: PathBuf,
}

/// Our binary serving CA's externalgrpc protocol, as a child process that dies with the test.
pub struct Provider {
    command: ProviderCommand,
    child: std::sync::Mutex<Managed>,
    /// The command line, for [`Self::restart`].
    args: Vec<String>,
    /// How many times it was started (each run logs to a file of its own).
    runs: std::sync::atomic::AtomicUsize,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    tls: Option<TlsFiles>,
    /// The `--cloud-config` file for CA, as `--print-cloud-config` printed it.
    pub cloud_config: PathBuf,
    /// The first run's log; a restart logs to `<name>.<n>.log` next to it.
    pub log: PathBuf,
}

impl Provider {
    /// Starts `kubectl-homelab <command>` for the CRs of `namespace` on a free loopback port,
    /// writes the cloud-config it prints, and waits until it answers `NodeGroups` (it serves only
    /// once its caches synced).
    pub async fn start(
        cp: &ControlPlane,
        namespace: &str,
        command: ProviderCommand,
        transport: Transport,
    ) -> anyhow::Result<Provider> {
        let bin = Path::new(env!("CARGO_BIN_EXE_kubectl-homelab"));
        let port = process::free_ports(1).context("picking a port for the provider")?[0];
        let addr = format!("127.0.0.1:{port}");
        let dir = cp.dir().join(format!("provider-{namespace}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tls = match transport {
            Transport::Plaintext => None,
            Transport::Mtls => Some(tls_files(&dir)?),
        };
        let mut args: Vec<String> = vec![
            command.subcommand().to_owned(),
            "--listen".to_owned(),
            addr.clone(),
            "-n".to_owned(),
            namespace.to_owned(),
            "--kubeconfig".to_owned(),
            cp.kubeconfig().display().to_string(),
        ];
        if command == ProviderCommand::RunOperator {
            // One replica, its health server on a port of its own (tests run side by side), and
            // a NotReady grace short enough for a scenario.
            let health = process::free_ports(1).context("picking a port for /healthz")?[0];
            for a in [
                "--leader-elect=false".to_owned(),
                "--health-address".to_owned(),
                format!("127.0.0.1:{health}"),
                "--not-ready-grace".to_owned(),
                "3s".to_owned(),
            ] {
                args.push(a);
            }
        }
        if let Some(t) = &tls {
            for (flag, path) in [
                ("--tls-cert", &t.server_cert),
                ("--tls-key", &t.server_key),
                ("--client-ca", &t.client_ca),
            ] {
                args.push(flag.to_owned());
                args.push(path.display().to_string());
            }
        }

        // The cloud-config comes from the binary itself, with the same flags, so a test run
        // proves what a user would paste into CA's deployment.
        let mut print = args.clone();
        print.push("--print-cloud-config".to_owned());
        if let Some(t) = &tls {
            print.push("--cloud-config-tls-dir".to_owned());
            print.push(t.ca_client_dir.display().to_string());
        }
        let out = tokio::process::Command::new(bin)
            .args(&print)
            .output()
            .await
            .with_context(|| format!("running {} {}", bin.display(), print.join(" ")))?;
        anyhow::ensure!(
            out.status.success(),
            "`{} --print-cloud-config` failed with {}: {}",
            command.subcommand(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let cloud_config = dir.join("cloud-config.yaml");
        let yaml =
            String::from_utf8(out.stdout).context("the printed cloud-config is not UTF-8")?;
        write(&cloud_config, &yaml)?;

        let log = dir.join(format!("{}.log", command.subcommand()));
        let child = Managed::spawn_with_env(
            command.subcommand(),
            bin,
            &args,
            &log,
            &[("KUBECTL_HOMELAB_LOG", "info")],
        )
        .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))?;
        let provider = Provider {
            command,
            child: std::sync::Mutex::new(child),
            args,
            runs: std::sync::atomic::AtomicUsize::new(1),
            addr,
            tls,
            cloud_config,
            log,
        };
        provider.wait_serving(Duration::from_secs(60)).await?;
        Ok(provider)
    }

    /// SIGKILL to the provider's process group (no shutdown path runs), then reaps it.
    pub fn kill(&self) {
        lock(&self.child).kill();
    }

    /// The process id of the current run (to read its /proc figures).
    pub fn pid(&self) -> u32 {
        lock(&self.child).pid()
    }

    /// Starts the provider again with the same flags (same port, certificates, namespace) and
    /// waits until it answers `NodeGroups`.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let bin = Path::new(env!("CARGO_BIN_EXE_kubectl-homelab"));
        let run = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = self.log.with_extension(format!("{run}.log"));
        let child = Managed::spawn_with_env(
            self.command.subcommand(),
            bin,
            &self.args,
            &log,
            &[("KUBECTL_HOMELAB_LOG", "info")],
        )
        .with_context(|| format!("restarting {} {}", bin.display(), self.args.join(" ")))?;
        *lock(&self.child) = child;
        self.wait_serving(Duration::from_secs(60)).await
    }

    /// The log of the current run.
    pub fn current_log(&self) -> PathBuf {
        lock(&self.child).log.clone()
    }

    /// A gRPC client that connects the way CA does (with CA's client certificate under mTLS).
    pub async fn client(&self) -> anyhow::Result<CloudProviderClient<Channel>> {
        let endpoint = match &self.tls {
            None => Endpoint::from_shared(format!("http://{}", self.addr))?,
            Some(t) => {
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&t.ca_pem))
                    .domain_name("127.0.0.1")
                    .identity(Identity::from_pem(&t.client_cert_pem, &t.client_key_pem));
                Endpoint::from_shared(format!("https://{}", self.addr))?.tls_config(tls)?
            }
        };
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .with_context(|| format!("connecting to the provider at {}", self.addr))?;
        Ok(CloudProviderClient::new(channel))
    }

    async fn wait_serving(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let attempt = async {
                let mut c = self.client().await?;
                c.node_groups(NodeGroupsRequest {})
                    .await
                    .context("NodeGroups")?;
                anyhow::Ok(())
            };
            let err = match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Some(status) = lock(&self.child).exited() {
                anyhow::bail!(
                    "{} exited with {status} before serving; last log lines:\n{}",
                    self.command.subcommand(),
                    process::log_tail(&self.current_log(), 40)
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "{} at {} did not answer NodeGroups within {timeout:?} ({err:#}); last log \
                     lines:\n{}",
                    self.command.subcommand(),
                    self.addr,
                    process::log_tail(&self.current_log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.current_log(), lines)
    }
}

/// Certificates for one mTLS provider: a fresh test CA signs the provider's serving certificate
/// (for 127.0.0.1, the host CA dials) and CA's client certificate.
fn tls_files(dir: &Path) -> anyhow::Result<TlsFiles> {
    let ca = Ca::generate()?;
    let server = ca.serving()?;
    let client = ca.client("cluster-autoscaler", &[])?;
    let ca_client_dir = dir.join("ca-client");
    std::fs::create_dir_all(&ca_client_dir)
        .with_context(|| format!("creating {}", ca_client_dir.display()))?;
    let files = TlsFiles {
        ca_pem: ca.cert_pem.clone(),
        client_cert_pem: client.cert_pem.clone(),
        client_key_pem: client.key_pem.clone(),
        server_cert: dir.join("tls.crt"),
        server_key: dir.join("tls.key"),
        client_ca: dir.join("client-ca.crt"),
        ca_client_dir,
    };
    write(&files.server_cert, &server.cert_pem)?;
    write(&files.server_key, &server.key_pem)?;
    write(&files.client_ca, &ca.cert_pem)?;
    write(&files.ca_client_dir.join("tls.crt"), &client.cert_pem)?;
    write(&files.ca_client_dir.join("tls.key"), &client.key_pem)?;
    write(&files.ca_client_dir.join("ca.crt"), &ca.cert_pem)?;
    Ok(files)
}

/// CA's flags that vary per scenario; the rest are fixed short timings
/// (docs/testing.md, "Fast timings").
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// `--max-node-provision-time`: how long CA waits for a powered-on machine to register.
    pub max_node_provision_time: Duration,
    /// `--scale-down-unneeded-time` and `--scale-down-delay-after-add`.
    pub scale_down_after: Duration,
    /// `--expander` (CA's default, `least-waste`, when `None`).
    pub expander: Option<String>,
    /// Appended last (CA's flag parsing lets a later flag win).
    pub extra_args: Vec<String>,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            max_node_provision_time: Duration::from_secs(60),
            scale_down_after: Duration::from_secs(15),
            expander: None,
            extra_args: Vec::new(),
        }
    }
}

impl CaOptions {
    pub fn max_node_provision_time(mut self, d: Duration) -> Self {
        self.max_node_provision_time = d;
        self
    }
    pub fn expander(mut self, name: &str) -> Self {
        self.expander = Some(name.to_owned());
        self
    }
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// A running cluster-autoscaler. Every start appends to the same log file, so call counts and
/// error scans cover restarts too; [`Self::mark`] starts a new window.
pub struct ClusterAutoscaler {
    binary: PathBuf,
    args: Vec<String>,
    child: std::sync::Mutex<Option<Managed>>,
    pub log: PathBuf,
    /// Logs of earlier runs (a restart starts a new file; all are read together).
    runs: std::sync::Mutex<Vec<PathBuf>>,
    kube: kube::Client,
    /// `--address`: metrics and `/health-check`.
    pub metrics_port: u16,
}

impl ClusterAutoscaler {
    /// Starts CA against `provider` on `cp`: `--cloud-provider=externalgrpc`, the provider's
    /// printed cloud-config, scan every 2 s, status ConfigMap on, metrics and `/health-check` on
    /// a free loopback port, `--v=5` (one "Performing gRPC call X" line per call) into a log file.
    pub fn start(
        cp: &ControlPlane,
        provider: &Provider,
        opts: &CaOptions,
    ) -> anyhow::Result<ClusterAutoscaler> {
        Self::start_with_cloud_config(cp, &provider.cloud_config, opts)
    }

    /// [`Self::start`] with a cloud-config written elsewhere (e.g. one that points CA at a
    /// proxy in front of several operator replicas).
    pub fn start_with_cloud_config(
        cp: &ControlPlane,
        cloud_config: &Path,
        opts: &CaOptions,
    ) -> anyhow::Result<ClusterAutoscaler> {
        let port = process::free_ports(1).context("picking a port for CA's metrics")?[0];
        let mut args: Vec<String> = [
            "--cloud-provider=externalgrpc".to_owned(),
            format!("--cloud-config={}", cloud_config.display()),
            format!("--kubeconfig={}", cp.kubeconfig().display()),
            "--leader-elect=false".to_owned(),
            format!("--address=127.0.0.1:{port}"),
            "--write-status-configmap=true".to_owned(),
            "--scan-interval=2s".to_owned(),
            format!(
                "--max-node-provision-time={}",
                secs(opts.max_node_provision_time)
            ),
            format!("--scale-down-unneeded-time={}", secs(opts.scale_down_after)),
            format!(
                "--scale-down-delay-after-add={}",
                secs(opts.scale_down_after)
            ),
            "--unremovable-node-recheck-timeout=15s".to_owned(),
            // CA backs a group off for 5 minutes after a failed scale-up by default
            // (`utils/backoff/exponential_backoff.go`); a scenario must see the retry.
            "--initial-node-group-backoff-duration=10s".to_owned(),
            "--v=5".to_owned(),
        ]
        .into_iter()
        .collect();
        if let Some(e) = &opts.expander {
            args.push(format!("--expander={e}"));
        }
        args.extend(opts.extra_args.iter().cloned());
        Self::start_with_args(cp, args, port)
    }

    /// Starts CA with exactly `args` (which must serve its metrics on `metrics_port`), e.g. the
    /// chart's command line (tests/support/chart.rs).
    pub fn start_with_args(
        cp: &ControlPlane,
        args: Vec<String>,
        metrics_port: u16,
    ) -> anyhow::Result<ClusterAutoscaler> {
        let ca = ClusterAutoscaler {
            binary: cp.assets().cluster_autoscaler(),
            args,
            child: std::sync::Mutex::new(None),
            log: cp.dir().join("cluster-autoscaler.log"),
            runs: std::sync::Mutex::new(Vec::new()),
            kube: cp.client()?,
            metrics_port,
        };
        ca.spawn()?;
        Ok(ca)
    }

    fn spawn(&self) -> anyhow::Result<()> {
        let mut runs = lock(&self.runs);
        let log = if runs.is_empty() {
            self.log.clone()
        } else {
            self.log.with_extension(format!("{}.log", runs.len()))
        };
        let child = Managed::spawn("cluster-autoscaler", &self.binary, &self.args, &log)
            .with_context(|| format!("starting {}", self.binary.display()))?;
        runs.push(log);
        *lock(&self.child) = Some(child);
        Ok(())
    }

    /// Stops CA (SIGTERM, then SIGKILL after `grace`) and starts it again with the same flags.
    pub async fn restart(&self, grace: Duration) -> anyhow::Result<()> {
        self.stop(grace).await;
        self.spawn()
    }

    /// SIGTERM (CA calls `Cleanup` on the way out), SIGKILL after `grace`.
    pub async fn stop(&self, grace: Duration) {
        let child = lock(&self.child).take();
        if let Some(mut child) = child {
            // `Managed::stop` waits with a blocking sleep.
            let _ = tokio::task::spawn_blocking(move || child.stop(grace)).await;
        }
    }

    /// CA's `/health-check` answer on its loopback metrics port: `Ok(true)` for HTTP 200.
    pub async fn healthy(&self) -> anyhow::Result<bool> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .with_context(|| {
                format!(
                    "connecting to CA's --address 127.0.0.1:{}",
                    self.metrics_port
                )
            })?;
        conn.write_all(b"GET /health-check HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .context("asking CA's /health-check")?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)
            .await
            .context("reading CA's /health-check answer")?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.lines().next().unwrap_or_default();
        Ok(status.split_whitespace().nth(1) == Some("200"))
    }

    /// Fails when CA exited (it exits on a fatal start-up error, such as a bad cloud-config).
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        if let Some(child) = lock(&self.child).as_mut()
            && let Some(status) = child.exited()
        {
            anyhow::bail!(
                "cluster-autoscaler exited with {status}; last log lines:\n{}",
                child.log_tail(60)
            );
        }
        Ok(())
    }

    /// Every line CA logged so far, over all runs.
    pub fn log_lines(&self) -> Vec<String> {
        let runs = lock(&self.runs).clone();
        runs.iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| text.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    /// How many times CA called each RPC so far, from its "Performing gRPC call <Rpc>" lines
    /// (`cloudprovider/externalgrpc/externalgrpc_cloud_provider.go`, `externalgrpc_node_group.go`,
    /// logged at `--v=5` before every call; cached answers log "Returning cached information").
    pub fn calls(&self) -> CallCounts {
        CallCounts::from_log(self.log_lines().iter().map(String::as_str))
    }

    /// Lines where CA reports trouble with the provider: failed RPCs ("Error on gRPC call",
    /// logged at `--v=1` for every failed call), "Failed to fix node group sizes"
    /// (`core/static_autoscaler.go`), "Unable to build proper template node"
    /// (`processors/nodeinfosprovider/mixed_nodeinfos_processor.go`), "Failed to get node group"
    /// (`clusterstate/clusterstate.go`, `core/static_autoscaler.go`), "Failed to calculate pod
    /// price" / "node price" (`expander/price/price.go`). Lines containing one of
    /// `expected` (a failure the scenario provokes on purpose) are left out.
    pub fn provider_errors(&self, expected: &[&str]) -> Vec<String> {
        provider_errors(self.log_lines().iter().map(String::as_str), expected)
    }

    /// Fails listing the lines [`Self::provider_errors`] finds.
    pub fn ensure_no_provider_errors(&self, expected: &[&str]) -> anyhow::Result<()> {
        let errors = self.provider_errors(expected);
        anyhow::ensure!(
            errors.is_empty(),
            "cluster-autoscaler logged {} provider error(s):\n{}",
            errors.len(),
            errors.join("\n")
        );
        Ok(())
    }

    /// CA's status ConfigMap (`kube-system/cluster-autoscaler-status`), parsed; `None` before
    /// CA wrote it.
    pub async fn status(&self) -> anyhow::Result<Option<CaStatus>> {
        let maps: Api<ConfigMap> = Api::namespaced(self.kube.clone(), "kube-system");
        let Some(cm) = maps
            .get_opt("cluster-autoscaler-status")
            .await
            .context("reading ConfigMap kube-system/cluster-autoscaler-status")?
        else {
            return Ok(None);
        };
        let text = cm
            .data
            .and_then(|d| d.get("status").cloned())
            .context("ConfigMap kube-system/cluster-autoscaler-status has no data.status")?;
        let status: CaStatus = serde_yaml::from_str(&text).with_context(|| {
            format!("parsing CA's status ConfigMap (clusterstate/api/types.go):\n{text}")
        })?;
        Ok(Some(status))
    }

    /// `cloudProviderTarget` of node group `id` in the status ConfigMap.
    pub async fn status_target(&self, id: &str) -> anyhow::Result<Option<i64>> {
        Ok(self
            .status()
            .await?
            .and_then(|s| s.group(id).map(|g| g.health.cloud_provider_target)))
    }

    /// Adds CA's and the provider's log tails to `result`'s error, so a failing scenario shows
    /// what CA was doing.
    pub fn with_logs<T>(
        &self,
        provider: &Provider,
        result: anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        result.map_err(|e| {
            let calls = self.calls();
            e.context(format!(
                "gRPC calls CA made: {calls}\n--- last lines of {} ---\n{}\n--- last lines of {} ---\n{}",
                self.log.display(),
                lock(&self.runs)
                    .last()
                    .map(|p| process::log_tail(p, 120))
                    .unwrap_or_default(),
                provider.current_log().display(),
                provider.log_tail(40),
            ))
        })
    }
}

/// Calls per RPC name (`NodeGroupIncreaseSize`, `NodeGroupDeleteNodes`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallCounts(pub BTreeMap<String, usize>);

impl CallCounts {
    pub fn from_log<'a>(lines: impl Iterator<Item = &'a str>) -> CallCounts {
        const MARK: &str = "Performing gRPC call ";
        let mut counts = BTreeMap::new();
        for line in lines {
            if let Some(i) = line.find(MARK) {
                let rest = &line[i + MARK.len()..];
                let rpc: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .collect();
                *counts.entry(rpc).or_insert(0) += 1;
            }
        }
        CallCounts(counts)
    }

    pub fn get(&self, rpc: &str) -> usize {
        self.0.get(rpc).copied().unwrap_or(0)
    }
    pub fn increase_size(&self) -> usize {
        self.get("NodeGroupIncreaseSize")
    }
    pub fn delete_nodes(&self) -> usize {
        self.get("NodeGroupDeleteNodes")
    }
    pub fn decrease_target_size(&self) -> usize {
        self.get("NodeGroupDecreaseTargetSize")
    }
}

impl std::fmt::Display for CallCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "{}", parts.join(" "))
    }
}

/// What CA logs when the provider misbehaves (see [`ClusterAutoscaler::provider_errors`]).
pub const PROVIDER_ERROR_MARKS: &[&str] = &[
    "Error on gRPC call",
    "failed to fix node group sizes",
    "Unable to build proper template node",
    "Failed to get node group",
    // `clusterstate/clusterstate.go` `updateScaleRequests`: DecreaseTargetSize after a timed-out
    // scale-up was refused.
    "Failed to revert timed-out scale-up",
    // `expander/price/price.go`: a pricing answer CA could not use drops the scale-up option.
    "Failed to calculate pod price",
    "Failed to get price for stabilization pod",
    "Failed to calculate node price",
];

pub fn provider_errors<'a>(lines: impl Iterator<Item = &'a str>, expected: &[&str]) -> Vec<String> {
    lines
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            PROVIDER_ERROR_MARKS
                .iter()
                .any(|m| lower.contains(&m.to_ascii_lowercase()))
        })
        .filter(|l| !expected.iter().any(|e| l.contains(e)))
        .map(str::to_owned)
        .collect()
}

/// The parts of CA's status ConfigMap the tests read (`clusterstate/api/types.go`,
/// `ClusterAutoscalerStatus`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaStatus {
    #[serde(default)]
    pub autoscaler_status: String,
    #[serde(default)]
    pub node_groups: Vec<CaNodeGroupStatus>,
}

impl CaStatus {
    pub fn group(&self, id: &str) -> Option<&CaNodeGroupStatus> {
        self.node_groups.iter().find(|g| g.name == id)
    }
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaNodeGroupStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub health: CaGroupHealth,
    #[serde(default)]
    pub scale_up: CaGroupScaleUp,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaGroupHealth {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub cloud_provider_target: i64,
    #[serde(default)]
    pub min_size: i64,
    #[serde(default)]
    pub max_size: i64,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaGroupScaleUp {
    /// `NoActivity`, `InProgress`, `Backoff`.
    #[serde(default)]
    pub status: String,
}
