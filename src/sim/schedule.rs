//! The owner's week in the simulation: a Group's schedule windows (the min size and warm spares
//! in force), quiet hours and boot limits, and scenario-level maintenance. What is in force
//! comes from the operator's schedule policy (`operator::policy::schedule`), the same code the
//! operator runs; the engine asks [`in_force`] at each window change and applies it as
//! the operator does: machines up to the new min are powered on through the provider core
//! (`ops::increase_size`), and the Cluster Autoscaler model reads the min in force as the
//! group's `MinSize` (so it removes none of them while the window holds).
use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::scenario::GroupModel;
use crate::operator::api::WarmSpares;
use crate::operator::calendar::{self, Weekly};
use crate::operator::policy::schedule;

/// What a group's schedule puts in force at an instant.
#[derive(Clone, Debug, PartialEq)]
pub struct InForce {
    /// The name of the window in force (`None`: no window, the Group's own fields hold).
    pub window: Option<String>,
    /// The min size in force (the window's `minSize`, else the Group's), at most its max.
    pub min: u32,
    /// The warm spares in force (the window's, else the Group's).
    pub warm_spares: Option<WarmSpares>,
}

/// The min size and warm spares `g`'s schedule puts in force at `at`: the operator's schedule
/// policy (`policy::schedule::in_force`), which the provider and the group controller run too.
pub fn in_force(g: &GroupModel, at: Timestamp) -> InForce {
    let f = schedule::in_force(&g.group.spec, &g.schedule, g.members.len(), at);
    InForce {
        window: f.window,
        min: f.min_size,
        warm_spares: f.warm_spares,
    }
}

/// When `g`'s window in force next changes after `at` (`None`: never).
pub fn next_change(g: &GroupModel, at: Timestamp) -> Option<Timestamp> {
    g.schedule.next_change(at).map(|(t, _)| t)
}

/// What a quiet window holds back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietRule {
    /// No power-offs (`noPowerOff`, default true).
    pub no_power_off: bool,
    /// Power-ons only for pods pending at least this long (`powerOnAfter`; `None`: not held).
    pub power_on_after: Option<super::units::Millis>,
}

/// Quiet hours as parsed: the windows and what each holds back.
#[derive(Clone, Debug, Default)]
pub struct Quiet {
    pub windows: Vec<Weekly>,
    pub rules: Vec<QuietRule>,
}

impl Quiet {
    /// The rule of the quiet window in force at `at` (the last listed that covers it).
    pub fn at(&self, tz: &TimeZone, at: Timestamp) -> Option<QuietRule> {
        calendar::active(&self.windows, tz, at).and_then(|i| self.rules.get(i).copied())
    }
}

/// A rolling day, for `maxBootsPerDay`.
const DAY_MS: super::units::Millis = super::units::DAY;

impl super::engine::Sim<'_> {
    /// Applies `g`'s schedule at the current virtual time, as the operator does at a window's
    /// start and end: the min size in force (which the provider reports to the Cluster
    /// Autoscaler as the group's `MinSize`), the warm spares in force, and machines powered on
    /// up to the new min. Queues the next change.
    pub(super) fn apply_schedule(&mut self, g: usize) {
        let sc = self.sc;
        let group = &sc.groups[g];
        let at = self.ts(self.now);
        let f = in_force(group, at);
        let changed = self.group_min[g] != f.min || self.warm_spares[g] != f.warm_spares;
        self.group_min[g] = f.min;
        self.warm_spares[g] = f.warm_spares;
        if changed {
            self.invalidate_inventory();
            let name = f.window.clone().unwrap_or_else(|| "none".to_owned());
            let spares = self.warm_spares[g].as_ref().map_or(0, |w| w.count);
            self.note(
                None,
                Some(g),
                format!(
                    "schedule: window {name} in force, min size {}, warm spares {spares}",
                    f.min
                ),
            );
        }
        if !self.opts.autoscaler_off {
            self.power_on_to_min(g);
        }
        if let Some(next) = next_change(group, at) {
            let ms = next.as_millisecond() - self.ts(0).as_millisecond();
            if let Ok(ms) = u64::try_from(ms)
                && ms > self.now
                && ms < sc.duration
            {
                self.schedule(ms, super::engine::EventKindSim::ScheduleChange { group: g });
            }
        }
    }

    /// The operator powers on machines of `g` until its target reaches the min in force,
    /// picked by the provider core (`ops::increase_size`, the same picks as a scale-up).
    fn power_on_to_min(&mut self, g: usize) {
        use crate::operator::provider::ops;
        self.resolve_group_ids();
        let Some(id) = self.ca.group_ids.get(g).cloned() else {
            return;
        };
        let Ok(target) = ops::target_size(self.inventory(), &id) else {
            return;
        };
        let min = self.group_min[g];
        if target >= min || self.sc.groups[g].group.spec.paused == Some(true) {
            return;
        }
        let ts = self.ts(self.now);
        let delta = i32::try_from(min - target).unwrap_or(i32::MAX);
        match ops::increase_size(self.inventory(), &id, delta, ts) {
            Ok(d) => {
                let changes = self.amend_picks(&id, d.changes);
                self.counters.schedule_power_ons += changes.len() as u64;
                self.note(
                    None,
                    Some(g),
                    format!(
                        "schedule: powering on {} to reach min size {min}",
                        super::autoscaler::names(&changes)
                    ),
                );
                self.apply_changes(&changes);
            }
            Err(e) => {
                self.note(
                    None,
                    Some(g),
                    format!("schedule: cannot reach min size {min}: {e}"),
                );
            }
        }
    }

    /// Power-ons of machine `m` in the last 24 hours.
    fn boots_last_day(&self, m: usize) -> u32 {
        let now = self.now;
        self.machines[m]
            .power_ons
            .iter()
            .filter(|&&t| t + DAY_MS > now)
            .count() as u32
    }

    /// Whether machine `m` reached its `maxBootsPerDay` in the last 24 hours.
    pub(super) fn at_boot_limit(&self, m: usize) -> bool {
        self.sc.machines[m]
            .max_boots_per_day
            .is_some_and(|max| self.boots_last_day(m) >= max)
    }

    /// The provider's picks for group `id` (a scale-up's or the schedule's power-ons) as the
    /// operator's maintenance and wear rules amend them: a machine in maintenance is never
    /// powered on for the group (another spare takes its place, or none); a machine at its
    /// `maxBootsPerDay` gives way to a spare below its limit and is powered on anyway when
    /// there is none (counted as a limit passed). Spares are taken in the provider's order
    /// (`ops::pickable`, then `ops::power_on_order`).
    pub(super) fn amend_picks(
        &mut self,
        id: &str,
        changes: Vec<crate::operator::provider::PowerChange>,
    ) -> Vec<crate::operator::provider::PowerChange> {
        use crate::operator::provider::ops;
        let sc = self.sc;
        let needs_amending =
            |sim: &Self, m: usize| sim.machines[m].maintenance.is_some() || sim.at_boot_limit(m);
        let picked: Vec<Option<usize>> = changes
            .iter()
            .map(|c| self.machine_index(&c.machine.namespace, &c.machine.name))
            .collect();
        if !picked.iter().flatten().any(|&m| needs_amending(self, m)) {
            return changes;
        }
        let ts = self.ts(self.now);
        // Spares in the provider's order that no rule holds back.
        let mut free: Vec<usize> = {
            let inv = self.inventory();
            let Some(gs) = inv.group(id) else {
                return changes;
            };
            let mut views: Vec<&crate::operator::provider::MachineView> = gs
                .machines
                .iter()
                .filter(|v| !v.wanted_on() && ops::pickable(inv, gs, v, ts).is_ok())
                .collect();
            views.sort_by(|a, b| {
                a.last_power_on_failure()
                    .cmp(&b.last_power_on_failure())
                    .then_with(|| ops::power_on_order(gs.spec.power_on_order, a, b))
            });
            views
                .iter()
                .filter_map(|v| {
                    sc.machines.iter().position(|m| {
                        m.name == v.key.name
                            && m.machine.metadata.namespace.as_deref().unwrap_or("")
                                == v.key.namespace
                    })
                })
                .collect()
        };
        free.retain(|&m| !picked.contains(&Some(m)) && !needs_amending(self, m));
        let mut out = Vec::with_capacity(changes.len());
        for (c, m) in changes.into_iter().zip(picked) {
            let Some(m) = m else {
                out.push(c);
                continue;
            };
            if c.desired != crate::operator::machine::PowerState::On || !needs_amending(self, m) {
                out.push(c);
                continue;
            }
            if !free.is_empty() {
                let other = free.remove(0);
                let model = &sc.machines[other];
                self.note(
                    Some(m),
                    None,
                    format!(
                        "not picked ({}): {} powered on instead",
                        if self.machines[m].maintenance.is_some() {
                            "in maintenance"
                        } else {
                            "at its maxBootsPerDay"
                        },
                        model.name
                    ),
                );
                if self.machines[m].maintenance.is_none() {
                    self.counters.wear_spared += 1;
                }
                out.push(crate::operator::provider::PowerChange {
                    machine: crate::operator::provider::MachineKey {
                        namespace: model.machine.metadata.namespace.clone().unwrap_or_default(),
                        name: model.name.clone(),
                    },
                    ..c
                });
            } else if self.machines[m].maintenance.is_none() {
                // No other machine can take the pods: the limit is passed.
                self.counters.wear_limit_passed += 1;
                self.note(
                    Some(m),
                    None,
                    "powered on past its maxBootsPerDay: no other machine of the group can take the pods".to_owned(),
                );
                out.push(c);
            }
        }
        out
    }
}

impl super::engine::Sim<'_> {
    /// Maintenance `index` starts: the machine's node is cordoned and drained (its pods go
    /// back to the scheduler), the Cluster Autoscaler and the picks leave it alone, and its
    /// power goes as `power` says (`off`: wanted off, so the machine controller powers it off
    /// once drained; `on`: wanted on).
    pub(super) fn maintenance_start(&mut self, index: usize) {
        use crate::operator::api::MaintenancePower;
        use crate::operator::machine::PowerState;
        let Some(mt) = self.sc.maintenance.get(index) else {
            return;
        };
        let m = mt.machine;
        self.machines[m].maintenance = Some(index);
        self.counters.maintenances += 1;
        self.cluster.nodes[m].maintenance = true;
        // CA stops tracking it as unneeded.
        self.ca.unneeded_since[m] = None;
        let evicted = self.evict_node(m);
        self.note(
            Some(m),
            None,
            format!(
                "maintenance starts ({}): power {}, {evicted} pod(s) evicted",
                mt.reason.as_deref().unwrap_or("no reason given"),
                match mt.power {
                    MaintenancePower::Keep => "kept",
                    MaintenancePower::On => "on",
                    MaintenancePower::Off => "off",
                }
            ),
        );
        let mut out = std::mem::take(&mut self.placed_buf);
        self.cluster.schedule_pending(self.now, &mut out);
        self.after_placements(&mut out);
        self.placed_buf = out;
        let desired = match mt.power {
            MaintenancePower::Keep => None,
            MaintenancePower::On => Some(PowerState::On),
            MaintenancePower::Off => Some(PowerState::Off),
        };
        if let Some(d) = desired
            && self.machines[m].desired != d
        {
            self.machines[m].desired = d;
            if d == PowerState::On {
                self.machines[m].power_on_requested = Some(self.ts(self.now));
            }
        }
        self.invalidate_inventory();
        self.reconcile(m);
    }

    /// Maintenance `index` ends: the node is schedulable again; the machine keeps the power
    /// it has (the Cluster Autoscaler removes it when unneeded).
    pub(super) fn maintenance_end(&mut self, index: usize) {
        let Some(mt) = self.sc.maintenance.get(index) else {
            return;
        };
        let m = mt.machine;
        if self.machines[m].maintenance != Some(index) {
            return;
        }
        self.machines[m].maintenance = None;
        self.cluster.nodes[m].maintenance = false;
        self.invalidate_inventory();
        self.note(Some(m), None, "maintenance ends".to_owned());
        let mut out = std::mem::take(&mut self.placed_buf);
        self.cluster.fill_node(m, self.now, &mut out);
        self.after_placements(&mut out);
        self.placed_buf = out;
        let g = self.sc.machines[m].group;
        self.power_on_to_min(g);
    }
}
