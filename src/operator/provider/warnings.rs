//! What a Group's status should warn its owner about, as pure data: the group controller writes
//! each as a condition (status True; False once it is gone) and a Warning Event.
use super::inventory::{GroupOptions, GroupState, Inventory};
use super::template::has_template;
use crate::operator::api::{CONDITION_NO_TEMPLATE, CONDITION_OPTIONS_WARNING};

/// Every condition type [`group_warnings`] manages: a type not returned is cleared.
pub const GROUP_WARNING_CONDITIONS: [&str; 2] = [CONDITION_OPTIONS_WARNING, CONDITION_NO_TEMPLATE];

/// One warning: a condition of `condition_type` (status True) and an Event with `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupWarning {
    pub condition_type: &'static str,
    /// CamelCase, for the condition and the Event.
    pub reason: &'static str,
    pub message: String,
}

fn set_options(o: &GroupOptions) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut add = |set: bool, field: &'static str| {
        if set {
            v.push(field);
        }
    };
    add(
        o.scale_down_utilization_threshold.is_some(),
        "scaleDownUtilizationThreshold",
    );
    add(
        o.scale_down_gpu_utilization_threshold.is_some(),
        "scaleDownGpuUtilizationThreshold",
    );
    add(o.zero_or_max_node_scaling.is_some(), "zeroOrMaxNodeScaling");
    add(
        o.ignore_daemon_sets_utilization.is_some(),
        "ignoreDaemonSetsUtilization",
    );
    add(o.scale_down_unneeded.is_some(), "scaleDownUnneededTime");
    add(o.scale_down_unready.is_some(), "scaleDownUnreadyTime");
    add(o.max_node_provision.is_some(), "maxNodeProvisionTime");
    v
}

/// The warnings for one group (none for a group the inventory does not hold):
/// - `AutoscalingOptionsWarning` when the Group sets CA options: CA 1.36.1's externalgrpc
///   client (`cloudprovider/externalgrpc/externalgrpc_node_group.go`, `GetOptions`) copies only
///   fields 1-10 of the answer, so `MaxNodeStartupTime` becomes 0 for the group: a machine that
///   registered but is not Ready yet counts as unready at once and CA scales up again.
/// - `ScaleFromZeroUnavailable` when no capacity is known anywhere (no member seen as a Node, no
///   declared capacity): `NodeGroupTemplateNodeInfo` answers Unimplemented, which CA does not
///   log, so nothing would tell the owner why the group never scales up from zero.
pub fn group_warnings(inv: &Inventory, namespace: &str, name: &str) -> Vec<GroupWarning> {
    let Some(g) = inv
        .groups()
        .find(|g| g.spec.namespace == namespace && g.spec.name == name)
    else {
        return Vec::new();
    };
    warnings_of(inv, g)
}

fn warnings_of(inv: &Inventory, g: &GroupState) -> Vec<GroupWarning> {
    let mut out = Vec::new();
    let set = set_options(&g.spec.options);
    if !set.is_empty() {
        out.push(GroupWarning {
            condition_type: CONDITION_OPTIONS_WARNING,
            reason: "MaxNodeStartupTimeZero",
            message: format!(
                "spec sets Cluster Autoscaler options ({}): Cluster Autoscaler 1.36 and older then \
                 use a max node startup time of 0 for this group, so a machine that registered \
                 but is not Ready yet counts as unready at once and CA may power on another; \
                 remove these fields to use CA's own flags",
                set.join(", ")
            ),
        });
    }
    if !has_template(inv, g) {
        out.push(GroupWarning {
            condition_type: CONDITION_NO_TEMPLATE,
            reason: "NoCapacityKnown",
            message: "no member has been seen as a Node and no capacity is declared, so the \
                      Cluster Autoscaler cannot scale this group up from zero (it logs nothing \
                      about it): set spec.capacity on the Node CRs or spec.template.capacity on \
                      the Group, or power a member on once"
                .to_owned(),
        });
    }
    out
}
