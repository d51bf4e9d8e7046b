//! Validation: the file as written (`format.rs`) into the model the engine runs
//! (`model.rs`). One function per section of the file; each error names the field (its
//! line is found in the text) and says what to write instead.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::format::{
    AutoscalerFile, DaemonSetSpec, Electricity, Expander, GroupDoc, MachineDoc, MachineSimulation,
    MaintenanceFile, ScenarioFile,
};
use super::model::{
    AutoscalerConfig, GroupModel, MachineModel, MaintenanceModel, Scenario, SoftOff, default_start,
    driver_action_time,
};
use super::{ScenarioError, TraceSource};
use crate::operator::api::{
    Direction, FieldError, GROUP_LABEL, Group, GroupSpec, Machine, MachineSpec, PowerDriver,
    QuietHours, WarmSpares, Watts, Wear, parse_duration,
};
use crate::operator::calendar::Weekly;
use crate::operator::machine::PowerState;
use crate::operator::policy::schedule::{Schedule, ScheduleError};
use crate::operator::policy::wear;
use crate::sim::locate::locate;
use crate::sim::schedule::{Quiet, QuietRule};
use crate::sim::units::{DAY, Distribution, Millis, SECOND, parse_cpu, parse_memory};
use crate::sim::workload::{
    Arrivals, Controller, DrainTraits, FOREVER, Hours, PodTemplate, TraceArrivals, Workload,
    WorkloadSpec, parse_trace,
};
use jiff::tz::TimeZone;

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    /// Groups and machines came from a cluster, not from `text`.
    objects_from_cluster: bool,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
        let field = field.into();
        let from_cluster = self.objects_from_cluster
            && (field.starts_with("groups") || field.starts_with("machines"));
        let (line, column) = match locate(self.text, &field) {
            Some((l, c)) if !from_cluster => (Some(l), Some(c)),
            _ => (None, None),
        };
        let mut message = message.into();
        if from_cluster {
            message.push_str(
                " (object read from the cluster: fix the Group/Node CR, or give the value in the scenario's top-level `simulation:` block)",
            );
        }
        ScenarioError {
            file: if from_cluster {
                "cluster".to_owned()
            } else {
                self.file.to_owned()
            },
            line,
            column,
            field,
            message,
        }
    }

    /// An API field error whose `field` starts with our path prefix; its message (which
    /// starts with the field) is kept as the API module words it.
    fn field_err(&self, e: FieldError) -> ScenarioError {
        let field = match &e {
            FieldError::Duration { field, .. }
            | FieldError::Threshold { field, .. }
            | FieldError::Decimal { field, .. }
            | FieldError::Invalid { field, .. } => field.clone(),
        };
        let text = e.to_string();
        let message = text
            .strip_prefix(&format!("{field}: "))
            .unwrap_or(&text)
            .to_owned();
        self.err(field, message)
    }
}

fn quantity<'a>(map: &'a crate::operator::api::FlatMap<Quantity>, key: &str) -> Option<&'a str> {
    map.get(key).map(|q| q.0.as_str())
}

/// Validates a parsed file. `objects_from_cluster`: its groups and machines were read from a
/// cluster, so errors about them point there rather than at a line of `text`.
pub(super) fn scenario(
    file: &str,
    text: &str,
    objects_from_cluster: bool,
    raw: ScenarioFile,
    traces: &dyn TraceSource,
) -> Result<Scenario, ScenarioError> {
    let cx = &Ctx {
        file,
        text,
        objects_from_cluster,
    };
    if raw.duration.0 == 0 {
        return Err(cx.err("duration", "must be longer than 0s, e.g. \"168h\""));
    }
    electricity(cx, &raw.electricity)?;
    let autoscaler = autoscaler_config(cx, &raw.autoscaler)?;
    let (mut groups, by_name) = groups(cx, raw.groups, &autoscaler)?;
    let machines = machines(cx, raw.machines, &raw.simulation, &mut groups, &by_name)?;
    size_bounds(cx, &mut groups)?;
    let workloads = workloads(cx, raw.workload, traces)?;
    let start = raw.start.unwrap_or_else(default_start);
    let mut electricity = raw.electricity;
    electricity.start_of_day =
        u64::try_from(start.as_millisecond().rem_euclid(DAY as i64)).unwrap_or(0);
    let (daemonset_cpu, daemonset_memory) = daemon_sets(cx, &raw.daemon_sets, &machines)?;
    let ignored = ignored_fields(&groups);
    let maintenance = maintenance(cx, &raw.maintenance, &machines, start, raw.duration.0)?;
    Ok(Scenario {
        name: raw.name.unwrap_or_else(|| cx.file.to_owned()),
        description: raw.description,
        seed: raw.seed.unwrap_or(1),
        duration: raw.duration.0,
        start,
        electricity,
        autoscaler,
        scheduler: raw.scheduler,
        groups,
        machines,
        workloads,
        daemonset_cpu,
        daemonset_memory,
        ignored,
        maintenance,
    })
}

/// `electricity:` prices are non-negative; time-of-use windows lie within one day and do not
/// overlap.
fn electricity(cx: &Ctx, e: &Electricity) -> Result<(), ScenarioError> {
    if !(e.price_per_kwh.is_finite() && e.price_per_kwh >= 0.0) {
        return Err(cx.err(
            "electricity.pricePerKWh",
            "must be a non-negative number, e.g. 0.30",
        ));
    }
    for (i, t) in e.time_of_use.iter().enumerate() {
        let at = format!("electricity.timeOfUse[{i}]");
        if !(t.price_per_kwh.is_finite() && t.price_per_kwh >= 0.0) {
            return Err(cx.err(
                format!("{at}.pricePerKWh"),
                "must be a non-negative number, e.g. 0.40",
            ));
        }
        if t.from.0 >= t.to.0 || t.to.0 > DAY {
            return Err(cx.err(
                at,
                "a window is `from` before `to` within one day, e.g. {from: 7h, to: 23h}; split windows that cross midnight",
            ));
        }
        if e.time_of_use[..i]
            .iter()
            .any(|o| o.from.0 < t.to.0 && t.from.0 < o.to.0)
        {
            return Err(cx.err(at, "overlaps an earlier window"));
        }
    }
    Ok(())
}

/// Group (and machine) index by `(namespace, name)`.
type ByName = BTreeMap<(String, String), usize>;

/// `groups:`: at least one, names unique per namespace, autoscaling options valid, and every
/// group the `priority` expander lists exists. Sizes are set once the members are known
/// ([`size_bounds`]).
fn groups(
    cx: &Ctx,
    docs: Vec<GroupDoc>,
    autoscaler: &AutoscalerConfig,
) -> Result<(Vec<GroupModel>, ByName), ScenarioError> {
    let mut groups = Vec::with_capacity(docs.len());
    let mut by_name = ByName::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let at = format!("groups[{i}]");
        check_kind(
            cx,
            &at,
            doc.api_version.as_deref(),
            doc.kind.as_deref(),
            "Group",
        )?;
        let (namespace, name) = object_name(cx, &at, &doc.metadata)?;
        if by_name
            .insert((namespace.clone(), name.clone()), i)
            .is_some()
        {
            return Err(cx.err(
                format!("{at}.metadata.name"),
                format!("a second Group named {name:?}; Group names must be unique"),
            ));
        }
        // Checked here for an error with its line; the CA model reads the options through
        // the provider (`NodeGroupGetOptions`).
        doc.spec
            .autoscaling_options(&format!("{at}."))
            .map_err(|e| cx.field_err(e))?;
        let priority = autoscaler.priorities.get(&name).copied().unwrap_or(0);
        let (schedule, quiet) = group_calendar(cx, &at, &doc.spec)?;
        let group = Group {
            metadata: doc.metadata,
            spec: doc.spec,
            status: None,
        };
        groups.push(GroupModel {
            name,
            min: 0,
            max: 0,
            priority,
            members: Vec::new(),
            group,
            schedule,
            quiet,
        });
    }
    if groups.is_empty() {
        return Err(cx.err("groups", "at least one Group is needed"));
    }
    for name in autoscaler.priorities.keys() {
        if !groups.iter().any(|g| &g.name == name) {
            return Err(cx.err(
                "autoscaler.priorities",
                format!("priority for unknown Group {name:?}"),
            ));
        }
    }
    Ok((groups, by_name))
}

/// A Group's `timeZone` and `schedule` (parsed as the operator parses them), `warmSpares` and
/// quiet hours.
fn group_calendar(
    cx: &Ctx,
    at: &str,
    spec: &GroupSpec,
) -> Result<(Schedule, Quiet), ScenarioError> {
    let schedule = Schedule::of_spec(spec, &format!("{at}.")).map_err(|e| match e {
        ScheduleError::Zone(e) | ScheduleError::Window(e) => cx.field_err(e),
    })?;
    if let Some(w) = &spec.warm_spares {
        warm_spares(cx, &format!("{at}.spec.warmSpares"), w)?;
    }
    for (i, w) in spec.schedule.iter().enumerate() {
        if let Some(ws) = &w.warm_spares {
            warm_spares(cx, &format!("{at}.spec.schedule[{i}].warmSpares"), ws)?;
        }
        if w.min_size.is_some_and(|m| m < 0) {
            return Err(cx.err(
                format!("{at}.spec.schedule[{i}].minSize"),
                "must be 0 or more machines, e.g. 2",
            ));
        }
    }
    let quiet = match &spec.wear {
        Some(w) => {
            wear_limit(cx, &format!("{at}.spec.wear"), w)?;
            quiet(cx, &format!("{at}.spec.wear.quietHours"), &w.quiet_hours)?
        }
        None => Quiet::default(),
    };
    Ok((schedule, quiet))
}

/// `warmSpares`: a count of 0 or more, and a shape that parses.
fn warm_spares(cx: &Ctx, at: &str, w: &WarmSpares) -> Result<(), ScenarioError> {
    if w.count < 0 {
        return Err(cx.err(
            format!("{at}.count"),
            "must be 0 (off) or more placeholder pods, e.g. 1",
        ));
    }
    if let Some(q) = &w.cpu
        && parse_cpu(&q.0).is_none_or(|c| c == 0)
    {
        return Err(cx.err(
            format!("{at}.cpu"),
            format!(
                "{:?} is not a CPU quantity above zero like \"2\" or \"1500m\"",
                q.0
            ),
        ));
    }
    if let Some(q) = &w.memory
        && parse_memory(&q.0).is_none_or(|m| m == 0)
    {
        return Err(cx.err(
            format!("{at}.memory"),
            format!("{:?} is not a memory quantity above zero like \"4Gi\"", q.0),
        ));
    }
    Ok(())
}

/// `wear.maxBootsPerDay` is 1 or more.
fn wear_limit(cx: &Ctx, at: &str, w: &Wear) -> Result<(), ScenarioError> {
    if w.max_boots_per_day.is_some_and(|n| n < 1) {
        return Err(cx.err(
            format!("{at}.maxBootsPerDay"),
            "must be 1 or more power-ons per 24 hours, e.g. 4 (leave it out for no limit)",
        ));
    }
    Ok(())
}

/// Quiet hours: windows by the operator's calendar, `powerOnAfter` a duration.
fn quiet(cx: &Ctx, field: &str, list: &[QuietHours]) -> Result<Quiet, ScenarioError> {
    let windows = wear::quiet_windows(field, list).map_err(|e| cx.field_err(e))?;
    let mut rules = Vec::with_capacity(list.len());
    for (i, q) in list.iter().enumerate() {
        let power_on_after = match &q.power_on_after {
            None => None,
            Some(v) => {
                let f = format!("{field}[{i}].powerOnAfter");
                let d = parse_duration(&f, v).map_err(|e| cx.field_err(e))?;
                match u64::try_from(d.as_millis()) {
                    Ok(ms) if ms > 0 => Some(ms),
                    _ => {
                        return Err(
                            cx.err(f, format!("{v:?} must be longer than 0s, e.g. \"30m\""))
                        );
                    }
                }
            }
        };
        rules.push(QuietRule {
            no_power_off: q.no_power_off.unwrap_or(true),
            power_on_after,
        });
    }
    Ok(Quiet { windows, rules })
}

/// An object's `(namespace, name)`; the name is required.
fn object_name(
    cx: &Ctx,
    at: &str,
    metadata: &ObjectMeta,
) -> Result<(String, String), ScenarioError> {
    let Some(name) = metadata.name.clone().filter(|n| !n.is_empty()) else {
        return Err(cx.err(format!("{at}.metadata"), "metadata.name is required"));
    };
    Ok((metadata.namespace.clone().unwrap_or_default(), name))
}

/// `machines:`: at least one, each a valid machine of a known group (added to its members).
fn machines(
    cx: &Ctx,
    docs: Vec<MachineDoc>,
    defaults: &MachineSimulation,
    groups: &mut [GroupModel],
    by_name: &ByName,
) -> Result<Vec<MachineModel>, ScenarioError> {
    let mut machines = Vec::with_capacity(docs.len());
    let mut seen = ByName::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let at = format!("machines[{i}]");
        check_kind(
            cx,
            &at,
            doc.api_version.as_deref(),
            doc.kind.as_deref(),
            "Node",
        )?;
        let (namespace, name) = object_name(cx, &at, &doc.metadata)?;
        if seen.insert((namespace.clone(), name.clone()), i).is_some() {
            return Err(cx.err(
                format!("{at}.metadata.name"),
                format!("a second Node named {name:?}; names must be unique"),
            ));
        }
        let group = machine_group(cx, &at, &doc.metadata, &name, &namespace, groups, by_name)?;
        let m = machine(cx, &at, doc, name, group, defaults, groups)?;
        groups[group].members.push(i);
        machines.push(m);
    }
    if machines.is_empty() {
        return Err(cx.err("machines", "at least one Node (machine) is needed"));
    }
    Ok(machines)
}

/// The index of the group a machine's `GROUP_LABEL` label names, in its own namespace.
fn machine_group(
    cx: &Ctx,
    at: &str,
    metadata: &ObjectMeta,
    name: &str,
    namespace: &str,
    groups: &[GroupModel],
    by_name: &ByName,
) -> Result<usize, ScenarioError> {
    let group_name = metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(GROUP_LABEL))
        .cloned();
    let Some(group_name) = group_name else {
        return Err(cx.err(
            format!("{at}.metadata"),
            format!(
                "Node {name:?} has no label {GROUP_LABEL}=<group>; every simulated machine belongs to a Group"
            ),
        ));
    };
    let Some(&group) = by_name.get(&(namespace.to_owned(), group_name.clone())) else {
        return Err(cx.err(
            format!("{at}.metadata.labels.{GROUP_LABEL}"),
            format!(
                "no Group {group_name:?} in namespace {namespace:?}; groups are {}",
                groups
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    Ok(group)
}

/// One machine: its `simulation:` block over the defaults, its power driver's timings, its
/// capacity and its power draw.
fn machine(
    cx: &Ctx,
    at: &str,
    doc: MachineDoc,
    name: String,
    group: usize,
    defaults: &MachineSimulation,
    groups: &[GroupModel],
) -> Result<MachineModel, ScenarioError> {
    let sim = doc.simulation.or(defaults);
    let prefix = format!("{at}.");
    let soft_off = soft_off(cx, &prefix, &doc.spec, &sim)?;
    let action_time = |direction| {
        sim.power_action_time
            .unwrap_or_else(|| driver_action_time(&doc.spec, direction))
    };
    let (power_on_action_time, power_off_action_time) =
        (action_time(Direction::On), action_time(Direction::Off));
    doc.spec
        .boot_timeout(&prefix)
        .map_err(|e| cx.field_err(e))?;
    doc.spec
        .shutdown_timeout(&prefix)
        .map_err(|e| cx.field_err(e))?;
    let hourly_rate = doc
        .spec
        .hourly_rate(&prefix)
        .map_err(|e| cx.field_err(e))?
        .unwrap_or(0.0);
    let (cpu, memory, max_pods) = capacity(cx, at, &doc.spec, &sim)?;
    let watts = watts(cx, at, &doc.spec, &sim)?;
    // The operator annotates a member's Node for its own flag or its Group's.
    let scale_down_disabled =
        doc.spec.scale_down_disabled() || groups[group].group.scale_down_disabled();
    let initially_on = doc.spec.power_state == PowerState::On;
    let recent_boots = doc.recent_boots;
    // The Node CR's `wear` over its Group's, field by field.
    let own = doc.spec.wear.as_deref();
    if let Some(w) = own {
        wear_limit(cx, &format!("{at}.spec.wear"), w)?;
    }
    let group_wear = groups[group].group.spec.wear.as_ref();
    let max_boots_per_day = own
        .and_then(|w| w.max_boots_per_day)
        .or_else(|| group_wear.and_then(|w| w.max_boots_per_day))
        .and_then(|n| u32::try_from(n).ok());
    let quiet = match own.filter(|w| !w.quiet_hours.is_empty()) {
        Some(w) => quiet(cx, &format!("{at}.spec.wear.quietHours"), &w.quiet_hours)?,
        None => groups[group].quiet.clone(),
    };
    let machine = Machine {
        metadata: doc.metadata,
        spec: doc.spec,
        status: None,
    };
    Ok(MachineModel {
        machine,
        name,
        group,
        cpu,
        memory,
        max_pods,
        watts,
        boot_watts: sim.boot_watts,
        hourly_rate,
        boot_time: sim.boot_time.unwrap_or(Distribution::Fixed(90 * SECOND)),
        shutdown_time: sim
            .shutdown_time
            .unwrap_or(Distribution::Fixed(20 * SECOND)),
        power_on_action_time,
        power_off_action_time,
        soft_off,
        power_on_failure: sim.power_on_failure.unwrap_or_default().0,
        never_boots: sim.never_boots.unwrap_or_default().0,
        power_off_failure: sim.power_off_failure.unwrap_or_default().0,
        scale_down_disabled,
        initially_on,
        recent_boots,
        max_boots_per_day,
        quiet,
    })
}

/// A Redfish or IPMI power-off is soft: confirmed by readback, forced after `forceOffAfter`.
fn soft_off(
    cx: &Ctx,
    prefix: &str,
    spec: &MachineSpec,
    sim: &MachineSimulation,
) -> Result<Option<SoftOff>, ScenarioError> {
    Ok(match spec.power_driver(prefix, Direction::Off) {
        Ok(PowerDriver::Redfish(r)) => Some(SoftOff {
            force_off_after: r
                .force_off_after(&format!("{prefix}spec.power.powerOff.redfish"))
                .map_err(|e| cx.field_err(e))?
                .as_millis()
                .try_into()
                .unwrap_or(0),
            ignored: sim.graceful_shutdown_ignored.unwrap_or_default().0,
        }),
        Ok(PowerDriver::Ipmi(i)) => Some(SoftOff {
            force_off_after: i
                .force_off_after(&format!("{prefix}spec.power.powerOff.ipmi"))
                .map_err(|e| cx.field_err(e))?
                .as_millis()
                .try_into()
                .unwrap_or(0),
            ignored: sim.graceful_shutdown_ignored.unwrap_or_default().0,
        }),
        _ => None,
    })
}

fn quantity_err(cx: &Ctx, at: &str, key: &str, q: &str, like: &str) -> ScenarioError {
    cx.err(
        format!("{at}.spec.capacity.{key}"),
        format!("{q:?} is not a {like}"),
    )
}

/// CPU (millicores), memory (bytes) and pods: `simulation.capacity` over `spec.capacity`;
/// CPU and memory are required, pods default to 110 (the kubelet's default); all above zero.
fn capacity(
    cx: &Ctx,
    at: &str,
    spec: &MachineSpec,
    sim: &MachineSimulation,
) -> Result<(u64, u64, u32), ScenarioError> {
    let cap = sim.capacity.clone().unwrap_or_default();
    let cpu = match (cap.cpu, quantity(&spec.capacity, "cpu")) {
        (Some(c), _) => c.0,
        (None, Some(q)) => parse_cpu(q).ok_or_else(|| {
            quantity_err(cx, at, "cpu", q, "CPU quantity like \"4\" or \"3500m\"")
        })?,
        (None, None) => {
            return Err(cx.err(
                format!("{at}.spec"),
                "no CPU capacity: set spec.capacity.cpu (e.g. \"4\") or simulation.capacity.cpu",
            ));
        }
    };
    let memory = match (cap.memory, quantity(&spec.capacity, "memory")) {
        (Some(m), _) => m.0,
        (None, Some(q)) => parse_memory(q)
            .ok_or_else(|| quantity_err(cx, at, "memory", q, "memory quantity like \"16Gi\""))?,
        (None, None) => {
            return Err(cx.err(
                format!("{at}.spec"),
                "no memory capacity: set spec.capacity.memory (e.g. \"16Gi\") or simulation.capacity.memory",
            ));
        }
    };
    let max_pods = match (cap.pods, quantity(&spec.capacity, "pods")) {
        (Some(p), _) => p,
        (None, Some(q)) => q
            .parse()
            .map_err(|_| quantity_err(cx, at, "pods", q, "whole number of pods like \"110\""))?,
        (None, None) => 110,
    };
    if cpu == 0 || memory == 0 || max_pods == 0 {
        return Err(cx.err(
            format!("{at}.spec.capacity"),
            "capacity must be more than zero CPU, memory and pods",
        ));
    }
    Ok((cpu, memory, max_pods))
}

/// Power draw: `simulation.watts` over `spec.watts`, each non-negative; idle is required.
fn watts(
    cx: &Ctx,
    at: &str,
    spec: &MachineSpec,
    sim: &MachineSimulation,
) -> Result<Watts, ScenarioError> {
    let spec_watts = spec.watts.unwrap_or_default();
    let sim_watts = sim.watts.unwrap_or_default();
    let watts = Watts {
        idle: sim_watts.idle.or(spec_watts.idle),
        busy: sim_watts.busy.or(spec_watts.busy),
        standby: sim_watts.standby_watts().or(spec_watts.standby_watts()),
        legacy_off: None,
        // `simulation.bootWatts` (the older name) is `simulation.watts.boot`.
        boot: sim_watts.boot.or(sim.boot_watts).or(spec_watts.boot),
        shutdown: sim_watts.shutdown.or(spec_watts.shutdown),
    };
    for (field, v) in [
        ("idle", watts.idle),
        ("busy", watts.busy),
        ("standby", watts.standby),
        ("boot", watts.boot),
        ("shutdown", watts.shutdown),
    ] {
        if let Some(v) = v
            && !(v.is_finite() && v >= 0.0)
        {
            return Err(cx.err(
                format!("{at}.simulation.watts.{field}"),
                format!("{v} is not a non-negative number of watts"),
            ));
        }
    }
    if let Some(v) = sim.boot_watts
        && !(v.is_finite() && v >= 0.0)
    {
        return Err(cx.err(
            format!("{at}.simulation.bootWatts"),
            format!("{v} is not a non-negative number of watts"),
        ));
    }
    if watts.idle.is_none() {
        return Err(cx.err(
            format!("{at}.spec"),
            "no idle power draw: set spec.watts.idle (e.g. 12) or simulation.watts.idle",
        ));
    }
    Ok(watts)
}

/// Each group's min and max size, checked against its member count.
fn size_bounds(cx: &Ctx, groups: &mut [GroupModel]) -> Result<(), ScenarioError> {
    for (i, g) in groups.iter_mut().enumerate() {
        g.group
            .spec
            .check_size_bounds(&format!("groups[{i}]."), g.members.len())
            .map_err(|e| cx.field_err(e))?;
        let bounds = g.group.size_bounds(g.members.len());
        g.min = bounds.min;
        g.max = bounds.max;
        for (j, w) in g.group.spec.schedule.iter().enumerate() {
            if let Some(m) = w.min_size
                && u32::try_from(m).is_ok_and(|m| m > bounds.max)
            {
                return Err(cx.err(
                    format!("groups[{i}].spec.schedule[{j}].minSize"),
                    format!(
                        "{m} is more than the group's {} machine(s) it may power on (maxSize or members); lower it to {} or add machines",
                        bounds.max, bounds.max
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `maintenance:` entries (offsets from the start), then each Node CR's own
/// `spec.maintenance` (timestamps, e.g. a machine read from a cluster while in maintenance).
fn maintenance(
    cx: &Ctx,
    entries: &[MaintenanceFile],
    machines: &[MachineModel],
    start: jiff::Timestamp,
    duration: Millis,
) -> Result<Vec<MaintenanceModel>, ScenarioError> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let at = format!("maintenance[{i}]");
        let (ns, name) = match e.machine.split_once('/') {
            Some((ns, n)) => (Some(ns), n),
            None => (None, e.machine.as_str()),
        };
        let found: Vec<usize> = machines
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                m.name == name
                    && ns.is_none_or(|ns| {
                        m.machine.metadata.namespace.as_deref().unwrap_or("") == ns
                    })
            })
            .map(|(j, _)| j)
            .collect();
        let machine = match found.as_slice() {
            [j] => *j,
            [] => {
                return Err(cx.err(
                    format!("{at}.machine"),
                    format!(
                        "no machine {:?}; machines are {}",
                        e.machine,
                        machines
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            _ => {
                return Err(cx.err(
                    format!("{at}.machine"),
                    format!(
                        "{:?} names machines in several namespaces; write namespace/name",
                        e.machine
                    ),
                ));
            }
        };
        if let Some(to) = e.to
            && to.0 <= e.from.0
        {
            return Err(cx.err(
                format!("{at}.to"),
                "must be after `from`, e.g. {from: 50h, to: 54h} (leave `to` out for the rest of the run)",
            ));
        }
        if e.from.0 >= duration {
            return Err(cx.err(
                format!("{at}.from"),
                "starts after the end of the run; make it shorter than `duration`",
            ));
        }
        out.push(MaintenanceModel {
            machine,
            from: e.from.0,
            to: e.to.map(|t| t.0),
            power: e.power,
            reason: e.reason.clone(),
        });
    }
    let offset = |t: jiff::Timestamp| {
        u64::try_from((t.as_millisecond() - start.as_millisecond()).max(0)).unwrap_or(0)
    };
    for (j, m) in machines.iter().enumerate() {
        let Some(spec) = &m.machine.spec.maintenance else {
            continue;
        };
        let from = spec.since.map_or(0, offset);
        let to = spec.until.map(offset);
        if to.is_some_and(|t| t <= from) || from >= duration {
            continue;
        }
        out.push(MaintenanceModel {
            machine: j,
            from,
            to,
            power: spec.power.unwrap_or_default(),
            reason: spec.reason.clone(),
        });
    }
    out.sort_by_key(|m| m.from);
    Ok(out)
}

/// `workload:`: at least one.
fn workloads(
    cx: &Ctx,
    specs: Vec<WorkloadSpec>,
    traces: &dyn TraceSource,
) -> Result<Vec<Workload>, ScenarioError> {
    let mut workloads = Vec::with_capacity(specs.len());
    for (i, w) in specs.into_iter().enumerate() {
        let at = format!("workload[{i}]");
        workloads.push(workload(cx, &at, i, w, traces)?);
    }
    if workloads.is_empty() {
        return Err(cx.err("workload", "at least one workload is needed"));
    }
    Ok(workloads)
}

/// `daemonSets:`: the CPU and memory every node gives them, which must leave room on every
/// machine.
fn daemon_sets(
    cx: &Ctx,
    daemon_sets: &[DaemonSetSpec],
    machines: &[MachineModel],
) -> Result<(u64, u64), ScenarioError> {
    let cpu = daemon_sets.iter().map(|d| d.cpu.0).sum();
    let memory = daemon_sets.iter().map(|d| d.memory.0).sum();
    for (i, m) in machines.iter().enumerate() {
        if m.cpu <= cpu || m.memory <= memory {
            return Err(cx.err(
                "daemonSets",
                format!(
                    "the DaemonSets request all of machine {}'s capacity (machines[{i}])",
                    m.name
                ),
            ));
        }
    }
    Ok((cpu, memory))
}

/// Group fields the simulation accepts but does not model, with why (the report lists them).
fn ignored_fields(groups: &[GroupModel]) -> Vec<String> {
    let mut ignored = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let spec = &g.group.spec;
        if spec.scale_down_gpu_utilization_threshold.is_some() {
            ignored.push(format!(
                "groups[{i}].spec.scaleDownGpuUtilizationThreshold: no GPUs are simulated"
            ));
        }
        if spec
            .remediation
            .as_ref()
            .is_some_and(|r| r.power_cycle_after.is_some())
        {
            ignored.push(format!(
                "groups[{i}].spec.remediation.powerCycleAfter: simulated Nodes never go NotReady while their machine runs"
            ));
        }
        if let Some(t) = &spec.template {
            if !t.labels.is_empty() {
                ignored.push(format!(
                    "groups[{i}].spec.template.labels: simulated pods have no node selectors"
                ));
            }
            if !t.taints.is_empty() {
                ignored.push(format!(
                    "groups[{i}].spec.template.taints: simulated pods tolerate every taint"
                ));
            }
        }
    }
    ignored
}

fn check_kind(
    cx: &Ctx,
    at: &str,
    api_version: Option<&str>,
    kind: Option<&str>,
    want: &str,
) -> Result<(), ScenarioError> {
    if let Some(v) = api_version
        && v != "infra.homecluster.dev/v1alpha1"
    {
        return Err(cx.err(
            format!("{at}.apiVersion"),
            format!("{v:?}: expected infra.homecluster.dev/v1alpha1"),
        ));
    }
    if let Some(k) = kind
        && k != want
    {
        return Err(cx.err(
            format!("{at}.kind"),
            format!("{k:?} in this list: expected {want}"),
        ));
    }
    Ok(())
}

/// `autoscaler:`: each flag as given, else CA's default.
fn autoscaler_config(cx: &Ctx, f: &AutoscalerFile) -> Result<AutoscalerConfig, ScenarioError> {
    let d = AutoscalerConfig::default();
    let c = AutoscalerConfig {
        scan_interval: f.scan_interval.map_or(d.scan_interval, |v| v.0),
        scale_down_unneeded_time: f
            .scale_down_unneeded_time
            .map_or(d.scale_down_unneeded_time, |v| v.0),
        scale_down_utilization_threshold: f
            .scale_down_utilization_threshold
            .unwrap_or(d.scale_down_utilization_threshold),
        scale_down_delay_after_add: f
            .scale_down_delay_after_add
            .map_or(d.scale_down_delay_after_add, |v| v.0),
        scale_down_delay_after_failure: f
            .scale_down_delay_after_failure
            .map_or(d.scale_down_delay_after_failure, |v| v.0),
        scale_down_delay_after_delete: f
            .scale_down_delay_after_delete
            .map_or(d.scale_down_delay_after_delete, |v| v.0),
        max_node_provision_time: f
            .max_node_provision_time
            .map_or(d.max_node_provision_time, |v| v.0),
        scale_down_enabled: f.scale_down_enabled.unwrap_or(d.scale_down_enabled),
        expander: f.expander.clone().unwrap_or(d.expander),
        priorities: f.priorities.clone(),
        backoff_initial: f
            .backoff
            .as_ref()
            .map_or(d.backoff_initial, |b| b.initial.0),
        backoff_max: f.backoff.as_ref().map_or(d.backoff_max, |b| b.max.0),
        backoff_reset: f
            .backoff
            .as_ref()
            .and_then(|b| b.reset_timeout)
            .map_or(d.backoff_reset, |v| v.0),
        max_nodes_total: f.max_nodes_total.unwrap_or(d.max_nodes_total),
        max_scale_down_parallelism: f
            .max_scale_down_parallelism
            .unwrap_or(d.max_scale_down_parallelism),
        max_drain_parallelism: f.max_drain_parallelism.unwrap_or(d.max_drain_parallelism),
        scale_down_unready_enabled: f
            .scale_down_unready_enabled
            .unwrap_or(d.scale_down_unready_enabled),
        scale_down_unready_time: f
            .scale_down_unready_time
            .map_or(d.scale_down_unready_time, |v| v.0),
        unremovable_node_recheck_timeout: f
            .unremovable_node_recheck_timeout
            .map_or(d.unremovable_node_recheck_timeout, |v| v.0),
        ignore_daemonsets_utilization: f
            .ignore_daemonsets_utilization
            .unwrap_or(d.ignore_daemonsets_utilization),
        skip_nodes_with_system_pods: f
            .skip_nodes_with_system_pods
            .unwrap_or(d.skip_nodes_with_system_pods),
        skip_nodes_with_local_storage: f
            .skip_nodes_with_local_storage
            .unwrap_or(d.skip_nodes_with_local_storage),
        skip_nodes_with_custom_controller_pods: f
            .skip_nodes_with_custom_controller_pods
            .unwrap_or(d.skip_nodes_with_custom_controller_pods),
        blocking_system_pod_disruption_timeout: f
            .blocking_system_pod_disruption_timeout
            .map_or(d.blocking_system_pod_disruption_timeout, |v| v.0),
        node_delete_delay_after_taint: f
            .node_delete_delay_after_taint
            .map_or(d.node_delete_delay_after_taint, |v| v.0),
    };
    check_autoscaler(cx, &c)?;
    Ok(c)
}

/// CA's own limits on its flags, and the `priority` expander needs its priorities.
fn check_autoscaler(cx: &Ctx, c: &AutoscalerConfig) -> Result<(), ScenarioError> {
    if c.scan_interval < 100 {
        return Err(cx.err(
            "autoscaler.scanInterval",
            "must be at least 100ms (CA's default is 10s)",
        ));
    }
    if !(0.0..=1.0).contains(&c.scale_down_utilization_threshold) {
        return Err(cx.err(
            "autoscaler.scaleDownUtilizationThreshold",
            format!(
                "{} is not between 0 and 1 (CA's default is 0.5)",
                c.scale_down_utilization_threshold
            ),
        ));
    }
    if c.backoff_initial > c.backoff_max {
        return Err(cx.err(
            "autoscaler.backoff",
            "initial backoff is longer than max; swap them",
        ));
    }
    if c.expander.contains(Expander::Priority) && c.priorities.is_empty() {
        return Err(cx.err(
            "autoscaler.priorities",
            "the priority expander needs priorities: {<group>: <number>}, higher wins",
        ));
    }
    Ok(())
}

/// One workload: exactly one kind of arrivals, a pod template (a trace gives its own pods),
/// and the traits CA's drain rules read.
fn workload(
    cx: &Ctx,
    at: &str,
    index: usize,
    w: WorkloadSpec,
    traces: &dyn TraceSource,
) -> Result<Workload, ScenarioError> {
    let kinds = [
        w.constant.is_some(),
        w.diurnal.is_some(),
        w.burst.is_some(),
        w.trace.is_some(),
        w.replicas.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if kinds != 1 {
        return Err(cx.err(
            at,
            format!(
                "workload {:?}: give exactly one of constant, diurnal, burst, trace or replicas (found {kinds})",
                w.name
            ),
        ));
    }
    let template = if w.trace.is_some() {
        None
    } else {
        Some(pod_template(cx, at, &w)?)
    };
    let workload_index = u16::try_from(index).unwrap_or(u16::MAX);
    let arrivals = arrivals(cx, at, workload_index, &w, traces)?;
    let hours = match &w.hours {
        None => None,
        Some(_) if w.trace.is_some() || w.replicas.is_some() => {
            return Err(cx.err(
                format!("{at}.hours"),
                "applies to constant, diurnal and burst arrivals; a trace gives its own times and replicas their own steps",
            ));
        }
        Some(h) => {
            let tz = match h.time_zone.as_deref() {
                None => TimeZone::UTC,
                Some(name) => TimeZone::get(name).map_err(|_| {
                    cx.err(
                        format!("{at}.hours.timeZone"),
                        format!(
                            "{name:?} is not a time zone; write an IANA name, e.g. Europe/Berlin"
                        ),
                    )
                })?,
            };
            let window = Weekly::parse(&format!("{at}.hours"), &h.days, &h.from, &h.to)
                .map_err(|e| cx.field_err(e.into()))?;
            Some(Hours { window, tz })
        }
    };
    Ok(Workload {
        drain: drain_traits(&w),
        name: w.name,
        arrivals,
        template,
        hours,
    })
}

/// The pods of a generated workload: requests and how long each runs (replicas run until the
/// count goes down).
fn pod_template(cx: &Ctx, at: &str, w: &WorkloadSpec) -> Result<PodTemplate, ScenarioError> {
    let Some(cpu) = w.cpu else {
        return Err(cx.err(
            at,
            format!("workload {:?}: cpu request missing, e.g. cpu: 500m", w.name),
        ));
    };
    let Some(memory) = w.memory else {
        return Err(cx.err(
            at,
            format!(
                "workload {:?}: memory request missing, e.g. memory: 1Gi",
                w.name
            ),
        ));
    };
    let duration = match (w.duration, w.replicas.is_some()) {
        (Some(_), true) => {
            return Err(cx.err(
                format!("{at}.duration"),
                format!(
                    "workload {:?}: replicas run until the count goes down; remove duration",
                    w.name
                ),
            ));
        }
        (None, true) => Distribution::Fixed(FOREVER),
        (Some(d), false) => d,
        (None, false) => {
            return Err(cx.err(
                at,
                format!(
                    "workload {:?}: duration missing, e.g. duration: 10m",
                    w.name
                ),
            ));
        }
    };
    Ok(PodTemplate {
        cpu: cpu.0,
        memory: memory.0,
        duration,
    })
}

/// What CA's drain rules read of the workload's pods; replicas default to a ReplicaSet's,
/// other workloads to a Job's.
fn drain_traits(w: &WorkloadSpec) -> DrainTraits {
    DrainTraits {
        kube_system: w.namespace.as_deref() == Some("kube-system"),
        controller: w.controller.unwrap_or(if w.replicas.is_some() {
            Controller::ReplicaSet
        } else {
            Controller::Job
        }),
        local_storage: w.local_storage.unwrap_or(false),
        safe_to_evict: w.safe_to_evict,
        pdb_max_unavailable: w.pdb.map(|p| p.max_unavailable),
    }
}

/// When the workload's pods arrive (exactly one kind is set; [`workload`] checked).
fn arrivals(
    cx: &Ctx,
    at: &str,
    workload_index: u16,
    w: &WorkloadSpec,
    traces: &dyn TraceSource,
) -> Result<Arrivals, ScenarioError> {
    if let Some(r) = &w.replicas {
        let steps: Vec<(Millis, u32)> = match (r.count, r.schedule.is_empty()) {
            (Some(c), true) => vec![(0, c)],
            (None, false) => r.schedule.iter().map(|s| (s.at.0, s.count)).collect(),
            _ => {
                return Err(cx.err(
                    format!("{at}.replicas"),
                    "give exactly one of count or schedule: [{at: 0h, count: 2}, ...]",
                ));
            }
        };
        if let Some(e) = r.every
            && steps.iter().any(|s| s.0 >= e.0)
        {
            return Err(cx.err(
                format!("{at}.replicas.schedule"),
                "every step's `at` must be shorter than `every`",
            ));
        }
        Ok(Arrivals::Replicas {
            steps,
            every: r.every.map(|e| e.0),
        })
    } else if let Some(c) = &w.constant {
        Ok(Arrivals::Constant { per_ms: c.rate.0 })
    } else if let Some(d) = &w.diurnal {
        if !(d.weekend_factor.is_finite() && d.weekend_factor >= 0.0) {
            return Err(cx.err(
                format!("{at}.diurnal.weekendFactor"),
                "must be a non-negative number, e.g. 0.5",
            ));
        }
        Ok(Arrivals::Diurnal {
            peak: d.peak_rate.0,
            trough: d.trough_rate.0,
            peak_at: d.peak_at.0,
            weekend_factor: d.weekend_factor,
        })
    } else if let Some(b) = &w.burst {
        Ok(Arrivals::Burst {
            at: b.at.0,
            every: b.every.map(|e| e.0),
            count: b.count,
            spread: b.spread.map_or(0, |s| s.0),
        })
    } else if let Some(t) = &w.trace {
        trace_arrivals(cx, at, workload_index, t, traces)
    } else {
        Err(cx.err(at, "no arrivals"))
    }
}

/// A trace's rows, from the file (read by the caller's [`TraceSource`]) or inline. A CSV error
/// names the trace file and its line.
fn trace_arrivals(
    cx: &Ctx,
    at: &str,
    workload_index: u16,
    t: &TraceArrivals,
    traces: &dyn TraceSource,
) -> Result<Arrivals, ScenarioError> {
    let rows = match (&t.file, &t.inline) {
        (Some(file), None) => {
            let field = format!("{at}.trace.file");
            let text = traces.read(file).map_err(|e| cx.err(field.clone(), e))?;
            parse_trace(&text, workload_index)
                .map_err(|e| cx.err(field, format!("CSV file {file:?} {e}")))?
        }
        (None, Some(inline)) => parse_trace(inline, workload_index)
            .map_err(|e| cx.err(format!("{at}.trace.inline"), format!("CSV {e}")))?,
        _ => {
            return Err(cx.err(format!("{at}.trace"), "give exactly one of file or inline"));
        }
    };
    Ok(Arrivals::Trace(rows))
}
