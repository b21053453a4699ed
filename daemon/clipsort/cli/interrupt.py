"""Ctrl-C (SIGINT) and SIGTERM for a one-shot command: stop promptly, never half-way through a batch.

A signal only asks to stop; the command looks at that request between its steps (after its
imports, once the decoding processes started, once the model loaded, once the classes are
indexed) and, from then on, between batches: no new batch is classified, the batch already handed
to the placer is placed whole, the batches decoding ahead are dropped (their files stay in the
inbox), and the command exits 130 as a shell expects of an interrupted program. A second signal
raises :class:`KeyboardInterrupt` at once, wherever the command is (nothing half-moved either: the
placer finishes its batch while the command unwinds).

Why not raise on the first signal: CPython marks a KeyboardInterrupt that surfaces inside code run
by ``exec`` of a string (dataclasses build their methods so, while torch and transformers import)
as unhandled, and kills the process with SIGINT at exit even after the command caught it: the
exit status was -2 instead of 130 when the signal landed during the model's loading.

OS caveat: a terminal sends Ctrl-C's SIGINT to its whole foreground process group. The decoding
processes run in a process group of their own (:mod:`clipsort.decode.decodeprocesses`), so the
signal reaches the command alone and the workers end when it closes them, not by the signal
half-way through their imports.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from clipsort.signals import SignalFlag

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program ended by Ctrl-C
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupt:
    """The signal handlers of one command run (a context manager restoring the previous ones)."""

    def __init__(self) -> None:
        self.requested = SignalFlag()  # see clipsort.signals: an Event could deadlock a double Ctrl-C
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
        if self.requested.is_set():
            raise KeyboardInterrupt  # the second: the person means it
        self.requested.set()

    def check(self) -> None:
        """Between two steps: stop here (KeyboardInterrupt) if a signal asked to."""
        if self.requested.is_set():
            raise KeyboardInterrupt
