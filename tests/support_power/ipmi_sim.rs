//! OpenIPMI's BMC simulator (`ipmi_sim`) on loopback as a real IPMI 2.0 LAN counterpart for the
//! IPMI driver, and `ipmitool` as an independent client to cross-check what the driver did.
//!
//! Both come from Debian packages unpacked on first use into the cache (tests/support/debian.rs;
//! run with `LD_LIBRARY_PATH`; 4.5 s cold on a machine with apt lists), so CI on a fresh machine
//! gets them and a second run costs nothing. Without them a test is skipped, unless
//! `KUBECTL_HOMELAB_REQUIRE_ASSETS=1`, which makes it fail.
//!
//! The simulated chassis is a shell script (`chassis_control` in lan.conf) that keeps the power
//! state in a file the test reads: "set power 1/0" switches it, "set shutdown 1" (a soft
//! shutdown, Chassis Control 5) switches it off only while the OS "honours" it (a file the test
//! flips, like an OS that ignores the ACPI power button), and every action is appended to a log.
//!
//! What ipmi_sim 2.0.33 (Debian 12) offers: RMCP+ with RAKP-HMAC-SHA1 only, so cipher suites 0-3;
//! not 17 (RAKP-HMAC-SHA256). No DCMI.
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::support::debian::{self, Unpacked, run};
use crate::support::process::Managed;

/// The packages: the simulator, its library, ipmitool, and the two libraries they need that a
/// minimal Debian lacks.
const PACKAGES: &[&str] = &[
    "openipmi",
    "libopenipmi0",
    "ipmitool",
    "libpopt0",
    "libfreeipmi17",
];

/// The unpacked packages.
pub type Tools = Unpacked;

/// The unpacked tools: `Ok(None)` when they cannot be had and are not required.
pub fn tools() -> anyhow::Result<Option<Tools>> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    match TOOLS.get_or_init(|| install().map_err(|e| format!("{e:#}"))) {
        Ok(t) => Ok(Some(t.clone())),
        Err(e) if debian::required() => bail!(
            "ipmi_sim and ipmitool are required ({}=1) but could not be installed: {e}",
            debian::REQUIRE_ENV
        ),
        Err(e) => {
            eprintln!("skipping: ipmi_sim and ipmitool are not available: {e}");
            Ok(None)
        }
    }
}

fn install() -> anyhow::Result<Tools> {
    let tools = debian::unpack("ipmi", PACKAGES)?;
    // Both must run: a missing shared library shows here, not as a silent test failure.
    let out = Command::new(tools.bin("ipmitool"))
        .arg("-V")
        .env("LD_LIBRARY_PATH", tools.library_path())
        .output()
        .context("running ipmitool")?;
    if !out.status.success() {
        bail!(
            "ipmitool does not run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Command::new(tools.bin("ipmi_sim"))
        .arg("--version")
        .env("LD_LIBRARY_PATH", tools.library_path())
        .output()
        .context("running ipmi_sim")?;
    Ok(tools)
}

/// A free UDP port on loopback.
pub fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A user of the simulated BMC.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub password: String,
    /// `user`, `operator` or `admin`.
    pub privilege: &'static str,
}

/// How to run the simulator.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub users: Vec<User>,
    pub power_on: bool,
    /// The OS honours a soft shutdown (else it ignores it).
    pub honour_soft_off: bool,
    /// The BMC's Kg key, if it has one.
    pub kg: Option<String>,
}

/// A running simulator, killed on drop.
pub struct IpmiSim {
    pub port: u16,
    tools: Tools,
    dir: tempfile::TempDir,
    process: Option<Managed>,
}

const CHASSIS: &str = r#"#!/bin/sh
# chassis.sh <state dir> get|set <parm> [<value>] ...
dir=$1; shift; op=$1; shift
case $op in
get)
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat "$dir/power")" ;;
      boot) echo "boot:default" ;;
      *) echo "unknown parameter $p"; exit 1 ;;
    esac
  done ;;
set)
  while [ -n "$1" ]; do
    p=$1; v=$2; shift 2
    echo "$p $v" >> "$dir/actions"
    case $p in
      power) echo "$v" > "$dir/power" ;;
      shutdown) if [ "$(cat "$dir/soft")" = honour ]; then echo 0 > "$dir/power"; fi ;;
    esac
  done ;;
*) exit 1 ;;
esac
"#;

impl IpmiSim {
    /// Starts it: `Ok(None)` when the simulator is not available and not required.
    pub async fn start(opts: SimOptions) -> anyhow::Result<Option<IpmiSim>> {
        let Some(tools) = tokio::task::spawn_blocking(tools).await?? else {
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let port = free_udp_port()?;
        let d = dir.path();
        std::fs::write(d.join("power"), if opts.power_on { "1\n" } else { "0\n" })?;
        std::fs::write(d.join("actions"), "")?;
        std::fs::create_dir_all(d.join("state"))?;
        let chassis = d.join("chassis.sh");
        std::fs::write(&chassis, CHASSIS)?;
        std::fs::set_permissions(
            &chassis,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let mut sim = IpmiSim {
            port,
            tools,
            dir,
            process: None,
        };
        sim.honour_soft_off(opts.honour_soft_off)?;
        std::fs::write(
            sim.dir.path().join("lan.conf"),
            lan_conf(sim.dir.path(), port, &opts),
        )?;
        std::fs::write(
            sim.dir.path().join("sim.emu"),
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             mc_enable 0x20\n",
        )?;
        sim.run().await?;
        Ok(Some(sim))
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let args = vec![
            "-c".to_owned(),
            d.join("lan.conf").display().to_string(),
            "-f".to_owned(),
            d.join("sim.emu").display().to_string(),
            "-s".to_owned(),
            d.join("state").display().to_string(),
            "-n".to_owned(),
        ];
        let lib = self.tools.library_path();
        let process = Managed::spawn_with_env(
            "ipmi_sim",
            &self.tools.bin("ipmi_sim"),
            &args,
            &d.join("ipmi_sim.log"),
            &[("LD_LIBRARY_PATH", lib.as_str())],
        )?;
        // Ready when it answers an RMCP presence ping (ASF).
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        sock.connect(("127.0.0.1", self.port)).await?;
        let ping = [
            0x06, 0x00, 0xff, 0x06, 0x00, 0x00, 0x11, 0xbe, 0x80, 0x00, 0x00, 0x00,
        ];
        let mut process = process;
        for _ in 0..100 {
            if let Some(status) = process.exited() {
                bail!("ipmi_sim exited ({status}):\n{}", process.log_tail(30));
            }
            let _ = sock.send(&ping).await;
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(100), sock.recv(&mut buf)).await {
                Ok(Ok(_)) => {
                    self.process = Some(process);
                    return Ok(());
                }
                // Refused (not listening yet) comes back at once: wait before the next ping.
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => {}
            }
        }
        bail!(
            "ipmi_sim did not answer a ping within 10 s:\n{}",
            process.log_tail(30)
        )
    }

    /// The BMC goes away (datagrams refused).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(2));
        }
    }

    /// The BMC comes back on the same port with the same chassis.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.run().await
    }

    /// The chassis power as the simulator's chassis holds it.
    pub fn power_on(&self) -> bool {
        std::fs::read_to_string(self.dir.path().join("power")).is_ok_and(|s| s.trim() == "1")
    }

    /// Every Chassis Control the chassis carried out: `power 1`, `power 0`, `shutdown 1`.
    pub fn actions(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("actions"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Whether the OS powers off on a soft shutdown.
    pub fn honour_soft_off(&self, honour: bool) -> anyhow::Result<()> {
        std::fs::write(
            self.dir.path().join("soft"),
            if honour { "honour\n" } else { "ignore\n" },
        )?;
        Ok(())
    }

    /// Runs ipmitool (lanplus, cipher suite 3) against the simulator as `user` with `args`.
    pub fn ipmitool(&self, user: &User, args: &[&str]) -> anyhow::Result<String> {
        let port = self.port.to_string();
        run(Command::new(self.tools.bin("ipmitool"))
            .env("LD_LIBRARY_PATH", self.tools.library_path())
            .args(["-I", "lanplus", "-H", "127.0.0.1", "-p", &port, "-C", "3"])
            .args(["-U", &user.name, "-P", &user.password])
            .args(args))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ipmi_sim.log")).unwrap_or_default()
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lan_conf(dir: &Path, port: u16, opts: &SimOptions) -> String {
    let mut c = String::new();
    c.push_str("name \"homelab\"\nset_working_mc 0x20\n  startlan 1\n");
    c.push_str(&format!("    addr 127.0.0.1 {port}\n"));
    c.push_str("    priv_limit admin\n");
    for level in ["callback", "user", "operator", "admin"] {
        c.push_str(&format!("    allowed_auths_{level} md5\n"));
    }
    c.push_str("    guid a123456789abcdefa123456789abcdef\n");
    if let Some(kg) = &opts.kg {
        c.push_str(&format!("    bmc_key \"{kg}\"\n"));
    }
    c.push_str("  endlan\n");
    c.push_str(&format!(
        "  chassis_control \"{} {}\"\n",
        dir.join("chassis.sh").display(),
        dir.display()
    ));
    for (i, u) in opts.users.iter().enumerate() {
        c.push_str(&format!(
            "  user {} true \"{}\" \"{}\" {} 10 md5\n",
            i + 2,
            u.name,
            u.password,
            u.privilege
        ));
    }
    c
}

/// A UDP relay in front of the simulator that drops the first `drop` datagrams from the client
/// (a request lost on the way), counting what it relayed each way.
pub struct LossyRelay {
    pub port: u16,
    pub dropped: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyRelay {
    pub async fn start(upstream: u16, drop: usize) -> anyhow::Result<LossyRelay> {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let port = front.local_addr()?.port();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        back.connect(("127.0.0.1", upstream)).await?;
        let dropped = Arc::new(Mutex::new(0usize));
        let count = dropped.clone();
        let task = tokio::spawn(async move {
            let mut client = None;
            let mut a = vec![0u8; 2048];
            let mut b = vec![0u8; 2048];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        let drop_it = match count.lock() {
                            Ok(mut c) if *c < drop => { *c += 1; true }
                            _ => false,
                        };
                        if !drop_it {
                            let _ = back.send(&a[..n]).await;
                        }
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { continue };
                        if let Some(to) = client {
                            let _ = front.send_to(&b[..n], to).await;
                        }
                    }
                }
            }
        });
        Ok(LossyRelay {
            port,
            dropped,
            task,
        })
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
