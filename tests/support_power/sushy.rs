//! The sushy-tools Redfish emulator (`sushy-emulator`, fake driver: no libvirt) on loopback, with
//! TLS and basic auth, as a real BMC for the Redfish driver.
//!
//! The emulator is installed on first use into a venv in the cache,
//! `~/.cache/kubectl-homelab/sushy-venv-<hash of tests/requirements-sushy.txt>` (`python3 -m venv`,
//! then `pip install -r`, about a minute; needs PyPI), so CI on a fresh machine gets it and a
//! second run costs nothing. `KUBECTL_HOMELAB_CACHE` moves the cache, `KUBECTL_HOMELAB_PYTHON` names the
//! interpreter. Without python3 or PyPI a test is skipped, unless
//! `KUBECTL_HOMELAB_REQUIRE_ASSETS=1`, which makes it fail.
//!
//! Behaviour of the fake driver worth knowing: a reset takes effect 1 to 11 s later (random), and
//! a second reset of the same kind before that restarts the wait; power state lives in a
//! state directory, so a restarted emulator keeps it (as a real BMC does).
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::support::pki::CertPair;
use crate::support::process::{Managed, free_ports};

const REQUIREMENTS: &str = include_str!("../requirements-sushy.txt");
const REQUIRE_ENV: &str = "KUBECTL_HOMELAB_REQUIRE_ASSETS";

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("KUBECTL_HOMELAB_CACHE") {
        Some(c) if !c.is_empty() => Ok(PathBuf::from(c)),
        _ => Ok(
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                .join(".cache/kubectl-homelab"),
        ),
    }
}

fn fnv(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The venv with sushy-tools installed: `Ok(None)` when it cannot be made and is not required.
pub fn venv() -> anyhow::Result<Option<PathBuf>> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match VENV.get_or_init(|| install().map_err(|e| format!("{e:#}"))) {
        Ok(dir) => Ok(Some(dir.clone())),
        Err(e) if required() => bail!(
            "the Redfish emulator (sushy-tools) is required ({REQUIRE_ENV}=1) but could not be \
             installed: {e}"
        ),
        Err(e) => {
            eprintln!("skipping: the Redfish emulator (sushy-tools) is not available: {e}");
            Ok(None)
        }
    }
}

fn install() -> anyhow::Result<PathBuf> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let dir = cache.join(format!("sushy-venv-{:08x}", fnv(REQUIREMENTS)));
    let done = dir.join(".installed");
    // One installer at a time across test binaries: the others wait on the lock, then find it.
    let lock_path = cache.join("sushy-venv.lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        );
    }
    if done.is_file() {
        return Ok(dir);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the half-made {}", dir.display()))?;
    }
    let python = std::env::var("KUBECTL_HOMELAB_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    run(Command::new(&python).arg("-m").arg("venv").arg(&dir))
        .with_context(|| format!("creating a venv with {python}"))?;
    let requirements = dir.join("requirements-sushy.txt");
    std::fs::write(&requirements, REQUIREMENTS)?;
    run(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements))
    .context("pip install -r tests/requirements-sushy.txt")?;
    std::fs::File::create(&done)?.write_all(b"ok\n")?;
    Ok(dir)
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A system of the fake driver.
#[derive(Clone, Debug)]
pub struct FakeSystem {
    pub uuid: String,
    pub name: String,
    pub power_state: &'static str,
}

impl FakeSystem {
    pub fn new(name: &str, power_state: &'static str) -> FakeSystem {
        FakeSystem {
            uuid: format!("{:08x}-0000-4000-8000-000000000001", fnv(name)),
            name: name.to_owned(),
            power_state,
        }
    }
}

/// How to run the emulator.
#[derive(Clone, Debug, Default)]
pub struct SushyOptions {
    pub systems: Vec<FakeSystem>,
    /// Serving certificate (TLS) or plain HTTP.
    pub tls: Option<CertPair>,
    /// Basic-auth users (`username`, `password`); none: no auth.
    pub users: Vec<(String, String)>,
    /// The emulator refuses GracefulShutdown and ForceOff (its `SUSHY_EMULATOR_DISABLE_POWER_OFF`).
    pub disable_power_off: bool,
}

/// A running emulator, killed on drop.
pub struct Sushy {
    /// `https://127.0.0.1:<port>` (or `http://`).
    pub url: String,
    dir: tempfile::TempDir,
    venv: PathBuf,
    port: u16,
    process: Option<Managed>,
}

impl Sushy {
    /// Starts it: `Ok(None)` when the emulator is not available and not required.
    pub async fn start(opts: SushyOptions) -> anyhow::Result<Option<Sushy>> {
        let Some(venv) = tokio::task::spawn_blocking(venv).await?? else {
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let port = free_ports(1)?[0];
        let config = config(&venv, dir.path(), port, &opts)?;
        std::fs::write(dir.path().join("config.py"), config)?;
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let mut sushy = Sushy {
            url: format!("{scheme}://127.0.0.1:{port}"),
            dir,
            venv,
            port,
            process: None,
        };
        sushy.run().await?;
        Ok(Some(sushy))
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let args = vec![
            "--config".to_owned(),
            self.dir.path().join("config.py").display().to_string(),
        ];
        let log = self.dir.path().join("sushy.log");
        let mut process = Managed::spawn(
            "sushy-emulator",
            &self.venv.join("bin/sushy-emulator"),
            &args,
            &log,
        )?;
        wait_listening(&mut process, self.port).await?;
        self.process = Some(process);
        Ok(())
    }

    /// The BMC goes away (connections refused).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(2));
        }
    }

    /// The BMC comes back on the same port with the same state.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.run().await
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sushy.log")).unwrap_or_default()
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `process` accepts connections on loopback `port` (a few hundred ms after start);
/// fails with its log when it exits first or does not listen within 30 s.
pub async fn wait_listening(process: &mut Managed, port: u16) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Some(status) = process.exited() {
            bail!("the emulator exited ({status}):\n{}", process.log_tail(30));
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the emulator did not listen within 30 s:\n{}",
        process.log_tail(30)
    )
}

fn py_str(s: &str) -> String {
    format!("{s:?}")
}

fn config(venv: &Path, dir: &Path, port: u16, opts: &SushyOptions) -> anyhow::Result<String> {
    let mut c = String::new();
    c.push_str("SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n");
    c.push_str(&format!("SUSHY_EMULATOR_LISTEN_PORT = {port}\n"));
    c.push_str("SUSHY_EMULATOR_FAKE_DRIVER = True\n");
    c.push_str(&format!(
        "SUSHY_EMULATOR_STATE_DIR = {}\n",
        py_str(&dir.join("state").display().to_string())
    ));
    let systems: Vec<String> = opts
        .systems
        .iter()
        .map(|s| {
            format!(
                "{{'uuid': {}, 'name': {}, 'power_state': {}, 'nics': [{{'mac': '00:5c:52:31:3a:9c', 'ip': '172.22.0.100'}}]}}",
                py_str(&s.uuid),
                py_str(&s.name),
                py_str(s.power_state)
            )
        })
        .collect();
    c.push_str(&format!(
        "SUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\n",
        systems.join(", ")
    ));
    if let Some(tls) = &opts.tls {
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, &tls.cert_pem)?;
        std::fs::write(&key, &tls.key_pem)?;
        c.push_str(&format!(
            "SUSHY_EMULATOR_SSL_CERT = {}\nSUSHY_EMULATOR_SSL_KEY = {}\n",
            py_str(&cert.display().to_string()),
            py_str(&key.display().to_string())
        ));
    }
    if !opts.users.is_empty() {
        let mut htpasswd = String::new();
        for (user, password) in &opts.users {
            // bcrypt is the only digest the emulator reads; 4 rounds keep each request fast.
            let hash = run(Command::new(venv.join("bin/python")).args([
                "-c",
                "import bcrypt, sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
                password,
            ]))?;
            htpasswd.push_str(&format!("{user}:{}\n", hash.trim()));
        }
        let path = dir.join("htpasswd");
        std::fs::write(&path, htpasswd)?;
        c.push_str(&format!(
            "SUSHY_EMULATOR_AUTH_FILE = {}\n",
            py_str(&path.display().to_string())
        ));
    }
    if opts.disable_power_off {
        c.push_str("SUSHY_EMULATOR_DISABLE_POWER_OFF = True\n");
    }
    Ok(c)
}
