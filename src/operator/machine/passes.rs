//! The edge loop both the machine controller and the simulator run: observe the world, let
//! [`reconcile_mut`] decide, act on its effects; again while the acts changed what is observed,
//! up to [`MAX_PASSES`] times. The edge says how to observe and how to act; the loop is here
//! once, so the two cannot drift apart.
//!
//! `act` returns a future because the controller's acts are API calls. The core never awaits
//! anything else: an edge whose acts are synchronous (the simulator) gets a future that is ready
//! on its first poll.
use std::future::Future;

use jiff::Timestamp;

use super::fsm::Policy;
use super::reconcile::{Observed, Outcome, reconcile_mut};
use super::types::Lifecycle;

/// Passes of observe → decide → act in one reconcile. The longest chain of acts whose answer
/// comes back within the same reconcile is three decisions long: a drain empties the node (pass
/// 1), the power-off is started and its driver answers at once, as an HTTP call or a refusal
/// does (pass 2), the core takes that answer (pass 3). Anything after that waits for an event
/// or a requeue. Adopting a machine found on changes the desired state, but the core already
/// decides on the adopted state within its own pass, so it adds no pass.
pub const MAX_PASSES: usize = 3;

/// One caller's side of the loop.
pub trait Edge {
    type Error;

    /// The lifecycle being driven, and the world as the edge sees it now.
    fn observe(&mut self) -> (&mut Lifecycle, Observed<'_>);

    /// Carries out one pass's decision (the lifecycle already holds its result). `Ok(true)`:
    /// the acts changed what [`observe`](Self::observe) returns, so the core decides again.
    fn act(&mut self, decision: Outcome) -> impl Future<Output = Result<bool, Self::Error>>;
}

/// Runs the loop for one reconcile at `now`; returns how many passes it took.
pub async fn drive<E: Edge>(
    edge: &mut E,
    now: Timestamp,
    policy: &Policy,
) -> Result<usize, E::Error> {
    for pass in 1..=MAX_PASSES {
        let (lc, observed) = edge.observe();
        let decision = reconcile_mut(lc, &observed, now, policy);
        if !edge.act(decision).await? {
            return Ok(pass);
        }
    }
    Ok(MAX_PASSES)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::FutureExt as _;
    use jiff::SignedDuration;

    use super::*;
    use crate::operator::machine::{Effect, NodeObs, OpStatus, Phase, PowerState};

    /// A machine that is Ready with pods on its node and wanted off, whose drain empties the
    /// node and whose power-off driver answers "done" at once (an HTTP call).
    struct Scripted {
        lc: Lifecycle,
        pods_present: bool,
        operation: OpStatus<'static>,
        /// Effects per pass, for the assertions.
        passes: Vec<Vec<Effect>>,
    }

    impl Edge for Scripted {
        type Error = Infallible;

        fn observe(&mut self) -> (&mut Lifecycle, Observed<'_>) {
            let observed = Observed {
                desired: PowerState::Off,
                node: NodeObs::Registered {
                    ready: true,
                    provider_id_matches: true,
                    not_ready_since: None,
                    ready_since: None,
                },
                operation: self.operation,
                pods_present: self.pods_present,
                manual_retry: false,
            };
            (&mut self.lc, observed)
        }

        async fn act(&mut self, decision: Outcome) -> Result<bool, Infallible> {
            let mut changed = false;
            for e in &decision.effects {
                match e {
                    Effect::Drain if self.pods_present => {
                        self.pods_present = false;
                        changed = true;
                    }
                    Effect::StartPowerOff { .. } => {
                        self.operation = OpStatus::Succeeded;
                        changed = true;
                    }
                    _ => {}
                }
            }
            self.passes.push(decision.effects);
            Ok(changed)
        }
    }

    fn ready_machine() -> Lifecycle {
        Lifecycle {
            phase: Some(Phase::Ready),
            phase_since: Some(Timestamp::UNIX_EPOCH),
            goal: Some(PowerState::On),
            ..Lifecycle::default()
        }
    }

    /// Drain, start, and the driver's immediate answer are three decisions: all of them happen
    /// in one reconcile, and the third pass's acts change nothing, so no fourth is needed.
    #[test]
    fn the_longest_chain_of_immediate_answers_fits_in_the_passes() {
        let now = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1);
        let mut edge = Scripted {
            lc: ready_machine(),
            pods_present: true,
            operation: OpStatus::Absent,
            passes: Vec::new(),
        };
        let passes = drive(&mut edge, now, &Policy::default())
            .now_or_never()
            .unwrap_or_else(|| panic!("a synchronous edge's loop finishes on its first poll"));
        assert_eq!(passes, Ok(3));
        assert_eq!(passes, Ok(MAX_PASSES));
        assert!(edge.passes[0].contains(&Effect::Drain));
        assert!(
            edge.passes[1]
                .iter()
                .any(|e| matches!(e, Effect::StartPowerOff { .. }))
        );
        assert_eq!(edge.lc.phase(), Phase::PoweringOff);
        assert!(
            edge.lc
                .operation
                .as_ref()
                .is_some_and(|o| o.completed == Some(now)),
            "the third pass took the driver's answer: {:?}",
            edge.lc.operation
        );
    }

    /// An edge whose acts always claim a change is still asked at most MAX_PASSES times.
    #[test]
    fn the_loop_stops_after_max_passes() {
        struct Restless(Lifecycle, usize);
        impl Edge for Restless {
            type Error = Infallible;
            fn observe(&mut self) -> (&mut Lifecycle, Observed<'_>) {
                (&mut self.0, Observed::empty(PowerState::Off))
            }
            async fn act(&mut self, _: Outcome) -> Result<bool, Infallible> {
                self.1 += 1;
                Ok(true)
            }
        }
        let mut edge = Restless(Lifecycle::default(), 0);
        let passes = drive(&mut edge, Timestamp::UNIX_EPOCH, &Policy::default()).now_or_never();
        assert_eq!(passes, Some(Ok(MAX_PASSES)));
        assert_eq!(edge.1, MAX_PASSES);
    }
}
