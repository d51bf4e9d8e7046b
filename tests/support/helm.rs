//! The Helm chart (deploy/helm/kubectl-homelab) rendered and installed with the real helm that
//! tests/k8s-bins/build.sh builds, and the rendered objects picked apart.
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context as _, ensure};
use kube::api::DynamicObject;

use super::ControlPlane;

/// kubectl, as the user's (the tests run the one installed on the machine).
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// kubectl as the harness's admin, in the repository; its stdout.
pub fn kubectl_admin(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<String> {
    stdout_of(
        Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .args(args)
            .current_dir(repo()),
    )
}

/// The chart, relative to the repository.
pub const CHART: &str = "deploy/helm/kubectl-homelab";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A built tool from the test binaries' cache; `None` = skip (missing and not required).
pub fn tool(name: &str) -> anyhow::Result<Option<PathBuf>> {
    Ok(super::assets::Assets::locate(&[name])?.map(|a| a.dir.join(name)))
}

/// helm with its own config, cache and data directories (nothing of the user's is read).
pub struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    pub fn locate() -> anyhow::Result<Option<Helm>> {
        let Some(bin) = tool("helm")? else {
            return Ok(None);
        };
        Ok(Some(Helm {
            bin,
            home: tempfile::tempdir()?,
        }))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let h = self.home.path();
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .current_dir(repo())
            .env("HELM_CACHE_HOME", h.join("cache"))
            .env("HELM_CONFIG_HOME", h.join("config"))
            .env("HELM_DATA_HOME", h.join("data"))
            .env_remove("KUBECONFIG");
        cmd
    }

    /// Runs helm; `Ok` whatever its exit status (see [`Helm::ok`]).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("running {} {args:?}", self.bin.display()))
    }

    /// Runs helm and returns its stdout; a failure is an error with its stderr.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        stdout_of(&mut self.command(args))
    }

    /// helm against the harness's apiserver (admin) in namespace `ns`.
    pub fn on(&self, cp: &ControlPlane, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let kubeconfig = cp
            .kubeconfig()
            .to_str()
            .context("kubeconfig path is not UTF-8")?;
        let mut all = args.to_vec();
        all.extend(["-n", ns, "--kubeconfig", kubeconfig]);
        self.ok(&all)
    }

    /// `helm template` of the chart as release `release` in `ns` with `--set` values.
    pub fn template(
        &self,
        release: &str,
        ns: &str,
        set: &[&str],
    ) -> anyhow::Result<Vec<DynamicObject>> {
        let mut args = vec!["template", release, CHART, "--namespace", ns];
        for s in set {
            args.extend(["--set", s]);
        }
        let text = self.ok(&args)?;
        super::apply::parse_multi_doc("helm template", &text)
    }
}

pub fn kind_of(o: &DynamicObject) -> &str {
    o.types
        .as_ref()
        .map(|t| t.kind.as_str())
        .unwrap_or_default()
}

pub fn find<'a>(
    objs: &'a [DynamicObject],
    kind: &str,
    name: &str,
) -> anyhow::Result<&'a DynamicObject> {
    objs.iter()
        .find(|o| kind_of(o) == kind && o.metadata.name.as_deref() == Some(name))
        .with_context(|| format!("no {kind} {name} rendered"))
}

pub fn kinds(objs: &[DynamicObject]) -> Vec<String> {
    let mut k: Vec<String> = objs.iter().map(|o| kind_of(o).to_owned()).collect();
    k.sort();
    k
}

/// The operator container's arguments in a rendered Deployment.
pub fn operator_args(deployment: &DynamicObject) -> anyhow::Result<Vec<String>> {
    let args = &deployment.data["spec"]["template"]["spec"]["containers"][0]["args"];
    serde_json::from_value(args.clone()).context("the operator container's args")
}

/// Runs `cmd`: its stdout, or an error with its output when it fails.
pub fn stdout_of(cmd: &mut Command) -> anyhow::Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// The values file of the README's Install section (the ```yaml block headed
/// `# homelab-values.yaml`).
pub fn readme_values() -> anyhow::Result<String> {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let start = readme
        .find("```yaml\n# homelab-values.yaml\n")
        .context("README.md has no homelab-values.yaml block")?;
    let block = &readme[start + "```yaml\n".len()..];
    let end = block
        .find("```")
        .context("unterminated yaml block in README.md")?;
    Ok(block[..end].to_owned())
}

/// The operator binary run as a rendered Deployment of the chart runs it: the container's own
/// arguments (the gRPC and health ports moved to free loopback ones) and a TokenRequest token of
/// the pod's ServiceAccount, so it has exactly the chart's RBAC. Killed when dropped.
pub struct ChartOperator {
    pub child: tokio::process::Child,
    /// Its stderr.
    pub log: PathBuf,
    /// Where its gRPC server listens (127.0.0.1).
    pub grpc_port: u16,
    /// The ServiceAccount it runs as, with the token it uses.
    pub identity: super::identity::Identity,
    _dir: tempfile::TempDir,
}

impl ChartOperator {
    pub async fn start(
        cp: &ControlPlane,
        ns: &str,
        objects: &[DynamicObject],
        deployment: &str,
    ) -> anyhow::Result<ChartOperator> {
        let d = find(objects, "Deployment", deployment)?;
        let account = d.data["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .with_context(|| format!("Deployment {deployment} names no ServiceAccount"))?;
        let identity = cp.service_account(ns, account).await?;
        let ports = super::process::free_ports(2)?;
        let args: Vec<String> = operator_args(d)?
            .into_iter()
            .map(|a| {
                if a.starts_with("--listen=") {
                    format!("--listen=127.0.0.1:{}", ports[0])
                } else if a.starts_with("--health-address=") {
                    format!("--health-address=127.0.0.1:{}", ports[1])
                } else {
                    a
                }
            })
            .collect();
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("operator.log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-homelab"))
            .args(&args)
            .arg("--kubeconfig")
            .arg(identity.kubeconfig())
            .env("POD_NAME", format!("{deployment}-test"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting run-operator")?;
        Ok(ChartOperator {
            child,
            log,
            grpc_port: ports[0],
            identity,
            _dir: dir,
        })
    }

    /// The last `lines` lines of its log, as context for a failure.
    pub fn log_tail(&self, lines: usize) -> String {
        super::process::log_tail(&self.log, lines)
    }
}
