"""The agent: a read-only registry on every host, backed by a P2P blob cache."""
