"""The one place that loads the CLIP model and turns pictures and text into vectors.

A model is a sentence-transformers name (``clip-ViT-B-32``, downloaded once
on a connected machine) or a local directory (a sentence-transformers folder
or a plain Hugging Face ``CLIPModel`` folder); a local directory never
touches the network. A plain ``CLIPModel`` folder is loaded with transformers
alone (:mod:`clipsort.encode.plainclip`), or on the CPU from its compiled copy
without transformers (:mod:`clipsort.encode.compiled`, where the caller names a
cache), the rest with sentence-transformers.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt
import structlog
import torch
from PIL import Image

from clipsort.decode.images import Crop, centre_crop, input_size
from clipsort.encode import compiled
from clipsort.encode.hub import DEMO_HINT, looks_like_path, require_available
from clipsort.encode.plainclip import PlainClip, is_plain_clip
from clipsort.encode.vectors import Vectors
from clipsort.encode.vocabulary import whole_words
from clipsort.errors import ModelLoadError

if TYPE_CHECKING:  # imported where a model is loaded: a fine-tuned-only run never needs it (3 s)
    import transformers
    from sentence_transformers import SentenceTransformer

    # What the encoder runs (see load_clip; a compiled copy of a plain CLIP folder, see Encoder).
    Loaded: TypeAlias = SentenceTransformer | PlainClip | compiled.CompiledClip

log = structlog.get_logger()

DEFAULT_LOGIT_SCALE = 100.0  # OpenAI CLIP's value, for models that do not carry one
_MODEL_CPU = [0.0]  # see model_cpu_seconds; added to once per batch, under _MODEL_CPU_LOCK
_MODEL_CPU_LOCK = threading.Lock()


def resolve_device(device: str) -> str:
    """``auto`` means CUDA, then Apple's MPS, then the CPU."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_threads(threads: int, device: str) -> int | None:
    """The model's operator threads for ``threads`` (0: automatic) on ``device``; None is torch's default.

    Automatic is torch's default (one per core) on the CPU, where the model does the work, and 1 on
    a GPU, where the host side only hands batches over and the cores are better left to decoding.
    """
    if threads:
        return threads
    return 1 if device.startswith("cuda") else None


def cpu_has_bf16() -> bool:
    """The CPU multiplies bf16 natively (AMX or AVX-512 BF16); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: fp16 on CUDA (as loaded), bf16 on a CPU that has it, else fp32."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if device == "cpu" and cpu_has_bf16() else "fp32"


def model_identity(name: str) -> str:
    """A short stable id of the weights, so caches never mix two models."""
    if not looks_like_path(name):
        return name
    folder = Path(name).expanduser().resolve()
    digest = hashlib.sha256(str(folder).encode())
    for item in sorted(folder.rglob("*")):
        if item.is_file() and item.suffix in (".json", ".safetensors", ".bin", ".txt"):
            status = item.stat()
            digest.update(f"{item.relative_to(folder)}:{status.st_size}:{status.st_mtime_ns}".encode())
    return f"{folder.name}-{digest.hexdigest()[:16]}"


def quiet_transformers() -> None:
    """Silence transformers' progress bars and notices: they mean nothing to a clipsort user.

    They would interleave with our structured log lines (a tqdm bar per
    weight file written, a load report with raw escape codes); real failures
    still surface as exceptions.
    """
    import transformers  # noqa: PLC0415  (4.6 s of CPU: only where a model is loaded with it)

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    # A tqdm bar, even a disabled one, starts tqdm's monitor thread for the life of the process.
    importlib.import_module("tqdm").tqdm.monitor_interval = 0


def load_model(model: str, device: str) -> SentenceTransformer:
    """A sentence-transformers model from a hub name or a local folder, or ModelLoadError.

    A hub name is looked for in the local cache first, so a model downloaded
    once starts without the network ever being asked.
    """
    if looks_like_path(model) and not Path(model).expanduser().is_dir():
        raise ModelLoadError(f"model path {model!r} does not exist or is not a folder")
    quiet_transformers()
    if looks_like_path(model):
        return _load(model, str(Path(model).expanduser()), device, local=True)
    try:
        return _load(model, model, device, local=True)
    except ModelLoadError:
        pass  # not in the cache: download it, if the hub can be reached
    require_available(model)
    return _load(model, model, device, local=False)


def load_clip(model: str, device: str) -> Loaded:
    """What the encoder runs: a plain CLIP folder with transformers alone (:mod:`.plainclip`: no
    sentence-transformers import, 1.3 s of CPU a start), anything else as :func:`load_model`."""
    folder = Path(model).expanduser()
    if not looks_like_path(model) or not is_plain_clip(folder):
        return load_model(model, device)
    quiet_transformers()
    try:
        loaded = PlainClip(folder, device)
    except Exception as exc:  # I/O and format errors all mean "cannot load"
        raise ModelLoadError(_explain(model, exc)) from None
    return loaded.half() if device.startswith("cuda") else loaded


def _load(model: str, source: str, device: str, *, local: bool) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415  (see the TYPE_CHECKING import)

    try:
        loaded = SentenceTransformer(source, device=device, local_files_only=local)
    except Exception as exc:  # hub, I/O and format errors all mean "cannot load"
        raise ModelLoadError(_explain(model, exc)) from None
    if device.startswith("cuda"):
        loaded.half()
    return loaded.eval()


def require_modalities(model: Loaded, name: str, needed: Sequence[str]) -> None:
    """ModelLoadError unless ``model`` encodes each of ``needed`` (``image``, ``text``)."""
    has = {str(modality) for modality in model.modalities}
    missing = [modality for modality in needed if modality not in has]
    if missing:
        raise ModelLoadError(
            f"model {name!r} is not a CLIP model: it cannot encode {' or '.join(missing)} "
            f"(it encodes {', '.join(sorted(has)) or 'nothing'}); clipsort needs one that encodes "
            'both images and text. A fine-tuned image classifier is used with mode = "finetuned"'
        )


def _explain(model: str, exc: Exception) -> str:
    if looks_like_path(model):
        return f"cannot load the model folder {model!r}: {exc}"
    return (
        f"cannot load hub model {model!r} ({type(exc).__name__}: {exc}). "
        "It is downloaded on first use, which needs a network connection; "
        f"on an offline machine give a local model folder instead ({DEMO_HINT})."
    )


class ImageTower:
    """CLIP's image side fed straight with pixels, skipping the processor's per-image float work.

    Pictures are centre-cropped on the CPU and sent to the device as uint8
    (a quarter of float32's bytes, pinned for an asynchronous copy on CUDA);
    the model takes them as they are, 0-255 in the crops' own layout, and
    turns them to floats a chunk at a time (see :class:`_PixelEmbeddings`,
    where scaling and CLIP's mean/std normalisation are folded into the
    patch weights). Outputs match the
    sentence-transformers path (a test holds them to it), which remains for
    models that are not a plain CLIPModel. Made by :func:`traced_tower`, or
    from a compiled copy's graph alone (:mod:`clipsort.encode.compiled`: no ``module``).
    """

    def __init__(
        self,
        size: int,
        device: str,
        graph: Callable[[torch.Tensor], torch.Tensor] | None,
        module: torch.nn.Module | None = None,
        bf16: bool = False,
    ) -> None:
        self.size = size
        self.device = device
        self.graph = graph
        self._module = module
        self.bf16 = bf16
        self._pinned: torch.Tensor | None = None  # see staging

    def crop(self, image: Image.Image) -> Crop:
        """:func:`~clipsort.decode.images.centre_crop` to this tower's input; thread-safe."""
        return centre_crop(image, self.size)

    def pixels(
        self, images: Sequence[Image.Image | Crop], out: npt.NDArray[np.uint8] | None = None
    ) -> torch.Tensor:
        """uint8 N x 3 x size x size of pictures, or of their :meth:`crop` where already made.

        Crops that are the consecutive rows of one array (a decoding slot's) are read where they
        are. With ``out`` (N or more crops' room, pinned: :meth:`staging`) they are stacked into it
        instead, unless their array is pinned itself (a slot registered for the GPU's copies:
        :mod:`clipsort.encode.pinned`).
        """
        crops = [item if isinstance(item, np.ndarray) else self.crop(item) for item in images]
        rows = _rows_of_one_array(crops)
        if rows is not None and (out is None or torch.from_numpy(rows).is_pinned()):
            return torch.from_numpy(rows).permute(0, 3, 1, 2)
        stacked = np.stack(crops, out=None if out is None else out[: len(crops)])
        return torch.from_numpy(stacked).permute(0, 3, 1, 2)

    def staging(self, count: int) -> npt.NDArray[np.uint8] | None:
        """Pinned host memory for ``count`` crops on CUDA, made once and grown, never made per batch.

        ``Tensor.pin_memory()`` per batch asked the driver for page-locked memory every batch (an
        allocation and a copy); a batch is stacked straight into this buffer instead. Reusing it is
        safe: its copy to the device is queued on the stream before the forward pass, whose result
        :meth:`__call__` brings back to the host, so the copy is done before the next batch writes.
        (The same holds for a pinned decoding slot copied from directly: the batch driver releases
        the slot once :meth:`__call__` has returned.) None off CUDA, where nothing is copied.
        """
        if not self.device.startswith("cuda"):
            return None
        if self._pinned is None or self._pinned.shape[0] < count:
            self._pinned = torch.empty((count, self.size, self.size, 3), dtype=torch.uint8, pin_memory=True)
        return self._pinned.numpy()

    def __call__(self, images: Sequence[Image.Image | Crop]) -> Vectors:
        staging = self.staging(len(images))
        pixels = self.pixels(images, staging)
        if staging is not None:
            pixels = pixels.to(self.device, non_blocking=True)
        started = time.thread_time()
        with torch.inference_mode():
            features = torch.nn.functional.normalize(self.forward(pixels).float(), dim=-1)
        vectors = np.asarray(features.cpu().numpy(), dtype=np.float32)
        with _MODEL_CPU_LOCK:
            _MODEL_CPU[0] += time.thread_time() - started
        return vectors

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """Projected image features of uint8 :meth:`pixels` (on the device), in the configured precision."""
        if self.graph is None:
            return self.eager(values)
        with compiled.interpreted():
            return self.graph(values)

    def eager(self, values: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` through the Python modules, one operator at a time."""
        if self._module is None:
            raise RuntimeError("a compiled image tower has its graph only")
        with _autocast(self.bf16):
            projected: torch.Tensor = self._module(values)
        return projected


def traced_tower(
    clip: transformers.CLIPModel, image_processor: Any, size: int, device: str, precision: str = "fp32"
) -> ImageTower:
    """The image tower of ``clip`` with its patch weights folded, traced where that works.

    bf16 on the CPU: the image side's weights are stored in bf16 and autocast keeps the
    precision-sensitive steps (layer norms, softmax) in fp32. Storing them matters: with fp32
    weights autocast recasts all of them on every batch, which cost ViT-B/32 a fifth of its rate on
    two cores (bench/README.md). The sentence-transformers image path is then unusable for this
    model; it is only used for models that have no tower.
    """
    bf16 = precision == "bf16" and device == "cpu"
    if bf16:
        clip.vision_model.to(torch.bfloat16)
        clip.visual_projection.to(torch.bfloat16)
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32) * 255
    std = torch.tensor(image_processor.image_std, dtype=torch.float32) * 255
    tower = ImageTower(size, device, None, _Projected(clip, mean, std).eval(), bf16)
    tower.graph = _trace(tower)
    return tower


def _autocast(bf16: bool) -> torch.autocast:
    """bf16 matrix products with fp32 norms where configured (CPU bf16); elsewhere it does nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def _trace(tower: ImageTower) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The image side recorded as a TorchScript graph, or None where that fails or disagrees.

    Why: the graph runs a whole forward pass in C++ without the GIL. Eager PyTorch takes the
    GIL back after each of the ~200 operators of ViT-B/32, and in the daemon the decoding,
    watching and intake threads hold it in between: beside one busy Python thread an eager
    forward ran at a third of its rate, the graph at full rate (bench/README.md). The trace
    records autocast's casts, so the graph is called outside autocast.
    """
    crops = torch.randint(0, 256, (2, tower.size, tower.size, 3), generator=torch.Generator().manual_seed(0))
    sample = crops.to(tower.device, torch.uint8).permute(0, 3, 1, 2)  # as ImageTower.pixels makes them
    try:
        with warnings.catch_warnings():
            # The tracer warns about every Python-level shape check it freezes; the image
            # size is fixed per model and the check below compares the result.
            warnings.simplefilter("ignore", _TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)  # transformers' attribute renames
            # Deprecated since torch 2.13 for torch.compile/torch.export, which compile C++ at
            # every start (bench/README.md); if tracing goes, the eager fallback below serves.
            warnings.filterwarnings("ignore", r"`torch\.jit\.trace", DeprecationWarning)
            with torch.inference_mode(), compiled.interpreted():
                with _autocast(tower.bf16):
                    graph: Callable[[torch.Tensor], torch.Tensor] = torch.jit.trace(  # type: ignore[no-untyped-call]
                        tower._module, sample, check_trace=False
                    )
                expected, traced = tower.eager(sample), graph(sample)
    except Exception as exc:  # an unusual model runs eagerly, as before
        log.warning("model_not_traced", reason=f"{type(exc).__name__}: {exc}")
        return None
    if not torch.allclose(traced.float(), expected.float(), rtol=1e-3, atol=1e-3):
        log.warning("model_not_traced", reason="the traced graph disagrees with the model")
        return None
    return graph


def _rows_of_one_array(crops: Sequence[Crop]) -> Crop | None:
    """The batch ``crops`` are, when they are consecutive rows of one array, as that array's view.

    The decoding processes hand a batch's crops as the rows of its shared-memory slot, in the
    batch's order (:mod:`clipsort.decode.decodeprocesses`): the model reads them there instead of
    a stacked copy of every picture (4.8 MB a batch of 32; bench/README.md, issue 37). Anything
    else (a rejected file between them, crops made one by one) is None, and stacked.
    """
    if not crops:
        return None
    first = crops[0]
    base = first.base  # numpy's base: the array (or view of a buffer) that the rows are cut from
    if not isinstance(base, np.ndarray) or not base.flags.c_contiguous or base.dtype != first.dtype:
        return None
    if any(
        crop.base is not base or crop.shape != first.shape or not crop.flags.c_contiguous for crop in crops
    ):
        return None
    addresses = [crop.__array_interface__["data"][0] for crop in crops]
    offset, apart = divmod(addresses[0] - base.__array_interface__["data"][0], first.itemsize)
    if apart or any(address != addresses[0] + k * first.nbytes for k, address in enumerate(addresses)):
        return None
    flat = base.reshape(-1)  # a view: base is contiguous
    if offset < 0 or offset + len(crops) * first.size > flat.size:
        return None
    rows: Crop = flat[offset : offset + len(crops) * first.size].reshape((len(crops), *first.shape))
    return rows


def _pictures(images: Sequence[Image.Image | Crop]) -> list[Image.Image]:
    """Pillow images for the sentence-transformers path (a crop is already the model's input size)."""
    return [Image.fromarray(item) if isinstance(item, np.ndarray) else item for item in images]


# Public parts of torch.jit that torch's type stubs do not re-export.
_TracerWarning: type[Warning] = torch.jit.TracerWarning  # type: ignore[attr-defined]


class _Projected(torch.nn.Module):
    """CLIP's vision tower and projection as one module, fed 0-255 pixels: what is traced.

    The tower is a shallow copy of ``clip``'s whose embeddings alone are replaced by
    :class:`_PixelEmbeddings`: every other weight is shared (no second copy in memory), and
    ``clip`` itself is untouched (training copies its vision weights as they are).
    """

    def __init__(self, clip: transformers.CLIPModel, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        tower = copy.copy(clip.vision_model)
        tower._modules = dict(tower._modules)
        tower.embeddings = _PixelEmbeddings(tower.embeddings, mean, std)
        self.tower = tower
        self.projection = clip.visual_projection

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        projected: torch.Tensor = self.projection(self.tower(pixel_values=values).pooler_output)
        return projected


# Pixel values per patch row converted to floats at a time (see _PixelEmbeddings): 64 pictures'
# chunks are 4 MiB of floats, reused by the allocator from one chunk to the next.
PATCH_CHUNK = 16384


class _PixelEmbeddings(torch.nn.Module):
    """CLIP's vision embeddings (patches, class token, positions) of uint8 0-255 pixels.

    The pixels arrive as the crops are stored, N x size x size x 3 (seen as N x 3 x size x size), and
    stay uint8 until each patch row's chunk of :data:`PATCH_CHUNK` values is multiplied. Why, on
    the CPU (bench/README.md, issue 37): casting a whole batch to floats first and running the
    patch convolution wrote several batch-sized buffers (a picture is 600 KB of floats), each a
    fresh allocation whose pages the kernel faulted in and zeroed, and oneDNN reordered the
    input into its own layout: about 0.9 ms of CPU a picture for a model whose arithmetic costs
    0.1. A patch embedding with stride equal to its kernel is a matrix product of the patches'
    rows, so it is done as one, chunk by chunk in floats that stay in cache, accumulated in fp32.

    Scaling to [0, 1] and CLIP's mean/std normalisation are folded into the weights: the
    product is linear, ``W . ((x - m) / s) = (W / s) . x - sum(W m / s)``, so the second term
    is one constant per output channel, a bias. Normalising a batch was three passes over
    every pixel, more than the two-layer stand-in model's whole forward pass.
    """

    weight: torch.Tensor  # width x (patch * patch * channels), buffers registered in __init__
    bias: torch.Tensor  # 1 x width, fp32

    def __init__(self, embeddings: Any, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        conv: torch.nn.Conv2d = embeddings.patch_embedding
        patch = int(conv.kernel_size[0])
        plain = conv.padding in ((0, 0), "valid") and conv.groups == 1
        assert plain and tuple(conv.stride) == tuple(conv.kernel_size) == (patch, patch), "ViT patches only"
        weight = conv.weight.detach().float()
        scale = (1 / std).view(1, -1, 1, 1)
        bias = -(weight * (mean.view(1, -1, 1, 1) * scale)).sum(dim=(1, 2, 3))
        if conv.bias is not None:
            bias = bias + conv.bias.detach().float()
        # One row per output channel, its values in the crops' own order (row, column, channel), so
        # a patch's pixels are one run; in the model's precision (0-255 are exact in bf16 and fp16),
        # its products' too. The product is taken as weights x patches (width x patches), not
        # patches x weights: with the stand-in's width of 8 against 150,528 values a patch, the
        # CPU's matrix product took half the time that way round (0.10 against 0.21 ms a picture,
        # fp32, one thread); with ViT-B/32's or the tests' model's shapes the two measured alike.
        rows = (weight * scale).permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
        self.register_buffer("weight", rows.to(conv.weight.dtype).contiguous(), persistent=False)
        self.register_buffer("bias", bias.view(1, -1), persistent=False)
        self.patch = patch
        self.grid = int(embeddings.image_size) // patch
        self.channels = int(conv.in_channels)
        self.class_embedding = embeddings.class_embedding
        self.position_embedding = embeddings.position_embedding

    def forward(
        self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool | None = False
    ) -> torch.Tensor:
        if interpolate_pos_encoding:
            raise ValueError("the image tower takes its own input size only")
        grid, patch, channels = self.grid, self.patch, self.channels
        pictures = pixel_values.permute(0, 2, 3, 1)  # the crops' own layout: a view, no copy
        if grid == 1:
            rows = pictures.reshape(pictures.shape[0], -1)
        else:  # one uint8 copy, a quarter of a float one, putting each patch's pixels together
            cut = pictures.reshape(-1, grid, patch, grid, patch, channels).permute(0, 1, 3, 2, 4, 5)
            rows = cut.reshape(-1, patch * patch * channels)
        # Each chunk's product in the weights' precision (autocast would cast the chunk twice),
        # summed in fp32 so that chunks of a long row add no rounding of their own.
        with torch.autocast(rows.device.type, enabled=False):
            weight, summed = self.weight, None
            for start in range(0, rows.shape[1], PATCH_CHUNK):
                chunk = rows[:, start : start + PATCH_CHUNK].to(weight.dtype)
                product = torch.mm(weight[:, start : start + PATCH_CHUNK], chunk.t()).float()
                summed = product if summed is None else summed + product
            assert summed is not None
            embedded = summed.t() + self.bias
        class_token: torch.Tensor = self.class_embedding
        patches = embedded.to(class_token.dtype).reshape(pixel_values.shape[0], grid * grid, -1)
        tokens = torch.cat([class_token.expand(patches.shape[0], 1, -1), patches], dim=1)
        positions: torch.Tensor = self.position_embedding.weight
        return tokens + positions


def image_tower(model: Loaded, size: int, device: str, precision: str) -> ImageTower | None:
    """The direct image path when ``model`` is a single CLIPModel module, else None."""
    if isinstance(model, compiled.CompiledClip):
        return ImageTower(model.image_size, "cpu", model.image_graph)
    import transformers  # noqa: PLC0415  (loaded already: the model is transformers')

    module = model[0]
    clip = getattr(module, "model", None)
    processor = getattr(getattr(module, "processor", None), "image_processor", None)
    if len(model) != 1 or not isinstance(clip, transformers.CLIPModel) or processor is None:
        return None
    return traced_tower(clip, processor, size, device, precision)


class Encoder:
    """A resident CLIP model that encodes batches into L2-normalised float32 rows.

    With ``text_model``, texts are encoded by that second model (e.g. a
    multilingual text encoder trained into CLIP's image space) and images by
    ``model``.
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        text_model: str | None = None,
        precision: str = "fp32",
        threads: int = 0,
        compiled_in: Path | None = None,
    ) -> None:
        self.name = model
        self.device = resolve_device(device)
        self.threads = resolve_threads(threads, self.device)
        self._applied = threading.local()  # which threads have had self.threads applied (see _on_this_thread)
        self.precision = resolve_precision(precision, self.device)
        log.info("model_loading", model=model, device=self.device)  # seconds: say so before, not only after
        # Cached vectors never mix precisions: bf16 ones differ in the last digits.
        self.identity = model_identity(model) + ("@bf16" if self.precision == "bf16" else "")
        entry = self._compiled_entry(compiled_in)
        found = None if entry is None else compiled.load(entry)
        self._model: Loaded = found if found is not None else load_clip(model, self.device)
        self._text = load_clip(text_model, self.device) if text_model else self._model
        require_modalities(self._model, model, ("image",) if text_model else ("image", "text"))
        if text_model:
            require_modalities(self._text, text_model, ("text",))
        self._cpu: Loaded | None = None  # loaded the first time the accelerator fails
        self.text_identity = f"{self.identity}+{model_identity(text_model)}" if text_model else self.identity
        self.image_size = (
            found.image_size
            if found is not None
            else input_size(getattr(getattr(self._model[0], "processor", None), "image_processor", None))
        )
        self.logit_scale = found.logit_scale if found is not None else self._logit_scale()
        self._tower = image_tower(self._model, self.image_size, self.device, self.precision)
        if (
            entry is not None
            and found is None
            and isinstance(self._model, PlainClip)
            and self._tower is not None
        ):
            folder = Path(model).expanduser()
            compiled.save(entry, self._model, folder, self._tower, self.image_size, self.logit_scale)
        log.info(
            "model_loaded",
            model=model,
            text_model=text_model,
            device=self.device,
            precision=self.precision,
            identity=self.identity,
            compiled=found is not None,
        )

    def _compiled_entry(self, root: Path | None) -> Path | None:
        """The compiled copy's entry under ``root`` where this model can have one (a plain CLIP folder
        on the CPU, :mod:`.compiled`), else None."""
        if root is None or self.device != "cpu" or not looks_like_path(self.name):
            return None
        if not is_plain_clip(Path(self.name).expanduser()):
            return None
        return compiled.entry_for(root, self.identity)

    def _logit_scale(self) -> float:
        """CLIP's learned temperature (100 for OpenAI's models), for turning cosines into probabilities."""
        scale = getattr(getattr(self._model[0], "model", None), "logit_scale", None)
        if isinstance(scale, torch.Tensor):
            return float(scale.detach().float().exp().item())
        return DEFAULT_LOGIT_SCALE

    @property
    def crop(self) -> Callable[[Image.Image], Crop] | None:
        """What turns a picture into the model's input ahead of :meth:`encode_images`; None if nothing can."""
        return None if self._tower is None else self._tower.crop

    def encode_images(self, images: Sequence[Image.Image | Crop]) -> Vectors:
        """One row per picture, or per picture already made into its :attr:`crop`."""
        self._on_this_thread()
        if self._tower is not None and images:
            return self._tower(images)
        return self._encode(self._model, _pictures(images))

    def encode_images_on_cpu(self, images: Sequence[Image.Image | Crop]) -> Vectors:
        """The last resort when the accelerator fails (out of memory): the same weights on the CPU."""
        if self.device == "cpu":
            return self.encode_images(images)
        if self._cpu is None:
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            self._cpu = load_clip(self.name, "cpu")
        return self._encode(self._cpu, _pictures(images))

    def encode_texts(self, texts: Sequence[str]) -> Vectors:
        """One row per text."""
        return self._encode(self._text, list(texts))

    def vocabulary(self) -> tuple[str, ...]:
        """The whole words the text encoder's tokenizer knows (the unknown gate's negative labels)."""
        tokenizer = getattr(self._text, "tokenizer", None)
        get_vocab = getattr(tokenizer, "get_vocab", None)
        return whole_words(get_vocab() if callable(get_vocab) else {})

    def _on_this_thread(self) -> None:
        """Apply :attr:`threads` on the calling thread, once per thread.

        Why per thread: part of the setting is the calling thread's own. After
        ``torch.set_num_threads(1)`` on the main thread, ATen's loops on another thread kept to
        one core, but an MKL matrix product there still kept two busy (measured, 2 cores), so
        the thread that runs the model sets it itself.
        """
        if self.threads is not None and not getattr(self._applied, "done", False):
            torch.set_num_threads(self.threads)
            self._applied.done = True

    def _encode(self, model: Loaded, items: list[Image.Image] | list[str]) -> Vectors:
        self._on_this_thread()
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with torch.inference_mode():
            vectors = model.encode(
                items,
                batch_size=len(items),
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    @property
    def dimension(self) -> int:
        size = self._model.get_embedding_dimension()
        return int(size) if size else 0


def model_cpu_seconds() -> float:
    """The CPU this process spent in image forward passes so far (the model's, not the pipeline's).

    Measured with the thread CPU clock of the thread that runs the model, around the forward pass
    and the copy of its vectors: all of it with ``model_threads = 1`` (a GPU host's automatic
    value), where ATen runs every operator on that thread. With more operator threads, their CPU
    is not in it. On a GPU this is what it costs the CPU to launch the kernels and wait; with the
    benchmarks' near-free model on the CPU, it is the stand-in's own work, which a GPU would do.
    """
    with _MODEL_CPU_LOCK:
        return _MODEL_CPU[0]
