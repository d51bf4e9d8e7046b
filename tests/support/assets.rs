//! Where the Kubernetes binaries are, and what to do when they are not there.

use std::path::{Path, PathBuf};

/// Directory holding etcd, kube-apiserver, kube-scheduler (and cluster-autoscaler).
pub const ASSETS_ENV: &str = "KUBECTL_HOMELAB_TEST_ASSETS";
/// When "1", missing binaries fail the test instead of skipping it (set by scripts/test.sh).
pub const REQUIRE_ENV: &str = "KUBECTL_HOMELAB_REQUIRE_ASSETS";
/// Keep the control plane's temp dir (logs, kubeconfig, etcd data) after the test.
pub const KEEP_ENV: &str = "KUBECTL_HOMELAB_KEEP_TESTENV";
/// The versions tests/k8s-bins/build.sh builds; its cache directory name.
pub const DEFAULT_SET: &str = "k8s-1.36.3-etcd-3.6.16-ca-1.36.1";
pub const BUILD_HINT: &str = "build them with `tests/k8s-bins/build.sh` (or run `scripts/test.sh`, \
     which builds them and sets KUBECTL_HOMELAB_TEST_ASSETS)";

#[derive(Debug, Clone)]
pub struct Assets {
    pub dir: PathBuf,
}

impl Assets {
    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }
    pub fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }
    pub fn kube_scheduler(&self) -> PathBuf {
        self.dir.join("kube-scheduler")
    }
    pub fn cluster_autoscaler(&self) -> PathBuf {
        self.dir.join("cluster-autoscaler")
    }

    /// The binaries a lab with the real Cluster Autoscaler needs: a control plane with a
    /// scheduler, and CA.
    pub const WITH_CA: &'static [&'static str] = &[
        "etcd",
        "kube-apiserver",
        "kube-scheduler",
        "cluster-autoscaler",
    ];

    /// Finds the binaries: `$KUBECTL_HOMELAB_TEST_ASSETS`, else the build script's default cache
    /// directory. `Ok(None)` means "skip": they are missing and not required. Missing but
    /// required (`KUBECTL_HOMELAB_REQUIRE_ASSETS=1`) is an error naming the build command.
    pub fn locate(binaries: &[&str]) -> anyhow::Result<Option<Self>> {
        let dir = match std::env::var_os(ASSETS_ENV) {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => default_dir().filter(|d| d.is_dir()),
        };
        let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
        Self::locate_in(dir, required, binaries)
    }

    /// [`Self::locate`] with the environment already read.
    pub fn locate_in(
        dir: Option<PathBuf>,
        required: bool,
        binaries: &[&str],
    ) -> anyhow::Result<Option<Self>> {
        let missing: Vec<String> = match &dir {
            None => binaries.iter().map(|b| (*b).to_owned()).collect(),
            Some(dir) => binaries
                .iter()
                .filter(|b| !is_executable(&dir.join(b)))
                .map(|b| dir.join(b).display().to_string())
                .collect(),
        };
        if missing.is_empty()
            && let Some(dir) = dir
        {
            return Ok(Some(Self { dir }));
        }
        let what = match &dir {
            None => format!("{ASSETS_ENV} is unset and the default cache directory does not exist"),
            Some(_) => format!("missing or not executable: {}", missing.join(", ")),
        };
        if required {
            anyhow::bail!("Kubernetes test binaries not found ({what}); {BUILD_HINT}");
        }
        skip_notice(&what);
        Ok(None)
    }
}

fn default_dir() -> Option<PathBuf> {
    let cache = match std::env::var_os("KUBECTL_HOMELAB_CACHE") {
        Some(c) if !c.is_empty() => PathBuf::from(c),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache/kubectl-homelab"),
    };
    Some(cache.join("testenv").join(DEFAULT_SET))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn skip_notice(what: &str) {
    // Shown by `cargo test -- --nocapture` (libtest captures it for passing tests).
    eprintln!(
        "SKIPPING: Kubernetes test binaries not found ({what}); {BUILD_HINT}. \
         Set {REQUIRE_ENV}=1 to make this a failure."
    );
}
