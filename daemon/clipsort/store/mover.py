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
at the next start (:mod:`clipsort.store.recovery`).

Every step inside a dataset is relative to directory descriptors. A folder
is opened component by component from the dataset's own folder, each with
``O_DIRECTORY | O_NOFOLLOW`` (:func:`open_folder`), and the rename, link,
temporary file and fsync all name their file relative to those descriptors.
A folder swapped for a symlink between the check and the move (say by a
``renameat2(RENAME_EXCHANGE)`` loop) therefore cannot redirect a file: either
the walk meets the symlink and refuses (:class:`UnsafeDestination`), or it
holds the real folder, wherever that is renamed to meanwhile. Linux's
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` would do the walk in one
call, but Python has no binding for it and the per-component walk gives the
same guarantee on every kernel.

A move can also confirm that the file it moved is the one that was read
(``expect``): a file replaced under the same name after it was classified is
put back into its folder under a free name and :class:`FileReplaced` raised,
so it is classified again and the journal never records another file's hash.

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
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from clipsort.errors import ClipsortError, ConfigError, FileReplaced, UnsafeDestination

log = structlog.get_logger()

NAME_MAX = 255
MAX_SUFFIX = 100_000
TEMPORARY = re.compile(r"^\.clipsort-[0-9a-f]{32}\.tmp$")
AT_FDCWD = -100  # "relative to the working directory": for clipsort's own folders
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY
_RENAME_NOREPLACE = 1
_COPY_CHUNK = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)  # glibc >= 2.28
if _renameat2 is not None:  # declared: ctypes then converts each argument without guessing its type
    _renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    _renameat2.restype = ctypes.c_int


@dataclass(frozen=True)
class At:
    """A name inside an open folder: what every primitive call is given.

    ``path`` names the same file for messages (and tests); no call resolves it. It is joined only
    when asked for: a placed file's source never is, unless something goes wrong.
    """

    dir_fd: int
    name: str
    folder: Path  # the open folder's path; Path() for a name looked up as given

    @property
    def path(self) -> Path:
        return self.folder / self.name

    @classmethod
    def own(cls, path: Path) -> At:
        """A path in clipsort's own folders (the state folder, a staging folder), looked up as given."""
        return cls(AT_FDCWD, os.fspath(path), Path())


@dataclass(frozen=True)
class Folder:
    """An open directory; :meth:`at` names a file in it. Its opener closes it (:func:`close_folder`)."""

    fd: int
    path: Path

    def at(self, name: str) -> At:
        return At(self.fd, name, self.path)


Expect = Callable[[os.stat_result], bool]
"""Whether the file a move is about to file (its ``lstat``) is the one that was read."""


class Syscalls:
    """The primitive calls the mover makes, one method each."""

    def renameat2(self, source: At, target: At) -> None:
        """``rename`` that fails with EEXIST instead of replacing; EINVAL/ENOSYS where unsupported."""
        if _renameat2 is None:
            raise OSError(errno.ENOSYS, "renameat2 is not available")
        if _renameat2(
            source.dir_fd,
            os.fsencode(source.name),
            target.dir_fd,
            os.fsencode(target.name),
            _RENAME_NOREPLACE,
        ):
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), str(source.path), None, str(target.path))

    def link(self, source: At, target: At) -> None:
        os.link(
            source.name,
            target.name,
            src_dir_fd=source.dir_fd,
            dst_dir_fd=target.dir_fd,
            follow_symlinks=False,
        )

    def unlink(self, entry: At) -> None:
        os.unlink(entry.name, dir_fd=entry.dir_fd)

    def mkdir(self, entry: At, mode: int) -> None:
        os.mkdir(entry.name, mode, dir_fd=entry.dir_fd)

    def open(self, entry: At, flags: int, mode: int = 0o600) -> int:
        return os.open(entry.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=entry.dir_fd)

    def anchor(self, path: Path) -> int:
        """Open the folder a walk starts from; its own path is the configured one, symlinks and all."""
        return os.open(path, _DIRECTORY | os.O_CLOEXEC)

    def lstat(self, entry: At) -> os.stat_result:
        return os.stat(entry.name, dir_fd=entry.dir_fd, follow_symlinks=False)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

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

    def copystat(self, reader: int, writer: int) -> None:
        """The reader's permission bits and times onto the writer (what ``shutil.copystat`` does by path)."""
        status = os.fstat(reader)
        os.fchmod(writer, stat.S_IMODE(status.st_mode))
        os.utime(writer, ns=(status.st_atime_ns, status.st_mtime_ns))

    def replace(self, source: At, target: At) -> None:
        os.replace(source.name, target.name, src_dir_fd=source.dir_fd, dst_dir_fd=target.dir_fd)


SYSCALLS = Syscalls()


def _parts_beneath(folder: Path, boundary: Path) -> tuple[str, ...]:
    """The names leading from ``boundary`` down to ``folder``, read from the paths alone."""
    try:
        parts = folder.relative_to(boundary).parts
    except ValueError:
        raise UnsafeDestination(f"{str(folder)!r} lies outside {str(boundary)!r}") from None
    if ".." in parts:
        raise UnsafeDestination(f"{str(folder)!r} climbs out of {str(boundary)!r}")
    return parts


def open_folder(folder: Path, boundary: Path, *, create: bool = False, mode: int = 0o777) -> Folder:
    """Open ``folder`` from ``boundary`` one component at a time, never through a symlink.

    With ``create`` missing components are made (each relative to its
    parent's descriptor). Raises :class:`UnsafeDestination` for a component
    that is a symlink, ``OSError`` for one that is missing or not a folder.
    """
    parts = _parts_beneath(folder, boundary)
    try:
        fd = SYSCALLS.anchor(boundary)
    except FileNotFoundError:
        if not create:
            raise
        make_own_dir(boundary, mode)
        fd = SYSCALLS.anchor(boundary)
    here = boundary
    for part in parts:
        fd = _descend(Folder(fd, here), part, create=create, mode=mode)
        here = here / part
    return Folder(fd, folder)


def _descend(parent: Folder, name: str, *, create: bool, mode: int) -> int:
    """Folder ``name`` in ``parent`` opened (made first if missing and ``create``); closes ``parent``."""
    entry = parent.at(name)
    try:
        try:
            return _open_dir(entry)
        except FileNotFoundError:
            if not create:
                raise
        with contextlib.suppress(FileExistsError):  # made by someone else meanwhile
            SYSCALLS.mkdir(entry, mode)
        return _open_dir(entry)
    finally:
        _close_quietly(parent.fd)


def _open_dir(entry: At) -> int:
    """Open a folder, never a symlink to one.

    Linux answers ``O_DIRECTORY | O_NOFOLLOW`` on a symlink with ENOTDIR
    (not ELOOP, as a plain ``O_NOFOLLOW`` gets), the same as for a regular
    file; an ``lstat`` tells the two apart for the message.
    """
    try:
        return SYSCALLS.open(entry, _DIRECTORY)
    except NotADirectoryError:
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(SYSCALLS.lstat(entry).st_mode):
                raise UnsafeDestination(
                    f"{str(entry.path)!r} is a symlink; clipsort never writes through one"
                ) from None
        raise


def close_folder(folder: Folder) -> None:
    """Close a folder :func:`open_folder` opened."""
    _close_quietly(folder.fd)


@contextlib.contextmanager
def opened(folder: Path, boundary: Path, *, create: bool = False, mode: int = 0o777) -> Iterator[Folder]:
    """:func:`open_folder` for the length of a ``with`` block."""
    handle = open_folder(folder, boundary, create=create, mode=mode)
    try:
        yield handle
    finally:
        close_folder(handle)


def read_inside(path: Path, boundary: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path`` under ``boundary``, reached through no symlink.

    For readers that must not be led out of a dataset (the review page's thumbnails): every folder
    from ``boundary`` down is opened relative to its parent's descriptor, as the mover's moves are,
    and the file itself with O_NOFOLLOW, so a folder swapped for a symlink meanwhile is refused too.
    OSError (EFBIG) past ``limit`` bytes.
    """
    with opened(path.parent, boundary) as folder:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder.fd)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, f"{path.name!r} is not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"{path.name!r} is over {limit} bytes")
    return data


class OpenFolders:
    """Each folder a batch touches, opened once (or the reason it cannot be); closed together at the end.

    Keyed by the folder's name as a string: a batch asks per file, and a string's hash is cached where
    a fresh ``Path``'s (each file's ``.parent``) is computed from its parts on every lookup.
    """

    def __init__(self) -> None:
        self._open: dict[str, Folder | OSError | ClipsortError] = {}
        self._touched: dict[str, Folder] = {}

    def get(self, folder: Path, boundary: Path, *, create: bool) -> Folder:
        key = os.fspath(folder)
        if key not in self._open:
            try:
                self._open[key] = open_folder(folder, boundary, create=create)
            except (OSError, ClipsortError) as exc:
                self._open[key] = exc
        return self._found(key)

    def parent_of(self, path: Path, boundary: Path) -> Folder:
        """The folder ``path`` is in (never created): looked up by name, its ``Path`` made once."""
        key = os.path.dirname(os.fspath(path))
        return self._found(key) if key in self._open else self.get(path.parent, boundary, create=False)

    def _found(self, key: str) -> Folder:
        found = self._open[key]
        if not isinstance(found, Folder):
            raise found
        return found

    def touch(self, *folders: Folder) -> None:
        """Note folders whose entries changed, for :meth:`sync_touched`."""
        for folder in folders:
            self._touched[os.fspath(folder.path)] = folder

    def sync_touched(self) -> None:
        """fsync each changed folder once (see :func:`sync_folders`), in the order of their paths."""
        sync_folders(*sorted(self._touched.values(), key=lambda folder: folder.path))
        self._touched.clear()

    def close(self) -> None:
        for found in self._open.values():
            if isinstance(found, Folder):
                close_folder(found)
        self._open.clear()


def _rename_noreplace(source: At, target: At) -> None:
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


def rename_noreplace(source: Path, target: Path) -> None:
    """Atomically rename ``source`` to ``target`` in clipsort's own folders; FileExistsError if taken."""
    _rename_noreplace(At.own(source), At.own(target))


def _take_back(entry: At) -> None:
    """Remove the second name of a file whose move could not be finished."""
    try:
        SYSCALLS.unlink(entry)
    except OSError as exc:  # two faults in a row: recovery at the next start concludes it
        log.error("move_undo_failed", path=str(entry.path), error=str(exc))


def _close_quietly(fd: int) -> None:
    """Close a descriptor only read from: an error there cannot have lost data."""
    try:
        SYSCALLS.close(fd)
    except OSError as exc:
        log.warning("close_failed", error=str(exc))


def _fsync_own_dir(folder: Path) -> None:
    """Make the entries of one of clipsort's own folders durable."""
    fd = SYSCALLS.open(At.own(folder), _DIRECTORY)
    try:
        SYSCALLS.fsync(fd)
    finally:
        _close_quietly(fd)


def sync_folders(*folders: Folder) -> None:
    """fsync folders whose rename already happened: a failure cannot undo it, so it is logged."""
    for folder in folders:
        try:
            SYSCALLS.fsync(folder.fd)
        except OSError as exc:
            log.warning("fsync_failed", folder=str(folder.path), error=str(exc))


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


def make_own_dir(folder: Path, mode: int = 0o777) -> None:
    """Create one of clipsort's own folders (and its parents); for dataset folders see :func:`ensure_dir`."""
    missing = []
    for parent in [folder, *folder.parents]:
        if parent.is_dir():
            break
        missing.append(parent)
    for parent in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made by someone else meanwhile
            SYSCALLS.mkdir(At.own(parent), mode)


def ensure_dir(folder: Path, boundary: Path, mode: int = 0o777) -> None:
    """Create ``folder`` (and the folders leading to it) inside ``boundary``, through no symlink."""
    with opened(folder, boundary, create=True, mode=mode):
        pass


def first_free(taken: Callable[[int], bool], *, first_taken: bool = False) -> int:
    """An attempt whose :func:`candidate_name` is free, in O(log n) lookups of ``taken``.

    ``first_taken``: attempt 0 is known to be taken (a rename there just failed), so it is not
    looked up again.

    Why: a folder that holds ``image.jpg`` and ``image_1.jpg`` to ``image_999.jpg`` (chat apps and
    browsers name every download the same) made the next one try a thousand names, each a system
    call, so a long run of one name cost time quadratic in its length. The run's end is found by
    doubling, then halving. Taken names are assumed to form a run from 0; where a person removed
    some, a later free one is found instead of the first gap, and the rename there still never
    overwrites (a name taken meanwhile is skipped by the caller's loop).
    """
    if not first_taken and not taken(0):
        return 0
    below, above = 0, 1  # taken(below); above is tried next
    while above < MAX_SUFFIX and taken(above):
        below, above = above, min(2 * above, MAX_SUFFIX)
    while above - below > 1:  # taken(below), not taken(above) (or above == MAX_SUFFIX)
        middle = (below + above) // 2
        below, above = (middle, above) if taken(middle) else (below, middle)
    return above


def _rename_into(source: At, folder: Folder, name: str) -> At:
    def taken(attempt: int) -> bool:
        try:
            SYSCALLS.lstat(folder.at(candidate_name(name, attempt)))
        except OSError:  # not there, or cannot tell: the rename there says which
            return False
        return True

    try:  # the common case, a name not taken, costs one rename and no lookup
        _rename_noreplace(source, target := folder.at(name))
        return target
    except FileExistsError:
        pass
    for attempt in range(first_free(taken, first_taken=True), MAX_SUFFIX):
        target = folder.at(candidate_name(name, attempt))
        try:
            _rename_noreplace(source, target)
        except FileExistsError:
            continue
        return target
    raise FileExistsError(errno.EEXIST, f"no free name for {name!r} in {str(folder.path)!r}")


def _write_durably(entry: At, fill: Callable[[int], None], mode: int = 0o600, *, sync: bool = True) -> None:
    """Create ``entry`` (never an existing one), fill it and fsync it (unless not ``sync``); on failure
    it is removed."""
    fd = SYSCALLS.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            fill(fd)
            if sync:
                SYSCALLS.fsync(fd)
        finally:
            SYSCALLS.close(fd)
    except BaseException:
        _take_back(entry)
        raise


def _replaced(source: At) -> FileReplaced:
    return FileReplaced(f"{str(source.path)!r} was replaced by another file after it was read")


def _copy_into(source: At, folder: Folder, name: str, expect: Expect | None) -> At:
    """Copy ``source`` to a new, unique, durable name in ``folder`` without ever overwriting."""
    temporary = folder.at(f".clipsort-{uuid.uuid4().hex}.tmp")
    reader = SYSCALLS.open(source, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if expect is not None and not expect(SYSCALLS.fstat(reader)):
            raise _replaced(source)  # nothing written yet

        def fill(writer: int) -> None:
            SYSCALLS.copy(reader, writer)
            SYSCALLS.copystat(reader, writer)

        _write_durably(temporary, fill)
        try:
            target = _rename_into(temporary, folder, name)
        except BaseException:
            _take_back(temporary)
            raise
    finally:
        _close_quietly(reader)
    try:
        SYSCALLS.fsync(folder.fd)  # the copy must be durable before the original may go
    except BaseException:
        _take_back(target)
        raise
    return target


def _confirm(moved: At, source: At, expect: Expect) -> None:
    """Put a renamed file back where it came from unless it is the one that was read."""
    if expect(SYSCALLS.lstat(moved)):
        return
    try:
        back = _rename_into(moved, Folder(source.dir_fd, source.folder), source.name)
    except OSError as exc:
        log.error("replaced_file_not_put_back", path=str(moved.path), error=str(exc))
        raise _replaced(source) from None
    log.warning("file_replaced", file=str(source.path), put_back_as=str(back.path))
    raise _replaced(source)


def preview(source: Path, folder: Path) -> Path:
    """Where :func:`place` would put ``source`` now (for dry runs); changes nothing."""
    attempt = first_free(lambda k: os.path.lexists(folder / candidate_name(source.name, k)))
    if attempt < MAX_SUFFIX:
        return folder / candidate_name(source.name, attempt)
    raise FileExistsError(errno.EEXIST, f"no free name for {source.name!r} in {str(folder)!r}")


def place(
    source: Path,
    folder: Path,
    *,
    boundary: Path,
    keep_source: bool = False,
    name: str = "",
    expect: Expect | None = None,
) -> Path:
    """Move (or with ``keep_source``, copy) ``source`` into ``folder``, both in ``boundary``; its new path.

    The file keeps its name unless ``name`` gives another; a taken name gets a number.
    """
    with opened(source.parent, boundary) as origin, opened(folder, boundary, create=True) as destination:
        target = move_into(
            origin.at(source.name), destination, keep_source=keep_source, name=name, expect=expect
        )
        if not keep_source:
            sync_folders(destination, origin)
    return target


def move_into(
    source: At, folder: Folder, *, keep_source: bool = False, name: str = "", expect: Expect | None = None
) -> Path:
    """:func:`place` between folders already open, without the folder fsyncs.

    For batches: the caller opens each folder once (:class:`OpenFolders`) and
    fsyncs each once (:func:`sync_folders`) before recording the moves as done.
    """
    name = name or source.name
    if keep_source:
        return _copy_into(source, folder, name, expect).path
    try:
        target = _rename_into(source, folder, name)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        target = _copy_into(source, folder, name, expect)
        try:
            SYSCALLS.unlink(source)
        except BaseException:
            _take_back(target)
            raise
        return target.path
    if expect is not None:
        _confirm(target, source, expect)
    return target.path


def remove_temporaries(folder: Path, boundary: Path) -> list[Path]:
    """Delete leftovers of copies a crash interrupted; the originals still exist (see ``_copy_into``)."""
    try:
        handle = open_folder(folder, boundary)
    except (OSError, UnsafeDestination):
        return []  # missing, or a symlink clipsort never wrote through
    removed = []
    try:
        for name in os.listdir(handle.fd):
            entry = handle.at(name)
            if TEMPORARY.match(name) and stat.S_ISREG(SYSCALLS.lstat(entry).st_mode):
                SYSCALLS.unlink(entry)
                removed.append(entry.path)
    finally:
        close_folder(handle)
    return removed


def drop_second_copy(path: Path, kept: Path, boundary: Path) -> None:
    """Unlink ``path`` because ``kept`` holds the same bytes (a move a crash left half-done)."""
    with opened(path.parent, boundary) as origin, opened(kept.parent, boundary) as destination:
        SYSCALLS.unlink(origin.at(path.name))
        sync_folders(origin, destination)


def write_new(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` unless it exists; True when written."""
    try:
        fd = SYSCALLS.open(At.own(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
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
    _parts_beneath(folder, boundary)
    shutil.rmtree(folder, ignore_errors=True)


def make_state_dir(folder: Path) -> None:
    """Create clipsort's private state folder (caches, journal, status); ConfigError if it cannot be."""
    try:
        make_own_dir(folder, mode=0o750)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise ConfigError(f"state_dir {str(folder)!r} cannot be used: {exc.strerror or exc}") from None


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so readers see the old or the new file, never half of one.

    Replacing is the point here (a status file clipsort owns), unlike :func:`place`. Not
    ``durable`` (a cache, remade when lost): nothing is fsynced, which a page of thumbnails would
    otherwise pay twice per picture.
    """
    temporary = At.own(path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp"))
    _write_durably(temporary, lambda fd: SYSCALLS.write(fd, data), 0o644, sync=durable)
    try:
        SYSCALLS.replace(temporary, At.own(path))
    except BaseException:
        _take_back(temporary)
        raise
    if durable:
        _fsync_own_dir(path.parent)


def remove_own(path: Path) -> None:
    """Delete a file of clipsort's own (a cached thumbnail); one already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        SYSCALLS.unlink(At.own(path))


def remove_own_dir(path: Path) -> None:
    """Delete an empty folder of clipsort's own (a finished cluster run's); one already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)
