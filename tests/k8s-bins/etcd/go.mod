// Wrapper module: builds the etcd server from the published etcd module.
module kubectl-homelab/testenv/etcd

go 1.26

require go.etcd.io/etcd/server/v3 v3.6.16
