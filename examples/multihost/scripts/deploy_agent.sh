#!/usr/bin/env bash
# Deploy an agent on this host, pulling from the herd at HERD_IP.
#   deploy_agent.sh <HERD_IP> <AGENT_IP> [--docker|--native] [--tls-dir DIR]   start it (registry localhost:16000;
#                                                              default: Docker when a daemon answers)
#   deploy_agent.sh --stop                                     stop it (either way)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../agent_param.sh"
source "$here/common.sh"

if [ "${1:-}" = --stop ]; then stop_role agent; exit 0; fi
[ $# -ge 2 ] || die "usage: $0 <HERD_IP> <AGENT_IP> [--docker|--native] [--tls-dir DIR] | --stop"
agent_addresses "$1" "$2"; shift 2
parse_options "$@"
[ -z "$HERD_HOSTS" ] || [ "$mode" = native ] || die "HERD_HOSTS (a herd on several hosts) runs as local processes: use --native"
tls_options
# One tracker answering is enough (with several, the agent fails over between them).
for tracker in $(tracker_hosts); do
  rc=0
  curl -fsS -o /dev/null --noproxy '*' "${curl_tls[@]}" "$herd_scheme://$tracker:15003/health" 2>/dev/null || rc=$?
  [ "$rc" != 0 ] || break
done
case "$herd_scheme:$rc" in
  *:0) ;;
  https:35|https:51|https:60)
    die "no TLS connection to the herd's tracker at $tracker:15003: the herd runs without --tls-dir, or
its certificate is one $KRAKEN_TLS_DIR/ca.pem does not accept (another CA, or not naming $HERD_HOST:
make the certificates with --hosts $HERD_HOST and copy them)" ;;
  http:52|http:56)
    die "the herd's tracker at $tracker:15003 does not speak plain HTTP: the herd runs with TLS, deploy
this agent with --tls-dir (the CA and client certificate from the herd's directory)" ;;
  *) die "the herd's tracker does not answer at $tracker:15003 (is the herd up, is the port open?)" ;;
esac

if [ "$mode" = docker ]; then
  "$here/../agent_start_container.sh" "$HERD_HOST" "$AGENT_HOST_IP"
  logs="docker logs kraken-agent"
else
  "$here/../agent_start_processes.sh" "$HERD_HOST" "$AGENT_HOST_IP"
  logs="$KRAKEN_HOME/agent/logs/"
fi
echo "agent up on $AGENT_HOST_IP ($mode): docker pull localhost:16000/<repo>:<tag>; herd $HERD_HOST; logs: $logs"
