# Ports of the devcluster's agent-two: `docker pull localhost:17000/<repo>:<tag>` pulls through it.
# Read by `make devcluster` (native and Docker). To pull from another port (say 8080 because
# 17000 is taken), change the default here, or set this agent's own variable for one run:
# AGENT_TWO_REGISTRY_PORT=8080 make devcluster. The generic names (AGENT_REGISTRY_PORT, ...) are for a
# single agent (its container, a multi-host agent): with both agents it would be ambiguous, so
# `make devcluster` refuses it.
AGENT_REGISTRY_PORT=${AGENT_TWO_REGISTRY_PORT:-${AGENT_REGISTRY_PORT:-17000}}
AGENT_PEER_PORT=${AGENT_TWO_PEER_PORT:-${AGENT_PEER_PORT:-17001}}
AGENT_SERVER_PORT=${AGENT_TWO_SERVER_PORT:-${AGENT_SERVER_PORT:-17002}}
