#!/bin/sh
# One agent (registry, P2P and agent server, with the ports of agent_one_param.sh unless the
# environment says otherwise) pulling from the herd at HERD_HOST, the herd's ports from
# herd_param.sh. Its log goes to stdout. The agent container's entrypoint; it runs on a host as
# well. Further arguments go to `python -m kraken.devcluster start` (e.g. --peer-ip).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "${KRAKEN_PYTHON:-python3}" -m kraken.devcluster start --role agent --logs - \
  --herd-params "$here/herd_param.sh" --agent-params "$here/agent_one_param.sh" \
  --herd-host "${HERD_HOST:-127.0.0.1}" --workdir "${KRAKEN_WORKDIR:-/var/cache/kraken/agent}" "$@"
