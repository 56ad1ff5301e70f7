"""Writers for small DSEC-format fixtures (events.h5, rectify_map.h5, images/timestamps.txt, PNG frames).

The files follow the layout of the real dataset (uzh-rpg/DSEC data-format page): ``events/{x,y,t,p}`` with t in µs
relative to ``t_offset``, ``ms_to_idx`` rebuilt as ``searchsorted(t, ms*1000, 'left')``, optional Blosc/zstd
compression through hdf5plugin, and one PNG per image timestamp named ``NNNNNN.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image


def ms_to_idx_for(t_rel: np.ndarray, extra_ms: int = 0) -> np.ndarray:
    """DSEC's ms_to_idx for sorted relative times: first index with t >= ms*1000, for ms = 0..last event's ms."""
    n_ms = (int(t_rel[-1]) // 1000 + 1 if t_rel.size else 1) + extra_ms
    return np.searchsorted(t_rel, np.arange(n_ms, dtype=np.int64) * 1000, side="left").astype(np.uint64)


def write_events_h5(path: Path, x: np.ndarray, y: np.ndarray, t_rel: np.ndarray, p: np.ndarray, t_offset: int, *,
                    compression: str | None = None, with_ms_to_idx: bool = True, extra_ms: int = 0,
                    t_dtype: Any = np.uint32) -> Path:
    """Write a DSEC ``events.h5``; ``compression`` is None, "gzip" or "blosc" (hdf5plugin.Blosc zstd)."""
    kw: dict[str, Any] = {}
    if compression == "blosc":
        import hdf5plugin

        kw = dict(hdf5plugin.Blosc(cname="zstd", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    elif compression == "gzip":
        kw = {"compression": "gzip"}
    if kw:
        kw["chunks"] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("events")
        g.create_dataset("x", data=np.asarray(x, np.uint16), **kw)
        g.create_dataset("y", data=np.asarray(y, np.uint16), **kw)
        g.create_dataset("t", data=np.asarray(t_rel, t_dtype), **kw)
        g.create_dataset("p", data=np.asarray(p, np.uint8), **kw)
        if with_ms_to_idx:
            f.create_dataset("ms_to_idx", data=ms_to_idx_for(np.asarray(t_rel, np.int64), extra_ms), **kw)
        f.create_dataset("t_offset", data=np.int64(t_offset))
    return path


def random_events(rng: np.random.Generator, n: int, duration_us: int, sensor_hw: tuple[int, int],
                  pinned_times: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """Sorted relative events; every time in ``pinned_times`` is present 3 times (duplicate timestamps)."""
    h, w = sensor_hw
    t = np.concatenate([rng.integers(0, duration_us, n), np.repeat(np.asarray(pinned_times, np.int64), 3)])
    t.sort(kind="stable")
    m = t.size
    return {"x": rng.integers(0, w, m).astype(np.uint16), "y": rng.integers(0, h, m).astype(np.uint16),
            "t": t.astype(np.int64), "p": rng.integers(0, 2, m).astype(np.uint8)}


def write_rectify_map(path: Path, sensor_hw: tuple[int, int]) -> np.ndarray:
    """A synthetic rectify map: x_rect = 0.9 x + 2.3, y_rect = 1.1 y - 1.4 (some pixels map outside)."""
    h, w = sensor_hw
    yy, xx = np.mgrid[0:h, 0:w]
    rmap = np.stack([0.9 * xx + 2.3, 1.1 * yy - 1.4], axis=-1).astype(np.float32)  # [H, W, 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("rectify_map", data=rmap)
    return rmap


def write_dsec_sequence(root: Path, name: str, rng: np.random.Generator, *, sensor_hw: tuple[int, int] = (24, 32),
                        t_offset: int = 7_000_000, n_frames: int = 50, frame_dt_us: int = 50_000,
                        first_image_rel_us: int = 20_000, events_per_s: int = 2000, compression: str | None = None,
                        drop_image_window_rel_us: tuple[int, int] | None = None,
                        frame_hw: tuple[int, int] = (6, 8)) -> dict[str, Any]:
    """Write a complete small DSEC sequence folder; return its ground truth (absolute event times, timestamps).

    Events cover [0, last image + 100 ms) relative to ``t_offset``; images are at ``t_offset + first_image_rel_us +
    i*frame_dt_us`` minus those in ``drop_image_window_rel_us`` (a gap in the image stream).
    """
    seq = root / name
    ts_rel = first_image_rel_us + np.arange(n_frames, dtype=np.int64) * frame_dt_us
    if drop_image_window_rel_us is not None:
        a, b = drop_image_window_rel_us
        ts_rel = ts_rel[(ts_rel < first_image_rel_us + a) | (ts_rel >= first_image_rel_us + b)]
    duration = int(ts_rel[-1]) + 100_000
    ev = random_events(rng, int(events_per_s * duration / 1e6), duration, sensor_hw)
    write_events_h5(seq / "events" / "left" / "events.h5", ev["x"], ev["y"], ev["t"], ev["p"], t_offset,
                    compression=compression)
    rmap = write_rectify_map(seq / "events" / "left" / "rectify_map.h5", sensor_hw)
    ts_abs = ts_rel + t_offset
    (seq / "images").mkdir(parents=True, exist_ok=True)
    (seq / "images" / "timestamps.txt").write_text("".join(f"{int(t)}\n" for t in ts_abs))
    img_dir = seq / "images" / "left" / "rectified"
    img_dir.mkdir(parents=True, exist_ok=True)
    for i in range(ts_abs.size):
        frame = rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8)
        Image.fromarray(frame).save(img_dir / f"{i:06d}.png", compress_level=1)
    t_abs = ev["t"] + t_offset
    return {"dir": seq, "x": ev["x"], "y": ev["y"], "t_abs": t_abs, "p": ev["p"], "timestamps": ts_abs,
            "rectify_map": rmap, "t_offset": t_offset}
