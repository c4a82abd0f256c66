"""The read cache in front of Postgres: encoded pages in process memory (L1), then in Redis (L2).

What is cached: the latest page of a conversation's history and the first page of an org's inbox, as the
JSON bytes the API answers, so a hit costs a dict lookup and no encoding. Everything else reads Postgres.

Keys are grouped by *scope*: one conversation's pages, or one org's inbox pages (any filter, any limit).
Every key holds the org id (docs/ARCHITECTURE.md invariant 6). A scope's key in Redis is a version counter;
each page in Redis is stored tagged with the version it was read under, and only if that version is still
current (a Lua compare-and-set), so a reader that loaded a page just before a write cannot put it back
after the write bumped the version.

After commit, a writer (EventPublisher) drops its own L1 copies, then in one Redis round trip bumps the
versions and publishes the scopes on the invalidation channel, on which every API process's Hub drops its
L1 copies; L1 is only used while that subscription is confirmed. Bumps Redis did not take (it was down or
slow) are remembered and sent before this process next touches the Redis layer, and when the Hub
resubscribes, so a page cached before an outage cannot come back after it.

Redis is an accelerator: when it fails, reads go to Postgres and the L2 is skipped for a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.config import CacheSettings
from app.lib import metrics
from app.lib.lru import ByteBudgetLru, LruStats

log = structlog.get_logger()

_REDIS_TIMEOUT_S = 0.25  # a hung Redis must cost a read little more than a miss
_REDIS_BACKOFF_S = 1.0  # after a failure, skip L2 this long instead of paying the timeout per request
# Beyond this many scopes awaiting their bump, recovery deletes every page instead of bumping each.
_UNBUMPED_LIMIT = 100_000

# KEYS: version, page. ARGV: version seen before loading, tagged page, page TTL, version TTL.
# KEYS: version keys. ARGV: their ttl, the invalidation channel and message, then channel/payload pairs to
# PUBLISH after. As a pipeline of plain commands it was 2 per scope + 1 — ~18 for a batch of 7 webhooks,
# each packed and its answer parsed by redis-py: ~10% of a webhook's CPU in the API (issue 13). A script
# also runs whole or (NOSCRIPT, then loaded and sent again by redis-py) not at all: nothing twice.
_BUMP_AND_PUBLISH = """
for i = 1, #KEYS do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
if #KEYS > 0 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
for i = 4, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return #KEYS
"""
_STORE_IF_CURRENT = """
local current = redis.call('GET', KEYS[1]) or '0'
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
if current ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

Loader = Callable[[], Awaitable[bytes]]
EVERYTHING = "*"  # on the invalidation channel: drop every page


class CacheKeys:
    """`{prefix}:cache:v:{org}:{conversation|inbox}` are versions; `…:cache:p:…:{variant}` are pages."""

    def __init__(self, key_prefix: str) -> None:
        self.root = f"{key_prefix}:cache"

    def messages_scope(self, org_id: UUID, conversation_id: UUID) -> str:
        return f"{self.root}:v:{org_id}:{conversation_id}"

    def inbox_scope(self, org_id: UUID) -> str:
        return f"{self.root}:v:{org_id}:inbox"

    def page_key(self, scope: str, variant: str) -> str:
        return f"{self.root}:p:{scope[len(self.root) + 3 :]}:{variant}"

    def page_pattern(self) -> str:
        return f"{self.root}:p:*"

    def conversation_of_page(self, page_key: str) -> UUID | None:
        """The conversation a history page belongs to; None for inbox pages and foreign keys."""
        _org, _, rest = page_key[len(self.root) + 3 :].partition(":")
        scope = rest.partition(":")[0]
        try:
            return None if scope == "inbox" else UUID(scope)
        except ValueError:
            return None

    def l2_report_key(self) -> str:
        return f"{self.root}:l2"

    def invalidation_channel(self) -> str:
        return f"{self.root}:invalidate"


def version_ttl_s(settings: CacheSettings) -> int:
    # A version outlives every page tagged with it, so a page can never match a recreated counter.
    return settings.redis_ttl_s * 2


@dataclass(slots=True)
class RedisLayerStats:
    hits: int = 0
    misses: int = 0
    stale: int = 0  # found, but written under an older version
    stores: int = 0
    refused: int = 0  # not stored: a write bumped the version while the page was loading
    errors: int = 0


@dataclass(slots=True)
class CacheStats:
    memory: LruStats
    redis: RedisLayerStats = field(default_factory=RedisLayerStats)
    loads: int = 0  # pages read from Postgres
    coalesced: int = 0  # requests that waited for another request's load instead of querying


class PageCache:
    def __init__(
        self,
        redis: Redis,
        keys: CacheKeys,
        settings: CacheSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self.settings = settings
        self.memory = ByteBudgetLru(settings.memory_max_bytes, settings.memory_ttl_s, clock)
        self.stats = CacheStats(memory=self.memory.stats)
        self._redis = redis
        self._store = redis.register_script(_STORE_IF_CURRENT)
        self._bump = redis.register_script(_BUMP_AND_PUBLISH)
        self._clock = clock
        self._memory_live = False
        self._redis_skip_until = 0.0
        self._next_purge = 0.0
        self._flights: dict[str, tuple[str, asyncio.Future[bytes]]] = {}
        # scope → the failure that left it unbumped; a success clears only what it actually sent
        self._unbumped: dict[str, int] = {}
        self._unbumped_overflow = False
        self._failures = 0

    # -- coherence ----------------------------------------------------------------------------
    def invalidation_channel(self) -> str:
        """The Redis channel whose messages name the scopes to drop (the realtime hub subscribes to it)."""
        return self.keys.invalidation_channel()

    def set_memory_live(self, live: bool) -> None:
        """Use L1 only while this process hears every invalidation; either way, start from empty."""
        self._memory_live = live
        self.memory.clear()
        self._drop_flights(lambda _scope: True)

    def invalidate(self, scopes: Iterable[str]) -> None:
        """Drop this process's copies (L1 and loads in flight) under these scopes."""
        scopes = set(scopes)
        if EVERYTHING in scopes:
            self.memory.clear()
            self._drop_flights(lambda _scope: True)
            return
        if not scopes:
            return
        self.memory.invalidate(scopes)
        self._drop_flights(scopes.__contains__)

    async def send_bumps(self, scopes: set[str], publishes: Sequence[tuple[str, bytes]] = ()) -> None:
        """Make these scopes stale in every process — their version bumps, with those an earlier failure
        left, and the invalidation message naming them — then PUBLISH each (channel, payload) of
        `publishes`, all in one script: whole or not at all (issue 13; the realtime publisher hands its
        envelopes here, so no frame leaves before its page is stale). Raises if Redis cannot take them,
        and keeps them to send on the next call or resubscription."""
        carried = dict(self._unbumped)
        bumped = sorted(scopes | carried.keys())
        args: list[Any] = [version_ttl_s(self.settings), self.invalidation_channel(), "\n".join(bumped)]
        for channel, payload in publishes:
            args += [channel, payload]
        try:
            await self._bump(keys=bumped, args=args)
        except BaseException:
            self.invalidation_failed(scopes)
            raise
        self.invalidation_sent(carried)

    def invalidation_sent(self, carried: dict[str, int]) -> None:
        for scope, failure in carried.items():
            if self._unbumped.get(scope) == failure:  # not failed again meanwhile
                del self._unbumped[scope]

    def invalidation_failed(self, scopes: set[str]) -> None:
        self._failures += 1
        if len(self._unbumped) + len(scopes) > _UNBUMPED_LIMIT:
            self._unbumped.clear()
            self._unbumped_overflow = True
            return
        for scope in scopes:
            self._unbumped[scope] = self._failures

    async def send_unbumped(self) -> None:
        """Send the bumps Redis missed; raises if it still cannot take them."""
        if self._unbumped_overflow:
            await self._delete_all_pages()
            self._unbumped_overflow = False
        if not self._unbumped:
            return
        waiting = len(self._unbumped)
        async with asyncio.timeout(_REDIS_TIMEOUT_S):
            await self.send_bumps(set())
        log.info("cache invalidations sent after redis returned", scopes=waiting)

    async def _delete_all_pages(self) -> None:
        async for key in self._redis.scan_iter(match=self.keys.page_pattern(), count=1000):
            await self._redis.unlink(key)
        await self._redis.publish(self.keys.invalidation_channel(), EVERYTHING)

    def _drop_flights(self, matches: Callable[[str], bool]) -> None:
        # Later requests must not join a load that may have read Postgres before the write.
        for key in [key for key, (scope, _) in self._flights.items() if matches(scope)]:
            del self._flights[key]

    # -- reads --------------------------------------------------------------------------------
    @property
    def memory_live(self) -> bool:
        return self._memory_live

    def peek(self, scope: str, variant: str) -> bytes | None:
        """The page if this process holds it in memory (and may use it); never loads."""
        page = self.memory.get(self.keys.page_key(scope, variant)) if self._memory_live else None
        if page is not None:
            metrics.MEMORY_HIT.inc()
        return page

    async def get_or_load(
        self, scope: str, variant: str, load: Loader, deferred: list[Awaitable[None]] | None = None
    ) -> bytes:
        """The page, from memory, Redis or `load`. With `deferred`, a page loaded from Postgres is put in
        Redis by the awaitable appended to it instead of before returning: the caller answers first, then
        awaits it (the compare-and-set holds the same: it stores only under the version seen before
        loading)."""
        key = self.keys.page_key(scope, variant)
        if self._memory_live:
            value = self.memory.get(key)
            if value is not None:
                metrics.MEMORY_HIT.inc()
                log.debug("messages served from cache", layer="memory", scope=scope)
                return value
        flight = self._flights.get(key)
        if flight is not None:
            try:
                value = await asyncio.shield(flight[1])
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # the loading request was cancelled (its client left): load for ourselves
            else:
                self.stats.coalesced += 1
                return value
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._flights[key] = (scope, future)
        try:
            value = await self._load_through(scope, key, load, deferred)
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            else:
                future.cancel()
            raise
        else:
            future.set_result(value)
            return value
        finally:
            if self._flights.get(key, (None, None))[1] is future:
                del self._flights[key]

    async def _load_through(
        self, scope: str, key: str, load: Loader, deferred: list[Awaitable[None]] | None
    ) -> bytes:
        token = self.memory.token()
        version, value = await self._redis_get(scope, key)
        if value is None:
            value = await load()
            self.stats.loads += 1
            metrics.POSTGRES_LOAD.inc()
            if version is not None:
                store = self._redis_put(scope, key, version, value)
                if deferred is None:
                    await store
                else:
                    deferred.append(store)
        if self._memory_live:
            self._memory_put(scope, key, value, token)
        return value

    def _memory_put(self, scope: str, key: str, value: bytes, token: int) -> None:
        now = self._clock()
        if now >= self._next_purge:  # expired entries go without a background task
            self._next_purge = now + self.settings.memory_ttl_s
            self.memory.purge_expired()
        self.memory.put(scope, key, value, token)

    # -- L2 -----------------------------------------------------------------------------------
    async def _redis_get(self, scope: str, key: str) -> tuple[bytes | None, bytes | None]:
        """(version seen, page) — version None means Redis is unavailable: do not store either."""
        if self._clock() < self._redis_skip_until:
            return None, None
        try:
            if self._unbumped or self._unbumped_overflow:  # a page in Redis may predate a write of ours
                await self.send_unbumped()
            async with asyncio.timeout(_REDIS_TIMEOUT_S):
                version, tagged = await self._redis.mget(scope, key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            return None, None
        version = version or b"0"
        if tagged is None:
            self.stats.redis.misses += 1
            return version, None
        tag, _, page = tagged.partition(b"\n")
        if tag != version:
            self.stats.redis.stale += 1
            self.stats.redis.misses += 1
            return version, None
        self.stats.redis.hits += 1
        metrics.REDIS_HIT.inc()
        log.debug("messages served from cache", layer="redis", scope=scope)
        return version, page

    async def _redis_put(self, scope: str, key: str, version: bytes, page: bytes) -> None:
        try:
            async with asyncio.timeout(_REDIS_TIMEOUT_S):
                tagged = version + b"\n" + page
                ttls = [self.settings.redis_ttl_s, version_ttl_s(self.settings)]
                stored = await self._store(keys=[scope, key], args=[version, tagged, *ttls])
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            return
        if stored:
            self.stats.redis.stores += 1
        else:
            self.stats.redis.refused += 1

    def _redis_failed(self, exc: BaseException) -> None:
        self.stats.redis.errors += 1
        self._redis_skip_until = self._clock() + _REDIS_BACKOFF_S
        log.warning("cache redis unavailable; reading postgres", error=type(exc).__name__)

    def describe(self) -> dict[str, object]:
        """Figures for /stats (this process)."""
        memory, redis = self.stats.memory, self.stats.redis
        lookups = memory.hits + memory.misses
        return {
            "memory": {
                "live": self._memory_live,
                "hits": memory.hits,
                "misses": memory.misses,
                "hit_ratio": round(memory.hits / lookups, 4) if lookups else None,
                "evictions": memory.evictions,
                "expirations": memory.expirations,
                "invalidations": memory.invalidations,
                "refused": memory.refused,
                "bytes": self.memory.size_bytes,
                "max_bytes": self.memory.max_bytes,
                "keys": len(self.memory),
            },
            "redis": {
                "hits": redis.hits,
                "misses": redis.misses,
                "hit_ratio": round(redis.hits / (redis.hits + redis.misses), 4)
                if redis.hits + redis.misses
                else None,
                "stale": redis.stale,
                "stores": redis.stores,
                "refused": redis.refused,
                "errors": redis.errors,
            },
            "postgres_loads": self.stats.loads,
            "coalesced": self.stats.coalesced,
        }
