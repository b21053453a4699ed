"""The decoding processes' shared-memory slots page-locked for the GPU, once a slot (issue 37).

Why: a host-to-GPU copy is asynchronous and at full bus speed only from page-locked ("pinned")
memory; from ordinary pages the driver copies through a pinned bounce buffer of its own, a chunk at
a time, and the calling thread waits. The crops of a batch decoded in processes lie in a
shared-memory slot that the batch driver reuses batch after batch (:mod:`clipsort.decode.decodeprocesses`),
so the slot itself is registered with CUDA (``cudaHostRegister``) when it is mapped and unregistered
before it is unmapped, and the image tower copies a batch to the GPU straight from it
(:meth:`clipsort.encode.encoder.ImageTower.pixels`). Anything else (crops made one by one, a slot
the driver refused) is stacked into the tower's own pinned buffer, as before.

OS caveat: registering pins the pages in the kernel until unregistered, whatever happens to the
mapping: a slot unmapped while registered would leave its pages locked (and the registration
pointing at an address a later mapping may take), so the slot unregisters first, always
(:class:`clipsort.decode.decodeprocesses.Pinning`). A registration the driver refuses (a locked-memory
limit, ``RLIMIT_MEMLOCK`` under some containers) is logged once and the slot is used unpinned.
"""

from __future__ import annotations

from typing import Any

import structlog
import torch

log = structlog.get_logger()

_PORTABLE = 1  # cudaHostRegisterPortable: pinned for every CUDA context of the process


class CudaHostRegistration:
    """:class:`clipsort.decode.decodeprocesses.Pinning` through the CUDA runtime."""

    def __init__(self) -> None:
        self._refused = False  # logged once

    def register(self, address: int, nbytes: int) -> bool:
        """Page-lock ``nbytes`` at ``address`` for the GPU's copies; False where the driver refuses."""
        error = int(_runtime().cudaHostRegister(address, nbytes, _PORTABLE))
        if error and not self._refused:
            self._refused = True
            log.warning(
                "slot_not_pinned", cuda_error=error, bytes=nbytes, action="copied through a pinned buffer"
            )
        return error == 0

    def unregister(self, address: int) -> None:
        """Undo :meth:`register` (before the memory is unmapped)."""
        _runtime().cudaHostUnregister(address)


def _runtime() -> Any:
    """The CUDA runtime's functions as torch binds them (initialising CUDA where it is not yet)."""
    return torch.cuda.cudart()  # type: ignore[no-untyped-call]
