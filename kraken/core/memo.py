"""A bounded memo of recently seen keys, for the places that must remember "already done" for
keys an outsider chooses (addresses, names) without letting them grow memory."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RecentSet(Generic[K]):
    """A set keeping only its ``size`` most recently used members (a bounded memo)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, None] = OrderedDict()

    def hit(self, key: K) -> bool:
        """Whether ``key`` is a member; a member becomes the most recently used."""
        if key not in self._items:
            return False
        self._items.move_to_end(key)
        return True

    def add(self, key: K) -> None:
        self._items[key] = None
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def discard(self, key: K) -> None:
        self._items.pop(key, None)
