"""DSEC reader: exact window slicing against numpy ground truth, rectification, clips, the split build, bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fixtures_dsec import random_events, write_dsec_sequence, write_events_h5
from sdlib.data.dsec import (DsecEvents, build_dsec_split, iter_clips, load_rectify_map, open_sequence,
                             read_image_timestamps, rectify_events, rectify_to_pixels, render_event_images)
from sdlib.data.errors import DataError
from sdlib.data.eventfile import EVENT_DTYPE, make_events, read_events_npz
from sdlib.data.layout import MANIFEST_JSON, read_instructions, record_paths, verify_split

REPO = Path(__file__).resolve().parents[1]
T_OFFSET = 12_345_678  # not a multiple of 1000: ms bins are relative to the file's t, not to absolute time
PINNED = (0, 5_000, 12_345, 12_346, 999_999, 1_000_000)


@pytest.fixture(scope="module", params=[("blosc", np.uint32, 0), ("none", np.int64, 1)],
                ids=["blosc_zstd_uint32", "uncompressed_int64"])
def events_file(request: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    compression, t_dtype, extra_ms = request.param
    if compression == "blosc":
        pytest.importorskip("hdf5plugin")  # the optional `dsec` extra
    rng = np.random.default_rng(7)
    ev = random_events(rng, 20_000, 3_000_000, (480, 640), pinned_times=PINNED)
    path = tmp_path_factory.mktemp("ev") / "events.h5"
    write_events_h5(path, ev["x"], ev["y"], ev["t"], ev["p"], T_OFFSET, compression=None if compression == "none"
                    else compression, t_dtype=t_dtype, extra_ms=extra_ms)
    gt = make_events(ev["x"], ev["y"], ev["t"] + T_OFFSET, ev["p"])
    return {"path": path, "gt": gt, "compression": compression}


def truth(gt: np.ndarray, t0: int, t1: int) -> np.ndarray:
    return gt[(gt["t"] >= t0) & (gt["t"] < t1)]


def test_fixture_is_really_blosc_compressed(events_file: dict[str, Any]) -> None:
    with h5py.File(events_file["path"], "r") as f:
        filters = [f["events/t"].id.get_create_plist().get_filter(i)[0]
                   for i in range(f["events/t"].id.get_create_plist().get_nfilters())]
    assert (32001 in filters) == (events_file["compression"] == "blosc")


def test_window_edges_match_numpy_ground_truth(events_file: dict[str, Any]) -> None:
    gt, off = events_file["gt"], T_OFFSET
    with DsecEvents(events_file["path"]) as r:
        assert len(r) == gt.size and r.t_offset == off
        assert (r.t_first, r.t_last) == (int(gt["t"][0]), int(gt["t"][-1]))
        t_last = int(gt["t"][-1])

        def check(t0: int, t1: int) -> np.ndarray:
            got = r.get_events(t0, t1)
            assert got.dtype == EVENT_DTYPE
            np.testing.assert_array_equal(got, truth(gt, t0, t1))
            return got

        # events exactly at t0 are included, exactly at t1 excluded
        w = check(off + 5_000, off + 12_345)
        assert int(w["t"][0]) == off + 5_000 and (w["t"] == off + 5_000).sum() >= 3
        assert int(w["t"].max()) < off + 12_345
        # a window inside one millisecond holds exactly the pinned triplet(s) at 12_345
        w = check(off + 12_345, off + 12_346)
        assert w.size >= 3 and set(w["t"].tolist()) == {off + 12_345}
        check(off + 12_345 + 1, off + 12_346)
        check(off + 999_999, off + 1_000_001)  # across a ms boundary of the file's clock
        # before the first event / touching it
        assert check(off - 50_000, off).size == 0
        assert check(off - 50_000, off + 1).size >= 3
        # after the last event / touching it
        assert check(t_last + 1, t_last + 5_000_000).size == 0
        assert check(t_last, t_last + 1).size >= 1
        assert check(off + 10**9, off + 10**9 + 10).size == 0  # far beyond ms_to_idx
        assert check(off - 10**9, off - 10**9 + 10).size == 0  # far before t_offset
        assert check(off - 1, t_last + 1).size == gt.size  # everything
        assert check(off + 40_000, off + 40_000).size == 0  # empty window t0 == t1
        with pytest.raises(ValueError, match="t1 < t0"):
            r.get_events(off + 10, off + 5)
        # many random windows, lengths from 1 µs to 300 ms, starting before, inside and after the stream
        rng = np.random.default_rng(3)
        for _ in range(300):
            t0 = int(rng.integers(off - 100_000, t_last + 100_000))
            check(t0, t0 + int(rng.integers(1, 300_000)))
        # windows aligned to the events' own times (duplicates at both edges)
        for i in rng.integers(1, gt.size - 1, 100):
            check(int(gt["t"][i]), int(gt["t"][min(i + int(rng.integers(0, 40)), gt.size - 1)]))


def test_index_range_matches_searchsorted(events_file: dict[str, Any]) -> None:
    gt = events_file["gt"]
    rng = np.random.default_rng(4)
    with DsecEvents(events_file["path"]) as r:
        for _ in range(100):
            t0 = int(rng.integers(T_OFFSET - 5_000, int(gt["t"][-1]) + 5_000))
            t1 = t0 + int(rng.integers(0, 100_000))
            assert r.index_range(t0, t1) == tuple(int(v) for v in np.searchsorted(gt["t"], [t0, t1], "left"))
        assert r.index_range(T_OFFSET - 10**7, T_OFFSET - 10**7) == (0, 0)
        assert r.index_range(T_OFFSET + 10**9, T_OFFSET + 10**9) == (gt.size, gt.size)


def test_blosc_file_without_hdf5plugin_names_file_and_pip_command(tmp_path: Path) -> None:
    pytest.importorskip("hdf5plugin")  # needed to write the fixture
    path = tmp_path / "zstd_events.h5"
    _write_small(path, compression="blosc")
    code = ("import sys; sys.modules['hdf5plugin'] = None\n"  # makes `import hdf5plugin` fail, as if not installed
            "from sdlib.data.dsec import DsecEvents\n"
            "from sdlib.data.errors import DataError\n"
            f"try:\n    DsecEvents({str(path)!r})\nexcept DataError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, timeout=60)
    assert f"events file {path}: dataset /events/x is compressed with HDF5 filter 32001" in out.stdout, out.stderr
    assert "`pip install hdf5plugin`" in out.stdout
    with DsecEvents(path) as r:  # with the plugin importable, the same file reads
        assert len(r) == 2_000


# ---------------------------------------------------------------------------------------------------------------
# bad events.h5 files


def _write_small(path: Path, **kw: Any) -> dict[str, np.ndarray]:
    ev = random_events(np.random.default_rng(11), 2_000, 200_000, (480, 640))
    write_events_h5(path, ev["x"], ev["y"], ev["t"], ev["p"], 1_000_000, **kw)
    return ev


def test_missing_ms_to_idx_or_datasets(tmp_path: Path) -> None:
    _write_small(tmp_path / "a.h5", with_ms_to_idx=False)
    with pytest.raises(DataError, match=r"a\.h5: missing dataset 'ms_to_idx'; expected the DSEC layout "
                                        r"events/\{x,y,t,p\}, ms_to_idx, t_offset"):
        DsecEvents(tmp_path / "a.h5")
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f.create_dataset("events/x", data=np.zeros(3, np.uint16))
    with pytest.raises(DataError, match=r"b\.h5: missing dataset 'events/y'"):
        DsecEvents(tmp_path / "b.h5")
    with pytest.raises(DataError, match=r"events file .*nope\.h5: not found"):
        DsecEvents(tmp_path / "nope.h5")


def test_truncated_h5_file(tmp_path: Path) -> None:
    _write_small(tmp_path / "full.h5")
    data = (tmp_path / "full.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"events file .*cut\.h5: cannot be opened as HDF5 .*expected a complete HDF5"):
        DsecEvents(tmp_path / "cut.h5")


def test_unsorted_timestamps_name_file_and_index(tmp_path: Path) -> None:
    ev = random_events(np.random.default_rng(12), 2_000, 200_000, (480, 640))
    t = ev["t"].copy()
    i = next(i for i in range(1000, t.size - 1) if t[i] // 1000 == t[i + 1] // 1000 and t[i] < t[i + 1])
    t[i], t[i + 1] = t[i + 1], t[i]  # same ms: ms_to_idx stays valid, only the order is broken
    write_events_h5(tmp_path / "u.h5", ev["x"], ev["y"], t, ev["p"], 1_000_000)
    with DsecEvents(tmp_path / "u.h5") as r:
        with pytest.raises(DataError, match=rf"u\.h5: t is not sorted at index {i + 1} "):
            r.get_events(1_000_000 + int(t[i + 1]) - 3_000, 1_000_000 + int(t[i]) + 3_000)
        far = r.get_events(1_000_000 + 190_000, 1_000_000 + 200_000)  # windows elsewhere still work
        assert far.size == ((ev["t"] >= 190_000) & (ev["t"] < 200_000)).sum() > 0


def test_coordinates_outside_the_sensor(tmp_path: Path) -> None:
    ev = random_events(np.random.default_rng(13), 2_000, 200_000, (480, 640))
    ev["x"][700] = 640
    ev["y"][1500] = 480
    write_events_h5(tmp_path / "o.h5", ev["x"], ev["y"], ev["t"], ev["p"], 1_000_000)
    with DsecEvents(tmp_path / "o.h5") as r:
        with pytest.raises(DataError, match=r"o\.h5: x=640 at index 700 is outside the sensor \(480x640, HxW\); "
                                            r"expected 0 <= x < 640"):
            r.get_events(1_000_000, 1_000_000 + 200_000)
        with pytest.raises(DataError, match=r"o\.h5: y=480 at index 1500 .*expected 0 <= y < 480"):
            r.get_events(1_000_000 + int(ev["t"][1000]), 1_000_000 + 200_000)


def test_inconsistent_ms_to_idx_is_detected(tmp_path: Path) -> None:
    ev = random_events(np.random.default_rng(14), 2_000, 200_000, (480, 640))
    write_events_h5(tmp_path / "m.h5", ev["x"], ev["y"], ev["t"], ev["p"], 0)
    with h5py.File(tmp_path / "m.h5", "r+") as f:
        ms = f["ms_to_idx"][()]
        ms[50:] = np.maximum(ms[50:], ms[60])  # claims no events in ms 50..59
        del f["ms_to_idx"]
        f.create_dataset("ms_to_idx", data=ms)
    with DsecEvents(tmp_path / "m.h5") as r:
        with pytest.raises(DataError, match=r"m\.h5: ms_to_idx\[5\d\]=\d+ but t\[\d+\]=\d+ >= 5\d000"):
            r.get_events(52_000, 70_000)


# ---------------------------------------------------------------------------------------------------------------
# rectify map, timestamps, clips


def test_rectify_map(tmp_path: Path) -> None:
    seq = write_dsec_sequence(tmp_path, "s", np.random.default_rng(5), sensor_hw=(24, 32))
    rmap = load_rectify_map(seq["dir"] / "events/left/rectify_map.h5", (24, 32))
    ev = make_events(seq["x"], seq["y"], seq["t_abs"], seq["p"])
    xr, yr = rectify_events(ev, rmap)
    np.testing.assert_allclose(xr, 0.9 * ev["x"] + 2.3, rtol=0, atol=1e-5)
    np.testing.assert_allclose(yr, 1.1 * ev["y"] - 1.4, rtol=0, atol=1e-5)
    pix, dropped = rectify_to_pixels(ev, rmap, (24, 32))
    xi, yi = np.rint(0.9 * ev["x"] + 2.3), np.rint(1.1 * ev["y"] - 1.4)
    keep = (xi >= 0) & (xi < 32) & (yi >= 0) & (yi < 24)
    assert dropped == (~keep).sum() > 0 and pix.size == keep.sum()
    np.testing.assert_array_equal(pix["x"], xi[keep])
    np.testing.assert_array_equal(pix["y"], yi[keep])
    np.testing.assert_array_equal(pix["t"], ev["t"][keep])
    with pytest.raises(DataError, match=r"rectify_map\.h5: rectify_map has shape \(24, 32, 2\); expected "
                                        r"\(480, 640, 2\)"):
        load_rectify_map(seq["dir"] / "events/left/rectify_map.h5")


def test_image_timestamps_errors(tmp_path: Path) -> None:
    p = tmp_path / "timestamps.txt"
    p.write_text("100\n200\n300\n")
    np.testing.assert_array_equal(read_image_timestamps(p), [100, 200, 300])
    p.write_text("100\n200\n150\n")
    with pytest.raises(DataError, match=r"timestamps\.txt: timestamp 2 \(150\) is not after timestamp 1 \(200\); "
                                        r"expected strictly increasing"):
        read_image_timestamps(p)
    p.write_text("100\n2e5\n")
    with pytest.raises(DataError, match=r"timestamps\.txt: line 2 is '2e5'; expected an integer"):
        read_image_timestamps(p)
    p.write_text("")
    with pytest.raises(DataError, match="no timestamps"):
        read_image_timestamps(p)


def test_clips_are_one_second_with_half_overlap(tmp_path: Path) -> None:
    seq = write_dsec_sequence(tmp_path, "zurich_city_00_a", np.random.default_rng(6), n_frames=50)
    ts = seq["timestamps"]
    clips = list(iter_clips(seq["dir"]))
    assert [c.clip_id for c in clips] == [f"zurich_city_00_a/{k:06d}" for k in range(3)]
    assert [(c.t0 - int(ts[0]), c.t1 - int(ts[0])) for c in clips] == [(0, 10**6), (500_000, 1_500_000),
                                                                     (10**6, 2_000_000)]
    assert [c.frame_indices.tolist() for c in clips] == [list(range(0, 20)), list(range(10, 30)),
                                                         list(range(20, 40))]
    assert clips[1].frame_paths[0].name == "000010.png"
    assert len(list(iter_clips(seq["dir"], clip_s=0.5, overlap=0.0))) == 4  # 2.45 s of images
    with pytest.raises(ValueError, match="overlap"):
        list(iter_clips(seq["dir"], overlap=1.0))


def test_render_event_images_eventgpt_style() -> None:
    ev = make_events([0, 1, 2, 3, 4, 5, 1], [0, 0, 0, 0, 0, 0, 0], np.arange(7), [1, 0, 1, 0, 1, 0, 1])
    five, one = render_event_images(ev, (2, 8), 5)
    assert len(five) == 5 and five[0].shape == (2, 8, 3) and five[0].dtype == np.uint8
    # 7 events / 5 -> chunks of 1, the last takes the remainder (events 4, 5, 6)
    assert five[0][0, 0].tolist() == [255, 0, 0] and five[0][0, 1].tolist() == [255, 255, 255]
    assert five[1][0, 1].tolist() == [0, 0, 255]
    assert five[4][0, 4].tolist() == [255, 0, 0] and five[4][0, 5].tolist() == [0, 0, 255]
    assert one[0, 1].tolist() == [255, 0, 0]  # the later ON event at (1, 0) overwrote the OFF one
    assert (one[1] == 255).all()


# ---------------------------------------------------------------------------------------------------------------
# the split build


def _tree_hash(split_dir: Path) -> str:
    lines = sorted(f"{p.relative_to(split_dir).as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                   for p in split_dir.rglob("*") if p.is_file() and p.name != MANIFEST_JSON
                   and "_clips" not in p.relative_to(split_dir).parts)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def test_build_dsec_split_end_to_end_and_rerun(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    hw = (24, 32)
    blosc = "blosc" if importlib.util.find_spec("hdf5plugin") else None
    seqs = [write_dsec_sequence(tmp_path / "dsec", "interlaken_00_a", rng, sensor_hw=hw, compression=blosc),
            write_dsec_sequence(tmp_path / "dsec", "thun_00_a", rng, sensor_hw=hw, t_offset=3_000_000)]
    qs = ["What is this scene about?", "Describe the following scene."]
    out = tmp_path / "out"
    m = build_dsec_split([s["dir"] for s in seqs], out, "my_egpt_dsec_seq_1s", sensor_hw=hw, questions=qs)
    d = out / "my_egpt_dsec_seq_1s"
    assert m["counts"]["clips"] == 6 and m["counts"]["records"] == 12 and m["failed"] == {}
    assert m["groups"] == ["interlaken_00_a", "thun_00_a"] and m["counts"]["frames"] == 6 * 20
    assert m["content_hash"] == _tree_hash(d) and verify_split(d) == []
    recs = read_instructions(d)
    r = next(r for r in recs if r["clip_id"] == "thun_00_a/000001" and r["conversations"][0]["value"] == qs[1])
    assert r["event_data"] == "thun_00_a/000001.npz" and r["video_data"] == "thun_00_a/000001"
    assert r["conversations"] == [{"from": "human", "value": qs[1]}, {"from": "gpt", "value": ""}]
    assert r["meta"]["events_file"] == "thun_00_a/events/left/events.h5"
    seq = seqs[1]
    t0 = int(seq["timestamps"][0]) + 500_000
    assert (r["time_start_us"], r["time_end_us"]) == (t0, t0 + 1_000_000)
    paths = record_paths(d, r)
    win = read_events_npz(paths["event_data"])
    gt = make_events(seq["x"], seq["y"], seq["t_abs"], seq["p"])
    np.testing.assert_array_equal(win.events, truth(gt, t0, t0 + 1_000_000))
    assert r["n_events"] == win.events.size > 0
    assert [p.name for p in paths["frames"]] == [f"{i:06d}.png" for i in range(10, 30)]
    src = seq["dir"] / "images/left/rectified/000017.png"
    assert (paths["video_data"] / "000017.png").read_bytes() == src.read_bytes()  # copied, not re-encoded
    assert r["meta"]["frame_timestamps_us"] == seq["timestamps"][10:30].tolist()
    # rerun: nothing is redone, same manifest
    markers = {p: p.stat().st_mtime_ns for p in (d / "_clips").rglob("*.json")}
    m2 = build_dsec_split([s["dir"] for s in seqs], out, "my_egpt_dsec_seq_1s", sensor_hw=hw, questions=qs)
    assert m2 == m and {p: p.stat().st_mtime_ns for p in markers} == markers
    # rectified variant drops the events the map sends off-sensor
    m3 = build_dsec_split([seqs[0]["dir"]], out, "rect", sensor_hw=hw, rectify=True, max_clips_per_sequence=1)
    rr = read_instructions(out / "rect")[0]
    ev0 = truth(make_events(seqs[0]["x"], seqs[0]["y"], seqs[0]["t_abs"], seqs[0]["p"]), rr["time_start_us"],
                rr["time_end_us"])
    exp, dropped = rectify_to_pixels(ev0, seqs[0]["rectify_map"], hw)
    np.testing.assert_array_equal(read_events_npz(record_paths(out / "rect", rr)["event_data"]).events, exp)
    assert rr["meta"]["rectify_dropped"] == dropped > 0 and m3["counts"]["clips"] == 1


def test_build_dsec_split_bad_inputs_are_recorded_and_rerun_completes(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    hw = (24, 32)
    root = tmp_path / "dsec"
    good = write_dsec_sequence(root, "a_good", rng, sensor_hw=hw)
    miss = write_dsec_sequence(root, "b_missing_frame", rng, sensor_hw=hw)
    short = write_dsec_sequence(root, "c_short", rng, sensor_hw=hw, drop_image_window_rel_us=(1_100_000, 1_900_000))
    bad = write_dsec_sequence(root, "d_bad_events", rng, sensor_hw=hw)
    noev = write_dsec_sequence(root, "e_no_events", rng, sensor_hw=hw)
    cut = write_dsec_sequence(root, "f_truncated", rng, sensor_hw=hw)
    # b: frame 25 missing (clips 1 and 2 need it)
    frame25 = miss["dir"] / "images/left/rectified/000025.png"
    saved = frame25.read_bytes()
    frame25.unlink()
    # d: unsorted events inside clip 0 only, an x outside the sensor inside clip 2 only
    t_rel, x = bad["t_abs"] - bad["t_offset"], bad["x"].copy()
    img0 = int(bad["timestamps"][0]) - bad["t_offset"]
    i = next(i for i in range(t_rel.size - 1) if t_rel[i] >= img0 + 200_000 and t_rel[i] // 1000 ==
             t_rel[i + 1] // 1000 and t_rel[i] < t_rel[i + 1])
    t_bad = t_rel.copy()
    t_bad[i], t_bad[i + 1] = t_bad[i + 1], t_bad[i]
    j = int(np.searchsorted(t_rel, img0 + 1_800_000))
    x[j] = hw[1]
    write_events_h5(bad["dir"] / "events/left/events.h5", x, bad["y"], t_bad, bad["p"], bad["t_offset"])
    (noev["dir"] / "events/left/events.h5").unlink()
    data = (cut["dir"] / "events/left/events.h5").read_bytes()
    (cut["dir"] / "events/left/events.h5").write_bytes(data[: len(data) // 3])

    dirs = [s["dir"] for s in (good, miss, short, bad, noev, cut)]
    m = build_dsec_split(dirs, tmp_path / "out", "test", sensor_hw=hw)
    assert m["finished"] == ["a_good/000000", "a_good/000001", "a_good/000002", "b_missing_frame/000000",
                             "c_short/000000", "c_short/000001", "d_bad_events/000001"]
    f = {k: v["error"] for k, v in m["failed"].items()}
    assert sorted(f) == ["b_missing_frame/000001", "b_missing_frame/000002", "c_short/000002",
                         "d_bad_events/000000", "d_bad_events/000002", "e_no_events", "f_truncated"]
    assert re.search(r"frame 15 file .*b_missing_frame/images/left/rectified/000025\.png not found", 
                     f["b_missing_frame/000001"])
    assert re.search(r"clip c_short/000002: 4 images in \[\d+, \d+\) µs by .*c_short/images/timestamps\.txt; "
                     r"expected at least 8 frames", f["c_short/000002"])
    assert re.search(rf"d_bad_events/events/left/events\.h5: t is not sorted at index {i + 1}",
                     f["d_bad_events/000000"])
    assert re.search(rf"events\.h5: x=32 at index {j} is outside the sensor \(24x32, HxW\)",
                     f["d_bad_events/000002"])
    assert re.search(r"events file .*e_no_events/events/left/events\.h5: not found", f["e_no_events"])
    assert re.search(r"f_truncated/events/left/events\.h5: cannot be opened as HDF5", f["f_truncated"])
    assert m["counts"]["clips"] == 7 and m["counts"]["failed"] == 7 and m["content_hash"] == _tree_hash(
        tmp_path / "out/test")
    # fix two inputs and rerun: the rest completes, finished clips are not redone
    frame25.write_bytes(saved)
    shutil.copy(good["dir"] / "events/left/events.h5", noev["dir"] / "events/left/events.h5")
    d = tmp_path / "out/test"
    before = {p: p.stat().st_mtime_ns for p in (d / "_clips").rglob("*.done.json")}
    m2 = build_dsec_split(dirs, tmp_path / "out", "test", sensor_hw=hw)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert set(m2["finished"]) == set(m["finished"]) | {"b_missing_frame/000001", "b_missing_frame/000002",
                                                        "e_no_events/000000", "e_no_events/000001",
                                                        "e_no_events/000002"}
    assert sorted(m2["failed"]) == ["c_short/000002", "d_bad_events/000000", "d_bad_events/000002", "f_truncated"]
    assert len(read_instructions(d)) == m2["counts"]["records"] == 12 and verify_split(d) == []


def test_empty_window_clip_is_valid(tmp_path: Path) -> None:
    """A clip whose window has no events (e.g. a gap in the stream) is written with zero events."""
    rng = np.random.default_rng(10)
    hw = (24, 32)
    seq = write_dsec_sequence(tmp_path / "dsec", "gap", rng, sensor_hw=hw)
    t_rel = seq["t_abs"] - seq["t_offset"]
    img0 = int(seq["timestamps"][0]) - seq["t_offset"]
    keep = (t_rel < img0) | (t_rel >= img0 + 1_000_000)  # clip 0 [img0, img0 + 1 s) has no events
    write_events_h5(seq["dir"] / "events/left/events.h5", seq["x"][keep], seq["y"][keep], t_rel[keep],
                    seq["p"][keep], seq["t_offset"])
    m = build_dsec_split([seq["dir"]], tmp_path / "out", "s", sensor_hw=hw)
    recs = {r["clip_id"]: r for r in read_instructions(tmp_path / "out/s")}
    assert m["failed"] == {} and recs["gap/000000"]["n_events"] == 0 and recs["gap/000001"]["n_events"] > 0
    assert read_events_npz(record_paths(tmp_path / "out/s", recs["gap/000000"])["event_data"]).events.size == 0
    assert open_sequence(seq["dir"]).timestamps.size == 50
