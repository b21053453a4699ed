"""The daemon's learner thread: files arriving in class folders, looked at in rounds.

What an arrival teaches is :mod:`clipsort.learn.corrections`'s (pure of threads);
this module is the thread that feeds it, which only the running daemon has.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from clipsort.config import Mailbox, Settings
from clipsort.encode.embeddings import Embedder
from clipsort.files import changed_since, scan
from clipsort.layout import DatasetLayout
from clipsort.learn.corrections import ARRIVALS_PER_ROUND, IN_FLIGHT_SECONDS, ROUND_LINGER_SECONDS, observe
from clipsort.store.journal import Journal
from clipsort.work import drain

log = structlog.get_logger()

# Files the placer reported filing, kept per dataset until a look at its Dataset/ or their own event:
# a burst's are all there for the look after it. Beyond this many (a burst of bursts with Dataset/
# never still) the rest are looked up in the journal as before: a bound on memory (about 200 bytes
# each), not on correctness.
PLACED_KEPT = 50_000


class Learner:
    """The daemon's thread that turns arrivals in class folders into corrections."""

    def __init__(self, settings: Settings, journal: Journal, embedder: Embedder) -> None:
        self._setup = Mailbox((settings, embedder))
        self._journal = journal
        # A file that arrived, None (look at every file), or epoch seconds (the files of Dataset/
        # whose inode changed since then: see scan).
        self._arrivals: queue.Queue[tuple[str, Path | float | None]] = queue.Queue(maxsize=10_000)
        self._in_flight: dict[tuple[str, Path], float] = {}  # arrivals to look at again: first seen
        # Per dataset, path -> inode of each file the placer filed that no look or event has met yet.
        self._placed: dict[str, dict[str, int]] = {}
        self._placed_lock = threading.Lock()  # the placer's thread adds, the learner's takes
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="clipsort-learner", daemon=True)

    @property
    def settings(self) -> Settings:
        """The settings of this round (taken between rounds, on the learner's thread)."""
        return self._setup.current[0]

    @property
    def embedder(self) -> Embedder:
        """The embedder of this round: the model and decode limits in force."""
        return self._setup.current[1]

    def reconfigure(self, settings: Settings, embedder: Embedder) -> None:
        """Hand over reloaded settings and the embedder made with them; used from the next round."""
        self._setup.post((settings, embedder))

    def offer(self, dataset: str, path: Path) -> None:
        """A file arrived in a class folder (handed on by the daemon's reactions thread); never blocks."""
        try:
            self._arrivals.put_nowait((dataset, path))
        except queue.Full:
            log.warning("learner_full", file=str(path))

    def placed(self, files: Sequence[tuple[str, Path, int]]) -> None:
        """Files clipsort itself just filed, as (dataset, path, inode); from the placer's thread.

        Why: after a burst, the look at what changed in ``Dataset/`` meets every file the burst
        filed, and each cost a ``Path``, an ``lstat`` and a journal lookup only to be found
        clipsort's own (the learner's whole share of the burst, issue 37). A file still at the path
        it was filed at, with the inode it was filed with (a rename keeps it), is left out of that
        look before a ``Path`` is made for it. A person's move gives it another path, and a file a
        person put in its place another inode, so both are still looked at. The one thing missed:
        a file of a person's, under the same name, that got the deleted file's inode back from the
        file system between the filing and the look (seconds), which is no correction of its class.
        While ``Dataset/`` is watched each file's own event reaches the learner and takes it out
        again (:meth:`_filed`), so what is kept is what no event has brought: a burst's.
        """
        with self._placed_lock:
            for dataset, path, inode in files:
                own = self._placed.setdefault(dataset, {})
                if len(own) < PLACED_KEPT:
                    own[os.fspath(path)] = inode

    def _filed(self, dataset: str, arrived: Sequence[Path], look: bool) -> frozenset[tuple[str, int]]:
        """(path, inode) of what the placer filed in ``dataset`` for a ``look`` at its ``Dataset/``,
        all of it forgotten here; without one, only the files that ``arrived`` by their own events
        (which the journal judges) are forgotten, and nothing is returned."""
        with self._placed_lock:
            if look:
                return frozenset(self._placed.pop(dataset, {}).items())
            own = self._placed.get(dataset)
            if own:
                for path in arrived:
                    own.pop(os.fspath(path), None)
            return frozenset()

    def scan(self, dataset: str, changed_since: float | None = None) -> None:
        """Look at every file in ``Dataset/`` and ``Clases/``: arrivals before the watch or while down.

        With ``changed_since`` (epoch seconds), only at the files in ``Dataset/`` whose inode changed
        since then (a rename, a link or a new file sets ``st_ctime``): what arrived while its watch
        was dropped (the placer filling it, see :mod:`clipsort.ingest.watcher`).
        """
        try:
            self._arrivals.put_nowait((dataset, changed_since))
        except queue.Full:
            log.warning("learner_full", dataset=dataset)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._setup.take()
            # Whatever queued up meanwhile is looked up together: a burst of sorted
            # files costs a few journal queries, not two per file.
            arrivals = drain(self._arrivals, 0.2, ARRIVALS_PER_ROUND, linger=ROUND_LINGER_SECONDS)
            by_dataset: dict[str, list[Path | float | None]] = {}
            for dataset, path in [*arrivals, *self._in_flight]:  # those in flight: once a round
                by_dataset.setdefault(dataset, []).append(path)
            for dataset, paths in by_dataset.items():
                self._learn(dataset, paths)

    def _learn(self, dataset: str, arrived: list[Path | float | None]) -> None:
        """Look at the files that ``arrived`` in ``dataset`` (None: everything in Dataset/ and Clases/;
        a time: what changed in Dataset/ since then)."""
        layout = DatasetLayout(self.settings.root / dataset)
        paths = [path for path in arrived if isinstance(path, Path)]
        times = [when for when in arrived if isinstance(when, float)]
        changed: list[Path] | None = None  # with times: what changed in Dataset/ since the first
        # Taken before listing: what was filed before the look.
        own = self._filed(dataset, paths, look=None in arrived or bool(times))
        if None in arrived:
            paths += scan(layout.sorted, self.settings.ignore_patterns, known=own)
            paths += scan(layout.classes, self.settings.ignore_patterns)
        elif times:
            # The kernel stamps ctime from a clock that may lag time.time() by a tick: a second's slack.
            since = min(times) - 1.0
            changed = changed_since(scan(layout.sorted, self.settings.ignore_patterns, known=own), since)
            paths += changed
        in_flight: list[Path] = []
        try:
            # What is recorded reaches the classifier through the journal (Worker._follow_corrections).
            observe(paths, layout, self._journal, self.embedder, self.settings, in_flight)
        except Exception as exc:  # one odd file must not end learning for good
            log.exception("learner_failed", dataset=dataset, error=str(exc))
        if changed is not None:  # the look after a busy Dataset/ (see scan): done
            log.info("sorted_looked_at", dataset=dataset, changed=len(changed))
        now = time.monotonic()
        seen = {path: self._in_flight.pop((dataset, path), now) for path in paths}
        for path in in_flight:
            # A placer stuck longer than this left its batch planned; recovery concludes it at start.
            if now - seen[path] < IN_FLIGHT_SECONDS:
                self._in_flight[(dataset, path)] = seen[path]
