"""System tests of reliability: the real daemon killed, fed malformed files, and short of disk."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsort.store.journal import Journal
from tests.daemonproc import Daemon, children, drop, picture_bytes, sha, slots, sorted_files, start
from tests.helpers import RGB, clipsort_process, remove_deep
from tests.synthetic import draw, make_dataset, save
from tests.waiting import wait_until, wait_until_dead_unreaped


def removed(folder: Path) -> bool:
    """``rm -rf folder`` as a person runs it again when it fails: the daemon may write a file into
    the tree, or remove one, between rmtree's listing of a folder and its removal."""
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.ENOENT):
            raise
        return not folder.exists()
    return True


def placed_exactly_once(dataset: Path, expected: list[str]) -> str | None:
    """None when every hash in ``expected`` is placed exactly once and nothing else is; else which
    are missing (and whether the inbox still holds them) and which are placed twice, and where."""
    wanted, placed = set(expected), dict[str, list[str]]()
    for area in ("Dataset", "Review", "Rejected"):
        for path in (dataset / area).rglob("*"):
            if path.is_file():
                placed.setdefault(sha(path), []).append(str(path.relative_to(dataset)))
    waiting = {sha(path): path.name for path in (dataset / "Images").rglob("*") if path.is_file()}
    missing = {h[:12]: waiting.get(h, "not in Images/ either") for h in expected if h not in placed}
    twice = {h[:12]: where for h, where in placed.items() if len(where) > 1}
    unknown = {h[:12]: where for h, where in placed.items() if h not in wanted}
    if not (missing or twice or unknown):
        return None
    return f"missing {missing}; placed more than once {twice}; placed, not expected {unknown}"


@pytest.mark.parametrize("place_in", ["thread", "process"])
def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path, place_in: str
) -> None:
    """500 files streamed across ten SIGKILLs: each original ends up exactly once, sorted.

    With ``place_in = "process"`` the kill takes the placing process along (it dies with the placer
    thread that started it), wherever it was in its batch."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=2, seed=3)
    staging = tmp_path / "staging"
    staging.mkdir()
    colors = list(RGB)
    pictures = [picture_bytes(staging, colors[k % 3], 1000 + k, "p.png") for k in range(500)]
    assert len({hashlib.sha256(p).hexdigest() for p in pictures}) == 500
    chance = random.Random(20261126)
    home = tmp_path / "home"
    for round_ in range(10):
        daemon = start(daemons, root, tiny_model, home, settle_seconds=0.05, batch_size=8, place_in=place_in)
        burst = pictures[round_ * 50 : (round_ + 1) * 50]

        def stream(burst: list[bytes] = burst, round_: int = round_) -> None:
            for k, data in enumerate(burst):
                drop(dataset / "Images", f"r{round_}-{k:02d}.png", data)
                time.sleep(0.004)

        writer = threading.Thread(target=stream)
        writer.start()
        time.sleep(chance.uniform(0.05, 0.6))
        assert daemon.process is not None
        daemon.process.kill()  # SIGKILL: no handler runs
        daemon.process.wait(timeout=10)
        writer.join()
    final = start(daemons, root, tiny_model, home, settle_seconds=0.05, place_in=place_in)

    def inbox_empty() -> bool:
        """the inbox is empty"""
        return not list((dataset / "Images").iterdir())

    wait_until(inbox_empty, timeout=120)
    started = [event for daemon in daemons for event in daemon.events("placer_started")]
    assert bool(started) is (place_in == "process"), final.log_tail()
    assert final.stop() == 0
    expected = sorted(hashlib.sha256(p).hexdigest() for p in pictures)
    assert (problem := placed_exactly_once(dataset, expected)) is None, problem
    assert not list(dataset.rglob(".clipsort-*")), "temporary copies left behind"
    journal = Journal(home / "state")
    assert journal.planned() == []
    moved = [e for e in journal.entries() if e.state == "moved"]
    assert sorted(e.intent.sha256 for e in moved) == expected, "the journal knows where every file went"
    assert all(e.destination is not None and sha(e.destination) == e.intent.sha256 for e in moved)


def test_shared_memory_of_a_daemon_killed_with_its_children_is_reclaimed_at_the_next_start(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """SIGKILL to the daemon and every child (systemd's cgroup kill): the next daemon unlinks the slots."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=2, seed=3)
    home = tmp_path / "home"
    home.mkdir()
    daemon = Daemon(root, tiny_model, home, settle_seconds=0.05)
    daemons.append(daemon)
    # Executed, not forked from the test's server (tests/warmstart.py): this test reaps it (below).
    daemon.start(fresh=True)
    drop(dataset / "Images", "first.png", picture_bytes(tmp_path, "red", 1, "p.png"))
    wait_until(lambda: sorted_files(dataset), timeout=60)
    assert daemon.process is not None
    pid = daemon.process.pid
    left = slots(pid)
    assert left, "the decoding processes' slots exist while the daemon runs"
    family = [pid, *children(pid)]  # the decoding processes and Python's resource tracker
    for member in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
    wait_until_dead_unreaped(pid)  # until it is reaped, no pool beside this test reclaims its slots
    assert slots(pid) == left, "SIGKILL unlinks nothing"
    daemon.process.wait(timeout=10)
    again = start(daemons, root, tiny_model, home, settle_seconds=0.05)
    drop(dataset / "Images", "second.png", picture_bytes(tmp_path, "red", 2, "p.png"))
    wait_until(lambda: len(sorted_files(dataset)) == 2, timeout=60)
    # Whichever decoding pool starts next on this machine reclaims them: this daemon's, or one a
    # test beside this one started meanwhile (the suite runs on several workers). That a pool's
    # start reclaims and says so is test_decodeprocesses.py's.
    assert slots(pid) == set(), "reclaimed by the next decoding pool that started"
    assert again.stop() == 0
    assert again.process is not None
    assert slots(again.process.pid) == set(), "a clean stop unlinks its own slots"


def test_malformed_input_is_quarantined_or_left_alone_and_the_daemon_carries_on(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """Empty, truncated, non-image, bomb, oversized -> Rejected/; FIFO, symlink -> left; odd names sorted."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    inbox = dataset / "Images"
    make_dataset(dataset, RGB, references=3, seed=3)
    daemon = start(
        daemons,
        root,
        tiny_model,
        tmp_path / "home",
        max_wait_seconds=2.0,
        max_pixels=20_000,
        max_file_mb=0.02,
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    good = {
        "ünïcödé ☃.png": "red",
        "with  spaces .png": "green",
        "new\nline.png": "blue",
        "-leading-dash.png": "red",
        "x" * 251 + ".png": "green",
        "$(touch pwned).png": "blue",
    }
    for k, (name, color) in enumerate(good.items()):
        drop(inbox, name, picture_bytes(staging, color, 40 + k, "g.png"))
    jpeg = staging / "whole.jpg"
    Image.effect_noise((96, 96), 60).convert("RGB").save(jpeg, quality=95)
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "truncated.jpg").write_bytes(jpeg.read_bytes()[:700])
    (inbox / "text.jpg").write_bytes(b"this is not a picture\n" * 20)
    Image.new("L", (400, 400)).save(inbox / "bomb.png")  # 160,000 pixels, a few hundred bytes
    Image.effect_noise((200, 200), 80).save(inbox / "huge.png")  # over 20 KiB
    os.mkfifo(inbox / "fifo.jpg")
    (inbox / "link.png").symlink_to(staging / "elsewhere.png")
    save(draw(np.random.default_rng(9), "red", "circle", 80), staging / "elsewhere.png")

    bad = {"empty.jpg", "truncated.jpg", "text.jpg", "bomb.png", "huge.png"}
    wait_until(lambda: {p.name for p in (dataset / "Rejected").glob("*")} == bad, timeout=60)
    wait_until(lambda: set(sorted_files(dataset)) == set(good), timeout=30)
    landed = sorted_files(dataset)
    assert sum(landed[name] == color for name, color in good.items()) >= 5
    assert sorted(p.name for p in inbox.iterdir()) == ["fifo.jpg", "link.png"]
    assert (staging / "elsewhere.png").exists()
    # A batch's canonical lines are written once its moves are done (one write per batch).
    wait_until(lambda: bad <= {Path(r["file"]).name for r in daemon.events("rejected")}, timeout=30)
    reasons = {Path(r["file"]).name: r["reason"] for r in daemon.events("rejected")}
    assert "empty" in reasons["empty.jpg"] and "truncated" in reasons["truncated.jpg"]
    assert "pixel limit" in reasons["bomb.png"] and "file size limit" in reasons["huge.png"]
    assert "allowed format" in reasons["text.jpg"]
    waited = [Path(r["file"]).name for r in daemon.events("waiting")]
    assert sorted(waited) == ["empty.jpg", "truncated.jpg"], "one line each, as the wait began"
    assert "empty" in daemon.events("waiting")[waited.index("empty.jpg")]["reason"]
    assert {Path(r["path"]).name for r in daemon.events("special_file_skipped")} == {"fifo.jpg"}
    assert {Path(r["path"]).name for r in daemon.events("symlink_skipped")} == {"link.png"}
    journal = Journal(daemon.state)

    def rejected() -> dict[str, str | None]:
        """Outcomes are journalled just after the moves (one commit per batch)."""
        return {e.intent.source.name: e.reason for e in journal.entries() if e.state == "rejected"}

    wait_until(lambda: len(rejected()) == len(bad), timeout=10)
    assert rejected() == reasons
    assert daemon.status().state == "running"
    assert daemon.stop() == 0


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], check=False, capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs to sort into (a real full, or read-only, file system)."""
    folder = tmp_path / "Data" / "rgb" / "Dataset"
    folder.mkdir(parents=True)
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)):
        pytest.skip("needs permission to mount a tmpfs")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def daemon_on_small_disk(daemons: list[Daemon], tmp_path: Path, tiny_model: Path) -> tuple[Path, Daemon]:
    """The rgb dataset (its Dataset/ the small_disk mount) and a daemon sorting it."""
    root = tmp_path / "Data"
    make_dataset(root / "rgb", RGB, references=3, seed=3)
    # The noise pictures must all go to Dataset/, the disk under test: with the unknown gate on, most
    # would be held in Review/ (they show no class), on another file system.
    home = tmp_path / "home"
    # Debug lines: each doubling of a fault's back-off is one (retry_backoff), what the tests wait on.
    daemon = start(
        daemons, root, tiny_model, home, settle_seconds=0.05, unknown_gate=False, log_level="debug"
    )
    return root / "rgb", daemon


def backed_off(daemon: Daemon, cause: str, seconds: float, timeout: float = 60.0) -> None:
    """Wait until the daemon's back-off for ``cause`` has grown to ``seconds`` (rounds of retries met it)."""
    daemon.wait_event(
        "retry_backoff", lambda r: r["cause"] == cause and r["seconds"] >= seconds, timeout=timeout
    )


def drop_noise(dataset: Path, tmp_path: Path, count: int, seed: int) -> dict[str, bytes]:
    """``count`` noise PNGs dropped into the inbox (noise compresses badly: ~12 KiB each); name -> bytes."""
    rng = np.random.default_rng(seed)
    pictures = {}
    for k in range(count):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "p.png")
        pictures[f"n{k:02d}.png"] = (tmp_path / "p.png").read_bytes()
        drop(dataset / "Images", f"n{k:02d}.png", pictures[f"n{k:02d}.png"])
    return pictures


def test_full_and_read_only_destinations_lose_nothing_and_resume(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path, small_disk: Path
) -> None:
    """ENOSPC and EROFS: files stay in Images/, one error line per cause, sorted once the fault clears."""
    dataset, daemon = daemon_on_small_disk(daemons, tmp_path, tiny_model)
    pictures = drop_noise(dataset, tmp_path, 24, seed=0)  # 288 KiB for a 64 KiB disk
    wait_until(lambda: daemon.events("move_failed"), timeout=30)
    backed_off(daemon, f"OSError:{errno.ENOSPC}", 2.0)  # three rounds of retries met the full disk
    full = [r for r in daemon.events("move_failed") if "No space" in r["error"]]
    assert len(full) == 1, "one error line per cause, not one per retry"
    assert len(list((dataset / "Images").iterdir())) > 0
    assert daemon.process is not None and daemon.process.poll() is None
    assert _mount("-o", "remount,size=4m", str(small_disk))
    wait_until(lambda: not list((dataset / "Images").iterdir()), timeout=60)

    assert _mount("-o", "remount,ro", str(small_disk))
    late = picture_bytes(tmp_path, "red", 77, "late.png")
    drop(dataset / "Images", "late.png", late)
    wait_until(lambda: any("Read-only" in r["error"] for r in daemon.events("move_failed")), timeout=30)
    assert (dataset / "Images" / "late.png").read_bytes() == late
    assert _mount("-o", "remount,rw", str(small_disk))
    wait_until(lambda: sorted_files(dataset).get("late.png") == "red", timeout=60)
    everything = {hashlib.sha256(d).hexdigest() for d in [*pictures.values(), late]}
    assert (problem := placed_exactly_once(dataset, sorted(everything))) is None, problem
    assert not list(dataset.rglob(".clipsort-*"))
    assert daemon.stop() == 0


def test_space_freed_in_the_destination_is_used_at_once_not_after_the_back_off(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path, small_disk: Path
) -> None:
    """A full disk backs off up to 30 s; deleting sorted files there makes the waiting ones go now."""
    dataset, daemon = daemon_on_small_disk(daemons, tmp_path, tiny_model)
    drop_noise(dataset, tmp_path, 12, seed=1)  # the 64 KiB disk fills after a few
    first_failure = daemon.wait_event("move_failed", timeout=30)
    assert "No space" in first_failure["error"]
    backed_off(daemon, f"OSError:{errno.ENOSPC}", 8.0)  # the next retry is 8 s away, or more
    waiting = len(list((dataset / "Images").iterdir()))
    assert waiting > 0
    freed = time.monotonic()
    for path in [p for p in small_disk.rglob("*.png")][:3]:
        path.unlink()  # a person frees space in the destination
    wait_until(lambda: len(list((dataset / "Images").iterdir())) < waiting, timeout=30)
    assert time.monotonic() - freed < 4, "noticed at the deletion, not at the next back-off"
    assert daemon.events("retries_expedited")


def test_a_full_state_folder_is_one_error_per_cause_and_work_resumes_when_space_returns(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """A full state disk: nothing moves, each failure is logged once; freed space sorts in seconds."""
    state = tmp_path / "home" / "state"
    state.mkdir(parents=True)
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(state)):
        pytest.skip("needs permission to mount a tmpfs")
    try:
        root = tmp_path / "Data"
        make_dataset(root / "rgb", RGB, references=3, seed=3)
        daemon = start(daemons, root, tiny_model, tmp_path / "home", settle_seconds=0.05, log_level="debug")
        filler = state / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        with contextlib.suppress(OSError):  # unbuffered: the write that meets the end of the disk raises
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        pictures = {f"p{k}.png": picture_bytes(tmp_path, "red", 300 + k, "p.png") for k in range(8)}
        for name, data in pictures.items():
            drop(root / "rgb" / "Images", name, data)
        daemon.wait_event("state_write_failed", timeout=30)
        backed_off(daemon, "journal", 2.0)  # three rounds of retries met the full disk
        assert len(daemon.events("state_write_failed")) == 1, "one error line per cause, not one per retry"
        assert len(daemon.events("status_write_failed")) <= 1
        assert len(daemon.events("cache_write_failed")) <= 1
        assert not daemon.events("inference_failed"), "a full state folder is not a model failure"
        assert sorted(p.name for p in (root / "rgb" / "Images").iterdir()) == sorted(pictures)
        freed = time.monotonic()
        filler.unlink()
        wait_until(lambda: not list((root / "rgb" / "Images").iterdir()), timeout=30)
        assert time.monotonic() - freed < 5, "noticed when space returned, not after the back-off"
        assert daemon.events("state_writable_again")
        expected = sorted(sha_of(d) for d in pictures.values())
        assert (problem := placed_exactly_once(root / "rgb", expected)) is None, problem
        assert daemon.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)


def sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_one_daemon_per_root_and_the_one_shot_commands_wait_for_it(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """A second daemon exits 2 naming the first's PID; sort, undo, train refuse; after a stop, sort runs."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=3, seed=5)
    first = start(daemons, root, tiny_model, tmp_path / "home")
    assert first.process is not None
    second = clipsort_process("run", "--config", str(first.config))
    assert second.returncode == 2, second.stderr
    assert f"(pid {first.process.pid}) serves" in second.stderr and "Traceback" not in second.stderr
    for command in (["sort"], ["undo"], ["train", "-d", "rgb"]):
        refused = clipsort_process(*command, "--config", str(first.config))
        assert refused.returncode == 2, (command, refused.stderr)
        assert "stop it first" in refused.stderr.strip().splitlines()[-1]
    assert first.stop() == 0
    save(draw(np.random.default_rng(4), "red", "circle"), dataset / "Images" / "later.png")
    done = clipsort_process("sort", "--config", str(first.config))
    assert done.returncode == 0, done.stderr
    assert sorted_files(dataset)["later.png"] == "red"


def test_a_deep_chain_and_thousands_of_folders_stop_no_dataset(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """A 1,200-deep chain and 5,000 sibling folders in one inbox: both datasets keep sorting, restart too.

    Before, watchdog's recursive walk died of RecursionError in its reader thread (no event ever
    again, for any dataset), rescans raised it too, and a restart crashed at start.
    """
    root = tmp_path / "Data"
    make_dataset(root / "rgb", RGB, references=2, seed=3)
    make_dataset(root / "other", RGB, references=2, seed=4)
    home = tmp_path / "home"
    daemon = start(daemons, root, tiny_model, home, settle_seconds=0.05, unknown_gate=False)
    chain = bottom = tmp_path / "chain"
    chain.mkdir()
    for _ in range(1200):  # one level at a time: pathlib's mkdir(parents=True) recurses
        bottom = bottom / "d"
        bottom.mkdir()
    save(draw(np.random.default_rng(1), "red", "circle", 64), chain / "d" / "d" / "near.png")
    save(draw(np.random.default_rng(2), "red", "circle", 64), bottom / "far.png")
    os.rename(chain, root / "rgb" / "Images" / "chain")  # moved in whole, as a person or a sync does
    try:
        _sorted_beside_a_deep_chain(
            daemons, daemon, root, tmp_path, tiny_model, home, bottom.relative_to(chain)
        )
    finally:
        remove_deep(root / "rgb" / "Images" / "chain")


def _sorted_beside_a_deep_chain(
    daemons: list[Daemon],
    daemon: Daemon,
    root: Path,
    tmp_path: Path,
    tiny_model: Path,
    home: Path,
    below: Path,
) -> None:
    """The rest of the test above, run with the chain in the inbox (its caller removes the chain)."""
    siblings = root / "rgb" / "Images" / "many"
    for k in range(5000):
        (siblings / f"f{k:04d}").mkdir(parents=True)
    drop(root / "other" / "Images", "meanwhile.png", picture_bytes(tmp_path, "blue", 5, "p.png"))
    wait_until(lambda: sorted_files(root / "other").get("meanwhile.png") == "blue", timeout=60)
    wait_until(lambda: sorted_files(root / "rgb").get("near.png") == "red", timeout=60)
    assert daemon.wait_event("folder_too_deep")["max_depth"] == 32, "max_folder_depth's default"
    assert not daemon.events("observer_died") and daemon.status().state == "running"
    assert daemon.stop() == 0
    again = start(daemons, root, tiny_model, home, settle_seconds=0.05, unknown_gate=False)
    drop(root / "rgb" / "Images", "after.png", picture_bytes(tmp_path, "green", 6, "p.png"))
    wait_until(lambda: sorted_files(root / "rgb").get("after.png") == "green", timeout=60)
    assert not daemon.events("intake_failed") and not again.events("intake_failed")
    far = root / "rgb" / "Images" / "chain" / below / "far.png"
    assert far.exists(), "below max_depth: left alone, where it was"
    assert again.stop() == 0


def test_a_state_folder_deleted_mid_burst_is_recreated_and_no_second_daemon_runs(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """The state folder deleted during a burst: every file sorted once, the lock re-taken, one line.

    Before, the daemon sorted nothing more, logged "recreated" 141 times while nothing was, and a
    second daemon started beside it (the lock file went with the folder).
    """
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=2, seed=3)
    home = tmp_path / "home"
    daemon = start(daemons, root, tiny_model, home, settle_seconds=0.05, unknown_gate=False)
    colours = list(RGB)
    pictures = {
        f"b{k:03d}.png": picture_bytes(tmp_path, colours[k % 3], 300 + k, "p.png") for k in range(200)
    }
    for name, data in list(pictures.items())[:100]:
        drop(dataset / "Images", name, data)
    wait_until(lambda: len(sorted_files(dataset)) >= 20, timeout=60)
    # Moved aside first, so the daemon sees one deletion: rm -rf retried after an ENOTEMPTY (the
    # daemon wrote meanwhile) could delete the folder the daemon had just made again, and it would
    # then rightly say "recreated" twice (seen in CI).
    deleted = tmp_path / "state-deleted"
    daemon.state.rename(deleted)
    wait_until(lambda: removed(deleted), timeout=30)
    for name, data in list(pictures.items())[100:]:
        drop(dataset / "Images", name, data)
    recreated = daemon.wait_event("state_folder_recreated", timeout=30)
    assert "history" in recreated["lost"]
    # Started once the folder is back: the lock went with the folder, and the daemon took it again.
    # (Started before, either daemon may make the folder first and the other stops: one runs.)
    (tmp_path / "second").mkdir()
    second = Daemon(root, tiny_model, tmp_path / "second", state_dir=str(daemon.state))
    daemons.append(second)
    second.start(wait=False)
    assert second.process is not None and second.process.wait(timeout=120) != 0, "the second refused to run"
    assert "serves" in second.log.read_text(), "refused: another daemon serves the root"
    wait_until(lambda: not list((dataset / "Images").iterdir()), timeout=120)
    assert sorted(sha(p) for p in (dataset / "Dataset").rglob("*") if p.is_file()) == sorted(
        hashlib.sha256(data).hexdigest() for data in pictures.values()
    ), "every file sorted, once"
    assert len(daemon.events("state_folder_recreated")) == 1
    assert (daemon.state / "daemon.lock").read_text().strip() == str(
        daemon.process.pid if daemon.process else ""
    )
    with Journal(daemon.state) as journal:
        assert journal.entries(), "the journal was recreated and records what came after"
    assert daemon.stop() == 0
