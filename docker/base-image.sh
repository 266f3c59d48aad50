#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3.11 and redis-server from Debian packages
# alone (debootstrap, then `docker import`): no public image registry is needed, so this works
# on air-gapped hosts and in CI. The Kraken images build on it with BASE_IMAGE=<this image>.
#
#   docker/base-image.sh [IMAGE]          default IMAGE: kraken-base:bookworm
#
# Needs root, debootstrap and a Docker daemon (DOCKER_HOST is honoured). The Debian mirror is
# the one this machine's apt already uses (DEBIAN_MIRROR overrides it). Bookworm's python3 is
# 3.11, the version the host's wheels are built for (docker/build-images.sh).
set -euo pipefail
IMAGE=${1:-kraken-base:bookworm}
SUITE=bookworm
PACKAGES=python3,python3-venv,redis-server,ca-certificates

die() { echo "base-image: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root (try: sudo make base-image)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers (DOCKER_HOST=${DOCKER_HOST:-unset})"

# The first Debian archive URI apt is configured with (deb822 .sources or one-line lists),
# skipping the security archive, whose layout debootstrap cannot use.
apt_mirror() {
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
    grep -hsE '^deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'
  } 2>/dev/null | grep -v -- '-security' | head -n 1 || true
}
MIRROR=${DEBIAN_MIRROR:-$(apt_mirror)}
[ -n "$MIRROR" ] || die "no Debian mirror in /etc/apt/sources.list*: set DEBIAN_MIRROR"

rootfs=$(mktemp -d /tmp/kraken-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "base-image: debootstrap $SUITE ($PACKAGES) from $MIRROR"
start=$(date +%s)
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
  || { tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap failed"; }
rm -f "$rootfs.log"
# What an image does not need: package lists, caches, docs, and the redis service's data dir
# (the herd runs redis-server with its own directory).
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
       "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
tar -C "$rootfs" --numeric-owner -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "base-image: built $IMAGE in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
