"""The dataset layout on disk (the original research's), built one clip at a time, with a manifest.

One split lives in one folder ``<root>/<split>/``::

    event_npz/<clip_id>.npz                events of the clip window (see eventfile.write_events_npz)
    event_image/<clip_id>_<k>.png          k = 0..4: the 5 EventGPT event images (equal event-count chunks)
    event_image_1f/<clip_id>_0.png         one event image of the whole window
    video/<clip_id>/<frame>.png            the RGB frames of the window, in time order
    EventGPT_Instruction_Subset.json       list of instruction records (one per conversation)
    manifest.json                          counts, finished / failed clips, content hash
    _clips/<clip_id>.done.json             per-clip done marker: its records and its files' sha256
    _clips/<clip_id>.failed.json           per-clip failure marker: the error

``clip_id`` is a relative posix path such as ``"interlaken_00_a/000000"`` or ``"scene_000042/000003"``; the
first component is the *group* (sequence, scene seed) unless another group is given.

A clip is finished exactly when its done marker exists. Its files are first written to a staging folder, then moved
into place, and the marker is written last (temp file + rename), so a process killed mid-clip leaves no clip that
looks finished; a rerun redoes it and skips finished clips.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from sdlib.data.errors import DataError
from sdlib.data.eventfile import validate_events, write_events_npz

__all__ = [
    "DEFAULT_SPLIT_FRACTIONS",
    "DIRS",
    "INSTRUCTION_JSON",
    "MANIFEST_JSON",
    "ClipData",
    "DatasetWriter",
    "assign_split",
    "split_seeds",
    "read_manifest",
    "read_instructions",
    "record_paths",
    "load_clip",
    "load_png",
    "LoadedClip",
    "verify_split",
    "check_disjoint",
    "content_hash",
    "save_png",
    "sha256_file",
]

INSTRUCTION_JSON = "EventGPT_Instruction_Subset.json"
MANIFEST_JSON = "manifest.json"
DIRS: dict[str, str] = {
    "event_data": "event_npz",
    "event_image": "event_image",
    "event_image_1f": "event_image_1f",
    "video_data": "video",
}
"""Record key -> folder (inside the split folder) its relative paths are resolved against."""
MANIFEST_FORMAT = "sdlib.data.split/1"
DEFAULT_SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
SPLIT_SALT = "sdlib.world.split.v1"  # the salt of assign_split for world scenes and DSEC sequences (kept as first set)
_STATE_DIR = "_clips"
_STAGING_DIR = "_staging"
_CLIP_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*$")
_RECORD_NS = uuid.UUID("5b0c1d0e-8f3a-4c1e-9a57-0e4f2d6b7a10")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EMPTY_CONVERSATION = [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}]


# --------------------------------------------------------------------------------------------------------------
# split assignment


def _check_fractions(fractions: Mapping[str, float] | None) -> dict[str, float]:
    fr = dict(DEFAULT_SPLIT_FRACTIONS if fractions is None else fractions)
    if not fr or any((not np.isfinite(v)) or v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-9:
        raise ValueError(f"split fractions {fr}: expected non-negative numbers summing to 1")
    return fr


def assign_split(seed: int | str, fractions: Mapping[str, float] | None = None, *,
                 salt: str = "sdlib.split.v1") -> str:
    """The split a scene seed (or sequence name) belongs to: a pure function of ``(salt, seed, fractions)``.

    ``sha256(f"{salt}:{seed}")`` is mapped to a uniform number u in [0, 1) and the splits take consecutive intervals
    of length ``fractions[name]`` in the mapping's order. Each seed lands in exactly one split, so splits built from
    disjoint seeds stay disjoint, and the answer does not depend on the process, platform or which other seeds
    exist. Changing ``salt`` reshuffles everything.
    """
    fr = _check_fractions(fractions)
    u = int.from_bytes(hashlib.sha256(f"{salt}:{seed}".encode()).digest()[:8], "big") / 2.0**64
    acc = 0.0
    for name, f in fr.items():
        acc += f
        if u < acc:
            return name
    return [n for n, f in fr.items() if f > 0][-1]  # u within rounding of 1.0


def split_seeds(seeds: Iterable[int | str], fractions: Mapping[str, float] | None = None, *,
                salt: str = "sdlib.split.v1") -> dict[str, list[int | str]]:
    """Group seeds by :func:`assign_split`; every split name of ``fractions`` is a key (possibly empty)."""
    fr = _check_fractions(fractions)
    out: dict[str, list[int | str]] = {name: [] for name in fr}
    for s in seeds:
        out[assign_split(s, fr, salt=salt)].append(s)
    return out


# --------------------------------------------------------------------------------------------------------------
# small file helpers


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp sibling + rename, so the file is either old, absent or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_rgb(img: Any, what: str, clip_id: str) -> np.ndarray:
    """Return ``img`` as an [H, W, 3] uint8 array or raise DataError naming the clip and the image."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"clip {clip_id}: {what} has dtype {arr.dtype} and shape {arr.shape}; expected an RGB image "
                        f"[H, W, 3] uint8", source=clip_id, expected="[H, W, 3] uint8")
    return arr


def save_png(path: str | Path, rgb: np.ndarray, compress_level: int = 1) -> None:
    """Write an [H, W, 3] uint8 array as an 8-bit RGB PNG (Pillow, which ships with matplotlib)."""
    from PIL import Image  # lazy: only needed when images are written

    Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(path, format="PNG", compress_level=compress_level)


# --------------------------------------------------------------------------------------------------------------
# the writer


@dataclass
class ClipData:
    """Everything one clip contributes; what a producer passed to :meth:`DatasetWriter.add_clip` returns."""

    events: np.ndarray  # [n] EVENT_DTYPE
    frames: Sequence[np.ndarray | str | Path] | np.ndarray  # [T, H, W, 3] uint8, or existing PNG files
    event_images_5f: Sequence[np.ndarray] | np.ndarray  # [5, H, W, 3] uint8
    event_image_1f: np.ndarray  # [H, W, 3] uint8
    conversations: Sequence[Any] = ()
    time_start: int | None = None
    time_end: int | None = None
    group: str | int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class DatasetWriter:
    """Builds one split folder incrementally: :meth:`write_clip` per clip, then :meth:`finalize`.

    Finished clips (done marker present) are skipped on a rerun and their stored records returned, so rerunning a
    build never duplicates records. A clip whose input is bad raises :class:`DataError`; the writer records the error
    in a failure marker (listed in the manifest), removes that clip's partial files and leaves the other clips alone.
    ``retry_failed=True`` (default) tries a failed clip again on a rerun (its input may have been fixed).
    """

    def __init__(self, root: str | Path, split: str, *, sensor_hw: tuple[int, int], min_frames: int = 8,
                 n_event_images: int = 5, compress_events: bool = False, png_compress_level: int = 1,
                 retry_failed: bool = True) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", split):
            raise ValueError(f"split name {split!r}: expected letters, digits, '_', '.', '-'")
        self.root = Path(root)
        self.split = split
        self.split_dir = self.root / split
        self.sensor_hw = (int(sensor_hw[0]), int(sensor_hw[1]))
        self.min_frames = int(min_frames)
        self.n_event_images = int(n_event_images)
        self.compress_events = compress_events
        self.png_compress_level = png_compress_level
        self.retry_failed = retry_failed
        self.split_dir.mkdir(parents=True, exist_ok=True)

    # ---- state -------------------------------------------------------------------------------------------------
    def _marker(self, clip_id: str, kind: str) -> Path:
        return self.split_dir / _STATE_DIR / f"{clip_id}.{kind}.json"

    def is_done(self, clip_id: str) -> bool:
        """True when the clip has a done marker (it was written completely by an earlier call or run)."""
        return self._marker(_check_clip_id(clip_id), "done").is_file()

    def finished(self) -> list[str]:
        """Sorted ids of the finished clips."""
        return sorted(_markers(self.split_dir, "done"))

    def failed(self) -> dict[str, dict[str, Any]]:
        """Failure records ``{clip_id: {"error", "type", "source", "expected"}}`` of clips that are not finished."""
        done = set(self.finished())
        out = {}
        for cid, p in sorted(_markers(self.split_dir, "failed").items()):
            if cid not in done:
                out[cid] = json.loads(p.read_text(encoding="utf8"))
        return out

    def stored_records(self, clip_id: str) -> list[dict[str, Any]]:
        """The instruction records of a finished clip (from its done marker)."""
        return json.loads(self._marker(clip_id, "done").read_text(encoding="utf8"))["records"]

    def record_failure(self, clip_id: str, error: BaseException) -> None:
        """Record that ``clip_id`` failed with ``error`` (kept in the manifest) and remove its partial files."""
        clip_id = _check_clip_id(clip_id)
        if self.is_done(clip_id):
            return  # a finished clip stays finished
        self._remove_clip_files(clip_id)
        info = {"clip_id": clip_id, "type": type(error).__name__, "error": str(error),
                "source": getattr(error, "source", None), "expected": getattr(error, "expected", None)}
        if not isinstance(error, DataError):
            info["traceback"] = "".join(traceback.format_exception(error))[-4000:]
        _atomic_write_text(self._marker(clip_id, "failed"), json.dumps(info, indent=1, sort_keys=True))

    def clear_failure(self, clip_id: str) -> None:
        """Forget a recorded failure of ``clip_id`` (e.g. a sequence that now opens)."""
        self._marker(_check_clip_id(clip_id), "failed").unlink(missing_ok=True)

    def _remove_clip_files(self, clip_id: str, staging: bool = True) -> None:
        """Delete every file of ``clip_id`` in the data folders, and its staging folder if ``staging`` (not its
        markers)."""
        d = self.split_dir
        for path in (d / DIRS["event_data"] / f"{clip_id}.npz", d / DIRS["event_image_1f"] / f"{clip_id}_0.png"):
            path.unlink(missing_ok=True)
        img_dir = (d / DIRS["event_image"] / clip_id).parent
        if img_dir.is_dir():
            stem = Path(clip_id).name
            for p in img_dir.glob(f"{stem}_*.png"):
                if re.fullmatch(re.escape(stem) + r"_\d+\.png", p.name):
                    p.unlink()
        for folder in (d / DIRS["video_data"] / clip_id, *([d / _STAGING_DIR / clip_id] if staging else [])):
            if folder.is_dir():
                shutil.rmtree(folder)

    # ---- writing -----------------------------------------------------------------------------------------------
    def add_clip(self, clip_id: str, make: Callable[[], ClipData]) -> list[dict[str, Any]] | None:
        """Write a clip produced lazily by ``make()``: skip it if finished, record and skip it if it fails.

        ``make`` runs only when the clip is not finished, so expensive slicing and rendering are not redone on a
        rerun. A :class:`DataError` from ``make`` or from writing is recorded as the clip's failure and ``None`` is
        returned; any other exception propagates (it is a bug or an environment problem, not bad data).
        """
        clip_id = _check_clip_id(clip_id)
        if self.is_done(clip_id):
            return self.stored_records(clip_id)
        if not self.retry_failed and self._marker(clip_id, "failed").is_file():
            return None
        try:
            c = make()
            return self.write_clip(clip_id, c.events, c.frames, c.event_images_5f, c.event_image_1f, c.conversations,
                                   time_start=c.time_start, time_end=c.time_end, group=c.group, meta=c.meta)
        except DataError as e:
            self.record_failure(clip_id, e)
            return None

    def write_clip(self, clip_id: str, events: np.ndarray, frames: Sequence[np.ndarray | str | Path] | np.ndarray,
                   event_images_5f: Sequence[np.ndarray] | np.ndarray, event_image_1f: np.ndarray,
                   conversations: Sequence[Any] = (), *, time_start: int | None = None,
                   time_end: int | None = None, group: str | int | None = None,
                   meta: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Write one clip's files and done marker; return its instruction records (one per conversation).

        - ``events``: [n] EVENT_DTYPE inside ``[time_start, time_end)`` µs (defaults: first event, last event + 1).
        - ``frames``: [T, H, W, 3] uint8 (written as ``000000.png``...) or paths of existing PNG files (copied,
          keeping their names), in time order; T >= ``min_frames``.
        - ``event_images_5f``: ``n_event_images`` RGB images; ``event_image_1f``: one RGB image.
        - ``conversations``: a list of conversations, each a list of turns ``{"from": "human"|"gpt", "value": str}``
          (a single conversation may be passed directly); empty gives one record with an empty human/gpt turn pair,
          as the original dataset had.
        - ``group``: the split-assignment key (scene seed, sequence); default the first component of ``clip_id``.

        A finished clip is not rewritten: its stored records are returned. Bad input raises :class:`DataError` after
        the failure has been recorded and partial files removed.
        """
        clip_id = _check_clip_id(clip_id)
        if self.is_done(clip_id):
            return self.stored_records(clip_id)
        try:
            return self._write_clip(clip_id, events, frames, event_images_5f, event_image_1f, conversations,
                                    time_start, time_end, group, dict(meta or {}))
        except DataError as e:
            self.record_failure(clip_id, e)
            raise

    def _write_clip(self, clip_id: str, events: np.ndarray, frames: Any, event_images_5f: Any,
                    event_image_1f: Any, conversations: Sequence[Any], time_start: int | None,
                    time_end: int | None, group: str | int | None, meta: dict[str, Any]) -> list[dict[str, Any]]:
        # ---- validate everything before touching the disk
        ev = validate_events(events, self.sensor_hw, f"clip {clip_id}")
        if time_start is None:
            time_start = int(ev["t"][0]) if ev.size else 0
        if time_end is None:
            time_end = int(ev["t"][-1]) + 1 if ev.size else int(time_start)
        frame_list = list(frames) if not isinstance(frames, np.ndarray) or frames.ndim == 4 else [frames]
        if len(frame_list) < self.min_frames:
            raise DataError(f"clip {clip_id}: {len(frame_list)} RGB frames; expected at least {self.min_frames} "
                            f"(the target samples {self.min_frames} frames per clip)", source=clip_id,
                            expected=f">= {self.min_frames} frames")
        frame_items: list[tuple[str, np.ndarray | Path]] = []
        for i, fr in enumerate(frame_list):
            if isinstance(fr, (str, Path)):
                p = Path(fr)
                if not p.is_file():
                    raise DataError(f"clip {clip_id}: frame {i} file {p} not found; expected an RGB PNG",
                                    source=p, expected="existing PNG frame")
                with open(p, "rb") as f:
                    if f.read(8) != _PNG_SIGNATURE:
                        raise DataError(f"clip {clip_id}: frame {i} file {p} is not a PNG (bad signature); expected "
                                        f"an RGB PNG", source=p, expected="PNG file")
                frame_items.append((p.name if p.suffix.lower() == ".png" else f"{p.stem}.png", p))
            else:
                frame_items.append((f"{i:06d}.png", _check_rgb(fr, f"frame {i}", clip_id)))
        names = [n for n, _ in frame_items]
        if len(set(names)) != len(names) or names != sorted(names):
            raise DataError(f"clip {clip_id}: frame file names {names[:3]}... are not unique and increasing; expected "
                            f"names that sort in time order", source=clip_id, expected="sorted unique frame names")
        arr_shapes = {a.shape for _, a in frame_items if isinstance(a, np.ndarray)}
        if len(arr_shapes) > 1:
            raise DataError(f"clip {clip_id}: frames have different shapes {sorted(arr_shapes)}; expected one size",
                            source=clip_id, expected="equal frame shapes")
        imgs5 = list(event_images_5f)
        if len(imgs5) != self.n_event_images:
            raise DataError(f"clip {clip_id}: {len(imgs5)} event images; expected {self.n_event_images}",
                            source=clip_id, expected=f"{self.n_event_images} event images")
        imgs5 = [_check_rgb(im, f"event image {k}", clip_id) for k, im in enumerate(imgs5)]
        img1 = np.asarray(event_image_1f)
        if img1.ndim == 4 and img1.shape[0] == 1:
            img1 = img1[0]
        img1 = _check_rgb(img1, "1-frame event image", clip_id)
        convs = _normalize_conversations(conversations, clip_id)
        group_key = str(group) if group is not None else clip_id.split("/")[0]

        # ---- write into a staging folder mirroring the layout
        stage = self.split_dir / _STAGING_DIR / clip_id
        if stage.exists():
            shutil.rmtree(stage)
        rel_npz = f"{DIRS['event_data']}/{clip_id}.npz"
        rel_img5 = [f"{DIRS['event_image']}/{clip_id}_{k}.png" for k in range(len(imgs5))]
        rel_img1 = f"{DIRS['event_image_1f']}/{clip_id}_0.png"
        rel_video = f"{DIRS['video_data']}/{clip_id}"
        npz_meta = {"clip_id": clip_id, "split": self.split, "group": group_key, **meta}
        write_events_npz(stage / rel_npz, ev, time_start=time_start, time_end=time_end, sensor_hw=self.sensor_hw,
                         meta=npz_meta, compress=self.compress_events)
        for rel, im in [*zip(rel_img5, imgs5), (rel_img1, img1)]:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            save_png(stage / rel, im, self.png_compress_level)
        (stage / rel_video).mkdir(parents=True, exist_ok=True)
        for name, item in frame_items:
            if isinstance(item, Path):
                shutil.copyfile(item, stage / rel_video / name)
            else:
                save_png(stage / rel_video / name, item, self.png_compress_level)
        rel_frames = [f"{rel_video}/{name}" for name, _ in frame_items]
        files = {rel: {"sha256": sha256_file(stage / rel), "bytes": (stage / rel).stat().st_size}
                 for rel in [rel_npz, *rel_img5, rel_img1, *rel_frames]}

        # ---- move into place (old partial files of this clip first removed), then the done marker
        self._remove_clip_files(clip_id, staging=False)
        for rel in [rel_npz, *rel_img5, rel_img1]:
            dst = self.split_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / rel, dst)
        (self.split_dir / rel_video).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel_video, self.split_dir / rel_video)
        records = [
            {
                "id": str(uuid.uuid5(_RECORD_NS, f"{self.split}/{clip_id}/{k}")),
                "split": self.split,
                "clip_id": clip_id,
                "group": group_key,
                "event_data": f"{clip_id}.npz",
                "video_data": clip_id,
                "event_image": [f"{clip_id}_{j}.png" for j in range(len(imgs5))],
                "event_image_1f": [f"{clip_id}_0.png"],
                "conversations": conv,
                "time_start_us": int(time_start),
                "time_end_us": int(time_end),
                "n_events": int(ev.size),
                "n_frames": len(frame_items),
                "meta": meta,
            }
            for k, conv in enumerate(convs)
        ]
        marker = {"clip_id": clip_id, "group": group_key, "records": records, "files": files,
                  "n_events": int(ev.size), "n_frames": len(frame_items)}
        _atomic_write_text(self._marker(clip_id, "done"), json.dumps(marker, indent=1, sort_keys=True))
        self._marker(clip_id, "failed").unlink(missing_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
        return records

    # ---- finishing ---------------------------------------------------------------------------------------------
    def finalize(self) -> dict[str, Any]:
        """Write the instruction JSON and ``manifest.json`` from the markers; return the manifest.

        The instruction JSON lists the records of every finished clip, in sorted clip-id order. The content hash is
        ``sha256`` over the lines ``"<relpath>\\t<sha256 of file>\\n"`` of every data file and the instruction JSON,
        sorted by relpath (manifest.json itself excluded). Safe to call again after more clips were written.
        """
        done = _markers(self.split_dir, "done")
        markers = [json.loads(done[cid].read_text(encoding="utf8")) for cid in sorted(done)]
        records = [r for m in markers for r in m["records"]]
        ids = [r["id"] for r in records]
        if len(set(ids)) != len(ids):  # cannot happen with uuid5 of (split, clip, k); guards hand-edited markers
            raise DataError(f"split {self.split_dir}: duplicate record ids in done markers", source=self.split_dir,
                            expected="unique record ids")
        _atomic_write_text(self.split_dir / INSTRUCTION_JSON, json.dumps(records, indent=1))
        files = {rel: info["sha256"] for m in markers for rel, info in m["files"].items()}
        files[INSTRUCTION_JSON] = sha256_file(self.split_dir / INSTRUCTION_JSON)
        failed = self.failed()
        manifest = {
            "format": MANIFEST_FORMAT,
            "split": self.split,
            "sensor_hw": list(self.sensor_hw),
            "dirs": DIRS,
            "instruction_json": INSTRUCTION_JSON,
            "counts": {
                "clips": len(markers),
                "records": len(records),
                "failed": len(failed),
                "events": int(sum(m["n_events"] for m in markers)),
                "frames": int(sum(m["n_frames"] for m in markers)),
                "files": len(files),
                "bytes": int(sum(info["bytes"] for m in markers for info in m["files"].values())),
            },
            "groups": sorted({m["group"] for m in markers}),
            "finished": [m["clip_id"] for m in markers],
            "failed": failed,
            "content_hash": content_hash(files),
        }
        _atomic_write_text(self.split_dir / MANIFEST_JSON, json.dumps(manifest, indent=1, sort_keys=True))
        shutil.rmtree(self.split_dir / _STAGING_DIR, ignore_errors=True)
        return manifest


# --------------------------------------------------------------------------------------------------------------
# reading and checking a split


def content_hash(file_hashes: Mapping[str, str]) -> str:
    """sha256 over ``"<relpath>\\t<sha256>\\n"`` lines sorted by relpath: one hash for a whole split's content."""
    h = hashlib.sha256()
    for rel in sorted(file_hashes):
        h.update(f"{rel}\t{file_hashes[rel]}\n".encode())
    return h.hexdigest()


def _markers(split_dir: Path, kind: str) -> dict[str, Path]:
    base = split_dir / _STATE_DIR
    suffix = f".{kind}.json"
    if not base.is_dir():
        return {}
    return {p.relative_to(base).as_posix()[: -len(suffix)]: p for p in base.rglob(f"*{suffix}")
            if not p.name.startswith(".")}


def _check_clip_id(clip_id: str) -> str:
    if not isinstance(clip_id, str) or not _CLIP_ID_RE.fullmatch(clip_id):
        raise ValueError(f"clip id {clip_id!r}: expected a relative path of [A-Za-z0-9_.-] parts separated by '/', "
                         f"no part starting with '.' or '-'")
    return clip_id


def _normalize_conversations(conversations: Sequence[Any], clip_id: str) -> list[list[dict[str, str]]]:
    convs = list(conversations) if conversations is not None else []
    if not convs:
        return [[dict(t) for t in _EMPTY_CONVERSATION]]
    if isinstance(convs[0], Mapping):
        convs = [convs]
    out = []
    for i, conv in enumerate(convs):
        turns = []
        for j, turn in enumerate(conv if isinstance(conv, (list, tuple)) else [None]):
            if (not isinstance(turn, Mapping) or turn.get("from") not in ("human", "gpt")
                    or not isinstance(turn.get("value"), str)):
                raise DataError(f"clip {clip_id}: conversation {i} turn {j} is {turn!r}; expected "
                                f"{{'from': 'human'|'gpt', 'value': str}}", source=clip_id,
                                expected="conversation turns")
            turns.append({"from": turn["from"], "value": turn["value"]})
        if not turns or turns[0]["from"] != "human":
            raise DataError(f"clip {clip_id}: conversation {i} must start with a human turn", source=clip_id,
                            expected="human turn first")
        out.append(turns)
    return out


def read_manifest(split_dir: str | Path) -> dict[str, Any]:
    """Load ``manifest.json`` of a split folder; DataError if absent (the split was never finalized)."""
    path = Path(split_dir) / MANIFEST_JSON
    if not path.is_file():
        raise DataError(f"split {split_dir}: no {MANIFEST_JSON}; expected a split finalized by DatasetWriter",
                        source=path, expected=MANIFEST_JSON)
    return json.loads(path.read_text(encoding="utf8"))


def read_instructions(split_dir: str | Path) -> list[dict[str, Any]]:
    """Load the instruction records (``EventGPT_Instruction_Subset.json``) of a split folder."""
    path = Path(split_dir) / INSTRUCTION_JSON
    if not path.is_file():
        raise DataError(f"split {split_dir}: no {INSTRUCTION_JSON}; expected a split finalized by DatasetWriter",
                        source=path, expected=INSTRUCTION_JSON)
    return json.loads(path.read_text(encoding="utf8"))


def record_paths(split_dir: str | Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Absolute paths of a record's files: ``event_data``, ``event_image`` (list), ``event_image_1f`` (list),
    ``video_data`` (folder) and ``frames`` (its sorted PNGs)."""
    d = Path(split_dir)
    video = d / DIRS["video_data"] / record["video_data"]
    return {
        "event_data": d / DIRS["event_data"] / record["event_data"],
        "event_image": [d / DIRS["event_image"] / r for r in record["event_image"]],
        "event_image_1f": [d / DIRS["event_image_1f"] / r for r in record["event_image_1f"]],
        "video_data": video,
        "frames": sorted(video.glob("*.png")),
    }


def load_png(path: str | Path) -> np.ndarray:
    """Read an 8-bit RGB PNG as uint8 [H, W, 3]; a missing or unreadable file is a DataError naming it."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))  # [H, W, 3]
    except (OSError, ValueError) as e:
        raise DataError(f"image {path}: cannot be read ({e})", source=path, expected="an RGB PNG") from e


@dataclass
class LoadedClip:
    events: np.ndarray  # [n] EVENT_DTYPE
    frames: np.ndarray  # [T, H, W, 3] uint8, every stored frame in time order
    event_images: np.ndarray  # [n_images, H, W, 3] uint8 (the 5-frame EventGPT input)
    event_image_1f: np.ndarray  # [H, W, 3] uint8
    sensor_hw: tuple[int, int]


def load_clip(split_dir: str | Path, record: Mapping[str, Any]) -> LoadedClip:
    """Everything stored for the clip of an instruction record, read back from disk."""
    from sdlib.data.eventfile import read_events_npz

    p = record_paths(split_dir, record)
    window = read_events_npz(p["event_data"])
    if not p["frames"]:
        raise DataError(f"clip {record.get('clip_id')}: no frames in {p['video_data']}", source=p["video_data"],
                        expected="frame PNGs")
    return LoadedClip(
        events=window.events,
        frames=np.stack([load_png(f) for f in p["frames"]]),
        event_images=np.stack([load_png(f) for f in p["event_image"]]),
        event_image_1f=load_png(p["event_image_1f"][0]),
        sensor_hw=tuple(window.sensor_hw),
    )


def verify_split(split_dir: str | Path) -> list[str]:
    """Re-hash every file listed by the done markers and the instruction JSON against the manifest.

    Returns a list of problems (missing file, changed file, content hash differs); empty when the split is intact.
    """
    d = Path(split_dir)
    manifest = read_manifest(d)
    problems: list[str] = []
    files: dict[str, str] = {}
    for cid, p in sorted(_markers(d, "done").items()):
        for rel, info in json.loads(p.read_text(encoding="utf8"))["files"].items():
            if not (d / rel).is_file():
                problems.append(f"{d / rel}: missing (clip {cid})")
                continue
            files[rel] = sha256_file(d / rel)
            if files[rel] != info["sha256"]:
                problems.append(f"{d / rel}: sha256 {files[rel][:12]} differs from the recorded {info['sha256'][:12]}")
    if (d / INSTRUCTION_JSON).is_file():
        files[INSTRUCTION_JSON] = sha256_file(d / INSTRUCTION_JSON)
    if content_hash(files) != manifest["content_hash"]:
        problems.append(f"{d / MANIFEST_JSON}: content hash {manifest['content_hash'][:12]} does not match the files")
    return problems


def check_disjoint(split_dirs: Sequence[str | Path]) -> None:
    """Raise DataError if any group (scene seed / sequence) appears in more than one of the finalized splits."""
    seen: dict[str, str] = {}
    for sd in split_dirs:
        for g in read_manifest(sd)["groups"]:
            if g in seen:
                raise DataError(f"splits {seen[g]} and {sd}: group {g!r} is in both; expected disjoint splits",
                                source=sd, expected="disjoint groups")
            seen[g] = str(sd)
