"""Placing in a process of its own (``place_in = "process"``): the journal's rows, the moves and the
canonical lines off the interpreter that classifies.

Why (issue 37): the threads of one process share one GIL, so the CPU that process spends per file
caps how many files per second it can sort, however many cores and GPUs the host has. Around a
near-free model the placer thread was the largest share of it (bench/README.md, the per-thread
account). Here the placer thread starts a child as it starts, hands it each batch and waits for its answer.

What crosses: one message a batch each way over a socket pair. To the child, the batch's
:class:`~clipsort.sort.pipeline.Parcel`\\ s (what placing needs of a file: its job, decision,
route, dataset folder; nothing of its classifier or model), the log format and level in force,
and the batch's vectors, which the child writes to the vector cache before the batch's moves
(:class:`~clipsort.sort.pipeline.HeldVectors`);
back, each file's result and the lines the child logged. A file placed is answered with its
destination alone, by its name where it went into its route's folder, as nearly every file does
(everything else in its :class:`~clipsort.sort.pipeline.Outcome` comes from the parcel, which the
parent still holds: :meth:`~clipsort.sort.pipeline.Parcel.outcome`); a file not placed, with the
error that kept it where it was. Unpickling whole outcomes made two ``Path`` objects and a
``Decision`` per file in the parent (half of its placer thread's CPU in a profile, which inflates
pathlib's many small calls; 5-10 us a file measured apart, bench/README.md). The child runs
:func:`~clipsort.sort.pipeline.deliver_parcels`, the code the placer thread runs, with a journal
connection of its own, so the safety properties are the same code's: every intent journalled
before any file moves, every move through the mover relative to the dataset's folder, the inode
check after the rename.

The child's lines are written by the parent, one write a batch as the thread does: two processes
writing one stream would interleave, since a pipe keeps only writes up to PIPE_BUF whole.

A child's end: it is started from the placer thread and asks the kernel to kill it when that
thread ends (PR_SET_PDEATHSIG, see :func:`clipsort.children.connect`), so after a ``kill -9`` of the
daemon no file moves on; the next start concludes the journal's open entries, as for the thread.
It ignores SIGTERM, which systemd's stop sends to every process of the service at once: the batch
in hand is finished, and the daemon's own shutdown closes its socket.
A child that dies alone (a crash, the OOM killer) takes its batch's answer with it: its journal
entries are concluded at once as at start-up (:func:`clipsort.store.recovery.recover`: each file
is where it is found), the batch's placing fails (the daemon gives its files back to the intake,
``sort`` stops with the error) and the next batch starts a new child.
"""

from __future__ import annotations

import io
import pickle
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import structlog

from clipsort.children import Child, connect
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.errors import ClipsortError, JournalError
from clipsort.layout import DatasetLayout
from clipsort.logs import LogFormat, configure_logging, shape, write_lines
from clipsort.sort.pipeline import HeldVectors, Outcome, Parcel, Result, deliver_parcels
from clipsort.store.journal import Journal
from clipsort.store.recovery import recover

log = structlog.get_logger()

# What the child answers for one file: a name in its route's folder, the path it went to elsewhere,
# or the error that kept it where it was.
Answer = str | Path | OSError | ClipsortError


def _answer(parcel: Parcel, result: Result) -> Answer:
    """The child's side: ``result`` as it crosses back (see the module)."""
    if not isinstance(result, Outcome):
        return result
    destination = result.destination
    return destination.name if destination.parent == parcel.route.folder else destination


def _result(parcel: Parcel, answer: Answer) -> Result:
    """The parent's side: the file's result again, from its parcel and the child's answer."""
    if isinstance(answer, str):
        return parcel.outcome(parcel.route.folder / answer, dry_run=False)
    if isinstance(answer, Path):
        return parcel.outcome(answer, dry_run=False)
    return answer


class PlacingProcess:
    """:func:`~clipsort.sort.pipeline.deliver_parcels` done by a child process (:meth:`start`, or the
    first batch).

    Used by one thread (the batch driver's placer), which also :meth:`close`\\ s it: the child dies
    with the thread that started it.
    """

    def __init__(self, journal: Journal | None, *, folder: Path | None = None) -> None:
        self._journal = journal
        # The state folder whose journal the child opens at its first batch (the journal's own, or
        # one not opened yet where the process starts first: `clipsort sort`, see oneshot.placing_for).
        if folder is None and journal is not None:
            folder = journal.path.parent
        self._folder = folder
        self._child: Child | None = None

    def attach(self, journal: Journal | None) -> None:
        """The parent's journal, opened after this process started: what :meth:`place` concludes
        from when the child dies with a batch."""
        self._journal = journal

    @property
    def pid(self) -> int | None:
        """The child's process id while one runs."""
        return None if self._child is None else self._child.pid

    def place(self, parcels: Sequence[Parcel], vectors: HeldVectors | None = None) -> list[Result]:
        """As :func:`~clipsort.sort.pipeline.deliver_parcels` with this process's journal, done by
        the child (never a dry run: that moves nothing and stays in the caller's thread), which
        first caches the batch's ``vectors``."""
        if not parcels:
            return []
        child = self._child or self._start()
        message = (parcels, shape(), vectors)
        try:
            child.connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
            answer: tuple[list[Answer], str] = pickle.loads(child.connection.recv_bytes())
        except (EOFError, OSError):
            self._child = None
            how = _end(child)
            self._conclude(parcels)
            raise ChildProcessError(
                f"the placing process ended ({how}) with a batch of {len(parcels)} files"
            ) from None
        answers, lines = answer
        if lines:
            write_lines(lines)
        return [_result(parcel, answer) for parcel, answer in zip(parcels, answers, strict=True)]

    def close(self) -> None:
        """End the child (it finishes no batch: none is in flight when the placer thread calls this)."""
        if self._child is not None:
            self._child.connection.close()  # its next read ends: it closes its journal and exits
            _end(self._child)
            self._child = None

    def start(self) -> None:
        """Start the child now, from the placer thread as it starts (its imports overlap the model's
        load, not the first batch); one that fails to start is logged and tried again at a batch."""
        if self._child is None:
            try:
                self._start()
            except ChildProcessError as exc:
                log.error("placer_not_started", error=str(exc), action="starting another at the next batch")

    def _start(self) -> Child:
        child = Child(__name__, "" if self._folder is None else str(self._folder))
        if not child.started():
            raise ChildProcessError("the placing process did not start")
        log.info("placer_started", pid=child.pid)
        self._child = child
        return child

    def _conclude(self, parcels: Sequence[Parcel]) -> None:
        """Conclude what the dead child left open, each file as it is found (see the module)."""
        if self._journal is not None:
            roots = {parcel.root for parcel in parcels}
            recover(self._journal, [DatasetLayout(root) for root in sorted(roots)])


def _end(child: Child) -> str:
    """Wait for ``child`` to end (killed if it does not within seconds); how it ended."""
    try:
        how = child.how_it_ended()
    except subprocess.TimeoutExpired:
        how = "no answer"
    child.kill()
    return how


class _Caches:
    """The child's vector caches, by file, opened at the first batch that brings vectors for one
    (each follows its file if the state folder is made again: :meth:`EmbeddingCache.put`)."""

    def __init__(self) -> None:
        self._open: dict[Path, EmbeddingCache] = {}
        self._failing: set[Path] = set()  # caches that could not be opened: logged once, until one opens

    def put(self, held: HeldVectors) -> None:
        """Cache ``held``'s vectors; a cache that cannot be opened is logged (once while it cannot)
        and left out (a cache only saves work), as a cache's failing writes are."""
        cache = self._open.get(held.path)
        if cache is None:
            try:
                cache = self._open[held.path] = EmbeddingCache(held.path)
            except (OSError, sqlite3.Error) as exc:
                if held.path not in self._failing:
                    log.error(
                        "cache_write_failed", path=str(held.path), error=str(exc), effect="vectors not kept"
                    )
                self._failing.add(held.path)
                return
            self._failing.discard(held.path)
        for model, vectors in held.puts:
            cache.put(model, vectors)

    def close(self) -> None:
        for cache in self._open.values():
            cache.close()


def _serve(connection: Connection, folder: str) -> None:
    """The child: place each batch it is sent until its socket closes."""
    journal: Journal | None = None
    caches = _Caches()
    lines = io.StringIO()
    configured: tuple[LogFormat, str] | None = None
    try:
        while True:
            try:
                parcels, wanted, vectors = pickle.loads(connection.recv_bytes())
            except (EOFError, OSError):  # the parent closed it, or ended
                return
            if wanted != configured:
                configure_logging(wanted[0], wanted[1], stream=lines)
                configured = wanted
            if vectors is not None:
                caches.put(vectors)
            answers: list[Answer]
            try:
                if folder and journal is None:  # opened here, at the first batch, as in the thread
                    journal = Journal(Path(folder))
            except JournalError as exc:  # a full or read-only state folder: nothing moves, all wait
                answers = [exc for _ in parcels]
            else:
                results = deliver_parcels(parcels, journal=journal, dry_run=False)
                answers = [_answer(parcel, result) for parcel, result in zip(parcels, results, strict=True)]
            text = lines.getvalue()
            lines.seek(0)
            lines.truncate()
            try:
                connection.send_bytes(pickle.dumps((answers, text), protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:
                return
    finally:
        caches.close()
        if journal is not None:
            journal.close()


if __name__ == "__main__":
    # systemd's stop sends SIGTERM to every process of the service at once: the batch in hand is
    # finished, and the daemon ends this process by closing its socket (or its death kills it).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if (connection := connect(sys.argv, die_with_parent=True)) is not None:
        _serve(connection, sys.argv[3])
