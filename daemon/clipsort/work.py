"""The unit of work, shared by every stage: a file's signature, a hint, a job; taking work in rounds.

A :class:`Hint` says a path may be ready (the watcher's and the scanner's
word); a :class:`Job` is a file that held still, with the :class:`Signature`
that must not change between "classified" and "moved". The ingest stage makes
them; sorting, learning and the store only read them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

T = TypeVar("T")

ALL_DATASETS = "*"  # a rescan of every dataset (and a look for new ones), where a name is expected


@dataclass(frozen=True)
class Signature:
    """What must not change between "ready" and "moved"."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> Signature | None:
        """The signature of a regular file at ``path`` (never following a symlink), or None."""
        try:
            status = path.lstat()
        except OSError:
            return None
        return cls.of_status(status)

    @classmethod
    def of_status(cls, status: os.stat_result) -> Signature | None:
        """The signature of what an ``lstat`` found, if it is a regular file."""
        if not stat.S_ISREG(status.st_mode):
            return None
        return cls(status.st_size, status.st_mtime_ns, status.st_ino)


HintKind = Literal["closed", "written", "scanned"]


@dataclass(frozen=True)
class Hint:
    """A path that may be ready, and what suggested it.

    ``closed``: its writer closed it or it was renamed in (likely complete);
    ``written``: it is being written (created or modified);
    ``scanned``: a rescan listed it, which says nothing about activity.

    ``inode``: the file's inode where the hint's source knew it for free (a scan's directory
    entries): a hint for the very file already being classified is then no news.
    """

    dataset: str
    path: Path
    kind: HintKind = "scanned"
    inode: int | None = None


@dataclass(frozen=True)
class Job:
    """A settled file handed to the inference worker."""

    dataset: str
    path: Path
    signature: Signature
    first_seen: float  # monotonic seconds: drop-to-move latency and the max-wait clock


def is_unchanged(job: Job) -> bool:
    """Whether the file still is exactly what was classified."""
    return Signature.of(job.path) == job.signature


def age(job: Job, clock: Callable[[], float] = time.monotonic) -> float:
    """Seconds since the file was first seen."""
    return clock() - job.first_seen


def drain(source: queue.Queue[T], timeout: float, limit: int, *, linger: float = 0.0) -> list[T]:
    """The next item within ``timeout`` seconds and what queued up behind it, at most ``limit``; [] if none.

    Threads fed one item at a time by others (hints, arrivals) take them in
    rounds: a burst then costs one round of work, not one per item. A burst
    that trickles in (one item each millisecond) would still wake a round per
    item, so ``linger`` waits that long after the first item before taking
    the rest.
    """
    items: list[T] = []
    with contextlib.suppress(queue.Empty):
        items.append(source.get(timeout=timeout))
        if linger > 0:
            time.sleep(linger)
        while len(items) < limit:
            items.append(source.get_nowait())
    return items
