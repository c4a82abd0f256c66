"""Budgets counted atomically in Redis, so every API process shares one count (Litestar's rate-limit
middleware reads and rewrites a history per request, and concurrent processes overwrite each other's
counts). The login throttles and the webhook verification throttle are built on this.

A budget is kept per subject (a client address, an (address, instance) pair, an account). Its window opens
with the subject's first event and lasts `window_s`; Retry-After says when it closes. Two ways to spend it:

- `count`: every event counts, counted before it is evaluated (logins per address).
- `reserve` then `settle`: an attempt takes a slot atomically *before* it is evaluated ("refuse if spent,
  else reserve", one Lua script), and gives it back if it succeeds (issue 12, finding 6: peeking before
  and counting after let 200 concurrent wrong secrets all be evaluated against a budget of 30). So N
  concurrent attempts evaluate at most the budget. An attempt that finds the budget taken only by attempts
  still in flight (not by failures) waits for them to settle instead of being refused: a verified gateway's
  burst wider than the budget is delayed by milliseconds, never refused. For attempts whose evaluation
  is dear (a password's scrypt).
- `refuse_if_spent` then `count` on failure: for attempts whose evaluation is cheap and whose success must
  cost nothing (a webhook's secret, compared in constant time; issue 13). Every attempt reads its
  subject's count first and is refused once the budget is spent; a failure is counted afterwards, and the
  failure that goes past the budget is answered 429, not 401. So however many attempts run at once, at
  most the budget are answered on their merits, a right secret after the budget is spent is refused like a
  wrong one, and a success is one coalesced read, never a write.

Every process also counts `count` events locally (`LocalWindows`): the budget's count in Redis is at least
this process's own, so once this process alone has seen more than the budget in a window the event is
refused without asking Redis — a flood of 600 concurrent logins from one address costs 600 local
increments and ~budget Redis calls, not 600 round trips whose answers queue on the event loop in front of
the webhooks sharing it (issue 12, finding 1). A refusal Redis gave is remembered the same way until its
window closes. A local window opens with this process's first event of the subject, so it can close up to
one window after Redis's: it refuses only what some window of `window_s` really saw too many of.

Fails open: with Redis down or frozen nothing is refused, so agents log in and gateways deliver while Redis
recovers; `app.lib.throttle_calls` decides when Redis is down, timing Redis rather than this process.

The address is the ASGI scope's client, which uvicorn (`proxy_headers`) rewrites from X-Forwarded-For only
when the connection comes from FORWARDED_ALLOW_IPS — by default nobody (`app.server.run`): anyone else cannot
pick the address they are counted as.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import TooManyRequestsException
from redis.asyncio import Redis

from app.lib.redis_scripts import CoalescedCalls
from app.lib.throttle_calls import ThrottleCalls

WINDOW_S = 60
_SLOT_WAIT_S = 2.0  # an attempt waits this long for in-flight attempts to settle, then is refused
_SLOT_POLL_S = 0.01
# INCR and EXPIRE together: the first event of a window sets its lifetime, and nothing can interleave. A key
# without a lifetime (never left by these scripts) gets one too, rather than refusing its subject for good.
_COUNT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""
# A hash of `failed` (settled failures) and `pending` (reserved, not yet settled). Returns {granted, failed,
# ttl}: granted 1 when a slot was reserved; refused with failed < limit means in-flight attempts hold it.
_RESERVE = """
local failed = tonumber(redis.call('HGET', KEYS[1], 'failed') or '0')
local pending = tonumber(redis.call('HGET', KEYS[1], 'pending') or '0')
local granted = 0
if failed + pending < tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'pending', 1)
  granted = 1
end
local ttl = redis.call('TTL', KEYS[1])
if ttl < 0 and granted == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {granted, failed, ttl}
"""
# Gives the reserved slot back (ARGV[1] = 0) or keeps it as a failure (1). A window that closed meanwhile
# is left closed: nothing is written to a key that is gone.
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'pending') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'pending', -1)
end
if ARGV[1] == '1' then redis.call('HINCRBY', KEYS[1], 'failed', 1) end
return 1
"""


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The address a request is counted as (see the module docstring for who may set it)."""
    return connection.client.host if connection.client else "unknown"


class LocalWindows:
    """This process's own count of events per subject and window, and the refusals Redis gave, bounded to
    the `max_subjects` most recently seen (forgetting one only costs a Redis call)."""

    def __init__(self, window_s: int, max_subjects: int = 10_000) -> None:
        self._window_s = window_s
        self._max = max_subjects
        self._windows: OrderedDict[str, list[float]] = OrderedDict()  # subject -> [closes_at, count]

    def bump(self, subject: str, now: float) -> Window:
        """Count one event; the subject's local window after it."""
        window = self._windows.get(subject)
        if window is None or window[0] <= now:
            window = [now + self._window_s, 0.0]
            self._windows[subject] = window
            if len(self._windows) > self._max:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(subject)
        window[1] += 1
        return Window(count=int(window[1]), resets_in_s=max(int(window[0] - now), 0))

    def over(self, subject: str, now: float, budget: int) -> Window | None:
        """The subject's window if this process has already counted more than `budget` in it (nothing is
        counted: the event at hand is refused anyway)."""
        window = self._windows.get(subject)
        if window is None or window[0] <= now or window[1] <= budget:
            return None
        return Window(count=int(window[1]), resets_in_s=max(int(window[0] - now), 1))

    def refuse_until(self, subject: str, closes_at: float, count: int) -> None:
        """Remember a refusal Redis gave until the window it counted closes."""
        window = self._windows.get(subject)
        if window is None:
            self._windows[subject] = [closes_at, float(count)]
            if len(self._windows) > self._max:
                self._windows.popitem(last=False)
        else:
            window[0] = max(window[0], closes_at)
            window[1] = max(window[1], float(count))


@dataclass(frozen=True, slots=True)
class Window:
    count: int  # events (or failures) counted in the subject's current window
    resets_in_s: int  # until the window closes


class Reservation:
    """A slot taken by one attempt; `settle` once its outcome is known (a no-op when Redis was down)."""

    def __init__(self, budget: ClientThrottle | None, key: str) -> None:
        self._budget, self._key = budget, key

    async def settle(self, *, failed: bool) -> None:
        budget, self._budget = self._budget, None  # at most once
        if budget is not None:
            await budget._settle_key(self._key, failed)


class ClientThrottle:
    def __init__(
        self,
        redis: Redis,
        calls: ThrottleCalls,
        root: str,
        per_window: int,
        refusal: str,
        window_s: int = WINDOW_S,
    ) -> None:
        # Calls of requests arriving together share a round trip, timed once (app.lib.redis_scripts).
        self._scripts = CoalescedCalls(redis, calls, root)
        self._redis = redis
        self._count = redis.register_script(_COUNT)
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._calls = calls
        self._root = root  # the Redis key prefix of this budget, e.g. "crm:login-attempts"
        self.per_window = per_window
        self._window_s = window_s
        self._refusal = refusal  # the 429's detail
        self._local = LocalWindows(window_s)

    def _key(self, subject: str) -> str:
        return f"{self._root}:{subject}"

    async def count(self, subject: str, *, locally: bool = True) -> Window | None:
        """Count one event of `subject`; None when Redis cannot answer (fail open). `locally=False`: only
        Redis counts (a refusal it gives is still remembered), so with Redis down nothing is refused."""
        now = time.monotonic()
        if locally:
            local = self._local.bump(subject, now)
            if local.count > self.per_window:
                return local  # over the budget in this process alone, so in Redis too (module docstring)
        key = self._key(subject)
        answer = await self._scripts.script(self._count, [key], [self._window_s])
        if answer is None:
            return None
        count, ttl = int(answer[0]), max(int(answer[1]), 0)  # TTL -2: the key is gone
        if count > self.per_window:
            self._local.refuse_until(subject, now + ttl, count)
        return Window(count=count, resets_in_s=ttl)

    def already_refused(self, subject: str) -> Window | None:
        """Without Redis and without counting: the subject's window when this process knows it is over the
        budget (`app.server.shedding` answers such requests before the framework sees them)."""
        return self._local.over(subject, time.monotonic(), self.per_window)

    async def refuse_if_spent(self, subject: str) -> None:
        """Raise 429 if `subject` has already `count`ed the whole budget in its window, without counting:
        one counter read, coalesced with every read of the loop turn into one MGET (a verified webhook's only
        Redis call, issue 13); nothing asked of Redis once this process alone has counted the budget."""
        now = time.monotonic()
        local = self._local.over(subject, now, self.per_window - 1)
        if local is not None:
            raise self.refused(local.resets_in_s)
        key = self._key(subject)
        counted = await self._scripts.read_count(key)
        if counted is None or counted < self.per_window:
            return  # under budget, or Redis cannot say (fail open)
        ttl = await self._calls.run(lambda: self._redis.ttl(key), self._root)
        resets_in_s = max(int(ttl or 0), 1)
        self._local.refuse_until(subject, now + resets_in_s, counted)
        raise self.refused(resets_in_s)

    def refuse_if_over(self, window: Window | None) -> None:
        """After `count`: refuse the event that went past the budget (and every one after it)."""
        if window is not None and window.count > self.per_window:
            raise self.refused(window.resets_in_s)

    async def reserve(self, subject: str) -> Reservation:
        """Take a slot of `subject`'s budget before the attempt is evaluated, or raise 429 (see the module
        docstring); with Redis unavailable the attempt goes ahead uncounted."""
        key = self._key(subject)
        deadline = time.monotonic() + _SLOT_WAIT_S
        while True:
            answer = await self._scripts.script(self._reserve, [key], [self.per_window, self._window_s])
            if answer is None:
                return Reservation(None, key)
            granted, failed, ttl = (int(v) for v in answer)
            if granted:
                return Reservation(self, key)
            if failed >= self.per_window or time.monotonic() > deadline:
                raise self.refused(ttl if failed >= self.per_window else 1)
            await asyncio.sleep(_SLOT_POLL_S)  # in-flight attempts hold the budget: they settle in ms

    async def _settle_key(self, key: str, failed: bool) -> None:
        await self._scripts.script(self._settle, [key], [int(failed)])

    def refused(self, resets_in_s: int) -> TooManyRequestsException:
        reset = str(max(resets_in_s, 1))
        return TooManyRequestsException(
            self._refusal,
            headers={
                "RateLimit-Limit": str(self.per_window),
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": reset,
                "Retry-After": reset,
            },
        )
