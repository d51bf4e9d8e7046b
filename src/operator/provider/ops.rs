//! The provider's decisions, one function per rule of docs/ca-contract.md, section 3.
//!
//! Each takes the inventory (and, where a decision is recorded, the time as a parameter) and
//! returns an answer or a [`Decision`] naming which machines change desired power. Nothing here
//! performs I/O: the gRPC service persists decisions, the simulator applies them to its world.
use std::cmp::Ordering;
use std::collections::HashSet;

use jiff::{SignedDuration, Timestamp};

use super::error::ProviderError;
use super::inventory::{
    CA_INSTANCE_CACHE_FRESHNESS, GroupState, Inventory, MachineKey, MachineRef, MachineView,
    PowerChange, PowerOnOrder,
};
use crate::operator::machine::{Phase, PowerState};
use crate::operator::policy::maintenance;
use crate::operator::policy::wear;

/// A node group as CA sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeGroupInfo {
    pub id: String,
    pub min_size: u32,
    pub max_size: u32,
    pub debug: String,
}

/// A node as CA names it in requests: providerID and name (fake nodes have both = instance id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRef {
    pub provider_id: String,
    pub name: String,
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.provider_id.is_empty() || self.provider_id == self.name {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{} ({})", self.name, self.provider_id)
        }
    }
}

/// Which machines change desired power, and the target size before and after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub group: String,
    pub changes: Vec<PowerChange>,
    pub target_before: u32,
    pub target_after: u32,
}

impl Decision {
    pub fn is_noop(&self) -> bool {
        self.changes.is_empty()
    }
}

/// CA's instance states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Running,
    Creating,
    Deleting,
}

/// CA's `InstanceErrorClass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    OutOfResources = 1,
    Other = 99,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceError {
    pub code: String,
    pub message: String,
    pub class: ErrorClass,
}

/// One entry of `NodeGroupNodes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The machine's expected providerID (rule 1).
    pub id: String,
    pub machine: MachineKey,
    pub state: InstanceState,
    pub error: Option<InstanceError>,
}

/// CA's `NodeGroupAutoscalingOptions`, independent of the wire types.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AutoscalingOptions {
    pub scale_down_utilization_threshold: f64,
    pub scale_down_gpu_utilization_threshold: f64,
    pub zero_or_max_node_scaling: bool,
    pub ignore_daemon_sets_utilization: bool,
    pub scale_down_unneeded: Option<SignedDuration>,
    pub scale_down_unready: Option<SignedDuration>,
    pub max_node_provision: Option<SignedDuration>,
    pub max_node_startup: Option<SignedDuration>,
    pub allow_non_atomic_scale_up_to_max: bool,
}

fn group<'a>(inv: &'a Inventory, id: &str) -> Result<&'a GroupState, ProviderError> {
    inv.group(id).ok_or_else(|| ProviderError::GroupNotFound {
        id: id.to_owned(),
        known: {
            let ids: Vec<&str> = inv.group_ids().take(10).collect();
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(", ")
            }
        },
    })
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn info(inv: &Inventory, g: &GroupState, now: Timestamp) -> NodeGroupInfo {
    // A paused group is held at its target: CA's scale-up and scale-down then leave it alone
    // (`policy::maintenance::paused_bounds` cites where CA checks).
    let (min, max) = if g.spec.paused {
        maintenance::paused_bounds(target_of(g))
    } else {
        (g.min_size(now), max_size(inv, g, now))
    };
    NodeGroupInfo {
        id: g.spec.id.clone(),
        min_size: min,
        max_size: max,
        debug: format!(
            "Group {}/{}: min {}, max {}, target {}, {} member(s){}",
            g.spec.namespace,
            g.spec.name,
            min,
            max,
            target_of(g),
            g.machines.len(),
            if g.spec.paused { ", paused" } else { "" },
        ),
    }
}

/// The members CA sees as its group's: every one not under maintenance.
fn ca_members(g: &GroupState) -> impl Iterator<Item = &MachineView> {
    g.machines.iter().filter(|m| !m.maintenance)
}

fn target_of(g: &GroupState) -> u32 {
    count(ca_members(g).filter(|m| m.wanted_on()).count())
}

fn refuse_if_paused(g: &GroupState) -> Result<(), ProviderError> {
    if g.spec.paused {
        return Err(ProviderError::Paused {
            group: g.spec.id.clone(),
        });
    }
    Ok(())
}

/// The MaxSize answered to CA at `now`: the machines wanted on plus the spares `IncreaseSize`
/// may pick now ([`pickable`]), never above the Group's own maximum. A spare held back by its
/// failure cool-down is not offered: CA caps its request at MaxSize - target
/// (`processors/nodegroupset/balancing_processor.go` `BalanceScaleUpBetweenGroups`; a
/// `zeroOrMaxNodeScaling` group asks for exactly that, `core/scaleup/orchestrator/orchestrator.go`),
/// and an IncreaseSize error backs the whole group off (`core/scaleup/orchestrator/executor.go`
/// registers a failed scale-up), so counting such a spare would keep pods the healthy spares
/// could host waiting. MaxSize moves as cool-downs end; CA reads it after every `Refresh`
/// (`core/static_autoscaler.go` `RunOnce` only reports it as a metric) and compares it with the
/// target (`orchestrator.go` skips a group at MaxSize), which never exceeds it unless the
/// Group's own maximum was lowered below the target. It may fall below `minSize`: CA's
/// `ScaleUpToNodeGroupMinSize` (`orchestrator.go`) does not read it, and that IncreaseSize fails
/// as it did before, when the spares could not be picked either.
///
/// During the Group's quiet hours with a `powerOnAfter` ([`power_on_held`]) it is the target:
/// CA's `core/scaleup/orchestrator/orchestrator.go` `filterValidScaleUpNodeGroups` skips a
/// group whose target is at its MaxSize (`MaxLimitReachedReason`, the pods get a
/// `NotTriggerScaleUp` Event) without calling the provider, so no failed scale-up is
/// registered and no backoff follows: CA looks again on its next loop, when MaxSize has risen.
pub fn max_size(inv: &Inventory, g: &GroupState, now: Timestamp) -> u32 {
    if power_on_held(inv, g, now) {
        return target_of(g).min(g.max_size());
    }
    // Counted without ordering: CA asks NodeGroupForNode for every node every loop.
    let spares = ca_members(g)
        .filter(|m| !m.wanted_on() && pickable(inv, g, m, now).is_ok())
        .count();
    let reachable = u64::from(target_of(g)) + spares as u64;
    g.max_size()
        .min(u32::try_from(reachable).unwrap_or(u32::MAX))
}

/// Whether the Group's quiet hours hold power-ons at `now`: a window with `powerOnAfter` is in
/// force and no unschedulable pod has waited that long (the inventory's
/// [`Inventory::unschedulable_since`]). Only the Group's quiet hours count: MaxSize is the
/// group's.
pub fn power_on_held(inv: &Inventory, g: &GroupState, now: Timestamp) -> bool {
    let Some(w) = g.spec.wear.as_deref() else {
        return false;
    };
    let wait = w.quiet.power_on_after(&w.time_zone, now);
    wear::holds_power_on(wait, inv.unschedulable_since(), now)
}

/// `NodeGroups`: every group, min and max filled.
pub fn node_groups(inv: &Inventory, now: Timestamp) -> Vec<NodeGroupInfo> {
    inv.groups().map(|g| info(inv, g, now)).collect()
}

/// Rule 3: the number of machines wanted on (desired power `on`, whatever their progress).
pub fn target_size(inv: &Inventory, id: &str) -> Result<u32, ProviderError> {
    Ok(target_of(group(inv, id)?))
}

/// Rule 2: the group of a node, by providerID then name; `None` for nodes we do not manage
/// (CA expects `id: ""` for those). A registered Node of a machine wanted off (being powered
/// off, or a stale NotReady Node of a machine someone powered off) is `None` too: CA would
/// otherwise count it as the group's capacity, or as a group node it is still waiting for.
pub fn node_group_for_node(
    inv: &Inventory,
    node: &NodeRef,
    now: Timestamp,
) -> Option<NodeGroupInfo> {
    match inv.resolve(&node.provider_id, &node.name)? {
        r @ MachineRef::InGroup { .. } => {
            let m = inv.machine(&r)?;
            // Under maintenance: no node of any group, so CA neither counts nor removes it.
            if m.maintenance || (!m.wanted_on() && inv.is_registered(m)) {
                return None;
            }
            inv.group(m.group.as_deref()?).map(|g| info(inv, g, now))
        }
        MachineRef::Ungrouped { .. } => None,
    }
}

fn cmp_opt<T: Ord>(a: Option<T>, b: Option<T>, none_first: bool) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(&b),
        (None, None) => Ordering::Equal,
        (None, Some(_)) if none_first => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) if none_first => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
    }
}

/// Orders power-on candidates: the first is powered on first. Ties fall back to the name.
pub fn power_on_order(order: PowerOnOrder, a: &MachineView, b: &MachineView) -> Ordering {
    let primary = match order {
        PowerOnOrder::Cheapest => match (a.hourly_rate, b.hourly_rate) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (x, y) => cmp_opt(x.map(|_| ()), y.map(|_| ()), false),
        },
        PowerOnOrder::FastestBoot => cmp_opt(a.typical_boot(), b.typical_boot(), false),
        PowerOnOrder::LeastRecentlyUsed => cmp_opt(a.last_power_on, b.last_power_on, true),
        PowerOnOrder::Name => Ordering::Equal,
    };
    primary.then_with(|| a.key.cmp(&b.key))
}

/// Whether a spare is down: off (or never seen on) and without a Ready Node. A spare still
/// shutting down, or whose Node still reads Ready (the node lifecycle controller marks it
/// NotReady only after its grace period, tens of seconds after the machine died), is not: powering it on waits for its shutdown
/// to end and then boots it, and its stale Ready Node would make it look booted at once.
fn is_down_spare(inv: &Inventory, m: &MachineView) -> bool {
    m.is_down(inv.is_registered(m)) && !inv.is_ready(m)
}

/// Orders power-on candidates at `now`, best first:
/// 1. a machine whose last power-on failed goes after every other one whatever the
///    `powerOnOrder` (the longest-ago failure first), otherwise CA's retry after its backoff
///    picks the same broken machine while a good one stays off;
/// 2. then a machine at its `wear.maxBootsPerDay` goes after those below it: it is picked
///    only when the others cannot take the request (the machine controller then records an
///    Event that the limit was passed);
/// 3. then a machine that is down goes before one still on its way down (CA just deleted it);
/// 4. then the group's `powerOnOrder`.
///
/// The failure rule comes first: a healthy machine still shutting down costs its shutdown's
/// time before the boot, a machine that failed may not boot at all and CA finds out only
/// after its `maxNodeProvisionTime` (then backs the group off).
fn candidate_order(
    inv: &Inventory,
    g: &GroupState,
    a: &MachineView,
    b: &MachineView,
    now: Timestamp,
) -> Ordering {
    let at_limit =
        |m: &MachineView| wear::machine_at_limit(g.spec.wear.as_deref(), m.wear.as_deref(), now);
    // `None < Some`: machines without a failure first; `false < true`: below the limit
    // first, down first.
    a.last_power_on_failure()
        .cmp(&b.last_power_on_failure())
        .then_with(|| at_limit(a).cmp(&at_limit(b)))
        .then_with(|| (!is_down_spare(inv, a)).cmp(&!is_down_spare(inv, b)))
        .then_with(|| power_on_order(g.spec.power_on_order, a, b))
}

/// Members wanted off and not under maintenance, best first at `now`, ignoring cool-downs.
fn ordered_spares<'a>(inv: &Inventory, g: &'a GroupState, now: Timestamp) -> Vec<&'a MachineView> {
    let mut c: Vec<&MachineView> = ca_members(g).filter(|m| !m.wanted_on()).collect();
    c.sort_by(|a, b| candidate_order(inv, g, a, b, now));
    c
}

/// Why a spare machine cannot be picked now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpickable {
    /// Its last power-on failed less than the group's cool-down ago.
    CoolingDown { until: Timestamp },
    /// Its power-on failed and it is still on its way off, or went off so recently that CA may
    /// still list it: CA would find it "unregistered since" the failed attempt and delete it
    /// again at once (CA's `clusterstate.go` `updateUnregisteredNodes` keeps the old time while
    /// the id stays listed).
    StillListed,
}

/// Whether `IncreaseSize` may pick the spare `m` at `now`: not a machine CA just gave up on,
/// which CA would delete again at once, in a loop (docs/ca-contract.md, rule 7).
pub fn pickable(
    inv: &Inventory,
    g: &GroupState,
    m: &MachineView,
    now: Timestamp,
) -> Result<(), Unpickable> {
    let Some(failed) = m.last_power_on_failure() else {
        return Ok(());
    };
    let until = add(failed, g.spec.failure_cooldown());
    if now < until {
        return Err(Unpickable::CoolingDown { until });
    }
    let down = m.is_down(inv.is_registered(m));
    let cache_fresh = m
        .last_power_off
        .is_some_and(|off| now < add(off, CA_INSTANCE_CACHE_FRESHNESS));
    if !down || cache_fresh {
        return Err(Unpickable::StillListed);
    }
    Ok(())
}

fn add(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// Machines `IncreaseSize` may pick at `now`, best first, and how many spares are held back.
fn candidates<'a>(
    inv: &Inventory,
    g: &'a GroupState,
    now: Timestamp,
) -> (Vec<&'a MachineView>, Vec<(&'a MachineView, Unpickable)>) {
    let mut ok = Vec::new();
    let mut held = Vec::new();
    for m in ordered_spares(inv, g, now) {
        match pickable(inv, g, m, now) {
            Ok(()) => ok.push(m),
            Err(why) => held.push((m, why)),
        }
    }
    (ok, held)
}

fn held_back_text(held: &[(&MachineView, Unpickable)]) -> String {
    if held.is_empty() {
        return String::new();
    }
    let list: Vec<String> = held
        .iter()
        .map(|(m, why)| match why {
            Unpickable::CoolingDown { until } => format!("{} until {until}", m.key),
            Unpickable::StillListed => format!("{} until it is off", m.key),
        })
        .collect();
    format!(
        "; held back after a failed power-on: {} (set the Group's spec.powerOnFailureCooldown to change the wait)",
        list.join(", ")
    )
}

/// Rule 4: pick `delta` powered-off machines by the group's `powerOnOrder` and want them on.
/// Machines whose power-on failed recently are not picked ([`pickable`]); when too few
/// machines are left the call fails with `ResourceExhausted`, so CA backs the group off and
/// tries another (CA's `core/scaleup/orchestrator/executor.go` registers the failed scale-up).
/// A request is served whole or refused: CA records a successful call as `delta` nodes coming
/// (`executor.go` `RegisterScaleUp`) and never asks for more than MaxSize - target
/// ([`max_size`] counts only pickable spares), so a request too big for the pickable spares
/// only comes from a MaxSize read before a cool-down began.
pub fn increase_size(
    inv: &Inventory,
    id: &str,
    delta: i32,
    now: Timestamp,
) -> Result<Decision, ProviderError> {
    let g = group(inv, id)?;
    refuse_if_paused(g)?;
    if delta <= 0 {
        return Err(ProviderError::DeltaNotPositive {
            group: id.to_owned(),
            delta,
        });
    }
    let target = target_of(g);
    // The Group's own maximum: a request above what can be picked now (CA read MaxSize before
    // a cool-down began, or a race) is refused below as NotEnoughMachines, all or nothing.
    let max = g.max_size();
    let wanted = delta.unsigned_abs();
    if u64::from(target) + u64::from(wanted) > u64::from(max) {
        return Err(ProviderError::AboveMax {
            group: id.to_owned(),
            target,
            delta,
            max,
        });
    }
    let (c, held) = candidates(inv, g, now);
    if c.len() < wanted as usize {
        return Err(ProviderError::NotEnoughMachines {
            group: id.to_owned(),
            wanted,
            available: count(c.len()),
            held_back: held_back_text(&held),
        });
    }
    let changes = c
        .into_iter()
        .take(wanted as usize)
        .map(|m| power_on(m, now))
        .collect();
    Ok(Decision {
        group: id.to_owned(),
        changes,
        target_before: target,
        target_after: target + wanted,
    })
}

/// The change that wants spare `m` on at `now`.
fn power_on(m: &MachineView, now: Timestamp) -> PowerChange {
    PowerChange {
        machine: m.key.clone(),
        desired: PowerState::On,
        at: now,
        power_on_failed: false,
    }
}

/// The operator's own scale-up to the minimum in force at `now` (a schedule window that raised
/// `minSize`): picks spares by the group's `powerOnOrder`, as [`increase_size`] does, until the
/// target reaches the minimum; nothing when it already does. Without
/// `--enforce-node-group-min-size` CA never scales a group up to its `MinSize` (only
/// `core/static_autoscaler.go` `RunOnce` calls `ScaleUpToNodeGroupMinSize` in
/// `core/scaleup/orchestrator/orchestrator.go`, and only with that flag); with it CA computes
/// `MinSize - TargetSize` from a `TargetSize` read just before its `IncreaseSize`, so whichever
/// of the two comes second finds the target at the minimum and adds nothing. Machines held back
/// by a failed power-on are not picked: fewer are wanted on now and the rest when their
/// cool-down ends (the next reconcile asks again).
pub fn raise_to_min(inv: &Inventory, id: &str, now: Timestamp) -> Result<Decision, ProviderError> {
    let g = group(inv, id)?;
    let target = target_of(g);
    let deficit = g.min_size(now).saturating_sub(target);
    let (spares, _) = candidates(inv, g, now);
    let changes: Vec<PowerChange> = spares
        .into_iter()
        .take(deficit as usize)
        .map(|m| power_on(m, now))
        .collect();
    Ok(Decision {
        group: id.to_owned(),
        target_before: target,
        target_after: target + count(changes.len()),
        changes,
    })
}

/// Rule 5: want the named nodes off. All or nothing: every node must be a member (matched by
/// providerID, then name; fake nodes included) and a registered machine protected by
/// `scaleDownDisabled` (its own or its Group's) is refused. Nodes already wanted off change nothing
/// (CA repeats the call for failed instances until they are gone).
///
/// A machine that never registered is one CA gave up on (long unregistered or reported with
/// errorInfo: CA's `static_autoscaler.go` `removeOldUnregisteredNodes` and
/// `deleteCreatedNodesWithErrors`): its power-on is recorded as failed in the same change.
/// The target must stay at or above `minSize`; when deleting failed machines would go below
/// it, other spares are wanted on in their place (CA's `deleteCreatedNodesWithErrors` does not
/// check `minSize`, and refusing would make it repeat the call every loop).
pub fn delete_nodes(
    inv: &Inventory,
    id: &str,
    nodes: &[NodeRef],
    now: Timestamp,
) -> Result<Decision, ProviderError> {
    let g = group(inv, id)?;
    refuse_if_paused(g)?;
    let mut seen = HashSet::new();
    let mut off = Vec::new();
    for n in nodes {
        let found = inv.resolve(&n.provider_id, &n.name);
        let m = match &found {
            Some(r @ MachineRef::InGroup { group, .. }) if group == id => inv.machine(r),
            _ => None,
        };
        let Some(m) = m else {
            let actual = match &found {
                Some(MachineRef::InGroup { group, .. }) => format!("group {group:?}"),
                Some(MachineRef::Ungrouped { .. }) => "no group".to_owned(),
                None => "no known machine".to_owned(),
            };
            return Err(ProviderError::NodeNotInGroup {
                group: id.to_owned(),
                node: n.to_string(),
                actual,
            });
        };
        if m.maintenance {
            return Err(ProviderError::UnderMaintenance {
                group: id.to_owned(),
                machine: m.key.to_string(),
            });
        }
        if !seen.insert(m.key.clone()) || !m.wanted_on() {
            continue;
        }
        if inv.is_registered(m) {
            quiet_refusal(g, m, now)?;
        }
        if (m.scale_down_disabled || g.spec.scale_down_disabled) && inv.is_registered(m) {
            return Err(ProviderError::ScaleDownDisabled {
                group: id.to_owned(),
                machine: m.key.to_string(),
                by: if m.scale_down_disabled {
                    format!("its Node CR {}", m.key)
                } else {
                    format!("its Group {}/{}", g.spec.namespace, g.spec.name)
                },
            });
        }
        off.push(m);
    }
    let target = target_of(g);
    let n = count(off.len());
    let mut changes: Vec<PowerChange> = off
        .iter()
        .map(|m| PowerChange {
            machine: m.key.clone(),
            desired: PowerState::Off,
            at: now,
            power_on_failed: !inv.is_registered(m),
        })
        .collect();
    let after = target.saturating_sub(n);
    let min = g.min_size(now);
    let mut replaced = 0;
    if target < n || after < min {
        let failed = count(changes.iter().filter(|c| c.power_on_failed).count());
        let deficit = min.saturating_sub(after);
        let (spares, _) = candidates(inv, g, now);
        // Only failed power-ons are swapped: a registered node at minSize stays refused.
        if target < n || deficit > failed || spares.len() < deficit as usize {
            return Err(ProviderError::BelowMin {
                group: id.to_owned(),
                target,
                count: n,
                min,
            });
        }
        changes.extend(
            spares
                .into_iter()
                .take(deficit as usize)
                .map(|m| PowerChange {
                    machine: m.key.clone(),
                    desired: PowerState::On,
                    at: now,
                    power_on_failed: false,
                }),
        );
        replaced = deficit;
    }
    Ok(Decision {
        group: id.to_owned(),
        changes,
        target_before: target,
        target_after: after + replaced,
    })
}

/// A registered member in quiet hours that hold power-offs (its own `wear.quietHours`, else
/// its Group's) is not powered off: the error names the window's end. CA is kept from asking
/// by the `cluster-autoscaler.kubernetes.io/scale-down-disabled` annotation the machine
/// controller puts on the Node for the window (CA's `core/scaledown/eligibility/eligibility.go`
/// skips such nodes); this refusal covers a request CA planned before the annotation reached
/// it. What CA does with the error: `core/scaledown/actuation/delete_in_batch.go`
/// `deleteNodesFromCloudProvider` calls `RegisterFailedScaleDown`, a no-op in
/// `clusterstate/clusterstate.go` (no backoff), and the group deletion scheduler's
/// `AbortNodeDeletion` (`group_deletion_scheduler.go`) removes its deletion taint and records
/// a failed-scale-down Event; the node stays as it was.
fn quiet_refusal(g: &GroupState, m: &MachineView, now: Timestamp) -> Result<(), ProviderError> {
    let (gw, own) = (g.spec.wear.as_deref(), m.wear.as_deref());
    let Some((quiet, tz)) = wear::machine_quiet(gw, own) else {
        return Ok(());
    };
    if !quiet.holds_power_off(tz, now) {
        return Ok(());
    }
    let by = if own.and_then(|w| w.quiet.as_ref()).is_some() {
        format!("its Node CR {}", m.key)
    } else {
        format!("its Group {}/{}", g.spec.namespace, g.spec.name)
    };
    Err(ProviderError::QuietHours {
        group: g.spec.id.clone(),
        machine: m.key.to_string(),
        by,
        until: quiet
            .next_change(tz, now)
            .map_or_else(|| "it is changed".to_owned(), |t| t.to_string()),
    })
}

/// Wanted-on members whose node has registered.
pub fn registered_count(inv: &Inventory, g: &GroupState) -> u32 {
    count(
        ca_members(g)
            .filter(|m| m.wanted_on() && inv.is_registered(m))
            .count(),
    )
}

/// How far a pending power-on got, for which to cancel first: 0 failed (phase Failed, or a
/// power-on failure recorded after its request: the FSM is retrying), 1 not acting yet (no
/// power-on operation, still off), 2 acting (powering on or booting).
fn pending_rank(m: &MachineView) -> u8 {
    let phase = m.lifecycle.phase();
    let requested = m.requested_at();
    let failed_since_request = m
        .last_power_on_failure()
        .is_some_and(|f| requested.is_none_or(|r| f >= r));
    if phase == Phase::Failed || failed_since_request {
        0
    } else if m.lifecycle.operation.is_none() && matches!(phase, Phase::Off | Phase::Unknown) {
        1
    } else {
        2
    }
}

/// Rule 6: cancel `|delta|` wanted-on machines that have not registered. Never below the
/// registered count. `minSize` is not checked: CA computes the delta from its own registered
/// count (`clusterstate.go` `updateIncorrectNodeGroupSizes`, then `static_autoscaler.go`
/// `fixNodeGroupSize`) and an error here repeats every loop.
///
/// CA calls it when a scale-up timed out (`clusterstate/clusterstate.go` `updateScaleRequests`:
/// the group's last IncreaseSize is older than its `maxNodeProvisionTime`, delta = minus the
/// whole request) or when the group's registered count stayed below its target that long
/// (`fixNodeGroupSize`). The instances it gives up on are the failed ones, so machines that
/// failed go first, then those not acting yet, then the newest request first; a healthy
/// machine booting goes last. A machine whose power-on was requested at least the group's
/// provision time ago timed out for CA: its power-on is recorded as failed, so IncreaseSize
/// does not pick it again after CA's backoff. The provision time is the Group's
/// `maxNodeProvisionTime`, else `ca_provision` (CA's flag, as CA's `NodeGroupGetOptions`
/// defaults carried it), else CA's default ([`GroupView::provision_time`]).
pub fn decrease_target_size(
    inv: &Inventory,
    id: &str,
    delta: i32,
    now: Timestamp,
    ca_provision: Option<SignedDuration>,
) -> Result<Decision, ProviderError> {
    let g = group(inv, id)?;
    refuse_if_paused(g)?;
    if delta >= 0 {
        return Err(ProviderError::DeltaNotNegative {
            group: id.to_owned(),
            delta,
        });
    }
    let target = target_of(g);
    let registered = registered_count(inv, g);
    let new = i64::from(target) + i64::from(delta);
    if new < i64::from(registered) {
        return Err(ProviderError::BelowRegistered {
            group: id.to_owned(),
            target,
            delta,
            registered,
        });
    }
    let mut pending: Vec<&MachineView> = ca_members(g)
        .filter(|m| m.wanted_on() && !inv.is_registered(m))
        .collect();
    // Failed, then not acting, then acting; within each the newest request first (an unknown
    // request time counts as oldest), then the one furthest from running.
    pending.sort_by(|a, b| {
        pending_rank(a)
            .cmp(&pending_rank(b))
            .then_with(|| cmp_opt(b.requested_at(), a.requested_at(), true))
            .then_with(|| progress(a.lifecycle.phase()).cmp(&progress(b.lifecycle.phase())))
            .then_with(|| b.key.cmp(&a.key))
    });
    let provision = match (g.spec.options.max_node_provision, ca_provision) {
        (None, Some(ca)) => ca,
        _ => g.spec.provision_time(),
    };
    let n = delta.unsigned_abs() as usize;
    let changes: Vec<PowerChange> = pending
        .into_iter()
        .take(n)
        .map(|m| PowerChange {
            machine: m.key.clone(),
            desired: PowerState::Off,
            at: now,
            // CA gave up on it after its provision time: a failed power-on. Sooner (a request
            // CA no longer needs), a plain cancellation.
            power_on_failed: m.requested_at().is_some_and(|r| add(r, provision) <= now),
        })
        .collect();
    let after = target - count(changes.len());
    Ok(Decision {
        group: id.to_owned(),
        changes,
        target_before: target,
        target_after: after,
    })
}

fn progress(p: Phase) -> u8 {
    match p {
        Phase::Off | Phase::Unknown | Phase::Failed => 0,
        Phase::PoweringOn => 1,
        Phase::Booting => 2,
        Phase::Ready | Phase::PoweringOff => 3,
    }
}

/// Rule 7: the machines counted in the target plus those still being powered off; never idle
/// powered-off spares. A machine that came up stays `Running` while its Node is NotReady or
/// gone (CA's `--scale-down-unready-time` decides; errorInfo would make CA's
/// `static_autoscaler.go` `deleteCreatedNodesWithErrors` delete it undrained every loop).
/// errorInfo is for the current power-on attempt only: `Creating` with errorInfo while the
/// FSM holds it Failed on its way on.
pub fn node_group_nodes(inv: &Inventory, id: &str) -> Result<Vec<InstanceInfo>, ProviderError> {
    let g = group(inv, id)?;
    let mut out = Vec::new();
    // Under maintenance: not an instance, so never one CA waits for or finds failed.
    for m in ca_members(g) {
        // A Node the trust boundary refuses is no machine's: listed here, CA would take it
        // (matched by its providerID) for this group's instance.
        if inv.is_refused_node(&m.provider_id) {
            continue;
        }
        let registered = inv.is_registered(m);
        let phase = m.lifecycle.phase();
        let (state, error) = if m.wanted_on() {
            if inv.is_ready(m) || phase == Phase::Ready {
                (InstanceState::Running, None)
            } else if phase == Phase::Failed && m.lifecycle.goal != Some(PowerState::Off) {
                let message = m
                    .lifecycle
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "power-on or boot failed".to_owned());
                (
                    InstanceState::Creating,
                    Some(InstanceError {
                        code: "PowerOnFailed".to_owned(),
                        message: format!("machine {}: {message}", m.key),
                        class: ErrorClass::Other,
                    }),
                )
            } else {
                (InstanceState::Creating, None)
            }
        } else if m.is_down(registered) {
            continue;
        } else {
            (InstanceState::Deleting, None)
        };
        out.push(InstanceInfo {
            id: m.provider_id.clone(),
            machine: m.key.clone(),
            state,
            error,
        });
    }
    Ok(out)
}

/// Rule 9: `None` (CA uses its flags) unless the Group sets options; then the request's defaults
/// with the Group's fields on top.
pub fn node_group_options(
    inv: &Inventory,
    id: &str,
    defaults: Option<AutoscalingOptions>,
) -> Result<Option<AutoscalingOptions>, ProviderError> {
    let g = group(inv, id)?;
    let o = &g.spec.options;
    if o.is_empty() {
        return Ok(None);
    }
    let mut out = defaults.unwrap_or_default();
    if let Some(v) = o.scale_down_utilization_threshold {
        out.scale_down_utilization_threshold = v;
    }
    if let Some(v) = o.scale_down_gpu_utilization_threshold {
        out.scale_down_gpu_utilization_threshold = v;
    }
    if let Some(v) = o.zero_or_max_node_scaling {
        out.zero_or_max_node_scaling = v;
    }
    if let Some(v) = o.ignore_daemon_sets_utilization {
        out.ignore_daemon_sets_utilization = v;
    }
    if let Some(v) = o.scale_down_unneeded {
        out.scale_down_unneeded = Some(v);
    }
    if let Some(v) = o.scale_down_unready {
        out.scale_down_unready = Some(v);
    }
    if let Some(v) = o.max_node_provision {
        out.max_node_provision = Some(v);
    }
    Ok(Some(out))
}

/// Prefix CA gives the template nodes it builds from `NodeGroupTemplateNodeInfo`
/// (`template-node-for-<group id>-<random>`).
pub const CA_TEMPLATE_PREFIX: &str = "template-node-for-";

/// The group id in a CA template node name, if it names one of ours.
fn template_group<'a>(inv: &'a Inventory, name: &str) -> Option<&'a GroupState> {
    let rest = name.strip_prefix(CA_TEMPLATE_PREFIX)?;
    let (id, suffix) = rest.rsplit_once('-')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    inv.group(id)
}

/// The rate CA should expect for one more node of the group: the machine `IncreaseSize` would
/// pick next at `now` (same order, same [`pickable`] rule), else the cheapest member. Missing
/// rates count as 0 (a homelab with no prices). CA asks for it through the template node's
/// NodePrice (the price expander, `expander/price`).
pub fn group_hourly_rate(inv: &Inventory, g: &GroupState, now: Timestamp) -> f64 {
    candidates(inv, g, now)
        .0
        .first()
        .and_then(|m| m.hourly_rate)
        .or_else(|| {
            g.machines
                .iter()
                .filter_map(|m| m.hourly_rate)
                .min_by(f64::total_cmp)
        })
        .unwrap_or(0.0)
}

/// Rule 11: price of a node (real, fake or CA's template) over `[start, end)`: hourly rate × hours.
pub fn node_price(
    inv: &Inventory,
    node: &NodeRef,
    start: Timestamp,
    end: Timestamp,
    now: Timestamp,
) -> Result<f64, ProviderError> {
    if end < start {
        return Err(ProviderError::InvalidWindow {
            node: node.to_string(),
            start: start.to_string(),
            end: end.to_string(),
        });
    }
    let hours = end.duration_since(start).as_secs_f64() / 3600.0;
    let rate = match inv.resolve(&node.provider_id, &node.name) {
        Some(r) => inv.machine(&r).and_then(|m| m.hourly_rate).unwrap_or(0.0),
        None => match template_group(inv, &node.name) {
            Some(g) => group_hourly_rate(inv, g, now),
            None => {
                return Err(ProviderError::NodeNotManaged {
                    node: node.to_string(),
                });
            }
        },
    };
    Ok(rate * hours)
}
