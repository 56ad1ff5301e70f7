"""Event arrays and event files: the canonical dtype, validation, `.npz` files, and EventGPT's pickled `.npy` files.

The in-memory format of an event stream is a 1-D numpy structured array with :data:`EVENT_DTYPE`
(``x``, ``y`` pixel column/row, ``t`` microseconds, ``p`` polarity 0 = OFF / 1 = ON), sorted by ``t``.

On disk the toolkit writes ``.npz`` files (plain arrays, no pickle) and reads them back with ``allow_pickle=False``.
EventGPT publishes its event windows as ``.npy`` files holding a *pickled* dict of arrays; those are read through a
restricted unpickler that admits only the few numpy globals an array needs and refuses everything else, so a
malicious file cannot run code (:func:`load_eventgpt_npy`).
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from sdlib.data.errors import DataError
from sdlib.base.event_dtype import EVENT_DTYPE  # the one canonical dtype: x u2, y u2, t i8 (µs), p u1 (0/1)

__all__ = [
    "EVENT_DTYPE",
    "EventWindow",
    "make_events",
    "validate_events",
    "write_events_npz",
    "read_events_npz",
    "load_eventgpt_npy",
    "events_from_dict",
]

_NPZ_KEYS = ("x", "y", "t", "p", "time_start", "time_end", "sensor_hw")


@dataclass(frozen=True)
class EventWindow:
    """Events of one time window ``[time_start, time_end)`` in µs, as read from an ``.npz`` event file."""

    events: np.ndarray  # [n] EVENT_DTYPE, sorted by t
    time_start: int
    time_end: int
    sensor_hw: tuple[int, int]
    meta: dict[str, Any] = field(default_factory=dict)


def make_events(x: Any, y: Any, t: Any, p: Any) -> np.ndarray:
    """Pack four equal-length 1-D arrays into one :data:`EVENT_DTYPE` array (no validation; see validate_events)."""
    x, y, t, p = (np.asarray(a) for a in (x, y, t, p))
    n = x.shape[0]
    if not (x.ndim == y.ndim == t.ndim == p.ndim == 1 and y.shape[0] == t.shape[0] == p.shape[0] == n):
        raise ValueError(f"make_events: x, y, t, p must be 1-D of equal length, got shapes "
                         f"{x.shape}, {y.shape}, {t.shape}, {p.shape}")
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
    return ev


def _first_bad(mask: np.ndarray) -> int | None:
    """Index of the first True in ``mask``, or None."""
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def validate_events(events: np.ndarray, sensor_hw: tuple[int, int] | None, source: str | Path,
                    index_offset: int = 0) -> np.ndarray:
    """Check an event array and return it as :data:`EVENT_DTYPE`; raise :class:`DataError` naming ``source`` if bad.

    Checks: a 1-D structured array with fields x, y, t, p; t non-decreasing; 0 <= x < W and 0 <= y < H when
    ``sensor_hw = (H, W)`` is given; p in {0, 1}; no value that would wrap when cast. An empty array is valid.
    Indices in messages are ``index_offset`` + the position in ``events`` (the index in the file when ``events``
    is a slice of a larger stream).
    """
    src = str(source)
    o = int(index_offset)
    names = getattr(getattr(events, "dtype", None), "names", None)
    if not isinstance(events, np.ndarray) or names is None or not {"x", "y", "t", "p"} <= set(names):
        raise DataError(f"{src}: expected a structured array with fields x, y, t, p, got "
                        f"{type(events).__name__} with dtype {getattr(events, 'dtype', None)}",
                        source=src, expected="structured array x, y, t, p")
    if events.ndim != 1:
        raise DataError(f"{src}: expected a 1-D event array, got shape {events.shape}", source=src,
                        expected="1-D array")
    x, y, t, p = (events[k] for k in ("x", "y", "t", "p"))
    for name, col in (("x", x), ("y", y), ("t", t), ("p", p)):
        if not (np.issubdtype(col.dtype, np.integer) or col.dtype == np.bool_):
            raise DataError(f"{src}: field {name} has dtype {col.dtype}, expected integers", source=src,
                            expected=f"integer {name}")
    if t.size > 1:
        i = _first_bad(t[1:] < t[:-1])
        if i is not None:
            raise DataError(f"{src}: t is not sorted at index {o + i + 1} (t[{o + i}]={int(t[i])} > "
                            f"t[{o + i + 1}]={int(t[i + 1])}); expected non-decreasing timestamps", source=src,
                            expected="t sorted")
    for name, col in (("x", x), ("y", y)):
        i = _first_bad(col < 0)
        if i is not None:
            raise DataError(f"{src}: {name}={int(col[i])} at index {o + i} is negative; expected pixel "
                            f"coordinates >= 0", source=src, expected=f"{name} >= 0")
    if sensor_hw is not None:
        h, w = int(sensor_hw[0]), int(sensor_hw[1])
        for name, col, lim, what in (("x", x, w, "width"), ("y", y, h, "height")):
            i = _first_bad(col >= lim)
            if i is not None:
                raise DataError(f"{src}: {name}={int(col[i])} at index {o + i} is outside the sensor "
                                f"({h}x{w}, HxW); expected 0 <= {name} < {lim} (sensor {what})", source=src,
                                expected=f"0 <= {name} < {lim}")
    else:
        for name, col in (("x", x), ("y", y)):
            i = _first_bad(col > np.iinfo(np.uint16).max)
            if i is not None:
                raise DataError(f"{src}: {name}={int(col[i])} at index {o + i} does not fit uint16", source=src,
                                expected=f"{name} < 65536")
    i = _first_bad((p != 0) & (p != 1))
    if i is not None:
        raise DataError(f"{src}: p={int(p[i])} at index {o + i}; expected polarity 0 (OFF) or 1 (ON)",
                        source=src, expected="p in {0, 1}")
    if events.dtype == EVENT_DTYPE:
        return events
    return make_events(x, y, t, p)


def _atomic_tmp(path: Path) -> Path:
    """A temporary sibling name for ``path``; renamed onto ``path`` once the content is complete."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _savez_reproducible(f: io.BufferedWriter, arrays: Mapping[str, np.ndarray], compress: bool) -> None:
    """Like ``np.savez``, but with a fixed zip member date so equal content gives byte-identical files (stable
    content hashes across reruns)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(f, mode="w", compression=method, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


def write_events_npz(path: str | Path, events: np.ndarray, *, time_start: int, time_end: int,
                     sensor_hw: tuple[int, int], meta: Mapping[str, Any] | None = None,
                     compress: bool = False) -> Path:
    """Write one event window to ``path`` (``.npz``, no pickle), atomically; return the path.

    Arrays stored: ``x, y, t, p`` (the :data:`EVENT_DTYPE` fields, t in µs on the source clock), ``time_start``,
    ``time_end`` (the window ``[time_start, time_end)`` in µs, int64 scalars), ``sensor_hw`` (int64 [2] = H, W) and
    ``meta_json`` (a 0-d unicode array holding JSON). The events are validated first; events outside the window
    are an error. The file appears under its final name only when complete (temp file + rename).
    """
    path = Path(path)
    ev = validate_events(events, sensor_hw, f"event file {path}")
    time_start, time_end = int(time_start), int(time_end)
    if time_end < time_start:
        raise DataError(f"event file {path}: time_end={time_end} < time_start={time_start}; expected a window "
                        f"[time_start, time_end)", source=path, expected="time_start <= time_end")
    if ev.size and (int(ev["t"][0]) < time_start or int(ev["t"][-1]) >= time_end):
        raise DataError(f"event file {path}: events span [{int(ev['t'][0])}, {int(ev['t'][-1])}] µs, expected all "
                        f"inside the window [{time_start}, {time_end})", source=path, expected="t in window")
    arrays = {
        "x": np.ascontiguousarray(ev["x"]), "y": np.ascontiguousarray(ev["y"]),
        "t": np.ascontiguousarray(ev["t"]), "p": np.ascontiguousarray(ev["p"]),
        "time_start": np.int64(time_start), "time_end": np.int64(time_end),
        "sensor_hw": np.asarray(sensor_hw, dtype=np.int64),
        "meta_json": np.array(json.dumps(dict(meta or {}), sort_keys=True)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_tmp(path)
    try:
        with open(tmp, "wb") as f:
            _savez_reproducible(f, arrays, compress)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_events_npz(path: str | Path) -> EventWindow:
    """Read an event file written by :func:`write_events_npz` (never unpickles); validate it; raise DataError if bad."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"event file {path}: not found; expected an .npz event file", source=path,
                        expected="existing .npz file")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_KEYS if k not in npz.files]
            if missing:
                raise DataError(f"event file {path}: missing arrays {missing}; expected {list(_NPZ_KEYS)}",
                                source=path, expected=f"arrays {list(_NPZ_KEYS)}")
            data = {k: npz[k] for k in npz.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"event file {path}: cannot be read as an .npz event file ({type(e).__name__}: {e}); "
                        f"expected a complete file written by write_events_npz", source=path,
                        expected="complete .npz") from e
    hw = tuple(int(v) for v in data["sensor_hw"])
    if len(hw) != 2:
        raise DataError(f"event file {path}: sensor_hw={hw}, expected (H, W)", source=path, expected="(H, W)")
    cols = [data[k] for k in ("x", "y", "t", "p")]
    if len({c.shape for c in cols}) != 1 or cols[0].ndim != 1:
        raise DataError(f"event file {path}: x, y, t, p have shapes {[c.shape for c in cols]}; expected equal 1-D",
                        source=path, expected="equal-length 1-D arrays")
    raw = np.empty(cols[0].shape[0], dtype=[(k, c.dtype) for k, c in zip("xytp", cols)])
    for k, c in zip("xytp", cols):
        raw[k] = c
    ev = validate_events(raw, hw, f"event file {path}")
    meta = json.loads(str(data["meta_json"])) if "meta_json" in data else {}
    return EventWindow(events=ev, time_start=int(data["time_start"]), time_end=int(data["time_end"]),
                       sensor_hw=(hw[0], hw[1]), meta=meta)


# --------------------------------------------------------------------------------------------------------------
# EventGPT's pickled .npy event dicts


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals the restricted unpickler hands out: what numpy needs to rebuild arrays and scalars."""
    try:
        from numpy._core import multiarray as ma  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):  # pickles name either, by numpy version
        allowed[(mod, "_reconstruct")] = ma._reconstruct
        allowed[(mod, "scalar")] = ma.scalar
    return allowed


class _Refused(pickle.UnpicklingError):
    """Raised by the restricted unpickler for a global outside the allow-list."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.global_name = f"{module}.{name}"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` admits only numpy array reconstruction; everything else is refused."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"persistent id {pid!r}")


def _read_npy_header(f: io.BufferedReader, path: Path) -> tuple[np.dtype, tuple[int, ...], bool]:
    """Parse an ``.npy`` header with ast.literal_eval (no code runs); return (dtype, shape, fortran_order)."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise DataError(f"EventGPT event file {path}: not an .npy file (bad magic {magic[:6]!r}); expected "
                        f"numpy's .npy format", source=path, expected=".npy magic")
    major = magic[6]
    if major == 1:
        raw_len = f.read(2)
        (hlen,) = struct.unpack("<H", raw_len) if len(raw_len) == 2 else (None,)
    elif major in (2, 3):
        raw_len = f.read(4)
        (hlen,) = struct.unpack("<I", raw_len) if len(raw_len) == 4 else (None,)
    else:
        raise DataError(f"EventGPT event file {path}: unsupported .npy version {major}; expected 1, 2 or 3",
                        source=path, expected=".npy version 1-3")
    header = f.read(hlen) if hlen is not None else b""
    if hlen is None or len(header) != hlen:
        raise DataError(f"EventGPT event file {path}: truncated .npy header", source=path,
                        expected="complete .npy header")
    try:
        d = ast.literal_eval(header.decode("utf8" if major == 3 else "latin1"))
        dtype = np.lib.format.descr_to_dtype(d["descr"])
        return dtype, tuple(d["shape"]), bool(d["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
        raise DataError(f"EventGPT event file {path}: unreadable .npy header ({e})", source=path,
                        expected="valid .npy header") from e


def load_eventgpt_npy(path: str | Path) -> dict[str, np.ndarray]:
    """Load an EventGPT event file (``np.save`` of a dict ``{x, y, t, p}``) without trusting its pickle.

    The file holds a 0-d object array wrapping a dict of arrays. It is unpickled with an unpickler that only admits
    ``numpy.ndarray``, ``numpy.dtype`` and numpy's ``_reconstruct`` / ``scalar`` (under both ``numpy.core`` and
    ``numpy._core`` names); any other global (``os.system``, ``builtins.eval``, ...) is refused *before* it can be
    called, with a DataError naming the file and the refused global. A plain (non-pickled) structured ``.npy`` with
    fields x, y, t, p is accepted too. Returns ``{"x", "y", "t", "p"}`` (plus any other array entries) unchanged;
    convert with :func:`events_from_dict`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"EventGPT event file {path}: not found", source=path, expected="existing .npy file")
    with open(path, "rb") as f:
        dtype, shape, _ = _read_npy_header(f, path)
        if not dtype.hasobject:
            f.seek(0)
            try:
                arr = np.load(f, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise DataError(f"EventGPT event file {path}: cannot read array ({e})", source=path,
                                expected="complete .npy") from e
            if arr.dtype.names is None:
                raise DataError(f"EventGPT event file {path}: plain array of dtype {arr.dtype}; expected a dict "
                                f"or structured array with fields x, y, t, p", source=path,
                                expected="x, y, t, p")
            return {k: np.asarray(arr[k]) for k in arr.dtype.names}
        try:
            obj = _NumpyOnlyUnpickler(f).load()
        except _Refused as e:
            raise DataError(f"EventGPT event file {path}: refused to unpickle global '{e.global_name}'; only numpy "
                            f"array reconstruction (numpy.ndarray, numpy.dtype, numpy._core.multiarray._reconstruct/"
                            f"scalar) is allowed", source=path, expected="pickle of a dict of numpy arrays") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                MemoryError) as e:
            raise DataError(f"EventGPT event file {path}: corrupt or truncated pickle ({type(e).__name__}: {e})",
                            source=path, expected="complete pickle of a dict of numpy arrays") from e
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise DataError(f"EventGPT event file {path}: unpickled a {type(obj).__name__} of shape {shape}; expected "
                        f"a dict with keys x, y, t, p", source=path, expected="dict x, y, t, p")
    missing = [k for k in ("x", "y", "t", "p") if k not in obj]
    if missing:
        raise DataError(f"EventGPT event file {path}: dict lacks keys {missing}; expected keys x, y, t, p",
                        source=path, expected="keys x, y, t, p")
    return {str(k): np.asarray(v) for k, v in obj.items()}


def events_from_dict(d: Mapping[str, Any], source: str | Path, sensor_hw: tuple[int, int] | None = None,
                     t_offset: int = 0) -> np.ndarray:
    """Convert a dict of arrays ``{x, y, t, p}`` (EventGPT / DSEC style) to a validated :data:`EVENT_DTYPE` array.

    ``t`` is cast to int64 before ``t_offset`` (µs) is added, so uint16/uint32 relative times cannot wrap. Polarity
    may be {0, 1}, bool, or {-1, +1} (mapped to 0 / 1).
    """
    cols = {k: np.asarray(d[k]).reshape(-1) for k in ("x", "y", "t", "p")}
    n = {k: v.shape[0] for k, v in cols.items()}
    if len(set(n.values())) != 1:
        raise DataError(f"{source}: x, y, t, p have different lengths {n}; expected equal lengths",
                        source=source, expected="equal lengths")
    p = cols["p"]
    if p.dtype != np.bool_ and p.size and int(p.min()) == -1:
        p = (p > 0).astype(np.uint8)
    raw = np.empty(n["x"], dtype=[("x", cols["x"].dtype), ("y", cols["y"].dtype), ("t", np.int64),
                                  ("p", p.dtype)])
    raw["x"], raw["y"], raw["p"] = cols["x"], cols["y"], p
    raw["t"] = cols["t"].astype(np.int64) + int(t_offset)
    return validate_events(raw, sensor_hw, source)
