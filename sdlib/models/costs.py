"""What the pair costs to run, measured here and compared with the original's RTX 4090.

Speculative decoding's speedup depends on cost *ratios*, so the scale model is calibrated to the ratios the original
research measured on an RTX 4090 (both models 4-bit; DESIGN.md):

========================  ===========  =====================
quantity                  4090         ratio to match (±30%)
========================  ===========  =====================
target prefill  P_v       315.5 ms     P_v / d_v  = 21.6
target decode   d_v       14.6 ms/tok  (unit)
drafter prefill P_e       91.7 ms      P_e / P_v  = 0.29
drafter decode  d_e       10.0 ms/tok  d_e / d_v  = 0.68
prompt visual tokens      2056 / 578   ratio      = 3.56
========================  ===========  =====================

:func:`measure_costs` times both models in one process (warm-up, interleaved repetitions, medians and interquartile
ranges, one intra-op thread on one pinned core, as each model gets one core in the ``two_devices`` placement);
:func:`verify_curve` times the verify pass; :func:`decode_linear_share` shows how much of a decode step is the
weights' work. Nothing here is imported by training, so changing a measurement never retrains the models.
"""
from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

#: The original's 4090 measurements and the ratios derived from them.
REFERENCE_4090 = {"P_v": 315.5, "d_v": 14.6, "P_e": 8.6 + 83.1, "d_e": 10.0, "visual_tokens_target": 8 * 257,
                  "visual_tokens_drafter": 578}
REFERENCE_RATIOS = {
    "P_v_over_d_v": REFERENCE_4090["P_v"] / REFERENCE_4090["d_v"],
    "P_e_over_P_v": REFERENCE_4090["P_e"] / REFERENCE_4090["P_v"],
    "d_e_over_d_v": REFERENCE_4090["d_e"] / REFERENCE_4090["d_v"],
    "visual_token_ratio": REFERENCE_4090["visual_tokens_target"] / REFERENCE_4090["visual_tokens_drafter"],
}
TOLERANCE = 0.30
#: The original's verify pass on the 4090 (4-bit): about 21 drafts checked in one forward of about 70 ms. Not a
#: calibration target (its cost came from the 4-bit kernels); the book plots it beside the scale model's curve.
REFERENCE_VERIFY_4090 = {"drafts": 21, "ms": 70.0}


# ---- cost measurement -------------------------------------------------------------------------------------------
COST_NAMES = ("P_v", "d_v", "P_e", "d_e")


@dataclass
class MeasuredCosts:
    """Timings of the pair measured on this machine (the theory stage's ``sdlib.theory.Costs`` are model inputs).

    Each repetition times every sample on the target, then on the drafter, so its four costs come from one short
    window of the machine's life; a ratio is taken within each repetition, and the reported value is the median over
    repetitions with the interquartile range beside it (the spread a reader should expect on a rerun)."""

    P_v: float  # ms, target prefill incl. vision (median over repetitions)
    d_v: float  # ms per token, target decode
    P_e: float  # ms, drafter vision + prefill
    d_e: float  # ms per token, drafter decode
    visual_tokens_target: int
    visual_tokens_drafter: int
    threads: int
    repeats: int
    per_repeat: list[dict[str, float]] = field(default_factory=list)  # each repetition's medians of the four costs
    pinned_cpu: int | None = None  # the core the timing thread was pinned to

    def _ratio_samples(self) -> dict[str, list[float]]:
        reps = self.per_repeat or [{k: getattr(self, k) for k in COST_NAMES}]
        return {
            "P_v_over_d_v": [r["P_v"] / r["d_v"] for r in reps],
            "P_e_over_P_v": [r["P_e"] / r["P_v"] for r in reps],
            "d_e_over_d_v": [r["d_e"] / r["d_v"] for r in reps],
        }

    @property
    def ratios(self) -> dict[str, float]:
        out = {k: statistics.median(v) for k, v in self._ratio_samples().items()}
        out["visual_token_ratio"] = self.visual_tokens_target / self.visual_tokens_drafter
        return out

    @property
    def ratio_iqr(self) -> dict[str, float]:
        """Interquartile range of each ratio over the repetitions (0 for the token ratio, which is a count)."""
        out = {k: _iqr(v) for k, v in self._ratio_samples().items()}
        out["visual_token_ratio"] = 0.0
        return out

    @property
    def cost_iqr(self) -> dict[str, float]:
        return {k: _iqr([r[k] for r in self.per_repeat]) if self.per_repeat else 0.0 for k in COST_NAMES}

    def to_theory(self, verify_slope: float = 0.0):
        """These timings as the speedup models' :class:`sdlib.theory.Costs`."""
        from sdlib.theory import Costs

        return Costs(P_v=self.P_v, d_v=self.d_v, P_e=self.P_e, d_e=self.d_e, verify_slope=verify_slope)

    def within_tolerance(self, tolerance: float = TOLERANCE) -> dict[str, bool]:
        return {k: abs(v / REFERENCE_RATIOS[k] - 1.0) <= tolerance for k, v in self.ratios.items()}

    def table(self, tolerance: float = TOLERANCE):
        """The ratios beside the 4090's: median, IQR, the ±tolerance band and whether the median lies in it."""
        import pandas as pd

        ok = self.within_tolerance(tolerance)
        rows = {k: {"scale model (median)": v, "IQR": self.ratio_iqr[k], "RTX 4090": REFERENCE_RATIOS[k],
                    "band": f"{REFERENCE_RATIOS[k] * (1 - tolerance):.2f} – {REFERENCE_RATIOS[k] * (1 + tolerance):.2f}",
                    "within band": ok[k]} for k, v in self.ratios.items()}
        return pd.DataFrame(rows).T


def _iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


@contextmanager
def timing_conditions(threads: int = 1, pin: bool = True):
    """Run the block with ``threads`` intra-op threads and, when ``pin``, the calling thread pinned to one core
    (the first it may use); the previous thread count and affinity are restored after. Yields the core or None."""
    old_threads = torch.get_num_threads()
    old_affinity = os.sched_getaffinity(0) if pin and hasattr(os, "sched_getaffinity") else None
    cpu = min(old_affinity) if old_affinity else None
    torch.set_num_threads(threads)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        torch.set_num_threads(old_threads)
        if old_affinity is not None:
            os.sched_setaffinity(0, old_affinity)


def _timed_ms(model, call):
    """(result, ms) of ``call()``, waiting for the model's device on both sides so the kernels are covered."""
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda *_: None)
    sync(model.device)
    t0 = time.perf_counter()
    result = call()
    sync(model.device)
    return result, (time.perf_counter() - t0) * 1e3


def _time_model(model, inputs, n_decode: int) -> tuple[float, list[float]]:
    """(prefill ms, per-step decode ms) for one prompt, feeding the greedy token back."""
    pre, prefill_ms = _timed_ms(model, lambda: model.prefill(inputs))
    token = int(pre.logits.argmax())
    steps = []
    for _ in range(n_decode):
        out, ms = _timed_ms(model, lambda: model.score(torch.tensor([token]), pre.cache))
        steps.append(ms)
        token = int(out.logits[-1].argmax())
    return prefill_ms, steps


def measure_costs(drafter, target, samples: Sequence[tuple[Any, Any]], repeats: int = 5, n_decode: int = 16,
                  threads: int = 1, warmup: int = 2, pin: bool = True) -> MeasuredCosts:
    """Prefill and per-token decode times of both models on the same samples, in this process.

    ``samples`` are ``(drafter_inputs, target_inputs)`` pairs of prepared :class:`ModelInputs`. Each repetition
    times every sample on the target, then on the drafter (interleaved, so a slow spell of the machine hits both);
    ``warmup`` untimed repetitions come first. The timing thread runs on one pinned core with ``threads``
    intra-op threads, as each model gets one core in the ``two_devices`` placement.
    """
    per_repeat = []
    with timing_conditions(threads, pin) as cpu:
        for rep in range(warmup + repeats):
            pv, dv, pe, de = [], [], [], []
            for d_in, t_in in samples:
                p, s = _time_model(target, t_in, n_decode)
                q, r = _time_model(drafter, d_in, n_decode)
                pv.append(p); dv.extend(s); pe.append(q); de.extend(r)
            if rep >= warmup:
                per_repeat.append({"P_v": statistics.median(pv), "d_v": statistics.median(dv),
                                   "P_e": statistics.median(pe), "d_e": statistics.median(de)})
    d_in, t_in = samples[0]
    med = {k: statistics.median(r[k] for r in per_repeat) for k in COST_NAMES}
    return MeasuredCosts(
        **med,
        visual_tokens_target=int((t_in.input_ids == target.video_token_id).sum()),  # <video> tokens in the text
        visual_tokens_drafter=drafter.prefill(d_in).prompt_len - int(d_in.input_ids.shape[1]) + 1,  # spliced
        threads=threads, repeats=repeats, per_repeat=per_repeat, pinned_cpu=cpu,
    )


def decode_linear_share(model, inputs, repeats: int = 20, threads: int = 1, pin: bool = True) -> dict[str, float]:
    """How much of one decode step is the linear layers' work: the language model's linears and the LM head,
    called alone on one token (reading their weights, as a decode step must), against the whole step. A share near
    1 means the step costs what its weights cost to read, as on a GPU; a small share means the interpreter around
    the kernels dominates and the step's time follows the machine's Python speed."""
    stack = model.model.model  # VideoLlavaModel (its Llama is .language_model) or EventGPT's Llama itself
    blocks = (stack.language_model if hasattr(stack, "language_model") else stack).layers
    layers = [m for m in blocks.modules() if isinstance(m, torch.nn.Linear)] + [model.lm_head]
    xs = [torch.randn(1, 1, m.in_features, device=model.device, dtype=m.weight.dtype) for m in layers]
    with timing_conditions(threads, pin), torch.no_grad():
        pre = model.prefill(inputs)
        token = torch.tensor([int(pre.logits.argmax())])
        step, lin = [], []
        for rep in range(repeats + 3):
            _, ms = _timed_ms(model, lambda: model.score(token, pre.cache))
            model.crop(pre.cache, pre.prompt_len)
            t0 = time.perf_counter()
            for m, x in zip(layers, xs):
                m(x)
            if rep >= 3:
                step.append(ms)
                lin.append((time.perf_counter() - t0) * 1e3)
    step_ms, lin_ms = statistics.median(step), statistics.median(lin)
    return {"step_ms": step_ms, "linear_ms": lin_ms, "share": lin_ms / step_ms, "n_linear": len(layers)}


def verify_curve(target, inputs, ks: Sequence[int] = (1, 2, 4, 8, 16), repeats: int = 5, threads: int = 1,
                 warmup: int = 2, pin: bool = True) -> dict[int, float]:
    """Median ms of verifying ``k`` drafts, for each ``k``: one target forward over ``k + 1`` tokens (the pending
    token plus the ``k`` drafts, giving ``k + 1`` rows of logits, the last for the bonus token) on a freshly
    prefilled cache, which is cropped back after each forward. ``k = 0`` is a plain decode step."""
    from sdlib.models.interface import crop_cache

    out: dict[int, list[float]] = {k: [] for k in ks}
    with timing_conditions(threads, pin):
        pre = target.prefill(inputs)
        base = pre.prompt_len
        tokens = torch.full((max(ks) + 1,), int(pre.logits.argmax()), dtype=torch.long)
        for rep in range(warmup + repeats):
            for k in ks:
                _, ms = _timed_ms(target, lambda: target.score(tokens[: k + 1], pre.cache))
                crop_cache(pre.cache, base)
                if rep >= warmup:
                    out[k].append(ms)
    return {k: statistics.median(v) for k, v in out.items()}
