//! A real control plane for tests: etcd + kube-apiserver (+ kube-scheduler) on loopback.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::assets::{Assets, KEEP_ENV};
use super::pki::{self, Ca};
use super::process::{self, Managed};

/// The static admin token (user `admin`, group `system:masters`).
const ADMIN_TOKEN: &str = "kubectl-homelab-test-admin";
/// How long to wait for /readyz. Usually ~10 s; generous because tests compile and run side by
/// side on 2 cores.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// SIGTERM grace before SIGKILL at teardown. The apiserver takes 30 s+ to exit on SIGTERM, and
/// there is nothing worth keeping, so the grace is short.
const STOP_GRACE: Duration = Duration::from_millis(200);
const DIR_PREFIX: &str = "kubectl-homelab-testenv-";
/// Field manager for everything the harness writes.
pub const FIELD_MANAGER: &str = "kubectl-homelab-tests";

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Also run kube-scheduler (needed when pods must be bound to nodes).
    pub scheduler: bool,
    /// CRDs to install and wait for (Established) before returning.
    pub crds: Vec<CustomResourceDefinition>,
    /// Extra kube-apiserver flags (e.g. `--feature-gates=...`), appended last.
    pub apiserver_args: Vec<String>,
}

impl Default for Options {
    /// No scheduler; our CRDs installed.
    fn default() -> Self {
        Self {
            scheduler: false,
            crds: super::our_crds(),
            apiserver_args: Vec::new(),
        }
    }
}

impl Options {
    pub fn with_scheduler(mut self) -> Self {
        self.scheduler = true;
        self
    }
    pub fn without_crds(mut self) -> Self {
        self.crds.clear();
        self
    }
    pub fn apiserver_arg(mut self, arg: &str) -> Self {
        self.apiserver_args.push(arg.to_owned());
        self
    }
}

/// A running etcd + kube-apiserver (+ kube-scheduler). Dropping it kills the processes
/// (scheduler and apiserver before etcd) and removes its temp dir.
pub struct ControlPlane {
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    assets: Assets,
    dir: Mutex<Option<tempfile::TempDir>>,
    path: PathBuf,
    admin_kubeconfig: PathBuf,
    admin_config: kube::Config,
    ca: Ca,
    apiserver_args: Vec<String>,
    scheduler: Mutex<Option<Managed>>,
    apiserver: Mutex<Option<Managed>>,
    etcd: Mutex<Option<Managed>>,
    counter: AtomicU64,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.path)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts a control plane from `assets`. Retries once when a port picked as free was taken
    /// by someone else in the meantime.
    pub async fn start(assets: &Assets, opts: &Options) -> anyhow::Result<Self> {
        match Self::start_once(assets, opts).await {
            Err(e) if format!("{e:#}").contains("address already in use") => {
                Self::start_once(assets, opts).await
            }
            other => other,
        }
    }

    async fn start_once(assets: &Assets, opts: &Options) -> anyhow::Result<Self> {
        let started = Instant::now();
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .context("creating the control plane's temp dir")?;
        let path = dir.path().to_owned();
        let keep = std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
        let dir = if keep {
            write(
                &path.join("keep"),
                "kept by KUBECTL_HOMELAB_KEEP_TESTENV=1\n",
            )?;
            eprintln!("control plane files kept in {}", path.display());
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };

        // Lets a later run remove this dir if this process dies without cleaning up.
        write(&path.join("owner.pid"), &std::process::id().to_string())?;

        // Credentials.
        let ca = Ca::generate()?;
        let serving = ca.serving()?;
        write(&path.join("ca.crt"), &ca.cert_pem)?;
        write(&path.join("apiserver.crt"), &serving.cert_pem)?;
        write(&path.join("apiserver.key"), &serving.key_pem)?;
        let (sa_private, sa_public) = pki::service_account_key()?;
        write(&path.join("sa.key"), &sa_private)?;
        write(&path.join("sa.pub"), &sa_public)?;
        write(
            &path.join("tokens.csv"),
            &format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )?;

        let ports = process::free_ports(3).context("picking free loopback ports")?;
        let (etcd_client, etcd_peer, secure) = (ports[0], ports[1], ports[2]);
        let server = format!("https://127.0.0.1:{secure}");

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd_args = strings(&[
            "--name=default",
            &format!("--data-dir={}", path.join("etcd").display()),
            &format!("--listen-client-urls={etcd_url}"),
            &format!("--advertise-client-urls={etcd_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=default={peer_url}"),
            // Test data is thrown away: skip fsync, which dominates etcd latency on slow disks.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]);
        let etcd = Managed::spawn("etcd", &assets.etcd(), &etcd_args, &path.join("etcd.log"))
            .with_context(|| format!("starting {}", assets.etcd().display()))?;
        let etcd = Mutex::new(Some(etcd));
        wait_for_port(&etcd, etcd_client, Duration::from_secs(30)).await?;

        let mut apiserver_args = strings(&[
            &format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={secure}"),
            &format!("--cert-dir={}", path.join("apiserver-certs").display()),
            &format!("--tls-cert-file={}", path.join("apiserver.crt").display()),
            &format!(
                "--tls-private-key-file={}",
                path.join("apiserver.key").display()
            ),
            &format!("--client-ca-file={}", path.join("ca.crt").display()),
            &format!(
                "--service-account-key-file={}",
                path.join("sa.pub").display()
            ),
            &format!(
                "--service-account-signing-key-file={}",
                path.join("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc",
            &format!("--token-auth-file={}", path.join("tokens.csv").display()),
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            "--profiling=false",
        ]);
        apiserver_args.extend(opts.apiserver_args.iter().cloned());
        let apiserver = Managed::spawn(
            "kube-apiserver",
            &assets.kube_apiserver(),
            &apiserver_args,
            &path.join("kube-apiserver.log"),
        )
        .with_context(|| format!("starting {}", assets.kube_apiserver().display()))?;

        let admin_kubeconfig = path.join("admin.kubeconfig");
        write(
            &admin_kubeconfig,
            &kubeconfig(
                &server,
                &path.join("ca.crt"),
                &Credential::Token(ADMIN_TOKEN),
            ),
        )?;
        let admin_config = load_kubeconfig(&admin_kubeconfig).await?;

        let cp = Self {
            server,
            assets: assets.clone(),
            dir: Mutex::new(dir),
            path,
            admin_kubeconfig,
            admin_config,
            ca,
            apiserver_args,
            scheduler: Mutex::new(None),
            apiserver: Mutex::new(Some(apiserver)),
            etcd,
            counter: AtomicU64::new(0),
        };
        cp.wait_ready().await?;
        if opts.scheduler {
            cp.start_scheduler()?;
        }
        if !opts.crds.is_empty() {
            cp.install_crds(&opts.crds).await?;
        }
        eprintln!(
            "control plane at {} ready in {:.1} s (files in {})",
            cp.server,
            started.elapsed().as_secs_f64(),
            cp.path.display()
        );
        Ok(cp)
    }

    fn start_scheduler(&self) -> anyhow::Result<()> {
        let args = strings(&[
            &format!("--kubeconfig={}", self.admin_kubeconfig.display()),
            "--leader-elect=false",
            "--secure-port=0",
        ]);
        let scheduler = Managed::spawn(
            "kube-scheduler",
            &self.assets.kube_scheduler(),
            &args,
            &self.path.join("kube-scheduler.log"),
        )
        .with_context(|| format!("starting {}", self.assets.kube_scheduler().display()))?;
        *lock(&self.scheduler) = Some(scheduler);
        Ok(())
    }

    /// Polls /readyz until it answers ok; fails early, with the log tail, if the apiserver exits.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = self.client()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(apiserver) = lock(&self.apiserver).as_mut()
                && let Some(status) = apiserver.exited()
            {
                anyhow::bail!(
                    "kube-apiserver exited with {status} before becoming ready; last log lines:\n{}",
                    apiserver.log_tail(30)
                );
            }
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .context("building the /readyz request")?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                let tail = process::log_tail(&self.path.join("kube-apiserver.log"), 30);
                anyhow::bail!(
                    "kube-apiserver at {} not ready after {READY_TIMEOUT:?} (last answer: {last}); \
                     last log lines:\n{tail}",
                    self.server
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Applies `crds` (server-side) and waits until each is Established.
    pub async fn install_crds(&self, crds: &[CustomResourceDefinition]) -> anyhow::Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client()?);
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(&name, &pp, &Patch::Apply(crd))
                .await
                .with_context(|| format!("applying CRD {name}"))?;
        }
        let names: Vec<String> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect();
        self.wait_established(&names).await
    }

    /// Waits until each CRD named is Established (its resources are served), e.g. after
    /// `helm install` created them.
    pub async fn wait_established(&self, names: &[impl AsRef<str>]) -> anyhow::Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client()?);
        for name in names {
            let name = name.as_ref();
            let cond = kube::runtime::conditions::is_crd_established();
            tokio::time::timeout(
                Duration::from_secs(60),
                kube::runtime::wait::await_condition(api.clone(), name, cond),
            )
            .await
            .with_context(|| format!("CRD {name} not Established after 60 s"))?
            .with_context(|| format!("watching CRD {name}"))?;
        }
        Ok(())
    }

    /// A new admin (system:masters) client. Make one per test: a kube client belongs to the
    /// tokio runtime it was made in, and every `#[tokio::test]` has its own.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.admin_config.clone()).context("building the admin kube client")
    }

    /// The admin kubeconfig, for processes under test (`KUBECONFIG=...`).
    pub fn kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The control plane's temp dir (logs: etcd.log, kube-apiserver.log, kube-scheduler.log).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The CA that signs the serving certificate (`ca.crt` in [`Self::dir`]).
    pub fn ca_cert_path(&self) -> PathBuf {
        self.path.join("ca.crt")
    }

    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    /// Creates a fresh namespace named `<prefix>-<n>-<random>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let name = self.unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [("kubectl-homelab.test/harness".to_owned(), "true".to_owned())].into(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client()?)
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// A DNS-1123 label `<prefix>-<n>-<random>`, unique within this control plane.
    pub fn unique_name(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Random per process, so reruns against a kept control plane do not collide.
        let suffix = {
            use std::hash::{BuildHasher as _, Hasher as _};
            let mut h = std::hash::RandomState::new().build_hasher();
            h.write_u64(n);
            h.finish() % 0x10000
        };
        let mut clean: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        clean.truncate(40);
        let clean = clean.trim_matches('-');
        let clean = if clean.is_empty() { "t" } else { clean };
        format!("{clean}-{n}-{suffix:04x}")
    }

    /// Kills and restarts kube-apiserver on the same port and waits until it is ready again
    /// (to test clients riding out an API server restart).
    pub async fn restart_apiserver(&self) -> anyhow::Result<()> {
        if let Some(mut old) = lock(&self.apiserver).take() {
            old.stop(STOP_GRACE);
        }
        let log = self.path.join(format!(
            "kube-apiserver.{}.log",
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let apiserver = Managed::spawn(
            "kube-apiserver",
            &self.assets.kube_apiserver(),
            &self.apiserver_args,
            &log,
        )
        .context("restarting kube-apiserver")?;
        *lock(&self.apiserver) = Some(apiserver);
        self.wait_ready().await
    }

    /// Kills everything (scheduler, apiserver, then etcd) and removes the temp dir. Idempotent.
    pub fn shutdown(&self) {
        for slot in [&self.scheduler, &self.apiserver, &self.etcd] {
            if let Some(mut p) = lock(slot).take() {
                p.stop(STOP_GRACE);
            }
        }
        drop(lock(&self.dir).take());
    }

    /// Process ids of the running components, for checks that nothing lingers.
    pub fn pids(&self) -> Vec<u32> {
        [&self.scheduler, &self.apiserver, &self.etcd]
            .iter()
            .filter_map(|slot| lock(slot).as_ref().map(Managed::pid))
            .collect()
    }

    pub(crate) fn ca(&self) -> &Ca {
        &self.ca
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How a kubeconfig authenticates.
pub enum Credential<'a> {
    Token(&'a str),
    ClientCert { cert: &'a Path, key: &'a Path },
}

/// A kubeconfig for `server`, trusting `ca`, with one user.
pub fn kubeconfig(server: &str, ca: &Path, cred: &Credential<'_>) -> String {
    let user = match cred {
        Credential::Token(token) => format!("    token: {token}\n"),
        Credential::ClientCert { cert, key } => format!(
            "    client-certificate: {}\n    client-key: {}\n",
            cert.display(),
            key.display()
        ),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    \
         certificate-authority: {ca}\nusers:\n- name: test\n  user:\n{user}contexts:\n- name: test\n  \
         context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\n",
        ca = ca.display()
    )
}

pub async fn load_kubeconfig(path: &Path) -> anyhow::Result<kube::Config> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", path.display()))
}

pub fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Removes temp dirs of earlier control planes whose test process is gone (killed before it
/// could clean up; its children died with it through PR_SET_PDEATHSIG).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        if !is_ours || path.join("keep").exists() {
            continue;
        }
        let Ok(pid) = std::fs::read_to_string(path.join("owner.pid")) else {
            continue; // being created right now, or not ours to judge
        };
        let alive = Path::new("/proc").join(pid.trim()).exists();
        if !alive {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Locks, ignoring poisoning: a panicking test must still be able to tear down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn wait_for_port(
    proc: &Mutex<Option<Managed>>,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(p) = lock(proc).as_mut()
            && let Some(status) = p.exited()
        {
            anyhow::bail!(
                "{} exited with {status}; last log lines:\n{}",
                p.name,
                p.log_tail(30)
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
