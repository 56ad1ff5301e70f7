"""The decoding engine on the trained scale pair: AR, transformers' assisted generation and prompt lookup, and the
speculative loop with the token drafter, on test prompts; greedy, every output checked against the AR answer.

Each request runs every method once per repetition, the methods interleaved so that machine noise hits them alike;
times are medians over repetitions, per request, then summed over requests (ratio of totals). One thread, the
calling thread pinned to one core (the drafter runs sequentially on the same core here: the placements that overlap
the two models are the benchmark stage's). The pair is the one stage 01 trained (``data/results/01_models.json``).

    PYTHONPATH=. python benchmarks/bench_engine.py                 # 20 prompts, 3 repetitions, k = 2 and 4
    PYTHONPATH=. python benchmarks/bench_engine.py --prompts 40 --repeats 5 --ks 1 3 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sdlib import paths
from sdlib.data.layout import load_clip
from sdlib.decoding.acceptance import CONVENTION, AcceptanceStats
from sdlib.decoding.ar import greedy_decode
from sdlib.decoding.drafters import TokenDrafter
from sdlib.decoding.speculative import speculative_decode
from sdlib.models import costs, quality, scale


def hf_generate(target, inputs, max_new: int, **kwargs) -> list[int]:
    with torch.no_grad():
        out = target.model.generate(input_ids=inputs.input_ids, pixel_values_videos=inputs.extra["pixel_values_videos"],
                                    do_sample=False, max_new_tokens=max_new, eos_token_id=target.eos_token_id,
                                    pad_token_id=target.tokenizer.pad_token_id, **kwargs)
    return out[0, inputs.input_ids.shape[1]:].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()

    result_file = paths.data_dir() / "results" / "01_models.json"
    if not result_file.is_file():
        raise SystemExit(f"{result_file}: missing; run `make run STAGE=01_models PROFILE=default` first")
    record = json.loads(result_file.read_text())
    pair_dir = Path(record["metrics"]["pair_dir"])
    drafter, target = scale.load_pair(pair_dir)
    sizes = scale.ScaleSizes(**json.loads((pair_dir / "pair.json").read_text())["sizes"])
    test_dir = paths.data_dir() / "world" / record["parameters"]["dataset"] / "test"
    recs = quality.test_prompts(test_dir)[: args.prompts]
    assistant = drafter.model  # transformers' assistant: the drafter's language model, without its event input

    methods = ["AR", "assisted (text-only drafter LM)", "prompt lookup"] + [f"token drafter k={k}" for k in args.ks]
    times = {m: [] for m in methods}  # per request: median ms
    mismatches = dict.fromkeys(methods, 0)
    stats = {k: AcceptanceStats() for k in args.ks}
    peers = {"assisted (text-only drafter LM)": {"assistant_model": assistant},
             "prompt lookup": {"prompt_lookup_num_tokens": 4}}
    failed: dict[str, str] = {}  # peer methods transformers could not run, with the error
    n_tokens = 0
    with costs.timing_conditions(threads=1):
        for i, rec in enumerate(recs):
            clip = load_clip(test_dir, rec)
            question = rec["conversations"][0]["value"]
            t_in = target.prepare(question, clip.frames)
            d_in = drafter.prepare(question, scale.drafter_visual(clip, sizes))
            reference = greedy_decode(target, t_in, args.max_new_tokens).tokens
            n_tokens += len(reference)
            per = {m: [] for m in methods}
            for rep in range(args.repeats):
                t0 = time.perf_counter()
                ar = greedy_decode(target, t_in, args.max_new_tokens).tokens
                per["AR"].append((time.perf_counter() - t0) * 1e3)
                outs = {"AR": ar}
                for name, kwargs in peers.items():
                    if name in failed:
                        continue
                    t0 = time.perf_counter()
                    try:
                        outs[name] = hf_generate(target, t_in, args.max_new_tokens, **kwargs)
                    except Exception as exc:  # noqa: BLE001 - a peer method transformers cannot run is reported
                        failed[name] = f"{type(exc).__name__}: {exc}"
                        continue
                    per[name].append((time.perf_counter() - t0) * 1e3)
                for k in args.ks:
                    name = f"token drafter k={k}"
                    t0 = time.perf_counter()
                    spec = speculative_decode(target, t_in, TokenDrafter(drafter, target.lm_head.out_features), d_in, k,
                                              args.max_new_tokens)
                    per[name].append((time.perf_counter() - t0) * 1e3)
                    outs[name] = spec.tokens
                    if rep == 0:
                        stats[k] = AcceptanceStats.merged([stats[k], spec.stats])
                if rep == 0:
                    for m, toks in outs.items():
                        mismatches[m] += int(toks != reference)
            for m in methods:
                if per[m]:
                    times[m].append(statistics.median(per[m]))
            print(f"\rrequest {i + 1}/{len(recs)}", end="", flush=True)
    print()
    ar_total = sum(times["AR"])
    print(f"{len(recs)} test prompts, {n_tokens} answer tokens, greedy, medians of {args.repeats} interleaved "
          f"repetitions, one pinned core")
    print(f"{'method':34s} {'total s':>8s} {'ms/token':>9s} {'speedup':>8s} {'tau':>6s} {'accept':>7s} "
          f"{'mismatches':>10s}")
    for m in methods:
        if m in failed:
            print(f"{m:34s} could not run: {failed[m][:200]}")
            continue
        total = sum(times[m])
        k = int(m.split("k=")[1]) if "k=" in m else None
        tau = f"{stats[k].tau:.2f}" if k else "-"
        rate = f"{stats[k].acceptance_rate:.1%}" if k else "-"
        print(f"{m:34s} {total / 1e3:8.2f} {total / n_tokens:9.2f} {ar_total / total:8.2f} {tau:>6s} {rate:>7s} "
              f"{mismatches[m]:10d}")
    print(f"acceptance convention: {CONVENTION}")
    if any(mismatches.values()):
        raise SystemExit("an output differs from the target's greedy answer: the engine is not lossless")


if __name__ == "__main__":
    main()
