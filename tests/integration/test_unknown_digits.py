"""Integration: "none of these" on real pictures, handwritten digits, where look-alikes sit between classes.

A tiny CLIP trained by the tests on half of scikit-learn's digits (about 87 % zero-shot accuracy on
the other half: an imperfect model, as real CLIPs are on hard data) sorts datasets built from the
held-out half: classes are five digits (folders named by the words, 8 references each), the inbox
holds 20 unseen pictures of every digit, so the other five are its strangers. Ten class sets,
default settings; the figures are their means, and the targets hold on the mean over three
trainings of the model (one training's strangers kept out moves by up to 0.09 with its seed or the
CPU it ran on: ``tests.digits``). docs/explanation/gate.md has the tables, printed by these tests
with ``-s``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from typer.testing import CliRunner

from clipsort.classify.modes.base import Inputs
from clipsort.classify.targets import make_target
from clipsort.classify.unknown import location_and_spread, own_scores
from clipsort.cli import app
from clipsort.config import load_settings
from clipsort.encode.encoder import Encoder
from clipsort.encode.factory import make_embedder
from clipsort.layout import discover
from clipsort.learn.evaluation import CURVE
from clipsort.sort.pipeline import Outcome
from tests.digits import SEED, TRAININGS, WORDS, digit_dataset, digits, digits_clip
from tests.helpers import DEFAULT_TRAINING, gate_shares, shares, sort_all, train_into

# (classes, offset): the set (zero to four) and nine others, fixed before the rule was chosen.
CLASS_SETS = (
    ((0, 1, 2, 3, 4), 0),
    ((0, 1, 2, 3, 4), 30),
    ((5, 6, 7, 8, 9), 0),
    ((1, 3, 5, 7, 9), 0),
    ((0, 2, 4, 6, 8), 10),
    ((2, 3, 5, 8), 5),
    ((0, 6, 9), 20),
    ((1, 4, 7, 8), 40),
    ((3, 4, 5, 6, 7, 8), 15),
    ((0, 1, 2, 6, 7), 50),
)
# Before this rule (the midpoint of two medians per class, the nearest reference alone, text mode by
# its description alone), on these sets: what "no worse than today" is held to.
BEFORE = {
    "reference": {"kept_out": 0.75, "right": 0.84, "held": 0.09},
    "text": {"kept_out": 0.68, "right": 0.89, "held": 0.05},
    "mixed": {"kept_out": 0.81, "right": 0.85, "held": 0.12},
    "finetuned": {"kept_out": 0.60, "right": 0.88, "held": 0.06},
}


Made = dict[str, tuple[tuple[str, ...], dict[str, str]]]  # dataset -> (its classes, file -> true word)


def names(classes: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(WORDS[digit] for digit in classes)


@cache
def trained(seed: int) -> Encoder:
    """The digits CLIP of training ``seed``, loaded once per test process."""
    return Encoder(str(digits_clip(seed)), device="cpu")


def make_datasets(root: Path) -> Made:
    """One dataset per class set under ``root``: name -> (its classes, file -> true word)."""
    made = {}
    for classes, offset in CLASS_SETS:
        name = f"digits-{''.join(str(d) for d in classes)}-{offset}"
        made[name] = (names(classes), digit_dataset(root / name, classes, offset=offset))
    return made


@pytest.fixture
def datasets(data_root: Path) -> Made:
    """The class sets' datasets under the test's data root."""
    return make_datasets(data_root)


def table(mode: str, rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """The mean over the class sets, printed as the docs' table rows."""
    mean = {key: float(np.mean([row[key] for row in rows.values()])) for key in ("kept_out", "right", "held")}
    for name, row in {**rows, "mean": mean}.items():
        print(f"| {mode} | {name} | {row['kept_out']:.2f} | {row['right']:.2f} | {row['held']:.2f} |")
    return mean


def by_dataset(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    found: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        found.setdefault(outcome.source.parent.parent.name, []).append(outcome)
    return found


@pytest.mark.parametrize("mode", ["reference", "text", "mixed"])
def test_real_strangers_stay_out_at_the_held_share_asked_for(
    data_root: Path, datasets: Made, mode: str
) -> None:
    """Default settings, every CLIP mode: >= 0.80 of strangers kept out with <= 0.10 of in-class held.

    In-class filed right: reference and mixed no worse than before; text mode up to 0.03 below it
    (measured 0.01 below this row, 0.02 below the previous rule re-run on the same trainings: its
    gate now holds about as much as the others' instead of 0.04, which keeps 0.14 more strangers
    out). unknown_held's default is auto, 0.05 here (docs: the gate's method). Means over the ten
    sets and the three trainings.
    """
    means, unknown = {}, []
    for seed in TRAININGS:
        outcomes = by_dataset(sort_all(data_root, trained(seed), mode=mode))
        rows = {name: shares(outcomes[name], truth, classes) for name, (classes, truth) in datasets.items()}
        means[f"training {seed}"] = table(f"{mode}, training {seed}", rows)
        unknown += [o for found in outcomes.values() for o in found if o.reason == "unknown"]
    mean = table(mode, means)
    assert mean["kept_out"] >= 0.80 and mean["held"] <= 0.10, means
    assert mean["kept_out"] > BEFORE[mode]["kept_out"], means
    assert mean["right"] >= BEFORE[mode]["right"] - (0.03 if mode == "text" else 0.0), means
    assert unknown and all(
        o.detail and o.detail.startswith(("reference+description", "negative")) for o in unknown
    )


@dataclass(frozen=True)
class Judged:
    """One dataset's inbox as one mode and its gate saw it."""

    z: npt.NDArray[np.float64]  # the gate's score of the class given, standardised for that class
    inside: npt.NDArray[np.bool_]  # a picture of one of the classes
    right: npt.NDArray[np.bool_]  # given its true class
    held: npt.NDArray[np.bool_]  # held by the gate


def judged(root: Path, made: Made, seed: int, mode: str) -> list[Judged]:
    """Every dataset under ``root`` classified and gated as the pipeline does, with default settings.

    ``z``: the gate's score (nearest reference plus description) less the mean of its class's
    references' leave-one-out scores, over their robust spread pooled over the classes: the
    standardisation the rule starts from, before its prediction bound, shrinkage and cap.
    """
    settings = load_settings(None, {"root": root, "mode": mode})
    embedder = make_embedder(settings, trained(seed))
    found = []
    for layout in discover(root):
        target = make_target(layout, settings, embedder)
        assert target.gate is not None
        index = target.index
        vectors, files = embedder.images(sorted(layout.inbox.iterdir()))
        decisions = target.classifier.classify(Inputs([], vectors), index, embedder.clip.logit_scale)
        decisions = target.gate.apply(decisions, vectors, index)
        assert all(d.familiar and d.familiar.basis == "reference+description" for d in decisions)
        labels = index.reference_labels
        own = own_scores(index, np.arange(len(labels)))
        location, spread = location_and_spread(own, labels, len(index.classes))
        given = np.asarray([index.classes.index(d.label) for d in decisions])
        score = np.asarray([d.familiar.score for d in decisions if d.familiar])
        classes, truth = made[layout.name]
        true = np.asarray([truth[file.name] for file in files])
        found.append(
            Judged(
                z=(score - location[given]) / spread,
                inside=np.isin(true, classes),
                right=np.asarray([d.label for d in decisions]) == true,
                held=np.asarray([d.familiar is not None and not d.familiar.known for d in decisions]),
            )
        )
    return found


def shares_when(sets: list[Judged], held: list[npt.NDArray[np.bool_]]) -> dict[str, float]:
    """Strangers kept out, in-class filed right and in-class held when ``held`` (one array per set) is
    what is held back: means over the sets."""
    return {
        "kept_out": float(np.mean([np.mean(h[~s.inside]) for s, h in zip(sets, held, strict=True)])),
        "right": float(np.mean([np.mean((s.right & ~h)[s.inside]) for s, h in zip(sets, held, strict=True)])),
        "held": float(np.mean([np.mean(h[s.inside]) for s, h in zip(sets, held, strict=True)])),
    }


def best_cut(sets: list[Judged], kept_out: float) -> dict[str, float]:
    """One cut on ``z`` for every set, chosen knowing the inboxes: the most in-class filed right among
    the cuts keeping out at least ``kept_out`` of strangers."""
    best = {"kept_out": 0.0, "right": 0.0, "held": 1.0}
    for cut in np.unique(np.concatenate([s.z for s in sets])):
        found = shares_when(sets, [s.z < cut for s in sets])
        if found["kept_out"] >= kept_out and found["right"] > best["right"]:
            best = found
    return best


@pytest.mark.parametrize("mode", ["reference", "text", "mixed"])
def test_the_rule_files_as_many_right_as_a_cut_chosen_knowing_the_inboxes(
    data_root: Path, datasets: Made, mode: str
) -> None:
    """Calibrated on the references alone, the gate is on its score's frontier: within 0.01 of the
    in-class filed right of the best single cut chosen knowing the inboxes, at the strangers it keeps out.

    Also printed, the most that cut files right at 0.80 of strangers kept out: no threshold on this
    score does better there (docs: text mode's in-class filed right). Ten sets, three trainings.
    """
    sets = [found for seed in TRAININGS for found in judged(data_root, datasets, seed, mode)]
    rule = shares_when(sets, [s.held for s in sets])
    oracle, at_target = best_cut(sets, rule["kept_out"]), best_cut(sets, 0.80)
    for name, row in (
        ("the rule", rule),
        ("best cut, as many out", oracle),
        ("best cut, 0.80 out", at_target),
    ):
        print(f"| {mode} | {name} | {row['kept_out']:.3f} | {row['right']:.3f} | {row['held']:.3f} |")
    assert rule["right"] >= oracle["right"] - 0.01, (rule, oracle)


def test_the_knob_trades_strangers_kept_out_against_pictures_held(data_root: Path, datasets: Made) -> None:
    """unknown_held, per dataset: a larger share held keeps more strangers out, and holds more."""
    found = {}
    for held in (0.02, 0.15):
        outcomes = by_dataset(sort_all(data_root, trained(SEED), unknown_held=held))
        rows = {name: shares(outcomes[name], truth, classes) for name, (classes, truth) in datasets.items()}
        found[held] = table(f"reference, unknown_held {held}", rows)
    assert found[0.15]["kept_out"] > found[0.02]["kept_out"] + 0.05, found
    assert found[0.15]["held"] > found[0.02]["held"], found


def test_strangers_put_in_none_teach_the_gate(data_root: Path) -> None:
    """Ten strangers filed into Clases/_none/ by hand: more strangers kept out, in-class held still <= 0.10.

    The even digits are the classes, the odd ones the strangers (the set whose strangers got through
    most); the ten are held-out pictures of the odd digits, two of each, not in the inbox. Every
    training keeps more out; the held share is the mean over the three trainings.
    """
    classes, offset = (0, 2, 4, 6, 8), 10
    spare = [
        int(row) for digit in (1, 3, 5, 7, 9) for row in np.roll(digits().held_of(digit), -offset)[28:30]
    ]
    found = {}
    for seed in TRAININGS:
        shutil.rmtree(data_root / "digits", ignore_errors=True)
        truth = digit_dataset(data_root / "digits", classes, offset=offset)
        before = shares(sort_all(data_root, trained(seed)), truth, names(classes))
        shutil.rmtree(data_root / "digits")
        digit_dataset(data_root / "digits", classes, negatives=spare, offset=offset)
        after = shares(sort_all(data_root, trained(seed)), truth, names(classes))
        print(f"ten strangers in _none, training {seed}: {before} -> {after}")
        found[seed] = (before, after)
    assert all(after["kept_out"] > before["kept_out"] for before, after in found.values()), found
    assert np.mean([after["held"] for _, after in found.values()]) <= 0.10, found


def checkpoint_shares(root: Path, base: Path) -> dict[str, dict[str, float]]:
    """Per class set (made under ``root``), what fine-tuned mode does with checkpoints from ``base``."""
    runner = CliRunner()
    made = make_datasets(root)
    for name in made:
        train_into(runner, base, root, name, *DEFAULT_TRAINING)
    result = runner.invoke(app, ["sort", "--root", str(root), "--mode", "finetuned", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    rows = {}
    for name, (classes, truth) in made.items():
        filed = [
            (
                Path(r["file"]).name,
                r["status"] == "sorted",
                r.get("class"),
                r["status"] == "review" and r["reason"] == "unknown",
            )
            for r in records
            if Path(r["file"]).parent.parent.name == name
        ]
        rows[name] = gate_shares(filed, truth, classes)
    return rows


def test_a_checkpoint_keeps_real_strangers_out(data_root: Path) -> None:
    """Fine-tuned mode on the digits, default settings: >= 0.80 of strangers out, <= 0.10 of in-class held.

    Each dataset's checkpoint is fine-tuned from the digits CLIP on its 8 references per class
    (`clipsort train`'s defaults); its gate judges by the checkpoint's own features and its head's
    rows (the descriptions it started from), calibrated on the references training held out.
    Means over the ten sets and the checkpoints of the three trainings of the digits CLIP.
    """
    means = {}
    for seed in TRAININGS:
        rows = checkpoint_shares(data_root / f"training-{seed}", digits_clip(seed))
        means[f"training {seed}"] = table(f"finetuned, training {seed}", rows)
    mean = table("finetuned", means)
    assert mean["kept_out"] >= 0.80 and mean["held"] <= 0.10, means
    # unknown_held auto is 0.07 in this mode; 0.877 against 0.88 was measured on an earlier training:
    # about three pictures of a thousand more held, for 0.22 more strangers out.
    assert mean["right"] >= BEFORE["finetuned"]["right"] - 0.01, means


def test_eval_prints_the_knobs_curve_from_the_references(data_root: Path) -> None:
    """`clipsort eval`: per mode, in-class held and strangers kept out at a few unknown_held values.

    Both rise with the setting (a class's own references held; each class in turn left out and
    judged among the others, kept out), and the table says so to a person.
    """
    digit_dataset(data_root / "digits", (0, 1, 2, 3, 4))
    runner = CliRunner(env={"CLIPSORT_MODEL": str(digits_clip())})
    found = runner.invoke(
        app, ["eval", "--root", str(data_root), "--modes", "reference-max", "--modes", "mixed", "--json"]
    )
    assert found.exit_code == 0, found.output
    for mode in ("reference-max", "mixed"):
        curve = json.loads(found.stdout)["modes"][mode]["gate"]["curve"]
        assert [point["unknown_held"] for point in curve] == list(CURVE)
        held = [point["in_class_held"] for point in curve]
        kept_out = [point["strangers_kept_out"] for point in curve]
        assert held == sorted(held) and kept_out == sorted(kept_out), curve
        assert kept_out[-1] > kept_out[0] and kept_out[-1] >= 0.8, curve
    shown = runner.invoke(app, ["eval", "--root", str(data_root), "--modes", "mixed"])
    assert shown.exit_code == 0, shown.output
    assert "unknown_held" in shown.stdout and "strangers kept out" in shown.stdout
