"""Honest "I don't know": which decisions are held back for a person to review.

Pure: a decision and thresholds in, a reason (or None) out. Off by default,
as the original scripts filed every picture somewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.classify.modes.base import Decision


@dataclass(frozen=True)
class ReviewPolicy:
    """Thresholds below which a file goes to ``Review/`` instead of a class."""

    min_confidence: float | None = None
    min_margin: float | None = None

    def hold_back(self, decision: Decision) -> str | None:
        """Why ``decision`` is too uncertain to act on, or None when it is fine."""
        if self.min_confidence is not None and decision.score < self.min_confidence:
            return f"confidence {decision.score:.3f} < {self.min_confidence:.3f}"
        if (
            self.min_margin is not None
            and decision.runner_up is not None
            and decision.margin < self.min_margin
        ):
            return f"margin {decision.margin:.3f} < {self.min_margin:.3f}"
        return None
