"""Sidecars travel with their picture: sorted, journalled, undone and corrected with it; never rejected."""

from __future__ import annotations

import functools
import json
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.config import DEFAULT_SIDECARS
from clipsort.ingest.sidecars import companions, is_sidecar, renamed
from clipsort.store.journal import Journal
from tests.daemonproc import Daemon, drop, picture_bytes, start
from tests.helpers import RGB
from tests.synthetic import make_dataset
from tests.waiting import wait_until


def test_names_that_are_a_pictures_sidecars() -> None:
    """By stem or by the whole name, any case; renamed as the picture is."""
    names = ["IMG_1.jpg", "IMG_1.xmp", "IMG_1.AAE", "IMG_1.jpg.json", "IMG_10.xmp", "IMG_1.txt", "img_1.THM"]
    assert companions("IMG_1.jpg", names, DEFAULT_SIDECARS) == [
        "IMG_1.AAE",
        "IMG_1.jpg.json",
        "IMG_1.xmp",
        "img_1.THM",
    ]
    assert is_sidecar("notes.JSON", DEFAULT_SIDECARS) and not is_sidecar("IMG_1.jpg", DEFAULT_SIDECARS)
    assert renamed("IMG_1.xmp", "IMG_1.jpg", "IMG_1_1.jpg") == "IMG_1_1.xmp"
    assert renamed("IMG_1.jpg.json", "IMG_1.jpg", "IMG_1_1.jpg") == "IMG_1_1.jpg.json"
    assert renamed("img_1.THM", "IMG_1.jpg", "IMG_1.jpg") == "IMG_1.THM"


@pytest.fixture
def cli(tiny_model: Path) -> CliRunner:
    return CliRunner(env={"CLIPSORT_MODEL": str(tiny_model), "CLIPSORT_UNKNOWN_GATE": "false"})


def test_sidecars_are_sorted_undone_and_corrected_with_their_picture(cli: CliRunner, data_root: Path) -> None:
    dataset = data_root / "ds"
    make_dataset(dataset, RGB, references=3, inbox=["red", "blue"], seed=5)
    inbox = dataset / "Images"
    (inbox / "img0000.xmp").write_text("<x:xmpmeta/>")
    (inbox / "img0000.png.json").write_text('{"title": "a red one"}')
    (inbox / "img0001.AAE").write_text("<plist/>")
    (inbox / "lonely.xmp").write_text("<x:xmpmeta/>")  # its picture never comes
    (dataset / "Dataset" / "red").mkdir(parents=True)
    (dataset / "Dataset" / "red" / "img0000.png").write_bytes(b"an older picture of that name")
    done = cli.invoke(app, ["sort", "--root", str(data_root), "--json"])
    assert done.exit_code == 0, done.stderr
    red = dataset / "Dataset" / "red"
    expected = ["img0000_1.png", "img0000_1.png.json", "img0000_1.xmp", "img0000.png"]
    assert sorted(p.name for p in red.iterdir()) == sorted(expected), "beside it, under its numbered name"
    assert (red / "img0000_1.xmp").read_text() == "<x:xmpmeta/>"
    assert sorted(p.name for p in (dataset / "Dataset" / "blue").iterdir()) == ["img0001.AAE", "img0001.jpg"]
    assert sorted(p.name for p in inbox.iterdir()) == ["lonely.xmp"], "an orphan waits, never rejected"
    assert not (dataset / "Rejected").exists()
    assert len(done.stdout.splitlines()) == 2, "a decision per picture; sidecars follow"
    waiting = [json.loads(line) for line in done.stderr.splitlines() if '"sidecar_waiting"' in line]
    assert [Path(record["file"]).name for record in waiting] == ["lonely.xmp"]
    with Journal(data_root / ".clipsort") as journal:
        (picture,) = [e for e in journal.entries() if e.intent.source.name == "img0000.png"]
        assert sorted(s.intent.source.name for s in journal.sidecars_of(picture)) == [
            "img0000.png.json",
            "img0000.xmp",
        ]
        assert all(s.state == "moved" and s.intent.label == "red" for s in journal.sidecars_of(picture))
    moved_to_green = cli.invoke(
        app, ["undo", "--root", str(data_root), str(red / "img0000_1.png"), "--to", "green"]
    )
    assert moved_to_green.exit_code == 0, moved_to_green.output
    green = dataset / "Dataset" / "green"
    assert sorted(p.name for p in green.iterdir()) == ["img0000_1.png", "img0000_1.png.json", "img0000_1.xmp"]
    blue = dataset / "Dataset" / "blue" / "img0001.jpg"
    back = cli.invoke(app, ["undo", "--root", str(data_root), str(blue)])
    assert back.exit_code == 0, back.output
    assert sorted(p.name for p in inbox.iterdir()) == ["img0001.AAE", "img0001.jpg", "lonely.xmp"]
    assert (inbox / "img0001.AAE").read_text() == "<plist/>"
    assert not list((dataset / "Dataset" / "blue").iterdir())


def reloaded(daemon: Daemon, times: int) -> bool:
    return len(daemon.events("config_reloaded")) >= times


def test_the_daemon_moves_a_sidecar_with_its_picture_and_leaves_an_orphan_waiting(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """The sidecar first, then its picture: both land together; an orphan is said once over many rescans."""
    root = tmp_path / "Data"
    dataset = root / "ds"
    make_dataset(dataset, RGB, references=3, seed=5)
    daemon = start(daemons, root, tiny_model, tmp_path / "home", rescan_seconds=0.5, unknown_gate=False)
    inbox = dataset / "Images"
    drop(inbox, "orphan.json", b'{"title": "no picture"}')
    drop(inbox, "IMG_7.XMP", b"<x:xmpmeta/>")
    drop(inbox, "IMG_7.png", picture_bytes(tmp_path, "green", 3, "p.png"))
    wait_until((dataset / "Dataset" / "green" / "IMG_7.XMP").exists, timeout=60)
    assert (dataset / "Dataset" / "green" / "IMG_7.png").exists()
    for reloads in (1, 2):  # each reload rescans every inbox; a rescan also comes every 0.5 s
        daemon.signal(signal.SIGHUP)
        wait_until(functools.partial(reloaded, daemon, reloads))
    drop(inbox, "later.png", picture_bytes(tmp_path, "red", 4, "p.png"))
    wait_until((dataset / "Dataset" / "red" / "later.png").exists, timeout=60)
    waiting = [Path(record["file"]).name for record in daemon.events("sidecar_waiting")]
    assert waiting.count("orphan.json") == 1, waiting
    assert sorted(p.name for p in inbox.iterdir()) == ["orphan.json"]
    assert daemon.stop() == 0
