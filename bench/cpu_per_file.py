"""The interpreter's own CPU per file: what caps one clipsort process on any host (issue 37's measure).

Usage (from the repository root)::

    python -m bench.cpu_per_file            # 2,000 distinct 640x480 JPEGs
    python -m bench.cpu_per_file --quick    # seconds-long smoke run (what CI runs)

On a GPU host the model is nearly free and the decoders scale with the cores, so what bounds one
process is the CPU its own interpreter spends per file (its threads share one GIL): 1 / that cost
is the most files per second it can ever sort. It is measured from outside, as the process's own
utime + stime (never its decoding processes': ``decode_in = "processes"``), with a two-layer
random CLIP of width 8 that sees each picture as one 224-pixel patch standing in for the GPU, run
on one operator thread (``model_threads = 1``, what automatic gives on a GPU host: more threads
spin beside the decoders, and their CPU is no pipeline's), in batches of 256 (``batch_size``'s
automatic value on a GPU host; ``--batch-size 32`` measures the CPU's):

- **daemon**: the real daemon, a burst of the files renamed into its inbox; its CPU from the first
  rename to the last file filed (and, where the burst made its ``Dataset/`` busy, until that was
  looked at for corrections once still: the learner's share, done after the burst), divided by
  the files. Beside it, the **per-thread account**: each
  thread's CPU over the burst (``/proc/<pid>/task/*/stat``), by thread name, in ms per file;
- **daemon idle**: the same daemon's CPU over 20 s with nothing arriving, after the burst (its
  loops' cost when they have nothing to do: a loop that polls shows here, per thread);
- **sort**: ``clipsort sort`` as a process on the files, less a one-file run, divided by the files
  less one; its own ``RUSAGE_SELF`` from when it gathers the targets (after start-up and the
  model's load, whose CPU varies by tenths of a second from run to run) to its exit, plus its
  listing of the inboxes; the whole run's difference (the issue's own measure) is reported beside
  it. The median of three such pairs (one with ``--quick``), each pair's pipeline reported beside it.

Even that model costs the CPU something (its patch is 150,528 numbers per picture, converted to
floats a chunk at a time and multiplied: about 0.1-0.3 ms a picture here, 0.4-0.9 before the
patch products, ``clipsort.encode.encoder._PixelEmbeddings``), work a GPU would do. So each run reports the
**model's** share too (``clipsort.encode.encoder.model_cpu_seconds``: the model thread's CPU
clock around each forward pass; the daemon's through its ``clipsort_model_cpu_seconds`` metric)
and the **pipeline's**, the process's CPU less the model's: what issue 37's targets are about.

The journal's rows, the moves and the canonical lines are done by the placing process
(``place_in = "process"``, the default, :mod:`clipsort.sort.placing`), whose CPU is not counted
either: the measure is what the interpreter that classifies spends, which caps its rate.
``--place-in thread`` measures the placer thread doing that work itself.

``--device cuda`` (``bench/gpu.sh``) runs the stand-in on a GPU: there the model's share is what it
costs the CPU to launch its kernels and wait for them, and the figure is the one the measure is
about, on the host it is about.

CPU per file disturbs less than wall time when other work shares the machine, but quote it with
the machine's load in mind; the report carries both runs' elapsed time too.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.reports import bench_parser, files_for, machine, write_report
from clipsort.config import GPU_BATCH

# The settings a run measures under, beside those it always sets (decoding in processes, one model
# thread): given to the daemon, and to sort as its CLIPSORT_* environment.
Chosen = dict[str, str | int]
CHOSEN: Chosen = {"place_in": "process", "batch_size": GPU_BATCH, "device": "cpu"}

IDLE_SETTLE_SECONDS = 3.0  # after a burst: the quiet inbox's scan, the learner's last round, a status write

# Reads the sort process's own CPU at its exit into the file named by the first argument (the
# decoding processes are its children: RUSAGE_SELF leaves them out).
# Loaded into the daemon by Python's site hook for the measurement only: each thread's OS name
# (what /proc shows, 15 bytes) becomes its Python name less the "clipsort-" prefix, so the
# per-thread account can tell the intake from the placer.
NAME_THREADS = """
import ctypes, threading
_prctl = ctypes.CDLL(None).prctl
_start = threading.Thread._bootstrap_inner
def _named(self):
    _prctl(15, self.name.removeprefix("clipsort-").encode()[:15], 0, 0, 0)  # PR_SET_NAME
    _start(self)
threading.Thread._bootstrap_inner = _named
"""

# With --profile: each thread the daemon starts runs under cProfile on its own CPU clock (waiting
# costs nothing), its statistics written as <thread name>-<ident>.pstats when it ends or at exit.
PROFILE_THREADS = """
import atexit, cProfile, os, threading, time
_folder, _open = os.environ["CLIPSORT_BENCH_PROFILE"], {}
_run = threading.Thread.run
def _write(thread, profile):
    profile.dump_stats(os.path.join(_folder, f"{thread.name}-{thread.ident}.pstats"))
def _profiled(self):
    profile = _open[self] = cProfile.Profile(time.thread_time)
    try:
        profile.runcall(_run, self)
    finally:
        _write(self, _open.pop(self))
threading.Thread.run = _profiled
atexit.register(lambda: [_write(thread, profile) for thread, profile in list(_open.items())])
"""

# sort's own CPU at its exit, the model's share and the cyclic garbage collector's (each
# collection's CPU clock, from gc.callbacks: it runs on whichever thread allocates when it falls due),
# and its CPU from the first moment of its work on the files: when the targets are gathered, after
# start-up and the model's load, plus the main thread's CPU listing the inboxes (done before the
# model loads, to know whether to start decoding processes).
SORT_LAUNCHER = """
import atexit, gc, resource, sys, time
out = sys.argv.pop(1)
collecting, started = [0.0], []
def collector(phase, info):
    if phase == "start":
        started.append(time.thread_time())
    elif started:
        collecting[0] += time.thread_time() - started.pop()
gc.callbacks.append(collector)
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
import clipsort.sort.oneshot as oneshot
listing, marked = [0.0], []
_waiting, _gather = oneshot.waiting, oneshot.gather
def waiting(*args, **kwargs):
    begun = time.thread_time()
    try:
        return _waiting(*args, **kwargs)
    finally:
        listing[0] += time.thread_time() - begun
def gather(*args, **kwargs):
    if not marked:
        marked.append(cpu())
    return _gather(*args, **kwargs)
oneshot.waiting, oneshot.gather = waiting, gather
def record():
    encoder = sys.modules.get("clipsort.encode.encoder")
    model = encoder.model_cpu_seconds() if encoder else 0.0
    total = cpu()
    worked = total - marked[0] + listing[0] if marked else total
    with open(out, "w") as f:
        f.write(repr((total, model, collecting[0], worked)))
atexit.register(record)
from clipsort.cli import main
main()
"""


def process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of ``pid``'s threads, all (utime + stime) and in the kernel (stime: the
    renames, fsyncs, inotify and page faults done for it), from one read of /proc/<pid>/stat."""
    from tests.daemonproc import cpu_times

    user, kernel = cpu_times(Path(f"/proc/{pid}/stat").read_text())
    return user + kernel, kernel


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each live thread of ``pid``, summed by thread name."""
    from tests.daemonproc import cpu_times

    found: dict[str, float] = defaultdict(float)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        found[text[text.index("(") + 1 : text.rindex(")")]] += sum(cpu_times(text))
    return dict(found)


def daemon_cpu(
    model: Path,
    files: list[Path],
    work: Path,
    idle_seconds: float = 20.0,
    profile: Path | None = None,
    chosen: Chosen | None = None,
) -> dict[str, Any]:
    """The daemon's own CPU per file over a burst of ``files``, and the per-thread account (with
    ``profile``, each thread's cProfile statistics written there: see ``PROFILE_THREADS``)."""
    from bench.daemon_latency import CLASSES
    from bench.throughput import arrived_count
    from clipsort.config import Settings
    from tests.daemonproc import Daemon, free_port
    from tests.synthetic import make_dataset
    from tests.waiting import wait_until

    root = work / "Data"
    dataset = root / "bench"
    make_dataset(dataset, CLASSES, references=2, seed=1)
    home = work / "home"
    home.mkdir()
    status_seconds = Settings.model_fields["status_seconds"].default  # as often as deployed
    port = free_port()
    daemon = Daemon(
        root,
        model,
        home,
        settle_seconds=0.05,
        status_seconds=status_seconds,
        decode_in="processes",
        model_threads=1,
        **(chosen or CHOSEN),
        metrics_port=port,
    )
    hook = work / "name-threads"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(NAME_THREADS + (PROFILE_THREADS if profile else ""))
    env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
        env["CLIPSORT_BENCH_PROFILE"] = str(profile.resolve())
    daemon.start(wait=True, env=env)
    try:
        assert daemon.process is not None
        pid = daemon.process.pid
        for path in files:
            shutil.copyfile(path, dataset / "Images" / f".{path.name}")
        threads_before, (before, kernel_before) = thread_cpu(pid), process_cpu(pid)
        metrics_before = daemon_metrics(port)
        started = time.perf_counter()
        for path in files:
            os.rename(dataset / "Images" / f".{path.name}", dataset / "Images" / path.name)
        wait_until(lambda: arrived_count(dataset) == len(files), timeout=3600, every=0.01)
        elapsed = time.perf_counter() - started
        # A Dataset/ the burst made busy is looked at once it is still (the learner's share of the
        # burst, done after it): the window closes when that is done.
        busy = bool(daemon.events("sorted_busy"))
        if busy:
            daemon.wait_event("sorted_looked_at", timeout=600)
        (after, kernel_after), threads_after = process_cpu(pid), thread_cpu(pid)
        metrics_after = daemon_metrics(port)
        idle = idle_cpu(pid, idle_seconds)
    finally:
        daemon.stop()
    grew = {name: metrics_after[name] - metrics_before[name] for name in READ_METRICS}
    cpu, model_ms = (after - before) * 1e3 / len(files), grew["clipsort_model_cpu_seconds"] * 1e3 / len(files)
    return {
        "cpu_ms_per_file": cpu,
        "model_ms_per_file": model_ms,
        "pipeline_ms_per_file": cpu - model_ms,
        "kernel_ms_per_file": (kernel_after - kernel_before) * 1e3 / len(files),
        "elapsed_s": elapsed,
        "dataset_folder_busy": busy,  # then the CPU is counted until Dataset/ is looked at after the burst
        "mean_batch": grew["clipsort_batch_size_sum"] / max(grew["clipsort_batch_size_count"], 1),
        # Every thread, idle ones too: /proc counts in clock ticks (10 ms), which a short burst may not
        # reach on a thread that did little.
        "threads_ms_per_file": thread_ms(threads_before, threads_after, len(files), 4),
        "idle": idle,
    }


def idle_cpu(pid: int, seconds: float) -> dict[str, Any]:
    """The daemon's CPU while nothing arrives: what its loops cost when they have nothing to do.

    Measured after the burst's own aftermath (the quiet inbox's scan, the learner's last round)
    has had ``IDLE_SETTLE_SECONDS`` (less in a smoke run): a daemon that waits costs next to
    nothing; one that polls shows here, per thread, in ms of CPU per second.
    """
    time.sleep(min(IDLE_SETTLE_SECONDS, seconds))
    threads_before, (before, _) = thread_cpu(pid), process_cpu(pid)
    time.sleep(seconds)
    threads_after, (after, _) = thread_cpu(pid), process_cpu(pid)
    busy = thread_ms(threads_before, threads_after, seconds, 2)
    return {
        "seconds": seconds,
        "cpu_percent": round((after - before) * 100 / seconds, 3),
        "threads_ms_per_second": {name: ms for name, ms in busy.items() if ms},
    }


def thread_ms(before: dict[str, float], after: dict[str, float], per: float, digits: int) -> dict[str, float]:
    """Each thread's CPU between two :func:`thread_cpu` readings, in ms per ``per`` (files, seconds)."""
    return {
        name: round((after.get(name, 0.0) - before.get(name, 0.0)) * 1e3 / per, digits)
        for name in sorted(set(before) | set(after))
    }


def sort_run_cpu(
    model: Path, files: list[Path], work: Path, chosen: Chosen | None = None
) -> tuple[float, float, float, float, float]:
    """``clipsort sort``'s own CPU seconds over ``files`` (a fresh data root), the model's share of
    them, the garbage collector's, its elapsed time, and its CPU seconds on the files (from the
    targets' gathering on, and the listing: see ``SORT_LAUNCHER``)."""
    from bench.daemon_latency import CLASSES
    from tests.synthetic import make_dataset

    root = work / "Data"
    dataset = root / "bench"
    make_dataset(dataset, CLASSES, references=2, seed=1)
    for path in files:
        shutil.copyfile(path, dataset / "Images" / path.name)
    out = work / "cpu.txt"
    command = [sys.executable, "-c", SORT_LAUNCHER, str(out), "sort", "--root", str(root)]
    environment = {
        **os.environ,
        "CLIPSORT_MODEL": str(model),
        "CLIPSORT_DECODE_IN": "processes",
        **{f"CLIPSORT_{name.upper()}": str(value) for name, value in (chosen or CHOSEN).items()},
        "CLIPSORT_MODEL_THREADS": "1",
        "CLIPSORT_STATE_DIR": str(work / "state"),
        "HF_HUB_OFFLINE": "1",
    }
    started = time.perf_counter()
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False, cwd=work)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"clipsort sort failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu, model_cpu, collector, worked = ast.literal_eval(out.read_text())
    return float(cpu), float(model_cpu), float(collector), elapsed, float(worked)


def sort_cpu(
    model: Path,
    files: list[Path],
    work: Path,
    rounds: int = 3,
    chosen: Chosen | None = None,
) -> dict[str, Any]:
    """``clipsort sort``'s CPU per file: an N-file run less a one-file run, per file less one; the
    median over ``rounds`` such pairs.

    Two figures: each run's CPU on the files (``cpu_ms_per_file``: from the targets' gathering on,
    and the inboxes' listing; see ``SORT_LAUNCHER``), and its whole CPU (``whole_run_ms_per_file``,
    the issue's own measure). One run's start-up alone varies by a few tenths of a second of CPU,
    which spread the whole runs' difference by 0.1-0.5 ms per file over 2,000 files between single
    pairs; start-up is the same work in both runs, so leaving it out of both takes nothing per file
    away, only that noise."""
    per_file = 1e3 / max(len(files) - 1, 1)
    pairs = []
    for round_ in range(rounds):
        one, one_model, one_gc, _, one_worked = sort_run_cpu(model, files[:1], work / f"one-{round_}", chosen)
        many, many_model, many_gc, elapsed, many_worked = sort_run_cpu(
            model, files, work / f"many-{round_}", chosen
        )
        cpu, model_ms = (many_worked - one_worked) * per_file, (many_model - one_model) * per_file
        pairs.append(
            {
                "cpu": cpu,
                "whole": (many - one) * per_file,
                "model": model_ms,
                "pipeline": cpu - model_ms,
                "collector": (many_gc - one_gc) * per_file,
                "elapsed": elapsed,
                "one": one,
            }
        )
    middle = sorted(pairs, key=lambda pair: pair["pipeline"])[len(pairs) // 2]
    return {
        "cpu_ms_per_file": middle["cpu"],
        "whole_run_ms_per_file": middle["whole"],
        "model_ms_per_file": middle["model"],
        "pipeline_ms_per_file": middle["pipeline"],
        "collector_ms_per_file": middle["collector"],  # the garbage collector's part of the pipeline's
        "elapsed_s": middle["elapsed"],
        "one_file_cpu_s": middle["one"],
        "rounds_pipeline_ms_per_file": [pair["pipeline"] for pair in pairs],
        "rounds_whole_run_ms_per_file": [pair["whole"] for pair in pairs],
    }


def shares(run: dict[str, Any]) -> str:
    return (
        f"{run['cpu_ms_per_file']:.3f} ms of CPU per file: the model {run['model_ms_per_file']:.3f},"
        f" the pipeline {run['pipeline_ms_per_file']:.3f}"
    )


# What the daemon's metrics endpoint is read for: the model's CPU clock and the batches' sizes
# (how many files a batch's fixed costs, one forward pass and one journal transaction, are spread over).
READ_METRICS = ("clipsort_model_cpu_seconds", "clipsort_batch_size_sum", "clipsort_batch_size_count")


def daemon_metrics(port: int) -> dict[str, float]:
    """:data:`READ_METRICS` from the daemon's metrics endpoint, summed over their labels."""
    found: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in READ_METRICS:
                found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    if "clipsort_model_cpu_seconds" not in found:
        raise SystemExit("the daemon's metrics carry no clipsort_model_cpu_seconds")
    return {name: found.get(name, 0.0) for name in READ_METRICS}  # no batch yet: no sample


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "cpu_per_file", quick="40 files: a smoke run", files=2000)
    parser.add_argument(
        "--profile", type=Path, help="write each daemon thread's cProfile statistics (.pstats) here"
    )
    parser.add_argument(
        "--place-in",
        choices=("process", "thread"),
        default="process",
        help="the place_in setting: placing in a process of its own (its default) or on the placer thread",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=GPU_BATCH,
        help="the batch_size setting: 256, its automatic value on a GPU host, which this stands for",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the stand-in model runs: cpu, or cuda on a GPU host (bench/gpu.sh), the real case",
    )
    args = parser.parse_args(argv)
    count = files_for(args, quick=40)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The model stack, once the command line is read (a bad flag is refused in a fraction of a second).
    from bench.overhead import distinct_jpegs
    from tests.synthetic import kept_clip

    report: dict[str, Any] = {
        "machine": machine(),
        "files": count,
        "model": "two-layer random CLIP (hidden 8, 224-pixel input, one 224-pixel patch)",
        "decode_in": "processes",
        "place_in": args.place_in,
        "batch_size": args.batch_size,
        "device": args.device,
    }
    chosen: Chosen = {"place_in": args.place_in, "batch_size": args.batch_size, "device": args.device}
    with tempfile.TemporaryDirectory(prefix="clipsort-bench-") as scratch:
        work = Path(scratch)
        model = kept_clip(width=8, patch=224)
        files = distinct_jpegs(work / "files", count)
        report["daemon"] = daemon_cpu(
            model,
            files,
            work / "daemon",
            1.0 if args.quick else 20.0,
            args.profile,
            chosen,
        )
        batch = report["daemon"]["mean_batch"]
        kernel = report["daemon"]["kernel_ms_per_file"]
        print(f"daemon: {shares(report['daemon'])}; in the kernel {kernel:.3f}; {batch:.1f} files a batch")
        for name, ms in sorted(report["daemon"]["threads_ms_per_file"].items(), key=lambda item: -item[1]):
            print(f"  {name:<28} {ms:.3f} ms/file", flush=True)
        idle = report["daemon"]["idle"]
        print(f"daemon idle: {idle['cpu_percent']:.2f} % of a core over {idle['seconds']:g} s", flush=True)
        for name, ms in sorted(idle["threads_ms_per_second"].items(), key=lambda item: -item[1]):
            print(f"  {name:<28} {ms:.2f} ms/s", flush=True)
        report["sort"] = sort_cpu(model, files, work / "sort", 1 if args.quick else 3, chosen)
        spread = ", ".join(f"{ms:.3f}" for ms in report["sort"]["rounds_pipeline_ms_per_file"])
        collector = report["sort"]["collector_ms_per_file"]
        print(f"sort:   {shares(report['sort'])}, the collector {collector:.3f}", flush=True)
        whole = ", ".join(f"{ms:.3f}" for ms in report["sort"]["rounds_whole_run_ms_per_file"])
        print(f"        (the median of its rounds; their pipelines {spread})", flush=True)
        print(f"        (start-up included, the rounds: {whole})", flush=True)
    report["machine"]["load_after"] = os.getloadavg()
    write_report(args.out, report)


if __name__ == "__main__":
    main()
