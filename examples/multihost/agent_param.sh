# Parameters of an agent host (sourced by scripts/deploy_agent.sh). Override any of them in the
# environment. The agent's ports: registry 16000 (docker pulls from localhost:16000), P2P 16001,
# agent server 16002.

# The herd host's address (required; never localhost: the herd runs on another host).
HERD_HOST=${HERD_HOST:-}
# This host's own address as the other hosts reach it (labels the agent's P2P log lines; the
# tracker takes the address from each announce's source IP).
AGENT_HOST_IP=${AGENT_HOST_IP:-}
# Data, configs, logs and state of the agent on this host.
KRAKEN_HOME=${KRAKEN_HOME:-/var/lib/kraken}

# A herd on several hosts (herd_param.sh): the same HERD_HOSTS, TRACKER_HOSTS and
# BUILD_INDEX_HOSTS as the herd hosts were deployed with. The agent then uses every tracker,
# build-index and origin, and fails over between them.
HERD_HOSTS=${HERD_HOSTS:-}
TRACKER_HOSTS=${TRACKER_HOSTS:-}
BUILD_INDEX_HOSTS=${BUILD_INDEX_HOSTS:-}
