"""Tests for clipsort.ingest.readiness: when a file counts as complete."""

from __future__ import annotations

import os
from pathlib import Path

from structlog.testing import capture_logs

from clipsort.ingest.readiness import Readiness
from clipsort.work import Hint, Job, Signature, is_unchanged


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fresh(path: Path, data: bytes = b"x") -> Path:
    """A file whose mtime is now (so the old-file shortcut does not apply)."""
    path.write_bytes(data)
    return path


def make(clock: Clock, capacity: int = 10) -> Readiness:
    return Readiness(settle=1.0, settle_closed=0.05, capacity=capacity, clock=clock)


def handed_out(path: Path) -> tuple[Clock, Readiness, Job]:
    """A new file at ``path``, offered after a close-after-write and handed to the worker."""
    clock = Clock()
    readiness = make(clock)
    readiness.offer(Hint("d", fresh(path), "closed"))
    clock.now += 1
    [job] = readiness.ready()
    return clock, readiness, job


def test_closed_file_is_ready_after_the_short_confirmation(tmp_path: Path) -> None:
    """After close-after-write, 50 ms of unchanged size suffice."""
    clock = Clock()
    readiness = make(clock)
    readiness.offer(Hint("d", fresh(tmp_path / "a.jpg"), "closed"))
    assert readiness.ready() == []
    clock.now += 0.06
    [job] = readiness.ready()
    assert (job.dataset, job.path.name, job.first_seen) == ("d", "a.jpg", 1000.0)


def test_growing_file_waits_the_full_settle_time(tmp_path: Path) -> None:
    """A file that changed since it was hinted waits until it holds still for `settle`."""
    clock = Clock()
    readiness = make(clock)
    path = fresh(tmp_path / "a.jpg")
    readiness.offer(Hint("d", path))
    clock.now += 0.5
    with path.open("ab") as handle:
        handle.write(b"more")
    clock.now += 0.6
    assert readiness.ready() == []  # changed: rescheduled a full second later
    clock.now += 0.9
    assert readiness.ready() == []
    clock.now += 0.2
    assert [job.signature.size for job in readiness.ready()] == [5]


def test_old_untouched_file_is_ready_at_once(tmp_path: Path) -> None:
    """Backlog found at start (mtime older than settle) needs no waiting."""
    path = fresh(tmp_path / "a.jpg")
    os.utime(path, (1, 1))
    readiness = make(Clock())
    readiness.offer(Hint("d", path))
    assert len(readiness.ready()) == 1


def test_capacity_refuses_new_paths_but_keeps_known_ones(tmp_path: Path) -> None:
    """Memory stays bounded: past capacity offers return False (the caller rescans later)."""
    clock = Clock()
    readiness = make(clock, capacity=2)
    paths = [fresh(tmp_path / f"{k}.jpg") for k in range(3)]
    assert readiness.offer(Hint("d", paths[0]))
    assert readiness.offer(Hint("d", paths[1]))
    assert not readiness.offer(Hint("d", paths[2]))
    assert readiness.offer(Hint("d", paths[0], "closed"))
    clock.now += 2
    jobs = readiness.ready()
    assert len(readiness) == 2  # in flight until released
    readiness.release(jobs[0])
    assert readiness.offer(Hint("d", paths[2]))


def test_retry_keeps_first_seen_and_release_frees(tmp_path: Path) -> None:
    """A job put back keeps its first-seen time for the max-wait clock."""
    clock, readiness, job = handed_out(tmp_path / "a.jpg")
    readiness.retry(job, delay=5)
    clock.now += 4
    assert readiness.ready() == []
    clock.now += 2
    [again] = readiness.ready()
    assert again.first_seen == job.first_seen


def test_vanished_symlinked_and_special_paths_are_dropped(tmp_path: Path) -> None:
    """Nothing that is not a regular file ever becomes a job; a symlink and a FIFO are logged as left."""
    clock = Clock()
    readiness = make(clock)
    gone = fresh(tmp_path / "gone.jpg")
    (tmp_path / "link.jpg").symlink_to(gone)
    os.mkfifo(tmp_path / "fifo.jpg")
    with capture_logs() as logs:
        for name in ("gone.jpg", "link.jpg", "fifo.jpg"):
            readiness.offer(Hint("d", tmp_path / name, "closed"))
    assert [(line["event"], Path(line["path"]).name) for line in logs] == [
        ("symlink_skipped", "link.jpg"),
        ("special_file_skipped", "fifo.jpg"),
    ]
    gone.unlink()
    clock.now += 1
    assert readiness.ready() == []
    assert len(readiness) == 0


def test_signature_detects_replacement(tmp_path: Path) -> None:
    """A file replaced after classification (new inode or size) is not 'unchanged'."""
    path = tmp_path / "a.jpg"
    *_, job = handed_out(path)
    assert is_unchanged(job)
    (tmp_path / "b.jpg").write_bytes(b"other")
    os.replace(tmp_path / "b.jpg", path)
    assert not is_unchanged(job)
    assert Signature.of(tmp_path / "missing") is None


def test_a_rescan_does_not_postpone_a_waiting_file(tmp_path: Path) -> None:
    """Listing a pending file again says nothing new: its due time stays; a write pushes it back."""
    clock = Clock()
    readiness = make(clock)
    path = fresh(tmp_path / "a.jpg")
    readiness.offer(Hint("d", path, "closed"))
    clock.now += 0.03
    readiness.offer(Hint("d", path, "scanned"))
    clock.now += 0.03
    assert len(readiness.ready()) == 1
    other = fresh(tmp_path / "b.jpg")
    readiness.offer(Hint("d", other, "closed"))
    readiness.offer(Hint("d", other, "written"))
    clock.now += 0.1
    assert readiness.ready() == []


def test_reconfigure_holds_new_offers_to_the_new_capacity_and_timings(tmp_path: Path) -> None:
    """A reload's capacity admits what the old one refused; its settle time holds from the next offer."""
    clock = Clock()
    readiness = make(clock, capacity=1)
    first, second = fresh(tmp_path / "1.jpg"), fresh(tmp_path / "2.jpg")
    assert readiness.offer(Hint("d", first)) and not readiness.offer(Hint("d", second))
    readiness.reconfigure(settle=5.0, settle_closed=0.05, capacity=2)
    assert readiness.offer(Hint("d", second))
    clock.now += 1.5
    assert [job.path for job in readiness.ready()] == [first], "offered under the old 1 s settle"
    clock.now += 4
    assert [job.path for job in readiness.ready()] == [second]


def test_expedite_brings_forward_only_the_files_waiting_after_a_failure(tmp_path: Path) -> None:
    """A retried file due in 30 s is due now after expedite; a file still settling keeps its time."""
    clock = Clock()
    readiness = make(clock)
    failed, settling = fresh(tmp_path / "failed.jpg"), fresh(tmp_path / "settling.jpg")
    readiness.offer(Hint("d", failed, "closed"))
    clock.now += 0.06
    [job] = readiness.ready()
    readiness.retry(job, 30.0)  # e.g. the disk was full
    readiness.offer(Hint("d", settling))  # waits its full settle time
    assert readiness.expedite("other") == 0
    assert readiness.expedite("d") == 1
    assert [job.path for job in readiness.ready()] == [failed]


def test_a_new_file_under_the_name_of_one_in_flight_is_offered_once_that_one_is_released(
    tmp_path: Path,
) -> None:
    """Hinted while the worker had the old file: tracked at release, not lost until a rescan."""
    path = tmp_path / "a.jpg"
    clock, readiness, job = handed_out(path)
    path.unlink()  # the worker moved the first file away...
    fresh(path, b"another")  # ...and a second one arrived under its name
    assert readiness.offer(Hint("d", path, "closed"))
    assert readiness.ready() == []  # still in flight: nothing offered twice
    readiness.release(job)
    clock.now += 2
    [again] = readiness.ready()
    assert again.path == path and again.signature != job.signature


def test_a_release_without_a_new_hint_tracks_nothing(tmp_path: Path) -> None:
    """A moved file that nobody replaced is simply done."""
    clock, readiness, job = handed_out(tmp_path / "a.jpg")
    readiness.release(job)
    clock.now += 5
    assert readiness.ready() == [] and len(readiness) == 0
