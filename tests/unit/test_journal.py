"""Tests for clipsort.store.journal: durable intents and outcomes, read back as written."""

from __future__ import annotations

import os
import time
from pathlib import Path

from clipsort.store.journal import Conclusion, Intent, Journal


def intent(source: Path, folder: Path, label: str | None = "red", dataset: str = "rgb") -> Intent:
    return Intent(
        dataset=dataset,
        source=source,
        sha256="ab" * 32,
        size=123,
        mode="reference",
        model="tiny",
        label=label,
        top3=(("red", 0.9), ("blue", 0.07), ("green", 0.03)),
        placement="sorted" if label else "rejected",
        folder=folder,
    )


def test_an_intent_and_its_outcome_read_back_whole(tmp_path: Path) -> None:
    """Every field survives, including a file name that is not UTF-8."""
    journal = Journal(tmp_path)
    source = Path(os.fsdecode(b"/data/rgb/Images/caf\xe9.jpg"))
    entry = journal.plan([intent(source, tmp_path / "Dataset" / "red")])[0]
    assert [e.id for e in journal.planned()] == [entry]
    journal.conclude([Conclusion(entry, "moved", tmp_path / "Dataset" / "red" / source.name)])
    journal.close()
    again = Journal(tmp_path)
    (found,) = again.entries()
    assert found.state == "moved"
    assert found.intent == intent(source, tmp_path / "Dataset" / "red")
    assert found.destination == tmp_path / "Dataset" / "red" / source.name
    assert again.planned() == []
    assert again.at(tmp_path / "Dataset" / "red" / source.name) == found
    assert found.as_dict()["top3"] == [["red", 0.9], ["blue", 0.07], ["green", 0.03]]


def test_destinations_are_found_in_bulk(tmp_path: Path) -> None:
    """Of 2,500 paths (three queries' worth), exactly those a decision put a file at come back."""
    journal = Journal(tmp_path)
    folder = tmp_path / "Dataset" / "red"
    odd = Path(os.fsdecode(b"/data/rgb/Images/caf\xe9.jpg"))
    entries = journal.plan(
        [intent(tmp_path / f"{k}.jpg", folder) for k in range(1200)] + [intent(odd, folder)]
    )
    placed = [folder / f"{k}.jpg" for k in range(1200)] + [folder / odd.name]
    journal.conclude(
        [Conclusion(e, "moved", path) for e, path in zip(entries[::2], placed[::2], strict=True)]
    )
    asked = placed + [folder / f"other-{k}.jpg" for k in range(1299)]
    assert journal.destinations(asked) == set(placed[::2])


def test_filters_by_dataset_time_state_and_newest(tmp_path: Path) -> None:
    """history --dataset/--since and undo --last select the right rows, oldest first."""
    journal = Journal(tmp_path)
    ids = [journal.plan([intent(tmp_path / f"{k}.jpg", tmp_path, dataset="ab"[k % 2])])[0] for k in range(6)]
    cut = time.time()
    later = journal.plan([intent(tmp_path / "late.jpg", tmp_path)])[0]
    journal.conclude([Conclusion(entry, "moved", tmp_path / f"{entry}.jpg") for entry in [*ids, later]])
    journal.conclude([Conclusion(ids[0], "undone")])
    assert [e.id for e in journal.entries(dataset="a")] == ids[0::2]
    assert [e.id for e in journal.entries(since=cut)] == [later]
    assert [e.id for e in journal.entries(states=("moved",), last=2)] == [ids[5], later]
    assert journal.entries(states=("undone",))[0].id == ids[0]


def test_a_correction_marks_its_decision(tmp_path: Path) -> None:
    """The person's class is kept with the decision it overrides."""
    journal = Journal(tmp_path)
    entry_id = journal.plan([intent(tmp_path / "a.jpg", tmp_path)])[0]
    journal.conclude([Conclusion(entry_id, "moved", tmp_path / "red" / "a.jpg")])
    (entry,) = journal.entries()
    journal.correct(entry, "rgb", entry.intent.sha256, tmp_path / "blue" / "a.jpg", "blue")
    (correction,) = journal.corrections()
    assert (correction.decision, correction.old_label, correction.new_label) == (entry_id, "red", "blue")
    assert journal.entries()[0].state == "corrected"
    assert journal.entries()[0].destination == tmp_path / "blue" / "a.jpg"


def test_correction_versions_change_per_dataset_for_any_process(tmp_path: Path) -> None:
    """Adding or forgetting a dataset's correction, here or in another process, moves only its number."""
    daemon, cli = Journal(tmp_path), Journal(tmp_path)
    assert daemon.corrections_versions() == {}
    daemon.correct(None, "rgb", "ab" * 32, tmp_path / "blue" / "a.jpg", "blue")
    daemon.correct(None, "pets", "cd" * 32, tmp_path / "cat" / "b.jpg", "cat")
    seen = daemon.corrections_versions()
    assert set(seen) == {"rgb", "pets"}
    cli.correct(None, "rgb", "ef" * 32, tmp_path / "red" / "c.jpg", "red")
    assert cli.forget(dataset="rgb", label="red") == 1  # an addition and a forgetting: still a change
    now = daemon.corrections_versions()
    assert now["rgb"] > seen["rgb"] and now["pets"] == seen["pets"]


def test_two_processes_share_one_journal(tmp_path: Path) -> None:
    """The daemon and `clipsort undo` write to the same file without losing rows."""
    first, second = Journal(tmp_path), Journal(tmp_path)
    for k in range(20):
        (first if k % 2 else second).plan([intent(tmp_path / f"{k}.jpg", tmp_path)])
    assert len(first.entries()) == len(second.entries()) == 20
