"""The decoding engine on the trained scale pair, every drafter in both placements, against AR and the peers
transformers offers; greedy, on test prompts, every output checked against the target's own greedy answer.

Per request every method runs once per repetition, interleaved so that machine noise hits them alike; a method's
time is the median over repetitions per request, summed over requests (ratio of totals). The target runs on one
pinned core (the first usable), with one thread, for every method, the AR baseline included; in the
``two_devices`` placement the drafter runs in its own process pinned to the other core; in ``shared_device`` it runs
in the target's thread; ``modelled`` is the original study's timing model (sequential run, overlap subtracted),
labelled as such. "ready@prefill" is the mean number of drafts that existed when the target's prefill ended
(counted from timestamps) and "window used" how many of them ended up in the answer.

The feature drafter's adapter and the target head are the closed-form linear baselines of
:mod:`sdlib.align.linear`, fitted here on training prompts with the ridge strength chosen on validation prompts
(the trained adapter zoo is the adapter stage's). The event-activity length policy is calibrated on validation
prompts too; the test prompts are only decoded.

    PYTHONPATH=. python benchmarks/bench_engine.py                      # 100 test prompts, 2 repetitions, k = 3
    PYTHONPATH=. python benchmarks/bench_engine.py --prompts 20 --repeats 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from sdlib import paths
from sdlib.benchmark import hf_generate
from sdlib.align.linear import fit_adapter, fit_head, paired_states
from sdlib.data.layout import load_clip
from sdlib.decoding.acceptance import CONVENTION, AcceptanceStats
from sdlib.decoding.ar import greedy_decode
from sdlib.decoding.drafters import (FeatureDrafter, PromptLookupDrafter, TargetHeadDrafter, TokenDrafter,
                                    TwoPhaseDrafter)
from sdlib.align.heads import save_module
from sdlib.decoding.length import ActivityLength, event_activity
from sdlib.decoding.placement import PairDrafter, ProcessDrafter, split_cores
from sdlib.decoding.speculative import speculative_decode
from sdlib.models import costs, quality, scale


def split_requests(split_dir: Path, drafter, target, sizes, n: int):
    """(record, target inputs, drafter inputs, event activity) for the first ``n`` prompts of a split."""
    out = []
    clips = {}
    for rec in quality.test_prompts(split_dir)[:n]:
        clip = clips.setdefault(rec["clip_id"], load_clip(split_dir, rec))
        question = rec["conversations"][0]["value"]
        visual = scale.drafter_visual(clip, sizes)
        out.append((rec, target.prepare(question, clip.frames), drafter.prepare(question, visual),
                    event_activity(np.asarray(visual))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--window", type=int, default=8, help="drafts a drafter may make before the target's first token")
    ap.add_argument("--min-confidence", type=float, default=0.5)
    ap.add_argument("--fit-prompts", type=int, default=300, help="training prompts for the linear adapter and head")
    ap.add_argument("--val-prompts", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default data/results/bench_engine.json)")
    args = ap.parse_args()
    k = args.k

    result_file = paths.data_dir() / "results" / "01_models.json"
    if not result_file.is_file():
        raise SystemExit(f"{result_file}: missing; run `make run STAGE=01_models PROFILE=default` first")
    record = json.loads(result_file.read_text())
    pair_dir = Path(record["metrics"]["pair_dir"])
    drafter, target = scale.load_pair(pair_dir)
    sizes = scale.ScaleSizes(**json.loads((pair_dir / "pair.json").read_text())["sizes"])
    world = paths.data_dir() / "world" / record["parameters"]["dataset"]
    v = target.lm_head.out_features
    target_cores, drafter_cores = split_cores()
    if drafter_cores is None:
        print("WARNING: one usable core; the two_devices drafter shares it with the target (no real overlap)")

    # -- fit the linear adapter and head (train), choose ridge and calibrate the activity policy (val) -------------
    t_fit = time.perf_counter()
    with costs.timing_conditions(threads=1):
        train = [(t, d) for _, t, d, _ in split_requests(world / "train", drafter, target, sizes, args.fit_prompts)]
        val_reqs = split_requests(world / "val", drafter, target, sizes, args.val_prompts)
        val = [(t, d) for _, t, d, _ in val_reqs]
        tr_states = paired_states(drafter, target, train,
                                  [greedy_decode(target, t, args.max_new_tokens).tokens for t, _ in train])
        va_states = paired_states(drafter, target, val,
                                  [greedy_decode(target, t, args.max_new_tokens).tokens for t, _ in val])
    adapter, a_info = fit_adapter(tr_states, va_states, target.lm_head)
    head, h_info = fit_head(tr_states, va_states, target.lm_head, target.embed_tokens)
    policy = ActivityLength.calibrated([a for *_, a in val_reqs], k_calm=k + 2, k_busy=max(1, k - 1))
    print(f"fitted in {time.perf_counter() - t_fit:.0f} s on {len(train)} train prompts: adapter val top-1 "
          f"{a_info['val_top1']:.3f} (ridge {a_info['ridge']}), head val top-1 {h_info['val_top1']:.3f} "
          f"(ridge {h_info['ridge']}); activity threshold {policy.threshold:.4f} (val median): k = {policy.k_calm} "
          f"below, {policy.k_busy} above")
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    save_module(adapter, work / "adapter.safetensors", drafter_hidden=sizes.drafter_hidden,
                target_hidden=sizes.target_hidden)

    tests = split_requests(world / "test", drafter, target, sizes, args.prompts)
    remote_token = ProcessDrafter(PairDrafter(str(pair_dir), "token"), cores=drafter_cores, window=args.window)
    remote_feature = ProcessDrafter(PairDrafter(str(pair_dir), "feature", str(work / "adapter.safetensors")),
                                    cores=drafter_cores, window=args.window)

    def head_drafter():
        return TargetHeadDrafter(head, target.lm_head, target.embed_tokens)

    def feature_drafter():
        return FeatureDrafter(drafter, adapter, target.lm_head)

    def remote(r, ahead):
        r.ahead = ahead
        return r

    cfg = target.model.config
    placeholders = [i for i in (getattr(cfg, "video_token_id", None), getattr(cfg, "image_token_id", None))
                    if i is not None]
    # name -> (placement, make drafter, k (or None: the activity policy), window for sequential drafters, modelled)
    configs = {
        "prompt lookup (ours)": ("shared_device", lambda: PromptLookupDrafter(v, exclude=placeholders), k, 0,
                                 False),
        "token": ("shared_device", lambda: TokenDrafter(drafter, v), k, 0, False),
        "token conf": ("shared_device", lambda: TokenDrafter(drafter, v, min_confidence=args.min_confidence), k + 2,
                       0, False),
        "token activity": ("shared_device", lambda: TokenDrafter(drafter, v), None, 0, False),
        "feature": ("shared_device", feature_drafter, k, 0, False),
        "target_head": ("shared_device", head_drafter, k, 0, False),
        "two_phase": ("shared_device", lambda: TwoPhaseDrafter(feature_drafter(), head_drafter()), k, args.window,
                      False),
        "two_phase modelled": ("modelled", lambda: TwoPhaseDrafter(feature_drafter(), head_drafter()), k,
                               args.window, True),
        "token 2dev": ("two_devices", lambda: remote(remote_token, 0), k, 0, False),
        "token 2dev pipelined": ("two_devices", lambda: remote(remote_token, k), k, 0, False),
        "feature 2dev": ("two_devices", lambda: remote(remote_feature, 0), k, 0, False),
        "feature 2dev pipelined": ("two_devices", lambda: remote(remote_feature, k), k, 0, False),
        "two_phase 2dev": ("two_devices", lambda: TwoPhaseDrafter(remote(remote_feature, 0), head_drafter()), k, 0,
                           False),
    }
    peers = {"hf assisted (text-only drafter LM)": {"assistant_model": drafter.model},
             "hf prompt lookup": {"prompt_lookup_num_tokens": k}}
    methods = ["AR", *peers, *configs]
    times = {m: [] for m in methods}
    mismatches = dict.fromkeys(methods, 0)
    stats = {m: AcceptanceStats() for m in configs}
    ready = {m: [] for m in configs}
    used = {m: [] for m in configs}
    by_activity = {"calm": AcceptanceStats(), "busy": AcceptanceStats()}
    failed: dict[str, str] = {}
    n_tokens = 0
    t_run = time.perf_counter()
    try:
        with costs.timing_conditions(threads=1):
            for i, (rec, t_in, d_in, activity) in enumerate(tests):
                reference = greedy_decode(target, t_in, args.max_new_tokens).tokens
                n_tokens += len(reference)
                per = {m: [] for m in methods}
                for rep in range(args.repeats):
                    outs = {}
                    ar = greedy_decode(target, t_in, args.max_new_tokens)
                    per["AR"].append(ar.total_ms)
                    outs["AR"] = ar.tokens
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
                    for name, (placement, make, kk, window, modelled) in configs.items():
                        kk = policy(activity) if kk is None else kk
                        own = t_in if name.startswith("prompt lookup") else d_in  # n-gram lookup reads the prompt
                        spec = speculative_decode(target, t_in, make(), own, kk, args.max_new_tokens, window=window,
                                                  modelled=modelled)
                        assert spec.placement == placement, (name, spec.placement)
                        per[name].append(spec.modelled_total_ms if modelled else spec.total_ms)
                        outs[name] = spec.tokens
                        if rep == 0:
                            stats[name] = AcceptanceStats.merged([stats[name], spec.stats])
                            ready[name].append(spec.drafts_ready_at_prefill_end)
                            used[name].append(spec.window_tokens_used)
                            if name == "token":
                                bucket = "calm" if activity < policy.threshold else "busy"
                                by_activity[bucket] = AcceptanceStats.merged([by_activity[bucket], spec.stats])
                    if rep == 0:
                        for m, toks in outs.items():
                            mismatches[m] += int(toks != reference)
                for m in methods:
                    if per[m]:
                        times[m].append(statistics.median(per[m]))
                print(f"\rrequest {i + 1}/{len(tests)} ({time.perf_counter() - t_run:.0f} s)", end="", flush=True)
    finally:
        remote_token.close()
        remote_feature.close()
    print()
    ar_total = sum(times["AR"])
    print(f"{len(tests)} test prompts, {n_tokens} answer tokens, greedy, medians of {args.repeats} interleaved "
          f"repetitions; target on core {sorted(target_cores or [])}, two_devices drafter on "
          f"{sorted(drafter_cores or [])}; k = {k}, window = {args.window}")
    header = (f"{'method':36s} {'placement':13s} {'total s':>8s} {'ms/tok':>7s} {'speedup':>7s} {'mean r':>6s} "
              f"{'tau':>5s} "
              f"{'accept':>7s} {'ready@prefill':>13s} {'window used':>11s} {'mismatch':>8s}")
    print(header)
    rows = {}
    for m in methods:
        if m in failed:
            print(f"{m:36s} could not run: {failed[m][:300]}")
            rows[m] = {"error": failed[m]}
            continue
        total = sum(times[m])
        placement = configs[m][0] if m in configs else "target only"
        st = stats.get(m)
        per_sample = float(np.mean([a / b for a, b in zip(times["AR"], times[m])]))
        row = {"placement": placement, "total_s": total / 1e3, "ms_per_token": total / n_tokens,
               "speedup": ar_total / total, "speedup_mean_of_ratios": per_sample, "mismatches": mismatches[m]}
        if st is not None:
            row.update(tau=st.tau, acceptance_rate=st.acceptance_rate,
                       drafts_ready_at_prefill_end=float(np.mean(ready[m])), window_tokens_used=float(np.mean(used[m])))
        rows[m] = row
        tau = f"{st.tau:.2f}" if st else "-"
        rate = f"{st.acceptance_rate:.1%}" if st else "-"
        rd = f"{row['drafts_ready_at_prefill_end']:.2f}" if st else "-"
        us = f"{row['window_tokens_used']:.2f}" if st else "-"
        print(f"{m:36s} {placement:13s} {total / 1e3:8.2f} {total / n_tokens:7.2f} {ar_total / total:7.2f} "
              f"{per_sample:6.2f} {tau:>5s} "
              f"{rate:>7s} {rd:>13s} {us:>11s} {mismatches[m]:8d}")
    print("speedup = ratio of total times against AR (headline); mean r = mean of per-request ratios")
    print(f"acceptance convention: {CONVENTION}")
    calm, busy = by_activity["calm"], by_activity["busy"]
    print(f"event activity (token drafter, k = {k}): calm requests acceptance {calm.acceptance_rate:.1%} tau "
          f"{calm.tau:.2f} ({calm.rounds} rounds); busy {busy.acceptance_rate:.1%} tau {busy.tau:.2f} "
          f"({busy.rounds} rounds)")
    out = args.out or paths.data_dir() / "results" / "bench_engine.json"
    out.write_text(json.dumps({"args": {k_: str(v_) for k_, v_ in vars(args).items()}, "n_tokens": n_tokens,
                               "fit": {"adapter": a_info, "head": h_info, "activity_threshold": policy.threshold},
                               "by_activity": {b: s.to_dict() for b, s in by_activity.items()},
                               "methods": rows, "convention": CONVENTION}, indent=1, default=str))
    print(f"written {out}")
    if any(mismatches.values()):
        raise SystemExit("an output differs from the target's greedy answer: the engine is not lossless")


if __name__ == "__main__":
    main()
