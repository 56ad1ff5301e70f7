"""Throughput of the event simulator (sdlib.world.simulate_events), in events per second on one core.

Renders world clips first (not timed), then times only the simulation, repeated; prints the median.
Also prints the median time to generate one whole default clip with `make_clip` (render, events, 8 RGB frames and
the 20 answers).

    PYTHONPATH=. python benchmarks/bench_events.py            # DSEC-size 640x480 and scale-model 128x96
    PYTHONPATH=. python benchmarks/bench_events.py --repeats 3 --sizes 128x96
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from sdlib.world import make_clip  # noqa: E402
from sdlib.world.throughput import throughput  # noqa: E402


def time_make_clip(n: int, seed: int) -> tuple[float, float]:
    """Median seconds per default clip, and median events per clip."""
    rng = np.random.default_rng(seed)
    make_clip(rng)  # warm-up (caches)
    seconds, counts = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        clip = make_clip(rng)
        seconds.append(time.perf_counter() - t0)
        counts.append(len(clip.events))
    return float(np.median(seconds)), float(np.median(counts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="640x480,128x96", help="comma-separated WxH sensor sizes")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clips", type=int, default=10, help="default clips to time make_clip on (0 = skip)")
    args = ap.parse_args()
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        big = w * h > 100_000
        res = throughput(w, h, n_clips=2 if big else 6, repeats=args.repeats, seed=args.seed,
                         duration_s=0.25 if big else 1.0)
        print(f"{res['size']}: {res['clips']} clips x {res['frames_per_clip']} frames, "
              f"{res['events_per_run']:,} events in {res['seconds_per_run']:.3f} s per run -> "
              f"median {res['events_per_s'] / 1e6:.2f} M events/s (runs: {res['all_rates']})")
    if args.clips:
        sec, n_ev = time_make_clip(args.clips, args.seed)
        print(f"make_clip (128x96 events, 200 Hz, 8 RGB frames, 20 answers): median {sec:.3f} s per clip "
              f"over {args.clips} random clips (median {n_ev:,.0f} events)")


if __name__ == "__main__":
    main()
