# Parameters of the herd host (sourced by scripts/deploy_herd.sh). Override any of them in the
# environment. The herd's ports are the devcluster's: testfs 14000, proxy 15000, origin 15002
# (P2P 15001), tracker 15003, build-index 15004.

# The herd host's address as the agent hosts reach it. Required, and never localhost or
# 127.0.0.1: the origin announces this address to agents on other hosts, which would dial
# their own loopback instead ("P2P connection timeouts").
HERD_HOST_IP=${HERD_HOST_IP:-}
# Where the herd's processes listen: 0.0.0.0 (every interface) or HERD_HOST_IP (that one only;
# the herd's components reach each other at HERD_HOST_IP).
BIND_ADDRESS=${BIND_ADDRESS:-0.0.0.0}
# Data, configs, logs and state of the herd on this host.
KRAKEN_HOME=${KRAKEN_HOME:-/var/lib/kraken}

# A herd on several hosts (empty: this host is the whole herd). Every herd host runs an origin
# (one ring, each blob on two origins) and a proxy, and is deployed with the same lists:
#   HERD_HOSTS="10.0.0.1 10.0.0.2 10.0.0.3" deploy_herd.sh <this host's IP among them> --native
# The shared host (testfs, the blob and tag backend, and the trackers' redis-server) is deployed
# first: those two are the herd's remaining single points of failure.
HERD_HOSTS=${HERD_HOSTS:-}
# Of HERD_HOSTS, the ones that run a tracker, and a build-index (default: every one).
TRACKER_HOSTS=${TRACKER_HOSTS:-}
BUILD_INDEX_HOSTS=${BUILD_INDEX_HOSTS:-}
# Of HERD_HOSTS, the one that runs testfs and redis (default: the first).
SHARED_HOST=${SHARED_HOST:-}
# With HERD_HOSTS: a component that exits (a crash, kill -9) is started again this many seconds
# later, and the host's other components keep running.
RESTART_AFTER=${RESTART_AFTER:-5}
