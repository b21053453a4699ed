"""Daemons forked from an interpreter that has already imported the model stack.

Why: a daemon process spent its first 2-2.5 s of CPU importing torch, numpy and Pillow, before its
first line of clipsort ran, and the system tier starts dozens of daemons (the kill -9 loop alone
eleven): the suite imported the same modules again and again. A test process instead starts one server
(``python -m tests.warmstart``) that imports them once and, for each daemon, forks a child that
runs ``python -m clipsort ARGS`` as a fresh interpreter would from there (``runpy``, the
environment, working directory, ``sys.argv`` and standard streams the test asked for). The child is
a real process the test signals and kills by its pid; only the imports before ``main`` are shared.
What start-up itself does (the model loading in ``start``, imports a command must not make) is
tested on freshly executed interpreters: :meth:`tests.daemonproc.Daemon.start` with ``fresh=True``,
the CLI tests, and the benchmarks, which always execute.

Forking after ``import torch`` is safe here because nothing has run yet: importing starts no
operator threads (OpenMP's pool starts at the first parallel operator) and the server runs none;
OpenBLAS's thread, which importing numpy starts unless ``OMP_NUM_THREADS`` is 1, is stopped before
``fork`` by its own ``pthread_atfork`` handler and started again at the child's first product.

The protocol, over one Unix stream socket: a request is a JSON line (``argv``, ``env``, ``cwd``)
with the child's stdin, stdout and stderr passed as file descriptors; the server answers
``{"pid": N}``, and ``{"exited": N, "code": C}`` once it reaps the child (``C`` as
:attr:`subprocess.Popen.returncode`: ``-signal`` for a signal).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import queue
import runpy
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FDS = 3  # stdin, stdout, stderr
# What every daemon imports before its first batch: the model stack, and clipsort's modules for
# `run`. Not transformers or sentence-transformers (a daemon on a compiled copy never imports them,
# which tests check). huggingface_hub reads HF_HUB_OFFLINE as it is imported: the test process's
# "1", which every daemon the tests start gets too.
PRELOAD = ("numpy", "PIL.Image", "torch", "clipsort.cli", "clipsort.service.wiring")


def importing_this_checkout(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with this checkout first on ``PYTHONPATH`` (for the processes tests start)."""
    return {**environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), environ.get("PYTHONPATH")]))}


# --- the server (its own process) ---


def _receive(conn: socket.socket, buffer: bytearray) -> tuple[dict[str, Any], list[int]] | None:
    """One request: its JSON line and the descriptors that came with it; None at end of stream."""
    fds: list[int] = []
    while b"\n" not in buffer:
        data, more, _flags, _address = socket.recv_fds(conn, 65536, FDS)
        if not data:
            return None
        buffer += data
        fds += more
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    request: dict[str, Any] = json.loads(line)
    return request, fds


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def serve(conn: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """Fork a child per request until the test process goes away.

    Returns only in a child: its request, for :func:`become` to run. The server itself exits.
    """
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup descriptor hears of it
    selector = selectors.DefaultSelector()
    selector.register(conn, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    buffer = bytearray()
    while True:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    _send(conn, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})
                continue
            received = _receive(conn, buffer)
            if received is None:
                return None
            request, fds = received
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                selector.close()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                # Closed through its object: a bare os.close would leave the object to close the
                # same number again when it is collected, by then perhaps the daemon's own file.
                conn.close()
                return request, fds
            for fd in fds:
                os.close(fd)
            _send(conn, {"pid": pid})


def become(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: be ``python ARGV`` started with the request's streams, environment and
    working directory. Returns (or raises SystemExit) as that program would; the interpreter then
    ends as any does (exit handlers, non-daemon threads joined)."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv: list[str] = request["argv"]
    assert argv[:1] == ["-m"], argv
    sys.argv = [argv[1], *argv[2:]]
    sys.path[0] = os.getcwd()  # what `python -m` puts first
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


def main() -> None:
    conn = socket.socket(fileno=int(sys.argv[1]))
    for module in PRELOAD:
        importlib.import_module(module)
    child = serve(conn)
    if child is not None:
        become(*child)


# --- the test process's side ---


class Forked:
    """A forked daemon, with the part of :class:`subprocess.Popen`'s interface the tests use."""

    def __init__(self, server: Server, pid: int) -> None:
        self._server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.returncode = self._server.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._server.changed:
            while (code := self._server.exit_code(self.pid)) is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
                if self._server.ended:
                    raise AssertionError(f"the fork server ended before pid {self.pid} did")
                self._server.changed.wait(left)
        self.returncode = code
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # as Popen: never a signal to a pid that may have been reused
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Server:
    """This test process's fork server, started at its first use (one per pytest-xdist worker)."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.warmstart", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            cwd=REPO,
            env=importing_this_checkout(os.environ),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._conn = mine
        self.changed = threading.Condition()
        self.ended = False  # the server's stream closed (under changed)
        self._codes: dict[int, int] = {}
        self._pids: queue.Queue[int | None] = queue.Queue()  # each request's answer; None: it ended
        self._request = threading.Lock()  # one request and its answer at a time
        self._reader = threading.Thread(target=self._read, name="warmstart-reader", daemon=True)
        self._reader.start()

    def exit_code(self, pid: int) -> int | None:
        with self.changed:
            return self._codes.get(pid)

    def start(self, argv: list[str], *, env: dict[str, str], cwd: Path, stdout: int, stderr: int) -> Forked:
        """``python ARGV`` forked from the server; ``stdout`` and ``stderr`` are descriptors."""
        request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode() + b"\n"
        with open(os.devnull, "rb") as stdin, self._request:
            try:
                socket.send_fds(self._conn, [request], [stdin.fileno(), stdout, stderr])
                pid = self._pids.get(timeout=60)
            except OSError:  # its end of the socket is closed: it died
                pid = None
            except queue.Empty:
                raise AssertionError("the fork server did not answer within 60 s") from None
        if pid is None:
            raise AssertionError(f"the fork server ended (exit code {self.process.wait(10)})")
        return Forked(self, pid)

    def _read(self) -> None:
        with self._conn.makefile("rb") as lines:
            for line in lines:
                message = json.loads(line)
                if "pid" in message:
                    self._pids.put(message["pid"])
                    continue
                with self.changed:
                    self._codes[message["exited"]] = message["code"]
                    self.changed.notify_all()
        self._pids.put(None)  # the server ended: no answer, and no exit reported, any more
        with self.changed:
            self.ended = True
            self.changed.notify_all()


_servers: dict[int, Server] = {}  # by the pid of the test process that started it
_lock = threading.Lock()


def server() -> Server:
    """This process's server (started now if it is not running)."""
    with _lock:
        running = _servers.get(os.getpid())
        if running is None or running.process.poll() is not None:
            running = _servers[os.getpid()] = Server()
        return running


if __name__ == "__main__":
    main()
