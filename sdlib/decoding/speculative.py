"""The speculative decoding loop: draft -> verify -> truncate both states to the accepted length -> continue.

One request: the target prefills its own inputs and emits its first token; then, round after round, the drafter
proposes up to ``k`` tokens, the target verifies them in one forward over its pending token plus the drafts
(``k + 1`` rows, :meth:`~sdlib.models.interface.Session.verify`), a rule of :mod:`sdlib.decoding.verify` decides
what is emitted (the accepted drafts plus one token of the target's own), the target's session is truncated to the
accepted text and the drafter is told (``feedback``). It ends at EOS or ``max_new_tokens``; a draft that would cross
either is cut before it is verified (no token past an EOS is proposed, and a round never emits more tokens than
remain).

Greedy decoding emits exactly the target's greedy answer; sampling emits the target's sampling distribution (tests
check both). The result carries the per-round acceptance (:class:`~sdlib.decoding.acceptance.AcceptanceStats`) and
wall-clock times measured around the calls (the model's own device synchronised on CUDA).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from sdlib.decoding.acceptance import AcceptanceStats
from sdlib.decoding.ar import choose, sync_device
from sdlib.decoding.drafters import Drafter
from sdlib.decoding.processors import GREEDY, Sampling, probabilities
from sdlib.decoding.verify import verify_greedy, verify_sampling
from sdlib.models.interface import DecodingModel, ModelInputs


@dataclass
class SpecResult:
    """A speculative answer, its acceptance statistics and what it cost."""

    tokens: list[int]
    stats: AcceptanceStats
    prefill_ms: float  # target prompt forward + first token
    drafter_start_ms: float  # the drafter's own prefill (sequential here: overlap is measured by the placements)
    total_ms: float
    round_ms: list[float] = field(default_factory=list)  # draft + verify + bookkeeping, per round
    stopped_at_eos: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


@torch.no_grad()
def speculative_decode(
    target: DecodingModel,
    target_inputs: ModelInputs,
    drafter: Drafter,
    drafter_inputs: ModelInputs,
    k: int,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    generator: torch.Generator | None = None,
    stop_at_eos: bool = True,
) -> SpecResult:
    """Generate up to ``max_new_tokens`` tokens with ``drafter`` proposing up to ``k`` tokens per round.

    ``generator`` draws the target's tokens and the acceptance tests (and the drafter's samples): a seeded one makes
    the run reproducible."""
    if k < 1:
        raise ValueError(f"k={k}: expected a draft length >= 1")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    device = target.device
    eos = target.eos_token_id
    sync_device(device)
    t_start = time.perf_counter()
    session = target.start(target_inputs)
    pending = choose(session.prompt_logits, sampling, generator)
    sync_device(device)
    prefill_ms = (time.perf_counter() - t_start) * 1e3
    tokens = [pending]
    t_drafter = time.perf_counter()
    drafter.begin(drafter_inputs, pending)
    drafter_start_ms = (time.perf_counter() - t_drafter) * 1e3
    stats = AcceptanceStats()
    round_ms: list[float] = []

    def finished() -> bool:
        return len(tokens) >= max_new_tokens or (stop_at_eos and tokens[-1] == eos)

    while not finished():
        t_round = time.perf_counter()
        room = max_new_tokens - len(tokens)  # a round emits accepted drafts + 1 <= room
        proposal = drafter.propose(min(k, room - 1), sampling, generator)
        if stop_at_eos and len(proposal):
            hits = (proposal.tokens == eos).nonzero()
            if len(hits):
                proposal = proposal.cut(int(hits[0]) + 1)  # nothing after an EOS draft
        drafts = proposal.tokens
        base = session.length
        rows = session.verify(pending, drafts).logits  # [n + 1, V]
        if sampling.greedy:
            verdict = verify_greedy(drafts, rows)
        else:
            verdict = verify_sampling(drafts, proposal.probs, probabilities(rows, sampling), generator)
        session.truncate(base + 1 + verdict.accepted)  # the pending token and the accepted drafts stay
        emitted = verdict.tokens
        if stop_at_eos and eos in emitted:
            emitted = emitted[: emitted.index(eos) + 1]
        emitted = emitted[:room]
        tokens.extend(emitted)
        stats.add(verdict.accepted, len(drafts))
        pending = verdict.tokens[-1]
        drafter.feedback(verdict.accepted, pending)
        sync_device(device)
        round_ms.append((time.perf_counter() - t_round) * 1e3)
    return SpecResult(tokens=tokens, stats=stats, prefill_ms=prefill_ms, drafter_start_ms=drafter_start_ms,
                      total_ms=(time.perf_counter() - t_start) * 1e3, round_ms=round_ms,
                      stopped_at_eos=stop_at_eos and tokens[-1] == eos)
