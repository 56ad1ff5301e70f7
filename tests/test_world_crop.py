"""The square each model receives: one crop rule (sdlib.world.crop) that both models' preprocessors follow, and
answers that state nothing outside it."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sdlib.models.eventgpt_runner import CLIP_MEAN, CLIP_STD, clip_style_preprocess
from sdlib.models.scale import ScaleSizes
from sdlib.models.videollava import ResizeNormalize
from sdlib.world import (EVENT_INPUT_PX, TARGET_INPUT_PX, EventSimConfig, Viewing, WorldConfig, all_answers,
                         centre_crop, clip_times_us, event_image, luminance, make_clip, observe, render_radiance,
                         rgb_sample_times_s, sample_scene, simulate_events)
from sdlib.world.facts import MIN_HEIGHT_INPUT_PX, MIN_VISIBLE_AREA_INPUT_PX, MIN_VISIBLE_FRACTION
from sdlib.world.render import CAMERA_HEIGHT_M, Camera, camera_dn
from sdlib.world.scene import Ego, Road, RoadUser, Scene

PREPROCESSORS = {"ResizeNormalize": ResizeNormalize, "clip_style_preprocess": clip_style_preprocess}


def test_the_default_input_sizes_are_the_scale_models():
    sizes = ScaleSizes()
    assert (TARGET_INPUT_PX, EVENT_INPUT_PX) == (sizes.target_image, sizes.event_image) == (56, 80)
    assert Viewing().input_px("rgb") == 56 and Viewing().input_px("events") == 80
    cfg = WorldConfig()
    assert (cfg.viewing.rgb_input_px, cfg.viewing.event_input_px) == (56, 80)


def test_centre_crop_geometry():
    c = centre_crop(96, 128, 56)  # 128x96 -> 75x56, keep columns 9..65
    assert (c.resized_h, c.resized_w, c.top, c.left) == (56, 75, 0, 9)
    assert c.box == pytest.approx((9 * 128 / 75, 65 * 128 / 75, 0.0, 96.0))
    assert c.input_px_per_frame_px == pytest.approx(56 / 96)
    c = centre_crop(96, 128, 80)  # -> 107x80, keep columns 13..93
    assert (c.resized_w, c.left) == (107, 13) and c.box[:2] == pytest.approx((13 * 128 / 107, 93 * 128 / 107))
    assert centre_crop(56, 56, 56).box == (0.0, 56.0, 0.0, 56.0)
    portrait = centre_crop(128, 96, 56)
    assert (portrait.resized_h, portrait.resized_w, portrait.top, portrait.left) == (75, 56, 9, 0)
    with pytest.raises(ValueError, match="frame 0x128"):
        centre_crop(0, 128, 56)


def _pixels(frames: np.ndarray, size: int) -> torch.Tensor:
    """The reference: resize to centre_crop's size, keep its square, CLIP-normalise."""
    c = centre_crop(frames.shape[1], frames.shape[2], size)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(c.resized_h, c.resized_w), mode="bilinear", antialias=True, align_corners=False)
    x = x[..., c.top:c.top + size, c.left:c.left + size]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


@pytest.mark.parametrize("name", list(PREPROCESSORS))
@pytest.mark.parametrize("shape, size", [((96, 128), 56), ((96, 128), 80), ((480, 640), 224), ((128, 96), 56),
                                         ((56, 56), 56)])
def test_both_preprocessors_keep_exactly_the_worlds_crop(name, shape, size):
    frames = np.random.default_rng(0).integers(0, 256, size=(2, *shape, 3), dtype=np.uint8)
    got = PREPROCESSORS[name](size)(frames)
    assert got.shape == (2, 3, size, size)
    torch.testing.assert_close(got, _pixels(frames, size), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(PREPROCESSORS))
@pytest.mark.parametrize("shape, size", [((96, 128), 56), ((96, 128), 80), ((128, 96), 80)])
def test_what_lies_outside_the_crop_box_never_reaches_the_model(name, shape, size):
    """Stripes 2-4 frame pixels outside the crop box leave the model's input unchanged; stripes 2-4 pixels inside it
    change it (the box is in frame pixels, independent of the resampling)."""
    h, w = shape
    u0, u1, v0, v1 = centre_crop(h, w, size).box
    pre = PREPROCESSORS[name](size)
    grey = np.full((1, h, w, 3), 128, dtype=np.uint8)
    base = pre(grey)

    def marked(lo, hi, axis):
        img = grey.copy()
        lo, hi = max(int(math.floor(lo)), 0), min(int(math.ceil(hi)), (w if axis == 1 else h))
        if axis == 1:
            img[:, :, lo:hi] = (255, 0, 0)
        else:
            img[:, lo:hi] = (255, 0, 0)
        return pre(img)

    long_axis, a, b = (1, u0, u1) if w > h else (0, v0, v1)
    for lo, hi in ((a - 4, a - 2), (b + 2, b + 4)):  # outside
        assert torch.equal(marked(lo, hi, long_axis), base), (lo, hi)
    for lo, hi in ((a + 2, a + 4), (b - 4, b - 2)):  # inside
        assert (marked(lo, hi, long_axis) - base).abs().max() > 0.5, (lo, hi)


# --------------------------------------------------------------------------------------------------------------------
# an object just outside the square is never stated, one just inside is


def _street(ego_speed: float) -> Scene:
    road = Road(lanes_forward=2, lanes_oncoming=1, lane_width_m=3.2, sidewalk_width_m=6.0, curvature_per_m=0.0,
                centre_line="dashed", asphalt_albedo=0.12, intersection_s_m=None, intersection_width_m=10.0,
                crosswalk_s_m=None)
    return Scene(duration_s=1.0, illumination="day", environment="urban", road=road,
                 ego=Ego(lane=0, speed_mps=ego_speed), road_users=(), statics=(), traffic_light=None)


def _pedestrian_u(scene: Scene, x: float, s0: float) -> tuple[float, float]:
    """Smallest left edge and largest right edge (px) over the clip of a pedestrian walking away at lateral X = x."""
    cam = Camera(128, 96)
    lo, hi = math.inf, -math.inf
    for t in np.linspace(0.0, 1.0, 21):
        z = s0 + 1.4 * t - scene.ego_s(t)
        lo = min(lo, cam.cx + (x - 0.25) * cam.focal_px / z)
        hi = max(hi, cam.cx + (x + 0.25) * cam.focal_px / z)
    return lo, hi


def _place_pedestrian(scene: Scene, inside: bool) -> RoadUser:
    """A red-shirted pedestrian walking away on the right, 15 m ahead at mid-clip, wholly outside both models' squares
    (by > 2 px) but inside the 4:3 frame for the whole clip, or wholly inside both squares (by > 2 px)."""
    u1_crop = max(centre_crop(96, 128, s).box[1] for s in (56, 80))
    u1_min_crop = min(centre_crop(96, 128, s).box[1] for s in (56, 80))
    s0 = 15.0 - 0.7 + scene.ego_s(0.5)
    for x in np.arange(3.0, 14.0, 0.05):
        lo, hi = _pedestrian_u(scene, x, s0)
        if (inside and hi < u1_min_crop - 2) or (not inside and lo > u1_crop + 2 and hi < 127.0):
            best = x
            if not inside:
                break
    d = best + scene.road.lane_centre_m(scene.ego.lane)
    return RoadUser(uid=0, kind="pedestrian", colour="red", s_m=s0, d_m=float(d), heading_rad=0.0, speed_mps=1.4)


@pytest.mark.parametrize("ego_speed", [0.0, 2.0], ids=["ego standing", "ego moving"])
@pytest.mark.parametrize("inside", [False, True], ids=["just outside", "just inside"])
def test_an_object_just_outside_the_square_is_never_stated_and_one_inside_is(inside, ego_speed):
    empty = _street(ego_speed)
    ped = _place_pedestrian(empty, inside)
    scene = dataclasses.replace(empty, road_users=(ped,))
    # the target's 8 frames (noise-free, so that only the pedestrian differs) through its preprocessing
    times = rgb_sample_times_s(1.0)
    frames = {k: np.round(camera_dn(render_radiance(s, times, 128, 96), "day")).astype(np.uint8)
              for k, s in (("with", scene), ("without", empty))}
    assert np.abs(frames["with"].astype(int) - frames["without"]).max() > 20  # it is in the rendered 4:3 frame
    target_in = {k: ResizeNormalize(56)(f) for k, f in frames.items()}
    # the drafter's event image (no background activity here, so that only the pedestrian's events differ)
    times_us = clip_times_us(1.0, 100)
    images = {}
    for k, s in (("with", scene), ("without", empty)):
        ev = simulate_events(luminance(render_radiance(s, times_us / 1e6, 128, 96)), times_us, EventSimConfig(),
                             np.random.default_rng(3))
        images[k] = event_image(ev, 128, 96)
    assert (images["with"] != images["without"]).any()  # its events are on the 4:3 sensor
    drafter_in = {k: clip_style_preprocess(80)(img) for k, img in images.items()}
    stated = {v: [o.uid for o in observe(scene, v).objects] for v in ("rgb", "events")}
    if inside:
        assert (target_in["with"] - target_in["without"]).abs().max() > 0.5
        assert (drafter_in["with"] - drafter_in["without"]).abs().max() > 0.5
        assert stated == {"rgb": [0], "events": [0]}
    else:
        assert torch.equal(target_in["with"], target_in["without"])
        assert torch.equal(drafter_in["with"], drafter_in["without"])
        assert stated == {"rgb": [], "events": []}


# --------------------------------------------------------------------------------------------------------------------
# over many seeded scenes (geometry written out here, independently of facts.py)


def _box(cam: Camera, x: float, z: float, half: float, height: float) -> tuple[float, float, float, float]:
    f = cam.focal_px / z
    return cam.cx + (x - half) * f, cam.cx + (x + half) * f, cam.cy + (CAMERA_HEIGHT_M - height) * f, \
        cam.cy + CAMERA_HEIGHT_M * f


def _inside(box, crop) -> float:
    return max(min(box[1], crop[1]) - max(box[0], crop[0]), 0.0) * max(min(box[3], crop[3]) - max(box[2], crop[2]), 0.0)


def _enough_inside(box, crop, px) -> bool:
    area = (box[1] - box[0]) * (box[3] - box[2])
    got = _inside(box, crop)
    return got > 0 and (got >= MIN_VISIBLE_FRACTION * area or got * px * px >= MIN_VISIBLE_AREA_INPUT_PX)


def _static_box(scene, cam, o, t):
    if o.kind == "building":
        side = 1.0 if o.d_m > 0 else -1.0
        x, z = scene.to_camera(o.s_m, o.d_m + side * o.width_m / 2, t)
        return z, _box(cam, x, z, o.width_m / 2, o.height_m)
    x, z = scene.to_camera(o.s_m, o.d_m, t)
    return z, _box(cam, x, z, {"tree": o.width_m / 2, "pole": 0.1, "streetlamp": 0.45}[o.kind], o.height_m)


def test_no_stated_object_lies_outside_the_models_view():
    rng = np.random.default_rng(300)
    cam = Camera(128, 96)
    stated = {"users": 0, "statics": 0, "lights": 0}
    in_frame_not_in_square = 0
    for _ in range(300):
        s = sample_scene(rng)
        t = s.duration_s / 2
        for view, size in (("rgb", 56), ("events", 80)):
            crop = centre_crop(96, 128, size)
            box_c, px = crop.box, crop.input_px_per_frame_px
            obs = observe(s, view)
            ids = {o.uid for o in obs.objects}
            for u in s.road_users:
                su, du = u.position(t)
                x, z = s.to_camera(su, du, t)
                if z <= 1.5:
                    assert u.uid not in ids
                    continue
                w, h = u.size_m
                b = _box(cam, x, z, w / 2, h)
                if u.uid in ids:
                    stated["users"] += 1
                    assert _enough_inside(b, box_c, px), (view, u)
                    assert (b[3] - b[2]) * px >= MIN_HEIGHT_INPUT_PX
                elif b[1] > 0 and b[0] < 128 and (b[3] - b[2]) * px >= 3 and _inside(b, box_c) == 0:
                    in_frame_not_in_square += 1
            for kind in obs.statics:
                stated["statics"] += 1
                boxes = [_static_box(s, cam, o, t) for o in s.statics if o.kind == kind]
                assert any(z > 1.5 and _enough_inside(b, box_c, px) and (b[3] - b[2]) * px >= MIN_HEIGHT_INPUT_PX
                           for z, b in boxes), (view, kind)
            if obs.light is not None:
                stated["lights"] += 1
                tl = s.traffic_light
                x, z = s.to_camera(tl.s_m, tl.d_m, t)
                whole = _box(cam, x, z, 0.18, tl.pole_height_m + 0.95)
                housing = (whole[0], whole[1], whole[2], whole[2] + 0.95 * cam.focal_px / z)
                assert _inside(housing, box_c) >= MIN_VISIBLE_FRACTION * (housing[1] - housing[0]) * \
                    (housing[3] - housing[2]), view
    assert stated["users"] > 1000 and stated["statics"] > 800 and stated["lights"] > 100, stated
    assert in_frame_not_in_square > 30  # the scenes do put objects where only the full frame would see them


def test_stated_objects_change_the_targets_input():
    """Rendered check: taking away any road user or static kind the RGB answer states changes the target's 56-px
    input at mid-clip (noise-free frames)."""
    rng = np.random.default_rng(8)
    pre = ResizeNormalize(56)
    checked = 0
    for _ in range(6):
        s = sample_scene(rng, illumination="day")
        obs = observe(s, "rgb")

        def model_input(scene):
            return pre(np.round(camera_dn(render_radiance(scene, np.array([0.5]), 128, 96), "day")).astype(np.uint8))

        full = model_input(s)
        variants = [dataclasses.replace(s, road_users=tuple(u for u in s.road_users if u.uid != o.uid))
                    for o in obs.objects]
        variants += [dataclasses.replace(s, statics=tuple(o for o in s.statics if o.kind != k)) for k in obs.statics]
        for v in variants:
            assert (model_input(v) - full).abs().max() > 0.05
            checked += 1
    assert checked >= 20


def test_a_larger_input_states_smaller_things_and_make_clip_passes_its_sizes_on():
    """Sizes count in the model's input pixels: at 224 px (the real Video-LLaVA's input) the RGB view states far
    objects that 56 px cannot show; make_clip writes its answers for the sizes its WorldConfig names."""
    rng = np.random.default_rng(4)
    small = large = common = 0
    for _ in range(150):
        s = sample_scene(rng)
        a = {o.uid for o in observe(s, "rgb").objects}
        b = {o.uid for o in observe(s, "rgb", viewing=Viewing(rgb_input_px=224)).objects}
        small, large, common = small + len(a), large + len(b), common + len(a & b)
    assert common >= 0.97 * small and large >= small + 30
    cfg = WorldConfig(rgb_input_px=224)
    clip = make_clip(np.random.default_rng(9), cfg)
    _, _, _, qa_rng = np.random.default_rng(9).spawn(4)
    assert clip.answers == all_answers(clip.scene, qa_rng, rgb_times_s=clip.rgb_times_us / 1e6, viewing=cfg.viewing)
