"""The autoregressive baseline: one target forward per token, through the DecodingModel interface.

Every speculative run is compared against this loop: token for token under greedy decoding, in distribution under
sampling (both choose tokens through :mod:`sdlib.decoding.processors`, so the speculative path verifies against
exactly the distribution this loop samples from), and in wall-clock time (speedup). It runs the same
``prefill``/``score`` calls the speculative loop uses, so the two differ only in the method.

Timing: ``time.perf_counter`` around each call; on CUDA the model's own device (and no other) is synchronised before
reading the clock, so that the time covers the kernels, not just their launch. ``prefill_ms`` is the prompt forward
(vision included) and the first token's choice; ``step_times_ms[i]`` is one decode forward (one token appended) and
its choice. Input preparation (frame sampling, pixel preprocessing, tokenization) is not timed here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from sdlib.decoding.processors import GREEDY, Sampling, probabilities, sample
from sdlib.models.interface import DecodingModel, ModelInputs


@dataclass
class ARResult:
    """The target's own answer (greedy or sampled) and what it cost."""

    tokens: list[int]  # generated ids; the EOS token is included when the answer stopped on it
    hidden: torch.Tensor  # [n, hidden] hidden[i] = the post-norm state whose lm_head output chose tokens[i]
    prefill_ms: float  # prompt forward + first argmax
    step_times_ms: list[float]  # one per decode forward: len == n - 1
    prompt_len: int  # positions in the cache after the prefill
    stopped_at_eos: bool
    logits: torch.Tensor | None = field(default=None, repr=False)  # [n, vocab] raw logits when keep_logits=True

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def decode_ms(self) -> float:
        return float(sum(self.step_times_ms))

    @property
    def total_ms(self) -> float:
        return self.prefill_ms + self.decode_ms

    @property
    def ms_per_token(self) -> float:
        """Mean decode-step time (the per-token cost ``d``); NaN when only the prefill ran."""
        return self.decode_ms / len(self.step_times_ms) if self.step_times_ms else float("nan")


def sync_device(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (no-op off CUDA), so the clock measures kernels, not launches; other
    devices (a drafter running beside the target) are not waited for."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> int:
    """The next token from next-token ``logits`` [vocab]: the argmax (first index on ties, as ``generate``) when
    greedy, else a draw from :func:`~sdlib.decoding.processors.probabilities`."""
    if sampling.greedy:
        return int(logits.argmax())
    return int(sample(probabilities(logits, sampling), generator))


@torch.no_grad()
def ar_decode(
    model: DecodingModel,
    inputs: ModelInputs,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    generator: torch.Generator | None = None,
    stop_at_eos: bool = True,
    keep_logits: bool = False,
) -> ARResult:
    """Autoregressive decoding of up to ``max_new_tokens`` tokens, greedy or sampled (``sampling``; draws come from
    ``generator``, or torch's global generator when None, as in ``generate``).

    Stops after emitting ``model.eos_token_id`` when ``stop_at_eos``. Greedy output is token-identical to
    ``generate(do_sample=False, ...)`` of the wrapped model; sampled output, seeded alike, to ``generate(do_sample=True,
    temperature=..., top_k=..., top_p=...)``.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    device = model.device
    sync_device(device)
    start = time.perf_counter()
    pre = model.prefill(inputs)
    token = choose(pre.logits, sampling, generator)
    sync_device(device)
    prefill_ms = (time.perf_counter() - start) * 1e3

    tokens = [token]
    hidden = [pre.hidden]  # each [hidden]
    logits = [pre.logits] if keep_logits else []
    step_times_ms: list[float] = []
    cache = pre.cache
    while len(tokens) < max_new_tokens and not (stop_at_eos and token == model.eos_token_id):
        start = time.perf_counter()
        scored = model.score(torch.tensor([token], dtype=torch.long), cache)
        token = choose(scored.logits[-1], sampling, generator)
        sync_device(device)
        step_times_ms.append((time.perf_counter() - start) * 1e3)
        tokens.append(token)
        hidden.append(scored.hidden[-1])
        if keep_logits:
            logits.append(scored.logits[-1])
    return ARResult(
        tokens=tokens,
        hidden=torch.stack(hidden),  # [n, hidden]
        prefill_ms=prefill_ms,
        step_times_ms=step_times_ms,
        prompt_len=pre.prompt_len,
        stopped_at_eos=stop_at_eos and tokens[-1] == model.eos_token_id,
        logits=torch.stack(logits) if keep_logits else None,  # [n, vocab]
    )


def greedy_decode(model: DecodingModel, inputs: ModelInputs, max_new_tokens: int, stop_at_eos: bool = True,
                  keep_logits: bool = False) -> ARResult:
    """Greedy :func:`ar_decode` (argmax, first index on ties); token-identical to ``generate(do_sample=False)``."""
    return ar_decode(model, inputs, max_new_tokens, GREEDY, None, stop_at_eos, keep_logits)
