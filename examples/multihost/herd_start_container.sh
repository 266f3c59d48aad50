#!/usr/bin/env bash
# Start the herd on this host as the kraken-herd container (host networking; `make images`
# builds the image, and `make devcluster` would too): testfs, redis-server (the tracker's
# peer store), origin, tracker, build-index and proxy under one supervisor.
#   herd_start_container.sh <HERD_IP>     HERD_IP: this host's address as the agents reach it
# Logs: docker logs kraken-herd.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/herd_param.sh"
source "$here/scripts/common.sh"
herd_address "${1:-}"
start_container herd --herd-host "$HERD_HOST_IP" --bind-address "$BIND_ADDRESS"
