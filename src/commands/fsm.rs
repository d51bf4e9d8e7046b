//! `kubectl homelab fsm inspect`: every machine's lifecycle, or the transition table.
use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::kube_args::{ConnectError, KubeArgs, KubeError, Namespaces};
use super::lookup::LookupError;
pub use super::table::{MachineRow, Output, TableOptions, WearRow, relative, render_views};
use jiff::Timestamp;

use crate::operator::api::{API_GROUP, Group, Machine};
use crate::operator::machine::{GraphFormat, render};

#[derive(Debug, clap::Subcommand)]
pub enum FsmCommand {
    /// Show every machine's lifecycle phase: desired vs observed power, since when, attempts,
    /// last error and next retry.
    ///
    /// Reads the Node CRs (nodes.infra.homecluster.dev) from the cluster, or from a file with
    /// -f. READBACK is the power state the driver last read back (status.power); -o wide adds
    /// each direction's driver and when it was read, and BOOTS 24H: power-ons in the last 24
    /// hours against wear.maxBootsPerDay. PHASE ends in ",Quiet" while the machine's quiet
    /// hours are in force (read from its Group, so not with -f). With --graph, prints the
    /// lifecycle transition table instead.
    #[command(after_help = concat!(
        "Examples:
  # Every machine of namespace homelab
  kubectl homelab fsm inspect -n homelab

  # Two machines, by Node CR name or Kubernetes node name, with every column
  kubectl homelab fsm inspect -n homelab nuc-1 tower -o wide

  # Every namespace, as JSON
  kubectl homelab fsm inspect -A -o json

  # Machines from a file instead of the cluster
  kubectl get nodes.infra.homecluster.dev -n homelab -o yaml > nodes.yaml
  kubectl homelab fsm inspect -f nodes.yaml

  # The lifecycle transition table as a Graphviz graph
  kubectl homelab fsm inspect --graph dot | dot -Tsvg > lifecycle.svg

",
        crate::exit_codes_help!()
    ))]
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
        "cannot reach a cluster to read machines from; to read machines without one, pass a \
         file of Node CRs with -f (e.g. `kubectl homelab fsm inspect -f nodes.yaml`)"
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
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("cannot render the output")]
    Render(#[source] super::table::RenderError),
}

impl InspectError {
    pub fn exit_kind(&self) -> super::ExitKind {
        use super::ExitKind;
        match self {
            InspectError::Lookup(e) => e.exit_kind(),
            InspectError::Forbidden { .. } => ExitKind::Refused,
            _ => ExitKind::Error,
        }
    }
}

pub async fn run(cmd: FsmCommand) -> anyhow::Result<()> {
    match cmd {
        FsmCommand::Inspect(args) => {
            let out = inspect(&args).await?;
            super::print_stdout(&out.stdout)?;
            if let Some(notice) = out.stderr {
                eprintln!("{notice}");
            }
            Ok(())
        }
    }
}

/// What `inspect` prints: the output, and kubectl's "No resources found" notice for standard
/// error when there was nothing to show (standard output stays parseable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub stdout: String,
    pub stderr: Option<String>,
}

/// Everything `inspect` prints.
pub async fn inspect(args: &InspectArgs) -> Result<Inspected, InspectError> {
    if let Some(g) = args.graph {
        return Ok(Inspected {
            stdout: render(match g {
                GraphArg::Mermaid => GraphFormat::Mermaid,
                GraphArg::Dot => GraphFormat::Dot,
                GraphArg::Markdown => GraphFormat::Markdown,
            }),
            stderr: None,
        });
    }
    let (machines, groups, source_desc, empty) = match &args.filename {
        Some(path) => {
            let name = path.display().to_string();
            let empty = format!("No resources found in {name}.");
            (load_file(path)?, Vec::new(), name, empty)
        }
        None => {
            let (machines, scope) = load_cluster(&args.kube).await?;
            let groups = load_groups(&args.kube).await;
            (
                machines,
                groups,
                scope.to_string(),
                super::table::no_resources(&scope),
            )
        }
    };
    let mut views = select(&machines, &args.nodes, &source_desc)?;
    // "Now" is read here, at the edge; the core never reads a clock.
    let now = Timestamp::now();
    add_wear(&mut views, &machines, &groups, now);
    let options = TableOptions {
        wide: false,
        no_headers: args.no_headers,
        all_namespaces: args.kube.all_namespaces && args.filename.is_none(),
    };
    let mut stdout =
        render_views(&views, args.output, options, now).map_err(InspectError::Render)?;
    if matches!(args.output, Output::Table | Output::Wide)
        && args.nodes.is_empty()
        && let Some(summary) = schedule_summary(&groups, args.no_headers)
    {
        if !stdout.is_empty() {
            stdout.push('\n');
        }
        stdout.push_str(&summary);
    }
    let stderr = (views.is_empty() && args.output.says_nothing_when_empty()).then_some(empty);
    Ok(Inspected { stdout, stderr })
}

/// The Groups of the namespaces `kube` selects, for their `wear` and [`schedule_summary`]; none
/// when they cannot be listed (the machine table is what `fsm inspect` is for).
async fn load_groups(kube: &KubeArgs) -> Vec<Group> {
    use kube::api::{Api, ListParams};
    let Ok(cluster) = kube.connect().await else {
        return Vec::new();
    };
    let api: Api<Group> = match kube.namespaces(&cluster) {
        Namespaces::All => Api::all(cluster.client.clone()),
        Namespaces::One(ns) => Api::namespaced(cluster.client.clone(), &ns),
    };
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Fills in each row's boots in 24 hours against its limit and whether quiet hours are in
/// force at `now`, from its Node CR and its Group (when `groups` has it). Rows of machines with
/// no limit, no quiet hours and no recorded boot get none.
pub fn add_wear(views: &mut [MachineRow], machines: &[Machine], groups: &[Group], now: Timestamp) {
    use crate::operator::policy::wear;
    use crate::operator::provider::convert::{group_wear, machine_wear};
    for v in views.iter_mut() {
        let Some(m) = machines.iter().find(|m| {
            m.metadata.name.as_deref() == Some(v.name.as_str())
                && m.metadata.namespace == v.namespace
        }) else {
            continue;
        };
        let group = groups.iter().find(|g| g.has_member(m)).and_then(group_wear);
        let own = machine_wear(m);
        let limit = wear::machine_limit(group.as_ref(), own.as_ref());
        let boots = own
            .as_ref()
            .map_or(0, |w| wear::boots_in_day(&w.boot_starts, now));
        let quiet = wear::machine_quiet(group.as_ref(), own.as_ref());
        if limit.is_none() && boots == 0 && quiet.is_none() {
            continue;
        }
        v.wear = Some(WearRow {
            boots_in_24h: boots,
            max_boots_per_day: limit,
            quiet: quiet.is_some_and(|(q, tz)| q.active(tz, now).is_some()),
        });
    }
}

/// The groups with a schedule: the window in force, the minimum in force and the next change
/// (as the group controller last wrote them in `status.schedule`); `None` when no group has
/// one.
pub fn schedule_summary(groups: &[Group], no_headers: bool) -> Option<String> {
    use kube::ResourceExt as _;
    let mut rows: Vec<[String; 5]> = groups
        .iter()
        .filter_map(|g| {
            let s = g.status.as_ref()?.schedule.as_deref()?;
            let next = match s.next_change {
                Some(t) => format!("{} at {t}", s.next_window.as_deref().unwrap_or("(none)")),
                None => "-".to_owned(),
            };
            Some([
                g.namespace().unwrap_or_default(),
                g.name_any(),
                s.window.clone().unwrap_or_else(|| "-".to_owned()),
                s.min_size.to_string(),
                next,
            ])
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    rows.sort();
    let header = [
        "NAMESPACE".to_owned(),
        "GROUP".to_owned(),
        "WINDOW".to_owned(),
        "MIN".to_owned(),
        "NEXT".to_owned(),
    ];
    let all: Vec<&[String; 5]> = if no_headers {
        rows.iter().collect()
    } else {
        std::iter::once(&header).chain(rows.iter()).collect()
    };
    let widths: Vec<usize> = (0..5)
        .map(|i| all.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in all {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    Some(out)
}

/// The Node CRs of the namespaces `kube` selects.
pub(super) async fn load_cluster(
    kube: &KubeArgs,
) -> Result<(Vec<Machine>, Namespaces), InspectError> {
    use kube::api::{Api, ListParams};
    let cluster = kube.connect().await.map_err(InspectError::NoCluster)?;
    let scope = kube.namespaces(&cluster);
    let api: Api<Machine> = match &scope {
        Namespaces::All => Api::all(cluster.client.clone()),
        Namespaces::One(ns) => Api::namespaced(cluster.client.clone(), ns),
    };
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok((list.items, scope)),
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

/// The machines to show, sorted; `names` select them by the rule every command uses
/// ([`super::lookup::find`]).
pub fn select(
    machines: &[Machine],
    names: &[String],
    source_desc: &str,
) -> Result<Vec<MachineRow>, InspectError> {
    let mut views: Vec<MachineRow> = if names.is_empty() {
        machines.iter().map(MachineRow::of).collect()
    } else {
        super::lookup::find_all(machines, names, source_desc)?
            .into_iter()
            .map(MachineRow::of)
            .collect()
    };
    views.sort_by(|a, b| (&a.namespace, &a.group, &a.name).cmp(&(&b.namespace, &b.group, &b.name)));
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::super::table::render_table;
    use super::*;
    use crate::operator::api::{Direction, DriverReadback};
    use crate::operator::machine::{Phase, PowerState};

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
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("no machine \"zzz\" in list.yaml")),
            "{err:?}"
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
    fn boots_in_24h_against_the_limit_and_quiet_hours_show() {
        let ms = parse_machines("list.yaml", LIST).unwrap_or_default();
        let mut ms = ms;
        // b: in Group g1 (limit 2, quiet all day), booted 5 h and 30 h ago.
        if let Some(st) = ms[0].status.as_mut() {
            st.recent_boot_starts = vec![ts(-30 * 3600), ts(-5 * 3600)];
        }
        let g1: Group = serde_json::from_value(serde_json::json!({
            "apiVersion": "infra.homecluster.dev/v1alpha1", "kind": "Group",
            "metadata": {"name": "g1", "namespace": "lab"},
            "spec": {"wear": {"maxBootsPerDay": 2,
                              "quietHours": [{"from": "00:00", "to": "24:00"}]}}
        }))
        .unwrap();
        let mut views = select(&ms, &[], "list.yaml").unwrap_or_default();
        add_wear(&mut views, &ms, &[g1], ts(0));
        assert_eq!(views[0].wear, None, "a: no group, no wear, no boots");
        assert_eq!(
            views[1].wear,
            Some(WearRow {
                boots_in_24h: 1,
                max_boots_per_day: Some(2),
                quiet: true
            })
        );
        let table = render_table(&views, TableOptions::default(), ts(0));
        assert!(table.contains("Failed,Quiet"), "{table}");
        assert!(!table.contains("BOOTS 24H"), "{table}");
        let wide = render_table(
            &views,
            TableOptions {
                wide: true,
                ..TableOptions::default()
            },
            ts(0),
        );
        assert!(wide.contains("BOOTS 24H"), "{wide}");
        let b = wide
            .lines()
            .find(|l| l.starts_with("b "))
            .unwrap_or_default();
        assert!(b.trim_end().ends_with("1/2"), "{wide}");
    }

    #[test]
    fn not_yaml_names_the_file_and_line() {
        let err = parse_machines("bad.yaml", "a: [1, 2\nb: c\n")
            .err()
            .map(|e| crate::commands::render_chain(&e))
            .unwrap_or_default();
        assert!(err.contains("bad.yaml") && err.contains("line"), "{err}");
    }

    /// `fsm inspect NAME` finds a machine by the Kubernetes node name it registered as
    /// (`status.node.name`) when the spec names none, as `power` does.
    #[test]
    fn a_machine_is_found_by_its_registered_node_name() {
        let ms = [Machine::test("m3")
            .node_snapshot(crate::testing::seen_node("registered"))
            .build()];
        let views = select(&ms, &["registered".to_owned()], "namespace lab");
        assert_eq!(
            views.ok().map(|v| v.len()),
            Some(1),
            "registered is m3's Kubernetes node name"
        );
    }

    /// An empty table prints nothing on standard output (the notice goes to standard error).
    #[test]
    fn an_empty_table_prints_nothing() {
        let out = render_views(&[], Output::Table, TableOptions::default(), ts(0));
        assert_eq!(out.ok().as_deref(), Some(""));
    }

    #[test]
    fn the_schedule_summary_lists_groups_with_a_schedule_only() {
        use crate::operator::api::{GroupStatus, ScheduleStatus};
        let mut a = Group::test("workstations").namespace("lab").build();
        a.status = Some(GroupStatus {
            schedule: Some(Box::new(ScheduleStatus {
                window: Some("workday".into()),
                min_size: 1,
                next_change: Some("2026-12-07T17:00:00Z".parse().unwrap()),
                next_window: None,
            })),
            ..GroupStatus::default()
        });
        let b = Group::test("plain").namespace("lab").build();
        assert_eq!(schedule_summary(std::slice::from_ref(&b), false), None);
        assert_eq!(
            schedule_summary(&[b, a.clone()], false).unwrap(),
            "NAMESPACE   GROUP          WINDOW    MIN   NEXT\n\
             lab         workstations   workday   1     (none) at 2026-12-07T17:00:00Z\n"
        );
        assert_eq!(
            schedule_summary(&[a], true).unwrap(),
            "lab   workstations   workday   1   (none) at 2026-12-07T17:00:00Z\n"
        );
    }
}
