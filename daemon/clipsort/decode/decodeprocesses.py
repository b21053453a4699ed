"""Decoding in worker processes that write the model's input straight into shared-memory batch slots.

Why processes: decoding threads share the interpreter with the model's, the
placer's and the watcher's threads, and each file's Python (opening, hashing
calls, Pillow's setup, the crop) waits for the GIL behind them; on a machine
where the model is nearly free that convoy, not the decoding, set the speed
(bench/README.md, overhead mode). Here the main interpreter handles one
message per worker per batch: it sends the chunk's paths, the worker reads,
checks, hashes, decodes and crops each file into the batch's slot, and
answers with (index, sha256, size, rejection) per file.

Safety is where the decoding is: every limit (formats, pixels, bytes) is
applied in the worker with the same code as in a thread, and the timeout is
enforced by killing the worker. A worker that dies (a decoder crash, the
kernel's OOM killer, the timeout) loses nothing: its chunk's files are tried
again one by one in a fresh worker, and a file that fails alone as well is
rejected with the reason (it goes to Rejected/ like any unreadable file).

Memory is bounded: ``slots`` slots of one batch each (the batch driver asks
for one per batch decoded ahead and one for the batch being collected);
:meth:`ProcessDecodePool.start` waits for a free one. A pool that ``lends`` (the batch driver's)
hands each crop as a view of its slot, and the slot takes another batch once the batch is
released (:meth:`ProcessDecodePool.release`, after it is classified): the model reads the batch
where the workers wrote it. Without, a batch's crops are copied out of its slot when its last
chunk arrives, so a slot is free again before the batch is collected. Why lend (issue 37): the copy
(4.8 MB a batch of 32, into memory the kernel faulted in) and the model's stacking of the crops were
about half of what the dispatchers and the worker's own part spent per file around a near-free
model (bench/README.md).

OS caveats: each worker is a fresh interpreter (``python -m`` this module, talking over a socket
pair: :mod:`clipsort.children` says why, and how a Ctrl-C stays the parent's). Python 3.11's
``SharedMemory`` registers every attachment with the process's resource tracker, which unlinks
what is still registered when the process ends, so a worker's exit would delete the parent's slot:
the worker unregisters its attachments (3.13's ``track=False``). A worker ends when its socket
closes, so it never outlives the daemon for long.

A process killed with SIGKILL (an OOM kill, ``kill -9``, systemd's final
cgroup kill, which takes the resource tracker with it) unlinks nothing, and
a segment under ``/dev/shm`` outlives every process. So each slot is named
after its owner (``clipsort-<pid>-<start time>-<random>``: the start time
tells a live owner from a later process that reuses its pid), and every pool
that starts unlinks the slots whose owner is gone (:func:`reclaim_slots`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import queue
import resource
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from multiprocessing import resource_tracker, shared_memory
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import structlog

from clipsort.children import Child, connect
from clipsort.decode.decoding import Decoded, Prepare, read_and_decode
from clipsort.decode.images import DecodeLimits, centre_crop, pillow_warnings_off
from clipsort.errors import DecoderKilled, ImageIncomplete, ImageRejected

log = structlog.get_logger()

SLOTS = 3  # two batches decoded ahead, the one being collected (the driver's default)
STRIKES = 2  # a file whose decoding ends its worker this often (once alone) is rejected
KILLS = 3  # attempts ended by a SIGKILL from outside before a chunk's files wait (never rejected)
KILLED_BACKOFF = 0.5  # seconds before the first retry after such a kill, doubling
CANCELLED = "the decoding pool closed before decoding it"
SHM_FOLDER = Path("/dev/shm")  # where Linux keeps POSIX shared memory, a file per segment
SLOT_PREFIX = "clipsort-"
Reply = tuple[int, str, int, str, str]  # index, sha256, size, rejection kind ("" when decoded), reason


def _serve(connection: Connection, memory_mb: int = 0) -> None:
    """A worker process: decode each chunk it is sent into its slot until the pipe closes.

    With ``memory_mb`` its heap is capped (RLIMIT_DATA): a picture that needs more fails here, as a
    MemoryError that rejects that file, before the kernel's OOM killer would end the process.
    """
    if memory_mb:
        limit = memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    attached: dict[str, shared_memory.SharedMemory] = {}
    while True:
        try:
            name, count, side, limits, items = connection.recv()
        except (EOFError, OSError):  # the daemon ended or closed the pool
            return
        if name not in attached:
            _attach(attached, name)
        replies = _decode_into(attached[name], count, side, limits, items)
        try:
            connection.send(replies)
        except OSError:  # the daemon is gone
            return


def _attach(attached: dict[str, shared_memory.SharedMemory], name: str) -> None:
    """Map slot ``name`` beside the others, and drop the mappings of slots the parent freed since.

    Each slot stays mapped while it lives: the batches rotate through the slots, and mapping one
    again for every chunk would cost a fault per page the worker writes. A slot only goes (grown,
    or its pool closed) when the parent unlinks it, which is when a new name comes, so that is
    when the gone ones are let go (on Linux a segment is a file under ``/dev/shm``).
    """
    for old in [old for old in attached if not (SHM_FOLDER / old).exists()]:
        attached.pop(old).close()
    attached[name] = shared_memory.SharedMemory(name)
    # See the module's caveats: the parent owns the segment and unlinks it.
    resource_tracker.unregister(attached[name]._name, "shared_memory")  # type: ignore[attr-defined]


def _decode_into(
    memory: shared_memory.SharedMemory,
    count: int,
    side: int,
    limits: DecodeLimits,
    items: list[tuple[int, str]],
) -> list[Reply]:
    """Each item's crop into its row of the slot; a reply per item."""
    slot = np.ndarray((count, side, side, 3), np.uint8, buffer=memory.buf)
    prepare = functools.partial(centre_crop, side=side)
    replies: list[Reply] = []
    for index, path in items:
        decoded = read_and_decode(Path(path), limits, side, prepare)
        if decoded.crop is not None:
            slot[index] = decoded.crop
            replies.append((index, decoded.sha256, decoded.size, "", ""))
        else:
            kind = "incomplete" if isinstance(decoded.picture, ImageIncomplete) else "rejected"
            replies.append((index, decoded.sha256, decoded.size, kind, str(decoded.picture)))
    return replies


def _started(pid: int) -> str | None:
    """Process ``pid``'s start time in clock ticks since boot (field 22 of its stat), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> str:
    """This process as slot names spell it: ``<pid>-<start time>``."""
    return f"{os.getpid()}-{_started(os.getpid())}"


def _owner_of(name: str) -> tuple[int, str] | None:
    """The (pid, start time) a slot name records, or None for a name that is not a slot's."""
    pid, _, rest = name.removeprefix(SLOT_PREFIX).partition("-")
    started, _, _ = rest.partition("-")
    return (int(pid), started) if name.startswith(SLOT_PREFIX) and pid.isdigit() else None


def reclaim_slots(*, own: bool = False) -> int:
    """Unlink the slots whose owner process is gone (with ``own``: this process's); how many.

    Called as a pool starts (a daemon or `clipsort sort` killed with SIGKILL left its slots) and as
    the daemon stops (whatever a dispatcher still running at exit would have freed).
    """
    try:
        names = [entry.name for entry in os.scandir(SHM_FOLDER) if entry.name.startswith(SLOT_PREFIX)]
    except OSError:
        return 0  # no /dev/shm (not Linux): nothing to look at
    mine = _owner()
    freed = 0
    for name in names:
        owner = _owner_of(name)
        if owner is None:
            continue
        pid, started = owner
        stale = f"{pid}-{started}" == mine if own else _started(pid) != started
        if stale:
            with contextlib.suppress(OSError):
                shared_memory.SharedMemory(name).unlink()
                freed += 1
    if freed and not own:
        log.warning("shared_memory_reclaimed", slots=freed, reason="left by a process that was killed")
    return freed


class Pinning(Protocol):
    """Page-locks the slots' memory for a GPU's copies (:mod:`clipsort.encode.pinned`): each
    mapping registered once, when it is made, and unregistered before it is unmapped."""

    def register(self, address: int, nbytes: int) -> bool:
        """Lock ``nbytes`` at ``address``; False where that was refused (the slot is used as it is)."""

    def unregister(self, address: int) -> None:
        """Undo a :meth:`register` that returned True."""


class _Slot:
    """One batch's worth of shared memory, grown when a batch needs more (and pinned, with ``pinning``)."""

    def __init__(self, pinning: Pinning | None = None) -> None:
        self.memory: shared_memory.SharedMemory | None = None
        self.pinning = pinning
        self.pinned: int | None = None  # the address registered with pinning, while it is

    def fit(self, nbytes: int) -> shared_memory.SharedMemory:
        if self.memory is None or self.memory.size < nbytes:
            self.free()
            name = f"{SLOT_PREFIX}{_owner()}-{uuid.uuid4().hex[:12]}"
            self.memory = shared_memory.SharedMemory(name, create=True, size=nbytes)
            if self.pinning is not None:  # once a mapping: the batches that reuse it pay nothing
                address = address_of(self.memory)
                self.pinned = address if self.pinning.register(address, self.memory.size) else None
        return self.memory

    def free(self) -> None:
        if self.memory is None:
            return
        if self.pinning is not None and self.pinned is not None:  # before the pages can be unmapped
            self.pinning.unregister(self.pinned)
            self.pinned = None
        memory, self.memory = self.memory, None
        # A stopping daemon reclaims its own slots (reclaim_slots) while a dispatcher may still be
        # ending: the segment can be gone already.
        with contextlib.suppress(FileNotFoundError):
            memory.unlink()
        try:
            memory.close()
        except BufferError:
            # A crop lent from it is still referenced (a batch never released, a pool closed under
            # it). Its view holds the mapping (a buffer export keeps the mmap object alive) until
            # the last such crop goes, which unmaps it; this lets go of ours and closes the file.
            memory._mmap = None  # type: ignore[attr-defined]
            memory.close()


def address_of(memory: shared_memory.SharedMemory) -> int:
    """Where ``memory`` is mapped in this process (a view made and dropped: no export outlives it)."""
    assert memory.buf is not None, "a closed segment has no address"
    view = np.frombuffer(memory.buf, np.uint8, count=0)
    address: int = view.__array_interface__["data"][0]
    return address


@dataclass
class _Batch:
    """A batch on its way: its slot, a future per file, and how many chunks are still out."""

    slot: _Slot
    side: int
    limits: DecodeLimits
    futures: list[Future[Decoded]]
    outstanding: int
    lent: bool  # its crops are views of its slot, which waits for release()
    replies: dict[int, Reply] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    resolved: bool = False  # (lent) every file's future is answered (under lock)
    released: bool = False  # (lent) its user is done with the crops (under lock)


@dataclass(frozen=True)
class _Chunk:
    batch: _Batch
    items: list[tuple[int, str]]  # index in the batch, path
    strikes: int = 0  # how often these files were in a chunk whose worker died
    kills: int = 0  # how often its worker was killed from outside (SIGKILL) while it decoded them


class _Worker(Child):
    """One worker process (a fresh interpreter, see :mod:`clipsort.children`) and the socket to it."""

    def __init__(self, memory_mb: int = 0) -> None:
        super().__init__(__name__, str(memory_mb))
        # Ended by SIGKILL from outside (the OOM killer, an administrator): no decoder raises that,
        # so it is not the file's fault (see ProcessDecodePool._decode).
        self.killed = False

    def run(self, message: object, timeout: float) -> list[Reply] | str:
        """The worker's replies, or why it gave none (it is then dead)."""
        with contextlib.suppress(OSError):  # it died already: its exit status says how
            self.connection.send(message)
        # A dead worker's end of the socket closes, so the socket turns readable and recv() ends.
        if wait([self.connection], timeout):
            with contextlib.suppress(EOFError, OSError):
                replies: list[Reply] = self.connection.recv()
                return replies
            return self._ended()
        self.kill()
        return f"decoding took longer than {timeout:g} s"

    def _ended(self) -> str:
        how = self.how_it_ended()
        self.killed = self.process.returncode == -signal.SIGKILL
        return f"its decoding ended the decoder process ({how})"


class ProcessDecodePool:
    """``workers`` decoding processes, fed a chunk of each batch per worker (see the module)."""

    def __init__(
        self,
        limits: DecodeLimits,
        workers: int,
        *,
        timeout: float,
        slots: int = SLOTS,
        memory_mb: int = 0,
        lends: bool = False,
        pinning: Pinning | None = None,
    ) -> None:
        reclaim_slots()  # before making its own: what a killed daemon or sort left in /dev/shm
        self.lends = lends  # crops are views of the slots, each batch's until release() (see the module)
        # Lent batches by their first future (under _lock): the key is the object, not its id(), so
        # it lives as long as the entry and a later future can never take its place.
        self._lent: dict[Future[Decoded], _Batch] = {}
        self.limits = limits  # replaceable, as the thread pool's
        self.timeout = timeout  # a chunk's decoding past this ends its worker (then each file gets its own)
        self.workers = workers
        self.memory_mb = memory_mb  # each worker's heap limit (0: none)
        self.kills = 0  # workers killed from outside while decoding (for tests and the status)
        self._slots: queue.Queue[_Slot] = queue.Queue()
        self._all_slots = [_Slot(pinning) for _ in range(slots)]  # pinned for a GPU's copies, if given
        for slot in self._all_slots:
            self._slots.put(slot)
        self._chunks: queue.Queue[_Chunk | None] = queue.Queue()
        self._lock = threading.Lock()
        self._processes: list[_Worker] = []
        self._cancelled = False  # closed with cancel: what is left is not decoded
        self._running = workers  # dispatchers not yet ended: the last one frees the slots
        self._threads = [
            threading.Thread(target=self._dispatch, name=f"clipsort-decoder-{k}", daemon=True)
            for k in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and the status page)."""
        with self._lock:
            return [worker.pid for worker in self._processes]

    def start(
        self, paths: Sequence[Path], target: int, prepare: Prepare | None = None
    ) -> list[Future[Decoded]]:
        """Begin decoding ``paths`` to ``target`` x ``target`` crops (``prepare`` is always the centre crop).

        Waits while every slot holds a batch: this bounds the memory a burst can take.
        """
        futures: list[Future[Decoded]] = [Future() for _ in paths]
        if not paths:
            return futures
        slot = self._slots.get()
        slot.fit(len(paths) * target * target * 3)
        count = min(self.workers, len(paths))
        batch = _Batch(slot, target, self.limits, futures, count, self.lends)
        if self.lends:
            with self._lock:
                self._lent[futures[0]] = batch
        items = [(index, str(path)) for index, path in enumerate(paths)]
        for k in range(count):
            self._chunks.put(_Chunk(batch, items[k::count]))
        return futures

    def collect(self, futures: Sequence[Future[Decoded]], timeout: float) -> list[Decoded]:
        """The decoded files; the workers enforce the timeout, so this waits for every reply."""
        return [future.result() for future in futures]

    def release(self, futures: Sequence[Future[Decoded]]) -> None:
        """The batch of ``futures`` is done with its crops: its slot may take another (if it lends)."""
        with self._lock:
            batch = self._lent.pop(futures[0], None) if futures else None
        if batch is None:
            return
        with batch.lock:
            batch.released = True
            free = batch.resolved
        if free:
            self._slots.put(batch.slot)

    def close(self, *, wait: bool = True, cancel: bool = True) -> None:
        """End the workers once they have decoded what they were given; with ``cancel`` at once.

        Cancelled files are returned as not ready (:class:`ImageIncomplete`: the daemon tries them
        again). The slots are unlinked by the last dispatcher to end, so also after
        ``wait=False``: a slot is never freed while a dispatcher may still touch it.
        """
        for _ in self._threads:
            self._chunks.put(None)
        if cancel:
            with self._lock:
                self._cancelled = True
                for worker in self._processes:
                    # Only the process: its socket is its dispatcher's, which sees the death
                    # (and does not retry now) and closes it.
                    worker.process.kill()
        if wait:
            for thread in self._threads:
                thread.join()

    def __enter__(self) -> ProcessDecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dispatch(self) -> None:
        worker = self._spawn()  # now, so the first file does not wait for an interpreter
        while (chunk := self._chunks.get()) is not None:
            try:
                worker = worker or self._spawn()
                if self._cancelled:
                    self._cancel(chunk)
                elif worker is None:  # not the files' fault: decode them here, with the same limits
                    self._finish(chunk, self._in_thread(chunk))
                else:
                    worker = self._decode(worker, chunk)
            except Exception as exc:  # a bug here must not leave a batch waiting for ever
                log.exception("decoder_failed", error=str(exc))
                self._cancel(chunk, f"decoder failed: {exc}")
        if worker is not None:
            self._retire(worker)
        with self._lock:
            self._running -= 1
            last = self._running == 0
        if last:
            # Retries queued behind the closing sentinels: nobody is left to decode them.
            with contextlib.suppress(queue.Empty):
                while True:
                    if (left := self._chunks.get_nowait()) is not None:
                        self._cancel(left)
            with self._lock:  # batches never released: only their users may hold their crops now
                self._lent.clear()
            for slot in self._all_slots:
                slot.free()

    def _decode(self, worker: _Worker, chunk: _Chunk) -> _Worker | None:
        """Decode ``chunk`` in ``worker``; the worker for the next chunk (a fresh one after a death)."""
        batch = chunk.batch
        memory = batch.slot.memory
        assert memory is not None
        message = (memory.name, len(batch.futures), batch.side, batch.limits, chunk.items)
        result = worker.run(message, self.timeout)
        if not isinstance(result, str):
            self._finish(chunk, result)
            return worker
        self._retire(worker)
        if self._cancelled:  # killed by close(): the files are not to blame
            self._cancel(chunk)
            return None
        log.warning("decoder_died", files=len(chunk.items), reason=result, pid=worker.pid)
        if worker.killed:
            self._killed(chunk, result)
        elif len(chunk.items) == 1 and chunk.strikes + 1 >= STRIKES:
            index = chunk.items[0][0]
            self._finish(chunk, [(index, "", 0, "rejected", result)])
        else:
            # Each file alone in a fresh worker: the innocent ones decode, the culprit strikes out.
            with batch.lock:
                batch.outstanding += len(chunk.items) - 1
            for item in chunk.items:
                self._chunks.put(_Chunk(batch, [item], chunk.strikes + 1))
        return self._spawn()

    def _killed(self, chunk: _Chunk, reason: str) -> None:
        """A SIGKILL from outside ended the chunk's worker: try the chunk again, later; never reject it.

        A decoder that fails raises SIGSEGV, SIGABRT or SIGBUS, or a MemoryError under the heap
        limit; only another process sends SIGKILL. After ``KILLS`` such deaths the files are resolved
        as killed: the daemon keeps them in the inbox and tries again after its back-off.
        """
        with self._lock:
            self.kills += 1
        if chunk.kills + 1 >= KILLS:
            self._finish(chunk, [(index, "", 0, "killed", reason) for index, _ in chunk.items])
            return
        time.sleep(KILLED_BACKOFF * 2**chunk.kills)  # this dispatcher's own thread: the others go on
        self._chunks.put(replace(chunk, kills=chunk.kills + 1))

    def _in_thread(self, chunk: _Chunk) -> list[Reply]:
        batch = chunk.batch
        assert batch.slot.memory is not None
        return _decode_into(batch.slot.memory, len(batch.futures), batch.side, batch.limits, chunk.items)

    def _spawn(self) -> _Worker | None:
        """A started worker, or None (logged) when an interpreter cannot be started."""
        if self._cancelled:
            return None
        worker = _Worker(self.memory_mb)
        if not worker.started():
            log.error("decoder_not_started", pid=worker.pid, action="decoding in a thread")
            return None
        with self._lock:
            self._processes.append(worker)
        log.info("decoder_started", pid=worker.pid)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            if worker in self._processes:
                self._processes.remove(worker)

    def _cancel(self, chunk: _Chunk, reason: str = CANCELLED) -> None:
        """Resolve every file of ``chunk`` as not ready (tried again later), for ``reason``."""
        self._finish(chunk, [(index, "", 0, "incomplete", reason) for index, _ in chunk.items])

    def _finish(self, chunk: _Chunk, replies: list[Reply]) -> None:
        batch = chunk.batch
        with batch.lock:
            for reply in replies:
                batch.replies[reply[0]] = reply
            batch.outstanding -= 1
            done = batch.outstanding == 0
        if done:
            _resolve(batch, self._slots.put)


def _resolve(batch: _Batch, release: Callable[[_Slot], None]) -> None:
    """Resolve every file's future with its crop: lent from the slot (which waits for the batch's
    release), or copied out of it and the slot freed at once."""
    memory = batch.slot.memory
    assert memory is not None
    count, side = len(batch.futures), batch.side
    shape = (count, side, side, 3)
    if batch.lent:
        # frombuffer, not ndarray(buffer=...): its view holds the buffer, so the segment cannot be
        # unmapped under a crop still referenced (_Slot.free keeps it until the crop goes).
        buffer = memory.buf
        assert buffer is not None  # an open segment's
        crops: npt.NDArray[np.uint8] = np.frombuffer(buffer, np.uint8, math.prod(shape)).reshape(shape)
    else:
        crops = np.ndarray(shape, np.uint8, buffer=memory.buf).copy()
        release(batch.slot)
    for index, future in enumerate(batch.futures):
        _, sha256, size, kind, reason = batch.replies[index]
        if not kind:
            future.set_result(Decoded(None, sha256, size, crops[index]))
        else:
            errors = {"incomplete": ImageIncomplete, "killed": DecoderKilled}
            future.set_result(Decoded(errors.get(kind, ImageRejected)(reason), sha256, size))
    if batch.lent:
        with batch.lock:
            batch.resolved = True
            free = batch.released
        if free:  # released before the last future was answered (its user gave up on it)
            release(batch.slot)


if __name__ == "__main__":
    pillow_warnings_off()
    if (connection := connect(sys.argv)) is not None:
        _serve(connection, int(sys.argv[3]))
