#!/usr/bin/env bash
# Install the Debian packages the real-client tests and benchmarks need.
#
# Why a script: machines are handed out fresh, and nothing installed by hand
# survives, so the project must install its own system dependencies.  The
# script is idempotent: packages already installed (per `dpkg -s`) are
# skipped, so a second run does nothing and takes well under a second, and
# `apt-get update` runs only when something is actually missing.
#
# Usage (as root):  scripts/install-system-deps.sh
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
)

log() { printf 'install-system-deps: %s\n' "$*"; }

is_installed() {
  # "install ok installed" is the only status that means fully installed
  # (half-configured or removed-but-config-kept packages report otherwise).
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  if is_installed "$pkg"; then
    log "already installed: $pkg"
  else
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  log "nothing to do: all ${#PACKAGES[@]} packages are installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  log "missing packages: ${missing[*]}" >&2
  log "this script must run as root to install them (try: sudo $0)" >&2
  exit 1
fi

log "missing packages: ${missing[*]}"
log "running apt-get update"
apt-get update
log "installing: ${missing[*]}"
# policy-rc.d on these machines refuses to start services; that is expected:
# the tests start every daemon by hand in private directories.
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"

failed=()
for pkg in "${missing[@]}"; do
  is_installed "$pkg" || failed+=("$pkg")
done
if [ "${#failed[@]}" -ne 0 ]; then
  log "still not installed after apt-get: ${failed[*]}" >&2
  exit 1
fi
log "installed: ${missing[*]}"
