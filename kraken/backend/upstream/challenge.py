"""``WWW-Authenticate`` challenges (RFC 7235), as registries send them on a 401.

A registry names how to authenticate in its 401: ``Basic realm="..."`` (htpasswd), or
``Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="..."``
(the Docker token protocol: get a token from ``realm`` and send it as ``Bearer``). One header
may carry several challenges and a response several headers; parameter values are tokens or
quoted strings with backslash escapes, and ``,`` separates both parameters and challenges, so
the header is tokenized rather than split.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SPACE = re.compile(r"[ \t]*")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class ChallengeError(ValueError):
    """A header that is not a list of challenges."""


@dataclass(frozen=True)
class Challenge:
    """One challenge: its scheme in lower case and its parameters (names in lower case)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip(self, chars: str = "") -> None:
        """Skip blanks, and any of ``chars`` with the blanks around them."""
        while True:
            self.pos = _SPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text) and self.text[self.pos] in chars:
                self.pos += 1
                continue
            return

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def token(self) -> str | None:
        m = _TOKEN.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def quoted(self) -> str:
        """A quoted string (the opening quote is next), unescaped."""
        out = []
        self.pos += 1
        while self.pos < len(self.text):
            c = self.text[self.pos]
            self.pos += 1
            if c == "\\" and self.pos < len(self.text):
                out.append(self.text[self.pos])
                self.pos += 1
            elif c == '"':
                return "".join(out)
            else:
                out.append(c)
        raise ChallengeError(f"unterminated quoted string in {self.text!r}")

    def is_param(self) -> bool:
        """Whether a ``name=`` parameter (not the next challenge's scheme) starts here."""
        m = _TOKEN.match(self.text, self.pos)
        if m is None:
            return False
        rest = _SPACE.match(self.text, m.end()).end()  # type: ignore[union-attr]
        return self.text[rest:rest + 1] == "=" and self.text[rest + 1:rest + 2] != "="


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge of the ``WWW-Authenticate`` header values, in order.

    Raises :class:`ChallengeError` for text that is not a challenge list. A token68 (``Basic
    abc==``) is accepted and ignored: registries send none.
    """
    out: list[Challenge] = []
    for header in headers:
        s = _Scanner(header)
        s.skip(",")
        while not s.done():
            scheme = s.token()
            if scheme is None:
                raise ChallengeError(f"expected an auth scheme at {header[s.pos:][:40]!r}")
            params: dict[str, str] = {}
            s.skip()
            if not s.is_param() and s.peek() not in ",":
                m = _TOKEN68.match(header, s.pos)
                if m is None:
                    raise ChallengeError(f"unexpected text after {scheme!r} in {header!r}")
                s.pos = m.end()  # a token68: registries send none, nothing to keep
            s.skip(",")
            while s.is_param():
                name = s.token()
                assert name is not None
                s.skip()
                s.pos += 1  # "="
                s.skip()
                value = s.quoted() if s.peek() == '"' else s.token()
                if value is None:
                    raise ChallengeError(f"parameter {name!r} has no value in {header!r}")
                params[name.lower()] = value
                s.skip(",")
            out.append(Challenge(scheme.lower(), params))
    return out
