"""Event representations: EventGPT's event image, per-polarity count frames, a voxel grid.

All functions take an event array of dtype `EVENT_DTYPE` (x, y, t µs, p in {0, 1}) and the FIXED sensor size, so an
image's size never depends on where the events happen to fall.
"""

from __future__ import annotations

import numpy as np

from .event_dtype import EVENT_DTYPE

EVENT_IMAGE_POSITIVE = (255, 0, 0)  # red
EVENT_IMAGE_NEGATIVE = (0, 0, 255)  # blue


def _check(events: np.ndarray, width: int, height: int) -> None:
    if not isinstance(events, np.ndarray) or events.dtype.names is None or \
            not set(EVENT_DTYPE.names) <= set(events.dtype.names):
        raise ValueError(f"events: expected a structured array with fields {EVENT_DTYPE.names}")
    if width < 1 or height < 1:
        raise ValueError(f"sensor size {width}x{height}: expected positive width and height")
    if len(events):
        if int(events["x"].max()) >= width:
            raise ValueError(f"events: x up to {int(events['x'].max())}, outside the sensor width {width}")
        if int(events["y"].max()) >= height:
            raise ValueError(f"events: y up to {int(events['y'].max())}, outside the sensor height {height}")
        if int(events["p"].max()) > 1:
            raise ValueError(f"events: polarity {int(events['p'].max())}, expected 0 or 1")


def event_image(events: np.ndarray, width: int, height: int) -> np.ndarray:
    """EventGPT's event image of one window: uint8 [H, W, 3], white canvas, positive (p=1) events red (255, 0, 0),
    negative (p=0) events blue (0, 0, 255); where a pixel has several events the last one in array order wins.
    No counts, no time. An empty window gives a blank white image.

    Note: DSEC's own visualiser (`scripts/events_to_video.py`) uses the opposite colours (p=0 red, p=1 blue).
    We follow EventGPT, whose model was trained on these images.
    """
    _check(events, width, height)
    img = np.full((height, width, 3), 255, dtype=np.uint8)  # [H, W, 3]
    if len(events) == 0:
        return img
    pix = events["y"].astype(np.int64) * width + events["x"]
    # index of the last event at each pixel (np.unique on the reversed order finds first occurrences)
    rev = pix[::-1]
    uniq, first_in_rev = np.unique(rev, return_index=True)
    last = len(pix) - 1 - first_in_rev
    colours = np.where(events["p"][last, None] == 1, np.array(EVENT_IMAGE_POSITIVE, np.uint8),
                       np.array(EVENT_IMAGE_NEGATIVE, np.uint8))  # [U, 3]
    img.reshape(-1, 3)[uniq] = colours
    return img


def split_by_count(n_events: int, n_chunks: int) -> list[slice]:
    """EventGPT's split of a window into `n_chunks` pieces of equal event count; the last piece takes the remainder
    (so with fewer events than chunks, the first pieces are empty)."""
    if n_chunks < 1:
        raise ValueError(f"n_chunks={n_chunks}: expected at least 1")
    size = n_events // n_chunks
    return [slice(i * size, (i + 1) * size if i < n_chunks - 1 else n_events) for i in range(n_chunks)]


def event_images(events: np.ndarray, width: int, height: int, n: int = 5) -> np.ndarray:
    """`n` event images (uint8 [n, H, W, 3]) of the window split by equal event count (see `split_by_count`).
    EventGPT uses n = 5 (the single-image variant n = 1 is the whole window)."""
    _check(events, width, height)
    return np.stack([event_image(events[sl], width, height) for sl in split_by_count(len(events), n)])


def _time_range(events: np.ndarray, t_start_us: int | None, t_end_us: int | None, inclusive: bool) -> tuple[int, int]:
    """The time range a representation covers: the given bounds, or the events' own span (non-empty events)."""
    t0 = int(events["t"].min()) if t_start_us is None else int(t_start_us)
    t1 = int(events["t"].max()) + (0 if inclusive else 1) if t_end_us is None else int(t_end_us)
    if t1 < t0 or (t1 == t0 and not inclusive):
        raise ValueError(f"time range [{t0}, {t1}] µs: expected t_end_us > t_start_us")
    return t0, t1


def count_frames(events: np.ndarray, width: int, height: int, n_bins: int = 1, t_start_us: int | None = None,
                 t_end_us: int | None = None) -> np.ndarray:
    """Per-polarity event counts in `n_bins` equal time bins over [t_start_us, t_end_us) (default: the events'
    own span). Returns int32 [n_bins, 2, H, W], channel 0 = negative (p=0), 1 = positive (p=1).
    Events outside the range are ignored."""
    _check(events, width, height)
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins}: expected at least 1")
    out = np.zeros((n_bins, 2, height, width), dtype=np.int32)  # [B, 2, H, W]
    if len(events) == 0:
        return out
    t0, t1 = _time_range(events, t_start_us, t_end_us, inclusive=False)
    t = events["t"]
    inside = (t >= t0) & (t < t1)
    b = ((t[inside] - t0) * n_bins) // (t1 - t0)
    ev = events[inside]
    flat = ((b * 2 + ev["p"]) * height + ev["y"]) * width + ev["x"]
    out.reshape(-1)[:] = np.bincount(flat, minlength=out.size).astype(np.int32)
    return out


def voxel_grid(events: np.ndarray, width: int, height: int, n_bins: int = 5, t_start_us: int | None = None,
               t_end_us: int | None = None) -> np.ndarray:
    """Voxel grid (Zhu et al. 2019): float32 [n_bins, H, W]. Each event adds its polarity (+1 / -1) to the two time
    bins around its normalised time tau = (n_bins - 1) (t - t0) / (t1 - t0), with weights 1 - |tau - b|
    (bilinear in time only). Range [t_start_us, t_end_us] inclusive; default: first to last event, which then land
    in bins 0 and n_bins - 1. Events outside the range are ignored."""
    _check(events, width, height)
    if n_bins < 1:
        raise ValueError(f"n_bins={n_bins}: expected at least 1")
    if len(events) == 0:
        return np.zeros((n_bins, height, width), dtype=np.float32)
    t0, t1 = _time_range(events, t_start_us, t_end_us, inclusive=True)
    t = events["t"].astype(np.float64)
    inside = (t >= t0) & (t <= t1)
    ev, t = events[inside], t[inside]
    tau = (n_bins - 1) * (t - t0) / max(t1 - t0, 1)
    pol = np.where(ev["p"] == 1, 1.0, -1.0)
    pix = ev["y"].astype(np.int64) * width + ev["x"]
    lo = np.floor(tau).astype(np.int64)
    w_hi = tau - lo
    size = n_bins * height * width
    grid = np.bincount(lo * height * width + pix, weights=pol * (1.0 - w_hi), minlength=size)
    hi_ok = lo + 1 < n_bins
    grid += np.bincount((lo[hi_ok] + 1) * height * width + pix[hi_ok], weights=pol[hi_ok] * w_hi[hi_ok],
                        minlength=size)
    return grid.reshape(n_bins, height, width).astype(np.float32)  # [B, H, W]
