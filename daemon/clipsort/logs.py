"""structlog set-up: readable on a terminal, JSON lines otherwise (journald).

Logs always go to stderr so that ``--json`` output on stdout stays clean.
Each output keeps to one time zone and says which: JSON lines carry UTC
(ISO 8601 with ``Z``), a terminal shows local time with the zone's name, as
``clipsort history`` does (:func:`local_time`).
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping, Sequence
from datetime import datetime
from pathlib import PurePath
from typing import Any, Literal, TextIO

import numpy as np
import orjson
import structlog

LogFormat = Literal["auto", "console", "json"]

# The canonical line per file (pipeline.Outcome.as_dict) and the keys a terminal shows of it; JSON
# keeps everything (destination, runner-up, margin, top three, model).
# A dry run's lines say what would happen (`would sort`), never that it did.
DRY_RUN_EVENTS = {"sorted": "would sort", "review": "would review", "rejected": "would reject"}
FILE_EVENTS = frozenset({"sorted", "review", "rejected", *DRY_RUN_EVENTS.values()})
# A held file's reason comes with its numbers (`reference 0.649 < 0.952`): a few words that say why.
BRIEF_KEYS = ("dataset", "file", "class", "guess", "score", "reason", "detail")


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


def json_line(event: Any, default: Any = None) -> str:
    """One JSON line (the log's and ``--json``'s), with orjson: half the standard library's cost.

    numpy scalars are written as numbers and non-string keys as strings; whatever else it cannot
    write (a path, an exception) goes through structlog's fallback (``repr``) rather than failing.
    """
    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    try:
        return orjson.dumps(event, default=default, option=options).decode()
    except orjson.JSONEncodeError:
        # A file name that is not UTF-8 (os.fsdecode keeps its bytes as surrogates), which orjson
        # refuses, or an integer past 64 bits: the standard library escapes both (\udcff), and
        # os.fsencode of the value read back gives the name's bytes.
        return json.dumps(event, default=functools.partial(_number_or, default))


def _number_or(default: Any, value: Any) -> Any:
    """A numpy scalar as the Python number it holds, anything else as ``default`` makes it."""
    return value.item() if isinstance(value, np.generic) else default(value)


_LEVEL = [logging.INFO]  # the configured threshold, for log_many (configure_logging sets it)
_LEVELS = {name.lower(): number for name, number in logging.getLevelNamesMapping().items()}


def log_many(entries: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    """Log a batch of events, each ``(level, event, fields)``, through the configured processors.

    A batch's canonical lines (one per file) were the placer's largest single cost: each call of a
    structlog logger builds its bound logger, filters by level, runs the processors, then writes
    and flushes its own line. Here the processors run per event as configured (so the lines are
    exactly what a logger writes, and ``structlog.testing.capture_logs`` sees them), and the batch
    is written with one write and one flush.
    """
    config = structlog.get_config()
    processors, logger = config["processors"], config["logger_factory"]()
    chain = tuple(processors)
    lines = []
    if chain == _JSON_CHAIN[0]:  # the daemon's JSON lines: what the chain adds, added once a batch
        context = dict(structlog.contextvars.merge_contextvars(None, "info", {}))
        stamp = _STAMP(logger, "info", {})["timestamp"]
        render = chain[-1]
        for level, event, fields in entries:
            if _LEVELS[level] >= _LEVEL[0]:
                line = {**fields, "event": event}
                lines.append(render(logger, level, _shaped(line, context, stamp, level)))
    else:  # another chain (a terminal's, a test's capture): each event through it
        for level, event, fields in entries:
            if _LEVELS[level] < _LEVEL[0]:
                continue
            rendered: Any = {**fields, "event": event}
            try:
                for processor in processors:
                    rendered = processor(logger, level, rendered)
            except structlog.DropEvent:
                continue
            lines.append(rendered)
    if lines:
        logger.msg("\n".join(lines))


# The JSON chain configure_logging installs, to recognise it in log_many: its first four processors
# add the context, the level, a traceback and the time, in that order, so log_many adds them once
# per batch in the same order, and only the renderer runs per line (the keys and their order are
# the chain's; the lines of one batch share its timestamp, as they share its write).
_JSON_CHAIN: list[tuple[Any, ...]] = [()]
_STAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)


def _shaped(
    line: MutableMapping[str, Any], context: Mapping[str, Any], stamp: str, level: str
) -> MutableMapping[str, Any]:
    """``line`` as the chain's first processors leave it: the context under keys it lacks, the level,
    the time (a line with ``exc_info`` is formatted as :func:`format_exc_info` would)."""
    for key, value in context.items():
        line.setdefault(key, value)
    line["level"] = level
    if "exc_info" in line:
        line = structlog.processors.format_exc_info(None, level, line)
    line["timestamp"] = stamp
    return line


def shape() -> tuple[LogFormat, str]:
    """The format and level configured now, resolved ("json" or "console"), to configure another
    process's lines alike (:mod:`clipsort.sort.placing`)."""
    return ("json" if _JSON_CHAIN[0] else "console"), logging.getLevelName(_LEVEL[0]).lower()


def write_lines(text: str) -> None:
    """Write ``text``, lines another process rendered with this one's :func:`shape`, as one write."""
    structlog.get_config()["logger_factory"]().msg(text.removesuffix("\n"))


def configure_logging(fmt: LogFormat = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """(Re)configure structlog to write to ``stream`` (stderr); safe to call again, e.g. after SIGHUP."""
    _LEVEL[0] = logging.getLevelNamesMapping()[level.upper()]
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shaping: list[structlog.typing.Processor] = (
        [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=json_line),
        ]
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
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
        *shaping,
    ]
    _JSON_CHAIN[0] = tuple(processors) if as_json else ()
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        # One write a call, its newline included: print() (structlog's PrintLogger) writes the text
        # and the newline apart, and a line-buffered stderr flushes a batch's text at its inner
        # newlines, so its last line reached the file without its newline until the next write. A
        # daemon killed in between, or a child sharing stderr (the decoding processes, Python's
        # resource tracker) writing in between, left two records on one line (measured: a
        # resource-tracker warning after a SIGKILL; JSON-lines readers then fail on it).
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
