//! Maintenance of one machine and paused groups, as pure decisions: what a machine under
//! maintenance is allowed, when its maintenance ends by itself, what a paused group answers the
//! Cluster Autoscaler, and how both are shown. The provider (`provider/ops.rs`), the controllers
//! and `fsm inspect` act on the answers; `now` comes in from them.
//!
//! A machine under maintenance is outside the Cluster Autoscaler's view of its group: not an
//! instance, not counted in the target size, not capacity CA may power on (docs/ca-contract.md,
//! "Maintenance and paused groups"). Its desired power is whatever `spec.maintenance.power`
//! left it at, changed by nobody but a person.
use jiff::Timestamp;

use crate::operator::api::{Maintenance, MaintenancePower};
use crate::operator::machine::PowerState;

/// The power a machine under maintenance should be wanted at: `on`/`off` as asked, `keep`
/// leaves `current` as it is.
pub fn desired_power(m: &Maintenance, current: PowerState) -> PowerState {
    match m.power.unwrap_or_default() {
        MaintenancePower::Keep => current,
        MaintenancePower::On => PowerState::On,
        MaintenancePower::Off => PowerState::Off,
    }
}

/// Whether the maintenance has run out at `now` (its `until` passed): the operator then clears
/// it. Without `until` it never runs out.
pub fn expired(m: &Maintenance, now: Timestamp) -> bool {
    m.until.is_some_and(|until| now >= until)
}

/// When the operator must look at the machine again to end its maintenance: `until`, unless
/// it already passed or is not set.
pub fn ends_at(m: &Maintenance, now: Timestamp) -> Option<Timestamp> {
    m.until.filter(|until| *until > now)
}

/// What a machine under maintenance lets the operator and the Cluster Autoscaler do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// `IncreaseSize` may pick it (as a spare to power on).
    pub scale_up_pick: bool,
    /// `DeleteNodes` may power it off.
    pub scale_down: bool,
    /// The operator may power-cycle it (remediation of a lost Node).
    pub remediation: bool,
    /// CA sees it as an instance of its group (listed, counted in the target).
    pub instance_of_group: bool,
}

/// What a machine may be used for: everything, unless it is under maintenance, when nothing.
pub fn allowed(maintenance: Option<&Maintenance>) -> Allowed {
    let free = maintenance.is_none();
    Allowed {
        scale_up_pick: free,
        scale_down: free,
        remediation: free,
        instance_of_group: free,
    }
}

/// A paused group's size bounds for CA: min = max = the current target, so CA's scale-up
/// skips it (`core/scaleup/orchestrator/orchestrator.go` `filterValidScaleUpNodeGroups`: target
/// at MaxSize), its min-size fill has nothing to do (`ScaleUpToNodeGroupMinSize`: target at
/// MinSize) and its scale-down keeps every node (`core/scaledown/unneeded/nodes.go`
/// `RemovableAt`: size at MinSize). Errors from `IncreaseSize`/`DeleteNodes` would back the
/// group off instead, and are only the answer when CA asks anyway.
pub fn paused_bounds(target: u32) -> (u32, u32) {
    (target, target)
}

/// One line for `fsm inspect` and Events: `MAINTENANCE reason "…" since … until … by …`.
pub fn marker(m: &Maintenance) -> String {
    let mut out = "MAINTENANCE".to_owned();
    if let Some(r) = m.reason.as_deref().filter(|r| !r.is_empty()) {
        out.push_str(&format!(" reason {r:?}"));
    }
    if let Some(p) = m.power {
        out.push_str(match p {
            MaintenancePower::Keep => " power keep",
            MaintenancePower::On => " power on",
            MaintenancePower::Off => " power off",
        });
    }
    if let Some(s) = m.since {
        out.push_str(&format!(" since {s}"));
    }
    match m.until {
        Some(u) => out.push_str(&format!(" until {u}")),
        None => out.push_str(" until ended by hand"),
    }
    if let Some(b) = m.by.as_deref().filter(|b| !b.is_empty()) {
        out.push_str(&format!(" by {b}"));
    }
    out
}

/// Annotation on a Group: who paused it. `kubectl homelab maintenance pause` writes it with
/// `spec.paused`; without it, [`paused_by`] falls back to the field manager of `spec.paused`.
pub const PAUSED_BY_ANNOTATION: &str = "infra.homecluster.dev/paused-by";

/// Who paused a Group: its [`PAUSED_BY_ANNOTATION`], else the field manager that owns
/// `spec.paused` in its managedFields (e.g. `kubectl-edit`, `kubectl-client-side-apply`).
pub fn paused_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<String> {
    if let Some(by) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(PAUSED_BY_ANNOTATION))
        .filter(|b| !b.is_empty())
    {
        return Some(by.clone());
    }
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|f| {
            f.fields_v1
                .as_ref()
                .and_then(|v| v.0.get("f:spec"))
                .and_then(|s| s.get("f:paused"))
                .is_some()
        })
        .max_by_key(|f| f.time.as_ref().map(|t| t.0))
        .and_then(|f| f.manager.clone())
}

/// The message of a paused group's `Paused` condition.
pub fn paused_message(by: Option<&str>) -> String {
    match by {
        Some(by) => format!(
            "spec.paused is true (set by {by}): no power action in the group, the Cluster \
             Autoscaler's or the operator's, until it is set back to false"
        ),
        None => "spec.paused is true: no power action in the group, the Cluster Autoscaler's \
                 or the operator's, until it is set back to false"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn maint(power: Option<MaintenancePower>, until: Option<&str>) -> Maintenance {
        Maintenance {
            reason: Some("swap a disk".to_owned()),
            power,
            since: Some(t("2026-12-06T10:00:00Z")),
            until: until.map(t),
            by: Some("owner@home".to_owned()),
        }
    }

    #[test]
    fn the_desired_power_follows_maintenance_power_and_keep_leaves_it() {
        for current in [PowerState::On, PowerState::Off] {
            let keep = maint(None, None);
            assert_eq!(desired_power(&keep, current), current);
            let on = maint(Some(MaintenancePower::On), None);
            assert_eq!(desired_power(&on, current), PowerState::On);
            let off = maint(Some(MaintenancePower::Off), None);
            assert_eq!(desired_power(&off, current), PowerState::Off);
        }
    }

    #[test]
    fn maintenance_expires_at_until_and_never_without_it() {
        let m = maint(None, Some("2026-12-06T12:00:00Z"));
        assert!(!expired(&m, t("2026-12-06T11:59:59Z")));
        assert!(expired(&m, t("2026-12-06T12:00:00Z")));
        assert_eq!(
            ends_at(&m, t("2026-12-06T11:00:00Z")),
            Some(t("2026-12-06T12:00:00Z"))
        );
        assert_eq!(ends_at(&m, t("2026-12-06T12:00:01Z")), None);
        let open = maint(None, None);
        assert!(!expired(&open, t("2100-01-01T00:00:00Z")));
        assert_eq!(ends_at(&open, t("2026-12-06T11:00:00Z")), None);
    }

    #[test]
    fn a_machine_under_maintenance_is_allowed_nothing_and_a_free_one_everything() {
        let m = maint(Some(MaintenancePower::On), None);
        assert_eq!(
            allowed(Some(&m)),
            Allowed {
                scale_up_pick: false,
                scale_down: false,
                remediation: false,
                instance_of_group: false,
            }
        );
        assert_eq!(
            allowed(None),
            Allowed {
                scale_up_pick: true,
                scale_down: true,
                remediation: true,
                instance_of_group: true,
            }
        );
    }

    #[test]
    fn a_paused_group_is_bounded_at_its_target() {
        assert_eq!(paused_bounds(0), (0, 0));
        assert_eq!(paused_bounds(3), (3, 3));
    }

    #[test]
    fn who_paused_is_the_annotation_else_the_manager_of_spec_paused() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            FieldsV1, ManagedFieldsEntry, ObjectMeta,
        };
        let entry = |manager: &str, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        };
        let mut meta = ObjectMeta {
            managed_fields: Some(vec![
                entry("helm", serde_json::json!({"f:spec": {"f:minSize": {}}})),
                entry(
                    "kubectl-edit",
                    serde_json::json!({"f:spec": {"f:paused": {}}}),
                ),
            ]),
            ..Default::default()
        };
        assert_eq!(paused_by(&meta).as_deref(), Some("kubectl-edit"));
        meta.annotations = Some(
            [(PAUSED_BY_ANNOTATION.to_owned(), "owner@home".to_owned())]
                .into_iter()
                .collect(),
        );
        assert_eq!(paused_by(&meta).as_deref(), Some("owner@home"));
        assert_eq!(paused_by(&ObjectMeta::default()), None);
    }

    #[test]
    fn the_marker_names_reason_power_since_until_and_by() {
        let m = maint(Some(MaintenancePower::Off), Some("2026-12-06T12:00:00Z"));
        assert_eq!(
            marker(&m),
            "MAINTENANCE reason \"swap a disk\" power off since 2026-12-06T10:00:00Z \
             until 2026-12-06T12:00:00Z by owner@home"
        );
        assert_eq!(
            marker(&Maintenance::default()),
            "MAINTENANCE until ended by hand"
        );
    }
}
