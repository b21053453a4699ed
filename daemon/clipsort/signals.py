"""A flag a signal handler may set: no lock is taken, so a handler that interrupts another cannot deadlock.

CPython runs a signal's Python handler on the main thread between two bytecodes, including
while that thread is inside another handler or inside ``threading.Event.set``. ``Event`` guards
its flag with a plain (not re-entrant) ``Lock``, and ``set`` holds it while it calls
``notify_all``: a second signal landing there ran a handler that called ``set`` again and waited
for ever on a lock its own thread held. A daemon sent SIGHUPs in quick succession went silent
that way (the stack dump showed ``set`` nested in ``set``), and a twice-pressed Ctrl-C could
hang ``clipsort sort`` the same way.

A :class:`SignalFlag` is a bool and a non-blocking pipe: setting it is an assignment and a
one-byte write (a full pipe already wakes the waiter, so a failed write loses nothing), and
waiting on it is a ``select`` on the pipe. The bool is the truth; the pipe only wakes.
"""

from __future__ import annotations

import contextlib
import os
import select
import weakref


class SignalFlag:
    """An ``Event``-like flag that any thread and any signal handler may set; one thread waits on it."""

    def __init__(self) -> None:
        self._flag = False
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Closed only when nothing can set it any more: a write after an explicit close could land
        # in whatever file reused the descriptor's number.
        weakref.finalize(self, _close, self._read, self._write)

    def set(self) -> None:
        self._flag = True
        with contextlib.suppress(BlockingIOError):  # full: the waiter is woken already
            os.write(self._write, b"\0")

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False
        self._drain()

    def wait(self, timeout: float) -> bool:
        """Whether the flag is set, waiting up to ``timeout`` seconds for it (one waiter at a time)."""
        if not self._flag:
            select.select([self._read], [], [], timeout)  # EINTR is retried by Python (PEP 475)
            self._drain()
        return self._flag

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass


def _close(*descriptors: int) -> None:
    for descriptor in descriptors:
        os.close(descriptor)
