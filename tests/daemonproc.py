"""Running the real daemon (``python -m clipsort run``) as a subprocess, as systemd would."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from clipsort.decode.decodeprocesses import SLOT_PREFIX
from clipsort.service.status import Status, read_status
from tests.synthetic import draw, save
from tests.waiting import wait_until
from tests.warmstart import Forked, Server, importing_this_checkout


class Daemon:
    """One daemon process with a notify socket, a config file and a JSON log."""

    def __init__(self, root: Path, model: Path, home: Path, **options: object) -> None:
        self.root = root
        self.home = home
        self.state = home / "state"
        self.config = home / "config.toml"
        values: dict[str, object] = {
            "root": str(root),
            "model": str(model),
            "device": "cpu",
            "state_dir": str(self.state),
            "settle_seconds": 0.3,
            "class_debounce_seconds": 0.3,
            "status_seconds": 0.3,
            "log_format": "json",
            **options,
        }
        self.write_config(values)
        self.log = home / f"daemon-{time.monotonic_ns()}.log"  # one per process, even in one home
        self.messages: list[str] = []
        self._records: list[dict[str, Any]] = []  # the log's JSON lines read so far
        self._read_to = 0  # bytes of the log read into _records (whole lines only)
        self._address: Path | None = None
        self._seen = 0
        self._lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | Forked | None = None
        self._socket: socket.socket | None = None

    def write_config(self, values: dict[str, object]) -> None:
        self.config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))

    def update_config(self, **values: object) -> None:
        """Rewrite the config file with ``values`` changed (what an administrator does before a reload)."""
        current = dict(line.split(" = ", 1) for line in self.config.read_text().splitlines() if " = " in line)
        parsed: dict[str, object] = {key: json.loads(value) for key, value in current.items()}
        self.write_config(parsed | values)

    # Where daemons come from: None executes a fresh interpreter for each (the benchmarks); the test
    # suite forks them from a server that has imported the model stack (tests/warmstart.py).
    warm: ClassVar[Callable[[], Server] | None] = None

    def start(self, wait: bool = True, env: dict[str, str] | None = None, *, fresh: bool = False) -> Daemon:
        """Start the daemon (``fresh``: in a newly executed interpreter, also in the test suite)."""
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = self._address = self.home / f"notify-{time.monotonic_ns()}"
        self._socket.bind(str(address))
        self._socket.settimeout(0.2)
        # Read datagrams continuously, as systemd does: the kernel queues only
        # net.unix.max_dgram_qlen of them (10 by default).
        self._reader = threading.Thread(target=self._read_notifications, daemon=True)
        self._reader.start()
        env = {
            **importing_this_checkout(os.environ),
            "HF_HUB_OFFLINE": "1",
            "NOTIFY_SOCKET": str(address),
            **(env or {}),
        }
        argv = ["-m", "clipsort", "run", "--config", str(self.config)]
        with self.log.open("ab") as log:
            if fresh or Daemon.warm is None:
                self.process = subprocess.Popen(
                    [sys.executable, *argv], cwd=self.home, env=env, stdout=subprocess.DEVNULL, stderr=log
                )
            else:
                with open(os.devnull, "wb") as null:
                    self.process = Daemon.warm().start(
                        argv, env=env, cwd=self.home, stdout=null.fileno(), stderr=log.fileno()
                    )
        if wait:
            self.wait_notify("READY=1", timeout=120)
        return self

    def _read_notifications(self) -> None:
        assert self._socket is not None
        while self._socket.fileno() != -1:
            try:
                message = self._socket.recv(65536).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(message)

    def wait_notify(self, field: str, timeout: float = 30.0) -> str:
        """Wait for a datagram holding ``field`` that arrived after the last one waited for."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for index in range(self._seen, len(self.messages)):
                    if field in self.messages[index].split("\n"):
                        self._seen = index + 1
                        return self.messages[index]
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {field!r} from the daemon within {timeout} s; got {self.messages}")

    def received(self) -> list[str]:
        """Every notify field received so far: all the daemon sent before this call, read."""
        assert self._address is not None
        mark = f"X-TEST-MARK={uuid.uuid4().hex}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(mark.encode(), str(self._address))

        # One socket's datagrams are read in the order they arrived: once the mark is read, so is
        # everything the daemon sent before it.
        def marked() -> bool:
            with self._lock:
                return mark in self.messages

        wait_until(marked, timeout=10)
        with self._lock:
            self.messages.remove(mark)  # after every index wait_notify has passed: it looks on
            return [field for message in self.messages for field in message.split("\n")]

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """Teardown: make sure no daemon outlives its test."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self._socket is not None:
            self._socket.close()

    def peak_rss_mb(self) -> float:
        """The high-water mark of resident memory (VmHWM), in MiB, of the process and its children.

        The children are the decoding processes (``decode_in = "processes"``): they hold their
        own decoders' buffers, so a bound on the daemon's memory counts them.
        """
        assert self.process is not None
        return _peak_rss_mb(self.process.pid) + sum(self._of_children(_peak_rss_mb))

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) so far of the daemon's own process and of its live children.

        The children are the decoding processes: the benchmarks split the daemon's work per file
        into the interpreter's and the decoders' with two readings around a burst.
        """
        assert self.process is not None
        return cpu_seconds_of(self.process.pid), sum(self._of_children(cpu_seconds_of))

    def _of_children(self, read: Callable[[int], float]) -> list[float]:
        """``read`` of each live child process; one that ends meanwhile is left out."""
        assert self.process is not None
        values = []
        for child in children(self.process.pid):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                values.append(read(child))
        return values

    def dump_stacks(self, timeout: float = 2.0) -> None:
        """Ask a live daemon for every thread's stack (SIGUSR1), into its log; wait until it lands."""
        if self.process is None or self.process.poll() is not None:
            return
        size = self.log.stat().st_size
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.log.stat().st_size == size:
            time.sleep(0.05)  # a failure report, not a test's condition: bounded and best effort

    def log_tail(self, lines: int = 80) -> str:
        """The last ``lines`` lines of the daemon's log (what a failing test shows)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def status(self) -> Status:
        found = read_status(self.state)
        assert found is not None, "no status file"
        return found

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The daemon's JSON log lines, optionally only those of one event.

        The log is read from where the last call stopped, whole lines only: waiting on an event
        costs the new lines, not the whole log again every 50 ms.
        """
        with self.log.open("rb") as log:
            log.seek(self._read_to)
            new = log.read()
        complete = new[: new.rfind(b"\n") + 1]  # a line still being written is read next time
        self._read_to += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith("{"):
                self._records.append(json.loads(line))
        return [record for record in self._records if name is None or record.get("event") == name]

    def wait_event(self, name: str, predicate: Any = None, timeout: float = 30.0) -> dict[str, Any]:
        """The first log record of event ``name`` (matching ``predicate``) once it is written."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [r for r in self.events(name) if predicate is None or predicate(r)]
            return bool(found)

        wait_until(seen, timeout=timeout)
        return found[0]


def start(
    daemons: list[Daemon],
    root: Path,
    model: Path,
    home: Path,
    env: dict[str, str] | None = None,
    **options: object,
) -> Daemon:
    """A started daemon, registered in ``daemons`` so the fixture kills it at teardown."""
    home.mkdir(exist_ok=True)
    daemon = Daemon(root, model, home, **options)
    daemons.append(daemon)
    return daemon.start(env=env)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sorted_files(dataset: Path) -> dict[str, str]:
    """file name -> class folder it landed in."""
    return {p.name: p.parent.name for p in (dataset / "Dataset").rglob("*") if p.is_file()}


def picture_bytes(tmp: Path, color: str, seed: int, name: str) -> bytes:
    """The bytes of a synthetic picture of ``color`` (written to ``tmp`` and removed again)."""
    path = save(draw(np.random.default_rng(seed), color, "square", size=96), tmp / name)
    data = path.read_bytes()
    path.unlink()
    return data


def drop(inbox: Path, name: str, data: bytes) -> None:
    """Write under a temporary name and rename into the inbox, as uploaders do."""
    temporary = inbox / f".drop-{uuid.uuid4().hex}.part"
    temporary.write_bytes(data)
    os.rename(temporary, inbox / name)


def free_port() -> int:
    """A TCP port nothing listens on now (on loopback)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}")


def cpu_times(stat: str) -> tuple[float, float]:
    """utime and stime, in seconds, from the text of a ``/proc/<pid>/stat`` (every thread of the
    process) or a ``/proc/<pid>/task/<tid>/stat`` (one thread): its fields 14 and 15."""
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def cpu_seconds_of(pid: int) -> float:
    """utime + stime of every thread of ``pid``."""
    return sum(cpu_times(Path(f"/proc/{pid}/stat").read_text()))


def slots(owner: int | None = None) -> set[str]:
    """The decoding slots in /dev/shm (named clipsort-<owner>-...), or only those process ``owner`` made.

    Tests that count slots count their own process's: a daemon or pool in a test running beside
    this one (pytest-xdist) makes and reclaims slots of its own at any moment."""
    prefix = SLOT_PREFIX if owner is None else f"{SLOT_PREFIX}{owner}-"
    return {name for name in os.listdir("/dev/shm") if name.startswith(prefix)}


def children(parent: int, command: bytes = b"") -> list[int]:
    """The processes whose parent is ``parent`` (and whose command line holds ``command``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            line = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # it ended meanwhile
        if ppid == parent and command in line:
            found.append(int(entry.name))
    return found
