#!/usr/bin/env bash
# Build the kraken-herd and kraken-agent images (`make images`).
#
#   docker/build-images.sh
#
# The project and its dependencies go into the images as wheels made on this host: the project
# with `pip wheel`, its dependencies as manylinux wheels for CPython 3.11 on the daemon's
# architecture (`pip download --only-binary`), so the image build itself installs with
# `pip install --no-index` and needs no network, and a Mac (arm64 daemon) gets arm64 wheels.
#
# Environment:
#   BASE_IMAGE        image to build on (default python:3.11-slim, or kraken-base:bookworm from
#                     `make base-image` when that is here and python:3.11-slim cannot be pulled)
#   KRAKEN_IMAGE_TAG  tag of both images (default dev)
#   PYTHON            the Python whose pip builds the wheels (default the repository's .venv)
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

case "$(docker info --format '{{.Architecture}}')" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) die "unsupported daemon architecture $(docker info --format '{{.Architecture}}')" ;;
esac

ctx=$(mktemp -d "${TMPDIR:-/tmp}/kraken-images.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
start=$(date +%s)
echo "images: wheels for CPython 3.11 on linux/$arch"
"$PYTHON" -m pip wheel -q --no-deps --disable-pip-version-check -w "$ctx/wheels" "$root" 2>&1 \
  | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
# Every manylinux tag up to glibc 2.36 (bookworm's): older pips do not expand one tag to the
# older ones themselves. pip evaluates dependency markers against the Python running it, so a
# dependency only Pythons older than the host's need is named here: async-timeout (redis-py,
# Python < 3.11.3; bookworm's is 3.11.2).
platforms=(--platform "manylinux2014_$arch")
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
"$PYTHON" -m pip download -q --disable-pip-version-check -d "$ctx/wheels" --only-binary=:all: \
  --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}" \
  "$ctx"/wheels/kraken-*.whl async-timeout 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }

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
