"""One world clip end to end: scene -> render -> events + the target's 8 RGB frames -> answers to the 10 questions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .crop import EVENT_INPUT_PX, TARGET_INPUT_PX
from .events import WORLD_EVENT_CONFIG, EventSimConfig, simulate_events
from .facts import Viewing
from .qa import all_answers
from .render import (DEFAULT_FPS, RGB_FRAMES, clip_times_us, luminance, render_radiance, rgb_camera,
                     target_frame_indices)
from .scene import Scene, sample_scene


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and rates of the simulated sensors. Sizes are (width, height), 4:3 like DSEC's 640x480.
    The answers state what each model receives of the frames: the centre square of `rgb_input_px` (target) and
    `event_input_px` (drafter) pixels its preprocessing keeps (`crop.centre_crop`)."""

    sensor_size: tuple[int, int] = (128, 96)  # event sensor
    rgb_size: tuple[int, int] = (128, 96)  # target's RGB frames
    fps: float = DEFAULT_FPS  # internal render rate, drives the event simulator
    duration_s: float = 1.0
    n_rgb_frames: int = RGB_FRAMES
    events: EventSimConfig = field(default_factory=lambda: WORLD_EVENT_CONFIG)  # background activity rises as
    # light falls (events.WORLD_EVENT_CONFIG)
    rgb_input_px: int = TARGET_INPUT_PX  # the target's square frames (scale model: 56 px)
    event_input_px: int = EVENT_INPUT_PX  # the drafter's square event image (scale model: 80 px)

    def __post_init__(self) -> None:
        for name in ("sensor_size", "rgb_size"):
            w, h = getattr(self, name)
            if w * 3 != h * 4:
                raise ValueError(f"WorldConfig.{name}={w}x{h}: expected a 4:3 size such as 128x96 or 640x480")

    @property
    def viewing(self) -> Viewing:
        """What the answers are written for: both models' input sizes and this event sensor."""
        return Viewing(rgb_input_px=self.rgb_input_px, event_input_px=self.event_input_px, events=self.events)


@dataclass
class WorldClip:
    """A generated clip.

    rgb_frames: uint8 [n_rgb_frames, H_rgb, W_rgb, 3] and rgb_times_us [n_rgb_frames] (the target's input);
    events: EVENT_DTYPE [N] on the sensor (`sensor_size`), t in [0, duration] µs;
    answers: per question (QUESTIONS order) {"rgb": ..., "events": ...}.
    """

    scene: Scene
    rgb_frames: np.ndarray
    rgb_times_us: np.ndarray
    events: np.ndarray
    sensor_size: tuple[int, int]
    answers: list[dict[str, str]]


def make_clip(rng: np.random.Generator, config: WorldConfig = WorldConfig(), scene: Scene | None = None) -> WorldClip:
    """Generate one clip. `rng` is split into four independent streams (scene, events, RGB noise, answer wording),
    so changing e.g. the event settings leaves the scene, the RGB frames and the RGB answers unchanged (the event
    answers follow the event sensor: what its noise drowns, they leave out)."""
    scene_rng, event_rng, rgb_rng, qa_rng = rng.spawn(4)
    if scene is None:
        scene = sample_scene(scene_rng, duration_s=config.duration_s)
    times_us = clip_times_us(scene.duration_s, config.fps)  # [T]
    rad = render_radiance(scene, times_us / 1e6, *config.sensor_size)  # [T, H, W, 3]
    events = simulate_events(luminance(rad), times_us, config.events, event_rng)
    idx = target_frame_indices(len(times_us), config.n_rgb_frames)
    if tuple(config.rgb_size) == tuple(config.sensor_size):
        rgb_rad = rad[idx]
    else:
        rgb_rad = render_radiance(scene, times_us[idx] / 1e6, *config.rgb_size)
    rgb = rgb_camera(rgb_rad, scene.illumination, rgb_rng)  # [n, H, W, 3]
    return WorldClip(scene=scene, rgb_frames=rgb, rgb_times_us=times_us[idx], events=events,
                     sensor_size=tuple(config.sensor_size),
                     answers=all_answers(scene, qa_rng, rgb_times_s=times_us[idx] / 1e6,
                                         viewing=config.viewing))
