"""Tests for clipsort.ingest.workqueue: fair, lingering micro-batches; draining a queue in rounds."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from queue import Queue

from clipsort.ingest.workqueue import FairQueue
from clipsort.work import Job, Signature, drain


def job(dataset: str, k: int) -> Job:
    return Job(dataset, Path(f"/{dataset}/{k}"), Signature(1, 1, k), 0.0)


def test_a_flood_in_one_dataset_does_not_starve_another() -> None:
    """1,000 queued files of A and 3 of B: the first batch already holds all of B."""
    queue = FairQueue()
    queue.put(job("a", k) for k in range(1000))
    queue.put(job("b", k) for k in range(3))
    batch = queue.take(8, wait=0, linger=0)
    assert [j.dataset for j in batch] == ["a", "b", "a", "b", "a", "b", "a", "a"]
    assert len(queue) == 995
    assert queue.depths() == {"a": 995}


def test_take_returns_empty_after_wait() -> None:
    """An idle queue gives an empty batch after the wait."""
    started = time.monotonic()
    assert FairQueue().take(4, wait=0.05, linger=1) == []
    assert time.monotonic() - started < 0.5


def test_linger_collects_late_arrivals_up_to_the_limit() -> None:
    """Files arriving within the linger window join the batch; a full batch returns at once."""
    queue = FairQueue()
    queue.put([job("a", 0)])
    threading.Timer(0.05, lambda: queue.put([job("a", 1), job("a", 2)])).start()
    batch = queue.take(3, wait=1, linger=2)
    assert [j.path.name for j in batch] == ["0", "1", "2"]


def test_drain_takes_what_queued_up_in_one_round() -> None:
    """The first item, then everything behind it up to the limit; an empty queue gives [] after the wait."""
    source: Queue[int] = Queue()
    for item in range(5):
        source.put(item)
    assert drain(source, 0.0, 3) == [0, 1, 2]
    assert drain(source, 0.0, 10) == [3, 4]
    assert drain(source, 0.01, 10) == []


def test_drain_with_linger_takes_items_that_trickle_in_after_the_first_in_the_same_round() -> None:
    """Items put 0.1 s apart: without linger a round takes one, lingering 1 s it takes all three."""
    source: Queue[int] = Queue()

    def trickle(first: int) -> threading.Thread:
        def put() -> None:
            for item in range(first, first + 3):
                source.put(item)
                time.sleep(0.1)

        thread = threading.Thread(target=put)
        thread.start()
        return thread

    writer = trickle(0)
    assert drain(source, 1.0, 10) == [0]
    writer.join()
    assert drain(source, 0.0, 10) == [1, 2]
    writer = trickle(3)
    assert drain(source, 1.0, 10, linger=1.0) == [3, 4, 5]
    writer.join()
