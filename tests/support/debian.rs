//! Programs from Debian's packages for the tests (OpenIPMI's `ipmi_sim` and `ipmitool`,
//! Prometheus and `promtool`), unpacked into the cache without touching the system:
//! `apt-get download` of the packages (as root, `apt-get update` first when the download fails
//! for want of package lists, as on a fresh machine), then `dpkg-deb -x` of each into
//! `~/.cache/kubectl-homelab/<name>-<hash of the package list>/root`. A marker file makes a
//! second run cost nothing; a lock makes the test binaries that need the same set wait for one
//! installer. `KUBECTL_HOMELAB_CACHE` moves the cache.
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

/// Makes a program the tests cannot get a failure instead of a skip (scripts/test.sh sets it).
pub const REQUIRE_ENV: &str = "KUBECTL_HOMELAB_REQUIRE_ASSETS";

pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// `$KUBECTL_HOMELAB_CACHE`, else `~/.cache/kubectl-homelab`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("KUBECTL_HOMELAB_CACHE") {
        Some(c) if !c.is_empty() => Ok(PathBuf::from(c)),
        _ => Ok(
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                .join(".cache/kubectl-homelab"),
        ),
    }
}

/// A short stable hash of `text` for cache directory names (FNV-1a).
pub fn fnv(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Holds an exclusive lock on `<cache>/<name>.lock` until dropped.
pub struct CacheLock(#[allow(dead_code)] std::fs::File);

pub fn lock(name: &str) -> anyhow::Result<CacheLock> {
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let path = cache.join(format!("{name}.lock"));
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; released when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "locking {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(CacheLock(file))
}

/// Where a set of packages was unpacked.
#[derive(Clone, Debug)]
pub struct Unpacked {
    pub root: PathBuf,
}

impl Unpacked {
    pub fn bin(&self, name: &str) -> PathBuf {
        self.root.join("usr/bin").join(name)
    }

    /// `LD_LIBRARY_PATH` for the unpacked programs' own libraries.
    pub fn library_path(&self) -> String {
        format!(
            "{}:{}",
            self.root.join("usr/lib/x86_64-linux-gnu").display(),
            self.root.join("lib/x86_64-linux-gnu").display()
        )
    }
}

/// `packages` unpacked into `<cache>/<name>-<hash>/root`, downloaded on the first call.
pub fn unpack(name: &str, packages: &[&str]) -> anyhow::Result<Unpacked> {
    let _lock = lock(name)?;
    let dir = cache_dir()?.join(format!("{name}-{:08x}", fnv(&packages.join(" "))));
    let done = dir.join(".installed");
    let unpacked = Unpacked {
        root: dir.join("root"),
    };
    if done.is_file() {
        return Ok(unpacked);
    }
    let started = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the half-made {}", dir.display()))?;
    }
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs)?;
    let download = || {
        run(Command::new("apt-get")
            .arg("download")
            .args(packages)
            .current_dir(&debs))
    };
    if let Err(first) = download() {
        // A fresh machine may have no package lists yet; only root can fetch them.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(first.context("apt-get download (not root: no apt-get update)"));
        }
        run(Command::new("apt-get").args(["update", "-qq"])).with_context(|| {
            format!("apt-get download failed ({first:#}), and so did apt-get update")
        })?;
        download().context("apt-get download")?;
    }
    for entry in std::fs::read_dir(&debs)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            run(Command::new("dpkg-deb")
                .arg("-x")
                .arg(&path)
                .arg(&unpacked.root))
            .with_context(|| format!("dpkg-deb -x {}", path.display()))?;
        }
    }
    std::fs::remove_dir_all(&debs)?;
    std::fs::write(&done, "ok\n")?;
    eprintln!(
        "installed {} into {} in {:.1} s",
        packages.join(" "),
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(unpacked)
}

/// Runs `cmd`, failing with its output when it fails; its standard output.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
