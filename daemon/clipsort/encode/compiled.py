"""A plain CLIP folder's two towers kept as TorchScript for the CPU, so later starts skip transformers.

Why: importing transformers' CLIP classes costs about 4.6 s of CPU on every start (2 cores, 2026-12:
the package 1.0 s, then its modelling base pulls in ``torch.distributed.tensor``, ``torch._dynamo``
and ``scipy.optimize``, 3.6 s), more than half of a daemon's start with a small model, paid again
by each `clipsort sort` and each Ray actor. The first start on a folder loads it with transformers
as before, traces the text tower (the image tower is traced at every load anyway) and saves both
graphs with the folder's tokenizer in an entry of the cache; later starts load them with torch and
the tokenizers library alone (a test holds the vectors to the transformers path's).

An entry is keyed by the folder's identity (its path and its files' sizes and modification times),
the precision, torch's version and :data:`FORMAT`, so a changed model, precision or torch never
reuses one; it is written to a temporary folder and renamed into place, so a process that races
another for the same entry reads a whole one or none. Making one prunes the entries whose folder is
gone or has changed (:func:`prune`): an entry holds the model's weights again. CPU only: on a GPU
host the start is not what limits, and the fp16 CUDA path stays as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
import torch
from PIL import Image

from clipsort.decode.images import Crop
from clipsort.encode.plainclip import OneModule, PlainClip

if TYPE_CHECKING:
    from clipsort.encode.encoder import ImageTower

log = structlog.get_logger()

FORMAT = 3  # raised whenever what an entry holds, or how its graphs are made, changes
IMAGE, TEXT, META, TOKENIZER = "image.pt", "text.pt", "meta.json", "tokenizer.json"

Graph = Callable[..., torch.Tensor]


def cache_root() -> Path:
    """Where entries live: systemd's ``CacheDirectory=``, else ``$XDG_CACHE_HOME/clipsort``, else
    ``~/.cache/clipsort``."""
    systemd = os.environ.get("CACHE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0]) / "compiled"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clipsort" / "compiled"


def entry_for(root: Path, identity: str) -> Path:
    """The entry of a model of ``identity`` (the encoder's: ``model_identity`` and its precision)."""
    return root / f"{identity}-torch{torch.__version__}-v{FORMAT}"


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Without torch.jit's note that save and load are deprecated (torch 2.13): a line at every start
    otherwise. Their replacement, torch.export, compiles C++ at each start (bench/README.md)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.(save|load)` is deprecated", DeprecationWarning)
        yield


def interpreted() -> AbstractContextManager[None]:
    """TorchScript's plain interpreter, without the optimising executor's per-shape profiling.

    Why: the optimising executor would re-profile a graph for each new batch size (the daemon's
    batches vary), and its fusions buy nothing measurable here.
    """
    manager: AbstractContextManager[None] = torch.jit.optimized_execution(False)  # type: ignore[attr-defined]
    return manager


class CompiledClip(OneModule):
    """A compiled entry in the shape the encoder reads from a loaded model (see ``PlainClip``).

    Pictures go through the encoder's image tower made around :attr:`image_graph`
    (``encoder.image_tower``); :meth:`encode` takes texts.
    """

    def __init__(self, image_graph: Graph, text: Graph, tokenizer: Any, meta: dict[str, Any]) -> None:
        self.image_graph = image_graph
        self._text = text
        self._tokenizer = tokenizer
        self.image_size = int(meta["image_size"])
        self.logit_scale = float(meta["logit_scale"])
        self._dimension = int(meta["dimension"])

    @property
    def tokenizer(self) -> Any:
        """The folder's tokenizer (the tokenizers library's: ``get_vocab`` as transformers' has it)."""
        return self._tokenizer

    def get_embedding_dimension(self) -> int:
        return self._dimension

    def encode(self, items: Sequence[str] | Sequence[Image.Image | Crop], **_: object) -> np.ndarray:
        """L2-normalised float32 rows of texts, as ``PlainClip.encode`` gives them."""
        if not items:
            return np.zeros((0, self._dimension), dtype=np.float32)
        if not isinstance(items[0], str):
            raise TypeError("a compiled copy encodes pictures through the encoder's image tower")
        encoded = self._tokenizer.encode_batch(list(items))
        ids = torch.tensor([e.ids for e in encoded], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.long)
        with torch.inference_mode(), interpreted():
            features = torch.nn.functional.normalize(self._text(ids, mask).float(), dim=-1)
        return np.asarray(features.numpy(), dtype=np.float32)


def load(entry: Path) -> CompiledClip | None:
    """The compiled copy in ``entry``, or None where there is none or it cannot be read."""
    if not (entry / META).is_file():
        return None
    try:
        from tokenizers import Tokenizer  # noqa: PLC0415  (a Rust extension: milliseconds)

        meta = json.loads((entry / META).read_text())
        tokenizer = Tokenizer.from_file(str(entry / TOKENIZER))
        tokenizer.enable_truncation(max_length=int(meta["max_length"]))
        tokenizer.enable_padding(
            pad_id=int(meta["pad_id"]), pad_token=str(meta["pad_token"]), length=int(meta["max_length"])
        )
        with _quiet_jit():
            image = torch.jit.load(str(entry / IMAGE), map_location="cpu")  # type: ignore[no-untyped-call]
            text = torch.jit.load(str(entry / TEXT), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as exc:  # a damaged or foreign entry: load the folder with transformers instead
        log.warning("compiled_model_unusable", entry=str(entry), reason=f"{type(exc).__name__}: {exc}")
        shutil.rmtree(entry, ignore_errors=True)  # so that this start makes it anew
        return None
    return CompiledClip(image, text, tokenizer, meta)


def prune(kept: Path) -> None:
    """Remove the entries beside ``kept`` that no start can use again: their folder is gone, or it
    is ``kept``'s own folder, changed since (its identity, so its entry's name, differs).

    Why: models in temporary folders (benchmarks, tests) and retrained folders would otherwise
    leave a copy of their weights in the cache for good.
    """
    mine = _folder_of(kept)
    for entry in kept.parent.iterdir():
        if entry == kept or entry.name.startswith("."):
            continue
        folder = _folder_of(entry)
        if folder is not None and (folder == mine or not Path(folder).is_dir()):
            shutil.rmtree(entry, ignore_errors=True)


def _folder_of(entry: Path) -> str | None:
    """The model folder ``entry`` was made from, or None where its record cannot be read."""
    try:
        folder = json.loads((entry / META).read_text()).get("folder")
    except (OSError, ValueError, AttributeError):
        return None
    return folder if isinstance(folder, str) else None


class _TextFeatures(torch.nn.Module):
    """CLIP's text tower and projection as one module of token ids and mask: what is traced."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        found = self.clip.get_text_features(input_ids=ids, attention_mask=mask)  # type: ignore[operator]
        features: torch.Tensor = found if isinstance(found, torch.Tensor) else found.pooler_output
        return features


def save(
    entry: Path, plain: PlainClip, folder: Path, tower: ImageTower, image_size: int, logit_scale: float
) -> bool:
    """Trace ``plain``'s text tower and keep it with ``tower``'s graph in ``entry``; False where it cannot.

    Every text is padded to the tokenizer's limit, so the graph sees one sequence length (the
    causal mask keeps padding from reaching the end token the features are read at).
    """
    tokenizer = plain.processor.tokenizer
    positions: Any = getattr(plain.model.config.text_config, "max_position_embeddings", None)
    if positions is None:
        return False
    length = min(int(tokenizer.model_max_length), int(positions))
    if tower.graph is None or tokenizer.pad_token_id is None or not (folder / TOKENIZER).is_file():
        return False
    texts = ["a photo of a thing.", "x"]
    sample = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    module = _TextFeatures(plain.model).eval()
    try:
        with warnings.catch_warnings(), torch.inference_mode(), interpreted():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks it freezes
            text = torch.jit.trace(module, (sample["input_ids"], sample["attention_mask"]), check_trace=False)  # type: ignore[no-untyped-call]
            agree = torch.allclose(
                text(sample["input_ids"], sample["attention_mask"]),
                module(sample["input_ids"], sample["attention_mask"]),
                atol=1e-5,
            )
        if not agree:
            return False
        entry.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".making-", dir=entry.parent))
        try:
            with _quiet_jit():
                torch.jit.save(tower.graph, str(work / IMAGE))
                torch.jit.save(text, str(work / TEXT))
            shutil.copyfile(folder / TOKENIZER, work / TOKENIZER)
            meta = {
                "image_size": image_size,
                "logit_scale": logit_scale,
                "dimension": plain.get_embedding_dimension(),
                "max_length": length,
                "pad_id": int(tokenizer.pad_token_id),
                "pad_token": str(tokenizer.pad_token),
                "folder": str(folder.resolve()),
            }
            (work / META).write_text(json.dumps(meta))
            with contextlib.suppress(OSError):  # another process made it meanwhile: theirs is the same
                work.rename(entry)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        prune(entry)
    except Exception as exc:  # an unwritable cache or an untraceable tower: run as loaded, as before
        log.warning("model_not_compiled", entry=str(entry), reason=f"{type(exc).__name__}: {exc}")
        return False
    log.info("model_compiled", entry=str(entry))
    return True
