"""How fast the event simulator runs: events per second on one core, timing only :func:`simulate_events`.

Used by the 00_data stage (the figure in the book) and by ``benchmarks/bench_events.py`` (the command line).
Clips are rendered first (not timed); each repetition simulates all of them; the median rate is reported.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from .events import WORLD_EVENT_CONFIG, simulate_events
from .render import clip_times_us, luminance, render_radiance
from .scene import sample_scene


def render_luminance(scene, times_us: np.ndarray, width: int, height: int, chunk: int = 16) -> np.ndarray:
    """Luminance frames [T, H, W] rendered a few frames at a time (a whole DSEC-size clip's radiance is large)."""
    out = np.empty((len(times_us), height, width), dtype=np.float32)  # [T, H, W]
    for i in range(0, len(times_us), chunk):
        out[i:i + chunk] = luminance(render_radiance(scene, times_us[i:i + chunk] / 1e6, width, height))
    return out


def throughput(width: int, height: int, n_clips: int = 3, repeats: int = 3, seed: int = 0,
               duration_s: float = 1.0) -> dict:
    """Median events/s of the simulator over ``repeats`` runs on ``n_clips`` rendered daytime clips with ego-motion.

    Returns ``{"size", "clips", "frames_per_clip", "events_per_run", "seconds_per_run", "events_per_s", "all_rates"}``.
    """
    if n_clips < 1 or repeats < 1:
        raise ValueError(f"n_clips={n_clips}, repeats={repeats}: expected at least 1 of each")
    rng = np.random.default_rng(seed)
    config = dataclasses.replace(WORLD_EVENT_CONFIG, leak_hz=0.1)  # the world's sensor, background activity included
    clips = []
    for _ in range(n_clips):
        scene = sample_scene(rng, duration_s=duration_s, ego_moving=True, illumination="day")
        times = clip_times_us(duration_s)
        clips.append((render_luminance(scene, times, width, height), times))
    rates, counts, seconds = [], [], []
    for r in range(repeats):
        n_events, elapsed = 0, 0.0
        for k, (lum, times) in enumerate(clips):
            sim_rng = np.random.default_rng([seed, r, k])
            t0 = time.perf_counter()
            ev = simulate_events(lum, times, config, sim_rng)
            elapsed += time.perf_counter() - t0
            n_events += len(ev)
        rates.append(n_events / elapsed)
        counts.append(n_events)
        seconds.append(elapsed)
    return {"size": f"{width}x{height}", "clips": n_clips, "frames_per_clip": len(clips[0][1]),
            "events_per_run": int(np.median(counts)), "seconds_per_run": float(np.median(seconds)),
            "events_per_s": float(np.median(rates)), "all_rates": [round(x) for x in rates]}
