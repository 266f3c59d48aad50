#!/usr/bin/env bash
# Build the kraken-herd and kraken-agent images (`make images`).
#
#   docker/build-images.sh                         the images (wheels from the package index)
#   WHEELS_DIR=DIR docker/build-images.sh          the images, wheels from DIR only (air-gapped)
#   docker/build-images.sh --download-wheels DIR   fill DIR for that, on a host with an index
#
# The project and its dependencies go into the images as wheels made on this host: the project
# with `pip wheel`, its dependencies as manylinux wheels for CPython 3.11 on the daemon's
# architecture (`pip download --only-binary`), so the image build itself installs with
# `pip install --no-index` and needs no network, and a Mac (arm64 daemon) gets arm64 wheels.
# Making those wheels needs a package index (PyPI, or the one pip is configured with), checked
# first; a host without one uses WHEELS_DIR, a directory `--download-wheels` filled on a host
# with one (the dependencies for linux/ARCH, default this machine's, and the build tools).
#
# Environment:
#   BASE_IMAGE        image to build on (default python:3.11-slim, or kraken-base:bookworm from
#                     `make base-image` when that is here and python:3.11-slim cannot be pulled)
#   KRAKEN_IMAGE_TAG  tag of both images (default dev)
#   PYTHON            the Python whose pip builds the wheels (default the repository's .venv)
#   WHEELS_DIR        install from the wheels in this directory, never from a package index
#   ARCH              with --download-wheels: x86_64 or aarch64 (default: this machine's)
#   DOCKER_HOST       the daemon, as for the docker CLI
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
BASE_IMAGE_SET=${BASE_IMAGE:-}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
TAG=${KRAKEN_IMAGE_TAG:-dev}
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$root/.venv/bin/python" ]; then PYTHON=$root/.venv/bin/python; else PYTHON=python3; fi
fi
die() { echo "images: $*" >&2; exit 1; }
# pip, without the lines this machine's pip config prints for find-links directories it lacks.
pip_quiet() {
  "$PYTHON" -m pip --disable-pip-version-check "$@" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}
norm_arch() {
  case "$1" in
    x86_64|amd64) echo x86_64 ;;
    aarch64|arm64) echo aarch64 ;;
    *) die "unsupported architecture $1" ;;
  esac
}

download_to=
if [ "${1:-}" = "--download-wheels" ]; then
  download_to=${2:-}
  [ -n "$download_to" ] || die "usage: docker/build-images.sh --download-wheels DIR"
elif [ $# -gt 0 ]; then
  die "unknown argument $1 (usage: docker/build-images.sh [--download-wheels DIR])"
fi

# Where wheels come from: WHEELS_DIR only, or the package index (checked now, not after the
# base image: without one, pip would retry for minutes and end in "No matching distribution").
index=()
if [ -n "${WHEELS_DIR:-}" ]; then
  [ -z "$download_to" ] || die "--download-wheels fills a directory from a package index: unset WHEELS_DIR"
  [ -d "$WHEELS_DIR" ] || die "WHEELS_DIR=$WHEELS_DIR is not a directory"
  WHEELS_DIR=$(cd "$WHEELS_DIR" && pwd)
  index=(--no-index --find-links "$WHEELS_DIR")
  echo "images: wheels from $WHEELS_DIR only (WHEELS_DIR; no package index)"
else
  probe=$(mktemp -d "${TMPDIR:-/tmp}/kraken-index.XXXXXX")
  if ! pip_quiet download -q --no-deps --only-binary=:all: --timeout 5 --retries 0 -d "$probe" async-timeout \
      >"$probe.log"; then
    rm -rf "$probe"
    die "no Python package index answers ($(tail -n 1 "$probe.log"; rm -f "$probe.log")).
The images are built from wheels made on this host. On an air-gapped host, fill a directory on a
host that has an index:   docker/build-images.sh --download-wheels DIR   (ARCH=aarch64 for arm64)
copy DIR here, then:      make images WHEELS_DIR=DIR"
  fi
  rm -rf "$probe" "$probe.log"
fi

# Every manylinux tag up to glibc 2.36 (bookworm's): older pips do not expand one tag to the
# older ones themselves. pip evaluates dependency markers against the Python running it, so a
# dependency only Pythons older than the host's need is named here: async-timeout (redis-py,
# Python < 3.11.3; bookworm's is 3.11.2).
dependency_wheels() {  # ARCH DEST PROJECT_WHEEL
  local platforms=(--platform "manylinux2014_$1")
  for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$1"); done
  pip_quiet download -q -d "$2" "${index[@]}" --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}" "$3" async-timeout
}

if [ -n "$download_to" ]; then
  arch=$(norm_arch "${ARCH:-$(uname -m)}")
  mkdir -p "$download_to"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/kraken-wheels.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "images: downloading wheels for CPython 3.11 on linux/$arch into $download_to"
  pip_quiet wheel -q --no-deps -w "$tmp" "$root"
  dependency_wheels "$arch" "$download_to" "$(ls "$tmp"/kraken-*.whl)"
  # The project's build tools (pyproject.toml's build-system), for `pip wheel` of the project
  # on the air-gapped host.
  pip_quiet download -q -d "$download_to" --only-binary=:all: "setuptools>=68" wheel
  rm -f "$download_to"/kraken-*.whl
  echo "images: $(ls "$download_to" | wc -l) wheels in $download_to; on the air-gapped host: make images WHEELS_DIR=$download_to"
  exit 0
fi

docker info >/dev/null 2>&1 || die "no Docker daemon answers (DOCKER_HOST=${DOCKER_HOST:-unset})"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
if ! have_image "$BASE_IMAGE" && ! docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
  # Offline with the default base: the one `make base-image` built will do, if it is here.
  if [ -z "${BASE_IMAGE_SET:-}" ] && have_image kraken-base:bookworm; then
    echo "images: $BASE_IMAGE cannot be pulled; using kraken-base:bookworm (make base-image)"
    BASE_IMAGE=kraken-base:bookworm
  else
    die "base image $BASE_IMAGE is not here and cannot be pulled (offline?). Build one from Debian
packages: make base-image, then: make images BASE_IMAGE=kraken-base:bookworm"
  fi
fi

arch=$(norm_arch "$(docker info --format '{{.Architecture}}')")

ctx=$(mktemp -d "${TMPDIR:-/tmp}/kraken-images.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
start=$(date +%s)
echo "images: wheels for CPython 3.11 on linux/$arch"
pip_quiet wheel -q --no-deps "${index[@]}" -w "$ctx/wheels" "$root" \
  || die "building the project's wheel failed (see above)${WHEELS_DIR:+: WHEELS_DIR needs setuptools and wheel}"
dependency_wheels "$arch" "$ctx/wheels" "$(ls "$ctx"/wheels/kraken-*.whl)" \
  || die "a dependency's wheel is missing (see above)${WHEELS_DIR:+ from $WHEELS_DIR (docker/build-images.sh --download-wheels DIR fills it)}"

mkdir -p "$ctx/files/examples"
cp -r "$root/config" "$ctx/files/config"
cp -r "$root/examples/devcluster" "$ctx/files/examples/devcluster"
mkdir -p "$ctx/files/examples/multihost"
cp -r "$root/examples/multihost/config" "$ctx/files/examples/multihost/config"
cp "$root/docker/Dockerfile" "$ctx/Dockerfile"

for target in herd agent; do
  echo "images: building kraken-$target:$TAG on $BASE_IMAGE"
  # --network host: only the herd's redis-server install on a base without it uses the network.
  docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" --target "$target" \
    -t "kraken-$target:$TAG" "$ctx" >"$ctx/build.log" 2>&1 || { cat "$ctx/build.log" >&2; die "building kraken-$target failed"; }
done
echo "images: built kraken-herd:$TAG and kraken-agent:$TAG in $(( $(date +%s) - start ))s"
