"""What start-up made kept out of the cyclic garbage collector's full collections.

Why (issue 37, bench/README.md): a process that has loaded torch and a model tracks about 200,000
objects, and each full collection walks all of them, about 65 ms of CPU here with the GIL held.
Sorting makes enough short-lived containers for a full collection every two thousand files or
so: about 0.03-0.05 ms of CPU per file spent re-checking objects that live as long as the
process. :func:`freeze_survivors` collects once and then freezes what survives (``gc.freeze``): later
collections skip it. Reference counting still frees a frozen object whose count drops to zero;
only a frozen object that becomes garbage inside a reference cycle (a replaced model: the
encoder's objects form cycles) waits for the next :func:`freeze_survivors`, whose ``gc.unfreeze`` hands
everything back to the collector first. So a long-running process calls it again from time to
time (the daemon at each housekeeping round, every ``housekeeping_seconds``), which bounds that wait.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Frozen:
    """What one :func:`freeze_survivors` did: cyclic garbage collected, objects now frozen, its CPU."""

    collected: int
    frozen: int
    cpu_ms: float


def freeze_survivors() -> Frozen:
    """Collect everything, then freeze what survived; thread-safe (the collector holds the GIL)."""
    started = time.thread_time()
    gc.unfreeze()  # what an earlier call froze is collectable again, a replaced model included
    collected = gc.collect()
    gc.freeze()
    return Frozen(collected, gc.get_freeze_count(), round((time.thread_time() - started) * 1e3, 1))
