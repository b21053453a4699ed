"""Tests for clipsort.sort.worker in-process: the model classifies the next batch while the last is placed,
and a failure in the loop gives its files back to be tried again."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipsort.config import Settings, load_settings
from clipsort.decode.decodeprocesses import ProcessDecodePool
from clipsort.decode.decoding import DecodePool
from clipsort.files import content_hash
from clipsort.service.wiring import Service
from clipsort.store import mover
from tests.helpers import GatedRenames, tree
from tests.synthetic import draw, make_dataset, save
from tests.waiting import wait_until


@contextlib.contextmanager
def running(settings: Settings, datasets: list[str]) -> Iterator[Service]:
    """The service on ``settings``'s data root, started and stopped through its public life cycle."""
    service = Service(settings, None, {})
    service.start()
    try:
        assert set(datasets) <= set(service.catalog.snapshot())
        yield service
    finally:
        service.stop()


COLORS = ["red", "blue", "blue", "red"]


def backlog(data_root: Path) -> dict[Path, str]:
    """Dataset ``rgb`` (red, blue) with four old files in its inbox, each with its colour."""
    make_dataset(data_root / "rgb", {"red": "red", "blue": "blue"}, references=2)
    files = {data_root / "rgb" / "Images" / f"p{k}.png": color for k, color in enumerate(COLORS)}
    for k, path in enumerate(files):
        save(draw(np.random.default_rng(k), files[path]), path)
        os.utime(path, (time.time() - 60, time.time() - 60))  # an old backlog: ready at the first scan
    return files


def test_the_next_batch_is_classified_while_the_last_is_placed(
    data_root: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the first batch's moves held up, the second batch is still encoded; then all four land."""
    files = backlog(data_root)
    syscalls = GatedRenames()
    monkeypatch.setattr(mover, "SYSCALLS", syscalls)
    settings = load_settings(
        None,
        # On the placer thread: the gate is patched into this interpreter's mover (the placing
        # process's own gate is its SIGSTOP, below).
        {
            "root": data_root,
            "model": str(tiny_model),
            "batch_size": 2,
            "settle_seconds": 0.1,
            "place_in": "thread",
        },
    )
    with running(settings, ["rgb"]) as service:
        try:
            assert syscalls.waiting.wait(timeout=30), "the first batch never reached its moves"
            keys = [content_hash(path) for path in files]
            # Every file has been through the model (its vector is cached at classification) while
            # none has moved: the model did not wait for the placer.
            wait_until(
                lambda: len(service.cache.get(service.embedder.clip.identity, keys)) == len(files), timeout=30
            )
            assert all(path.exists() for path in files)
            syscalls.gate.set()
            for path, color in files.items():
                wait_until((data_root / "rgb" / "Dataset" / color / path.name).exists, timeout=30)
        finally:
            syscalls.gate.set()  # before the worker stops: a failed assertion must not hold the placer


def test_a_stopped_placing_process_holds_its_batch_while_the_next_is_classified(
    data_root: Path, tiny_model: Path
) -> None:
    """``place_in = "process"``: the placing process stopped (SIGSTOP, a real stall from outside) holds
    the first batch's moves while the model classifies the next; two files taken away meanwhile
    are skipped, whichever side meets them (the process at its rename, the placer thread's check
    before it hands a batch over), and the rest land once it runs again, their vectors cached by
    the placing process before their moves."""
    make_dataset(data_root / "rgb", {"red": "red", "blue": "blue"}, references=2)
    settings = load_settings(
        None, {"root": data_root, "model": str(tiny_model), "batch_size": 2, "settle_seconds": 0.1}
    )
    assert settings.place_in == "process"
    staging = data_root / "staging"
    staging.mkdir()
    files = {staging / f"p{k}.png": color for k, color in enumerate(COLORS)}
    for k, (path, color) in enumerate(files.items()):
        save(draw(np.random.default_rng(k), color), path)
    keys = {path.name: content_hash(path) for path in files}
    inbox, dataset = data_root / "rgb" / "Images", data_root / "rgb" / "Dataset"
    with running(settings, ["rgb"]) as service:
        placing = service.worker.driver.placing
        assert placing is not None
        wait_until(lambda: placing.pid is not None, timeout=60)  # started, and said it is ready
        pid = placing.pid
        assert pid is not None

        def classified_batches() -> float:
            return service.metrics.registry.get_sample_value("clipsort_batch_size_count") or 0.0

        os.kill(pid, signal.SIGSTOP)
        try:
            for path in files:
                path.rename(inbox / path.name)
            # One batch is with the stopped process; another was classified all the same.
            wait_until(lambda: classified_batches() >= 2, timeout=30)
            assert sorted(path.name for path in inbox.iterdir()) == sorted(keys)
            for path, color in files.items():
                if color == "blue":
                    (inbox / path.name).unlink()
        finally:
            os.kill(pid, signal.SIGCONT)
        for path, color in files.items():
            if color == "red":
                wait_until((dataset / color / path.name).exists, timeout=30)
        wait_until(lambda: not list(inbox.iterdir()), timeout=30)
        assert placing.pid == pid, "the same process placed every batch"
        assert service.journal.planned() == []
        red = [keys[path.name] for path, color in files.items() if color == "red"]
        assert set(service.cache.get(service.embedder.clip.identity, red)) == set(red)
    assert tree(dataset) == {"red": ["p0.png", "p3.png"]}


def fails_once(method: Callable[..., Any], raised: threading.Event) -> Callable[..., Any]:
    """A pool method that raises once (a bug in the loop), then behaves; ``raised`` tells when it did."""

    def method_or_fault(pool: object, *args: object, **kwargs: object) -> Any:
        if not raised.is_set():
            raised.set()
            raise RuntimeError("a bug in the decoding seam")
        return method(pool, *args, **kwargs)

    return method_or_fault


@pytest.mark.parametrize("step", ["start", "collect"])
def test_a_batch_whose_decoding_raises_in_the_loop_is_tried_again_and_placed(
    data_root: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """A batch lost to an exception (starting or collecting its decoding) waits and is placed later."""
    files = backlog(data_root)
    inbox = data_root / "rgb" / "Images"
    raised = threading.Event()
    for pool in (DecodePool, ProcessDecodePool):
        monkeypatch.setattr(pool, step, fails_once(getattr(pool, step), raised))
    settings = load_settings(None, {"root": data_root, "model": str(tiny_model), "settle_seconds": 0.1})
    with running(settings, ["rgb"]) as service:
        for path, color in files.items():
            wait_until((data_root / "rgb" / "Dataset" / color / path.name).exists, timeout=30)
        assert not list(inbox.iterdir())
        errors = service.metrics.registry.get_sample_value("clipsort_errors_total", {"kind": "worker"})
    assert raised.is_set(), "the fault was never met"
    assert errors == 1
