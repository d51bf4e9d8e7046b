//! `kubectl homelab fsm inspect`: every machine's lifecycle, or the transition table.
use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::kube_args::{ConnectError, KubeArgs, KubeError, Namespaces};
use super::table::{Column, Style, Table};
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::operator::api::{API_GROUP, Direction, DriverReadback, Machine};
use crate::operator::machine::{
    GraphFormat, Lifecycle, Operation, Phase, PowerState, StatusProgress, observed_power, progress,
    render,
};

#[derive(Debug, clap::Subcommand)]
pub enum FsmCommand {
    /// Show every machine's lifecycle phase: desired vs observed power, since when, attempts,
    /// last error and next retry.
    ///
    /// Reads the Node CRs (nodes.infra.homecluster.dev) from the cluster, or from a file with
    /// -f. READBACK is the power state the driver last read back (status.power); -o wide adds
    /// each direction's driver and when it was read. With --graph, prints the lifecycle
    /// transition table instead.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Machines (Node CR names, or their Kubernetes node names) to show; all when omitted.
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Read Node CRs from a YAML file (`-` for stdin) instead of the cluster: a List as
    /// `kubectl get nodes.infra.homecluster.dev -o yaml` prints, multi-document YAML, or a
    /// single object. Other kinds in the file (e.g. Groups) are skipped.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub filename: Option<PathBuf>,
    /// Output format: `wide` adds columns and prints long ones (LAST ERROR) uncut.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Print the table without its header line.
    #[arg(long)]
    pub no_headers: bool,
    /// Print the lifecycle transition table as a graph instead (default: mermaid).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "mermaid", value_name = "FORMAT")]
    pub graph: Option<GraphArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphArg {
    Mermaid,
    Dot,
    Markdown,
}

/// What can go wrong, each naming the fix; the cause (I/O, kube, YAML) stays the `source`, and
/// the edge prints the whole chain once.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(
        "cannot reach a cluster to read machines from; to inspect machines without one, pass a \
         file: `kubectl homelab fsm inspect -f nodes.yaml`"
    )]
    NoCluster(#[source] ConnectError),
    #[error(
        "the API server at {server} does not know nodes.{API_GROUP}: the CRDs are not installed; \
         install them with `kubectl homelab crd gen | kubectl apply -f -`"
    )]
    CrdsMissing {
        server: String,
        #[source]
        source: KubeError,
    },
    #[error(
        "not allowed to list nodes.{API_GROUP} in {scope}; ask for RBAC `list` on \
         nodes.{API_GROUP}, or use -n with a namespace you can read"
    )]
    Forbidden {
        scope: Namespaces,
        #[source]
        source: KubeError,
    },
    #[error(
        "cannot list nodes.{API_GROUP} in {scope} from the API server at {server}; check that it \
         is reachable and trusted (`kubectl get nodes`, the kubeconfig's server and \
         certificate-authority)"
    )]
    List {
        scope: Namespaces,
        server: String,
        #[source]
        source: KubeError,
    },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot read Node CRs from {path}: the file must be YAML: a List (`kubectl get nodes.{API_GROUP} -o yaml`), \
         documents separated by `---`, or one object"
    )]
    NotYaml {
        path: String,
        #[source]
        source: crate::yaml::YamlError,
    },
    #[error("{path}: {what} is not a valid Node ({API_GROUP}/v1alpha1)")]
    BadObject {
        path: String,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no machine named {names} in {source_desc} (found: {found})")]
    NotFound {
        names: String,
        source_desc: String,
        found: String,
    },
    #[error("cannot render the output")]
    Render(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub async fn run(cmd: FsmCommand) -> anyhow::Result<()> {
    match cmd {
        FsmCommand::Inspect(args) => {
            let out = inspect(&args).await?;
            super::print_stdout(&out)?;
            Ok(())
        }
    }
}

/// Everything `inspect` prints.
pub async fn inspect(args: &InspectArgs) -> Result<String, InspectError> {
    if let Some(g) = args.graph {
        return Ok(render(match g {
            GraphArg::Mermaid => GraphFormat::Mermaid,
            GraphArg::Dot => GraphFormat::Dot,
            GraphArg::Markdown => GraphFormat::Markdown,
        }));
    }
    let (machines, source_desc) = match &args.filename {
        Some(path) => (load_file(path)?, path.display().to_string()),
        None => load_cluster(args).await?,
    };
    let views = select(&machines, &args.nodes, &source_desc)?;
    // "Now" is read here, at the edge; the core never reads a clock.
    let options = TableOptions {
        wide: false,
        no_headers: args.no_headers,
        all_namespaces: args.kube.all_namespaces && args.filename.is_none(),
    };
    render_views(&views, args.output, options, Timestamp::now())
}

async fn load_cluster(args: &InspectArgs) -> Result<(Vec<Machine>, String), InspectError> {
    use kube::api::{Api, ListParams};
    let cluster = args.kube.connect().await.map_err(InspectError::NoCluster)?;
    let scope = args.kube.namespaces(&cluster);
    let api: Api<Machine> = match &scope {
        Namespaces::All => Api::all(cluster.client.clone()),
        Namespaces::One(ns) => Api::namespaced(cluster.client.clone(), ns),
    };
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok((list.items, scope.to_string())),
        Err(e) => {
            let source = KubeError(e);
            Err(match source.code() {
                Some(404) => InspectError::CrdsMissing {
                    server: cluster.server,
                    source,
                },
                Some(403) => InspectError::Forbidden { scope, source },
                _ => InspectError::List {
                    scope,
                    server: cluster.server,
                    source,
                },
            })
        }
    }
}

/// Reads Node CRs from a file (`-`: stdin).
pub fn load_file(path: &Path) -> Result<Vec<Machine>, InspectError> {
    let name = path.display().to_string();
    let read_err = |source| InspectError::Read {
        path: name.clone(),
        source,
    };
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(read_err)?;
        s
    } else {
        std::fs::read_to_string(path).map_err(read_err)?
    };
    parse_machines(&name, &text)
}

/// Node CRs in YAML text: Lists are unpacked, objects of other kinds skipped.
pub fn parse_machines(source_name: &str, text: &str) -> Result<Vec<Machine>, InspectError> {
    let docs: Vec<serde_json::Value> =
        crate::yaml::from_multi_doc(source_name, text).map_err(|source| InspectError::NotYaml {
            path: source_name.to_owned(),
            source,
        })?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let items = match doc.get("items") {
            Some(serde_json::Value::Array(items)) => items.clone(),
            _ => vec![doc],
        };
        for (j, item) in items.into_iter().enumerate() {
            let kind = item.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            let api_version = item
                .get("apiVersion")
                .and_then(|k| k.as_str())
                .unwrap_or("");
            // A core/v1 Node is also `kind: Node`; only ours count.
            if kind != "Node" || !api_version.starts_with(&format!("{API_GROUP}/")) {
                continue;
            }
            let what = match item.pointer("/metadata/name").and_then(|n| n.as_str()) {
                Some(n) => format!("document {}, item {}, Node {n}", i + 1, j + 1),
                None => format!("document {}, item {}", i + 1, j + 1),
            };
            let m: Machine =
                serde_json::from_value(item).map_err(|source| InspectError::BadObject {
                    path: source_name.to_owned(),
                    what,
                    source,
                })?;
            out.push(m);
        }
    }
    Ok(out)
}

/// One machine as `fsm inspect` shows it (also the `-o json|yaml` shape).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub desired: PowerState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<PowerState>,
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<Timestamp>,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<StatusProgress>,
    /// The power driver of each direction, from the spec.
    pub drivers: Drivers,
    /// What the driver of the latest operation last reported (`status.power`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power: Option<DriverReadback>,
}

/// The driver kind per direction (`job`, `nodeAgent`, `wakeOnLan`, `redfish`, `http`); `-` when
/// the spec sets none or several (an invalid spec the API server would have refused).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drivers {
    pub on: String,
    pub off: String,
}

impl Drivers {
    fn of(m: &Machine) -> Drivers {
        let kind = |d| {
            m.power_driver(d)
                .map_or_else(|_| "-".to_owned(), |d| d.kind().to_owned())
        };
        Drivers {
            on: kind(Direction::On),
            off: kind(Direction::Off),
        }
    }
}

impl MachineRow {
    pub fn of(m: &Machine) -> MachineRow {
        let lc: Lifecycle = m.lifecycle();
        MachineRow {
            namespace: m.metadata.namespace.clone(),
            name: m.metadata.name.clone().unwrap_or_default(),
            group: m.group().map(str::to_owned),
            desired: m.desired_power(),
            observed: m.observed_power().or_else(|| observed_power(&lc)),
            phase: lc.phase(),
            phase_since: lc.phase_since,
            attempt: lc.attempt,
            progress: progress(&lc),
            last_error: lc.last_error,
            next_retry_time: lc.next_retry_time,
            operation: lc.operation,
            drivers: Drivers::of(m),
            power: m.status.as_ref().and_then(|s| s.power.as_deref().cloned()),
        }
    }
}

/// The machines to show, sorted; `names` (CR names or Kubernetes node names) filter them.
pub fn select(
    machines: &[Machine],
    names: &[String],
    source_desc: &str,
) -> Result<Vec<MachineRow>, InspectError> {
    let matches = |m: &Machine, n: &str| {
        m.metadata.name.as_deref() == Some(n) || m.spec.kubernetes_node_name.as_deref() == Some(n)
    };
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !machines.iter().any(|m| matches(m, n)))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        let found: Vec<&str> = machines
            .iter()
            .filter_map(|m| m.metadata.name.as_deref())
            .collect();
        return Err(InspectError::NotFound {
            names: missing.join(", "),
            source_desc: source_desc.to_owned(),
            found: if found.is_empty() {
                "no Node CRs at all".to_owned()
            } else {
                found.join(", ")
            },
        });
    }
    let mut views: Vec<MachineRow> = machines
        .iter()
        .filter(|m| names.is_empty() || names.iter().any(|n| matches(m, n)))
        .map(MachineRow::of)
        .collect();
    views.sort_by(|a, b| (&a.namespace, &a.group, &a.name).cmp(&(&b.namespace, &b.group, &b.name)));
    Ok(views)
}

/// `5m ago`, `in 30s`, `now`: kubectl-like, two units at most.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    let d = now.duration_since(t);
    if d.as_secs() == 0 {
        return "now".to_owned();
    }
    let short = short_duration(d.abs());
    if d.is_negative() {
        format!("in {short}")
    } else {
        format!("{short} ago")
    }
}

fn short_duration(d: SignedDuration) -> String {
    let s = d.as_secs();
    let (d_, h, m, sec) = (s / 86_400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    match (d_, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) if sec == 0 || m >= 10 => format!("{m}m"),
        (0, 0, _) => format!("{m}m{sec}s"),
        (0, _, _) if m == 0 => format!("{h}h"),
        (0, _, _) => format!("{h}h{m}m"),
        _ if h == 0 => format!("{d_}d"),
        _ => format!("{d_}d{h}h"),
    }
}

fn power(p: Option<PowerState>) -> &'static str {
    match p {
        Some(PowerState::On) => "on",
        Some(PowerState::Off) => "off",
        None => "-",
    }
}

/// READBACK: the power state the driver last read back (`-`: none, or a driver without
/// readback), marked when a power-off was forced.
fn readback(p: Option<&DriverReadback>) -> String {
    match p {
        None => "-".to_owned(),
        Some(p) if p.escalated => format!("{} (ForceOff)", power(p.readback)),
        Some(p) => power(p.readback).to_owned(),
    }
}

/// How the table looks: kubectl's `-o wide`, `--no-headers`, and `-A` (which always shows the
/// NAMESPACE column, as kubectl does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableOptions {
    pub wide: bool,
    pub no_headers: bool,
    pub all_namespaces: bool,
}

/// The output in the chosen format at `now` (relative times in the table only).
pub fn render_views(
    views: &[MachineRow],
    output: Output,
    options: TableOptions,
    now: Timestamp,
) -> Result<String, InspectError> {
    match output {
        Output::Json => serde_json::to_string_pretty(views)
            .map(|s| s + "\n")
            .map_err(|e| InspectError::Render(Box::new(e))),
        Output::Yaml => {
            crate::yaml::to_string(&views).map_err(|e| InspectError::Render(Box::new(e)))
        }
        Output::Table => Ok(render_table(views, options, now)),
        Output::Wide => Ok(render_table(
            views,
            TableOptions {
                wide: true,
                ..options
            },
            now,
        )),
    }
}

/// Characters of LAST ERROR the default table shows; `-o wide` shows all.
const LAST_ERROR_WIDTH: usize = 40;

fn render_table(views: &[MachineRow], options: TableOptions, now: Timestamp) -> String {
    if views.is_empty() {
        return "No machines (Node CRs) found.\n".to_owned();
    }
    let namespaces = views
        .iter()
        .map(|v| v.namespace.as_deref())
        .collect::<std::collections::BTreeSet<_>>();
    let show_ns = options.all_namespaces || namespaces.len() > 1;
    let mut columns = Vec::new();
    if show_ns {
        columns.push(Column::new("namespace"));
    }
    columns.extend([
        Column::new("name"),
        Column::new("group"),
        Column::new("desired"),
        Column::new("observed"),
        Column::new("readback"),
        Column::new("phase"),
        Column::new("since"),
        Column::new("attempt").right(),
        Column::new("last error").cut_at(LAST_ERROR_WIDTH),
        Column::new("next retry"),
        Column::new("operation").wide_only(),
        Column::new("progress").wide_only(),
        Column::new("drivers").wide_only(),
        Column::new("read").wide_only(),
    ]);
    let mut table = Table::new(columns);
    for v in views {
        let mut row: Vec<String> = Vec::new();
        if show_ns {
            row.push(v.namespace.clone().unwrap_or_else(|| "-".to_owned()));
        }
        let next_retry = match (v.next_retry_time, v.phase) {
            (Some(t), _) if t <= now => "due".to_owned(),
            (Some(t), _) => relative(t, now),
            (None, Phase::Failed) => "none (gave up)".to_owned(),
            (None, _) => "-".to_owned(),
        };
        let operation = v.operation.as_ref().map_or_else(
            || "-".to_owned(),
            |op| match op.completed {
                Some(_) => format!("{} (done)", op.id),
                None => op.id.clone(),
            },
        );
        let progress = v.progress.map_or_else(
            || "-".to_owned(),
            |p| {
                serde_json::to_value(p)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "-".to_owned())
            },
        );
        let drivers = if v.drivers.on == v.drivers.off {
            v.drivers.on.clone()
        } else {
            format!("on:{} off:{}", v.drivers.on, v.drivers.off)
        };
        let read = v.power.as_ref().map_or_else(
            || "-".to_owned(),
            |p| {
                format!(
                    "{} {} {}",
                    p.driver,
                    p.operation,
                    relative(p.observed_at, now)
                )
            },
        );
        row.extend([
            v.name.clone(),
            v.group.clone().unwrap_or_else(|| "-".to_owned()),
            power(Some(v.desired)).to_owned(),
            power(v.observed).to_owned(),
            readback(v.power.as_ref()),
            v.phase.to_string(),
            v.phase_since
                .map_or_else(|| "-".to_owned(), |t| relative(t, now)),
            v.attempt.to_string(),
            v.last_error.clone().unwrap_or_else(|| "-".to_owned()),
            next_retry,
            operation,
            progress,
            drivers,
            read,
        ]);
        table.row(row);
    }
    table.render(Style {
        wide: options.wide,
        no_headers: options.no_headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn relative_times_read_like_kubectl() {
        assert_eq!(relative(ts(0), ts(0)), "now");
        assert_eq!(relative(ts(0), ts(42)), "42s ago");
        assert_eq!(relative(ts(0), ts(300)), "5m ago");
        assert_eq!(relative(ts(0), ts(330)), "5m30s ago");
        assert_eq!(relative(ts(0), ts(3 * 3600 + 120)), "3h2m ago");
        assert_eq!(relative(ts(0), ts(2 * 86_400)), "2d ago");
        assert_eq!(relative(ts(30), ts(0)), "in 30s");
    }

    const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: infra.homecluster.dev/v1alpha1
  kind: Node
  metadata: {name: b, namespace: lab, labels: {group: g1}}
  spec: {powerState: "on", kubernetesNodeName: node-b}
  status: {phase: Failed, phaseSince: "2027-01-15T08:00:00Z", attempt: 2, lastError: "boom", nextRetryTime: "2027-01-15T08:05:00Z", goal: "on"}
- apiVersion: v1
  kind: Node
  metadata: {name: a-core-node}
- apiVersion: infra.homecluster.dev/v1alpha1
  kind: Node
  metadata: {name: a, namespace: lab}
  spec: {powerState: "off"}
"#;

    #[test]
    fn lists_are_unpacked_other_kinds_skipped_and_sorted() {
        let ms = parse_machines("list.yaml", LIST).unwrap_or_default();
        assert_eq!(ms.len(), 2);
        let views = select(&ms, &[], "list.yaml").unwrap_or_default();
        assert_eq!(views[0].name, "a");
        assert_eq!(views[0].phase, Phase::Unknown);
        assert_eq!(views[1].phase, Phase::Failed);
        assert_eq!(views[1].observed, Some(PowerState::Off));
        let by_node = select(&ms, &["node-b".to_owned()], "list.yaml").unwrap_or_default();
        assert_eq!(by_node.len(), 1);
        let err = select(&ms, &["zzz".to_owned()], "list.yaml")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("no machine named zzz in list.yaml (found: b, a)")
        );
        let table = render_table(&views, TableOptions::default(), ts(0));
        assert!(table.contains("NAME") && table.contains("boom"), "{table}");
    }

    #[test]
    fn a_forced_power_off_is_marked_in_readback() {
        let ms = parse_machines("list.yaml", LIST).unwrap_or_default();
        let mut views = select(&ms, &[], "list.yaml").unwrap_or_default();
        views[0].power = Some(DriverReadback {
            driver: "redfish".to_owned(),
            direction: Direction::Off,
            operation: "off-3".to_owned(),
            readback: Some(PowerState::Off),
            observed_at: ts(-90),
            escalated: true,
            accepted: None,
        });
        let table = render_table(&views, TableOptions::default(), ts(0));
        let a = table
            .lines()
            .find(|l| l.starts_with("a "))
            .unwrap_or_default();
        assert!(a.contains("off (ForceOff)"), "{table}");
        let wide = render_table(
            &views,
            TableOptions {
                wide: true,
                ..TableOptions::default()
            },
            ts(0),
        );
        assert!(wide.contains("redfish off-3 1m30s ago"), "{wide}");
    }

    #[test]
    fn not_yaml_names_the_file_and_line() {
        let err = parse_machines("bad.yaml", "a: [1, 2\nb: c\n")
            .err()
            .map(|e| crate::commands::render_chain(&e))
            .unwrap_or_default();
        assert!(err.contains("bad.yaml") && err.contains("line"), "{err}");
    }
}
