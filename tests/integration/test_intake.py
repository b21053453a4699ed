"""Integration: the intake thread over a real inbox, a real readiness and a real fair queue."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from clipsort.config import load_settings
from clipsort.ingest.intake import Intake
from clipsort.ingest.workqueue import FairQueue
from clipsort.layout import DatasetLayout
from clipsort.work import Hint
from tests.waiting import wait_until


class Datasets:
    """The catalog's one question to the intake: which datasets can be sorted now."""

    def __init__(self, *layouts: DatasetLayout) -> None:
        self.found = {layout.name: layout for layout in layouts}

    def layouts(self) -> Mapping[str, DatasetLayout]:
        return self.found


def test_a_busy_inbox_past_the_capacity_is_offered_whole_by_its_listing_without_full_scans(
    data_root: Path,
) -> None:
    """A burst of 60 files into an inbox listed as busy, readiness holding 8: each file reaches the
    work queue once, as room frees, and no full scan of the inbox is asked for meanwhile."""
    inbox = data_root / "ds" / "Images"
    inbox.mkdir(parents=True)
    settings = load_settings(None, {"root": data_root, "queue_capacity": 8, "settle_seconds": 0.05})
    work = FairQueue()
    quiet = threading.Event()
    intake = Intake(
        settings,
        Datasets(DatasetLayout(data_root / "ds")),
        work,
        on_datasets=lambda found: None,
        on_quiet=lambda dataset: quiet.set(),
    )
    intake.start()
    taken: list[Path] = []
    done = threading.Event()

    def worker() -> None:  # what the daemon's worker does with each job, less the model
        while not done.is_set():
            for job in work.take(4, wait=0.1, linger=0.0):
                job.path.unlink()
                taken.append(job.path)
                intake.release(job)

    consumer = threading.Thread(target=worker, name="test-worker")
    consumer.start()
    try:
        wait_until(lambda: intake.scans >= 1)  # the start-up scan of an empty inbox
        scans = intake.scans
        intake.list_busy("ds", whole=True)
        for k in range(60):
            (inbox / f".p{k:03d}.jpg").write_bytes(b"picture")
            (inbox / f".p{k:03d}.jpg").rename(inbox / f"p{k:03d}.jpg")
        wait_until(lambda: len(taken) == 60, timeout=30)
        assert sorted(path.name for path in taken) == [f"p{k:03d}.jpg" for k in range(60)]
        # Quiet: a second of rounds with nothing new, in which an asked-for scan would have run.
        wait_until(quiet.is_set, timeout=30)
        assert intake.scans == scans, "a full scan was asked for while the inbox was listed"
    finally:
        done.set()
        consumer.join()
        intake.stop()
        intake.thread.join(timeout=10)


def test_a_scan_leaves_out_the_very_files_tracked_and_offers_a_replaced_one(data_root: Path) -> None:
    """The scan that follows a busy inbox turning quiet offers none of the files the worker still
    holds (a Path and a hint each, for thousands in a burst, that change nothing), but a file that
    replaced one of them under its name (another inode, which no listing of names can see) and a
    file that came into a subfolder (which no top-level listing sees) are offered."""
    inbox = data_root / "ds" / "Images"
    (inbox / "sub").mkdir(parents=True)
    settings = load_settings(None, {"root": data_root, "settle_seconds": 0.05})
    work = FairQueue()
    changed = threading.Event()  # the changes below are made: the inbox may turn quiet

    def quiet(dataset: str) -> None:  # what the daemon's reaction asks, once the test is ready
        changed.wait(timeout=30)  # however long this test's thread is held up, the scan comes after
        intake.request_rescan(dataset)

    intake = Intake(
        settings,
        Datasets(DatasetLayout(data_root / "ds")),
        work,
        on_datasets=lambda found: None,
        on_quiet=quiet,
    )
    offered: list[Path] = []
    offer = intake.readiness.offer

    def recording(hint: Hint) -> bool:  # the real readiness, each path it is offered noted
        offered.append(hint.path)
        return offer(hint)

    intake.readiness.offer = recording  # type: ignore[method-assign]
    intake.start()
    taken: list[Path] = []
    done = threading.Event()

    def worker() -> None:  # holds what it takes: the files wait in the inbox, in flight
        while not done.is_set():
            taken.extend(job.path for job in work.take(16, wait=0.1, linger=0.0))

    consumer = threading.Thread(target=worker, name="test-worker")
    consumer.start()
    try:
        wait_until(lambda: intake.scans >= 1)
        intake.list_busy("ds", whole=True)
        for k in range(40):
            (inbox / f".p{k:03d}.jpg").write_bytes(b"picture")
            (inbox / f".p{k:03d}.jpg").rename(inbox / f"p{k:03d}.jpg")
        wait_until(lambda: len(taken) == 40, timeout=30)
        # The first listing finds the folder new and asks for a scan of the inbox; what comes
        # after it is seen by no listing.
        wait_until(lambda: intake.scans >= 2, timeout=30)
        scans, offered[:] = intake.scans, []
        (inbox / "sub" / "deep.jpg").write_bytes(b"picture")
        (inbox / ".new.jpg").write_bytes(b"another picture")
        (inbox / ".new.jpg").rename(inbox / "p007.jpg")  # over the one the worker holds
        changed.set()
        wait_until(lambda: intake.scans > scans, timeout=30)  # quiet, watched again, scanned
        assert offered == [inbox / "p007.jpg", inbox / "sub" / "deep.jpg"]
        wait_until(lambda: len(taken) == 41, timeout=30)
        assert taken[-1] == inbox / "sub" / "deep.jpg"
    finally:
        changed.set()
        done.set()
        consumer.join()
        intake.stop()
        intake.thread.join(timeout=10)
