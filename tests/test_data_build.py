"""The world data set builder: splits, idempotent reruns, resumption after a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sdlib.world import dataset
from sdlib.data.errors import DataError
from sdlib.data.layout import load_clip, read_instructions, read_manifest
from sdlib.world import QUESTIONS

SPEC = dataset.WorldSpec(name="t", n_scenes=12, seed=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("world") / "t"
    return root, dataset.build_world(SPEC, root=root, progress=False, log=lambda *_: None)


def test_counts_and_splits(built):
    root, report = built
    expected = {s: sorted(dataset.clip_id(i) for i in range(SPEC.n_scenes) if dataset.scene_split(i, SPEC) == s)
                for s in dataset.SPLITS}
    for split in dataset.SPLITS:
        m = report.manifests[split]
        assert sorted(m["finished"]) == expected[split]
        assert m["counts"]["records"] == 10 * len(expected[split])
    assert report.counts["clips"] == SPEC.n_scenes and report.counts["failed"] == 0
    groups = [set(report.manifests[s]["groups"]) for s in dataset.SPLITS]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])


def test_records_hold_questions_both_answer_views_and_ground_truth(built):
    root, report = built
    split = next(s for s in dataset.SPLITS if report.manifests[s]["counts"]["clips"])
    recs = read_instructions(root / split)
    assert [r["conversations"][0]["value"] for r in recs[:10]] == list(QUESTIONS)
    for r in recs[:10]:
        assert 30 <= len(r["conversations"][1]["value"].split()) + 20  # a real, non-empty answer
        assert len(r["meta"]["answers_events"]) == 10
    seed = recs[0]["meta"]["scene_seed"]
    scene = json.loads((root / "scenes" / f"scene_{seed:06d}.json").read_text())
    assert scene["illumination"] == recs[0]["meta"]["illumination"]
    clip = load_clip(root / split, recs[0])
    assert clip.frames.shape == (8, 96, 128, 3) and clip.event_images.shape == (5, 96, 128, 3)
    assert len(clip.events) > 0 and clip.events["t"].max() <= 1_000_000


def test_rerun_is_a_no_op(built):
    root, report = built
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    messages = []
    again = dataset.build_world(SPEC, root=root, progress=False, log=messages.append)
    assert again.already_built and again.clips_built == 0
    assert any("already built" in m for m in messages)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps


def test_a_changed_spec_is_refused(built):
    root, _ = built
    with pytest.raises(DataError, match="different specification.*n_scenes"):
        dataset.build_world(dataset.WorldSpec(name="t", n_scenes=13, seed=3), root=root, progress=False)


@pytest.mark.slow
def test_killed_build_resumes_without_duplicates(built, tmp_path):
    clean_root, clean = built
    root = tmp_path / "t"
    code = (f"from sdlib.world import dataset; from pathlib import Path\n"
            f"dataset.build_world(dataset.WorldSpec(name='t', n_scenes={SPEC.n_scenes}, seed={SPEC.seed}), "
            f"root=Path({str(root)!r}), progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((root).glob("*/_clips/*/*.done.json"))) < 4:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(root.glob("*/_clips/*/*.done.json")))
    assert 4 <= done_before < SPEC.n_scenes, "the kill should land mid-build"
    report = dataset.build_world(dataset.WorldSpec(name="t", n_scenes=SPEC.n_scenes, seed=SPEC.seed), root=root,
                               progress=False, log=lambda *_: None)
    assert report.clips_built == SPEC.n_scenes - done_before
    for split in dataset.SPLITS:
        m = read_manifest(root / split)
        ids = [r["id"] for r in read_instructions(root / split)]
        assert len(ids) == len(set(ids)) == m["counts"]["records"]
        assert m["content_hash"] == clean.manifests[split]["content_hash"], split
