//! The group controller: counts of the members by phase, the resolved size bounds and a Ready
//! condition in Group status, written only when they change. It never powers anything: deleting
//! a Group leaves its machines as they are (docs/pitfalls.md, pitfall 23).
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource as _, ResourceExt as _};

use super::{Context, Error, FIELD_MANAGER};
use crate::operator::api::{
    CONDITION_READY, Group, GroupStatus, Health, Machine, condition, upsert_condition,
};
use crate::operator::machine::{Phase, PowerState};
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
    if let Some(metrics) = &ctx.metrics {
        let phases: Vec<(String, &'static str, i64)> = Phase::ALL
            .iter()
            .map(|p| {
                let n = members
                    .iter()
                    .filter(|m| m.lifecycle().phase() == *p)
                    .count();
                (g.name_any(), p.as_str(), n as i64)
            })
            .collect();
        metrics.set_machines_by_phase(&phases);
    }
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
