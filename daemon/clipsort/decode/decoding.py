"""Reading and decoding inbox files in threads, beside the inference thread.

Threads suffice: Pillow and hashlib release the GIL for the heavy parts
(the entropy decoding, the resize, the hash), so batch k+1 decodes while
the model encodes batch k. A process pool handing over one picture per file
was measured and not adopted (bench/README.md): the parent's share of its
per-file work held the GIL about as long as a threaded decode. The daemon's
CLIP path decodes in processes that hand over a whole batch per message
instead (:mod:`clipsort.decode.decodeprocesses`); these threads remain for
what needs Pillow pictures (fine-tuned checkpoints, references).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from clipsort.decode.images import Crop, DecodeLimits
from clipsort.errors import ImageRejected

Picture = Image.Image | ImageRejected | None  # None: decoded to its crop only (in a decoding process)
Prepare = Callable[[Image.Image], Crop]

# How much larger than the model's input a picture with a crop may stay. A JPEG drafted at the
# smallest DCT scale that covers the input is at most twice as large on each side, and shrinking
# it first cost one more full resize (320x240 to 299x224 took 0.79 ms, the crop's own resize of
# the drafted picture 0.6 ms); pictures larger than this are still shrunk first, to bound memory.
CROP_SLACK = 2.0


@dataclass(frozen=True)
class Decoded:
    """A file read once: its picture (or why there is none) and what identifies its bytes.

    The picture's shortest edge is the decoding target, or with a crop up to
    :data:`CROP_SLACK` times that.
    """

    picture: Picture
    sha256: str = ""  # empty when the file could not be read at all
    size: int = 0
    # The picture as the model's input, when it was prepared here. A decoding process's crop is lent
    # from its batch's shared memory: read it before the batch is released (Decoding.release).
    crop: Crop | None = None


def read_and_decode(path: Path, limits: DecodeLimits, target: int, prepare: Prepare | None = None) -> Decoded:
    """Read ``path`` once; hash and decode the same bytes; ``prepare`` the model's input from the picture."""
    try:
        data = limits.read(path)
    except ImageRejected as exc:
        # Unread bytes have no hash, but the size still tells undo and recovery that the file
        # lying there later is this one (an empty file, one over the size cap).
        return Decoded(exc, "", _size(path))
    digest = hashlib.sha256(data).hexdigest()
    try:
        # A picture about to be cropped is left as drafted: the crop's one resize replaces two.
        picture = limits.decode(data, target, slack=1.0 if prepare is None else CROP_SLACK)
    except ImageRejected as exc:
        return Decoded(exc, digest, len(data))
    return Decoded(picture, digest, len(data), None if prepare is None else prepare(picture))


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


class Decoding(Protocol):
    """What the batch driver decodes with: :class:`DecodePool` (threads) or a process pool."""

    @property
    def limits(self) -> DecodeLimits:
        """What a file may be to be decoded."""

    @property
    def workers(self) -> int:
        """How many files it decodes at once."""

    def start(
        self, paths: Sequence[Path], target: int, prepare: Prepare | None = None
    ) -> list[Future[Decoded]]:
        """Begin decoding ``paths``."""

    def collect(self, futures: Sequence[Future[Decoded]], timeout: float) -> list[Decoded]:
        """The decoded files, within ``timeout`` seconds of decoding each."""

    def release(self, futures: Sequence[Future[Decoded]]) -> None:
        """Done with the crops of the batch :meth:`start` returned ``futures`` for: the memory they
        are lent from may take another batch. Each batch started is released once, after it is
        collected; a pool that lends nothing does nothing."""

    def close(self, *, wait: bool = True, cancel: bool = True) -> None:
        """Stop decoding."""


class DecodePool:
    """``workers`` threads that read and decode files while the model runs."""

    def __init__(self, limits: DecodeLimits, workers: int) -> None:
        self.limits = limits  # replaceable: each file is decoded within the limits in force when submitted
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="clipsort-decode")

    def start(
        self, paths: Sequence[Path], target: int, prepare: Prepare | None = None
    ) -> list[Future[Decoded]]:
        """Begin decoding ``paths`` to pictures whose shortest edge is ``target`` (see :func:`collect`).

        With ``prepare`` (the encoder's :attr:`~clipsort.encode.encoder.Encoder.crop`) each picture is also
        made into the model's input here, so the model's thread only stacks them.
        """
        return [self._executor.submit(read_and_decode, path, self.limits, target, prepare) for path in paths]

    def collect(self, futures: Sequence[Future[Decoded]], timeout: float) -> list[Decoded]:
        """:func:`collect`."""
        return collect(futures, timeout)

    def release(self, futures: Sequence[Future[Decoded]]) -> None:
        """Nothing to give back: each crop here is its own array."""

    def close(self, *, wait: bool = True, cancel: bool = True) -> None:
        """Stop the threads; with ``wait=False`` a decode in progress is abandoned, not awaited.

        ``cancel=False`` lets the files already submitted be decoded first (a pool being replaced).
        """
        self._executor.shutdown(wait=wait, cancel_futures=cancel)

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def collect(futures: Sequence[Future[Decoded]], timeout: float) -> list[Decoded]:
    """The decoded files; one still decoding after ``timeout`` seconds is rejected.

    Its thread cannot be interrupted and finishes on its own (the pixel and
    size caps bound how long); the file no longer waits for it.
    """
    deadline = time.monotonic() + timeout
    decoded = []
    for future in futures:
        try:
            decoded.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            decoded.append(Decoded(ImageRejected(f"decoding took longer than {timeout:g} s")))
    return decoded
