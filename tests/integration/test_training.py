"""Tests for clipsort.learn.training and ``clipsort train``: a tiny ViT fine-tuned, published atomically.

transformers and :mod:`clipsort.learn.training` are imported in the tests that call them: at the
top, every pytest-xdist worker paid about 3 s of CPU to import them while collecting.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipsort.classify.checkpoints import current_checkpoint
from clipsort.cli import app
from tests.helpers import DEFAULT_TRAINING, held_out, predicted, train_into, tree
from tests.startupprobe import launch
from tests.synthetic import COLORS as SIX_COLORS
from tests.synthetic import SHAPES, draw, make_dataset, tiny_vit

COLORS = {"red": "red", "green": "green", "blue": "blue", "yellow": "yellow"}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_vit(tmp_path_factory.mktemp("vit") / "base")


def test_split_is_stratified_and_seeded() -> None:
    """Every class lands in both parts in proportion; the same seed gives the same split."""
    from clipsort.learn.training import stratified_split  # noqa: PLC0415  (see the module's note)

    labels = [0] * 10 + [1] * 5
    train, validation = stratified_split(labels, 0.2, seed=1)
    assert sorted(train + validation) == list(range(15))
    assert [labels[i] for i in validation].count(0) == 2 and [labels[i] for i in validation].count(1) == 1
    assert stratified_split(labels, 0.2, seed=1) == (train, validation)


def test_augmentation_keeps_size_and_changes_pixels() -> None:
    """Crops, flips and jitter keep the model's input size."""
    from clipsort.learn.training import augment  # noqa: PLC0415  (see the module's note)

    picture = draw(np.random.default_rng(0), "red", "triangle", 64)
    moved = augment(picture, random.Random(3))
    assert moved.size == picture.size
    assert not np.array_equal(np.asarray(moved), np.asarray(picture))


def test_cli_trains_publishes_and_the_checkpoint_reloads(base: Path, data_root: Path, tmp_path: Path) -> None:
    """>= 90% validation accuracy in seconds; the reloaded checkpoint gives the same predictions."""
    make_dataset(data_root / "ds", COLORS, references=20, seed=3)
    before = tree(data_root)
    out = tmp_path / "checkpoints"
    train_into(CliRunner(), base, data_root, "ds", "--out", str(out))
    assert tree(data_root) == before, "training never touches the dataset"
    published = current_checkpoint(out)
    assert published is not None and published.parent == out
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no half-written checkpoint left"
    metrics = json.loads((published / "metrics.json").read_text())
    assert metrics["validation_accuracy"] >= 0.9
    assert set(metrics["precision"]) == set(COLORS)
    with Image.open(published / "training.png") as chart:
        chart.verify()
    from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: PLC0415

    from clipsort.learn.training import predict  # noqa: PLC0415

    model = AutoModelForImageClassification.from_pretrained(published)
    processor = AutoImageProcessor.from_pretrained(published)  # type: ignore[no-untyped-call]
    assert model.config.id2label == {0: "blue", 1: "green", 2: "red", 3: "yellow"}
    rng = np.random.default_rng(99)
    pictures = [draw(rng, color, SHAPES[k % 3], 64) for k, color in enumerate(list(COLORS) * 3)]
    pixels = processor(images=pictures, return_tensors="pt")["pixel_values"]
    first = predict(model, pixels)
    again = predict(AutoModelForImageClassification.from_pretrained(published), pixels)
    assert torch.equal(first, again)
    named = [model.config.id2label[int(k)] for k in first]
    assert np.mean([n == c for n, c in zip(named, list(COLORS) * 3, strict=True)]) >= 0.9


def test_a_worse_checkpoint_is_not_published_unless_forced(
    base: Path, data_root: Path, tmp_path: Path
) -> None:
    """A run that does worse on the same validation split exits 1 and the current one stays; --force."""
    make_dataset(data_root / "ds", COLORS, references=20, seed=3)
    out = tmp_path / "checkpoints"
    train_into(CliRunner(), base, data_root, "ds", "--out", str(out))
    good = current_checkpoint(out)
    untrained = ("--out", str(out), "--epochs", "1", "--learning-rate", "0")  # the random base: chance
    refused = train_into(CliRunner(), base, data_root, "ds", *untrained, expect=1)
    assert "not published" in refused.stdout and "current checkpoint" in refused.stdout
    assert current_checkpoint(out) == good
    assert len([p for p in out.iterdir() if p.is_dir()]) == 1, "a refused run leaves nothing behind"
    forced = train_into(CliRunner(), base, data_root, "ds", *untrained, "--force")
    assert "published" in forced.stdout and "not published" not in forced.stdout
    assert current_checkpoint(out) not in (None, good)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("one-image", "has 1 image(s); at least 2 are needed"),
        ("empty-class", "has 0 image(s)"),
        ("bad-base", "cannot load the base folder"),
        ("missing-base", "does not exist or is not a folder"),
    ],
)
def test_training_errors_exit_2_and_touch_nothing(
    base: Path, data_root: Path, tmp_path: Path, setup: str, message: str
) -> None:
    """Too few images, an empty class or an unloadable base: a clear message and exit code 2."""
    make_dataset(
        data_root / "ds", {"red": "red", "blue": "blue"}, references=1 if setup == "one-image" else 3
    )
    if setup == "empty-class":
        (data_root / "ds" / "Clases" / "green").mkdir()
    chosen = str(tmp_path / setup) if setup.endswith("-base") else str(base)
    if setup == "bad-base":
        (tmp_path / setup).mkdir()  # a folder, so it passes the check made before the model stack loads
    before = tree(data_root)
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--dataset",
            "ds",
            "--root",
            str(data_root),
            "--base",
            chosen,
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert tree(data_root) == before
    assert not (tmp_path / "o").exists()


def test_sort_in_finetuned_mode_files_by_the_checkpoint(
    base: Path, data_root: Path, tiny_model: Path
) -> None:
    """mode = finetuned sorts held-out pictures into the checkpoint's classes; no checkpoint is exit 2."""
    make_dataset(data_root / "ds", COLORS, references=20, seed=3)
    runner = CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)})
    missing = runner.invoke(app, ["sort", "--root", str(data_root), "--mode", "finetuned", "-d", "ds"])
    assert missing.exit_code == 2 and "clipsort train -d ds" in missing.stderr
    train_into(runner, base, data_root, "ds")
    rng = np.random.default_rng(7)
    truth = {}
    for k, color in enumerate(list(COLORS) * 6):
        draw(rng, color, SHAPES[k % 3], 64).save(data_root / "ds" / "Images" / f"new{k}.png")
        truth[f"new{k}.png"] = color
    result = runner.invoke(app, ["sort", "--root", str(data_root), "--mode", "finetuned", "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["mode"] for r in records} == {"finetuned"}
    assert np.mean([predicted(r) == truth[Path(r["file"]).name] for r in records]) >= 0.85
    assert all(0 <= r["score"] <= 1 for r in records)


def test_a_fine_tuned_root_needs_no_clip_model(base: Path, data_root: Path, tmp_path: Path) -> None:
    """All fine-tuned: sort and eval run with `model` naming nothing and sentence-transformers unloaded."""
    make_dataset(data_root / "ds", COLORS, references=20, seed=3)
    train_into(CliRunner(), base, data_root, "ds")
    Path("config.toml").write_text(f'mode = "finetuned"\nmodel = "{tmp_path / "no-clip-here"}"\n')
    rng = np.random.default_rng(7)
    for k, color in enumerate(COLORS):
        draw(rng, color, SHAPES[k % 3], 64).save(data_root / "ds" / "Images" / f"{color}.png")
    sorted_ = launch(["sort", "--root", "{root}", "--json"], data_root, Path.cwd())
    assert sorted_["exit_code"] == 0, sorted_["stderr"]
    assert "sentence_transformers" not in sorted_["model_stack"]
    records = [json.loads(line) for line in sorted_["stdout"].splitlines()]
    assert len(records) == len(COLORS) and {r["mode"] for r in records} == {"finetuned"}
    assert sum(predicted(r) == Path(r["file"]).stem for r in records) >= 3
    evaluated = launch(["eval", "--root", "{root}", "--json"], data_root, Path.cwd())
    assert evaluated["exit_code"] == 0, evaluated["stderr"]
    assert "sentence_transformers" not in evaluated["model_stack"]
    report = json.loads(evaluated["stdout"])
    assert set(report["modes"]) == {"finetuned"} and report["recommended"] == "finetuned"
    asked = CliRunner().invoke(app, ["eval", "--root", str(data_root), "--modes", "text"])
    assert asked.exit_code == 2 and "no-clip-here" in asked.stderr, "CLIP modes asked for load the model"


def test_eval_reports_the_finetuned_mode_from_its_validation_split(
    base: Path, data_root: Path, tiny_model: Path
) -> None:
    """With a published checkpoint, eval lists finetuned beside the CLIP modes."""
    make_dataset(data_root / "ds", COLORS, references=20, seed=3)
    runner = CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)})
    train_into(runner, base, data_root, "ds")
    result = runner.invoke(app, ["eval", "--root", str(data_root), "--folds", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    published = current_checkpoint(data_root / ".clipsort" / "checkpoints" / "ds")
    assert published is not None
    metrics = json.loads((published / "metrics.json").read_text())
    assert report["modes"]["finetuned"]["accuracy"] == metrics["validation_accuracy"]
    assert {"text", "reference-max", "reference-avg", "mixed"} <= set(report["modes"])
    only = runner.invoke(app, ["eval", "--root", str(data_root), "--folds", "2", "--json", "--modes", "text"])
    assert set(json.loads(only.stdout)["modes"]) == {"text"}


def test_two_trainings_in_the_same_second_both_publish(base: Path, data_root: Path, tmp_path: Path) -> None:
    """Checkpoint folders never collide; the pointer names the latest; a 2-picture split is warned of."""
    make_dataset(data_root / "ds", {"red": "red", "blue": "blue"}, references=4, seed=3)
    out = tmp_path / "checkpoints"
    for _ in range(2):  # a later option wins, so --epochs 1 overrides the helper's
        result = train_into(CliRunner(), base, data_root, "ds", "--epochs", "1", "--out", str(out), "--force")
        assert "validation split holds only 2 picture(s)" in result.stderr
    published = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(published) == 2
    assert current_checkpoint(out) in published


def test_clip_base_improves_on_its_zero_shot_accuracy(data_root: Path, tiny_model: Path) -> None:
    """--base naming the CLIP model: the vision tower is fine-tuned under the zero-shot head and beats it.

    Two of five classes have names that mean nothing to the model, so zero-shot
    (text mode) is imperfect; twelve pictures per class are enough to fix that.
    """
    classes = {"red": "red", "green": "green", "blue": "blue", "lote-3": "yellow", "class_07": "purple"}
    make_dataset(data_root / "ds", classes, references=12, seed=5)
    rng = np.random.default_rng(77)
    truth = {}
    for name, color in classes.items():
        for k in range(10):
            picture = draw(rng, color, SHAPES[k % 3], int(rng.integers(40, 160)))  # as the references
            picture.save(data_root / "ds" / "Images" / f"{name}-{k}.png")
            truth[f"{name}-{k}.png"] = name
    runner = CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)})
    train_into(
        runner, tiny_model, data_root, "ds", "--epochs", "30", "--learning-rate", "0.001", "--patience", "10"
    )

    def accuracy(mode: str) -> float:
        result = runner.invoke(app, ["sort", "--root", str(data_root), "--mode", mode, "--dry-run", "--json"])
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.stdout.splitlines()]
        return float(np.mean([predicted(r) == truth[Path(r["file"]).name] for r in records]))

    zero_shot, finetuned = accuracy("text"), accuracy("finetuned")
    assert zero_shot < 0.9
    assert finetuned > zero_shot + 0.1, (zero_shot, finetuned)
    published = current_checkpoint(data_root / ".clipsort" / "checkpoints" / "ds")
    assert published is not None
    assert json.loads((published / "config.json").read_text())["model_type"] == "clipsort-clip-head"


def test_a_checkpoint_keeps_strangers_out_by_default(data_root: Path, tiny_model: Path) -> None:
    """Fine-tuned mode's "none of these": strangers held as unknown, pictures of the classes filed.

    Four of the six colours are classes, 12 references each; the inbox holds 12 unseen pictures of
    every colour. Default settings, training's included: >= 80% of strangers kept out, <= 10% of
    in-class pictures held.
    """
    classes = ("red", "green", "blue", "yellow")
    make_dataset(data_root / "ds", {c: c for c in classes}, references=12, seed=5)
    truth = held_out(data_root / "ds", {c: c for c in SIX_COLORS}, per_class=12)
    runner = CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)})
    train_into(runner, tiny_model, data_root, "ds", *DEFAULT_TRAINING)
    published = current_checkpoint(data_root / ".clipsort" / "checkpoints" / "ds")
    assert published is not None
    unseen = json.loads((published / "metrics.json").read_text())["validation_files"]
    # What the gate calibrates on: the references training held out, named under Clases/.
    assert len(unseen) == 2 * len(classes), unseen  # a fifth of each class's 12, rounded
    assert all((data_root / "ds" / "Clases" / name).is_file() for name in unseen), unseen
    result = runner.invoke(
        app, ["sort", "--root", str(data_root), "--mode", "finetuned", "--dry-run", "--json"]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    inside = [r for r in records if truth[Path(r["file"]).name] in classes]
    strangers = [r for r in records if truth[Path(r["file"]).name] not in classes]
    kept_out = np.mean([r["status"] == "review" and r["reason"] == "unknown" for r in strangers])
    held = np.mean([r["status"] != "sorted" for r in inside])
    right = np.mean([r["class"] == truth[Path(r["file"]).name] for r in inside])
    assert kept_out >= 0.8 and held <= 0.1, (kept_out, held, right)
    assert right >= 0.85, (kept_out, held, right)
    assert all("reference" in r["detail"] for r in strangers if r["status"] == "review")
    evaluated = runner.invoke(app, ["eval", "--root", str(data_root), "--modes", "finetuned", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    gate = json.loads(evaluated.stdout)["modes"]["finetuned"]["gate"]
    # Leave-one-out over the references it trained on: about the share asked for is held (0.05).
    assert gate["rule"] == "reference (checkpoint features)" and gate["references_kept"] >= 0.85, gate
    assert len(gate["reference_margins"]) == len(classes) * 12
