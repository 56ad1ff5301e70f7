"""Render a scene to linear radiance, to the RGB camera's 8-bit frames and to the event sensor's luminance.

The renderer is deliberately simple and fast: a pinhole camera over a flat ground plane (road, lane markings,
sidewalks, zebra crossing, a cross street), and every object drawn as an upright billboard made of a few
anti-aliased boxes (body, windows, wheels, lamps), painted far to near. Anti-aliased edges make sub-pixel motion
change pixel values smoothly, which the event simulator needs.

Three outputs come from one linear-radiance render:
- `rgb_camera`: what the frame camera records. A fixed exposure gain per illumination, shot and read noise,
  gamma 1/2.2 and 8-bit quantisation. At night the gain is capped, so the image is dark, low in contrast and noisy:
  dark objects sink into the noise.
- `luminance`: what the event sensor integrates. No gain, no noise, no quantisation: the event pixel works on the log
  of luminance, so a dim scene keeps its contrast (an event camera's high dynamic range).
- `render_clip` bundles both at a high internal frame rate (default 200 Hz, enough for the event simulator).

Time policy. A clip of `duration_s` at `fps` is rendered at `round(duration_s * fps) + 1` times `k / fps`, both ends
included, so that the event simulator covers the whole clip. The clip's video is the first `round(duration_s * fps)`
of them (the frame at the end time would be the next clip's first). The target model sees 8 video frames, picked by
`uniform_frame_indices` (Video-LLaVA's own rule) through `target_frame_indices`; every caller uses that one function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sdlib.base.frame_policy import RGB_FRAMES, uniform_frame_indices

from .scene import COLOURS, MOTOR_VEHICLES, NEAR_CLIP_M, RoadUser, Scene, StaticObject

DEFAULT_FPS = 200
HFOV_DEG = 70.0
HORIZON_FRAC = 0.40  # image row of the horizon, as a fraction of the height (the camera looks slightly down)
CAMERA_HEIGHT_M = 1.4
FAR_M = 150.0  # nothing beyond this depth is drawn; haze grows from HAZE_START_M
HAZE_START_M = 55.0

# Illumination: ambient light on surfaces, the ego's headlights, the sky, the RGB camera's exposure gain.
ILLUMINATION = {
    "day": dict(ambient=1.0, headlight=0.0, sky_top=(0.33, 0.52, 0.92), sky_horizon=(0.72, 0.80, 0.93), gain=1.0),
    "dusk": dict(ambient=0.25, headlight=0.08, sky_top=(0.10, 0.09, 0.20), sky_horizon=(0.55, 0.30, 0.16), gain=2.5),
    "night": dict(ambient=0.006, headlight=0.22, sky_top=(0.0002, 0.0002, 0.0005), sky_horizon=(0.0006, 0.0006, 0.0009),
                  gain=5.0),
}
# At night the ambient light stands for street lighting, which leaves lit surfaces brighter than the sky (a city's sky
# glow is far dimmer than a lit street): the night sky is darker than asphalt, so unlit structure standing against it
# shows no bright silhouette.
# RGB sensor noise, in linear units before the gain: sigma^2 = READ^2 + SHOT * signal. Plus a black level.
READ_NOISE = 0.0015
SHOT_NOISE = 0.00004
BLACK_LEVEL = 0.004

# Emitted radiance of lamps (not scaled by the ambient light).
LAMP_RADIANCE = {"red": (4.0, 0.25, 0.10), "amber": (4.0, 2.2, 0.10), "green": (0.25, 3.0, 1.6)}
LAMP_OFF_ALBEDO = {"red": (0.06, 0.015, 0.015), "amber": (0.06, 0.045, 0.01), "green": (0.015, 0.05, 0.03)}
HEADLAMP = (2.6, 2.5, 2.1)
TAIL_LAMP = (2.0, 0.08, 0.05)
STREETLAMP = (2.2, 1.8, 1.1)
WINDOW_LIT = (0.30, 0.24, 0.14)

LUMA = np.array([0.2126, 0.7152, 0.0722])  # linear RGB -> luminance

_GROUND_ALBEDO = np.array([
    [0.0, 0.0, 0.0],        # 0: placeholder for asphalt (set per scene)
    [0.62, 0.62, 0.60],     # 1: paint (lane lines, zebra, stop line)
    [0.26, 0.26, 0.26],     # 2: sidewalk
    [0.05, 0.11, 0.04],     # 3: grass verge (suburban)
    [0.34, 0.30, 0.24],     # 4: paved square in front of buildings (urban)
])  # [5, 3]


# --------------------------------------------------------------------------------------------------------------------
# Camera and time


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at CAMERA_HEIGHT_M above the road, looking along the road; pixel centres at k + 0.5."""

    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 6:
            raise ValueError(f"camera size {self.width}x{self.height}: expected at least 8x6 pixels")

    @property
    def focal_px(self) -> float:
        return 0.5 * self.width / math.tan(math.radians(HFOV_DEG / 2))

    @property
    def cx(self) -> float:
        return 0.5 * self.width

    @property
    def cy(self) -> float:
        return HORIZON_FRAC * self.height

    def project(self, x_m: float, y_m: float, z_m: float) -> tuple[float, float]:
        """Camera-frame point (X right, Y up from the road, z depth) -> pixel coordinates (u, v)."""
        return self.cx + self.focal_px * x_m / z_m, self.cy + self.focal_px * (CAMERA_HEIGHT_M - y_m) / z_m


def clip_times_us(duration_s: float, fps: float = DEFAULT_FPS) -> np.ndarray:
    """Frame timestamps of a clip in integer microseconds: round(duration_s * fps) + 1 frames from 0 to the end."""
    if duration_s <= 0 or fps <= 0:
        raise ValueError(f"duration_s={duration_s}, fps={fps}: expected both positive")
    n = int(round(duration_s * fps)) + 1
    return np.round(np.linspace(0.0, duration_s * 1e6, n)).astype(np.int64)  # [T]


def target_frame_indices(n_rendered: int, n: int = RGB_FRAMES) -> np.ndarray:
    """Indices, among a clip's `n_rendered` frames (see the time policy above), of the n frames the target sees."""
    return uniform_frame_indices(n_rendered - 1, n)


def rgb_sample_times_s(duration_s: float, fps: float = DEFAULT_FPS, n: int = RGB_FRAMES) -> np.ndarray:
    """Times (s) of the frames the target sees, on the `fps` grid."""
    times = clip_times_us(duration_s, fps)
    return times[target_frame_indices(len(times), n)] / 1e6  # [n]


# --------------------------------------------------------------------------------------------------------------------
# Light


def light_level(illumination: str, x_m: np.ndarray | float, z_m: np.ndarray | float) -> np.ndarray | float:
    """Irradiance factor on a surface at camera-frame (X, z): ambient light plus the ego's headlight beam."""
    p = ILLUMINATION[illumination]
    level = p["ambient"]
    if p["headlight"] > 0:
        z = np.maximum(z_m, 0.5)
        level = level + p["headlight"] * np.exp(-z / 12.0) * np.exp(-((x_m / (0.15 * z + 1.0)) ** 2))
    return level


def camera_dn(radiance: np.ndarray | float, illumination: str) -> np.ndarray | float:
    """Noise-free 8-bit value (as float) the RGB camera gives for a linear radiance."""
    gain = ILLUMINATION[illumination]["gain"]
    return 255.0 * np.clip(gain * np.asarray(radiance) + BLACK_LEVEL, 0.0, 1.0) ** (1 / 2.2)


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(48)  # quadrature for expectations under N(0, 1)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def rgb_noise_dn(radiance: np.ndarray | float, illumination: str) -> np.ndarray | float:
    """Standard deviation (8-bit units) of the value `rgb_camera` records for a radiance: the Gaussian sensor noise
    pushed through clipping and the gamma curve (by quadrature, exact for the model), plus rounding."""
    gain = ILLUMINATION[illumination]["gain"]
    r = np.asarray(radiance, dtype=np.float64)[..., None]
    y = gain * (r + np.sqrt(READ_NOISE**2 + SHOT_NOISE * r) * _GH_NODES) + BLACK_LEVEL  # [..., nodes]
    dn = 255.0 * np.clip(y, 0.0, 1.0) ** (1 / 2.2)
    mean = dn @ _GH_WEIGHTS
    var = ((dn - mean[..., None]) ** 2) @ _GH_WEIGHTS + 1 / 12
    return np.sqrt(var)


_GAMMA_LUT = np.round(255.0 * (np.arange(65536) / 65535.0) ** (1 / 2.2)).astype(np.uint8)  # 16-bit linear -> 8-bit


def rgb_camera(radiance: np.ndarray, illumination: str, rng: np.random.Generator) -> np.ndarray:
    """Record linear radiance [..., 3] with the RGB camera: gain, noise, gamma, 8-bit. Returns uint8, same shape."""
    if radiance.shape[-1] != 3:
        raise ValueError(f"radiance shape {radiance.shape}: expected [..., 3]")
    if illumination not in ILLUMINATION:
        raise ValueError(f"illumination={illumination!r}: expected one of {tuple(ILLUMINATION)}")
    gain = ILLUMINATION[illumination]["gain"]
    r = np.maximum(radiance, 0.0).astype(np.float32)
    sigma = np.sqrt(np.float32(READ_NOISE**2) + np.float32(SHOT_NOISE) * r)
    y = rng.standard_normal(r.shape, dtype=np.float32)
    y *= sigma
    y += r
    y *= np.float32(gain * 65535.0)
    y += np.float32(BLACK_LEVEL * 65535.0)
    np.clip(y, 0.0, 65535.0, out=y)
    return _GAMMA_LUT[(y + 0.5).astype(np.uint16)]


def luminance(radiance: np.ndarray) -> np.ndarray:
    """Linear luminance [...] of linear RGB radiance [..., 3], float32 (what the event sensor integrates)."""
    return (radiance @ LUMA.astype(np.float32)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Ground and sky


@dataclass(frozen=True)
class _GroundGeometry:
    rows: int  # number of subsampled rows below the horizon
    first_row: int  # first subsampled row index that is ground
    z: np.ndarray  # [rows, W*ss] depth of each subsample (m)
    x: np.ndarray  # [rows, W*ss] lateral offset (m)
    ss: int


@lru_cache(maxsize=8)
def _ground_geometry(width: int, height: int, ss: int) -> _GroundGeometry:
    cam = Camera(width, height)
    v = (np.arange(height * ss) + 0.5) / ss  # [H*ss] subsample row centres
    u = (np.arange(width * ss) + 0.5) / ss  # [W*ss]
    below = v - cam.cy
    first = int(np.searchsorted(below, cam.focal_px * CAMERA_HEIGHT_M / FAR_M))
    z = cam.focal_px * CAMERA_HEIGHT_M / below[first:]  # [rows]
    z2 = np.repeat(z[:, None], len(u), axis=1)  # [rows, W*ss]
    x2 = (u[None, :] - cam.cx) * z2 / cam.focal_px  # [rows, W*ss]
    return _GroundGeometry(rows=len(z), first_row=first, z=z2, x=x2, ss=ss)


def sky_radiance(illumination: str, cam: Camera, v: np.ndarray | float) -> np.ndarray:
    """Radiance [..., 3] of the sky at image row(s) v: the horizon's colour at the horizon, the top's at row 0."""
    p = ILLUMINATION[illumination]
    a = np.clip(1.0 - np.asarray(v, dtype=np.float64) / max(cam.cy, 1.0), 0.0, 1.0) ** 0.7  # 1 at the top
    top, hor = np.array(p["sky_top"]), np.array(p["sky_horizon"])
    return hor * (1 - a[..., None]) + top * a[..., None]


def _sky(scene: Scene, cam: Camera, ss: int) -> np.ndarray:
    v = (np.arange(cam.height * ss) + 0.5) / ss
    col = sky_radiance(scene.illumination, cam, v)  # [H*ss, 3]
    return np.repeat(col[:, None, :], cam.width * ss, axis=1)  # [H*ss, W*ss, 3]


class _GroundLayer:
    """The ground of one scene on one camera. Everything that depends only on the lateral road coordinate is
    precomputed; per frame only the along-road patterns (dashes, stop line, zebra, cross street) move with the ego."""

    def __init__(self, scene: Scene, geo: _GroundGeometry, light: np.ndarray, haze: np.ndarray,
                 haze_col: np.ndarray) -> None:
        road = scene.road
        self.scene, self.geo = scene, geo
        self.z_row = geo.z[:, 0]  # [rows]
        z = geo.z
        d = geo.x + road.lane_centre_m(scene.ego.lane) - 0.5 * road.curvature_per_m * z * z  # [rows, W*ss]
        left, right = road.left_edge_m, road.right_edge_m
        on_road = (d >= left) & (d <= right)
        sidewalk = ~on_road & (d >= left - road.sidewalk_width_m) & (d <= right + road.sidewalk_width_m)
        base = np.full(z.shape, 4 if scene.environment == "urban" else 3, dtype=np.int8)
        base[sidewalk] = 2
        base[on_road] = 0
        half = 0.075  # half line width (m)
        solid = (np.abs(d - left) < half) | (np.abs(d - right) < half)
        dashed = np.zeros_like(on_road)
        for k in range(1, road.lanes_forward):
            dashed |= np.abs(d - k * road.lane_width_m) < half
        for k in range(1, road.lanes_oncoming):
            dashed |= np.abs(d + k * road.lane_width_m) < half
        if road.centre_line == "solid" and road.lanes_oncoming > 0:
            solid |= np.abs(d) < half
        elif road.centre_line == "dashed":
            dashed |= np.abs(d) < half
        self.solid = solid & on_road
        self.dashed = dashed & on_road
        self.stop = (d >= 0) & (d <= right)
        self.zebra = on_road & ((d % 1.0) < 0.5)
        albedo = _GROUND_ALBEDO.copy()
        albedo[0] = road.asphalt_albedo
        lit = light * (1 - haze)  # [rows, W*ss]
        hazed = haze[..., None] * haze_col  # [rows, W*ss, 3]
        self.base = (albedo[base] * lit[..., None] + hazed).astype(np.float32)  # [rows, W*ss, 3]
        self.asphalt = (albedo[0] * lit[..., None] + hazed).astype(np.float32)
        self.paint = (albedo[1] * lit[..., None] + hazed).astype(np.float32)

    def radiance(self, s_ego: float) -> np.ndarray:
        """Ground radiance [rows, W*ss, 3] when the ego has driven s_ego metres."""
        road = self.scene.road
        s = self.z_row + s_ego  # [rows] along-road position of each row
        rad = self.base.copy()
        no_cross = np.ones(s.shape, dtype=bool)
        if road.intersection_s_m is not None:
            cross = (s >= road.intersection_s_m) & (s <= road.intersection_s_m + road.intersection_width_m)
            if cross.any():
                rad[cross] = self.asphalt[cross]
                no_cross = ~cross
        dash = ((s % 9.0) < 3.0) & no_cross  # 3 m dashes, 6 m gaps
        paint = (self.solid & no_cross[:, None]) | (self.dashed & dash[:, None])
        if road.intersection_s_m is not None:
            stop = (s >= road.intersection_s_m - 1.3) & (s <= road.intersection_s_m - 0.9)
            if stop.any():
                paint |= self.stop & stop[:, None]
        if road.crosswalk_s_m is not None:
            zebra = np.abs(s - road.crosswalk_s_m) < 1.5
            if zebra.any():
                paint |= self.zebra & zebra[:, None]
        np.copyto(rad, self.paint, where=paint[..., None])
        return rad


def _downsample(img: np.ndarray, ss: int) -> np.ndarray:
    """Box-filter an [H*ss, W*ss, 3] image to [H, W, 3]."""
    if ss == 1:
        return img.copy()
    out = np.zeros((img.shape[0] // ss, img.shape[1] // ss, 3), dtype=np.float32)
    for i in range(ss):
        for j in range(ss):
            out += img[i::ss, j::ss]
    out *= 1.0 / (ss * ss)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Objects as billboards of boxes

# A part: (x0, x1, y0, y1) in metres (x across the billboard from its centre, y up from the road), albedo, emission.
_Part = tuple[float, float, float, float, tuple[float, float, float], tuple[float, float, float] | None]

_DARK = (0.025, 0.025, 0.03)
_GLASS = (0.04, 0.045, 0.055)
_SKIN = (0.42, 0.30, 0.22)
_TROUSERS = ((0.03, 0.03, 0.035), (0.05, 0.06, 0.12), (0.12, 0.12, 0.12), (0.16, 0.12, 0.08))


def road_user_parts(u: RoadUser, illumination: str) -> list[_Part]:
    """The boxes a road user is drawn with: (x0, x1, y0, y1, albedo, emission), x across the billboard from its
    centre and y up from the road, in metres; all inside [-width/2, width/2] x [0, height] (`RoadUser.size_m`)."""
    colour = COLOURS[u.colour]
    w, h = u.size_m
    a, b = -w / 2, w / 2
    lit = u.lights_on and u.kind in MOTOR_VEHICLES
    towards = math.cos(u.heading_rad) < -0.7
    parts: list[_Part] = []
    if u.kind == "pedestrian":
        trousers = _TROUSERS[u.uid % len(_TROUSERS)]
        parts += [(-0.16, 0.16, 0.0, 0.86, trousers, None), (-0.23, 0.23, 0.84, 1.47, colour, None),
                  (-0.1, 0.1, 1.49, 1.75, _SKIN, None)]
        return parts
    if u.kind == "bicycle":
        trousers = _TROUSERS[u.uid % len(_TROUSERS)]
        if u.side_on:
            parts += [(a, a + 0.62, 0.0, 0.65, _DARK, None), (b - 0.62, b, 0.0, 0.65, _DARK, None),
                      (-0.45, 0.45, 0.3, 0.55, (0.3, 0.3, 0.32), None)]
        else:
            parts += [(-0.04, 0.04, 0.0, 0.68, _DARK, None)]
        parts += [(-0.15, 0.15, 0.5, 1.0, trousers, None), (-0.22, 0.22, 0.98, 1.5, colour, None),
                  (-0.1, 0.1, 1.52, 1.75, _SKIN, None)]
        return parts
    if u.side_on:
        length = w
        if u.kind == "car":
            parts += [(a, b, 0.18 * h, 0.6 * h, colour, None),
                      (a + 0.22 * length, b - 0.2 * length, 0.58 * h, h, colour, None),
                      (a + 0.27 * length, b - 0.25 * length, 0.64 * h, 0.93 * h, _GLASS, None)]
        else:
            parts += [(a, b, 0.12 * h, h, colour, None)]
            if u.kind == "bus":
                parts += [(a + 0.05 * length, b - 0.05 * length, 0.5 * h, 0.85 * h, _GLASS, None)]
            else:
                cab = (b - 0.22 * length, b) if math.sin(u.heading_rad) > 0 else (a, a + 0.22 * length)
                parts += [(cab[0] + 0.05 * length, cab[1] - 0.05 * length, 0.55 * h, 0.85 * h, _GLASS, None)]
        parts += [(a + 0.1 * length, a + 0.28 * length, 0.0, 0.3 * h, _DARK, None),
                  (b - 0.28 * length, b - 0.1 * length, 0.0, 0.3 * h, _DARK, None)]
        if lit:
            front = b if math.sin(u.heading_rad) > 0 else a
            parts += [(front - 0.08, front + 0.08, 0.35 * h, 0.45 * h, (0.5, 0.5, 0.45), HEADLAMP)]
        return parts
    lamp_col, lamp_emit = ((0.6, 0.6, 0.55), HEADLAMP) if towards else ((0.4, 0.03, 0.03), TAIL_LAMP)
    emit = lamp_emit if lit else None
    if u.kind == "car":
        parts += [(a, b, 0.0, 0.2 * h, _DARK, None), (a, b, 0.18 * h, 0.62 * h, colour, None),
                  (0.84 * a, 0.84 * b, 0.6 * h, h, colour, None), (0.7 * a, 0.7 * b, 0.66 * h, 0.93 * h, _GLASS, None)]
        ly = (0.38 * h, 0.5 * h)
    elif u.kind == "truck":
        parts += [(a, b, 0.0, 0.25 * h, _DARK, None), (a, b, 0.23 * h, h, colour, None)]
        if towards:
            parts += [(0.85 * a, 0.85 * b, 0.55 * h, 0.82 * h, _GLASS, None)]
        ly = (0.28 * h, 0.34 * h)
    else:  # bus
        parts += [(a, b, 0.0, 0.12 * h, _DARK, None), (a, b, 0.1 * h, h, colour, None),
                  (0.9 * a, 0.9 * b, 0.45 * h, 0.88 * h, _GLASS, None)]
        ly = (0.2 * h, 0.28 * h)
    parts += [(a + 0.04, a + 0.32, ly[0], ly[1], lamp_col, emit), (b - 0.32, b - 0.04, ly[0], ly[1], lamp_col, emit)]
    return parts


def light_parts(state: str, pole_h: float) -> list[_Part]:
    """The boxes of a traffic light showing `state`: pole, housing (0.36 m x 0.95 m on top of the pole) and three
    lamps, red on top, amber, green at the bottom; the lit one emits light."""
    parts: list[_Part] = [(-0.07, 0.07, 0.0, pole_h, (0.15, 0.15, 0.16), None),
                          (-0.18, 0.18, pole_h, pole_h + 0.95, (0.03, 0.03, 0.03), None)]
    for name, y in (("red", 0.79), ("amber", 0.475), ("green", 0.16)):  # lamp centres above the housing's bottom
        on = name == state
        parts.append((-0.11, 0.11, pole_h + y - 0.11, pole_h + y + 0.11, LAMP_OFF_ALBEDO[name],
                      LAMP_RADIANCE[name] if on else None))
    return parts


def _static_parts(kind: str, width: float, height: float, colour: tuple[float, float, float],
                  illumination: str) -> list[_Part]:
    if kind == "tree":
        return [(-0.15, 0.15, 0.0, 0.45 * height, (0.12, 0.07, 0.03), None),
                (-width / 2, width / 2, 0.35 * height, height, colour, None)]
    parts: list[_Part] = [(-0.1, 0.1, 0.0, height, colour, None)]
    if kind == "streetlamp":
        on = STREETLAMP if illumination != "day" else None
        parts.append((-0.45, 0.45, height - 0.25, height, (0.3, 0.3, 0.3), on))
    return parts


# Facade windows: a 3 m grid measured from the face's road-side edge (lx along the face, ly up from the road);
# a window fills lx in (0.8, 2.2) and ly in (1.0, 2.2) of its cell, keeping 0.6 m from the face's ends, 2.5 m above
# the road and 0.7 m below the roof. At night a fixed 35 % of them (a hash of cell and building) are lit.
WINDOW_GRID_M = 3.0
WINDOWS_DRAWN_BELOW_M = 70.0  # facades further away are drawn plain


def _window_lit(col, row, seed):
    """Whether the window in grid cell (col, row) of a building with `seed` is lit at night (ints or int arrays)."""
    return ((col * 73856093) ^ (row * 19349663) ^ seed) % 100 < 35


def facade_windows(width: float, height: float, seed: int) -> list[tuple[float, float, float, float, bool]]:
    """The windows `_draw_windows` paints on a facade, as rectangles (lx0, lx1, ly0, ly1, lit at night) in metres
    (lx along the face from its road-side edge, ly up from the road)."""
    out = []
    for col in range(int(width // WINDOW_GRID_M) + 1):
        lx0, lx1 = max(col * WINDOW_GRID_M + 0.8, 0.6), min(col * WINDOW_GRID_M + 2.2, width - 0.6)
        if lx1 <= lx0:
            continue
        for row in range(int(height // WINDOW_GRID_M) + 1):
            ly0, ly1 = max(row * WINDOW_GRID_M + 1.0, 2.5), min(row * WINDOW_GRID_M + 2.2, height - 0.7)
            if ly1 > ly0:
                out.append((lx0, lx1, ly0, ly1, bool(_window_lit(col, row, seed))))
    return out


def static_parts(o: StaticObject, illumination: str, z_m: float | None = None) -> list[_Part]:
    """The boxes a static object is drawn with, as for `road_user_parts` (x across the billboard from its centre, y
    up from the road, metres): a building's face plus its windows (glass; at night the lit ones emit WINDOW_LIT),
    when its depth `z_m` is below WINDOWS_DRAWN_BELOW_M (None: with windows); a tree's trunk and crown; a pole; a
    street lamp's pole and head (lit except by day)."""
    if o.kind != "building":
        return _static_parts(o.kind, o.width_m, o.height_m, o.colour, illumination)
    parts: list[_Part] = [(-o.width_m / 2, o.width_m / 2, 0.0, o.height_m, o.colour, None)]
    if z_m is not None and z_m >= WINDOWS_DRAWN_BELOW_M:
        return parts
    right_side = o.d_m > 0  # the road-side edge is the face's left end on the right of the road
    for lx0, lx1, ly0, ly1, lit in facade_windows(o.width_m, o.height_m, o.window_seed):
        x0, x1 = (-o.width_m / 2 + lx0, -o.width_m / 2 + lx1) if right_side else (o.width_m / 2 - lx1,
                                                                                 o.width_m / 2 - lx0)
        if illumination == "night" and lit:
            parts.append((x0, x1, ly0, ly1, (0.0, 0.0, 0.0), WINDOW_LIT))
        else:
            parts.append((x0, x1, ly0, ly1, _GLASS, None))
    return parts


def ground_albedo(scene: Scene, d_m: float) -> np.ndarray:
    """Albedo (RGB) of the ground at lateral road position d_m: asphalt, sidewalk, or beyond it the paved square
    (urban) or grass verge (suburban), as the renderer paints it (markings aside)."""
    road = scene.road
    if road.left_edge_m <= d_m <= road.right_edge_m:
        return np.full(3, road.asphalt_albedo)
    if road.left_edge_m - road.sidewalk_width_m <= d_m <= road.right_edge_m + road.sidewalk_width_m:
        return _GROUND_ALBEDO[2].copy()
    return _GROUND_ALBEDO[4 if scene.environment == "urban" else 3].copy()


@dataclass
class _Drawable:
    z: float
    x_centre: float
    parts: list[_Part]
    building: tuple[float, float, int] | None = None  # (width, height, window seed) for facade windows


_ONES = np.ones(8192, dtype=np.float32)


def _draw_box(img: np.ndarray, u0: float, u1: float, v0: float, v1: float, colour: np.ndarray) -> None:
    """Composite a box with anti-aliased edges (exact pixel-area coverage) onto img [H, W, 3] in place."""
    h, w = img.shape[:2]
    if u1 <= 0.0 or v1 <= 0.0 or u0 >= w or v0 >= h or u1 <= u0 or v1 <= v0:
        return
    c0, c1 = max(int(u0), 0), min(int(math.ceil(u1)), w)
    r0, r1 = max(int(v0), 0), min(int(math.ceil(v1)), h)
    # coverage of each column / row: 1 inside, fractional at the two ends
    ax = _ONES[: c1 - c0].copy()  # [c]
    ax[0] = min(c0 + 1, u1) - max(c0, u0)
    if c1 - c0 > 1:
        ax[-1] = min(c1, u1) - (c1 - 1)
    ay = _ONES[: r1 - r0].copy()  # [r]
    ay[0] = min(r0 + 1, v1) - max(r0, v0)
    if r1 - r0 > 1:
        ay[-1] = min(r1, v1) - (r1 - 1)
    region = img[r0:r1, c0:c1]
    alpha = np.multiply.outer(ay, ax)[..., None]  # [r, c, 1]
    region += alpha * (colour - region)


def _draw_windows(img: np.ndarray, cam: Camera, u0: float, v_base: float, scale: float, width: float, height: float,
                  seed: int, night: bool, light: float) -> None:
    """Window grid on a building facade (point-sampled), lit at random (fixed per building) at night."""
    h, w = img.shape[:2]
    u_end = u0 + width * scale  # width < 0: the face extends to the left of u0
    width = abs(width)
    c0, c1 = max(int(min(u0, u_end)), 0), min(int(math.ceil(max(u0, u_end))), w)
    r0, r1 = max(int(v_base - height * scale), 0), min(int(math.ceil(v_base)), h)
    if c1 <= c0 or r1 <= r0:
        return
    lx = np.abs((np.arange(c0, c1) + 0.5 - u0) / scale)  # [c] metres along the face
    ly = (v_base - (np.arange(r0, r1) + 0.5)) / scale  # [r] metres above the road
    colx, fx = np.divmod(lx, WINDOW_GRID_M)
    rowy, fy = np.divmod(ly, WINDOW_GRID_M)
    okx = (fx > 0.8) & (fx < 2.2) & (lx > 0.6) & (lx < width - 0.6)
    oky = (fy > 1.0) & (fy < 2.2) & (ly > 2.5) & (ly < height - 0.7)
    mask = oky[:, None] & okx[None, :]  # [r, c]
    if not mask.any():
        return
    region = img[r0:r1, c0:c1]
    glass = np.array(_GLASS) * light
    if night:
        lit = _window_lit(colx.astype(np.int64)[None, :], rowy.astype(np.int64)[:, None], seed)
        region[mask & lit] = np.array(WINDOW_LIT)
        region[mask & ~lit] = glass
    else:
        region[mask] = glass


def _drawables(scene: Scene, t_s: float, illumination: str) -> list[_Drawable]:
    out: list[_Drawable] = []
    for o in scene.statics:
        if o.kind == "building":
            side = 1.0 if o.d_m > 0 else -1.0
            dc = o.d_m + side * o.width_m / 2
            x, z = scene.to_camera(o.s_m, dc, t_s)
            parts = [(-o.width_m / 2, o.width_m / 2, 0.0, o.height_m, o.colour, None)]
            out.append(_Drawable(z, x, parts, building=(side * o.width_m, o.height_m, o.window_seed)))
        else:
            x, z = scene.to_camera(o.s_m, o.d_m, t_s)
            out.append(_Drawable(z, x, _static_parts(o.kind, o.width_m, o.height_m, o.colour, illumination)))
    for u in scene.road_users:
        s, d = u.position(t_s)
        x, z = scene.to_camera(s, d, t_s)
        out.append(_Drawable(z, x, road_user_parts(u, illumination)))
    tl = scene.traffic_light
    if tl is not None:
        x, z = scene.to_camera(tl.s_m, tl.d_m, t_s)
        out.append(_Drawable(z, x, light_parts(tl.state_at(t_s), tl.pole_height_m)))
    return out


def _draw_objects(img: np.ndarray, cam: Camera, scene: Scene, t_s: float, haze_col: np.ndarray) -> None:
    illum = scene.illumination
    items = [o for o in _drawables(scene, t_s, illum) if NEAR_CLIP_M < o.z < FAR_M]
    items.sort(key=lambda o: -o.z)
    f = cam.focal_px
    for o in items:
        scale = f / o.z  # pixels per metre at this depth
        uc = cam.cx + o.x_centre * scale
        v_ground = cam.cy + CAMERA_HEIGHT_M * scale
        half = max(abs(p[1]) for p in o.parts) if o.building is None else abs(o.building[0]) / 2
        if uc + half * scale < 0 or uc - half * scale > cam.width:
            continue
        light = float(light_level(illum, o.x_centre, o.z))
        haze = min(max((o.z - HAZE_START_M) / (FAR_M - HAZE_START_M), 0.0), 1.0)
        for x0, x1, y0, y1, alb, emit in o.parts:
            col = np.asarray(alb) * light
            if emit is not None:
                col = col + np.asarray(emit)
            col = (col * (1 - haze) + haze_col * haze).astype(np.float32)
            _draw_box(img, uc + x0 * scale, uc + x1 * scale, v_ground - y1 * scale, v_ground - y0 * scale, col)
        if o.building is not None and o.z < WINDOWS_DRAWN_BELOW_M:
            wid, hgt, seed = o.building
            # the road-side edge of the face is the end nearer the image centre line
            _draw_windows(img, cam, uc - wid / 2 * scale, v_ground, scale, wid, hgt, seed,
                          illum == "night", light)


# --------------------------------------------------------------------------------------------------------------------
# Public rendering entry points


def render_radiance(scene: Scene, times_s: np.ndarray, width: int, height: int,
                    supersample: int | None = None) -> np.ndarray:
    """Linear radiance frames [T, H, W, 3] (float32) of `scene` at `times_s`.

    supersample: sub-samples per pixel side for the ground (anti-aliasing of lane markings); default 2 for sensors up
    to 320 px wide, else 1.
    """
    cam = Camera(int(width), int(height))
    times_s = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
    if np.any(times_s < 0) or np.any(times_s > scene.duration_s + 1e-9):
        raise ValueError(f"times_s: expected times within the clip [0, {scene.duration_s}] s")
    ss = supersample if supersample is not None else (2 if width <= 320 else 1)
    geo = _ground_geometry(cam.width, cam.height, ss)
    sky = _sky(scene, cam, ss)  # [H*ss, W*ss, 3]
    haze_col = np.array(ILLUMINATION[scene.illumination]["sky_horizon"])
    light = np.asarray(light_level(scene.illumination, geo.x, geo.z)) * np.ones_like(geo.z)  # [rows, W*ss]
    haze = np.clip((geo.z - HAZE_START_M) / (FAR_M - HAZE_START_M), 0.0, 1.0)  # [rows, W*ss]
    out = np.empty((len(times_s), cam.height, cam.width, 3), dtype=np.float32)  # [T, H, W, 3]
    ground = _GroundLayer(scene, geo, light, haze, haze_col)
    full = sky.astype(np.float32)  # [H*ss, W*ss, 3]
    background = None
    for k, t in enumerate(times_s):
        if background is None or scene.ego.moving:
            full[geo.first_row:] = ground.radiance(scene.ego_s(float(t)))
            background = _downsample(full, ss)  # [H, W, 3]
        img = background.copy()
        _draw_objects(img, cam, scene, float(t), haze_col)
        out[k] = img
    return out


@dataclass
class RenderedClip:
    """A clip rendered at the internal frame rate.

    frames: uint8 [T, H, W, 3], the RGB camera's frames (noisy, gamma-encoded);
    luminance: float32 [T, H, W], linear luminance for the event simulator;
    times_us: int64 [T].
    """

    frames: np.ndarray
    luminance: np.ndarray
    times_us: np.ndarray
    illumination: str

    def target_frames(self, n: int = RGB_FRAMES) -> tuple[np.ndarray, np.ndarray]:
        """The n frames the target sees ([n, H, W, 3] uint8) and their times (µs), by `target_frame_indices`."""
        idx = target_frame_indices(len(self.times_us), n)
        return self.frames[idx], self.times_us[idx]


def render_clip(scene: Scene, rng: np.random.Generator, width: int = 128, height: int = 96,
                fps: float = DEFAULT_FPS) -> RenderedClip:
    """Render the whole clip at `fps`: RGB camera frames and event-sensor luminance from one radiance render.
    `rng` draws the RGB camera noise."""
    times_us = clip_times_us(scene.duration_s, fps)
    rad = render_radiance(scene, times_us / 1e6, width, height)
    return RenderedClip(frames=rgb_camera(rad, scene.illumination, rng), luminance=luminance(rad),
                        times_us=times_us, illumination=scene.illumination)


def render_target_frames(scene: Scene, rng: np.random.Generator, width: int, height: int,
                         fps: float = DEFAULT_FPS, n: int = RGB_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """Only the n frames the target sees (uint8 [n, H, W, 3]) and their times (µs), rendered directly at the RGB
    size; same times as `RenderedClip.target_frames` at the same fps."""
    times_us = clip_times_us(scene.duration_s, fps)
    times_us = times_us[target_frame_indices(len(times_us), n)]
    rad = render_radiance(scene, times_us / 1e6, width, height)
    return rgb_camera(rad, scene.illumination, rng), times_us
