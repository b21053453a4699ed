"""Waiting for things that happen on other threads or in other processes, with a timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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
