"""Event-camera simulator: the ESIM rule on log luminance, vectorized with numpy (written here from the published
description of the rule; no code taken from ESIM, v2e or tonic).

The rule, per pixel:
- Keep a reference log level `ref`, first set to the log luminance of the first frame.
- Between consecutive frames (log levels L0 at t0, L1 at t1) the log luminance is assumed to change linearly.
  Let d = L1 - ref. The polarity is + when d >= 0 (threshold C = C_on of that pixel), - otherwise (C = C_off).
  n = floor(|d| / C) levels are crossed: level_j = ref + j * (pol * C) for j = 1..n. Event j is stamped where the
  straight line from L0 to L1 meets level_j: t0 + round((t1 - t0) * clip((level_j - L0) / (L1 - L0), 0, 1)) µs
  (the end t1 when L1 == L0, which only happens with leak). Then ref += n * (pol * C).
- Refractory period R: an event is emitted only if t - t_last >= R, where t_last is the time of the pixel's last
  emitted event; a suppressed event still advances `ref` (as ESIM does).
- Threshold mismatch: C_on and C_off are drawn once per pixel from N(c, sigma_c), clipped below at c_min.
- Leak (optional): `ref` drifts down by leak_rate * C_on per second (per-pixel rate, log-normal spread), which makes
  a static pixel fire ON events now and then, as a real DVS pixel does.
- Background activity (optional): noise events, a Poisson process per pixel, polarity 50/50, uniform in time. Its rate
  is `shot_noise_hz` plus a part that rises as light falls, as a real sensor's does
  (`EventSimConfig.background_rate_hz`: `ba_hz` at luminance `ba_ref_luminance`, times
  (ba_ref_luminance / L) ** ba_exponent, at most `ba_max_hz`), evaluated per pixel at the pixel's mean luminance over
  the clip. Noise events do not touch `ref` and skip the
  refractory filter (a simplification).

Output: a structured array of dtype EVENT_DTYPE (x uint16, y uint16, t int64 µs, p uint8 with 1 = ON/positive),
sorted by (t, y, x, p). The sensor size is the luminance frames' size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdlib.base.event_dtype import EVENT_DTYPE

_NEVER = np.int64(-(2**62))  # "no event yet" time for the refractory check


@dataclass(frozen=True)
class EventSimConfig:
    """Sensor parameters (contrast thresholds in natural-log units)."""

    c_pos: float = 0.2
    c_neg: float = 0.2
    sigma_c: float = 0.03  # per-pixel threshold mismatch (std)
    c_min: float = 0.01
    refractory_us: int = 100
    log_eps: float = 1e-4  # log(luminance + eps); luminance is linear, 1 = white paper in daylight
    shot_noise_hz: float = 0.0  # light-independent background-activity rate per pixel (both polarities together)
    leak_hz: float = 0.0  # mean leak-event rate per pixel
    leak_spread_decades: float = 0.1  # per-pixel spread of the leak rate (std of log10)
    ba_hz: float = 0.0  # light-dependent background activity per pixel at luminance ba_ref_luminance (0 = off)
    ba_ref_luminance: float = 0.1  # linear luminance (1 = white paper in daylight; 0.1 = asphalt in daylight)
    ba_exponent: float = 0.5  # rate ~ luminance ** -ba_exponent: ten times less light, ~3.2x the noise
    ba_max_hz: float = 5.0  # the light-dependent part saturates here (v2e's "noisy" preset: 5 Hz shot noise)

    def __post_init__(self) -> None:
        for name in ("c_pos", "c_neg", "c_min", "ba_ref_luminance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EventSimConfig.{name}={getattr(self, name)}: expected > 0")
        for name in ("sigma_c", "refractory_us", "log_eps", "shot_noise_hz", "leak_hz", "leak_spread_decades",
                     "ba_hz", "ba_exponent", "ba_max_hz"):
            if getattr(self, name) < 0:
                raise ValueError(f"EventSimConfig.{name}={getattr(self, name)}: expected >= 0")

    def background_rate_hz(self, luminance: np.ndarray | float) -> np.ndarray:
        """Background-activity rate (Hz per pixel, both polarities) of a pixel at linear `luminance`: `shot_noise_hz`
        plus min(ba_max_hz, ba_hz * (ba_ref_luminance / luminance) ** ba_exponent). float32 in, float32 out."""
        lum = np.asarray(luminance)
        dtype = np.float32 if lum.dtype == np.float32 else np.float64
        lum = np.maximum(lum.astype(dtype, copy=False), dtype(1e-12))
        if self.ba_hz == 0:
            return dtype(self.shot_noise_hz) + np.zeros_like(lum)
        part = (lum * dtype(1.0 / self.ba_ref_luminance)) ** dtype(-self.ba_exponent)
        part *= dtype(self.ba_hz)
        return dtype(self.shot_noise_hz) + np.minimum(part, dtype(self.ba_max_hz))


# The simulated world's event camera. Background activity: 0.2 Hz per pixel on daylit asphalt (luminance 0.1), about
# 0.07 Hz on a daylit sky, 2.4 Hz on a street at night (luminance ~7e-4), up to 5 Hz on the darkest surfaces: the
# range usually quoted for real sensors (~0.1-1 Hz in daylight, several Hz in the dark). reference/event_data.md
# (section 4.2) gives v2e's figures: shot noise 0.001-5 Hz (5 Hz in its "noisy" preset), rising as intensity falls.
# Leak 0.05 Hz (v2e: 0.01-0.1 Hz); since `ref` starts at the first frame's level, a pixel's first leak event comes only
# after about 1 / leak_hz = 20 s, so leak adds no events to a 1 s clip.
WORLD_EVENT_CONFIG = EventSimConfig(leak_hz=0.05, ba_hz=0.2)


@dataclass(frozen=True)
class PixelParams:
    """Per-pixel sensor constants drawn once per clip: thresholds [H, W] and leak rate [H, W] (Hz)."""

    c_pos: np.ndarray
    c_neg: np.ndarray
    leak_hz: np.ndarray


def draw_pixel_params(rng: np.random.Generator, height: int, width: int, config: EventSimConfig) -> PixelParams:
    """Draw the per-pixel thresholds (always 2 x H x W normals) and, when leak is on, the leak rates."""
    c_pos = np.maximum(config.c_pos + config.sigma_c * rng.standard_normal((height, width)), config.c_min)  # [H, W]
    c_neg = np.maximum(config.c_neg + config.sigma_c * rng.standard_normal((height, width)), config.c_min)  # [H, W]
    if config.leak_hz > 0:
        leak = config.leak_hz * 10.0 ** (config.leak_spread_decades * rng.standard_normal((height, width)))  # [H, W]
    else:
        leak = np.zeros((height, width))
    return PixelParams(c_pos=c_pos, c_neg=c_neg, leak_hz=leak)


def background_activity(rng: np.random.Generator, height: int, width: int, t_start_us: int, t_end_us: int,
                        rate_hz: float | np.ndarray) -> np.ndarray:
    """Background-activity events over [t_start_us, t_end_us): Poisson with `rate_hz` per pixel (a number, or one
    rate per pixel [H, W]), uniform in time, polarity 50/50. Unsorted, dtype EVENT_DTYPE."""
    duration_s = (t_end_us - t_start_us) / 1e6
    if np.ndim(rate_hz) == 0:
        rate = float(rate_hz)
        n = int(rng.poisson(rate * height * width * duration_s)) if rate > 0 and duration_s > 0 else 0
        pix = rng.integers(0, height * width, size=n) if n else np.empty(0, dtype=np.int64)
    else:
        rate_map = np.asarray(rate_hz, dtype=np.float64)
        if rate_map.shape != (height, width):
            raise ValueError(f"rate_hz shape {rate_map.shape}: expected one rate per pixel ({height}, {width})")
        counts = rng.poisson(rate_map.ravel() * max(duration_s, 0.0))  # [P]
        n = int(counts.sum())
        pix = np.repeat(np.arange(height * width), counts)  # [n]
    ev = np.empty(n, dtype=EVENT_DTYPE)  # [n]
    if n:
        ev["x"] = pix % width
        ev["y"] = pix // width
        ev["t"] = rng.integers(t_start_us, t_end_us, size=n)
        ev["p"] = rng.integers(0, 2, size=n)
    return ev


def background_rate_map(luminance: np.ndarray, config: EventSimConfig) -> np.ndarray | float:
    """The background-activity rate the simulator uses: one rate per pixel [H, W] from each pixel's mean luminance
    over the frames `luminance` [T, H, W] when the light-dependent part is on, else the number `shot_noise_hz`."""
    if config.ba_hz == 0:
        return config.shot_noise_hz
    return config.background_rate_hz(np.asarray(luminance).mean(axis=0))  # [H, W]


def log_intensity(luminance: np.ndarray, eps: float) -> np.ndarray:
    """log(luminance + eps) in float64 (the same values for every implementation of the rule)."""
    return np.log(np.asarray(luminance, dtype=np.float64) + eps)


def sort_events(ev: np.ndarray, width: int, height: int) -> np.ndarray:
    """Sort events by (t, y, x, p): the canonical order of every event array this package returns."""
    key = ev["t"] * np.int64(2 * width * height) + (ev["y"].astype(np.int64) * width + ev["x"]) * 2 + ev["p"]
    return ev[np.argsort(key, kind="stable")]


def _check_inputs(luminance: np.ndarray, times_us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lum = np.asarray(luminance)
    times = np.asarray(times_us)
    if lum.ndim != 3:
        raise ValueError(f"luminance shape {lum.shape}: expected [T, H, W]")
    if lum.shape[0] < 2:
        raise ValueError(f"luminance has {lum.shape[0]} frame(s): expected at least 2")
    if lum.shape[1] > 65535 or lum.shape[2] > 65535:
        raise ValueError(f"luminance shape {lum.shape}: sensor larger than uint16 coordinates allow")
    if times.shape != (lum.shape[0],):
        raise ValueError(f"times_us shape {times.shape}: expected ({lum.shape[0]},), one time per frame")
    if not np.issubdtype(times.dtype, np.integer):
        raise ValueError(f"times_us dtype {times.dtype}: expected integer microseconds")
    bad = np.flatnonzero(np.diff(times) <= 0)
    if bad.size:
        raise ValueError(f"times_us is not strictly increasing at index {int(bad[0]) + 1}")
    if np.any(lum < 0):
        raise ValueError("luminance: expected non-negative linear luminance")
    return lum, times.astype(np.int64)


def simulate_events(luminance: np.ndarray, times_us: np.ndarray, config: EventSimConfig,
                    rng: np.random.Generator) -> np.ndarray:
    """Simulate an event camera watching frames `luminance` [T, H, W] (linear) taken at `times_us` [T] (int µs).

    `rng` draws the per-pixel thresholds and leak rates (`draw_pixel_params`), then the background activity
    (`background_activity` at `background_rate_map`), in that order. Returns events sorted by (t, y, x, p), dtype
    EVENT_DTYPE.
    """
    lum, times = _check_inputs(luminance, times_us)
    n_frames, height, width = lum.shape
    params = draw_pixel_params(rng, height, width, config)
    noise = background_activity(rng, height, width, int(times[0]), int(times[-1]), background_rate_map(lum, config))

    cp = params.c_pos.ravel()  # [P]
    cn = params.c_neg.ravel()  # [P]
    leak_per_s = (params.leak_hz * params.c_pos).ravel()  # [P] log units per second
    leak_on = config.leak_hz > 0
    refractory = int(config.refractory_us)
    ref = log_intensity(lum[0], config.log_eps).ravel()  # [P]
    last_t = np.full(ref.shape, _NEVER, dtype=np.int64)  # [P] time of the last emitted event (refractory only)
    l_prev = ref.copy()

    chunks_pix: list[np.ndarray] = []
    chunks_t: list[np.ndarray] = []
    chunks_p: list[np.ndarray] = []
    for k in range(1, n_frames):
        t0, t1 = int(times[k - 1]), int(times[k])
        dt = t1 - t0
        l_now = log_intensity(lum[k], config.log_eps).ravel()  # [P]
        if leak_on:
            ref -= leak_per_s * (dt / 1e6)
        diff = l_now - ref
        pos = diff >= 0
        c = np.where(pos, cp, cn)  # [P]
        n = np.floor(np.abs(diff) / c).astype(np.int64)  # [P] events per pixel in this interval
        active = np.flatnonzero(n)  # [A]
        if active.size:
            na = n[active]
            step = np.where(pos[active], c[active], -c[active])  # [A] pol * C
            ra = ref[active]
            l0a = l_prev[active]
            span = l_now[active] - l0a  # [A]
            start = np.cumsum(na) - na  # [A] first event of each pixel in the flat arrays
            total = int(na.sum())
            rep = np.repeat(np.arange(active.size), na)  # [N] pixel slot of each event
            j = np.arange(total, dtype=np.int64) - start[rep] + 1  # [N] 1..n within a pixel
            level = ra[rep] + j * step[rep]  # [N]
            sp = span[rep]
            frac = np.divide(level - l0a[rep], sp, out=np.ones(total), where=sp != 0)
            np.clip(frac, 0.0, 1.0, out=frac)
            t = t0 + np.floor(dt * frac + 0.5).astype(np.int64)  # [N]
            ref[active] = ra + na * step
            if refractory > 0:
                keep = _refractory(t, na, start, active, last_t, refractory)
                rep, t = rep[keep], t[keep]
            chunks_pix.append(active[rep])
            chunks_t.append(t)
            chunks_p.append(pos[active][rep])
        l_prev = l_now

    total = sum(len(x) for x in chunks_t)
    ev = np.empty(total + len(noise), dtype=EVENT_DTYPE)  # [N]
    if total:
        pix = np.concatenate(chunks_pix)
        ev["x"][:total] = pix % width
        ev["y"][:total] = pix // width
        ev["t"][:total] = np.concatenate(chunks_t)
        ev["p"][:total] = np.concatenate(chunks_p)
    ev[total:] = noise
    return sort_events(ev, width, height)


def _refractory(t: np.ndarray, na: np.ndarray, start: np.ndarray, active: np.ndarray, last_t: np.ndarray,
                refractory: int) -> np.ndarray:
    """Greedy refractory filter for one frame interval; updates last_t in place and returns the keep mask [N].

    The j-th events of all pixels are independent of each other, so the loop runs over j (at most max(n) rounds)
    and is vectorized over pixels; within a pixel the events are visited in time order, as the scalar rule does.
    """
    keep = np.empty(t.shape, dtype=bool)  # [N]
    order = np.argsort(-na, kind="stable")  # pixels with the most events first
    na_sorted = na[order]
    lt = last_t[active[order]]  # [A]
    st = start[order]
    n_max = int(na_sorted[0])
    # count of pixels with at least jj events, for jj = 1..n_max (na_sorted is non-increasing)
    counts = np.searchsorted(-na_sorted, -np.arange(1, n_max + 1), side="right")
    for jj in range(n_max):
        m = int(counts[jj])
        idx = st[:m] + jj
        tt = t[idx]
        ok = tt - lt[:m] >= refractory
        keep[idx] = ok
        lt[:m] = np.where(ok, tt, lt[:m])
    last_t[active[order]] = lt
    return keep
