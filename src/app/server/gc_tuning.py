"""The cyclic garbage collector, settled once the application has started (issue 13).

Under webhook load an API process's full (generation 2) collections walked every object it had, the whole
imported application included, and stopped its event loop for hundreds of milliseconds (measured with
`gc.callbacks` in the realtime benchmark: 5 full collections in a 10 s run, up to 0.58-0.77 s each, the
worst frame latencies with them). What exists when the server starts (modules, the ORM's and Litestar's
metadata, caches) lives until the process ends, so it is frozen: moved out of every later collection
(`gc.freeze`, as CPython's documentation advises for long-lived servers). A young generation of 7,000
objects instead of 700 makes young collections ten times fewer (35-41 instead of ~540 per process in the
same benchmark, 0.25 s of collection instead of 0.6 s); after the freeze no full collection ran during it.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 7_000
OLDER_THRESHOLDS = (10, 10)  # CPython's defaults: collect gen 1 every 10 gen 0, gen 2 every 10 gen 1


_settled = False


def settle_collector() -> None:
    """Collect what startup left, then freeze the rest, once per process (a test process starts many apps:
    only its first is frozen, so nothing the later ones leave is kept from the collector)."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
