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

# Which way to run. The Docker mode (containers from `make images`) is not built yet, so every
# deploy runs local processes; --docker says so and stops.
pick_mode() {  # the script's arguments
  for a in "$@"; do
    [ "$a" = --docker ] && die "the Docker mode needs the kraken images, which are not built yet; run with --native"
  done
  echo native
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

# Start `python -m kraken.devcluster start ARGS...` in the background for ROLE, logging to KRAKEN_HOME.
start_supervisor() {  # ROLE ARGS...
  local role=$1; shift
  mkdir -p "$KRAKEN_HOME/$role"
  nohup "$KRAKEN_PYTHON" -m kraken.devcluster start --role "$role" --config-name multihost --config-dir "$KRAKEN_ROOT/examples/multihost/config" \
    --workdir "$KRAKEN_HOME/$role" "$@" >"$KRAKEN_HOME/$role.log" 2>&1 </dev/null &
  supervisor_pid=$!
  echo "$supervisor_pid" >"$KRAKEN_HOME/$role.pid"
}

stop_supervisor() {  # ROLE
  "$KRAKEN_PYTHON" -m kraken.devcluster stop --workdir "$KRAKEN_HOME/$1"
}
