"""The status file the daemon rewrites and ``clipsort status`` reads.

JSON in the state folder, replaced atomically, so a reader never sees half
of it. A status is "running" only if its process is alive and it was
written recently, so a crashed daemon's leftover file is not mistaken for a
live one.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipsort.store.mover import write_atomic

STATUS_FILE = "status.json"


@dataclass
class DatasetStatus:
    """Counts for one dataset since the daemon started."""

    sorted: int = 0
    review: int = 0
    unknown: int = 0  # of review: pictures of none of the classes
    uncertain: int = 0  # of review: pictures between classes
    rejected: int = 0
    queued: int = 0
    classes: int = 0
    waiting_for_classes: bool = False
    corrections: dict[str, int] = field(default_factory=dict)  # corrected examples in use, per class
    degraded: str | None = None  # why its events are not watched (it is sorted by rescans meanwhile)
    unknown_held: float | None = None  # the gate's knob in force; None: the gate is off
    # Per class, the unknown gate's threshold and the share of its references that pass it.
    gate: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Status:
    """A snapshot of the daemon."""

    pid: int
    started_at: float
    updated_at: float
    interval: float
    state: str
    device: str
    model: str
    version: str
    references_embedded: int = 0
    state_bytes: int = 0  # the state folder's size after the last housekeeping
    last_error: str | None = None
    datasets: dict[str, DatasetStatus] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Status:
        datasets = {name: DatasetStatus(**counts) for name, counts in data.pop("datasets", {}).items()}
        return cls(**data, datasets=datasets)


def write_status(folder: Path, status: Status) -> None:
    """Atomically replace the status file in ``folder``."""
    write_atomic(folder / STATUS_FILE, json.dumps(status.as_dict(), indent=2).encode())


def read_status(folder: Path) -> Status | None:
    """The last status written in ``folder``, or None if there is none (or it is unreadable)."""
    try:
        return Status.from_dict(json.loads((folder / STATUS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def is_live(status: Status, now: float | None = None) -> bool:
    """The process exists, is not stopped, and refreshed the file within three intervals."""
    try:
        os.kill(status.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user (the service account)
    fresh = (now if now is not None else time.time()) - status.updated_at < 3 * status.interval + 1
    return fresh and status.state != "stopped"


def folder_size(folder: Path) -> int:
    """Bytes of the regular files under ``folder``, never following a symlink; 0 if it is missing."""
    total = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            status = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # removed meanwhile
        if stat.S_ISDIR(status.st_mode):
            total += folder_size(Path(entry.path))
        elif stat.S_ISREG(status.st_mode):
            total += status.st_size
    return total
