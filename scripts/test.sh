#!/usr/bin/env bash
# The project's one test command (README and CI). It
#  1. builds the real Kubernetes binaries the tests run against (etcd, kube-apiserver,
#     kube-scheduler, cluster-autoscaler) with tests/k8s-bins/build.sh, unless they are already
#     cached (the first, cold build takes about 17 minutes on 2 cores; later runs take seconds);
#  2. points the tests at them (KUBECTL_HOMELAB_TEST_ASSETS) and makes a missing binary a test
#     failure instead of a skip (KUBECTL_HOMELAB_REQUIRE_ASSETS=1);
#  3. checks formatting, runs clippy with warnings denied, and runs every test.
#
# Environment:
#   KUBECTL_HOMELAB_TEST_ASSETS  use binaries from this directory (built there if missing)
#   CLUSTER_AUTOSCALER_SRC       Cluster Autoscaler source to build from; default
#                                ../shared/third_party/cluster-autoscaler if present, else cloned
#   KUBECTL_HOMELAB_CACHE        cache root for the binaries (default ~/.cache/kubectl-homelab)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

start=$SECONDS
step() { printf '==> %s (at %ss)\n' "$*" "$((SECONDS - start))" >&2; }

if [ -z "${CLUSTER_AUTOSCALER_SRC:-}" ] && [ -d "$repo/../shared/third_party/cluster-autoscaler" ]; then
  CLUSTER_AUTOSCALER_SRC=$(cd "$repo/../shared/third_party/cluster-autoscaler" && pwd)
  export CLUSTER_AUTOSCALER_SRC
fi

binaries="etcd kube-apiserver kube-scheduler cluster-autoscaler"
have_all() {
  local dir=$1 b
  for b in $binaries; do [ -x "$dir/$b" ] || return 1; done
}

if [ -n "${KUBECTL_HOMELAB_TEST_ASSETS:-}" ] && have_all "$KUBECTL_HOMELAB_TEST_ASSETS"; then
  step "using Kubernetes test binaries in $KUBECTL_HOMELAB_TEST_ASSETS"
else
  step "building Kubernetes test binaries if missing (tests/k8s-bins/build.sh)"
  assets=$(tests/k8s-bins/build.sh all | tail -n 1)
  if [ -n "${KUBECTL_HOMELAB_TEST_ASSETS:-}" ] && [ "$KUBECTL_HOMELAB_TEST_ASSETS" != "$assets" ]; then
    mkdir -p "$KUBECTL_HOMELAB_TEST_ASSETS"
    for b in $binaries; do cp "$assets/$b" "$KUBECTL_HOMELAB_TEST_ASSETS/$b"; done
  else
    KUBECTL_HOMELAB_TEST_ASSETS=$assets
  fi
fi
have_all "$KUBECTL_HOMELAB_TEST_ASSETS" || {
  echo "Kubernetes test binaries missing in $KUBECTL_HOMELAB_TEST_ASSETS after the build" >&2
  exit 1
}
export KUBECTL_HOMELAB_TEST_ASSETS
export KUBECTL_HOMELAB_REQUIRE_ASSETS=1

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --all-targets -- -D warnings
step "cargo test"
cargo test --all-targets
step "doc tests"
cargo test --doc
step "all checks passed"
