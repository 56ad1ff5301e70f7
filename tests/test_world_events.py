"""Event simulator: the vectorized rule against a plain per-pixel reference, exact small cases, noise statistics."""

import dataclasses
import math

import numpy as np
import pytest

from sdlib.world import (EVENT_DTYPE, WORLD_EVENT_CONFIG, Camera, EventSimConfig, clip_times_us, luminance,
                         render_radiance, sample_scene, simulate_events)
from sdlib.world.events import (background_activity, background_rate_map, draw_pixel_params, log_intensity,
                                sort_events)


def reference_events(lum, times_us, config, rng):
    """The ESIM rule written as a scalar loop, one pixel at a time (test oracle only)."""
    n_frames, height, width = lum.shape
    params = draw_pixel_params(rng, height, width, config)
    rate = config.shot_noise_hz
    if config.ba_hz > 0:  # each pixel's rate from its mean luminance over the clip
        rate = np.array([[float(config.background_rate_hz(lum[:, y, x].mean(dtype=np.float32)))
                          for x in range(width)] for y in range(height)])
    noise = background_activity(rng, height, width, int(times_us[0]), int(times_us[-1]), rate)
    logs = log_intensity(lum, config.log_eps)
    rows = []
    for y in range(height):
        for x in range(width):
            cp, cn = float(params.c_pos[y, x]), float(params.c_neg[y, x])
            leak = float(params.leak_hz[y, x]) * cp
            ref = float(logs[0, y, x])
            last = None
            for k in range(1, n_frames):
                t0, t1 = int(times_us[k - 1]), int(times_us[k])
                dt = t1 - t0
                l0, l1 = float(logs[k - 1, y, x]), float(logs[k, y, x])
                if config.leak_hz > 0:
                    ref = ref - leak * (dt / 1e6)
                d = l1 - ref
                c = cp if d >= 0 else cn
                step, p = (c, 1) if d >= 0 else (-c, 0)
                n = math.floor(abs(d) / c)
                for j in range(1, n + 1):
                    level = ref + j * step
                    span = l1 - l0
                    frac = (level - l0) / span if span != 0 else 1.0
                    frac = min(max(frac, 0.0), 1.0)
                    t = t0 + math.floor(dt * frac + 0.5)
                    if config.refractory_us == 0 or last is None or t - last >= config.refractory_us:
                        rows.append((x, y, t, p))
                        last = t
                ref = ref + n * step
    ev = np.array(rows, dtype=EVENT_DTYPE) if rows else np.empty(0, EVENT_DTYPE)
    return sort_events(np.concatenate([ev, noise]), width, height)


def _small_world_clip(seed=3, size=(32, 24), frames=41):
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, ego_moving=True, illumination="dusk")
    times = clip_times_us(1.0, 40)[:frames]
    lum = luminance(render_radiance(scene, times / 1e6, *size))
    return lum, times


def _blinking_clip():
    """12x16 pixels with strong, fast, mixed-sign changes, so that refractory and multi-event intervals occur."""
    rng = np.random.default_rng(7)
    t = np.arange(30)
    base = rng.uniform(0.05, 1.0, size=(12, 16))
    phase = rng.uniform(0, 2 * np.pi, size=(12, 16))
    lum = base[None] * np.exp(2.5 * np.sin(0.9 * t[:, None, None] + phase[None]))  # [30, 12, 16]
    times = np.cumsum(rng.integers(800, 3000, size=30)).astype(np.int64)
    return lum.astype(np.float32), times


@pytest.mark.parametrize("clip", ["world", "blinking"])
@pytest.mark.parametrize("config", [
    EventSimConfig(sigma_c=0.0, refractory_us=0),
    EventSimConfig(sigma_c=0.05, refractory_us=0),
    EventSimConfig(sigma_c=0.05, refractory_us=700),
    EventSimConfig(c_pos=0.15, c_neg=0.3, sigma_c=0.05, refractory_us=300, leak_hz=3.0),
    EventSimConfig(sigma_c=0.03, refractory_us=500, leak_hz=1.0, shot_noise_hz=4.0),
    EventSimConfig(sigma_c=0.03, refractory_us=500, leak_hz=1.0, ba_hz=3.0, ba_ref_luminance=0.5),
], ids=["ideal", "mismatch", "refractory", "leak", "noise", "light-dependent noise"])
def test_vectorized_equals_scalar_reference(clip, config):
    lum, times = _small_world_clip() if clip == "world" else _blinking_clip()
    fast = simulate_events(lum, times, config, np.random.default_rng(11))
    slow = reference_events(lum, times, config, np.random.default_rng(11))
    assert len(fast) > 100
    # identical arrays: every event, timestamp and polarity, in the same order
    np.testing.assert_array_equal(fast, slow)
    # and, said differently, identical counts per pixel and polarity
    h, w = lum.shape[1:]
    for ev in (fast, slow):
        assert ev.dtype == EVENT_DTYPE
    counts = [np.bincount((e["y"].astype(int) * w + e["x"]) * 2 + e["p"], minlength=2 * h * w) for e in (fast, slow)]
    np.testing.assert_array_equal(counts[0], counts[1])


def test_refractory_actually_drops_events_in_the_comparison_clip():
    lum, times = _blinking_clip()
    free = simulate_events(lum, times, EventSimConfig(sigma_c=0.05, refractory_us=0), np.random.default_rng(1))
    held = simulate_events(lum, times, EventSimConfig(sigma_c=0.05, refractory_us=700), np.random.default_rng(1))
    assert len(held) < 0.9 * len(free)


def test_single_ramp_gives_the_exact_esim_events():
    # log luminance rises by 1.1 between t=0 and t=1000 µs: levels 0.2 .. 1.0 are crossed at 1000 * level / 1.1
    lum = np.array([1.0, math.exp(1.1)], dtype=np.float64).reshape(2, 1, 1)
    times = np.array([0, 1000], dtype=np.int64)
    config = EventSimConfig(sigma_c=0.0, refractory_us=0, log_eps=0.0)
    ev = simulate_events(lum, times, config, np.random.default_rng(0))
    assert ev["t"].tolist() == [182, 364, 545, 727, 909]
    assert ev["p"].tolist() == [1] * 5
    # falling: OFF events at the same fractions
    down = simulate_events(lum[::-1].copy(), times, config, np.random.default_rng(0))
    assert down["t"].tolist() == [182, 364, 545, 727, 909] and down["p"].tolist() == [0] * 5
    # a 300 µs refractory period keeps 182, 545, 909 (364 and 727 come too soon after a kept event)
    held = simulate_events(lum, times, EventSimConfig(sigma_c=0.0, refractory_us=300, log_eps=0.0),
                           np.random.default_rng(0))
    assert held["t"].tolist() == [182, 545, 909]


def test_reference_level_keeps_the_remainder_across_frames():
    # +0.15 then +0.15 again with C = 0.2: no event after the first step, one event in the second (at 0.2)
    lum = np.exp(np.array([0.0, 0.15, 0.30])).reshape(3, 1, 1)
    ev = simulate_events(lum, np.array([0, 100, 200]), EventSimConfig(sigma_c=0.0, refractory_us=0, log_eps=0.0),
                         np.random.default_rng(0))
    assert ev["t"].tolist() == [133]  # 100 + 100 * (0.2 - 0.15) / 0.15


def test_static_input_gives_no_events_without_noise():
    lum = np.full((20, 8, 8), 0.3, dtype=np.float32)
    ev = simulate_events(lum, np.arange(20) * 5000, EventSimConfig(), np.random.default_rng(0))
    assert len(ev) == 0 and ev.dtype == EVENT_DTYPE


def test_output_is_sorted_and_inside_the_sensor():
    lum, times = _small_world_clip(seed=5)
    ev = simulate_events(lum, times, EventSimConfig(shot_noise_hz=5.0, leak_hz=0.5), np.random.default_rng(2))
    assert len(ev) > 0
    assert np.all(np.diff(ev["t"]) >= 0)
    assert ev["x"].max() < 32 and ev["y"].max() < 24
    assert ev["t"].min() >= times[0] and ev["t"].max() <= times[-1]
    assert set(np.unique(ev["p"])) <= {0, 1}


def test_background_activity_statistics():
    rng = np.random.default_rng(4)
    rate, h, w = 5.0, 32, 40
    ev = background_activity(rng, h, w, 0, 2_000_000, rate)
    expected = rate * h * w * 2.0
    assert abs(len(ev) - expected) < 5 * math.sqrt(expected)
    assert abs(ev["p"].mean() - 0.5) < 0.03
    assert abs(ev["t"].mean() - 1_000_000) < 20_000
    counts = np.bincount(ev["y"].astype(int) * w + ev["x"], minlength=h * w)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.2)  # Poisson: variance = mean


def test_background_activity_follows_a_per_pixel_rate_map():
    rng = np.random.default_rng(6)
    rate = np.where(np.arange(40)[None, :] < 20, 1.0, 10.0) * np.ones((30, 1))  # [30, 40]: 1 Hz left, 10 Hz right
    ev = background_activity(rng, 30, 40, 0, 2_000_000, rate)
    left = int((ev["x"] < 20).sum())
    assert left == pytest.approx(1.0 * 600 * 2.0, abs=5 * math.sqrt(1200))
    assert len(ev) - left == pytest.approx(10.0 * 600 * 2.0, abs=5 * math.sqrt(12000))
    with pytest.raises(ValueError, match="one rate per pixel"):
        background_activity(rng, 30, 40, 0, 10, rate[:, :10])


def test_background_rate_rises_as_light_falls():
    cfg = WORLD_EVENT_CONFIG
    lum = np.array([0.8, 0.1, 0.01, 1e-3, 1e-4, 1e-6])
    rate = cfg.background_rate_hz(lum)
    assert np.all(np.diff(rate) >= 0) and rate[0] < rate[-1]
    assert rate[1] == pytest.approx(0.2)  # daylit asphalt: ~0.1-1 Hz on real sensors
    assert rate[3] == pytest.approx(0.2 * 10 ** 1.0)  # a hundred times less light: ten times the noise
    assert rate[-1] == cfg.ba_max_hz == 5.0  # saturates in the dark ("several Hz")
    assert EventSimConfig().background_rate_hz(lum).max() == 0.0  # off unless asked for


def _static_street(illumination):
    """A scene in which nothing moves: only background activity and leak make events."""
    s = sample_scene(np.random.default_rng(40), illumination=illumination, ego_moving=False)
    return dataclasses.replace(s, road_users=tuple(u for u in s.road_users if not u.moving), traffic_light=None)


def test_background_activity_of_a_static_scene_rises_as_light_falls():
    """Measured on simulated events of a scene where nothing moves: more noise at dusk than by day, more at night,
    each as the configured rate map predicts, and within a frame, more on dark pixels than on bright ones."""
    times = clip_times_us(1.0, 50)
    counts, per_pixel = {}, {}
    for illum in ("day", "dusk", "night"):
        lum = luminance(render_radiance(_static_street(illum), times / 1e6, 128, 96))  # [T, H, W]
        ev = simulate_events(lum, times, WORLD_EVENT_CONFIG, np.random.default_rng(1))
        expected = float(background_rate_map(lum, WORLD_EVENT_CONFIG).sum())  # leak: first event after 1/leak_hz
        counts[illum] = len(ev)
        assert len(ev) == pytest.approx(expected, rel=0.1), illum
        per_pixel[illum] = (np.bincount(ev["y"].astype(int) * 128 + ev["x"], minlength=128 * 96), lum.mean(0).ravel())
    assert counts["day"] < counts["dusk"] < counts["night"]
    assert counts["night"] > 5 * counts["day"]
    n, lum = per_pixel["night"]
    dark, bright = lum < np.quantile(lum, 0.25), lum > np.quantile(lum, 0.75)
    assert n[dark].mean() > 1.5 * n[bright].mean()


def test_leak_makes_static_pixels_fire_on_events_at_about_the_leak_rate():
    lum = np.full((101, 16, 16), 0.2, dtype=np.float32)  # 2 s static
    times = np.arange(101, dtype=np.int64) * 20_000
    config = EventSimConfig(sigma_c=0.0, refractory_us=0, leak_hz=3.0, leak_spread_decades=0.0)
    ev = simulate_events(lum, times, config, np.random.default_rng(0))
    assert np.all(ev["p"] == 1)
    per_pixel = len(ev) / 256
    assert per_pixel == pytest.approx(6.0, abs=1.0)  # 3 Hz x 2 s


def test_threshold_mismatch_spreads_per_pixel_counts():
    lum = np.exp(np.linspace(0, 3.1, 31))[:, None, None] * np.ones((1, 20, 20))
    times = np.arange(31, dtype=np.int64) * 1000
    ideal = simulate_events(lum, times, EventSimConfig(sigma_c=0.0, log_eps=0.0), np.random.default_rng(0))
    spread = simulate_events(lum, times, EventSimConfig(sigma_c=0.04, log_eps=0.0), np.random.default_rng(0))
    c_ideal = np.bincount(ideal["y"].astype(int) * 20 + ideal["x"], minlength=400)
    c_spread = np.bincount(spread["y"].astype(int) * 20 + spread["x"], minlength=400)
    assert c_ideal.min() == c_ideal.max() == 15  # floor(3.1 / 0.2)
    assert c_spread.std() > 1.0


@pytest.mark.parametrize("bad, message", [
    (lambda lum, t: (lum[0], t), "expected \\[T, H, W\\]"),
    (lambda lum, t: (lum, t[:-1]), "one time per frame"),
    (lambda lum, t: (lum, t[::-1].copy()), "not strictly increasing"),
    (lambda lum, t: (lum, t.astype(float)), "integer microseconds"),
    (lambda lum, t: (-lum, t), "non-negative"),
])
def test_bad_inputs_are_named(bad, message):
    lum, t = np.ones((3, 4, 4)), np.array([0, 10, 20])
    with pytest.raises(ValueError, match=message):
        simulate_events(*bad(lum, t), EventSimConfig(), np.random.default_rng(0))


def test_config_rejects_non_positive_threshold():
    with pytest.raises(ValueError, match="c_pos"):
        EventSimConfig(c_pos=0.0)


def test_standing_ego_static_world_is_silent_to_events():
    """With the ego standing still and noise off, every event lies where a moving road user (or a switching
    traffic light) was drawn at some frame: static structure produces nothing."""
    rng = np.random.default_rng(21)
    width, height = 64, 48
    cam = Camera(width, height)
    times = clip_times_us(1.0, 100)
    checked = 0
    for _ in range(6):
        scene = sample_scene(rng, ego_moving=False)
        lum = luminance(render_radiance(scene, times / 1e6, width, height))
        ev = simulate_events(lum, times, EventSimConfig(), np.random.default_rng(0))
        mask = np.zeros((height, width), dtype=bool)
        boxes = []
        for u in scene.road_users:
            if not u.moving:
                continue
            w, h = u.size_m
            for t in times / 1e6:
                s, d = u.position(t)
                x, z = scene.to_camera(s, d, t)
                if z > 1.0:
                    boxes.append((x, z, w / 2 + 0.1, h))
        tl = scene.traffic_light
        if tl is not None and tl.switches:
            x, z = scene.to_camera(tl.s_m, tl.d_m, 0.0)
            boxes.append((x, z, 0.3, tl.pole_height_m + 1.0))
        for x, z, half, h in boxes:
            u0, v_bottom = cam.project(x - half, 0.0, z)
            u1, v_top = cam.project(x + half, h, z)
            mask[max(int(v_top) - 1, 0):max(int(math.ceil(v_bottom)) + 1, 0),
                 max(int(u0) - 1, 0):max(int(math.ceil(u1)) + 1, 0)] = True
        outside = ~mask[ev["y"], ev["x"]]
        assert outside.sum() == 0, f"{outside.sum()} events away from moving objects"
        checked += len(ev)
    assert checked > 0  # some scenes had moving objects
