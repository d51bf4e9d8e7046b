//! Which Kubernetes Nodes a Node CR may adopt (set the providerID of, label, taint, cordon,
//! drain, power): never a control-plane node; otherwise one labelled
//! `infra.homecluster.dev/adoptable=true` or matching the operator's `--adopt-node-selector`.
use crate::operator::kube_node::KubeNode;

use super::{ADOPTABLE_LABEL, ADOPTABLE_VALUE, CONTROL_PLANE_LABELS, Refusal, TrustPolicy};

/// Reason: the Kubernetes Node is a control-plane node (never adopted).
pub const REASON_CONTROL_PLANE_NODE: &str = "ControlPlaneNode";
/// Reason: the Kubernetes Node carries neither the adoptable label nor the selector's labels.
pub const REASON_NODE_NOT_ADOPTABLE: &str = "NodeNotAdoptable";

/// `Ok` when a Node CR may adopt `node` under `policy`, else the rule it breaks. A control-plane
/// label refuses whatever else the Node carries; otherwise the Node needs
/// `infra.homecluster.dev/adoptable=true`, or every label of a non-empty
/// `policy.adopt_node_selector`.
pub fn check_node(node: &KubeNode, policy: &TrustPolicy) -> Result<(), Refusal> {
    let name = node.name();
    let label = |k: &str| node.labels().get(k);
    let field = format!("Kubernetes Node {name}");
    if let Some(cp) = CONTROL_PLANE_LABELS.iter().find(|k| label(k).is_some()) {
        return Err(Refusal {
            reason: REASON_CONTROL_PLANE_NODE,
            field,
            message: format!(
                "Kubernetes Node {name} is a control-plane node (label {cp}); the operator never \
                 adopts one: name another node in spec.kubernetesNodeName"
            ),
        });
    }
    if label(ADOPTABLE_LABEL) == Some(ADOPTABLE_VALUE) {
        return Ok(());
    }
    let selector = &policy.adopt_node_selector;
    if !selector.is_empty() && selector.iter().all(|(k, v)| label(k) == Some(v.as_str())) {
        return Ok(());
    }
    let selector_hint = if selector.is_empty() {
        String::new()
    } else {
        let s: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            " (the operator's selector {} does not match it)",
            s.join(",")
        )
    };
    Err(Refusal {
        reason: REASON_NODE_NOT_ADOPTABLE,
        field,
        message: format!(
            "Kubernetes Node {name} is not labelled {ADOPTABLE_LABEL}={ADOPTABLE_VALUE}\
             {selector_hint}; the operator adopts (labels, taints, drains, powers) only Nodes \
             their owner allowed: `kubectl label node {name} {ADOPTABLE_LABEL}={ADOPTABLE_VALUE}`, \
             or the kubelet's --node-labels={ADOPTABLE_LABEL}={ADOPTABLE_VALUE}, or select it \
             with the operator's --adopt-node-selector (the chart's security.adoptNodeSelector)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::testing::{NodeExt as _, node};

    fn selector(pairs: &[(&str, &str)]) -> TrustPolicy {
        TrustPolicy {
            adopt_node_selector: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            ..TrustPolicy::default()
        }
    }

    fn reason(r: Result<(), Refusal>) -> Option<&'static str> {
        r.err().map(|r| r.reason)
    }

    #[test]
    fn a_node_labelled_adoptable_may_be_adopted() {
        let n = node("desktop-0").adoptable();
        assert_eq!(check_node(&n.cached(), &TrustPolicy::default()), Ok(()));
    }

    #[test]
    fn a_node_without_the_label_is_refused_with_the_fix_in_the_message() {
        let refusal =
            check_node(&node("desktop-0").cached(), &TrustPolicy::default()).expect_err("refused");
        assert_eq!(refusal.reason, REASON_NODE_NOT_ADOPTABLE);
        assert!(refusal.field.contains("desktop-0"), "{refusal:?}");
        for fix in [
            "kubectl label node desktop-0 infra.homecluster.dev/adoptable=true",
            "--node-labels",
            "security.adoptNodeSelector",
        ] {
            assert!(
                refusal.message.contains(fix),
                "{fix} in {}",
                refusal.message
            );
        }
    }

    #[test]
    fn the_label_must_say_true() {
        let n = node("desktop-0").label(ADOPTABLE_LABEL, "false");
        assert_eq!(
            reason(check_node(&n.cached(), &TrustPolicy::default())),
            Some(REASON_NODE_NOT_ADOPTABLE)
        );
    }

    #[test]
    fn a_node_with_every_label_of_the_selector_may_be_adopted() {
        let policy = selector(&[("homelab/pool", "desktops"), ("homelab/owner", "me")]);
        let all = node("desktop-0")
            .label("homelab/pool", "desktops")
            .label("homelab/owner", "me");
        assert_eq!(check_node(&all.cached(), &policy), Ok(()));
        let some = node("desktop-1").label("homelab/pool", "desktops");
        let refusal = check_node(&some.cached(), &policy).expect_err("refused");
        assert_eq!(refusal.reason, REASON_NODE_NOT_ADOPTABLE);
        assert!(
            refusal
                .message
                .contains("homelab/owner=me,homelab/pool=desktops"),
            "{}",
            refusal.message
        );
        let other_value = node("desktop-2")
            .label("homelab/pool", "servers")
            .label("homelab/owner", "me");
        assert_eq!(
            reason(check_node(&other_value.cached(), &policy)),
            Some(REASON_NODE_NOT_ADOPTABLE)
        );
    }

    #[test]
    fn an_empty_selector_matches_no_node() {
        // An empty selector would match every Node; it means "the label only".
        assert_eq!(
            reason(check_node(&node("n").cached(), &selector(&[]))),
            Some(REASON_NODE_NOT_ADOPTABLE)
        );
    }

    #[test]
    fn a_control_plane_node_is_refused_whatever_it_carries() {
        let policy = selector(&[("homelab/pool", "desktops")]);
        for cp in CONTROL_PLANE_LABELS {
            let n = node("cp-0")
                .label(cp, "")
                .adoptable()
                .label("homelab/pool", "desktops");
            let refusal = check_node(&n.cached(), &policy).expect_err("refused");
            assert_eq!(refusal.reason, REASON_CONTROL_PLANE_NODE);
            assert!(refusal.message.contains(cp), "{}", refusal.message);
            assert!(refusal.message.contains("cp-0"), "{}", refusal.message);
        }
    }
}
