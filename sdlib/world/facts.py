"""What each sensor can know about a scene: the facts the two answer views are written from.

The rules follow the physics of the renderer and the event simulator, evaluated from the scene state with the same
camera, light and sensor models (`render`, `events`), so that they can be checked against rendered clips and
simulated events (the tests do).

What a model receives. Both models see only the centre square of the 4:3 frame that their preprocessing keeps
(`crop.centre_crop`: shortest edge resized to the model's input size, centre crop), at that input's resolution: by
default 56 px for the target's frames and 80 px for the drafter's event image (`Viewing`). An object (road user,
static structure, traffic light) is in a view when it lies in front of the camera, at least MIN_HEIGHT_INPUT_PX tall
in the model's input pixels, and enough of it is inside the square and not hidden behind nearer objects: at least
MIN_VISIBLE_FRACTION of its box, or at least MIN_VISIBLE_AREA_INPUT_PX of the model's input (one 8 x 8 patch of the
scale models' vision towers; what makes a building wider than the view count). Partly hidden ones are marked.
Geometry is evaluated at mid-clip on the nominal 128-px-wide sensor (crop and thresholds scale with it).

RGB camera (the target's 8 frames)
- sees an object when some part of it stands out from what lies behind it (for road users the ground; for static
  structure the sky above the horizon, the ground below it, the facade behind a window): the part's contrast (8-bit
  values, any colour channel) in units of the camera's noise standard deviation, times its area in pixels (square root
  of the area once above one pixel: noise averages out over a blob, the same in the model's downsampled input) reaches
  RGB_VISIBLE_SNR. Static structure (buildings, trees, poles, street lamps) counts only its parts' pixels inside the
  square. At night the capped gain leaves dark, unlit things in the noise: what it sees then is what lamps, lit
  windows and the ego's headlights (reach ~12 m, `render.light_level`) reveal, and large, light surfaces under the
  faint street lighting (the night sky is darker still);
- names an object's colour when the body is bright enough in the image (CAMERA_DN_FOR_COLOUR);
- sees the road layout in daylight and at dusk; at night intersections and crossings only within NIGHT_SEE_ROAD_M;
- reads the traffic light's colour (lamps are bright at any time of day) at the sampled frames: it sees a switch only
  if it happens before the last of the 8 frames.

Event camera
- sees an object when its image moves enough over the clip for its strongest edge to change a pixel's log luminance
  by at least EVENT_VISIBLE_LOG: ln(1 + min(shift_px, 1) (ratio - 1)) with `ratio` the strongest luminance ratio
  among its parts and what lies behind it; AND when its events stand out from the sensor's background activity
  (`events.EventSimConfig.background_rate_hz`, which rises as light falls): over the pixels its moving edges sweep
  (inside the square), the events they fire (change / threshold per pixel) exceed the noise those pixels fire over the
  clip by EVENT_VISIBLE_SNR Poisson standard deviations (5: the object has to be found anywhere in the image, so a
  3-sigma excess would turn up by chance in every clip). In daylight the noise never decides; at night a small,
  low-contrast object that barely moves is lost in it;
- never sees colour, nor the time of day;
- sees static structure and the road layout only when the ego moves (otherwise nothing static changes);
- sees the traffic light when its lamps switch (a switch fires many events in the lamps' few pixels; from which lamp
  went dark and which lit up, it can tell the states), or, when the ego moves, as an object of unknown state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .crop import EVENT_INPUT_PX, TARGET_INPUT_PX, centre_crop
from .events import WORLD_EVENT_CONFIG, EventSimConfig
from .render import (CAMERA_HEIGHT_M, FAR_M, HAZE_START_M, ILLUMINATION, LUMA, Camera, camera_dn, ground_albedo,
                     light_level, light_parts, rgb_noise_dn, rgb_sample_times_s, road_user_parts, sky_radiance,
                     static_parts)
from .scene import COLOURS, MOTOR_VEHICLES, NEAR_CLIP_M, RoadUser, Scene, StaticObject

VIEWS: tuple[str, ...] = ("rgb", "events")
NOMINAL_WIDTH_PX = 128
MIN_HEIGHT_INPUT_PX = 2.0  # in the model's input pixels (the target's 56-px frames, the drafter's 80-px image)
MIN_VISIBLE_FRACTION = 0.4  # of the object's box, after clipping to the model's square and removing nearer objects
MIN_VISIBLE_AREA_INPUT_PX = 64.0  # ... or this many input pixels of it (one 8 x 8 patch of the scale models' ViTs)
PARTLY_HIDDEN_BELOW = 0.8
RGB_VISIBLE_SNR = 3.0
CAMERA_DN_FOR_COLOUR = 45.0
EVENT_VISIBLE_LOG = 0.3  # log-luminance change of the best-placed pixel over the clip (1.5 x the nominal threshold)
EVENT_VISIBLE_SNR = 5.0  # object events over the background activity of the pixels it sweeps (Poisson std)
NIGHT_SEE_ROAD_M = 25.0  # how far the headlights let the RGB camera see road features at night
LIGHT_MAX_M = 60.0  # traffic lights further away are not stated
SIDEWALK_ALBEDO = 0.26
LAMP_SIZE_M = 0.22  # a traffic-light lamp's side (render.light_parts)
_LIGHT_KEY = -1  # keys of `_visibility`: road users by uid (>= 0), the traffic light, statics by -10 - index


@dataclass(frozen=True)
class Viewing:
    """What the answers are written for: the side of the square input each model receives (px) and the event
    sensor whose background activity the event view has to see through. Defaults: the scale models' 56-px target
    frames and 80-px event image, and the world's event camera (`events.WORLD_EVENT_CONFIG`)."""

    rgb_input_px: int = TARGET_INPUT_PX
    event_input_px: int = EVENT_INPUT_PX
    events: EventSimConfig = WORLD_EVENT_CONFIG

    def __post_init__(self) -> None:
        if self.rgb_input_px < 1 or self.event_input_px < 1:
            raise ValueError(f"Viewing: input sizes {self.rgb_input_px}, {self.event_input_px}: expected >= 1 px")

    def input_px(self, view: str) -> int:
        return self.rgb_input_px if view == "rgb" else self.event_input_px


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
    lit_windows: bool = False  # RGB at night: a seen building shows lit windows inside the square
    missed: dict[str, int] = field(default_factory=dict)  # kind -> road users in view that this sensor misses;
    # for analysis only (an answer cannot know what its sensor missed)
    missed_statics: dict[str, int] = field(default_factory=dict)  # the same for static structure


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


def _hazed(radiance: np.ndarray, illumination: str, z: float) -> np.ndarray:
    """Radiance [..., 3] as the renderer draws it at depth z: mixed with the horizon's colour beyond HAZE_START_M."""
    h = min(max((z - HAZE_START_M) / (FAR_M - HAZE_START_M), 0.0), 1.0)
    return np.asarray(radiance) * (1.0 - h) + np.asarray(ILLUMINATION[illumination]["sky_horizon"]) * h


@dataclass(frozen=True)
class _Frame:
    """One view's geometry: the nominal camera, the square its model receives (nominal pixels) and the model-input
    pixels per nominal pixel."""

    cam: Camera
    crop: _Box
    px: float


def _frame(view: str, sensor_width: int, viewing: Viewing) -> _Frame:
    cam = Camera(sensor_width, sensor_width * 3 // 4)
    crop = centre_crop(cam.height, cam.width, viewing.input_px(view))
    return _Frame(cam, crop.box, crop.input_px_per_frame_px)


def _overlap(a: _Box, b: _Box) -> float:
    """Area (px^2) of the intersection of two boxes."""
    return max(min(a[1], b[1]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[2], b[2]), 0.0)


def _area(b: _Box) -> float:
    return max(b[1] - b[0], 1e-6) * max(b[3] - b[2], 1e-6)


@dataclass(frozen=True)
class _Seen:
    """How much of an object's box a model receives: `frac` of the box is inside its square and not hidden,
    `in_crop` of the box is inside its square, `area_in` = visible input pixels."""

    frac: float
    in_crop: float
    area_in: float

    @property
    def unhidden(self) -> float:
        """Fraction of the in-square part not hidden by nearer objects."""
        return self.frac / self.in_crop if self.in_crop > 0 else 0.0

    def in_view(self) -> bool:
        return self.frac >= MIN_VISIBLE_FRACTION or self.area_in >= MIN_VISIBLE_AREA_INPUT_PX


def _static_box(scene: Scene, cam: Camera, o: StaticObject, t: float) -> tuple[_Box, float, float]:
    """Image box of a static object at time t (a building: its face), and its camera-frame (X, z)."""
    if o.kind == "building":
        side = 1.0 if o.d_m > 0 else -1.0
        x, z = scene.to_camera(o.s_m, o.d_m + side * o.width_m / 2, t)
        half = o.width_m / 2
    else:
        x, z = scene.to_camera(o.s_m, o.d_m, t)
        half = {"tree": o.width_m / 2, "streetlamp": 0.45}.get(o.kind, o.width_m / 2)
    return _box(cam, x, max(z, 1e-3), half, o.height_m), x, z


def _light_box(scene: Scene, cam: Camera, t: float) -> tuple[_Box, _Box, float, float]:
    """The traffic light's housing box and whole box (pole and housing) at time t, and its (X, z)."""
    tl = scene.traffic_light
    x, z = scene.to_camera(tl.s_m, tl.d_m, t)
    whole = _box(cam, x, max(z, 1e-3), 0.18, tl.pole_height_m + 0.95)
    housing = (whole[0], whole[1], whole[2], whole[2] + 0.95 * cam.focal_px / max(z, 1e-3))
    return housing, whole, x, z


def _visibility(scene: Scene, fr: _Frame, t: float) -> dict[int, _Seen]:
    """How much of every object the model receives at time t: its box clipped to the model's square, minus what
    nearer road users, buildings, trees and the traffic light's housing cover (poles and lamps are too thin to hide
    anything). Keys: road users by uid, the traffic light _LIGHT_KEY, statics -10 - index in `scene.statics`."""
    cam = fr.cam
    items: list[tuple[float, int, _Box, bool]] = []  # (z, key, box, hides what is behind it)
    for u in scene.road_users:
        box, _, z = _user_box(scene, cam, u, t)
        if z > NEAR_CLIP_M:
            items.append((z, u.uid, box, True))
    for i, o in enumerate(scene.statics):
        box, _, z = _static_box(scene, cam, o, t)
        if NEAR_CLIP_M < z < FAR_M:
            items.append((z, -10 - i, box, o.kind in ("building", "tree")))
    if scene.traffic_light is not None:
        housing, _, _, z = _light_box(scene, cam, t)
        if z > NEAR_CLIP_M:
            items.append((z, _LIGHT_KEY, housing, True))
    items.sort(key=lambda it: (it[0], it[1]))
    u0c, u1c, v0c, v1c = fr.crop
    cc0, cc1 = max(int(round(u0c)), 0), min(int(round(u1c)), cam.width)
    rc0, rc1 = max(int(round(v0c)), 0), min(int(round(v1c)), cam.height)
    occupied = np.zeros((cam.height, cam.width), dtype=bool)
    out: dict[int, _Seen] = {}
    for _, key, box, hides in items:
        u0, u1, v0, v1 = box
        area = _area(box)
        in_crop = _overlap(box, fr.crop) / area
        c0, c1 = max(int(round(u0)), cc0), min(int(round(u1)), cc1)
        r0, r1 = max(int(round(v0)), rc0), min(int(round(v1)), rc1)
        if c1 <= c0 or r1 <= r0:
            # thinner than a pixel or outside: the pixel at its centre decides
            uc, vc = math.floor((u0 + u1) / 2), math.floor((v0 + v1) / 2)
            free = cc0 <= uc < cc1 and rc0 <= vc < rc1 and not occupied[vc, uc]
            frac = in_crop if free else 0.0
        else:
            region = occupied[r0:r1, c0:c1]
            frac = in_crop * (1.0 - float(region.mean()))
            if hides:
                region[...] = True
        out[key] = _Seen(frac=frac, in_crop=in_crop, area_in=frac * area * fr.px ** 2)
    return out


def _tall_enough(box: _Box, fr: _Frame) -> bool:
    return (box[3] - box[2]) * fr.px >= MIN_HEIGHT_INPUT_PX


# --------------------------------------------------------------------------------------------------------------------
# per-view rules


def _rgb_sees(scene: Scene, cam: Camera, u: RoadUser, t: float, x: float, z: float) -> tuple[bool, bool]:
    """(visible, colour nameable) for the RGB camera."""
    illum = scene.illumination
    light = float(light_level(illum, x, z))
    parts = road_user_parts(u, illum)
    rad = _hazed(_part_radiance(parts, light), illum, z)  # [P, 3]
    bg = _hazed(np.full(3, _background_albedo(scene, u, t) * light), illum, z)  # [3]
    contrast = np.max(np.abs(camera_dn(rad, illum) - camera_dn(bg, illum)), axis=1)  # [P] 8-bit units
    scale = cam.focal_px / z  # px per metre
    area = np.array([(x1 - x0) * (y1 - y0) for x0, x1, y0, y1, _, _ in parts]) * scale**2  # [P] px
    gain = np.where(area < 1.0, area, np.sqrt(area))
    snr = contrast * gain / float(rgb_noise_dn(float(bg @ LUMA), illum))
    visible = bool(snr.max() >= RGB_VISIBLE_SNR)
    # the body paint's luminance in the image decides whether the colour can be named
    body = np.asarray(COLOURS[u.colour]) * light
    colour_ok = visible and float(camera_dn(float(body @ LUMA), illum)) >= CAMERA_DN_FOR_COLOUR
    return visible, colour_ok


def _part_boxes(box: _Box, height_m: float, parts: list) -> list[_Box]:
    """Image boxes of an object's billboard parts, from its box (centre +- half width, top, ground line) and height."""
    scale = (box[3] - box[2]) / height_m  # px per metre
    uc, vg = (box[0] + box[1]) / 2, box[3]
    return [(uc + x0 * scale, uc + x1 * scale, vg - y1 * scale, vg - y0 * scale) for x0, x1, y0, y1, _, _ in parts]


def _behind(boxes: list[_Box], lum: np.ndarray, lum_bg: np.ndarray) -> np.ndarray:
    """Luminance [P] behind each part: the last part drawn before it that covers its centre, else `lum_bg`."""
    out = np.array(lum_bg, dtype=np.float64)
    for k, b in enumerate(boxes):
        uc, vc = (b[0] + b[1]) / 2, (b[2] + b[3]) / 2
        for j in range(k - 1, -1, -1):
            c = boxes[j]
            if c[0] <= uc <= c[1] and c[2] <= vc <= c[3]:
                out[k] = lum[j]
                break
    return out


def event_snr(events_per_px: float, pixels: float, background_luminance: float, duration_s: float,
              config: EventSimConfig) -> float:
    """How far `events_per_px` events in each of `pixels` pixels stand out from the background activity those pixels
    fire over the clip (config.background_rate_hz(background_luminance) each), in Poisson standard deviations."""
    noise = pixels * float(config.background_rate_hz(background_luminance)) * duration_s
    return pixels * events_per_px / math.sqrt(max(noise, 1e-9))


def _moving_parts_visible(fr: _Frame, boxes0: list[_Box], boxes1: list[_Box], lum: np.ndarray, lum_behind: np.ndarray,
                          lum_noise: float, duration_s: float, config: EventSimConfig) -> bool:
    """The event rule for an object whose parts move from `boxes0` (t = 0) to `boxes1` (end of clip).

    Each edge of each part sweeps a band of pixels (at least one pixel wide and long) and changes their log luminance
    by c = |ln(1 + delta (rho - 1))|: rho = the part's luminance over what is behind it, delta = the share of a pixel
    the edge covers or uncovers (its shift, capped by one pixel and the part's thickness, times the part's extent
    along the edge, capped by one pixel). Such a pixel fires floor(c / threshold) events (ESIM, from a reference at
    the first frame). Visible when some edge changes a pixel by EVENT_VISIBLE_LOG and the edges' events inside the
    model's square stand out from the background activity by EVENT_VISIBLE_SNR (bands add in quadrature, as a matched
    filter's evidence would)."""
    threshold = 0.5 * (config.c_pos + config.c_neg)
    strongest, snr2 = 0.0, 0.0
    for b0, b1, o, b in zip(boxes0, boxes1, lum, lum_behind):
        rho = (o + 1e-4) / (b + 1e-4)
        w = 0.5 * ((b0[1] - b0[0]) + (b1[1] - b1[0]))
        h = 0.5 * ((b0[3] - b0[2]) + (b1[3] - b1[2]))
        for i in range(4):
            d = abs(b0[i] - b1[i])
            if d <= 0:
                continue
            length, thick = (h, w) if i < 2 else (w, h)
            delta = min(d, 1.0, thick) * min(1.0, length)
            c = abs(math.log1p(delta * (rho - 1.0)))
            strongest = max(strongest, c)
            n = math.floor(c / threshold)
            if n == 0:
                continue
            lo = min(b0[i], b1[i])
            hi = max(lo + 1.0, max(b0[i], b1[i]))
            if i < 2:
                a, z = min(b0[2], b1[2]), max(b0[3], b1[3])
                band = (lo, hi, a, max(z, a + 1.0))
            else:
                a, z = min(b0[0], b1[0]), max(b0[1], b1[1])
                band = (a, max(z, a + 1.0), lo, hi)
            px = _overlap(band, fr.crop)
            if px > 0:
                snr2 += event_snr(n, px, lum_noise, duration_s, config) ** 2
    return strongest >= EVENT_VISIBLE_LOG and math.sqrt(snr2) >= EVENT_VISIBLE_SNR


def _events_see(scene: Scene, fr: _Frame, u: RoadUser, x_mid: float, z_mid: float, config: EventSimConfig) -> bool:
    """Do the road user's moving edges fire events over the clip that stand out from the noise?"""
    t_end = scene.duration_s
    box0, _, z0 = _user_box(scene, fr.cam, u, 0.0)
    box1, _, z1 = _user_box(scene, fr.cam, u, t_end)
    if min(z0, z1) <= NEAR_CLIP_M:
        return True  # it enters or leaves the view: large motion
    light = float(light_level(scene.illumination, x_mid, z_mid))
    illum = scene.illumination
    parts = road_user_parts(u, illum)
    lum = _hazed(_part_radiance(parts, light), illum, z_mid) @ LUMA  # [P]
    lum_bg = float(_hazed(np.full(3, _background_albedo(scene, u, t_end / 2) * light), illum, z_mid) @ LUMA)
    height = u.size_m[1]
    boxes0, boxes1 = _part_boxes(box0, height, parts), _part_boxes(box1, height, parts)
    behind = _behind(boxes0, lum, np.full(len(parts), lum_bg))
    return _moving_parts_visible(fr, boxes0, boxes1, lum, behind, lum_bg, t_end, config)


def _static_seen(scene: Scene, fr: _Frame, i: int, view: str, seen: _Seen, config: EventSimConfig) -> bool:
    """Does `view` see static object i (which is in the model's view)? What lies behind a part is the sky above the
    horizon, the ground below it, and the facade for a building's windows."""
    o = scene.statics[i]
    illum = scene.illumination
    cam = fr.cam
    t_mid = scene.duration_s / 2
    box, x, z = _static_box(scene, cam, o, t_mid)
    light = float(light_level(illum, x, z))
    parts = static_parts(o, illum, z_m=z)
    rad = _part_radiance(parts, light)  # [P, 3]
    n_hazed = 1 if o.kind == "building" else len(parts)  # facade windows are painted over the haze
    rad[:n_hazed] = _hazed(rad[:n_hazed], illum, z)
    ground = _hazed(ground_albedo(scene, o.d_m) * light, illum, z)  # [3]
    sky = sky_radiance(illum, cam, 0.5 * (max(box[2], 0.0) + cam.cy))  # [3] behind what rises above the horizon
    boxes = _part_boxes(box, o.height_m, parts)
    if view == "events":
        if not scene.ego.moving:
            return False  # nothing static changes
        box0, _, z0 = _static_box(scene, cam, o, 0.0)
        box1, _, z1 = _static_box(scene, cam, o, scene.duration_s)
        if min(z0, z1) <= NEAR_CLIP_M:
            return True
        lum = rad @ LUMA
        # what is behind a part: the part under it (a window's facade), else the sky or the ground at its centre
        scene_bg = np.array([float((sky if (b[2] + b[3]) / 2 < cam.cy else ground) @ LUMA) for b in boxes])
        behind = _behind(boxes, lum, scene_bg)
        return _moving_parts_visible(fr, _part_boxes(box0, o.height_m, parts), _part_boxes(box1, o.height_m, parts),
                                     lum, behind, float(ground @ LUMA), scene.duration_s, config)
    # RGB: each part (split at the horizon) against what is behind it, counting only its pixels inside the square
    pieces: list[tuple[np.ndarray, np.ndarray, float]] = []  # (radiance, behind, visible px)
    for k, (u0, u1, v0, v1) in enumerate(boxes):
        if o.kind == "building" and k > 0:  # a window on the facade
            pieces.append((rad[k], rad[0], _overlap((u0, u1, v0, v1), fr.crop)))
            continue
        if v0 < cam.cy:
            pieces.append((rad[k], sky, _overlap((u0, u1, v0, min(v1, cam.cy)), fr.crop)))
        if v1 > cam.cy:
            pieces.append((rad[k], ground, _overlap((u0, u1, max(v0, cam.cy), v1), fr.crop)))
    part_rad = np.array([p[0] for p in pieces])  # [Q, 3]
    behind_rad = np.array([p[1] for p in pieces])  # [Q, 3]
    area = np.array([p[2] for p in pieces]) * seen.unhidden  # [Q] visible px
    contrast = np.max(np.abs(camera_dn(part_rad, illum) - camera_dn(behind_rad, illum)), axis=1)  # [Q]
    gain = np.where(area < 1.0, area, np.sqrt(area))
    snr = contrast * gain / np.asarray(rgb_noise_dn(behind_rad @ LUMA, illum))
    return bool(snr.max() >= RGB_VISIBLE_SNR)


def _shows_lit_windows(scene: Scene, fr: _Frame, i: int) -> bool:
    """Whether static object i is a building whose lit windows (at night) lie inside the model's square."""
    o = scene.statics[i]
    if o.kind != "building" or scene.illumination != "night":
        return False
    box, _, z = _static_box(scene, fr.cam, o, scene.duration_s / 2)
    parts = static_parts(o, "night", z_m=z)
    return any(p[5] is not None and _overlap(b, fr.crop) > 0
               for p, b in zip(parts[1:], _part_boxes(box, o.height_m, parts)[1:]))


def _light_facts(scene: Scene, view: str, fr: _Frame, seen: dict[int, _Seen], rgb_times_s: np.ndarray,
                 config: EventSimConfig) -> LightFacts | None:
    tl = scene.traffic_light
    if tl is None:
        return None
    t_mid = scene.duration_s / 2
    _, whole, x, z = _light_box(scene, fr.cam, t_mid)
    s = seen.get(_LIGHT_KEY)
    if z <= NEAR_CLIP_M or z > LIGHT_MAX_M or s is None or s.frac < MIN_VISIBLE_FRACTION \
            or not _tall_enough(whole, fr):
        return None
    dist = _distance_word(z)
    if view == "rgb":
        first, last = tl.state_at(float(rgb_times_s[0])), tl.state_at(float(rgb_times_s[-1]))
        return LightFacts(first, last, first != last, dist)
    illum = scene.illumination
    light = float(light_level(illum, x, z))
    lum_bg = float(_hazed(ground_albedo(scene, tl.d_m) * light, illum, z) @ LUMA)
    if tl.switches:
        # the lamp that goes dark and the one that lights up: each pixel a lamp covers (a lamp smaller than a pixel
        # dilutes its change over one pixel) fires floor(ln(on / off) / threshold) events
        lamps0 = _hazed(_part_radiance(light_parts(tl.state_start, tl.pole_height_m)[2:], light), illum, z) @ LUMA
        lamps1 = _hazed(_part_radiance(light_parts(tl.state_end, tl.pole_height_m)[2:], light), illum, z) @ LUMA
        lamp_px = (LAMP_SIZE_M * fr.cam.focal_px / z) ** 2
        threshold = 0.5 * (config.c_pos + config.c_neg)
        snr2 = 0.0
        for a, b in zip(lamps0, lamps1):
            if a == b:
                continue
            lo, hi = min(a, b) + 1e-4, max(a, b) + 1e-4
            change = math.log(hi / lo) if lamp_px >= 1.0 else math.log1p(lamp_px * (hi / lo - 1.0))
            n = math.floor(change / threshold)
            snr2 += event_snr(n, max(lamp_px, 1.0), lum_bg, scene.duration_s, config) ** 2
        if math.sqrt(snr2) >= EVENT_VISIBLE_SNR:
            return LightFacts(tl.state_start, tl.state_end, True, dist)
    if scene.ego.moving:
        _, box0, _, _ = _light_box(scene, fr.cam, 0.0)
        _, box1, _, _ = _light_box(scene, fr.cam, scene.duration_s)
        parts = light_parts(tl.state_at(t_mid), tl.pole_height_m)
        lum = _hazed(_part_radiance(parts, light), illum, z) @ LUMA
        height = tl.pole_height_m + 0.95
        boxes0, boxes1 = _part_boxes(box0, height, parts), _part_boxes(box1, height, parts)
        behind = _behind(boxes0, lum, np.full(len(parts), lum_bg))
        if _moving_parts_visible(fr, boxes0, boxes1, lum, behind, lum_bg, scene.duration_s, config):
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
            rgb_times_s: np.ndarray | None = None, viewing: Viewing | None = None) -> Observation:
    """The facts `view` ("rgb" or "events") can know about `scene`, for a 4:3 sensor `sensor_width` px wide whose
    frames the view's model receives as a centre square of `viewing.input_px(view)` pixels (default `Viewing()`:
    the scale models' 56-px frames and 80-px event image, the world's event camera).
    rgb_times_s: times of the target's frames (default: `rgb_sample_times_s` at the default frame rate)."""
    if view not in VIEWS:
        raise ValueError(f"view={view!r}: expected one of {VIEWS}")
    if rgb_times_s is None:
        rgb_times_s = rgb_sample_times_s(scene.duration_s)
    viewing = viewing if viewing is not None else Viewing()
    fr = _frame(view, sensor_width, viewing)
    cam = fr.cam
    t_mid = scene.duration_s / 2
    seen = _visibility(scene, fr, t_mid)
    illum = scene.illumination
    objects: list[ObjectFact] = []
    missed: dict[str, int] = {}
    for u in scene.road_users:
        box, x, z = _user_box(scene, cam, u, t_mid)
        s = seen.get(u.uid)
        if z <= NEAR_CLIP_M or s is None or not _tall_enough(box, fr) or not s.in_view():
            continue
        if view == "rgb":
            visible, colour_ok = _rgb_sees(scene, cam, u, t_mid, x, z)
        else:
            visible, colour_ok = _events_see(scene, fr, u, x, z, viewing.events), False
        if not visible:
            missed[u.kind] = missed.get(u.kind, 0) + 1
            continue
        objects.append(ObjectFact(
            uid=u.uid, kind=u.kind, colour=u.colour if colour_ok else None, place=_place(scene, u, t_mid),
            side=_side_word(x, z), distance=_distance_word(z), motion=_motion(u),
            lights_on=u.lights_on and u.kind in MOTOR_VEHICLES, partly_hidden=s.frac < PARTLY_HIDDEN_BELOW, z_m=z,
        ))
    statics: set[str] = set()
    missed_statics: dict[str, int] = {}
    lit_windows = False
    for i, o in enumerate(scene.statics):
        s = seen.get(-10 - i)
        if s is None or not s.in_view() or not _tall_enough(_static_box(scene, cam, o, t_mid)[0], fr):
            continue
        if _static_seen(scene, fr, i, view, s, viewing.events):
            statics.add(o.kind)
            lit_windows = lit_windows or (view == "rgb" and _shows_lit_windows(scene, fr, i))
        else:
            missed_statics[o.kind] = missed_statics.get(o.kind, 0) + 1
    return Observation(
        view=view,
        illumination=illum if view == "rgb" else None,
        environment=scene.environment if (view == "rgb" or scene.ego.moving) else None,
        ego_moving=scene.ego.moving,
        road=_road_facts(scene, view),
        objects=tuple(objects),
        light=_light_facts(scene, view, fr, seen, np.asarray(rgb_times_s), viewing.events),
        statics=tuple(sorted(statics)),
        static_visible=view == "rgb" or scene.ego.moving,
        lit_windows=lit_windows,
        missed=missed,
        missed_statics=missed_statics,
    )
