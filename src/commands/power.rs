//! `kubectl homelab power on|off NODE...`: sets machines' desired power (`spec.powerState`)
//! for the operator to carry out, optionally waiting for it with a progress bar. Machines are
//! named (by the rule of `lookup`) or selected with `-l`/`--group`, in one namespace or all.
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

use super::kube_args::{KubeArgs, KubeError, Namespaces};
use super::lookup::{self, LookupError, display_name, kubernetes_node_name};
use super::table::{MachineRow, Output, TableOptions};
use super::{CliError, ExitKind};
use crate::operator::api::{Group, Machine, RETRY_ANNOTATION, find_condition};
use crate::operator::machine::{Phase, PowerState};
use crate::operator::node::drain::pods_blocking_power_off;
use crate::operator::trust::CONDITION_NOT_PERMITTED;

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

/// kubectl's `--dry-run`: `client` prints what would change, `server` also has the API server
/// check the change (admission, validation) without storing it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DryRun {
    #[default]
    None,
    Client,
    Server,
}

#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:
  # Power on a machine by its Node CR name or its Kubernetes node name
  kubectl homelab power on nuc-1 -n homelab

  # Power off every machine of a group, without the confirmation, and wait until they are Off
  kubectl homelab power off --group nucs -n homelab --yes --wait --timeout 10m

  # What would powering off the machines labelled rack=top change, in every namespace?
  kubectl homelab power off -l rack=top -A --dry-run=client -o wide

  # The names of the machines powered on, for a script
  kubectl homelab power on nuc-1 nuc-2 -n homelab -o name

",
    crate::exit_codes_help!()
))]
pub struct Args {
    /// Desired power.
    #[arg(value_enum)]
    pub direction: Direction,

    /// Machines by Node CR name, else by Kubernetes node name (required without -l or --group).
    #[arg(
        value_name = "NODE",
        required_unless_present_any = ["selector", "group"],
        conflicts_with_all = ["selector", "group"]
    )]
    pub nodes: Vec<String>,

    /// Select the machines by their Node CRs' labels (e.g. `rack=top,gpu!=true`).
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,

    /// Select the machines of this group (the Node CRs labelled `group=NAME`).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// Change nothing: `client` prints what would change; `server` also sends the change to the
    /// API server as a dry run (admission and validation run, nothing is stored). `--dry-run`
    /// alone is `client`.
    #[arg(
        long,
        value_enum,
        value_name = "STRATEGY",
        num_args = 0..=1,
        require_equals = true,
        default_value_t = DryRun::None,
        default_missing_value = "client",
        conflicts_with = "wait"
    )]
    pub dry_run: DryRun,

    /// Output format: the machines as `fsm inspect` prints them (table, wide, name, json,
    /// yaml); one line per machine when omitted.
    #[arg(short, long, value_enum, value_name = "FORMAT")]
    pub output: Option<Output>,

    /// Print the table without its header line (-o table|wide).
    #[arg(long)]
    pub no_headers: bool,

    /// Follow each machine's lifecycle phase until it is Ready (on) or Off (off), Failed, or
    /// refused by the operator (NotPermitted).
    #[arg(long)]
    pub wait: bool,

    /// Give up waiting after this long (with --wait).
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = crate::operator::api::parse_duration_arg)]
    pub timeout: Duration,

    /// Power off machines that run pods without asking (they are drained first).
    #[arg(short = 'y', long)]
    pub yes: bool,

    #[command(flatten)]
    pub kube: KubeArgs,
}

/// The machines the arguments select among `machines` (read from `scope`): the named ones (by
/// the rule of [`lookup::find`]), else those of `--group` (all when no group is given; `-l` was
/// applied by the API server), sorted by namespace and name.
fn select(
    machines: &[Machine],
    nodes: &[String],
    group: Option<&str>,
    scope: &str,
) -> Result<Vec<Machine>, LookupError> {
    if !nodes.is_empty() {
        return Ok(lookup::find_all(machines, nodes, scope)?
            .into_iter()
            .cloned()
            .collect());
    }
    let mut out: Vec<Machine> = machines
        .iter()
        .filter(|m| group.is_none_or(|g| m.group() == Some(g)))
        .cloned()
        .collect();
    out.sort_by_key(|m| (m.metadata.namespace.clone(), m.name_any()));
    Ok(out)
}

/// Fails with "not found" (and close names) unless group `name` exists in `scope`: a Group CR of
/// that name, or a Node CR labelled with it. Asked only when `--group` selected nothing.
async fn check_group(client: &kube::Client, scope: &Namespaces, name: &str) -> anyhow::Result<()> {
    let (groups, machines): (Api<Group>, Api<Machine>) = match scope {
        Namespaces::All => (Api::all(client.clone()), Api::all(client.clone())),
        Namespaces::One(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
    };
    let mut known: Vec<String> = Vec::new();
    // Group CRs may not be readable for everyone who may power machines; the labels suffice.
    if let Ok(list) = groups.list(&ListParams::default()).await {
        known.extend(list.items.iter().map(|g| g.name_any()));
    }
    let all = machines
        .list(&ListParams::default())
        .await
        .with_context(|| format!("cannot list Node CRs in {scope}"))?;
    known.extend(
        all.items
            .iter()
            .filter_map(|m| m.group().map(str::to_owned)),
    );
    if known.iter().any(|g| g == name) {
        return Ok(());
    }
    Err(LookupError::GroupNotFound {
        name: name.to_owned(),
        scope: scope.to_string(),
        close: lookup::close_matches(name, known),
    }
    .into())
}

/// A failed API request, classified: denied (RBAC, admission, validation) is "refused".
fn api_error(e: kube::Error, what: String) -> anyhow::Error {
    let e = KubeError(e);
    let kind = match e.code() {
        Some(403 | 422) => ExitKind::Refused,
        _ => ExitKind::Error,
    };
    CliError::with_source(kind, what, e).into()
}

/// One line of the default output: `worker-1: powerState on`, `(dry run)` marked.
fn line(name: &str, requested: Option<&str>, what: &str, dry_run: DryRun) -> String {
    let alias = match requested {
        Some(r) if r != name => format!(" ({r})"),
        _ => String::new(),
    };
    let dry = match dry_run {
        DryRun::None => "",
        DryRun::Client => " (dry run)",
        DryRun::Server => " (server dry run)",
    };
    format!("{name}{alias}: {what}{dry}\n")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cluster = args.kube.connect().await?;
    let scope = args.kube.namespaces(&cluster);
    let client = cluster.client;
    let list_api: Api<Machine> = match &scope {
        Namespaces::All => Api::all(client.clone()),
        Namespaces::One(ns) => Api::namespaced(client.clone(), ns),
    };
    let mut list_params = ListParams::default();
    if let Some(selector) = &args.selector {
        list_params = list_params.labels(selector);
    }
    let machines = match list_api.list(&list_params).await {
        Ok(list) => list.items,
        Err(e) => {
            let e = KubeError(e);
            let (kind, what) = match e.code() {
                Some(400) if args.selector.is_some() => (
                    ExitKind::Usage,
                    format!(
                        "invalid -l/--selector {:?}",
                        args.selector.as_deref().unwrap_or_default()
                    ),
                ),
                Some(403) => (
                    ExitKind::Refused,
                    format!(
                        "not allowed to list Node CRs (nodes.infra.homecluster.dev) in {scope}; ask for RBAC `list` on them"
                    ),
                ),
                _ => (
                    ExitKind::Error,
                    format!(
                        "cannot list Node CRs (nodes.infra.homecluster.dev) in {scope}; are the \
                         CRDs installed (`kubectl homelab crd gen | kubectl apply -f -`)?"
                    ),
                ),
            };
            return Err(CliError::with_source(kind, what, e).into());
        }
    };
    let targets = select(
        &machines,
        &args.nodes,
        args.group.as_deref(),
        &scope.to_string(),
    )?;
    if targets.is_empty() {
        if let Some(group) = &args.group {
            check_group(&client, &scope, group).await?;
        }
        // As `fsm inspect`: JSON and YAML print an empty list, the rest only the notice.
        match args.output {
            Some(output) if !output.says_nothing_when_empty() => {
                let text = super::table::render_views(
                    &[],
                    output,
                    TableOptions::default(),
                    Timestamp::now(),
                )
                .map_err(|e| anyhow::anyhow!(e).context("cannot render the output"))?;
                super::print_stdout(&text)?;
            }
            _ => eprintln!("{}", super::table::no_resources(&scope)),
        }
        return Ok(());
    }
    let qualified = scope == Namespaces::All;
    // The typed name of each machine named on the command line, for the default output.
    let requested = |m: &Machine| -> Option<String> {
        args.nodes
            .iter()
            .find(|n| lookup::find(std::slice::from_ref(m), n, "").is_ok())
            .cloned()
    };

    if args.direction == Direction::Off {
        let busy = busy_machines(&client, &targets).await?;
        if args.dry_run == DryRun::None {
            confirm_off(&busy, args.yes).await?;
        } else if !busy.is_empty() {
            eprintln!(
                "Powering off would evict (honouring PodDisruptionBudgets):{}",
                listing(&busy)
            );
        }
    }

    let now = Timestamp::now();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        dry_run: args.dry_run == DryRun::Server,
        ..PatchParams::default()
    };
    let mut results: Vec<Machine> = Vec::new();
    let mut lines = String::new();
    for t in &targets {
        let name = t.name_any();
        let shown = display_name(t, qualified);
        let alias = requested(t);
        let Some(patch) = patch_for(t, args.direction, now) else {
            lines.push_str(&line(
                &shown,
                alias.as_deref(),
                &format!(
                    "already {} (phase {})",
                    args.direction.as_str(),
                    phase_of(t)
                ),
                args.dry_run,
            ));
            results.push(t.clone());
            continue;
        };
        let namespace = t.namespace().unwrap_or_default();
        let after = match args.dry_run {
            DryRun::Client => {
                let mut m = t.clone();
                m.spec.power_state = args.direction.power();
                m
            }
            DryRun::None | DryRun::Server => {
                let api: Api<Machine> = Api::namespaced(client.clone(), &namespace);
                api.patch(&name, &params, &Patch::Merge(&patch))
                    .await
                    .map_err(|e| {
                        api_error(
                            e,
                            format!(
                                "cannot set spec.powerState={} on Node CR {namespace}/{name}",
                                args.direction.as_str()
                            ),
                        )
                    })?
            }
        };
        let retry = if patch.get("metadata").is_some() {
            " (retry requested)"
        } else {
            ""
        };
        lines.push_str(&line(
            &shown,
            alias.as_deref(),
            &format!("powerState {}{retry}", args.direction.as_str()),
            args.dry_run,
        ));
        results.push(after);
    }

    match args.output {
        None => super::print_stdout(&lines)?,
        Some(output) => {
            let rows: Vec<MachineRow> = results.iter().map(MachineRow::of).collect();
            let options = TableOptions {
                wide: false,
                no_headers: args.no_headers,
                all_namespaces: qualified,
            };
            let text = super::table::render_views(&rows, output, options, now)
                .map_err(|e| anyhow::anyhow!(e).context("cannot render the output"))?;
            super::print_stdout(&text)?;
        }
    }

    if args.wait {
        wait(&list_api, &scope, &targets, args.direction, args.timeout).await?;
    }
    Ok(())
}

/// The machines of `targets` whose node runs pods a power-off would evict, with those pods
/// (`maintenance start` asks about the same drain).
pub(super) async fn busy_machines(
    client: &kube::Client,
    targets: &[Machine],
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let pods_api: Api<Pod> = Api::all(client.clone());
    let mut busy: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in targets {
        if t.spec.power_state == PowerState::Off && phase_of(t) != Phase::Failed {
            continue;
        }
        let node = kubernetes_node_name(t);
        let pods = pods_api
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
            .map_err(|e| {
                api_error(
                    e,
                    format!(
                        "cannot list the pods on node {node} (machine {}); may you list pods in all namespaces?",
                        t.name_any()
                    ),
                )
            })?
            .items;
        let names = evictable(&pods);
        if !names.is_empty() {
            busy.insert(format!("{} (node {node})", t.name_any()), names);
        }
    }
    Ok(busy)
}

fn listing(busy: &BTreeMap<String, Vec<String>>) -> String {
    busy.iter()
        .map(|(m, pods)| format!("\n  {m}: {}", pods.join(", ")))
        .collect()
}

/// What a command that evicts pods says when it asks first: the refusal's start, what `--yes`
/// does, and the question.
pub(super) struct EvictionQuestion {
    pub refused: &'static str,
    pub anyway: &'static str,
    pub question: &'static str,
}

/// Refuses (or asks, on a terminal) to go on with machines whose node runs pods; `--yes`
/// (`yes`) or no such pods goes on without asking.
pub(super) async fn confirm_evictions(
    busy: &BTreeMap<String, Vec<String>>,
    yes: bool,
    q: &EvictionQuestion,
) -> anyhow::Result<()> {
    if busy.is_empty() || yes {
        return Ok(());
    }
    let listing = listing(busy);
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !interactive {
        return Err(CliError::new(
            ExitKind::Refused,
            format!(
                "{}: these machines run pods that would be evicted (honouring \
                 PodDisruptionBudgets):{listing}\npass --yes to {} (no terminal to ask on)",
                q.refused, q.anyway
            ),
        )
        .into());
    }
    let prompt = format!(
        "These machines run pods that will be evicted (honouring PodDisruptionBudgets):{listing}\n{}",
        q.question
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
        return Err(CliError::new(ExitKind::Refused, format!("{}: cancelled", q.refused)).into());
    }
    Ok(())
}

/// Refuses (or asks, on a terminal) to power off machines whose node runs pods.
async fn confirm_off(busy: &BTreeMap<String, Vec<String>>, yes: bool) -> anyhow::Result<()> {
    let q = EvictionQuestion {
        refused: "not powering off",
        anyway: "power off anyway",
        question: "Power them off?",
    };
    confirm_evictions(busy, yes, &q).await
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

/// The operator's refusal to act on a machine: its `NotPermitted` condition, when true.
fn not_permitted(m: &Machine) -> Option<String> {
    m.status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, CONDITION_NOT_PERMITTED))
        .filter(|c| c.status == "True")
        .map(|c| {
            if c.message.is_empty() {
                format!("NotPermitted: {}", c.reason)
            } else {
                format!("NotPermitted: {}", c.message)
            }
        })
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

/// Where one machine's wait stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Followed {
    Waiting(Phase),
    Done,
    Failed(String),
    /// The operator refuses to act on the machine (its `NotPermitted` condition).
    Refused(String),
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
        } else if let Some(why) = not_permitted(m) {
            Followed::Refused(why)
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

/// The key of a machine in the wait's maps: unique across namespaces.
fn key(m: &Machine) -> String {
    display_name(m, true)
}

async fn wait(
    api: &Api<Machine>,
    scope: &Namespaces,
    targets: &[Machine],
    direction: Direction,
    timeout: Duration,
) -> anyhow::Result<()> {
    let qualified = *scope == Namespaces::All;
    let mut follow: BTreeMap<String, Follow> =
        targets.iter().map(|t| (key(t), Follow::new(t))).collect();
    let mut progress: BTreeMap<String, (String, Followed)> = targets
        .iter()
        .map(|t| {
            (
                key(t),
                (display_name(t, qualified), Followed::Waiting(phase_of(t))),
            )
        })
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
            .values()
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
        let (Some(f), Some((name, p))) = (follow.get_mut(&key(&m)), progress.get_mut(&key(&m)))
        else {
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
                Followed::Refused(reason) => {
                    bar.inc(1);
                    say(&bar, format!("{name}: {reason}"));
                }
            }
            *p = next;
        }
    };
    bar.finish_and_clear();
    let ended = |want: fn(&Followed) -> Option<&String>| -> Vec<String> {
        progress
            .values()
            .filter_map(|(n, p)| want(p).map(|r| format!("{n}: {r}")))
            .collect()
    };
    let failed = ended(|p| match p {
        Followed::Failed(r) => Some(r),
        _ => None,
    });
    let refused = ended(|p| match p {
        Followed::Refused(r) => Some(r),
        _ => None,
    });
    if let Err(pending) = outcome {
        let mut also = String::new();
        if !failed.is_empty() {
            also.push_str(&format!("; failed: {}", failed.join("; ")));
        }
        if !refused.is_empty() {
            also.push_str(&format!("; refused: {}", refused.join("; ")));
        }
        return Err(CliError::new(
            ExitKind::TimedOut,
            format!(
                "gave up after {timeout:?} (--timeout) waiting for {}: {}{also}; is `kubectl homelab run-operator` running for {scope}? `kubectl homelab fsm inspect` shows why",
                direction.done_phase(),
                pending.join(", "),
            ),
        )
        .into());
    }
    if !refused.is_empty() {
        return Err(CliError::new(
            ExitKind::Refused,
            format!(
                "the operator refuses to power {}: {}; `kubectl homelab fsm inspect -o yaml` and the Node CR's events say why",
                direction.as_str(),
                refused.join("; ")
            ),
        )
        .into());
    }
    if !failed.is_empty() {
        return Err(CliError::new(
            ExitKind::Failed,
            format!(
                "power {} failed: {}; `kubectl homelab power {} NODE` retries",
                direction.as_str(),
                failed.join("; "),
                direction.as_str()
            ),
        )
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn selected(r: Result<Vec<Machine>, LookupError>) -> Vec<String> {
        match r {
            Ok(ms) => ms.iter().map(|m| display_name(m, true)).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn names_or_a_group_select_the_machines() {
        let ms = [
            Machine::test("b").namespace("lab").group("nucs").build(),
            Machine::test("a").namespace("lab").group("nucs").build(),
            Machine::test("c")
                .namespace("lab")
                .group("gpu")
                .node_name("host-c")
                .build(),
        ];
        assert_eq!(
            selected(select(&ms, &names(&["host-c", "b"]), None, "x")),
            ["lab/c", "lab/b"],
            "named machines in the order named"
        );
        assert_eq!(
            selected(select(&ms, &[], Some("nucs"), "x")),
            ["lab/a", "lab/b"]
        );
        assert_eq!(selected(select(&ms, &[], None, "x")).len(), 3);
        assert!(selected(select(&ms, &[], Some("none"), "x")).is_empty());
    }

    #[test]
    fn lines_mark_aliases_and_dry_runs() {
        assert_eq!(
            line("m1", Some("host-a"), "powerState on", DryRun::None),
            "m1 (host-a): powerState on\n"
        );
        assert_eq!(
            line("m1", Some("m1"), "powerState on", DryRun::Client),
            "m1: powerState on (dry run)\n"
        );
        assert_eq!(
            line("m1", None, "powerState off", DryRun::Server),
            "m1: powerState off (server dry run)\n"
        );
    }

    #[test]
    fn flags_parse_like_kubectl() {
        use clap::Parser as _;
        let parse = |args: &[&str]| {
            crate::commands::Cli::try_parse_from(
                ["kubectl-homelab", "power"].iter().chain(args.iter()),
            )
        };
        let dry = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(crate::commands::Command::Power(a)) => a.dry_run,
            Ok(other) => panic!("{other:?}"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(dry(&["on", "m"]), DryRun::None);
        assert_eq!(dry(&["on", "m", "--dry-run"]), DryRun::Client);
        assert_eq!(dry(&["on", "m", "--dry-run=server"]), DryRun::Server);
        assert!(parse(&["on"]).is_err(), "a machine or a selector is needed");
        assert!(parse(&["on", "-l", "rack=top"]).is_ok());
        assert!(parse(&["on", "--group", "g", "-A"]).is_ok());
        assert!(parse(&["on", "m", "--group", "g"]).is_err());
        assert!(parse(&["on", "m", "--dry-run", "--wait"]).is_err());
        assert!(parse(&["on", "m", "-o", "name"]).is_ok());
    }

    #[test]
    fn a_not_permitted_condition_ends_the_wait_as_refused() {
        let mut m = Machine::test("m")
            .desired(PowerState::On)
            .phase(Phase::Off)
            .build();
        let mut f = Follow::new(&m);
        if let Some(s) = m.status.as_mut() {
            s.conditions.push(crate::operator::api::Condition {
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::UNIX_EPOCH,
                ),
                message: "the Node is a control-plane node".into(),
                observed_generation: None,
                reason: "ControlPlane".into(),
                status: "True".into(),
                type_: CONDITION_NOT_PERMITTED.into(),
            });
        }
        assert_eq!(
            f.observe(&m, Direction::On),
            Followed::Refused("NotPermitted: the Node is a control-plane node".into())
        );
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
