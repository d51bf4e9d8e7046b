//! CA's drain rules (`simulator/drainability/rules`) and PodDisruptionBudgets
//! (`core/scaledown/pdb`): which pods block a node's removal.
use crate::sim::engine::Sim;
use crate::sim::units::Millis;
use crate::sim::workload::Controller;

/// What a drain rule says about one pod (`drainability.Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Drain {
    Movable,
    Blocked(&'static str),
}

impl Sim<'_> {
    /// CA's drain rules (`simulator/drainability/rules/rules.go` `Default`, in their order) for
    /// one pod of workload `w` created at `created`: the first rule with an opinion decides.
    /// DaemonSet pods are the node's overhead, not in this list, and are never moved.
    pub(super) fn drain_rule(&self, w: u16, created: Millis, pdb_left: &[i64]) -> Drain {
        let a = &self.sc.autoscaler;
        let Some(wl) = self.sc.workloads.get(usize::from(w)) else {
            return Drain::Movable;
        };
        let t = &wl.drain;
        // `safetoevict`: the annotation "true" makes any pod drainable.
        if t.safe_to_evict == Some(true) {
            return Drain::Movable;
        }
        // `replicated`: bare pods are never moved; pods of a controller CA does not know only
        // with --skip-nodes-with-custom-controller-pods=false.
        match t.controller {
            Controller::None => return Drain::Blocked("a pod without a controller"),
            Controller::Custom if a.skip_nodes_with_custom_controller_pods => {
                return Drain::Blocked("a pod of a custom controller");
            }
            _ => {}
        }
        // `system`: kube-system pods without a PDB, until the blocking-system-pod disruption
        // timeout has passed since their creation.
        if t.kube_system
            && a.skip_nodes_with_system_pods
            && t.pdb_max_unavailable.is_none()
            && self.now <= created + a.blocking_system_pod_disruption_timeout
        {
            return Drain::Blocked("a kube-system pod without a PodDisruptionBudget");
        }
        // `notsafetoevict`.
        if t.safe_to_evict == Some(false) {
            return Drain::Blocked("a pod annotated safe-to-evict: \"false\"");
        }
        // `localstorage`.
        if t.local_storage && a.skip_nodes_with_local_storage {
            return Drain::Blocked("a pod with local storage (emptyDir/hostPath)");
        }
        // `pdb`: no disruptions left in its budget.
        if t.pdb_max_unavailable.is_some() && pdb_left[usize::from(w)] < 1 {
            return Drain::Blocked("a PodDisruptionBudget with no disruptions allowed");
        }
        Drain::Movable
    }

    /// The remaining disruptions of each workload's PDB this loop
    /// (`core/scaledown/pdb` `BasicRemainingPdbTracker`): `maxUnavailable` minus the pods not
    /// running (pending ones, e.g. evicted earlier and not placed yet).
    pub(super) fn pdb_remaining(&self) -> Vec<i64> {
        self.sc
            .workloads
            .iter()
            .enumerate()
            .map(|(w, wl)| match wl.drain.pdb_max_unavailable {
                Some(max) => i64::from(max) - i64::from(self.cluster.pending_of(w)),
                None => 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! Each test names the CA 1.36.1 function (in the CA source tree) whose behaviour it checks.
    use super::*;
    use crate::sim::autoscaler::test_support::*;
    use crate::sim::units::HOUR;
    use crate::sim::units::MINUTE;
    use crate::sim::units::SECOND;

    /// `simulator/drainability/rules/rules.go` `Default` with CA's default flags: `replicated`
    /// (bare and custom-controller pods), `system` (kube-system without a PDB, until
    /// --blocking-system-pod-distruption-timeout), `notsafetoevict`, `localstorage`, `pdb`
    /// (no disruptions left) block; `safetoevict` ("true") lets any pod go.
    #[test]
    fn pods_that_block_scale_down_in_cas_defaults() {
        let workloads = [
            "name: job",
            "name: bare, controller: none",
            "name: custom, controller: custom",
            "name: sys, namespace: kube-system",
            "name: pinned, safeToEvict: false",
            "name: scratch, localStorage: true",
            "name: budget, pdb: {maxUnavailable: 0}",
            "name: budget1, pdb: {maxUnavailable: 1}",
            "name: forced, controller: none, localStorage: true, safeToEvict: true",
        ];
        let sc = lab("", G, TWO, &workloads, "");
        let s = sim(&sc);
        let left = s.pdb_remaining();
        assert_eq!(left[6], 0);
        assert_eq!(left[7], 1);
        let blocked = |w: u16, created: Millis| s.drain_rule(w, created, &left) != Drain::Movable;
        assert!(!blocked(0, 0), "a Job's pod moves");
        for w in 1..=6 {
            assert!(
                blocked(w, 0),
                "workload {} must block",
                workloads[usize::from(w)]
            );
        }
        assert!(!blocked(7, 0), "one disruption allowed");
        assert!(!blocked(8, 0), "safe-to-evict: true overrides");
        let mut later = sim(&sc);
        later.now = HOUR + SECOND;
        let left = later.pdb_remaining();
        assert_eq!(
            later.drain_rule(3, 0, &left),
            Drain::Movable,
            "a kube-system pod older than the 1h timeout moves"
        );
    }

    /// The same rules end to end: a node holding a bare pod is never unneeded, while a Job's
    /// pod lets it go (`SimulateNodeRemoval` returns `BlockedByPod`).
    #[test]
    fn a_blocking_pod_keeps_its_node() {
        let sc = lab(
            "",
            G,
            TWO,
            &["name: job", "name: bare, controller: none"],
            "",
        );
        let mut s = sim(&sc);
        put(&mut s, 0, 500, 1, 1);
        put(&mut s, 1, 500, 1, 0);
        scan_at(&mut s, 0);
        assert_eq!(unneeded(&s), vec![1]);
        assert_eq!(s.ca.unremovable_until[0], 5 * MINUTE);
    }
}
