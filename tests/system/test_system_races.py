"""System tests of races against the real daemon: folders swapped for symlinks, files replaced mid-sort."""

from __future__ import annotations

import ctypes
import hashlib
import os
import random
import threading
import time
from pathlib import Path

from clipsort.store.journal import Journal
from tests.daemonproc import Daemon, drop, picture_bytes, sha, start
from tests.helpers import RGB
from tests.synthetic import make_dataset
from tests.waiting import wait_until

AT_FDCWD = -100
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(first: Path, second: Path) -> None:
    """Swap two names atomically (``renameat2(RENAME_EXCHANGE)``): each keeps existing throughout."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def placed(dataset: Path) -> list[Path]:
    """Every file in the dataset's Dataset/, Review/ and Rejected/ folders."""
    return [
        p for area in ("Dataset", "Review", "Rejected") for p in (dataset / area).rglob("*") if p.is_file()
    ]


def journal_matches_the_files(home: Path) -> None:
    """Every moved entry's hash is that of the file now at its destination."""
    with Journal(home / "state") as journal:
        moved = [entry for entry in journal.entries() if entry.state == "moved"]
    assert moved
    assert all(
        entry.destination is not None and sha(entry.destination) == entry.intent.sha256 for entry in moved
    )


def test_a_class_folder_swapped_for_a_symlink_never_sends_a_file_outside_the_root(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """Dataset/red swapped with a symlink out of the root every 0.5 ms as 400 pictures arrive: none leave."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=2, seed=5)
    red = dataset / "Dataset" / "red"
    red.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    decoy = dataset / "Dataset" / ".decoy"
    decoy.symlink_to(outside)
    staging = tmp_path / "staging"
    staging.mkdir()
    pictures = [picture_bytes(staging, "red", 4000 + k, "p.png") for k in range(400)]
    home = tmp_path / "home"
    daemon = start(daemons, root, tiny_model, home, settle_seconds=0.05, rescan_seconds=1.0)
    stop = threading.Event()
    swaps = 0

    def swap() -> None:
        nonlocal swaps
        while not stop.is_set():
            exchange(red, decoy)
            swaps += 1
            time.sleep(0.0005)

    swapper = threading.Thread(target=swap, name="test-swapper")
    swapper.start()
    try:
        for k, data in enumerate(pictures):
            drop(dataset / "Images", f"red-{k:03d}.png", data)
            time.sleep(0.002)
        wait_until(lambda: len(daemon.events("unsafe_destination")) >= 5, timeout=120)
    finally:
        stop.set()
        swapper.join(timeout=10)
    assert not swapper.is_alive()
    if red.is_symlink():  # an odd number of swaps: the real folder is called .decoy now
        exchange(red, decoy)
    assert swaps > 100 and red.is_dir() and not red.is_symlink()
    wait_until(lambda: not list((dataset / "Images").iterdir()), timeout=120)
    assert daemon.stop() == 0
    assert list(outside.iterdir()) == [], "a file was written through the symlink"
    assert sorted(sha(path) for path in placed(dataset)) == sorted(sha_of(data) for data in pictures)
    journal_matches_the_files(home)


def test_a_file_replaced_right_after_it_was_read_is_filed_by_its_own_bytes(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """300 pictures each replaced under the same name at a random moment: the journal never lies."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=2, seed=6)
    staging = tmp_path / "staging"
    staging.mkdir()
    pairs = [
        (picture_bytes(staging, "red", 5000 + k, "r.png"), picture_bytes(staging, "blue", 6000 + k, "b.png"))
        for k in range(300)
    ]
    home = tmp_path / "home"
    daemon = start(daemons, root, tiny_model, home, settle_seconds=0.02, batch_size=4)
    chance = random.Random(20261202)
    for k, (first, second) in enumerate(pairs):
        drop(dataset / "Images", f"p{k:03d}.png", first)
        time.sleep(chance.uniform(0.0, 0.06))
        drop(dataset / "Images", f"p{k:03d}.png", second)  # rename over it, as an editor's save does
    wait_until(lambda: not list((dataset / "Images").iterdir()), timeout=120)
    assert daemon.stop() == 0
    hashes = [sha(path) for path in placed(dataset)]
    assert len(hashes) == len(set(hashes)), "a file was filed twice"
    firsts, seconds = {sha_of(a) for a, _ in pairs}, {sha_of(b) for _, b in pairs}
    assert seconds <= set(hashes) <= firsts | seconds
    journal_matches_the_files(home)
