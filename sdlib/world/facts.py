"""What each sensor can know about a scene: the facts the two answer views are written from.

The rules follow the physics of the renderer and the event simulator, evaluated from the scene state with the same
camera, light and sensor models (`render`), so that they can be checked against rendered clips (the tests do):

RGB camera (the target's 8 frames)
- sees an object when some part of it stands out from the road behind it: the part's contrast (8-bit values, any
  colour channel) in units of the camera's noise standard deviation, times its area in pixels (square root of the
  area once above one pixel: noise averages out over a blob) reaches RGB_VISIBLE_SNR; at night the capped gain
  leaves dark, unlit objects in the noise;
- names an object's colour when the body is bright enough in the image (CAMERA_DN_FOR_COLOUR);
- sees static structure (buildings, trees, poles) and the road layout in daylight and at dusk; at night only what
  lights or the ego's headlights reveal;
- reads the traffic light's colour (lamps are bright at any time of day) at the sampled frames: it sees a switch only
  if it happens before the last of the 8 frames.

Event camera
- sees an object when its image moves enough over the clip for its strongest edge to change a pixel's log luminance
  by at least EVENT_VISIBLE_LOG: ln(1 + min(shift_px, 1) (ratio - 1)) with `ratio` the strongest luminance ratio
  among its parts and the road behind it; this depends on motion AND contrast, not on the light level;
- never sees colour, nor the time of day;
- sees static structure and the road layout only when the ego moves (otherwise nothing static changes);
- sees the traffic light only when its lamps switch (or, when the ego moves, as an object of unknown state);
  from which lamp went dark and which lit up, it can tell the states.

Both views drop objects that are too small (MIN_HEIGHT_PX on the nominal 128-px-wide sensor), mostly outside the
view, or mostly hidden behind nearer objects, and mark partly hidden ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .render import (CAMERA_HEIGHT_M, LUMA, Camera, camera_dn, light_level, rgb_noise_dn,
                     rgb_sample_times_s, road_user_parts)
from .scene import COLOURS, MOTOR_VEHICLES, NEAR_CLIP_M, RoadUser, Scene

VIEWS: tuple[str, ...] = ("rgb", "events")
NOMINAL_WIDTH_PX = 128
MIN_HEIGHT_PX = 3.0
MIN_VISIBLE_FRACTION = 0.4  # of the object's box, after clipping to the image and removing nearer objects
PARTLY_HIDDEN_BELOW = 0.8
RGB_VISIBLE_SNR = 3.0
CAMERA_DN_FOR_COLOUR = 45.0
EVENT_VISIBLE_LOG = 0.3  # log-luminance change of the best-placed pixel over the clip (1.5 x the nominal threshold)
NIGHT_SEE_ROAD_M = 25.0  # how far the headlights let the RGB camera see road features at night
SIDEWALK_ALBEDO = 0.26


@dataclass(frozen=True)
class ObjectFact:
    """One road user as a view perceives it."""

    uid: int
    kind: str
    colour: str | None  # None = the view cannot tell
    place: str  # where, as a prepositional phrase: "ahead in our lane", "on the right sidewalk", ...
    side: str  # "left", "ahead", "right" in the image
    distance: str  # "close", "near", "far"
    motion: str  # "moving away", "oncoming", "crossing to the right", "crossing to the left", "stopped", "parked",
    #              "standing", "walking"
    lights_on: bool
    partly_hidden: bool
    z_m: float


@dataclass(frozen=True)
class RoadFacts:
    lanes_forward: int
    lanes_oncoming: int
    curve: str  # "straight", "left", "right"
    centre_line: str
    intersection: bool
    crosswalk: bool


@dataclass(frozen=True)
class LightFacts:
    state_start: str | None  # None = colour not observable
    state_end: str | None
    switched: bool
    distance: str


@dataclass(frozen=True)
class Observation:
    """Everything one view can say about a scene."""

    view: str
    illumination: str | None  # None = not observable
    environment: str | None
    ego_moving: bool
    road: RoadFacts | None
    objects: tuple[ObjectFact, ...]
    light: LightFacts | None
    statics: tuple[str, ...]  # kinds of static structure seen, e.g. ("building", "streetlamp")
    static_visible: bool
    missed: dict[str, int] = field(default_factory=dict)  # kind -> objects in view that this sensor misses;
    # for analysis only (an answer cannot know what its sensor missed)


# --------------------------------------------------------------------------------------------------------------------
# geometry helpers


def _box(cam: Camera, x_c: float, z: float, half_w: float, height: float) -> tuple[float, float, float, float]:
    scale = cam.focal_px / z
    u_c = cam.cx + x_c * scale
    v_g = cam.cy + CAMERA_HEIGHT_M * scale
    return u_c - half_w * scale, u_c + half_w * scale, v_g - height * scale, v_g


_Box = tuple[float, float, float, float]  # u0, u1, v0, v1 in pixels


def _user_box(scene: Scene, cam: Camera, u: RoadUser, t: float) -> tuple[_Box, float, float]:
    """Image box of a road user at time t, and its camera-frame (X, z)."""
    s, d = u.position(t)
    x, z = scene.to_camera(s, d, t)
    w, h = u.size_m
    return _box(cam, x, max(z, 1e-3), w / 2, h), x, z


def _distance_word(z: float) -> str:
    return "close" if z < 12.0 else ("near" if z < 30.0 else "far")


def _side_word(x: float, z: float) -> str:
    a = x / max(z, 1e-3)
    return "left" if a < -0.12 else ("right" if a > 0.12 else "ahead")


def _place(scene: Scene, u: RoadUser, t: float) -> str:
    road = scene.road
    s, d = u.position(t)
    on_road = road.left_edge_m <= d <= road.right_edge_m
    if u.kind == "pedestrian":
        if u.side_on and on_road:
            return "on the zebra crossing"
        if u.side_on:
            return "at the kerb"
        return "on the right sidewalk" if d > road.right_edge_m else "on the left sidewalk"
    if u.parked:
        return "at the right kerb"
    if u.side_on:
        return "in the intersection ahead"
    if u.kind == "bicycle":
        return "along the right edge of the road"
    if not on_road:
        return "at the right kerb" if d > road.right_edge_m else "at the left kerb"
    lane = math.floor(d / road.lane_width_m)
    if lane < 0:
        return "in the oncoming lane" if road.lanes_oncoming == 1 else "in an oncoming lane"
    offset = lane - scene.ego.lane
    if offset == 0:
        return "ahead in our lane"
    if offset == -1:
        return "in the lane to the left"
    if offset == 1:
        return "in the lane to the right"
    return "two lanes to the left" if offset < 0 else "two lanes to the right"


def _motion(u: RoadUser) -> str:
    if u.parked:
        return "parked"
    if not u.moving:
        return "standing" if u.kind == "pedestrian" else "stopped"
    if u.side_on:
        return "crossing to the right" if math.sin(u.heading_rad) > 0 else "crossing to the left"
    if u.kind == "pedestrian":
        return "walking"
    return "oncoming" if math.cos(u.heading_rad) < 0 else "moving away"


def _background_albedo(scene: Scene, u: RoadUser, t: float) -> float:
    _, d = u.position(t)
    road = scene.road
    return road.asphalt_albedo if road.left_edge_m <= d <= road.right_edge_m else SIDEWALK_ALBEDO


def _part_radiance(parts: list, light: float) -> np.ndarray:
    """Radiance [P, 3] of billboard parts at a light level."""
    rad = []
    for _, _, _, _, alb, emit in parts:
        r = np.asarray(alb, dtype=np.float64) * light
        if emit is not None:
            r = r + np.asarray(emit)
        rad.append(r)
    return np.array(rad)


def _visible_fractions(scene: Scene, cam: Camera, t: float) -> dict[int, float]:
    """Fraction of each road user's box that lies in the image and is not covered by nearer boxes (uid -> frac);
    -1 is the traffic light. Buildings, trees and the traffic light also hide what is behind them."""
    items: list[tuple[float, int, tuple[float, float, float, float]]] = []
    for u in scene.road_users:
        box, _, z = _user_box(scene, cam, u, t)
        if z > NEAR_CLIP_M:
            items.append((z, u.uid, box))
    for o in scene.statics:
        if o.kind in ("building", "tree"):
            side = 1.0 if o.d_m > 0 else -1.0
            dc = o.d_m + side * o.width_m / 2 if o.kind == "building" else o.d_m
            x, z = scene.to_camera(o.s_m, dc, t)
            if z > NEAR_CLIP_M:
                items.append((z, -2, _box(cam, x, z, o.width_m / 2, o.height_m)))
    tl = scene.traffic_light
    if tl is not None:
        x, z = scene.to_camera(tl.s_m, tl.d_m, t)
        if z > NEAR_CLIP_M:
            u0, u1, v0, v1 = _box(cam, x, z, 0.18, tl.pole_height_m + 0.95)
            v_top_housing = v0
            v_bottom_housing = v0 + 0.95 * cam.focal_px / z
            items.append((z, -1, (u0, u1, v_top_housing, v_bottom_housing)))
    items.sort(key=lambda it: it[0])
    occupied = np.zeros((cam.height, cam.width), dtype=bool)
    out: dict[int, float] = {}
    for _, uid, (u0, u1, v0, v1) in items:
        area = max(u1 - u0, 1e-6) * max(v1 - v0, 1e-6)
        c0, c1 = max(int(round(u0)), 0), min(int(round(u1)), cam.width)
        r0, r1 = max(int(round(v0)), 0), min(int(round(v1)), cam.height)
        if c1 <= c0 or r1 <= r0:
            # sub-pixel or outside: visible iff its centre is inside and not covered
            uc, vc = int((u0 + u1) / 2), int((v0 + v1) / 2)
            inside = 0 <= uc < cam.width and 0 <= vc < cam.height
            frac = 1.0 if inside and not occupied[vc, uc] else 0.0
        else:
            region = occupied[r0:r1, c0:c1]
            in_image = (c1 - c0) * (r1 - r0) / max(area, (c1 - c0) * (r1 - r0))
            frac = in_image * (1.0 - region.mean())
            region[...] = True
        if uid != -2:
            out[uid] = frac
    return out


# --------------------------------------------------------------------------------------------------------------------
# per-view rules


def _rgb_sees(scene: Scene, cam: Camera, u: RoadUser, t: float, x: float, z: float) -> tuple[bool, bool]:
    """(visible, colour nameable) for the RGB camera."""
    illum = scene.illumination
    light = float(light_level(illum, x, z))
    parts = road_user_parts(u, illum)
    rad = _part_radiance(parts, light)  # [P, 3]
    bg = _background_albedo(scene, u, t) * light
    contrast = np.max(np.abs(camera_dn(rad, illum) - camera_dn(bg, illum)), axis=1)  # [P] 8-bit units
    scale = cam.focal_px / z  # px per metre
    area = np.array([(x1 - x0) * (y1 - y0) for x0, x1, y0, y1, _, _ in parts]) * scale**2  # [P] px
    gain = np.where(area < 1.0, area, np.sqrt(area))
    snr = contrast * gain / float(rgb_noise_dn(bg, illum))
    visible = bool(snr.max() >= RGB_VISIBLE_SNR)
    # the body paint's luminance in the image decides whether the colour can be named
    body = np.asarray(COLOURS[u.colour]) * light
    colour_ok = visible and float(camera_dn(float(body @ LUMA), illum)) >= CAMERA_DN_FOR_COLOUR
    return visible, colour_ok


def _events_see(scene: Scene, cam: Camera, u: RoadUser, x_mid: float, z_mid: float) -> bool:
    """Does the object's strongest edge change some pixel's log luminance by EVENT_VISIBLE_LOG over the clip?"""
    t_end = scene.duration_s
    box0, _, z0 = _user_box(scene, cam, u, 0.0)
    box1, _, z1 = _user_box(scene, cam, u, t_end)
    if min(z0, z1) <= NEAR_CLIP_M:
        return True  # it enters or leaves the view: large motion
    shift = max(abs(a - b) for a, b in zip(box0, box1))  # px
    light = float(light_level(scene.illumination, x_mid, z_mid))
    lum_parts = _part_radiance(road_user_parts(u, scene.illumination), light) @ LUMA  # [P]
    lum_bg = _background_albedo(scene, u, t_end / 2) * light
    lum = np.concatenate([lum_parts, [lum_bg]]) + 1e-4
    ratio = float(lum.max() / lum.min())  # strongest edge inside the object or against the road
    change = math.log1p(min(shift, 1.0) * (ratio - 1.0))
    return change >= EVENT_VISIBLE_LOG


def _light_facts(scene: Scene, view: str, fractions: dict[int, float], rgb_times_s: np.ndarray) -> LightFacts | None:
    tl = scene.traffic_light
    if tl is None:
        return None
    x, z = scene.to_camera(tl.s_m, tl.d_m, scene.duration_s / 2)
    if z <= NEAR_CLIP_M or fractions.get(-1, 0.0) < MIN_VISIBLE_FRACTION or z > 60.0:
        return None
    dist = _distance_word(z)
    if view == "rgb":
        first, last = tl.state_at(float(rgb_times_s[0])), tl.state_at(float(rgb_times_s[-1]))
        return LightFacts(first, last, first != last, dist)
    if tl.switches:
        return LightFacts(tl.state_start, tl.state_end, True, dist)
    if scene.ego.moving:
        return LightFacts(None, None, False, dist)
    return None


def _road_facts(scene: Scene, view: str) -> RoadFacts | None:
    road = scene.road
    curve = "straight" if road.curvature_per_m == 0 else ("right" if road.curvature_per_m > 0 else "left")
    inter, cross = road.intersection_s_m is not None, road.crosswalk_s_m is not None
    if view == "events":
        if not scene.ego.moving:
            return None
    elif scene.illumination == "night":
        inter = inter and road.intersection_s_m < NIGHT_SEE_ROAD_M
        cross = cross and road.crosswalk_s_m < NIGHT_SEE_ROAD_M
    return RoadFacts(road.lanes_forward, road.lanes_oncoming, curve, road.centre_line, inter, cross)


def observe(scene: Scene, view: str, sensor_width: int = NOMINAL_WIDTH_PX,
            rgb_times_s: np.ndarray | None = None) -> Observation:
    """The facts `view` ("rgb" or "events") can know about `scene`, for a 4:3 sensor `sensor_width` px wide.
    rgb_times_s: times of the target's frames (default: `rgb_sample_times_s` at the default frame rate)."""
    if view not in VIEWS:
        raise ValueError(f"view={view!r}: expected one of {VIEWS}")
    if rgb_times_s is None:
        rgb_times_s = rgb_sample_times_s(scene.duration_s)
    cam = Camera(sensor_width, sensor_width * 3 // 4)
    t_mid = scene.duration_s / 2
    fractions = _visible_fractions(scene, cam, t_mid)
    illum = scene.illumination
    objects: list[ObjectFact] = []
    missed: dict[str, int] = {}
    for u in scene.road_users:
        box, x, z = _user_box(scene, cam, u, t_mid)
        frac = fractions.get(u.uid, 0.0)
        if z <= NEAR_CLIP_M or box[3] - box[2] < MIN_HEIGHT_PX * sensor_width / NOMINAL_WIDTH_PX \
                or frac < MIN_VISIBLE_FRACTION:
            continue
        if view == "rgb":
            seen, colour_ok = _rgb_sees(scene, cam, u, t_mid, x, z)
        else:
            seen, colour_ok = _events_see(scene, cam, u, x, z), False
        if not seen:
            missed[u.kind] = missed.get(u.kind, 0) + 1
            continue
        objects.append(ObjectFact(
            uid=u.uid, kind=u.kind, colour=u.colour if colour_ok else None, place=_place(scene, u, t_mid),
            side=_side_word(x, z), distance=_distance_word(z), motion=_motion(u),
            lights_on=u.lights_on and u.kind in MOTOR_VEHICLES, partly_hidden=frac < PARTLY_HIDDEN_BELOW, z_m=z,
        ))
    if view == "rgb":
        if illum == "night":
            statics = sorted({o.kind for o in scene.statics if o.kind in ("building", "streetlamp")})
        else:
            statics = sorted({o.kind for o in scene.statics})
        static_visible = True
    else:
        static_visible = scene.ego.moving
        statics = sorted({o.kind for o in scene.statics}) if static_visible else []
    return Observation(
        view=view,
        illumination=illum if view == "rgb" else None,
        environment=scene.environment if (view == "rgb" or scene.ego.moving) else None,
        ego_moving=scene.ego.moving,
        road=_road_facts(scene, view),
        objects=tuple(objects),
        light=_light_facts(scene, view, fractions, np.asarray(rgb_times_s)),
        statics=tuple(statics),
        static_visible=static_visible,
        missed=missed,
    )
