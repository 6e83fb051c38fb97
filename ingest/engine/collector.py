"""Fewer cyclic garbage collections while a run sends.

CPython collects its youngest generation every 700 net allocations, and each collection also walks the
objects that survived: during a run of 2,000 small files, one per request, that was ~200 collections
and 0.3-0.6 s of the client's ~2 s of CPU (``gc.callbacks`` timing; benchmarks/README.md, Issue 11 item
20). Almost nothing a run allocates is cyclic garbage (reference counting frees it), so the young
generation is collected less often during the run, and what existed before it (modules, settings: never
garbage) is frozen out of every collection. Both are undone when the run ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RUN_THRESHOLD", "fewer_collections"]

#: Net allocations between collections of the youngest generation during a run (CPython's default: 700).
#: Cyclic garbage waits longer for its collection: at most this many objects, a few MB.
RUN_THRESHOLD = 10_000


@contextmanager
def fewer_collections() -> Iterator[None]:
    """For the block: freeze the objects that exist now and collect the young generation every
    ``RUN_THRESHOLD`` allocations. A process that disabled the collector (or set a higher threshold)
    keeps its setting. Runs that overlap in one process may unfreeze each other early: only slower."""
    before = gc.get_threshold()
    if not gc.isenabled() or before[0] == 0 or before[0] >= RUN_THRESHOLD:
        yield
        return
    gc.freeze()
    gc.set_threshold(RUN_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
