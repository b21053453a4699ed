"""System: ``clipsort sort --engine ray`` as a process joined to a local Ray, killed where it hurts.

A Ray worker killed in the middle of classification, or the run itself killed while it places, loses
and duplicates nothing: every picture's bytes are in exactly one place afterwards, and the journal
names each one where it lies. Without Ray, the engine is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipsort.store.journal import Journal
from tests.helpers import REPO, RGB, clipsort_process, python_process
from tests.synthetic import make_dataset
from tests.waiting import wait_until

FILES = 240  # per dataset, two datasets


def archive(root: Path) -> Counter[str]:
    """Two datasets' inboxes full of pictures (strangers among them); the hashes of every file."""
    for name, seed in (("photos", 3), ("scans", 4)):
        make_dataset(
            root / name, RGB, references=3, inbox=["red", "green", "blue", "yellow"] * (FILES // 4), seed=seed
        )
    return hashes(root, "Images")


def hashes(root: Path, *folders: str) -> Counter[str]:
    """The sha256 of every file in ``folders`` of every dataset (a multiset: a copy counts twice)."""
    found: Counter[str] = Counter()
    for dataset in ("photos", "scans"):
        for folder in folders:
            for path in (root / dataset / folder).rglob("*"):
                if path.is_file():
                    found[hashlib.sha256(path.read_bytes()).hexdigest()] += 1
    return found


def placed_files(root: Path) -> Iterator[Path]:
    for dataset in ("photos", "scans"):
        for folder in ("Dataset", "Review", "Rejected"):
            yield from (p for p in (root / dataset / folder).rglob("*") if p.is_file())


def environment(model: Path, **settings: str) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "CLIPSORT_MODEL": str(model),
        **{f"CLIPSORT_{key.upper()}": value for key, value in settings.items()},
    }


def start(root: Path, address: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "clipsort", "sort", "--root", str(root), "--engine", "ray"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "--address", address], stdout=out, stderr=subprocess.STDOUT, env=env
        )


def shards(root: Path, folder: str, suffix: str) -> int:
    """Committed markers in the run's ``folder`` (decisions, placed)."""
    return len(list((root / ".clipsort" / "ray-run" / folder).glob(f"*{suffix}")))


def listed_shards(root: Path) -> int:
    committed = root / ".clipsort" / "ray-run" / "manifest" / "_COMMITTED"
    return len(json.loads(committed.read_bytes())["shards"])


def classifier_processes() -> list[int]:
    """Ray's classifier actors on this machine (Ray titles each worker process by its task)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"MapBatches(Classifier)" in title:
                found.append(int(entry.name))
    return found


def assert_each_file_once(root: Path, before: Counter[str], log: Path) -> None:
    """Every picture's bytes lie in exactly one place, and the journal names each where it lies."""
    assert hashes(root, "Images", "Dataset", "Review", "Rejected") == before, log.read_text()[-4000:]
    assert not list((root / "photos" / "Images").iterdir()), log.read_text()[-4000:]
    with Journal(root / ".clipsort") as journal:
        entries = journal.entries()
        assert not [e for e in entries if e.state == "planned"]
        settled = [e for e in entries if e.state in ("moved", "rejected")]
        assert sorted(str(e.destination) for e in settled) == sorted(str(p) for p in placed_files(root))
        for path in placed_files(root):
            entry = journal.at(path)
            assert entry is not None and entry.intent.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# Deadlines for a machine busy with other work: there Ray's own start-up and listing took 30-40 s
# where they take 1-2 s on a quiet one, and a first shard could take minutes. They cost nothing when
# the run is quick; the test-wide limit (pyproject's 300 s) is raised to match.
SLOW = 600


@pytest.mark.timeout(3 * SLOW)
def test_a_classifier_killed_mid_run_loses_and_duplicates_nothing(
    tmp_path: Path, tiny_model: Path, ray_cluster: str
) -> None:
    """SIGKILL to the actor holding the model once some shards are committed: Ray restarts it and
    retries its batch; the run finishes, every file placed once."""
    root = tmp_path / "Data"
    before = archive(root)
    log = tmp_path / "sort.log"
    run = start(root, ray_cluster, environment(tiny_model, ray_shard_files="16", batch_size="4"), log)
    try:
        wait_until(lambda: classifier_processes() and shards(root, "decisions", ".done") >= 1, timeout=SLOW)
        committed, total = shards(root, "decisions", ".done"), listed_shards(root)
        victim = classifier_processes()[0]
        os.kill(victim, signal.SIGKILL)
        assert committed < total, f"classifying ended before the kill ({committed} of {total}): nothing shown"
        assert run.wait(timeout=SLOW) == 0, log.read_text()[-4000:]
    finally:
        run.kill()
    assert victim not in classifier_processes()
    assert_each_file_once(root, before, log)


@pytest.mark.timeout(3 * SLOW)
def test_a_run_killed_while_placing_places_the_rest_exactly_once_when_run_again(
    tmp_path: Path, tiny_model: Path, ray_cluster: str
) -> None:
    """SIGKILL to `clipsort sort` once its first files are placed; the same command again places
    the rest and nothing twice (a move cut off before its journal entry is settled on start)."""
    root = tmp_path / "Data"
    before = archive(root)
    log = tmp_path / "sort.log"
    env = environment(tiny_model, ray_shard_files="16", batch_size="1")
    run = start(root, ray_cluster, env, log)
    try:
        wait_until(lambda: next(placed_files(root), None) is not None, timeout=SLOW, every=0.005)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
    finally:
        run.kill()
    left = len(list((root / "scans" / "Images").iterdir()))
    assert left, "placing ended before the kill: nothing shown"
    assert shards(root, "placed", ".done") < listed_shards(root)
    again = clipsort_process(
        "sort", "--root", str(root), "--engine", "ray", "--address", ray_cluster, env=env, timeout=SLOW
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert "ray_run_resumed" in again.stdout + again.stderr, again.stderr[-4000:]
    assert_each_file_once(root, before, log)


def test_without_ray_the_engine_is_refused_in_one_line(data_root: Path) -> None:
    """No traceback, no model loaded: exit 2 and the extra to install."""
    make_dataset(data_root / "ds", RGB, references=1, inbox=["red"])
    found = python_process(
        "-c",
        # Python's own way of blocking an import: what a machine without the extra sees.
        "import sys; sys.modules['ray'] = None; from clipsort.cli import main; main()",
        "sort",
        "--root",
        str(data_root),
        "--engine",
        "ray",
    )
    assert found.returncode == 2, found.stderr
    assert found.stderr.strip() == "clipsort: error: --engine ray needs Ray: pip install 'clipsort[ray]'"
    assert (data_root / "ds" / "Images" / "img0000.png").exists()


@pytest.mark.parametrize("flags", [["--address", "127.0.0.1:1"]])
def test_an_address_without_the_ray_engine_is_a_user_error(data_root: Path, flags: list[str]) -> None:
    found = clipsort_process("sort", "--root", str(data_root), *flags)
    assert found.returncode == 2 and found.stderr.strip() == (
        "clipsort: error: --address names a Ray cluster: use it with --engine ray"
    ), found.stderr
