"""Folders made once per machine and kept in the user's cache: the tests' and benchmarks' models.

A model made by code is deterministic on one machine: the same code and library versions give the
same weights (another CPU's vector instructions round differently, and a training amplifies that:
``tests.digits``). So each is kept under ``$XDG_CACHE_HOME`` (or ``~/.cache``), named by a hash of
what makes it, and the next session, benchmark or CI run on the machine takes it instead of
training or writing it again. A new version of that code or of those libraries names a new folder;
making one removes the folders of the same name unused for :data:`UNUSED_DAYS` (each use marks its
folder used), so the cache holds what recent checkouts use rather than every version ever made.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version
from pathlib import Path

# The libraries that write a model's folder: their versions are part of every key.
WRITERS = ("torch", "transformers", "tokenizers")
# A kept folder (or a half-made one a killed run left) unused this long goes when its name's next
# folder is made. Long enough for an old checkout's session the same week to find its own.
UNUSED_DAYS = 7


def kept_folder(
    kind: str,
    name: str,
    inputs: Iterable[bytes],
    make: Callable[[Path], object],
    *,
    packages: Iterable[str] = WRITERS,
) -> Path:
    """``<cache>/<kind>/<name>-<key>``, made by ``make`` where it does not exist yet.

    The key hashes ``inputs`` (what makes the folder: its code, its arguments) and the versions of
    ``packages``. ``make`` writes into a folder whose parent does not exist yet, inside a temporary
    folder beside the kept one, which is then renamed into place: a process that finds the folder
    sees it whole. Processes that need it at once (pytest-xdist workers, a benchmark beside the
    tests) take turns on a lock file per name, so the second takes the first's folder rather than
    making its own (a training is tens of seconds of CPU on a machine the other tests share).
    """
    key = hashlib.sha256(b"".join(inputs))
    for package in packages:
        key.update(f"{package}={version(package)}".encode())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / kind
    kept = base / f"{name}-{key.hexdigest()[:16]}"
    if (kept / "config.json").exists():
        with contextlib.suppress(OSError):  # marks it used (a read-only cache just is not pruned)
            os.utime(kept)
        return kept
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f".{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when its process dies
        if not (kept / "config.json").exists():  # the process before us may have made it
            work = Path(tempfile.mkdtemp(prefix=".making-", dir=base))
            made = work / "models" / name
            make(made)
            with contextlib.suppress(OSError):  # made meanwhile by a checkout without the lock: the same
                made.rename(kept)
            shutil.rmtree(work, ignore_errors=True)
            prune(base, name, keep=kept)
    return kept


def prune(base: Path, name: str, *, keep: Path) -> None:
    """Remove ``base``'s ``<name>-*`` folders and half-made ``.making-*`` ones unused for
    :data:`UNUSED_DAYS`, never ``keep``."""
    cutoff = time.time() - UNUSED_DAYS * 86400
    ours = re.compile(rf"{re.escape(name)}-[0-9a-f]{{16}}|\.making-.*")
    for folder in base.iterdir():
        with contextlib.suppress(OSError):  # another process removed it meanwhile
            if ours.fullmatch(folder.name) and folder != keep and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder)
