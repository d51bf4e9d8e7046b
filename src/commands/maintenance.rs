//! `kubectl homelab maintenance start|end NODE...` and `maintenance pause|resume GROUP`.
//!
//! `start` records `spec.maintenance` on the Node CR (since now, by the caller as the API server
//! knows them), drains the machine's Kubernetes Node with the operator's own drain (cordon, then
//! evictions that honour PodDisruptionBudgets: `operator::node::drain`), then sets the desired
//! power `--power` asks for. `end` clears it and undoes the cordon: the machine is the Cluster
//! Autoscaler's again. `pause` sets a Group's `spec.paused` with the
//! [`PAUSED_BY_ANNOTATION`] naming who paused it; `resume` clears both.
use std::time::Duration;

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use super::kube_args::{KubeArgs, KubeError, Namespaces};
use super::lookup::{self, kubernetes_node_name};
use super::power::busy_machines;
use super::{CliError, ExitKind};
use crate::operator::api::{Group, Machine, Maintenance, MaintenancePower};
use crate::operator::machine::PowerState;
use crate::operator::node::drain::{self, DrainClient, DrainOptions, DrainOutcome};
use crate::operator::policy::maintenance as policy;

/// Field manager of the CLI's writes.
const FIELD_MANAGER: &str = "kubectl-homelab-maintenance";

pub use crate::operator::policy::maintenance::PAUSED_BY_ANNOTATION;

#[derive(Debug, clap::Subcommand)]
pub enum MaintenanceCommand {
    /// Take machines out of service: drain them, keep them out of every scale-up and
    /// scale-down, and set their power.
    #[command(after_help = concat!(
        "Examples:
  # Swap a disk: drain nuc-1, power it off, and keep the autoscaler away until it is ended
  kubectl homelab maintenance start nuc-1 -n homelab --power off --reason \"swap a disk\"

  # Work on nuc-2 over SSH for two hours; it ends by itself
  kubectl homelab maintenance start nuc-2 -n homelab --power on --until 2h --yes

",
        crate::exit_codes_help!()
    ))]
    Start(StartArgs),
    /// End the maintenance of machines: uncordon them and give them back to the autoscaler.
    #[command(after_help = concat!(
        "Examples:
  kubectl homelab maintenance end nuc-1 -n homelab

",
        crate::exit_codes_help!()
    ))]
    End(EndArgs),
    /// Pause a group: no power action in it, the autoscaler's or the operator's own.
    #[command(after_help = concat!(
        "Examples:
  kubectl homelab maintenance pause nucs -n homelab

",
        crate::exit_codes_help!()
    ))]
    Pause(GroupArgs),
    /// Resume a paused group.
    #[command(after_help = concat!(
        "Examples:
  kubectl homelab maintenance resume nucs -n homelab

",
        crate::exit_codes_help!()
    ))]
    Resume(GroupArgs),
}

/// What `--power` does to the machine's desired power.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PowerArg {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Power it on (after the drain).
    On,
    /// Power it off after the drain.
    Off,
}

impl PowerArg {
    fn api(self) -> MaintenancePower {
        match self {
            PowerArg::Keep => MaintenancePower::Keep,
            PowerArg::On => MaintenancePower::On,
            PowerArg::Off => MaintenancePower::Off,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Machines by Node CR name, else by Kubernetes node name.
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,

    /// The machine's power during the maintenance.
    #[arg(long, value_enum, default_value_t = PowerArg::Keep)]
    pub power: PowerArg,

    /// End it by itself: after a duration (`2h`, `90m`) or at a time (RFC 3339).
    #[arg(long, value_name = "DURATION|TIME")]
    pub until: Option<String>,

    /// Why, shown in `fsm inspect` and Events.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Drain machines that run pods without asking.
    #[arg(short = 'y', long)]
    pub yes: bool,

    /// Give up the drain after this long (the maintenance stays recorded; run `start` again
    /// once the PodDisruptionBudgets allow, or `end` it).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::operator::api::parse_duration_arg)]
    pub drain_timeout: Duration,

    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, clap::Args)]
pub struct EndArgs {
    /// Machines by Node CR name, else by Kubernetes node name.
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,

    #[command(flatten)]
    pub kube: KubeArgs,
}

#[derive(Debug, clap::Args)]
pub struct GroupArgs {
    /// The Group CR's name.
    #[arg(value_name = "GROUP")]
    pub group: String,

    #[command(flatten)]
    pub kube: KubeArgs,
}

pub async fn run(cmd: MaintenanceCommand) -> anyhow::Result<()> {
    match cmd {
        MaintenanceCommand::Start(args) => start(args).await,
        MaintenanceCommand::End(args) => end(args).await,
        MaintenanceCommand::Pause(args) => pause(args, true).await,
        MaintenanceCommand::Resume(args) => pause(args, false).await,
    }
}

/// `--until` as a time: a duration from `now`, or an RFC 3339 time in the future.
pub fn parse_until(value: &str, now: Timestamp) -> Result<Timestamp, String> {
    if let Ok(at) = value.parse::<Timestamp>() {
        if at <= now {
            return Err(format!("--until {value}: that time has passed"));
        }
        return Ok(at);
    }
    let d = crate::operator::api::parse_duration_arg(value)
        .map_err(|e| format!("--until {value:?}: neither a duration ({e}) nor an RFC 3339 time"))?;
    let d = SignedDuration::try_from(d).map_err(|e| format!("--until {value:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("--until {value:?}: the duration must be positive"));
    }
    now.checked_add(d)
        .map_err(|e| format!("--until {value:?}: {e}"))
}

/// The merge patch that starts maintenance.
pub fn start_patch(m: &Maintenance) -> serde_json::Value {
    serde_json::json!({ "spec": { "maintenance": m } })
}

fn api_error(e: kube::Error, what: String) -> anyhow::Error {
    let e = KubeError(e);
    let kind = match e.code() {
        Some(403 | 422) => ExitKind::Refused,
        Some(404) => ExitKind::NotFound,
        _ => ExitKind::Error,
    };
    CliError::with_source(kind, what, e).into()
}

/// Who the API server says the caller is (`kubectl auth whoami`); `None` when it will not say.
async fn whoami(client: &kube::Client) -> Option<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()?;
    review.status?.user_info?.username.filter(|u| !u.is_empty())
}

/// Who to record: the API server's name for the caller, else the kubeconfig context.
async fn caller(client: &kube::Client, kube: &KubeArgs) -> Option<String> {
    match whoami(client).await {
        Some(u) => Some(u),
        None => kube.cluster.context.clone(),
    }
}

async fn machines_named(
    client: &kube::Client,
    scope: &Namespaces,
    nodes: &[String],
) -> anyhow::Result<Vec<Machine>> {
    let api: Api<Machine> = match scope {
        Namespaces::All => Api::all(client.clone()),
        Namespaces::One(ns) => Api::namespaced(client.clone(), ns),
    };
    let all = api
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error(e, format!("cannot list Node CRs in {scope}")))?
        .items;
    Ok(lookup::find_all(&all, nodes, &scope.to_string())?
        .into_iter()
        .cloned()
        .collect())
}

async fn confirm_drain(
    busy: &std::collections::BTreeMap<String, Vec<String>>,
    yes: bool,
) -> anyhow::Result<()> {
    let q = super::power::EvictionQuestion {
        refused: "not starting maintenance",
        anyway: "drain them anyway",
        question: "Start their maintenance?",
    };
    super::power::confirm_evictions(busy, yes, &q).await
}

/// Drains `node` with the operator's drain until it is empty or the drain gives up.
async fn drain_node(
    drain_client: &DrainClient,
    node: &str,
    timeout: SignedDuration,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    loop {
        let outcome = drain::drain(
            drain_client,
            node,
            &DrainOptions::new(Timestamp::now()).timeout(timeout),
        )
        .await
        .with_context(|| format!("cannot drain node {node}"))?;
        match outcome {
            DrainOutcome::Drained | DrainOutcome::NodeGone => return Ok(()),
            DrainOutcome::Draining(_) => {
                bar.set_message(format!("{node}: {outcome}"));
                tokio::time::sleep(drain::DRAIN_RECHECK).await;
            }
            DrainOutcome::TimedOut(_) => {
                return Err(CliError::new(
                    ExitKind::TimedOut,
                    format!(
                        "{outcome}; the maintenance stays recorded (run `kubectl homelab \
                         maintenance start` again, or `maintenance end`)"
                    ),
                )
                .into());
            }
        }
    }
}

async fn start(args: StartArgs) -> anyhow::Result<()> {
    let config = args.kube.cluster.config().await?;
    let cluster = super::kube_args::Cluster::from_config(config.clone())?;
    let drain_client = DrainClient::new(config).context("cannot build the drain's client")?;
    let scope = args.kube.namespaces(&cluster);
    let client = cluster.client;
    let now = Timestamp::now();
    let until = match &args.until {
        Some(v) => Some(parse_until(v, now).map_err(|e| CliError::new(ExitKind::Usage, e))?),
        None => None,
    };
    let targets = machines_named(&client, &scope, &args.nodes).await?;
    let busy = busy_machines(&client, &targets).await?;
    confirm_drain(&busy, args.yes).await?;
    let by = caller(&client, &args.kube).await;
    let timeout =
        SignedDuration::try_from(args.drain_timeout).unwrap_or(drain::DEFAULT_DRAIN_TIMEOUT);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let bar = indicatif::ProgressBar::new(targets.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut lines = String::new();
    for t in &targets {
        let name = t.name_any();
        let namespace = t.namespace().unwrap_or_default();
        let api: Api<Machine> = Api::namespaced(client.clone(), &namespace);
        // Kept from a maintenance already running: run again after a drain that gave up.
        let since = t
            .spec
            .maintenance
            .as_ref()
            .and_then(|m| m.since)
            .unwrap_or(now);
        let maintenance = Maintenance {
            reason: args.reason.clone(),
            power: Some(args.power.api()),
            since: Some(since),
            until,
            by: by.clone(),
        };
        bar.set_message(format!("{name}: recording spec.maintenance"));
        api.patch(&name, &params, &Patch::Merge(&start_patch(&maintenance)))
            .await
            .map_err(|e| {
                api_error(
                    e,
                    format!("cannot set spec.maintenance on Node CR {namespace}/{name}"),
                )
            })?;
        let node = kubernetes_node_name(t);
        bar.set_message(format!("{name}: draining node {node}"));
        drain_node(&drain_client, &node, timeout, &bar).await?;
        let power = policy::desired_power(&maintenance, t.spec.power_state);
        if power != t.spec.power_state {
            let text = match power {
                PowerState::On => "on",
                PowerState::Off => "off",
            };
            api.patch(
                &name,
                &params,
                &Patch::Merge(&serde_json::json!({ "spec": { "powerState": text } })),
            )
            .await
            .map_err(|e| {
                api_error(
                    e,
                    format!("cannot set spec.powerState={text} on Node CR {namespace}/{name}"),
                )
            })?;
        }
        bar.inc(1);
        lines.push_str(&format!("{name}: {}\n", policy::marker(&maintenance)));
    }
    bar.finish_and_clear();
    super::print_stdout(&lines)?;
    Ok(())
}

async fn end(args: EndArgs) -> anyhow::Result<()> {
    let cluster = args.kube.connect().await?;
    let scope = args.kube.namespaces(&cluster);
    let client = cluster.client;
    let targets = machines_named(&client, &scope, &args.nodes).await?;
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let mut lines = String::new();
    for t in &targets {
        let name = t.name_any();
        let namespace = t.namespace().unwrap_or_default();
        if t.spec.maintenance.is_none() {
            lines.push_str(&format!("{name}: not under maintenance\n"));
            continue;
        }
        let api: Api<Machine> = Api::namespaced(client.clone(), &namespace);
        api.patch(
            &name,
            &params,
            &Patch::Merge(&serde_json::json!({ "spec": { "maintenance": null } })),
        )
        .await
        .map_err(|e| {
            api_error(
                e,
                format!("cannot clear spec.maintenance on Node CR {namespace}/{name}"),
            )
        })?;
        let node = kubernetes_node_name(t);
        drain::cordon(&client, &node, false)
            .await
            .with_context(|| format!("cannot uncordon node {node}"))?;
        lines.push_str(&format!("{name}: maintenance ended\n"));
    }
    super::print_stdout(&lines)?;
    Ok(())
}

/// The merge patch that pauses (`by` recorded) or resumes a Group.
pub fn pause_patch(paused: bool, by: Option<&str>) -> serde_json::Value {
    if paused {
        serde_json::json!({
            "metadata": { "annotations": { PAUSED_BY_ANNOTATION: by } },
            "spec": { "paused": true },
        })
    } else {
        serde_json::json!({
            "metadata": { "annotations": { PAUSED_BY_ANNOTATION: null } },
            "spec": { "paused": null },
        })
    }
}

async fn pause(args: GroupArgs, paused: bool) -> anyhow::Result<()> {
    let cluster = args.kube.connect().await?;
    let namespace = match args.kube.namespaces(&cluster) {
        Namespaces::One(ns) => ns,
        Namespaces::All => {
            return Err(CliError::new(
                ExitKind::Usage,
                "a Group is paused in one namespace: pass -n NAMESPACE, not -A",
            )
            .into());
        }
    };
    let client = cluster.client;
    let by = if paused {
        caller(&client, &args.kube).await
    } else {
        None
    };
    let api: Api<Group> = Api::namespaced(client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let name = &args.group;
    api.patch(
        name,
        &params,
        &Patch::Merge(&pause_patch(paused, by.as_deref())),
    )
    .await
    .map_err(|e| {
        api_error(
            e,
            format!(
                "cannot set spec.paused on Group {namespace}/{name} (list them with `kubectl get groups.infra.homecluster.dev -n {namespace}`)"
            ),
        )
    })?;
    let what = if paused { "paused" } else { "resumed" };
    super::print_stdout(&format!("group {name}: {what}\n"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn until_is_a_duration_from_now_or_a_future_time() {
        let now = t("2026-12-06T10:00:00Z");
        assert_eq!(parse_until("2h", now), Ok(t("2026-12-06T12:00:00Z")));
        assert_eq!(
            parse_until("2026-12-07T08:00:00Z", now),
            Ok(t("2026-12-07T08:00:00Z"))
        );
        for bad in ["2026-12-06T09:00:00Z", "0s", "two hours", "1d"] {
            assert!(parse_until(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn pausing_records_who_and_resuming_clears_it() {
        let p = pause_patch(true, Some("owner"));
        assert_eq!(p["spec"]["paused"], true);
        assert_eq!(p["metadata"]["annotations"][PAUSED_BY_ANNOTATION], "owner");
        let r = pause_patch(false, None);
        assert!(r["spec"]["paused"].is_null());
        assert!(r["metadata"]["annotations"][PAUSED_BY_ANNOTATION].is_null());
    }

    #[test]
    fn flags_parse() {
        let cli = crate::commands::Cli::try_parse_from([
            "kubectl-homelab",
            "maintenance",
            "start",
            "nuc-1",
            "--power",
            "off",
            "--until",
            "2h",
            "--reason",
            "swap a disk",
            "-n",
            "lab",
            "--yes",
        ]);
        let Ok(crate::commands::Cli {
            command: crate::commands::Command::Maintenance(MaintenanceCommand::Start(a)),
            ..
        }) = cli
        else {
            panic!("{cli:?}");
        };
        assert_eq!(a.power, PowerArg::Off);
        assert_eq!(a.until.as_deref(), Some("2h"));
        assert!(a.yes);
    }
}
