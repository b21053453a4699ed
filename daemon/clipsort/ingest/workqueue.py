"""The queue between readiness and the inference worker: fair across datasets.

Each dataset has its own FIFO and batches are filled round-robin, so a flood
of files in one dataset cannot starve another. Its size is bounded by
:class:`clipsort.ingest.readiness.Readiness`, which admits at most ``capacity`` paths.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TypeVar

from clipsort.work import Job

T = TypeVar("T")


class FairQueue:
    """Per-dataset FIFOs drained round-robin into micro-batches."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Job]] = {}
        self._turn: deque[str] = deque()
        self._ready = threading.Condition()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def depths(self) -> dict[str, int]:
        """Queued jobs per dataset."""
        with self._ready:
            return {name: len(queue) for name, queue in self._queues.items() if queue}

    def put(self, jobs: Iterable[Job]) -> None:
        with self._ready:
            for job in jobs:
                queue = self._queues.setdefault(job.dataset, deque())
                if not queue and job.dataset not in self._turn:
                    self._turn.append(job.dataset)
                queue.append(job)
                self._size += 1
            self._ready.notify_all()

    def take(self, limit: int, wait: float, linger: float) -> list[Job]:
        """Up to ``limit`` jobs: block up to ``wait`` s for the first, then up to ``linger`` s for more."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._size > 0, timeout=wait):
                return []
            deadline = time.monotonic() + linger
            while self._size < limit:
                left = deadline - time.monotonic()
                if left <= 0 or not self._ready.wait(timeout=left):
                    break
            return self._round_robin(limit)

    def _round_robin(self, limit: int) -> list[Job]:
        batch: list[Job] = []
        while self._turn and len(batch) < limit:
            name = self._turn.popleft()
            queue = self._queues[name]
            batch.append(queue.popleft())
            if queue:
                self._turn.append(name)
        self._size -= len(batch)
        return batch
