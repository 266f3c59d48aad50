#!/usr/bin/env bash
# Install the Debian packages the real-client tests and benchmarks need.
#
# Why a script: machines are handed out fresh, and nothing installed by hand
# survives, so the project must install its own system dependencies.  The
# script is idempotent: packages already installed (per dpkg) are skipped, so a
# second run does nothing and takes well under a second, and `apt-get update`
# runs (once) only when something is actually missing.
#
# Packages are installed with their Recommends, as on the machines the suite
# was developed and passes on (podman's and docker.io's recommends include
# helpers such as fuse-overlayfs, tini/catatonit and apparmor).
#
# No service is started by the install: the tests start every daemon by hand
# in private directories, and a system dockerd or redis-server on the default
# sockets/ports would only get in their way.  If the machine has no
# /usr/sbin/policy-rc.d, one that refuses service starts is put in place for
# the duration of the install and removed afterwards.
#
# Usage (as root, or as a user with password-less sudo):
#   scripts/install-system-deps.sh
# Exit status: 0 when every package is installed, non-zero otherwise.
set -euo pipefail

PACKAGES=(
  docker.io        # dockerd + containerd + runc + ctr
  skopeo
  docker-registry  # distribution 2.8, the baseline registry
  redis-server
  podman
  busybox-static
  umoci
  iproute2         # ip netns / veth / tc for multi-host tests
  iptables         # partitions in network namespaces
  debootstrap      # make base-image: a Debian base image without a public image registry
  iputils-ping     # ping between test hosts in network namespaces
  wrk              # HTTP load generator of the tracker benchmark (bench/tracker.py)
)

log() { printf 'install-system-deps: %s\n' "$*"; }

is_installed() {
  # "install ok installed" is the only status that means fully installed
  # (half-configured or removed-but-config-kept packages report otherwise).
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  log "this is not a Debian-like system (no dpkg-query/apt-get): install by hand: ${PACKAGES[*]}" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  is_installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
  log "nothing to do: all ${#PACKAGES[@]} packages are installed (${PACKAGES[*]})"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    log "not root: re-running with sudo"
    exec sudo -n -- bash "$0" "$@"
  fi
  log "missing packages: ${missing[*]}" >&2
  log "this script must run as root to install them (try: sudo $0)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
export NEEDRESTART_SUSPEND=1   # needrestart's apt hook (a recommend of docker.io) stays quiet
APT_OPTS=(
  -q -y
  -o Dpkg::Options::=--force-confdef   # never stop at a config-file question
  -o Dpkg::Options::=--force-confold
  -o DPkg::Lock::Timeout=300           # wait for another apt/dpkg instead of failing at once
  -o Acquire::Retries=3
)

policy=/usr/sbin/policy-rc.d
own_policy=0
cleanup() {
  if [ "$own_policy" -eq 1 ]; then
    rm -f "$policy"
  fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# written by kraken scripts/install-system-deps.sh for the install only\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  own_policy=1
fi

log "missing packages: ${missing[*]}"
start=$(date +%s)
log "running apt-get update"
# A failing extra source makes update exit non-zero although Debian's lists
# were fetched; the install below is what decides.
apt-get "${APT_OPTS[@]}" update || log "warning: apt-get update reported errors; trying the install anyway" >&2
log "installing: ${missing[*]}"
apt-get "${APT_OPTS[@]}" install "${missing[@]}"

failed=()
for pkg in "${missing[@]}"; do
  is_installed "$pkg" || failed+=("$pkg")
done
if [ "${#failed[@]}" -ne 0 ]; then
  log "still not installed after apt-get: ${failed[*]}" >&2
  exit 1
fi
log "installed: ${missing[*]} (in $(( $(date +%s) - start ))s)"
