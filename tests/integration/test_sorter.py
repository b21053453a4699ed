"""Tests for clipsort.sort.oneshot in-process: one-shot sort places a batch while the next is classified."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from structlog.testing import capture_logs
from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.config import Settings, load_settings
from clipsort.decode.decoding import Decoded, DecodePool, Prepare
from clipsort.decode.images import Crop, DecodeLimits
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.encode.embeddings import Embedder
from clipsort.encode.encoder import Encoder
from clipsort.encode.factory import make_embedder
from clipsort.errors import UnsafeDestination
from clipsort.files import content_hash
from clipsort.layout import discover
from clipsort.sort.driver import Decoders
from clipsort.sort.oneshot import Work, decoders_for, gather, run
from clipsort.sort.pipeline import Outcome
from clipsort.store import mover
from clipsort.store.journal import Journal
from clipsort.store.mover import make_state_dir
from tests.helpers import GatedRenames, tree
from tests.synthetic import draw, make_dataset, save
from tests.waiting import wait_until

COLORS = ["red", "blue", "blue", "red"]


@dataclass
class Sorting:
    """A dataset with four pictures in its inbox (two batches of two) and what sorts them."""

    inbox: list[Path]
    settings: Settings
    embedder: Embedder  # the session's tiny model with a fresh vector cache (it shows what was classified)
    journal: Journal

    def gather(self) -> list[Work]:
        return gather(discover(self.settings.root), self.settings, self.embedder, named=False)

    def run(self, outcomes: list[Outcome], work: list[Work] | None = None) -> None:
        """``clipsort sort``'s run over ``work`` (by default everything gathered now)."""
        run(
            self.gather() if work is None else work,
            self.settings,
            self.embedder,
            journal=self.journal,
            dry_run=False,
            on_outcome=outcomes.append,
        )

    def folder(self, area: str) -> dict[str, list[str]]:
        return tree(self.settings.root / "rgb" / area)

    def in_thread(self) -> None:
        """Place on the placer thread: a fault patched into this interpreter's mover never reaches a
        placing process (that process runs the same ``deliver_parcels``; its faults come from outside,
        below and in test_placing.py)."""
        self.settings = self.settings.model_copy(update={"place_in": "thread"})


@pytest.fixture
def sorting(data_root: Path, tiny_model: Path, encoder: Encoder, tmp_path: Path) -> Iterator[Sorting]:
    make_dataset(data_root / "rgb", {"red": "red", "blue": "blue"}, references=2)
    files = [data_root / "rgb" / "Images" / f"p{k}.png" for k in range(len(COLORS))]
    for k, (path, color) in enumerate(zip(files, COLORS, strict=True)):
        save(draw(np.random.default_rng(k), color), path)
    settings = load_settings(None, {"root": data_root, "model": str(tiny_model), "batch_size": 2})
    make_state_dir(tmp_path / "state")
    with EmbeddingCache(tmp_path / "cache.sqlite3") as cache, Journal(tmp_path / "state") as journal:
        yield Sorting(files, settings, make_embedder(settings, encoder, cache), journal)


def test_the_next_batch_is_classified_while_the_last_is_placed(
    sorting: Sorting, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the first batch's moves held up, the second batch is still encoded; then all four land."""
    syscalls = GatedRenames()
    sorting.in_thread()
    monkeypatch.setattr(mover, "SYSCALLS", syscalls)
    outcomes: list[Outcome] = []
    thread = threading.Thread(target=sorting.run, args=(outcomes,))
    thread.start()
    try:
        assert syscalls.waiting.wait(timeout=30), "the first batch never reached its moves"
        cache, keys = sorting.embedder.cache, [content_hash(path) for path in sorting.inbox]
        assert cache is not None
        # Every file's vector is cached at classification while none has moved.
        identity = sorting.embedder.clip.identity
        wait_until(lambda: len(cache.get(identity, keys)) == len(sorting.inbox), timeout=30)
        assert all(path.exists() for path in sorting.inbox) and outcomes == []
    finally:
        syscalls.gate.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert [outcome.decision.label for outcome in outcomes if outcome.decision] == COLORS
    assert sorting.folder("Dataset") == {"blue": ["p1.png", "p2.png"], "red": ["p0.png", "p3.png"]}


class FailingRename(mover.Syscalls):
    """The rename of one file fails, as on a disk that has just filled up."""

    def __init__(self, name: str) -> None:
        self.name = name

    def renameat2(self, source: mover.At, target: mover.At) -> None:
        if source.name == self.name:
            raise OSError(28, os.strerror(28))
        super().renameat2(source, target)


def test_a_file_that_cannot_be_placed_stops_the_run_before_the_next_batch_moves(
    sorting: Sorting, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first failure is raised; files before it are reported, the later batch stays in the inbox."""
    sorting.in_thread()
    monkeypatch.setattr(mover, "SYSCALLS", FailingRename("p1.png"))
    outcomes: list[Outcome] = []
    with pytest.raises(OSError, match="No space left"):
        sorting.run(outcomes)
    assert [outcome.source.name for outcome in outcomes] == ["p0.png"]
    assert sorting.folder("Images") == {".": ["p1.png", "p2.png", "p3.png"]}


def test_a_batch_being_placed_is_finished_and_reported_when_the_next_cannot_be_classified(
    sorting: Sorting, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model failing on batch two leaves batch one moved and reported, and the error raised."""
    encoder = sorting.embedder.clip
    encode = encoder.encode_images
    calls: list[int] = []

    def fails_second_time(images: Sequence[Image.Image | Crop]) -> np.ndarray:
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("the device went away")
        return encode(images)

    work = sorting.gather()  # the references are encoded before the failures begin
    monkeypatch.setattr(encoder, "encode_images", fails_second_time)
    outcomes: list[Outcome] = []
    with pytest.raises(RuntimeError, match="device went away"):
        sorting.run(outcomes, work)
    assert [outcome.source.name for outcome in outcomes] == ["p0.png", "p1.png"]
    assert sorting.folder("Images") == {".": ["p2.png", "p3.png"]}


@pytest.mark.parametrize("place_in", ["thread", "process"])
def test_a_class_folder_swapped_for_a_symlink_stops_the_run_where_it_is_met(
    sorting: Sorting, tmp_path: Path, place_in: str
) -> None:
    """A real fault, met wherever placing runs: the first blue file is refused (never written through
    the link), the error raised as the thread raises it; the files after it stay in the inbox."""
    sorting.settings = sorting.settings.model_copy(update={"place_in": place_in})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (sorting.settings.root / "rgb" / "Dataset").mkdir()
    (sorting.settings.root / "rgb" / "Dataset" / "blue").symlink_to(elsewhere)
    outcomes: list[Outcome] = []
    with pytest.raises(UnsafeDestination, match="is a symlink"):
        sorting.run(outcomes)
    assert [outcome.source.name for outcome in outcomes] == ["p0.png"]
    assert sorting.folder("Images") == {".": ["p1.png", "p2.png", "p3.png"]}
    assert not list(elsewhere.iterdir())
    assert sorting.journal.planned() == []  # the refused file's intent concluded, not left open


class VanishingFile(mover.Syscalls):
    """One file is moved away by someone else just before clipsort renames it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def renameat2(self, source: mover.At, target: mover.At) -> None:
        if source.name == self.name and source.path.parent.name == "Images":
            source.path.unlink()
        super().renameat2(source, target)


def test_decoders_started_ahead_serve_the_run_and_stay_the_callers(sorting: Sorting) -> None:
    """Started before the model loads (as the CLI does), the same decoding processes serve the run."""
    with decoders_for(sorting.settings) as decoders:
        assert decoders.processes is not None
        wait_until(lambda: len(decoders.processes.pids) == sorting.settings.decode_workers, timeout=60)  # type: ignore[union-attr]
        workers = decoders.processes.pids
        outcomes: list[Outcome] = []
        run(
            sorting.gather(),
            sorting.settings,
            sorting.embedder,
            journal=sorting.journal,
            dry_run=False,
            on_outcome=outcomes.append,
            decoders=decoders,
        )
        assert decoders.processes.pids == workers, "the run neither replaced nor ended the caller's workers"
    assert sorting.folder("Dataset") == {"blue": ["p1.png", "p2.png"], "red": ["p0.png", "p3.png"]}
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers), "closed by the caller, they end"


class RecordingPool(DecodePool):
    """Decoding threads that note when each batch (named by its first file) starts and is collected."""

    def __init__(self, limits: DecodeLimits, workers: int) -> None:
        super().__init__(limits, workers)
        self.calls: list[str] = []
        self._firsts: dict[int, str] = {}

    def start(
        self, paths: Sequence[Path], target: int, prepare: Prepare | None = None
    ) -> list[Future[Decoded]]:
        futures = super().start(paths, target, prepare)
        self._firsts[id(futures[0])] = paths[0].stem
        self.calls.append(f"start {paths[0].stem}")
        return futures

    def collect(self, futures: Sequence[Future[Decoded]], timeout: float) -> list[Decoded]:
        self.calls.append(f"collect {self._firsts[id(futures[0])]}")
        return super().collect(futures, timeout)


@pytest.mark.parametrize(
    ("ahead", "order"),
    [
        (1, ["start p0", "start p1", "collect p0", "start p2", "collect p1", "start p3", "collect p2"]),
        (2, ["start p0", "start p1", "start p2", "collect p0", "start p3", "collect p1", "collect p2"]),
    ],
)
def test_decode_ahead_batches_are_decoding_while_one_is_classified(
    sorting: Sorting, ahead: int, order: list[str]
) -> None:
    """One file a batch: before batch k is collected, batches up to k + decode_ahead have started."""
    settings = sorting.settings.model_copy(update={"batch_size": 1, "decode_ahead": ahead})
    limits = DecodeLimits.from_settings(settings)
    decoders = Decoders.configured(settings, limits, processes=False)
    decoders.threads.close()
    pool = decoders.threads = RecordingPool(limits, settings.decode_workers)
    outcomes: list[Outcome] = []
    with decoders:
        run(
            sorting.gather(),
            settings,
            sorting.embedder,
            journal=sorting.journal,
            dry_run=False,
            on_outcome=outcomes.append,
            decoders=decoders,
        )
    assert pool.calls == [*order, "collect p3"]
    assert sorting.folder("Dataset") == {"blue": ["p1.png", "p2.png"], "red": ["p0.png", "p3.png"]}


def test_a_file_that_vanishes_under_sort_is_skipped_with_a_log_line(
    sorting: Sorting, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gone between the scan and its move: logged as file_vanished, the other three are sorted."""
    sorting.in_thread()
    monkeypatch.setattr(mover, "SYSCALLS", VanishingFile("p1.png"))
    outcomes: list[Outcome] = []
    with capture_logs() as logs:
        sorting.run(outcomes)
    assert [outcome.source.name for outcome in outcomes] == ["p0.png", "p2.png", "p3.png"]
    assert [entry["file"] for entry in logs if entry["event"] == "file_vanished"] == [str(sorting.inbox[1])]
    assert sorting.folder("Dataset") == {"blue": ["p2.png"], "red": ["p0.png", "p3.png"]}


def test_a_full_disk_under_clipsort_sort_is_one_line_and_exit_2(
    sorting: Sorting, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    """The command line reports the first file it could not move in one line; the rest stay put."""
    monkeypatch.setattr(mover, "SYSCALLS", FailingRename("p1.png"))
    runner = CliRunner(env={"CLIPSORT_BATCH_SIZE": "2", "CLIPSORT_PLACE_IN": "thread"})  # see in_thread
    result = runner.invoke(app, ["sort", "--root", str(sorting.settings.root), "--model", str(tiny_model)])
    assert result.exit_code == 2, result.output
    assert "stopped: cannot move" in result.stderr and "No space left on device" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "p1.png" in sorting.folder("Images")["."]
