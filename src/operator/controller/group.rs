//! The group controller: counts of the members by phase, the resolved size bounds and a Ready
//! condition in Group status, written only when they change. It never powers anything: deleting
//! a Group leaves its machines as they are (docs/pitfalls.md, pitfall 23).
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource as _, ResourceExt as _};

use super::{Context, Error, FIELD_MANAGER};
use crate::operator::api::{
    CONDITION_BOOT_TIMEOUT_BELOW_PROVISION, CONDITION_READY, Group, GroupStatus, Health, Machine,
    condition, upsert_condition,
};
use crate::operator::machine::{Phase, PowerState};
use crate::operator::provider::inventory::CA_DEFAULT_MAX_NODE_PROVISION;
use crate::operator::provider::warnings::{GROUP_WARNING_CONDITIONS, group_warnings};

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

/// The [`CONDITION_BOOT_TIMEOUT_BELOW_PROVISION`] condition's status, reason and message:
/// False when a member's `bootTimeout` plus [`BOOT_TIMEOUT_MARGIN`] exceeds the group's
/// provision time (its `maxNodeProvisionTime`, else CA's default). Members whose bootTimeout
/// does not parse are left to their own InvalidSpec condition; so is a Group whose
/// maxNodeProvisionTime does not parse (CA's default is assumed).
pub fn boot_timeout_check(group: &Group, members: &[Arc<Machine>]) -> (bool, &'static str, String) {
    let set = group
        .autoscaling_options()
        .ok()
        .and_then(|o| o.max_node_provision_time);
    let provision = set.unwrap_or(CA_DEFAULT_MAX_NODE_PROVISION);
    let source = if set.is_some() {
        "the Group's maxNodeProvisionTime"
    } else {
        "CA's default --max-node-provision-time"
    };
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
    let (boot_ok, boot_reason, boot_message) = boot_timeout_check(&g, &members);
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
    if old == new {
        return Ok(Action::await_change());
    }
    let api: Api<Group> = Api::namespaced(ctx.client.clone(), &ns);
    let value = serde_json::to_value(&new).map_err(|source| Error::Json {
        what: "group status",
        source,
    })?;
    let patch = serde_json::json!({ "status": value });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(&g.name_any(), &params, &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!("writing status of {}", g.object_ref())))?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (ok, reason, message) = boot_timeout_check(&g, &members(&[("m1", None)]));
        assert!(ok, "{message}");
        assert_eq!(reason, "BootTimeoutBelowProvisionTime");
        assert!(message.contains("15m"), "{message}");
    }

    #[test]
    fn a_boot_timeout_not_a_minute_below_the_provision_time_is_named() {
        let g = Group::test("g").namespace("lab").build();
        let ms = members(&[("m1", Some("14m30s")), ("m2", None), ("m3", Some("20m"))]);
        let (ok, reason, message) = boot_timeout_check(&g, &ms);
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
        let (ok, _, message) = boot_timeout_check(&g, &members(&[("m1", Some("14m"))]));
        assert!(ok, "{message}");
    }

    #[test]
    fn the_groups_max_node_provision_time_is_the_limit() {
        let g = Group::test("g")
            .namespace("lab")
            .spec_with(|s| s.max_node_provision_time = Some("5m".into()))
            .build();
        let (ok, _, message) = boot_timeout_check(&g, &members(&[("m1", None)]));
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
        let (ok, _, message) = boot_timeout_check(&g, &members(&[("m1", Some("20m"))]));
        assert!(ok, "{message}");
    }
}
