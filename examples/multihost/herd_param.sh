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
