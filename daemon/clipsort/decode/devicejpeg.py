"""JPEGs decoded a batch at a time on the model's device (nvJPEG on CUDA), through torchvision.

Why: on a GPU host the model is nearly free and decoding is what is left; a 12-megapixel JPEG
costs a CPU core tens of milliseconds even drafted at a DCT scale. torchvision's ``decode_jpeg``
takes a list of encoded buffers and decodes them in one call on the GPU; the resize and the crop
follow there, and only the model's input (side x side x 3) comes back.

What takes this path: a file whose bytes are a baseline-looking JPEG the limits allow (the format,
its bytes, its pixels read from the header), in RGB or grey, ending in its end-of-image marker.
Everything else, and a JPEG the device's decoder refuses, is left to the CPU path (the pool this
wraps), which decodes it or rejects it with its reason: a truncated JPEG (still being written)
is never decoded in part here, and CMYK, a file with data after its end (a phone's motion photo)
or a decompression bomb get the CPU path's verdict. Every safety limit is the CPU path's: the
same :meth:`~clipsort.decode.images.DecodeLimits.read` (no symlink, regular file, size cap) and
the same pixel cap, from the header before any pixel is decoded.

The same input as the CPU path (:func:`~clipsort.decode.images.centre_crop`): EXIF orientation
applied as ``ImageOps.exif_transpose`` does, the shortest edge to the model's side with bicubic
filtering (antialiased when shrinking, as Pillow's), the centre crop with the processor's rounding.
Pixels differ by a few levels (Pillow drafts a JPEG at a DCT scale first); the decisions are the
same (``tests/integration/test_devicejpeg.py``, on the CPU).

torchvision is the ``gpu-decode`` extra, imported only when this decoder is made. Threads: one
that makes the device calls (``clipsort-jpeg_0``: a device's calls are best made from one thread)
and ``workers`` that read and hash the files (``clipsort-jpeg-read_N``; file reads and SHA-256
release the GIL). Pillow's header parser does not: about 0.16 ms of the interpreter's time per
file (bench/README.md), where the CPU path leaves that to its decoding processes.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import torch
from PIL import Image

from clipsort.decode.decodeprocesses import CANCELLED
from clipsort.decode.decoding import Decoded, Decoding, Prepare, collect
from clipsort.decode.images import Crop, DecodeLimits, pixel_limit
from clipsort.errors import ConfigError, ImageIncomplete, ImageRejected

log = structlog.get_logger()

JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
ORIENTATION = 0x0112  # the EXIF tag
# Decoded pixels per device call: 256 megapixels are 768 MB of RGB on the device, so a batch of
# 12-megapixel photos goes in calls of about twenty.
CALL_PIXELS = 256 * 2**20


@dataclass(frozen=True)
class Encoded:
    """A JPEG read for the device: its bytes, their hash, and what its header says."""

    data: bytes
    sha256: str
    width: int
    height: int
    orientation: int  # EXIF's, 1 when absent or unreadable (as exif_transpose leaves it)


def read_jpeg(path: Path, limits: DecodeLimits) -> Encoded | None:
    """``path``'s bytes when they are a JPEG for the device; None leaves the file to the CPU path.

    The CPU path reads such a file again and gives the verdict (and the reason) for it: what is
    refused here is refused without a word, and nothing is decided here but "this one is plain".
    """
    if "JPEG" not in limits.formats:
        return None
    try:
        data = limits.read(path)
    except ImageRejected:
        return None
    if not (data.startswith(JPEG_START) and data.endswith(JPEG_END)):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            width, height, mode = image.width, image.height, image.mode
            orientation = _orientation(image)
    except Exception:  # Pillow raises many types for a broken header: the CPU path says which
        return None
    if mode not in ("RGB", "L") or width * height > pixel_limit(limits.max_pixels):
        return None
    return Encoded(data, hashlib.sha256(data).hexdigest(), width, height, orientation)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ORIENTATION, 1)
    except Exception:  # a broken EXIF block: the picture as stored, as exif_transpose leaves it
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# What ImageOps.exif_transpose does for each EXIF orientation, on C x H x W.
_TURNS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda p: p.flip(-1),  # mirrored left to right
    3: lambda p: p.flip(-1).flip(-2),  # upside down
    4: lambda p: p.flip(-2),
    5: lambda p: p.transpose(-2, -1),  # Pillow's TRANSPOSE
    6: lambda p: torch.rot90(p, -1, (-2, -1)),  # Pillow's ROTATE_270: a quarter turn clockwise
    7: lambda p: p.transpose(-2, -1).flip(-1).flip(-2),  # Pillow's TRANSVERSE
    8: lambda p: torch.rot90(p, 1, (-2, -1)),  # Pillow's ROTATE_90
}


def upright(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """C x H x W turned as ``ImageOps.exif_transpose`` turns a picture with this EXIF orientation."""
    turn = _TURNS.get(orientation)
    return pixels if turn is None else turn(pixels)


def device_crop(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """3 x side x side float: the shortest edge to ``side`` (bicubic), the centre crop, as
    :func:`~clipsort.decode.images.centre_crop` (and CLIP's processor) round it."""
    height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
    short, long = min(height, width), max(height, width)
    scaled = int(side * long / short)
    size = (side, scaled) if width >= height else (scaled, side)
    resized = torch.nn.functional.interpolate(
        pixels[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False
    )[0]
    start = (scaled - side) // 2
    if width >= height:
        return resized[:, :, start : start + side]
    return resized[:, start : start + side, :]


def _calls(items: Sequence[tuple[int, Encoded]]) -> Iterator[list[tuple[int, Encoded]]]:
    """``items`` in runs of at most :data:`CALL_PIXELS` decoded pixels (at least one file each)."""
    run: list[tuple[int, Encoded]] = []
    pixels = 0
    for item in items:
        size = item[1].width * item[1].height
        if run and pixels + size > CALL_PIXELS:
            yield run
            run, pixels = [], 0
        run.append(item)
        pixels += size
    if run:
        yield run


class DeviceJpeg:
    """The threads and the device that decode JPEGs; :meth:`over` a CPU pool makes a :class:`Decoding`."""

    def __init__(self, device: str, workers: int) -> None:
        try:  # the gpu-decode extra: the settings check that it is installed, here that it loads
            import torchvision.io  # noqa: PLC0415
        except Exception as exc:  # a torchvision built for another torch fails as it registers its ops
            raise ConfigError(
                f"jpeg_decoder = 'torchvision': torchvision does not load beside torch "
                f"{torch.__version__} ({type(exc).__name__}: {exc}); install the build made for it, "
                "or set jpeg_decoder = 'pillow'"
            ) from None
        self._io: Any = torchvision.io
        self.device = device
        self.readers = ThreadPoolExecutor(workers, thread_name_prefix="clipsort-jpeg-read")
        self.caller = ThreadPoolExecutor(1, thread_name_prefix="clipsort-jpeg")
        self.cancelled = False  # closed with cancel: batches not yet decoded are given back

    def over(self, cpu: Decoding) -> JpegFirst:
        """JPEGs on the device, the rest (and what the device refuses) on ``cpu``."""
        return JpegFirst(self, cpu)

    def crops(self, items: Sequence[Encoded], side: int) -> list[Crop | None]:
        """The model's input for each JPEG, None for one the device's decoder refused."""
        crops: list[Crop | None] = [None] * len(items)
        for run in _calls(list(enumerate(items))):
            buffers = [torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for _, item in run]
            try:
                decoded: list[torch.Tensor | None] = list(
                    self._io.decode_jpeg(buffers, mode=self._io.ImageReadMode.RGB, device=self.device)
                )
            except RuntimeError:  # one file spoils a batched call: find which, one by one
                decoded = [self._one(buffer) for buffer in buffers]
            made = [
                (index, device_crop(upright(pixels, item.orientation), side))
                for (index, item), pixels in zip(run, decoded, strict=True)
                if pixels is not None
            ]
            if made:
                # One copy back per call: the crops go to the model as the CPU path's do.
                stacked = torch.stack([crop for _, crop in made]).round_().clamp_(0, 255).to(torch.uint8)
                host = stacked.permute(0, 2, 3, 1).contiguous().cpu().numpy()
                for (index, _), crop in zip(made, host, strict=True):
                    crops[index] = crop  # a view of one contiguous array: contiguous itself
        return crops

    def _one(self, buffer: torch.Tensor) -> torch.Tensor | None:
        try:
            pixels: torch.Tensor = self._io.decode_jpeg(
                buffer, mode=self._io.ImageReadMode.RGB, device=self.device
            )
        except RuntimeError:
            return None
        return pixels

    def close(self, *, wait: bool = True, cancel: bool = True) -> None:
        """Stop the threads; with ``cancel`` the batches not yet decoded come back not ready.

        No task is cancelled in the executors: a batch's futures are answered by its task, which
        then answers "not ready" (:class:`ImageIncomplete`: the daemon tries the files again), as
        the decoding processes do, rather than leaving them to time out as rejected.
        """
        self.cancelled = self.cancelled or cancel
        self.caller.shutdown(wait=wait)
        self.readers.shutdown(wait=wait)


@dataclass(frozen=True)
class JpegFirst:
    """A :class:`Decoding`: a batch's JPEGs decoded together on the device, the rest on ``cpu``."""

    engine: DeviceJpeg
    cpu: Decoding
    # The batches it handed to ``cpu`` (what the device refused, or every picture), under the first
    # future of the batch they are part of (the object, not its id(): it lives as long as the entry):
    # released with it.
    passed: dict[Future[Decoded], list[list[Future[Decoded]]]] = field(default_factory=dict)

    @property
    def limits(self) -> DecodeLimits:
        return self.cpu.limits

    @property
    def workers(self) -> int:
        return self.cpu.workers

    def start(
        self, paths: Sequence[Path], target: int, prepare: Prepare | None = None
    ) -> list[Future[Decoded]]:
        """Begin decoding ``paths`` to the model's input; pictures (no ``prepare``) are the CPU path's."""
        if prepare is None or not paths:
            started = self.cpu.start(paths, target, prepare)
            if started:
                self.passed[started[0]] = [started]
            return started
        futures: list[Future[Decoded]] = [Future() for _ in paths]
        self.passed[futures[0]] = []
        reads = [self.engine.readers.submit(read_jpeg, path, self.cpu.limits) for path in paths]
        self.engine.caller.submit(self._decode, list(paths), reads, target, prepare, futures)
        return futures

    def _decode(
        self,
        paths: list[Path],
        reads: list[Future[Encoded | None]],
        target: int,
        prepare: Prepare,
        futures: list[Future[Decoded]],
    ) -> None:
        if self.engine.cancelled:
            for future in futures:
                future.set_result(Decoded(ImageIncomplete(CANCELLED)))
            return
        try:
            encoded = [read.result() for read in reads]
            jpegs = [(index, item) for index, item in enumerate(encoded) if item is not None]
            crops = self.engine.crops([item for _, item in jpegs], target)
            for (index, item), crop in zip(jpegs, crops, strict=True):
                if crop is not None:
                    futures[index].set_result(Decoded(None, item.sha256, len(item.data), crop))
        except Exception as exc:  # the device failed (out of memory, a lost GPU): the CPU path decodes
            log.error("device_jpeg_failed", error=str(exc), files=len(paths), action="decoding on the CPU")
        rest = [index for index, future in enumerate(futures) if not future.done()]
        if rest:
            started = self.cpu.start([paths[index] for index in rest], target, prepare)
            # Before the first is passed on: collect() returns, and release() may come, only after.
            self.passed[futures[0]].append(started)
            for index, future in zip(rest, started, strict=True):
                future.add_done_callback(functools.partial(_pass_on, mine=futures[index]))

    def collect(self, futures: Sequence[Future[Decoded]], timeout: float) -> list[Decoded]:
        """:func:`~clipsort.decode.decoding.collect`, a file rejected after twice ``timeout``: a file
        the device leaves to the CPU path gets the timeout there too (where the decoding processes
        enforce it themselves, and retry a file whose worker died)."""
        return collect(futures, 2 * timeout)

    def release(self, futures: Sequence[Future[Decoded]]) -> None:
        """Release what the CPU pool decoded of this batch (the device's crops are its own arrays)."""
        for started in self.passed.pop(futures[0], []) if futures else []:
            self.cpu.release(started)

    def close(self, *, wait: bool = True, cancel: bool = True) -> None:
        """Nothing of its own: the engine and the CPU pool belong to their owner."""


def _pass_on(done: Future[Decoded], *, mine: Future[Decoded]) -> None:
    error = done.exception()
    if error is not None:
        mine.set_exception(error)
    else:
        mine.set_result(done.result())
