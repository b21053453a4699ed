"""The runtime drawn in docs/explanation/runtime.md is the daemon's: its threads, by name and count."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from clipsort.config import Settings, load_settings
from clipsort.service.wiring import Service
from tests.synthetic import make_dataset
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "docs" / "explanation" / "runtime.md"


def documented_threads() -> dict[str, str]:
    """The threads table: each long-lived thread's name pattern and its "how many" rule."""
    section = RUNTIME.read_text().split("## Threads", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`" in line]
    table = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table[cells[1].strip("`")] = cells[2]
    return table


def expected_count(rule: str, service: Service) -> int:
    """What a "how many" rule of the table comes to for this daemon's settings and watches."""
    settings = service.settings
    rules = {
        "1": 1,
        "1 with `metrics_port`": int(settings.metrics_port is not None),
        "`decode_workers` (processes)": settings.decode_workers * (settings.decode_in == "processes"),
        "`decode_workers` (threads)": settings.decode_workers * (settings.decode_in == "threads"),
        "one per watched folder": len(service.watcher.watched()),
        '1 with `jpeg_decoder = "torchvision"`': int(settings.jpeg_decoder == "torchvision"),
        '`decode_workers` with `jpeg_decoder = "torchvision"`': settings.decode_workers
        * (settings.jpeg_decoder == "torchvision"),
    }
    return rules[rule]


def pattern(name: str) -> re.Pattern[str]:
    """A documented name as a pattern: ``N`` stands for a number."""
    return re.compile(re.escape(name).replace("N", r"\d+") + "$")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def started_since(since: set[threading.Thread]) -> Counter[str]:
    """The daemon's threads: the names of those started after ``since`` was taken, and the main one."""
    return Counter(thread.name for thread in threading.enumerate() if thread not in since) + Counter(
        ["MainThread"]
    )


def child_modules() -> Counter[str]:
    """The clipsort modules this process's children run (``python -m <module>``), by how many run
    each (a test process may also hold the tests' own warm-start server, ``-m tests.warmstart``)."""
    modules: Counter[str] = Counter()
    for task in Path("/proc/self/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:  # a thread that ended since the listing
            continue
        for pid in children:
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                if "-m" in argv and argv[argv.index("-m") + 1].startswith("clipsort."):
                    modules[argv[argv.index("-m") + 1]] += 1
    return modules


@pytest.mark.parametrize(
    ("decode_in", "jpeg_decoder", "place_in"),
    [
        ("processes", "pillow", "thread"),
        ("threads", "pillow", "thread"),
        ("processes", "torchvision", "thread"),
        ("threads", "pillow", "process"),
    ],
)
def test_the_daemons_threads_are_the_documented_ones(
    data_root: Path, tiny_model: Path, decode_in: str, jpeg_decoder: str, place_in: str
) -> None:
    """Started in-process, the daemon runs exactly the table's threads, each as many times as it says,
    and the processes the list under it names."""
    if jpeg_decoder == "torchvision":
        pytest.importorskip("torchvision.io", reason="the gpu-decode extra (torchvision) is not installed")
    make_dataset(data_root / "rgb", {"red": "red", "blue": "blue"}, references=2)
    (data_root / "rgb" / "Dataset").mkdir(exist_ok=True)
    settings: Settings = load_settings(
        None,
        {
            "root": data_root,
            "model": str(tiny_model),
            "decode_in": decode_in,
            "jpeg_decoder": jpeg_decoder,
            "place_in": place_in,
            "decode_workers": 2,
            "metrics_port": free_port(),
        },
    )
    table = documented_threads()
    assert len(table) == 14, table  # every row read: a broken table must not pass as an empty one
    before = set(threading.enumerate())
    service = Service(settings, None, {})
    service.start()
    try:
        # Decoding threads and processes start with the first batches: the backlog scan brings none,
        # so a few files are dropped in and sorted to have them running (a batch of several files
        # takes every decoding thread).
        references = sorted((data_root / "rgb" / "Clases" / "red").iterdir())
        for k in range(4):
            (data_root / "rgb" / "Images" / f"a{k}.png").write_bytes(references[k % 2].read_bytes())
        wait_until(lambda: len(list((data_root / "rgb" / "Dataset").rglob("a*.png"))) == 4, timeout=30)
        expected = Counter({name: expected_count(rule, service) for name, rule in table.items()})
        assert expected["clipsort-decoder-N" if decode_in == "processes" else "clipsort-decode_N"] == 2

        def counted() -> Counter[str]:
            """The live threads by the documented name each matches (an undocumented one by its own)."""
            tally: Counter[str] = Counter()
            for name, count in started_since(before).items():
                owners = [documented for documented in table if pattern(documented).match(name)]
                tally[owners[0] if len(owners) == 1 else f"undocumented: {name}"] += count
            return tally

        # Threads that come and go (the model's loader) end first.
        with contextlib.suppress(AssertionError):
            wait_until(lambda: counted() == +expected, timeout=10)
        assert counted() == +expected
        assert child_modules() == +Counter(
            {
                "clipsort.decode.decodeprocesses": 2 * (decode_in == "processes"),
                "clipsort.sort.placing": int(place_in == "process"),
            }
        )
        assert service.watcher.watched() == {
            data_root,
            data_root / "rgb",
            data_root / "rgb" / "Images",
            data_root / "rgb" / "Clases",
            data_root / "rgb" / "Dataset",
        }
    finally:
        service.stop()
    # Stopped, the daemon leaves none of its threads and none of its processes behind.
    wait_until(lambda: not {thread for thread in threading.enumerate() if thread not in before}, timeout=10)
    wait_until(lambda: not child_modules(), timeout=10)
