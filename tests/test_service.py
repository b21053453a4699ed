"""Tests for daemon.service in-process: supervision, model work on passing threads, daemon-only checks."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from daemon.config import load_settings
from daemon.errors import ConfigError
from daemon.service.wiring import Service, check_daemon_settings, on_own_thread
from tests.synthetic import draw, make_dataset, save
from tests.waiting import wait_until


def test_a_dead_observer_is_restarted_and_missed_files_are_found(data_root: Path, tiny_model: Path) -> None:
    """The supervisor sees the observer died, starts a new one; a rescan finds what arrived meanwhile."""
    make_dataset(data_root / "rgb", {"red": "red", "blue": "blue"}, references=2)
    settings = load_settings(
        None, {"root": data_root, "model": str(tiny_model), "settle_seconds": 0.1, "status_seconds": 0.2}
    )
    service = Service(settings, None, {})
    service.catalog.request(["rgb"], 0.0)
    service.catalog.rebuild_due(service.embedder)
    service._known = {"rgb"}
    service.watcher.start()
    service.intake.start()
    service.worker.start()
    supervisor = threading.Thread(target=service._supervise)
    supervisor.start()
    try:
        wait_until(lambda: service.intake.scans >= 1)
        service.watcher._observer.stop()  # the dispatch thread dies, as after an uncaught handler error
        service.watcher._observer.join()
        save(draw(np.random.default_rng(0), "blue"), data_root / "rgb" / "Images" / "while-dead.png")
        wait_until((data_root / "rgb" / "Dataset" / "blue" / "while-dead.png").exists, timeout=30)
        assert service.watcher.is_alive()
        save(draw(np.random.default_rng(1), "red"), data_root / "rgb" / "Images" / "after.png")
        wait_until((data_root / "rgb" / "Dataset" / "red" / "after.png").exists, timeout=30)
    finally:
        service._stop.set()
        supervisor.join(timeout=10)
        service._shutdown()
    assert not supervisor.is_alive()


def test_copy_action_is_refused_for_any_dataset(data_root: Path) -> None:
    """A per-dataset action = copy is refused by the daemon as well."""
    Path("config.toml").write_text('[datasets.shoes]\naction = "copy"\n')
    with pytest.raises(ConfigError, match="shoes"):
        check_daemon_settings(load_settings())


def _tasks() -> set[int]:
    return {int(task.name) for task in Path("/proc/self/task").iterdir()}


def test_model_work_on_its_own_thread_leaves_no_thread_behind() -> None:
    """A parallel torch operator runs on a thread that ends, and OpenMP's pool for it ends too."""
    before = _tasks()
    seen: list[int] = []

    def work() -> float:
        seen.append(threading.get_native_id())
        return float(torch.ones(1 << 22).add_(1).sum())  # large enough to run on all intra-op threads

    assert on_own_thread(work) == 2.0 * (1 << 22)
    assert seen[0] != threading.get_native_id()
    wait_until(lambda: _tasks() <= before, timeout=5)  # no pool thread, no helper thread left


def test_errors_of_work_on_its_own_thread_reach_the_caller() -> None:
    """A model that cannot be loaded still fails the caller with its own error."""

    def fail() -> None:
        raise ConfigError("no such model")

    with pytest.raises(ConfigError, match="no such model"):
        on_own_thread(fail)
