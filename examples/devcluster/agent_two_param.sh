# Ports of the devcluster's agent-two: `docker pull localhost:17000/<repo>:<tag>` pulls through it.
# Read by `make devcluster` (native and Docker). To pull from another port (say 8080 because
# 17000 is taken), change AGENT_REGISTRY_PORT here; the environment overrides any of them.
AGENT_REGISTRY_PORT=${AGENT_REGISTRY_PORT:-17000}
AGENT_PEER_PORT=${AGENT_PEER_PORT:-17001}
AGENT_SERVER_PORT=${AGENT_SERVER_PORT:-17002}
