"""Honest "I don't know": which decisions are held back for a person to review, and why.

Pure: a decision and thresholds in, a :class:`Hold` (or None) out. Two
reasons, kept apart everywhere they are reported: ``unknown``, the picture
failed the "none of these" gate (:mod:`clipsort.classify.unknown`; on by
default), and ``uncertain``, its best class is not probable enough or too
close to the runner-up (``min_confidence``, ``min_margin``; off by default,
as the original scripts filed every picture somewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clipsort.classify.modes.base import Decision

Reason = Literal["unknown", "uncertain"]
REASONS: tuple[Reason, ...] = ("unknown", "uncertain")


@dataclass(frozen=True)
class Hold:
    """Why a decision goes to ``Review/``: the reason, and the numbers behind it."""

    reason: Reason
    detail: str


@dataclass(frozen=True)
class ReviewPolicy:
    """Thresholds below which a file goes to ``Review/`` instead of a class."""

    min_confidence: float | None = None
    min_margin: float | None = None

    def hold_back(self, decision: Decision) -> Hold | None:
        """Why ``decision`` should not be acted on, or None when it is fine; unknown before uncertain."""
        if decision.familiar is not None and not decision.familiar.known:
            return Hold("unknown", str(decision.familiar))
        if self.min_confidence is not None and decision.score < self.min_confidence:
            return Hold("uncertain", f"confidence {decision.score:.3f} < {self.min_confidence:.3f}")
        if (
            self.min_margin is not None
            and decision.runner_up is not None
            and decision.margin < self.min_margin
        ):
            return Hold("uncertain", f"margin {decision.margin:.3f} < {self.min_margin:.3f}")
        return None
