//! `kubectl homelab simulate`: reads a scenario (or the embedded default), runs the simulator
//! and renders the report as a table, JSON, a timeline and an SVG plot.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use super::kube_args::ClusterArgs;
use super::table::{Column, Style, Table};
use anyhow::Context;

use crate::sim::report::{GroupReport, WaitStats};
use crate::sim::scenario::{
    DEFAULT_SCENARIO, DEFAULT_SCENARIO_NAME, NoTraceFiles, Scenario, TraceSource,
};
use crate::sim::units::{Millis, format_millis};
use crate::sim::{Report, RunOptions, batch, plot};

/// Output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "With no FILE the embedded default scenario runs (a small homelab over one \
week); print it with --print-default-scenario and edit it to describe your own machines.

Examples:
  # The default scenario, with the events on a timeline
  kubectl homelab simulate --timeline

  # Your own scenario over 48 hours, as JSON
  kubectl homelab simulate --print-default-scenario > lab.yaml
  kubectl homelab simulate lab.yaml --duration 48h -o json

  # The Groups and Nodes of the cluster, on 20 seeds
  kubectl homelab simulate --from-cluster --context lab -n homelab --seeds 20

  # Compare a shorter scale-down delay with the scenario as it is
  kubectl homelab simulate lab.yaml --set autoscaler.scaleDownUnneededTime=5m"
)]
pub struct Args {
    /// Scenario YAML: Groups and Nodes in the CRD shapes plus simulation settings.
    pub scenario: Option<PathBuf>,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the scenario's duration (e.g. 48h, 90m).
    #[arg(long, value_parser = duration_arg)]
    pub duration: Option<Millis>,
    /// Print the events (scale-ups, power actions, boots, failures) with virtual timestamps.
    #[arg(long)]
    pub timeline: bool,
    /// Write an SVG plot of machines on and pending pods over time.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Print the embedded default scenario and exit.
    #[arg(long)]
    pub print_default_scenario: bool,
    /// Take the Groups and Nodes from the live cluster (kubeconfig or in-cluster); everything
    /// else (workload, autoscaler, simulation defaults) from FILE or the default scenario.
    #[arg(long)]
    pub from_cluster: bool,
    /// Namespace of the Groups and Nodes for --from-cluster (default: the kubeconfig's).
    #[arg(short = 'n', long, requires = "from_cluster")]
    pub namespace: Option<String>,
    /// The cluster for --from-cluster (`--kubeconfig`, `--context`, as kubectl's).
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Run N seeds (from --seed or the scenario's) and report each figure's median and
    /// 10th/90th percentiles.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub seeds: u32,
    /// Compare scenario files side by side on the same seeds (after FILE, if given).
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub compare: Vec<PathBuf>,
    /// A variant of the scenario to compare: KEY=VALUE[,KEY=VALUE...] with KEY a field path
    /// (e.g. autoscaler.scaleDownUnneededTime=30m). Repeat for more variants.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Skip the baseline runs (the same workload with every machine on, and with only the
    /// machines the scenario starts with on).
    #[arg(long)]
    pub no_baselines: bool,
}

fn duration_arg(s: &str) -> Result<Millis, String> {
    let d = crate::operator::api::parse_duration_arg(s)?;
    match u64::try_from(d.as_millis()) {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err(format!(
            "{s:?} must be at least 1ms (the simulation's tick), e.g. 48h"
        )),
    }
}

/// Reads trace files relative to the scenario file's directory.
struct TraceFiles<'a> {
    dir: &'a Path,
}

impl TraceSource for TraceFiles<'_> {
    fn read(&self, file: &str) -> Result<String, String> {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read trace file {}: {e}", path.display()))
    }
}

/// Reads Groups and Node CRs from the cluster `--kubeconfig`/`--context` name.
async fn cluster_objects(
    cluster: &ClusterArgs,
    namespace: Option<&str>,
) -> anyhow::Result<(
    Vec<crate::operator::api::Group>,
    Vec<crate::operator::api::Machine>,
)> {
    use crate::operator::api::{Group, Machine};
    use kube::api::{Api, ListParams};
    let cluster = cluster.connect().await.context(
        "--from-cluster needs a cluster (a kubeconfig, or running in one), and none was usable",
    )?;
    let client = cluster.client;
    let ns = namespace.map_or_else(|| cluster.default_namespace.clone(), str::to_owned);
    let groups: Api<Group> = Api::namespaced(client.clone(), &ns);
    let machines: Api<Machine> = Api::namespaced(client, &ns);
    let hint = "are the CRDs installed (`kubectl homelab crd gen | kubectl apply -f -`) and may you list them?";
    let g = groups
        .list(&ListParams::default())
        .await
        .with_context(|| format!("cannot list Groups in namespace {ns}; {hint}"))?;
    let m = machines
        .list(&ListParams::default())
        .await
        .with_context(|| {
            format!("cannot list Nodes (infra.homecluster.dev) in namespace {ns}; {hint}")
        })?;
    if g.items.is_empty() {
        anyhow::bail!("no Groups in namespace {ns}; pick the namespace with -n");
    }
    Ok((g.items, m.items))
}

/// A scenario's text, its name in messages and the directory its trace files are read from.
struct Source {
    name: String,
    text: String,
    dir: Option<PathBuf>,
}

fn read_source(path: Option<&Path>) -> anyhow::Result<Source> {
    Ok(match path {
        None => Source {
            name: DEFAULT_SCENARIO_NAME.to_owned(),
            text: DEFAULT_SCENARIO.to_owned(),
            dir: None,
        },
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read scenario file {}; run `kubectl homelab simulate --print-default-scenario` for an example",
                    path.display()
                )
            })?;
            let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
            Source {
                name: path.display().to_string(),
                text,
                dir: Some(dir),
            }
        }
    })
}

/// Loads the scenario the arguments name.
pub async fn load(args: &Args) -> anyhow::Result<Scenario> {
    let source = read_source(args.scenario.as_deref())?;
    load_source(args, &source).await
}

async fn load_source(args: &Args, source: &Source) -> anyhow::Result<Scenario> {
    let (name, text, dir) = (&source.name, &source.text, &source.dir);
    let files;
    let traces: &dyn TraceSource = match &dir {
        Some(dir) => {
            files = TraceFiles { dir };
            &files
        }
        None => &NoTraceFiles,
    };
    let mut scenario = if args.from_cluster {
        let (groups, machines) = cluster_objects(&args.cluster, args.namespace.as_deref()).await?;
        Scenario::with_cluster_objects(name, text, traces, groups, machines)?
    } else {
        Scenario::parse(name, text, traces)?
    };
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    if let Some(d) = args.duration {
        scenario.duration = d;
    }
    Ok(scenario)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.print_default_scenario {
        super::print_stdout(DEFAULT_SCENARIO)?;
        return Ok(());
    }
    if args.seeds > 1 || !args.compare.is_empty() || !args.set.is_empty() {
        return run_batch(&args).await;
    }
    let scenario = load(&args).await?;
    let options = RunOptions {
        timeline: args.timeline || args.output == Output::Json,
        series: args.plot.is_some() || args.output == Output::Json,
        baselines: !args.no_baselines,
        ..RunOptions::default()
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(scenario.duration / 1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "simulating {bar:40} {msg} virtual time ({elapsed} real)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut progress = |now: Millis, end: Millis| {
        if let Some(b) = &bar {
            b.set_position(now / 1000);
            b.set_message(format!("{} / {}", format_millis(now), format_millis(end)));
        }
    };
    let report = crate::sim::run(&scenario, options, &mut progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report?;
    if let Some(path) = &args.plot {
        let svg = plot::svg(&report);
        std::fs::write(path, svg)
            .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    }
    match args.output {
        Output::Json => {
            super::print_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
        }
        Output::Table => {
            if args.timeline {
                super::print_stdout(&format!("{}\n", render_timeline(&report)))?;
            }
            super::print_stdout(&render_summary(&report))?;
            if let Some(path) = &args.plot {
                super::print_stdout(&format!("plot written to {}\n", path.display()))?;
            }
        }
    }
    Ok(())
}

/// The scenarios to compare: FILE (or the default), then each `--set` variant of it, then each
/// `--compare` file.
async fn variants(args: &Args) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    let base = read_source(args.scenario.as_deref())?;
    if args.scenario.is_some() || args.compare.is_empty() {
        out.push(load_source(args, &base).await?);
    }
    for set in &args.set {
        let text = batch::apply_set(&base.text, set)?;
        let variant = Source {
            name: format!("{} with {set}", base.name),
            text,
            dir: base.dir.clone(),
        };
        let mut s = load_source(args, &variant).await?;
        s.name = set.clone();
        out.push(s);
    }
    for path in &args.compare {
        out.push(load_source(args, &read_source(Some(path))?).await?);
    }
    Ok(out)
}

/// `--seeds`, `--compare`, `--set`: every scenario on the same seeds, side by side.
async fn run_batch(args: &Args) -> anyhow::Result<()> {
    let scenarios = variants(args).await?;
    let first = args
        .seed
        .or_else(|| scenarios.first().map(|s| s.seed))
        .unwrap_or(1);
    let seeds = batch::seeds(first, args.seeds);
    let options = RunOptions {
        baselines: !args.no_baselines,
        ..RunOptions::default()
    };
    let mut summaries = Vec::with_capacity(scenarios.len());
    for (i, s) in scenarios.iter().enumerate() {
        if std::io::stderr().is_terminal() {
            eprintln!(
                "simulating {} ({}/{}) over {} seed(s)...",
                s.name,
                i + 1,
                scenarios.len(),
                seeds.len()
            );
        }
        summaries.push(batch::run_seeds(s, &seeds, options)?);
    }
    match args.output {
        Output::Json => {
            let v = serde_json::json!({"seeds": seeds, "scenarios": summaries});
            super::print_stdout(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
        }
        Output::Table => super::print_stdout(&render_batch(&seeds, &summaries))?,
    }
    Ok(())
}

fn number(v: f64) -> String {
    if (v == v.trunc() && v.abs() < 1e12) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Figures down, scenarios across; `median (p10-p90)` when there are several seeds.
pub fn render_batch(seeds: &[u64], summaries: &[batch::Summary]) -> String {
    let mut columns = vec![Column::new("figure")];
    columns.extend(summaries.iter().map(|s| Column::new(&s.scenario).right()));
    let mut t = Table::new(columns);
    let Some(first) = summaries.first() else {
        return String::new();
    };
    for (i, f) in first.figures.iter().enumerate() {
        let unit = if f.unit.is_empty() {
            String::new()
        } else {
            format!(" ({})", f.unit)
        };
        let mut row = vec![format!("{}{unit}", f.figure)];
        for s in summaries {
            let Some(x) = s.figures.get(i) else { continue };
            row.push(if seeds.len() > 1 {
                format!("{} ({}-{})", number(x.median), number(x.p10), number(x.p90))
            } else {
                number(x.median)
            });
        }
        t.row(row);
    }
    let t = t.render(Style::default());
    let mut out = format!(
        "{} seed(s): {}{}\n{t}",
        seeds.len(),
        seeds
            .iter()
            .take(10)
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        if seeds.len() > 10 { ", ..." } else { "" },
    );
    if seeds.len() > 1 {
        out.push_str("cells: median (10th-90th percentile) over the seeds\n");
    }
    for s in summaries {
        for w in &s.warnings {
            out.push_str(&format!("warning ({}): {w}\n", s.scenario));
        }
        for w in &s.ignored {
            out.push_str(&format!("ignored ({}): {w}\n", s.scenario));
        }
    }
    out
}

/// The timeline, one event per line.
pub fn render_timeline(r: &Report) -> String {
    let mut out = String::new();
    for e in &r.timeline {
        let when = e.time.strftime("%a %H:%M:%S");
        let who = match (&e.group, &e.machine) {
            (_, Some(m)) => m.clone(),
            (Some(g), None) => format!("group {g}"),
            (None, None) => String::new(),
        };
        out.push_str(&format!("{when}  {who:<14} {}\n", e.what));
    }
    out
}

fn wait(w: &WaitStats) -> String {
    if w.pods == 0 {
        return "-".to_owned();
    }
    format!(
        "{} / {} / {} / {}",
        format_millis(w.p50_ms),
        format_millis(w.p95_ms),
        format_millis(w.p99_ms),
        format_millis(w.max_ms)
    )
}

fn money(v: f64, currency: &str) -> String {
    if v.abs() < 1.0 {
        format!("{v:.3} {currency}")
    } else {
        format!("{v:.2} {currency}")
    }
}

/// Three significant digits for small figures, two decimals otherwise.
fn kwh(v: f64) -> String {
    if v.abs() < 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

fn row(g: &GroupReport, currency: &str) -> Vec<String> {
    vec![
        g.name.clone(),
        format!("{} ({}-{})", g.machines, g.min_size, g.max_size),
        format!("{:.1}", g.machine_hours_on),
        format!("{} / {}", g.boots, g.failed_boots),
        format!("{} / {}", kwh(g.kwh), kwh(g.baseline_kwh)),
        money(g.cost, currency),
        format!("{} ({:.0}%)", money(g.savings, currency), g.savings_percent),
        wait(&g.wait),
    ]
}

/// The summary table and the lines under it.
pub fn render_summary(r: &Report) -> String {
    let mut t = Table::new(vec![
        Column::new("group"),
        Column::new("machines (min-max)").right(),
        Column::new("machine-hours on").right(),
        Column::new("boots / failed").right(),
        Column::new("kWh / always-on").right(),
        Column::new("cost").right(),
        Column::new("saved").right(),
        Column::new("pod wait p50 / p95 / p99 / max").right(),
    ]);
    for g in &r.groups {
        t.row(row(g, &r.currency));
    }
    t.row(row(&r.total, &r.currency));
    for b in &r.baselines {
        t.row([
            format!("baseline: {}", b.name),
            format!("{} on", b.machines_on),
            format!(
                "{:.1}",
                f64::from(b.machines_on) * r.duration_ms as f64 / 3_600_000.0
            ),
            "-".to_owned(),
            kwh(b.kwh),
            money(b.cost, &r.currency),
            "-".to_owned(),
            wait(&b.wait),
        ]);
    }
    let c = &r.counters;
    let mut notes = String::new();
    if r.eviction.evictions > 0 {
        notes.push_str(&format!(
            "evictions: {} pods evicted, {} of work lost, evicted pods waited {} in total to run again (longest {})\n",
            r.eviction.evictions,
            format_millis(r.eviction.lost_work_ms),
            format_millis(r.eviction.rewait_ms),
            format_millis(r.eviction.rewait_max_ms),
        ));
    }
    notes.push_str(&format!(
        "wear: {:.2} boots per machine per day",
        r.total.boots_per_machine_day
    ));
    if c.wear_spared + c.wear_limit_passed > 0 {
        notes.push_str(&format!(
            "; maxBootsPerDay moved {} pick(s) to another machine, passed {} time(s) (no other machine left)",
            c.wear_spared, c.wear_limit_passed
        ));
    }
    notes.push('\n');
    if c.schedule_power_ons + c.warm_spare_scale_ups > 0 {
        notes.push_str(&format!(
            "schedule: {} machine(s) powered on at a window's start; warm spares: {} scale-up(s) for placeholder pods alone\n",
            c.schedule_power_ons, c.warm_spare_scale_ups
        ));
    }
    if c.quiet_held_power_ons + c.quiet_held_power_offs > 0 {
        notes.push_str(&format!(
            "quiet hours: power-ons held in {} loop(s), power-offs held in {} loop(s)\n",
            c.quiet_held_power_ons, c.quiet_held_power_offs
        ));
    }
    if c.maintenances > 0 {
        notes.push_str(&format!(
            "maintenance: {} machine(s) taken out\n",
            c.maintenances
        ));
    }
    for w in &r.warnings {
        notes.push_str(&format!("warning: {w}\n"));
    }
    for w in &r.ignored {
        notes.push_str(&format!("ignored: {w}\n"));
    }
    format!(
        "scenario {:?}, seed {}, {} of virtual time from {}, electricity {:.2} {}/kWh\n{}\
         pods: {} arrived, {} never placed; pods waiting for room {} of the time ({})\n\
         autoscaler: {} scale-ups, {} scale-downs, {} failed instances removed, {} backoffs, {} refused scale-ups; {} pods evicted by drains\n{notes}",
        r.scenario,
        r.seed,
        r.duration,
        r.start.strftime("%Y-%m-%d %H:%M UTC"),
        r.price_per_kwh,
        r.currency,
        t.render(Style::default()),
        r.pods_arrived,
        r.pods_never_placed,
        pct(r.unschedulable_ms, r.duration_ms),
        format_millis(r.unschedulable_ms),
        c.scale_ups,
        c.scale_downs,
        c.failed_instances_deleted,
        c.backoffs,
        c.failed_scale_ups,
        c.evictions,
    )
}

fn pct(a: Millis, b: Millis) -> String {
    if b == 0 {
        "0%".to_owned()
    } else {
        format!("{:.1}%", 100.0 * a as f64 / b as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        use clap::Parser as _;
        let cli = crate::commands::Cli::try_parse_from(
            ["kubectl-homelab", "simulate"].iter().chain(argv.iter()),
        );
        match cli.map(|c| c.command) {
            Ok(crate::commands::Command::Simulate(a)) => a,
            Ok(other) => panic!("{other:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// `--from-cluster` reads the cluster `--kubeconfig`/`--context` name, as kubectl's flags
    /// do, not whatever the environment's default is.
    #[tokio::test]
    async fn from_cluster_uses_the_kubeconfig_and_context_flags() {
        let a = args(&[
            "--from-cluster",
            "--kubeconfig",
            "/nonexistent/lab.kubeconfig",
            "--context",
            "lab",
            "-n",
            "homelab",
        ]);
        assert_eq!(
            a.cluster.kubeconfig.as_deref(),
            Some(Path::new("/nonexistent/lab.kubeconfig"))
        );
        assert_eq!(a.cluster.context.as_deref(), Some("lab"));
        let err = match load(&a).await {
            Ok(_) => panic!("loaded a scenario from a kubeconfig that does not exist"),
            Err(e) => crate::commands::render_error(&e),
        };
        assert!(
            err.contains("--from-cluster")
                && err.contains("--kubeconfig /nonexistent/lab.kubeconfig"),
            "{err}"
        );
    }
}
