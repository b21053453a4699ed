"""Thumbnails for the review page, made under the daemon's own decode limits and cached on disk.

A thumbnail is decoded by the same :class:`DecodeLimits` the daemon uses
(format allow-list, pixel cap, size cap; the file opened without following a
symlink) in a worker thread given ``timeout`` seconds: a file that takes
longer gets no thumbnail, and the page goes on. EXIF orientation is applied,
so a phone's portrait shows upright. Thumbnails are JPEGs in the state
folder's ``thumbnails/``, named by the source's content hash (or its stat
signature); past ``max_bytes`` the least recently used are deleted.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import threading
from pathlib import Path

from PIL import ImageOps

from clipsort.decode.images import DecodeLimits
from clipsort.errors import ClipsortError
from clipsort.store.mover import make_own_dir, read_inside, remove_own, write_atomic

SIZE = 256
THUMBNAILS_DIR = "thumbnails"


class Thumbnails:
    """The bounded on-disk cache of JPEG thumbnails."""

    def __init__(self, state: Path, limits: DecodeLimits, *, max_bytes: int, timeout: float) -> None:
        self.folder = state / THUMBNAILS_DIR
        self.limits = limits
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="clipsort-thumb")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def key_of(path: Path, sha256: str = "") -> str:
        """The cache name: the content hash when known, else the file's stat signature."""
        if sha256:
            return sha256
        status = path.lstat()
        signature = f"{path}:{status.st_dev}:{status.st_ino}:{status.st_size}:{status.st_mtime_ns}"
        return hashlib.sha256(signature.encode()).hexdigest()

    def get(self, path: Path, sha256: str = "", boundary: Path | None = None) -> bytes | None:
        """The thumbnail of the picture at ``path`` (None: not a picture clipsort may decode, or too slow).

        With ``boundary`` (the dataset's folder) the file is read through no symlink below it.
        """
        try:
            key = self.key_of(path, sha256)
        except OSError:
            return None
        cached = self.folder / f"{key}.jpg"
        try:
            data = cached.read_bytes()
            os.utime(cached)  # recently used: kept longest
            return data
        except OSError:
            pass
        future = self._pool.submit(self._make, path, boundary)
        try:
            data = future.result(timeout=self.timeout)
        except (concurrent.futures.TimeoutError, ClipsortError, OSError):
            return None
        self._store(cached, data)
        return data

    def _make(self, path: Path, boundary: Path | None) -> bytes:
        if boundary is None:
            picture = self.limits.load(path, SIZE)
        else:
            picture = self.limits.decode(read_inside(path, boundary, self.limits.max_bytes), SIZE)
        picture = ImageOps.exif_transpose(picture)
        picture.thumbnail((SIZE, SIZE))
        out = io.BytesIO()
        picture.convert("RGB").save(out, "JPEG", quality=85)
        return out.getvalue()

    def _store(self, cached: Path, data: bytes) -> None:
        with self._lock:
            make_own_dir(self.folder)
            write_atomic(cached, data, durable=False)  # a cache: a lost thumbnail is made again
            self._prune()

    def _prune(self) -> None:
        """Delete the least recently used thumbnails until the folder fits ``max_bytes``."""
        entries = []
        for entry in os.scandir(self.folder):
            try:
                status = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            entries.append((status.st_mtime, status.st_size, Path(entry.path)))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            remove_own(path)
            total -= size
