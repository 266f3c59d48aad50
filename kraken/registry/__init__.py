"""The Docker Registry HTTP API v2 / OCI distribution protocol, shared by every component that
speaks it: the proxy mounts it read-write (push and pull), the agent read-only (pull).

The protocol (routes, errors, names, uploads, manifests) lives here once; what differs between
components is only where bytes and tags are kept, behind :class:`kraken.registry.storage.RegistryStorage`.
Entry point: :func:`kraken.registry.app.add_registry_routes`.
"""
