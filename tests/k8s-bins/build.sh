#!/usr/bin/env bash
# Builds the real Kubernetes components the tests run against (etcd, kube-apiserver,
# kube-scheduler, cluster-autoscaler) and the packaging tools the install tests run (helm,
# krew and its validate-krew-manifest) from Go modules, and caches them outside the work
# tree keyed by version. A second run finds them and costs nothing.
#
# Prints the cache directory on its last line (the value for KUBECTL_HOMELAB_TEST_ASSETS).
#
# Environment:
#   KUBECTL_HOMELAB_CACHE   cache root (default ~/.cache/kubectl-homelab)
#   CLUSTER_AUTOSCALER_SRC  Cluster Autoscaler source directory (the `cluster-autoscaler`
#                           folder of kubernetes/autoscaler at the release tag). When unset
#                           the release tag is cloned.
set -euo pipefail

K8S_VERSION=1.36.3
ETCD_VERSION=3.6.16
CA_VERSION=1.36.1
HELM_VERSION=3.22.0
KREW_VERSION=0.4.3
STAGING="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller streaming"

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${KUBECTL_HOMELAB_CACHE:-$HOME/.cache/kubectl-homelab}
out="$cache_root/testenv/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-ca-$CA_VERSION"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log() { echo "[k8s-bins] $*" >&2; }

build_kubernetes() {
  local need=()
  for b in kube-apiserver kube-scheduler; do [ -x "$out/$b" ] || need+=("$b"); done
  [ ${#need[@]} -eq 0 ] && return 0
  log "building ${need[*]} v$K8S_VERSION (cold: about 15 minutes on 2 cores)"
  mkdir -p "$work/kubernetes" && cp "$here/kubernetes/go.mod" "$here/kubernetes/tools.go" "$work/kubernetes/"
  (
    cd "$work/kubernetes"
    # Staging modules are published as v0.<minor>.<patch> (1.36.3 -> v0.36.3).
    local staging_version="v0.${K8S_VERSION#1.}" minor
    minor=$(echo "$K8S_VERSION" | cut -d. -f2)
    for m in $STAGING; do go mod edit -replace "k8s.io/$m=k8s.io/$m@$staging_version"; done
    go mod tidy >&2
    # Stamp the version: unstamped builds report v0.0.0-master, which clients reject.
    local ld=""
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    for b in "${need[@]}"; do
      go build -trimpath -ldflags "-s -w $ld" -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2
      mv "$out/$b.tmp" "$out/$b"
    done
  )
}

build_etcd() {
  [ -x "$out/etcd" ] && return 0
  log "building etcd v$ETCD_VERSION"
  mkdir -p "$work/etcd" && cp "$here/etcd/go.mod" "$here/etcd/tools.go" "$work/etcd/"
  (
    cd "$work/etcd"
    go mod tidy >&2
    go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
    mv "$out/etcd.tmp" "$out/etcd"
  )
}

build_ca() {
  [ -x "$out/cluster-autoscaler" ] && return 0
  local src=${CLUSTER_AUTOSCALER_SRC:-}
  if [ -z "$src" ]; then
    log "CLUSTER_AUTOSCALER_SRC unset: cloning cluster-autoscaler-$CA_VERSION"
    git clone -q --depth 1 --branch "cluster-autoscaler-$CA_VERSION" \
      https://github.com/kubernetes/autoscaler "$work/autoscaler" >&2
    src="$work/autoscaler/cluster-autoscaler"
  fi
  log "building cluster-autoscaler $CA_VERSION from $src"
  # Build from a copy: the source tree may be read-only.
  cp -r "$src" "$work/ca"
  go build -C "$work/ca" -mod=readonly -trimpath -tags externalgrpc -ldflags "-s -w" \
    -o "$out/cluster-autoscaler.tmp" . >&2
  mv "$out/cluster-autoscaler.tmp" "$out/cluster-autoscaler"
}

# `go install module@version` builds a command from its published module (with that module's own
# go.mod), so no wrapper module is needed for these two.
go_install() {
  local bin=$1 pkg=$2 ldflags=$3
  [ -x "$out/$bin" ] && return 0
  log "building $bin from $pkg"
  mkdir -p "$work/gobin"
  GOBIN="$work/gobin" go install -trimpath -ldflags "-s -w $ldflags" "$pkg" >&2
  mv "$work/gobin/$bin" "$out/$bin"
}

build_helm() {
  # Stamped as helm's Makefile does: its version, and the Kubernetes version `helm template` and
  # `helm lint` assume (its client-go minor, 0.37 -> 1.37; unstamped they assume 1.20 and
  # refuse a chart needing a newer one).
  local v="-X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" p
  for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    v="$v -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=37"
  done
  go_install helm "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION" "$v"
}

build_krew_validator() {
  go_install validate-krew-manifest "sigs.k8s.io/krew/cmd/validate-krew-manifest@v$KREW_VERSION" ""
  # krew itself: the validator installs a manifest with `kubectl krew install` (tests/release.rs
  # puts it on PATH as kubectl-krew).
  go_install krew "sigs.k8s.io/krew/cmd/krew@v$KREW_VERSION" ""
}

# Runs one build step and logs how long it took (the numbers the README quotes).
timed() {
  local t0=$SECONDS
  "$@"
  [ $((SECONDS - t0)) -gt 1 ] && log "$1 took $((SECONDS - t0)) s"
  return 0
}

what=${1:-all}
case "$what" in
  all) timed build_etcd; timed build_kubernetes; timed build_ca; timed build_helm; timed build_krew_validator ;;
  control-plane) timed build_etcd; timed build_kubernetes ;;
  etcd) timed build_etcd ;;
  kubernetes) timed build_kubernetes ;;
  cluster-autoscaler) timed build_ca ;;
  packaging) timed build_helm; timed build_krew_validator ;;
  *) echo "usage: $0 [all|control-plane|etcd|kubernetes|cluster-autoscaler|packaging]" >&2; exit 2 ;;
esac
echo "$out"
