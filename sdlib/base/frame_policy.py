"""The target's frame-sampling policy: which frames of a clip Video-LLaVA sees (8, spread uniformly), the same for
simulated and DSEC clips."""

import numpy as np

RGB_FRAMES = 8  # frames per clip the target sees (Video-LLaVA's 8-frame input)


def uniform_frame_indices(n_total: int, n: int = RGB_FRAMES) -> np.ndarray:
    """THE frame-sampling policy for the target's input: `n` indices spread uniformly over `n_total` frames,
    `arange(0, n_total, n_total / n).astype(int)` as in Video-LLaVA's documentation (the first frame is always
    included, the last usually is not)."""
    if n < 1 or n_total < n:
        raise ValueError(f"uniform_frame_indices: need 1 <= n <= n_total, got n={n}, n_total={n_total}")
    return np.arange(0, n_total, n_total / n).astype(np.int64)[:n]  # [n]
