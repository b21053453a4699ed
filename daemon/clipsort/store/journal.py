"""The durable record of every decision and move: SQLite (WAL) in the state folder.

Each placement is written twice: the intent (``planned``, with where the
file is going and its content hash) before the mover touches anything, and
the outcome (``moved``, ``rejected``, or ``cleared`` when the move failed
and the file stayed) after. A crash between the two leaves a ``planned``
row, which :mod:`clipsort.store.recovery` concludes at the next start by looking at
the file system. ``synchronous=FULL`` makes each commit survive a power cut,
so the intent is on disk before the move can be.

Paths are stored as bytes (``os.fsencode``): a file name need not be UTF-8.
Several processes may use one journal (the daemon, ``clipsort undo``):
SQLite's locking with a busy timeout serialises their writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
import structlog

from clipsort.errors import JournalError
from clipsort.statedb import add_column, connect, reclaim, replaced

log = structlog.get_logger()

JOURNAL_DB = "journal.sqlite3"

State = Literal["planned", "moved", "rejected", "cleared", "undone", "corrected"]
Placement = Literal["sorted", "review", "rejected"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    dataset TEXT NOT NULL,
    source BLOB NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mode TEXT NOT NULL,
    model TEXT NOT NULL,
    label TEXT,
    top3 TEXT NOT NULL,
    placement TEXT NOT NULL,
    folder BLOB NOT NULL,
    destination BLOB,
    state TEXT NOT NULL,
    reason TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    detail TEXT,
    companion INTEGER
);
CREATE INDEX IF NOT EXISTS decisions_state ON decisions (state);
CREATE INDEX IF NOT EXISTS decisions_created ON decisions (created);
CREATE INDEX IF NOT EXISTS decisions_destination ON decisions (destination);
CREATE INDEX IF NOT EXISTS decisions_sha256 ON decisions (sha256);
CREATE INDEX IF NOT EXISTS decisions_size ON decisions (dataset, size);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY,
    decision INTEGER REFERENCES decisions (id),
    dataset TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    path BLOB NOT NULL,
    old_label TEXT,
    new_label TEXT NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Intent:
    """What is about to happen to one file."""

    dataset: str
    source: Path
    sha256: str
    size: int
    mode: str
    model: str
    label: str | None
    top3: tuple[tuple[str, float], ...]
    placement: Placement
    folder: Path
    # A sidecar (IMG_1.xmp beside IMG_1.jpg) travels with its picture: the index, in the same
    # :meth:`Journal.plan` call, of the picture's intent (stored as that row's id, Entry.companion).
    companion: int | None = None


@dataclass(frozen=True)
class Entry:
    """One row of the journal."""

    id: int
    intent: Intent
    destination: Path | None
    state: State
    reason: str | None  # Review/: unknown or uncertain; Rejected/ and cleared: why
    created: float
    updated: float
    detail: str | None = None  # Review/: the numbers behind the reason
    companion: int | None = None  # a sidecar's picture's entry id (None for a picture)

    def as_dict(self) -> dict[str, object]:
        """The JSON form printed by ``clipsort history --json``."""
        intent = self.intent
        return {
            "id": self.id,
            "time": self.created,
            "dataset": intent.dataset,
            "source": str(intent.source),
            "sha256": intent.sha256,
            "size": intent.size,
            "mode": intent.mode,
            "model": intent.model,
            "class": intent.label,
            "top3": [list(pair) for pair in intent.top3],
            "placement": intent.placement,
            "destination": None if self.destination is None else str(self.destination),
            "state": self.state,
            "reason": self.reason,
            "detail": self.detail,
            "updated": self.updated,
            "sidecar_of": self.companion,
        }


@dataclass(frozen=True)
class Conclusion:
    """The outcome of one journal entry."""

    entry: int
    state: State
    destination: Path | None = None
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Correction:
    """A person's answer for a file clipsort had decided on."""

    id: int
    decision: int | None
    dataset: str
    sha256: str
    path: Path
    old_label: str | None
    new_label: str
    created: float


_VERSION_PREFIX = "corrections:"  # one counter per dataset in the counters table


def _where(*conditions: tuple[str, object]) -> tuple[str, tuple[object, ...]]:
    """A WHERE clause of the conditions whose value is given, and its parameters."""
    given = [(clause, value) for clause, value in conditions if value is not None]
    return " AND ".join(["1", *(clause for clause, _ in given)]), tuple(value for _, value in given)


def _path(value: bytes | None) -> Path | None:
    return None if value is None else Path(os.fsdecode(value))


def top3_text(top: Sequence[tuple[str, float]]) -> str:
    """A decision's top three as the journal keeps them: ``[["label", score], ...]``, six decimals."""
    return orjson.dumps(
        [[label, round(score, 6)] for label, score in top], option=orjson.OPT_SERIALIZE_NUMPY
    ).decode()


class Journal:
    """Thread-safe access to the journal file; one connection per process."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = folder / JOURNAL_DB
        self.clock = clock
        self._lock = threading.Lock()
        self._unwritten: list[Conclusion] = []
        self._db, self._inode = self._open()

    def _open(self) -> tuple[sqlite3.Connection, int]:
        try:
            db = connect(self.path, SCHEMA, synchronous="FULL", timeout=30)
            add_column(db, "decisions", "detail", "TEXT")  # journals from before the unknown gate
            add_column(db, "decisions", "companion", "INTEGER")  # journals from before sidecars
            db.execute("CREATE INDEX IF NOT EXISTS decisions_companion ON decisions (companion)")
            return db, os.stat(self.path).st_ino
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open the journal {str(self.path)!r}: {exc}") from None

    def _still_there(self) -> None:
        """Reopen (so recreate) the journal if its file was deleted or replaced under this process.

        SQLite keeps writing to a deleted file's inode without complaint, so
        every later entry would be lost with it; a stat per transaction notices.
        """
        if not replaced(self.path, self._inode):
            return
        # The new file first: while it cannot be made (its folder is gone too) the old connection
        # stays open, so readers get a JournalError, never "cannot operate on a closed database".
        db, inode = self._open()
        self._db.close()
        self._db, self._inode = db, inode
        log.error("journal_recreated", path=str(self.path), lost="every decision journalled before now")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._still_there()
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # a full or read-only state folder, mostly
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise JournalError(f"the journal {str(self.path)!r} cannot be written: {exc}") from None

    # --- writing ---------------------------------------------------------------------
    def plan(self, intents: Sequence[Intent]) -> list[int]:
        """Record intents before their moves, in one transaction and one statement; their row ids.

        The ids are chosen here, after the largest, as SQLite would for each row in turn (the
        write lock is held from ``BEGIN IMMEDIATE``): a sidecar's row names its picture's id, so
        the rows go in one ``executemany`` instead of one statement per row.
        """
        now = self.clock()
        with self._transaction() as db:
            (largest,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()
            ids = list(range(largest + 1, largest + 1 + len(intents)))
            db.executemany(
                "INSERT INTO decisions (id, dataset, source, sha256, size, mode, model, label, top3,"
                " placement, folder, state, created, updated, companion)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?, ?, ?)",
                [
                    (
                        row,
                        intent.dataset,
                        os.fsencode(intent.source),
                        intent.sha256,
                        intent.size,
                        intent.mode,
                        intent.model,
                        intent.label,
                        top3_text(intent.top3),
                        intent.placement,
                        os.fsencode(intent.folder),
                        now,
                        now,
                        None if intent.companion is None else ids[intent.companion],
                    )
                    for row, intent in zip(ids, intents, strict=True)
                ],
            )
        return ids

    def conclude(self, outcomes: Sequence[Conclusion]) -> None:
        """Record what became of entries (moved, rejected, cleared, undone), in one transaction.

        Outcomes that could not be written (:class:`JournalError`) are kept
        and written with the next call: their files have moved already, and a
        restart before then concludes them from the file system (recovery).
        """
        outcomes = [*self._unwritten, *outcomes]
        self._unwritten = outcomes
        now = self.clock()
        with self._transaction() as db:
            db.executemany(
                "UPDATE decisions SET state = ?, destination = COALESCE(?, destination),"
                " reason = COALESCE(?, reason), detail = COALESCE(?, detail), updated = ? WHERE id = ?",
                [
                    (
                        o.state,
                        None if o.destination is None else os.fsencode(o.destination),
                        o.reason,
                        o.detail,
                        now,
                        o.entry,
                    )
                    for o in outcomes
                ],
            )
        self._unwritten = []

    def correct(
        self, entry: Entry | None, dataset: str, sha256: str, path: Path, new_label: str
    ) -> Correction:
        """Record a person's class for a file (and mark the decision corrected)."""
        now = self.clock()
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO corrections (decision, dataset, sha256, path, old_label, new_label, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    None if entry is None else entry.id,
                    dataset,
                    sha256,
                    os.fsencode(path),
                    None if entry is None else entry.intent.label,
                    new_label,
                    now,
                ),
            )
            self._bump(db, dataset)
            if entry is not None:
                db.execute(
                    "UPDATE decisions SET state = 'corrected', destination = ?, updated = ? WHERE id = ?",
                    (os.fsencode(path), now, entry.id),
                )
            assert cursor.lastrowid is not None
        old = None if entry is None else entry.intent.label
        return Correction(
            cursor.lastrowid, None if entry is None else entry.id, dataset, sha256, path, old, new_label, now
        )

    # --- reading ---------------------------------------------------------------------
    def planned(self) -> list[Entry]:
        """Intents whose outcome was never written (a crash came between)."""
        return self._select("state = 'planned'", ())

    def entries(
        self,
        *,
        dataset: str | None = None,
        since: float | None = None,
        states: Sequence[State] = (),
        last: int | None = None,
        label: str | None = None,
        placement: Placement | None = None,
        sidecars: bool = False,
        before: int | None = None,
    ) -> list[Entry]:
        """Decisions, oldest first, filtered as asked (``last``: only the newest N; ``before``: an id).

        A sidecar's entry is listed only with ``sidecars``: undo, the page and the learner deal in
        pictures, and a sidecar goes wherever its picture goes (:meth:`sidecars_of`).
        """
        where, values = _where(
            ("dataset = ?", dataset),
            ("created >= ?", since),
            ("label = ?", label),
            ("placement = ?", placement),
            ("id < ?", before),
        )
        if not sidecars:
            where += " AND companion IS NULL"
        if states:
            where += f" AND state IN ({','.join('?' * len(states))})"
            values += tuple(states)
        return self._select(where, values, newest=last)

    def sidecars_of(self, entry: Entry) -> list[Entry]:
        """The sidecars that travelled with ``entry``'s picture."""
        return self._select("companion = ?", (entry.id,))

    def count(self, dataset: str | None = None, since: float | None = None) -> int:
        """How many decisions :meth:`entries` would list with these filters and no ``last``."""
        where, values = _where(("dataset = ?", dataset), ("created >= ?", since))
        with self._lock:
            row = self._db.execute(f"SELECT count(*) FROM decisions WHERE {where}", values).fetchone()
        return int(row[0])

    def by_id(self, entry_id: int) -> Entry | None:
        """The decision with that id (the review page names entries by id, never by path); None for no row."""
        if not 0 < entry_id < 2**63:  # SQLite's integers: a larger one is no row, not an overflow error
            return None
        found = self._select("id = ?", (int(entry_id),))
        return found[0] if found else None

    def at(self, path: Path) -> Entry | None:
        """The newest decision that put a file at ``path``."""
        found = self._select("destination = ?", (os.fsencode(path),), newest=1)
        return found[0] if found else None

    def destinations(self, paths: Sequence[Path]) -> set[Path]:
        """Those of ``paths`` that some decision put a file at (one query per thousand paths)."""
        found: set[Path] = set()
        for start in range(0, len(paths), 1000):  # below SQLite's limit on bound values
            # The answer is picked from ``paths`` by the bytes the rows hold: a burst's arrivals are
            # mostly clipsort's own, and a Path made from each row cost more than the query.
            by_bytes = {os.fsencode(path): path for path in paths[start : start + 1000]}
            marks = ",".join("?" * len(by_bytes))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT destination FROM decisions WHERE destination IN ({marks})", list(by_bytes)
                ).fetchall()
            found.update(by_bytes[row[0]] for row in rows)
        return found

    def placed_since(self, files: Sequence[tuple[Path, str]], since: float) -> set[tuple[Path, str]]:
        """Those of ``files`` (source, sha256) that a decision since ``since`` moved or rejected.

        A cluster run's ledger: a file it placed before a crash is never placed again, also where
        the source stays (``action = "copy"``). One query per thousand files, on the hash index.
        """
        found: set[tuple[Path, str]] = set()
        wanted = set(files)
        for start in range(0, len(files), 1000):
            chunk = [sha for _, sha in files[start : start + 1000]]
            with self._lock:
                rows = self._db.execute(
                    f"SELECT source, sha256 FROM decisions WHERE sha256 IN ({','.join('?' * len(chunk))})"
                    " AND created >= ? AND state IN ('moved', 'rejected') AND companion IS NULL",
                    (*chunk, since),
                ).fetchall()
            found |= {pair for row in rows if (pair := (Path(os.fsdecode(row[0])), row[1])) in wanted}
        return found

    def planned_into(self, folder: Path) -> list[Entry]:
        """Moves into ``folder`` whose outcome is not written yet (in flight, or cut off by a crash)."""
        return self._select("state = 'planned' AND folder = ?", (os.fsencode(folder),))

    def decided_size(self, dataset: str, size: int) -> bool:
        """Whether any decision in ``dataset`` was about a file of ``size`` bytes (a cheap pre-check)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT 1 FROM decisions WHERE dataset = ? AND size = ? LIMIT 1", (dataset, size)
            ).fetchall()
        return bool(rows)

    def latest(self, dataset: str, sha256: str) -> Entry | None:
        """The newest decision about a file with these bytes in ``dataset``."""
        found = self._select("dataset = ? AND sha256 = ?", (dataset, sha256), newest=1)
        return found[0] if found else None

    def corrections(
        self, *, dataset: str | None = None, label: str | None = None, since: float | None = None
    ) -> list[Correction]:
        """Corrections, oldest first, filtered as asked."""
        where, values = _where(("dataset = ?", dataset), ("new_label = ?", label), ("created >= ?", since))
        with self._lock:
            rows = self._db.execute(
                "SELECT id, decision, dataset, sha256, path, old_label, new_label, created"
                f" FROM corrections WHERE {where} ORDER BY id",
                values,
            ).fetchall()
        return [
            Correction(row[0], row[1], row[2], row[3], Path(os.fsdecode(row[4])), row[5], row[6], row[7])
            for row in rows
        ]

    def forget(
        self, *, dataset: str | None = None, label: str | None = None, since: float | None = None
    ) -> int:
        """Delete corrections (the files stay where they are); how many went."""
        where, values = _where(("dataset = ?", dataset), ("new_label = ?", label), ("created >= ?", since))
        with self._transaction() as db:
            touched = db.execute(f"SELECT DISTINCT dataset FROM corrections WHERE {where}", values).fetchall()
            self._bump(db, *(row[0] for row in touched))
            return db.execute(f"DELETE FROM corrections WHERE {where}", values).rowcount

    def uncorrect(self, correction: Correction, path: Path) -> None:
        """Take a correction back: its file lies at ``path`` again, where clipsort had put it."""
        with self._transaction() as db:
            db.execute("DELETE FROM corrections WHERE id = ?", (correction.id,))
            self._bump(db, correction.dataset)
            if correction.decision is not None:
                db.execute(
                    "UPDATE decisions SET state = 'moved', destination = ?, updated = ? WHERE id = ?",
                    (os.fsencode(path), self.clock(), correction.decision),
                )

    def writable(self) -> bool:
        """Whether a write transaction commits now (probing a state folder that was full)."""
        try:
            with self._transaction() as db:
                db.execute("INSERT OR REPLACE INTO counters VALUES ('probe', 0)")
        except JournalError:
            return False
        return True

    def compact(self, concluded_before: float) -> int:
        """Delete concluded entries last changed before ``concluded_before``; how many went.

        Kept: entries still ``planned`` (recovery needs them) and those a
        correction refers to (what was corrected stays explainable). The
        space is returned to the file system (see :mod:`clipsort.statedb`).
        """
        with self._transaction() as db:
            deleted = db.execute(
                "DELETE FROM decisions WHERE updated < ? AND state != 'planned' AND id NOT IN"
                " (SELECT decision FROM corrections WHERE decision IS NOT NULL)",
                (concluded_before,),
            ).rowcount
            if deleted:
                db.execute(
                    "INSERT INTO counters VALUES ('compacted', ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (deleted,),
                )
        if deleted:
            with self._lock:
                reclaim(self._db)
        return deleted

    def corrections_versions(self) -> dict[str, int]:
        """Per dataset, a number that grows when any process adds or forgets one of its corrections.

        Counters, not the table's size: an addition and a forgetting between
        two looks must still show as a change.
        """
        # fetchall, not fetchone: an unfinished statement would hold its read
        # transaction open, and with it a WAL snapshot that never sees other processes' commits.
        with self._lock:
            rows = self._db.execute(
                "SELECT name, value FROM counters WHERE name LIKE ?", (f"{_VERSION_PREFIX}%",)
            ).fetchall()
        return {str(name).removeprefix(_VERSION_PREFIX): int(value) for name, value in rows}

    @staticmethod
    def _bump(db: sqlite3.Connection, *datasets: str) -> None:
        db.executemany(
            "INSERT INTO counters VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET value = value + 1",
            [(f"{_VERSION_PREFIX}{dataset}",) for dataset in datasets],
        )

    def _select(self, where: str, values: Sequence[object], newest: int | None = None) -> list[Entry]:
        query = (
            "SELECT id, dataset, source, sha256, size, mode, model, label, top3, placement, folder,"
            " destination, state, reason, created, updated, detail, companion"
            f" FROM decisions WHERE {where} ORDER BY id"
        )
        if newest is not None:
            query = f"SELECT * FROM ({query} DESC LIMIT {int(newest)}) ORDER BY id"
        with self._lock:
            rows = self._db.execute(query, tuple(values)).fetchall()
        return [
            Entry(
                id=row[0],
                intent=Intent(
                    dataset=row[1],
                    source=Path(os.fsdecode(row[2])),
                    sha256=row[3],
                    size=row[4],
                    mode=row[5],
                    model=row[6],
                    label=row[7],
                    top3=tuple((str(label), float(score)) for label, score in json.loads(row[8])),
                    placement=row[9],
                    folder=Path(os.fsdecode(row[10])),
                ),
                destination=_path(row[11]),
                state=row[12],
                reason=row[13],
                created=row[14],
                updated=row[15],
                detail=row[16],
                companion=row[17],
            )
            for row in rows
        ]
