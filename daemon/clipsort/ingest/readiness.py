"""Deciding when an inbox file is complete enough to read.

Events only hint that a file may be ready; the decision rests on the file
itself: its (size, mtime, inode) must hold still. After a close-after-write
or moved-in event the writer is done, so a short confirmation suffices
(``settle_closed``); a file seen only by a scan or a create/modify event
(polling observers, SMB and NFS writers, chunked uploads) must stay unchanged
for the full ``settle`` time. A file whose mtime is already older than
``settle`` (the backlog found at start) is ready at once.

At most ``capacity`` paths are tracked at a time (pending, queued or being
classified); beyond that :meth:`Readiness.offer` refuses, and the caller
relies on a later rescan, so a burst of any size costs bounded memory.
"""

from __future__ import annotations

import heapq
import itertools
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clipsort.files import left_alone
from clipsort.work import Hint, HintKind, Job, Signature


@dataclass
class _Candidate:
    dataset: str
    signature: Signature
    first_seen: float
    due: float
    retried: bool = False  # put back after a failure: :meth:`Readiness.expedite` may bring it forward


@dataclass
class Readiness:
    """Tracks hinted paths until they settle; a state machine over a clock.

    Thread-safe: the intake thread offers and collects, the worker releases
    and retries.
    """

    settle: float
    settle_closed: float
    capacity: int
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _pending: dict[Path, _Candidate] = field(default_factory=dict)
    _in_flight: dict[Path, int] = field(default_factory=dict)  # the worker's, with their inodes
    _hinted_in_flight: set[Path] = field(default_factory=set)  # hinted again while the worker had it
    _heap: list[tuple[float, int, Path]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def reconfigure(self, settle: float, settle_closed: float, capacity: int) -> None:
        """New timings and capacity (a reload): paths offered from now on are held to them."""
        with self._lock:
            self.settle, self.settle_closed, self.capacity = settle, settle_closed, capacity

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._in_flight)

    def offer(self, hint: Hint) -> bool:
        """Track ``hint.path``; False only when full (the caller must rescan later)."""
        with self._lock:
            path = hint.path
            if path in self._in_flight:
                if hint.inode == self._in_flight[path]:
                    # A listing saw the very file the worker has (a scan after a burst lists
                    # thousands): nothing new, nothing to look at again on release.
                    return True
                # The worker re-checks the signature before it moves; but a new file may
                # arrive under this name once the old one is moved, so release looks again.
                self._hinted_in_flight.add(path)
                return True
            return self._track(path, hint.dataset, hint.kind)

    def _track(self, path: Path, dataset: str, kind: HintKind) -> bool:
        with self._lock:
            now = self.clock()
            wait = self.settle_closed if kind == "closed" else self.settle
            candidate = self._pending.get(path)
            if candidate is not None:
                if kind != "scanned":  # a rescan must not postpone a file already waiting
                    self._schedule(path, candidate, now + wait)
                return True
            if len(self) >= self.capacity:
                return False
            try:
                status = path.lstat()
            except OSError:
                return True  # vanished: nothing to do
            signature = Signature.of_status(status)
            if signature is None:
                if not stat.S_ISDIR(status.st_mode):
                    left_alone(path, symlink=stat.S_ISLNK(status.st_mode))
                return True
            if self.wall() - signature.mtime_ns / 1e9 > self.settle:
                wait = 0.0  # untouched for longer than the settle time already
            candidate = _Candidate(dataset, signature, now, now)
            self._pending[path] = candidate
            self._schedule(path, candidate, now + wait)
            return True

    def retry(self, job: Job, delay: float) -> None:
        """Put a job back (still arriving, or a transient failure), keeping its first-seen time."""
        with self._lock:
            self._in_flight.pop(job.path, None)
            self._hinted_in_flight.discard(job.path)
            signature = Signature.of(job.path)
            if signature is None:
                return
            candidate = _Candidate(job.dataset, signature, job.first_seen, 0.0, retried=True)
            self._pending[job.path] = candidate
            self._schedule(job.path, candidate, self.clock() + delay)

    def expedite(self, dataset: str) -> int:
        """Make ``dataset``'s files waiting after a failure due now (the fault may have cleared)."""
        with self._lock:
            now = self.clock()
            waiting = [
                (path, candidate)
                for path, candidate in self._pending.items()
                if candidate.retried and candidate.dataset == dataset and candidate.due > now
            ]
            for path, candidate in waiting:
                self._schedule(path, candidate, now)
            return len(waiting)

    def release(self, *jobs: Job) -> None:
        """The worker is done with jobs' files (moved, rejected or left alone); one lock for a batch.

        A hint for a path that came while the worker had it may be a new
        file under the same name, arrived after the old one moved: it is
        tracked now, as if the hint came just now.
        """
        with self._lock:
            for job in jobs:
                self._in_flight.pop(job.path, None)
                if job.path in self._hinted_in_flight:
                    self._hinted_in_flight.discard(job.path)
                    self._track(job.path, job.dataset, "written")

    def tracked(self) -> frozenset[tuple[str, int]]:
        """(path, inode) of each file pending here or with the worker.

        Offering one of them again changes nothing (see :meth:`offer`: the very file the worker
        has, or a path already pending), so a scan leaves them out before it makes a ``Path`` and
        a hint for each: the scan after a burst, when its inbox is watched again, meets thousands.
        A file replaced under a tracked name has another inode, and is offered. A job the worker
        releases unplaced (it stays in the inbox for the next scan) between this reading and the
        scan's offer waits for the scan after, as one released just after its offer always did.
        """
        with self._lock:
            pending = [(os.fspath(path), c.signature.inode) for path, c in self._pending.items()]
            return frozenset(
                [*pending, *((os.fspath(path), inode) for path, inode in self._in_flight.items())]
            )

    def forget_dataset(self, dataset: str) -> None:
        """Drop pending paths of a dataset that can no longer be classified."""
        with self._lock:
            for path in [p for p, c in self._pending.items() if c.dataset == dataset]:
                del self._pending[path]

    def next_due(self) -> float | None:
        """When :meth:`ready` may next return something."""
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def ready(self) -> list[Job]:
        """Pending files whose signature held still until their due time."""
        with self._lock:
            now = self.clock()
            jobs = []
            while self._heap and self._heap[0][0] <= now:
                due, _, path = heapq.heappop(self._heap)
                candidate = self._pending.get(path)
                if candidate is None or candidate.due != due:
                    continue  # superseded by a later schedule
                signature = Signature.of(path)
                if signature is None:
                    del self._pending[path]
                elif signature != candidate.signature:
                    candidate.signature = signature
                    self._schedule(path, candidate, now + self.settle)
                else:
                    del self._pending[path]
                    self._in_flight[path] = signature.inode
                    jobs.append(Job(candidate.dataset, path, signature, candidate.first_seen))
            return jobs

    def _schedule(self, path: Path, candidate: _Candidate, due: float) -> None:
        candidate.due = due
        heapq.heappush(self._heap, (due, next(self._order), path))
