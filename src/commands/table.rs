//! The one table renderer of the CLI, shaped like kubectl's (`kubectl get`): upper-case headers,
//! columns separated by three spaces, no borders, `-o wide` for extra and uncut columns,
//! `--no-headers` for scripts.
//!
//! Laid out by comfy-table (widths in display cells).
//!
//! Below the renderer: machines as `fsm inspect` and `power` print them (`-o
//! table|wide|name|json|yaml`), one code for both commands.
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::operator::api::{Direction, DriverReadback, Machine};
use crate::operator::machine::{
    BootStats, Lifecycle, Operation, Phase, PowerState, StatusProgress, observed_power, progress,
};

/// How a column is aligned (numbers read better right-aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// One column: its header and how it behaves in the default and the wide output.
#[derive(Clone, Debug)]
pub struct Column {
    header: String,
    align: Align,
    wide_only: bool,
    /// In the default output, longer cells are cut to this many characters (ending in `…`);
    /// `-o wide` shows them whole.
    max_width: Option<usize>,
}

impl Column {
    /// A left-aligned column; the header is printed upper-case.
    pub fn new(header: &str) -> Column {
        Column {
            header: header.to_uppercase(),
            align: Align::Left,
            wide_only: false,
            max_width: None,
        }
    }

    pub fn right(mut self) -> Column {
        self.align = Align::Right;
        self
    }

    /// Shown only with `-o wide`.
    pub fn wide_only(mut self) -> Column {
        self.wide_only = true;
        self
    }

    /// Cut to `width` characters unless `-o wide`.
    pub fn cut_at(mut self, width: usize) -> Column {
        self.max_width = Some(width.max(2));
        self
    }
}

/// What the user asked for with `-o wide` and `--no-headers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    pub wide: bool,
    pub no_headers: bool,
}

/// Columns, then rows of cells in column order.
#[derive(Clone, Debug)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

/// Space between columns, as kubectl's tabwriter pads.
const GAP: usize = 3;

impl Table {
    pub fn new(columns: Vec<Column>) -> Table {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print as empty, extra cells are ignored.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Table {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, every line ending in `\n`.
    pub fn render(&self, style: Style) -> String {
        let shown: Vec<usize> = (0..self.columns.len())
            .filter(|&i| style.wide || !self.columns[i].wide_only)
            .collect();
        let cell = |row: &[String], i: usize| -> String {
            let text = clean(row.get(i).map_or("", String::as_str));
            match self.columns[i].max_width {
                Some(max) if !style.wide => cut(&text, max),
                _ => text,
            }
        };
        let mut lines: Vec<Vec<String>> = Vec::with_capacity(self.rows.len() + 1);
        if !style.no_headers {
            lines.push(
                shown
                    .iter()
                    .map(|&i| self.columns[i].header.clone())
                    .collect(),
            );
        }
        for row in &self.rows {
            lines.push(shown.iter().map(|&i| cell(row, i)).collect());
        }
        // comfy-table lays the columns out; the preset without borders and a three-space right
        // padding give kubectl's look.
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::NOTHING)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        for line in lines {
            t.add_row(line);
        }
        for (c, &i) in shown.iter().enumerate() {
            if let Some(column) = t.column_mut(c) {
                let last = c + 1 == shown.len();
                column.set_padding((0, if last { 0 } else { GAP as u16 }));
                column.set_cell_alignment(match self.columns[i].align {
                    Align::Left => comfy_table::CellAlignment::Left,
                    Align::Right => comfy_table::CellAlignment::Right,
                });
            }
        }
        let mut out = String::new();
        if t.row_count() == 0 {
            return out;
        }
        for line in t.lines() {
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One line per row: control characters (newlines, tabs) in a cell would break the columns.
fn clean(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.trim().is_empty() {
        // An empty cell would shift what a reader (or `awk`) sees as the next column.
        "<none>".to_owned()
    } else {
        s
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

// ---- Machines as `fsm inspect` and `power` print them ----

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
    /// p50/p95 of the recent boots (`status.recentBootSeconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootStats>,
    /// The boot deadline in force: `spec.bootTimeout`, or the learned one with `auto`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_timeout: Option<String>,
    /// `spec.maintenance`, while the machine is under maintenance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Box<crate::operator::api::Maintenance>>,
    /// Boots in the last 24 hours against `wear.maxBootsPerDay`, and whether quiet hours are
    /// in force (`fsm inspect` fills it in from the machine's and its Group's `wear`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wear: Option<WearRow>,
}

/// A machine's wear as `fsm inspect` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WearRow {
    /// Power-ons started in the last 24 hours (`status.recentBootStarts`).
    pub boots_in_24h: u32,
    /// The limit in force (the Node CR's own, else its Group's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_boots_per_day: Option<u32>,
    /// A quiet window is in force now.
    pub quiet: bool,
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
            boot: m.boot_stats(),
            boot_timeout: m.boot_timeout().ok().map(|d| {
                let auto = if m.spec.boot_timeout_auto() {
                    " (auto)"
                } else {
                    ""
                };
                format!("{d:#}{auto}")
            }),
            maintenance: m.spec.maintenance.clone(),
            wear: None,
        }
    }
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

/// `-o`: kubectl's output formats for machines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The table (`fsm inspect`'s default).
    #[default]
    Table,
    /// The table with more columns, long ones uncut.
    Wide,
    /// `node.infra.homecluster.dev/NAME`, one a line.
    Name,
    /// The rows' fields as a JSON list.
    Json,
    /// The same as YAML.
    Yaml,
}

impl Output {
    /// Whether an empty result prints nothing at all on standard output, leaving kubectl's
    /// "No resources found" to standard error; JSON and YAML print an empty list instead.
    pub fn says_nothing_when_empty(self) -> bool {
        matches!(self, Output::Table | Output::Wide | Output::Name)
    }
}

/// The resource prefix of `-o name`, as kubectl prints it (`kind.group/name`).
pub const NAME_PREFIX: &str = "node.infra.homecluster.dev/";

/// kubectl's message for an empty result (printed to standard error): `No resources found in
/// lab namespace.`, `No resources found` for every namespace, or the file read.
pub fn no_resources(scope: &super::kube_args::Namespaces) -> String {
    match scope {
        super::kube_args::Namespaces::One(ns) => format!("No resources found in {ns} namespace."),
        super::kube_args::Namespaces::All => "No resources found".to_owned(),
    }
}

/// Why the output could not be rendered (JSON or YAML serialisation).
pub type RenderError = Box<dyn std::error::Error + Send + Sync>;

/// The output in the chosen format at `now` (relative times in the table only). An empty
/// `views` renders as nothing for the table, wide and name formats (see
/// [`Output::says_nothing_when_empty`]).
pub fn render_views(
    views: &[MachineRow],
    output: Output,
    options: TableOptions,
    now: Timestamp,
) -> Result<String, RenderError> {
    match output {
        Output::Json => serde_json::to_string_pretty(views)
            .map(|s| s + "\n")
            .map_err(|e| Box::new(e) as RenderError),
        Output::Yaml => crate::yaml::to_string(&views).map_err(|e| Box::new(e) as RenderError),
        Output::Name => Ok(views
            .iter()
            .map(|v| format!("{NAME_PREFIX}{}\n", v.name))
            .collect()),
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

pub(crate) fn render_table(views: &[MachineRow], options: TableOptions, now: Timestamp) -> String {
    if views.is_empty() {
        return String::new();
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
        Column::new("boot p50/p95"),
        Column::new("last error").cut_at(LAST_ERROR_WIDTH),
        Column::new("next retry"),
        Column::new("operation").wide_only(),
        Column::new("progress").wide_only(),
        Column::new("drivers").wide_only(),
        Column::new("read").wide_only(),
        Column::new("boot timeout").wide_only(),
        Column::new("boots 24h").wide_only(),
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
            {
                // Under maintenance, and quiet hours in force (marked as kubectl marks a
                // cordoned node's status).
                let phase = if v.maintenance.is_some() {
                    format!("{} (maintenance)", v.phase)
                } else {
                    v.phase.to_string()
                };
                match &v.wear {
                    Some(w) if w.quiet => format!("{phase},Quiet"),
                    _ => phase,
                }
            },
            v.phase_since
                .map_or_else(|| "-".to_owned(), |t| relative(t, now)),
            v.attempt.to_string(),
            v.boot
                .as_ref()
                .map_or_else(|| "-".to_owned(), BootStats::short),
            v.last_error.clone().unwrap_or_else(|| "-".to_owned()),
            next_retry,
            operation,
            progress,
            drivers,
            read,
            v.boot_timeout.clone().unwrap_or_else(|| "-".to_owned()),
            v.wear.as_ref().map_or_else(
                || "-".to_owned(),
                |w| match w.max_boots_per_day {
                    Some(limit) => format!("{}/{limit}", w.boots_in_24h),
                    None => w.boots_in_24h.to_string(),
                },
            ),
        ]);
        table.row(row);
    }
    let mut text = table.render(Style {
        wide: options.wide,
        no_headers: options.no_headers,
    });
    // The MAINTENANCE marker of each machine under maintenance, below the table.
    for v in views {
        if let Some(m) = &v.maintenance {
            text.push_str(&format!(
                "{}: {}\n",
                v.name,
                crate::operator::policy::maintenance::marker(m)
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let mut t = Table::new(vec![
            Column::new("name"),
            Column::new("Attempts").right(),
            Column::new("last error").cut_at(10),
            Column::new("node").wide_only(),
        ]);
        t.row(["nuc-1", "0", "-", "node-a"]);
        t.row(["tower-long-name", "12", "power-on job failed: exit 1", "b"]);
        t
    }

    #[test]
    fn a_machine_under_maintenance_is_marked_in_the_phase_and_below_the_table() {
        use crate::operator::api::{Maintenance, MaintenancePower};
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let m = crate::operator::api::Machine::test("nuc-1")
            .spec_with(|s| {
                s.maintenance = Some(Box::new(Maintenance {
                    reason: Some("swap a disk".to_owned()),
                    power: Some(MaintenancePower::Off),
                    since: Some(t("2026-12-06T10:00:00Z")),
                    until: None,
                    by: Some("owner".to_owned()),
                }))
            })
            .build();
        let free = crate::operator::api::Machine::test("nuc-2").build();
        let rows = [MachineRow::of(&m), MachineRow::of(&free)];
        let out = render_views(
            &rows,
            Output::Table,
            TableOptions::default(),
            t("2026-12-06T11:00:00Z"),
        )
        .unwrap();
        assert!(out.contains("Unknown (maintenance)"), "{out}");
        assert!(
            out.ends_with(
                "nuc-1: MAINTENANCE reason \"swap a disk\" power off since \
                 2026-12-06T10:00:00Z until ended by hand by owner\n"
            ),
            "{out}"
        );
        assert_eq!(out.matches("MAINTENANCE").count(), 1, "{out}");
        let json = render_views(
            &rows,
            Output::Json,
            TableOptions::default(),
            t("2026-12-06T11:00:00Z"),
        )
        .unwrap();
        assert!(json.contains("\"reason\": \"swap a disk\""), "{json}");
    }

    #[test]
    fn columns_align_like_kubectl_without_borders() {
        let out = table().render(Style::default());
        assert_eq!(
            out,
            "NAME              ATTEMPTS   LAST ERROR\n\
             nuc-1                    0   -\n\
             tower-long-name         12   power-on …\n"
        );
    }

    #[test]
    fn wide_adds_columns_and_cuts_nothing() {
        let out = table().render(Style {
            wide: true,
            no_headers: false,
        });
        assert_eq!(
            out,
            "NAME              ATTEMPTS   LAST ERROR                    NODE\n\
             nuc-1                    0   -                             node-a\n\
             tower-long-name         12   power-on job failed: exit 1   b\n"
        );
    }

    #[test]
    fn no_headers_prints_only_rows() {
        let out = table().render(Style {
            wide: false,
            no_headers: true,
        });
        assert_eq!(out.lines().count(), 2);
        assert!(out.starts_with("nuc-1 "), "{out}");
        // Widths come from the rows alone.
        assert!(out.contains("tower-long-name   12"), "{out}");
    }

    #[test]
    fn cells_stay_on_one_line_and_are_never_blank() {
        let mut t = Table::new(vec![Column::new("a"), Column::new("b")]);
        t.row(["x\ny", ""]);
        assert_eq!(t.render(Style::default()), "A     B\nx y   <none>\n");
    }
}
