"""make_clip end to end: sizes, determinism, independent random streams."""

import dataclasses

import numpy as np
import pytest

from sdlib.world import EVENT_DTYPE, QUESTIONS, WorldConfig, event_images, make_clip, tokenize


@pytest.fixture(scope="module")
def clip():
    return make_clip(np.random.default_rng(17))


def test_clip_contents(clip):
    assert clip.rgb_frames.shape == (8, 96, 128, 3) and clip.rgb_frames.dtype == np.uint8
    assert clip.rgb_times_us.tolist() == [0, 125000, 250000, 375000, 500000, 625000, 750000, 875000]
    ev = clip.events
    assert ev.dtype == EVENT_DTYPE and len(ev) > 1000
    assert ev["x"].max() < 128 and ev["y"].max() < 96
    assert 0 <= ev["t"].min() and ev["t"].max() <= 1_000_000 and np.all(np.diff(ev["t"]) >= 0)
    assert len(clip.answers) == len(QUESTIONS)
    assert all(30 <= len(tokenize(a[v])) <= 80 for a in clip.answers for v in ("rgb", "events"))
    imgs = event_images(ev, *clip.sensor_size, n=5)
    assert imgs.shape == (5, 96, 128, 3)


def test_same_seed_same_clip_and_streams_are_independent(clip):
    again = make_clip(np.random.default_rng(17))
    np.testing.assert_array_equal(again.events, clip.events)
    np.testing.assert_array_equal(again.rgb_frames, clip.rgb_frames)
    assert again.answers == clip.answers and again.scene == clip.scene
    # other sensor settings: same scene, same RGB frames, same RGB answers (same wording), different events
    cfg = WorldConfig(events=dataclasses.replace(WorldConfig().events, c_pos=0.3, c_neg=0.3))
    other = make_clip(np.random.default_rng(17), cfg)
    assert other.scene == clip.scene and [a["rgb"] for a in other.answers] == [a["rgb"] for a in clip.answers]
    np.testing.assert_array_equal(other.rgb_frames, clip.rgb_frames)
    assert len(other.events) < len(clip.events)


def test_separate_rgb_size_and_given_scene(clip):
    cfg = WorldConfig(sensor_size=(64, 48), rgb_size=(96, 72), fps=100)
    small = make_clip(np.random.default_rng(1), cfg, scene=clip.scene)
    assert small.scene == clip.scene
    assert small.rgb_frames.shape == (8, 72, 96, 3) and small.events["x"].max() < 64
    # 100 video frames at 100 Hz: arange(0, 100, 12.5) -> 0, 12, 25, 37, 50, 62, 75, 87
    assert small.rgb_times_us.tolist() == [0, 120000, 250000, 370000, 500000, 620000, 750000, 870000]


def test_config_requires_4_by_3():
    with pytest.raises(ValueError, match="sensor_size=100x100"):
        WorldConfig(sensor_size=(100, 100))
