"""What the cluster engine's Ray *tasks* run: listing inboxes and decoding files.

Apart from :mod:`clipsort.sort.cluster` because Ray imports a task's module in every worker
process that runs it: these need the scanner, the decoder and the shards' tables, not the model.
With them beside the engine, each listing or decoding worker imported torch and transformers too
(about 4 s of CPU and a few hundred MB of memory per worker, on nodes that never run the model); a
test holds this module to importing neither.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipsort.config import Settings
from clipsort.decode.decoding import read_and_decode
from clipsort.decode.images import DecodeLimits, centre_crop
from clipsort.files import entries, scan
from clipsort.heap import keep_freed_memory
from clipsort.ingest.sidecars import split
from clipsort.sort.shards import Listed, listed_rows, manifest_table
from clipsort.work import Signature


@dataclass(frozen=True)
class Decoding:
    """How a dataset's files are decoded: to the CLIP tower's input (a crop) or to a picture."""

    limits: DecodeLimits
    side: int  # a picture's shortest edge, for datasets not classified by CLIP vectors
    crops: Mapping[str, int]  # dataset -> the tower's input size, for datasets classified by CLIP vectors


# --- (a) listing: runs in Ray tasks, an inbox's top level first, then one task per folder in it ---
def list_inbox(dataset: str, inbox: Path, settings: Settings) -> tuple[Any, list[Path]]:
    """An inbox's own files as a manifest table, and its folders (each listed by a task of its own)."""
    if inbox.is_symlink():  # as the scanner: an inbox linked elsewhere holds nothing of the dataset's
        return list_folder(dataset, inbox, settings, 0), []
    files, folders = entries(inbox, settings.ignore_patterns)
    return _listed(dataset, files, settings), folders if settings.max_folder_depth > 0 else []


def list_folder(dataset: str, folder: Path, settings: Settings, depth: int) -> Any:
    """Every file under ``folder``, ``depth`` folders below its inbox, as a manifest table."""
    found = scan(folder, settings.ignore_patterns, settings.max_folder_depth - depth)
    return _listed(dataset, found, settings)


def _listed(dataset: str, paths: Iterable[Path], settings: Settings) -> Any:
    """The files among ``paths`` (sidecars travel with their pictures, never alone), each ``lstat``-ed."""
    files, _ = split(paths, settings.sidecar_suffixes)
    rows = []
    for path in files:
        signature = Signature.of(path)
        if signature is not None:  # gone, or no longer a regular file, since it was listed
            rows.append(Listed(dataset, path, signature))
    return manifest_table(rows)


# --- (b) classifying: decode in Ray tasks, classify in Ray actors ---
def decode_batch(batch: Any, decoding: Decoding) -> Any:
    """Read and decode each file of a manifest batch; the reads travel pickled to the actors."""
    import pyarrow as pa  # noqa: PLC0415

    keep_freed_memory()  # once a worker process in effect; later calls set the same (clipsort.heap)
    reads = []
    for row in listed_rows(batch):
        side = decoding.crops.get(row.dataset)
        prepare = None if side is None else functools.partial(centre_crop, side=side)
        target = decoding.side if side is None else side
        reads.append(pickle.dumps(read_and_decode(row.path, decoding.limits, target, prepare)))
    return batch.append_column("read", pa.array(reads, pa.binary()))
