"""The end-to-end wall-clock benchmark (stage 06_benchmark_e2e): every decoding config over the same test prompts,
the target's own answer rerun in the same process as the baseline, every output checked against it, and every
speedup as three numbers from one run:

- **measured**: ratio of total times against ``target_ar`` (headline), the mean of per-prompt ratios beside it;
- **predicted**: the theory stage's model (:mod:`sdlib.theory`) fed with this run's own measured costs (the config's
  prefill, the baseline's decode step, the config's verify-cost slope and draft-side time per drafted token) and its
  measured acceptance (the per-token ``alpha`` whose prefix acceptance at the config's draft length gives the
  measured acceptance rate), request by request;
- **projected**: the recorded forward calls re-timed at the RTX 4090's costs (:data:`sdlib.theory.RTX4090`; a
  projection, labelled so): target prefill, decode and verify forwards at the 4090's figures, each drafter forward
  at its model's 4090 cost; a concurrent drafter's forwards count only where the target was not running.

A config is a :class:`Config`; :func:`run_benchmark` runs them prompt by prompt (all configs on one prompt, then the
next, so that machine noise hits them alike), writes one JSON line per (prompt, config) as it goes and returns the
records; :func:`summarize` turns records into the per-config table the result file holds.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from sdlib import theory
from sdlib.decoding.acceptance import AcceptanceStats
from sdlib.decoding.ar import ar_decode
from sdlib.decoding.processors import GREEDY, Sampling
from sdlib.decoding.speculative import speculative_decode

#: Per-forward drafter costs at the 4090, ms. Model drafters: the original's EventGPT measurements (vision +
#: prefill 8.6 + 83.1 ms, 10.0 ms per token). A head on the target's features: our estimate, not a measurement:
#: one decoder layer of the 32-layer target plus its input projection, about 1/32 of a target decode step.
DRAFTER_4090_MS = {"start": theory.RTX4090.P_e, "model_forward": theory.RTX4090.d_e,
                   "head_forward": theory.RTX4090.d_v / 32, "lookup": 0.0}


@dataclass
class Config:
    """One way of decoding. ``kind``: ``"ar"`` (the target alone), ``"hf"`` (a transformers ``generate`` call,
    ``hf_kwargs``), ``"spec"`` (our engine with the drafter ``make()`` builds). ``k``: draft length, or a callable of
    the request's event activity (dynamic length); ``decode_k``: the draft length after the prefill window when it
    differs (the original's protocol: 0, plain decoding). ``inputs``: whose inputs the drafter reads (``"drafter"``: its own
    sensor; ``"target"``: the target's prompt, prompt lookup; ``None``: none). ``costs_4090``: event kind -> which
    :data:`DRAFTER_4090_MS` entry one drafter event of that kind costs at the 4090."""

    name: str
    kind: str = "spec"
    make: Callable[[], Any] | None = None
    k: int | Callable[[float], int] = 3
    window: int = 0
    modelled: bool = False
    sampling: Sampling = GREEDY
    inputs: str | None = "drafter"
    hf_kwargs: dict[str, Any] = field(default_factory=dict)
    costs_4090: dict[str, str] = field(default_factory=dict)
    note: str = ""
    decode_k: int | None = None  # drafts per round after the prefill window, for the prediction (None: k)


@dataclass
class Request:
    prompt_id: str
    question_type: int
    target_inputs: Any
    drafter_inputs: Any
    activity: float


def stratified_sample(records: Sequence[dict], n: int | None, seed: int, type_of: Callable[[dict], int]) -> list[dict]:
    """``n`` records (all when ``n`` is None or too large), drawn with a seeded generator in equal shares per
    question type (the remainder to the first types), in their original order."""
    if n is None or n >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(type_of(r), []).append(i)
    types = sorted(groups)
    share, extra = divmod(n, len(types))
    chosen: list[int] = []
    for j, t in enumerate(types):
        want = min(len(groups[t]), share + (1 if j < extra else 0))
        chosen += rng.choice(groups[t], size=want, replace=False).tolist()
    rest = [i for i in range(len(records)) if i not in set(chosen)]
    if len(chosen) < n:  # a small type could not give its share
        chosen += rng.choice(rest, size=n - len(chosen), replace=False).tolist()
    return [records[i] for i in sorted(chosen)]


def hf_generate(target, inputs, max_new_tokens: int, **kwargs) -> list[int]:
    """transformers' own ``generate`` on the target (greedy), returning the new tokens."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its deprecation notices about generation arguments are not results
    try:
        with torch.no_grad():
            out = target.model.generate(input_ids=inputs.input_ids,
                                        pixel_values_videos=inputs.extra["pixel_values_videos"], do_sample=False,
                                        max_new_tokens=max_new_tokens, eos_token_id=target.eos_token_id,
                                        pad_token_id=target.tokenizer.pad_token_id, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    return out[0, inputs.input_ids.shape[1]:].tolist()


def _relative(events: Iterable[tuple[float, str, int]], t0: float) -> list[tuple[float, str, int]]:
    return [(round((t - t0) * 1e3, 3), kind, int(v)) for t, kind, v in events]


def run_one(cfg: Config, target, req: Request, max_new_tokens: int, seed: int) -> dict[str, Any]:
    """One request under one config: a per-sample record (times in ms; calls as (model, kind, tokens, start ms
    after the request's start, ms); drafter events as (ms after the start, kind, value))."""
    gen = torch.Generator().manual_seed(seed) if not cfg.sampling.greedy else None
    if cfg.kind == "ar":
        t0 = time.perf_counter()
        res = ar_decode(target, req.target_inputs, max_new_tokens, cfg.sampling, gen)
        total = (time.perf_counter() - t0) * 1e3
        calls = [("target", "prefill", res.prompt_len, 0.0, round(res.prefill_ms, 3))]
        at = res.prefill_ms
        for ms in res.step_times_ms:
            calls.append(("target", "decode", 1, round(at, 3), round(ms, 3)))
            at += ms
        return {"tokens": res.tokens, "prefill_ms": res.prefill_ms, "decode_ms": total - res.prefill_ms,
                "total_ms": total, "calls": calls, "events": [], "placement": "target_only"}
    if cfg.kind == "hf":
        t0 = time.perf_counter()
        tokens = hf_generate(target, req.target_inputs, max_new_tokens, **cfg.hf_kwargs)
        total = (time.perf_counter() - t0) * 1e3
        return {"tokens": tokens, "prefill_ms": None, "decode_ms": None, "total_ms": total, "calls": [],
                "events": [], "placement": "target_only"}
    k = cfg.k(req.activity) if callable(cfg.k) else int(cfg.k)
    own = {"drafter": req.drafter_inputs, "target": req.target_inputs, None: None}[cfg.inputs]
    spec = speculative_decode(target, req.target_inputs, cfg.make(), own, k, max_new_tokens, sampling=cfg.sampling,
                              generator=gen, window=cfg.window, modelled=cfg.modelled)
    rec = spec.record()
    total = spec.modelled_total_ms if cfg.modelled else spec.total_ms
    rec.update(tokens=spec.tokens, total_ms=total, measured_total_ms=spec.total_ms, decode_ms=spec.decode_ms, k=k,
               events=_relative(spec.drafter_events, spec.t0))
    return rec


def run_benchmark(configs: Sequence[Config], target, requests: Sequence[Request], max_new_tokens: int,
                  out_file: Path | None = None, seed: int = 0, progress: Callable | None = None) -> list[dict]:
    """Every config on every request (configs interleaved per request); greedy configs are checked token by token
    against the first config's answer (the target alone, ``target_ar``) (``identical_to_baseline``); sampled configs are lossless in distribution (the
    engine's tests check it), so they carry ``identical_to_baseline = None``. ``out_file``: JSON lines written as
    they come (a crash keeps what ran)."""
    if not configs or configs[0].kind != "ar":
        raise ValueError("the first config must be the target alone (kind 'ar'): the baseline every other is "
                         "checked against")
    records = []
    sink = open(out_file, "w") if out_file is not None else None
    it = progress(requests) if progress is not None else requests
    try:
        for i, req in enumerate(it):
            baseline = None
            for cfg in configs:
                try:
                    rec = run_one(cfg, target, req, max_new_tokens, seed + i)
                except Exception as exc:  # noqa: BLE001 - a peer transformers cannot run is reported, not fatal
                    if cfg.kind != "hf":
                        raise
                    rec = {"error": f"{type(exc).__name__}: {exc}", "tokens": None, "total_ms": None}
                if cfg is configs[0]:
                    baseline = rec["tokens"]
                same = None
                if rec.get("tokens") is not None and cfg.sampling.greedy:
                    same = rec["tokens"] == baseline
                if rec.get("tokens") is not None:
                    rec["text"] = target.tokenizer.decode(rec["tokens"], skip_special_tokens=True)
                rec.update(config=cfg.name, prompt_id=req.prompt_id, question_type=req.question_type,
                           identical_to_baseline=same, greedy=cfg.sampling.greedy,
                           n_tokens=None if rec.get("tokens") is None else len(rec["tokens"]))
                records.append(rec)
                if sink is not None:
                    sink.write(json.dumps(rec) + "\n")
                    sink.flush()
    finally:
        if sink is not None:
            sink.close()
    return records


# -- the three numbers -------------------------------------------------------------------------------------------------
def bootstrap_ratio(base: np.ndarray, other: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval (prompts resampled) of ``sum(base) / sum(other)``."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), (reps, len(base)))
    ratios = base[idx].sum(1) / other[idx].sum(1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def measured_costs(rec_ar: Sequence[dict], recs: Sequence[dict]) -> dict[str, float]:
    """The costs the theory model needs, from this run: the config's median prefill ``P_v``; the baseline's median
    decode step ``d_v``; the config's verify slope (least squares of verify ms on drafts, through ``d_v`` at 0);
    the draft-side time per drafted token (round time outside the target's forwards, over the drafts)."""
    d_v = float(np.median([c[4] for r in rec_ar for c in r["calls"] if c[1] == "decode"]))
    p_v = float(np.median([r["prefill_ms"] for r in recs]))
    xs, ys = [], []
    outside, drafted = 0.0, 0
    for r in recs:
        target_ms = sum(c[4] for c in r["calls"] if c[1] in ("verify", "decode"))
        outside += r["measured_total_ms"] - r["prefill_ms"] - r["drafter_start_ms"] * (r["placement"] != "two_devices") \
            - target_ms
        drafted += r["drafted"]
        for c in r["calls"]:
            if c[1] in ("verify", "decode"):
                xs.append(c[2] - 1)
                ys.append(c[4] - d_v)
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    slope = float((xs * ys).sum() / (xs * xs).sum()) if (xs > 0).any() else 0.0
    return {"P_v": p_v, "d_v": d_v, "verify_slope": max(slope, 0.0),
            "draft_ms_per_token": max(outside, 0.0) / drafted if drafted else 0.0}


def predicted_ms(rec: dict, costs: theory.Costs, alpha: float, k: int, decode_k: int | None = None) -> float:
    """The theory's expected time for this request's answer length: the prefill (with the drafter's start where it
    ran in the target's thread; the overlap model for ``modelled``), the prefill-window tokens the request used
    (drafted already: rounds of ``k`` verified drafts, no draft cost), then rounds of ``k`` drafts at per-token
    acceptance ``alpha`` (``decode_k`` of them when given; :func:`sdlib.theory.decode_phase_ms`)."""
    n = int(rec["n_tokens"])
    used = min(int(rec.get("window_tokens_used") or 0), n - 1)
    cost = theory._round_cost(costs, 0.0)
    start = float(rec.get("drafter_start_ms") or 0.0)
    placement = rec["placement"]
    t = max(costs.P_v, start) if placement == "modelled" else costs.P_v + start * (placement == "shared_device")
    if used >= 1:  # window drafts are already made: verify rounds of k, each yielding up to k + 1 tokens
        t += -(-used // (k + 1)) * float(costs.verify_ms(k))
    return t + theory.decode_phase_ms(n - 1 - used, alpha, k if decode_k is None else decode_k, cost)


def projected_4090_ms(rec: dict, costs_4090: dict[str, str]) -> float | None:
    """The request's recorded forwards re-timed at the 4090 (module docstring); None for a run with no record."""
    if not rec.get("calls"):
        return None
    c4 = theory.RTX4090
    target_ms = 0.0
    busy = []  # the target's forwards, [start, end] ms after the request's start
    for _, kind, tokens, start, ms in rec["calls"]:
        busy.append((start, start + ms))
        target_ms += c4.P_v if kind == "prefill" else (c4.d_v if kind == "decode" else float(c4.verify_ms(tokens - 1)))
    concurrent = rec.get("placement") == "two_devices"
    drafter_ms = 0.0
    for at, kind, _ in rec.get("events", []):
        cost_key = costs_4090.get(kind)
        if cost_key is None:
            continue
        if concurrent and any(s <= at <= e for s, e in busy):
            continue  # drafted while the target ran: hidden behind it
        drafter_ms += DRAFTER_4090_MS[cost_key]
    if rec.get("placement") == "modelled":  # the original's overlap model: what the drafter did before the target's
        # prefill (its start and window drafts) is taken to overlap the prefill, up to the prefill's length
        first = rec["calls"][0][3]
        before = sum(DRAFTER_4090_MS[costs_4090[k]] for at, k, _ in rec.get("events", [])
                     if k in costs_4090 and at <= first)
        drafter_ms -= min(before, c4.P_v)
    return target_ms + drafter_ms


def summarize(records: Sequence[dict], configs: Sequence[Config]) -> dict[str, dict[str, Any]]:
    """Per config: the result file's keys (``speedup_ratio_of_means``, ``speedup_mean_of_ratios``,
    ``speedup_predicted``, ``speedup_4090_projected``, ``mean_accept_len``, ``acceptance_rate``, ``mismatches``,
    ``n_samples``, ``placement``) and the rest of the study (interval, decode-only speedup, tau, r_i, a_i, ...)."""
    by = {c.name: [r for r in records if r["config"] == c.name] for c in configs}
    ar = by["target_ar"]
    out: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        recs = by[cfg.name]
        errors = [r["error"] for r in recs if r.get("error")]
        row: dict[str, Any] = {"placement": None, "n_samples": 0, "mismatches": 0, "speedup_ratio_of_means": None,
                               "speedup_mean_of_ratios": None, "speedup_predicted": None,
                               "speedup_4090_projected": None, "mean_accept_len": None, "acceptance_rate": None,
                               "greedy": cfg.sampling.greedy, "note": cfg.note}
        if errors:
            row.update(error=errors[0])
            out[cfg.name] = row
            continue
        ref = ar if cfg.sampling.greedy else by.get("target_ar_sampled", ar)
        ref_by = {r["prompt_id"]: r for r in ref}
        b = np.asarray([ref_by[r["prompt_id"]]["total_ms"] for r in recs], float)
        t = np.asarray([r["total_ms"] for r in recs], float)
        row.update(placement=recs[0]["placement"], n_samples=len(recs),
                   mismatches=int(sum(r["identical_to_baseline"] is False for r in recs)),
                   speedup_ratio_of_means=float(b.sum() / t.sum()), speedup_mean_of_ratios=float(np.mean(b / t)),
                   slower_share=float(np.mean(t > b)), total_s=float(t.sum() / 1e3),
                   ms_per_token=float(t.sum() / sum(r["n_tokens"] for r in recs)))
        row["ci95"] = list(bootstrap_ratio(b, t))
        if cfg.kind == "spec":
            stats = AcceptanceStats()
            for r in recs:
                stats.accepted += r.get("round_accepted", [])
                stats.offered += r.get("round_offered", [])
            bd = np.asarray([ref_by[r["prompt_id"]]["decode_ms"] for r in recs], float)
            row.update(mean_accept_len=stats.tau, tau_no_bonus=stats.tau_no_bonus,
                       acceptance_rate=stats.acceptance_rate, r_i=stats.cumulative(), a_i=stats.conditional(),
                       histogram=stats.histogram(), rounds=stats.rounds, drafted=stats.drafted,
                       decode_speedup=float(bd.sum() / sum(r["decode_ms"] for r in recs)),
                       drafts_ready_at_prefill_end=float(np.mean([r["drafts_ready_at_prefill_end"] for r in recs])),
                       window_tokens_used=float(np.mean([r["window_tokens_used"] for r in recs])))
            mc = measured_costs(ref, recs)
            ks = [r["k"] for r in recs]
            k = int(round(statistics.median(ks)))
            rate = stats.acceptance_rate if stats.drafted else 0.0
            alpha = theory.per_token_alpha_from_rate(min(max(rate, 0.0), 1.0), float(np.mean(stats.offered or [k])))
            costs = theory.Costs(P_v=mc["P_v"], d_v=mc["d_v"], P_e=0.0, d_e=mc["draft_ms_per_token"],
                                 verify_slope=mc["verify_slope"])
            base_pred = sum(theory.baseline_ms(costs, int(ref_by[r["prompt_id"]]["n_tokens"])) for r in recs)
            pred = sum(predicted_ms(r, costs, alpha, k, cfg.decode_k) for r in recs)
            row.update(speedup_predicted=base_pred / pred, alpha=alpha, measured_costs=mc,
                       measured_over_predicted=row["speedup_ratio_of_means"] / (base_pred / pred))
            p = [projected_4090_ms(r, cfg.costs_4090) for r in recs]
            b4 = [projected_4090_ms(ref_by[r["prompt_id"]], {}) for r in recs]
            row["speedup_4090_projected"] = float(sum(b4) / sum(p))
        elif cfg.kind == "ar":
            row.update(speedup_predicted=1.0, speedup_4090_projected=1.0)
        out[cfg.name] = row
    return out


def val_top1(run_dir: Path) -> float:
    """An adapter run's validation token top-1 at its selected epoch (its ``history.json``; val only)."""
    history = json.loads((Path(run_dir) / "history.json").read_text())
    best = min(history, key=lambda h: h["val_loss"])
    return float(best["val_token_top1"])


def choose(candidates: dict[str, Path]) -> tuple[str, dict[str, float]]:
    """The candidate run with the highest validation top-1 (model selection on val, never test)."""
    scores = {name: val_top1(d) for name, d in candidates.items()}
    return max(scores, key=scores.get), scores

