"""Integration: ``clipsort sort --engine ray`` on a real local Ray (two CPUs, one per session).

The cluster classifies with the project's own decoder and classifier in Ray tasks and actors; this
process places through the journal and the mover. Held here: the same places as the local engine in
every mode, nothing placed twice by a second run, and a file replaced between classifying and
placing classified again. Killing a Ray worker or the run itself is in tests/system/test_cluster.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.config import load_settings
from clipsort.layout import discover
from clipsort.store.journal import Journal
from clipsort.store.mover import make_state_dir
from tests.helpers import RGB, publish_copy, tree
from tests.synthetic import draw, make_dataset, save

pytestmark = pytest.mark.usefixtures("ray_cluster")

INBOX = ["red", "green", "blue", "yellow", "red", "blue"] * 4  # yellow: none of these
MODES = ("reference", "text", "mixed", "finetuned")  # a dataset of each, named by its mode


def archive(root: Path, checkpoint: Path) -> Path:
    """A dataset per mode; each inbox holds pictures of each class, strangers, an unreadable file, a
    sidecar beside a picture, and a subfolder. The config that gives each dataset its mode."""
    for seed, name in enumerate(MODES, start=5):
        make_dataset(root / name, RGB, references=4, inbox=INBOX, seed=seed)
        inbox = root / name / "Images"
        (inbox / "broken.jpg").write_bytes(b"\xff\xd8 not a picture")
        (inbox / "img0000.xmp").write_text("<x:xmpmeta/>")
        (inbox / "trip").mkdir()
        save(draw(np.random.default_rng(9), "green", "circle", size=90), inbox / "trip" / "g.png")
    publish_copy(checkpoint, root / ".clipsort" / "checkpoints" / "finetuned", "trained")
    config = root.parent / "config.toml"
    config.write_text("".join(f'[datasets.{name}]\nmode = "{name}"\n' for name in MODES))
    return config


def placed(root: Path) -> dict[str, dict[str, list[str]]]:
    """Each dataset's folders (Images/, Dataset/, Review/, Rejected/) and their files."""
    return {name: tree(root / name) for name in MODES}


def sort(runner: CliRunner, root: Path, *args: str) -> list[dict[str, object]]:
    result = runner.invoke(app, ["sort", "--root", str(root), "--json", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def decisions(records: list[dict[str, object]], root: Path) -> dict[str, tuple[object, ...]]:
    """Per file: where it went, as what, and its top three classes (labels; scores apart)."""
    return {
        str(Path(str(r["file"])).relative_to(root)): (
            r["status"],
            r.get("class"),
            r.get("guess"),
            [label for label, _ in r.get("top3", [])],  # type: ignore[attr-defined]
        )
        for r in records
    }


def scores(records: list[dict[str, object]], root: Path) -> dict[str, list[float]]:
    return {
        str(Path(str(r["file"])).relative_to(root)): [p for _, p in r.get("top3", [])]  # type: ignore[attr-defined]
        for r in records
    }


def test_ray_places_every_file_where_the_local_engine_does_in_every_mode(
    tmp_path: Path, tiny_model: Path, rgb_checkpoints: dict[str, Path]
) -> None:
    """The same archive, a dataset per mode, sorted by both engines: the same folders, the same
    decisions, to the digit. A second ray run over the same root then moves nothing.

    Every mode in one run, as a root whose datasets have modes of their own is sorted: one Ray
    pipeline (its actors holding the CLIP and the checkpoint) instead of one per mode.
    """
    local, ray = tmp_path / "local" / "Data", tmp_path / "ray" / "Data"
    config = archive(local, rgb_checkpoints["rgb"])
    shutil.copytree(local, ray, symlinks=True)
    runner = CliRunner(env={"CLIPSORT_MODEL": str(tiny_model), "CLIPSORT_RAY_SHARD_FILES": "7"})
    by_local = sort(runner, local, "--config", str(config))
    by_ray = sort(runner, ray, "--config", str(config), "--engine", "ray")
    assert placed(ray) == placed(local)
    assert decisions(by_ray, ray) == decisions(by_local, local)
    # The same model on other batches: float32 sums in another order, equal to about 1e-6.
    local_scores = scores(by_local, local)
    for name, found in scores(by_ray, ray).items():
        assert found == pytest.approx(local_scores[name], abs=1e-5), name
    assert len(by_ray) == len(MODES) * (len(INBOX) + 2)  # every picture and the broken file; sidecars travel
    for mode in MODES:
        mine = [r for r in by_ray if Path(str(r["file"])).relative_to(ray).parts[0] == mode]
        assert any(r["status"] == "review" for r in mine), mode
        assert any(r["status"] == "rejected" for r in mine), mode
        assert any(r["status"] == "sorted" for r in mine), mode
        assert [p.parent.parent.name for p in (ray / mode).rglob("img0000.xmp")] == ["Dataset"], (
            f"{mode}: with its picture"
        )
    assert not (ray / ".clipsort" / "ray-run").exists(), "a finished run leaves no shards"

    before = placed(ray)
    assert sort(runner, ray, "--config", str(config), "--engine", "ray") == []
    assert placed(ray) == before

    # The checkpoint's pictures are what they are in a root of its own: no CLIP crop beside them.
    alone = tmp_path / "alone" / "Data"
    archive(alone, rgb_checkpoints["rgb"])
    for mode in MODES[:-1]:
        shutil.rmtree(alone / mode)
    by_alone = scores(sort(runner, alone, "--config", str(config)), alone)
    assert by_alone.keys() == {name for name in local_scores if name.startswith("finetuned/")}
    for name, found in by_alone.items():
        assert found == pytest.approx(local_scores[name], abs=1e-5), name


def test_a_file_replaced_after_it_was_classified_is_classified_again(
    data_root: Path, tiny_model: Path
) -> None:
    """Classified as red, then replaced by a blue picture under the same name before placing: the
    mover refuses the stale decision, the run classifies the new bytes and files them as blue."""
    from clipsort.encode.factory import make_encoder  # noqa: PLC0415  (the model stack, when asked for)
    from clipsort.sort.cluster import prepare  # noqa: PLC0415

    make_dataset(data_root / "ds", RGB, references=4, inbox=["red", "green", "red", "blue"])
    settings = load_settings(None, {"root": data_root, "model": str(tiny_model), "ray_shard_files": 2})
    stale = data_root / "ds" / "Images" / "img0000.png"
    outcomes: list[object] = []
    make_state_dir(settings.state_path)
    with Journal(settings.state_path) as journal:
        run, identity = prepare(
            settings,
            discover(data_root),
            encoder=make_encoder(settings),
            journal=journal,
            cache=None,
            corrected=None,
            named=False,
            state=settings.state_path,
            dry_run=False,
            on_outcome=outcomes.append,
            phases=Phases(),
        )
        run.begin(identity)
        shards = run.list_inboxes()
        run.classify(shards)
        assert all(run.folder.classified(name) for name in shards)
        red = next(row for row in run.folder.decision_shard(shards[0]) if row.listed.path == stale)
        assert red.verdict is not None and getattr(red.verdict, "label", None) == "red"

        blue = stale.with_name(".new.png")
        save(draw(np.random.default_rng(4), "blue", "square", size=120), blue)
        blue.rename(stale)  # a new file under the old name: another inode, other bytes
        new_hash = hashlib.sha256(stale.read_bytes()).hexdigest()

        tally = run.run(identity)  # resumes the run: places, finds the change, goes round again
        entries = journal.entries()
    assert tally.changed == 1 and tally.placed == 4, tally
    assert sorted(p.name for p in (data_root / "ds" / "Dataset" / "blue").iterdir()) == [
        "img0000.png",
        "img0003.jpg",
    ]
    moved = [e for e in entries if e.intent.source == stale and e.state == "moved"]
    assert [(e.intent.sha256, e.intent.label) for e in moved] == [(new_hash, "blue")]
    assert not list((data_root / "ds" / "Images").iterdir())


class Phases:
    """The run's progress, kept (the command draws bars from the same calls)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def begin(self, phase: str, total: int) -> None:
        self.seen.append((phase, total))

    def advance(self, files: int) -> None:
        return None


def test_a_dry_run_on_ray_decides_as_the_local_one_and_creates_nothing(
    data_root: Path, tiny_model: Path
) -> None:
    """`--dry-run --engine ray`: the local engine's would-be decisions; no file moved, no state made."""
    make_dataset(data_root / "ds", RGB, references=4, inbox=["red", "yellow", "blue", "green"])
    before = tree(data_root)
    runner = CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)})
    by_local = sort(runner, data_root, "--dry-run")
    by_ray = sort(runner, data_root, "--dry-run", "--engine", "ray")
    assert decisions(by_ray, data_root) == decisions(by_local, data_root)
    assert [r["dry_run"] for r in by_ray] == [True] * 4
    assert tree(data_root) == before and not (data_root / ".clipsort").exists()
