"""Tests for clipsort.signals: a flag set by nested signal handlers, in a real process under a storm."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

CHILD = """
import os, signal, sys
from clipsort.signals import SignalFlag

flag, done = SignalFlag(), SignalFlag()
depth = deepest = 0

def on_hup(signum, frame):
    global depth, deepest
    depth += 1
    deepest = max(deepest, depth)
    flag.set()
    depth -= 1

signal.signal(signal.SIGHUP, on_hup)
signal.signal(signal.SIGUSR1, lambda signum, frame: done.set())
print(os.getpid(), flush=True)
wakes = 0
while not done.is_set():  # the daemon's supervision loop, at a faster tick
    if flag.wait(0.001):
        flag.clear()
        wakes += 1
print(wakes, deepest, flush=True)
"""

SENDER = "import os, signal, sys\nfor _ in range(20000): os.kill(int(sys.argv[1]), signal.SIGHUP)"


def test_a_storm_of_signals_never_deadlocks_the_handlers() -> None:
    """Three processes send 60,000 SIGHUPs; the handlers nest, and the process still answers.

    With ``threading.Event`` in place of the flag the same storm left the process waiting for ever
    in a nested ``Event.set`` in two runs of three here (the daemon's SIGHUP flake).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        pid = child.stdout.readline().strip()
        senders = [subprocess.Popen([sys.executable, "-c", SENDER, pid]) for _ in range(3)]
        for sender in senders:
            assert sender.wait(timeout=120) == 0
        os.kill(int(pid), signal.SIGUSR1)
        out, _ = child.communicate(timeout=30)  # a deadlocked handler never gets here
    finally:
        child.kill()
    wakes, deepest = map(int, out.split())
    assert child.returncode == 0
    assert wakes >= 1, "the waiter was woken by the storm"
    print(f"{wakes} wakes, handlers nested {deepest} deep")
