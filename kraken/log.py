"""Structured logging: one line per event, ``key=value`` fields after the message.

``get_logger("origin").info("blob committed", digest=d, size=n)`` prints
``2026-11-23T08:00:00.123Z INFO origin blob committed digest=sha256:... size=42``,
which a person can grep and a log shipper can parse. Messages and field values are escaped
(control characters, newlines, quotes, backslashes), so a client-supplied value (a path, a
name) can never forge a line or hide bytes in the log; a value that needed escaping, is empty
or has a space is quoted.
"""
from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any

_STD_KWARGS = {"exc_info", "stack_info", "stacklevel", "extra"}


class KrakenLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger adapter that accepts arbitrary keyword fields."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        fields = {k: kwargs.pop(k) for k in list(kwargs) if k not in _STD_KWARGS}
        extra = dict(kwargs.get("extra") or {})
        extra["kraken_fields"] = {**(self.extra or {}), **fields}
        kwargs["extra"] = extra
        return msg, kwargs


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{ts}.{int(record.msecs):03d}Z {record.levelname} {record.name} {_escape(record.getMessage())}"
        fields = getattr(record, "kraken_fields", None)
        if fields:
            line += " " + " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


# C0 and C1 control characters, DEL, Unicode line/paragraph separators, quote and backslash.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f\u2028\u2029"\\]')
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def _escape(text: str) -> str:
    return _UNSAFE.sub(_escape_char, text)


def _fmt(value: Any) -> str:
    text = str(value)
    escaped = _escape(text)
    return f'"{escaped}"' if (" " in text or not text or escaped != text) else text


def get_logger(name: str, **context: Any) -> KrakenLogger:
    return KrakenLogger(logging.getLogger(name), context)


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr in key=value form; called once by each component's entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
