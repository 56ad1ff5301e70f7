"""Scenes (sampling, ground truth as data) and the RGB / luminance renderer."""

import dataclasses
import json
import math

import numpy as np
import pytest

from sdlib.world import (Camera, clip_times_us, render_clip, render_radiance, render_target_frames, rgb_camera,
                         rgb_sample_times_s, sample_scene, scene_from_dict, scene_to_dict, target_frame_indices,
                         uniform_frame_indices)
from sdlib.world.render import rgb_noise_dn
from sdlib.world.scene import ILLUMINATIONS, ROAD_USER_KINDS, Ego, Road, Scene, TrafficLight


def test_sampling_is_seeded_and_covers_the_world():
    a = sample_scene(np.random.default_rng(1))
    assert a == sample_scene(np.random.default_rng(1))
    assert a != sample_scene(np.random.default_rng(2))
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(300)]
    assert {s.illumination for s in scenes} == set(ILLUMINATIONS)
    assert {u.kind for s in scenes for u in s.road_users} == set(ROAD_USER_KINDS)
    moving = np.mean([s.ego.moving for s in scenes])
    assert 0.3 < moving < 0.8
    assert any(s.traffic_light is not None and s.traffic_light.switches for s in scenes)
    assert any(s.occluder_uid is not None for s in scenes)
    assert len({len(s.road_users) for s in scenes}) >= 6


def test_forced_conditions():
    rng = np.random.default_rng(3)
    for _ in range(20):
        s = sample_scene(rng, illumination="night", ego_moving=False, occlusion=True)
        assert s.illumination == "night" and s.ego.speed_mps == 0 and s.occluder_uid is not None
    with pytest.raises(ValueError, match="illumination='noon'"):
        sample_scene(rng, illumination="noon")


def test_traffic_in_our_lane_stays_in_front_of_the_camera():
    rng = np.random.default_rng(5)
    for _ in range(200):
        s = sample_scene(rng)
        for u in s.road_users:
            if u.side_on or u.kind == "pedestrian":
                continue
            for t in (0.0, s.duration_s):
                su, du = u.position(t)
                x, z = s.to_camera(su, du, t)
                if abs(du - s.road.lane_centre_m(s.ego.lane)) < 1.0:
                    assert z > 4.0, (u, t, z)


def test_scene_round_trips_through_json():
    s = sample_scene(np.random.default_rng(9), occlusion=True)
    back = scene_from_dict(json.loads(json.dumps(scene_to_dict(s))))
    assert back == s
    with pytest.raises(ValueError, match="scene dict"):
        scene_from_dict({"duration_s": 1.0})


def test_lane_centres_and_errors():
    road = sample_scene(np.random.default_rng(0)).road
    assert road.lane_centre_m(0) == pytest.approx(road.lane_width_m / 2)
    with pytest.raises(ValueError, match="forward lanes"):
        road.lane_centre_m(road.lanes_forward)


def test_frame_policy_is_video_llavas_uniform_sampling():
    assert uniform_frame_indices(201, 8).tolist() == [0, 25, 50, 75, 100, 125, 150, 175]
    assert uniform_frame_indices(20, 8).tolist() == [0, 2, 5, 7, 10, 12, 15, 17]
    assert uniform_frame_indices(8, 8).tolist() == list(range(8))
    with pytest.raises(ValueError, match="n_total=5"):
        uniform_frame_indices(5, 8)
    t = clip_times_us(1.0, 200)
    assert len(t) == 201 and t[0] == 0 and t[-1] == 1_000_000 and set(np.diff(t)) == {5000}
    assert target_frame_indices(201).tolist() == [0, 25, 50, 75, 100, 125, 150, 175]
    assert (rgb_sample_times_s(1.0) * 8).tolist() == list(range(8))


def test_render_clip_shapes_and_target_frames():
    rng = np.random.default_rng(4)
    scene = sample_scene(rng, ego_moving=True)
    clip = render_clip(scene, rng, width=64, height=48, fps=50)
    assert clip.frames.shape == (51, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.luminance.shape == (51, 48, 64) and clip.luminance.dtype == np.float32
    frames, times = clip.target_frames()
    assert frames.shape == (8, 48, 64, 3)
    # the video is the 50 frames before the end time; Video-LLaVA's rule picks 8 of them
    assert times.tolist() == clip.times_us[uniform_frame_indices(50, 8)].tolist()
    assert times.tolist() == [0, 120000, 240000, 360000, 500000, 620000, 740000, 860000]
    direct, direct_times = render_target_frames(scene, rng, 96, 72, fps=50)
    assert direct.shape == (8, 72, 96, 3) and direct_times.tolist() == times.tolist()
    # ego motion changes the image everywhere below the horizon; it is not a still picture
    assert np.abs(np.diff(clip.luminance, axis=0)).mean() > 1e-4


def _bare_scene(illumination="day", light=None, moving=False):
    road = Road(lanes_forward=2, lanes_oncoming=1, lane_width_m=3.2, sidewalk_width_m=2.5, curvature_per_m=0.0,
                centre_line="dashed", asphalt_albedo=0.12, intersection_s_m=None, intersection_width_m=10.0,
                crosswalk_s_m=None)
    return Scene(duration_s=1.0, illumination=illumination, environment="urban", road=road,
                 ego=Ego(lane=0, speed_mps=8.0 if moving else 0.0), road_users=(), statics=(), traffic_light=light)


def test_static_scene_with_standing_ego_renders_identical_frames():
    s = sample_scene(np.random.default_rng(8), ego_moving=False)
    s = dataclasses.replace(s, road_users=tuple(u for u in s.road_users if not u.moving),
                            traffic_light=None)
    rad = render_radiance(s, np.linspace(0, 1, 6), 64, 48)
    assert np.array_equal(rad[0], rad[-1])
    moving = render_radiance(dataclasses.replace(s, ego=dataclasses.replace(s.ego, speed_mps=10.0)),
                             np.array([0.0, 1.0]), 64, 48)
    assert not np.array_equal(moving[0], moving[1])


def test_traffic_light_lamp_switches_colour():
    light = TrafficLight(s_m=10.0, d_m=8.0, pole_height_m=2.0, state_start="red", state_end="green",
                         switch_time_s=0.5)
    scene = _bare_scene(light=light)
    rad = render_radiance(scene, np.array([0.25, 0.75]), 128, 96)
    cam = Camera(128, 96)
    x, z = scene.to_camera(light.s_m, light.d_m, 0.0)
    u0, v_bottom = cam.project(x - 0.18, light.pole_height_m, z)
    u1, v_top = cam.project(x + 0.18, light.pole_height_m + 0.95, z)
    box = np.s_[int(v_top):int(math.ceil(v_bottom)), int(u0):int(math.ceil(u1))]
    change = rad[1][box].sum(axis=(0, 1)) - rad[0][box].sum(axis=(0, 1))  # [3] after - before
    assert change[0] < -1.0  # the red lamp went dark
    assert change[1] > 1.0  # the green lamp lit up
    # nothing else changed
    rest = np.ones((96, 128), dtype=bool)
    rest[box] = False
    assert np.array_equal(rad[0][rest], rad[1][rest])


def test_night_is_darker_noisier_and_lower_in_contrast():
    day, night = _bare_scene("day"), _bare_scene("night")
    rng = np.random.default_rng(0)
    frames = {}
    for name, scene in (("day", day), ("night", night)):
        rad = render_radiance(scene, np.zeros(1), 128, 96)
        frames[name] = rgb_camera(np.repeat(rad, 16, axis=0), scene.illumination, rng).astype(float)  # [16,H,W,3]
    patch = np.s_[:, 60:70, 20:40, 1]  # road, under ambient light only at the left
    assert frames["night"].mean() < 0.5 * frames["day"].mean()
    assert frames["night"][patch].std(axis=0).mean() > 3 * frames["day"][patch].std(axis=0).mean()
    # contrast between the sky band and the road, relative to the noise
    def snr(f):
        return abs(f[:, 5:15].mean() - f[:, 80:90].mean()) / f[:, 80:90].std(axis=0).mean()
    assert snr(frames["night"]) < 0.5 * snr(frames["day"])


@pytest.mark.parametrize("illumination, level", [("day", 0.12), ("dusk", 0.03), ("night", 0.002), ("night", 0.02)])
def test_rgb_noise_model_matches_the_camera(illumination, level):
    rng = np.random.default_rng(1)
    rad = np.full((400, 8, 8, 3), level, dtype=np.float32)
    dn = rgb_camera(rad, illumination, rng).astype(float)
    assert dn.std() == pytest.approx(float(rgb_noise_dn(level, illumination)), rel=0.05)


def test_facade_windows_are_the_windows_the_renderer_paints():
    """`facade_windows` (what the facts use) lists exactly the windows drawn on a facade: at night the lit ones
    glow at their listed places and the unlit ones do not."""
    from sdlib.world.render import WINDOW_LIT, facade_windows
    from sdlib.world.scene import StaticObject
    cam = Camera(256, 192)
    checked = {True: 0, False: 0}
    for seed in range(6):
        building = StaticObject("building", s_m=22.0, d_m=6.0, width_m=12.0, height_m=12.0,
                                colour=(0.35, 0.33, 0.3), window_seed=1000 + seed)
        scene = dataclasses.replace(_bare_scene("night"), statics=(building,))
        img = render_radiance(scene, np.zeros(1), cam.width, cam.height)[0]
        x, z = scene.to_camera(building.s_m, building.d_m, 0.0)  # the face's road-side (left) edge
        for lx0, lx1, ly0, ly1, lit in facade_windows(building.width_m, building.height_m, building.window_seed):
            u, v = cam.project(x + (lx0 + lx1) / 2, (ly0 + ly1) / 2, z)
            if not (0 <= u < cam.width and 0 <= v < cam.height):
                continue
            glows = np.allclose(img[int(v), int(u)], WINDOW_LIT)
            assert glows == lit, (seed, lx0, ly0)
            checked[lit] += 1
    assert checked[True] > 10 and checked[False] > 10
