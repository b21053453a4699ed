"""Tests for clipsort.logs: one short line per file on a terminal, every detail in JSON, one time zone."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import structlog

from clipsort.classify.modes.base import Decision
from clipsort.logs import configure_logging, local_time, log_many
from clipsort.sort.pipeline import Outcome

ROOT = Path("/srv/clipsort/Data/holidays")


def outcome() -> Outcome:
    """A sorted phone picture with a long name, as the pipeline logs it."""
    decision = Decision(
        "beach",
        0.987654,
        "mountains",
        0.01,
        0.31,
        (("beach", 0.987654), ("mountains", 0.01), ("city", 0.002)),
    )
    name = "IMG_20261202_101010_HDR.jpg"
    return Outcome("holidays", ROOT / "Images" / name, "sorted", ROOT / "Dataset" / "beach" / name, decision)


def test_a_sorted_file_is_one_short_line_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """Console format: the file's name, class and score in under 110 columns, local time with its zone."""
    configure_logging("console")
    structlog.get_logger().info("sorted", **outcome().as_dict(), mode="reference-max", dry_run=False)
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and len(line) < 110, line
    assert "IMG_20261202_101010_HDR.jpg" in line and "class=beach" in line and "score=0.988" in line
    for detail in ("/srv", "destination", "runner_up", "top3", "dry_run", "reference-max"):
        assert detail not in line
    assert line.split()[1] == time.strftime("%Z"), "the zone's name follows the local time"


def test_json_lines_keep_every_detail_in_utc(capsys: pytest.CaptureFixture[str]) -> None:
    """JSON format: the whole outcome, and a UTC ISO 8601 timestamp marked Z."""
    configure_logging("json")
    structlog.get_logger().info("sorted", **outcome().as_dict())
    record = json.loads(capsys.readouterr().err)
    assert record["destination"] == str(ROOT / "Dataset" / "beach" / "IMG_20261202_101010_HDR.jpg")
    assert record["top3"][1] == ["mountains", 0.01]
    assert record["timestamp"].endswith("Z")


def test_json_lines_write_numpy_numbers_as_numbers_and_other_objects_as_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A numpy score stays a number; a path, a set or a number-keyed map still gives one valid line."""
    configure_logging("json")
    structlog.get_logger().info("scored", score=np.float32(0.25), path=ROOT, counts={3: 1}, seen={"a"})
    record = json.loads(capsys.readouterr().err)
    assert record["score"] == 0.25 and record["counts"] == {"3": 1}
    assert record["path"] == repr(ROOT) and record["seen"] == repr({"a"})


def test_a_json_line_names_a_file_that_is_not_utf8_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    """A name with a 0xff byte (orjson refuses it) still gives one valid line that gives its bytes back."""
    configure_logging("json")
    name = os.fsdecode(b"/srv/Images/caf\xff.png")
    structlog.get_logger().info("sorted", file=name, score=np.float32(0.5))
    record = json.loads(capsys.readouterr().err)
    assert os.fsencode(record["file"]) == b"/srv/Images/caf\xff.png" and record["score"] == 0.5


def test_other_events_keep_their_fields_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """Only a file's line is shortened: a warning about something else shows all it says."""
    configure_logging("console")
    structlog.get_logger().warning("move_failed", file="/srv/x.jpg", error="No space left on device")
    line = capsys.readouterr().err
    assert "file=/srv/x.jpg" in line and "No space left on device" in line


def test_local_time_names_its_zone() -> None:
    """History and the console log show the same local time, with the zone's name."""
    assert local_time(0.0).endswith(time.strftime("%Z", time.localtime(0.0)))
    assert local_time(0.0, seconds_only=True).count(":") == 2


def test_a_batch_of_json_lines_is_what_one_logger_call_per_line_writes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """log_many's JSON lines have the keys, the order and the values of a logger's, context and
    level included (the timestamp apart); a line below the level is left out, as a logger leaves it."""
    configure_logging("json", level="info")
    fields = {**outcome().as_dict(), "mode": "reference-max"}
    with structlog.contextvars.bound_contextvars(run="r1"):
        structlog.get_logger().warning("review", **fields)
        log_many([("warning", "review", fields), ("debug", "sorted", fields), ("info", "sorted", fields)])
    one, *batch = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(batch) == 2
    assert list(batch[0]) == list(one) and {**batch[0], "timestamp": one["timestamp"]} == one
    assert batch[1]["event"] == "sorted" and batch[1]["level"] == "info" and batch[1]["run"] == "r1"
    assert batch[1]["timestamp"].endswith("Z")


class Writes(io.RawIOBase):
    """A file that records each write(2) it is given, under the buffers Python puts over stderr."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        chunk = bytes(data)  # type: ignore[call-overload]
        self.calls.append(chunk)
        return len(chunk)


def test_every_write_to_the_log_ends_a_line() -> None:
    """A logger call, and log_many's batch, reach the file as one write each, ending with its newline.

    Python's stderr is line-buffered: text written in two parts (the lines, then the newline, as
    print() writes) reached the file in two writes, so a process killed between them, or another
    process sharing the file writing between them, left two records on one line.
    """
    raw = Writes()
    stream = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", line_buffering=True)
    configure_logging("json", level="info", stream=stream)
    fields = {**outcome().as_dict(), "mode": "reference-max"}
    structlog.get_logger().info("sorted", **fields)
    log_many([("info", "sorted", fields)] * 3)
    assert [call.count(b"\n") for call in raw.calls] == [1, 3], raw.calls
    assert all(call.endswith(b"\n") for call in raw.calls)
    assert all(json.loads(line)["event"] == "sorted" for line in b"".join(raw.calls).splitlines())
