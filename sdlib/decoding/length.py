"""Dynamic draft length from the event stream: a calm scene (few events) is easier to predict than a busy one, so it
may deserve longer drafts. Whether it does is an empirical question the benchmark answers (acceptance per activity
bucket, and the speedup of the policy against a fixed length).

The other dynamic policy, the drafter's own confidence, lives in the drafters (``min_confidence``), since it is
decided token by token while drafting; this one is decided once per request, from the drafter's input, before any
model runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np


def event_activity(images: np.ndarray) -> float:
    """Share of pixels holding at least one event in EventGPT-style event images (uint8 ``[..., H, W, 3]``, a white
    canvas with coloured event pixels; several images are averaged)."""
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"event images: expected uint8 [..., H, W, 3], got {a.dtype} {a.shape}")
    return float((a != 255).any(axis=-1).mean())


@dataclass(frozen=True)
class ActivityLength:
    """``k_calm`` drafts for a request whose event activity is below ``threshold``, else ``k_busy``."""

    threshold: float
    k_calm: int
    k_busy: int

    def __post_init__(self) -> None:
        if self.k_calm < 1 or self.k_busy < 1:
            raise ValueError(f"draft lengths {self.k_calm}, {self.k_busy}: expected >= 1")

    def __call__(self, activity: float) -> int:
        return self.k_calm if activity < self.threshold else self.k_busy

    @classmethod
    def calibrated(cls, activities: Iterable[float], k_calm: int, k_busy: int) -> "ActivityLength":
        """The threshold at the median activity of ``activities`` (take them from the validation split)."""
        values = np.asarray(list(activities), dtype=float)
        if values.size == 0:
            raise ValueError("no activities to calibrate the threshold on")
        return cls(float(np.median(values)), k_calm, k_busy)
