"""System tests: the real daemon process, real folders, real watchdog, real signals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsort.cli import app
from tests.daemonproc import Daemon, children, drop, free_port, picture_bytes, sha, sorted_files, start
from tests.helpers import RGB, publish_copy, tree
from tests.synthetic import draw, grid, make_dataset, save
from tests.waiting import wait_until


def test_drops_of_every_kind_land_complete_in_their_class(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """Backlog, slow chunked writers, renames from temporary names, a burst: all sorted, none torn."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=4, inbox=["red", "green", "blue"], seed=3)
    expected = {f"img{k:04d}.{'jpg' if k % 2 else 'png'}": c for k, c in enumerate(["red", "green", "blue"])}
    originals: dict[str, str] = {name: sha(dataset / "Images" / name) for name in expected}
    daemon = start(daemons, root, tiny_model, tmp_path / "home")
    staging = tmp_path / "staging"
    staging.mkdir()
    colors = list(RGB)

    def slow_writer(k: int) -> None:
        data = picture_bytes(staging, colors[k % 3], 100 + k, f"slow{k}.png")
        target = dataset / "Images" / f"slow{k}.png"
        chunks = [data[i : i + len(data) // 5 + 1] for i in range(0, len(data), len(data) // 5 + 1)]
        for chunk in chunks:  # open, append, close: each chunk is a close-after-write
            with target.open("ab") as handle:
                handle.write(chunk)
            time.sleep(0.4)

    writers = [threading.Thread(target=slow_writer, args=(k,)) for k in range(3)]
    for k in range(3):
        expected[f"slow{k}.png"] = colors[k % 3]
        originals[f"slow{k}.png"] = hashlib.sha256(
            picture_bytes(staging, colors[k % 3], 100 + k, "x.png")
        ).hexdigest()
    for writer in writers:
        writer.start()
    for k in range(5):
        name = f"renamed{k}.png"
        data = picture_bytes(staging, colors[k % 3], 200 + k, name)
        (dataset / "Images" / f"{name}.part").write_bytes(data)
        os.rename(dataset / "Images" / f"{name}.part", dataset / "Images" / name)
        expected[name], originals[name] = colors[k % 3], hashlib.sha256(data).hexdigest()
    for k in range(300):
        name = f"burst{k:03d}.png"
        source = staging / name
        source.write_bytes(picture_bytes(staging, colors[k % 3], 300 + k, "b.png"))
        shutil.copy(source, dataset / "Images" / name)
        expected[name], originals[name] = colors[k % 3], sha(source)
    for writer in writers:
        writer.join()

    wait_until(lambda: len(sorted_files(dataset)) == len(expected), timeout=120)
    landed = sorted_files(dataset)
    assert not (dataset / "Rejected").exists()
    assert tree(dataset).get("Images") is None
    correct = sum(landed[name] == color for name, color in expected.items())
    assert correct >= 0.97 * len(expected), f"{correct}/{len(expected)}"
    for name in ("slow0.png", "slow1.png", "slow2.png"):
        assert landed[name] == expected[name]
    for path in (dataset / "Dataset").rglob("*"):
        if path.is_file():
            assert sha(path) == originals[path.name], f"{path.name} was not moved whole"
    # Start-up froze what it made before the threads started, and housekeeping's first round says so
    # (clipsort.heap): with torch and a model loaded, far more than a bare interpreter's few thousand.
    # The round also handed the allocator's free memory back (whether there was any to hand back
    # depends on the start; tests/unit/test_heap.py holds what the call does).
    swept = daemon.wait_event("state_swept")
    assert swept["heap_frozen"] > 50_000 and isinstance(swept["heap_given_back"], bool)
    assert daemon.stop() == 0


def test_live_retargeting_new_classes_removed_classes_new_datasets(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """Editing Clases/ while running retargets later arrivals; new datasets are picked up."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, {"red": "red", "blue": "blue"}, references=4, seed=3)
    daemon = start(daemons, root, tiny_model, tmp_path / "home")
    rng = np.random.default_rng(11)

    def drop(where: Path, name: str, color: str) -> None:
        save(draw(rng, color, "circle", 80), where / "Images" / f".{name}")
        os.rename(where / "Images" / f".{name}", where / "Images" / name)

    # A class folder with references appears: later green pictures go to it.
    for k in range(3):
        save(draw(rng, "green", "square"), dataset / "Clases" / "green" / f"g{k}.png")
    daemon.wait_event("classes_loaded", lambda r: "green" in r["classes"])
    drop(dataset, "g.png", "green")
    wait_until(lambda: sorted_files(dataset).get("g.png") == "green")

    # A class folder is removed: nothing more goes there; a red picture is now a stranger, which
    # the unknown gate (recalibrated on the edit) holds in Review/ rather than filing it as blue or green.
    shutil.rmtree(dataset / "Clases" / "red")
    daemon.wait_event("classes_loaded", lambda r: r["classes"] == ["blue", "green"])
    drop(dataset, "r.png", "red")
    wait_until(lambda: (dataset / "Review" / "r.png").exists() or "r.png" in sorted_files(dataset))
    assert "r.png" not in sorted_files(dataset)
    assert daemon.wait_event("review", lambda r: r["file"].endswith("r.png"))["reason"] == "unknown"

    # A dataset created while running is watched; its files wait until it has classes.
    second = root / "second"
    (second / "Images").mkdir(parents=True)
    drop(second, "early.png", "blue")
    daemon.wait_event("dataset_waiting_for_classes", lambda r: r["dataset"] == "second")
    time.sleep(1.0)
    assert (second / "Images" / "early.png").exists()
    for k in range(3):
        save(draw(rng, "blue", "circle"), second / "Clases" / "sky" / f"s{k}.png")
    save(draw(rng, "red", "circle"), second / "Clases" / "fire" / "f0.png")
    wait_until(lambda: sorted_files(second).get("early.png") == "sky")
    drop(second, "late.png", "red")
    wait_until(lambda: sorted_files(second).get("late.png") == "fire")
    assert len(daemon.events("dataset_waiting_for_classes")) == 1  # warned once
    assert daemon.stop() == 0


def test_restart_with_a_warm_cache_embeds_no_reference_again(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """The second start reads every reference embedding from the state folder's cache."""
    root = tmp_path / "Data"
    make_dataset(root / "rgb", RGB, references=5, seed=3)
    first = start(daemons, root, tiny_model, tmp_path / "home")
    wait_until(lambda: first.status().references_embedded == 15)
    assert first.stop() == 0
    second = start(daemons, root, tiny_model, tmp_path / "home")
    loaded = second.wait_event("classes_loaded", lambda r: r["dataset"] == "rgb")
    assert loaded["references"] == 15 and loaded["newly_embedded"] == 0
    wait_until(lambda: second.status().state == "running")
    assert second.status().references_embedded == 0
    # Replacing one reference's bytes re-embeds exactly that one.
    save(draw(np.random.default_rng(5), "red", "triangle"), root / "rgb" / "Clases" / "red" / "ref0.png")
    second.wait_event("classes_loaded", lambda r: r["newly_embedded"] == 1)
    assert second.stop() == 0


def test_sigterm_during_a_stream_loses_and_duplicates_nothing(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """Exit code 0; every file is either still in Images/ or whole in Dataset/, exactly once."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=3, seed=3)
    daemon = start(daemons, root, tiny_model, tmp_path / "home", settle_seconds=0.05)
    staging = tmp_path / "staging"
    staging.mkdir()
    hashes: list[str] = []
    colors = list(RGB)
    stop = threading.Event()

    def stream() -> None:
        for k in range(400):
            if stop.is_set():
                return
            data = picture_bytes(staging, colors[k % 3], k, "s.png")
            (dataset / "Images" / f"s{k:03d}.png.tmp").write_bytes(data)
            os.rename(dataset / "Images" / f"s{k:03d}.png.tmp", dataset / "Images" / f"s{k:03d}.png")
            hashes.append(hashlib.sha256(data).hexdigest())
            time.sleep(0.005)

    writer = threading.Thread(target=stream)
    writer.start()
    wait_until(lambda: len(sorted_files(dataset)) >= 20, timeout=60)
    daemon.signal(signal.SIGTERM)
    assert daemon.process is not None
    assert daemon.process.wait(timeout=30) == 0
    stop.set()
    writer.join()
    present = [sha(p) for p in dataset.rglob("*") if p.is_file() and "Clases" not in p.parts]
    assert sorted(present) == sorted(hashes)
    assert not [p for p in dataset.rglob("*clipsort*")], "temporary files left behind"
    assert "STOPPING=1" in daemon.received()


def test_systemd_protocol_reload_status_and_metrics(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """READY/STATUS/RELOADING/STOPPING over NOTIFY_SOCKET; SIGHUP reloads or keeps; status; metrics."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=3, inbox=["red"], seed=3)
    port = free_port()
    home = tmp_path / "home"
    daemon = start(daemons, root, tiny_model, home, env={"WATCHDOG_USEC": "600000"}, metrics_port=port)
    assert any(field.startswith("STATUS=") for field in daemon.received())
    daemon.wait_notify("WATCHDOG=1", timeout=10)
    wait_until(lambda: sorted_files(dataset) == {"img0000.png": "red"})

    runner = CliRunner()
    shown = runner.invoke(app, ["status", "--config", str(daemon.config)])
    assert shown.exit_code == 0, shown.output
    assert "rgb" in shown.stdout and "tiny-clip" in shown.stdout

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'clipsort_files_total{class="red",dataset="rgb",reason="",status="sorted"} 1.0' in body
    assert "clipsort_drop_to_move_seconds_bucket" in body
    assert 'clipsort_review_share{dataset="rgb"} 0.0' in body
    assert 'clipsort_confidence_bucket{dataset="rgb",le="1.0"} 1.0' in body

    # A valid new config is applied (text mode) ...
    config = daemon.config.read_text()
    daemon.config.write_text(config + 'mode = "text"\n')
    daemon.signal(signal.SIGHUP)
    daemon.wait_notify("RELOADING=1")
    daemon.wait_notify("READY=1")
    daemon.wait_event("classes_loaded", lambda r: r["mode"] == "text")
    # ... a bad one is rejected and the daemon keeps sorting with the old one.
    daemon.config.write_text(config + 'mode = "psychic"\n')
    daemon.signal(signal.SIGHUP)
    rejected = daemon.wait_event("reload_rejected")
    assert "psychic" in rejected["error"]
    save(draw(np.random.default_rng(1), "blue", "circle"), dataset / "Images" / "after.png")
    wait_until(lambda: sorted_files(dataset).get("after.png") == "blue")
    daemon.wait_event("sorted", lambda r: r["file"].endswith("after.png"))  # logged after the move
    assert daemon.events("sorted")[-1]["mode"] == "text"

    assert daemon.stop() == 0
    assert "STOPPING=1" in daemon.received()
    daemon.config.write_text(config)
    gone = runner.invoke(app, ["status", "--config", str(daemon.config)])
    assert gone.exit_code == 1 and "no daemon is running" in gone.stderr


def test_copy_action_is_refused_by_the_daemon(tmp_path: Path, tiny_model: Path) -> None:
    """The daemon must empty its inbox; action = copy is a user error (exit 2)."""
    (tmp_path / "Data").mkdir()
    result = CliRunner().invoke(
        app,
        ["run", "--root", str(tmp_path / "Data"), "--model", str(tiny_model)],
        env={"CLIPSORT_ACTION": "copy"},
    )
    assert result.exit_code == 2 and "copy" in result.stderr


def test_a_burst_of_20000_files_loses_none_in_bounded_memory(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """2,000 files, then 18,000 at once through a 1,000-file intake: all sorted once, peak memory flat."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=2, seed=3)
    daemon = start(daemons, root, tiny_model, tmp_path / "home", queue_capacity=1000, batch_size=64)
    assert daemon.process is not None
    staging = tmp_path / "staging"
    staging.mkdir()
    pictures = [picture_bytes(staging, color, k, "p.png") for k, color in enumerate(RGB)]
    for k in range(2_000):
        (dataset / "Images" / f"a{k:05d}.png").write_bytes(pictures[k % 3])
    wait_until(lambda: daemon.status().datasets["rgb"].sorted == 2_000, timeout=300, every=1.0)
    ceiling = daemon.peak_rss_mb()
    for k in range(18_000):
        (dataset / "Images" / f"b{k:05d}.png").write_bytes(pictures[k % 3])
    wait_until(lambda: daemon.status().datasets["rgb"].sorted == 20_000, timeout=600, every=1.0)
    peak = daemon.peak_rss_mb()
    assert peak <= ceiling * 1.15, f"peak {peak:.0f} MiB after 20,000 files, {ceiling:.0f} MiB after 2,000"
    landed = sorted_files(dataset)
    assert len(landed) == 20_000
    assert not list((dataset / "Images").iterdir())
    assert daemon.stop() == 0


def test_a_busy_inbox_is_listed_instead_of_watched_and_watched_again_once_quiet(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """Past 20 events a second the inbox is listed, not watched: 300 files and a folder of 5 are
    each filed once; once quiet it is watched again, and one file dropped then is filed by its
    event (a full rescan would be minutes away)."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=2, seed=3)
    daemon = start(daemons, root, tiny_model, tmp_path / "home", busy_events_per_second=20)
    staging = tmp_path / "staging"
    staging.mkdir()
    pictures = [picture_bytes(staging, color, k, "p.png") for k, color in enumerate(RGB)]
    for k in range(300):
        (dataset / "Images" / f"b{k:03d}.png").write_bytes(pictures[k % 3])
    (dataset / "Images" / "folder").mkdir()
    for k in range(5):
        (dataset / "Images" / "folder" / f"f{k}.png").write_bytes(pictures[k % 3])
    busy = daemon.wait_event("inbox_busy", timeout=60)
    assert busy["dataset"] == "rgb" and busy["whole"] is False, "written in place: each file settles"
    daemon.wait_event("inbox_quiet", timeout=120)
    wait_until(lambda: len(sorted_files(dataset)) == 305, timeout=300, every=0.5)
    drop(dataset / "Images", "late.png", pictures[0])
    wait_until(lambda: "late.png" in sorted_files(dataset), timeout=30)
    assert len(sorted_files(dataset)) == 306, "each file once"
    assert not [p for p in (dataset / "Images").rglob("*") if p.is_file()]
    assert len(daemon.events("inbox_busy")) == 1 and len(daemon.events("inbox_quiet")) == 1
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("settings", "reason", "detail"),
    [
        ({}, "unknown", "reference"),  # the default: the unknown gate
        ({"unknown_gate": False, "min_confidence": "auto"}, "uncertain", "confidence"),
    ],
)
def test_pictures_of_no_class_are_held_for_review_by_the_daemon(
    daemons: list[Daemon],
    tmp_path: Path,
    tiny_model: Path,
    settings: dict[str, object],
    reason: str,
    detail: str,
) -> None:
    """A line pattern goes to Review/ (as unknown by default, as uncertain by confidence) and red to red."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=4, seed=5)
    daemon = start(daemons, root, tiny_model, tmp_path / "home", None, **settings)
    if "min_confidence" in settings:
        assert 0 < daemon.wait_event("calibrated")["min_confidence"] < 1
    save(grid(np.random.default_rng(3)), dataset / "Images" / "lines.png")
    save(draw(np.random.default_rng(4), "red", "circle", 80), dataset / "Images" / "red.png")
    wait_until(
        lambda: (dataset / "Review" / "lines.png").exists() and sorted_files(dataset).get("red.png") == "red"
    )
    held = daemon.wait_event("review")
    assert len(held["top3"]) == 3 and held["reason"] == reason and detail in held["detail"]
    wait_until(lambda: getattr(daemon.status().datasets["rgb"], reason) == 1)
    assert daemon.status().datasets["rgb"].review == 1
    assert daemon.stop() == 0


def test_a_reload_reaches_what_was_built_at_start(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """SIGHUP reaches the size cap, the wait for incomplete files, pool and queue sizes; restarts named."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=3, seed=5)
    daemon = start(daemons, root, tiny_model, tmp_path / "home", max_file_mb=1, max_wait_seconds=600)
    noise = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    big = tmp_path / "big.png"
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > 2**20 * 2, "the picture must be over the cap"
    drop(dataset / "Images", "big-before.png", big.read_bytes())
    wait_until((dataset / "Rejected" / "big-before.png").exists)
    (dataset / "Images" / "empty.png").write_bytes(b"")  # awaited: it may still be being written
    daemon.wait_event("waiting", lambda r: r["file"].endswith("empty.png"))  # its verdict was "wait"
    assert (dataset / "Images" / "empty.png").exists()

    daemon.update_config(
        max_file_mb=50,
        max_wait_seconds=1,
        decode_workers=3,
        decode_ahead=3,
        queue_capacity=64,
        metrics_port=free_port(),
    )
    daemon.signal(signal.SIGHUP)
    reloaded = daemon.wait_event("config_reloaded")
    assert {"max_file_mb", "max_wait_seconds", "decode_workers", "decode_ahead", "queue_capacity"} <= set(
        reloaded["changed"]
    )
    assert daemon.wait_event("reload_needs_restart")["settings"] == ["metrics_port"]
    drop(dataset / "Images", "big-after.png", big.read_bytes())
    # The new cap holds: the picture is decoded and classified (noise is "none of these", so the unknown
    # gate holds it in Review/) instead of being rejected.
    wait_until((dataset / "Review" / "big-after.png").exists, timeout=30)
    wait_until((dataset / "Rejected" / "empty.png").exists, timeout=30)  # the new wait holds
    daemon.wait_event("decode_workers_changed", lambda r: (r["workers"], r["ahead"]) == (3, 3))


def test_a_reload_to_a_missing_root_is_refused_and_the_next_good_one_sorts(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """root = a folder that is not there: rejected, said in the status; the old root sorts on."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=3, seed=5)
    daemon = start(daemons, root, tiny_model, tmp_path / "home")
    daemon.update_config(root=str(tmp_path / "nowhere"))
    daemon.signal(signal.SIGHUP)
    assert "nowhere" in daemon.wait_event("reload_rejected")["error"]
    wait_until(lambda: "nowhere" in (daemon.status().last_error or ""))
    save(draw(np.random.default_rng(2), "green", "circle"), dataset / "Images" / "meanwhile.png")
    wait_until(lambda: sorted_files(dataset).get("meanwhile.png") == "green")
    daemon.update_config(root=str(root))
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("config_reloaded")
    save(draw(np.random.default_rng(3), "blue", "circle"), dataset / "Images" / "after.png")
    wait_until(lambda: sorted_files(dataset).get("after.png") == "blue")


def test_a_fine_tuned_daemon_loads_clip_only_when_a_reload_asks_for_it(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path, rgb_checkpoints: dict[str, Path]
) -> None:
    """All fine-tuned: it runs with `model` naming nothing; reloaded into reference mode, it loads CLIP."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=20, seed=3)
    home = tmp_path / "home"
    home.mkdir()
    nowhere = tmp_path / "no-clip-here"
    daemon = Daemon(root, nowhere, home, mode="finetuned")
    publish_copy(rgb_checkpoints["rgb"], daemon.state / "checkpoints" / "rgb", "trained")
    daemons.append(daemon)
    daemon.start()
    assert daemon.status().model.startswith("none") and not daemon.events("model_loaded")
    rng = np.random.default_rng(8)
    save(draw(rng, "red", "circle", 64), dataset / "Images" / "by-checkpoint.png")
    wait_until(lambda: sorted_files(dataset).get("by-checkpoint.png") == "red")

    config = daemon.config.read_text().replace(json.dumps(str(nowhere)), json.dumps(str(tiny_model)))
    daemon.config.write_text(config.replace('mode = "finetuned"', 'mode = "reference"'))
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("model_loaded", timeout=120)
    daemon.wait_event("config_reloaded")
    save(draw(rng, "blue", "circle", 64), dataset / "Images" / "by-clip.png")
    wait_until(lambda: sorted_files(dataset).get("by-clip.png") == "blue")
    daemon.wait_event("sorted", lambda r: r["file"].endswith("by-clip.png"))  # logged after the move
    (line,) = [r for r in daemon.events("sorted") if r["file"].endswith("by-clip.png")]
    assert line["mode"] == "reference-max" and line["model"] == str(tiny_model)
    wait_until(lambda: daemon.status().model == str(tiny_model))


def test_finetuned_checkpoints_are_hot_swapped(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path, rgb_checkpoints: dict[str, Path]
) -> None:
    """A newly published checkpoint takes over between batches; a corrupt one leaves the old in force.

    Publishing by `clipsort train` itself is tested in tests/integration/test_training.py; here the
    session's checkpoints are copied in and the pointer rewritten, as a person may publish one.
    """
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=20, seed=3)
    home = tmp_path / "home"
    home.mkdir()
    daemon = Daemon(root, tiny_model, home, mode="finetuned")
    checkpoints = daemon.state / "checkpoints" / "rgb"
    publish_copy(rgb_checkpoints["rgb"], checkpoints, "first")
    daemons.append(daemon)
    daemon.start()
    rng = np.random.default_rng(8)
    save(draw(rng, "red", "circle", 64), dataset / "Images" / "before.png")
    wait_until(lambda: sorted_files(dataset).get("before.png") == "red")

    # A second checkpoint whose classes carry Spanish names, trained elsewhere and published here.
    publish_copy(rgb_checkpoints["rojo"], checkpoints, "second")
    daemon.wait_event("checkpoint_classes_differ")
    daemon.wait_event("classes_loaded", lambda r: r["checkpoint"] and "rojo" in r["classes"])
    spanish = {"red": "rojo", "green": "verde", "blue": "azul"}
    for k, color in enumerate(list(RGB) * 2):
        save(draw(rng, color, "circle", 64), dataset / "Images" / f"after-{color}-{k}.png")
    wait_until(lambda: sum(name.startswith("after") for name in sorted_files(dataset)) == 6)
    after = {name: label for name, label in sorted_files(dataset).items() if name.startswith("after")}
    assert set(after.values()) <= set(spanish.values()), (
        "every later file is classified by the new checkpoint"
    )
    assert sum(label == spanish[name.split("-")[1]] for name, label in after.items()) >= 4

    # A corrupt checkpoint is rejected; the Spanish one stays in use.
    broken = checkpoints / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (checkpoints / "current").write_text("broken")
    daemon.wait_event("checkpoint_rejected")
    save(draw(rng, "green", "circle", 64), dataset / "Images" / "later.png")
    wait_until(lambda: sorted_files(dataset).get("later.png") in set(spanish.values()))
    assert daemon.stop() == 0


def decoder_processes(parent: int) -> list[int]:
    """The decoding worker processes of the process ``parent``."""
    return children(parent, b"clipsort.decode.decodeprocesses")


def test_a_decode_worker_killed_mid_burst_loses_and_duplicates_nothing(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """SIGKILL a decoding process during a burst: every file lands exactly once, bytes unchanged."""
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=2, seed=3)
    daemon = start(daemons, root, tiny_model, tmp_path / "home", decode_in="processes", batch_size=16)
    assert daemon.process is not None
    pid = daemon.process.pid
    # Both started (their imports done): a worker killed while it starts is "not started", a
    # different story (decoding falls back to a thread and a fresh worker is made for the next chunk).
    wait_until(lambda: len({record["pid"] for record in daemon.events("decoder_started")}) >= 2, timeout=60)
    started = {record["pid"] for record in daemon.events("decoder_started")}
    staging = tmp_path / "staging"
    staging.mkdir()
    hashes = []

    def wave(first: int, count: int) -> None:
        for k in range(first, first + count):
            data = picture_bytes(staging, list(RGB)[k % 3], k, "k.png")
            drop(dataset / "Images", f"k{k:03d}.png", data)
            hashes.append(hashlib.sha256(data).hexdigest())

    wave(0, 150)
    wait_until(lambda: len(sorted_files(dataset)) >= 30, timeout=60, every=0.01)
    victim = min(started & set(decoder_processes(pid)))
    os.kill(victim, signal.SIGKILL)
    # Decoding runs ahead of placing, so the first wave may be decoded whole by now: a worker
    # killed while idle is seen dead only when it is next given a chunk, which the second wave is.
    wave(150, 150)
    wait_until(lambda: not list((dataset / "Images").iterdir()), timeout=120, every=0.2)
    daemon.wait_event("decoder_died", lambda record: record["pid"] == victim)
    present = [sha(p) for p in dataset.rglob("*") if p.is_file() and "Clases" not in p.parts]
    assert sorted(present) == sorted(hashes), "each file once, whole, and nothing else"
    assert not list((dataset / "Images").iterdir())
    wait_until(lambda: len(decoder_processes(pid)) == 2)  # a fresh worker took the dead one's place
    assert victim not in decoder_processes(pid)
    assert daemon.stop() == 0
    # Python's resource tracker (a process of its own) reports at the daemon's exit any segment
    # still registered, that is one the daemon forgot to unlink.
    time.sleep(1.0)
    assert "leaked shared_memory" not in daemon.log.read_text(errors="replace")


def test_a_sighup_on_a_half_written_config_applies_nothing_it_did_not_read(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """Truncated during SIGHUP, then a storm of SIGHUPs while it is rewritten: the root never changes.

    Before, a config read while empty fell back to the default root (./Data beside the daemon's
    working directory) and sorted a tree nobody named.
    """
    root = tmp_path / "Data"
    dataset = root / "rgb"
    make_dataset(dataset, RGB, references=3, seed=5)
    home = tmp_path / "home"
    decoy = home / "Data" / "decoy"  # ./Data of the daemon's working directory: the default root
    make_dataset(decoy, RGB, references=2, inbox=["red"], seed=6)
    daemon = start(daemons, root, tiny_model, home)
    whole = daemon.config.read_text()
    daemon.config.write_text("")  # as `cp` or an editor leaves it for a moment
    daemon.signal(signal.SIGHUP)
    assert "is empty" in daemon.wait_event("reload_rejected")["error"]
    stop = threading.Event()
    rounds = [0]

    def rewrite() -> None:
        while not stop.is_set():
            with daemon.config.open("w") as handle:  # truncated, then written in pieces
                for start_at in range(0, len(whole), 40):
                    handle.write(whole[start_at : start_at + 40])
                    handle.flush()
            rounds[0] += 1

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        for reload in range(12):  # each SIGHUP after another rewrite began
            wait_until(lambda reload=reload: rounds[0] > reload)  # type: ignore[misc]
            daemon.signal(signal.SIGHUP)
    finally:
        stop.set()
        writer.join()
    daemon.config.write_text(whole)
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.events("config_reloaded"), timeout=60)
    save(draw(np.random.default_rng(3), "blue", "circle"), dataset / "Images" / "after.png")
    wait_until(lambda: sorted_files(dataset).get("after.png") == "blue")
    assert not any("root" in record["changed"] for record in daemon.events("config_reloaded"))
    assert (decoy / "Images" / "img0000.png").exists() and not (decoy / "Dataset").exists()
    assert daemon.status().state == "running"
