#!/usr/bin/env bash
# Deploy an agent on this host, pulling from the herd at HERD_IP.
#   deploy_agent.sh <HERD_IP> <AGENT_IP> [--native|--docker]   start it (registry localhost:16000)
#   deploy_agent.sh --stop                                     stop it
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../agent_param.sh"
source "$here/common.sh"

if [ "${1:-}" = --stop ]; then stop_supervisor agent; exit 0; fi
[ $# -ge 2 ] || die "usage: $0 <HERD_IP> <AGENT_IP> [--native|--docker] | --stop"
HERD_HOST=$1 AGENT_HOST_IP=$2; shift 2
refuse_loopback HERD_HOST "$HERD_HOST"
refuse_loopback AGENT_HOST_IP "$AGENT_HOST_IP"
mode=$(pick_mode "$@")
export KRAKEN_DEVCLUSTER=$mode  # the supervisor runs the mode asked for, not the one it would detect
curl -fsS -o /dev/null --noproxy '*' "http://$HERD_HOST:15003/health" \
  || die "the herd's tracker does not answer at $HERD_HOST:15003 (is the herd up, is the port open?)"

start_supervisor agent --herd-host "$HERD_HOST" --peer-ip "$AGENT_HOST_IP"
wait_http "http://127.0.0.1:16002/health" "$KRAKEN_HOME/agent.log"
echo "agent up on $AGENT_HOST_IP ($mode): docker pull localhost:16000/<repo>:<tag>; herd $HERD_HOST;" \
     "logs $KRAKEN_HOME/agent/logs/"
