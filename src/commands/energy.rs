//! `kubectl homelab energy`: what each machine and group used, cost and saved, from the Node
//! CRs' `status.energy` (no Prometheus needed).
//!
//! A window (`--since`) is summed from the per-day buckets of `status.energy.days`: days wholly
//! inside the window count whole, the day the window starts in counts in proportion to the
//! part of it inside the window (marked `~` in the table, `prorated` in JSON). Without
//! `--since`, or with a window reaching back before the counters began, the totals are exact.
use std::path::PathBuf;

use jiff::{SignedDuration, Timestamp, ToSpan as _};
use serde::Serialize;

use super::fsm::InspectError;
use super::kube_args::KubeArgs;
use super::table::{Column, Style, Table};
use crate::operator::api::{EnergyCounters, EnergyDay, EnergySource, Machine};
use crate::operator::energy;

#[derive(Debug, clap::Args)]
#[command(after_help = concat!(
    "Examples:
  # Every machine and group of namespace homelab, since the counters began
  kubectl homelab energy -n homelab

  # The last 24 hours, then the last week
  kubectl homelab energy -n homelab --since 24h
  kubectl homelab energy -n homelab --since 168h

  # Two machines, every column, every namespace as JSON
  kubectl homelab energy -n homelab nuc-1 tower -o wide
  kubectl homelab energy -A -o json

",
    crate::exit_codes_help!()
))]
pub struct Args {
    /// Machines (Node CR names, or their Kubernetes node names) to show; all when omitted.
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Read Node CRs from a YAML file (`-` for stdin) instead of the cluster, as `fsm inspect
    /// -f` does.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub filename: Option<PathBuf>,
    /// Only the last DURATION (e.g. `24h`, `168h`); default: since the counters began. The
    /// Node CRs keep 14 days of daily figures.
    #[arg(long, value_name = "DURATION", value_parser = crate::operator::api::parse_duration_arg)]
    pub since: Option<std::time::Duration>,
    /// Output format: `wide` adds metered, baseline and estimated figures.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Print the tables without their header lines.
    #[arg(long)]
    pub no_headers: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Wide,
    Json,
    Yaml,
}

/// Figures of one machine, or summed over a group, for the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    pub on_seconds: f64,
    pub off_seconds: f64,
    /// `None` when no machine in it has a power model or meter (unknown, never 0).
    pub kwh: Option<f64>,
    pub metered_kwh: f64,
    pub baseline_kwh: f64,
    pub saved_kwh: Option<f64>,
    pub cost: Option<f64>,
    pub saved_cost: Option<f64>,
    pub currency: Option<String>,
    pub boots: f64,
    pub boots_per_day: Option<f64>,
    pub estimated_seconds: f64,
    /// Part of the window was pro-rated from a day's figures.
    pub prorated: bool,
    /// Machines counted as unknown (no `spec.watts`, no meter).
    pub unknown: u32,
    /// The current draw (watts) as last accounted, summed over the machines that know theirs.
    pub watts: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineEnergy {
    pub namespace: String,
    pub name: String,
    pub group: Option<String>,
    /// `meter`, `model`, `mixed` (both over the window) or `unknown`.
    pub source: String,
    /// When the counters began and up to when they are accounted.
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupEnergy {
    pub namespace: String,
    /// `None` for machines in no group.
    pub group: Option<String>,
    pub machines: u32,
    #[serde(flatten)]
    pub figures: Figures,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The window's start (`None`: since the counters began) and end.
    pub from: Option<Timestamp>,
    pub to: Timestamp,
    pub machines: Vec<MachineEnergy>,
    pub groups: Vec<GroupEnergy>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (machines, source_desc, empty) = match &args.filename {
        Some(path) => {
            let name = path.display().to_string();
            let empty = format!("No resources found in {name}.");
            (super::fsm::load_file(path)?, name, empty)
        }
        None => {
            let (machines, scope) = super::fsm::load_cluster(&args.kube).await?;
            let empty = super::table::no_resources(&scope);
            (machines, scope.to_string(), empty)
        }
    };
    let selected: Vec<&Machine> = if args.nodes.is_empty() {
        machines.iter().collect()
    } else {
        super::lookup::find_all(&machines, &args.nodes, &source_desc).map_err(InspectError::from)?
    };
    // "Now" is read here, at the edge.
    let now = Timestamp::now();
    let from = match args.since {
        None => None,
        Some(d) => {
            let d = SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX);
            Some(now.checked_sub(d).unwrap_or(Timestamp::MIN))
        }
    };
    let report = report(&selected, from, now);
    let all_namespaces = args.kube.all_namespaces && args.filename.is_none();
    let text = render(&report, args.output, args.no_headers, all_namespaces)
        .map_err(InspectError::Render)?;
    super::print_stdout(&text)?;
    if report.machines.is_empty() && matches!(args.output, Output::Table | Output::Wide) {
        eprintln!("{empty}");
    }
    Ok(())
}

/// The report over `[from, now]` (`from: None`: since the counters began).
pub fn report(machines: &[&Machine], from: Option<Timestamp>, now: Timestamp) -> Report {
    let mut rows: Vec<MachineEnergy> = machines.iter().map(|m| machine(m, from, now)).collect();
    rows.sort_by(|a, b| (&a.namespace, &a.group, &a.name).cmp(&(&b.namespace, &b.group, &b.name)));
    let mut groups: Vec<GroupEnergy> = Vec::new();
    for row in &rows {
        match groups
            .iter_mut()
            .find(|g| g.namespace == row.namespace && g.group == row.group)
        {
            Some(g) => {
                g.machines += 1;
                g.figures = add(&g.figures, &row.figures);
            }
            None => groups.push(GroupEnergy {
                namespace: row.namespace.clone(),
                group: row.group.clone(),
                machines: 1,
                figures: row.figures.clone(),
            }),
        }
    }
    // Boots per day is per machine: a group shows its machines' mean.
    for g in &mut groups {
        g.figures.boots_per_day = g.figures.boots_per_day.map(|b| b / f64::from(g.machines));
    }
    Report {
        from,
        to: now,
        machines: rows,
        groups,
    }
}

/// `c` brought from `until` up to `now` at the draw last accounted, in the machine's phase now.
fn up_to_now(c: &EnergyCounters, m: &Machine, now: Timestamp) -> EnergyCounters {
    let Some(until) = c.until.filter(|u| *u < now) else {
        return c.clone();
    };
    let lifecycle = m.lifecycle();
    let phase = energy::PowerPhase::of(
        lifecycle.phase(),
        crate::operator::machine::observed_power(&lifecycle),
    );
    let watts = match c.source {
        Some(EnergySource::Unknown) => None,
        _ => c.watts,
    };
    let span = energy::Span {
        from: until,
        to: now,
        phase,
        watts,
        metered: c.source == Some(EnergySource::Meter),
        baseline_watts: energy::baseline_draw(m.spec.watts.as_ref()),
        estimated: false,
    };
    // The price in force at the last write, held since (a time-of-use window that began
    // since is not known here).
    let tariff = c
        .currency
        .as_deref()
        .zip(c.price_per_kwh)
        .map(|(currency, price)| energy::Tariff::flat(price, currency));
    energy::accrue(c, &span, tariff.as_ref())
}

fn machine(m: &Machine, from: Option<Timestamp>, now: Timestamp) -> MachineEnergy {
    let counters = m.status.as_ref().and_then(|s| s.energy.as_deref());
    let empty = EnergyCounters::default();
    let projected = counters.map(|c| up_to_now(c, m, now));
    let c = projected.as_ref().unwrap_or(&empty);
    let known =
        c.source != Some(EnergySource::Unknown) && (c.watt_hours > 0.0 || c.watts.is_some());
    let sum = window(c, from);
    let span_days = window_days(c, from, now);
    let kwh = known.then_some(sum.watt_hours / 1000.0);
    let currency = c.currency.clone();
    let figures = Figures {
        on_seconds: sum.on_seconds,
        off_seconds: sum.off_seconds,
        kwh,
        metered_kwh: sum.metered_watt_hours / 1000.0,
        baseline_kwh: sum.baseline_watt_hours / 1000.0,
        saved_kwh: kwh.map(|k| sum.baseline_watt_hours / 1000.0 - k),
        cost: (known && currency.is_some()).then_some(sum.cost),
        saved_cost: (known && currency.is_some()).then_some(sum.baseline_cost - sum.cost),
        currency,
        boots: sum.boots,
        boots_per_day: span_days.filter(|d| *d > 0.0).map(|d| sum.boots / d),
        estimated_seconds: sum.estimated_seconds,
        prorated: sum.prorated,
        unknown: u32::from(!known),
        watts: if known { c.watts } else { None },
    };
    let source = if !known {
        "unknown"
    } else if figures.metered_kwh <= 0.0 {
        "model"
    } else if kwh.is_some_and(|k| figures.metered_kwh >= k * 0.995) {
        "meter"
    } else {
        "mixed"
    };
    MachineEnergy {
        namespace: m.metadata.namespace.clone().unwrap_or_default(),
        name: m.metadata.name.clone().unwrap_or_default(),
        group: m.group().map(str::to_owned),
        source: source.to_owned(),
        since: c.since,
        until: c.until,
        figures,
    }
}

/// Sums of the counters over a window (fractions where a day was pro-rated).
#[derive(Clone, Debug, Default, PartialEq)]
struct Sum {
    on_seconds: f64,
    off_seconds: f64,
    watt_hours: f64,
    metered_watt_hours: f64,
    baseline_watt_hours: f64,
    cost: f64,
    baseline_cost: f64,
    boots: f64,
    estimated_seconds: f64,
    prorated: bool,
}

/// The counters over `[from, until]`: the totals when the window reaches back to when they
/// began, else the days inside it, the first pro-rated.
fn window(c: &EnergyCounters, from: Option<Timestamp>) -> Sum {
    let whole = match (from, c.since) {
        (None, _) => true,
        (Some(from), Some(since)) => from <= since,
        (Some(_), None) => true,
    };
    if whole {
        return Sum {
            on_seconds: c.on_seconds as f64,
            off_seconds: c.off_seconds as f64,
            watt_hours: c.watt_hours,
            metered_watt_hours: c.metered_watt_hours,
            baseline_watt_hours: c.baseline_watt_hours,
            cost: c.cost,
            baseline_cost: c.baseline_cost,
            boots: c.boots as f64,
            estimated_seconds: c.estimated_seconds as f64,
            prorated: false,
        };
    }
    let Some(from) = from else {
        return Sum::default();
    };
    let mut sum = Sum::default();
    for day in &c.days {
        let Some((start, end)) = day_span(day, c) else {
            continue;
        };
        let fraction = if from <= start {
            1.0
        } else if from >= end {
            0.0
        } else {
            sum.prorated = true;
            end.duration_since(from).as_secs_f64() / end.duration_since(start).as_secs_f64()
        };
        if fraction > 0.0 {
            add_day(&mut sum, day, fraction);
        }
    }
    sum
}

/// The part of a day bucket's UTC day the counters cover (the first day from `since`, the last
/// to `until`).
fn day_span(day: &EnergyDay, c: &EnergyCounters) -> Option<(Timestamp, Timestamp)> {
    let date: jiff::civil::Date = day.date.parse().ok()?;
    let start = date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    let end = start.checked_add(24.hours()).ok()?;
    let start = c.since.map_or(start, |s| s.max(start));
    let end = c.until.map_or(end, |u| u.min(end));
    (end > start).then_some((start, end))
}

fn add_day(sum: &mut Sum, day: &EnergyDay, f: f64) {
    sum.on_seconds += day.on_seconds as f64 * f;
    sum.off_seconds += day.off_seconds as f64 * f;
    sum.watt_hours += day.watt_hours * f;
    sum.metered_watt_hours += day.metered_watt_hours * f;
    sum.baseline_watt_hours += day.baseline_watt_hours * f;
    sum.cost += day.cost * f;
    sum.baseline_cost += day.baseline_cost * f;
    sum.boots += day.boots as f64 * f;
}

/// The window's length in days, for boots per day: from its start (or when the counters began)
/// to when they are accounted.
fn window_days(c: &EnergyCounters, from: Option<Timestamp>, now: Timestamp) -> Option<f64> {
    let start = match (from, c.since) {
        (Some(f), Some(s)) => f.max(s),
        (None, Some(s)) => s,
        (Some(f), None) => f,
        (None, None) => return None,
    };
    let end = c.until.unwrap_or(now);
    (end > start).then(|| end.duration_since(start).as_secs_f64() / 86_400.0)
}

fn add(a: &Figures, b: &Figures) -> Figures {
    let opt = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => Some(x + y),
        (x, y) => x.or(y),
    };
    let same_currency = a.currency == b.currency || a.cost.is_none() || b.cost.is_none();
    let currency = if a.cost.is_some() {
        &a.currency
    } else {
        &b.currency
    };
    Figures {
        on_seconds: a.on_seconds + b.on_seconds,
        off_seconds: a.off_seconds + b.off_seconds,
        kwh: opt(a.kwh, b.kwh),
        metered_kwh: a.metered_kwh + b.metered_kwh,
        baseline_kwh: a.baseline_kwh + b.baseline_kwh,
        saved_kwh: opt(a.saved_kwh, b.saved_kwh),
        // Costs in different currencies are not added up.
        cost: if same_currency {
            opt(a.cost, b.cost)
        } else {
            None
        },
        saved_cost: if same_currency {
            opt(a.saved_cost, b.saved_cost)
        } else {
            None
        },
        currency: if same_currency {
            currency.clone()
        } else {
            None
        },
        boots: a.boots + b.boots,
        // Summed here; `report` divides a group's by its machines.
        boots_per_day: opt(a.boots_per_day, b.boots_per_day),
        estimated_seconds: a.estimated_seconds + b.estimated_seconds,
        prorated: a.prorated || b.prorated,
        unknown: a.unknown + b.unknown,
        watts: opt(a.watts, b.watts),
    }
}

/// The report in the chosen format.
pub fn render(
    report: &Report,
    output: Output,
    no_headers: bool,
    all_namespaces: bool,
) -> Result<String, super::table::RenderError> {
    match output {
        Output::Json => serde_json::to_string_pretty(report)
            .map(|s| s + "\n")
            .map_err(|e| Box::new(e) as super::table::RenderError),
        Output::Yaml => {
            crate::yaml::to_string(report).map_err(|e| Box::new(e) as super::table::RenderError)
        }
        Output::Table | Output::Wide => Ok(render_tables(
            report,
            Style {
                wide: output == Output::Wide,
                no_headers,
            },
            all_namespaces,
        )),
    }
}

fn render_tables(report: &Report, style: Style, all_namespaces: bool) -> String {
    if report.machines.is_empty() {
        return String::new();
    }
    let figure_columns = || {
        vec![
            Column::new("watts").right(),
            Column::new("on").right(),
            Column::new("kwh").right(),
            Column::new("saved-kwh").right(),
            Column::new("cost").right(),
            Column::new("saved").right(),
            Column::new("boots/day").right(),
            Column::new("metered-kwh").right().wide_only(),
            Column::new("baseline-kwh").right().wide_only(),
            Column::new("boots").right().wide_only(),
            Column::new("estimated").right().wide_only(),
        ]
    };
    let mut columns = Vec::new();
    if all_namespaces {
        columns.push(Column::new("namespace"));
    }
    columns.extend([
        Column::new("name"),
        Column::new("group"),
        Column::new("source"),
    ]);
    columns.extend(figure_columns());
    let mut machines = Table::new(columns);
    for m in &report.machines {
        let mut cells = Vec::new();
        if all_namespaces {
            cells.push(m.namespace.clone());
        }
        cells.extend([
            m.name.clone(),
            m.group.clone().unwrap_or_else(|| "-".to_owned()),
            m.source.clone(),
        ]);
        cells.extend(figure_cells(&m.figures));
        machines.row(cells);
    }
    let mut columns = Vec::new();
    if all_namespaces {
        columns.push(Column::new("namespace"));
    }
    columns.extend([Column::new("group"), Column::new("machines").right()]);
    columns.extend(figure_columns());
    let mut groups = Table::new(columns);
    for g in &report.groups {
        let mut cells = Vec::new();
        if all_namespaces {
            cells.push(g.namespace.clone());
        }
        let machines = if g.figures.unknown > 0 {
            format!("{} ({} unknown)", g.machines, g.figures.unknown)
        } else {
            g.machines.to_string()
        };
        cells.extend([g.group.clone().unwrap_or_else(|| "-".to_owned()), machines]);
        cells.extend(figure_cells(&g.figures));
        groups.row(cells);
    }
    let mut out = machines.render(style);
    out.push('\n');
    out.push_str(&groups.render(style));
    out
}

fn figure_cells(f: &Figures) -> Vec<String> {
    let approx = if f.prorated { "~" } else { "" };
    let money = |v: Option<f64>| match (v, &f.currency) {
        (Some(v), Some(c)) => format!("{approx}{v:.2} {c}"),
        _ => "-".to_owned(),
    };
    let kwh =
        |v: Option<f64>| v.map_or_else(|| "unknown".to_owned(), |v| format!("{approx}{v:.3}"));
    vec![
        f.watts
            .map_or_else(|| "-".to_owned(), |w| format!("{w:.0} W")),
        format!("{approx}{:.1}h", f.on_seconds / 3600.0),
        kwh(f.kwh),
        kwh(f.saved_kwh),
        money(f.cost),
        money(f.saved_cost),
        f.boots_per_day
            .map_or_else(|| "-".to_owned(), |b| format!("{b:.1}")),
        format!("{approx}{:.3}", f.metered_kwh),
        format!("{approx}{:.3}", f.baseline_kwh),
        format!("{approx}{:.0}", f.boots),
        format!("{:.1}h", f.estimated_seconds / 3600.0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::api::{EnergyCounters, EnergyDay, EnergySource};
    use crate::operator::machine::PowerState;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn day(date: &str, wh: f64, on_hours: u64, boots: u64, cost: f64) -> EnergyDay {
        EnergyDay {
            date: date.into(),
            watt_hours: wh,
            baseline_watt_hours: 24.0 * 10.0,
            on_seconds: on_hours * 3600,
            off_seconds: (24 - on_hours) * 3600,
            boots,
            cost,
            baseline_cost: 24.0 * 10.0 / 1000.0 * 0.30,
            ..EnergyDay::default()
        }
    }

    /// Two whole UTC days at 10 W idle: 100 Wh and 60 Wh used of the 240 Wh each always-on
    /// baseline, 0.30 EUR per kWh.
    fn two_days() -> EnergyCounters {
        let days = vec![
            day("2026-12-01", 100.0, 8, 2, 0.03),
            day("2026-12-02", 60.0, 4, 1, 0.018),
        ];
        EnergyCounters {
            since: Some(ts("2026-12-01T00:00:00Z")),
            until: Some(ts("2026-12-03T00:00:00Z")),
            on_seconds: 12 * 3600,
            off_seconds: 36 * 3600,
            watt_hours: 160.0,
            baseline_watt_hours: 480.0,
            boots: 3,
            cost: 0.048,
            baseline_cost: 0.144,
            currency: Some("EUR".into()),
            price_per_kwh: Some(0.30),
            watts: Some(2.0),
            source: Some(EnergySource::Model),
            days,
            ..EnergyCounters::default()
        }
    }

    fn with_energy(name: &str, group: &str, energy: EnergyCounters) -> Machine {
        let mut m = Machine::test(name)
            .namespace("lab")
            .group(group)
            .desired(PowerState::Off)
            .build();
        m.status.get_or_insert_default().energy = Some(Box::new(energy));
        m
    }

    fn report_of(machines: &[Machine], from: Option<&str>) -> Report {
        let refs: Vec<&Machine> = machines.iter().collect();
        report(&refs, from.map(ts), ts("2026-12-03T00:00:00Z"))
    }

    #[test]
    fn without_a_window_the_totals_are_exact() {
        let r = report_of(&[with_energy("m1", "g", two_days())], None);
        let f = &r.machines[0].figures;
        assert_eq!(f.kwh, Some(0.16));
        assert_eq!(f.saved_kwh, Some(0.48 - 0.16));
        assert!((f.cost.unwrap() - 0.048).abs() < 1e-12);
        assert!((f.saved_cost.unwrap() - 0.096).abs() < 1e-12);
        assert_eq!(f.on_seconds, 12.0 * 3600.0);
        assert_eq!(f.boots_per_day, Some(1.5));
        assert!(!f.prorated);
        assert_eq!(r.machines[0].source, "model");
    }

    #[test]
    fn a_window_of_whole_days_sums_those_days() {
        let r = report_of(
            &[with_energy("m1", "g", two_days())],
            Some("2026-12-02T00:00:00Z"),
        );
        let f = &r.machines[0].figures;
        assert_eq!(f.kwh, Some(0.06));
        assert_eq!(f.boots, 1.0);
        assert_eq!(f.on_seconds, 4.0 * 3600.0);
        assert!(!f.prorated);
    }

    #[test]
    fn the_day_a_window_starts_in_is_prorated_and_marked() {
        // 36 hours back: half of the first day, all of the second.
        let r = report_of(
            &[with_energy("m1", "g", two_days())],
            Some("2026-12-01T12:00:00Z"),
        );
        let f = &r.machines[0].figures;
        assert!((f.kwh.unwrap() - (0.05 + 0.06)).abs() < 1e-12);
        assert_eq!(f.boots, 2.0);
        assert!(f.prorated);
        let text = render_tables(&r, Style::default(), false);
        assert!(text.contains("~0.110"), "{text}");
    }

    #[test]
    fn a_window_reaching_before_the_counters_began_is_the_totals() {
        let r = report_of(
            &[with_energy("m1", "g", two_days())],
            Some("2026-11-01T00:00:00Z"),
        );
        assert_eq!(r.machines[0].figures.kwh, Some(0.16));
        assert!(!r.machines[0].figures.prorated);
    }

    #[test]
    fn a_machine_without_a_model_is_unknown_not_zero() {
        let unknown = EnergyCounters {
            source: Some(EnergySource::Unknown),
            on_seconds: 3600,
            boots: 1,
            since: Some(ts("2026-12-02T00:00:00Z")),
            until: Some(ts("2026-12-03T00:00:00Z")),
            ..EnergyCounters::default()
        };
        let r = report_of(
            &[
                with_energy("m1", "g", two_days()),
                with_energy("m2", "g", unknown),
            ],
            None,
        );
        let m2 = &r.machines[1];
        assert_eq!((m2.source.as_str(), m2.figures.kwh), ("unknown", None));
        assert_eq!(m2.figures.cost, None);
        let g = &r.groups[0];
        assert_eq!((g.machines, g.figures.unknown), (2, 1));
        // The group's energy is its known machines'; boots per day the machines' mean.
        assert_eq!(g.figures.kwh, Some(0.16));
        assert_eq!(g.figures.boots_per_day, Some((1.5 + 1.0) / 2.0));
        let text = render_tables(&r, Style::default(), false);
        assert!(text.contains("2 (1 unknown)"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("m2") && l.contains("unknown"))
        );
    }

    #[test]
    fn costs_in_different_currencies_are_not_added() {
        let mut usd = two_days();
        usd.currency = Some("USD".into());
        let r = report_of(
            &[
                with_energy("m1", "g", two_days()),
                with_energy("m2", "g", usd),
            ],
            None,
        );
        assert_eq!(r.groups[0].figures.cost, None);
        assert_eq!(r.groups[0].figures.kwh, Some(0.32));
    }

    #[test]
    fn metered_energy_names_its_source() {
        let mut metered = two_days();
        metered.metered_watt_hours = 160.0;
        let mut mixed = two_days();
        mixed.metered_watt_hours = 80.0;
        let r = report_of(
            &[
                with_energy("m1", "g", metered),
                with_energy("m2", "g", mixed),
            ],
            None,
        );
        assert_eq!(r.machines[0].source, "meter");
        assert_eq!(r.machines[1].source, "mixed");
    }

    /// A machine asleep since its last write: the day since is counted at its standby draw,
    /// against an always-on baseline at its idle draw, at the price in force at that write.
    #[test]
    fn a_sleeping_machine_is_brought_up_to_now() {
        let mut m = with_energy("m1", "g", two_days());
        m.spec.watts = Some(crate::operator::api::Watts {
            idle: Some(10.0),
            standby: Some(2.0),
            ..Default::default()
        });
        m.status.get_or_insert_default().lifecycle.phase =
            Some(crate::operator::machine::Phase::Off);
        let now = ts("2026-12-04T00:00:00Z");
        let r = report(&[&m], None, now);
        let f = &r.machines[0].figures;
        assert_eq!(f.off_seconds, (36.0 + 24.0) * 3600.0);
        assert!((f.kwh.unwrap() - (0.16 + 0.048)).abs() < 1e-9, "{f:?}");
        assert!((f.baseline_kwh - (0.48 + 0.24)).abs() < 1e-9, "{f:?}");
        // 0.30 per kWh at the last write.
        assert!(
            (f.cost.unwrap() - (0.048 + 0.048 * 0.30)).abs() < 1e-9,
            "{f:?}"
        );
        assert_eq!(r.machines[0].until, Some(now));
    }

    #[test]
    fn json_carries_the_window_and_both_lists() {
        let r = report_of(
            &[with_energy("m1", "g", two_days())],
            Some("2026-12-02T00:00:00Z"),
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&r, Output::Json, false, false).unwrap()).unwrap();
        assert_eq!(json["from"], "2026-12-02T00:00:00Z");
        assert_eq!(json["machines"][0]["kwh"], 0.06);
        assert_eq!(json["groups"][0]["machines"], 1);
    }
}
