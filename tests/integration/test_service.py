"""Tests for clipsort.service in-process: supervision, model work on passing threads, daemon-only checks."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from clipsort.config import load_settings
from clipsort.errors import ConfigError
from clipsort.layout import DatasetLayout
from clipsort.service.wiring import check_daemon_settings, on_own_thread
from tests.helpers import running_service
from tests.synthetic import draw, make_dataset, save
from tests.waiting import wait_until


def test_a_dead_observer_is_restarted_and_missed_files_are_found(data_root: Path, tiny_model: Path) -> None:
    """The supervisor sees the observer died, starts a new one; a rescan finds what arrived meanwhile."""
    make_dataset(data_root / "rgb", {"red": "red", "blue": "blue"}, references=2)
    with running_service(data_root, tiny_model) as service:
        supervisor = threading.Thread(target=service.serve)
        supervisor.start()
        try:
            wait_until(lambda: service.intake.scans >= 1)
            service.watcher.observer.stop()  # the dispatch thread dies, as after an uncaught handler error
            service.watcher.observer.join()
            save(draw(np.random.default_rng(0), "blue"), data_root / "rgb" / "Images" / "while-dead.png")
            wait_until((data_root / "rgb" / "Dataset" / "blue" / "while-dead.png").exists, timeout=30)
            assert service.watcher.is_alive()
            save(draw(np.random.default_rng(1), "red"), data_root / "rgb" / "Images" / "after.png")
            wait_until((data_root / "rgb" / "Dataset" / "red" / "after.png").exists, timeout=30)
        finally:
            service.request_stop()
            supervisor.join(timeout=10)
    assert not supervisor.is_alive()


def test_the_first_files_sorted_into_a_new_dataset_folder_list_no_inbox_again(
    data_root: Path, tiny_model: Path
) -> None:
    """Dataset/ and its class folders made by the first placements are watched; the inbox is listed once."""
    make_dataset(data_root / "rgb", {"red": "red", "blue": "blue"}, references=2)
    layout = DatasetLayout(data_root / "rgb")
    with running_service(data_root, tiny_model) as service:
        wait_until(lambda: service.intake.scans == 1)
        for k, color in enumerate(["red", "blue", "red"]):
            save(draw(np.random.default_rng(k), color), layout.inbox / f"{color}{k}.png")
        wait_until(lambda: len(list(layout.sorted.rglob("*.png"))) == 3, timeout=30)
        wait_until(lambda: service.watcher.watching(layout.sorted), timeout=10)
        assert service.intake.scans == 1
        # A hand-made sub-folder of the dataset other than clipsort's own still brings a rescan.
        (layout.root / "Images2").mkdir()
        wait_until(lambda: service.intake.scans == 2, timeout=10)


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
