"""Counters for the status file and, when enabled, a Prometheus endpoint.

The share of files sent to Review/ per dataset is clipsort_files_total{status="review"}
over all of that dataset's files, and its ``reason`` label tells pictures of none of the
classes (``unknown``) from those between two classes (``uncertain``); confidence and
margin are histograms per dataset.

Prometheus collectors live in a registry of their own, so several daemons in
one test process do not collide on the global one.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import cast
from wsgiref.simple_server import WSGIServer

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client import Counter as PromCounter
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from clipsort.errors import ConfigError
from clipsort.sort.pipeline import Outcome

_go_float = cast(Callable[[float], str], floatToGoString)  # the le labels' format; untyped upstream

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Each labelled series' label names, declared once: the collectors take them from here and the
# reference docs read them here (prometheus-client shows a family's labels only on its samples).
LABELS: dict[str, tuple[str, ...]] = {
    "clipsort_files": ("dataset", "class", "status", "reason"),
    "clipsort_drop_to_move_seconds": ("dataset",),
    "clipsort_confidence": ("dataset",),
    "clipsort_margin": ("dataset",),
    "clipsort_review_share": ("dataset",),
    "clipsort_corrections": ("dataset", "class"),
    "clipsort_errors": ("kind",),
}


class BatchHistogram(Collector):
    """A histogram per dataset filled a batch at a time, exported as prometheus-client's own are.

    prometheus-client's ``observe`` takes one value, locking and searching the buckets for each:
    three per placed file. Here a batch's values are counted into the buckets in one numpy pass
    (``searchsorted`` finds each value's bucket, ``bincount`` adds them) under one lock.
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self._lock = threading.Lock()
        self._counts: dict[str, npt.NDArray[np.int64]] = {}  # per dataset, per bucket (+Inf last)
        self._sums: dict[str, float] = {}
        registry.register(self)

    def observe(self, dataset: str, values: Sequence[float]) -> None:
        """Count ``values`` (a batch's, of one dataset) into its buckets; +Inf takes what is past the last."""
        found = np.asarray(values, dtype=np.float64)
        # side="left": a value equal to a bound counts in that bound's bucket (le, "less or equal").
        counts = np.bincount(np.searchsorted(self.bounds, found, side="left"), minlength=len(self.bounds) + 1)
        with self._lock:
            self._counts[dataset] = self._counts.get(dataset, 0) + counts
            self._sums[dataset] = self._sums.get(dataset, 0.0) + float(found.sum())

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=LABELS[self.name])
        with self._lock:
            series = {
                dataset: (counts.cumsum(), self._sums[dataset]) for dataset, counts in self._counts.items()
            }
        bounds = [*(_go_float(bound) for bound in self.bounds), "+Inf"]  # the le labels Histogram writes
        for dataset, (cumulative, total) in sorted(series.items()):
            family.add_metric([dataset], list(zip(bounds, cumulative.tolist(), strict=True)), total)
        yield family


class Metrics:
    """What the daemon did, per dataset and class."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (dataset, status)
        self.held: Counter[tuple[str, str]] = Counter()  # (dataset, reason) of the files in Review/
        self.last_error: str | None = None
        self.registry = CollectorRegistry()
        self._files = PromCounter(
            "clipsort_files",
            "Files handled",
            LABELS["clipsort_files"],
            registry=self.registry,
        )
        self._batches = Histogram(
            "clipsort_batch_size", "Images per inference batch", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self._latency = BatchHistogram(
            "clipsort_drop_to_move_seconds",
            "From a file first seen in the inbox to it being moved",
            LATENCY_BUCKETS,
            self.registry,
        )
        self._confidence = BatchHistogram(
            "clipsort_confidence", "Probability of the chosen class", PROBABILITY_BUCKETS, self.registry
        )
        self._margin = BatchHistogram(
            "clipsort_margin",
            "Probability of the chosen class minus the runner-up's",
            PROBABILITY_BUCKETS,
            self.registry,
        )
        self._review_share = Gauge(
            "clipsort_review_share",
            "Share of classified files sent to Review/",
            LABELS["clipsort_review_share"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "clipsort_queue_depth", "Files waiting for the model", registry=self.registry
        )
        self.model_cpu = Gauge(  # its value is read from the encoder's clock (Service sets the function)
            "clipsort_model_cpu_seconds",
            "CPU the image forward passes took on the thread running the model, since start",
            registry=self.registry,
        )
        self.state_bytes = Gauge(
            "clipsort_state_bytes",
            "Size of the state folder after the last housekeeping",
            registry=self.registry,
        )
        self._corrections = Gauge(
            "clipsort_corrections",
            "Corrected examples in use (files a person moved to another class)",
            LABELS["clipsort_corrections"],
            registry=self.registry,
        )
        self._correction_labels: set[tuple[str, str]] = set()
        # Children of the labelled series, by their labels (see _review_share_of); a dict's get and
        # set are atomic, and two threads making the same child get the same one from prometheus-client.
        self._review_shares: dict[str, Gauge] = {}
        self._files_of: dict[tuple[str, str, str, str], PromCounter] = {}
        self._errors = PromCounter(
            "clipsort_errors", "Failures retried later", LABELS["clipsort_errors"], registry=self.registry
        )

    def record(self, done: Sequence[tuple[Outcome, float]]) -> None:
        """A batch's files done, each with its latency: counted under one lock, each labelled counter
        incremented once per batch, each dataset's histograms filled once."""
        by_dataset: dict[str, list[tuple[Outcome, float]]] = {}
        files: Counter[tuple[str, str, str, str]] = Counter()
        for outcome, latency in done:
            by_dataset.setdefault(outcome.dataset, []).append((outcome, latency))
            label = outcome.decision.label if outcome.decision else ""
            reason = (outcome.reason or "") if outcome.status == "review" else ""  # Rejected/'s are free text
            files[(outcome.dataset, label, outcome.status, reason)] += 1
        shares: dict[str, float] = {}
        with self._lock:
            for (dataset, _, status, reason), n in files.items():
                self.outcomes[(dataset, status)] += n
                if reason:
                    self.held[(dataset, reason)] += n
            for dataset in by_dataset:
                review = self.outcomes[(dataset, "review")]
                if decided := review + self.outcomes[(dataset, "sorted")]:
                    shares[dataset] = review / decided
        for dataset, share in shares.items():
            self._review_share_of(dataset).set(share)
        for key, n in files.items():
            if (counter := self._files_of.get(key)) is None:
                counter = self._files_of[key] = self._files.labels(*key)
            counter.inc(n)
        for dataset, mine in by_dataset.items():
            decisions = [outcome.decision for outcome, _ in mine if outcome.decision is not None]
            self._latency.observe(dataset, [latency for _, latency in mine])
            self._confidence.observe(dataset, [decision.score for decision in decisions])
            self._margin.observe(dataset, [decision.margin for decision in decisions])

    def _review_share_of(self, dataset: str) -> Gauge:
        """A dataset's review share, looked up once: ``labels()`` per file was a fifth of recording
        one (it checks and locks on every call)."""
        if (gauge := self._review_shares.get(dataset)) is None:
            gauge = self._review_shares[dataset] = self._review_share.labels(dataset)
        return gauge

    def corrections(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """The corrected examples each dataset's classes use now (a class no longer listed drops out)."""
        now = {(dataset, label): n for dataset, per_class in counts.items() for label, n in per_class.items()}
        with self._lock:
            for gone in self._correction_labels - now.keys():  # forgotten: not left at its last value
                self._corrections.remove(*gone)
            for labels, count in now.items():
                self._corrections.labels(*labels).set(count)
            self._correction_labels = set(now)

    def batch(self, size: int) -> None:
        self._batches.observe(size)

    def error(self, kind: str, message: str) -> None:
        """A failure that will be retried; kept as the status file's last error."""
        with self._lock:
            self.last_error = message
        self._errors.labels(kind).inc()

    def count(self, dataset: str, status: str) -> int:
        with self._lock:
            return self.outcomes[(dataset, status)]

    def held_back(self, dataset: str, reason: str) -> int:
        """Files of ``dataset`` sent to Review/ for ``reason`` (unknown or uncertain)."""
        with self._lock:
            return self.held[(dataset, reason)]

    def serve(self, address: str, port: int) -> None:
        """Expose the registry over HTTP (a daemon thread of prometheus_client's, ``clipsort-metrics``)."""
        try:
            self._server, thread = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:  # the port is taken, or the address is not this machine's
            raise ConfigError(f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}") from None
        thread.name = "clipsort-metrics"

    def close(self) -> None:
        """Stop serving (the port is free again); nothing when not serving."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
