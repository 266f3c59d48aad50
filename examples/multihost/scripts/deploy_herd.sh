#!/usr/bin/env bash
# Deploy the herd (testfs, origin, tracker, build-index, proxy) on this host.
#   deploy_herd.sh <HERD_IP> [--docker|--native] [--tls-dir DIR]   start it; HERD_IP: this host's address for the agents
#                                                  (default: Docker when a daemon answers)
#   deploy_herd.sh --stop                          stop it (either way)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../herd_param.sh"
source "$here/common.sh"

if [ "${1:-}" = --stop ]; then stop_role herd; exit 0; fi
[ $# -ge 1 ] || die "usage: $0 <HERD_IP> [--docker|--native] [--tls-dir DIR] | --stop"
herd_address "$1"; shift
parse_options "$@"
[ -z "$HERD_HOSTS" ] || [ "$mode" = native ] || die "HERD_HOSTS (a herd on several hosts) runs as local processes: use --native"

if [ "$mode" = docker ]; then
  "$here/../herd_start_container.sh" "$HERD_HOST_IP"
  logs="docker logs kraken-herd"
else
  "$here/../herd_start_processes.sh" "$HERD_HOST_IP"
  logs="$KRAKEN_HOME/herd/logs/"
fi
echo "herd up on $HERD_HOST_IP ($mode): push to $HERD_HOST_IP:15000; tracker $HERD_HOST_IP:15003;" \
     "origin P2P $HERD_HOST_IP:15001; logs: $logs"
