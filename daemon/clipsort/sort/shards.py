"""The cluster engine's ledger: manifest and decision shards in Parquet, each committed by a marker.

A run of ``clipsort sort --engine ray`` keeps everything it has done in one folder of the state
folder (:class:`RunFolder`), so that the same command run again after a crash, a kill or a Ctrl-C
goes on where it stopped:

- ``manifest/part-NNNNN.parquet``: the inbox files the run sorts (dataset, path, size, mtime,
  inode), written when the listing is whole, then ``manifest/_COMMITTED``;
- ``decisions/part-NNNNN.parquet``: per manifest shard, each file's bytes (hash, size) and what the
  classifier decided (top three, the gate's verdict, the model or checkpoint), then
  ``decisions/part-NNNNN.done``, written only once the shard's file is complete: a resumed run
  skips committed shards and classifies the others again (img2dataset's lesson: a shard is done
  when its marker says so, never when its file exists);
- ``placed/part-NNNNN.done``: the shard's files are placed (or were found placed, gone, or changed).

Every file here is written whole through :func:`clipsort.store.mover.write_atomic` (a temporary
name, fsync, rename), so a crash leaves a shard or its marker absent, never half there. Paths are
kept as bytes (``os.fsencode``): a file name need not be UTF-8.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipsort.classify.modes.base import Decision, Familiarity
from clipsort.errors import ImageRejected
from clipsort.store.mover import make_own_dir, remove_own, remove_own_dir, write_atomic
from clipsort.work import Job, Signature

RUN_FOLDER = "ray-run"  # in the state folder
MANIFEST_COLUMNS = ("dataset", "path", "size", "mtime_ns", "inode")


@dataclass(frozen=True)
class Listed:
    """One inbox file as the listing found it: what a manifest row holds."""

    dataset: str
    path: Path
    signature: Signature

    def job(self) -> Job:
        """The unit of work the project's classifier and mover take (no settling: it is read now)."""
        return Job(self.dataset, self.path, self.signature, 0.0)


@dataclass(frozen=True)
class Decided:
    """One file of a decision shard: what was read, and the verdict on it."""

    listed: Listed
    sha256: str
    read_size: int
    verdict: Decision | ImageRejected | None  # None: inference failed even on the CPU
    model: str  # the CLIP model's identity, or the checkpoint that decided


def manifest_table(rows: Sequence[Listed]) -> Any:
    """A manifest shard as an Arrow table."""
    import pyarrow as pa  # noqa: PLC0415  (the ray extra: only the cluster engine loads it)

    return pa.table(
        {
            "dataset": pa.array([row.dataset for row in rows], pa.string()),
            "path": pa.array([os.fsencode(row.path) for row in rows], pa.binary()),
            "size": pa.array([row.signature.size for row in rows], pa.int64()),
            "mtime_ns": pa.array([row.signature.mtime_ns for row in rows], pa.int64()),
            "inode": pa.array([row.signature.inode for row in rows], pa.int64()),
        }
    )


def listed_rows(table: Any) -> list[Listed]:
    """The rows of a manifest table (or of any table with its columns)."""
    columns = {name: table.column(name).to_pylist() for name in MANIFEST_COLUMNS}
    return [
        Listed(dataset, Path(os.fsdecode(path)), Signature(size, mtime, inode))
        for dataset, path, size, mtime, inode in zip(*columns.values(), strict=True)
    ]


def decision_table(rows: Sequence[Decided]) -> Any:
    """A decision shard as an Arrow table: the manifest's columns, the bytes read, the verdict."""
    import pyarrow as pa  # noqa: PLC0415

    table = manifest_table([row.listed for row in rows])
    decisions = [row.verdict if isinstance(row.verdict, Decision) else None for row in rows]
    familiar = [None if d is None else d.familiar for d in decisions]
    columns: dict[str, Any] = {
        "sha256": pa.array([row.sha256 for row in rows], pa.string()),
        "read_size": pa.array([row.read_size for row in rows], pa.int64()),
        "model": pa.array([row.model for row in rows], pa.string()),
        # What kept a file from a decision: unreadable (Rejected/), or inference failed (left).
        "rejected": pa.array(
            [str(r.verdict) if isinstance(r.verdict, ImageRejected) else None for r in rows]
        ),
        "failed": pa.array([row.verdict is None for row in rows], pa.bool_()),
        "label": pa.array([None if d is None else d.label for d in decisions], pa.string()),
        "score": pa.array([None if d is None else d.score for d in decisions], pa.float64()),
        "runner_up": pa.array([None if d is None else d.runner_up for d in decisions], pa.string()),
        "runner_up_score": pa.array([None if d is None else d.runner_up_score for d in decisions]),
        "similarity": pa.array([None if d is None else d.similarity for d in decisions], pa.float64()),
        "top3": pa.array([None if d is None else json.dumps(d.top) for d in decisions], pa.string()),
        # The gate's verdict: known (True), unknown (False), or no gate judged it (null).
        "known": pa.array([None if f is None else f.known for f in familiar], pa.bool_()),
        "gate_basis": pa.array([None if f is None else f.basis for f in familiar], pa.string()),
        "gate_score": pa.array([None if f is None else f.score for f in familiar], pa.float64()),
        "gate_threshold": pa.array([None if f is None else f.threshold for f in familiar], pa.float64()),
    }
    for name, column in columns.items():
        table = table.append_column(name, column)
    return table


def decided_rows(table: Any) -> list[Decided]:
    """The rows of a decision table, verdicts rebuilt as the classifier made them."""
    data = table.to_pydict()
    found = []
    for k, listed in enumerate(listed_rows(table)):
        verdict: Decision | ImageRejected | None = None
        if data["rejected"][k] is not None:
            verdict = ImageRejected(data["rejected"][k])
        elif not data["failed"][k]:
            familiar = None
            if data["known"][k] is not None:
                familiar = Familiarity(
                    data["gate_basis"][k], data["gate_score"][k], data["gate_threshold"][k], data["known"][k]
                )
            verdict = Decision(
                data["label"][k],
                data["score"][k],
                data["runner_up"][k],
                data["runner_up_score"][k],
                data["similarity"][k],
                tuple((str(label), float(p)) for label, p in json.loads(data["top3"][k])),
                familiar,
            )
        found.append(Decided(listed, data["sha256"][k], data["read_size"][k], verdict, data["model"][k]))
    return found


def to_parquet(table: Any) -> bytes:
    """A table as the bytes of one Parquet file."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def from_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq  # noqa: PLC0415

    return pq.read_table(path)


def fingerprint(settings: Mapping[str, object]) -> str:
    """What a run's decisions depend on, hashed: a resumed run with other settings redoes them."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunFolder:
    """One cluster run's shards and markers, under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.manifest = folder / "manifest"
        self.decisions = folder / "decisions"
        self.placed = folder / "placed"

    @staticmethod
    def part(number: int) -> str:
        return f"part-{number:05d}"

    # --- the run's identity ---
    def started(self) -> dict[str, Any] | None:
        """The run recorded here (its fingerprint and start time); None when no run is."""
        try:
            found: dict[str, Any] = json.loads((self.folder / "run.json").read_bytes())
        except (OSError, ValueError):
            return None
        return found

    def start(self, fingerprint: str, started: float) -> None:
        for folder in (self.folder, self.manifest, self.decisions, self.placed):
            make_own_dir(folder, 0o700)
        write_atomic(
            self.folder / "run.json", json.dumps({"fingerprint": fingerprint, "started": started}).encode()
        )

    def discard(self) -> None:
        """Forget the run (done, or made under other settings): its files, then its folders."""
        for folder in (self.manifest, self.decisions, self.placed):
            for path in _files(folder):
                remove_own(path)
            remove_own_dir(folder)
        remove_own(self.folder / "run.json")
        remove_own_dir(self.folder)

    # --- (a) the manifest ---
    def listed(self) -> list[str] | None:
        """The committed manifest's shards in order; None while no manifest is committed."""
        try:
            found: list[str] = json.loads((self.manifest / "_COMMITTED").read_bytes())["shards"]
        except (OSError, ValueError, KeyError):
            return None
        return found

    def commit_manifest(self, tables: Sequence[Any]) -> list[str]:
        """Write the manifest's shards, then the marker naming them (what makes the listing whole)."""
        names = [self.part(k) for k in range(len(tables))]
        for name, table in zip(names, tables, strict=True):
            write_atomic(self.manifest / f"{name}.parquet", to_parquet(table))
        write_atomic(self.manifest / "_COMMITTED", json.dumps({"shards": names}).encode())
        return names

    def manifest_shard(self, name: str) -> list[Listed]:
        return listed_rows(from_parquet(self.manifest / f"{name}.parquet"))

    # --- (b) decisions ---
    def classified(self, name: str) -> bool:
        return (self.decisions / f"{name}.done").is_file()

    def commit_decisions(self, name: str, rows: Sequence[Decided]) -> None:
        """The shard's decisions, then its marker: a shard without its marker is classified again."""
        write_atomic(self.decisions / f"{name}.parquet", to_parquet(decision_table(rows)))
        write_atomic(self.decisions / f"{name}.done", str(len(rows)).encode())

    def decided_count(self, name: str) -> int:
        """How many files a committed decision shard holds (its marker says)."""
        return int((self.decisions / f"{name}.done").read_text())

    def decision_shard(self, name: str) -> list[Decided]:
        return decided_rows(from_parquet(self.decisions / f"{name}.parquet"))

    def forget_decisions(self) -> int:
        """Drop every decision shard not placed yet (made under other settings); how many."""
        dropped = 0
        for path in _files(self.decisions):
            if path.suffix == ".done" and not self.placed_already(path.stem):
                remove_own(path)
                remove_own(path.with_suffix(".parquet"))
                dropped += 1
        return dropped

    # --- (c) placing ---
    def placed_already(self, name: str) -> bool:
        return (self.placed / f"{name}.done").is_file()

    def commit_placed(self, name: str, summary: Mapping[str, int]) -> None:
        write_atomic(self.placed / f"{name}.done", json.dumps(dict(summary)).encode())


def _files(folder: Path) -> Iterator[Path]:
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return
    for name in names:
        yield folder / name
