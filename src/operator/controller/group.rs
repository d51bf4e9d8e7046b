//! The group controller: counts of the members by phase, the resolved size bounds and a Ready
//! condition in Group status, written only when they change. Deleting a Group leaves its
//! machines as they are (docs/pitfalls.md, pitfall 23). The one thing it powers on: when a
//! schedule window raises the minimum above the machines wanted on, it wants spares on up to
//! that minimum (docs/ca-contract.md, "Schedule windows"), and it wakes at each window edge.
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource as _, ResourceExt as _};

use super::{Context, Error, FIELD_MANAGER};
use crate::operator::api::{
    CONDITION_BOOT_TIMEOUT_BELOW_PROVISION, CONDITION_LEARNED_BOOT_BELOW_PROVISION,
    CONDITION_READY, Group, GroupBoot, GroupStatus, Health, LEARNED_BOOT_SHARE, Machine,
    ScheduleStatus, condition, find_condition, upsert_condition,
};
use crate::operator::machine::{BootStats, Phase, PowerState};
use crate::operator::policy::maintenance;
use crate::operator::policy::schedule::{InForce, Schedule, in_force};
use crate::operator::provider::warnings::{GROUP_WARNING_CONDITIONS, group_warnings};
use crate::operator::provider::{Provider, ops};

/// Group condition: `spec.paused` is true (since its lastTransitionTime; the message names who
/// paused it: `policy::maintenance::paused_by`).
pub const CONDITION_PAUSED: &str = "Paused";

/// Who paused `g`: [`maintenance::paused_by`] on the cached Group, else on the Group read from
/// the API server (the cache drops managedFields, where the field manager of `spec.paused` is).
async fn paused_by(g: &Group, ctx: &Context) -> Option<String> {
    if let Some(by) = maintenance::paused_by(&g.metadata) {
        return Some(by);
    }
    let api: Api<Group> = Api::namespaced(ctx.client.clone(), &g.namespace()?);
    let fresh = api.get(&g.name_any()).await.ok()?;
    maintenance::paused_by(&fresh.metadata)
}

pub fn error_policy(_g: Arc<Group>, e: &Error, ctx: Arc<Context>) -> Action {
    if let Some(metrics) = &ctx.metrics {
        metrics.reconcile_error("group");
    }
    tracing::warn!(error = %crate::operator::error_chain(e), "reconciling a group failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The counts part of a Group's status from its members (pure).
pub fn counts(group: &Group, members: &[Arc<Machine>]) -> GroupStatus {
    let mut s = GroupStatus {
        members: members.len() as i32,
        ..GroupStatus::default()
    };
    let bounds = group.size_bounds(members.len());
    s.min_size = Some(bounds.min as i32);
    s.max_size = Some(bounds.max as i32);
    for m in members {
        if m.desired_power() == PowerState::On {
            s.target += 1;
        }
        match m.lifecycle().phase() {
            Phase::Ready => s.ready += 1,
            Phase::PoweringOn | Phase::Booting => s.powering_on += 1,
            Phase::PoweringOff => s.powering_off += 1,
            Phase::Failed => s.failed += 1,
            Phase::Off => s.off += 1,
            Phase::Unknown => {}
        }
    }
    s
}

/// How much sooner than CA's provision time a member's boot must time out: the operator
/// records a failed power-on at its boot deadline, CA gives up at `maxNodeProvisionTime` after
/// the scale-up and cancels it (DecreaseTargetSize, recorded as a failure by the provider).
pub const BOOT_TIMEOUT_MARGIN: SignedDuration = SignedDuration::from_mins(1);

/// The provision time a group's machines must register within: the Group's
/// `maxNodeProvisionTime`, else `ca_flag` (the `--max-node-provision-time` CA runs with, given
/// to the operator), and where it came from. A maxNodeProvisionTime that does not parse is left
/// to the Group's InvalidSpec condition (the flag is assumed).
pub fn provision_time(group: &Group, ca_flag: SignedDuration) -> (SignedDuration, &'static str) {
    match group
        .autoscaling_options()
        .ok()
        .and_then(|o| o.max_node_provision_time)
    {
        Some(set) => (set, "the Group's maxNodeProvisionTime"),
        None => (ca_flag, "CA's --max-node-provision-time"),
    }
}

/// The [`CONDITION_BOOT_TIMEOUT_BELOW_PROVISION`] condition's status, reason and message:
/// False when a member's `bootTimeout` (the learned one with `auto`) plus
/// [`BOOT_TIMEOUT_MARGIN`] exceeds the group's provision time ([`provision_time`]). Members
/// whose bootTimeout does not parse are left to their own InvalidSpec condition.
pub fn boot_timeout_check(
    group: &Group,
    members: &[Arc<Machine>],
    ca_flag: SignedDuration,
) -> (bool, &'static str, String) {
    let (provision, source) = provision_time(group, ca_flag);
    let mut late: Vec<String> = members
        .iter()
        .filter_map(|m| {
            let boot = m.boot_timeout().ok()?;
            let end = boot.checked_add(BOOT_TIMEOUT_MARGIN)?;
            (end > provision).then(|| format!("{} (bootTimeout {boot:#})", m.object_ref()))
        })
        .collect();
    late.sort();
    if late.is_empty() {
        return (
            true,
            "BootTimeoutBelowProvisionTime",
            format!(
                "every member's bootTimeout ends at least {BOOT_TIMEOUT_MARGIN:#} before the provision time {provision:#} ({source})"
            ),
        );
    }
    (
        false,
        "BootTimeoutNotBelowProvisionTime",
        format!(
            "{}: not at least {BOOT_TIMEOUT_MARGIN:#} below the provision time {provision:#} ({source}); CA gives up on the power-on before the operator does. Lower spec.bootTimeout or raise the Group's maxNodeProvisionTime",
            late.join(", ")
        ),
    )
}

/// p50/p95 over every recent boot of the members, and the slowest member by its own p95;
/// `None` before any member booted.
pub fn boot_summary(members: &[Arc<Machine>]) -> Option<GroupBoot> {
    let all: Vec<u32> = members
        .iter()
        .filter_map(|m| m.status.as_ref())
        .flat_map(|s| s.recent_boot_seconds.iter().copied())
        .collect();
    let pooled = BootStats::of(&all)?;
    let (slowest, slowest_stats) = members
        .iter()
        .filter_map(|m| Some((m, m.boot_stats()?)))
        .max_by(|(a, sa), (b, sb)| {
            sa.p95
                .cmp(&sb.p95)
                .then_with(|| b.name_any().cmp(&a.name_any()))
        })?;
    Some(GroupBoot {
        samples: i32::try_from(pooled.samples).unwrap_or(i32::MAX),
        p50_seconds: pooled.p50.as_secs(),
        p95_seconds: pooled.p95.as_secs(),
        slowest: slowest.name_any(),
        slowest_p95_seconds: slowest_stats.p95.as_secs(),
    })
}

/// The [`CONDITION_LEARNED_BOOT_BELOW_PROVISION`] condition: False when the slowest member's
/// learned p95 boot takes more than [`LEARNED_BOOT_SHARE`] of the provision time: CA counts a
/// machine still booting at the provision time as failed (`clusterstate` marks the scale-up
/// timed out, `core/static_autoscaler.go` `removeOldUnregisteredNodes` deletes it), so a
/// machine that is merely slow would be given up on.
pub fn learned_boot_check(
    boot: Option<&GroupBoot>,
    provision: SignedDuration,
    source: &str,
) -> (bool, &'static str, String) {
    let Some(boot) = boot else {
        return (
            true,
            "NoBootsRecorded",
            "no member has booted under the operator yet; the figures come with the first boots"
                .to_owned(),
        );
    };
    let limit = provision.as_secs_f64() * LEARNED_BOOT_SHARE;
    let p95 = boot.slowest_p95_seconds;
    if (p95 as f64) <= limit {
        return (
            true,
            "LearnedBootBelowProvisionTime",
            format!(
                "the slowest member, {}, boots in {p95}s (p95), within {:.0}% of the provision time {provision:#} ({source})",
                boot.slowest,
                LEARNED_BOOT_SHARE * 100.0
            ),
        );
    }
    (
        false,
        "SlowBoot",
        format!(
            "{} boots in {p95}s (p95), more than {:.0}% of the provision time {provision:#} ({source}): CA may give up on it while it is still booting. Raise the provision time (the Group's maxNodeProvisionTime and CA's flag) or make the machine boot faster",
            boot.slowest,
            LEARNED_BOOT_SHARE * 100.0
        ),
    )
}

pub async fn reconcile(g: Arc<Group>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = g.namespace().unwrap_or_default();
    let members: Vec<Arc<Machine>> = ctx
        .cache
        .machines()
        .state()
        .into_iter()
        .filter(|m| m.namespace().as_deref() == Some(ns.as_str()) && g.has_member(m))
        .collect();
    let old = g.status.clone().unwrap_or_default();
    let mut new = counts(&g, &members);
    new.conditions = old.conditions.clone();
    let generation = g.meta().generation;
    let now = Timestamp::now();
    // An unknown zone or a bad window is reported by validate() below (InvalidSpec).
    let schedule = Schedule::of_group(&g)
        .ok()
        .filter(|s| !s.windows.is_empty())
        .map(|s| in_force(&g.spec, &s, members.len(), now));
    if let Some(f) = &schedule {
        apply_schedule(&mut new, f);
        // A paused Group (`spec.paused`) gets no power action from the operator either.
        if f.min_size > u32::try_from(new.target).unwrap_or(0) && g.spec.paused != Some(true) {
            raise_to_min(&g, &ctx, f).await;
        }
    }
    let problems = g.validate();
    let (ok, reason, message) = if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        (false, "InvalidSpec", text.join("; "))
    } else if new.members == 0 {
        (
            false,
            "NoMembers",
            format!(
                "no Node CR in namespace {ns} has the label group={}",
                g.name_any()
            ),
        )
    } else {
        (
            true,
            "Members",
            format!(
                "{} machines: {} ready, {} powering on, {} powering off, {} off, {} failed",
                new.members, new.ready, new.powering_on, new.powering_off, new.off, new.failed
            ),
        )
    };
    upsert_condition(
        &mut new.conditions,
        condition(CONDITION_READY, ok, reason, message, generation, now),
    );
    // Paused: True while spec.paused, naming who paused it; its lastTransitionTime says
    // since when. A Group never paused has no such condition.
    let paused = g.spec.paused.unwrap_or(false);
    if paused || find_condition(&new.conditions, CONDITION_PAUSED).is_some() {
        let (reason, message) = if paused {
            (
                "Paused",
                maintenance::paused_message(paused_by(&g, &ctx).await.as_deref()),
            )
        } else {
            ("Resumed", String::new())
        };
        upsert_condition(
            &mut new.conditions,
            condition(CONDITION_PAUSED, paused, reason, message, generation, now),
        );
    }
    let ca_flag = ctx.settings.max_node_provision_time;
    let (boot_ok, boot_reason, boot_message) = boot_timeout_check(&g, &members, ca_flag);
    upsert_condition(
        &mut new.conditions,
        condition(
            CONDITION_BOOT_TIMEOUT_BELOW_PROVISION,
            boot_ok,
            boot_reason,
            boot_message,
            generation,
            now,
        ),
    );
    new.boot = boot_summary(&members);
    let (provision, source) = provision_time(&g, ca_flag);
    let (learned_ok, learned_reason, learned_message) =
        learned_boot_check(new.boot.as_ref(), provision, source);
    upsert_condition(
        &mut new.conditions,
        condition(
            CONDITION_LEARNED_BOOT_BELOW_PROVISION,
            learned_ok,
            learned_reason,
            learned_message,
            generation,
            now,
        ),
    );
    let inventory = ctx.provider.inventory();
    let warnings = group_warnings(&inventory, &ns, &g.name_any());
    let mut raised = Vec::new();
    for kind in GROUP_WARNING_CONDITIONS {
        let c = match warnings.iter().find(|w| w.condition_type == kind) {
            Some(w) => {
                let was = old
                    .conditions
                    .iter()
                    .any(|c| c.type_ == kind && c.status == "True" && c.message == w.message);
                if !was {
                    raised.push(w.clone());
                }
                condition(kind, true, w.reason, w.message.clone(), generation, now)
            }
            None => condition(kind, false, "NotApplicable", "", generation, now),
        };
        upsert_condition(&mut new.conditions, c);
    }
    new.health = Some(if !ok {
        Health::Unknown
    } else if new.failed > 0 {
        Health::Offline
    } else {
        Health::Healthy
    });
    new.observed_generation = generation;
    for w in raised {
        let ev = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: w.reason.to_owned(),
            note: Some(w.message),
            action: "Validate".to_owned(),
            secondary: None,
        };
        if let Err(e) = ctx
            .recorder
            .publish(&ev, &kube::Resource::object_ref(&*g, &()))
            .await
        {
            tracing::info!(group = %g.name_any(), error = %e, "could not record an Event");
        }
    }
    let mut wake = schedule.as_ref().and_then(|f| until_next(f, now));
    if schedule
        .as_ref()
        .is_some_and(|f| f.min_size > u32::try_from(new.target).unwrap_or(0))
    {
        // Below the minimum in force (raised just now, or spares held back by a failed
        // power-on): look again soon, as no member change may come.
        wake = Some(wake.map_or(BELOW_MIN_RECHECK, |w| w.min(BELOW_MIN_RECHECK)));
    }
    if old == new {
        return Ok(super::requeue(wake));
    }
    let api: Api<Group> = Api::namespaced(ctx.client.clone(), &ns);
    let mut value = serde_json::to_value(&new).map_err(|source| Error::Json {
        what: "group status",
        source,
    })?;
    clear_schedule_fields(&mut value);
    let patch = serde_json::json!({ "status": value });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(&g.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!("writing status of {}", g.object_ref())))?;
    Ok(super::requeue(wake))
}

/// `status.schedule` and the minimum in force from what the schedule puts in force.
pub fn apply_schedule(s: &mut GroupStatus, f: &InForce) {
    let min = i32::try_from(f.min_size).unwrap_or(i32::MAX);
    s.min_size = Some(min);
    s.schedule = Some(Box::new(ScheduleStatus {
        window: f.window.clone(),
        min_size: min,
        next_change: f.next.as_ref().map(|(t, _)| *t),
        next_window: f.next.as_ref().and_then(|(_, w)| w.clone()),
    }));
}

/// A merge patch keeps what it does not mention: writes the absent parts of `status.schedule`
/// (a window that ended, no next window, no schedule at all) as nulls so they are removed.
pub fn clear_schedule_fields(status: &mut serde_json::Value) {
    let Some(obj) = status.as_object_mut() else {
        return;
    };
    match obj.get_mut("schedule").and_then(|s| s.as_object_mut()) {
        Some(s) => {
            for field in ["window", "nextChange", "nextWindow"] {
                s.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        None => {
            obj.insert("schedule".to_owned(), serde_json::Value::Null);
        }
    }
}

/// How long until just after the schedule's next change (the reconcile then sees the new
/// window), or `None` when nothing changes within eight days.
pub fn until_next(f: &InForce, now: Timestamp) -> Option<Duration> {
    let (next, _) = f.next.as_ref()?;
    let wait = next.duration_since(now).max(SignedDuration::ZERO) + EDGE_MARGIN;
    Some(wait.unsigned_abs())
}

/// How soon a group below its minimum in force is looked at again.
const BELOW_MIN_RECHECK: Duration = Duration::from_secs(30);

/// How long after a window edge the group is reconciled: timers fire at or after their
/// deadline, this keeps the clock read at wake-up from landing a hair before the edge.
const EDGE_MARGIN: SignedDuration = SignedDuration::from_millis(200);

/// Wants spares on until the group's target reaches the minimum in force, through the same
/// bookkeeping as CA's IncreaseSize (`ops::raise_to_min`). Failures are logged: the next
/// reconcile (a member's change, or the next edge) tries again.
async fn raise_to_min(g: &Group, ctx: &Context, f: &InForce) {
    if ctx.ensure_leader().is_err() {
        return;
    }
    let inventory = ctx.provider.inventory();
    let ns = g.namespace().unwrap_or_default();
    let name = g.name_any();
    let Some(id) = inventory
        .groups()
        .find(|s| s.spec.namespace == ns && s.spec.name == name)
        .map(|s| s.spec.id.clone())
    else {
        return;
    };
    let provider = Provider::new(ctx.provider.clone());
    match provider
        .mutate(&id, |inv, now| ops::raise_to_min(inv, &id, now))
        .await
    {
        Ok(d) if d.is_noop() => {}
        Ok(d) => {
            let machines: Vec<String> = d.changes.iter().map(|c| c.machine.name.clone()).collect();
            let note = format!(
                "schedule window {} keeps {} on: powering on {} (target {} -> {})",
                f.window.as_deref().unwrap_or("(none)"),
                f.min_size,
                machines.join(", "),
                d.target_before,
                d.target_after
            );
            tracing::info!(group = %g.object_ref(), "{note}");
            let ev = kube::runtime::events::Event {
                type_: kube::runtime::events::EventType::Normal,
                reason: "ScheduleMinSize".to_owned(),
                note: Some(note),
                action: "PowerOn".to_owned(),
                secondary: None,
            };
            if let Err(e) = ctx
                .recorder
                .publish(&ev, &kube::Resource::object_ref(g, &()))
                .await
            {
                tracing::info!(group = %name, error = %e, "could not record an Event");
            }
        }
        Err(e) => {
            tracing::warn!(group = %g.object_ref(), error = %e, "could not power spares on for the schedule's minimum");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::provider::inventory::CA_DEFAULT_MAX_NODE_PROVISION as CA_DEFAULT;

    fn booted(name: &str, boots: &[u32]) -> Arc<Machine> {
        Arc::new(
            Machine::test(name)
                .namespace("lab")
                .group("g")
                .recent_boots(boots)
                .build(),
        )
    }

    fn members(timeouts: &[(&str, Option<&str>)]) -> Vec<Arc<Machine>> {
        timeouts
            .iter()
            .map(|(name, t)| {
                let m = Machine::test(name).namespace("lab").group("g");
                Arc::new(
                    match t {
                        Some(t) => m.boot_timeout(t),
                        None => m,
                    }
                    .build(),
                )
            })
            .collect()
    }

    #[test]
    fn default_boot_timeout_is_below_cas_default_provision_time() {
        let g = Group::test("g").namespace("lab").build();
        let (ok, reason, message) = boot_timeout_check(&g, &members(&[("m1", None)]), CA_DEFAULT);
        assert!(ok, "{message}");
        assert_eq!(reason, "BootTimeoutBelowProvisionTime");
        assert!(message.contains("15m"), "{message}");
    }

    #[test]
    fn a_boot_timeout_not_a_minute_below_the_provision_time_is_named() {
        let g = Group::test("g").namespace("lab").build();
        let ms = members(&[("m1", Some("14m30s")), ("m2", None), ("m3", Some("20m"))]);
        let (ok, reason, message) = boot_timeout_check(&g, &ms, CA_DEFAULT);
        assert!(!ok);
        assert_eq!(reason, "BootTimeoutNotBelowProvisionTime");
        assert!(
            message.contains("lab/m1") && message.contains("14m 30s"),
            "{message}"
        );
        assert!(
            message.contains("lab/m3") && message.contains("20m"),
            "{message}"
        );
        assert!(!message.contains("lab/m2"), "{message}");
        assert!(message.contains("provision time 15m"), "{message}");
        // 14m is exactly a minute below: fine.
        let (ok, _, message) = boot_timeout_check(&g, &members(&[("m1", Some("14m"))]), CA_DEFAULT);
        assert!(ok, "{message}");
    }

    #[test]
    fn the_groups_max_node_provision_time_is_the_limit() {
        let g = Group::test("g")
            .namespace("lab")
            .spec_with(|s| s.max_node_provision_time = Some("5m".into()))
            .build();
        let (ok, _, message) = boot_timeout_check(&g, &members(&[("m1", None)]), CA_DEFAULT);
        assert!(!ok);
        assert!(
            message.contains("lab/m1") && message.contains("bootTimeout 10m"),
            "{message}"
        );
        assert!(message.contains("maxNodeProvisionTime"), "{message}");
        let g = Group::test("g")
            .namespace("lab")
            .spec_with(|s| s.max_node_provision_time = Some("30m".into()))
            .build();
        let (ok, _, message) = boot_timeout_check(&g, &members(&[("m1", Some("20m"))]), CA_DEFAULT);
        assert!(ok, "{message}");
    }

    /// Without a Group setting, the operator's `--max-node-provision-time` is the limit.
    #[test]
    fn the_operators_provision_time_flag_is_the_default_limit() {
        let g = Group::test("g").namespace("lab").build();
        let ms = members(&[("m1", Some("14m"))]);
        let (ok, _, message) = boot_timeout_check(&g, &ms, SignedDuration::from_mins(20));
        assert!(ok, "{message}");
        assert!(message.contains("provision time 20m"), "{message}");
        assert!(
            message.contains("CA's --max-node-provision-time"),
            "{message}"
        );
    }

    #[test]
    fn the_summary_pools_every_boot_and_names_the_slowest_member() {
        assert_eq!(boot_summary(&[booted("m1", &[])]), None);
        let ms = [
            booted("m1", &[60, 70, 80]),
            booted("m2", &[300, 320]),
            booted("m3", &[]),
        ];
        let b = boot_summary(&ms).unwrap();
        assert_eq!((b.samples, b.p50_seconds, b.p95_seconds), (5, 80, 320));
        assert_eq!((b.slowest.as_str(), b.slowest_p95_seconds), ("m2", 320));
    }

    #[test]
    fn a_slowest_p95_over_most_of_the_provision_time_is_named() {
        let provision = SignedDuration::from_mins(10);
        let ms = [booted("m1", &[60]), booted("m2", &[470, 490])];
        let (ok, reason, message) = learned_boot_check(boot_summary(&ms).as_ref(), provision, "x");
        assert!(!ok);
        assert_eq!(reason, "SlowBoot");
        assert!(
            message.contains("m2 boots in 490s") && message.contains("80%"),
            "{message}"
        );
        // 480s is exactly 80% of 10m: comfortable enough.
        let ms = [booted("m2", &[480])];
        let (ok, _, message) = learned_boot_check(boot_summary(&ms).as_ref(), provision, "x");
        assert!(ok, "{message}");
        let (ok, reason, _) = learned_boot_check(None, provision, "x");
        assert_eq!((ok, reason), (true, "NoBootsRecorded"));
    }

    #[test]
    fn status_schedule_shows_the_window_in_force_and_the_next_change() {
        let next: Timestamp = "2026-12-07T17:00:00Z".parse().unwrap();
        let f = InForce {
            min_size: 2,
            window: Some("workday".into()),
            warm_spares: None,
            next: Some((next, None)),
        };
        let mut s = GroupStatus {
            min_size: Some(0),
            ..GroupStatus::default()
        };
        apply_schedule(&mut s, &f);
        assert_eq!(s.min_size, Some(2));
        assert_eq!(
            s.schedule.as_deref(),
            Some(&ScheduleStatus {
                window: Some("workday".into()),
                min_size: 2,
                next_change: Some(next),
                next_window: None,
            })
        );
        let now: Timestamp = "2026-12-07T16:59:00Z".parse().unwrap();
        assert_eq!(
            until_next(&f, now),
            Some(Duration::from_secs(60) + EDGE_MARGIN.unsigned_abs())
        );
        // Already past (a late reconcile): at once, plus the margin.
        let late: Timestamp = "2026-12-07T17:00:05Z".parse().unwrap();
        assert_eq!(until_next(&f, late), Some(EDGE_MARGIN.unsigned_abs()));
        let none = InForce {
            next: None,
            ..f.clone()
        };
        assert_eq!(until_next(&none, now), None);
    }

    #[test]
    fn the_status_patch_clears_what_the_schedule_no_longer_has() {
        let f = InForce {
            min_size: 1,
            window: None,
            warm_spares: None,
            next: None,
        };
        let mut s = GroupStatus::default();
        apply_schedule(&mut s, &f);
        let mut v = serde_json::to_value(&s).unwrap();
        clear_schedule_fields(&mut v);
        assert_eq!(
            v["schedule"],
            serde_json::json!({"minSize": 1, "window": null, "nextChange": null, "nextWindow": null})
        );
        let mut v = serde_json::to_value(GroupStatus::default()).unwrap();
        clear_schedule_fields(&mut v);
        assert_eq!(v["schedule"], serde_json::Value::Null);
        assert!(v.as_object().unwrap().contains_key("schedule"));
    }
}
