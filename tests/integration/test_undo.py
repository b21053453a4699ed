"""Tests for clipsort.store.undo: ``clipsort history`` and ``clipsort undo`` on real sorted folders."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.errors import JournalError
from clipsort.store.journal import Conclusion, Intent, Journal
from clipsort.store.mover import make_state_dir
from clipsort.times import parse_since
from tests.helpers import RGB, clipsort_process, tree
from tests.synthetic import make_dataset


@pytest.fixture
def cli(tiny_model: Path) -> CliRunner:
    return CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)})


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def sorted_root(cli: CliRunner, data_root: Path) -> tuple[Path, dict[str, str]]:
    """Six pictures sorted by `clipsort sort`; their names and hashes before sorting."""
    make_dataset(data_root / "rgb", RGB, references=3, inbox=list(RGB) * 2, seed=5)
    before = digests(data_root / "rgb" / "Images")
    result = cli.invoke(app, ["sort", "--root", str(data_root)])
    assert result.exit_code == 0, result.stderr
    assert "Images" not in tree(data_root / "rgb")
    return data_root, before


def test_history_lists_every_decision_as_json(
    cli: CliRunner, sorted_root: tuple[Path, dict[str, str]]
) -> None:
    """One JSON object per moved file, with hash, class, top-3 and where it went."""
    root, before = sorted_root
    result = cli.invoke(app, ["history", "--root", str(root), "--json"])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {Path(row["source"]).name for row in rows} == set(before)
    for row in rows:
        assert row["state"] == "moved" and row["sha256"] == before[Path(row["source"]).name]
        assert Path(row["destination"]).parent.name == row["class"] == row["top3"][0][0]
    table = cli.invoke(app, ["history", "--root", str(root), "--dataset", "rgb", "--since", "1h"])
    assert table.exit_code == 0 and "img0000.png" in table.stdout


def test_undo_round_trip_restores_exact_bytes_and_names(
    cli: CliRunner, sorted_root: tuple[Path, dict[str, str]]
) -> None:
    """undo --since puts every file back in Images/ under its own name, byte for byte."""
    root, before = sorted_root
    result = cli.invoke(app, ["undo", "--root", str(root), "--since", "10m"])
    assert result.exit_code == 0, result.stderr
    assert digests(root / "rgb" / "Images") == before
    assert not [p for p in (root / "rgb" / "Dataset").rglob("*") if p.is_file()]
    journal = Journal(root / ".clipsort")
    assert {entry.state for entry in journal.entries()} == {"undone"}
    again = cli.invoke(app, ["undo", "--root", str(root), "--last", "1"])
    assert again.exit_code == 2 and "nothing to undo" in again.stderr


def test_undo_to_a_class_records_a_correction(
    cli: CliRunner, sorted_root: tuple[Path, dict[str, str]]
) -> None:
    """undo FILE --to CLASS moves the file there and keeps the person's answer."""
    root, _ = sorted_root
    victim = sorted((root / "rgb" / "Dataset" / "red").iterdir())[0]
    result = cli.invoke(app, ["undo", "--root", str(root), str(victim), "--to", "blue"])
    assert result.exit_code == 0, result.stderr
    assert (root / "rgb" / "Dataset" / "blue" / victim.name).exists() and not victim.exists()
    (correction,) = Journal(root / ".clipsort").corrections()
    assert (correction.old_label, correction.new_label) == ("red", "blue")
    unknown = cli.invoke(app, ["undo", "--root", str(root), "--last", "1", "--to", "purple"])
    assert unknown.exit_code == 2 and "no class 'purple'" in unknown.stderr


def test_undo_leaves_alone_a_file_someone_changed(
    cli: CliRunner, sorted_root: tuple[Path, dict[str, str]]
) -> None:
    """The newest file was edited after sorting: undo reports it and exits 1, touching nothing."""
    root, _ = sorted_root
    newest = Journal(root / ".clipsort").entries(last=1)[0].destination
    assert newest is not None
    newest.write_bytes(b"edited")
    result = cli.invoke(app, ["undo", "--root", str(root)])
    assert result.exit_code == 1 and "left alone" in result.stdout
    assert newest.read_bytes() == b"edited"


def test_history_without_a_journal_is_a_user_error(cli: CliRunner, data_root: Path) -> None:
    """Exit 2 and a message naming the state folder."""
    result = cli.invoke(app, ["history", "--root", str(data_root)])
    assert result.exit_code == 2 and "no journal" in result.stderr


def test_since_accepts_ages_and_iso_times() -> None:
    """30m is half an hour before now; a date is its local midnight; anything else is refused."""
    now = time.time()
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2d", now) == now - 2 * 86400
    assert parse_since("2026-11-26T14:00", now) > parse_since("2026-11-26", now)
    with pytest.raises(JournalError, match="cannot read --since"):
        parse_since("yesterday", now)


def test_undo_by_path_with_a_relative_or_absolute_root(cli: CliRunner, data_root: Path) -> None:
    """Sorted with `--root Data`: undo finds a file named relatively and one named absolutely."""
    make_dataset(data_root / "rgb", RGB, references=3, inbox=["red", "red"], seed=5)
    relative_root = data_root.relative_to(Path.cwd())
    assert cli.invoke(app, ["sort", "--root", str(relative_root)]).exit_code == 0
    first, second = sorted((data_root / "rgb" / "Dataset" / "red").iterdir())
    assert all(entry.intent.source.is_absolute() for entry in Journal(data_root / ".clipsort").entries())
    by_relative = cli.invoke(
        app, ["undo", "--root", str(relative_root), str(first.relative_to(Path.cwd())), "--to", "blue"]
    )
    assert by_relative.exit_code == 0, by_relative.output
    assert (data_root / "rgb" / "Dataset" / "blue" / first.name).is_file() and not first.exists()
    by_absolute = cli.invoke(app, ["undo", "--root", str(relative_root), str(second)])
    assert by_absolute.exit_code == 0, by_absolute.output
    assert (data_root / "rgb" / "Images" / second.name).is_file() and not second.exists()


def test_a_rejected_empty_file_is_undone_by_name_only(cli: CliRunner, data_root: Path) -> None:
    """undo --last passes over Rejected/; named, the empty file goes back (its empty bytes match)."""
    make_dataset(data_root / "rgb", RGB, references=3, inbox=["red"], seed=5)
    (data_root / "rgb" / "Images" / "empty.png").write_bytes(b"")
    assert cli.invoke(app, ["sort", "--root", str(data_root)]).exit_code == 0
    assert tree(data_root / "rgb")["Rejected"] == ["empty.png"]
    last = cli.invoke(app, ["undo", "--root", str(data_root), "--last", "1"])
    assert last.exit_code == 0, last.output
    assert tree(data_root / "rgb")["Images"] == ["img0000.png"], (
        "the sorted picture came back, not the empty file"
    )
    named = cli.invoke(
        app, ["undo", "--root", str(data_root), str(data_root / "rgb" / "Rejected" / "empty.png")]
    )
    assert named.exit_code == 0, named.output
    assert "back in the inbox" in named.stdout
    assert tree(data_root / "rgb")["Images"] == ["empty.png", "img0000.png"]


def test_history_json_escapes_a_name_that_is_not_utf8(cli: CliRunner, data_root: Path) -> None:
    """A file named with a 0xff byte: `history --json` is valid UTF-8 and names it exactly."""
    make_dataset(data_root / "rgb", RGB, references=3, inbox=["red"], seed=5)
    inbox = os.fsencode(data_root / "rgb" / "Images")
    os.rename(inbox + b"/img0000.png", inbox + b"/caf\xff.png")
    assert cli.invoke(app, ["sort", "--root", str(data_root)]).exit_code == 0
    done = clipsort_process("history", "--root", str(data_root), "--json")  # decodes stdout strictly
    assert done.returncode == 0, done.stderr
    [row] = [json.loads(line) for line in done.stdout.splitlines()]
    assert os.fsencode(row["source"]) == inbox + b"/caf\xff.png"


def test_history_fits_80_columns_with_a_default_limit(data_root: Path) -> None:
    """Deep paths and many decisions: one row per line in 80 columns, paths cut from the left, newest 50."""
    folder = data_root / "a-dataset-with-a-long-name" / "Images" / "from the camera" / "2026" / "December"
    make_state_dir(data_root / ".clipsort")
    with Journal(data_root / ".clipsort") as journal:
        intents = [
            Intent(
                "a-dataset-with-a-long-name",
                folder / f"IMG_{k:04d}-a-rather-long-file-name.jpeg",
                f"{k:064x}",
                1000,
                "reference-max",
                "m",
                "landscape",
                (("landscape", 0.91), ("portrait", 0.05)),
                "sorted",
                data_root / "a-dataset-with-a-long-name" / "Dataset" / "landscape",
            )
            for k in range(60)
        ]
        ids = journal.plan(intents)
        journal.conclude(
            [
                Conclusion(i, "moved", intent.folder / intent.source.name)
                for i, intent in zip(ids, intents, strict=True)
            ]
        )
    runner = CliRunner(env={"COLUMNS": "80"})
    shown = runner.invoke(app, ["history", "--root", str(data_root)])
    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    rows = [line for line in lines if "moved" in line]
    assert len(rows) == 50 and "IMG_0010-a-rather-long-file-name.jpeg" in rows[0]
    assert "IMG_0059-a-rather-long-file-name.jpeg" in rows[-1] and "landscape" in rows[-1]
    assert "…" in rows[-1] and str(data_root) not in shown.stdout, "relative to the root, cut from the left"
    assert "the newest 50 of 60; --limit N shows more, --limit 0 all" in shown.stdout
    everything = runner.invoke(app, ["history", "--root", str(data_root), "--limit", "0"])
    assert sum("moved" in line for line in everything.stdout.splitlines()) == 60
    assert "--limit" not in everything.stdout
