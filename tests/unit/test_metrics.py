"""Tests for clipsort.service.metrics: the Prometheus series the daemon exports."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram

from clipsort.classify.modes.base import Decision
from clipsort.service.metrics import LABELS, PROBABILITY_BUCKETS, BatchHistogram, Metrics
from clipsort.sort.pipeline import Outcome


def test_forgotten_corrections_leave_the_gauge() -> None:
    """A class whose corrected examples were all forgotten drops out instead of keeping its last count."""
    metrics = Metrics()
    metrics.corrections({"rgb": {"blue": 3, "red": 1}, "pets": {"cat": 2}})
    metrics.corrections({"rgb": {"blue": 4}, "pets": {}})

    def value(dataset: str, label: str) -> float | None:
        return metrics.registry.get_sample_value("clipsort_corrections", {"dataset": dataset, "class": label})

    assert value("rgb", "blue") == 4
    assert value("rgb", "red") is None and value("pets", "cat") is None


def test_every_labelled_series_carries_the_labels_the_docs_list() -> None:
    """Once each series has a sample, its label names are exactly what ``LABELS`` (the docs' source) says."""
    metrics = Metrics()
    decision = Decision("beach", 0.9, "city", 0.1, 0.8, (("beach", 0.9), ("city", 0.1)))
    outcome = Outcome("holidays", Path("Images/a.jpg"), "sorted", Path("Dataset/beach/a.jpg"), decision)
    metrics.record([(outcome, 0.2)])
    metrics.corrections({"holidays": {"beach": 1}})
    metrics.error("decode", "broken")
    seen: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            seen.setdefault(family.name, set()).update(set(sample.labels) - {"le"})
    labelled = {name: labels for name, labels in seen.items() if labels}
    assert labelled == {name: set(labels) for name, labels in LABELS.items()}


def test_a_batch_is_counted_as_its_files_are() -> None:
    """One call per batch: each file counts once in its series, the review share is the batch's."""
    metrics = Metrics()
    decision = Decision("beach", 0.9, "city", 0.1, 0.8, (("beach", 0.9), ("city", 0.1)))

    def outcome(name: str, status: str, reason: str | None = None) -> Outcome:
        return Outcome("holidays", Path(f"Images/{name}"), status, Path(name), decision, reason)  # type: ignore[arg-type]

    done = [(outcome("a.jpg", "sorted"), 0.2), (outcome("b.jpg", "sorted"), 0.3)]
    metrics.record([*done, (outcome("c.jpg", "review", "unknown"), 0.4)])

    def files(status: str, reason: str) -> float | None:
        labels = {"dataset": "holidays", "class": "beach", "status": status, "reason": reason}
        return metrics.registry.get_sample_value("clipsort_files_total", labels)

    assert files("sorted", "") == 2 and files("review", "unknown") == 1
    assert metrics.count("holidays", "sorted") == 2 and metrics.held_back("holidays", "unknown") == 1
    share = metrics.registry.get_sample_value("clipsort_review_share", {"dataset": "holidays"})
    assert share is not None and abs(share - 1 / 3) < 1e-9
    latency = metrics.registry.get_sample_value(
        "clipsort_drop_to_move_seconds_count", {"dataset": "holidays"}
    )
    assert latency == 3


def test_a_batch_histogram_exports_what_prometheus_clients_own_would() -> None:
    """Values on a bound, between bounds and past the last, in two batches: the same buckets, count
    and sum as prometheus-client's Histogram observing them one by one."""
    values = [0.1, 0.15, 0.95, 1.0, 1.5, 0.0, 0.99, 0.3]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("clipsort_confidence", "Probability", PROBABILITY_BUCKETS, ours)
    batched.observe("rgb", values[:3])
    batched.observe("rgb", values[3:])
    one_by_one = Histogram(
        "clipsort_confidence", "Probability", ["dataset"], buckets=PROBABILITY_BUCKETS, registry=theirs
    )
    for value in values:
        one_by_one.labels("rgb").observe(value)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in registry.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    expected = samples(theirs)
    assert len(expected) == len(PROBABILITY_BUCKETS) + 3  # the buckets, +Inf, the count, the sum
    assert samples(ours).keys() == expected.keys()
    for key, value in expected.items():
        assert abs(samples(ours)[key] - value) < 1e-9, key
