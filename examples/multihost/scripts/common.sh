# Shared by the deploy scripts: where the project is, which Python runs it, and the checks.
KRAKEN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
if [ -z "${KRAKEN_PYTHON:-}" ]; then
  if [ -x "$KRAKEN_ROOT/.venv/bin/python" ]; then KRAKEN_PYTHON=$KRAKEN_ROOT/.venv/bin/python; else KRAKEN_PYTHON=python3; fi
fi
export PYTHONPATH="$KRAKEN_ROOT${PYTHONPATH:+:$PYTHONPATH}"

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

# An address other hosts cannot use for this one: refuse it, with the fix.
refuse_loopback() {  # NAME VALUE
  case "$2" in
    ""|localhost|127.*|::1|0.0.0.0)
      die "$1='$2' is not an address other hosts can reach. Agents on other hosts would dial their
own loopback for the herd's origins and tracker (the 'P2P connection timeouts' trap). Use this
host's IP on the network the agents share, e.g. $(hostname -I 2>/dev/null | awk '{print $1}')";;
  esac
}

# The herd's address for herd_start_*.sh and deploy_herd.sh: the argument, else HERD_HOST_IP
# from herd_param.sh; never a loopback address. Where its processes answer: BIND_ADDRESS, or
# loopback when that is every interface.
herd_address() {  # [HERD_IP]
  HERD_HOST_IP=${1:-$HERD_HOST_IP}
  refuse_loopback HERD_HOST_IP "$HERD_HOST_IP"
  case "$BIND_ADDRESS" in 0.0.0.0|::) herd_local=127.0.0.1 ;; *) herd_local=$BIND_ADDRESS ;; esac
}

# The herd's and this agent's addresses for agent_start_*.sh and deploy_agent.sh: the
# arguments, else HERD_HOST and AGENT_HOST_IP from agent_param.sh; never loopback.
agent_addresses() {  # [HERD_IP] [AGENT_IP]
  HERD_HOST=${1:-$HERD_HOST} AGENT_HOST_IP=${2:-$AGENT_HOST_IP}
  refuse_loopback HERD_HOST "$HERD_HOST"
  refuse_loopback AGENT_HOST_IP "$AGENT_HOST_IP"
}

# The deploy scripts' options, in $mode and $KRAKEN_TLS_DIR: --docker (the
# kraken-herd/kraken-agent images, `make images`, host networking) or --native (local
# processes), neither: Docker when a daemon answers; --tls-dir DIR: TLS and mTLS on every hop
# with the certificates in DIR (`python -m kraken.devcluster tls --out DIR --hosts <HERD_IP>`),
# which runs local processes (the containers do not mount certificates).
parse_options() {  # the script's arguments
  mode="" KRAKEN_TLS_DIR=${KRAKEN_TLS_DIR:-}
  while [ $# -gt 0 ]; do
    case "$1" in
      --docker) mode=docker ;;
      --native) mode=native ;;
      --tls-dir) [ $# -ge 2 ] || die "--tls-dir needs a directory"; KRAKEN_TLS_DIR=$(cd "$2" && pwd) || die "no directory $2"; shift ;;
      *) die "unknown option $1 (--docker, --native or --tls-dir DIR)" ;;
    esac
    shift
  done
  if [ -n "$KRAKEN_TLS_DIR" ]; then
    [ "$mode" != docker ] || die "--tls-dir runs local processes only: use --native"
    mode=native
  elif [ -z "$mode" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then mode=docker; else mode=native; fi
  fi
  export KRAKEN_TLS_DIR
}

# The devcluster's TLS arguments ($tls_args) and how curl reaches the herd's internal ports
# ($herd_scheme, $curl_tls): HTTPS with the cluster CA when KRAKEN_TLS_DIR is set.
tls_options() {
  tls_args=() herd_scheme=http curl_tls=()
  if [ -n "${KRAKEN_TLS_DIR:-}" ]; then
    tls_args=(--tls-dir "$KRAKEN_TLS_DIR") herd_scheme=https curl_tls=(--cacert "$KRAKEN_TLS_DIR/ca.pem")
  fi
}

# With KRAKEN_TLS_DIR: refuse to start when server certificates there do not name HOST, the
# address a client dials them at (default: origin, tracker, build-index, which agents dial at
# the herd's address): each client would refuse them. Said here, with the fix, rather than as
# a probe that never answers.
check_tls_names() {  # HOST [COMPONENT...]
  [ -n "${KRAKEN_TLS_DIR:-}" ] || return 0
  local unnamed
  unnamed=$("$KRAKEN_PYTHON" -c 'import sys; from pathlib import Path; from kraken.devcluster.tls import DIALLED, DevPki
print(" ".join(DevPki(Path(sys.argv[1])).unnamed(sys.argv[2], sys.argv[3:] or DIALLED)))' "$KRAKEN_TLS_DIR" "$@") \
    || die "cannot read the certificates in $KRAKEN_TLS_DIR"
  [ -z "$unnamed" ] || die "$unnamed in $KRAKEN_TLS_DIR lack or do not name $1 (an address needs an IP: SAN).
Make them again: python -m kraken.devcluster tls --out $KRAKEN_TLS_DIR --hosts $HERD_HOST_IP[,<other names>]"
}

# Wait until URL answers 200, or fail with the end of LOG.
wait_http() {  # URL LOG [SECONDS]
  local deadline=$(( $(date +%s) + ${3:-60} ))
  until curl -fsS -o /dev/null --noproxy '*' "$1" 2>/dev/null; do
    # A supervisor that died at start (bad config, busy port) will never answer: say so now.
    if [ -n "${supervisor_pid:-}" ] && ! kill -0 "$supervisor_pid" 2>/dev/null; then
      echo "$(basename "$0"): the supervisor exited before $1 answered; the end of $2:" >&2; tail -n 40 "$2" >&2; exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "$(basename "$0"): $1 did not answer; the end of $2:" >&2; tail -n 40 "$2" >&2; exit 1
    fi
    sleep 0.2
  done
}

# With HERD_HOSTS (a herd on several hosts): the supervisor's arguments that say which host
# runs what, in $herd_args (herd hosts also restart a component that exits); else none.
herd_layout() {  # ROLE
  herd_args=()
  [ -n "${HERD_HOSTS:-}" ] || return 0
  [ -z "${KRAKEN_TLS_DIR:-}" ] || die "HERD_HOSTS (a herd on several hosts) runs without --tls-dir for now"
  herd_args=(--herd-hosts "$HERD_HOSTS" --tracker-hosts "${TRACKER_HOSTS:-}" --build-index-hosts "${BUILD_INDEX_HOSTS:-}")
  if [ "$1" = herd ]; then herd_args+=(--shared-host "${SHARED_HOST:-}" --restart-after "${RESTART_AFTER:-5}"); fi
}

# The hosts running a tracker, as an agent dials them: TRACKER_HOSTS, else HERD_HOSTS, else HERD_HOST.
tracker_hosts() {
  local hosts=${TRACKER_HOSTS:-${HERD_HOSTS:-$HERD_HOST}}
  echo "${hosts//,/ }"
}

# The devcluster supervisor's arguments for ROLE of the multi-host deployment, in $role_args.
set_role_args() {  # ROLE
  role_args=(--role "$1" --config-name multihost --config-dir "$KRAKEN_ROOT/examples/multihost/config"
             --workdir "$KRAKEN_HOME/$1")
}

# Start ROLE as local processes: `python -m kraken.devcluster start` in the background, its
# output in $KRAKEN_HOME/ROLE.log, the components' logs in $KRAKEN_HOME/ROLE/logs/; wait until
# HEALTH_URL answers.
start_processes() {  # ROLE HEALTH_URL ARGS...
  local role=$1 url=$2; shift 2
  mkdir -p "$KRAKEN_HOME/$role"
  set_role_args "$role"
  KRAKEN_DEVCLUSTER=native nohup "$KRAKEN_PYTHON" -m kraken.devcluster start "${role_args[@]}" "$@" \
    >"$KRAKEN_HOME/$role.log" 2>&1 </dev/null &
  supervisor_pid=$!
  echo "$supervisor_pid" >"$KRAKEN_HOME/$role.pid"
  wait_http "$url" "$KRAKEN_HOME/$role.log"
}

# Start ROLE as a container (kraken-herd or kraken-agent, host networking, restarted on
# failure); returns once it answers. Its logs: docker logs kraken-ROLE.
start_container() {  # ROLE ARGS...
  local role=$1; shift
  mkdir -p "$KRAKEN_HOME/$role"
  set_role_args "$role"
  KRAKEN_DEVCLUSTER=docker "$KRAKEN_PYTHON" -m kraken.devcluster start "${role_args[@]}" "$@"
}

# Stop ROLE, whichever way it was started (the work dir records it).
stop_role() {  # ROLE
  "$KRAKEN_PYTHON" -m kraken.devcluster stop --workdir "$KRAKEN_HOME/$1"
}
