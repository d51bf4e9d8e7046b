//! Failed and overdue instances, and the backoff of a group whose scale-up failed
//! (`utils/backoff`, `static_autoscaler.go` `deleteCreatedNodesWithErrors`).
use super::names;
use crate::operator::machine::PowerState;
use crate::operator::provider::ops::{self, InstanceState, NodeRef};
use crate::sim::engine::Sim;
use crate::sim::units::format_millis;

impl Sim<'_> {
    /// `utils/backoff` `exponentialBackoff.Backoff`: a group already backed off keeps its
    /// duration (concurrent failures must not escalate it); once the backoff has expired the
    /// next failure doubles it, up to the max; after the reset timeout without failures
    /// (`RemoveStaleBackoffData`) it starts over at the initial duration.
    pub(super) fn back_off(&mut self, g: usize, why: &str) {
        let a = &self.sc.autoscaler;
        let (initial, max, reset) = (a.backoff_initial, a.backoff_max, a.backoff_reset);
        let now = self.now;
        let b = &mut self.ca.backoff[g];
        let known = b.duration > 0 && b.last_failure.is_some_and(|t| t + reset >= now);
        b.duration = if !known {
            initial
        } else if b.until < now {
            (b.duration * 2).min(max)
        } else {
            b.duration
        };
        b.until = now + b.duration;
        b.last_failure = Some(now);
        let d = b.duration;
        self.counters.backoffs += 1;
        self.note(
            None,
            Some(g),
            format!("CA backs the group off for {}: {why}", format_millis(d)),
        );
    }

    pub(super) fn handle_unhealthy_instances(&mut self, ids: &[String]) {
        let sc = self.sc;
        for (g, group) in sc.groups.iter().enumerate() {
            let coming_up = group.members.iter().any(|&m| {
                self.machines[m].desired == PowerState::On && !self.cluster.nodes[m].ready
            });
            if !coming_up {
                for &m in &group.members {
                    self.ca.creating_since[m] = None;
                }
                continue;
            }
            let instances = match ops::node_group_nodes(self.inventory(), &ids[g]) {
                Ok(i) => i,
                Err(e) => {
                    self.violate(format!("NodeGroupNodes failed for a known group: {e}"));
                    return;
                }
            };
            let mut creating = vec![false; group.members.len()];
            let mut give_up: Vec<(NodeRef, String)> = Vec::new();
            for inst in &instances {
                if inst.state != InstanceState::Creating {
                    continue;
                }
                let Some(m) = self.machine_index(&inst.machine.namespace, &inst.machine.name)
                else {
                    continue;
                };
                if let Some(pos) = group.members.iter().position(|&x| x == m) {
                    creating[pos] = true;
                }
                let since = *self.ca.creating_since[m].get_or_insert(self.now);
                let reason = if let Some(err) = &inst.error {
                    Some(format!(
                        "instance {} has errorInfo {}: {}",
                        inst.id, err.code, err.message
                    ))
                } else if self.now - since >= self.ca.options[g].provision {
                    Some(format!(
                        "instance {} not registered within maxNodeProvisionTime {}",
                        inst.id,
                        format_millis(self.ca.options[g].provision)
                    ))
                } else {
                    None
                };
                if let Some(r) = reason {
                    give_up.push((
                        NodeRef {
                            provider_id: inst.id.clone(),
                            name: inst.id.clone(),
                        },
                        r,
                    ));
                }
            }
            for (pos, &m) in group.members.iter().enumerate() {
                if !creating[pos] {
                    self.ca.creating_since[m] = None;
                }
            }
            if give_up.is_empty() {
                continue;
            }
            let refs: Vec<NodeRef> = give_up.iter().map(|(r, _)| r.clone()).collect();
            let why = give_up
                .iter()
                .map(|(_, w)| w.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let ts = self.ts(self.now);
            match ops::delete_nodes(self.inventory(), &ids[g], &refs, ts) {
                Ok(d) => {
                    self.check_bounds(g, d.target_after, "DeleteNodes");
                    if d.target_after < group.min && d.target_after < d.target_before {
                        self.violate(format!(
                            "DeleteNodes of failed instances took group {} to target {}, below its min {}",
                            group.name, d.target_after, group.min
                        ));
                    }
                    if !d.changes.is_empty() {
                        self.counters.failed_instances_deleted += d.changes.len() as u64;
                        self.note(
                            None,
                            Some(g),
                            format!(
                                "CA deletes failed instance(s) {}: target {} → {}",
                                names(&d.changes),
                                d.target_before,
                                d.target_after
                            ),
                        );
                        self.apply_changes(&d.changes);
                    }
                }
                Err(e) => {
                    self.note(None, Some(g), format!("CA: DeleteNodes refused: {e}"));
                }
            }
            for &m in &group.members {
                if refs.iter().any(|r| self.provider_id(m) == r.provider_id) {
                    self.ca.creating_since[m] = None;
                }
            }
            self.back_off(g, &why);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each test names the CA 1.36.1 function (in the CA source tree) whose behaviour it checks.
    use super::*;
    use crate::sim::autoscaler::test_support::*;
    use crate::sim::units::HOUR;
    use crate::sim::units::MINUTE;
    use crate::sim::units::Millis;

    /// `utils/backoff/exponential_backoff.go` `Backoff`: while the group is backed off its
    /// duration is kept; after it expired the next failure doubles it (up to the max); after
    /// the reset timeout without failure it starts over.
    #[test]
    fn backoff_keeps_its_duration_while_backed_off_and_doubles_after() {
        let sc = lab(
            "  backoff: {initial: 5m, max: 20m}\n",
            G,
            TWO,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        let at = |s: &mut Sim<'_>, t: Millis| {
            s.now = t;
            s.back_off(0, "test");
            s.ca.backoff[0].duration
        };
        assert_eq!(at(&mut s, 0), 5 * MINUTE);
        assert_eq!(at(&mut s, MINUTE), 5 * MINUTE, "still backed off: kept");
        assert_eq!(s.ca.backoff[0].until, 6 * MINUTE);
        assert_eq!(at(&mut s, 7 * MINUTE), 10 * MINUTE, "expired: doubled");
        assert_eq!(at(&mut s, 18 * MINUTE), 20 * MINUTE);
        assert_eq!(at(&mut s, 40 * MINUTE), 20 * MINUTE, "capped at the max");
        assert_eq!(
            at(&mut s, 4 * HOUR),
            5 * MINUTE,
            "reset after 3h without failure"
        );
    }
}
