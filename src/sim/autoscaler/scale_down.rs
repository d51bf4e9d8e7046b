//! Scale-down (`core/scaledown/planner`, `budgets`, `actuation`): unneeded nodes found by
//! simulating their removal, removed after their unneeded time within the parallelism budgets,
//! tainted, then drained and deleted.
use super::buffer::PLACEHOLDER;
use super::drain::Drain;
use super::names;
use crate::operator::machine::PowerState;
use crate::operator::provider::ops::{self, NodeRef};
use crate::sim::engine::{EventKindSim, Sim};
use crate::sim::units::Millis;

impl Sim<'_> {
    /// Whether CA counts a registered node as a scale-down candidate at all: not being deleted,
    /// not annotated scale-down-disabled (`eligibility.go` `HasNoScaleDownAnnotation`), in one of
    /// our groups, Ready or (with --scale-down-unready-enabled) NotReady.
    fn scale_down_candidate(&self, m: usize) -> bool {
        let slot = &self.cluster.nodes[m];
        let ms = &self.machines[m];
        ms.node_registered
            && !slot.cordoned
            && ms.maintenance.is_none()
            && ms.desired == PowerState::On
            && !slot.no_scale_down
            && (slot.ready || self.sc.autoscaler.scale_down_unready_enabled)
    }

    /// `planner.go` `unneededNodesLimit`: simulating more nodes than CA could remove over its
    /// next loops is skipped.
    fn unneeded_limit(&self) -> usize {
        let a = &self.sc.autoscaler;
        let n = a.max_scale_down_parallelism as usize;
        let already = self
            .ca
            .unneeded_since
            .iter()
            .filter(|s| s.is_some())
            .count();
        let limit = already + 2 * n;
        let u = a.scale_down_unneeded_time.max(a.scan_interval);
        let upper = n * (u / a.scan_interval.max(1)) as usize + n;
        limit.min(upper)
    }

    pub(super) fn scale_down(&mut self, ids: &[String]) {
        let sc = self.sc;
        let a = &sc.autoscaler;
        let now = self.now;
        // `planner.go` `categorizeNodes`: previously unneeded nodes first
        // (`processors/scaledowncandidates` sorting), then the others in node order.
        let mut order: Vec<usize> = (0..sc.machines.len())
            .filter(|&m| self.scale_down_candidate(m))
            .collect();
        order.sort_by_key(|&m| (self.ca.unneeded_since[m].is_none(), m));
        let mut rooms = self.cluster.free_rooms();
        // Warm-spare placeholders hold their room in CA's snapshot: no pod moves into it.
        for r in rooms.iter_mut() {
            for &(c, mem) in self.ca.placeholders.on_node.get(r.0).into_iter().flatten() {
                r.1 = r.1.saturating_sub(c);
                r.2 = r.2.saturating_sub(mem);
                r.3 = r.3.saturating_sub(1);
            }
        }
        let mut is_destination: Vec<bool> = vec![false; sc.machines.len()];
        for r in &rooms {
            is_destination[r.0] = true;
        }
        // Pods moved onto a node by an earlier candidate's simulation: `(cpu, memory,
        // workload, created)`; they move again if that node is removed too.
        let mut moved_in: Vec<Vec<(u64, u64, u16, Millis)>> = vec![Vec::new(); sc.machines.len()];
        let mut pdb_left = self.pdb_remaining();
        let limit = self.unneeded_limit();
        let mut removable: Vec<(usize, bool)> = Vec::new();
        for m in order {
            let g = sc.machines[m].group;
            let opts = self.ca.options[g];
            // `unremovable.Nodes.IsRecent`: found unremovable within the recheck timeout.
            if self.ca.unremovable_until[m] > now {
                continue;
            }
            // `eligibility.go` `isNodeAtOrBelowUtilizationThreshold`: at the threshold counts.
            // Warm-spare placeholders packed onto the node count as its pods (they are in CA's
            // snapshot).
            let slot = &self.cluster.nodes[m];
            let held = &self.ca.placeholders.on_node;
            let extra = held.get(m).map_or((0, 0), |p| {
                p.iter()
                    .fold((0, 0), |(c, mm), &(pc, pm)| (c + pc, mm + pm))
            });
            if slot.utilization_with(extra, opts.ignore_daemonsets) > opts.threshold {
                continue;
            }
            if removable.len() >= limit {
                break;
            }
            // `simulator/cluster.go` `SimulateNodeRemoval`: every pod must be drainable...
            let mut pods: Vec<(u64, u64, u16, Millis)> = slot
                .pods
                .iter()
                .map(|&p| {
                    let s = &self.cluster.pods[p as usize].spec;
                    (s.cpu, s.memory, s.workload, s.arrival)
                })
                .collect();
            pods.extend(moved_in[m].iter().copied());
            if let Some(p) = held.get(m) {
                pods.extend(p.iter().map(|&(c, mem)| (c, mem, PLACEHOLDER, now)));
            }
            let blocked = pods.iter().find_map(|&(_, _, w, created)| {
                match self.drain_rule(w, created, &pdb_left) {
                    Drain::Blocked(why) => Some(why),
                    Drain::Movable => None,
                }
            });
            // ...and fit on the destinations left, this node and removed ones excluded.
            let fits = blocked.is_none() && {
                // First fit onto the rooms; undone unless every pod found a place.
                let mut placed: Vec<usize> = Vec::with_capacity(pods.len());
                let ok = pods.iter().all(|&(c, mem, _, _)| {
                    rooms
                        .iter_mut()
                        .enumerate()
                        .find(|(_, r)| {
                            r.0 != m && is_destination[r.0] && r.1 >= c && r.2 >= mem && r.3 > 0
                        })
                        .map(|(i, r)| {
                            r.1 -= c;
                            r.2 -= mem;
                            r.3 -= 1;
                            placed.push(i);
                        })
                        .is_some()
                });
                if ok {
                    // `withForkedSnapshot` commits: later candidates see these moves.
                    for (&i, &pod) in placed.iter().zip(&pods) {
                        moved_in[rooms[i].0].push(pod);
                    }
                } else {
                    for (&i, &(c, mem, _, _)) in placed.iter().zip(&pods) {
                        let r = &mut rooms[i];
                        r.1 += c;
                        r.2 += mem;
                        r.3 += 1;
                    }
                }
                ok
            };
            if !fits {
                // `unremovableNodes.AddTimeout(..., latestUpdate + UnremovableNodeRecheckTimeout)`.
                self.ca.unremovable_until[m] = now + a.unremovable_node_recheck_timeout;
                continue;
            }
            is_destination[m] = false;
            for &(_, _, w, _) in &pods {
                if sc
                    .workloads
                    .get(usize::from(w))
                    .is_some_and(|wl| wl.drain.pdb_max_unavailable.is_some())
                {
                    pdb_left[usize::from(w)] -= 1;
                }
            }
            removable.push((m, !pods.is_empty()));
        }
        // `unneeded.Nodes.Update`: removable nodes keep their since (new ones start now); the
        // others are no longer unneeded.
        let mut still = vec![false; sc.machines.len()];
        for &(m, drain) in &removable {
            still[m] = true;
            self.ca.unneeded_drain[m] = drain;
            self.ca.unneeded_since[m].get_or_insert(now);
        }
        for (m, s) in still.iter().enumerate() {
            if !s {
                self.ca.unneeded_since[m] = None;
            }
        }
        // `static_autoscaler.go` `isScaleDownInCooldown`.
        let in_cooldown = self
            .ca
            .last_scale_up
            .is_some_and(|t| t + a.scale_down_delay_after_add > now)
            || self
                .ca
                .last_scale_down_failure
                .is_some_and(|t| t + a.scale_down_delay_after_failure > now)
            || self
                .ca
                .last_scale_down
                .is_some_and(|t| t + a.scale_down_delay_after_delete > now);
        if in_cooldown || removable.is_empty() {
            return;
        }
        self.remove_unneeded(ids, &removable);
    }

    /// `planner.go` `NodesToDelete` and `budgets.go` `CropNodes`, then the actuator.
    fn remove_unneeded(&mut self, ids: &[String], removable: &[(usize, bool)]) {
        let sc = self.sc;
        let a = &sc.autoscaler;
        let now = self.now;
        // `unneeded.Nodes.RemovableAt`: unneeded (unready) for longer than the group's unneeded
        // (unready) time, strictly; never taking a group to its min size.
        let mut sizes: Vec<Option<u32>> = vec![None; sc.groups.len()];
        let mut quiet_held = false;
        let mut empty: Vec<usize> = Vec::new();
        let mut drain: Vec<usize> = Vec::new();
        for &(m, needs_drain) in removable {
            let g = sc.machines[m].group;
            let opts = self.ca.options[g];
            let Some(since) = self.ca.unneeded_since[m] else {
                continue;
            };
            let threshold = if self.cluster.nodes[m].ready {
                opts.unneeded
            } else {
                opts.unready
            };
            if threshold > 0 && since + threshold >= now {
                continue;
            }
            if sizes[g].is_none() {
                match ops::target_size(self.inventory(), &ids[g]) {
                    Ok(t) => sizes[g] = Some(t),
                    Err(e) => {
                        self.violate(format!("TargetSize failed for a known group: {e}"));
                        return;
                    }
                }
            }
            let size = sizes[g].unwrap_or(0);
            // A paused group takes no power action.
            if sc.groups[g].group.spec.paused == Some(true) {
                continue;
            }
            // The min in force: a schedule window's, as the provider reports it (`MinSize`).
            if size <= self.group_min[g] {
                continue;
            }
            // Quiet hours with `noPowerOff`: the node stays (unneeded) until they end.
            let model = &sc.machines[m];
            let group = &sc.groups[g];
            if model
                .quiet
                .at(&group.schedule.tz, self.ts(now))
                .is_some_and(|q| q.no_power_off)
            {
                quiet_held = true;
                continue;
            }
            sizes[g] = Some(size - 1);
            if needs_drain {
                drain.push(m);
            } else {
                empty.push(m);
            }
        }
        if quiet_held {
            self.counters.quiet_held_power_offs += 1;
        }
        // Atomic (`zeroOrMaxNodeScaling`) groups go all at once or not at all.
        let mut atomic_ok = vec![true; sc.groups.len()];
        for (g, group) in sc.groups.iter().enumerate() {
            if !self.ca.options[g].zero_or_max {
                continue;
            }
            let registered = group
                .members
                .iter()
                .filter(|&&m| {
                    self.machines[m].node_registered && self.machines[m].desired == PowerState::On
                })
                .count();
            let chosen = empty
                .iter()
                .chain(&drain)
                .filter(|&&m| sc.machines[m].group == g)
                .count();
            atomic_ok[g] = chosen == registered;
        }
        empty.retain(|&m| atomic_ok[sc.machines[m].group]);
        drain.retain(|&m| atomic_ok[sc.machines[m].group]);
        // `CropNodes`: empty nodes within --max-scale-down-parallelism, then nodes needing a
        // drain within what is left and --max-drain-parallelism.
        let mut budget = a.max_scale_down_parallelism as usize;
        empty.truncate(budget);
        budget -= empty.len();
        drain.truncate(budget.min(a.max_drain_parallelism as usize));
        let chosen: Vec<usize> = empty.into_iter().chain(drain).collect();
        if chosen.is_empty() {
            return;
        }
        // `actuator.go` `StartDeletion`: the nodes are tainted now (no new pods; the cooldown
        // after a delete starts), and each is drained and deleted after
        // --node-delete-delay-after-taint (`deleteNodesAsync`).
        self.ca.last_scale_down = Some(now);
        let due = now + a.node_delete_delay_after_taint;
        for &m in &chosen {
            self.cluster.nodes[m].cordoned = true;
            self.ca.delete_due[m] = Some(due);
        }
        for (g, _) in sc.groups.iter().enumerate() {
            if !chosen.iter().any(|&m| sc.machines[m].group == g) {
                continue;
            }
            if due == now {
                self.delete_tainted(ids, g);
            } else {
                self.schedule(due, EventKindSim::CaDeleteNodes { group: g });
            }
        }
    }

    /// Drains and deletes the nodes of group `g` whose delay after the taint is over. CA calls
    /// DeleteNodes once per node (`delete_in_batch.go` `AddNodes` with no batching interval),
    /// and once for all nodes of a `zeroOrMaxNodeScaling` group (`ScheduleDeletion` waits for
    /// the whole batch).
    pub(super) fn delete_tainted(&mut self, ids: &[String], g: usize) {
        let sc = self.sc;
        let now = self.now;
        let due: Vec<usize> = sc.groups[g]
            .members
            .iter()
            .copied()
            .filter(|&m| self.ca.delete_due[m].is_some_and(|t| t <= now))
            .collect();
        for &m in &due {
            self.ca.delete_due[m] = None;
        }
        let batches: Vec<Vec<usize>> = if self.ca.options[g].zero_or_max {
            vec![due]
        } else {
            due.into_iter().map(|m| vec![m]).collect()
        };
        for batch in batches.into_iter().filter(|b| !b.is_empty()) {
            self.delete_batch(ids, g, &batch);
        }
    }

    fn delete_batch(&mut self, ids: &[String], g: usize, members: &[usize]) {
        let sc = self.sc;
        let now = self.now;
        let mut evicted = 0;
        for &m in members {
            evicted += self.evict_node(m);
        }
        if evicted > 0 {
            let mut out = Vec::new();
            self.cluster.schedule_pending(self.now, &mut out);
            self.after_placements(&mut out);
        }
        let refs: Vec<NodeRef> = members
            .iter()
            .map(|&m| {
                let cr = &sc.machines[m].machine;
                NodeRef {
                    provider_id: cr.expected_provider_id(),
                    name: cr.node_name().unwrap_or(&sc.machines[m].name).to_owned(),
                }
            })
            .collect();
        let ts = self.ts(self.now);
        match ops::delete_nodes(self.inventory(), &ids[g], &refs, ts) {
            Ok(d) => {
                if d.target_after < self.group_min[g] {
                    self.violate(format!(
                        "DeleteNodes took group {} to target {}, below its min {}",
                        sc.groups[g].name, d.target_after, self.group_min[g]
                    ));
                }
                self.counters.scale_downs += 1;
                self.note(
                    None,
                    Some(g),
                    format!(
                        "CA scale-down: {} unneeded (evicted {evicted} pod(s)): target {} → {}",
                        names(&d.changes),
                        d.target_before,
                        d.target_after
                    ),
                );
                for &m in members {
                    self.ca.unneeded_since[m] = None;
                }
                self.apply_changes(&d.changes);
            }
            Err(e) => {
                self.ca.last_scale_down_failure = Some(now);
                self.counters.failed_scale_downs += 1;
                self.note(
                    None,
                    Some(g),
                    format!("CA: DeleteNodes refused: {e}; untainting"),
                );
                for &m in members {
                    self.cluster.nodes[m].cordoned = false;
                    let mut out = Vec::new();
                    self.cluster.fill_node(m, self.now, &mut out);
                    self.after_placements(&mut out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each test names the CA 1.36.1 function (in the CA source tree) whose behaviour it checks.
    use super::*;
    use crate::sim::RunOptions;
    use crate::sim::autoscaler::test_support::*;
    use crate::sim::units::HOUR;
    use crate::sim::units::MINUTE;
    use crate::sim::units::SECOND;

    /// `core/scaledown/eligibility/eligibility.go` `isNodeAtOrBelowUtilizationThreshold`:
    /// `utilization > threshold` is what keeps a node, so exactly 50 % is underused.
    #[test]
    fn a_node_at_exactly_the_threshold_is_underused() {
        let sc = lab("", G, &[("a", "g", 4), ("b", "g", 8)], &["name: w"], "");
        let mut s = sim(&sc);
        put(&mut s, 0, 2000, 1, 0);
        put(&mut s, 1, 4200, 1, 0);
        scan_at(&mut s, 0);
        assert_eq!(
            unneeded(&s),
            vec![0],
            "a at 50 % is unneeded, b at 52.5 % is not"
        );
    }

    /// `core/scaledown/unneeded/nodes.go` `unremovableReason`: removable only once
    /// `since + scaleDownUnneededTime` is *before* the loop's time, not at it.
    #[test]
    fn removal_waits_strictly_longer_than_the_unneeded_time() {
        let sc = lab(
            "  scaleDownUnneededTime: 10m\n  scaleDownDelayAfterAdd: 0s\n",
            G,
            TWO,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        put(&mut s, 1, 3000, 1, 0);
        scan_at(&mut s, 0);
        assert_eq!(unneeded(&s), vec![0]);
        scan_at(&mut s, 10 * MINUTE);
        assert!(
            wanted_off(&s).is_empty(),
            "removed at exactly the unneeded time"
        );
        scan_at(&mut s, 10 * MINUTE + 10 * SECOND);
        assert_eq!(wanted_off(&s), vec![0]);
    }

    /// `core/scaledown/planner/planner.go` `categorizeNodes` (`unremovableNodes.AddTimeout`) and
    /// `core/scaledown/unremovable/nodes.go` `IsRecent`: a node whose pods had nowhere to go is
    /// not simulated again for `--unremovable-node-recheck-timeout` (5m), even once room
    /// appears.
    #[test]
    fn an_unremovable_node_is_not_rechecked_before_the_timeout() {
        let machines = &[("a", "g", 4), ("b", "g", 4), ("c", "g", 4)];
        let sc = lab("", G, machines, &["name: w"], "");
        let mut s = sim(&sc);
        put(&mut s, 0, 1000, 1, 0);
        put(&mut s, 1, 3500, 1, 0);
        put(&mut s, 2, 2500, 1, 0);
        put(&mut s, 2, 1000, 1, 0);
        scan_at(&mut s, 0);
        assert!(unneeded(&s).is_empty());
        assert_eq!(s.ca.unremovable_until[0], 5 * MINUTE);
        // c frees 1 CPU (still busy, 62.5 %): a's pod would fit now, but a is not looked at
        // again until 5m.
        let pod = s.cluster.nodes[2].pods[1];
        let mut out = Vec::new();
        s.cluster.finish(pod, 0, MINUTE, &mut out);
        scan_at(&mut s, MINUTE);
        assert!(unneeded(&s).is_empty());
        scan_at(&mut s, 5 * MINUTE + 10 * SECOND);
        assert_eq!(unneeded(&s), vec![0]);
    }

    /// `simulator/cluster.go` `SimulateNodeRemoval` (the forked snapshot is committed: later
    /// candidates see the earlier moves) and `planner.go` `categorizeNodes`
    /// (`delete(podDestinations, ...)`: a removable node is no destination). a's and b's pods
    /// cannot both move onto c's one free CPU, so only one of them is unneeded.
    #[test]
    fn candidates_are_simulated_in_turn_keeping_earlier_moves() {
        let machines = &[("a", "g", 4), ("b", "g", 4), ("c", "g", 4)];
        let sc = lab("", G, machines, &["name: w"], "");
        let mut s = sim(&sc);
        put(&mut s, 0, 1000, 1, 0);
        put(&mut s, 1, 1000, 1, 0);
        put(&mut s, 2, 3000, 1, 0);
        scan_at(&mut s, 0);
        // a moves to c (the only room); b may not go to a (removed) nor c (now full).
        assert_eq!(unneeded(&s), vec![0]);
    }

    /// `simulator/utilization/info.go` `Calculate`: DaemonSet pods count as requests, or with
    /// --ignore-daemonsets-utilization (or the Group's `ignoreDaemonSetsUtilization`, through
    /// `NodeGroupGetOptions`) come off the allocatable instead.
    #[test]
    fn daemonsets_count_toward_utilization_unless_ignored() {
        let ds = "daemonSets:\n  - {name: agent, cpu: \"1\", memory: 1Gi}";
        let groups = &[
            ("keep", "{minSize: 0}"),
            ("skip", "{minSize: 0, ignoreDaemonSetsUtilization: true}"),
        ];
        let machines = &[("a", "keep", 4), ("b", "skip", 4), ("c", "keep", 4)];
        let sc = lab("", groups, machines, &["name: w"], ds);
        let mut s = sim(&sc);
        // 1 CPU pod + 1 CPU DaemonSet of 4: 50 % counted, 33 % ignored: both underused at 0.5.
        put(&mut s, 0, 1000, 1, 0);
        put(&mut s, 1, 1000, 1, 0);
        assert_eq!(s.cluster.nodes[0].utilization(false), 0.5);
        assert!((s.cluster.nodes[1].utilization(true) - 1.0 / 3.0).abs() < 1e-9);
        // 1.5 CPU: 62.5 % counted (kept), 50 % ignored (underused).
        put(&mut s, 0, 500, 1, 0);
        put(&mut s, 1, 500, 1, 0);
        put(&mut s, 2, 100, 1, 0);
        scan_at(&mut s, 0);
        let u = unneeded(&s);
        assert!(!u.contains(&0) && u.contains(&1), "{u:?}");
    }

    /// `core/scaledown/budgets/budgets.go` `CropNodes`: at most --max-scale-down-parallelism
    /// nodes per loop, of which at most --max-drain-parallelism need a drain; and
    /// `planner.go` `unneededNodesLimit`: the first loop looks at `2 × parallelism` candidates.
    #[test]
    fn parallelism_budgets_limit_each_loop() {
        let mut m: Vec<(String, &str, u32)> = vec![("big".to_owned(), "g", 16)];
        m.extend((1..14).map(|i| (format!("m{i:02}"), "g", 4)));
        let m: Vec<(&str, &str, u32)> = m.iter().map(|(n, g, c)| (n.as_str(), *g, *c)).collect();
        let sc = lab(
            "  maxScaleDownParallelism: 3\n  maxDrainParallelism: 1\n  scaleDownUnneededTime: 1m\n  scaleDownDelayAfterAdd: 0s\n",
            G,
            &m,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        // The big node is busy (62.5 %) with room for the small pods of m01..m04; the rest
        // are empty.
        put(&mut s, 0, 10_000, 1, 0);
        for n in 1..=4 {
            put(&mut s, n, 500, 1, 0);
        }
        scan_at(&mut s, 0);
        assert_eq!(
            unneeded(&s),
            vec![1, 2, 3, 4, 5, 6],
            "6 = 2 × parallelism looked at"
        );
        scan_at(&mut s, MINUTE + 10 * SECOND);
        // Empty m05, m06 and one node to drain (m01): 3 = the parallelism, 1 drain.
        assert_eq!(wanted_off(&s), vec![1, 5, 6]);
    }

    /// `core/static_autoscaler.go` `isScaleDownInCooldown`: after a deletion, scale-down waits
    /// --scale-down-delay-after-delete (0 by default: the next loop may delete again).
    #[test]
    fn scale_down_delay_after_delete_spaces_deletions() {
        let machines = &[("a", "g", 4), ("b", "g", 4), ("c", "g", 4)];
        let sc = lab(
            "  maxScaleDownParallelism: 1\n  scaleDownUnneededTime: 1m\n  scaleDownDelayAfterDelete: 5m\n",
            G,
            machines,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        put(&mut s, 2, 3000, 1, 0);
        scan_at(&mut s, 0);
        scan_at(&mut s, MINUTE + 10 * SECOND);
        assert_eq!(wanted_off(&s), vec![0]);
        scan_at(&mut s, MINUTE + 20 * SECOND);
        scan_at(&mut s, 6 * MINUTE);
        assert_eq!(wanted_off(&s), vec![0], "still in the delay after delete");
        scan_at(&mut s, 6 * MINUTE + 20 * SECOND);
        assert_eq!(wanted_off(&s), vec![0, 1]);
    }

    /// `core/scaledown/unneeded/nodes.go` `lookupAndSetRemovalThreshold`: a NotReady node waits
    /// --scale-down-unready-time (20m), not the unneeded time.
    #[test]
    fn unready_nodes_wait_the_unready_time() {
        let sc = lab(
            "  scaleDownUnneededTime: 1m\n  scaleDownDelayAfterAdd: 0s\n",
            G,
            TWO,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        s.cluster.nodes[0].ready = false;
        put(&mut s, 1, 3000, 1, 0);
        scan_at(&mut s, 0);
        assert_eq!(unneeded(&s), vec![0]);
        scan_at(&mut s, 2 * MINUTE);
        assert!(wanted_off(&s).is_empty(), "the unneeded time is not enough");
        scan_at(&mut s, 20 * MINUTE + 10 * SECOND);
        assert_eq!(wanted_off(&s), vec![0]);
    }

    /// `core/scaledown/eligibility/eligibility.go` `HasNoScaleDownAnnotation`: the operator
    /// annotates a `scaleDownDisabled` machine's Node, so CA never considers it (it is never
    /// drained; `DeleteNodes` is never asked to refuse).
    #[test]
    fn scale_down_disabled_machines_are_never_candidates() {
        let mut sc = lab("  scaleDownUnneededTime: 1m\n", G, TWO, &["name: w"], "");
        // As `spec.scaleDownDisabled: true` in the file gives.
        sc.machines[0].scale_down_disabled = true;
        sc.machines[0].machine.spec.scale_down_disabled = Some(true);
        let opts = RunOptions {
            timeline: true,
            ..RunOptions::default()
        };
        let mut sc2 = sc.clone();
        sc2.duration = 2 * HOUR;
        let r = Sim::new(&sc2, opts)
            .run(&mut |_, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            r.timeline.iter().all(|e| !e.what.contains("refused")),
            "no refused DeleteNodes"
        );
        let a = r
            .machines
            .iter()
            .find(|m| m.name == "a")
            .map(|m| m.hours_on);
        assert_eq!(a, Some(2.0), "the protected machine stays on");
        let b = r
            .machines
            .iter()
            .find(|m| m.name == "b")
            .map(|m| m.hours_on);
        assert!(
            b.is_some_and(|h| h < 0.2),
            "the other one is scaled down: {b:?}"
        );
    }

    /// `core/scaledown/actuation/actuator.go` `deleteNodesAsync`: CA taints the nodes it removes,
    /// waits --node-delete-delay-after-taint, then drains and deletes each with a DeleteNodes of
    /// its own (`delete_in_batch.go` `AddNodes`, no batching interval). Two empty nodes found
    /// removable at the 70 s loop (unneeded since 0 s, strictly longer than 1 m) are wanted off
    /// 5 s later, one call each.
    #[test]
    fn removed_nodes_are_deleted_one_call_each_after_the_delay_after_taint() {
        let mut sc = lab(
            "  scaleDownUnneededTime: 1m\n  scaleDownDelayAfterAdd: 0s\n  nodeDeleteDelayAfterTaint: 5s\n",
            G,
            TWO,
            &["name: w"],
            "",
        );
        sc.duration = 10 * MINUTE;
        let opts = RunOptions {
            timeline: true,
            ..RunOptions::default()
        };
        let r = Sim::new(&sc, opts)
            .run(&mut |_, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let offs: Vec<(Millis, &str)> = r
            .power_requests
            .iter()
            .filter(|p| p.desired == PowerState::Off)
            .map(|p| (p.at, p.machine.as_str()))
            .collect();
        assert_eq!(offs, vec![(75 * SECOND, "a"), (75 * SECOND, "b")]);
        assert_eq!(r.counters.scale_downs, 2);
    }

    /// The Group's `scaleDownDisabled` protects every member as the operator does
    /// (`operator/node/mod.rs` annotates each member's Node): both machines stay on.
    #[test]
    fn a_groups_scale_down_disabled_keeps_every_member_on() {
        let groups = &[("g", "{minSize: 0, scaleDownDisabled: true}")];
        let mut sc = lab(
            "  scaleDownUnneededTime: 1m\n",
            groups,
            TWO,
            &["name: w"],
            "",
        );
        assert!(sc.machines.iter().all(|m| m.scale_down_disabled));
        sc.duration = 2 * HOUR;
        let r = Sim::new(&sc, RunOptions::default())
            .run(&mut |_, _| {})
            .unwrap_or_else(|e| panic!("{e}"));
        let hours: Vec<f64> = r.machines.iter().map(|m| m.hours_on).collect();
        assert_eq!(hours, vec![2.0, 2.0]);
    }
}
