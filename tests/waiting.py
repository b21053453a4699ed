"""Waiting for things that happen on other threads or in other processes, with a timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, every: float = 0.05) -> None:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {getattr(predicate, '__doc__', '')}")
        time.sleep(every)


def live_threads(prefixes: tuple[str, ...]) -> list[str]:
    """Names of live threads whose names start with one of ``prefixes``."""
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes) and t.is_alive()]


def wait_until_dead_unreaped(pid: int, timeout: float = 20.0) -> None:
    """Wait until child ``pid`` has died but is not yet reaped (a zombie).

    A zombie keeps its /proc entry and start time, so decoding pools starting meanwhile in tests
    beside this one (pytest-xdist) still count its shared-memory slots as a live owner's: what a
    SIGKILL left can be checked before the test reaps the process, with no race."""

    def zombie() -> bool:
        """the process is a zombie"""
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return False

    wait_until(zombie, timeout=timeout, every=0.01)
