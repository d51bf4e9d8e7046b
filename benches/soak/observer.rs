//! The soak's independent observer: its own watches on the Node CRs, power Jobs, demand pods and
//! Kubernetes Nodes (none of the operator's caches), and the checks that count wrong power
//! actions. Every time is the system clock when the observer received the event (all processes
//! run on this machine, so it compares with the API server's timestamps too); checks that pair
//! two watches wait [`Settings::lag`] so an event that arrives late on the other watch is seen.
//!
//! Each finding's definition is written at its check: [`State::check_contradiction`],
//! [`State::check_powered_off_busy`], [`State::on_job`] (duplicates), [`State::tick`] (orphans,
//! starved pods).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::watcher;
use kubectl_homelab::operator::api::Machine;
use kubectl_homelab::operator::machine::{Phase, PowerState};
use kubectl_homelab::operator::power::job::{
    DIRECTION_LABEL, MACHINE_LABEL, OPERATION_LABEL, job_selector,
};

use crate::support::Background;
use crate::support::control_plane::lock;

/// The observer's tolerances.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a desired state must have held before an action against it is wrong, and how
    /// long a Job may stay an orphan.
    pub settle: Duration,
    /// How long a check waits for the other watches to catch up.
    pub lag: Duration,
    /// How long a pod may stay Pending while a machine CA could pick was off (and nothing was
    /// disturbed).
    pub pending_limit: Duration,
    /// Nodes CR's group size limit (`maxSize`): machines that may be on at once.
    pub max_on: usize,
}

/// What the observer counts as a wrong power action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    PoweredOffBusy,
    Contradicting,
    Duplicate,
    Orphan,
    Starved,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::PoweredOffBusy,
        Kind::Contradicting,
        Kind::Duplicate,
        Kind::Orphan,
        Kind::Starved,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Kind::PoweredOffBusy => "machines powered off with bound pods",
            Kind::Contradicting => "power actions against the desired state",
            Kind::Duplicate => "duplicate actions for one operation",
            Kind::Orphan => "orphan Jobs",
            Kind::Starved => "pods Pending too long while a machine was off",
        }
    }
}

/// One wrong action, with when it was seen (seconds since the observer started).
#[derive(Debug, Clone)]
pub struct Finding {
    pub kind: Kind,
    pub at: f64,
    pub what: String,
}

#[derive(Debug, Default)]
struct CrSeen {
    /// `spec.powerState` as it changed, with when the observer saw each value.
    desired: Vec<(Timestamp, PowerState)>,
    /// `status.operation.id`.
    operation: Option<String>,
    phase: Phase,
    node: String,
}

impl CrSeen {
    /// The desired states that held at some point in `[from, to]`; `None` when the observer did
    /// not know the Node CR at `from` yet.
    fn desired_during(&self, from: Timestamp, to: Timestamp) -> Option<BTreeSet<PowerState>> {
        let before = self.desired.iter().rev().find(|(at, _)| *at <= from)?;
        let mut states = BTreeSet::from([before.1]);
        states.extend(
            self.desired
                .iter()
                .filter(|(at, _)| *at > from && *at <= to)
                .map(|(_, p)| *p),
        );
        Some(states)
    }
}

#[derive(Debug)]
struct JobSeen {
    name: String,
    machine: String,
    operation: String,
    direction: String,
    first_seen: Timestamp,
    finished: bool,
    succeeded: bool,
    gone: bool,
    /// Since when it has been an orphan (see [`State::tick`]).
    orphan_since: Option<Timestamp>,
    flagged_twice: bool,
    flagged_orphan: bool,
}

#[derive(Debug, Default)]
struct PodSeen {
    name: String,
    created: Option<Timestamp>,
    node: Option<String>,
    bound_at: Option<Timestamp>,
    /// When it was first seen deleting or gone (or its `deletionTimestamp`, if earlier).
    deleting_since: Option<Timestamp>,
    terminal: bool,
    daemon_set: bool,
    /// Time spent Pending while a machine was pickable and nothing was disturbed.
    starved: Duration,
    flagged: bool,
}

/// A check that waits for the watches to catch up.
#[derive(Debug)]
enum Due {
    Contradiction { job: String },
    PoweredOff { node: String, job: String },
}

#[derive(Debug)]
struct PowerOff {
    job: String,
    machine: String,
    /// The power-off Job's completion, as the simulated Job controller wrote it.
    completed: Timestamp,
    /// When the observer saw the Node go NotReady or away after it.
    down: Option<Timestamp>,
}

#[derive(Debug)]
struct State {
    started: Timestamp,
    /// The time of the event or tick being handled.
    now: Timestamp,
    /// Print each finding as it is made (not in the self-check).
    live: bool,
    settings: Settings,
    crs: BTreeMap<String, CrSeen>,
    jobs: BTreeMap<String, JobSeen>,
    /// Job uids per (machine, operation id).
    operations: BTreeMap<(String, String), BTreeSet<String>>,
    pods: BTreeMap<String, PodSeen>,
    /// Nodes by name: whether Ready.
    nodes: BTreeMap<String, bool>,
    /// Machines powering off, by node name.
    powering_off: BTreeMap<String, PowerOff>,
    due: Vec<(Timestamp, Due)>,
    /// Disruptions in progress, and until when the last one's effects may last.
    disturbances: usize,
    disturbed_until: Timestamp,
    /// When each demand pod was created, by name (the soak tells the observer).
    created: BTreeMap<String, Timestamp>,
    /// Last power Job that succeeded per machine (`on` / `off`).
    last_done: BTreeMap<String, String>,
    pub cycles: usize,
    pub power_ons: usize,
    pub power_offs: usize,
    waits: Vec<Duration>,
    findings: Vec<Finding>,
}

/// Watches and counts; stops when dropped.
pub struct Observer {
    state: Arc<Mutex<State>>,
    _tasks: Vec<Background>,
}

/// What the observer found, for the report.
#[derive(Debug, Clone)]
pub struct Summary {
    pub cycles: usize,
    pub power_ons: usize,
    pub power_offs: usize,
    pub findings: Vec<Finding>,
    /// Pod waits (created → bound), sorted.
    pub waits: Vec<Duration>,
    pub pending_now: usize,
}

impl Summary {
    pub fn count(&self, kind: Kind) -> usize {
        self.findings.iter().filter(|f| f.kind == kind).count()
    }

    /// The `q` quantile of the pod waits (nearest rank).
    pub fn wait(&self, q: f64) -> Option<Duration> {
        if self.waits.is_empty() {
            return None;
        }
        let rank = ((q * self.waits.len() as f64).ceil() as usize).clamp(1, self.waits.len());
        self.waits.get(rank - 1).copied()
    }
}

fn since(a: Timestamp, b: Timestamp) -> Duration {
    b.duration_since(a).try_into().unwrap_or(Duration::ZERO)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(t)
}

fn sub(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX))
        .unwrap_or(t)
}

impl Observer {
    pub fn start(client: kube::Client, ns: &str, settings: Settings) -> Observer {
        let mut state = State::new(settings, Timestamp::now());
        state.live = true;
        let state = Arc::new(Mutex::new(state));
        let s = state.clone();
        let crs = follow(
            Api::<Machine>::namespaced(client.clone(), ns),
            watcher::Config::default(),
            move |ev| lock(&s).on_cr(ev, Timestamp::now()),
        );
        let s = state.clone();
        let jobs = follow(
            Api::<Job>::namespaced(client.clone(), ns),
            watcher::Config::default().labels(&job_selector()),
            move |ev| lock(&s).on_job(ev, Timestamp::now()),
        );
        let s = state.clone();
        let pods = follow(
            Api::<Pod>::namespaced(client.clone(), ns),
            watcher::Config::default(),
            move |ev| lock(&s).on_pod(ev, Timestamp::now()),
        );
        let s = state.clone();
        let nodes = follow(
            Api::<Node>::all(client),
            watcher::Config::default(),
            move |ev| lock(&s).on_node(ev, Timestamp::now()),
        );
        let s = state.clone();
        let ticker = Background::from(tokio::spawn(async move {
            const TICK: Duration = Duration::from_millis(500);
            loop {
                tokio::time::sleep(TICK).await;
                lock(&s).tick(TICK, Timestamp::now());
            }
        }));
        Observer {
            state,
            _tasks: vec![crs, jobs, pods, nodes, ticker],
        }
    }

    /// A disruption (operator killed or stopped, API server restarting) begins: pods do not
    /// count as starved meanwhile.
    pub fn disturbance_begins(&self) {
        lock(&self.state).disturbances += 1;
    }

    /// A disruption ended; its effects (a new leader, CA's backoff of a failed scale-up) may
    /// last `recovery` more.
    pub fn disturbance_ends(&self, recovery: Duration) {
        lock(&self.state).disturbance_ends(recovery, Timestamp::now());
    }

    /// The soak is about to create demand pod `name`.
    pub fn pod_created(&self, name: &str) {
        lock(&self.state)
            .created
            .insert(name.to_owned(), Timestamp::now());
    }

    pub fn cycles(&self) -> usize {
        lock(&self.state).cycles
    }

    pub fn summary(&self) -> Summary {
        let s = lock(&self.state);
        let mut waits = s.waits.clone();
        waits.sort();
        Summary {
            cycles: s.cycles,
            power_ons: s.power_ons,
            power_offs: s.power_offs,
            findings: s.findings.clone(),
            waits,
            pending_now: s.pods.values().filter(|p| p.pending()).count(),
        }
    }
}

/// What a watch reports: an object as it is now, or the key of one that is gone.
enum Seen<K> {
    Apply(K),
    Gone(String),
}

/// Calls `f` with every change of `api`'s objects. A re-list after the watch broke (an API
/// server restart) reports objects that went away meanwhile as gone.
fn follow<K, F>(api: Api<K>, config: watcher::Config, f: F) -> Background
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
    F: Fn(Seen<K>) + Send + 'static,
{
    Background::from(tokio::spawn(async move {
        let mut known: BTreeSet<String> = BTreeSet::new();
        let mut relisted: BTreeSet<String> = BTreeSet::new();
        let mut events = std::pin::pin!(watcher(api, config));
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => relisted.clear(),
                Ok(watcher::Event::InitApply(o)) => {
                    relisted.insert(o.name_any());
                    known.insert(o.name_any());
                    f(Seen::Apply(o));
                }
                Ok(watcher::Event::InitDone) => {
                    for gone in known.difference(&relisted).cloned().collect::<Vec<_>>() {
                        known.remove(&gone);
                        f(Seen::Gone(gone));
                    }
                }
                Ok(watcher::Event::Apply(o)) => {
                    known.insert(o.name_any());
                    f(Seen::Apply(o));
                }
                Ok(watcher::Event::Delete(o)) => {
                    known.remove(&o.name_any());
                    f(Seen::Gone(o.name_any()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }))
}

fn job_condition(job: &Job, kind: &str) -> Option<Timestamp> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_ == kind && c.status == "True")
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or_else(Timestamp::now, |t| t.0)
        })
}

impl PodSeen {
    fn pending(&self) -> bool {
        self.node.is_none() && self.deleting_since.is_none() && !self.terminal
    }
}

impl State {
    fn new(settings: Settings, now: Timestamp) -> State {
        State {
            started: now,
            now,
            live: false,
            settings,
            crs: BTreeMap::new(),
            jobs: BTreeMap::new(),
            operations: BTreeMap::new(),
            pods: BTreeMap::new(),
            nodes: BTreeMap::new(),
            powering_off: BTreeMap::new(),
            due: Vec::new(),
            disturbances: 0,
            disturbed_until: now,
            created: BTreeMap::new(),
            last_done: BTreeMap::new(),
            cycles: 0,
            power_ons: 0,
            power_offs: 0,
            waits: Vec::new(),
            findings: Vec::new(),
        }
    }

    fn disturbance_ends(&mut self, recovery: Duration, now: Timestamp) {
        self.disturbances = self.disturbances.saturating_sub(1);
        self.disturbed_until = self.disturbed_until.max(add(now, recovery));
    }

    fn elapsed(&self) -> f64 {
        since(self.started, self.now).as_secs_f64()
    }

    fn find(&mut self, kind: Kind, what: String) {
        let at = self.elapsed();
        if self.live {
            eprintln!("soak: FOUND at {at:.1}s: {}: {what}", kind.describe());
        }
        self.findings.push(Finding { kind, at, what });
    }

    fn on_cr(&mut self, ev: Seen<Machine>, now: Timestamp) {
        self.now = now;
        let Seen::Apply(m) = ev else { return };
        let cr = self.crs.entry(m.name_any()).or_default();
        if cr.desired.last().map(|d| d.1) != Some(m.spec.power_state) {
            cr.desired.push((now, m.spec.power_state));
        }
        let lc = m.lifecycle();
        cr.phase = lc.phase();
        cr.operation = lc.operation.map(|o| o.id);
        cr.node = m.node_name().unwrap_or_default().to_owned();
    }

    /// Duplicates are checked here: a Job is a duplicate when it is the second Job (by uid) the
    /// operator created for one machine's operation id (Job names are per operation, so a second
    /// one means the first was deleted and the action issued again), or when its status counts
    /// more than one successful run.
    fn on_job(&mut self, ev: Seen<Job>, now: Timestamp) {
        self.now = now;
        let job = match ev {
            Seen::Gone(name) => {
                for j in self.jobs.values_mut().filter(|j| j.name == name) {
                    j.gone = true;
                }
                return;
            }
            Seen::Apply(job) => job,
        };
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let label = |k: &str| job.labels().get(k).cloned().unwrap_or_default();
        if !self.jobs.contains_key(&uid) {
            let seen = JobSeen {
                name: job.name_any(),
                machine: label(MACHINE_LABEL),
                operation: label(OPERATION_LABEL),
                direction: label(DIRECTION_LABEL),
                first_seen: now,
                finished: false,
                succeeded: false,
                gone: false,
                orphan_since: None,
                flagged_twice: false,
                flagged_orphan: false,
            };
            let key = (seen.machine.clone(), seen.operation.clone());
            let uids = self.operations.entry(key).or_default();
            uids.insert(uid.clone());
            if uids.len() == 2 {
                let what = format!(
                    "a second Job {} for operation {} of {}",
                    seen.name, seen.operation, seen.machine
                );
                self.find(Kind::Duplicate, what);
            }
            let lag = self.settings.lag;
            self.due
                .push((add(now, lag), Due::Contradiction { job: uid.clone() }));
            self.jobs.insert(uid.clone(), seen);
        }
        let succeeded_runs = job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0);
        let complete = job_condition(&job, "Complete");
        let failed = job_condition(&job, "Failed");
        let Some(seen) = self.jobs.get_mut(&uid) else {
            return;
        };
        seen.gone = false;
        if succeeded_runs > 1 && !seen.flagged_twice {
            seen.flagged_twice = true;
            let what = format!("Job {} ran {succeeded_runs} times", seen.name);
            self.find(Kind::Duplicate, what);
        }
        let Some(seen) = self.jobs.get_mut(&uid) else {
            return;
        };
        if seen.finished || (complete.is_none() && failed.is_none()) {
            return;
        }
        seen.finished = true;
        let Some(completed) = complete else { return };
        seen.succeeded = true;
        let (machine, direction, name) = (
            seen.machine.clone(),
            seen.direction.clone(),
            seen.name.clone(),
        );
        if direction == "on" {
            self.power_ons += 1;
        } else {
            self.power_offs += 1;
            if self.last_done.get(&machine).map(String::as_str) == Some("on") {
                self.cycles += 1;
            }
            let node = self
                .crs
                .get(&machine)
                .map(|c| c.node.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| machine.clone());
            let off_job = name.clone();
            let down = match self.nodes.get(&node) {
                Some(true) => None,
                _ => Some(now),
            };
            self.powering_off.insert(
                node.clone(),
                PowerOff {
                    job: name,
                    machine: machine.clone(),
                    completed,
                    down,
                },
            );
            if down.is_some() {
                let lag = self.settings.lag;
                self.due
                    .push((add(now, lag), Due::PoweredOff { node, job: off_job }));
            }
        }
        self.last_done.insert(machine, direction);
    }

    fn on_pod(&mut self, ev: Seen<Pod>, now: Timestamp) {
        self.now = now;
        let pod = match ev {
            Seen::Gone(name) => {
                for p in self.pods.values_mut().filter(|p| p.name == name) {
                    p.deleting_since.get_or_insert(now);
                }
                return;
            }
            Seen::Apply(p) => p,
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let created = self.created.get(&pod.name_any()).copied();
        let seen = self.pods.entry(uid).or_insert_with(|| PodSeen {
            name: pod.name_any(),
            created: created.or(pod.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            daemon_set: pod.owner_references().iter().any(|o| o.kind == "DaemonSet"),
            ..PodSeen::default()
        });
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        if seen.node.is_none()
            && let Some(node) = node
        {
            seen.node = Some(node);
            seen.bound_at = Some(now);
            if let Some(created) = seen.created {
                self.waits.push(since(created, now));
            }
        }
        let Some(seen) = self
            .pods
            .get_mut(&pod.metadata.uid.clone().unwrap_or_default())
        else {
            return;
        };
        if let Some(t) = &pod.metadata.deletion_timestamp {
            let at = seen.deleting_since.map_or(t.0, |d| d.min(t.0)).min(now);
            seen.deleting_since = Some(at);
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        seen.terminal = matches!(phase, Some("Succeeded" | "Failed"));
    }

    fn on_node(&mut self, ev: Seen<Node>, now: Timestamp) {
        self.now = now;
        let (name, ready) = match ev {
            Seen::Gone(name) => {
                self.nodes.remove(&name);
                (name, false)
            }
            Seen::Apply(n) => {
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                self.nodes.insert(n.name_any(), ready);
                (n.name_any(), ready)
            }
        };
        if ready {
            return;
        }
        let lag = self.settings.lag;
        if let Some(off) = self.powering_off.get_mut(&name)
            && off.down.is_none()
        {
            off.down = Some(now);
            let job = off.job.clone();
            self.due
                .push((add(now, lag), Due::PoweredOff { node: name, job }));
        }
    }

    /// A power action against the desired state: a Job whose direction is not the Node CR's
    /// `spec.powerState` at any point from [`Settings::settle`] before the Job was seen to
    /// [`Settings::lag`] after (the desired state had held the other way for longer than the
    /// settle time, and no change toward the Job's direction arrived late on the CR watch).
    fn check_contradiction(&mut self, uid: &str) {
        let Some(job) = self.jobs.get(uid) else {
            return;
        };
        let Some(cr) = self.crs.get(&job.machine) else {
            return;
        };
        let want = match job.direction.as_str() {
            "on" => PowerState::On,
            _ => PowerState::Off,
        };
        let from = sub(job.first_seen, self.settings.settle);
        let to = add(job.first_seen, self.settings.lag);
        let Some(states) = cr.desired_during(from, to) else {
            return;
        };
        if !states.contains(&want) {
            let what = format!(
                "Job {} ({}) while spec.powerState of {} was {:?} for over {:?}",
                job.name, job.direction, job.machine, states, self.settings.settle
            );
            self.find(Kind::Contradicting, what);
        }
    }

    /// A machine powered off with bound pods: when the machine's Node went NotReady or away
    /// after its power-off Job succeeded, it had a bound pod that is not a DaemonSet pod, not
    /// Succeeded or Failed, and was not being deleted before the Job's completion (one second
    /// of slack: the API server's timestamps have whole seconds). A pod bound after the Job
    /// completed but before the Node went down counts too: it ran on a machine going down.
    fn check_powered_off_busy(&mut self, node: &str, job: &str) {
        let Some(off) = self.powering_off.get(node) else {
            return;
        };
        if off.job != job {
            return;
        }
        let Some(down) = off.down else { return };
        let cutoff = add(off.completed, Duration::from_secs(1));
        let busy: Vec<String> = self
            .pods
            .values()
            .filter(|p| p.node.as_deref() == Some(node))
            .filter(|p| p.bound_at.is_some_and(|b| b <= down))
            .filter(|p| !p.daemon_set && !p.terminal)
            .filter(|p| p.deleting_since.is_none_or(|d| d > cutoff))
            .map(|p| p.name.clone())
            .collect();
        let (machine, job_name) = (off.machine.clone(), off.job.clone());
        self.powering_off.remove(node);
        if !busy.is_empty() {
            let what = format!("{machine} (Job {job_name}) with pods {busy:?} on Node {node}");
            self.find(Kind::PoweredOffBusy, what);
        }
    }

    fn disturbed(&self, now: Timestamp) -> bool {
        self.disturbances > 0 || now < self.disturbed_until
    }

    /// Whether CA could pick a machine to power on: a Node CR that is Off, wants off, has no
    /// operation, while fewer machines than the Group's `maxSize` want on.
    fn pickable_off(&self) -> bool {
        let wanted_on = self
            .crs
            .values()
            .filter(|c| c.desired.last().map(|d| d.1) == Some(PowerState::On))
            .count();
        wanted_on < self.settings.max_on
            && self.crs.values().any(|c| {
                c.phase == Phase::Off
                    && c.operation.is_none()
                    && c.desired.last().map(|d| d.1) == Some(PowerState::Off)
            })
    }

    /// Runs the checks that are due, and every `tick`:
    /// - orphans: a power Job that has not finished, whose operation is not the machine's
    ///   current one (`status.operation.id`), still present [`Settings::settle`] after it became
    ///   so. Finished Jobs of past operations are not orphans: Kubernetes' TTL controller
    ///   removes them (`ttlSecondsAfterFinished`), and it does not run here;
    /// - starved pods: a pod Pending for longer than [`Settings::pending_limit`], counting only
    ///   the time while a machine CA could pick was off ([`State::pickable_off`]) and no
    ///   disruption was in progress or recovering.
    fn tick(&mut self, tick: Duration, now: Timestamp) {
        self.now = now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.due)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.due = later;
        for (_, d) in due {
            match d {
                Due::Contradiction { job } => self.check_contradiction(&job),
                Due::PoweredOff { node, job } => self.check_powered_off_busy(&node, &job),
            }
        }

        let settle = self.settings.settle;
        let mut orphans = Vec::new();
        for job in self.jobs.values_mut() {
            let current = self
                .crs
                .get(&job.machine)
                .and_then(|c| c.operation.as_deref());
            let orphan = !job.gone && !job.finished && current != Some(job.operation.as_str());
            if !orphan {
                job.orphan_since = None;
                continue;
            }
            let since_when = *job.orphan_since.get_or_insert(now);
            if since(since_when, now) > settle && !job.flagged_orphan {
                job.flagged_orphan = true;
                orphans.push(format!(
                    "Job {} of {} (operation {}, current {:?})",
                    job.name, job.machine, job.operation, current
                ));
            }
        }
        for what in orphans {
            self.find(Kind::Orphan, what);
        }

        if self.disturbed(now) || !self.pickable_off() {
            return;
        }
        let limit = self.settings.pending_limit;
        let mut starved = Vec::new();
        for p in self.pods.values_mut().filter(|p| p.pending()) {
            p.starved += tick;
            if p.starved > limit && !p.flagged {
                p.flagged = true;
                starved.push(format!("pod {} Pending for over {limit:?}", p.name));
            }
        }
        for what in starved {
            self.find(Kind::Starved, what);
        }
    }
}

/// The checks on made-up events with chosen times, before a run: each kind of wrong action is
/// found where it happens and nowhere else, so a run's zeros mean something.
pub fn self_check() -> anyhow::Result<()> {
    use kubectl_homelab::testing::NodeExt as _;

    let t0 = Timestamp::UNIX_EPOCH;
    let at = |s: f64| add(t0, Duration::from_secs_f64(s));
    let settings = Settings {
        settle: Duration::from_secs(5),
        lag: Duration::from_secs(5),
        pending_limit: Duration::from_secs(10),
        max_on: 9,
    };
    let mut s = State::new(settings, t0);
    let cr = |name: &str, desired: PowerState| {
        Machine::test(name)
            .node_name(name)
            .desired(desired)
            .phase(Phase::Off)
            .build()
    };

    // Against the desired state: `a` wanted off for 10 s gets a power-on Job. `b` is wanted on
    // 0.5 s before its Job, `c` 2 s after it (late on the CR watch): both right.
    for m in ["a", "b", "c"] {
        s.on_cr(Seen::Apply(cr(m, PowerState::Off)), at(0.0));
    }
    s.on_cr(Seen::Apply(cr("b", PowerState::On)), at(9.5));
    for m in ["a", "b", "c"] {
        s.on_job(Seen::Apply(power_job(m, "on-1", "on", None)?), at(10.0));
    }
    s.on_cr(Seen::Apply(cr("c", PowerState::On)), at(12.0));
    s.tick(Duration::from_secs(1), at(16.0));
    expect(&s, Kind::Contradicting, &["power-a-on-1"])?;

    // Duplicate: a second Job (another uid) for operation on-1 of `a`.
    s.on_job(
        Seen::Apply(power_job("a", "on-1", "on", Some("again"))?),
        at(17.0),
    );
    expect(&s, Kind::Duplicate, &["power-a-on-1"])?;

    // Orphans: `a`, `b` and `c` have no current operation and their Jobs, unfinished, have been
    // orphans since the tick at 16 s; the second Job of `a` only since this tick.
    s.tick(Duration::from_secs(1), at(22.0));
    expect(
        &s,
        Kind::Orphan,
        &["power-a-on-1", "power-b-on-1", "power-c-on-1"],
    )?;

    // Powered off busy: `d` had pod `p` bound, `e` had pod `q` deleted before its power-off;
    // both Jobs complete at 30 s, both Nodes go NotReady at 31 s.
    for (m, pod) in [("d", "p"), ("e", "q")] {
        s.on_cr(Seen::Apply(cr(m, PowerState::Off)), at(19.0));
        s.on_node(
            Seen::Apply(kubectl_homelab::testing::node(m).ready()),
            at(19.0),
        );
        s.on_pod(Seen::Apply(bound_pod(pod, Some(m), None)?), at(20.0));
        s.on_job(Seen::Apply(power_job(m, "off-1", "off", None)?), at(29.0));
    }
    s.on_pod(
        Seen::Apply(bound_pod("q", Some("e"), Some(at(25.0)))?),
        at(25.0),
    );
    for m in ["d", "e"] {
        s.on_job(
            Seen::Apply(power_job(m, "off-1", "off", Some("done"))?),
            at(30.0),
        );
        s.on_node(
            Seen::Apply(kubectl_homelab::testing::node(m).not_ready()),
            at(31.0),
        );
    }
    s.tick(Duration::from_secs(1), at(37.0));
    expect(
        &s,
        Kind::PoweredOffBusy,
        &["d (Job power-d-off-1) with pods [\"p\"]"],
    )?;

    // Starved: pod `r` Pending while `f` (Off, wanted off) could be powered on: found after
    // 10 s of ticks, none of which count while a disruption is in progress.
    s.on_cr(Seen::Apply(cr("f", PowerState::Off)), at(38.0));
    s.on_pod(Seen::Apply(bound_pod("r", None, None)?), at(38.0));
    s.disturbances += 1;
    for i in 0..20 {
        s.tick(Duration::from_secs(1), at(39.0 + f64::from(i)));
    }
    expect(&s, Kind::Starved, &[])?;
    s.disturbance_ends(Duration::ZERO, at(59.0));
    for i in 0..11 {
        s.tick(Duration::from_secs(1), at(60.0 + f64::from(i)));
    }
    expect(&s, Kind::Starved, &["pod r Pending"])?;
    anyhow::ensure!(
        s.cycles == 0 && s.power_offs == 2,
        "cycles {} power-offs {}",
        s.cycles,
        s.power_offs
    );
    Ok(())
}

/// Fails unless the findings of `kind` are one per entry of `expected`, each containing it.
fn expect(s: &State, kind: Kind, expected: &[&str]) -> anyhow::Result<()> {
    let found: Vec<&str> = s
        .findings
        .iter()
        .filter(|f| f.kind == kind)
        .map(|f| f.what.as_str())
        .collect();
    let matches = found.len() == expected.len()
        && expected.iter().all(|e| found.iter().any(|f| f.contains(e)));
    anyhow::ensure!(
        matches,
        "self-check: {} found {found:?}, expected {expected:?}",
        kind.describe()
    );
    Ok(())
}

/// Power Job `power-<machine>-<operation>` as the operator labels it; `run` names another uid
/// (`Some("done")`: the same Job, completed).
fn power_job(
    machine: &str,
    operation: &str,
    direction: &str,
    run: Option<&str>,
) -> anyhow::Result<Job> {
    let name = format!("power-{machine}-{operation}");
    let uid = match run {
        Some("done") | None => name.clone(),
        Some(other) => format!("{name}-{other}"),
    };
    let mut job = serde_json::json!({
        "metadata": {
            "name": name,
            "uid": uid,
            "labels": {
                MACHINE_LABEL: machine,
                OPERATION_LABEL: operation,
                DIRECTION_LABEL: direction,
            },
        },
    });
    if run == Some("done") {
        job["status"] = serde_json::json!({
            "succeeded": 1,
            "conditions": [{ "type": "Complete", "status": "True", "lastTransitionTime": "1970-01-01T00:00:30Z" }],
        });
    }
    Ok(serde_json::from_value(job)?)
}

/// A Running pod, bound to `node` (or Pending), deleting since `deleting`.
fn bound_pod(name: &str, node: Option<&str>, deleting: Option<Timestamp>) -> anyhow::Result<Pod> {
    let mut pod = serde_json::json!({
        "metadata": { "name": name, "uid": name },
        "spec": { "containers": [] },
        "status": { "phase": if node.is_some() { "Running" } else { "Pending" } },
    });
    if let Some(node) = node {
        pod["spec"]["nodeName"] = serde_json::json!(node);
    }
    if let Some(t) = deleting {
        pod["metadata"]["deletionTimestamp"] = serde_json::json!(t.to_string());
    }
    Ok(serde_json::from_value(pod)?)
}
