"""Outputs kept in memory for a short while, for answers that give links instead of inline data (``?links=true``).

A result is a few hundred kilobytes; a service that kept them all would grow without end. So each entry expires
after ``ttl`` seconds and the store holds at most ``max_bytes`` in all, dropping the oldest entries first; nothing
is written to disk, so a killed server leaves nothing behind. Ids are random (``secrets``), not guessable.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredOutput:
    data: bytes
    media_type: str


class ResultStore:
    """``put`` a result's outputs, ``get`` one of them back by id and name until it expires or is pushed out."""

    def __init__(self, ttl: float = 300.0, max_bytes: int = 256 * 2**20) -> None:
        self.ttl, self.max_bytes = ttl, max_bytes
        self._entries: OrderedDict[str, tuple[float, dict[str, StoredOutput]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def put(self, outputs: dict[str, StoredOutput]) -> str:
        """Keep ``outputs``; returns their id. A result larger than the whole store is kept alone."""
        key = secrets.token_urlsafe(16)
        size = sum(len(o.data) for o in outputs.values())
        with self._lock:
            self._expire(time.monotonic())
            while self._entries and self._bytes + size > self.max_bytes:
                self._drop(next(iter(self._entries)))
            self._entries[key] = (time.monotonic() + self.ttl, outputs)
            self._bytes += size
        return key

    def get(self, key: str, name: str) -> StoredOutput | None:
        """The output, or None when the id is unknown, expired or pushed out, or the result has no such output."""
        with self._lock:
            self._expire(time.monotonic())
            entry = self._entries.get(key)
            return None if entry is None else entry[1].get(name)

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires > now:
                return
            self._drop(key)

    def _drop(self, key: str) -> None:
        _, outputs = self._entries.pop(key)
        self._bytes -= sum(len(o.data) for o in outputs.values())
