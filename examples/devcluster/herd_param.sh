# Ports of the devcluster's herd, read by `make devcluster` (native and Docker) and by the herd
# container. Change a port here and nowhere else; the environment overrides any of them (the
# Docker mode passes the values it read here into the containers that way).
TESTFS_PORT=${TESTFS_PORT:-14000}
REDIS_PORT=${REDIS_PORT:-14001}
PROXY_PORT=${PROXY_PORT:-15000}
ORIGIN_PEER_PORT=${ORIGIN_PEER_PORT:-15001}
ORIGIN_SERVER_PORT=${ORIGIN_SERVER_PORT:-15002}
TRACKER_PORT=${TRACKER_PORT:-15003}
BUILD_INDEX_PORT=${BUILD_INDEX_PORT:-15004}
