"""An in-process LRU bounded by bytes, with a TTL and invalidation by scope.

Values are immutable byte strings (encoded responses), so the budget counts what is really held: the value,
its key, and a fixed per-entry overhead for the dict slots and the entry object. Invalidating a scope drops
every variant under it (a conversation's pages of any size, an inbox's every filter).

A load that began before its scope was invalidated must not store what it read (it may predate the write):
`token()` is taken before loading and `put()` refuses a value whose scope was invalidated since. The record
of recent invalidations is bounded; when it is trimmed, every older token is refused instead.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

# What an entry costs beyond its value and key: the entry object, the OrderedDict node, the scope index
# (set slot, scope string) and allocator slack. Measured as RSS growth per entry in `just bench-read`.
ENTRY_OVERHEAD_BYTES = 512
_INVALIDATION_RECORD_LIMIT = 10_000


@dataclass(slots=True)
class _Entry:
    scope: str
    value: bytes
    size: int
    expires_at: float


@dataclass(slots=True)
class LruStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0  # dropped to stay within the byte budget
    expirations: int = 0  # dropped because their TTL passed
    invalidations: int = 0  # dropped because a write touched them
    refused: int = 0  # loads not stored because their scope changed meanwhile


@dataclass
class ByteBudgetLru:
    max_bytes: int
    ttl_s: float
    clock: Callable[[], float] = time.monotonic
    stats: LruStats = field(default_factory=LruStats)

    def __post_init__(self) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._scopes: dict[str, set[str]] = {}
        self._bytes = 0
        self._generation = 0
        self._invalidated_at: dict[str, int] = {}
        self._oldest_valid_token = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        if entry.expires_at <= self.clock():
            self._remove(key)
            self.stats.expirations += 1
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry.value

    def token(self) -> int:
        """Take before loading a value; hand it to put()."""
        return self._generation

    def put(self, scope: str, key: str, value: bytes, token: int) -> bool:
        """Store unless the scope was invalidated after `token` was taken, or the value alone is too big."""
        if token < self._oldest_valid_token or self._invalidated_at.get(scope, -1) > token:
            self.stats.refused += 1
            return False
        size = len(value) + len(key) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return False
        if key in self._entries:
            self._remove(key)
        self._entries[key] = _Entry(scope, value, size, self.clock() + self.ttl_s)
        self._scopes.setdefault(scope, set()).add(key)
        self._bytes += size
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self.stats.evictions += 1
        return True

    def invalidate(self, scopes: Iterable[str]) -> int:
        """Drop every entry under these scopes and refuse loads begun before now; returns how many."""
        self._generation += 1
        dropped = 0
        for scope in scopes:
            self._invalidated_at[scope] = self._generation
            for key in self._scopes.get(scope, set()).copy():
                self._remove(key)
                dropped += 1
        if len(self._invalidated_at) > _INVALIDATION_RECORD_LIMIT:
            self._invalidated_at.clear()
            self._oldest_valid_token = self._generation
        self.stats.invalidations += dropped
        return dropped

    def clear(self) -> None:
        """Forget everything, including loads in flight (their tokens become invalid)."""
        self._entries.clear()
        self._scopes.clear()
        self._bytes = 0
        self._generation += 1
        self._invalidated_at.clear()
        self._oldest_valid_token = self._generation

    def purge_expired(self) -> int:
        now = self.clock()
        expired = [key for key, entry in self._entries.items() if entry.expires_at <= now]
        for key in expired:
            self._remove(key)
        self.stats.expirations += len(expired)
        return len(expired)

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size
        keys = self._scopes.get(entry.scope)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._scopes[entry.scope]
