"""Tests for clipsort.learn.evaluation and ``clipsort eval``: cross-validation that agrees with ``sort``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.learn.evaluation import MODES, GateResult, ModeResult, fold_of, recommend
from tests.helpers import predicted
from tests.synthetic import make_dataset

CLASSES = {"red": "red", "green": "green", "blue": "blue", "lote-3": "yellow"}
SORT_FLAGS = {
    "text": ["--mode", "text"],
    "reference-max": ["--mode", "reference", "--aggregate", "max"],
    "reference-avg": ["--mode", "reference", "--aggregate", "avg"],
    "mixed": ["--mode", "mixed"],
}


def test_folds_are_stratified_and_fixed() -> None:
    """Each class is dealt evenly over the folds, the same way every time."""
    labels = np.array([0] * 6 + [1] * 3 + [2] * 7)
    folds = fold_of(labels, 3)
    for label in (0, 1, 2):
        counts = np.bincount(folds[labels == label], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(folds, fold_of(labels, 3))


@pytest.fixture
def cli(tiny_model: Path) -> CliRunner:
    return CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)})


def test_eval_json_agrees_with_sort_on_the_same_held_out_split(
    cli: CliRunner, data_root: Path, tmp_path: Path
) -> None:
    """For every mode, eval's fold-0 predictions are what `sort` does with the other folds as Clases/."""
    make_dataset(data_root / "ds", CLASSES, references=6, seed=5)
    report_dir = tmp_path / "report"
    result = cli.invoke(
        app, ["eval", "--root", str(data_root), "--folds", "3", "--json", "--report", str(report_dir)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["modes"]) == set(MODES)
    assert report["recommended"] in MODES
    for chart in report["charts"]:
        with Image.open(chart) as picture:
            picture.verify()
            assert picture.format == "PNG"

    # Rebuild fold 0 as a dataset of its own: folds 1-2 as references, fold 0 in the inbox.
    check = tmp_path / "check" / "ds"
    fold0 = {}
    for prediction in report["modes"]["text"]["predictions"]:
        source = Path(prediction["file"])
        label = source.parent.name
        if prediction["fold"] == 0:
            name = f"{label}-{source.name}"
            (check / "Images").mkdir(parents=True, exist_ok=True)
            shutil.copy(source, check / "Images" / name)
            fold0[str(source)] = name
        else:
            (check / "Clases" / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, check / "Clases" / label / source.name)
    for mode in MODES:
        expected = {
            fold0[p["file"]]: p["predicted"] for p in report["modes"][mode]["predictions"] if p["fold"] == 0
        }
        sorted_run = cli.invoke(
            app, ["sort", "--root", str(check.parent), "--dry-run", "--json", *SORT_FLAGS[mode]]
        )
        assert sorted_run.exit_code == 0, sorted_run.output
        got = {Path(r["file"]).name: predicted(r) for r in map(json.loads, sorted_run.stdout.splitlines())}
        assert got == expected, mode
        accuracy = np.mean([name.startswith(f"{label}-") for name, label in got.items()])
        fold_truth = [p for p in report["modes"][mode]["predictions"] if p["fold"] == 0]
        assert accuracy == pytest.approx(np.mean([p["truth"] == p["predicted"] for p in fold_truth]))


def test_eval_tables_and_errors(cli: CliRunner, data_root: Path) -> None:
    """Without --json: tables with the recommended mode; without references: exit 2."""
    make_dataset(data_root / "ds", CLASSES, references=4, seed=5)
    shown = cli.invoke(
        app, ["eval", "--root", str(data_root), "--folds", "2", "--modes", "text", "--modes", "mixed"]
    )
    assert shown.exit_code == 0, shown.output
    assert "(recommended)" in shown.stdout and "precision" in shown.stdout
    (data_root / "bare" / "Clases" / "x").mkdir(parents=True)
    bare = cli.invoke(app, ["eval", "--root", str(data_root), "--dataset", "bare"])
    assert bare.exit_code == 2 and "needs reference images" in bare.stderr
    wrong = cli.invoke(app, ["eval", "--root", str(data_root), "--modes", "psychic"])
    assert wrong.exit_code == 2 and "psychic" in wrong.stderr


def test_eval_reports_the_unknown_gate_per_mode_with_its_chart(
    cli: CliRunner, data_root: Path, tmp_path: Path
) -> None:
    """Per mode: held-out references kept, Clases/_none/ pictures kept out, and the score chart."""
    make_dataset(data_root / "ds", {"red": "red", "green": "green"}, references=6, seed=5)
    make_dataset(data_root / "strangers", {"_none": "blue", "x": "purple"}, references=3, seed=6)
    for picture in (data_root / "strangers" / "Clases").rglob("*.png"):  # three blue, three purple
        (data_root / "ds" / "Clases" / "_none").mkdir(exist_ok=True)
        shutil.copy(picture, data_root / "ds" / "Clases" / "_none" / f"{picture.parent.name}-{picture.name}")
    shutil.rmtree(data_root / "strangers")
    report_dir = tmp_path / "report"
    found = cli.invoke(
        app, ["eval", "--root", str(data_root), "--folds", "3", "--json", "--report", str(report_dir)]
    )
    assert found.exit_code == 0, found.output
    report = json.loads(found.stdout)
    assert report["classes"] == ["green", "red"], "_none is no class"
    for mode in ("text", "reference-max", "mixed"):
        gate = report["modes"][mode]["gate"]
        assert gate["negatives"] == 6
        assert gate["references_kept"] >= 0.8 and gate["negatives_kept_out"] >= 0.8, (mode, gate)
        assert len(gate["reference_margins"]) == 12 and len(gate["negative_margins"]) == 6
    chart = report_dir / "ds-unknown-gate.png"
    assert str(chart) in report["charts"]
    with Image.open(chart) as drawn:
        drawn.verify()
    shown = cli.invoke(app, ["eval", "--root", str(data_root), "--folds", "3", "--modes", "mixed"])
    assert shown.exit_code == 0 and '"none of these" gate' in shown.stdout
    assert "references kept" in shown.stdout and "no negatives" not in shown.stdout


def result(accuracy: float, kept: float | None) -> ModeResult:
    gate = None if kept is None else GateResult("rule", kept, 0, None)
    return ModeResult(accuracy, {}, {}, [], gate=gate)


def test_a_tie_goes_to_the_mode_whose_gate_keeps_most_references_and_says_so() -> None:
    """All at 100 %: text's gate keeps 75 % of the references, reference's 100 %: reference, with why."""
    chosen, why = recommend({"text": result(1.0, 0.75), "reference-max": result(1.0, 1.0)})
    assert chosen == "reference-max"
    assert "tied at 100.0% with text" in why and "keeps 100% of the held-out references (text 75%)" in why
    full_tie = {"reference-max": result(1.0, 1.0), "text": result(1.0, 1.0)}
    assert recommend(full_tie)[0] == "text", "then the simpler mode, earlier in MODES"
    assert recommend({"text": result(0.9, 1.0), "mixed": result(0.95, 0.5)}) == (
        "mixed",
        "the most accurate (95.0%)",
    ), "accuracy first: the gate only breaks ties"
