"""Which manifest media types a client accepts.

Clients send the list as several ``Accept`` headers (docker) or one comma-joined header
(containerd, ending in ``*/*``). Reading only one of several headers makes a registry believe
the client cannot take the manifest it has (distribution then falls back to schema1, with a
different digest), so every header is merged.
"""
from __future__ import annotations

from collections.abc import Iterable


def merged_accept(values: Iterable[str]) -> list[str]:
    """Media types from every Accept header value, parameters stripped, ``q=0`` entries dropped."""
    types: list[str] = []
    for value in values:
        for item in value.split(","):
            media_type, *params = (part.strip() for part in item.split(";"))
            if not media_type or any(_is_q_zero(p) for p in params):
                continue
            types.append(media_type.lower())
    return types


def _is_q_zero(param: str) -> bool:
    name, _, value = param.partition("=")
    if name.strip().lower() != "q":
        return False
    try:
        return float(value) == 0
    except ValueError:
        return False


def accepts(accepted: list[str], media_type: str) -> bool:
    """Whether a manifest of ``media_type`` may be returned; no Accept header accepts anything."""
    if not accepted:
        return True
    main_type = media_type.split("/", 1)[0]
    return any(a in ("*/*", media_type.lower(), f"{main_type}/*") for a in accepted)
