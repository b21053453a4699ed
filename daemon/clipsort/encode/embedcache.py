"""A disk cache of embeddings, so restarts and class edits re-encode only what changed.

Vectors are keyed by the model's identity and the file's *content* hash, so
a renamed or copied reference is not re-encoded, and a replaced file (same
name, new bytes) is. Hashing every reference on every start would cost a
full read of each file, so content hashes are memoised by
``(device, inode, size, mtime_ns)``: an unchanged file is only ``stat``-ed.
Stored in SQLite (WAL) in the state folder.

Every row carries when it was last used; :meth:`EmbeddingCache.prune` deletes
those unused for longer than the retention window, so the cache holds the
inbox files of that window (a correction later than that re-encodes its file)
and the references in use, which are used again at every rebuild.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from clipsort.encode.vectors import Vectors
from clipsort.files import content_hash
from clipsort.statedb import add_column, connect, reclaim, replaced

log = structlog.get_logger()

EMBEDDINGS_DB = "embeddings.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    model TEXT NOT NULL, key TEXT NOT NULL, vector BLOB NOT NULL, used REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (model, key)
);
CREATE TABLE IF NOT EXISTS file_hashes (
    stat_key TEXT PRIMARY KEY, sha256 TEXT NOT NULL, used REAL NOT NULL DEFAULT 0
);
"""
_TOUCH_EVERY = 3600.0  # a hash hit rewrites its row's time at most this often: reads stay reads


@dataclass(frozen=True)
class Pruned:
    """Rows :meth:`EmbeddingCache.prune` deleted."""

    vectors: int
    file_hashes: int


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def text_key(text: str, templates: Sequence[str]) -> str:
    """The cache key of a prompt-ensembled description."""
    return "text:" + hashlib.sha256("\x00".join([text, *templates]).encode()).hexdigest()


class EmbeddingCache:
    """Thread-safe SQLite store of vectors and of file-content hashes."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._failing = False
        self._db = connect(path, "", synchronous="NORMAL")
        for table in ("vectors", "file_hashes"):  # a cache made before rows had a time: the columns first
            if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table,)).fetchall():
                add_column(self._db, table, "used", "REAL NOT NULL DEFAULT 0")
        self._db.executescript(SCHEMA)
        self._inode = os.stat(path).st_ino

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def reopen(self) -> None:
        """A fresh (empty) cache file at ``path``, after the state folder was deleted under this process."""
        with self._lock:
            self._reopen()

    def _reopen(self) -> None:
        """(Under the lock.) The new file first: while it cannot be made, the old connection stays."""
        fresh = connect(self.path, SCHEMA, synchronous="NORMAL")
        self._db.close()
        self._db, self._inode = fresh, os.stat(self.path).st_ino

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def file_key(self, path: Path) -> str:
        """The content hash of ``path``, read from disk only when its stat changed."""
        status = path.lstat()
        stat_key = f"{status.st_dev}:{status.st_ino}:{status.st_size}:{status.st_mtime_ns}"
        now = self.clock()
        with self._lock:  # fetchall: see Journal.corrections_versions
            rows = self._db.execute(
                "SELECT sha256 FROM file_hashes WHERE stat_key = ?", (stat_key,)
            ).fetchall()
            if rows:
                self._db.execute(
                    "UPDATE file_hashes SET used = ? WHERE stat_key = ? AND used < ?",
                    (now, stat_key, now - _TOUCH_EVERY),
                )
        if rows:
            return str(rows[0][0])
        digest = content_hash(path)
        with self._lock, self._best_effort():
            self._db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?)", (stat_key, digest, now))
        return digest

    @contextlib.contextmanager
    def _best_effort(self) -> Iterator[None]:
        """A write the cache can do without (a full or read-only state folder): logged once, then skipped.

        A cache only saves work, so failing to write one must not fail what
        is being classified; the next write that succeeds ends the quiet.
        """
        try:
            yield
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if not self._failing:
                log.error(
                    "cache_write_failed", path=str(self.path), error=str(exc), effect="vectors not kept"
                )
            self._failing = True
        else:
            self._failing = False

    def get(self, model: str, keys: Iterable[str]) -> dict[str, Vectors]:
        """The stored vectors among ``keys`` for ``model``."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Vectors] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = self._db.execute(
                    f"SELECT key, vector FROM vectors WHERE model = ? AND key IN ({_marks(chunk)})",
                    (model, *chunk),
                ).fetchall()
                found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
                if rows:  # what is asked for again is in use: it outlives the retention window
                    hits = [key for key, _ in rows]
                    self._db.execute(
                        f"UPDATE vectors SET used = ? WHERE model = ? AND key IN ({_marks(hits)})",
                        (self.clock(), model, *hits),
                    )
        return found

    def models_of(self, key: str) -> list[str]:
        """The models that have a vector stored for ``key``, most recently used first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT model FROM vectors WHERE key = ? ORDER BY used DESC", (key,)
            ).fetchall()
        return [str(row[0]) for row in rows]

    def put(self, model: str, vectors: Mapping[str, Vectors]) -> None:
        """Store ``vectors`` for ``model`` (one transaction)."""
        now = self.clock()
        rows = [(model, key, np.asarray(v, dtype=np.float32).tobytes(), now) for key, v in vectors.items()]
        with self._lock, self._best_effort():
            # Written where readers look: a file deleted under this process (its state folder
            # removed; the placing process has no supervisor to call reopen()) is made again.
            if replaced(self.path, self._inode):
                self._reopen()
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def prune(self, unused_since: float) -> Pruned:
        """Delete vectors and hashes unused since ``unused_since`` (a :attr:`clock` time); free the space."""
        with self._lock:
            self._db.execute("BEGIN")
            vectors = self._db.execute("DELETE FROM vectors WHERE used < ?", (unused_since,)).rowcount
            hashes = self._db.execute("DELETE FROM file_hashes WHERE used < ?", (unused_since,)).rowcount
            self._db.execute("COMMIT")
            if vectors or hashes:
                reclaim(self._db)
        return Pruned(vectors, hashes)
