#!/usr/bin/env bash
# Start an agent on this host as local processes, pulling from the herd at HERD_IP.
#   agent_start_processes.sh <HERD_IP> <AGENT_IP>   (KRAKEN_TLS_DIR=DIR: TLS, see deploy_agent.sh --tls-dir)
# deploy_agent.sh --native runs this after its checks; its log: $KRAKEN_HOME/agent/logs/agent.log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/agent_param.sh"
source "$here/scripts/common.sh"
agent_addresses "${1:-}" "${2:-}"
tls_options
herd_layout agent
start_processes agent "http://127.0.0.1:16002/health" --herd-host "$HERD_HOST" --peer-ip "$AGENT_HOST_IP" \
  "${tls_args[@]}" "${herd_args[@]}"
