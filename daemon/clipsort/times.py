"""Times people type: ``--since`` on the command line and the review page's filter.

An ISO 8601 time (``2026-11-26``, ``2026-11-26T14:00``) or an age (``90m``, ``2d``).
"""

from __future__ import annotations

import re
from datetime import datetime

from clipsort.errors import JournalError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float) -> float:
    """Epoch seconds from ISO 8601 (``2026-11-26``, ``2026-11-26T14:00``) or an age (``90m``, ``2d``)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        return now - float(relative.group(1)) * _SECONDS[relative.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise JournalError(
            f"cannot read --since {text!r}: give a time like 2026-11-26T14:00 or an age like 30m, 2h, 3d"
        ) from None
