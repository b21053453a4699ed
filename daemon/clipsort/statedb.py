"""Opening clipsort's SQLite files so that deleted rows give their space back.

SQLite never shrinks a file on its own: a deleted row's page goes on a free
list inside the file. With ``auto_vacuum = INCREMENTAL`` those pages can be
handed back to the file system a few at a time (``PRAGMA
incremental_vacuum``), without the full rewrite (and the second copy of the
file on disk) that ``VACUUM`` needs. The setting only takes effect on a file
with no tables yet, or after one ``VACUUM``: :func:`connect` does that once
for a file an older clipsort made.

In WAL mode the ``-wal`` file also grows with every write until a checkpoint
runs with no reader in the way; :func:`reclaim` truncates it after a prune.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def connect(path: Path, schema: str, *, synchronous: str, timeout: float = 5.0) -> sqlite3.Connection:
    """A WAL connection to ``path`` with ``schema`` applied and incremental vacuum on."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout)
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table of a new file
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(schema)
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
        # An older file: once, so that later prunes can shrink it. Busy (another process
        # is reading it): the next open tries again.
        with contextlib.suppress(sqlite3.OperationalError):
            db.execute("VACUUM")
    return db


def add_column(db: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    """Add ``column`` to ``table`` of a file made before the column existed."""
    known = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    if column not in known:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def reclaim(db: sqlite3.Connection) -> None:
    """Return freed pages to the file system and truncate the write-ahead log."""
    # Through executescript: each sqlite3_step of this pragma frees one page, and a pragma
    # that returns no rows is stepped once by execute(), which so freed a single page.
    db.executescript("PRAGMA incremental_vacuum;")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def replaced(path: Path, inode: int) -> bool:
    """Whether the file a connection opened as inode ``inode`` was deleted or replaced at ``path``.

    SQLite keeps writing to a deleted file's inode without complaint, where no reader looks, so a
    writer that must survive its state folder being deleted checks this before it writes.
    """
    try:
        return os.stat(path).st_ino != inode
    except FileNotFoundError:
        return True
