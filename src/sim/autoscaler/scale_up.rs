//! Scale-up (`core/scaleup/orchestrator`): pending pods onto the nodes on their way up, then
//! an estimate per group on its template node, the expander chain's pick and `IncreaseSize`.
use rand::Rng;

use super::{Shape, names};
use crate::operator::machine::{Phase, PowerState};
use crate::operator::provider::{ops, template};
use crate::sim::engine::Sim;
use crate::sim::scenario::Expander;

fn parse_shape(t: &template::TemplateNode) -> Option<Shape> {
    let cpu = crate::sim::units::parse_cpu(t.allocatable.get("cpu")?)?;
    let mem = crate::sim::units::parse_memory(t.allocatable.get("memory")?)?;
    let pods = t
        .allocatable
        .get("pods")
        .and_then(|p| p.parse().ok())
        .unwrap_or(110);
    Some((cpu, mem, pods))
}

/// Free room on one (real or imagined) node during an estimate.
#[derive(Clone, Copy)]
struct Room {
    cpu: u64,
    mem: u64,
    pods: u32,
}

#[derive(Clone, Copy, Debug)]
struct Option_ {
    group: usize,
    nodes: u32,
    pods: usize,
    waste: f64,
    price: f64,
}

impl Sim<'_> {
    /// Each group's template node as CA builds it: the provider's template, with the DaemonSet
    /// pods CA adds to it taking their share (`simulator/node_info_utils.go`).
    pub(super) fn templates(&mut self, ids: &[String]) -> Vec<Option<Shape>> {
        if let Some(t) = &self.ca.templates {
            return t.clone();
        }
        let (ds_cpu, ds_mem) = (self.sc.daemonset_cpu, self.sc.daemonset_memory);
        let inv = self.inventory();
        let t: Vec<Option<Shape>> = ids
            .iter()
            .map(|id| {
                template::template_node(inv, id)
                    .ok()
                    .as_ref()
                    .and_then(parse_shape)
                    .and_then(|(c, m, p)| {
                        (c > ds_cpu && m > ds_mem && p > 0).then(|| {
                            let ds_pods = u32::from(ds_cpu > 0 || ds_mem > 0);
                            (c - ds_cpu, m - ds_mem, p.saturating_sub(ds_pods).max(1))
                        })
                    })
            })
            .collect();
        self.ca.templates = Some(t.clone());
        t
    }

    /// One scale-up attempt. Returns whether `IncreaseSize` succeeded.
    pub(super) fn scale_up(&mut self, ids: &[String]) -> bool {
        let sc = self.sc;
        let a = &sc.autoscaler;
        // `static_autoscaler.go`: no scale-up once the Ready nodes reach --max-nodes-total.
        if a.max_nodes_total > 0 {
            let ready = self.cluster.nodes.iter().filter(|n| n.ready).count() as u32;
            if ready >= a.max_nodes_total {
                return false;
            }
        }
        let shapes = self.templates(ids);
        // Pods to help, oldest first, by shape.
        let mut classes = self.cluster.pending_classes();
        // Nodes on their way up take pods first (`addUpcomingNodesToClusterSnapshot`).
        let mut upcoming: Vec<(usize, Room)> = Vec::new();
        for (g, group) in sc.groups.iter().enumerate() {
            let Some((cpu, mem, np)) = shapes[g] else {
                continue;
            };
            for &m in &group.members {
                let ms = &self.machines[m];
                if ms.desired == PowerState::On
                    && !self.cluster.nodes[m].ready
                    && ms.lifecycle.phase() != Phase::Failed
                    && ms.maintenance.is_none()
                {
                    upcoming.push((g, Room { cpu, mem, pods: np }));
                }
            }
        }
        for c in classes.iter_mut() {
            for (_, r) in upcoming.iter_mut() {
                c.2 -= take_many(r, c.0, c.1, c.2);
                if c.2 == 0 {
                    break;
                }
            }
        }
        classes.retain(|c| c.2 > 0);
        // Warm spares: each group's placeholders that fit no existing node, less those its
        // nodes on their way up hold (`buffer.rs`).
        let mut placeholders: Vec<Option<(u64, u64, u32)>> = vec![None; sc.groups.len()];
        for (g, p) in placeholders.iter_mut().enumerate() {
            let Some(((cpu, mem), mut left)) =
                self.ca.placeholders.unplaced.get(g).copied().flatten()
            else {
                continue;
            };
            for (_, r) in upcoming.iter_mut().filter(|(ug, _)| *ug == g) {
                left -= take_many(r, cpu, mem, left);
                if left == 0 {
                    break;
                }
            }
            if left > 0 {
                *p = Some((cpu, mem, left));
            }
        }
        if classes.is_empty() && placeholders.iter().all(Option::is_none) {
            return false;
        }
        // First-fit decreasing, as CA's binpacking estimator sorts pods by size.
        classes.sort_by_key(|c| std::cmp::Reverse((c.0, c.1)));
        let mut total_target = 0u32;
        let mut targets = Vec::with_capacity(sc.groups.len());
        for id in ids {
            let t = match ops::target_size(self.inventory(), id) {
                Ok(t) => t,
                Err(e) => {
                    self.violate(format!("TargetSize failed for a known group: {e}"));
                    return false;
                }
            };
            total_target += t;
            targets.push(t);
        }
        // `core/scaleup/orchestrator`: new nodes are capped so the cluster stays within
        // --max-nodes-total.
        let total_left = if a.max_nodes_total > 0 {
            a.max_nodes_total.saturating_sub(total_target)
        } else {
            u32::MAX
        };
        let mut options = Vec::new();
        let oldest_wait = self.cluster.pending.first().map(|&p| {
            self.now
                .saturating_sub(self.cluster.pods[p as usize].spec.arrival)
        });
        let at = self.ts(self.now);
        let mut quiet_held = false;
        for (g, group) in sc.groups.iter().enumerate() {
            // A paused group takes no power action (the provider leaves it as it is).
            if self.ca.backoff[g].until > self.now || group.group.spec.paused == Some(true) {
                continue;
            }
            let Some((cpu, mem, np)) = shapes[g] else {
                continue;
            };
            // Machines in maintenance that are off are no spares: the group's `MaxSize` leaves
            // them out (as `ops::max_size` leaves out spares that cannot be picked).
            let held = group
                .members
                .iter()
                .filter(|&&m| {
                    self.machines[m].maintenance.is_some()
                        && self.machines[m].desired == PowerState::Off
                })
                .count() as u32;
            let room_left = group
                .max
                .saturating_sub(targets[g])
                .saturating_sub(held)
                .min(total_left);
            if room_left == 0 {
                continue;
            }
            // Quiet hours with `powerOnAfter`: no power-on until a pod has waited that long,
            // and none for placeholders (the operator holds the scale-up).
            let hold = group
                .quiet
                .at(&group.schedule.tz, at)
                .and_then(|q| q.power_on_after);
            let mut group_classes = classes.clone();
            if let Some(d) = hold {
                if oldest_wait.is_none_or(|w| w < d) {
                    quiet_held = true;
                    continue;
                }
            } else if let Some(p) = placeholders[g] {
                group_classes.push(p);
                group_classes.sort_by_key(|c| std::cmp::Reverse((c.0, c.1)));
            }
            let mut nodes: Vec<Room> = Vec::new();
            let mut helped = 0usize;
            for &(c, m, count) in &group_classes {
                if c > cpu || m > mem {
                    continue;
                }
                let mut left = count;
                for r in nodes.iter_mut() {
                    left -= take_many(r, c, m, left);
                    if left == 0 {
                        break;
                    }
                }
                while left > 0 && (nodes.len() as u32) < room_left {
                    let mut r = Room { cpu, mem, pods: np };
                    let took = take_many(&mut r, c, m, left);
                    if took == 0 {
                        break;
                    }
                    left -= took;
                    nodes.push(r);
                }
                helped += (count - left) as usize;
            }
            if helped == 0 {
                continue;
            }
            let mut n = nodes.len() as u32;
            if self.ca.options[g].zero_or_max {
                // An atomic group scales from its current size straight to its max
                // (`orchestrator.go` for `ZeroOrMaxNodeScaling`); if that exceeds the
                // cluster's limit the option is dropped.
                let to_max = group.max.saturating_sub(targets[g]);
                if to_max > total_left {
                    continue;
                }
                n = to_max;
            }
            let used_cpu: u64 = nodes.iter().map(|r| cpu - r.cpu).sum();
            let used_mem: u64 = nodes.iter().map(|r| mem - r.mem).sum();
            // `expander/waste`: wasted CPU share plus wasted memory share.
            let waste = (1.0 - used_cpu as f64 / (cpu as f64 * n as f64))
                + (1.0 - used_mem as f64 / (mem as f64 * n as f64));
            let ts = self.ts(self.now);
            let inv = self.inventory();
            let rate = inv
                .group(&ids[g])
                .map(|gs| ops::group_hourly_rate(inv, gs, ts))
                .unwrap_or(0.0);
            options.push(Option_ {
                group: g,
                nodes: n,
                pods: helped,
                waste,
                price: rate * n as f64 / helped as f64,
            });
        }
        if quiet_held {
            self.counters.quiet_held_power_ons += 1;
        }
        if options.is_empty() {
            return false;
        }
        let pick = self.expand(options);
        let (g, n, helped) = (pick.group, pick.nodes, pick.pods);
        let ts = self.ts(self.now);
        let delta = i32::try_from(n).unwrap_or(i32::MAX);
        match ops::increase_size(self.inventory(), &ids[g], delta, ts) {
            Ok(d) => {
                self.check_bounds(g, d.target_after, "IncreaseSize");
                self.counters.scale_ups += 1;
                if classes.is_empty() {
                    self.counters.warm_spare_scale_ups += 1;
                }
                let d = crate::operator::provider::Decision {
                    changes: self.amend_picks(&ids[g], d.changes),
                    ..d
                };
                self.ca.last_scale_up = Some(self.now);
                self.note(
                    None,
                    Some(g),
                    format!(
                        "CA scale-up +{n} for {helped} pending pod(s) ({} expander): target {} → {}, powering on {}",
                        sc.autoscaler.expander,
                        d.target_before,
                        d.target_after,
                        names(&d.changes)
                    ),
                );
                self.apply_changes(&d.changes);
                true
            }
            Err(e) => {
                self.counters.failed_scale_ups += 1;
                self.back_off(g, &format!("IncreaseSize failed: {e}"));
                false
            }
        }
    }

    /// `expander/factory/chain.go`: each expander of the chain keeps its best options; a single
    /// one left wins, and what is left at the end is picked at random (the CA stream).
    fn expand(&mut self, options: Vec<Option_>) -> Option_ {
        let sc = self.sc;
        let mut left = options;
        for e in &sc.autoscaler.expander.0 {
            left = match e {
                Expander::LeastWaste => keep_best(left, |o| -o.waste),
                Expander::MostPods => keep_best(left, |o| o.pods as f64),
                Expander::Price => keep_best(left, |o| -o.price),
                Expander::Random => {
                    let i = self.ca_rng.random_range(0..left.len());
                    vec![left[i]]
                }
                Expander::Priority => {
                    // `expander/priority`: groups not in the priority list are not used,
                    // unless no option's group is listed at all.
                    let listed: Vec<Option_> = left
                        .iter()
                        .copied()
                        .filter(|o| {
                            sc.autoscaler
                                .priorities
                                .contains_key(&sc.groups[o.group].name)
                        })
                        .collect();
                    if listed.is_empty() {
                        left
                    } else {
                        keep_best(listed, |o| f64::from(sc.groups[o.group].priority))
                    }
                }
            };
            if left.len() == 1 {
                return left[0];
            }
        }
        let i = self.ca_rng.random_range(0..left.len());
        left[i]
    }
}

/// Takes up to `n` pods of `(cpu, mem)` from a room; returns how many fit.
fn take_many(r: &mut Room, cpu: u64, mem: u64, n: u32) -> u32 {
    let by_cpu = r.cpu.checked_div(cpu).unwrap_or(u64::MAX);
    let by_mem = r.mem.checked_div(mem).unwrap_or(u64::MAX);
    let k = u64::from(n).min(by_cpu).min(by_mem).min(u64::from(r.pods)) as u32;
    r.cpu -= cpu * u64::from(k);
    r.mem -= mem * u64::from(k);
    r.pods -= k;
    k
}

/// The options with the highest score (exact ties kept, as CA's expanders keep them).
fn keep_best(options: Vec<Option_>, score: impl Fn(&Option_) -> f64) -> Vec<Option_> {
    let best = options.iter().map(&score).fold(f64::NEG_INFINITY, f64::max);
    options.into_iter().filter(|o| score(o) == best).collect()
}

#[cfg(test)]
mod tests {
    //! Each test names the CA 1.36.1 function (in the CA source tree) whose behaviour it checks.
    use super::*;
    use crate::sim::autoscaler::Backoff;
    use crate::sim::autoscaler::test_support::*;
    use crate::sim::units::HOUR;
    use crate::sim::units::SECOND;
    use crate::sim::workload::PodSpec;

    /// `core/static_autoscaler.go` `RunOnce`: with the Ready nodes at --max-nodes-total no
    /// scale-up is tried; below it, the new nodes are capped (`core/scaleup/orchestrator`).
    #[test]
    fn max_nodes_total_limits_scale_up() {
        let machines = &[("a", "g", 4), ("b", "g", 4), ("c", "g", 4), ("d", "g", 4)];
        let sc = lab("  maxNodesTotal: 2\n", G, machines, &["name: w"], "");
        let mut s = sim(&sc);
        for m in [1, 2, 3] {
            s.cluster.nodes[m].ready = false;
            s.machines[m].desired = PowerState::Off;
            s.machines[m].node_registered = false;
            s.invalidate_inventory();
        }
        // Six 4-CPU pods pending: the cap leaves room for one more node.
        for _ in 0..6 {
            let spec = PodSpec {
                arrival: 0,
                cpu: 4000,
                memory: 1 << 30,
                duration: HOUR,
                workload: 0,
            };
            let mut out = Vec::new();
            s.cluster.arrive(spec, 0, &mut out);
        }
        scan_at(&mut s, 0);
        let on: Vec<usize> = (0..4)
            .filter(|&m| s.machines[m].desired == PowerState::On)
            .collect();
        assert_eq!(on.len(), 2, "{on:?}");
        // Two Ready nodes: nothing more.
        s.cluster.nodes[on[1]].ready = true;
        s.ca.backoff[0] = Backoff::default();
        scan_at(&mut s, 10 * SECOND);
        assert_eq!(
            (0..4)
                .filter(|&m| s.machines[m].desired == PowerState::On)
                .count(),
            2
        );
    }

    /// `core/scaleup/orchestrator` for `ZeroOrMaxNodeScaling` (the Group's
    /// `zeroOrMaxNodeScaling`, read through `NodeGroupGetOptions`): the group scales straight
    /// to its max.
    #[test]
    fn zero_or_max_groups_scale_to_their_max() {
        let groups = &[("g", "{zeroOrMaxNodeScaling: true}")];
        let machines = &[("a", "g", 4), ("b", "g", 4), ("c", "g", 4)];
        let sc = lab("", groups, machines, &["name: w"], "");
        let mut s = sim(&sc);
        for m in 0..3 {
            s.cluster.nodes[m].ready = false;
            s.machines[m].desired = PowerState::Off;
            s.machines[m].node_registered = false;
        }
        s.invalidate_inventory();
        let spec = PodSpec {
            arrival: 0,
            cpu: 1000,
            memory: 1 << 30,
            duration: HOUR,
            workload: 0,
        };
        let mut out = Vec::new();
        s.cluster.arrive(spec, 0, &mut out);
        scan_at(&mut s, 0);
        assert!(s.ca.options[0].zero_or_max);
        assert_eq!(
            (0..3)
                .filter(|&m| s.machines[m].desired == PowerState::On)
                .count(),
            3
        );
    }

    fn option(group: usize, nodes: u32, pods: usize, waste: f64) -> Option_ {
        Option_ {
            group,
            nodes,
            pods,
            waste,
            price: 0.0,
        }
    }

    /// `expander/mostpods`, `expander/waste` and `expander/factory/chain.go`: each expander keeps
    /// its best options (exact ties kept), the chain stops at one, and the ties left are
    /// broken at random.
    #[test]
    fn expander_chains_narrow_then_pick_at_random() {
        let groups = &[("x", "{}"), ("y", "{}"), ("z", "{}")];
        let machines = &[("a", "x", 4), ("b", "y", 4), ("c", "z", 4)];
        let sc = lab(
            "  expander: most-pods,least-waste\n",
            groups,
            machines,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        let opts = vec![
            option(0, 1, 3, 0.5),
            option(1, 2, 5, 0.9),
            option(2, 1, 5, 0.2),
        ];
        assert_eq!(
            s.expand(opts.clone()).group,
            2,
            "most pods, then least waste"
        );
        // least-waste alone with a tie between y and z: both get picked over seeds.
        let sc = lab(
            "  expander: least-waste\n",
            groups,
            machines,
            &["name: w"],
            "",
        );
        let tie = vec![
            option(0, 1, 3, 0.5),
            option(1, 1, 5, 0.2),
            option(2, 1, 5, 0.2),
        ];
        let mut picked = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let mut sc = sc.clone();
            sc.seed = seed;
            let mut s = sim(&sc);
            picked.insert(s.expand(tie.clone()).group);
        }
        assert_eq!(picked.into_iter().collect::<Vec<_>>(), vec![1, 2]);
    }

    /// `expander/priority/priority.go` `BestOptions`: a group not in the priority list is not
    /// used ("The group won't be used"), unless no option's group is listed at all.
    #[test]
    fn the_priority_expander_excludes_unlisted_groups() {
        let groups = &[("x", "{}"), ("y", "{}")];
        let machines = &[("a", "x", 4), ("b", "y", 4)];
        let sc = lab(
            "  expander: priority,least-waste\n  priorities: {x: 1}\n",
            groups,
            machines,
            &["name: w"],
            "",
        );
        let mut s = sim(&sc);
        let opts = vec![option(0, 1, 1, 0.9), option(1, 1, 1, 0.1)];
        assert_eq!(s.expand(opts).group, 0, "y is cheaper to run but unlisted");
        assert_eq!(
            s.expand(vec![option(1, 1, 1, 0.1)]).group,
            1,
            "nothing listed: unfiltered"
        );
    }
}
