"""YAML configuration loaded into typed dataclasses.

Each component declares its configuration as dataclasses; :func:`load_config` reads a YAML
file, follows its ``extends:`` chain (paths relative to the file that names them; later files
override earlier ones key by key), and builds the dataclass. Unknown keys and wrong types fail
at start with the file and the dotted key path, so a typo never silently falls back to a
default.

Two annotated scalar types make configs readable: :data:`ByteSize` (``4MB``) and
:data:`Duration` (``30s``, ``5m``, ``2h``).
"""
from __future__ import annotations

import dataclasses
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from kraken.core.sizes import parse_size

T = TypeVar("T")


class _ByteSizeTag:
    """Marks an int field that accepts human-readable sizes."""


class _DurationTag:
    """Marks a float field (seconds) that accepts ``30s``/``5m``/``2h``."""


ByteSize = Annotated[int, _ByteSizeTag]
Duration = Annotated[float, _DurationTag]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(Exception):
    """A configuration file is missing, malformed, or does not match the schema."""


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 500ms, 30s, 5m, 2h)")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_chain(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read ``path`` and everything it ``extends``, merged base-first."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: extends cycle: {' -> '.join(map(str, _seen + (path,)))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: expected a file name")
    base = read_yaml_chain(path.parent / parent, _seen + (path,))
    return deep_merge(base, data)


def load_config(cls: type[T], path: str | Path, overrides: dict | None = None) -> T:
    """Load ``path`` (with its extends chain) into dataclass ``cls``."""
    path = Path(path)
    data = read_yaml_chain(path)
    if overrides:
        data = deep_merge(data, overrides)
    return build(cls, data, source=str(path))


def build(cls: type[T], data: Any, source: str = "<config>") -> T:
    """Build dataclass ``cls`` from plain data, validating every key."""
    return _convert(cls, data, source, "")


def _where(source: str, keypath: str) -> str:
    return f"{source}: {keypath or '<top level>'}"


def _convert(tp: Any, value: Any, source: str, keypath: str) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *tags = get_args(tp)
        try:
            if _ByteSizeTag in tags:
                return parse_size(value)
            if _DurationTag in tags:
                return parse_duration(value)
        except ValueError as e:
            raise ConfigError(f"{_where(source, keypath)}: {e}") from None
        return _convert(base, value, source, keypath)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build_dataclass(tp, value, source, keypath)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, source, keypath)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{_where(source, keypath)}: no value allowed")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{_where(source, keypath)}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, list):
        (item_tp,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{_where(source, keypath)}: expected a list, got {type(value).__name__}")
        return [_convert(item_tp, v, source, f"{keypath}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, dict):
        key_tp, val_tp = get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{_where(source, keypath)}: expected a mapping, got {type(value).__name__}")
        return {
            _convert(key_tp, k, source, f"{keypath}.{k}"): _convert(val_tp, v, source, f"{keypath}.{k}")
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(
        f"{_where(source, keypath)}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}"
    )


def _build_dataclass(cls: type, value: Any, source: str, keypath: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{_where(source, keypath)}: expected a mapping, got {type(value).__name__}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, value)) - set(fields))
    if unknown:
        first = f"{keypath}.{unknown[0]}" if keypath else unknown[0]
        raise ConfigError(f"{_where(source, first)}: unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        sub = f"{keypath}.{name}" if keypath else name
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], source, sub)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_where(source, sub)}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{_where(source, keypath)}: {e}") from None
    except (ValueError, TypeError) as e:
        # A dataclass's own checks (__post_init__) name the rule; this names the place.
        raise ConfigError(f"{_where(source, keypath)}: {e}") from None


@dataclass
class ListenConfig:
    """Where a component's HTTP server listens; ``--host``/``--port`` override it."""

    host: str = "0.0.0.0"
    port: int = 0


def apply_listen_overrides(listen: ListenConfig, host: str | None, port: int | None) -> None:
    if host:
        listen.host = host
    if port:
        listen.port = port


@dataclass
class HttpServerConfig:
    """Limits of every HTTP server of a component (the ``http:`` section), so a client that
    stalls or floods cannot pin connections, descriptors and memory forever.

    The defaults follow what production HTTP servers ship with (nginx's
    ``client_header_timeout``/``client_body_timeout``/``send_timeout`` are 60s, Go servers
    commonly use a 10s header timeout): a real client sends its headers in one packet, and a
    body or a download that moves no byte for a minute is stalled, not slow. A response
    pauses the write timeout only while the peer reads; a body pauses the body timeout while
    the server itself stopped reading (flow control), so a slow upstream never times out a
    client. ``max_connections`` stays below a typical 4096-descriptor limit with room for
    files, upstream connections and P2P sockets.
    """

    #: A connection must deliver a request's complete headers within this time of its first
    #: byte (of its opening, for the first request).
    header_timeout: Duration = 10.0
    #: A request body that receives no byte for this long (while the server reads) is dropped.
    body_timeout: Duration = 60.0
    #: A response the peer takes no byte of for this long is dropped.
    write_timeout: Duration = 60.0
    #: A keep-alive connection with no request for this long is closed.
    idle_timeout: Duration = 60.0
    #: Open connections per listening server; a connection beyond is closed at once.
    max_connections: int = 1024

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "write_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
