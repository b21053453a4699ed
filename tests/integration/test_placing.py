"""Tests for clipsort.sort.placing: a batch placed by a process of its own lands as the thread places it."""

from __future__ import annotations

import json
import os
import pickle
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.encode.embedcache import EMBEDDINGS_DB, EmbeddingCache
from clipsort.encode.encoder import Encoder
from clipsort.errors import JournalError
from clipsort.sort import placing
from clipsort.sort.pipeline import Delivery, HeldVectors, Outcome, Parcel, classify
from clipsort.sort.placing import PlacingProcess
from clipsort.store.journal import Journal
from tests.helpers import RGB, decoded_batch, tree
from tests.synthetic import make_dataset
from tests.waiting import wait_until_dead_unreaped


def sorted_with(root: Path, model: Path, place_in: str) -> tuple[list[dict[str, object]], list[str], str]:
    """`clipsort sort --json` of a fresh copy of one dataset: its records, its journal's rows and log."""
    dataset = root / "ds"
    make_dataset(dataset, RGB, references=3, inbox=list(RGB) * 6, seed=5)
    inbox = dataset / "Images"
    (inbox / "img0000.xmp").write_text("<x:xmpmeta/>")  # a sidecar travels with its picture
    (dataset / "Dataset" / "red").mkdir(parents=True)
    (dataset / "Dataset" / "red" / "img0000.png").write_bytes(b"an older picture of that name")
    runner = CliRunner(
        env={"CLIPSORT_MODEL": str(model), "CLIPSORT_PLACE_IN": place_in, "CLIPSORT_BATCH_SIZE": "4"}
    )
    done = runner.invoke(app, ["sort", "--root", str(root), "--json"])
    assert done.exit_code == 0, done.stderr
    records = [json.loads(line.replace(str(root), "ROOT")) for line in done.stdout.splitlines()]
    with Journal(root / ".clipsort") as journal, EmbeddingCache(root / ".clipsort" / EMBEDDINGS_DB) as cache:
        # Each row with whether its file's vector was kept (by the placing process, in its mode).
        rows = sorted(
            f"{e.intent.source.name} {e.state} {e.intent.placement} {e.intent.label} {e.intent.sha256} "
            f"{e.destination and e.destination.relative_to(root)} {bool(cache.models_of(e.intent.sha256))}"
            for e in journal.entries()
        )
    return records, rows, done.stderr


def test_files_placed_by_the_placing_process_land_as_the_thread_places_them(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Same folders, names (a numbered one, a sidecar beside its picture), records, journal and lines."""
    records, rows, lines = {}, {}, {}
    for place_in in ("thread", "process"):
        records[place_in], rows[place_in], lines[place_in] = sorted_with(
            tmp_path / place_in, tiny_model, place_in
        )
    assert tree(tmp_path / "thread" / "ds") == tree(tmp_path / "process" / "ds")
    assert records["process"] == records["thread"] and len(records["thread"]) == 18
    assert rows["process"] == rows["thread"] and len(rows["thread"]) == 18
    assert all(row.endswith(" True") for row in rows["process"]), "every file's vector kept"
    assert "ROOT/ds/Dataset/red/img0000_1.png" in {r["destination"] for r in records["process"]}
    assert (tmp_path / "process" / "ds" / "Dataset" / "red" / "img0000_1.xmp").exists()

    def placed(log: str) -> list[str]:  # each file's canonical line and the sidecar's, as "event file"
        events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        return sorted(f"{e['event']} {Path(e['file']).name}" for e in events if "destination" in e)

    assert placed(lines["process"]) == placed(lines["thread"]) and len(placed(lines["thread"])) == 19
    assert '"event":"placer_started"' in lines["process"] and "placer_started" not in lines["thread"]


def parcels(root: Path, encoder: Encoder, colours: list[str], seed: int) -> list[Parcel]:
    """One dataset's inbox files of ``colours``, classified, ready to be placed."""
    jobs, decoded, targets, _ = decoded_batch(root, encoder, colours, seed)
    verdicts = classify(jobs, decoded, targets, encoder)
    return [
        Delivery(job, verdict, read.sha256, read.size, targets["rgb"]).parcel("m")
        for job, verdict, read in zip(jobs, verdicts, decoded, strict=True)
        if verdict is not None
    ]


def test_an_answer_makes_the_outcome_the_child_had_wherever_the_file_went(
    data_root: Path, encoder: Encoder
) -> None:
    """A file's answer crosses as a name in its route's folder, or as the whole path when it went
    elsewhere, or as its error; the parent's outcome equals the child's either way."""
    parcel = parcels(data_root, encoder, ["red"], seed=4)[0]
    for destination in (parcel.route.folder / "p_1.png", parcel.root / "Review" / "p.png"):
        outcome = parcel.outcome(destination, dry_run=False)
        answer = pickle.loads(pickle.dumps(placing._answer(parcel, outcome)))
        assert answer == ("p_1.png" if destination.parent == parcel.route.folder else destination)
        assert placing._result(parcel, answer) == outcome
    error = FileExistsError(17, "taken")
    assert placing._result(parcel, placing._answer(parcel, error)) is error


def test_vectors_go_to_a_cache_file_made_again_after_its_state_folder_was_deleted(tmp_path: Path) -> None:
    """The placing process's cache connection follows its file: after the file is deleted (the
    daemon makes its state folder again), the next batch's vectors land in the new file, where
    the daemon reads, not in the deleted one's inode."""
    path = tmp_path / EMBEDDINGS_DB
    caches = placing._Caches()
    try:
        one, two = np.ones(4, dtype=np.float32), np.full(4, 2, dtype=np.float32)
        caches.put(HeldVectors(path, [("m", {"a" * 64: one})]))
        path.unlink()
        caches.put(HeldVectors(path, [("m", {"b" * 64: two})]))
        with EmbeddingCache(path) as cache:
            found = cache.get("m", ["a" * 64, "b" * 64])
        assert list(found) == ["b" * 64] and np.array_equal(found["b" * 64], two)
    finally:
        caches.close()


@pytest.mark.parametrize("started", ["with its journal", "before the journal was opened"])
def test_a_placing_process_killed_between_batches_fails_one_batch_and_the_next_starts_another(
    data_root: Path, encoder: Encoder, started: str
) -> None:
    """The batch sent to a dead process raises and moves nothing; sent again, a new process places it.
    Alike for a process `clipsort sort` started before it opened the journal (oneshot.placing_for),
    which the driver attaches to it then."""
    items = parcels(data_root, encoder, list(RGB) * 2, seed=6)
    first, second = items[:3], items[3:]
    state = data_root / ".clipsort"
    state.mkdir()
    early = started == "before the journal was opened"
    placing = PlacingProcess(None, folder=state) if early else None
    if placing is not None:
        placing.start()
    with Journal(state) as journal:
        if placing is None:
            placing = PlacingProcess(journal)
        else:
            placing.attach(journal)
        try:
            done = placing.place(first)
            assert all(isinstance(r, Outcome) for r in done)
            pid = placing.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(ChildProcessError, match="signal 9"):
                placing.place(second)
            assert placing.pid is None and all(item.job.path.exists() for item in second)
            again = placing.place(second)
            assert all(isinstance(r, Outcome) for r in again) and placing.pid not in (None, pid)
            assert not any(item.job.path.exists() for item in items)
            assert sorted(e.state for e in journal.entries()) == ["moved"] * 6 and not journal.planned()
        finally:
            placing.close()


def test_a_journal_the_process_cannot_open_keeps_every_file_where_it_is(
    data_root: Path, encoder: Encoder
) -> None:
    """Each file's result is the journal's error, as when the thread cannot write its intents."""
    items = parcels(data_root, encoder, list(RGB), seed=7)
    state = data_root / ".clipsort"
    state.mkdir()
    with Journal(state) as journal:
        placing = PlacingProcess(journal)
        (state / "journal.sqlite3").unlink()
        (state / "journal.sqlite3").mkdir()  # not a database: the child's connection fails
        try:
            results = placing.place(items)
        finally:
            placing.close()
    assert all(isinstance(r, JournalError) for r in results), results
    assert all(item.job.path.exists() for item in items)


def test_the_placing_process_ends_with_the_thread_that_started_it(data_root: Path, encoder: Encoder) -> None:
    """PR_SET_PDEATHSIG: a placer thread that ends without closing it (a process killed) takes it along."""
    items = parcels(data_root, encoder, ["red"], seed=8)
    placing = PlacingProcess(None)
    started: list[int] = []

    def place() -> None:
        placing.place(items)
        pid = placing.pid
        assert pid is not None
        started.append(pid)

    thread = threading.Thread(target=place)
    thread.start()
    thread.join(60)
    [pid] = started
    wait_until_dead_unreaped(pid, timeout=30)
