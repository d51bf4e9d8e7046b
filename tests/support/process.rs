//! Child processes (etcd, kube-apiserver, kube-scheduler) that cannot outlive the test binary.
//!
//! Every child is started from one long-lived "spawner" thread with `PR_SET_PDEATHSIG(SIGKILL)`:
//! the kernel sends the signal when the *thread* that forked the child exits, so forking from a
//! short-lived test thread would kill the control plane as soon as that test returns. The spawner
//! thread lives until the process ends, so children die with the test binary, also when it
//! is killed or aborts and no destructor runs. Each child also gets its own process group, so a
//! stop reaches anything it forked.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();

fn spawner() -> io::Result<&'static mpsc::Sender<SpawnRequest>> {
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx);
    }
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    // The receiver loop ends only when every sender is gone; the static one never is.
    std::thread::Builder::new()
        .name("support-spawner".into())
        .spawn(move || {
            for (mut cmd, reply) in rx {
                // The requester may have given up; nothing to do then.
                let _ = reply.send(cmd.spawn());
            }
        })?;
    // Another test may have raced us here: its sender wins, ours is dropped and our thread ends.
    Ok(SPAWNER.get_or_init(|| tx))
}

/// A running child process whose output goes to a log file.
#[derive(Debug)]
pub struct Managed {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Managed {
    /// Starts `program` with `args`, stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> io::Result<Self> {
        Self::spawn_with_env(name, program, args, log, &[])
    }

    /// [`Self::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        env: &[(&str, &str)],
    ) -> io::Result<Self> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()?
            .send((cmd, reply_tx))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let child = reply_rx
            .recv()
            .map_err(|_| io::Error::other("the spawner thread dropped the request"))??;
        Ok(Self {
            name: name.to_owned(),
            log: log.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM to the process group, SIGKILL after `grace`, then reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscalls on a process group we created.
        unsafe { libc::killpg(pgid, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Also reaches any leftover member of the group after the leader has exited.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL to the process group (nothing of the child's shutdown path runs), then reaps it.
    pub fn kill(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: a plain syscall on a process group we created.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A free TCP port on 127.0.0.1. The listeners are held until all ports are picked so one call
/// never returns the same port twice.
pub fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}
