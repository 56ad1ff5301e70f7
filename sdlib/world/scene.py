"""Procedural driving scenes: the ground truth of the simulated world.

A scene is one short clip (1 s by default) seen from a camera on an ego-vehicle. It is plain data (frozen
dataclasses) so that the renderer, the event simulator and the question answerer all read the same truth, and so that
a dataset can store it as JSON (`scene_to_dict` / `scene_from_dict`).

Coordinates. The road is described in a road frame: `s` (m) runs along the road from the ego-vehicle's position at
t = 0, `d` (m) is the lateral offset from the road centre line, positive to the right. Traffic drives on the right:
lanes in the ego's direction lie at d > 0, oncoming lanes at d < 0. The ego drives along its lane at constant speed
(possibly zero), so at time t an object at (s, d) sits at depth `z = s - v_ego t` in front of the camera and at lateral
offset `X = d - d_ego + curvature z^2 / 2` (a constant-curvature road, followed by the ego).

Everything static (road markings, buildings, trees, poles, parked vehicles, the traffic light housing) only moves in
the image when the ego moves; that is what makes static structure visible to an event camera.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ROAD_USER_KINDS: tuple[str, ...] = ("car", "truck", "bus", "bicycle", "pedestrian")
MOTOR_VEHICLES: frozenset[str] = frozenset({"car", "truck", "bus"})
ILLUMINATIONS: tuple[str, ...] = ("day", "dusk", "night")
LIGHT_STATES: tuple[str, ...] = ("red", "amber", "green")
ENVIRONMENTS: tuple[str, ...] = ("urban", "suburban")
STATIC_KINDS: tuple[str, ...] = ("building", "tree", "pole", "streetlamp")

# Linear-light albedo (reflectance, RGB) of the named colours. Names are what the answers say.
COLOURS: dict[str, tuple[float, float, float]] = {
    "white": (0.80, 0.80, 0.78),
    "silver": (0.48, 0.50, 0.53),
    "grey": (0.22, 0.22, 0.23),
    "black": (0.03, 0.03, 0.035),
    "red": (0.55, 0.05, 0.04),
    "dark red": (0.20, 0.02, 0.02),
    "blue": (0.05, 0.13, 0.50),
    "dark blue": (0.02, 0.03, 0.12),
    "green": (0.07, 0.33, 0.09),
    "yellow": (0.75, 0.60, 0.05),
    "orange": (0.80, 0.30, 0.04),
    "brown": (0.22, 0.11, 0.05),
}

# Colours each kind is drawn with (vehicles: body paint; bicycle and pedestrian: upper-body clothing).
KIND_COLOURS: dict[str, tuple[str, ...]] = {
    "car": ("white", "silver", "grey", "black", "red", "dark red", "blue", "dark blue", "green", "yellow"),
    "truck": ("white", "silver", "red", "blue", "green", "orange"),
    "bus": ("yellow", "red", "blue", "white", "green"),
    "bicycle": ("black", "dark blue", "grey", "red", "yellow", "white", "green", "orange"),
    "pedestrian": ("black", "dark blue", "grey", "brown", "red", "yellow", "white", "blue", "green", "orange"),
}

# (width, height, length) in metres; the billboard shows the width from behind/front, the length from the side.
KIND_SIZES: dict[str, tuple[float, float, float]] = {
    "car": (1.8, 1.5, 4.4),
    "truck": (2.5, 3.4, 8.0),
    "bus": (2.55, 3.1, 12.0),
    "bicycle": (0.6, 1.75, 1.8),
    "pedestrian": (0.5, 1.75, 0.4),
}

# How near an object may get before it is dropped from the view (it has left the field of view or passed the ego).
NEAR_CLIP_M = 1.5


@dataclass(frozen=True)
class Road:
    """The road the ego-vehicle drives on, in the road frame (see the module docstring)."""

    lanes_forward: int  # lanes in the ego's direction, d > 0
    lanes_oncoming: int  # lanes in the opposite direction, d < 0 (0 = one-way road)
    lane_width_m: float
    sidewalk_width_m: float
    curvature_per_m: float  # 1/radius; > 0 bends to the right, 0 = straight
    centre_line: str  # "solid", "dashed" or "none" (one-way)
    asphalt_albedo: float
    intersection_s_m: float | None  # near edge of a crossing street, None = no intersection
    intersection_width_m: float
    crosswalk_s_m: float | None  # centre of a zebra crossing, None = none

    @property
    def left_edge_m(self) -> float:
        return -self.lanes_oncoming * self.lane_width_m

    @property
    def right_edge_m(self) -> float:
        return self.lanes_forward * self.lane_width_m

    @property
    def n_lanes(self) -> int:
        return self.lanes_forward + self.lanes_oncoming

    def lane_centre_m(self, lane: int) -> float:
        """Lateral position of a lane centre: lane 0, 1, ... are forward lanes from the centre line outwards,
        lane -1, -2, ... oncoming lanes from the centre line outwards."""
        if lane >= 0:
            if lane >= self.lanes_forward:
                raise ValueError(f"lane {lane}: the road has {self.lanes_forward} forward lanes "
                                 f"(0..{self.lanes_forward - 1})")
            return (lane + 0.5) * self.lane_width_m
        if -lane > self.lanes_oncoming:
            raise ValueError(f"lane {lane}: the road has {self.lanes_oncoming} oncoming lanes "
                             f"(-1..-{self.lanes_oncoming})")
        return (lane + 0.5) * self.lane_width_m


@dataclass(frozen=True)
class Ego:
    """The camera's vehicle: it drives along `lane` at constant speed (0 = standing still)."""

    lane: int
    speed_mps: float

    @property
    def moving(self) -> bool:
        return self.speed_mps > 0.0


@dataclass(frozen=True)
class RoadUser:
    """A vehicle, rider or pedestrian. Moves in a straight line (in the road frame) at constant speed.

    heading_rad: 0 = away from the camera along the road (same direction as the ego), pi = towards the camera,
    +pi/2 = crossing from left to right, -pi/2 = crossing from right to left.
    """

    uid: int
    kind: str
    colour: str
    s_m: float
    d_m: float
    heading_rad: float
    speed_mps: float
    parked: bool = False
    lights_on: bool = False

    def position(self, t_s: float | np.ndarray) -> tuple[Any, Any]:
        """Road-frame position (s, d) at time t_s."""
        s = self.s_m + self.speed_mps * math.cos(self.heading_rad) * t_s
        d = self.d_m + self.speed_mps * math.sin(self.heading_rad) * t_s
        return s, d

    @property
    def moving(self) -> bool:
        return self.speed_mps > 0.0

    @property
    def side_on(self) -> bool:
        """True when the camera sees the object from the side (it crosses the road)."""
        return abs(math.sin(self.heading_rad)) > 0.7

    @property
    def size_m(self) -> tuple[float, float]:
        """(visible width, height) of the billboard."""
        w, h, length = KIND_SIZES[self.kind]
        return (length if self.side_on else w), h


@dataclass(frozen=True)
class StaticObject:
    """Roadside structure: building, tree, pole or street lamp. Never moves."""

    kind: str
    s_m: float
    d_m: float  # buildings: lateral position of the face's road-side edge (the face extends away from the road);
    # other kinds: lateral position of the centre
    width_m: float
    height_m: float
    colour: tuple[float, float, float]  # albedo
    window_seed: int = 0  # which windows are lit at night (buildings only)


@dataclass(frozen=True)
class TrafficLight:
    """A three-lamp traffic light (red on top, amber, green at the bottom) facing the ego's direction."""

    s_m: float
    d_m: float
    pole_height_m: float
    state_start: str
    state_end: str
    switch_time_s: float | None  # None = no change during the clip

    def state_at(self, t_s: float) -> str:
        if self.switch_time_s is None or t_s < self.switch_time_s:
            return self.state_start
        return self.state_end

    @property
    def switches(self) -> bool:
        return self.switch_time_s is not None


@dataclass(frozen=True)
class Scene:
    """One clip's ground truth."""

    duration_s: float
    illumination: str
    environment: str
    road: Road
    ego: Ego
    road_users: tuple[RoadUser, ...]
    statics: tuple[StaticObject, ...]
    traffic_light: TrafficLight | None
    occluder_uid: int | None = None  # a road user placed on purpose to hide part of the view

    def ego_s(self, t_s: float) -> float:
        """How far the ego has driven at time t_s."""
        return self.ego.speed_mps * t_s

    def to_camera(self, s: Any, d: Any, t_s: float) -> tuple[Any, Any]:
        """Road-frame (s, d) at time t_s -> camera-frame lateral offset X (m, right positive) and depth z (m)."""
        z = s - self.ego_s(t_s)
        x = d - self.road.lane_centre_m(self.ego.lane) + 0.5 * self.road.curvature_per_m * z * z
        return x, z

    def road_user(self, uid: int) -> RoadUser:
        for u in self.road_users:
            if u.uid == uid:
                return u
        raise KeyError(f"scene has no road user with uid {uid}")


# --------------------------------------------------------------------------------------------------------------------
# Sampling


def _choice(rng: np.random.Generator, options: tuple | list, p: list[float] | None = None) -> Any:
    return options[int(rng.choice(len(options), p=p))]


def _sample_road(rng: np.random.Generator) -> Road:
    lanes_forward = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    lanes_oncoming = int(rng.choice([0, 1, 2], p=[0.25, 0.5, 0.25]))
    curvature = 0.0 if rng.random() < 0.6 else float(rng.choice([-1.0, 1.0]) * rng.uniform(0.002, 0.008))
    if lanes_oncoming == 0:
        centre = "none"
    else:
        centre = "solid" if rng.random() < 0.4 else "dashed"
    has_intersection = rng.random() < 0.45
    inter_s = float(rng.uniform(18.0, 45.0)) if has_intersection else None
    if has_intersection:
        crosswalk_s = inter_s - 3.5 if rng.random() < 0.7 else None
    else:
        crosswalk_s = float(rng.uniform(12.0, 35.0)) if rng.random() < 0.15 else None
    return Road(
        lanes_forward=lanes_forward,
        lanes_oncoming=lanes_oncoming,
        lane_width_m=float(rng.uniform(2.9, 3.6)),
        sidewalk_width_m=float(rng.uniform(1.8, 3.5)),
        curvature_per_m=curvature,
        centre_line=centre,
        asphalt_albedo=float(rng.uniform(0.09, 0.15)),
        intersection_s_m=inter_s,
        intersection_width_m=float(rng.uniform(8.0, 14.0)),
        crosswalk_s_m=crosswalk_s,
    )


def _sample_traffic_light(rng: np.random.Generator, road: Road) -> TrafficLight | None:
    if road.intersection_s_m is not None:
        present, s = rng.random() < 0.8, road.intersection_s_m - 1.0
    elif road.crosswalk_s_m is not None:
        present, s = rng.random() < 0.5, road.crosswalk_s_m - 2.0
    else:
        present, s = rng.random() < 0.08, float(rng.uniform(20.0, 40.0))
    if not present:
        return None
    if rng.random() < 0.4:
        start, end = _choice(rng, [("green", "amber"), ("amber", "red"), ("red", "green")])
        switch = float(rng.uniform(0.1, 0.95))
    else:
        start = _choice(rng, ["red", "green", "amber"], p=[0.5, 0.42, 0.08])
        end, switch = start, None
    return TrafficLight(
        s_m=float(s),
        d_m=road.right_edge_m + 0.5 * road.sidewalk_width_m,
        pole_height_m=float(rng.uniform(2.6, 3.4)),
        state_start=start,
        state_end=end,
        switch_time_s=switch,
    )


def _sample_statics(rng: np.random.Generator, road: Road, environment: str) -> list[StaticObject]:
    statics: list[StaticObject] = []
    far = 110.0
    for side in (-1, 1):
        edge = road.right_edge_m if side > 0 else road.left_edge_m
        kerb_far = edge + side * road.sidewalk_width_m
        s = float(rng.uniform(-5.0, 8.0))
        while s < far:
            if environment == "urban" or rng.random() < 0.35:
                width = float(rng.uniform(8.0, 18.0))
                grey = rng.uniform(0.2, 0.55)
                tint = rng.uniform(-0.06, 0.06, size=3)
                colour = tuple(float(np.clip(grey + tint[i], 0.05, 0.8)) for i in range(3))
                statics.append(StaticObject(
                    kind="building", s_m=s, d_m=kerb_far + side * float(rng.uniform(0.5, 3.0)),
                    width_m=width, height_m=float(rng.uniform(6.0, 18.0)),
                    colour=colour, window_seed=int(rng.integers(0, 2**31 - 1)),
                ))
                s += float(rng.uniform(12.0, 25.0))
            else:
                statics.append(StaticObject(
                    kind="tree", s_m=s, d_m=kerb_far + side * float(rng.uniform(1.0, 4.0)),
                    width_m=float(rng.uniform(2.5, 4.5)), height_m=float(rng.uniform(4.0, 9.0)),
                    colour=(0.05, float(rng.uniform(0.12, 0.2)), 0.04),
                ))
                s += float(rng.uniform(7.0, 15.0))
        # street lamps / poles on the sidewalk edge
        s = float(rng.uniform(3.0, 20.0))
        kind = "streetlamp" if rng.random() < 0.7 else "pole"
        while s < far * 0.7:
            statics.append(StaticObject(
                kind=kind, s_m=s, d_m=edge + side * 0.4, width_m=0.2, height_m=float(rng.uniform(5.0, 7.0)),
                colour=(0.18, 0.18, 0.19),
            ))
            s += float(rng.uniform(20.0, 32.0))
    # an intersection cuts through the roadside structure
    if road.intersection_s_m is not None:
        a, b = road.intersection_s_m - 1.0, road.intersection_s_m + road.intersection_width_m + 1.0
        statics = [o for o in statics if not a <= o.s_m <= b]
    return statics


def _speed_for(kind: str, rng: np.random.Generator) -> float:
    lo, hi = {"car": (5.0, 14.0), "truck": (4.0, 11.0), "bus": (4.0, 11.0), "bicycle": (2.5, 7.0),
              "pedestrian": (0.9, 1.8)}[kind]
    return float(rng.uniform(lo, hi))


def sample_scene(
    rng: np.random.Generator,
    *,
    duration_s: float = 1.0,
    illumination: str | None = None,
    ego_moving: bool | None = None,
    occlusion: bool | None = None,
    environment: str | None = None,
) -> Scene:
    """Draw one random driving scene from `rng`.

    The keyword arguments force a condition (e.g. `illumination="night"`, `ego_moving=False`); None leaves it to
    chance. Probabilities: day 0.5 / dusk 0.2 / night 0.3; ego moving 0.6 (0.25 when pedestrians cross, x 0.6 at a
    red light); a large vehicle placed close on the right as an occluder 0.25. Constant speeds and headings.
    """
    if duration_s <= 0:
        raise ValueError(f"duration_s={duration_s}: expected a positive clip length in seconds")
    if illumination is None:
        illumination = _choice(rng, ILLUMINATIONS, p=[0.5, 0.2, 0.3])
    elif illumination not in ILLUMINATIONS:
        raise ValueError(f"illumination={illumination!r}: expected one of {ILLUMINATIONS}")
    if environment is None:
        environment = _choice(rng, ENVIRONMENTS, p=[0.65, 0.35])
    elif environment not in ENVIRONMENTS:
        raise ValueError(f"environment={environment!r}: expected one of {ENVIRONMENTS}")
    road = _sample_road(rng)
    light = _sample_traffic_light(rng, road)
    crossing_peds = road.crosswalk_s_m is not None and rng.random() < 0.5
    if ego_moving is None:
        p_move = 0.25 if crossing_peds else 0.6
        if light is not None and light.state_start == "red" and light.state_end == "red":
            p_move *= 0.6
        ego_moving = bool(rng.random() < p_move)
    ego_lane = int(rng.integers(0, road.lanes_forward))
    ego = Ego(lane=ego_lane, speed_mps=float(rng.uniform(4.0, 14.0)) if ego_moving else 0.0)
    if occlusion is None:
        occlusion = bool(rng.random() < 0.25)

    users: list[RoadUser] = []
    T = duration_s
    lights = {"day": 0.0, "dusk": 0.6, "night": 1.0}[illumination]

    def add(**kw: Any) -> RoadUser:
        u = RoadUser(uid=len(users), **kw)
        users.append(u)
        return u

    # traffic in lanes
    for lane in list(range(road.lanes_forward)) + [-(j + 1) for j in range(road.lanes_oncoming)]:
        n = min(int(rng.poisson(0.9)), 3)
        s_next = 7.0 if lane != ego_lane else 9.0
        oncoming = lane < 0
        for _ in range(n):
            kind = _choice(rng, ["car", "truck", "bus"], p=[0.78, 0.12, 0.10])
            length = KIND_SIZES[kind][2]
            s0 = s_next + float(rng.exponential(10.0))
            if s0 > 75.0:
                break
            if oncoming:
                speed = 0.0 if rng.random() < 0.15 else _speed_for(kind, rng)
                # keep it in front of the camera for the whole clip
                s0 = max(s0, NEAR_CLIP_M + 3.0 + (speed + ego.speed_mps) * T)
                heading = math.pi
            else:
                if ego.moving:
                    speed = float(np.clip(ego.speed_mps + rng.normal(0.0, 2.5), 0.0, 16.0))
                else:
                    speed = 0.0 if rng.random() < 0.45 else _speed_for(kind, rng)
                if lane == ego_lane:
                    s0 = max(s0, 6.0 + length / 2 + max(0.0, ego.speed_mps - speed) * T)
                heading = 0.0
            add(kind=kind, colour=_choice(rng, KIND_COLOURS[kind]), s_m=float(s0),
                d_m=road.lane_centre_m(lane) + float(rng.normal(0.0, 0.15)), heading_rad=heading,
                speed_mps=speed, lights_on=bool(rng.random() < lights))
            s_next = s0 + length + 4.0
    # a bicycle near the right edge
    if rng.random() < 0.25:
        speed = _speed_for("bicycle", rng)
        s0 = float(rng.uniform(8.0, 35.0)) + max(0.0, ego.speed_mps - speed) * T
        add(kind="bicycle", colour=_choice(rng, KIND_COLOURS["bicycle"]), s_m=s0,
            d_m=road.right_edge_m - 0.7, heading_rad=0.0, speed_mps=speed)
    # parked cars along the right kerb
    if rng.random() < 0.4:
        s = float(rng.uniform(5.0, 20.0))
        for _ in range(int(rng.integers(1, 4))):
            add(kind="car", colour=_choice(rng, KIND_COLOURS["car"]), s_m=s, d_m=road.right_edge_m + 0.4,
                heading_rad=0.0, speed_mps=0.0, parked=True)
            s += float(rng.uniform(5.5, 15.0))
    # pedestrians on the sidewalks
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.35, 0.35, 0.2, 0.1]))):
        side = 1 if rng.random() < 0.6 else -1
        edge = road.right_edge_m if side > 0 else road.left_edge_m
        d = edge + side * float(rng.uniform(0.5, max(0.6, road.sidewalk_width_m - 0.4)))
        standing = rng.random() < 0.3
        add(kind="pedestrian", colour=_choice(rng, KIND_COLOURS["pedestrian"]), s_m=float(rng.uniform(5.0, 40.0)),
            d_m=d, heading_rad=float(rng.choice([0.0, math.pi])),
            speed_mps=0.0 if standing else _speed_for("pedestrian", rng))
    # pedestrians on the zebra crossing
    if crossing_peds:
        for _ in range(int(rng.integers(1, 3))):
            direction = float(rng.choice([-1.0, 1.0]))
            d0 = float(rng.uniform(road.left_edge_m - 0.5, road.right_edge_m + 0.5))
            add(kind="pedestrian", colour=_choice(rng, KIND_COLOURS["pedestrian"]),
                s_m=float(road.crosswalk_s_m + rng.uniform(-1.0, 1.0)), d_m=d0, heading_rad=direction * math.pi / 2,
                speed_mps=_speed_for("pedestrian", rng))
    # cross traffic in the intersection
    if road.intersection_s_m is not None and rng.random() < 0.35:
        direction = float(rng.choice([-1.0, 1.0]))
        kind = _choice(rng, ["car", "truck", "bus"], p=[0.8, 0.1, 0.1])
        lane_off = 0.25 if direction > 0 else 0.75
        add(kind=kind, colour=_choice(rng, KIND_COLOURS[kind]),
            s_m=road.intersection_s_m + lane_off * road.intersection_width_m,
            d_m=float(rng.uniform(road.left_edge_m - 6.0, road.right_edge_m + 6.0)),
            heading_rad=direction * math.pi / 2,
            speed_mps=_speed_for(kind, rng), lights_on=bool(rng.random() < lights))

    occluder_uid = None
    if occlusion:
        # a large vehicle close to the camera, in the lane to the right or parked at the kerb
        kind = _choice(rng, ["truck", "bus"])
        if ego_lane + 1 < road.lanes_forward:
            d = road.lane_centre_m(ego_lane + 1)
            speed = ego.speed_mps
        else:
            d = road.right_edge_m + 0.2
            speed = 0.0
        s_occ = float(rng.uniform(7.0, 11.0))
        # make room: nothing else may stand where the occluder is
        users[:] = [u for u in users if abs(u.d_m - d) > 2.0 or abs(u.s_m - s_occ) > 12.0]
        occ = RoadUser(uid=1 + max((u.uid for u in users), default=-1), kind=kind,
                       colour=_choice(rng, KIND_COLOURS[kind]), s_m=s_occ, d_m=d, heading_rad=0.0, speed_mps=speed,
                       parked=speed == 0.0, lights_on=bool(speed > 0 and rng.random() < lights))
        users.append(occ)
        occluder_uid = occ.uid

    return Scene(
        duration_s=float(duration_s),
        illumination=illumination,
        environment=environment,
        road=road,
        ego=ego,
        road_users=tuple(users),
        statics=tuple(_sample_statics(rng, road, environment)),
        traffic_light=light,
        occluder_uid=occluder_uid,
    )


# --------------------------------------------------------------------------------------------------------------------
# Serialisation (JSON-friendly)


def scene_to_dict(scene: Scene) -> dict[str, Any]:
    """The scene as plain JSON-serialisable data (tuples become lists)."""
    return dataclasses.asdict(scene)


def scene_from_dict(data: dict[str, Any]) -> Scene:
    """Inverse of `scene_to_dict`."""
    try:
        light = data["traffic_light"]
        return Scene(
            duration_s=float(data["duration_s"]),
            illumination=data["illumination"],
            environment=data["environment"],
            road=Road(**data["road"]),
            ego=Ego(**data["ego"]),
            road_users=tuple(RoadUser(**u) for u in data["road_users"]),
            statics=tuple(StaticObject(**{**o, "colour": tuple(o["colour"])}) for o in data["statics"]),
            traffic_light=TrafficLight(**light) if light is not None else None,
            occluder_uid=data.get("occluder_uid"),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"scene dict: not a scene written by scene_to_dict ({err})") from err
