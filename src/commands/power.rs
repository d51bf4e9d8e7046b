//! `kubectl homelab power on|off NODE...`: sets machines' desired power (`spec.powerState`)
//! for the operator to carry out, optionally waiting for it with a progress bar.
use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};

use super::kube_args::ClusterArgs;
use crate::operator::api::{Machine, RETRY_ANNOTATION};
use crate::operator::machine::{Phase, PowerState};
use crate::operator::node::drain::pods_blocking_power_off;

/// Field manager of the CLI's writes.
const FIELD_MANAGER: &str = "kubectl-homelab-power";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    On,
    Off,
}

impl Direction {
    fn power(self) -> PowerState {
        match self {
            Direction::On => PowerState::On,
            Direction::Off => PowerState::Off,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Direction::On => "on",
            Direction::Off => "off",
        }
    }

    /// The phase that means "done".
    fn done_phase(self) -> Phase {
        match self {
            Direction::On => Phase::Ready,
            Direction::Off => Phase::Off,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Desired power.
    #[arg(value_enum)]
    pub direction: Direction,

    /// Machines by Node CR name or by Kubernetes node name.
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,

    /// Follow each machine's lifecycle phase until it is Ready (on) or Off (off), or Failed.
    #[arg(long)]
    pub wait: bool,

    /// Give up waiting after this long (with --wait).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = crate::operator::api::parse_duration_arg)]
    pub timeout: Duration,

    /// Power off machines that run pods without asking (they are drained first).
    #[arg(short = 'y', long)]
    pub yes: bool,

    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// Namespace of the Node CRs (default: the context's namespace).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// A requested name resolved to its Node CR.
#[derive(Clone, Debug)]
struct Target {
    /// As the user typed it.
    requested: String,
    machine: Machine,
}

impl Target {
    fn name(&self) -> String {
        self.machine.name_any()
    }

    /// The Kubernetes node the machine registers as.
    fn node_name(&self) -> String {
        kubernetes_node_name(&self.machine)
    }
}

/// The operator's rule ([`Machine::node_name`]), with the Node CR's own name when the machine
/// declares none and never registered.
fn kubernetes_node_name(m: &Machine) -> String {
    m.node_name()
        .map(str::to_owned)
        .unwrap_or_else(|| m.name_any())
}

fn phase_of(m: &Machine) -> Phase {
    m.status
        .as_ref()
        .map(|s| s.lifecycle.phase())
        .unwrap_or_default()
}

fn phase_since(m: &Machine) -> Option<Timestamp> {
    m.status.as_ref().and_then(|s| s.lifecycle.phase_since)
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{}", unknown_message(.name, .namespace, .close, .known))]
    Unknown {
        name: String,
        namespace: String,
        close: Vec<String>,
        known: usize,
    },
    #[error(
        "{name:?} is ambiguous in namespace {namespace}: Node CRs {} all name it as their Kubernetes node; use the Node CR name",
        .machines.join(", ")
    )]
    Ambiguous {
        name: String,
        namespace: String,
        machines: Vec<String>,
    },
}

fn unknown_message(name: &str, namespace: &str, close: &[String], known: &usize) -> String {
    let mut m = format!(
        "no machine {name:?} in namespace {namespace} (looked for a Node CR of that name, then spec.kubernetesNodeName and status.node.name)"
    );
    if !close.is_empty() {
        m.push_str(&format!("; did you mean {}?", close.join(", ")));
    } else if *known == 0 {
        m.push_str("; the namespace has no Node CRs: pass -n NAMESPACE");
    } else {
        m.push_str("; list them with `kubectl get homelab`, or pass -n NAMESPACE");
    }
    m
}

/// Finds each requested name among `machines`: a Node CR name first, then a Kubernetes node
/// name (`spec.kubernetesNodeName`, `status.node.name`).
fn resolve(
    requested: &[String],
    machines: &[Machine],
    namespace: &str,
) -> Result<Vec<Target>, ResolveError> {
    let mut out: Vec<Target> = Vec::new();
    for name in requested {
        let machine = if let Some(m) = machines.iter().find(|m| &m.name_any() == name) {
            m
        } else {
            let by_node: Vec<&Machine> = machines
                .iter()
                .filter(|m| {
                    m.spec.kubernetes_node_name.as_deref() == Some(name.as_str())
                        || m.status
                            .as_ref()
                            .and_then(|s| s.node.as_ref())
                            .is_some_and(|n| &n.name == name)
                })
                .collect();
            match by_node.as_slice() {
                [one] => *one,
                [] => {
                    return Err(ResolveError::Unknown {
                        name: name.clone(),
                        namespace: namespace.to_owned(),
                        close: close_matches(name, machines),
                        known: machines.len(),
                    });
                }
                many => {
                    return Err(ResolveError::Ambiguous {
                        name: name.clone(),
                        namespace: namespace.to_owned(),
                        machines: many.iter().map(|m| m.name_any()).collect(),
                    });
                }
            }
        };
        // `power off m1 m1` or a CR name plus its node name: act once.
        if out.iter().all(|t| t.name() != machine.name_any()) {
            out.push(Target {
                requested: name.clone(),
                machine: machine.clone(),
            });
        }
    }
    Ok(out)
}

/// Names (CR or Kubernetes node) within a small edit distance of `name`, or containing it,
/// closest first.
fn close_matches(name: &str, machines: &[Machine]) -> Vec<String> {
    let mut candidates: Vec<String> = machines
        .iter()
        .flat_map(|m| {
            let mut names = vec![m.name_any()];
            names.extend(m.spec.kubernetes_node_name.clone());
            names.extend(
                m.status
                    .as_ref()
                    .and_then(|s| s.node.as_ref())
                    .map(|n| n.name.clone()),
            );
            names
        })
        .collect();
    candidates.sort();
    candidates.dedup();
    let limit = (name.chars().count() / 3).clamp(1, 3);
    let mut scored: Vec<(usize, String)> = candidates
        .into_iter()
        .filter_map(|c| {
            let d = strsim::levenshtein(name, &c);
            (d <= limit || (name.len() >= 2 && (c.contains(name) || name.contains(&c))))
                .then_some((d, c))
        })
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, c)| c).collect()
}

/// Pods a power-off would evict: exactly the ones the operator's drain waits for.
fn evictable(pods: &[Pod]) -> Vec<String> {
    let mut out: Vec<String> = pods_blocking_power_off(pods)
        .into_iter()
        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    out.sort();
    out
}

/// The merge patch for one machine: desired power, plus a retry request for a Failed machine
/// already asked for this power (a changed desire restarts the lifecycle by itself).
fn patch_for(m: &Machine, direction: Direction, now: Timestamp) -> Option<serde_json::Value> {
    let desired = direction.power();
    let failed_same = phase_of(m) == Phase::Failed && m.spec.power_state == desired;
    if m.spec.power_state == desired && !failed_same {
        return None;
    }
    let mut patch = serde_json::json!({ "spec": { "powerState": direction.as_str() } });
    if failed_same {
        // Newer than phaseSince even if this computer's clock is behind the operator's.
        let at = match phase_since(m) {
            Some(since) if since >= now => since + SignedDuration::from_secs(1),
            _ => now,
        };
        patch["metadata"] =
            serde_json::json!({ "annotations": { RETRY_ANNOTATION: at.to_string() } });
    }
    Some(patch)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cluster = args.cluster.connect().await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| cluster.default_namespace.clone());
    let client = cluster.client;
    let api: Api<Machine> = Api::namespaced(client.clone(), &namespace);
    let machines = api
        .list(&ListParams::default())
        .await
        .with_context(|| {
            format!(
                "cannot list Node CRs (nodes.infra.homecluster.dev) in namespace {namespace}; \
                 are the CRDs installed and may you list them?"
            )
        })?
        .items;
    let targets = resolve(&args.nodes, &machines, &namespace)?;

    if args.direction == Direction::Off {
        confirm_off(&client, &targets, args.yes).await?;
    }

    let now = Timestamp::now();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    for t in &targets {
        let name = t.name();
        let alias = if t.requested == name {
            String::new()
        } else {
            format!(" ({})", t.requested)
        };
        match patch_for(&t.machine, args.direction, now) {
            None => super::print_stdout(&format!(
                "{name}{alias}: already {} (phase {})\n",
                args.direction.as_str(),
                phase_of(&t.machine)
            ))?,
            Some(patch) => {
                api.patch(&name, &params, &Patch::Merge(&patch))
                    .await
                    .with_context(|| {
                        format!(
                            "cannot set spec.powerState={} on Node CR {namespace}/{name}; may you patch nodes.infra.homecluster.dev?",
                            args.direction.as_str()
                        )
                    })?;
                let retry = if patch.get("metadata").is_some() {
                    " (retry requested)"
                } else {
                    ""
                };
                super::print_stdout(&format!(
                    "{name}{alias}: powerState {}{retry}\n",
                    args.direction.as_str()
                ))?;
            }
        }
    }

    if args.wait {
        wait(&api, &namespace, &targets, args.direction, args.timeout).await?;
    }
    Ok(())
}

/// Refuses (or asks, on a terminal) to power off machines whose node runs pods.
async fn confirm_off(client: &kube::Client, targets: &[Target], yes: bool) -> anyhow::Result<()> {
    let pods_api: Api<Pod> = Api::all(client.clone());
    let mut busy: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in targets {
        if t.machine.spec.power_state == PowerState::Off && phase_of(&t.machine) != Phase::Failed {
            continue;
        }
        let node = t.node_name();
        let pods = pods_api
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .with_context(|| {
                format!("cannot list the pods on node {node} (machine {}); may you list pods in all namespaces?", t.name())
            })?
            .items;
        let names = evictable(&pods);
        if !names.is_empty() {
            busy.insert(format!("{} (node {node})", t.name()), names);
        }
    }
    if busy.is_empty() || yes {
        return Ok(());
    }
    let listing: String = busy
        .iter()
        .map(|(m, pods)| format!("\n  {m}: {}", pods.join(", ")))
        .collect();
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !interactive {
        anyhow::bail!(
            "not powering off: these machines run pods that would be evicted (honouring \
             PodDisruptionBudgets):{listing}\npass --yes to power off anyway (no terminal to ask on)"
        );
    }
    let prompt = format!(
        "These machines run pods that will be evicted (honouring PodDisruptionBudgets):{listing}\nPower them off?"
    );
    let answer = tokio::task::spawn_blocking(move || {
        dialoguer::Confirm::new()
            .with_prompt(prompt)
            .default(false)
            .interact()
    })
    .await
    .context("the confirmation prompt failed")?
    .context("cannot read the answer from the terminal")?;
    if !answer {
        anyhow::bail!("not powering off: cancelled");
    }
    Ok(())
}

/// Where one machine's wait stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Followed {
    Waiting(Phase),
    Done,
    Failed(String),
}

/// Tracks a machine's phase after our change: `Failed` counts only once the machine has
/// moved since (a Failed status from before our change is stale until the operator reacts).
#[derive(Clone, Debug)]
struct Follow {
    initial: (Phase, Option<Timestamp>),
    moved: bool,
}

impl Follow {
    fn new(m: &Machine) -> Follow {
        Follow {
            initial: (phase_of(m), phase_since(m)),
            moved: false,
        }
    }

    fn observe(&mut self, m: &Machine, direction: Direction) -> Followed {
        let phase = phase_of(m);
        if (phase, phase_since(m)) != self.initial {
            self.moved = true;
        }
        if phase == direction.done_phase() {
            Followed::Done
        } else if phase == Phase::Failed && (self.moved || self.initial.0 != Phase::Failed) {
            let reason = m
                .status
                .as_ref()
                .and_then(|s| s.lifecycle.last_error.clone())
                .unwrap_or_else(|| "no reason recorded".to_owned());
            Followed::Failed(reason)
        } else {
            Followed::Waiting(phase)
        }
    }
}

async fn wait(
    api: &Api<Machine>,
    namespace: &str,
    targets: &[Target],
    direction: Direction,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut follow: BTreeMap<String, Follow> = targets
        .iter()
        .map(|t| (t.name(), Follow::new(&t.machine)))
        .collect();
    let mut progress: BTreeMap<String, Followed> = targets
        .iter()
        .map(|t| (t.name(), Followed::Waiting(phase_of(&t.machine))))
        .collect();
    let bar = indicatif::ProgressBar::new(targets.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let say = |bar: &indicatif::ProgressBar, line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };

    let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = loop {
        let pending: Vec<String> = progress
            .iter()
            .filter_map(|(n, p)| match p {
                Followed::Waiting(ph) => Some(format!("{n}: {ph}")),
                _ => None,
            })
            .collect();
        if pending.is_empty() {
            break Ok(());
        }
        bar.set_message(pending.join(", "));
        let event = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => break Err(pending),
            Ok(None) => break Err(pending),
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "watching Node CRs failed; retrying");
                continue;
            }
            Ok(Some(Ok(e))) => e,
        };
        let m = match event {
            watcher::Event::Apply(m) | watcher::Event::InitApply(m) => m,
            _ => continue,
        };
        let name = m.name_any();
        let (Some(f), Some(p)) = (follow.get_mut(&name), progress.get_mut(&name)) else {
            continue;
        };
        if !matches!(p, Followed::Waiting(_)) {
            continue;
        }
        let next = f.observe(&m, direction);
        if next != *p {
            match &next {
                Followed::Waiting(ph) => say(&bar, format!("{name}: {ph}")),
                Followed::Done => {
                    bar.inc(1);
                    say(&bar, format!("{name}: {}", direction.done_phase()));
                }
                Followed::Failed(reason) => {
                    bar.inc(1);
                    say(&bar, format!("{name}: Failed: {reason}"));
                }
            }
            *p = next;
        }
    };
    bar.finish_and_clear();
    let failed: Vec<String> = progress
        .iter()
        .filter_map(|(n, p)| match p {
            Followed::Failed(r) => Some(format!("{n}: {r}")),
            _ => None,
        })
        .collect();
    if let Err(pending) = outcome {
        anyhow::bail!(
            "gave up after {timeout:?} (--timeout) waiting for {}: {}{}; is `kubectl homelab run-operator` running for namespace {namespace}? `kubectl homelab fsm inspect` shows why",
            direction.done_phase(),
            pending.join(", "),
            if failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", failed.join("; "))
            }
        );
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "power {} failed: {}; `kubectl homelab power {} NODE` retries",
            direction.as_str(),
            failed.join("; "),
            direction.as_str()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn names_resolve_by_cr_then_kubernetes_node_name() {
        let ms = [
            Machine::test("m1")
                .node_name("host-a")
                .desired(PowerState::Off)
                .phase(Phase::Off)
                .build(),
            Machine::test("m2")
                .desired(PowerState::Off)
                .phase(Phase::Off)
                .build(),
        ];
        let t = match resolve(&names(&["host-a", "m2", "m1"]), &ms, "lab") {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let got: Vec<String> = t.iter().map(Target::name).collect();
        assert_eq!(got, ["m1", "m2"], "m1 named twice is acted on once");
        assert_eq!(t[0].node_name(), "host-a");
    }

    #[test]
    fn unknown_names_suggest_close_ones() {
        let ms = [
            Machine::test("worker-1")
                .node_name("nuc-1")
                .desired(PowerState::Off)
                .phase(Phase::Off)
                .build(),
            Machine::test("worker-2")
                .desired(PowerState::Off)
                .phase(Phase::Off)
                .build(),
            Machine::test("gpu")
                .desired(PowerState::Off)
                .phase(Phase::Off)
                .build(),
        ];
        let e = match resolve(&names(&["worker-3"]), &ms, "lab") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("worker-3 does not exist"),
        };
        assert!(e.contains("\"worker-3\""), "{e}");
        assert!(e.contains("did you mean worker-1, worker-2?"), "{e}");
        let e = match resolve(&names(&["nuc1"]), &ms, "lab") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("nuc1 does not exist"),
        };
        assert!(e.contains("did you mean nuc-1?"), "{e}");
        let e = match resolve(&names(&["zzzzzzzz"]), &ms, "lab") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("no such machine"),
        };
        assert!(e.contains("kubectl get homelab"), "{e}");
    }

    #[test]
    fn a_kubernetes_name_two_machines_claim_is_ambiguous() {
        let ms = [
            Machine::test("a")
                .node_name("host")
                .desired(PowerState::Off)
                .phase(Phase::Off)
                .build(),
            Machine::test("b")
                .node_name("host")
                .desired(PowerState::Off)
                .phase(Phase::Off)
                .build(),
        ];
        let e = match resolve(&names(&["host"]), &ms, "lab") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("ambiguous"),
        };
        assert!(e.contains("a, b"), "{e}");
    }

    #[test]
    fn patches_set_desired_power_and_ask_failed_machines_to_retry() {
        let now = Timestamp::UNIX_EPOCH + SignedDuration::from_secs(100);
        let off = Machine::test("m")
            .desired(PowerState::Off)
            .phase(Phase::Off)
            .build();
        assert_eq!(
            patch_for(&off, Direction::On, now),
            Some(serde_json::json!({ "spec": { "powerState": "on" } }))
        );
        let ready = Machine::test("m")
            .desired(PowerState::On)
            .phase(Phase::Ready)
            .build();
        assert_eq!(patch_for(&ready, Direction::On, now), None);
        let failed = Machine::test("m")
            .desired(PowerState::On)
            .phase(Phase::Failed)
            .build();
        let p = patch_for(&failed, Direction::On, now);
        assert_eq!(
            p.as_ref()
                .and_then(|p| p["metadata"]["annotations"][RETRY_ANNOTATION].as_str()),
            Some(now.to_string().as_str())
        );
        // The operator's clock ahead of ours: the request is still newer than phaseSince.
        let since = now + SignedDuration::from_secs(50);
        let ahead = Machine::test("m")
            .desired(PowerState::On)
            .phase(Phase::Failed)
            .phase_since(since)
            .build();
        let p = patch_for(&ahead, Direction::On, now);
        let at: Option<Timestamp> = p
            .as_ref()
            .and_then(|p| p["metadata"]["annotations"][RETRY_ANNOTATION].as_str())
            .and_then(|s| s.parse().ok());
        assert!(at.is_some_and(|at| at > since), "{p:?}");
    }

    fn pod(name: &str, owner: Option<&str>, annotation: Option<&str>, phase: &str) -> Pod {
        let mut v = serde_json::json!({
            "metadata": { "name": name, "namespace": "apps" },
            "status": { "phase": phase },
        });
        if let Some(kind) = owner {
            v["metadata"]["ownerReferences"] = serde_json::json!([{
                "apiVersion": "apps/v1", "kind": kind, "name": "x", "uid": "u", "controller": true
            }]);
        }
        if let Some(key) = annotation {
            v["metadata"]["annotations"] = serde_json::json!({ key: "true" });
        }
        match serde_json::from_value(v) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// The confirmation lists what the operator's drain would wait for, nothing else: a pod
    /// CA counts as a DaemonSet pod by annotation is not listed (the operator does not evict it).
    #[test]
    fn only_pods_a_drain_would_evict_block_a_power_off() {
        use crate::operator::{ca, node::drain::MIRROR_POD_ANNOTATION};
        let pods = [
            pod("web", Some("ReplicaSet"), None, "Running"),
            pod("agent", Some("DaemonSet"), None, "Running"),
            pod("ds-marked", None, Some(ca::DAEMONSET_POD), "Running"),
            pod("static", None, Some(MIRROR_POD_ANNOTATION), "Running"),
            pod("done", None, None, "Succeeded"),
            pod("bare", None, None, "Pending"),
        ];
        assert_eq!(evictable(&pods), ["apps/bare", "apps/web"]);
    }

    /// `power` looks for pods on the Node the operator would drain: the declared
    /// `kubernetesNodeName` before the name last registered, the Node CR's name without either.
    #[test]
    fn the_node_whose_pods_are_listed_is_the_operators() {
        let mut m = Machine::test("m")
            .node_name("declared")
            .node_snapshot(crate::testing::seen_node("registered"))
            .build();
        assert_eq!(kubernetes_node_name(&m), "declared");
        m.spec.kubernetes_node_name = None;
        assert_eq!(kubernetes_node_name(&m), "registered");
        let bare = Machine::test("m").build();
        assert_eq!(kubernetes_node_name(&bare), "m");
    }

    #[test]
    fn a_stale_failed_phase_is_not_the_outcome_until_the_machine_moves() {
        let mut m = Machine::test("m")
            .desired(PowerState::On)
            .phase(Phase::Failed)
            .build();
        let mut f = Follow::new(&m);
        assert_eq!(
            f.observe(&m, Direction::On),
            Followed::Waiting(Phase::Failed)
        );
        if let Some(s) = m.status.as_mut() {
            s.lifecycle.phase = Some(Phase::PoweringOn);
            s.lifecycle.phase_since = Some(Timestamp::UNIX_EPOCH + SignedDuration::from_secs(5));
        }
        assert_eq!(
            f.observe(&m, Direction::On),
            Followed::Waiting(Phase::PoweringOn)
        );
        if let Some(s) = m.status.as_mut() {
            s.lifecycle.phase = Some(Phase::Failed);
            s.lifecycle.last_error = Some("power Job failed".into());
        }
        assert_eq!(
            f.observe(&m, Direction::On),
            Followed::Failed("power Job failed".into())
        );
    }
}
