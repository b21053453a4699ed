"""Tests for clipsort.service.metrics: the Prometheus series the daemon exports."""

from __future__ import annotations

from clipsort.service.metrics import Metrics


def test_forgotten_corrections_leave_the_gauge() -> None:
    """A class whose corrected examples were all forgotten drops out instead of keeping its last count."""
    metrics = Metrics()
    metrics.corrections({"rgb": {"blue": 3, "red": 1}, "pets": {"cat": 2}})
    metrics.corrections({"rgb": {"blue": 4}, "pets": {}})

    def value(dataset: str, label: str) -> float | None:
        return metrics.registry.get_sample_value("clipsort_corrections", {"dataset": dataset, "class": label})

    assert value("rgb", "blue") == 4
    assert value("rgb", "red") is None and value("pets", "cat") is None
