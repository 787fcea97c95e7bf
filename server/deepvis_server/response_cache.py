"""An LRU cache of Explain answers, bounded in bytes, off unless `[server] cache_bytes` is set.

Two requests are identical when their serialized `ExplainRequest` (model, method, target,
layers, options, output options and the input's bytes, all of it) is, byte for byte, under
deterministic serialization, and they come with the same bearer token: when the server checks
tokens, a token's answers are never served to another. The cache lives in the server's memory
and starts empty: a restart, or a reloaded model, invalidates it. What it holds is the
serialized answer: the bound counts its bytes plus a fixed overhead per entry, and an answer
larger than the whole bound is not kept.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

# Per entry, beyond the answer's bytes: its key, the dict and list slots.
ENTRY_OVERHEAD = 200


class ResponseCache:
    """Answers by request and scope (the bearer token, or nothing), least recently used out."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(scope: bytes, request: bytes) -> bytes:
        """The entry's key: SHA-256 of the scope's digest and the serialized request."""
        return hashlib.sha256(hashlib.sha256(scope).digest() + request).digest()

    def get(self, key: bytes) -> bytes | None:
        answer = self._entries.get(key)
        if answer is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return answer

    def put(self, key: bytes, answer: bytes) -> None:
        size = len(answer) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old) + ENTRY_OVERHEAD
        self._entries[key] = answer
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= len(dropped) + ENTRY_OVERHEAD
