//! The Cluster Autoscaler's names that the operator reads or writes: its taints, its
//! annotations. Each is defined by CA's code (the file and function are named beside it), so
//! they live here once and every module that needs one imports it.

/// CA never scales down a Node with this annotation set to `"true"`
/// (`core/scaledown/eligibility/eligibility.go`, `HasNoScaleDownAnnotation`).
pub const SCALE_DOWN_DISABLED: &str = "cluster-autoscaler.kubernetes.io/scale-down-disabled";

/// CA treats a pod with this annotation set to `"true"` as a DaemonSet pod
/// (`utils/pod/pod.go`, `IsDaemonSetPod`).
pub const DAEMONSET_POD: &str = "cluster-autoscaler.kubernetes.io/daemonset-pod";

/// CA's taint on a Node it is scaling down (`utils/taints/taints.go`, `ToBeDeletedTaint`): CA
/// has cordoned and drained it and is about to call `NodeGroupDeleteNodes`.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// CA's soft taint on a Node it found unneeded (`utils/taints/taints.go`,
/// `DeletionCandidateTaintKey`).
pub const DELETION_CANDIDATE_TAINT: &str = "DeletionCandidateOfClusterAutoscaler";

/// Both scale-down taints.
pub const TAINTS: [&str; 2] = [TO_BE_DELETED_TAINT, DELETION_CANDIDATE_TAINT];

/// Whether a taint key is one of CA's scale-down taints.
pub fn is_ca_taint_key(key: &str) -> bool {
    TAINTS.contains(&key)
}
