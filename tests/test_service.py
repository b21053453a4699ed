"""Tests for daemon.service in-process: supervision restarts a dead observer; daemon-only checks."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from daemon.config import load_settings
from daemon.errors import ConfigError
from daemon.service import Service, check_daemon_settings
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
