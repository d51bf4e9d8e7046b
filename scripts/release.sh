#!/usr/bin/env bash
# Builds the release archives plugins/homelab.yaml names and writes their version, download URIs
# and sha256 into the krew manifest. Runs on Linux (GNU tar, coreutils, bash 4).
#
#   scripts/release.sh [--binary OS/ARCH=PATH]... [--out DIR] [--base-url URL]
#   scripts/release.sh --dry-run [--binary OS/ARCH=PATH]... [--out DIR] [--base-url URL]
#
# Each platform of the manifest (linux/amd64, linux/arm64, darwin/amd64, darwin/arm64) gets
# kubectl-homelab_<version>_<os>_<arch>.tar.gz holding kubectl-homelab, kubectl_complete-homelab
# (completions/) and LICENSE, all at the archive's top level (where the manifest's `files` take
# them from). <version> is "v" + Cargo.toml's version.
#
# Where each platform's binary comes from:
#   --binary OS/ARCH=PATH  that file (checked to be an ELF or Mach-O binary for that platform,
#                          except in --dry-run, which may pack any one binary under every name);
#   otherwise              a release build for the platform's Rust target
#                          (`cargo build --release --locked --target T`), when the target is
#                          installed (`rustup target list --installed`) and, for a target other
#                          than the host's architecture, its C cross compiler is on PATH (ring
#                          compiles C). darwin targets are never built here (no macOS SDK).
# A platform that has neither fails the run before anything is built or written.
#
# A release run (no --dry-run) writes the archives and their .sha256 files to --out (default
# target/dist, ignored by git) and rewrites plugins/homelab.yaml in place: spec.version, each
# platform's uri and sha256. The committed manifest carries the current version with
# placeholder sha256 values (all zeros) until a release run writes real ones.
#
# --dry-run (CI, tests) builds nothing: it packs the binaries given with --binary or already
# built at target/<target>/release/kubectl-homelab, writes the archives and a manifest
# (homelab.yaml) to --out (default: a new temporary directory) and leaves the repository
# untouched. It prints the output directory on its last line.
#
# --base-url URL replaces https://github.com/homecluster-dev/kubectl-homelab/releases/download/<version>
# in the uris (a test serves the archives from 127.0.0.1 to install them with krew).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# Paths on the command line are the caller's, relative to where it ran us.
caller_dir=$PWD
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$caller_dir/$1" ;; esac; }
cd "$repo"

die() { echo "release.sh: $*" >&2; exit 1; }
log() { echo "[release] $*" >&2; }

PLATFORMS="linux/amd64 linux/arm64 darwin/amd64 darwin/arm64"

rust_target() {
  case "$1" in
    linux/amd64) echo x86_64-unknown-linux-musl ;;
    linux/arm64) echo aarch64-unknown-linux-musl ;;
    darwin/amd64) echo x86_64-apple-darwin ;;
    darwin/arm64) echo aarch64-apple-darwin ;;
    *) return 1 ;;
  esac
}

dry_run=0
out=
base_url=
declare -A given=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$(absolute "$2"); shift 2 ;;
    --base-url) [ $# -ge 2 ] || die "--base-url needs a URL"; base_url=${2%/}; shift 2 ;;
    --binary)
      [ $# -ge 2 ] || die "--binary needs OS/ARCH=PATH"
      platform=${2%%=*} path=${2#*=}
      [ "$platform" != "$2" ] && [ -n "$path" ] || die "--binary $2: expected OS/ARCH=PATH"
      rust_target "$platform" >/dev/null || die "--binary $2: unknown platform $platform (one of: $PLATFORMS)"
      given[$platform]=$(absolute "$path")
      shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

version=v$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ "$version" != v ] || die "no version in Cargo.toml"
base_url=${base_url:-https://github.com/homecluster-dev/kubectl-homelab/releases/download/$version}
manifest=plugins/homelab.yaml

# The platform a binary was built for, read from its header: "linux/amd64", "darwin/arm64", or
# "unknown". ELF: e_machine at byte 18 (little-endian); Mach-O 64-bit: cputype at byte 4.
binary_platform() {
  local magic machine
  magic=$(od -An -tx1 -N4 "$1" | tr -d ' \n')
  case "$magic" in
    7f454c46)
      machine=$(od -An -tu2 -j18 -N2 "$1" | tr -d ' \n')
      case "$machine" in 62) echo linux/amd64 ;; 183) echo linux/arm64 ;; *) echo unknown ;; esac ;;
    cffaedfe)
      machine=$(od -An -tx1 -j4 -N4 "$1" | tr -d ' \n')
      case "$machine" in 07000001) echo darwin/amd64 ;; 0c000001) echo darwin/arm64 ;; *) echo unknown ;; esac ;;
    *) echo unknown ;;
  esac
}

# The C cross compiler ring needs for a Linux target of another architecture, if installed.
cross_cc() {
  case "$1" in
    aarch64-unknown-linux-musl)
      command -v aarch64-linux-musl-gcc || command -v aarch64-linux-gnu-gcc || true ;;
  esac
}

host_arch=$(uname -m)
installed_targets=$(rustup target list --installed 2>/dev/null || true)

# Decide every platform's source before building or writing anything, so a platform that
# cannot be had fails the run at once.
declare -A source=()
missing=()
for p in $PLATFORMS; do
  t=$(rust_target "$p")
  built=${CARGO_TARGET_DIR:-target}/$t/release/kubectl-homelab
  if [ -n "${given[$p]:-}" ]; then
    f=${given[$p]}
    [ -f "$f" ] && [ -x "$f" ] || die "--binary $p=$f: not an executable file"
    actual=$(binary_platform "$f")
    if [ "$actual" != "$p" ]; then
      [ "$dry_run" = 1 ] || die "--binary $p=$f is a binary for $actual, not $p"
      log "dry run: packing $f (a $actual binary) as $p: this checks packaging, not a $p binary"
    fi
    source[$p]=given
  elif [ "$dry_run" = 1 ]; then
    if [ -x "$built" ]; then
      given[$p]=$built
      source[$p]=given
    else
      missing+=("$p: no --binary $p=PATH and no $built (a dry run builds nothing)")
    fi
  else
    case "$t" in
      *-apple-darwin)
        missing+=("$p: darwin binaries are not built here (no macOS SDK); build $t on macOS and pass --binary $p=PATH") ;;
      *)
        if ! grep -qx "$t" <<<"$installed_targets"; then
          missing+=("$p: Rust target $t is not installed (rustup target add $t) and no --binary $p=PATH given")
        elif [ "${t%%-*}" != "$host_arch" ] && [ -z "$(cross_cc "$t")" ]; then
          missing+=("$p: no C cross compiler for $t on PATH (ring compiles C; Debian: gcc-aarch64-linux-gnu) and no --binary $p=PATH given")
        else
          source[$p]=build
        fi ;;
    esac
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  printf 'release.sh: cannot get a binary for every platform of %s:\n' "$manifest" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi

if [ "$dry_run" = 1 ]; then
  out=${out:-$(mktemp -d "${TMPDIR:-/tmp}/kubectl-homelab-release.XXXXXX")}
else
  out=${out:-${CARGO_TARGET_DIR:-target}/dist}
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

for p in $PLATFORMS; do
  [ "${source[$p]}" = build ] || continue
  t=$(rust_target "$p")
  log "building $p ($t)"
  cc=$(cross_cc "$t")
  env_vars=()
  if [ -n "$cc" ]; then
    tu=$(echo "$t" | tr 'a-z-' 'A-Z_')
    env_vars+=("CC_${t//-/_}=$cc" "CARGO_TARGET_${tu}_LINKER=$cc")
  elif [ "$t" = x86_64-unknown-linux-musl ] && ! command -v musl-gcc >/dev/null; then
    # gcc compiles ring's C for musl where no musl-gcc is installed (as scripts/test.sh does).
    env_vars+=("CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-gcc}")
  fi
  env "${env_vars[@]}" cargo build --release --locked --target "$t" --bin kubectl-homelab
  given[$p]=${CARGO_TARGET_DIR:-target}/$t/release/kubectl-homelab
done

# Archives: the three files at the top level, owned by root, modes 0755/0755/0644, with the
# commit's time as mtime so the same inputs give the same bytes.
mtime=$(git log -1 --format=%ct 2>/dev/null || echo 0)
declare -A sums=()
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for p in $PLATFORMS; do
  name=kubectl-homelab_${version}_${p%/*}_${p#*/}.tar.gz
  dir=$stage/$p
  mkdir -p "$dir"
  install -m 0755 "${given[$p]}" "$dir/kubectl-homelab"
  install -m 0755 completions/kubectl_complete-homelab "$dir/kubectl_complete-homelab"
  install -m 0644 LICENSE "$dir/LICENSE"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -C "$dir" -cf - kubectl-homelab kubectl_complete-homelab LICENSE | gzip -n >"$out/$name"
  sums[$p]=$(sha256sum "$out/$name" | cut -d' ' -f1)
  echo "${sums[$p]}  $name" >"$out/$name.sha256"
  log "$name ${sums[$p]}"
done

# The manifest: the committed one with spec.version, and each platform's uri and sha256
# replaced (the platform is the os/arch of the selector above them).
written=$out/homelab.yaml
awk -v version="$version" -v base="$base_url" \
  -v s_la="${sums[linux/amd64]}" -v s_lr="${sums[linux/arm64]}" \
  -v s_da="${sums[darwin/amd64]}" -v s_dr="${sums[darwin/arm64]}" '
  BEGIN { sum["linux/amd64"] = s_la; sum["linux/arm64"] = s_lr
          sum["darwin/amd64"] = s_da; sum["darwin/arm64"] = s_dr }
  function indent(line) { match(line, /^ */); return substr(line, 1, RLENGTH) }
  /^  version: / { print "  version: " version; next }
  /^ +os: / { os = $2 }
  /^ +arch: / { arch = $2 }
  /^ +uri: / {
    p = os "/" arch
    if (!(p in sum)) { print "no platform for uri line " NR > "/dev/stderr"; exit 1 }
    print indent($0) "uri: " base "/kubectl-homelab_" version "_" os "_" arch ".tar.gz"; uris++; next
  }
  /^ +sha256: / { print indent($0) "sha256: \"" sum[os "/" arch] "\""; sums++; next }
  { print }
  END { if (uris != 4 || sums != 4) { print "expected 4 uri and sha256 lines, found " uris "/" sums > "/dev/stderr"; exit 1 } }
' "$manifest" >"$written"

if [ "$dry_run" = 0 ]; then
  cp "$written" "$manifest"
  rm "$written"
  log "wrote $manifest (version $version) and the archives in $out"
else
  log "dry run: archives and homelab.yaml in $out; the repository is unchanged"
fi
echo "$out"
