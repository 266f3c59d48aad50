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
herd_layout herd
# On a herd of several hosts every component listens on this host's address only.
[ -z "$HERD_HOSTS" ] || herd_local=$HERD_HOST_IP
# Agents and the herd's components dial it at HERD_IP, the supervisor probes it at $herd_local,
# and testfs is dialled at loopback.
check_tls_names "$HERD_HOST_IP"
[ "$herd_local" = "$HERD_HOST_IP" ] || check_tls_names "$herd_local"
check_tls_names 127.0.0.1 testfs
start_processes herd "http://$herd_local:15000/v2/" --herd-host "$HERD_HOST_IP" --bind-address "$BIND_ADDRESS" \
  "${tls_args[@]}" "${herd_args[@]}"
