"""Tests for clipsort.decode.decodeprocesses: real worker processes, real shared memory, real kills."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from structlog.testing import capture_logs

from clipsort.decode.decodeprocesses import SLOT_PREFIX, ProcessDecodePool
from clipsort.decode.decoding import read_and_decode
from clipsort.decode.images import DecodeLimits, centre_crop
from clipsort.errors import ImageIncomplete, ImageRejected
from tests.daemonproc import slots
from tests.synthetic import save
from tests.waiting import live_threads, wait_until, wait_until_dead_unreaped

LIMITS = DecodeLimits(formats=("JPEG", "PNG"), max_pixels=50_000_000, max_bytes=10_000_000)
SIDE = 32
ROOMY = DecodeLimits(formats=("PNG",), max_pixels=10**9, max_bytes=10**8)  # big pictures get decoded


def photos(folder: Path, count: int) -> list[Path]:
    """``count`` small JPEGs, each with different noise (different bytes, different crops)."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for k in range(count):
        path = folder / f"p{k:03d}.jpg"
        save(Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)), path)
        paths.append(path)
    return paths


def in_a_thread(path: Path, limits: DecodeLimits = LIMITS) -> tuple[str, int, np.ndarray | None, str]:
    """What the threaded path makes of ``path``: hash, size, crop, rejection."""
    read = read_and_decode(path, limits, SIDE, functools.partial(centre_crop, side=SIDE))
    rejected = str(read.picture) if isinstance(read.picture, ImageRejected) else ""
    return read.sha256, read.size, read.crop, rejected


def test_crops_hashes_and_rejections_match_the_threaded_path(tmp_path: Path) -> None:
    """Every limit holds in the workers: format, pixel cap, size cap, a truncated file; the rest decode."""
    files = photos(tmp_path, 5)
    (tmp_path / "text.jpg").write_bytes(b"not a picture")
    save(Image.new("RGB", (1200, 1000)), tmp_path / "many-pixels.png")
    (tmp_path / "huge.jpg").write_bytes(files[0].read_bytes() + b"\0" * 6000)
    whole = files[1].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (40, 40)).save(gif)
    odd = [tmp_path / name for name in ("text.jpg", "many-pixels.png", "huge.jpg", "cut.jpg", "anim.gif")]
    limits = DecodeLimits(formats=("JPEG", "PNG"), max_pixels=1_000_000, max_bytes=8000)
    with ProcessDecodePool(limits, 2, timeout=30) as pool:
        got = pool.collect(pool.start(files + odd, SIDE), 30)
    for path, read in zip(files + odd, got, strict=True):
        sha256, size, crop, rejected = in_a_thread(path, limits)
        assert (read.sha256, read.size) == (sha256, size), path.name
        if crop is None:
            assert read.crop is None and str(read.picture) == rejected, path.name
        else:
            assert read.crop is not None and np.array_equal(read.crop, crop), path.name
    reasons = [str(read.picture) for read in got[len(files) :]]
    assert "allowed format" in reasons[0] and "pixel limit" in reasons[1] and "file size limit" in reasons[2]
    assert isinstance(got[len(files) + 3].picture, ImageIncomplete), "a truncated file is retried later"


def test_a_worker_killed_mid_batch_loses_no_file(tmp_path: Path) -> None:
    """SIGKILL one worker while it decodes: its files are decoded again by a fresh one, each once."""
    files = photos(tmp_path, 400)
    with ProcessDecodePool(LIMITS, 2, timeout=30) as pool:
        wait_until(lambda: len(pool.pids) == 2)
        victim = pool.pids[0]
        futures = pool.start(files, SIDE)
        os.kill(victim, signal.SIGKILL)
        got = pool.collect(futures, 30)
        assert victim not in pool.pids
        wait_until(lambda: len(pool.pids) == 2)  # the dead worker is replaced (an interpreter starting)
    for path, read in zip(files, got, strict=True):
        sha256, _, crop, _ = in_a_thread(path)
        assert read.sha256 == sha256 and read.crop is not None and crop is not None
        assert np.array_equal(read.crop, crop)
    assert not live_threads(("clipsort-decoder",)), "the pool's threads ended with it"


def test_a_file_that_kills_its_worker_twice_is_rejected_with_the_reason(tmp_path: Path) -> None:
    """A 40-megapixel PNG past the time limit ends its worker twice and is rejected; its batch decodes."""
    files = photos(tmp_path, 6)
    slow = tmp_path / "slow.png"
    save(Image.new("RGB", (8000, 5000), (200, 10, 10)), slow)
    limits = DecodeLimits(formats=("JPEG", "PNG"), max_pixels=50_000_000, max_bytes=10_000_000)
    with ProcessDecodePool(limits, 1, timeout=0.3) as pool:
        got = pool.collect(pool.start([*files[:3], slow, *files[3:]], SIDE), 30)
    rejected = got[3]
    assert isinstance(rejected.picture, ImageRejected) and not isinstance(rejected.picture, ImageIncomplete)
    assert str(rejected.picture) == "decoding took longer than 0.3 s"
    assert all(read.crop is not None for read in got[:3] + got[4:])


def test_slots_are_bounded_and_reused(tmp_path: Path) -> None:
    """More batches than slots in flight: each waits for a free slot, and all decode."""
    files = photos(tmp_path, 8)
    before = slots(os.getpid())
    with ProcessDecodePool(LIMITS, 2, timeout=30, slots=2) as pool:
        pending = [pool.start(files, SIDE) for _ in range(12)]
        results = [pool.collect(futures, 30) for futures in pending]
        ours = slots(os.getpid()) - before
    first, last = results[0], results[-1]
    assert all(read.crop is not None for batch in results for read in batch)
    assert all(
        a.sha256 == b.sha256 and np.array_equal(np.asarray(a.crop), np.asarray(b.crop))
        for a, b in zip(first, last, strict=True)
    )
    assert 1 <= len(ours) <= 2, "at most the two slots, whatever the batches in flight"
    assert ours.isdisjoint(slots()), "closing the pool unlinks its slots"


def same(got: Sequence[np.ndarray | None], want: Sequence[np.ndarray | None]) -> bool:
    """Whether two lists of crops are equal, crop by crop (None never equals anything)."""
    pairs = zip(got, want, strict=True)
    return all(a is not None and b is not None and np.array_equal(a, b) for a, b in pairs)


def test_a_lending_pool_hands_crops_from_the_slot_and_reuses_it_only_once_released(tmp_path: Path) -> None:
    """With ``lends`` (the batch driver's pool) a batch's crops are read where the workers wrote
    them: the next batch waits for the one slot until the first is released, then is written over
    the first batch's crops. Crops still referenced when the pool closes stay readable."""
    files = photos(tmp_path, 4)
    expected = [in_a_thread(path)[2] for path in files]
    second: list[list[np.ndarray | None]] = []
    with ProcessDecodePool(LIMITS, 2, timeout=30, slots=1, lends=True) as pool:
        first = pool.start(files, SIDE)
        crops = [read.crop for read in pool.collect(first, 30)]
        assert same(crops, expected)
        waiting = threading.Thread(
            target=lambda: second.append(
                [read.crop for read in pool.collect(pool.start(files[::-1], SIDE), 30)]
            )
        )
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive(), "the second batch waits for the slot the first still holds"
        assert same(crops, expected)
        pool.release(first)
        waiting.join(30)
        assert not waiting.is_alive(), "released, the slot takes the second batch"
        assert same(second[0], expected[::-1])
        assert same(crops, expected[::-1]), "written where the first batch's crops were"
    # Closed with the second batch never released: its segment is unlinked, its crops still mapped.
    assert same(second[0], expected[::-1])


def mapped_segments(pid: int) -> list[str]:
    """The shared-memory segments process ``pid`` has mapped, "(deleted)" marking an unlinked one."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({line.split("/dev/shm/", 1)[1] for line in lines if f"/dev/shm/{SLOT_PREFIX}" in line})


def test_slots_are_named_after_their_owner_and_reclaimed_once_it_is_gone(tmp_path: Path) -> None:
    """A slot left by a process killed with SIGKILL is unlinked when the next pool starts; live ones stay."""
    holder = subprocess.Popen(
        [sys.executable, "-c", SLOT_HOLDER], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    left = holder.stdout.readline().strip()
    assert left.startswith(f"{SLOT_PREFIX}{holder.pid}-"), left
    assert left in slots()
    with ProcessDecodePool(LIMITS, 1, timeout=30):
        assert left in slots(), "its owner lives: the slot is in use"
    holder.kill()
    wait_until_dead_unreaped(holder.pid)  # until it is reaped, no pool beside this test reclaims it
    assert left in slots(), "SIGKILL unlinks nothing"
    holder.wait()
    with capture_logs() as logged, ProcessDecodePool(LIMITS, 1, timeout=30) as pool:
        assert left not in slots(), "the next pool reclaimed it"
        # One warning, whatever it counts: a test beside this one may have left slots too. (A pool
        # starting beside this test in the milliseconds since the reap would take the warning.)
        [said] = [line for line in logged if line["event"] == "shared_memory_reclaimed"]
        assert said["log_level"] == "warning"
        assert all(read.crop is not None for read in pool.collect(pool.start(photos(tmp_path, 2), SIDE), 30))


# A process that makes one slot as a pool does, says its name, and waits to be killed (its resource
# tracker would unlink the slot at a clean exit; a SIGKILL to the group, as systemd sends, kills both).
SLOT_HOLDER = """
import sys
from multiprocessing import resource_tracker
from clipsort.decode.decodeprocesses import _Slot
slot = _Slot()
memory = slot.fit(4096)
resource_tracker.unregister(memory._name, "shared_memory")
print(memory.name, flush=True)
sys.stdin.read()
"""


def test_a_worker_keeps_each_live_slot_mapped_and_lets_go_of_freed_ones(tmp_path: Path) -> None:
    """Batches rotating through two slots stay mapped in the worker; slots regrown bigger replace them."""
    small, large = photos(tmp_path, 8)[:2], photos(tmp_path, 8)
    with ProcessDecodePool(LIMITS, 1, timeout=30, slots=2) as pool:
        for files in (small, small, small):
            assert all(read.crop is not None for read in pool.collect(pool.start(files, SIDE), 30))
        (worker,) = pool.pids
        first = mapped_segments(worker)
        for files in (large, large, large):  # each slot grows: a new segment, the old one unlinked
            assert all(read.crop is not None for read in pool.collect(pool.start(files, SIDE), 30))
        then = mapped_segments(worker)
        live = slots()
    assert len(first) == 2 and not any("deleted" in name for name in first), "both slots, mapped once"
    assert len(then) == 2 and set(then) <= live, "the grown slots only: the freed ones were let go"
    assert set(then).isdisjoint(first)


def test_closing_without_waiting_settles_every_file_and_unlinks_the_slots(tmp_path: Path) -> None:
    """close(wait=False) mid-batch, as the daemon stops: each file decoded or not ready, nothing left."""
    files = photos(tmp_path, 400)
    before = slots(os.getpid())
    pool = ProcessDecodePool(LIMITS, 2, timeout=30)
    wait_until(lambda: len(pool.pids) == 2)
    workers = pool.pids
    futures = pool.start(files, SIDE)
    pool.close(wait=False)
    got = [future.result(timeout=30) for future in futures]
    assert all(read.crop is not None or isinstance(read.picture, ImageIncomplete) for read in got)
    assert any(isinstance(read.picture, ImageIncomplete) for read in got), "the batch was cut short"
    wait_until(lambda: not live_threads(("clipsort-decoder",)))
    assert slots(os.getpid()) == before, "the last dispatcher to end unlinked the slots"
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "the workers were killed and reaped"


def test_a_worker_killed_from_outside_twice_is_not_the_files_fault(tmp_path: Path) -> None:
    """SIGKILL (the OOM killer, an admin) to the worker decoding a good file, twice: it is still decoded."""
    big = tmp_path / "big.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (2400, 2400, 3), dtype=np.uint8)).save(big)  # slow to decode
    with ProcessDecodePool(ROOMY, 1, timeout=60) as pool:
        wait_until(lambda: len(pool.pids) == 1)
        futures = pool.start([big], SIDE)
        for _ in range(2):
            (victim,) = pool.pids
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda victim=victim: pool.pids and pool.pids != [victim], timeout=60)  # type: ignore[misc]
        (read,) = pool.collect(futures, 60)
    assert read.crop is not None, read.picture
    assert pool.kills == 2


def test_a_picture_over_the_memory_limit_is_rejected_with_its_own_reason(tmp_path: Path) -> None:
    """Decoding processes run under decode_memory_mb: a picture that needs more fails in the process."""
    Image.new("RGB", (7000, 7000), (200, 10, 10)).save(tmp_path / "wide.png")  # 147 MB of pixels
    with ProcessDecodePool(ROOMY, 1, timeout=60, memory_mb=200) as pool:
        (read,) = pool.collect(pool.start([tmp_path / "wide.png"], SIDE), 60)
        assert pool.kills == 0
    assert isinstance(read.picture, ImageRejected) and not isinstance(read.picture, ImageIncomplete)
    assert "decode_memory_mb" in str(read.picture)


STORM = """
import os, signal, sys, threading
from clipsort.decode.decodeprocesses import _Worker

signal.signal(signal.SIGINT, lambda signum, frame: None)  # caught (not ignored, which exec would keep)
stop = threading.Event()

def storm() -> None:
    while not stop.is_set():
        os.killpg(0, signal.SIGINT)
        stop.wait(0.0005)

def spawn(failed: list[int]) -> None:
    for _ in range(int(sys.argv[1])):
        worker = _Worker()
        if worker.started():
            worker.kill()
        else:
            failed.append(worker.process.returncode)

threading.Thread(target=storm, daemon=True).start()
failed: list[int] = []
spawners = [threading.Thread(target=spawn, args=(failed,)) for _ in range(2)]
for thread in spawners:
    thread.start()
for thread in spawners:
    thread.join()
stop.set()
print(failed)
"""


def test_a_ctrl_c_while_workers_start_kills_none_of_them(tmp_path: Path) -> None:
    """Workers started under a storm of SIGINTs to the starter's group all start (none die in the
    window before they leave the group); unblocked, 14 of 30 died here."""
    script = tmp_path / "storm.py"
    script.write_text(STORM)
    run = subprocess.run(
        [sys.executable, str(script), "15"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,  # its own group: the storm reaches it and its workers, not pytest
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"workers that died starting (exit codes): {run.stdout}"


def test_a_worker_whose_parent_ended_while_it_started_ends_without_a_word(tmp_path: Path) -> None:
    """A command that stops at an error right after starting its decoding processes (a bad setting
    found as the model loads) ends before they say they are ready: each then ends quietly, exit 0,
    not with a BrokenPipeError's traceback on the terminal the command shares with it."""
    ours, theirs = socket.socketpair()
    with theirs:
        worker = subprocess.Popen(
            [sys.executable, "-m", "clipsort.decode.decodeprocesses", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    ours.close()  # gone before the worker's imports are done
    _, errors = worker.communicate(timeout=120)
    assert (worker.returncode, errors) == (0, "")


def _mapped_slot(address: int, nbytes: int) -> bool:
    """Whether [address, address + nbytes) lies in one of this process's mappings of a slot."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *_, path = line.split()
        start, end = (int(bound, 16) for bound in span.split("-"))
        if start <= address and address + nbytes <= end and path.startswith(f"/dev/shm/{SLOT_PREFIX}"):
            return True
    return False


class Registrar:
    """A :class:`~clipsort.decode.decodeprocesses.Pinning` that keeps a ledger, as CUDA's driver
    would, and holds the pool to its contract against this process's real mappings: a range is
    registered while mapped, and unregistered while still mapped, never after."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.live: dict[int, int] = {}  # address -> bytes
        self.registrations = 0
        self.lock = threading.Lock()
        self.faults: list[str] = []  # broken contracts (an assert in the pool's thread would be lost)

    def register(self, address: int, nbytes: int) -> bool:
        with self.lock:
            if not _mapped_slot(address, nbytes) or address in self.live:
                self.faults.append(f"register {address:#x}+{nbytes}")
            self.registrations += 1
            if self.refuse:
                return False
            self.live[address] = nbytes
            return True

    def unregister(self, address: int) -> None:
        with self.lock:
            nbytes = self.live.pop(address, None)
            if nbytes is None or not _mapped_slot(address, nbytes):
                self.faults.append(f"unregister {address:#x}")

    def holds(self, crop: np.ndarray) -> bool:
        """Whether ``crop`` lies in a registered range."""
        at = crop.__array_interface__["data"][0]
        with self.lock:
            return any(start <= at and at + crop.nbytes <= start + size for start, size in self.live.items())


def test_a_pool_pins_each_slot_once_while_mapped_and_unpins_it_before_unmapping(tmp_path: Path) -> None:
    """The GPU's slots (issue 37): each mapping is registered when made, not per batch; the crops a
    batch lends lie in a registered range; a slot grown for a bigger batch unregisters its old
    mapping first, and closing the pool unregisters every one, while still mapped."""
    files = photos(tmp_path, 6)
    expected = [in_a_thread(path)[2] for path in files]
    registrar = Registrar()
    with ProcessDecodePool(LIMITS, 2, timeout=30, slots=2, lends=True, pinning=registrar) as pool:
        for round_ in range(3):  # batches of two: the two slots, each mapped and pinned once
            batch = pool.start(files[2 * round_ : 2 * round_ + 2], SIDE)
            crops = [read.crop for read in pool.collect(batch, 30)]
            assert same(crops, expected[2 * round_ : 2 * round_ + 2])
            assert all(crop is not None and registrar.holds(crop) for crop in crops)
            pool.release(batch)
        assert registrar.registrations == 2, "a slot reused by later batches is registered again"
        grown = pool.start(files, SIDE)  # six crops: the slot it takes is mapped anew, bigger
        crops = [read.crop for read in pool.collect(grown, 30)]
        assert same(crops, expected) and all(crop is not None and registrar.holds(crop) for crop in crops)
        assert registrar.registrations == 3 and len(registrar.live) == 2
        pool.release(grown)
    assert not registrar.live, "a slot closed with its pages still registered"
    assert not registrar.faults, registrar.faults


def test_a_slot_the_driver_refuses_to_pin_is_used_as_it_is(tmp_path: Path) -> None:
    """A refused registration (a locked-memory limit) costs nothing but the pinning: the batch decodes,
    and nothing is unregistered that was never registered."""
    files = photos(tmp_path, 3)
    registrar = Registrar(refuse=True)
    with ProcessDecodePool(LIMITS, 2, timeout=30, slots=1, lends=True, pinning=registrar) as pool:
        batch = pool.start(files, SIDE)
        assert same([read.crop for read in pool.collect(batch, 30)], [in_a_thread(path)[2] for path in files])
        pool.release(batch)
    assert registrar.registrations == 1 and not registrar.faults, registrar.faults
