#!/usr/bin/env bash
# Start the herd (testfs, origin, tracker, build-index, proxy) on this host as local processes.
#   herd_start_processes.sh <HERD_IP>     HERD_IP: this host's address as the agents reach it
#   (KRAKEN_TLS_DIR=DIR: TLS and mTLS on every hop, see deploy_herd.sh --tls-dir)
# deploy_herd.sh --native runs this after its checks; logs in $KRAKEN_HOME/herd/logs/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/herd_param.sh"
source "$here/scripts/common.sh"
herd_address "${1:-}"
tls_options
check_tls_names "$HERD_HOST_IP"
start_processes herd "http://$herd_local:15000/v2/" --herd-host "$HERD_HOST_IP" --bind-address "$BIND_ADDRESS" \
  "${tls_args[@]}"
