"""One daemon per state folder: an advisory lock, and who holds it.

The daemon holds ``flock(LOCK_EX)`` on ``<state_dir>/daemon.lock`` for its
whole life and writes its PID into the file. The kernel drops the lock when
the process ends, ``kill -9`` included, so a stale lock file never blocks a
restart, and nothing has to be cleaned up. ``clipsort sort``, ``undo`` and
``train`` ask :func:`holder` first and refuse while a daemon serves the root.

OS caveats: flock is advisory (it only stops processes that ask, as every
clipsort command does) and belongs to the open file, not the process. On NFS
Linux emulates it with byte-range locks held on the server, which serves the
same purpose as long as every clipsort instance uses the same server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from clipsort.errors import ConfigError

LOCK_FILE = "daemon.lock"


def holder(state: Path) -> int | None:
    """The PID of the daemon serving ``state`` (0 when it has not written it yet), or None."""
    try:
        fd = os.open(state / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: no daemon ever ran here, or the folder is unreadable
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def refuse_if_served(state: Path, root: Path, command: str) -> None:
    """ConfigError when a daemon serves ``root``: a second writer would race it file for file."""
    pid = holder(state)
    if pid is not None:
        who = f"pid {pid}" if pid else "starting"
        raise ConfigError(
            f"a clipsort daemon ({who}) serves {str(root)!r}; stop it first to run `clipsort {command}` "
            "(it sorts the inboxes itself)"
        )


class InstanceLock:
    """The daemon's hold on its state folder, from :meth:`acquire` until the process ends."""

    def __init__(self, state: Path) -> None:
        self.path = state / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ConfigError naming the daemon that has it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder(self.path.parent)
            raise ConfigError(
                f"another clipsort daemon (pid {pid or 'unknown'}) already serves the state folder "
                f"{str(self.path.parent)!r}"
            ) from None
        # The lock is on this inode, so the PID is written into it in place, not replaced.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def intact(self) -> bool:
        """Whether the lock file this process holds is still the one at its path (not deleted or replaced).

        flock belongs to the open file: a state folder deleted under the daemon leaves it holding a
        lock on a file nobody can find, and a second daemon would take a lock of its own beside it.
        """
        if self._fd is None:
            return False
        try:
            here, held = os.stat(self.path, follow_symlinks=False), os.fstat(self._fd)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
