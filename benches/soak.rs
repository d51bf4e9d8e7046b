//! A soak run that counts wrong power actions. It runs, as real processes, two `kubectl-homelab
//! run-operator` replicas electing a leader, the Cluster Autoscaler 1.36.1, etcd, kube-apiserver
//! and kube-scheduler, with the simulated machines of `tests/support/machines.rs` (benches/soak/lab.rs),
//! and for many steps does one seeded random thing:
//! - demand: sets the number of demand pods (created or deleted) so CA scales up and down;
//! - a desired-power flip: `spec.powerState` of a random Node CR, what `kubectl homelab power
//!   on|off` writes;
//! - SIGKILLs a replica and starts it again;
//! - SIGSTOPs the leader until the other replica has taken over, then SIGCONTs it;
//! - restarts kube-apiserver on the same etcd and port while the operator runs.
//!
//! An independent observer (benches/soak/observer.rs: its own watches on Node CRs, power Jobs,
//! pods and Nodes) counts machines powered off with bound pods, power actions against the
//! desired state, duplicate actions for one operation, orphan Jobs and pods left Pending while a
//! machine was off; the run fails unless all are zero. It reports power cycles completed (a
//! power-on Job then a power-off Job of one machine, both succeeded), each count, and the pod
//! waits (created → bound) p50/p95/max.
//!
//! Run: `cargo bench --bench soak -- --cycles 200` (full length: until 200 power cycles, at most
//! `--minutes M`, 120 by default; `--machines N`, 4 by default; `--seed S` replays a run's
//! decisions, the seed is printed first: the processes' timing differs from run to run, so a replay
//! makes the same choices, not the same interleaving). Without `--bench` (`cargo test
//! --benches`, scripts/test.sh) it runs the smoke version: 3 machines, until 3 power cycles and
//! every kind of disruption once, at most 4 minutes. A failed run, or any with `SOAK_KEEP=1`,
//! copies every process's log to `<temp dir>/soak-<seed>` and prints where.
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "soak/lab.rs"]
mod lab;
#[path = "soak/observer.rs"]
mod observer;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use kubectl_homelab::operator::machine::PowerState;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

use lab::{BOOT, LEASE, Lab, PODS_PER_MACHINE, SCAN};
use observer::{Kind, Observer, Settings, Summary};

/// How long one run goes and how hard it pushes.
#[derive(Debug, Clone, Copy)]
struct Plan {
    machines: usize,
    /// Stop once this many power cycles completed...
    cycles: usize,
    /// ... or after this long.
    limit: Duration,
    /// Fewer completed power cycles than this fails the run: it did not exercise what it claims.
    min_cycles: usize,
    /// Pause between two steps (random in this range).
    pause: (Duration, Duration),
}

const FULL: Plan = Plan {
    machines: 4,
    cycles: 200,
    limit: Duration::from_secs(120 * 60),
    min_cycles: 200,
    pause: (Duration::from_secs(2), Duration::from_secs(8)),
};

const SMOKE: Plan = Plan {
    machines: 3,
    cycles: 3,
    limit: Duration::from_secs(240),
    min_cycles: 1,
    pause: (Duration::from_secs(2), Duration::from_secs(6)),
};

/// One step of the soak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Demand,
    Flip,
    KillReplica,
    StopLeader,
    RestartApiserver,
}

/// Every disruption happens once first, between demand steps, so even the smoke run sees each.
const OPENING: &[Step] = &[
    Step::Demand,
    Step::Flip,
    Step::KillReplica,
    Step::Demand,
    Step::StopLeader,
    Step::Flip,
    Step::RestartApiserver,
    Step::Demand,
];

impl Step {
    /// After the opening: mostly demand and flips; a replica killed every ~10 steps, the leader
    /// stopped every ~12, the API server restarted every ~30.
    fn random(rng: &mut SmallRng) -> Step {
        match rng.random_range(0..100) {
            0..50 => Step::Demand,
            50..80 => Step::Flip,
            80..90 => Step::KillReplica,
            90..97 => Step::StopLeader,
            _ => Step::RestartApiserver,
        }
    }
}

struct Args {
    plan: Plan,
    seed: u64,
    smoke: bool,
}

fn parse_args() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| -> Option<u64> {
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1).and_then(|v| v.parse().ok())
    };
    let smoke = !args.iter().any(|a| a == "--bench");
    let mut plan = if smoke { SMOKE } else { FULL };
    if let Some(n) = flag("--cycles") {
        plan.cycles = n as usize;
        plan.min_cycles = n as usize;
    }
    if let Some(m) = flag("--minutes") {
        plan.limit = Duration::from_secs(m * 60);
    }
    if let Some(n) = flag("--machines") {
        plan.machines = (n as usize).max(2);
    }
    let seed = flag("--seed").unwrap_or_else(fresh_seed);
    Args { plan, seed, smoke }
}

/// A seed from the clock and the process id.
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn main() {
    let args = parse_args();
    let rt = support::bench_runtime();
    match rt.block_on(run(&args)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("soak failed: {e:#}");
            eprintln!("replay: {}", replay(&args));
            std::process::exit(1);
        }
    }
}

fn replay(args: &Args) -> String {
    if args.smoke {
        format!("cargo test --bench soak -- --seed {}", args.seed)
    } else {
        format!(
            "cargo bench --bench soak -- --seed {} --cycles {} --machines {}",
            args.seed, args.plan.cycles, args.plan.machines
        )
    }
}

/// The observer's tolerances for this lab's timings.
fn settings(plan: &Plan) -> Settings {
    Settings {
        settle: Duration::from_secs(5),
        lag: Duration::from_secs(5),
        // One boot (the power Job's run, `support::machines::JOB_RUNS`, and the boot delay) and
        // two CA scan intervals, plus 5 s for what comes before CA's scale-up: the scheduler
        // marking the pod Unschedulable (CA only acts on those, `core/static_autoscaler.go`
        // `RunOnce`) and the watches' delivery.
        pending_limit: support::machines::JOB_RUNS + BOOT + 2 * SCAN + Duration::from_secs(5),
        max_on: plan.machines,
    }
}

/// Runs the soak; `Ok(false)` when it found wrong actions or did too few cycles.
async fn run(args: &Args) -> anyhow::Result<bool> {
    let plan = args.plan;
    println!(
        "soak ({}): seed {} ({} machines, until {} power cycles or {} s); replay: {}",
        if args.smoke {
            "smoke; `cargo bench --bench soak` runs it full length"
        } else {
            "full"
        },
        args.seed,
        plan.machines,
        plan.cycles,
        plan.limit.as_secs(),
        replay(args)
    );
    observer::self_check()?;
    let Some(lab) = Lab::start(plan.machines).await? else {
        println!("skipped: Kubernetes test binaries not found (see tests/support/README.md)");
        return Ok(true);
    };
    let observer = Observer::start(lab.client.clone(), &lab.ns, settings(&plan));
    let mut soak = Soak {
        lab: &lab,
        observer: &observer,
        rng: SmallRng::seed_from_u64(args.seed),
        next_pod: 0,
        steps: Vec::new(),
    };
    let started = Instant::now();
    let result = soak.drive(&plan, started).await;
    // Let the last actions finish and the due checks run.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let summary = observer.summary();
    let passed = report(&lab, &soak.steps, &summary, started.elapsed(), &plan);
    if std::env::var_os("SOAK_KEEP").is_some() || !passed || result.is_err() {
        keep(&lab, args.seed);
    }
    result?;
    if !passed {
        eprintln!("replay: {}", replay(args));
    }
    Ok(passed)
}

/// Copies the control plane's logs (every process's, also the replicas' and CA's) to
/// `<temp dir>/soak-<seed>` and prints where.
fn keep(lab: &Lab, seed: u64) {
    let to = std::env::temp_dir().join(format!("soak-{seed}"));
    match copy_logs(lab.cp.dir(), &to) {
        Ok(()) => println!("logs kept in {}", to.display()),
        Err(e) => eprintln!("cannot keep the logs in {}: {e}", to.display()),
    }
}

fn copy_logs(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            copy_logs(&path, &to.join(entry.file_name()))?;
        } else if path.extension().is_some_and(|e| e == "log" || e == "yaml") {
            std::fs::copy(&path, to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

struct Soak<'a> {
    lab: &'a Lab,
    observer: &'a Observer,
    rng: SmallRng,
    next_pod: usize,
    /// Steps taken, in order.
    steps: Vec<Step>,
}

impl Soak<'_> {
    async fn drive(&mut self, plan: &Plan, started: Instant) -> anyhow::Result<()> {
        let mut opening = OPENING.iter().copied();
        while started.elapsed() < plan.limit {
            let opened = self.steps.len() >= OPENING.len();
            if opened && self.observer.cycles() >= plan.cycles {
                break;
            }
            let step = opening
                .next()
                .unwrap_or_else(|| Step::random(&mut self.rng));
            self.steps.push(step);
            print!(
                "[{:>5.0} s, {} power cycles] ",
                started.elapsed().as_secs_f64(),
                self.observer.cycles()
            );
            self.step(step).await.with_context(|| {
                format!(
                    "step {} ({step:?}) at {:.0} s",
                    self.steps.len(),
                    started.elapsed().as_secs_f64()
                )
            })?;
            self.lab.collect_pods_of_deleted_nodes().await?;
            let pause = self.rng.random_range(plan.pause.0..=plan.pause.1);
            tokio::time::sleep(pause).await;
        }
        // Demand ends so the machines go off.
        print!("[end] ");
        self.demand(0).await
    }

    async fn step(&mut self, step: Step) -> anyhow::Result<()> {
        match step {
            Step::Demand => {
                let most = self.lab.names.len() * PODS_PER_MACHINE;
                // Half the time little demand, so CA scales down too.
                let target = if self.rng.random_bool(0.5) {
                    self.rng.random_range(0..=PODS_PER_MACHINE)
                } else {
                    self.rng.random_range(0..=most)
                };
                self.demand(target).await
            }
            Step::Flip => {
                let i = self.rng.random_range(0..self.lab.names.len());
                let name = &self.lab.names[i];
                let next = match self.lab.desired(name).await? {
                    PowerState::On => PowerState::Off,
                    PowerState::Off => PowerState::On,
                };
                println!("flip {name} → {next:?}");
                self.lab.set_desired(name, next).await
            }
            Step::KillReplica => {
                let i = self.rng.random_range(0..self.lab.replicas.len());
                let down = self
                    .rng
                    .random_range(Duration::from_secs(1)..=Duration::from_secs(5));
                let replica = &self.lab.replicas[i];
                println!("SIGKILL {} for {down:?}", replica.identity);
                self.observer.disturbance_begins();
                replica.kill();
                tokio::time::sleep(down).await;
                let restarted = replica.restart();
                self.observer.disturbance_ends(recovery());
                restarted
            }
            Step::StopLeader => {
                let Some(i) = self.lab.leader().await? else {
                    println!("no leader to stop");
                    return Ok(());
                };
                let replica = &self.lab.replicas[i];
                // Past the Lease's expiry, so the other replica takes over meanwhile.
                let stopped = LEASE + self.rng.random_range(Duration::ZERO..=2 * LEASE);
                println!("SIGSTOP {} (leader) for {stopped:?}", replica.identity);
                self.observer.disturbance_begins();
                replica.freeze(true);
                tokio::time::sleep(stopped).await;
                replica.freeze(false);
                self.observer.disturbance_ends(recovery());
                Ok(())
            }
            Step::RestartApiserver => {
                println!("restarting kube-apiserver");
                self.observer.disturbance_begins();
                let restarted = self.lab.cp.restart_apiserver().await;
                self.observer.disturbance_ends(recovery());
                restarted
            }
        }
    }

    /// Creates or deletes demand pods until `target` are live.
    async fn demand(&mut self, target: usize) -> anyhow::Result<()> {
        let live = self.lab.live_pods().await?;
        println!("demand {} → {target} pods", live.len());
        for _ in live.len()..target {
            let name = format!("d-{}", self.next_pod);
            self.next_pod += 1;
            self.observer.pod_created(&name);
            self.lab.create_pod(&name).await?;
        }
        let mut names: Vec<String> = live
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        while names.len() > target {
            let i = self.rng.random_range(0..names.len());
            let name = names.swap_remove(i);
            self.lab.delete_pod(&name).await?;
        }
        Ok(())
    }
}

/// How long a disruption's effects may last after it ended: a new leader (one Lease duration),
/// CA's backoff of a scale-up that failed meanwhile (`--initial-node-group-backoff-duration`,
/// 10 s), and a boot.
fn recovery() -> Duration {
    LEASE + Duration::from_secs(10) + support::machines::JOB_RUNS + BOOT + 2 * SCAN
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// Prints the figures and the findings; `true` when every count is zero and enough power cycles
/// completed.
fn report(lab: &Lab, steps: &[Step], s: &Summary, took: Duration, plan: &Plan) -> bool {
    let count = |step: Step| steps.iter().filter(|s| **s == step).count();
    println!(
        "soak: {:.0} s, {} steps (demand {}, flips {}, replica kills {}, leader stops {}, API \
         server restarts {})",
        took.as_secs_f64(),
        steps.len(),
        count(Step::Demand),
        count(Step::Flip),
        count(Step::KillReplica),
        count(Step::StopLeader),
        count(Step::RestartApiserver)
    );
    println!(
        "  power cycles completed: {} (power-on Jobs succeeded {}, power-off Jobs succeeded {}; \
         the machines saw {} power-on and {} power-off Jobs created)",
        s.cycles,
        s.power_ons,
        s.power_offs,
        lab.machines.power_ons().values().sum::<usize>(),
        lab.machines.power_offs().values().sum::<usize>()
    );
    println!("  CA's gRPC calls: {}", lab.ca.calls());
    println!(
        "  CA's log lines about provider trouble: {} (calls that failed while no replica led or \
         the API server restarted; not counted as wrong actions)",
        lab.ca.provider_errors(&[]).len()
    );
    println!(
        "  pod wait (created → bound), {} pods: p50 {}, p95 {}, max {}; {} still Pending",
        s.waits.len(),
        secs(s.wait(0.5)),
        secs(s.wait(0.95)),
        secs(s.waits.last().copied()),
        s.pending_now
    );
    let mut passed = true;
    for kind in Kind::ALL {
        let n = s.count(kind);
        println!("  {}: {n}", kind.describe());
        for f in s.findings.iter().filter(|f| f.kind == kind).take(10) {
            println!("    at {:.1} s: {}", f.at, f.what);
        }
        passed &= n == 0;
    }
    if s.cycles < plan.min_cycles {
        println!(
            "  too few power cycles: {} of at least {}",
            s.cycles, plan.min_cycles
        );
        passed = false;
    }
    for r in &lab.replicas {
        if let Some(log) = r.log() {
            println!("  {} log: {}", r.identity, log.display());
        }
    }
    println!("soak {}", if passed { "passed" } else { "FAILED" });
    passed
}
