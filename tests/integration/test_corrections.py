"""Tests for clipsort.learn.corrections: which arrivals are corrections, and what they add to a class."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipsort.classify.modes import ClipClassifier, decide
from clipsort.classify.targets import make_target
from clipsort.cli import app
from clipsort.config import Settings, load_settings
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.encode.embeddings import Embedder
from clipsort.encode.encoder import Encoder
from clipsort.encode.factory import make_embedder
from clipsort.layout import DatasetLayout
from clipsort.learn.corrections import corrected_from, examples, observe
from clipsort.service.learner import Learner
from clipsort.sort.oneshot import gather, run
from clipsort.store.journal import Conclusion, Correction, Journal
from tests.synthetic import MISLEADING, draw, make_dataset, save
from tests.waiting import wait_until

World = tuple[DatasetLayout, Settings, Journal, Embedder]


@pytest.fixture
def world(data_root: Path, encoder: Encoder) -> Iterator[World]:
    """Blue pictures sorted against misleading references (see MISLEADING): mostly into red/."""
    layout = DatasetLayout(data_root / "rgb")
    make_dataset(layout.root, MISLEADING, references=4, inbox=["blue"] * 6, seed=11)
    # The unknown gate would hold these blue pictures back (they look like no reference): these
    # tests are about pictures filed into the wrong class, which is what the gate turned off allows.
    settings = load_settings(None, {"root": data_root, "mode": "reference", "unknown_gate": False})
    state = settings.state_path
    state.mkdir()
    with Journal(state) as journal, EmbeddingCache(state / "embeddings.sqlite3") as cache:
        embedder = make_embedder(settings, encoder, cache)
        work = gather([layout], settings, embedder, named=True, corrected=corrected_from(journal))
        run(work, settings, embedder, journal=journal, dry_run=False, on_outcome=lambda outcome: None)
        yield layout, settings, journal, embedder


def observe_one(
    path: Path, layout: DatasetLayout, journal: Journal, embedder: Embedder, settings: Settings
) -> Correction | None:
    """What :func:`observe` records for a single arrival."""
    found = observe([path], layout, journal, embedder, settings)
    assert len(found) <= 1
    return found[0] if found else None


def wrongly_sorted(layout: DatasetLayout) -> list[Path]:
    return sorted((layout.class_dir("red")).glob("*"))


def test_misleading_references_file_blue_pictures_as_red(world: World) -> None:
    """The premise of the other tests: most blue pictures land in red/."""
    layout, *_ = world
    assert len(wrongly_sorted(layout)) >= 4


def test_a_person_moving_a_sorted_file_records_a_correction(world: World) -> None:
    """Dataset/red -> Dataset/blue: the decision, the old and the new class are journalled."""
    layout, settings, journal, embedder = world
    victim = wrongly_sorted(layout)[0]
    layout.class_dir("blue").mkdir(exist_ok=True)
    os.rename(victim, layout.class_dir("blue") / victim.name)
    found = observe_one(layout.class_dir("blue") / victim.name, layout, journal, embedder, settings)
    assert found is not None and (found.old_label, found.new_label) == ("red", "blue")
    assert journal.entries(states=("corrected",))[0].destination == layout.class_dir("blue") / victim.name
    again = observe_one(layout.class_dir("blue") / victim.name, layout, journal, embedder, settings)
    assert again is None, "the same arrival is recorded once"


def test_clipsorts_own_files_and_unknown_files_are_not_corrections(world: World) -> None:
    """A file where clipsort put it, renamed within its class, or never sorted: no correction by default."""
    layout, settings, journal, embedder = world
    own = wrongly_sorted(layout)[0]
    assert observe_one(own, layout, journal, embedder, settings) is None
    renamed = own.with_name("renamed-" + own.name)
    os.rename(own, renamed)
    assert observe_one(renamed, layout, journal, embedder, settings) is None
    stranger = save(draw(np.random.default_rng(5), "blue", "circle"), layout.class_dir("red") / "mine.png")
    assert observe_one(stranger, layout, journal, embedder, settings) is None
    assert journal.corrections() == []
    learning = settings.model_copy(update={"learn_from_dataset": True})
    assert observe_one(stranger, layout, journal, embedder, learning) is not None


def test_clipsorts_move_in_flight_is_recognised_without_reading_the_file(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An arrival matching a journalled intent into its folder is clipsort's own, told by name alone."""
    layout, settings, journal, embedder = world
    [entry] = journal.entries(last=1)
    blue = layout.class_dir("blue")
    blue.mkdir(exist_ok=True)
    journal.plan([replace(entry.intent, source=layout.inbox / "new.png", folder=blue)])
    save(draw(np.random.default_rng(3), "blue", "circle"), blue / "new_1.png")
    assert embedder.cache is not None

    def unread(path: Path) -> str:
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(embedder.cache, "file_key", unread)
    assert observe_one(blue / "new_1.png", layout, journal, embedder, settings) is None


def test_a_move_before_the_placer_settles_is_looked_at_again_not_dropped(world: World) -> None:
    """Moved to blue/ while its journal entry is still planned: held back, recorded once settled."""
    layout, settings, journal, embedder = world
    victim = wrongly_sorted(layout)[0]
    [entry] = [e for e in journal.entries(states=("moved",)) if e.destination == victim]
    # As the placer leaves it between its rename and its settle: the same bytes planned, not yet moved.
    [pending] = journal.plan([replace(entry.intent, source=layout.inbox / victim.name)])
    layout.class_dir("blue").mkdir(exist_ok=True)
    moved = layout.class_dir("blue") / victim.name
    os.rename(victim, moved)
    in_flight: list[Path] = []
    assert observe([moved], layout, journal, embedder, settings, in_flight) == []
    assert in_flight == [moved]
    journal.conclude([Conclusion(pending, "moved", victim)])
    [found] = observe(in_flight, layout, journal, embedder, settings)
    assert (found.old_label, found.new_label, found.path) == ("red", "blue", moved)


def test_a_file_of_a_size_no_decision_had_is_not_read(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The start-up scan meets every sorted file: those no decision could match are skipped unread."""
    layout, settings, journal, embedder = world
    stranger = layout.class_dir("red") / "mine.bin"
    stranger.write_bytes(b"x" * 12345)
    assert embedder.cache is not None

    def unread(path: Path) -> str:
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(embedder.cache, "file_key", unread)
    assert observe_one(stranger, layout, journal, embedder, settings) is None


def test_a_review_file_dragged_into_clases_is_journalled_but_not_doubled(world: World) -> None:
    """It becomes a reference image; it is not also a corrected example."""
    layout, settings, journal, embedder = world
    victim = wrongly_sorted(layout)[0]
    dragged = layout.classes / "blue" / victim.name
    shutil.move(victim, dragged)
    assert observe_one(dragged, layout, journal, embedder, settings) is not None
    assert examples(journal, layout, embedder, settings) == []


def test_corrections_fix_later_pictures_without_encoding_anything(world: World, encoder: Encoder) -> None:
    """Three corrected files: new blue pictures go to blue; their vectors came from the cache."""
    layout, settings, journal, embedder = world
    correct(world)
    before = embedder.encoded_references
    target = make_target(layout, settings, embedder, corrected=corrected_from(journal))
    assert embedder.encoded_references == before, "no reference or corrected file was encoded again"
    assert target.index.correction_counts() == {"blue": 3}
    assert isinstance(target.classifier, ClipClassifier)
    rng = np.random.default_rng(99)
    fresh = encoder.encode_images([draw(rng, "blue", "square") for _ in range(8)])
    labels = [d.label for d in decide(target.classifier.scores(fresh, target.index), target.classes, 100.0)]
    assert labels.count("blue") >= 7
    journal.forget(dataset="rgb")
    plain = make_target(layout, settings, embedder, corrected=corrected_from(journal))
    assert isinstance(plain.classifier, ClipClassifier)
    labels = [d.label for d in decide(plain.classifier.scores(fresh, plain.index), plain.classes, 100.0)]
    assert labels.count("red") >= 5, "forgetting restores the earlier behaviour"


def correct(world: World, count: int = 3) -> list[Path]:
    """Move ``count`` wrongly sorted files to Dataset/blue/ and observe each, as the daemon would."""
    layout, settings, journal, embedder = world
    layout.class_dir("blue").mkdir(exist_ok=True)
    moved = []
    for victim in wrongly_sorted(layout)[:count]:
        os.rename(victim, layout.class_dir("blue") / victim.name)
        moved.append(layout.class_dir("blue") / victim.name)
        observe_one(moved[-1], layout, journal, embedder, settings)
    return moved


def test_the_newest_corrections_per_class_are_kept_and_weighted(world: World) -> None:
    """max_corrections_per_class keeps the newest; correction_weight is their weight."""
    layout, settings, journal, embedder = world
    moved = correct(world, 4)
    capped = settings.model_copy(update={"max_corrections_per_class": 2, "correction_weight": 3.0})
    kept = examples(journal, layout, embedder, capped)
    assert [e.path for e in kept] == moved[:1:-1]
    assert {e.weight for e in kept} == {3.0}


def test_corrections_list_and_forget_on_the_command_line(world: World, tiny_model: Path) -> None:
    """list shows each correction; forget needs a filter and reports how many went."""
    settings = world[1]
    moved = correct(world)
    cli = CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)})
    root = ["--root", str(settings.root)]
    listed = cli.invoke(app, ["corrections", "list", *root, "--json"])
    assert listed.exit_code == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(Path(r["path"]), r["old_label"], r["new_label"]) for r in rows] == [
        (p, "red", "blue") for p in moved
    ]
    refused = cli.invoke(app, ["corrections", "forget", *root])
    assert refused.exit_code == 2 and "--all" in refused.stderr
    forgot = cli.invoke(app, ["corrections", "forget", *root, "--class", "blue"])
    assert forgot.exit_code == 0 and "forgot 3 corrections" in forgot.stdout
    assert all(p.exists() for p in moved), "forgetting never touches the files"


def test_eval_reports_accuracy_with_and_without_corrections(world: World, tiny_model: Path) -> None:
    """On the corrected examples, reference-max is wrong without them and right with the others."""
    _, settings, _, _ = world
    correct(world)
    cli = CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)})
    result = cli.invoke(app, ["eval", "--root", str(settings.root), "--json", "--folds", "2"])
    assert result.exit_code == 0, result.stderr
    effect = json.loads(result.stdout.splitlines()[-1])["corrections"]["reference-max"]
    assert effect["examples"] == 3
    assert effect["without"] <= 1 / 3 and effect["with"] == 1.0


def test_the_learner_leaves_out_the_files_the_placer_reported_until_its_next_round(world: World) -> None:
    """After a burst the learner looks at what changed in Dataset/: a file the placer reported
    filing, still at its path with its inode, is left out of that look; a file a person put in the
    place of a reported one (another inode) and one the placer never reported are looked at. A look
    forgets what it was told: the next look judges the reported file as any other."""
    layout, settings, journal, embedder = world
    learning = settings.model_copy(update={"learn_from_dataset": True})  # any file met is a correction
    red = layout.class_dir("red")
    since = time.time()
    reported, swapped, _unreported = (
        save(draw(np.random.default_rng(seed), "blue", "circle"), red / f"{name}.png")
        for seed, name in ((31, "reported"), (32, "swapped"), (33, "unreported"))
    )
    learner = Learner(learning, journal, embedder)
    learner.placed([(layout.name, path, path.lstat().st_ino) for path in (reported, swapped)])
    staged = save(draw(np.random.default_rng(34), "blue", "square"), layout.root / ".staged.png")
    os.rename(staged, swapped)  # a person's file under the reported name: another inode

    def corrected() -> set[str]:
        return {correction.path.name for correction in journal.corrections(dataset=layout.name)}

    learner.start()
    try:
        learner.scan(layout.name, changed_since=since)
        wait_until(lambda: {"swapped.png", "unreported.png"} <= corrected(), timeout=30)
        # One look judged all three in name order: the reported file was passed over, not pending.
        assert "reported.png" not in corrected()
        learner.scan(layout.name, changed_since=since)
        wait_until(lambda: "reported.png" in corrected(), timeout=30)
    finally:
        learner.stop()
