"""YAML configuration loaded into typed dataclasses.

Each component declares its configuration as dataclasses; :func:`load_config` reads a YAML
file, follows its ``extends:`` chain (paths relative to the file that names them; later files
override earlier ones key by key), and builds the dataclass. Unknown keys and wrong types fail
at start with the file and the dotted key path, so a typo never silently falls back to a
default.

Two annotated scalar types make configs readable: :data:`ByteSize` (``4MB``) and
:data:`Duration` (``30s``, ``5m``, ``2h``). Credentials are :class:`Secret` values, normally
read from a separate secrets file merged on top of the config (``secrets=``, the ``--secrets``
flag); neither a secret nor any value of the secrets file ever appears in a repr or an error.
A section that names one of several registered kinds (``backend: {testfs: {...}}``) is a
:class:`OneOf`.
"""
from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from kraken.core.sizes import parse_size

T = TypeVar("T")


class _ByteSizeTag:
    """Marks an int field that accepts human-readable sizes."""


class _DurationTag:
    """Marks a float field (seconds) that accepts ``30s``/``5m``/``2h``."""


ByteSize = Annotated[int, _ByteSizeTag]
Duration = Annotated[float, _DurationTag]

#: What a secret (or any value read from the secrets file) is shown as.
REDACTED = "<redacted>"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(Exception):
    """A configuration file is missing, malformed, or does not match the schema."""


def scalar_kind(tp: Any) -> Literal["size", "duration"] | None:
    """``"size"`` for :data:`ByteSize`, ``"duration"`` for :data:`Duration`, else None.

    Tools that describe configs (``kraken.tools.configdoc``) spell such values as a config
    file would (``4MB``, ``30s``).
    """
    if get_origin(tp) is Annotated:
        tags = get_args(tp)[1:]
        if _ByteSizeTag in tags:
            return "size"
        if _DurationTag in tags:
            return "duration"
    return None


class Secret:
    """A credential: its ``repr``/``str`` is ``Secret(<redacted>)``, so a config dump, a log line or
    an error message that includes it leaks nothing; :meth:`reveal` gives the value to the one
    call that must send it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class OneOf:
    """A section naming exactly one of several registered kinds: ``backend: {testfs: {...}}``.

    A subclass sets :attr:`what` (the word used in messages) and :attr:`kinds`, a live table
    name -> config dataclass that a registry fills, so a new kind changes neither this module
    nor the subclass. A built value has :attr:`kind` (the name) and :attr:`config` (an
    instance of that kind's dataclass). An unknown name fails with the registered ones.
    """

    what: ClassVar[str]
    kinds: ClassVar[Mapping[str, type]]

    def __init__(self, kind: str, config: Any) -> None:
        expected = self.kinds.get(kind)
        if expected is None:
            raise self.unknown(kind)
        if not isinstance(config, expected):
            raise TypeError(f"{self.what} {kind}: expected {expected.__name__}, got {type(config).__name__}")
        self.kind = kind
        self.config = config

    @classmethod
    def unknown(cls, name: str) -> ConfigError:
        return ConfigError(f"unknown {cls.what} {name!r} (registered: {', '.join(cls.kinds)})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OneOf) or type(other) is not type(self):
            return NotImplemented
        return (self.kind, self.config) == (other.kind, other.config)

    def __hash__(self) -> int:
        return hash(self.kind)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind}={self.config!r})"


@dataclasses.dataclass(frozen=True)
class NamedIn:
    """Marks a mapping (``Annotated[dict[str, X], NamedIn(...)]``) whose keys must be names
    from a live table, e.g. registered backend kinds; ``names`` is called at load time."""

    what: str
    names: Callable[[], Iterable[str]]


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


def _read_yaml(path: Path, what: str = "config file") -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def read_secrets(path: str | Path) -> dict:
    """The secrets file at ``path``: one YAML mapping (no ``extends:``), merged over the config.

    A YAML error is reported by line and column only: PyYAML's own message quotes the text
    around the error, which here is a credential.
    """
    path = Path(path).resolve()
    try:
        return _read_yaml(path, "secrets file")
    except ConfigError as e:
        if not isinstance(e.__context__, yaml.YAMLError):
            raise
        mark = getattr(e.__context__, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{at}") from None


def read_yaml_chain(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read ``path`` and everything it ``extends``, merged base-first."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: extends cycle: {' -> '.join(map(str, _seen + (path,)))}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: expected a file name")
    base = read_yaml_chain(path.parent / parent, _seen + (path,))
    return deep_merge(base, data)


def load_config(
    cls: type[T], path: str | Path | None, overrides: dict | None = None, secrets: str | Path | None = None,
) -> T:
    """Load ``path`` (with its extends chain; None: no file) into dataclass ``cls``.

    ``overrides`` and then the ``secrets`` file (:func:`read_secrets`) are merged on top, key by
    key. Errors about a value that came from the secrets file name that file, never the value.
    """
    data = read_yaml_chain(Path(path)) if path is not None else {}
    if overrides:
        data = deep_merge(data, overrides)
    source = _Source(str(path) if path is not None else "<defaults>")
    if secrets is not None:
        secret_data = read_secrets(secrets)
        data = deep_merge(data, secret_data)
        source = _Source(source.name, str(secrets), frozenset(_key_paths(secret_data)))
    return _convert(cls, data, source, "")


def build(cls: type[T], data: Any, source: str = "<config>") -> T:
    """Build dataclass ``cls`` from plain data, validating every key."""
    return _convert(cls, data, _Source(source), "")


@dataclass(frozen=True)
class _Source:
    """Where the data being built came from, and which key paths hold secrets-file values."""

    name: str
    secrets_name: str = ""
    secret_paths: frozenset[str] = frozenset()

    def hides(self, keypath: str) -> bool:
        return keypath in self.secret_paths

    def touches(self, keypath: str) -> bool:
        """Whether any value at or below ``keypath`` came from the secrets file."""
        if not keypath:
            return bool(self.secret_paths)
        return any(p == keypath or p.startswith((keypath + ".", keypath + "[")) for p in self.secret_paths)

    def where(self, keypath: str) -> str:
        return f"{self.secrets_name if self.hides(keypath) else self.name}: {keypath or '<top level>'}"

    def where_section(self, keypath: str) -> str:
        """:meth:`where` for a rule about a whole section, which may mix both files' values."""
        if self.touches(keypath) and not self.hides(keypath):
            return f"{self.name} with {self.secrets_name}: {keypath or '<top level>'}"
        return self.where(keypath)

    def show(self, keypath: str, value: Any) -> str:
        return REDACTED if self.hides(keypath) else repr(value)


def _key_paths(data: Any, keypath: str = "") -> Iterator[str]:
    """Every key path in ``data`` as :func:`_convert` spells them (``a.b``, ``a[0]``)."""
    if isinstance(data, dict):
        for key, value in data.items():
            sub = f"{keypath}.{key}" if keypath else str(key)
            yield sub
            yield from _key_paths(value, sub)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            sub = f"{keypath}[{i}]"
            yield sub
            yield from _key_paths(value, sub)


def _convert(tp: Any, value: Any, source: _Source, keypath: str) -> Any:
    origin = get_origin(tp)
    where = source.where(keypath)
    if origin is Annotated:
        base, *tags = get_args(tp)
        try:
            if _ByteSizeTag in tags:
                return parse_size(value)
            if _DurationTag in tags:
                return parse_duration(value)
        except ValueError as e:
            raise ConfigError(f"{where}: {REDACTED if source.hides(keypath) else e}") from None
        converted = _convert(base, value, source, keypath)
        for tag in tags:
            if isinstance(tag, NamedIn):
                _check_names(tag, converted, source, keypath)
        return converted
    if tp is Any:
        return value
    if tp is Secret:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return Secret(str(value))
        raise ConfigError(f"{where}: expected a string (a secret, not shown), got {type(value).__name__}")
    if isinstance(tp, type) and issubclass(tp, OneOf):
        return _build_one_of(tp, value, source, keypath)
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
        raise ConfigError(errors[-1] if errors else f"{where}: no value allowed")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {list(allowed)}, got {source.show(keypath, value)}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(item_tp, v, source, f"{keypath}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
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
        f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {source.show(keypath, value)}"
    )


def _check_names(tag: NamedIn, value: Any, source: _Source, keypath: str) -> None:
    names = list(tag.names())
    for key in value:
        if key not in names:
            sub = f"{keypath}.{key}" if keypath else str(key)
            raise ConfigError(f"{source.where(sub)}: unknown {tag.what} {key!r} (registered: {', '.join(names)})")


def _build_one_of(cls: type[OneOf], value: Any, source: _Source, keypath: str) -> OneOf:
    where = source.where(keypath)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    for key in value:
        if key not in cls.kinds:
            sub = f"{keypath}.{key}" if keypath else str(key)
            raise ConfigError(f"{source.where(sub)}: {cls.unknown(str(key))}")
    if len(value) != 1:
        got = ", ".join(map(str, value)) or "none"
        raise ConfigError(f"{where}: exactly one of {', '.join(cls.kinds)} must be set, got {got}")
    ((kind, section),) = value.items()
    sub = f"{keypath}.{kind}" if keypath else str(kind)
    return cls(kind, _convert(cls.kinds[kind], section, source, sub))


def _build_dataclass(cls: type, value: Any, source: _Source, keypath: str) -> Any:
    where = source.where(keypath)
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, value)) - set(fields))
    if unknown:
        first = f"{keypath}.{unknown[0]}" if keypath else unknown[0]
        raise ConfigError(f"{source.where(first)}: unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, field in fields.items():
        sub = f"{keypath}.{name}" if keypath else name
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], source, sub)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source.where(sub)}: required key is missing")
    try:
        return cls(**kwargs)
    except (ConfigError, ValueError, TypeError) as e:
        # A dataclass's own checks (__post_init__) name the rule; this names the place. Their
        # message may quote a value, so a section holding any value of the secrets file gets
        # none of it.
        detail = f"invalid value ({REDACTED})" if source.touches(keypath) else str(e)
        raise ConfigError(f"{source.where_section(keypath)}: {detail}") from None


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
