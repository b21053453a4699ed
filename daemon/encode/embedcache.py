"""A disk cache of embeddings, so restarts and class edits re-encode only what changed.

Vectors are keyed by the model's identity and the file's *content* hash, so
a renamed or copied reference is not re-encoded, and a replaced file (same
name, new bytes) is. Hashing every reference on every start would cost a
full read of each file, so content hashes are memoised by
``(device, inode, size, mtime_ns)``: an unchanged file is only ``stat``-ed.
Stored in SQLite (WAL) in the state folder.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from daemon.encode.vectors import Vectors
from daemon.ingest.scanner import content_hash

EMBEDDINGS_DB = "embeddings.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    model TEXT NOT NULL, key TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, key)
);
CREATE TABLE IF NOT EXISTS file_hashes (stat_key TEXT PRIMARY KEY, sha256 TEXT NOT NULL);
"""


def text_key(text: str, templates: Sequence[str]) -> str:
    """The cache key of a prompt-ensembled description."""
    return "text:" + hashlib.sha256("\x00".join([text, *templates]).encode()).hexdigest()


class EmbeddingCache:
    """Thread-safe SQLite store of vectors and of file-content hashes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def file_key(self, path: Path) -> str:
        """The content hash of ``path``, read from disk only when its stat changed."""
        status = path.lstat()
        stat_key = f"{status.st_dev}:{status.st_ino}:{status.st_size}:{status.st_mtime_ns}"
        with self._lock:  # fetchall: see Journal.corrections_versions
            rows = self._db.execute(
                "SELECT sha256 FROM file_hashes WHERE stat_key = ?", (stat_key,)
            ).fetchall()
        if rows:
            return str(rows[0][0])
        digest = content_hash(path)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?)", (stat_key, digest))
        return digest

    def get(self, model: str, keys: Iterable[str]) -> dict[str, Vectors]:
        """The stored vectors among ``keys`` for ``model``."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Vectors] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, vector FROM vectors WHERE model = ? AND key IN ({marks})", (model, *chunk)
                ).fetchall()
                found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        return found

    def put(self, model: str, vectors: Mapping[str, Vectors]) -> None:
        """Store ``vectors`` for ``model`` (one transaction)."""
        rows = [(model, key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in vectors.items()]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")
