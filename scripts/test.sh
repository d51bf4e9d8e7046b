#!/usr/bin/env bash
# The project's one test command (README and CI). It
#  1. builds the real Kubernetes binaries the tests run against (etcd, kube-apiserver,
#     kube-scheduler, cluster-autoscaler, and helm, krew and its validate-krew-manifest for
#     tests/packaging.rs and tests/release.rs) with tests/k8s-bins/build.sh, unless they are already
#     cached (the first, cold build takes about 17 minutes on 2 cores, helm and the validator
#     about 7 more; later runs take seconds);
#  2. points the tests at them (KUBECTL_HOMELAB_TEST_ASSETS) and makes a missing binary a test
#     failure instead of a skip (KUBECTL_HOMELAB_REQUIRE_ASSETS=1);
#  3. checks formatting, runs clippy with warnings denied, compiles every target and runs every
#     test (unit, integration, doc; benches only compile); with KUBECTL_HOMELAB_STATIC_BUILD=1
#     also the Dockerfile's static musl release build.
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

binaries="etcd kube-apiserver kube-scheduler cluster-autoscaler helm validate-krew-manifest krew"
have_all() {
  local dir=$1 b
  for b in $binaries; do [ -x "$dir/$b" ] || return 1; done
}

# The Go build spends much of a cold run waiting for module downloads, so it runs in the
# background while cargo checks and compiles; the tests wait for it.
build_log=$(mktemp)
build_pid=
# On an early exit (fmt or clippy failed) stop the whole build, go compilers included.
trap 'rm -f "$build_log"; [ -n "$build_pid" ] && kill -- -"$build_pid" 2>/dev/null || true' EXIT
if [ -n "${KUBECTL_HOMELAB_TEST_ASSETS:-}" ] && have_all "$KUBECTL_HOMELAB_TEST_ASSETS"; then
  step "using Kubernetes test binaries in $KUBECTL_HOMELAB_TEST_ASSETS"
else
  step "building Kubernetes test binaries in the background if missing (tests/k8s-bins/build.sh)"
  setsid tests/k8s-bins/build.sh all >"$build_log" 2>&1 &
  build_pid=$!
fi

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --all-targets -- -D warnings
step "compiling tests"
cargo test --all-targets --no-run

# The Dockerfile's static build, opt-in: a release build for another target is slow on 2 cores
# (30 min at low priority on a loaded VM), too slow for every run. gcc compiles ring's C for musl
# where no musl-gcc is installed.
if [ "${KUBECTL_HOMELAB_STATIC_BUILD:-0}" = 1 ]; then
  step "static musl release build (the Dockerfile's)"
  rustup target add x86_64-unknown-linux-musl
  CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-gcc} \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin kubectl-homelab
  static_bin=${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-musl/release/kubectl-homelab
  ldd "$static_bin" 2>&1 | grep -q -e "statically linked" -e "not a dynamic executable" || {
    echo "$static_bin is not statically linked" >&2
    exit 1
  }
  "$static_bin" --version
fi

if [ -n "$build_pid" ]; then
  step "waiting for the Kubernetes test binaries"
  if ! wait "$build_pid"; then
    build_pid=
    cat "$build_log" >&2
    echo "tests/k8s-bins/build.sh failed (output above)" >&2
    exit 1
  fi
  build_pid=
  assets=$(tail -n 1 "$build_log")
  if [ -n "${KUBECTL_HOMELAB_TEST_ASSETS:-}" ] && [ "$KUBECTL_HOMELAB_TEST_ASSETS" != "$assets" ]; then
    mkdir -p "$KUBECTL_HOMELAB_TEST_ASSETS"
    for b in $binaries; do cp "$assets/$b" "$KUBECTL_HOMELAB_TEST_ASSETS/$b"; done
  else
    KUBECTL_HOMELAB_TEST_ASSETS=$assets
  fi
fi
have_all "$KUBECTL_HOMELAB_TEST_ASSETS" || {
  echo "Kubernetes test binaries missing in $KUBECTL_HOMELAB_TEST_ASSETS" >&2
  exit 1
}
export KUBECTL_HOMELAB_TEST_ASSETS
export KUBECTL_HOMELAB_REQUIRE_ASSETS=1

# Benches are measurements, not tests (docs/testing.md): under `cargo test` (no `--bench` argument)
# they run a quick smoke version that checks their answers, so they cannot rot; `cargo bench`
# measures.
failed=0
results=$(mktemp)
step "cargo test"
cargo test --lib --bins --tests --benches --no-fail-fast 2>&1 | tee -a "$results" || failed=1
step "doc tests"
cargo test --doc 2>&1 | tee -a "$results" || failed=1
# One closing line for the whole run (cargo prints one per test binary, the last being the
# doc tests, which may be empty).
summary=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed", p, f }' "$results")
rm -f "$results"
if [ "$failed" -ne 0 ]; then
  step "tests FAILED"
  echo "$summary"
  exit 1
fi
step "all checks passed"
echo "$summary"
