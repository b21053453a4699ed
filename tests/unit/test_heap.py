"""Tests for clipsort.heap: what start-up made kept out of full collections, and what the C
allocator keeps of freed memory and gives back."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipsort.heap import freeze_survivors, keep_freed_memory

DAEMON = Path(__file__).resolve().parents[2] / "daemon"


class _Cyclic:
    """An object in a reference cycle with itself, as the encoder's objects are: only the cyclic
    collector frees it, never reference counting alone."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """The test process's collector as it was: nothing frozen after each test."""
    yield
    gc.unfreeze()


def test_what_survived_is_left_out_of_collections_until_the_next_call() -> None:
    """What is alive is frozen; a frozen object that later becomes cyclic garbage (a replaced model)
    survives full collections, and the next call collects it."""
    kept = _Cyclic()
    frozen = freeze_survivors()
    assert frozen.frozen == gc.get_freeze_count() > 0 and frozen.cpu_ms >= 0
    gone = weakref.ref(kept)
    del kept
    gc.collect()
    assert gone() is not None, "a frozen cycle was collected: nothing was frozen"
    again = freeze_survivors()
    assert gone() is None, "the next call did not give the frozen objects back to the collector"
    assert again.collected >= 1


def test_garbage_made_before_the_call_is_collected_not_frozen() -> None:
    """It collects before it freezes: a cycle already unreachable is freed, never kept."""
    garbage = _Cyclic()
    gone = weakref.ref(garbage)
    del garbage
    freeze_survivors()
    assert gone() is None


# A GPU host's batch turned to floats a chunk at a time, as the image tower does (encode/encoder.py,
# _PixelEmbeddings): 256 pictures of one 224-pixel patch, 16,384 values a chunk: 8 MiB blocks.
_CHUNKS = """
import resource, sys
import torch
from clipsort.heap import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
pixels = torch.ones((256, 150528), dtype=torch.uint8)
weight = torch.ones((8, 150528), dtype=torch.bfloat16)
def batch():
    summed = None
    for start in range(0, pixels.shape[1], 16384):
        chunk = pixels[:, start : start + 16384].to(torch.bfloat16)
        product = torch.mm(weight[:, start : start + 16384], chunk.t()).float()
        summed = product if summed is None else summed + product
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    batch()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 8)
"""

# Memory freed after a burst: 20 live blocks of 4 MiB, then none.
_BURST = """
import sys
from clipsort.heap import keep_freed_memory, give_back_freed_memory
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 >> 20
assert keep_freed_memory()
blocks = [b"1" * (4 << 20) for _ in range(20)]
live = resident()
del blocks
freed = resident()
given = give_back_freed_memory()
print(live, freed, given, resident())
"""


def _python(code: str, *args: str, **env: str) -> str:
    """``code`` run by a fresh interpreter (the allocator's settings are process-wide), its output."""
    tuning = ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")  # the machine's own
    environment = {name: value for name, value in os.environ.items() if name not in tuning}
    environment |= {"PYTHONPATH": str(DAEMON), **env}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_batchs_chunks_reuse_memory_instead_of_faulting_fresh_pages_in() -> None:
    """With the setting, the chunks' blocks come back from the heap: next to no page faults a batch,
    where glibc's default gave each chunk fresh pages (about 10,000 a batch: bench/README.md)."""
    kept, with_it = _python(_CHUNKS, "keep").split()
    default = float(_python(_CHUNKS, "default").split()[1])
    assert kept == "True"
    # Once in a while the kernel splits or gathers a huge page under a kept block, a thousand
    # faults or so in the eight batches; the default faults each chunk's 2,048 pages in, each time.
    assert default > 4 * max(float(with_it), 500), (with_it, default)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_memory_kept_after_a_burst_goes_back_when_asked() -> None:
    """What a burst freed stays resident for the next (the setting's point) until
    :func:`give_back_freed_memory`, which the daemon's housekeeping calls, returns it."""
    live, freed, given, after = _python(_BURST).split()
    assert int(live) - int(after) >= 60, (live, after)  # 80 MiB were allocated
    assert int(freed) >= int(live) - 8 and given == "True", (live, freed, given)


def test_a_persons_own_allocator_tuning_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit ``MALLOC_TRIM_THRESHOLD_`` (or glibc tunable) is left as the person set it."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert keep_freed_memory() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert keep_freed_memory() is False
    assert (
        _python(
            "from clipsort.heap import keep_freed_memory; print(keep_freed_memory())",
            MALLOC_MMAP_THRESHOLD_="65536",
        )
        == "False"
    )
