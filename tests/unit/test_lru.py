"""ByteBudgetLru: the byte budget holds under load, LRU order, TTL (fake clock), scope invalidation, and
the tokens that keep a load begun before a write from storing what it read."""

from __future__ import annotations

import random

import pytest

from app.lib.lru import _INVALIDATION_RECORD_LIMIT, ENTRY_OVERHEAD_BYTES, ByteBudgetLru


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cost(key: str, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


def test_byte_budget_holds_while_100k_page_sized_values_go_through() -> None:
    budget = 4 * 1024 * 1024
    lru = ByteBudgetLru(max_bytes=budget, ttl_s=3600)
    rng = random.Random(20260101)
    blob = rng.randbytes(4096)
    sizes: list[int] = []
    keys: list[str] = []
    for i in range(100_000):
        key = f"crm:cache:p:org-{i % 97}:conv-{i}:latest:50"
        value = blob[: rng.randint(1024, 4096)]
        assert lru.put(f"scope-{i % 997}", key, value, lru.token())
        assert lru.size_bytes <= budget, i
        keys.append(key)
        sizes.append(cost(key, value))

    # Nothing was read, so what survives is the newest run of puts that fits, to the byte.
    kept, total = 0, 0
    while total + sizes[-1 - kept] <= budget:
        total += sizes[-1 - kept]
        kept += 1
    assert (len(lru), lru.size_bytes) == (kept, total)
    assert lru.stats.evictions == 100_000 - kept
    assert budget - lru.size_bytes < 4096 + 200 + ENTRY_OVERHEAD_BYTES  # eviction stops as soon as it fits
    assert lru.get(keys[-kept]) is not None
    assert lru.get(keys[-kept - 1]) is None


def test_a_value_bigger_than_the_budget_is_not_stored_and_evicts_nothing() -> None:
    lru = ByteBudgetLru(max_bytes=2000, ttl_s=60)
    assert lru.put("s", "small", b"x" * 100, lru.token())
    assert not lru.put("s", "huge", b"x" * 2000, lru.token())
    assert lru.get("huge") is None
    assert lru.get("small") == b"x" * 100
    assert lru.size_bytes == cost("small", b"x" * 100)
    assert lru.stats.evictions == 0


def test_replacing_a_key_does_not_count_its_bytes_twice() -> None:
    lru = ByteBudgetLru(max_bytes=10_000, ttl_s=60)
    for size in (100, 500, 50):
        assert lru.put("s", "k", b"v" * size, lru.token())
    assert (len(lru), lru.size_bytes) == (1, cost("k", b"v" * 50))
    assert lru.get("k") == b"v" * 50


def test_least_recently_used_goes_first_and_a_read_refreshes() -> None:
    value = b"p" * 1000
    per_entry = cost("k0", value)
    lru = ByteBudgetLru(max_bytes=per_entry * 3, ttl_s=60)
    for key in ("k0", "k1", "k2"):
        assert lru.put("s", key, value, lru.token())
    assert lru.get("k0") == value  # k0 is now the most recently used; k1 the least
    assert lru.put("s", "k3", value, lru.token())
    assert lru.get("k1") is None
    assert [lru.get(k) is not None for k in ("k0", "k2", "k3")] == [True, True, True]
    assert lru.stats.evictions == 1
    assert lru.put("s", "k4", value, lru.token())  # k0, k2, k3 were read in that order: k0 goes
    assert lru.get("k0") is None
    assert (lru.stats.hits, lru.stats.misses) == (4, 2)


def test_entries_expire_after_their_ttl() -> None:
    clock = FakeClock()
    lru = ByteBudgetLru(max_bytes=100_000, ttl_s=10, clock=clock)
    assert lru.put("s", "k", b"page", lru.token())
    clock.now += 9.999
    assert lru.get("k") == b"page"
    clock.now += 0.001  # exactly the TTL: gone
    assert lru.get("k") is None
    assert (lru.stats.expirations, lru.stats.misses, len(lru), lru.size_bytes) == (1, 1, 0, 0)
    # A read does not extend the TTL: it runs from the put.
    assert lru.put("s", "k", b"page", lru.token())
    clock.now += 6
    assert lru.get("k") == b"page"
    clock.now += 4
    assert lru.get("k") is None


def test_purge_expired_drops_only_expired_entries_and_their_bytes() -> None:
    clock = FakeClock()
    lru = ByteBudgetLru(max_bytes=100_000, ttl_s=10, clock=clock)
    lru.put("a", "old-1", b"1" * 100, lru.token())
    lru.put("b", "old-2", b"2" * 200, lru.token())
    clock.now += 5
    lru.put("a", "young", b"3" * 300, lru.token())
    clock.now += 5  # the first two are exactly at their TTL
    assert lru.purge_expired() == 2
    assert (len(lru), lru.size_bytes, lru.stats.expirations) == (1, cost("young", b"3" * 300), 2)
    assert lru.get("young") == b"3" * 300
    assert lru.purge_expired() == 0
    clock.now += 5
    assert lru.purge_expired() == 1
    assert (len(lru), lru.size_bytes) == (0, 0)
    # A scope emptied by expiry is forgotten: invalidating it later drops nothing.
    assert lru.invalidate(["a", "b"]) == 0


def test_invalidating_a_scope_drops_every_variant_and_only_that_scope() -> None:
    lru = ByteBudgetLru(max_bytes=100_000, ttl_s=60)
    for variant in ("latest:50", "latest:20", "latest:100"):
        lru.put("conv-1", f"conv-1:{variant}", b"h" * 100, lru.token())
    lru.put("conv-2", "conv-2:latest:50", b"o" * 100, lru.token())
    lru.put("inbox", "inbox:-:-:0:50", b"i" * 100, lru.token())

    assert lru.invalidate(["conv-1", "never-cached"]) == 3
    assert all(lru.get(f"conv-1:{v}") is None for v in ("latest:50", "latest:20", "latest:100"))
    assert lru.get("conv-2:latest:50") == b"o" * 100
    assert lru.get("inbox:-:-:0:50") == b"i" * 100
    assert lru.stats.invalidations == 3
    assert lru.size_bytes == cost("conv-2:latest:50", b"o" * 100) + cost("inbox:-:-:0:50", b"i" * 100)
    assert lru.invalidate(["conv-2", "inbox"]) == 2
    assert (len(lru), lru.size_bytes) == (0, 0)


def test_a_load_begun_before_its_scope_was_invalidated_is_refused() -> None:
    lru = ByteBudgetLru(max_bytes=100_000, ttl_s=60)
    before = lru.token()
    lru.invalidate(["conv-1"])
    assert not lru.put("conv-1", "conv-1:latest:50", b"read before the write", before)
    assert lru.get("conv-1:latest:50") is None
    assert lru.stats.refused == 1
    # Another scope's load that began at the same time was not touched by that write.
    assert lru.put("conv-2", "conv-2:latest:50", b"fine", before)

    after = lru.token()
    assert lru.put("conv-1", "conv-1:latest:50", b"read after the write", after)
    assert lru.get("conv-1:latest:50") == b"read after the write"
    # A second write refuses the token taken between the two.
    lru.invalidate(["conv-1"])
    assert not lru.put("conv-1", "conv-1:latest:50", b"read between the writes", after)
    assert lru.stats.refused == 2


def test_clear_refuses_every_load_in_flight() -> None:
    lru = ByteBudgetLru(max_bytes=100_000, ttl_s=60)
    lru.put("conv-1", "k1", b"v", lru.token())
    before = lru.token()
    lru.clear()
    assert (len(lru), lru.size_bytes) == (0, 0)
    assert lru.get("k1") is None
    assert not lru.put("conv-9", "k9", b"v", before)  # any scope, not only invalidated ones
    assert lru.stats.refused == 1
    assert lru.put("conv-9", "k9", b"v", lru.token())


def test_trimming_the_invalidation_record_refuses_older_tokens_instead_of_forgetting_them() -> None:
    lru = ByteBudgetLru(max_bytes=100_000, ttl_s=60)
    before = lru.token()
    lru.invalidate(["conv-watched"])
    lru.invalidate([f"other-{i}" for i in range(_INVALIDATION_RECORD_LIMIT)])  # record trimmed here
    # The record of conv-watched's invalidation is gone; its old token must still be refused.
    assert not lru.put("conv-watched", "k", b"stale", before)
    assert not lru.put("never-invalidated", "k2", b"v", before)
    fresh = lru.token()
    assert lru.put("conv-watched", "k", b"fresh", fresh)
    assert lru.get("k") == b"fresh"


@pytest.mark.parametrize("ttl", [0.0, -1.0])
def test_a_non_positive_ttl_never_serves(ttl: float) -> None:
    clock = FakeClock()
    lru = ByteBudgetLru(max_bytes=100_000, ttl_s=ttl, clock=clock)
    lru.put("s", "k", b"v", lru.token())
    assert lru.get("k") is None
