//! What a machine's status says after a reconcile, derived from what the reconcile found and
//! decided: the lifecycle, the Kubernetes Node, a providerID mismatch, a spec the drivers cannot
//! use. Pure: no API call, no clock (`now` is passed in).
use crate::operator::kube_node::KubeNode;
use jiff::{SignedDuration, Timestamp};

use super::{CONDITION_DRAINING, CONDITION_NODE_READY, CONDITION_POWER_METER};
use crate::operator::api::{
    CONDITION_DEPRECATED_FIELDS, CONDITION_IDENTITY_MISMATCH, CONDITION_INSECURE_TRANSPORT,
    CONDITION_INVALID_SPEC, CONDITION_POWER_FAILED, CONDITION_READY, Health, MachineSpec,
    MachineStatus, PowerSpec, REASON_CURRENT_FIELD_NAMES, condition, find_condition,
    remove_condition, upsert_condition,
};
use crate::operator::machine::{KubeEvent, Lifecycle, OperationKind, Phase, PowerState};
use crate::operator::meter::MeterState;
use crate::operator::node as node_side;
use crate::operator::trust::{CONDITION_NOT_PERMITTED, Refusal};

/// What the status is derived from.
pub(super) struct Facts<'a> {
    /// The lifecycle after the core's passes.
    pub lifecycle: &'a Lifecycle,
    /// `spec.powerState`.
    pub desired: PowerState,
    /// The Kubernetes Node as the reconcile found it.
    pub node: Option<&'a KubeNode>,
    /// The Node as it is now: after our patch of it, `None` once deleted. Its snapshot is kept.
    pub node_now: Option<&'a KubeNode>,
    /// The Node's providerID is not the machine's (what to say about it).
    pub mismatch: Option<&'a str>,
    /// The power driver of the operation in flight cannot be used (what is wrong).
    pub spec_error: Option<&'a str>,
    /// A drain ran in this reconcile, or was given up earlier and still stands.
    pub drained: bool,
    /// The Node CR's `metadata.generation`.
    pub generation: Option<i64>,
    pub now: Timestamp,
}

/// The new status and what goes with it.
#[derive(Debug)]
pub(super) struct Derived {
    pub status: MachineStatus,
    /// Events that the new status calls for (a providerID mismatch, once when it appears).
    pub events: Vec<KubeEvent>,
    /// The Node of a Ready machine went from Ready to NotReady in this status.
    pub node_went_not_ready: bool,
}

/// The status `status` (the stored one, plus what the passes' acts recorded: driver readbacks,
/// drain progress, boot times) becomes, given `facts`.
pub(super) fn derive(mut status: MachineStatus, facts: &Facts<'_>) -> Derived {
    let (lc, now, generation) = (facts.lifecycle, facts.now, facts.generation);
    let mut events = Vec::new();
    let node_was_ready = find_condition(&status.conditions, CONDITION_NODE_READY)
        .is_some_and(|c| c.status == "True");
    if !(facts.drained || lc.phase() == Phase::Ready && facts.desired == PowerState::Off) {
        // Not draining (any more): a given-up drain is forgotten once the machine moved on.
        upsert_condition(
            &mut status.conditions,
            condition(
                CONDITION_DRAINING,
                false,
                "NotDraining",
                "",
                generation,
                now,
            ),
        );
    }

    status.lifecycle = lc.clone();
    status.progress = crate::operator::machine::progress(lc);
    status.power_state = crate::operator::machine::observed_power(lc).or(status.power_state);
    let node_ready = facts.node.is_some_and(KubeNode::is_ready);
    status.health = Some(match lc.phase() {
        _ if node_ready => Health::Healthy,
        Phase::Off => Health::Offline,
        _ => Health::Unknown,
    });
    // The snapshot of a Node that is not the machine's would be a wrong one.
    if let Some(n) = facts.node_now.filter(|_| facts.mismatch.is_none()) {
        let snap = node_side::snapshot(n, now);
        if status
            .node
            .as_ref()
            .is_none_or(|old| !node_side::same_shape(old, &snap))
        {
            status.node = Some(Box::new(snap));
        }
    }
    let identity_changed = upsert_condition(
        &mut status.conditions,
        match facts.mismatch {
            Some(problem) => condition(
                CONDITION_IDENTITY_MISMATCH,
                true,
                "ProviderIDMismatch",
                problem,
                generation,
                now,
            ),
            None => condition(
                CONDITION_IDENTITY_MISMATCH,
                false,
                "Matches",
                "",
                generation,
                now,
            ),
        },
    );
    if let (Some(problem), true) = (facts.mismatch, identity_changed) {
        events.push(KubeEvent {
            reason: "ProviderIDMismatch",
            warning: true,
            message: problem.to_owned(),
        });
    }
    upsert_condition(
        &mut status.conditions,
        condition(
            CONDITION_READY,
            lc.phase() == Phase::Ready,
            lc.phase().as_str(),
            format!("phase {}", lc.phase()),
            generation,
            lc.phase_since.unwrap_or(now),
        ),
    );
    let failed = lc.phase() == Phase::Failed;
    upsert_condition(
        &mut status.conditions,
        condition(
            CONDITION_POWER_FAILED,
            failed,
            if failed { "PowerFailed" } else { "NoFailure" },
            if failed {
                lc.last_error.clone().unwrap_or_default()
            } else {
                String::new()
            },
            generation,
            now,
        ),
    );
    upsert_condition(
        &mut status.conditions,
        match facts.spec_error {
            Some(e) => condition(
                CONDITION_INVALID_SPEC,
                true,
                "DriverUnavailable",
                e,
                generation,
                now,
            ),
            None => condition(CONDITION_INVALID_SPEC, false, "Valid", "", generation, now),
        },
    );
    if let Some(n) = facts.node {
        upsert_condition(
            &mut status.conditions,
            condition(
                CONDITION_NODE_READY,
                node_ready,
                if node_ready {
                    "KubeletReady"
                } else {
                    "NodeNotReady"
                },
                format!("Kubernetes Node {}", n.name()),
                generation,
                now,
            ),
        );
    }
    status.observed_generation = generation;
    Derived {
        status,
        events,
        node_went_not_ready: lc.phase() == Phase::Ready
            && node_was_ready
            && facts.node.is_some()
            && !node_ready,
    }
}

/// The status of a machine whose spec cannot be acted on (a timeout that does not parse, a
/// Group whose remediation does not): said in a condition, nothing else touched.
pub(super) fn invalid_spec(
    mut status: MachineStatus,
    problem: String,
    generation: Option<i64>,
    now: Timestamp,
) -> MachineStatus {
    upsert_condition(
        &mut status.conditions,
        condition(
            CONDITION_INVALID_SPEC,
            true,
            "InvalidSpec",
            problem,
            generation,
            now,
        ),
    );
    status
}

/// An abnormal-true condition (`type_`) from what is wrong now (`problem`: its reason and
/// message, `None` when nothing is): True with them; False with `cleared_reason` only over an
/// earlier one, so a machine never concerned has no such condition. Returns the message when
/// the condition turns True, for the Warning Event that goes with it.
fn abnormal_condition(
    status: &mut MachineStatus,
    type_: &str,
    problem: Option<(&str, String)>,
    cleared_reason: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<String> {
    let was_true = find_condition(&status.conditions, type_).is_some_and(|c| c.status == "True");
    let Some((reason, message)) = problem else {
        if find_condition(&status.conditions, type_).is_some() {
            upsert_condition(
                &mut status.conditions,
                condition(type_, false, cleared_reason, "", generation, now),
            );
        }
        return None;
    };
    upsert_condition(
        &mut status.conditions,
        condition(type_, true, reason, message.as_str(), generation, now),
    );
    (!was_true).then_some(message)
}

/// The `NotPermitted` condition after the trust boundary's checks (`refusals`: every rule the
/// spec and the Kubernetes Node break, empty when none). Refused: True with the first refusal's
/// reason and a message listing all (field and fix), and a Warning Event when it turns True.
/// Permitted: False (reason `Permitted`) where it was there before.
pub(super) fn permission(
    mut status: MachineStatus,
    refusals: &[Refusal],
    generation: Option<i64>,
    now: Timestamp,
) -> (MachineStatus, Option<KubeEvent>) {
    let problem = refusals.first().map(|first| {
        let all: Vec<String> = refusals.iter().map(ToString::to_string).collect();
        (first.reason, all.join("; "))
    });
    let event = abnormal_condition(
        &mut status,
        CONDITION_NOT_PERMITTED,
        problem,
        "Permitted",
        generation,
        now,
    )
    .map(|message| KubeEvent {
        reason: CONDITION_NOT_PERMITTED,
        warning: true,
        message: format!("not acting on this machine: {message}"),
    });
    (status, event)
}

/// The `InsecureTransport` condition of a machine whose drivers send credentials in clear text
/// or to an unverified certificate (`PowerSpec::insecure_transport`), with a Warning Event when
/// it turns True.
pub(super) fn insecure_transport(
    status: &mut MachineStatus,
    power: Option<&PowerSpec>,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<KubeEvent> {
    let problem = power
        .and_then(PowerSpec::insecure_transport)
        .map(|found| (found.reason, found.message));
    abnormal_condition(
        status,
        CONDITION_INSECURE_TRANSPORT,
        problem,
        "CredentialsProtected",
        generation,
        now,
    )
    .map(|message| KubeEvent {
        reason: "InsecureTransport",
        warning: true,
        message,
    })
}

/// The `DeprecatedFields` condition of a machine whose spec still uses the old key names
/// (`MachineSpec::deprecated_fields`), with a Warning Event when it turns True, so the owner
/// learns the new names from `kubectl describe` without the machine acting any differently.
pub(super) fn deprecated_fields(
    status: &mut MachineStatus,
    spec: &MachineSpec,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<KubeEvent> {
    abnormal_condition(
        status,
        CONDITION_DEPRECATED_FIELDS,
        spec.deprecated_fields(),
        REASON_CURRENT_FIELD_NAMES,
        generation,
        now,
    )
    .map(|message| KubeEvent {
        reason: "DeprecatedFields",
        warning: true,
        message,
    })
}

/// The `PowerMeter` condition from the meter's state (`meter`: `None` without `spec.meter`,
/// `Some(None)` before its first read): True (`Reading`) while it answers, False
/// (`Unreachable`, with the poller's error) when it fails, absent without a meter. Changed
/// only when the state flips or the error changes, not on every reading.
pub(super) fn power_meter(
    status: &mut MachineStatus,
    meter: Option<Option<&MeterState>>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let c = match meter {
        None => {
            remove_condition(&mut status.conditions, CONDITION_POWER_METER);
            return;
        }
        Some(None) => return,
        Some(Some(MeterState::Ok(_))) => condition(
            CONDITION_POWER_METER,
            true,
            "Reading",
            "the meter answers; energy is counted from its readings",
            generation,
            now,
        ),
        Some(Some(MeterState::Failed { error, .. })) => condition(
            CONDITION_POWER_METER,
            false,
            "Unreachable",
            format!("{error}; using the spec.watts model"),
            generation,
            now,
        ),
    };
    upsert_condition(&mut status.conditions, c);
}

/// A power action that ended in one reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EndedAction {
    pub kind: OperationKind,
    /// From the operation's start (in status) to its end.
    pub took: SignedDuration,
    pub succeeded: bool,
}

/// The power action that ended between `before` and `after` (the lifecycle before and after a
/// reconcile): it reported success (its completion time is recorded), or it was running and
/// the machine failed. An action cancelled or overtaken (the Node came up first) did not end
/// on its own and is not counted.
pub(super) fn ended_action(
    before: &Lifecycle,
    after: &Lifecycle,
    now: Timestamp,
) -> Option<EndedAction> {
    let op = before
        .operation
        .as_ref()
        .filter(|o| o.completed.is_none())?;
    let same = after.operation.as_ref().filter(|o| o.id == op.id);
    let (end, succeeded) = match same.and_then(|o| o.completed) {
        Some(done) => (done, true),
        None if after.phase() == Phase::Failed && same.is_none() => (now, false),
        None => return None,
    };
    Some(EndedAction {
        kind: op.kind,
        took: end.duration_since(op.started),
        succeeded,
    })
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::operator::api::Condition;
    use crate::operator::machine::Operation;
    use crate::testing::NodeExt as _;

    fn t(secs: i64) -> Timestamp {
        Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1) + SignedDuration::from_secs(secs)
    }

    fn node(ready: bool) -> KubeNode {
        crate::testing::node("desktop-0")
            .ready_since(ready, t(0))
            .cached()
    }

    fn lifecycle(phase: Phase) -> Lifecycle {
        Lifecycle {
            phase: Some(phase),
            phase_since: Some(t(0)),
            ..Lifecycle::default()
        }
    }

    fn facts<'a>(lc: &'a Lifecycle, node: Option<&'a KubeNode>) -> Facts<'a> {
        Facts {
            lifecycle: lc,
            desired: PowerState::On,
            node,
            node_now: node,
            mismatch: None,
            spec_error: None,
            drained: false,
            generation: Some(3),
            now: t(60),
        }
    }

    fn cond<'a>(s: &'a MachineStatus, type_: &str) -> (&'a str, &'a str) {
        let c: &Condition = find_condition(&s.conditions, type_)
            .unwrap_or_else(|| panic!("no {type_} condition in {:?}", s.conditions));
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_ready_machine_with_a_ready_node_is_healthy_and_ready() {
        let (lc, n) = (lifecycle(Phase::Ready), node(true));
        let d = derive(MachineStatus::default(), &facts(&lc, Some(&n)));
        assert_eq!(d.status.health, Some(Health::Healthy));
        assert_eq!(cond(&d.status, CONDITION_READY), ("True", "Ready"));
        assert_eq!(
            cond(&d.status, CONDITION_NODE_READY),
            ("True", "KubeletReady")
        );
        assert_eq!(
            cond(&d.status, CONDITION_POWER_FAILED),
            ("False", "NoFailure")
        );
        assert_eq!(cond(&d.status, CONDITION_INVALID_SPEC), ("False", "Valid"));
        assert_eq!(
            cond(&d.status, CONDITION_DRAINING),
            ("False", "NotDraining")
        );
        assert_eq!(d.status.lifecycle, lc);
        assert_eq!(d.status.observed_generation, Some(3));
        assert!(d.status.node.is_some(), "the Node's snapshot is kept");
        assert!(d.events.is_empty());
    }

    #[test]
    fn an_off_machine_without_a_node_is_offline_and_has_no_node_ready_condition() {
        let lc = lifecycle(Phase::Off);
        let d = derive(MachineStatus::default(), &facts(&lc, None));
        assert_eq!(d.status.health, Some(Health::Offline));
        assert_eq!(cond(&d.status, CONDITION_READY), ("False", "Off"));
        assert!(find_condition(&d.status.conditions, CONDITION_NODE_READY).is_none());
        assert!(d.status.node.is_none());
    }

    #[test]
    fn a_failed_machine_carries_its_last_error_in_power_failed() {
        let lc = Lifecycle {
            last_error: Some("the BMC refused the request".into()),
            ..lifecycle(Phase::Failed)
        };
        let d = derive(MachineStatus::default(), &facts(&lc, None));
        assert_eq!(
            cond(&d.status, CONDITION_POWER_FAILED),
            ("True", "PowerFailed")
        );
        let c = find_condition(&d.status.conditions, CONDITION_POWER_FAILED);
        assert_eq!(
            c.map(|c| c.message.as_str()),
            Some("the BMC refused the request")
        );
        assert_eq!(d.status.health, Some(Health::Unknown));
    }

    #[test]
    fn a_driver_that_cannot_be_used_is_reported_as_an_invalid_spec() {
        let lc = lifecycle(Phase::PoweringOn);
        let f = Facts {
            spec_error: Some("no power-on driver configured"),
            ..facts(&lc, None)
        };
        let d = derive(MachineStatus::default(), &f);
        assert_eq!(
            cond(&d.status, CONDITION_INVALID_SPEC),
            ("True", "DriverUnavailable")
        );
    }

    #[test]
    fn a_providerid_mismatch_is_a_condition_an_event_once_and_no_snapshot() {
        let (lc, n) = (lifecycle(Phase::Booting), node(true));
        let f = Facts {
            mismatch: Some("the Node carries providerID k3s://other"),
            ..facts(&lc, Some(&n))
        };
        let first = derive(MachineStatus::default(), &f);
        assert_eq!(
            cond(&first.status, CONDITION_IDENTITY_MISMATCH),
            ("True", "ProviderIDMismatch")
        );
        assert!(first.status.node.is_none());
        let reasons: Vec<_> = first.events.iter().map(|e| (e.reason, e.warning)).collect();
        assert_eq!(reasons, [("ProviderIDMismatch", true)]);
        let again = derive(first.status, &f);
        assert!(again.events.is_empty(), "said once, while it stays");
    }

    #[test]
    fn a_drain_in_progress_keeps_its_condition() {
        let lc = lifecycle(Phase::Ready);
        let mut status = MachineStatus::default();
        upsert_condition(
            &mut status.conditions,
            condition(CONDITION_DRAINING, true, "Evicting", "2 pods", None, t(0)),
        );
        let draining = Facts {
            desired: PowerState::Off,
            ..facts(&lc, None)
        };
        let d = derive(status.clone(), &draining);
        assert_eq!(cond(&d.status, CONDITION_DRAINING), ("True", "Evicting"));
        let moved_on = derive(status, &facts(&lc, None));
        assert_eq!(
            cond(&moved_on.status, CONDITION_DRAINING),
            ("False", "NotDraining")
        );
    }

    #[test]
    fn a_ready_nodes_going_not_ready_is_flagged_once() {
        let lc = lifecycle(Phase::Ready);
        let (up, down) = (node(true), node(false));
        let before = derive(MachineStatus::default(), &facts(&lc, Some(&up)));
        assert!(!before.node_went_not_ready);
        let went = derive(before.status, &facts(&lc, Some(&down)));
        assert!(went.node_went_not_ready);
        assert_eq!(
            cond(&went.status, CONDITION_NODE_READY),
            ("False", "NodeNotReady")
        );
        let still = derive(went.status, &facts(&lc, Some(&down)));
        assert!(!still.node_went_not_ready, "once per transition");
    }

    #[test]
    fn a_node_going_not_ready_while_powering_off_is_not_flagged() {
        let (ready, off) = (lifecycle(Phase::Ready), lifecycle(Phase::PoweringOff));
        let (up, down) = (node(true), node(false));
        let before = derive(MachineStatus::default(), &facts(&ready, Some(&up)));
        let d = derive(before.status, &facts(&off, Some(&down)));
        assert!(!d.node_went_not_ready);
    }

    #[test]
    fn an_invalid_spec_is_only_a_condition() {
        let status = invalid_spec(
            MachineStatus::default(),
            "bootTimeout: invalid duration".into(),
            Some(2),
            t(0),
        );
        assert_eq!(
            cond(&status, CONDITION_INVALID_SPEC),
            ("True", "InvalidSpec")
        );
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.lifecycle, Lifecycle::default());
    }

    fn refusal(reason: &'static str, field: &str) -> Refusal {
        Refusal {
            reason,
            field: field.into(),
            message: format!("{reason} fix"),
        }
    }

    #[test]
    fn a_refusal_is_a_condition_with_every_rule_and_one_event_while_it_stays() {
        let refusals = [
            refusal("ImageNotAllowed", "spec.power.powerOff.nodeAgent.image"),
            refusal("NodeNotAdoptable", "Kubernetes Node n1"),
        ];
        let (first, event) = permission(MachineStatus::default(), &refusals, Some(2), t(0));
        assert_eq!(
            cond(&first, CONDITION_NOT_PERMITTED),
            ("True", "ImageNotAllowed")
        );
        let c =
            find_condition(&first.conditions, CONDITION_NOT_PERMITTED).map(|c| c.message.as_str());
        assert_eq!(
            c,
            Some(
                "spec.power.powerOff.nodeAgent.image: ImageNotAllowed fix; \
                 Kubernetes Node n1: NodeNotAdoptable fix"
            )
        );
        let event = event.expect("an Event when it appears");
        assert_eq!(
            (event.reason, event.warning),
            (CONDITION_NOT_PERMITTED, true)
        );
        assert!(
            event.message.contains("Kubernetes Node n1"),
            "{}",
            event.message
        );
        assert_eq!(
            first.lifecycle,
            Lifecycle::default(),
            "nothing else changes"
        );
        let (again, event) = permission(first, &refusals[1..], Some(2), t(30));
        assert_eq!(
            cond(&again, CONDITION_NOT_PERMITTED),
            ("True", "NodeNotAdoptable")
        );
        assert!(event.is_none(), "said once while it stays");
    }

    #[test]
    fn a_fixed_refusal_turns_the_condition_false_and_a_machine_never_refused_has_none() {
        let refused = [refusal("ControlPlaneNode", "Kubernetes Node cp")];
        let (status, _) = permission(MachineStatus::default(), &refused, Some(2), t(0));
        let (fixed, event) = permission(status, &[], Some(3), t(10));
        assert_eq!(
            cond(&fixed, CONDITION_NOT_PERMITTED),
            ("False", "Permitted")
        );
        assert!(event.is_none());
        let (never, _) = permission(MachineStatus::default(), &[], Some(1), t(0));
        assert!(find_condition(&never.conditions, CONDITION_NOT_PERMITTED).is_none());
        let (refused_again, event) = permission(fixed, &refused, Some(4), t(20));
        assert_eq!(cond(&refused_again, CONDITION_NOT_PERMITTED).0, "True");
        assert!(event.is_some(), "a new refusal is said again");
    }

    fn running(kind: OperationKind, started: Timestamp) -> Operation {
        Operation {
            kind,
            id: "on-1".into(),
            started,
            deadline: started + SignedDuration::from_mins(10),
            completed: None,
        }
    }

    #[test]
    fn an_action_that_reported_success_ran_until_its_completion_time() {
        let before = Lifecycle {
            operation: Some(running(OperationKind::PowerOn, t(0))),
            ..lifecycle(Phase::PoweringOn)
        };
        let mut after = Lifecycle {
            phase: Some(Phase::Booting),
            ..before.clone()
        };
        if let Some(op) = &mut after.operation {
            op.completed = Some(t(42));
        }
        assert_eq!(
            ended_action(&before, &after, t(50)),
            Some(EndedAction {
                kind: OperationKind::PowerOn,
                took: SignedDuration::from_secs(42),
                succeeded: true,
            })
        );
        assert_eq!(ended_action(&after, &after, t(60)), None, "counted once");
    }

    #[test]
    fn an_action_that_failed_ran_until_now_and_a_cancelled_one_is_not_counted() {
        let before = Lifecycle {
            operation: Some(running(OperationKind::PowerOff, t(0))),
            ..lifecycle(Phase::PoweringOff)
        };
        let failed = Lifecycle {
            operation: None,
            ..lifecycle(Phase::Failed)
        };
        assert_eq!(
            ended_action(&before, &failed, t(30)),
            Some(EndedAction {
                kind: OperationKind::PowerOff,
                took: SignedDuration::from_secs(30),
                succeeded: false,
            })
        );
        let overtaken = Lifecycle {
            operation: None,
            ..lifecycle(Phase::Ready)
        };
        assert_eq!(ended_action(&before, &overtaken, t(30)), None);
    }

    #[test]
    fn insecure_transport_is_a_condition_with_one_warning_event_when_it_appears() {
        use crate::operator::api::{PowerOn, Redfish};
        let spec = |skip: bool| PowerSpec {
            power_on: Some(PowerOn {
                redfish: Some(Box::new(Redfish {
                    endpoint: "https://bmc".into(),
                    credentials_secret: "bmc".into(),
                    insecure_skip_verify: Some(skip),
                    ..Redfish::default()
                })),
                ..PowerOn::default()
            }),
            ..PowerSpec::default()
        };
        // Never concerned: no condition at all.
        let mut status = MachineStatus::default();
        assert_eq!(
            insecure_transport(&mut status, Some(&spec(false)), Some(1), t(0)),
            None
        );
        assert!(status.conditions.is_empty());
        let event = insecure_transport(&mut status, Some(&spec(true)), Some(2), t(10))
            .expect("an Event when it appears");
        assert!(event.warning && event.reason == "InsecureTransport");
        assert!(event.message.contains("caBundle"), "{}", event.message);
        assert_eq!(
            cond(&status, CONDITION_INSECURE_TRANSPORT),
            ("True", "CertificateNotVerified")
        );
        // Still there: no second Event.
        assert_eq!(
            insecure_transport(&mut status, Some(&spec(true)), Some(2), t(20)),
            None
        );
        // Fixed: the condition turns False and stays.
        assert_eq!(
            insecure_transport(&mut status, Some(&spec(false)), Some(3), t(30)),
            None
        );
        assert_eq!(
            cond(&status, CONDITION_INSECURE_TRANSPORT),
            ("False", "CredentialsProtected")
        );
        // And an Event again if it comes back.
        assert!(insecure_transport(&mut status, Some(&spec(true)), Some(4), t(40)).is_some());
    }

    #[test]
    fn deprecated_keys_are_a_condition_with_one_warning_event_naming_the_new_keys() {
        use crate::operator::api::{MachineSpec, PowerOff, Watts};
        let spec = |legacy: bool| {
            let mut s = MachineSpec::new(PowerState::On);
            let off = PowerOff {
                node_agent: Some(Box::default()),
                ..PowerOff::default()
            };
            let mut power = PowerSpec::default();
            let mut watts = Watts::default();
            if legacy {
                power.legacy_off = Some(off);
                watts.legacy_off = Some(1.0);
            } else {
                power.power_off = Some(off);
                watts.standby = Some(1.0);
            }
            s.power = Some(Box::new(power));
            s.watts = Some(watts);
            s
        };
        let mut status = MachineStatus::default();
        assert_eq!(
            deprecated_fields(&mut status, &spec(false), Some(1), t(0)),
            None
        );
        assert!(status.conditions.is_empty());
        let event = deprecated_fields(&mut status, &spec(true), Some(2), t(10))
            .expect("an Event when it appears");
        assert!(event.warning && event.reason == "DeprecatedFields");
        for text in [
            "spec.power.off is deprecated: rename it to spec.power.powerOff",
            "spec.watts.off is deprecated: rename it to spec.watts.standby",
        ] {
            assert!(event.message.contains(text), "{}", event.message);
        }
        assert_eq!(
            cond(&status, CONDITION_DEPRECATED_FIELDS),
            ("True", "DeprecatedFieldNames")
        );
        assert_eq!(
            deprecated_fields(&mut status, &spec(true), Some(2), t(20)),
            None
        );
        assert_eq!(
            deprecated_fields(&mut status, &spec(false), Some(3), t(30)),
            None
        );
        assert_eq!(
            cond(&status, CONDITION_DEPRECATED_FIELDS),
            ("False", "CurrentFieldNames")
        );
    }
}
