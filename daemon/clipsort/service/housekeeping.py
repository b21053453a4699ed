"""Keeping the state folder's size flat: pruning to the retention windows, measuring what is left.

Without it every sorted file left about 1 KB behind for good (a journal row,
a vector, a file hash): some 30 GB after ten million files with ViT-B/32.
The window is what a person can still act on: a correction by hand move
needs the journal entry (``journal_retention_days``); a vector only saves
re-encoding the file then (``vector_retention_days``).
"""

from __future__ import annotations

from dataclasses import dataclass

from clipsort.config import Settings
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.service.status import folder_size
from clipsort.store.journal import Journal

DAY = 86_400.0


@dataclass(frozen=True)
class Swept:
    """What one round of housekeeping deleted, and the state folder's size after it."""

    vectors: int
    file_hashes: int
    journal_entries: int
    state_bytes: int


def sweep(settings: Settings, cache: EmbeddingCache, journal: Journal, now: float) -> Swept:
    """Prune the cache and the journal to their windows as of ``now`` (the stores' clock)."""
    pruned = cache.prune(unused_since=now - settings.vector_retention_days * DAY)
    entries = journal.compact(concluded_before=now - settings.journal_retention_days * DAY)
    return Swept(pruned.vectors, pruned.file_hashes, entries, folder_size(settings.state_path))
