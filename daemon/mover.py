"""Every file-system mutation clipsort makes goes through this module.

Guarantees: never overwrite, never follow a symlink, never write outside the
folder a caller names as the boundary, never leave a file half-moved.

Why not ``shutil.move``: on any ``OSError`` from ``rename`` it silently falls
back to copy-and-delete, and ``os.rename`` itself replaces an existing
destination. Instead:

- same file system: ``renameat2(RENAME_NOREPLACE)`` (atomic, fails with
  EEXIST instead of replacing); where the file system lacks it (EINVAL on
  some network and FUSE file systems), ``link`` + ``unlink``, which is also
  no-clobber. A taken name is retried as ``name_1.ext``, ``name_2.ext``, ...
- across file systems (EXDEV): copy into a temporary ``O_EXCL`` file in the
  destination folder, fsync it, no-clobber rename it into place, fsync the
  folder, and only then unlink the source.

Folders are fsynced after each rename so the move survives a power cut.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from pathlib import Path

from daemon.errors import ClipsortError

NAME_MAX = 255
MAX_SUFFIX = 100_000
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)  # glibc >= 2.28


class UnsafeDestination(ClipsortError):
    """A destination resolved outside the folder it must stay in."""


def rename_noreplace(source: Path, target: Path) -> None:
    """Atomically rename ``source`` to ``target``; FileExistsError if taken."""
    if _renameat2 is not None:
        result = _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    os.link(source, target, follow_symlinks=False)
    os.unlink(source)


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def candidate_name(name: str, attempt: int) -> str:
    """``name`` itself, then ``stem_1.ext``, ``stem_2.ext``..., within NAME_MAX bytes."""
    if attempt == 0:
        return name
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    tail = f"_{attempt}{ext}"
    room = NAME_MAX - len(os.fsencode(tail))
    while len(os.fsencode(stem)) > room:
        stem = stem[:-1]  # whole characters, so a multi-byte one is never split
    return stem + tail


def check_inside(boundary: Path, folder: Path) -> None:
    """Refuse a destination that resolves outside ``boundary`` (e.g. via a symlink)."""
    if not folder.resolve().is_relative_to(boundary.resolve()):
        raise UnsafeDestination(f"{str(folder)!r} lies outside {str(boundary)!r}")


def ensure_dir(folder: Path, boundary: Path) -> None:
    """Create ``folder`` (and parents) inside ``boundary``."""
    check_inside(boundary, folder)
    folder.mkdir(parents=True, exist_ok=True)
    check_inside(boundary, folder)


def _rename_into(source: Path, folder: Path, name: str) -> Path:
    for attempt in range(MAX_SUFFIX):
        target = folder / candidate_name(name, attempt)
        try:
            rename_noreplace(source, target)
        except FileExistsError:
            continue
        return target
    raise FileExistsError(errno.EEXIST, f"no free name for {name!r} in {str(folder)!r}")


def _copy_into(source: Path, folder: Path, name: str) -> Path:
    """Copy ``source`` to a new, unique name in ``folder`` without ever overwriting."""
    temporary = folder / f".clipsort-{uuid.uuid4().hex}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    reader = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        writer = os.open(temporary, flags, 0o600)
        try:
            with os.fdopen(reader, "rb", closefd=False) as src, os.fdopen(writer, "wb", closefd=False) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.fsync(writer)
        finally:
            os.close(writer)
        shutil.copystat(source, temporary, follow_symlinks=False)
        target = _rename_into(temporary, folder, name)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        os.close(reader)
    fsync_dir(folder)
    return target


def preview(source: Path, folder: Path) -> Path:
    """Where :func:`place` would put ``source`` now (for dry runs); changes nothing."""
    for attempt in range(MAX_SUFFIX):
        target = folder / candidate_name(source.name, attempt)
        if not target.exists():
            return target
    raise FileExistsError(errno.EEXIST, f"no free name for {source.name!r} in {str(folder)!r}")


def place(source: Path, folder: Path, *, boundary: Path, keep_source: bool = False) -> Path:
    """Move (or with ``keep_source``, copy) ``source`` into ``folder``; return its new path."""
    ensure_dir(folder, boundary)
    if keep_source:
        return _copy_into(source, folder, source.name)
    try:
        target = _rename_into(source, folder, source.name)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        target = _copy_into(source, folder, source.name)
        source.unlink()
    fsync_dir(folder)
    fsync_dir(source.parent)
    return target


def write_new(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` unless it exists; True when written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return True


def make_state_dir(folder: Path) -> None:
    """Create clipsort's private state folder (caches, status)."""
    folder.mkdir(mode=0o750, parents=True, exist_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half of one.

    Replacing is the point here (a status file clipsort owns), unlike :func:`place`.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
