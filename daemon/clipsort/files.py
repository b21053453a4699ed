"""Listing the files that are candidates for classification.

The scanner is the source of truth about what sits in a folder (the watcher
only hints). It never follows symlinks and never returns special files:
opening a FIFO blocks forever, and a symlink could point anywhere.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import structlog

from clipsort.config import DEFAULT_IGNORE

log = structlog.get_logger()


def is_ignored(name: str, patterns: Sequence[str]) -> bool:
    """Temporary or hidden names that must not be touched (still being written).

    The patterns are matched as one compiled regular expression (``fnmatchcase``'s own
    translation of each): six ``fnmatchcase`` calls per name were a tenth of a busy inbox's
    listing.
    """
    return _ignoring(tuple(patterns)).match(name) is not None


@functools.cache
def _ignoring(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns) or "(?!)")


MAX_DEPTH = 32  # folders below an inbox; deeper ones are left alone (a 1,000-deep chain broke os.walk)
_said_too_deep: set[Path] = set()  # deep folders already logged (once each, bounded)


def scan(
    folder: Path,
    ignore: Sequence[str] = DEFAULT_IGNORE,
    max_depth: int = MAX_DEPTH,
    *,
    inodes: dict[Path, int] | None = None,
    known: frozenset[tuple[str, int]] = frozenset(),
) -> Iterator[Path]:
    """Regular files under ``folder`` (at most ``max_depth`` folders down), in sorted order per folder.

    Iterative, with an explicit stack: a chain of thousands of nested folders (moved in by a
    person or a sync tool) once raised RecursionError here and stopped every later scan. A folder
    deeper than ``max_depth`` is logged once and left alone. A ``folder`` that is itself a symlink
    (an inbox linked elsewhere) yields nothing: its files are not the dataset's, and they are never
    moved in. With ``inodes``, each file's inode is put there too (free from the directory entry).
    A file whose (path, inode) is in ``known`` is left out, before a ``Path`` is made for it.
    """
    if folder.is_symlink():
        log.warning("symlinked_folder_skipped", folder=str(folder), target=os.readlink(folder))
        return
    stack: list[tuple[Path, int]] = [(folder, 0)]
    while stack:
        here, depth = stack.pop()
        files, folders = entries(here, ignore, inodes=inodes, known=known)
        yield from files
        below: list[tuple[Path, int]] = []
        for path in folders:
            if depth < max_depth:
                below.append((path, depth + 1))
            else:
                _too_deep(path, max_depth)
        stack.extend(reversed(below))  # depth first, in name order, as the recursive walk went


def changed_since(paths: Iterable[Path], since: float) -> list[Path]:
    """Those of ``paths`` whose inode changed at or after ``since`` (epoch seconds, ``st_ctime``):
    a file renamed or linked there, or made there, since then. Gone ones are left out."""
    found = []
    for path in paths:
        try:
            if path.lstat().st_ctime >= since:
                found.append(path)
        except OSError:
            continue  # moved on meanwhile: wherever it went, that is another arrival
    return found


def entries(
    folder: Path,
    ignore: Sequence[str] = DEFAULT_IGNORE,
    *,
    inodes: dict[Path, int] | None = None,
    known: frozenset[tuple[str, int]] = frozenset(),
) -> tuple[list[Path], list[Path]]:
    """The regular files and the folders directly in ``folder``, each in name order (and with
    ``inodes``, each file's inode put there), less those ``known`` by (path, inode).

    Ignored names are skipped; symlinks and special files are left alone (and said so); a folder
    that cannot be listed gives nothing (gone: quietly; otherwise with a warning).
    """
    try:
        with os.scandir(folder) as listing:
            # The entry's inode comes with it (d_ino): no stat. A folder is never known.
            kept = (
                [entry for entry in listing if (entry.path, entry.inode()) not in known]
                if known
                else list(listing)
            )
        found = sorted(kept, key=lambda entry: entry.name)
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        log.warning("scan_failed", folder=str(folder), error=str(exc))
        return [], []
    files: list[Path] = []
    folders: list[Path] = []
    for entry in found:
        if is_ignored(entry.name, ignore):
            continue
        path = Path(entry.path)
        if entry.is_symlink():
            left_alone(path, symlink=True)
        elif entry.is_dir(follow_symlinks=False):
            folders.append(path)
        elif entry.is_file(follow_symlinks=False):
            files.append(path)
            if inodes is not None:
                inodes[path] = entry.inode()
        else:
            left_alone(path, symlink=False)
    return files, folders


def _too_deep(path: Path, max_depth: int) -> None:
    if path in _said_too_deep:
        return
    if len(_said_too_deep) > 10_000:
        _said_too_deep.clear()
    _said_too_deep.add(path)
    log.warning("folder_too_deep", folder=str(path), max_depth=max_depth, action="left alone")


def left_alone(path: Path, *, symlink: bool) -> None:
    """Say that a symlink or a special file (a FIFO, a socket, a device) stays where it is, unread.

    Said by a scan and, for one an event announces, by readiness: a FIFO dropped into the inbox is
    reported when it arrives, not only at the next rescan.
    """
    log.info("symlink_skipped" if symlink else "special_file_skipped", path=str(path))


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, read without following a symlink."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
