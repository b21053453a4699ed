"""Integration: the intake thread over a real inbox, a real readiness and a real fair queue."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

from clipsort.config import load_settings
from clipsort.ingest.intake import Intake
from clipsort.ingest.workqueue import FairQueue
from clipsort.layout import DatasetLayout
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
