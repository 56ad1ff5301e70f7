"""Build the simulated world's stage-00 data sets: its train/val/test splits (DSEC clips, the ``real`` profile's, are
built by :func:`sdlib.data.dsec.build_dsec` in the same layout).

Both go through :class:`sdlib.data.layout.DatasetWriter`, so both are resumable clip by clip: a rerun skips
finished clips, a killed run leaves no half-written clip, and a clip with bad input is recorded in the manifest
and skipped.  A complete world data set whose build specification has not changed, built by the code running now,
is reported as "already built" without touching a file.

Each world split records the fingerprint of the code that builds it (:func:`sdlib.fingerprint.world_fingerprint`:
every ``sdlib`` module the world build imports): in ``code_fingerprint.json``, written before its first clip, and in
its manifest (key ``code``). A split built, or partly built, by other code is deleted and rebuilt, with a log line
naming the files that changed (DESIGN.md, correctness principle 8).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sdlib.core import progress as bar
from sdlib.data.errors import DataError
from sdlib import paths
from sdlib.base.questions import QUESTION_TYPES, QUESTIONS
from sdlib.base.represent import event_image, event_images
from sdlib.data.layout import (DEFAULT_SPLIT_FRACTIONS, MANIFEST_JSON, SPLIT_SALT, ClipData, DatasetWriter,
                               assign_split, check_disjoint, read_instructions, read_manifest)
from sdlib.fingerprint import CodeFingerprint, world_fingerprint
from sdlib.threads import usable_cpus
from sdlib.world.clip import WorldConfig, make_clip
from sdlib.world.qa import edit_ratio, tokenize
from sdlib.world.scene import scene_to_dict

SPLITS = ("train", "val", "test")
SPEC_JSON = "build.json"
SPEC_FORMAT = "sdlib.data.world/1"
CODE_JSON = "code_fingerprint.json"  # per split: the fingerprint of the code that writes its clips


@dataclass(frozen=True)
class WorldSpec:
    """What a simulated-world data set is made of; stored as ``build.json`` beside its splits."""

    name: str  # folder under data/world/
    n_scenes: int  # one 1 s clip per scene seed 0..n_scenes-1
    seed: int = 0  # world seed; scene s is generated from numpy.random.default_rng([seed, s])
    fractions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_SPLIT_FRACTIONS))
    sensor_size: tuple[int, int] = (128, 96)  # event sensor (width, height), 4:3
    rgb_size: tuple[int, int] = (128, 96)  # target frames (width, height)
    fps: float = 200.0  # internal render rate driving the event simulator

    def world_config(self) -> WorldConfig:
        return WorldConfig(sensor_size=tuple(self.sensor_size), rgb_size=tuple(self.rgb_size), fps=self.fps)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fractions"] = dict(self.fractions)
        d["sensor_size"], d["rgb_size"] = list(self.sensor_size), list(self.rgb_size)
        d["format"] = SPEC_FORMAT
        return d


@dataclass
class BuildReport:
    root: Path
    already_built: bool
    manifests: dict[str, dict[str, Any]]
    seconds: float
    clips_built: int  # clips generated in this call (0 when everything was already there)

    @property
    def counts(self) -> dict[str, int]:
        """clips and question-answer pairs per split, and failed clips."""
        out = {"clips": 0, "failed": 0}
        for split, m in self.manifests.items():
            out["clips"] += m["counts"]["clips"]
            out["failed"] += m["counts"]["failed"]
            out[f"{split}_pairs"] = m["counts"]["records"]
            out[f"{split}_clips"] = m["counts"]["clips"]
        return out


def scene_split(scene_seed: int, spec: WorldSpec) -> str:
    """The split of a scene: a hash of (world seed, scene seed), so splits are disjoint by scene by construction."""
    return assign_split(f"{spec.seed}:{scene_seed}", spec.fractions, salt=SPLIT_SALT)


def clip_id(scene_seed: int) -> str:
    return f"scene_{scene_seed:06d}/000000"


def _check_spec(root: Path, spec: WorldSpec) -> None:
    path = root / SPEC_JSON
    want = spec.to_json()
    if path.is_file():
        have = json.loads(path.read_text())
        if have != want:
            changed = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise DataError(
                f"{path}: data set '{spec.name}' was built with a different specification (differs in {changed}); "
                f"delete {root} or build under another name",
                source=path, expected="the same build specification",
            )
    else:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(want, indent=1, sort_keys=True))
        tmp.replace(path)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def recorded_code(split_dir: Path) -> dict[str, Any] | None:
    """The code fingerprint (JSON) a split folder was built, or started to be built, by; None if none is recorded."""
    path = Path(split_dir) / CODE_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def _discard_other_code(split_dir: Path, code: CodeFingerprint, log) -> bool:
    """Delete a split folder whose clips were written by other code than ``code`` (or by code that recorded no
    fingerprint), saying why; True if it was deleted."""
    if not split_dir.is_dir() or not any(split_dir.iterdir()):
        return False
    changes = code.changes(recorded_code(split_dir))
    if not changes:
        return False
    shown = ", ".join(changes[:6]) + (f" and {len(changes) - 6} more" if len(changes) > 6 else "")
    log(f"code changed since {split_dir} was built ({shown}; world code now {code.short}): rebuilding it")
    shutil.rmtree(split_dir)
    return True


def _complete(root: Path, expected: dict[str, list[str]],
              code: CodeFingerprint) -> dict[str, dict[str, Any]] | None:
    """The manifests if every split is finalized by ``code`` with exactly the expected clips finished, else None."""
    manifests = {}
    for split in SPLITS:
        if not (root / split / MANIFEST_JSON).is_file():
            return None
        m = read_manifest(root / split)
        if sorted(m.get("finished", [])) != sorted(expected[split]) or m["counts"]["failed"]:
            return None
        if (m.get("code") or {}).get("digest") != code.digest:
            return None
        manifests[split] = m
    return manifests


def world_clip_data(scene_seed: int, spec: WorldSpec, scenes_dir: Path | None = None) -> ClipData:
    """Generate one world clip and everything the data set stores for it.

    With ``scenes_dir``, the scene's ground truth (every object, light and illumination) is written there as
    ``scene_<seed>.json`` (:func:`sdlib.world.scene.scene_to_dict`).
    """
    world = spec.world_config()
    clip = make_clip(np.random.default_rng([spec.seed, scene_seed]), world)
    if scenes_dir is not None:
        scenes_dir.mkdir(parents=True, exist_ok=True)
        out = scenes_dir / f"scene_{scene_seed:06d}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(scene_to_dict(clip.scene), sort_keys=True))
        tmp.replace(out)
    w, h = world.sensor_size
    conversations = [
        [{"from": "human", "value": q}, {"from": "gpt", "value": ans["rgb"]}]
        for q, ans in zip(QUESTIONS, clip.answers)
    ]
    scene = clip.scene
    meta = {
        "scene_seed": scene_seed,
        "illumination": scene.illumination,
        "question_types": list(QUESTION_TYPES),
        # what is knowable from events (the drafter's training target); the gpt turns hold the RGB (target) view
        "answers_events": [ans["events"] for ans in clip.answers],
        "rgb_times_us": [int(t) for t in clip.rgb_times_us],
    }
    return ClipData(
        events=clip.events,
        frames=clip.rgb_frames,
        event_images_5f=event_images(clip.events, w, h, 5),
        event_image_1f=event_image(clip.events, w, h),
        conversations=conversations,
        time_start=0,
        time_end=int(round(scene.duration_s * 1e6)) + 1,  # frames (and events) span [0, duration] inclusive
        group=f"scene_{scene_seed:06d}",
        meta=meta,
    )


def _world_clip_or_error(scene_seed: int, spec: WorldSpec, scenes_dir: Path) -> ClipData | DataError:
    """Worker entry: one clip, or the DataError that bad data raised (returned, so the writer records it)."""
    try:
        return world_clip_data(scene_seed, spec, scenes_dir)
    except DataError as e:
        return e


def _raise_or_return(clip: ClipData | DataError) -> ClipData:
    if isinstance(clip, DataError):
        raise clip
    return clip


@contextlib.contextmanager
def _clip_pool(workers: int):
    """Yields ``map(fn, items)`` (lazy, in order): in this process for one worker, else in a process pool."""
    if workers <= 1:
        yield map
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        yield lambda fn, items: ex.map(fn, items, chunksize=4)


def build_world(spec: WorldSpec, root: Path | None = None, progress: bool = True, log=print,
                workers: int | None = None) -> BuildReport:
    """Build (or finish, or confirm) the world data set ``data/world/<spec.name>``; ``workers`` processes generate
    the clips (default: one per usable core, fewer for small builds)."""
    t0 = time.perf_counter()
    root = Path(root or paths.data_dir() / "world" / spec.name)
    if spec.n_scenes < 1:
        raise ValueError(f"n_scenes={spec.n_scenes}: expected at least 1")
    _check_spec(root, spec)
    code = world_fingerprint()
    for split in SPLITS:
        _discard_other_code(root / split, code, log)
    expected: dict[str, list[str]] = {s: [] for s in SPLITS}
    for s in range(spec.n_scenes):
        expected[scene_split(s, spec)].append(clip_id(s))
    done = _complete(root, expected, code)
    if done is not None:
        log(f"already built: {root} ({sum(m['counts']['clips'] for m in done.values())} clips, "
            f"world code {code.short})")
        return BuildReport(root, True, done, time.perf_counter() - t0, 0)

    w, h = spec.sensor_size
    writers = {s: DatasetWriter(root, s, sensor_hw=(h, w)) for s in SPLITS}
    for split in SPLITS:  # before any clip, so a killed build is resumed only by the same code
        _write_json(root / split / CODE_JSON, code.to_json())
    todo = [s for s in range(spec.n_scenes) if not writers[scene_split(s, spec)].is_done(clip_id(s))]
    # clips are generated in worker processes (one per usable core) and written here, in scene order; a clip's
    # content depends only on its seeds, so the data set is the same whatever the number of workers
    workers = min(usable_cpus(), max(1, len(todo) // 8)) if workers is None else workers
    bar_kw = {} if progress else {"disable": True}
    with _clip_pool(workers) as pool:
        made = pool(functools.partial(_world_clip_or_error, spec=spec, scenes_dir=root / "scenes"), todo)
        for s, clip in bar(zip(todo, made), total=len(todo), desc=f"world {spec.name}", unit="clip", **bar_kw):
            writers[scene_split(s, spec)].add_clip(clip_id(s), functools.partial(_raise_or_return, clip))
    built = len(todo)
    manifests = {s: writers[s].finalize() for s in SPLITS}
    for split, m in manifests.items():
        m["code"] = code.to_json()
        _write_json(root / split / MANIFEST_JSON, m)
    check_disjoint([root / s for s in SPLITS])
    report = BuildReport(root, False, manifests, time.perf_counter() - t0, built)
    log(f"built {built} clips into {root} in {report.seconds:.1f} s; counts {report.counts}")
    return report


def answer_table(root: str | Path, splits: Sequence[str] = SPLITS):
    """One row per question-answer pair of a world data set: split, clip, question type, illumination, the
    lengths of the RGB (target) and event (drafter) answers, and how far apart the two are (token edit ratio)."""
    import pandas as pd

    rows = []
    for split in splits:
        for rec in read_instructions(Path(root) / split):
            question, rgb = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
            q = QUESTIONS.index(question)
            events = rec["meta"]["answers_events"][q]
            rows.append({
                "split": split, "clip_id": rec["clip_id"], "question": q, "question_type": QUESTION_TYPES[q],
                "illumination": rec["meta"]["illumination"], "rgb_tokens": len(tokenize(rgb)),
                "events_tokens": len(tokenize(events)), "edit_ratio": edit_ratio(rgb, events),
            })
    return pd.DataFrame(rows)
