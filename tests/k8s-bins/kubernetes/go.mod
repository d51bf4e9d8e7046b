// Wrapper module: builds kube-apiserver and kube-scheduler from the published
// k8s.io/kubernetes module. Its own go.mod points the staging modules at local
// directories, so each is replaced here by its published version.
module kubectl-homelab/testenv/kubernetes

go 1.26

require k8s.io/kubernetes v1.36.3
