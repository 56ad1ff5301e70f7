"""Dataset layout: split assignment, the incremental clip writer, manifest, resume after failure and after a kill."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlib.data.errors import DataError
from sdlib.data.eventfile import EVENT_DTYPE, make_events, read_events_npz
from sdlib.data.layout import (INSTRUCTION_JSON, MANIFEST_JSON, ClipData, DatasetWriter, assign_split,
                               check_disjoint, read_instructions, read_manifest, record_paths, split_seeds,
                               verify_split)

HW = (12, 16)
REPO = Path(__file__).resolve().parents[1]


def make_clip(seed: int, n_frames: int = 8, n_events: int = 300) -> ClipData:
    """A small synthetic clip; the same seed always gives the same content."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(1_000_000, 2_000_000, n_events))
    ev = make_events(rng.integers(0, HW[1], n_events), rng.integers(0, HW[0], n_events), t,
                     rng.integers(0, 2, n_events))
    return ClipData(
        events=ev,
        frames=rng.integers(0, 256, (n_frames, 10, 14, 3), dtype=np.uint8),
        event_images_5f=rng.integers(0, 256, (5, *HW, 3), dtype=np.uint8),
        event_image_1f=rng.integers(0, 256, (*HW, 3), dtype=np.uint8),
        conversations=[[{"from": "human", "value": f"Q{k}?"}, {"from": "gpt", "value": f"A{k} {seed}"}]
                       for k in range(3)],
        time_start=1_000_000, time_end=2_000_000, group=f"scene_{seed:04d}", meta={"seed": seed})


def hash_tree(split_dir: Path) -> str:
    """Content hash recomputed from the files on disk (everything but the manifest and writer state)."""
    lines = []
    for p in sorted(split_dir.rglob("*")):
        rel = p.relative_to(split_dir).as_posix()
        if p.is_file() and rel != MANIFEST_JSON and not rel.startswith(("_clips/", "_staging/")):
            lines.append(f"{rel}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
def test_assign_split_is_deterministic_disjoint_and_follows_fractions() -> None:
    seeds = range(20_000)
    parts = split_seeds(seeds, {"train": 0.7, "val": 0.1, "test": 0.2})
    assert sorted(s for v in parts.values() for s in v) == list(seeds)  # each seed in exactly one split
    assert abs(len(parts["train"]) / 20_000 - 0.7) < 0.015
    assert abs(len(parts["val"]) / 20_000 - 0.1) < 0.01
    assert abs(len(parts["test"]) / 20_000 - 0.2) < 0.01
    # pure function of the seed: same answer alone, in another order, in another process
    assert [assign_split(s, {"train": 0.7, "val": 0.1, "test": 0.2}) for s in (5, 17, 123)] == \
           [next(k for k, v in parts.items() if s in v) for s in (5, 17, 123)]
    out = subprocess.run([sys.executable, "-c", "from sdlib.data.layout import assign_split;"
                          "print([assign_split(s) for s in range(60)])"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"}, check=True)
    assert out.stdout.strip() == str([assign_split(s) for s in range(60)])
    # pinned: changing the hash silently would reshuffle every dataset built so far
    letter = {"train": "r", "val": "v", "test": "e"}
    assert "".join(letter[assign_split(s)] for s in range(60)) == PINNED_DEFAULT_SPLITS
    assert assign_split(3, {"train": 1.0}) == "train"
    assert {assign_split(s, salt="other") for s in range(50)} <= {"train", "val", "test"}
    assert [assign_split(s, salt="other") for s in range(40)] != [assign_split(s) for s in range(40)]
    with pytest.raises(ValueError, match="summing to 1"):
        assign_split(1, {"train": 0.5, "test": 0.2})
    with pytest.raises(ValueError, match="non-negative"):
        assign_split(1, {"train": 1.5, "test": -0.5})


PINNED_DEFAULT_SPLITS = "rrrrrrrrrrrrrrrrrvvrerrererrrrrvrrrvrrrrrrrvrrrrrrrrrrrrrrrr"  # seeds 0..59, default fractions


# ---------------------------------------------------------------------------------------------------------------
def test_writer_layout_records_manifest_and_hash(tmp_path: Path) -> None:
    w = DatasetWriter(tmp_path, "my_split_1s", sensor_hw=HW)
    for i in range(3):
        c = make_clip(i)
        recs = w.write_clip(f"scene_{i:04d}/000000", c.events, c.frames, c.event_images_5f, c.event_image_1f,
                            c.conversations, time_start=c.time_start, time_end=c.time_end, meta=c.meta)
        assert len(recs) == 3
    manifest = w.finalize()
    d = tmp_path / "my_split_1s"
    # files in the original research's layout
    assert (d / "event_npz/scene_0001/000000.npz").is_file()
    assert sorted(p.name for p in (d / "event_image/scene_0001").iterdir()) == [f"000000_{k}.png" for k in range(5)]
    assert (d / "event_image_1f/scene_0001/000000_0.png").is_file()
    assert sorted(p.name for p in (d / "video/scene_0001/000000").iterdir()) == [f"{i:06d}.png" for i in range(8)]
    # records
    records = read_instructions(d)
    assert len(records) == 9 and len({r["id"] for r in records}) == 9
    r = records[4]
    assert r == {**r, "split": "my_split_1s", "clip_id": "scene_0001/000000", "group": "scene_0001",
                 "event_data": "scene_0001/000000.npz", "video_data": "scene_0001/000000",
                 "event_image": [f"scene_0001/000000_{k}.png" for k in range(5)],
                 "event_image_1f": ["scene_0001/000000_0.png"],
                 "conversations": [{"from": "human", "value": "Q1?"}, {"from": "gpt", "value": "A1 1"}],
                 "time_start_us": 1_000_000, "time_end_us": 2_000_000, "n_events": 300, "n_frames": 8,
                 "meta": {"seed": 1}}
    # the files behind a record hold what was written
    paths = record_paths(d, r)
    c1 = make_clip(1)
    np.testing.assert_array_equal(read_events_npz(paths["event_data"]).events, c1.events)
    np.testing.assert_array_equal(np.asarray(Image.open(paths["event_image"][3])), c1.event_images_5f[3])
    np.testing.assert_array_equal(np.asarray(Image.open(paths["event_image_1f"][0])), c1.event_image_1f)
    assert len(paths["frames"]) == 8
    np.testing.assert_array_equal(np.asarray(Image.open(paths["frames"][7])), c1.frames[7])
    # manifest
    assert manifest == read_manifest(d)
    assert manifest["counts"] == {"clips": 3, "records": 9, "failed": 0, "events": 900, "frames": 24,
                                  "files": 3 * (1 + 5 + 1 + 8) + 1, "bytes": manifest["counts"]["bytes"]}
    data_files = [p for p in d.rglob("*") if p.is_file() and "_clips" not in p.relative_to(d).parts
                  and p.name not in (MANIFEST_JSON, INSTRUCTION_JSON)]
    assert len(data_files) == 3 * 15
    assert manifest["counts"]["bytes"] == sum(p.stat().st_size for p in data_files)
    assert manifest["groups"] == ["scene_0000", "scene_0001", "scene_0002"]
    assert manifest["finished"] == [f"scene_{i:04d}/000000" for i in range(3)]
    assert manifest["failed"] == {}
    assert manifest["content_hash"] == hash_tree(d)
    assert verify_split(d) == []
    # tampering with one frame is detected
    frame = d / "video/scene_0002/000000/000003.png"
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(frame)
    problems = verify_split(d)
    assert len(problems) == 2 and "000003.png: sha256" in problems[0] and "content hash" in problems[1]


def test_rerun_skips_finished_clips_and_gives_identical_output(tmp_path: Path) -> None:
    calls: list[int] = []

    def producer(i: int):
        def make() -> ClipData:
            calls.append(i)
            return make_clip(i)
        return make

    w = DatasetWriter(tmp_path, "train", sensor_hw=HW)
    for i in range(4):
        w.add_clip(f"scene_{i:04d}/000000", producer(i))
    m1 = w.finalize()
    assert calls == [0, 1, 2, 3]
    marker_mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "train/_clips").rglob("*.json")}
    w2 = DatasetWriter(tmp_path, "train", sensor_hw=HW)
    for i in range(5):  # one new clip
        recs = w2.add_clip(f"scene_{i:04d}/000000", producer(i))
        assert recs is not None and len(recs) == 3
    m2 = w2.finalize()
    assert calls == [0, 1, 2, 3, 4]  # finished clips were not produced again
    assert {p: p.stat().st_mtime_ns for p in marker_mtimes} == marker_mtimes
    assert m2["counts"]["clips"] == 5 and m2["counts"]["records"] == 15
    assert len({r["id"] for r in read_instructions(tmp_path / "train")}) == 15  # no duplicates
    # write_clip on a finished clip returns the stored records and rewrites nothing
    c = make_clip(99)
    again = w2.write_clip("scene_0000/000000", c.events, c.frames, c.event_images_5f, c.event_image_1f,
                          c.conversations)
    assert again == [r for r in read_instructions(tmp_path / "train") if r["clip_id"] == "scene_0000/000000"]
    # a clean build of the same 5 clips elsewhere has the same content hash
    w3 = DatasetWriter(tmp_path / "other", "train", sensor_hw=HW)
    for i in reversed(range(5)):
        w3.add_clip(f"scene_{i:04d}/000000", producer(i))
    assert w3.finalize()["content_hash"] == m2["content_hash"] != m1["content_hash"]


@pytest.mark.parametrize("bad, message", [
    ("few_frames", r"clip scene_0001/000000: 5 RGB frames; expected at least 8"),
    ("unsorted", r"clip scene_0001/000000: t is not sorted at index 11"),
    ("outside", r"clip scene_0001/000000: x=16 at index 7 is outside the sensor \(12x16, HxW\)"),
    ("missing_frame", r"clip scene_0001/000000: frame 2 file .*/nope\.png not found; expected an RGB PNG"),
    ("bad_image", r"clip scene_0001/000000: event image 4 has dtype float64 and shape \(12, 16, 3\); expected"),
    ("bad_turn", r"clip scene_0001/000000: conversation 0 turn 1 is .*expected"),
])
def test_failed_clip_is_recorded_skipped_and_retried(tmp_path: Path, bad: str, message: str) -> None:
    c = make_clip(1)
    if bad == "few_frames":
        c.frames = c.frames[:5]
    elif bad == "unsorted":
        c.events["t"][11] = c.events["t"][10] - 1
    elif bad == "outside":
        c.events["x"][7] = HW[1]
    elif bad == "missing_frame":
        c.frames = [tmp_path / f"f{i}.png" for i in range(8)]
        for i in range(8):
            Image.fromarray(c.event_image_1f).save(tmp_path / f"f{i}.png")
        c.frames[2] = tmp_path / "nope.png"
    elif bad == "bad_image":
        c.event_images_5f = [im.astype(np.float64) if k == 4 else im for k, im in enumerate(c.event_images_5f)]
    elif bad == "bad_turn":
        c.conversations = [[{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]]
    w = DatasetWriter(tmp_path, "val", sensor_hw=HW)
    assert w.add_clip("scene_0000/000000", lambda: make_clip(0)) is not None
    assert w.add_clip("scene_0001/000000", lambda: c) is None  # recorded, skipped
    assert w.add_clip("scene_0002/000000", lambda: make_clip(2)) is not None
    with pytest.raises(DataError, match=message):  # write_clip raises (after recording)
        w.write_clip("scene_0001/000000", c.events, c.frames, c.event_images_5f, c.event_image_1f, c.conversations)
    m = w.finalize()
    assert m["finished"] == ["scene_0000/000000", "scene_0002/000000"]
    assert list(m["failed"]) == ["scene_0001/000000"]
    assert m["failed"]["scene_0001/000000"]["type"] == "DataError"
    assert re.search(message, m["failed"]["scene_0001/000000"]["error"])
    assert m["counts"]["failed"] == 1 and m["counts"]["records"] == 6
    d = tmp_path / "val"
    assert not (d / "event_npz/scene_0001").exists() and not (d / "video/scene_0001/000000").exists()
    assert m["content_hash"] == hash_tree(d)  # nothing of the failed clip lingers
    # a rerun with the input fixed completes the rest without redoing finished clips
    w2 = DatasetWriter(tmp_path, "val", sensor_hw=HW)
    assert w2.add_clip("scene_0000/000000", lambda: pytest.fail("finished clip produced again")) is not None
    assert w2.add_clip("scene_0001/000000", lambda: make_clip(1)) is not None
    m2 = w2.finalize()
    assert m2["failed"] == {} and m2["counts"]["clips"] == 3 and m2["counts"]["records"] == 9


def test_no_retry_mode_keeps_failed_clips_skipped(tmp_path: Path) -> None:
    c = make_clip(3, n_frames=2)
    DatasetWriter(tmp_path, "s", sensor_hw=HW).add_clip("scene_0003/000000", lambda: c)
    w = DatasetWriter(tmp_path, "s", sensor_hw=HW, retry_failed=False)
    assert w.add_clip("scene_0003/000000", lambda: pytest.fail("failed clip retried")) is None
    assert list(w.failed()) == ["scene_0003/000000"]


def test_empty_event_window_and_default_conversation(tmp_path: Path) -> None:
    c = make_clip(4)
    w = DatasetWriter(tmp_path, "s", sensor_hw=HW)
    recs = w.write_clip("scene_0004/000000", np.empty(0, EVENT_DTYPE), c.frames, c.event_images_5f,
                        c.event_image_1f, [], time_start=10, time_end=20)
    assert len(recs) == 1 and recs[0]["n_events"] == 0
    assert recs[0]["conversations"] == [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}]
    win = read_events_npz(record_paths(tmp_path / "s", recs[0])["event_data"])
    assert win.events.size == 0 and (win.time_start, win.time_end) == (10, 20)


def test_check_disjoint_detects_shared_groups(tmp_path: Path) -> None:
    for split, seeds in (("train", [0, 1]), ("test", [2])):
        w = DatasetWriter(tmp_path, split, sensor_hw=HW)
        for s in seeds:
            w.add_clip(f"scene_{s:04d}/000000", lambda s=s: make_clip(s))
        w.finalize()
    check_disjoint([tmp_path / "train", tmp_path / "test"])
    w = DatasetWriter(tmp_path, "test", sensor_hw=HW)
    w.add_clip("scene_0001/000001", lambda: make_clip(1))
    w.finalize()
    with pytest.raises(DataError, match=r"group 'scene_0001' is in both"):
        check_disjoint([tmp_path / "train", tmp_path / "test"])


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import sdlib.data.layout as layout
    from test_data_layout import make_clip
    calls = [0]
    real = layout.save_png
    def dying_save_png(path, rgb, level=1):
        calls[0] += 1
        if calls[0] == 14 + 14 + 3:  # 14 PNGs per clip (5 + 1 event images, 8 frames): die inside clip 2
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, rgb, level)
    layout.save_png = dying_save_png
    w = layout.DatasetWriter({root!r}, "train", sensor_hw={hw!r})
    for i in range(5):
        w.add_clip(f"scene_{{i:04d}}/000000", lambda i=i: make_clip(i))
    w.finalize()
""")


def test_kill_mid_clip_leaves_no_finished_looking_clip_and_resume_matches_clean_build(tmp_path: Path) -> None:
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), root=str(tmp_path / "killed"), hw=HW)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr  # really killed (SIGKILL: no cleanup code ran)
    d = tmp_path / "killed" / "train"
    assert (d / "_staging/scene_0002/000000").is_dir()  # it died half-way through clip 2 ...
    w = DatasetWriter(tmp_path / "killed", "train", sensor_hw=HW)
    assert w.finished() == ["scene_0000/000000", "scene_0001/000000"]  # ... which does not look finished
    assert not (d / "event_npz/scene_0002").exists() and not (d / "video/scene_0002").exists()
    assert not (d / MANIFEST_JSON).exists() and not (d / INSTRUCTION_JSON).exists()
    produced: list[int] = []
    for i in range(5):
        w.add_clip(f"scene_{i:04d}/000000", lambda i=i: (produced.append(i), make_clip(i))[1])
    m = w.finalize()
    assert produced == [2, 3, 4]
    assert m["counts"]["clips"] == 5 and m["counts"]["records"] == 15 and m["failed"] == {}
    assert not (d / "_staging").exists()
    assert m["content_hash"] == hash_tree(d)
    clean = DatasetWriter(tmp_path / "clean", "train", sensor_hw=HW)
    for i in range(5):
        clean.add_clip(f"scene_{i:04d}/000000", lambda i=i: make_clip(i))
    assert clean.finalize()["content_hash"] == m["content_hash"]
