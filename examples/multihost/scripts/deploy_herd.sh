#!/usr/bin/env bash
# Deploy the herd (testfs, origin, tracker, build-index, proxy) on this host.
#   deploy_herd.sh <HERD_IP> [--native|--docker]    start it; HERD_IP: this host's address for the agents
#   deploy_herd.sh --stop                           stop it
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../herd_param.sh"
source "$here/common.sh"

if [ "${1:-}" = --stop ]; then stop_supervisor herd; exit 0; fi
[ $# -ge 1 ] || die "usage: $0 <HERD_IP> [--native|--docker] | --stop"
HERD_HOST_IP=$1; shift
refuse_loopback HERD_HOST_IP "$HERD_HOST_IP"
mode=$(pick_mode "$@")
export KRAKEN_DEVCLUSTER=$mode  # the supervisor runs the mode asked for, not the one it would detect

start_supervisor herd --herd-host "$HERD_HOST_IP"
wait_http "http://127.0.0.1:15000/v2/" "$KRAKEN_HOME/herd.log"
echo "herd up on $HERD_HOST_IP ($mode): push to $HERD_HOST_IP:15000; tracker $HERD_HOST_IP:15003;" \
     "origin P2P $HERD_HOST_IP:15001; logs $KRAKEN_HOME/herd/logs/"
