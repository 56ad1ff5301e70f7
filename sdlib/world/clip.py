"""One world clip end to end: scene -> render -> events + the target's 8 RGB frames -> answers to the 10 questions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .events import EventSimConfig, simulate_events
from .qa import all_answers
from .render import (DEFAULT_FPS, RGB_FRAMES, clip_times_us, luminance, render_radiance, rgb_camera,
                     target_frame_indices)
from .scene import Scene, sample_scene

# Background activity (Hz per pixel) by illumination. Shot noise grows as light falls (as in v2e's noise model);
# the magnitudes are a setting of this world, chosen so that noise stays well below one event per pixel per clip.
SHOT_NOISE_HZ = {"day": 0.05, "dusk": 0.15, "night": 0.4}


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and rates of the simulated sensors. Sizes are (width, height), 4:3 like DSEC's 640x480."""

    sensor_size: tuple[int, int] = (128, 96)  # event sensor
    rgb_size: tuple[int, int] = (128, 96)  # target's RGB frames
    fps: float = DEFAULT_FPS  # internal render rate, drives the event simulator
    duration_s: float = 1.0
    n_rgb_frames: int = RGB_FRAMES
    events: EventSimConfig = field(default_factory=lambda: EventSimConfig(leak_hz=0.05))
    shot_noise_by_illumination: bool = True  # replace events.shot_noise_hz by SHOT_NOISE_HZ[illumination]

    def __post_init__(self) -> None:
        for name in ("sensor_size", "rgb_size"):
            w, h = getattr(self, name)
            if w * 3 != h * 4:
                raise ValueError(f"WorldConfig.{name}={w}x{h}: expected a 4:3 size such as 128x96 or 640x480")

    def event_config(self, illumination: str) -> EventSimConfig:
        if not self.shot_noise_by_illumination:
            return self.events
        return dataclasses.replace(self.events, shot_noise_hz=SHOT_NOISE_HZ[illumination])


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
    so changing e.g. the event settings leaves the scene and the answers unchanged."""
    scene_rng, event_rng, rgb_rng, qa_rng = rng.spawn(4)
    if scene is None:
        scene = sample_scene(scene_rng, duration_s=config.duration_s)
    times_us = clip_times_us(scene.duration_s, config.fps)  # [T]
    rad = render_radiance(scene, times_us / 1e6, *config.sensor_size)  # [T, H, W, 3]
    events = simulate_events(luminance(rad), times_us, config.event_config(scene.illumination), event_rng)
    idx = target_frame_indices(len(times_us), config.n_rgb_frames)
    if tuple(config.rgb_size) == tuple(config.sensor_size):
        rgb_rad = rad[idx]
    else:
        rgb_rad = render_radiance(scene, times_us[idx] / 1e6, *config.rgb_size)
    rgb = rgb_camera(rgb_rad, scene.illumination, rgb_rng)  # [n, H, W, 3]
    return WorldClip(scene=scene, rgb_frames=rgb, rgb_times_us=times_us[idx], events=events,
                     sensor_size=tuple(config.sensor_size),
                     answers=all_answers(scene, qa_rng, rgb_times_s=times_us[idx] / 1e6))
