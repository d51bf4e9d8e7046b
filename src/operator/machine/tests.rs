//! Tests of the lifecycle core: every row, every rejected pair, scenarios from docs/pitfalls.md,
//! and property tests over random event sequences and random worlds.
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::fsm::holds;
use super::*;

fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

fn at(n: i64) -> Timestamp {
    fsm::add(t0(), secs(n))
}

fn op(kind: OperationKind, id: &str, started: Timestamp, completed: bool) -> Operation {
    let timeout = match kind {
        OperationKind::PowerOn => Policy::default().boot_timeout,
        OperationKind::PowerOff => Policy::default().shutdown_timeout,
    };
    Operation {
        kind,
        id: id.to_owned(),
        started,
        deadline: fsm::add(started, timeout),
        completed: completed.then_some(started),
    }
}

/// Candidate lifecycles for a phase: every goal, first and last attempt, with and without
/// retry times and operations in every state.
fn candidates(phase: Phase) -> Vec<Lifecycle> {
    let mut v = Vec::new();
    let ops: Vec<Option<Operation>> = vec![
        None,
        Some(op(OperationKind::PowerOn, "on-1", t0(), false)),
        Some(op(OperationKind::PowerOn, "on-1", t0(), true)),
        Some(op(OperationKind::PowerOff, "off-1", t0(), false)),
        Some(op(OperationKind::PowerOff, "off-1", t0(), true)),
    ];
    for goal in [None, Some(PowerState::On), Some(PowerState::Off)] {
        for attempt in [0, Policy::default().max_attempts - 1] {
            for retry in [None, Some(t0())] {
                for lost in [None, Some(t0())] {
                    for o in &ops {
                        v.push(Lifecycle {
                            phase: Some(phase),
                            phase_since: Some(t0()),
                            attempt,
                            operation: o.clone(),
                            last_error: None,
                            next_retry_time: retry,
                            goal,
                            operation_seq: 1,
                            last_power_on_failure: None,
                            node_lost_since: lost,
                        });
                    }
                }
            }
        }
    }
    v
}

/// Remediation on (power-cycle after 1m lost), so its row can fire in the table tests.
fn remediating() -> Policy {
    Policy {
        remediate_after: Some(secs(60)),
        ..Policy::default()
    }
}

fn events(kind: EventKind) -> Vec<Event> {
    match kind {
        EventKind::DesiredOn => vec![Event::DesiredOn],
        EventKind::DesiredOff => vec![
            Event::DesiredOff {
                pods_present: false,
            },
            Event::DesiredOff { pods_present: true },
        ],
        EventKind::ActionSucceeded => vec![Event::ActionSucceeded],
        EventKind::ActionFailed => vec![Event::ActionFailed {
            reason: "exit code 1".into(),
        }],
        EventKind::ActionMissing => vec![Event::ActionMissing],
        EventKind::NodeReady => vec![Event::NodeReady],
        EventKind::NodeNotReady => vec![Event::NodeNotReady],
        EventKind::NodeGone => vec![Event::NodeGone],
        EventKind::BootDeadlinePassed => vec![
            Event::BootDeadlinePassed {
                provider_id_mismatch: false,
            },
            Event::BootDeadlinePassed {
                provider_id_mismatch: true,
            },
        ],
        EventKind::ShutdownDeadlinePassed => vec![Event::ShutdownDeadlinePassed],
        EventKind::RetryDue => vec![Event::RetryDue],
        EventKind::FoundOn => vec![Event::FoundOn],
        EventKind::ReadyLost => vec![Event::ReadyLost],
        EventKind::ManualRetry => vec![Event::ManualRetry],
        EventKind::RemediationDue => vec![Event::RemediationDue],
    }
}

/// Times at which candidates are tried: before and after every deadline.
fn nows() -> [Timestamp; 2] {
    [at(1), at(3600)]
}

#[test]
fn rows_of_a_pair_are_contiguous_and_phases_and_events_complete() {
    for (i, r) in TABLE.iter().enumerate() {
        assert_eq!(r.index(), i);
        let rows = rows_for(r.from, r.event);
        assert!(
            rows.iter().any(|x| std::ptr::eq(x, r)),
            "row {i} ({} {}) not found by rows_for: rows of a pair must be contiguous",
            r.from,
            r.event
        );
    }
    assert_eq!(Phase::ALL.len(), 7);
    assert_eq!(EventKind::ALL.len(), 15);
    for (i, k) in EventKind::ALL.iter().enumerate() {
        assert_eq!(*k as usize, i);
    }
    for (i, p) in Phase::ALL.iter().enumerate() {
        assert_eq!(*p as usize, i);
    }
}

#[test]
fn guards_of_a_pair_never_overlap() {
    let policy = remediating();
    for phase in Phase::ALL {
        for kind in EventKind::ALL {
            let rows = rows_for(phase, kind);
            for lc in candidates(phase) {
                for ev in events(kind) {
                    for now in nows() {
                        let n = rows
                            .iter()
                            .filter(|r| r.guard.iter().all(|c| holds(*c, &lc, &ev, now, &policy)))
                            .count();
                        assert!(n <= 1, "{phase} {kind}: {n} rows apply to {lc:?} {ev:?}");
                    }
                }
            }
        }
    }
}

/// Every row is taken by some (lifecycle, event), lands in its `to` phase, and every pair
/// without rows is rejected as not in the table.
#[test]
fn every_row_fires_and_every_other_pair_is_rejected() {
    let policy = remediating();
    let mut hit = vec![0usize; TABLE.len()];
    for phase in Phase::ALL {
        for kind in EventKind::ALL {
            let in_table = !rows_for(phase, kind).is_empty();
            for lc in candidates(phase) {
                for ev in events(kind) {
                    for now in nows() {
                        match step(&lc, &ev, now, &policy) {
                            Ok(s) => {
                                assert!(in_table);
                                assert_eq!(s.row.from, phase);
                                assert_eq!(s.row.event, kind);
                                assert_eq!(s.lifecycle.phase(), s.row.to, "{:?}", s.row);
                                hit[s.row.index()] += 1;
                                check_row_effects(&lc, &s, now);
                            }
                            Err(Rejected::NotInTable { phase: p, event: e }) => {
                                assert!(!in_table, "{phase} {kind} is in the table");
                                assert_eq!((p, e), (phase, kind));
                            }
                            Err(Rejected::GuardNotMet {
                                phase: p,
                                event: e,
                                guards,
                            }) => {
                                assert!(in_table);
                                assert_eq!((p, e), (phase, kind));
                                assert!(!guards.is_empty());
                            }
                        }
                    }
                }
            }
        }
    }
    for (i, n) in hit.iter().enumerate() {
        let r = &TABLE[i];
        assert!(
            *n > 0,
            "row {i} never fired: {} {} [{}] -> {}",
            r.from,
            r.event,
            r.guard_text(),
            r.to
        );
    }
}

/// The effects a row's action promises (its `effects` text) are the ones `step` emits.
fn check_row_effects(before: &Lifecycle, s: &Step, now: Timestamp) {
    use super::table::Action;
    let has = |f: &dyn Fn(&Effect) -> bool| s.effects.iter().any(f);
    let running = before
        .operation
        .as_ref()
        .filter(|o| o.completed.is_none())
        .map(|o| o.id.clone());
    let cancels = |id: &String| has(&|e| *e == Effect::CancelOperation { op: id.clone() });
    let row = s.row;
    let lc = &s.lifecycle;
    match row.action {
        Action::Nothing | Action::RecordGoal => {
            assert!(s.effects.is_empty(), "{row:?}: {:?}", s.effects);
            assert_eq!(lc.operation, before.operation);
        }
        Action::StartOn { reset_attempts } | Action::StartOff { reset_attempts } => {
            let on = matches!(row.action, Action::StartOn { .. });
            let id = lc
                .operation
                .as_ref()
                .map(|o| o.id.clone())
                .unwrap_or_default();
            assert_eq!(
                id,
                format!(
                    "{}-{}",
                    if on { "on" } else { "off" },
                    before.operation_seq + 1
                )
            );
            assert!(has(
                &|e| matches!(e, Effect::StartPowerOn { op, .. } if on && *op == id)
                    || matches!(e, Effect::StartPowerOff { op, .. } if !on && *op == id)
            ));
            assert_eq!(has(&|e| *e == Effect::Cordon), !on);
            if let Some(old) = &running {
                assert!(cancels(old), "{row:?} must cancel {old}");
            }
            if reset_attempts {
                assert_eq!(lc.attempt, 0);
            } else {
                assert_eq!(lc.attempt, before.attempt);
            }
            assert_eq!(lc.next_retry_time, None);
        }
        Action::MarkDone => {
            assert!(lc.operation.as_ref().is_none_or(|o| o.completed.is_some()));
        }
        Action::Reissue => {
            let id = before.operation.as_ref().map(|o| o.id.clone());
            assert_eq!(lc.operation, before.operation);
            assert!(id.is_none_or(|id| has(&|e| matches!(e,
                Effect::StartPowerOn { op, .. } | Effect::StartPowerOff { op, .. } if *op == id))));
        }
        Action::BecomeReady | Action::Adopt => {
            assert!(has(&|e| matches!(
                e,
                Effect::PowerObserved {
                    state: PowerState::On,
                    ..
                }
            )));
            assert_eq!(
                has(&|e| *e == Effect::Uncordon),
                row.action == Action::BecomeReady
            );
            assert_eq!(
                has(&|e| *e == Effect::AdoptAsWantedOn),
                row.action == Action::Adopt && before.goal != Some(PowerState::On)
            );
            assert!(lc.operation.is_none() && lc.attempt == 0 && lc.last_error.is_none());
            assert_eq!(lc.goal, Some(PowerState::On));
            if let Some(old) = &running {
                assert!(cancels(old));
            }
        }
        Action::ResolveOff | Action::ConfirmOff => {
            assert!(has(&|e| matches!(
                e,
                Effect::PowerObserved {
                    state: PowerState::Off,
                    ..
                }
            )));
            assert_eq!(
                has(&|e| *e == Effect::DeleteNode),
                row.action == Action::ConfirmOff
            );
            assert!(lc.operation.is_none() && lc.attempt == 0 && lc.last_error.is_none());
            if let Some(old) = &running {
                assert!(cancels(old));
            }
        }
        Action::Fail => {
            assert_eq!(lc.attempt, before.attempt + 1);
            assert!(lc.last_error.is_some() && lc.operation.is_none());
            assert!(has(&|e| matches!(
                e,
                Effect::Emit(KubeEvent { warning: true, .. })
            )));
            let exhausted = row.guard.contains(&Cond::AttemptsExhausted);
            assert_eq!(lc.next_retry_time.is_none(), exhausted, "{row:?}");
            if let Some(old) = &running {
                assert!(cancels(old));
            }
        }
        Action::Drain => {
            assert!(has(&|e| *e == Effect::Cordon) && has(&|e| *e == Effect::Drain));
            assert_eq!(lc.goal, Some(PowerState::Off));
        }
        Action::DrainFirst => {
            assert_eq!(s.effects, [Effect::Cordon, Effect::Drain]);
            assert_eq!((lc.goal, &lc.operation), (before.goal, &before.operation));
        }
        Action::UndoDrain => {
            assert!(has(&|e| *e == Effect::Uncordon));
            assert_eq!(lc.goal, Some(PowerState::On));
        }
        Action::NoteLost => {
            // Recorded with one warning Event; power, attempts and errors untouched.
            assert_eq!(lc.node_lost_since, Some(now));
            assert_eq!(s.effects.len(), 1, "{:?}", s.effects);
            assert!(has(&|e| matches!(
                e,
                Effect::Emit(KubeEvent { warning: true, .. })
            )));
            assert_eq!(
                (&lc.operation, lc.attempt, &lc.last_error),
                (&before.operation, before.attempt, &before.last_error)
            );
        }
        Action::Recovered => {
            assert_eq!(lc.node_lost_since, None);
            let recovered = has(&|e| {
                matches!(
                    e,
                    Effect::Emit(KubeEvent {
                        reason: "NodeRecovered",
                        ..
                    })
                )
            });
            assert_eq!(recovered, before.node_lost_since.is_some());
            assert_eq!(s.effects.len(), usize::from(recovered));
        }
        Action::PowerCycle => {
            assert!(has(&|e| *e == Effect::Cordon));
            assert!(has(&|e| matches!(e, Effect::StartPowerOff { .. })));
            // Still marked lost: the power-off finishes before the desired on acts again.
            assert!(lc.node_lost_since.is_some());
            assert_eq!(lc.attempt, 0);
        }
    }
    assert_eq!(
        starts(&s.effects) > 0,
        matches!(
            row.action,
            Action::StartOn { .. } | Action::StartOff { .. } | Action::Reissue | Action::PowerCycle
        ) && !(row.action == Action::Reissue && before.operation.is_none())
    );
}

#[test]
fn rejection_is_an_error_that_names_phase_and_event_and_changes_nothing() {
    let lc = Lifecycle {
        phase: Some(Phase::Off),
        ..Default::default()
    };
    let mut copy = lc.clone();
    let mut effects = Vec::new();
    let err = step_mut(
        &mut copy,
        &Event::ActionSucceeded,
        t0(),
        &Policy::default(),
        &mut effects,
    )
    .err();
    assert_eq!(
        err,
        Some(Rejected::NotInTable {
            phase: Phase::Off,
            event: EventKind::ActionSucceeded
        })
    );
    let text = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.contains("ActionSucceeded") && text.contains("Off"),
        "{text}"
    );
    assert_eq!(copy, lc);
    assert!(effects.is_empty());
}

fn world(desired: PowerState, node: NodeObs, operation: OpStatus<'static>) -> Observed<'static> {
    Observed {
        desired,
        node,
        operation,
        pods_present: false,
        manual_retry: false,
    }
}

/// Ready with the machine's providerID since `t0()`.
const READY: NodeObs = NodeObs::Registered {
    ready: true,
    provider_id_matches: true,
    not_ready_since: None,
    ready_since: Some(Timestamp::constant(1_800_000_000, 0)),
};

fn starts(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| {
            matches!(
                e,
                Effect::StartPowerOn { .. } | Effect::StartPowerOff { .. }
            )
        })
        .count()
}

#[test]
fn power_on_walks_through_booting_to_ready() {
    let p = Policy::default();
    let mut lc = Lifecycle::default();
    let t = reconcile(
        &lc,
        &world(PowerState::On, NodeObs::Absent, OpStatus::Absent),
        at(0),
        &p,
    );
    // Unknown: record goal, resolve Off (no Node), then power on: one start only.
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOn);
    assert_eq!(starts(&t.effects), 1);
    assert!(t.effects.contains(&Effect::StartPowerOn {
        op: "on-1".into(),
        deadline: at(600)
    }));
    assert_eq!(t.requeue_at, Some(at(600)));
    lc = t.lifecycle;
    // Still running: nothing happens, nothing allocated.
    let o = reconcile_mut(
        &mut lc.clone(),
        &world(PowerState::On, NodeObs::Absent, OpStatus::Running),
        at(5),
        &p,
    );
    assert!(o.fired.is_empty() && o.effects.is_empty());
    let t = reconcile(
        &lc,
        &world(PowerState::On, NodeObs::Absent, OpStatus::Succeeded),
        at(10),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Booting);
    assert_eq!(
        t.lifecycle.operation.as_ref().and_then(|o| o.completed),
        Some(at(10))
    );
    lc = t.lifecycle;
    let t = reconcile(
        &lc,
        &world(PowerState::On, READY, OpStatus::Succeeded),
        at(100),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
    assert!(t.effects.contains(&Effect::BootDuration(secs(100))));
    assert!(t.effects.contains(&Effect::Uncordon));
    assert!(
        !t.effects
            .iter()
            .any(|e| matches!(e, Effect::CancelOperation { .. }))
    );
    assert_eq!(t.lifecycle.operation, None);
    assert_eq!(t.lifecycle.phase_since, Some(at(100)));
    assert_eq!(progress(&t.lifecycle), Some(StatusProgress::Ready));
    assert_eq!(observed_power(&t.lifecycle), Some(PowerState::On));
}

/// docs/pitfalls.md, pitfall 6: a new Node CR with desired on for a machine already on starts no
/// power-on.
#[test]
fn unknown_machine_already_on_is_adopted_without_power_on() {
    let p = Policy::default();
    let t = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, READY, OpStatus::Absent),
        at(0),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
    assert_eq!(starts(&t.effects), 0);
    assert!(!t.effects.contains(&Effect::AdoptAsWantedOn));
    // Desired off but found on: adopted as wanted on, not powered off.
    let t = reconcile(
        &Lifecycle::default(),
        &world(PowerState::Off, READY, OpStatus::Absent),
        at(0),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
    assert_eq!(starts(&t.effects), 0);
    assert!(t.effects.contains(&Effect::AdoptAsWantedOn));
    assert_eq!(t.lifecycle.goal, Some(PowerState::On));
}

#[test]
fn unknown_with_not_ready_node_waits_for_the_grace_period() {
    let p = Policy::default();
    let node = NodeObs::Registered {
        ready: false,
        provider_id_matches: true,
        not_ready_since: Some(at(0)),
        ready_since: None,
    };
    let t = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, node, OpStatus::Absent),
        at(60),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Unknown);
    assert_eq!(starts(&t.effects), 0);
    assert_eq!(t.requeue_at, Some(at(180)));
    let t = reconcile(
        &t.lifecycle,
        &world(PowerState::On, node, OpStatus::Absent),
        at(180),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOn);
}

/// docs/pitfalls.md, pitfall 5: a NotReady blip shorter than the grace period is not a power-off.
/// Past the grace period the machine is not a failed power-on either (errorInfo would get it
/// deleted undrained: docs/ca-contract.md, rule 7): it stays Ready
/// (the provider keeps it `Running` for CA, whose `--scale-down-unready-time` decides), one
/// warning Event records the episode, and power is left alone.
#[test]
fn ready_not_ready_blip_is_not_a_power_off() {
    let p = Policy::default();
    let lc = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, READY, OpStatus::Absent),
        at(0),
        &p,
    )
    .lifecycle;
    let blip = NodeObs::Registered {
        ready: false,
        provider_id_matches: true,
        not_ready_since: Some(at(100)),
        ready_since: None,
    };
    let t = reconcile(
        &lc,
        &world(PowerState::On, blip, OpStatus::Absent),
        at(200),
        &p,
    );
    assert!(t.fired.is_empty() && t.effects.is_empty());
    assert_eq!(t.requeue_at, Some(at(280)));
    let t = reconcile(
        &lc,
        &world(PowerState::On, READY, OpStatus::Absent),
        at(250),
        &p,
    );
    assert!(t.fired.is_empty());
    // Longer than the grace: recorded once, still Ready, no power action, no error.
    let t = reconcile(
        &lc,
        &world(PowerState::On, blip, OpStatus::Absent),
        at(280),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
    assert_eq!(t.lifecycle.node_lost_since, Some(at(280)));
    assert_eq!(t.lifecycle.last_error, None);
    assert_eq!(starts(&t.effects), 0);
    let warnings: Vec<&str> = t
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Emit(KubeEvent {
                reason,
                warning: true,
                ..
            }) => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(warnings, vec!["NodeNotReady"]);
    assert_eq!(
        instance_view(&t.lifecycle, PowerState::On).map(|v| v.state),
        Some(InstanceState::Running)
    );
    // Later reconciles of the same episode do nothing (no Event storm) and wait for no timer.
    let later = reconcile(
        &t.lifecycle,
        &world(PowerState::On, blip, OpStatus::Absent),
        at(5000),
        &p,
    );
    assert!(later.fired.is_empty() && later.effects.is_empty());
    assert_eq!(later.requeue_at, None);
    // Ready again: the episode ends with one Event.
    let back = reconcile(
        &t.lifecycle,
        &world(PowerState::On, READY, OpStatus::Absent),
        at(5010),
        &p,
    );
    assert_eq!(back.lifecycle.phase(), Phase::Ready);
    assert_eq!(back.lifecycle.node_lost_since, None);
    assert!(back.effects.iter().any(|e| matches!(
        e,
        Effect::Emit(KubeEvent {
            reason: "NodeRecovered",
            warning: false,
            ..
        })
    )));
}

/// A Ready machine whose Node object vanishes is not a failed power-on either: recorded,
/// still Ready, power untouched.
#[test]
fn ready_machine_whose_node_vanishes_stays_ready() {
    let p = Policy::default();
    let lc = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, READY, OpStatus::Absent),
        at(0),
        &p,
    )
    .lifecycle;
    let t = reconcile(
        &lc,
        &world(PowerState::On, NodeObs::Absent, OpStatus::Absent),
        at(10),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
    assert_eq!(t.lifecycle.node_lost_since, Some(at(10)));
    assert_eq!(starts(&t.effects), 0);
    assert!(t.effects.iter().any(|e| matches!(
        e,
        Effect::Emit(KubeEvent {
            reason: "NodeGone",
            warning: true,
            ..
        })
    )));
    assert!(!t.effects.contains(&Effect::DeleteNode));
}

/// Remediation (opt-in per Group): after `remediate_after` of a recorded episode the machine is
/// power-cycled: powered off with desired still on, then the Off --DesiredOn--> PoweringOn row
/// boots it again.
#[test]
fn remediation_power_cycles_a_lost_machine_and_boots_it_again() {
    let p = Policy {
        remediate_after: Some(SignedDuration::from_mins(10)),
        ..Policy::default()
    };
    let ready = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, READY, OpStatus::Absent),
        at(0),
        &p,
    )
    .lifecycle;
    let lost = NodeObs::Registered {
        ready: false,
        provider_id_matches: true,
        not_ready_since: Some(at(100)),
        ready_since: None,
    };
    let noted = reconcile(
        &ready,
        &world(PowerState::On, lost, OpStatus::Absent),
        at(280),
        &p,
    );
    assert_eq!(noted.lifecycle.phase(), Phase::Ready);
    // Waits for the remediation time, not longer.
    assert_eq!(noted.requeue_at, Some(at(880)));
    let early = reconcile(
        &noted.lifecycle,
        &world(PowerState::On, lost, OpStatus::Absent),
        at(879),
        &p,
    );
    assert!(early.fired.is_empty());
    let cycle = reconcile(
        &noted.lifecycle,
        &world(PowerState::On, lost, OpStatus::Absent),
        at(880),
        &p,
    );
    assert_eq!(cycle.lifecycle.phase(), Phase::PoweringOff);
    assert!(
        cycle
            .effects
            .iter()
            .any(|e| matches!(e, Effect::StartPowerOff { op, .. } if op == "off-1"))
    );
    assert!(cycle.effects.iter().any(|e| matches!(
        e,
        Effect::Emit(KubeEvent {
            reason: "RemediationPowerCycle",
            warning: true,
            ..
        })
    )));
    // Desired is still on: the power-off is not cancelled while it runs.
    let running = reconcile(
        &cycle.lifecycle,
        &world(PowerState::On, lost, OpStatus::Running),
        at(890),
        &p,
    );
    assert!(running.fired.is_empty(), "{:?}", running.fired);
    // Power-off done: Off, then powered on again in the same reconcile.
    let done = reconcile(
        &cycle.lifecycle,
        &world(PowerState::On, lost, OpStatus::Succeeded),
        at(900),
        &p,
    );
    let path: Vec<Phase> = done.fired.iter().map(|r| r.to).collect();
    assert_eq!(
        path,
        vec![Phase::PoweringOff, Phase::Off, Phase::PoweringOn],
        "{:?}",
        done.fired
    );
    assert!(
        done.effects
            .iter()
            .any(|e| matches!(e, Effect::StartPowerOn { op, .. } if op == "on-2"))
    );
    assert_eq!(done.lifecycle.node_lost_since, None);
    // A power-off someone asks for during the episode ends it: desired on again cancels that
    // power-off as usual (only a power-cycle finishes first).
    let asked = reconcile(
        &noted.lifecycle,
        &world(PowerState::Off, lost, OpStatus::Absent),
        at(300),
        &p,
    );
    assert_eq!(asked.lifecycle.phase(), Phase::PoweringOff);
    assert_eq!(asked.lifecycle.node_lost_since, None);
    let back = reconcile(
        &asked.lifecycle,
        &world(PowerState::On, lost, OpStatus::Running),
        at(310),
        &p,
    );
    assert_eq!(back.lifecycle.phase(), Phase::PoweringOn);
    // Without remediation the same episode never touches power.
    let off = reconcile(
        &noted.lifecycle,
        &world(PowerState::On, lost, OpStatus::Absent),
        at(100_000),
        &Policy::default(),
    );
    assert!(off.fired.is_empty() && off.effects.is_empty());
}

/// docs/pitfalls.md, pitfall 2: a power-on Job that succeeded without the node becoming Ready is a
/// boot failure at the deadline, never Ready.
#[test]
fn job_success_without_ready_node_ends_in_boot_deadline_failure() {
    let p = Policy::default();
    let mut lc = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, NodeObs::Absent, OpStatus::Absent),
        at(0),
        &p,
    )
    .lifecycle;
    lc = reconcile(
        &lc,
        &world(PowerState::On, NodeObs::Absent, OpStatus::Succeeded),
        at(30),
        &p,
    )
    .lifecycle;
    assert_eq!(lc.phase(), Phase::Booting);
    let t = reconcile(
        &lc,
        &world(PowerState::On, NodeObs::Absent, OpStatus::Succeeded),
        at(599),
        &p,
    );
    assert!(t.fired.is_empty());
    assert_eq!(t.requeue_at, Some(at(600)));
    let t = reconcile(
        &lc,
        &world(PowerState::On, NodeObs::Absent, OpStatus::Succeeded),
        at(600),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Failed);
    assert_eq!(t.lifecycle.attempt, 1);
    let err = t.lifecycle.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("no Ready Node") && err.contains("10m"),
        "{err}"
    );
    assert!(t.effects.iter().any(|e| matches!(
        e,
        Effect::Emit(KubeEvent {
            reason: "BootTimeout",
            warning: true,
            ..
        })
    )));
    // Wrong providerID is named.
    let wrong = NodeObs::Registered {
        ready: true,
        provider_id_matches: false,
        not_ready_since: None,
        ready_since: None,
    };
    let t = reconcile(
        &lc,
        &world(PowerState::On, wrong, OpStatus::Succeeded),
        at(600),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Failed);
    assert!(
        t.lifecycle
            .last_error
            .unwrap_or_default()
            .contains("providerID")
    );
}

#[test]
fn failures_back_off_exponentially_then_stay_failed_until_manual_retry() {
    let p = Policy::default();
    assert_eq!(p.backoff(1), secs(30));
    assert_eq!(p.backoff(2), secs(60));
    assert_eq!(p.backoff(4), secs(240));
    assert_eq!(p.backoff(6), secs(600));
    assert_eq!(p.backoff(1000), secs(600));
    let mut lc = Lifecycle::default();
    let mut now = at(0);
    let mut delays = Vec::new();
    for attempt in 1..=p.max_attempts {
        lc = reconcile(
            &lc,
            &world(PowerState::On, NodeObs::Absent, OpStatus::Running),
            now,
            &p,
        )
        .lifecycle;
        assert_eq!(lc.phase(), Phase::PoweringOn, "attempt {attempt}");
        let id = lc
            .operation
            .as_ref()
            .map(|o| o.id.clone())
            .unwrap_or_default();
        let t = reconcile(
            &lc,
            &world(
                PowerState::On,
                NodeObs::Absent,
                OpStatus::Failed {
                    reason: "BMC said no",
                },
            ),
            now,
            &p,
        );
        assert!(t.effects.contains(&Effect::CancelOperation { op: id }));
        lc = t.lifecycle;
        assert_eq!(lc.phase(), Phase::Failed);
        assert_eq!(lc.attempt, attempt);
        assert!(
            lc.last_error
                .as_deref()
                .unwrap_or("")
                .contains("BMC said no")
        );
        match lc.next_retry_time {
            Some(next) => {
                delays.push(next.duration_since(now));
                // Not before the retry time.
                let early = reconcile(
                    &lc,
                    &world(PowerState::On, NodeObs::Absent, OpStatus::Absent),
                    fsm::add(next, secs(-1)),
                    &p,
                );
                assert!(early.fired.is_empty());
                assert_eq!(early.requeue_at, Some(next));
                now = next;
            }
            None => assert_eq!(attempt, p.max_attempts),
        }
    }
    assert_eq!(delays, vec![secs(30), secs(60), secs(120), secs(240)]);
    assert!(lc.last_error.as_deref().unwrap_or("").contains("gave up"));
    // Exhausted: nothing happens, however late.
    let t = reconcile(
        &lc,
        &world(PowerState::On, NodeObs::Absent, OpStatus::Absent),
        at(1_000_000),
        &p,
    );
    assert!(t.fired.is_empty() && t.requeue_at.is_none());
    assert!(step(&lc, &Event::RetryDue, at(1_000_000), &p).is_err());
    assert!(
        instance_view(&lc, PowerState::On)
            .and_then(|v| v.error)
            .is_some()
    );
    // A person retries: fresh attempts.
    let mut obs = world(PowerState::On, NodeObs::Absent, OpStatus::Absent);
    obs.manual_retry = true;
    let t = reconcile(&lc, &obs, at(1_000_000), &p);
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOn);
    assert_eq!(t.lifecycle.attempt, 0);
    assert_eq!(starts(&t.effects), 1);
    // Or the desired state changes: power off instead.
    let t = reconcile(
        &lc,
        &world(PowerState::Off, NodeObs::Absent, OpStatus::Absent),
        at(1_000_000),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOff);
    assert_eq!(t.lifecycle.attempt, 0);
}

#[test]
fn desired_change_cancels_the_running_operation_before_starting_the_next() {
    let p = Policy::default();
    let lc = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, NodeObs::Absent, OpStatus::Absent),
        at(0),
        &p,
    )
    .lifecycle;
    let t = reconcile(
        &lc,
        &world(PowerState::Off, NodeObs::Absent, OpStatus::Running),
        at(5),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOff);
    let cancel = t
        .effects
        .iter()
        .position(|e| *e == Effect::CancelOperation { op: "on-1".into() });
    let start = t
        .effects
        .iter()
        .position(|e| matches!(e, Effect::StartPowerOff { op, .. } if op == "off-2"));
    assert!(
        matches!((cancel, start), (Some(c), Some(s)) if c < s),
        "{:?}",
        t.effects
    );
    assert_eq!(
        t.lifecycle.operation.as_ref().map(|o| o.id.as_str()),
        Some("off-2")
    );
    // The old operation's status is not mistaken for the new one's.
    assert_eq!(starts(&t.effects), 1);
}

#[test]
fn desired_off_drains_first_and_powers_off_only_without_pods() {
    let p = Policy::default();
    let lc = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, READY, OpStatus::Absent),
        at(0),
        &p,
    )
    .lifecycle;
    let mut obs = world(PowerState::Off, READY, OpStatus::Absent);
    obs.pods_present = true;
    let t = reconcile(&lc, &obs, at(10), &p);
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
    assert_eq!(t.effects.iter().filter(|e| **e == Effect::Drain).count(), 1);
    assert_eq!(starts(&t.effects), 0);
    // Still pods: drain again (idempotent), no second Event.
    let t2 = reconcile(&t.lifecycle, &obs, at(20), &p);
    assert!(t2.effects.contains(&Effect::Drain));
    assert!(!t2.effects.iter().any(|e| matches!(e, Effect::Emit(_))));
    assert_eq!(starts(&t2.effects), 0);
    // Pods on a node lost for longer than the grace cannot be drained: power off anyway.
    let lost = NodeObs::Registered {
        ready: false,
        provider_id_matches: true,
        not_ready_since: Some(at(0)),
        ready_since: None,
    };
    let mut lost_obs = obs;
    lost_obs.node = lost;
    let t_lost = reconcile(&t.lifecycle, &lost_obs, at(179), &p);
    assert_eq!(t_lost.lifecycle.phase(), Phase::Ready);
    let t_lost = reconcile(&t.lifecycle, &lost_obs, at(180), &p);
    assert_eq!(t_lost.lifecycle.phase(), Phase::PoweringOff);
    // Desired on again: uncordon.
    let back = reconcile(
        &t.lifecycle,
        &world(PowerState::On, READY, OpStatus::Absent),
        at(25),
        &p,
    );
    assert!(back.effects.contains(&Effect::Uncordon));
    assert_eq!(back.lifecycle.goal, Some(PowerState::On));
    // No pods left: power off; NotReady after the start is the evidence; Node deleted.
    obs.pods_present = false;
    let t3 = reconcile(&t2.lifecycle, &obs, at(30), &p);
    assert_eq!(t3.lifecycle.phase(), Phase::PoweringOff);
    assert!(t3.effects.contains(&Effect::Cordon));
    assert_eq!(progress(&t3.lifecycle), Some(StatusProgress::ShuttingDown));
    let down = NodeObs::Registered {
        ready: false,
        provider_id_matches: true,
        not_ready_since: Some(at(40)),
        ready_since: None,
    };
    let t4 = reconcile(
        &t3.lifecycle,
        &world(PowerState::Off, down, OpStatus::Running),
        at(45),
        &p,
    );
    assert_eq!(t4.lifecycle.phase(), Phase::Off);
    assert!(t4.effects.contains(&Effect::DeleteNode));
    assert!(
        t4.effects
            .contains(&Effect::CancelOperation { op: "off-1".into() })
    );
    assert_eq!(instance_view(&t4.lifecycle, PowerState::Off), None);
}

#[test]
fn power_off_success_waits_for_evidence_then_deadline() {
    let p = Policy::default();
    let lc = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, READY, OpStatus::Absent),
        at(0),
        &p,
    )
    .lifecycle;
    let lc = reconcile(
        &lc,
        &world(PowerState::Off, READY, OpStatus::Absent),
        at(10),
        &p,
    )
    .lifecycle;
    assert_eq!(lc.phase(), Phase::PoweringOff);
    // Job done but the node is still Ready: not off yet.
    let t = reconcile(
        &lc,
        &world(PowerState::Off, READY, OpStatus::Succeeded),
        at(20),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOff);
    let lc2 = t.lifecycle;
    assert!(
        reconcile(
            &lc2,
            &world(PowerState::Off, READY, OpStatus::Succeeded),
            at(21),
            &p
        )
        .fired
        .is_empty()
    );
    let t = reconcile(
        &lc2,
        &world(PowerState::Off, READY, OpStatus::Succeeded),
        at(310),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Failed);
    assert!(
        t.lifecycle
            .last_error
            .unwrap_or_default()
            .contains("still Ready")
    );
    // Node gone after a successful action: off.
    let t = reconcile(
        &lc2,
        &world(PowerState::Off, NodeObs::Absent, OpStatus::Succeeded),
        at(30),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Off);
}

#[test]
fn missing_operation_is_reissued_with_the_same_id() {
    let p = Policy::default();
    let lc = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, NodeObs::Absent, OpStatus::Absent),
        at(0),
        &p,
    )
    .lifecycle;
    let t = reconcile(
        &lc,
        &world(PowerState::On, NodeObs::Absent, OpStatus::Absent),
        at(1),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOn);
    assert_eq!(
        t.effects,
        vec![Effect::StartPowerOn {
            op: "on-1".into(),
            deadline: at(600)
        }]
    );
    assert_eq!(t.lifecycle.operation_seq, 1);
}

#[test]
fn found_on_while_off_is_adopted() {
    let p = Policy::default();
    let lc = reconcile(
        &Lifecycle::default(),
        &world(PowerState::Off, NodeObs::Absent, OpStatus::Absent),
        at(0),
        &p,
    )
    .lifecycle;
    assert_eq!(lc.phase(), Phase::Off);
    assert_eq!(observed_power(&lc), Some(PowerState::Off));
    let t = reconcile(
        &lc,
        &world(PowerState::Off, READY, OpStatus::Absent),
        at(50),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
    assert!(t.effects.contains(&Effect::AdoptAsWantedOn));
    assert_eq!(starts(&t.effects), 0);
}

#[test]
fn graph_renderings_list_every_row() {
    let m = render(GraphFormat::Mermaid);
    let d = render(GraphFormat::Dot);
    let md = render(GraphFormat::Markdown);
    assert!(m.starts_with("stateDiagram-v2"));
    assert!(d.starts_with("digraph"));
    assert_eq!(
        m.lines()
            .filter(|l| l.contains(" --> ") && !l.contains("[*]"))
            .count(),
        TABLE.len()
    );
    assert_eq!(
        d.lines().filter(|l| l.contains(" -> ")).count(),
        TABLE.len()
    );
    assert_eq!(md.lines().count(), TABLE.len() + 2);
    assert!(
        m.contains("PoweringOn --> Failed: BootDeadlinePassed [deadline passed, attempts left]")
    );
    // A Ready machine never fails (docs/ca-contract.md, rule 7); remediation is the only way
    // off Ready without a desired change.
    assert!(!m.contains("Ready --> Failed"), "{m}");
    assert!(m.contains("Ready --> Ready: ReadyLost"));
    assert!(m.contains("Ready --> PoweringOff: RemediationDue [remediation on and due]"));
}

#[test]
fn lifecycle_serializes_camel_case_and_round_trips() {
    let p = Policy::default();
    let lc = reconcile(
        &Lifecycle::default(),
        &world(PowerState::On, NodeObs::Absent, OpStatus::Absent),
        at(0),
        &p,
    )
    .lifecycle;
    let v = serde_json::to_value(&lc).unwrap_or_default();
    assert_eq!(v["phase"], "PoweringOn");
    assert_eq!(v["goal"], "on");
    assert_eq!(v["operationSeq"], 1);
    assert_eq!(v["operation"]["id"], "on-1");
    assert!(v.get("attempt").is_none());
    let back: Lifecycle = serde_json::from_value(v).unwrap_or_default();
    assert_eq!(back, lc);
    let empty: Lifecycle = serde_json::from_str("{}").unwrap_or_else(|_| Lifecycle {
        attempt: 99,
        ..Default::default()
    });
    assert_eq!(empty, Lifecycle::default());
}

// ---------- property tests ----------

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::DesiredOn),
        any::<bool>().prop_map(|pods_present| Event::DesiredOff { pods_present }),
        Just(Event::ActionSucceeded),
        Just(Event::ActionFailed {
            reason: "boom".into()
        }),
        Just(Event::ActionMissing),
        Just(Event::NodeReady),
        Just(Event::NodeNotReady),
        Just(Event::NodeGone),
        any::<bool>().prop_map(|m| Event::BootDeadlinePassed {
            provider_id_mismatch: m
        }),
        Just(Event::ShutdownDeadlinePassed),
        Just(Event::RetryDue),
        Just(Event::FoundOn),
        Just(Event::ReadyLost),
        Just(Event::ManualRetry),
        Just(Event::RemediationDue),
    ]
}

/// Tracks operations that were started and not cancelled nor reported done.
#[derive(Default)]
struct Running(Vec<String>);

impl Running {
    fn apply(&mut self, lc_before: &Lifecycle, ev: Option<&Event>, effects: &[Effect]) {
        if matches!(ev, Some(Event::ActionSucceeded))
            && let Some(op) = &lc_before.operation
        {
            self.0.retain(|id| *id != op.id);
        }
        for e in effects {
            match e {
                Effect::StartPowerOn { op, .. } | Effect::StartPowerOff { op, .. }
                    if !self.0.contains(op) =>
                {
                    self.0.push(op.clone());
                }
                Effect::CancelOperation { op } => self.0.retain(|id| id != op),
                _ => {}
            }
        }
    }
}

fn check_invariants(before: &Lifecycle, after: &Lifecycle, policy: &Policy, running: &Running) {
    // phaseSince never moves back.
    if let (Some(a), Some(b)) = (before.phase_since, after.phase_since) {
        assert!(b >= a);
    }
    assert!(after.attempt <= policy.max_attempts);
    // Never two operations in flight, and the one in flight is the one recorded.
    assert!(running.0.len() <= 1, "running: {:?}", running.0);
    if let Some(id) = running.0.first() {
        assert_eq!(after.operation.as_ref().map(|o| &o.id), Some(id));
    }
    // Operations only exist in the phases that have one.
    match after.phase() {
        Phase::PoweringOn | Phase::Booting | Phase::PoweringOff => {
            assert!(after.operation.is_some())
        }
        _ => assert!(after.operation.is_none(), "{after:?}"),
    }
    if after.phase() == Phase::Failed {
        assert!(after.last_error.is_some());
    }
    // A machine that is up has no power-on failure to hold against it.
    if after.phase() == Phase::Ready {
        assert_eq!(after.last_power_on_failure, None, "{after:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random events at random times: every accepted step follows a row of the table and the
    /// invariants hold; rejected ones change nothing.
    #[test]
    fn random_event_sequences_stay_in_the_table(
        evs in proptest::collection::vec((any_event(), 0i64..900), 1..60)
    ) {
        let policy = Policy::default();
        let mut lc = Lifecycle::default();
        let mut now = at(0);
        let mut running = Running::default();
        for (ev, dt) in evs {
            now = fsm::add(now, secs(dt));
            let before = lc.clone();
            match step(&lc, &ev, now, &policy) {
                Ok(s) => {
                    prop_assert_eq!(s.row.from, before.phase());
                    prop_assert_eq!(s.row.event, ev.kind());
                    prop_assert_eq!(s.lifecycle.phase(), s.row.to);
                    prop_assert!(TABLE.iter().any(|r| std::ptr::eq(r, s.row)));
                    running.apply(&before, Some(&ev), &s.effects);
                    check_invariants(&before, &s.lifecycle, &policy, &running);
                    lc = s.lifecycle;
                }
                Err(_) => {
                    let none_applies = rows_for(before.phase(), ev.kind())
                        .iter()
                        .all(|r| !r.guard.iter().all(|c| holds(*c, &before, &ev, now, &policy)));
                    prop_assert!(none_applies);
                }
            }
        }
    }

    /// Random observed worlds: reconcile never derives a rejected event, moves only along
    /// chains of rows, and keeps the invariants.
    #[test]
    fn random_worlds_reconcile_within_the_table(
        remediate in any::<bool>(),
        worlds in proptest::collection::vec(
            (any::<bool>(), 0u8..4, 0u8..4, any::<bool>(), any::<bool>(), 0i64..900, 0i64..400),
            1..60,
        )
    ) {
        let policy = if remediate { remediating() } else { Policy::default() };
        let mut lc = Lifecycle::default();
        let mut now = at(0);
        let mut running = Running::default();
        for (on, node, op, pods, retry, dt, nr) in worlds {
            now = fsm::add(now, secs(dt));
            let node = match node {
                0 => NodeObs::Absent,
                1 => NodeObs::Registered { ready: true, provider_id_matches: true, not_ready_since: None, ready_since: Some(fsm::add(now, secs(-nr))) },
                2 => NodeObs::Registered { ready: false, provider_id_matches: true, not_ready_since: Some(fsm::add(now, secs(-nr))), ready_since: None },
                _ => NodeObs::Registered { ready: true, provider_id_matches: false, not_ready_since: None, ready_since: None },
            };
            let operation = match op {
                0 => OpStatus::Absent,
                1 => OpStatus::Running,
                2 => OpStatus::Succeeded,
                _ => OpStatus::Failed { reason: "exit 1" },
            };
            let obs = Observed {
                desired: if on { PowerState::On } else { PowerState::Off },
                node,
                operation,
                pods_present: pods,
                manual_retry: retry,
            };
            let before = lc.clone();
            let t = reconcile(&lc, &obs, now, &policy);
            prop_assert!(t.rejected.is_none(), "{:?} from {:?} with {:?}", t.rejected, before, obs);
            let mut phase = before.phase();
            for r in &t.fired {
                prop_assert_eq!(r.from, phase);
                phase = r.to;
            }
            prop_assert_eq!(phase, t.lifecycle.phase());
            prop_assert!(t.fired.len() <= MAX_STEPS);
            if op == 2 && before.operation.is_some() {
                // The world says the recorded action finished.
                if let Some(o) = &before.operation {
                    running.0.retain(|id| *id != o.id);
                }
            }
            running.apply(&before, None, &t.effects);
            // Completed operations (Booting, power-off done) are not running any more.
            if let Some(o) = &t.lifecycle.operation && o.completed.is_some() {
                running.0.retain(|id| *id != o.id);
            }
            check_invariants(&before, &t.lifecycle, &policy, &running);
            // While wanted on, a Ready machine stays Ready whatever its Node
            // does (NotReady, gone, wrong providerID): never Failed, never powered off, unless
            // the Group opted into remediation (off in this policy).
            if before.phase() == Phase::Ready && obs.desired == PowerState::On {
                if policy.remediate_after.is_none() {
                    prop_assert_eq!(t.lifecycle.phase(), Phase::Ready, "{:?} -> {:?}", before, t.fired);
                    prop_assert_eq!(starts(&t.effects), 0);
                } else {
                    // Remediation power-cycles: Ready, or on the way off with desired still on.
                    let to = t.lifecycle.phase();
                    prop_assert!(to == Phase::Ready || to == Phase::PoweringOff, "{:?} -> {:?}", before, t.fired);
                    prop_assert!(t.lifecycle.phase() != Phase::PoweringOff || before.node_lost_since.is_some());
                }
            }
            if let Some(w) = t.requeue_at {
                prop_assert!(w > now || t.lifecycle.phase() == Phase::Failed && w == now || !t.changed());
            }
            lc = t.lifecycle;
        }
    }

    /// A simulated machine that follows the effects: with the desired state held, the
    /// lifecycle reaches it or ends Failed with a reason and no retry pending.
    #[test]
    fn desired_state_is_reached_or_ends_failed_with_a_reason(
        desired_on in any::<bool>(),
        start_on in any::<bool>(),
        action_fails in proptest::collection::vec(any::<bool>(), 8),
        boots in proptest::collection::vec(any::<bool>(), 8),
        boot_secs in 1i64..1200,
        action_secs in 1i64..120,
    ) {
        let policy = Policy::default();
        let desired = if desired_on { PowerState::On } else { PowerState::Off };
        let mut lc = Lifecycle::default();
        let mut now = at(0);
        let mut sim = SimMachine::new(start_on, now);
        let mut n_ops = 0usize;
        let mut desired_now = desired;
        for _ in 0..400 {
            let obs = sim.observe(desired_now, lc.operation.as_ref(), now);
            let t = reconcile(&lc, &obs, now, &policy);
            prop_assert!(t.rejected.is_none());
            for e in &t.effects {
                if let Effect::AdoptAsWantedOn = e {
                    desired_now = PowerState::On;
                }
                sim.perform(e, now, &mut n_ops, &action_fails, &boots, boot_secs, action_secs);
            }
            lc = t.lifecycle;
            let next = [t.requeue_at, sim.next_change(now)].into_iter().flatten().min();
            match next {
                Some(n) if n > now => now = n,
                Some(_) => now = fsm::add(now, secs(1)),
                None => break,
            }
        }
        let want = if desired_now == PowerState::On { Phase::Ready } else { Phase::Off };
        let phase = lc.phase();
        prop_assert!(
            phase == want || (phase == Phase::Failed && lc.last_error.is_some() && lc.next_retry_time.is_none()),
            "ended {:?} wanting {:?}: {:?}", phase, want, lc
        );
    }
}

/// A toy machine for the property test: power actions take `action_secs`, may fail; a
/// power-on boots after `boot_secs` unless it "never boots"; a power-off takes the node down.
struct SimMachine {
    on: bool,
    node_since: Option<Timestamp>,
    ready: bool,
    job: Option<(String, Timestamp, bool)>,
    boot_at: Option<Timestamp>,
}

impl SimMachine {
    fn new(on: bool, now: Timestamp) -> Self {
        SimMachine {
            on,
            node_since: Some(now),
            ready: on,
            job: None,
            boot_at: None,
        }
    }

    fn observe(
        &mut self,
        desired: PowerState,
        op: Option<&Operation>,
        now: Timestamp,
    ) -> Observed<'static> {
        if let Some(b) = self.boot_at
            && now >= b
        {
            self.boot_at = None;
            self.on = true;
            self.ready = true;
            self.node_since = Some(b);
        }
        let operation = match (&self.job, op) {
            (Some((id, done, fails)), Some(o)) if *id == o.id => {
                if now < *done {
                    OpStatus::Running
                } else if *fails {
                    OpStatus::Failed {
                        reason: "simulated failure",
                    }
                } else {
                    OpStatus::Succeeded
                }
            }
            _ => OpStatus::Absent,
        };
        // A finished power-off takes the node down.
        if let Some((id, done, false)) = &self.job
            && id.starts_with("off-")
            && now >= *done
            && self.on
        {
            self.on = false;
            self.ready = false;
            self.node_since = Some(*done);
        }
        let node = match self.node_since {
            None => NodeObs::Absent,
            Some(since) => NodeObs::Registered {
                ready: self.ready,
                provider_id_matches: true,
                not_ready_since: (!self.ready).then_some(since),
                ready_since: self.ready.then_some(since),
            },
        };
        Observed {
            desired,
            node,
            operation,
            pods_present: false,
            manual_retry: false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn perform(
        &mut self,
        e: &Effect,
        now: Timestamp,
        n_ops: &mut usize,
        fails: &[bool],
        boots: &[bool],
        boot_secs: i64,
        action_secs: i64,
    ) {
        match e {
            Effect::StartPowerOn { op, .. } | Effect::StartPowerOff { op, .. } => {
                if self.job.as_ref().is_some_and(|(id, _, _)| id == op) {
                    return;
                }
                let i = *n_ops % fails.len();
                *n_ops += 1;
                let done = fsm::add(now, secs(action_secs));
                self.job = Some((op.clone(), done, fails[i]));
                if op.starts_with("on-") && !fails[i] && boots[i] && !self.on {
                    self.boot_at = Some(fsm::add(done, secs(boot_secs)));
                }
            }
            Effect::CancelOperation { op }
                if self.job.as_ref().is_some_and(|(id, _, _)| id == op) =>
            {
                self.job = None;
            }
            Effect::DeleteNode if !self.ready => self.node_since = None,
            _ => {}
        }
    }

    fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        let job = self.job.as_ref().map(|(_, d, _)| *d).filter(|d| *d > now);
        [job, self.boot_at.filter(|b| *b > now)]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The provider orders machines that failed to power on after healthy ones; that needs the
/// failure to outlive the desired-state changes CA makes after it (DeleteNodes, then a new
/// IncreaseSize), which reset `attempt`.
#[test]
fn power_on_failure_is_remembered_across_desired_changes_until_the_machine_comes_up() {
    let p = Policy::default();
    let on = |lc: &Lifecycle, node: NodeObs, op: OpStatus<'static>, t: i64| {
        reconcile(lc, &world(PowerState::On, node, op), at(t), &p).lifecycle
    };
    let off = |lc: &Lifecycle, op: OpStatus<'static>, t: i64| {
        reconcile(lc, &world(PowerState::Off, NodeObs::Absent, op), at(t), &p).lifecycle
    };
    let lc = on(&Lifecycle::default(), NodeObs::Absent, OpStatus::Absent, 0);
    assert_eq!(lc.last_power_on_failure, None);
    let lc = on(
        &lc,
        NodeObs::Absent,
        OpStatus::Failed {
            reason: "BMC unreachable",
        },
        20,
    );
    assert_eq!(lc.phase(), Phase::Failed);
    assert_eq!(lc.last_power_on_failure, Some(at(20)));
    // CA gives up on the instance: desired off. The failure stays, `attempt` does not.
    // (Failed powers off to be sure before calling it Off.)
    let lc = off(&lc, OpStatus::Absent, 30);
    assert_eq!(lc.phase(), Phase::PoweringOff);
    assert_eq!(lc.last_power_on_failure, Some(at(20)));
    let lc = off(&lc, OpStatus::Succeeded, 35);
    assert_eq!(lc.phase(), Phase::Off);
    assert_eq!(lc.attempt, 0);
    assert_eq!(lc.last_power_on_failure, Some(at(20)));
    // Asked again: the new attempt keeps it until it has an outcome.
    let lc = on(&lc, NodeObs::Absent, OpStatus::Absent, 40);
    assert_eq!(lc.phase(), Phase::PoweringOn);
    assert_eq!(lc.last_power_on_failure, Some(at(20)));
    // The boot deadline passing is a power-on failure too: the newer time is kept.
    let lc = on(&lc, NodeObs::Absent, OpStatus::Running, 640);
    assert_eq!(lc.phase(), Phase::Failed);
    assert_eq!(lc.last_power_on_failure, Some(at(640)));
    // The JSON field name the provider (and a restarted operator) reads.
    let v = serde_json::to_value(&lc).unwrap_or_default();
    assert!(v.get("lastPowerOnFailure").is_some(), "{v}");
    // The retry boots: cleared.
    let lc = on(&lc, NodeObs::Absent, OpStatus::Running, 700);
    assert_eq!(lc.phase(), Phase::PoweringOn);
    let lc = on(&lc, ready_since(at(750)), OpStatus::Succeeded, 760);
    assert_eq!(lc.phase(), Phase::Ready);
    assert_eq!(lc.last_power_on_failure, None);
}

#[test]
fn power_off_and_node_lost_failures_are_not_power_on_failures() {
    let p = Policy::default();
    let ready = Lifecycle {
        phase: Some(Phase::Ready),
        phase_since: Some(at(0)),
        goal: Some(PowerState::On),
        ..Default::default()
    };
    let t = reconcile(
        &ready,
        &world(PowerState::Off, READY, OpStatus::Absent),
        at(10),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOff);
    let t = reconcile(
        &t.lifecycle,
        &world(PowerState::Off, READY, OpStatus::Failed { reason: "ssh" }),
        at(20),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Failed);
    assert_eq!(t.lifecycle.last_power_on_failure, None);
    let lost = NodeObs::Registered {
        ready: false,
        provider_id_matches: true,
        not_ready_since: Some(at(0)),
        ready_since: None,
    };
    let t = reconcile(
        &ready,
        &world(PowerState::On, lost, OpStatus::Absent),
        at(3600),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
    assert_eq!(t.lifecycle.last_power_on_failure, None);
}

/// Kubernetes writes condition times in whole seconds: a node that went NotReady in the same
/// second as the power-off request (its lastTransitionTime truncated to before the request) is
/// still evidence that the machine went down after it.
#[test]
fn not_ready_in_the_same_second_as_the_power_off_counts_as_off() {
    let started: Timestamp = "2026-01-01T00:00:10.400Z".parse().unwrap_or_default();
    let mut lc = Lifecycle::default();
    let policy = Policy::default();
    lc.phase = Some(Phase::Ready);
    lc.goal = Some(PowerState::On);
    let t = reconcile(
        &lc,
        &Observed {
            node: NodeObs::Registered {
                ready: true,
                provider_id_matches: true,
                not_ready_since: None,
                ready_since: None,
            },
            ..Observed::empty(PowerState::Off)
        },
        started,
        &policy,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOff);
    let later = started + jiff::SignedDuration::from_millis(300);
    let t = reconcile(
        &t.lifecycle,
        &Observed {
            node: NodeObs::Registered {
                ready: false,
                provider_id_matches: true,
                not_ready_since: Some("2026-01-01T00:00:10Z".parse().unwrap_or_default()),
                ready_since: None,
            },
            operation: OpStatus::Running,
            ..Observed::empty(PowerState::Off)
        },
        later,
        &policy,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Off);
}

/// Ready with the machine's providerID, the Ready condition True since `since`.
fn ready_since(since: Timestamp) -> NodeObs {
    NodeObs::Registered {
        ready: true,
        provider_id_matches: true,
        not_ready_since: None,
        ready_since: Some(since),
    }
}

fn not_ready_since(since: Timestamp) -> NodeObs {
    NodeObs::Registered {
        ready: false,
        provider_id_matches: true,
        not_ready_since: Some(since),
        ready_since: None,
    }
}

fn powering_off(completed: bool) -> Lifecycle {
    Lifecycle {
        phase: Some(Phase::PoweringOff),
        phase_since: Some(at(0)),
        goal: Some(PowerState::Off),
        operation: Some(op(OperationKind::PowerOff, "off-1", at(0), completed)),
        operation_seq: 1,
        ..Lifecycle::default()
    }
}

/// CA deletes a machine and wants it again while its Node is still Ready from before the
/// power-off (the kubelet is stopping, or the node lifecycle controller has not marked it
/// NotReady yet). With the power-off action still running, it is cancelled and a power-on is
/// started and kept: that Ready Node is no evidence of a boot, so the machine is neither Ready
/// nor uncordoned until the Node becomes Ready again after the power-on.
#[test]
fn a_node_ready_from_before_the_power_on_is_no_evidence_of_a_boot() {
    let p = Policy::default();
    let stale = ready_since(at(-1000));
    let t = reconcile(
        &powering_off(false),
        &world(PowerState::On, stale, OpStatus::Running),
        at(10),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOn, "{:?}", t.fired);
    assert!(
        t.effects
            .contains(&Effect::CancelOperation { op: "off-1".into() })
    );
    assert!(
        t.effects
            .iter()
            .any(|e| matches!(e, Effect::StartPowerOn { op, .. } if op == "on-2"))
    );
    assert!(
        !t.effects
            .contains(&Effect::CancelOperation { op: "on-2".into() })
    );
    assert!(!t.effects.contains(&Effect::Uncordon));
    // The power-on runs and finishes; the Node is still the old Ready one.
    let t = reconcile(
        &t.lifecycle,
        &world(PowerState::On, stale, OpStatus::Running),
        at(20),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOn);
    assert!(t.effects.is_empty(), "{:?}", t.effects);
    let t = reconcile(
        &t.lifecycle,
        &world(PowerState::On, stale, OpStatus::Succeeded),
        at(30),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Booting);
    assert!(!t.effects.contains(&Effect::Uncordon));
    // The machine went down after all, then booted: a Ready transition after the power-on.
    let lc = t.lifecycle;
    let t = reconcile(
        &lc,
        &world(PowerState::On, not_ready_since(at(40)), OpStatus::Succeeded),
        at(50),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Booting);
    let t = reconcile(
        &t.lifecycle,
        &world(PowerState::On, ready_since(at(90)), OpStatus::Succeeded),
        at(95),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
    assert!(t.effects.contains(&Effect::Uncordon));
}

/// Condition times have whole seconds: a Ready transition in the second the power-on was
/// started counts as after it.
#[test]
fn a_ready_transition_in_the_second_of_the_power_on_counts() {
    let p = Policy::default();
    let started = at(10) + SignedDuration::from_millis(700);
    let lc = Lifecycle {
        phase: Some(Phase::Booting),
        phase_since: Some(started),
        goal: Some(PowerState::On),
        operation: Some(op(OperationKind::PowerOn, "on-2", started, true)),
        operation_seq: 2,
        ..Lifecycle::default()
    };
    let t = reconcile(
        &lc,
        &world(PowerState::On, ready_since(at(10)), OpStatus::Succeeded),
        at(11),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
    let t = reconcile(
        &lc,
        &world(PowerState::On, ready_since(at(9)), OpStatus::Succeeded),
        at(11),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Booting);
}

/// A machine wanted on again once its power-off action is done finishes powering off (a
/// Wake-on-LAN packet or a Redfish On sent while it still shuts down is lost), and is powered
/// on from Off as soon as its Node goes NotReady: no boot timeout is waited out.
#[test]
fn wanted_on_after_the_power_off_action_is_done_finishes_the_power_off_first() {
    let p = Policy::default();
    let stale = ready_since(at(-1000));
    let t = reconcile(
        &powering_off(true),
        &world(PowerState::On, stale, OpStatus::Succeeded),
        at(10),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOff, "{:?}", t.fired);
    assert_eq!(t.lifecycle.goal, Some(PowerState::On));
    assert_eq!(starts(&t.effects), 0, "{:?}", t.effects);
    assert!(!t.effects.contains(&Effect::Uncordon));
    // Nothing more while the Node is still Ready.
    let o = reconcile_mut(
        &mut t.lifecycle.clone(),
        &world(PowerState::On, stale, OpStatus::Succeeded),
        at(20),
        &p,
    );
    assert!(o.fired.is_empty(), "{:?}", o.fired);
    // NotReady: confirmed off, then powered on at once.
    let t = reconcile(
        &t.lifecycle,
        &world(PowerState::On, not_ready_since(at(45)), OpStatus::Succeeded),
        at(50),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOn, "{:?}", t.fired);
    assert!(t.effects.contains(&Effect::DeleteNode));
    assert!(
        t.effects
            .iter()
            .any(|e| matches!(e, Effect::StartPowerOn { op, .. } if op == "on-2"))
    );
}

/// A Node Ready from before the power-on that stays Ready for the NotReady grace period
/// belongs to a machine that never went off: it counts as up then (a machine that went off
/// would have been marked NotReady long before), and the reconcile asks to look again then.
#[test]
fn a_node_ready_throughout_counts_as_up_after_the_grace_period() {
    let p = Policy::default();
    let lc = Lifecycle {
        phase: Some(Phase::Booting),
        phase_since: Some(at(5)),
        goal: Some(PowerState::On),
        operation: Some(op(OperationKind::PowerOn, "on-2", at(0), true)),
        operation_seq: 2,
        ..Lifecycle::default()
    };
    let stale = ready_since(at(-500));
    let t = reconcile(
        &lc,
        &world(PowerState::On, stale, OpStatus::Succeeded),
        at(60),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Booting);
    assert_eq!(t.requeue_at, Some(fsm::add(at(0), p.not_ready_grace)));
    let t = reconcile(
        &lc,
        &world(PowerState::On, stale, OpStatus::Succeeded),
        fsm::add(at(0), p.not_ready_grace),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Ready);
}

/// A power-on that fails at once leaves the machine Failed with its goal on; the Node still
/// Ready from before is no late evidence of a boot either.
#[test]
fn a_failed_power_on_does_not_take_a_stale_ready_node_as_up() {
    let p = Policy::default();
    let lc = Lifecycle {
        phase: Some(Phase::PoweringOn),
        phase_since: Some(at(0)),
        goal: Some(PowerState::On),
        operation: Some(op(OperationKind::PowerOn, "on-2", at(0), false)),
        operation_seq: 2,
        ..Lifecycle::default()
    };
    let stale = ready_since(at(-30));
    let t = reconcile(
        &lc,
        &world(PowerState::On, stale, OpStatus::Failed { reason: "exit 1" }),
        at(5),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Failed, "{:?}", t.fired);
    let t = reconcile(
        &t.lifecycle,
        &world(PowerState::On, stale, OpStatus::Absent),
        at(20),
        &p,
    );
    assert_eq!(t.lifecycle.phase(), Phase::Failed, "{:?}", t.fired);
    assert!(!t.effects.contains(&Effect::Uncordon));
}

fn any_node(now: Timestamp) -> impl Strategy<Value = NodeObs> {
    (0u8..5, -900i64..60).prop_map(move |(k, d)| {
        let t = fsm::add(now, secs(d));
        match k {
            0 => NodeObs::Absent,
            1 => ready_since(t),
            2 => not_ready_since(t),
            3 => NodeObs::Registered {
                ready: true,
                provider_id_matches: false,
                not_ready_since: None,
                ready_since: Some(t),
            },
            _ => NodeObs::Registered {
                ready: true,
                provider_id_matches: true,
                not_ready_since: None,
                ready_since: None,
            },
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// A chained step never drops a StartPowerOn: whatever the lifecycle and the world, a
    /// power-on started by one reconcile is neither cancelled nor replaced by a later step of
    /// the same reconcile (nothing the reconcile observed can be evidence of it).
    #[test]
    fn a_chained_step_never_drops_a_start_power_on(
        phase in 0usize..Phase::ALL.len(),
        pick in any::<prop::sample::Index>(),
        (now, node) in (0i64..1200).prop_flat_map(|s| (Just(at(s)), any_node(at(s)))),
        on in any::<bool>(),
        op_status in 0u8..4,
        pods in any::<bool>(),
        retry in any::<bool>(),
        remediate in any::<bool>(),
    ) {
        let policy = if remediate { remediating() } else { Policy::default() };
        let lcs = candidates(Phase::ALL[phase]);
        let lc = lcs[pick.index(lcs.len())].clone();
        let obs = Observed {
            desired: if on { PowerState::On } else { PowerState::Off },
            node,
            operation: match op_status {
                0 => OpStatus::Absent,
                1 => OpStatus::Running,
                2 => OpStatus::Succeeded,
                _ => OpStatus::Failed { reason: "exit 1" },
            },
            pods_present: pods,
            manual_retry: retry,
        };
        let t = reconcile(&lc, &obs, now, &policy);
        for (i, e) in t.effects.iter().enumerate() {
            let Effect::StartPowerOn { op, .. } = e else { continue };
            let later = &t.effects[i + 1..];
            prop_assert!(
                !later.iter().any(|l| matches!(l,
                    Effect::CancelOperation { op: o }
                    | Effect::StartPowerOn { op: o, .. }
                    | Effect::StartPowerOff { op: o, .. } if o != op || matches!(l, Effect::CancelOperation { .. }))),
                "{op} dropped: {:?} from {:?} with {:?}", t.fired.iter().map(|r| (r.from, r.event, r.to)).collect::<Vec<_>>(), lc, obs
            );
            prop_assert_eq!(t.lifecycle.operation.as_ref().map(|o| o.id.as_str()), Some(op.as_str()));
        }
    }
}

fn with_pods(mut w: Observed<'static>) -> Observed<'static> {
    w.pods_present = true;
    w
}

fn drains_without_power_off(t: &Transition) -> bool {
    t.effects.contains(&Effect::Cordon)
        && t.effects.contains(&Effect::Drain)
        && !t
            .effects
            .iter()
            .any(|e| matches!(e, Effect::StartPowerOff { .. }))
}

/// A Node registered with another providerID never counts as up, yet the scheduler binds pods
/// to it when it is Ready: wanted off while powering on or booting, it is drained first, and
/// powered off once no pods are left.
#[test]
fn a_node_with_another_provider_id_is_drained_before_the_power_off() {
    let p = Policy::default();
    let wrong = NodeObs::Registered {
        ready: true,
        provider_id_matches: false,
        not_ready_since: None,
        ready_since: Some(at(30)),
    };
    for (phase, done) in [(Phase::PoweringOn, false), (Phase::Booting, true)] {
        let lc = Lifecycle {
            phase: Some(phase),
            phase_since: Some(at(0)),
            goal: Some(PowerState::On),
            operation: Some(op(OperationKind::PowerOn, "on-1", at(0), done)),
            operation_seq: 1,
            ..Lifecycle::default()
        };
        let w = world(PowerState::Off, wrong, OpStatus::Running);
        let t = reconcile(&lc, &with_pods(w), at(60), &p);
        assert!(drains_without_power_off(&t), "{phase}: {:?}", t.effects);
        let t = reconcile(&t.lifecycle, &w, at(70), &p);
        assert_eq!(t.lifecycle.phase(), Phase::PoweringOff, "{phase}");
    }
    // Ready past the grace period with that Node: its pods are drained too.
    let ready = Lifecycle {
        phase: Some(Phase::Ready),
        phase_since: Some(at(0)),
        goal: Some(PowerState::On),
        ..Lifecycle::default()
    };
    let w = world(PowerState::Off, wrong, OpStatus::Absent);
    let t = reconcile(&ready, &with_pods(w), at(1000), &p);
    assert!(drains_without_power_off(&t), "{:?}", t.effects);
}

/// A Failed machine whose goal was on (its power-on failed, yet its Node may run pods) is
/// drained before the power-off when desired turns off.
#[test]
fn a_failed_machine_wanted_off_is_drained_first() {
    let p = Policy::default();
    let failed = Lifecycle {
        phase: Some(Phase::Failed),
        phase_since: Some(at(0)),
        goal: Some(PowerState::On),
        attempt: 1,
        next_retry_time: Some(at(30)),
        operation_seq: 1,
        ..Lifecycle::default()
    };
    let w = world(PowerState::Off, ready_since(at(-100)), OpStatus::Absent);
    let t = reconcile(&failed, &with_pods(w), at(10), &p);
    assert!(drains_without_power_off(&t), "{:?}", t.effects);
    assert_eq!(t.lifecycle.phase(), Phase::Failed);
    let t = reconcile(&t.lifecycle, &with_pods(w), at(40), &p);
    assert!(drains_without_power_off(&t), "{:?}", t.effects);
    let t = reconcile(&t.lifecycle, &w, at(50), &p);
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOff);
    assert_eq!(t.lifecycle.attempt, 0);
}

/// A Failed power-off's retries, by backoff or by hand, drain what is on the Node first.
#[test]
fn a_failed_power_offs_retries_drain_first() {
    let p = Policy::default();
    let failed = Lifecycle {
        phase: Some(Phase::Failed),
        phase_since: Some(at(0)),
        goal: Some(PowerState::Off),
        attempt: 1,
        next_retry_time: Some(at(30)),
        operation_seq: 1,
        ..Lifecycle::default()
    };
    let w = world(PowerState::Off, ready_since(at(-100)), OpStatus::Absent);
    let t = reconcile(&failed, &with_pods(w), at(40), &p);
    assert!(drains_without_power_off(&t), "retry due: {:?}", t.effects);
    let mut manual = with_pods(w);
    manual.manual_retry = true;
    let exhausted = Lifecycle {
        next_retry_time: None,
        attempt: p.max_attempts,
        ..failed.clone()
    };
    let t = reconcile(&exhausted, &manual, at(40), &p);
    assert!(
        drains_without_power_off(&t),
        "manual retry: {:?}",
        t.effects
    );
    // Emptied: the retry powers off.
    let t = reconcile(&failed, &w, at(40), &p);
    assert_eq!(t.lifecycle.phase(), Phase::PoweringOff);
}
