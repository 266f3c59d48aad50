"""The table of backend kinds: name -> (config dataclass, factory).

Config parsing (``backend: {<name>: {...}}``, the ``auth:`` section), the router and the
configdoc tool all find backends here, so a new backend is its own module (its config
dataclass and its :class:`~kraken.backend.base.Backend`) plus one ``register`` line below.
The order of registration is the order names are listed in messages and docs. The cloud
backends' modules are imported by their factories, when one is built: google-cloud-storage and
boto3 cost a component 20-30 MiB resident that only those using them should pay.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kraken.backend.base import Backend, BackendContext
from kraken.backend.file import FileBackend, FileBackendConfig
from kraken.backend.gcsconfig import GcsBackendConfig
from kraken.backend.http import HttpBackend, HttpBackendConfig
from kraken.backend.s3config import S3BackendConfig
from kraken.backend.testfs import TestfsBackend, TestfsBackendConfig
from kraken.backend.upstream import RegistryBackendConfig, RegistryBlobBackend, RegistryTagBackend
from kraken.config import ConfigError

C = TypeVar("C")


@dataclass(frozen=True)
class BackendKind:
    name: str
    config: type
    #: Builds the backend from its config section, inside a running event loop.
    factory: Callable[[Any, BackendContext], Backend]


class _ConfigClasses(Mapping[str, type]):
    """A read-only, live view of the registered kinds: name -> config class."""

    def __init__(self, kinds: Mapping[str, BackendKind]) -> None:
        self._kinds = kinds

    def __getitem__(self, name: str) -> type:
        return self._kinds[name].config

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)


class BackendRegistry:
    """Registered backend kinds; :attr:`config_classes` is a live view of them (name -> config
    class), for config parsing, which holds it from before the last registration."""

    def __init__(self) -> None:
        self._kinds: dict[str, BackendKind] = {}
        self._config_classes = _ConfigClasses(self._kinds)

    @property
    def config_classes(self) -> Mapping[str, type]:
        return self._config_classes

    def register(self, name: str, config: type[C], factory: Callable[[C, BackendContext], Backend]) -> None:
        if name in self._kinds:
            raise ValueError(f"backend {name!r} is already registered")
        self._kinds[name] = BackendKind(name, config, factory)

    def unregister(self, name: str) -> None:
        """For tests only: removes a throwaway kind a test registered (tests/unit/test_backend_config.py)."""
        del self._kinds[name]

    def names(self) -> list[str]:
        return list(self._kinds)

    def get(self, name: str) -> BackendKind:
        try:
            return self._kinds[name]
        except KeyError:
            raise ConfigError(f"unknown backend {name!r} (registered: {', '.join(self._kinds)})") from None


def _gcs(config: GcsBackendConfig, context: BackendContext) -> Backend:
    """google-cloud-storage is imported when a ``gcs`` backend is built, not with the table:
    the components that have none (most) do not carry it."""
    from kraken.backend.gcs import GcsBackend

    return GcsBackend(config, context)


def _s3(config: S3BackendConfig, context: BackendContext) -> Backend:
    """boto3 and botocore likewise, for ``s3``."""
    from kraken.backend.s3 import S3Backend

    return S3Backend(config, context)


BACKENDS = BackendRegistry()
BACKENDS.register("testfs", TestfsBackendConfig,
                  lambda config, context: TestfsBackend(config, context.http_client, context.tls))
BACKENDS.register("file", FileBackendConfig, lambda config, context: FileBackend(config))
BACKENDS.register("gcs", GcsBackendConfig, _gcs)
BACKENDS.register("s3", S3BackendConfig, _s3)
BACKENDS.register("http", HttpBackendConfig, HttpBackend)
BACKENDS.register("registry_blob", RegistryBackendConfig, RegistryBlobBackend)
BACKENDS.register("registry_tag", RegistryBackendConfig, RegistryTagBackend)
