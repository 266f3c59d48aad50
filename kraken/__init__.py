"""Kraken: a P2P Docker/OCI registry.

Shared mechanisms live in this package (``core``, ``config``, ``store``, ``backend``,
``registry``, ``http``, ``ring``, ``persisted``); each component has its own sub-package.
"""
