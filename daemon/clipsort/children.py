"""Fresh interpreters that clipsort starts for a share of its work, and the socket to each.

Used for the decoding processes (:mod:`clipsort.decode.decodeprocesses`) and the placing process
(:mod:`clipsort.sort.placing`). Each is ``python -m <module>``, not a ``multiprocessing`` child: a
fork of a process holding torch's threads can deadlock, and spawn and forkserver children re-import
the parent's ``__main__`` (the CLI, so torch: seconds and hundreds of MB per child). A child runs
in a process group of its own and ignores SIGINT: a Ctrl-C in the terminal goes to the terminal's
foreground group and is the parent's to handle.

OS caveat: ``process_group=0`` calls setpgid in the child after fork, and CPython's vfork path
resets the child's signal handlers to the default (which ends a process on SIGINT) and unblocks
its signals before that call, so a Ctrl-C in that window killed the child while it was still in
the terminal's group. So the thread that starts a child blocks SIGINT around the start; the child
inherits the mask through exec and unblocks SIGINT only once it ignores it (:func:`connect`),
which drops one still pending.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection, wait

from clipsort.heap import keep_freed_memory

STARTUP_SECONDS = 60.0  # a fresh interpreter's imports, on a loaded machine
READY = "ready"
_PR_SET_PDEATHSIG = 1  # prctl(2)


class Child:
    """``python -m module *args`` with one end of a socket pair as its first argument."""

    def __init__(self, module: str, *args: str) -> None:
        ours, theirs = socket.socketpair()
        # SIGINT stays blocked in this thread while the child starts, so the child is born with it
        # blocked (a mask survives fork and exec): see the module on the window before its setpgid.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with theirs:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", module, str(theirs.fileno()), str(os.getpid()), *args],
                    pass_fds=[theirs.fileno()],
                    stdin=subprocess.DEVNULL,
                    process_group=0,  # out of the terminal's group: Ctrl-C is the parent's
                )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.connection = Connection(ours.detach())

    def started(self) -> bool:
        """Whether it finished its imports and said so (else it is killed)."""
        if wait([self.connection], STARTUP_SECONDS):
            with contextlib.suppress(EOFError, OSError):
                if self.connection.recv() == READY:
                    return True
        self.kill()
        return False

    def how_it_ended(self) -> str:
        """Its exit, for a message (waits up to 5 s for it, else ``subprocess.TimeoutExpired``: call
        once its socket said it is gone)."""
        code = self.process.wait(5.0)
        return f"signal {-code}" if code < 0 else f"exit status {code}"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5.0)
        self.connection.close()

    @property
    def pid(self) -> int:
        return self.process.pid


def connect(argv: list[str], *, die_with_parent: bool = False) -> Connection | None:
    """In the child: SIGINT ignored, its socket to the parent (None if the parent is gone already).

    With ``die_with_parent`` the kernel kills this process (SIGKILL) when the thread of the parent
    that started it ends (prctl's PR_SET_PDEATHSIG: the *thread*, so a parent starts such a child
    from a thread that outlives it), so it never works on after a ``kill -9`` of the parent. The
    parent may have ended before the request was made: then its pid is no longer this one's parent.
    """
    # Ignored first, then unblocked: a Ctrl-C that reached this process before it left the
    # parent's group is still pending, and ignoring a pending signal discards it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    keep_freed_memory()  # a decoder's pictures, as the parent's batches (clipsort.heap)
    if die_with_parent:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != int(argv[2]):
            return None
    connection = Connection(int(argv[1]))
    try:
        connection.send(READY)  # imports done: from here a parent's timeout measures work alone
    except OSError:  # the parent ended while this one started (a command that stopped at an error)
        return None
    return connection
