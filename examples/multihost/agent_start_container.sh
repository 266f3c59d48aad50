#!/usr/bin/env bash
# Start an agent on this host as the kraken-agent container (host networking), pulling from
# the herd at HERD_IP; docker pulls from it on localhost:16000.
#   agent_start_container.sh <HERD_IP> <AGENT_IP>
# Logs: docker logs kraken-agent.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/agent_param.sh"
source "$here/scripts/common.sh"
agent_addresses "${1:-}" "${2:-}"
start_container agent --herd-host "$HERD_HOST" --peer-ip "$AGENT_HOST_IP"
