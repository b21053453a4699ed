"""Every file-system mutation clipsort makes goes through this module.

Guarantees: never overwrite, never follow a symlink, never write outside the
folder a caller names as the boundary, never leave a file half-moved or
present twice, whichever single step fails.

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

When the last step of a two-step move (the ``unlink`` after a ``link`` or a
copy) fails, the new name is removed again, so the file stays once, in its
old place, and the caller may retry. A crash between the steps is repaired
at the next start (:mod:`daemon.store.recovery`).

Every primitive call goes through :data:`SYSCALLS`, the one seam where tests
inject ``ENOSPC``, ``EIO`` and friends at the N-th step.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import structlog

from daemon.errors import ClipsortError, ConfigError

log = structlog.get_logger()

NAME_MAX = 255
MAX_SUFFIX = 100_000
TEMPORARY = re.compile(r"^\.clipsort-[0-9a-f]{32}\.tmp$")
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_COPY_CHUNK = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)  # glibc >= 2.28


class UnsafeDestination(ClipsortError):
    """A destination resolved outside the folder it must stay in."""


class Syscalls:
    """The primitive calls the mover makes, one method each."""

    def renameat2(self, source: Path, target: Path) -> None:
        """``rename`` that fails with EEXIST instead of replacing; EINVAL/ENOSYS where unsupported."""
        if _renameat2 is None:
            raise OSError(errno.ENOSYS, "renameat2 is not available")
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE):
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(source), None, str(target))

    def link(self, source: Path, target: Path) -> None:
        os.link(source, target, follow_symlinks=False)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def mkdir(self, path: Path, mode: int) -> None:
        os.mkdir(path, mode)

    def open(self, path: Path, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)

    def copy(self, reader: int, writer: int) -> None:
        """All of ``reader``'s bytes onto ``writer``."""
        while chunk := os.read(reader, _COPY_CHUNK):
            self.write(writer, chunk)

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def copystat(self, source: Path, target: Path) -> None:
        shutil.copystat(source, target, follow_symlinks=False)

    def replace(self, source: Path, target: Path) -> None:
        os.replace(source, target)


SYSCALLS = Syscalls()


def rename_noreplace(source: Path, target: Path) -> None:
    """Atomically rename ``source`` to ``target``; FileExistsError if taken."""
    try:
        SYSCALLS.renameat2(source, target)
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise
    SYSCALLS.link(source, target)
    try:
        SYSCALLS.unlink(source)
    except OSError:
        _take_back(target)
        raise


def _take_back(path: Path) -> None:
    """Remove the second name of a file whose move could not be finished."""
    try:
        SYSCALLS.unlink(path)
    except OSError as exc:  # two faults in a row: recovery at the next start settles it
        log.error("move_undo_failed", path=str(path), error=str(exc))


def _close_quietly(fd: int) -> None:
    """Close a descriptor only read from: an error there cannot have lost data."""
    try:
        SYSCALLS.close(fd)
    except OSError as exc:
        log.warning("close_failed", error=str(exc))


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = SYSCALLS.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        SYSCALLS.fsync(fd)
    finally:
        _close_quietly(fd)


def sync_folders(*folders: Path) -> None:
    """fsync folders whose rename already happened: a failure cannot undo it, so it is logged."""
    for folder in folders:
        try:
            fsync_dir(folder)
        except OSError as exc:
            log.warning("fsync_failed", folder=str(folder), error=str(exc))


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


def is_candidate(name: str, original: str) -> bool:
    """Whether :func:`place` could have given a file called ``original`` the name ``name``."""
    if name == original:
        return True
    match = re.search(r"_(\d+)(\.[^.]*)?$", name)
    return match is not None and candidate_name(original, int(match.group(1))) == name


def check_inside(boundary: Path, folder: Path) -> None:
    """Refuse a destination that resolves outside ``boundary`` (e.g. via a symlink)."""
    if not folder.resolve().is_relative_to(boundary.resolve()):
        raise UnsafeDestination(f"{str(folder)!r} lies outside {str(boundary)!r}")


def ensure_dir(folder: Path, boundary: Path, mode: int = 0o777) -> None:
    """Create ``folder`` (and parents) inside ``boundary``."""
    check_inside(boundary, folder)
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.is_dir():
            break
        missing.append(parent)
    for parent in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by someone else meanwhile
            SYSCALLS.mkdir(parent, mode)
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


def _write_durably(path: Path, fill: Callable[[int], None], mode: int = 0o600) -> None:
    """Create ``path`` (never an existing one), fill it and fsync it; on failure it is removed."""
    fd = SYSCALLS.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            fill(fd)
            SYSCALLS.fsync(fd)
        finally:
            SYSCALLS.close(fd)
    except BaseException:
        _take_back(path)
        raise


def _copy_into(source: Path, folder: Path, name: str) -> Path:
    """Copy ``source`` to a new, unique, durable name in ``folder`` without ever overwriting."""
    temporary = folder / f".clipsort-{uuid.uuid4().hex}.tmp"
    reader = SYSCALLS.open(source, os.O_RDONLY | os.O_NONBLOCK)
    try:
        _write_durably(temporary, lambda writer: SYSCALLS.copy(reader, writer))
        try:
            SYSCALLS.copystat(source, temporary)
            target = _rename_into(temporary, folder, name)
        except BaseException:
            _take_back(temporary)
            raise
    finally:
        _close_quietly(reader)
    try:
        fsync_dir(folder)  # the copy must be durable before the original may go
    except BaseException:
        _take_back(target)
        raise
    return target


def preview(source: Path, folder: Path) -> Path:
    """Where :func:`place` would put ``source`` now (for dry runs); changes nothing."""
    for attempt in range(MAX_SUFFIX):
        target = folder / candidate_name(source.name, attempt)
        if not target.exists():
            return target
    raise FileExistsError(errno.EEXIST, f"no free name for {source.name!r} in {str(folder)!r}")


def place(source: Path, folder: Path, *, boundary: Path, keep_source: bool = False, name: str = "") -> Path:
    """Move (or with ``keep_source``, copy) ``source`` into ``folder`` inside ``boundary``; its new path.

    The file keeps its name unless ``name`` gives another; a taken name gets a number.
    """
    ensure_dir(folder, boundary)
    target = move_into(source, folder, keep_source=keep_source, name=name)
    if not keep_source:
        sync_folders(folder, source.parent)
    return target


def move_into(source: Path, folder: Path, *, keep_source: bool = False, name: str = "") -> Path:
    """:func:`place` into a folder already made and checked by :func:`ensure_dir`, without the folder fsyncs.

    For batches: the caller checks each folder once and fsyncs each once
    (:func:`sync_folders`) before recording the moves as done.
    """
    name = name or source.name
    if keep_source:
        return _copy_into(source, folder, name)
    try:
        target = _rename_into(source, folder, name)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        target = _copy_into(source, folder, name)
        try:
            SYSCALLS.unlink(source)
        except BaseException:
            _take_back(target)
            raise
    return target


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete leftovers of copies a crash interrupted; the originals still exist (see ``_copy_into``)."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if TEMPORARY.match(entry.name) and entry.is_file(follow_symlinks=False):
            SYSCALLS.unlink(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def drop_second_copy(path: Path, kept: Path) -> None:
    """Unlink ``path`` because ``kept`` holds the same bytes (a move a crash left half-done)."""
    SYSCALLS.unlink(path)
    sync_folders(path.parent, kept.parent)


def write_new(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` unless it exists; True when written."""
    try:
        fd = SYSCALLS.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        SYSCALLS.write(fd, text.encode("utf-8"))
    finally:
        SYSCALLS.close(fd)
    return True


def discard_tree(folder: Path, boundary: Path) -> None:
    """Delete a staging folder clipsort made itself (a half-written model), inside ``boundary``.

    Only for folders clipsort created and nobody else has seen; never for a
    dataset's folders. Symlinks inside are removed, not followed (rmtree).
    """
    check_inside(boundary, folder)
    shutil.rmtree(folder, ignore_errors=True)


def make_state_dir(folder: Path) -> None:
    """Create clipsort's private state folder (caches, journal, status); ConfigError if it cannot be."""
    try:
        ensure_dir(folder, folder, mode=0o750)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise ConfigError(f"state_dir {str(folder)!r} cannot be used: {exc.strerror or exc}") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half of one.

    Replacing is the point here (a status file clipsort owns), unlike :func:`place`.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    _write_durably(temporary, lambda fd: SYSCALLS.write(fd, data), 0o644)
    try:
        SYSCALLS.replace(temporary, path)
    except BaseException:
        _take_back(temporary)
        raise
    fsync_dir(path.parent)
