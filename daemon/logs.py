"""structlog set-up: readable on a terminal, JSON lines otherwise (journald).

Logs always go to stderr so that ``--json`` output on stdout stays clean.
Each output keeps to one time zone and says which: JSON lines carry UTC
(ISO 8601 with ``Z``), a terminal shows local time with the zone's name, as
``clipsort history`` does (:func:`local_time`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from datetime import datetime
from pathlib import PurePath
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "console", "json"]

# The canonical line per file (pipeline.Outcome.as_dict) and the keys a terminal shows of it; JSON
# keeps everything (destination, runner-up, margin, top three, model).
FILE_EVENTS = frozenset({"sorted", "review", "rejected"})
BRIEF_KEYS = ("dataset", "file", "class", "score", "reason")


def local_time(epoch: float | None = None, *, seconds_only: bool = False) -> str:
    """Local ``YYYY-MM-DD HH:MM:SS ZONE`` (or ``HH:MM:SS ZONE``) of ``epoch`` (default now)."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch).astimezone()
    return moment.strftime("%H:%M:%S %Z" if seconds_only else "%Y-%m-%d %H:%M:%S %Z")


def _local_stamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["timestamp"] = local_time(seconds_only=True)
    return event


def _brief(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A file's line on a terminal: its name, the class and the score, nothing a person must scroll."""
    if event.get("event") not in FILE_EVENTS or "file" not in event:
        return event
    kept = {key: event[key] for key in ("event", "level", "timestamp") if key in event}
    for key in BRIEF_KEYS:
        if event.get(key) is not None:
            kept[key] = PurePath(event[key]).name if key == "file" else event[key]
    if isinstance(kept.get("score"), float):
        kept["score"] = round(kept["score"], 3)
    return kept


def configure_logging(fmt: LogFormat = "auto", level: str = "info") -> None:
    """(Re)configure structlog; safe to call again, e.g. after SIGHUP."""
    stream = sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shaping: list[structlog.typing.Processor] = (
        [structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.JSONRenderer()]
        if as_json
        else [
            _local_stamp,
            _brief,
            structlog.dev.ConsoleRenderer(
                colors=stream.isatty(),
                sort_keys=False,
                pad_event_to=len(max(FILE_EVENTS, key=len)),
                pad_level=False,
            ),
        ]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            *shaping,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
