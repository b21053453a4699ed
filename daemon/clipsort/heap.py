"""The process's memory: what start-up made kept out of the cyclic garbage collector's full
collections, and what C's allocator keeps of what is freed.

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

And what C's allocator does with memory freed (:func:`keep_freed_memory`). Why (issue 37,
bench/README.md): the model's input is turned to floats a chunk at a time, a few MB a chunk at a
GPU host's batch, and glibc's default gave each chunk fresh pages: blocks of a size it had just
freed were mapped anew, or the heap's top was handed back to the kernel after each free, and every
page of the next block was then faulted in and zeroed by the kernel. That cost the model thread
as much again as its arithmetic (0.03-0.05 ms of CPU a file of the near-free stand-in, most of
the daemon's time in the kernel). So blocks up to 32 MiB come from the heap and up to 128 MiB
freed at its top stays there for the next; :func:`give_back_freed_memory` returns what is free
when the daemon can afford the faults again (its housekeeping round).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import time
from dataclasses import dataclass

# mallopt(3)'s parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): blocks above it are mapped anyway.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20  # free at the heap's top before it shrinks: a batch's blocks, several times


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


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep blocks of up to a few MB for reuse (see the module); True if it took.

    Called once, early, by every clipsort process that handles pictures: the command line's (the
    daemon's, ``sort``'s), its child processes' and the cluster engine's actors'.

    OS caveat: glibc only. Another C library (musl's has no ``mallopt``) keeps its own ways and this
    returns False. Setting either value by hand turns glibc's own adjustment of both off, so both
    are set, never one alone: the mmap threshold alone left the heap trimmed after every free, the
    trim threshold alone mapped every block above 128 KB afresh, each worse than glibc's default
    (bench/README.md). A person's own setting of either (``GLIBC_TUNABLES``' ``glibc.malloc.*_threshold``,
    ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``) wins: then nothing is changed.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    tuned = any(
        f"glibc.malloc.{name}_threshold" in tunables or f"MALLOC_{name.upper()}_THRESHOLD_" in os.environ
        for name in ("trim", "mmap")
    )
    mallopt = getattr(_libc(), "mallopt", None)
    if tuned or mallopt is None:
        return False
    mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mapped) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def give_back_freed_memory() -> bool:
    """Return the free memory of every malloc arena to the kernel (``malloc_trim(0)``); True if some
    was. A no-op where the C library is not glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library the interpreter runs on (its symbols, through the process's own)."""
    return ctypes.CDLL(None)
