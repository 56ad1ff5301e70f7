"""DSEC (the `real` profile's data): read ``events.h5``, slice exact time windows, rectify, cut 1 s clips, and write
them in the dataset layout of :mod:`sdlib.data.layout`.

A DSEC sequence folder looks like::

    <seq>/events/<camera>/events.h5          events/{x,y,t,p}, ms_to_idx, t_offset (Blosc/zstd compressed)
    <seq>/events/<camera>/rectify_map.h5     rectify_map [H, W, 2] float
    <seq>/images/timestamps.txt              one int µs timestamp per image
    <seq>/images/<camera>/rectified/NNNNNN.png

Slicing follows the official ``EventSlicer``: subtract ``t_offset`` from the window bounds, take a conservative
millisecond window through ``ms_to_idx``, refine it exactly (``np.searchsorted``) to the half-open window
``[t0, t1)``, and add ``t_offset`` back. ``hdf5plugin`` (needed for DSEC's Blosc compression) is imported only when a
file needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from sdlib import paths
from sdlib.base.represent import event_image, event_images
from sdlib.data.errors import DataError
from sdlib.data.eventfile import EVENT_DTYPE, make_events, validate_events
from sdlib.data.layout import SPLIT_SALT, ClipData, DatasetWriter, assign_split, check_disjoint

__all__ = [
    "DSEC_SENSOR_HW",
    "DsecEvents",
    "DsecSequence",
    "DsecClip",
    "build_dsec",
    "dsec_sequences",
    "open_sequence",
    "read_image_timestamps",
    "load_rectify_map",
    "rectify_events",
    "rectify_to_pixels",
    "clip_windows",
    "iter_clips",
    "render_event_images",
    "build_dsec_split",
]

DSEC_SENSOR_HW: tuple[int, int] = (480, 640)
"""(H, W) of the DSEC event cameras."""
_EVENT_KEYS = ("events/x", "events/y", "events/t", "events/p")
_LAYOUT = "events/{x,y,t,p}, ms_to_idx, t_offset"


def _h5py() -> Any:
    import h5py  # local: keeps `import sdlib.data` light

    return h5py


def _open_h5(path: Path, what: str) -> Any:
    """Open an HDF5 file read-only; a missing, truncated or non-HDF5 file gives a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{what} {path}: not found", source=path, expected=f"existing {what}")
    try:
        return _h5py().File(path, "r")
    except OSError as e:
        raise DataError(f"{what} {path}: cannot be opened as HDF5 ({e}); expected a complete HDF5 file (truncated "
                        f"or corrupt download?)", source=path, expected="complete HDF5 file") from e


def _ensure_filters(ds: Any, path: Path, what: str) -> None:
    """Make sure every HDF5 filter of dataset ``ds`` can be decoded, importing ``hdf5plugin`` lazily if needed."""
    h5py = _h5py()
    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        fid, _, _, fname = plist.get_filter(i)
        if h5py.h5z.filter_avail(fid):
            continue
        name = fname.decode(errors="replace") if isinstance(fname, bytes) else str(fname)
        try:
            import hdf5plugin  # noqa: F401  (registers Blosc & co. with HDF5 on import)
        except ImportError:
            raise DataError(f"{what} {path}: dataset {ds.name} is compressed with HDF5 filter {fid} ({name}, DSEC uses "
                            f"Blosc/zstd), which h5py cannot decode without the plugin; install it with "
                            f"`pip install hdf5plugin`", source=path, expected="hdf5plugin installed") from None
        if not h5py.h5z.filter_avail(fid):
            raise DataError(f"{what} {path}: dataset {ds.name} uses HDF5 filter {fid} ({name}), which is not "
                            f"available even with hdf5plugin", source=path, expected="a decodable HDF5 filter")


class DsecEvents:
    """One DSEC ``events.h5``: validated at open, sliced by exact half-open time windows.

    Times in the API are absolute µs (the image clock: file ``t`` + ``t_offset``). ``sensor_hw`` bounds the pixel
    coordinates; events outside it, unsorted timestamps, or a ``ms_to_idx`` inconsistent with ``t`` raise
    :class:`DataError` naming the file and the index. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, sensor_hw: tuple[int, int] = DSEC_SENSOR_HW) -> None:
        self.path = Path(path)
        self.sensor_hw = (int(sensor_hw[0]), int(sensor_hw[1]))
        self._f = _open_h5(self.path, "events file")
        try:
            self._init()
        except BaseException:
            self._f.close()
            raise

    def _init(self) -> None:
        f, path = self._f, self.path
        h5py = _h5py()
        for key in (*_EVENT_KEYS, "ms_to_idx", "t_offset"):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise DataError(f"events file {path}: missing dataset '{key}'; expected the DSEC layout {_LAYOUT}",
                                source=path, expected=_LAYOUT)
        self._ds = {k.split("/")[1]: f[k] for k in _EVENT_KEYS}
        lens = {k: (ds.shape[0] if ds.ndim == 1 else None) for k, ds in self._ds.items()}
        if None in lens.values() or len(set(lens.values())) != 1:
            raise DataError(f"events file {path}: events/x, y, t, p have shapes "
                            f"{ {k: ds.shape for k, ds in self._ds.items()} }; expected 1-D arrays of one length",
                            source=path, expected="equal-length 1-D event arrays")
        for ds in (*self._ds.values(), f["ms_to_idx"], f["t_offset"]):
            _ensure_filters(ds, path, "events file")
        self.n_events: int = int(lens["t"])
        try:
            self.t_offset: int = int(np.asarray(f["t_offset"][()]).reshape(-1)[0])
            ms = np.asarray(f["ms_to_idx"][()]).reshape(-1)
        except (OSError, IndexError, ValueError) as e:
            raise DataError(f"events file {path}: cannot read t_offset / ms_to_idx ({e}); expected a scalar t_offset "
                            f"and a 1-D ms_to_idx", source=path, expected="t_offset, ms_to_idx") from e
        if ms.size == 0 or not np.issubdtype(ms.dtype, np.integer):
            raise DataError(f"events file {path}: ms_to_idx has {ms.size} entries of dtype {ms.dtype}; expected >= 1 "
                            f"integer index per millisecond", source=path, expected="non-empty integer ms_to_idx")
        self.ms_to_idx = ms.astype(np.int64)
        bad = np.flatnonzero(np.diff(self.ms_to_idx) < 0)
        if bad.size or self.ms_to_idx[0] < 0 or self.ms_to_idx[-1] > self.n_events:
            at = int(bad[0]) + 1 if bad.size else (0 if self.ms_to_idx[0] < 0 else len(ms) - 1)
            raise DataError(f"events file {path}: ms_to_idx is invalid at ms {at} (value {int(self.ms_to_idx[at])}); "
                            f"expected non-decreasing indices in [0, {self.n_events}]", source=path,
                            expected="non-decreasing ms_to_idx within the event count")

    # ---- basic facts -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_events

    def __enter__(self) -> "DsecEvents":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the HDF5 file."""
        self._f.close()

    def _read(self, key: str, sl: slice | int) -> np.ndarray:
        try:
            return np.asarray(self._ds[key][sl])
        except OSError as e:
            raise DataError(f"events file {self.path}: cannot read events/{key}[{sl}] ({e}); expected readable data "
                            f"(truncated or corrupt file?)", source=self.path, expected="readable event data") from e

    @property
    def t_first(self) -> int | None:
        """Absolute µs of the first event (None if the file has no events)."""
        return int(self._read("t", 0)) + self.t_offset if self.n_events else None

    @property
    def t_last(self) -> int | None:
        """Absolute µs of the last event (None if the file has no events)."""
        return int(self._read("t", self.n_events - 1)) + self.t_offset if self.n_events else None

    # ---- slicing -----------------------------------------------------------------------------------------------
    def index_range(self, t0: int, t1: int) -> tuple[int, int]:
        """Indices ``[i0, i1)`` of the events with absolute ``t0 <= t < t1`` (µs); equal to
        ``np.searchsorted(t_abs, [t0, t1], "left")`` over the whole stream, also for empty windows.

        ms-window lookup through ``ms_to_idx`` (conservative: ``floor(t0/1000)``, ``ceil(t1/1000)``), checked
        against ``t`` at its two ends, then exact refinement with ``np.searchsorted`` on the loaded chunk.
        """
        t0, t1 = int(t0), int(t1)
        if t1 < t0:
            raise ValueError(f"events file {self.path}: window [{t0}, {t1}) has t1 < t0")
        if self.n_events == 0:
            return (0, 0)
        r0, r1 = t0 - self.t_offset, t1 - self.t_offset  # relative to the file's t
        n_ms = self.ms_to_idx.shape[0]
        ms0, ms1 = r0 // 1000, -((-r1) // 1000)  # floor, ceil
        if ms0 < 0:
            idx0, m0 = 0, None
        else:
            m0 = min(ms0, n_ms - 1)
            idx0 = int(self.ms_to_idx[m0])
        if ms1 >= n_ms:
            idx1, m1 = self.n_events, None
        else:
            m1 = max(ms1, 0)
            idx1 = int(self.ms_to_idx[m1])
        # ms_to_idx's contract: t[ms_to_idx[m] - 1] < m*1000 <= t[ms_to_idx[m]]; check it where we rely on it
        if m0 is not None and idx0 > 0 and int(self._read("t", idx0 - 1)) >= m0 * 1000:
            raise DataError(f"events file {self.path}: ms_to_idx[{m0}]={idx0} but t[{idx0 - 1}]="
                            f"{int(self._read('t', idx0 - 1))} >= {m0 * 1000}; expected t[ms_to_idx[ms]-1] < ms*1000",
                            source=self.path, expected="ms_to_idx consistent with t")
        if m1 is not None and idx1 < self.n_events and int(self._read("t", idx1)) < m1 * 1000:
            raise DataError(f"events file {self.path}: ms_to_idx[{m1}]={idx1} but t[{idx1}]="
                            f"{int(self._read('t', idx1))} < {m1 * 1000}; expected t[ms_to_idx[ms]] >= ms*1000",
                            source=self.path, expected="ms_to_idx consistent with t")
        if idx1 <= idx0:
            return (idx0, idx0)
        t = self._read("t", slice(idx0, idx1)).astype(np.int64)
        bad = np.flatnonzero(t[1:] < t[:-1])
        if bad.size:
            i = idx0 + int(bad[0]) + 1
            raise DataError(f"events file {self.path}: t is not sorted at index {i} (t[{i - 1}]={int(t[bad[0]])} > "
                            f"t[{i}]={int(t[bad[0] + 1])}); expected non-decreasing timestamps", source=self.path,
                            expected="t sorted")
        i0 = idx0 + int(np.searchsorted(t, r0, side="left"))
        i1 = idx0 + int(np.searchsorted(t, r1, side="left"))
        return (i0, i1)

    def get_events(self, t0: int, t1: int) -> np.ndarray:
        """Events with absolute ``t0 <= t < t1`` (µs) as :data:`EVENT_DTYPE`, t absolute (``t_offset`` added).

        A window with no events (before the first, after the last, or between events) returns an empty array.
        """
        i0, i1 = self.index_range(t0, t1)
        if i1 <= i0:
            return np.empty(0, dtype=EVENT_DTYPE)
        sl = slice(i0, i1)
        x, y, p = self._read("x", sl), self._read("y", sl), self._read("p", sl)
        t = self._read("t", sl).astype(np.int64) + self.t_offset
        raw = np.empty(i1 - i0, dtype=[("x", x.dtype), ("y", y.dtype), ("t", np.int64), ("p", p.dtype)])
        raw["x"], raw["y"], raw["t"], raw["p"] = x, y, t, p
        return validate_events(raw, self.sensor_hw, f"events file {self.path}", index_offset=i0)


# --------------------------------------------------------------------------------------------------------------
# rectification


def load_rectify_map(path: str | Path, sensor_hw: tuple[int, int] = DSEC_SENSOR_HW) -> np.ndarray:
    """Read ``rectify_map.h5`` -> float32 [H, W, 2] (x_rect, y_rect per distorted pixel); DataError if malformed."""
    path = Path(path)
    with _open_h5(path, "rectify map file") as f:
        if "rectify_map" not in f:
            raise DataError(f"rectify map file {path}: missing dataset 'rectify_map'; expected rectify_map [H, W, 2]",
                            source=path, expected="dataset rectify_map")
        ds = f["rectify_map"]
        _ensure_filters(ds, path, "rectify map file")
        try:
            rmap = np.asarray(ds[()], dtype=np.float32)
        except OSError as e:
            raise DataError(f"rectify map file {path}: cannot read rectify_map ({e})", source=path,
                            expected="readable rectify_map") from e
    h, w = sensor_hw
    if rmap.shape != (h, w, 2):
        raise DataError(f"rectify map file {path}: rectify_map has shape {rmap.shape}; expected {(h, w, 2)}",
                        source=path, expected=f"shape {(h, w, 2)}")
    return rmap


def rectify_events(events: np.ndarray, rectify_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel rectified coordinates: ``xy_rect = rectify_map[y, x]``; returns (x_rect, y_rect) float32 [n]."""
    xy = rectify_map[events["y"].astype(np.intp), events["x"].astype(np.intp)]  # [n, 2]
    return xy[:, 0], xy[:, 1]


def rectify_to_pixels(events: np.ndarray, rectify_map: np.ndarray,
                      sensor_hw: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Rectified events on the pixel grid: coordinates rounded to the nearest pixel, events landing outside
    ``sensor_hw`` dropped. Returns (events [m] EVENT_DTYPE, number dropped)."""
    xr, yr = rectify_events(events, rectify_map)
    xi, yi = np.rint(xr), np.rint(yr)
    h, w = sensor_hw
    keep = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h) & np.isfinite(xi) & np.isfinite(yi)
    out = make_events(xi[keep].astype(np.uint16), yi[keep].astype(np.uint16), events["t"][keep], events["p"][keep])
    return out, int((~keep).sum())


# --------------------------------------------------------------------------------------------------------------
# images, timestamps, clips


def read_image_timestamps(path: str | Path) -> np.ndarray:
    """``images/timestamps.txt`` -> int64 µs [n]; DataError naming the file and line if missing, unparsable, empty
    or not strictly increasing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"timestamps file {path}: not found; expected one integer µs timestamp per image",
                        source=path, expected="timestamps.txt")
    values: list[int] = []
    for lineno, line in enumerate(path.read_text(encoding="utf8").splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            values.append(int(s))
        except ValueError:
            raise DataError(f"timestamps file {path}: line {lineno} is {s!r}; expected an integer µs timestamp",
                            source=path, expected="integer per line") from None
    ts = np.asarray(values, dtype=np.int64)
    if ts.size == 0:
        raise DataError(f"timestamps file {path}: no timestamps; expected one per image", source=path,
                        expected="at least one timestamp")
    bad = np.flatnonzero(np.diff(ts) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise DataError(f"timestamps file {path}: timestamp {i} ({int(ts[i])}) is not after timestamp {i - 1} "
                        f"({int(ts[i - 1])}); expected strictly increasing timestamps", source=path,
                        expected="strictly increasing")
    return ts


@dataclass(frozen=True)
class DsecSequence:
    """Paths and image timestamps of one DSEC sequence (nothing large is loaded)."""

    name: str
    seq_dir: Path
    events_path: Path
    rectify_map_path: Path
    timestamps_path: Path
    timestamps: np.ndarray  # [n_images] int64 µs
    frame_paths: tuple[Path, ...]  # [n_images], index-aligned with timestamps (a path may be missing on disk)


def open_sequence(seq_dir: str | Path, camera: str = "left") -> DsecSequence:
    """Locate a sequence's files and read its image timestamps.

    Frames are matched to timestamps by sorted order when the image folder holds exactly one PNG per timestamp,
    otherwise by DSEC's naming ``NNNNNN.png`` = timestamp index, so a missing frame fails only the clips that need
    it (with an error naming the file).
    """
    seq_dir = Path(seq_dir)
    if not seq_dir.is_dir():
        raise DataError(f"DSEC sequence {seq_dir}: not a folder", source=seq_dir, expected="sequence folder")
    ts_path = seq_dir / "images" / "timestamps.txt"
    ts = read_image_timestamps(ts_path)
    img_dir = seq_dir / "images" / camera / "rectified"
    if not img_dir.is_dir():
        raise DataError(f"DSEC sequence {seq_dir}: image folder {img_dir} not found; expected "
                        f"images/{camera}/rectified/*.png", source=img_dir, expected="rectified image folder")
    listing = sorted(img_dir.glob("*.png"))
    frames = tuple(listing) if len(listing) == ts.size else tuple(img_dir / f"{i:06d}.png" for i in range(ts.size))
    ev_dir = seq_dir / "events" / camera
    return DsecSequence(name=seq_dir.name, seq_dir=seq_dir, events_path=ev_dir / "events.h5",
                        rectify_map_path=ev_dir / "rectify_map.h5", timestamps_path=ts_path, timestamps=ts,
                        frame_paths=frames)


@dataclass(frozen=True)
class DsecClip:
    """One clip window ``[t0, t1)`` (absolute µs) of a sequence and the frames whose timestamps fall in it."""

    sequence: str
    index: int
    clip_id: str  # "<sequence>/<index:06d>"
    t0: int
    t1: int
    frame_indices: np.ndarray  # [k] int64 indices into the sequence's timestamps
    frame_timestamps: np.ndarray  # [k] int64 µs
    frame_paths: tuple[Path, ...]


def clip_windows(t_first: int, t_last: int, clip_us: int, step_us: int) -> list[tuple[int, int]]:
    """Windows ``[t0, t0 + clip_us)`` with ``t0 = t_first + k*step_us`` while ``t0 + clip_us <= t_last``.

    Only full windows are produced; a sequence shorter than one clip gives none.
    """
    if clip_us <= 0 or step_us <= 0:
        raise ValueError(f"clip_windows: clip_us={clip_us} and step_us={step_us} must be positive")
    out = []
    t0 = int(t_first)
    while t0 + clip_us <= t_last:
        out.append((t0, t0 + int(clip_us)))
        t0 += int(step_us)
    return out


def _clip_params(clip_s: float, overlap: float) -> tuple[int, int]:
    if not 0.0 <= overlap < 1.0 or clip_s <= 0:
        raise ValueError(f"clip_s={clip_s}, overlap={overlap}: expected clip_s > 0 and 0 <= overlap < 1")
    clip_us = int(round(clip_s * 1e6))
    return clip_us, max(1, int(round(clip_us * (1.0 - overlap))))


def iter_clips(seq_dir: str | Path | DsecSequence, clip_s: float = 1.0, overlap: float = 0.5,
               camera: str = "left") -> Iterator[DsecClip]:
    """Clips of ``clip_s`` seconds with fractional ``overlap`` (0.5: step = clip_s / 2) between the first and last
    image timestamps, with the frames whose timestamps lie in ``[t0, t1)``. No events are read here."""
    seq = seq_dir if isinstance(seq_dir, DsecSequence) else open_sequence(seq_dir, camera)
    clip_us, step_us = _clip_params(clip_s, overlap)
    ts = seq.timestamps
    for k, (t0, t1) in enumerate(clip_windows(int(ts[0]), int(ts[-1]), clip_us, step_us)):
        i0, i1 = np.searchsorted(ts, [t0, t1], side="left")
        idx = np.arange(i0, i1, dtype=np.int64)
        yield DsecClip(sequence=seq.name, index=k, clip_id=f"{seq.name}/{k:06d}", t0=t0, t1=t1, frame_indices=idx,
                       frame_timestamps=ts[idx], frame_paths=tuple(seq.frame_paths[i] for i in idx))


def render_event_images(events: np.ndarray, sensor_hw: tuple[int, int],
                        n_images: int = 5) -> tuple[list[np.ndarray], np.ndarray]:
    """EventGPT-style event images of a window on the fixed sensor (see :mod:`sdlib.base.represent`):
    ``n_images`` equal-event-count chunks and one image of all events."""
    h, w = sensor_hw
    return list(event_images(events, w, h, n_images)), event_image(events, w, h)


def build_dsec_split(seq_dirs: Sequence[str | Path], out_root: str | Path, split: str, *, clip_s: float = 1.0,
                     overlap: float = 0.5, camera: str = "left", sensor_hw: tuple[int, int] = DSEC_SENSOR_HW,
                     rectify: bool = False, questions: Sequence[str] = (), min_frames: int = 8,
                     n_event_images: int = 5, max_clips_per_sequence: int | None = None,
                     compress_events: bool = False,
                     render: Callable[[np.ndarray, tuple[int, int], int], tuple[list[np.ndarray], np.ndarray]]
                     = render_event_images,
                     progress: bool = False) -> dict[str, Any]:
    """Cut DSEC sequences into clips and write them as split ``split`` under ``out_root``; return the manifest.

    Per clip: events in ``[t0, t1)`` (rectified to the pixel grid if ``rectify``), ``n_event_images`` event images
    plus a 1-frame image (``render``), the RGB PNGs with timestamps in the window (copied), and one record per
    question (human turn = the question, gpt turn empty; no questions: one record with empty turns, as the original).
    Resumable: finished clips are skipped; a clip with bad input (too few frames, missing frame, unsorted or
    out-of-sensor events, ...) is recorded as failed and skipped; a sequence that cannot be opened is recorded as
    failed under its name.
    """
    writer = DatasetWriter(out_root, split, sensor_hw=sensor_hw, min_frames=min_frames,
                           n_event_images=n_event_images, compress_events=compress_events)
    conversations = [[{"from": "human", "value": q}, {"from": "gpt", "value": ""}] for q in questions]
    clip_us, _ = _clip_params(clip_s, overlap)
    for seq_dir in seq_dirs:
        seq_dir = Path(seq_dir)
        try:
            seq = open_sequence(seq_dir, camera)
            clips = list(iter_clips(seq, clip_s, overlap))
            if max_clips_per_sequence is not None:
                clips = clips[:max_clips_per_sequence]
            if all(writer.is_done(c.clip_id) for c in clips):
                continue
            reader = DsecEvents(seq.events_path, sensor_hw=sensor_hw)
            rmap = load_rectify_map(seq.rectify_map_path, sensor_hw) if rectify else None
        except DataError as e:
            writer.record_failure(seq_dir.name, e)
            continue
        writer.clear_failure(seq.name)
        with reader:
            bar = clips
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(clips, desc=seq.name, leave=False)
            for clip in bar:
                writer.add_clip(clip.clip_id, lambda clip=clip: _make_dsec_clip(
                    clip, seq, reader, rmap, sensor_hw, min_frames, n_event_images, render, conversations, clip_us))
    return writer.finalize()


def _make_dsec_clip(clip: DsecClip, seq: DsecSequence, reader: DsecEvents, rmap: np.ndarray | None,
                    sensor_hw: tuple[int, int], min_frames: int, n_event_images: int,
                    render: Callable[..., tuple[list[np.ndarray], np.ndarray]],
                    conversations: list[list[dict[str, str]]], clip_us: int) -> ClipData:
    if clip.frame_indices.size < min_frames:
        raise DataError(f"clip {clip.clip_id}: {clip.frame_indices.size} images in [{clip.t0}, {clip.t1}) µs by "
                        f"{seq.timestamps_path}; expected at least {min_frames} frames per clip", source=clip.clip_id,
                        expected=f">= {min_frames} frames")
    events = reader.get_events(clip.t0, clip.t1)
    meta: dict[str, Any] = {"sequence": seq.name, "clip_index": clip.index, "clip_us": clip_us,
                            "frame_timestamps_us": [int(t) for t in clip.frame_timestamps],
                            "events_file": seq.events_path.relative_to(seq.seq_dir.parent).as_posix(),
                            "rectified": rmap is not None}
    if rmap is not None:
        events, dropped = rectify_to_pixels(events, rmap, sensor_hw)
        meta["rectify_dropped"] = dropped
    imgs5, img1 = render(events, sensor_hw, n_event_images)
    return ClipData(events=events, frames=list(clip.frame_paths), event_images_5f=imgs5, event_image_1f=img1,
                    conversations=conversations, time_start=clip.t0, time_end=clip.t1, group=seq.name, meta=meta)


# ---- the real profile's data set: every split ----------------------------------------------------------------------
DSEC_PREFIXES = ("zurich_city_", "interlaken_", "thun_")


def dsec_sequences(dsec_root: Path, split_folder: str) -> list[Path]:
    """Sequence folders of ``<dsec_root>/<split_folder>`` whose names the original research used."""
    folder = Path(dsec_root) / split_folder
    if not folder.is_dir():
        raise DataError(f"DSEC root {dsec_root}: no '{split_folder}' folder; expected {folder} with sequence folders",
                        source=folder, expected="DSEC layout <root>/{train,test}/<sequence>")
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(DSEC_PREFIXES))


def build_dsec(dsec_root: str | Path, name: str, questions: Sequence[str], val_fraction: float = 0.1,
               max_clips_per_sequence: int | None = None, root: Path | None = None,
               param_hint: str = "dsec_root") -> dict[str, dict[str, Any]]:
    """DSEC clips (1 s, 50% overlap) in the same layout: DSEC train sequences split into train/val by sequence,
    DSEC test sequences as test. A missing root fails at once with the parameter that supplied it."""
    dsec_root = Path(dsec_root)
    if not dsec_root.is_dir():
        raise DataError(f"{param_hint}: DSEC root {dsec_root} does not exist (download DSEC and point the `real` "
                        f"profile at it)", source=dsec_root, expected="a DSEC folder with train/ and test/")
    root = Path(root or paths.data_dir() / "dsec" / name)
    train_seqs = dsec_sequences(dsec_root, "train")
    fractions = {"train": 1.0 - val_fraction, "val": val_fraction}
    by_split = {
        "train": [p for p in train_seqs if assign_split(p.name, fractions, salt=SPLIT_SALT) == "train"],
        "val": [p for p in train_seqs if assign_split(p.name, fractions, salt=SPLIT_SALT) == "val"],
        "test": dsec_sequences(dsec_root, "test"),
    }
    manifests = {
        split: build_dsec_split(seqs, root, split, questions=questions, max_clips_per_sequence=max_clips_per_sequence,
                                progress=True)
        for split, seqs in by_split.items()
    }
    check_disjoint([root / s for s in by_split])
    return manifests
