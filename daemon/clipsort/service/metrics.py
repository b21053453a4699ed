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
from collections.abc import Mapping, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client import Counter as PromCounter

from clipsort.errors import ConfigError
from clipsort.sort.pipeline import Outcome

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
        self._latency = Histogram(
            "clipsort_drop_to_move_seconds",
            "From a file first seen in the inbox to it being moved",
            LABELS["clipsort_drop_to_move_seconds"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._confidence = Histogram(
            "clipsort_confidence",
            "Probability of the chosen class",
            LABELS["clipsort_confidence"],
            buckets=PROBABILITY_BUCKETS,
            registry=self.registry,
        )
        self._margin = Histogram(
            "clipsort_margin",
            "Probability of the chosen class minus the runner-up's",
            LABELS["clipsort_margin"],
            buckets=PROBABILITY_BUCKETS,
            registry=self.registry,
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
        # Children of the labelled series, by their labels (see _of_dataset); a dict's get and set
        # are atomic, and two threads making the same child get the same one from prometheus-client.
        self._dataset_series: dict[str, tuple[Gauge, Histogram, Histogram, Histogram]] = {}
        self._files_of: dict[tuple[str, str, str, str], PromCounter] = {}
        self._errors = PromCounter(
            "clipsort_errors", "Failures retried later", LABELS["clipsort_errors"], registry=self.registry
        )

    def record(self, done: Sequence[tuple[Outcome, float]]) -> None:
        """A batch's files done, each with its latency: counted under one lock, each labelled counter
        incremented once per batch (the histograms take each file's value)."""
        files: Counter[tuple[str, str, str, str]] = Counter()
        for outcome, _ in done:
            label = outcome.decision.label if outcome.decision else ""
            reason = (outcome.reason or "") if outcome.status == "review" else ""  # Rejected/'s are free text
            files[(outcome.dataset, label, outcome.status, reason)] += 1
        shares: dict[str, float] = {}
        with self._lock:
            for (dataset, _, status, reason), n in files.items():
                self.outcomes[(dataset, status)] += n
                if reason:
                    self.held[(dataset, reason)] += n
            for dataset in {dataset for dataset, *_ in files}:
                review = self.outcomes[(dataset, "review")]
                if decided := review + self.outcomes[(dataset, "sorted")]:
                    shares[dataset] = review / decided
        for dataset, share in shares.items():
            self._of_dataset(dataset)[0].set(share)
        for key, n in files.items():
            if (counter := self._files_of.get(key)) is None:
                counter = self._files_of[key] = self._files.labels(*key)
            counter.inc(n)
        for outcome, latency in done:
            _, latencies, confidence, margin = self._of_dataset(outcome.dataset)
            latencies.observe(latency)
            if outcome.decision is not None:
                confidence.observe(outcome.decision.score)
                margin.observe(outcome.decision.margin)

    def _of_dataset(self, dataset: str) -> tuple[Gauge, Histogram, Histogram, Histogram]:
        """A dataset's labelled series, looked up once: ``labels()`` per file was a fifth of
        recording one (it checks and locks on every call)."""
        if (series := self._dataset_series.get(dataset)) is None:
            series = self._dataset_series[dataset] = (
                self._review_share.labels(dataset),
                self._latency.labels(dataset),
                self._confidence.labels(dataset),
                self._margin.labels(dataset),
            )
        return series

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
