#!/usr/bin/env bash
# Pull an image through this host's agent and tag it under its own name, as if pulled directly.
#   kraken-pull.sh <image> <agent:port>        e.g. kraken-pull.sh company/myapp:v1 localhost:16000
# If the agent fails, pull from the herd's proxy instead (HERD_HOST, port 15000) and say so.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 <image> <agent:port>" >&2; exit 2; }
image=$1 agent=$2
if docker pull "$agent/$image"; then
  docker tag "$agent/$image" "$image"
  echo "pulled $image through the agent at $agent"
  exit 0
fi
[ -n "${HERD_HOST:-}" ] || { echo "kraken-pull: the agent at $agent failed and HERD_HOST is not set" >&2; exit 1; }
echo "kraken-pull: the agent at $agent failed; falling back to the herd at $HERD_HOST:15000" >&2
docker pull "$HERD_HOST:15000/$image"
docker tag "$HERD_HOST:15000/$image" "$image"
echo "pulled $image from the herd at $HERD_HOST:15000 (agent fallback)"
