#!/bin/sh
# The herd's processes under one supervisor: testfs, redis-server (the tracker's peer store),
# origin, tracker, build-index and proxy, with the ports of herd_param.sh. The supervisor
# prints every component's log to stdout and exits non-zero, naming the component, when one
# dies (the container's restart policy then starts the herd again).
#
# The herd container's entrypoint; it runs on a host as well. HERD_HOST is the address the
# herd announces (its origins' seeds) and agents reach it at (default 127.0.0.1: host
# networking). Further arguments go to `python -m kraken.devcluster start`, e.g. the
# multi-host configs: --config-name multihost --config-dir .../examples/multihost/config
set -eu
here=$(cd "$(dirname "$0")" && pwd)
exec "${KRAKEN_PYTHON:-python3}" -m kraken.devcluster start --role herd --redis --logs - \
  --herd-params "$here/herd_param.sh" --herd-host "${HERD_HOST:-127.0.0.1}" \
  --workdir "${KRAKEN_WORKDIR:-/var/cache/kraken/herd}" "$@"
