"""Ctrl-C (SIGINT) and SIGTERM for a one-shot command: stop promptly, never half-way through a batch.

While nothing is being placed (settings, the model loading, the decoding processes starting) a
signal raises :class:`KeyboardInterrupt` at once: what was opened closes on the way out and no file
has moved. Once files are being placed, a signal only asks to stop: no new batch is classified, the
batch already handed to the placer is placed whole, the batches decoding ahead are dropped (their
files stay in the inbox), and the command exits 130 as a shell expects of an interrupted program.

OS caveat: a terminal sends Ctrl-C's SIGINT to its whole foreground process group. The decoding
processes run in a process group of their own (:mod:`daemon.encode.decodeprocesses`), so the
signal reaches the command alone and the workers end when it closes them, not by the signal
half-way through their imports.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program ended by Ctrl-C
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupt:
    """The signal handlers of one command run (a context manager restoring the previous ones)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._raise = True
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers (a command run from a test's thread)
        for number in SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]  # what signal.signal returned

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.requested.set()
        if self._raise:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[threading.Event]:
        """While placing: a signal sets the event it yields instead of raising."""
        if self.requested.is_set():
            raise KeyboardInterrupt  # it came just before: nothing has been placed yet
        self._raise = False
        try:
            yield self.requested
        finally:
            self._raise = True
