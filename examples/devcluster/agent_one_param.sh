# Ports of the devcluster's agent-one: `docker pull localhost:16000/<repo>:<tag>` pulls through it.
# Read by `make devcluster` (native and Docker). To pull from another port (say 8080 because
# 16000 is taken), change the default here, or set this agent's own variable for one run:
# AGENT_ONE_REGISTRY_PORT=8080 make devcluster. The generic names (AGENT_REGISTRY_PORT, ...) are for a
# single agent (its container, a multi-host agent): with both agents it would be ambiguous, so
# `make devcluster` refuses it.
AGENT_REGISTRY_PORT=${AGENT_ONE_REGISTRY_PORT:-${AGENT_REGISTRY_PORT:-16000}}
AGENT_PEER_PORT=${AGENT_ONE_PEER_PORT:-${AGENT_PEER_PORT:-16001}}
AGENT_SERVER_PORT=${AGENT_ONE_SERVER_PORT:-${AGENT_SERVER_PORT:-16002}}
