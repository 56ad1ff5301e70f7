"""The speculative decoding loop: draft -> verify -> truncate both states to the accepted length -> continue.

One request: the target prefills its own inputs and emits its first token; then, round after round, the drafter
proposes up to ``k`` tokens, the target verifies them in one forward over its pending token plus the drafts
(``k + 1`` rows, :meth:`~sdlib.models.interface.Session.verify`), a rule of :mod:`sdlib.decoding.verify` decides
what is emitted (the accepted drafts plus one token of the target's own), the target's session is truncated to the
accepted text and the drafter is told (``feedback``). It ends at EOS or ``max_new_tokens``; a draft that would cross
either is cut before it is verified (no token past an EOS is proposed, and a round never emits more tokens than
remain).

Placements (every result says which it used):

- ``two_devices``: the drafter is *concurrent* (:class:`~sdlib.decoding.placement.ProcessDrafter`: its own process
  on its own core, or its own device); it starts on its inputs when the request starts and drafts during the target's
  prefill; the drafts ready when the prefill ends are counted from their timestamps;
- ``shared_device``: drafter and target take turns on one device. With ``window > 0`` the drafter starts first and
  drafts ``window`` tokens before the target's prefill (they are ready at its end, and the target waited for them);
  otherwise it starts after the target's prefill;
- ``modelled``: the original study's timing model, labelled as such: the drafter's start and window run first,
  sequentially and timed, and ``modelled_total_ms`` subtracts the overlap the two prefills *would* have had on two
  devices (the shorter of the two); the drafts counted ready are those whose drafter-side time fits in the
  target's prefill time.

Greedy decoding emits exactly the target's greedy answer; sampling emits the target's sampling distribution (tests
check both). The result carries the per-round acceptance (:class:`~sdlib.decoding.acceptance.AcceptanceStats`), the
target's forward calls with their token counts and times, and the drafter's timestamped events, enough to draw the
request's timeline and to re-time it under another cost model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from sdlib.decoding.acceptance import AcceptanceStats
from sdlib.decoding.ar import choose, sync_device
from sdlib.decoding.drafters import Drafter
from sdlib.decoding.processors import GREEDY, Sampling, probabilities
from sdlib.decoding.verify import verify_greedy, verify_sampling
from sdlib.models.interface import DecodingModel, ModelInputs

PLACEMENTS = ("two_devices", "shared_device", "modelled")


@dataclass
class Call:
    """One forward of a model: what it did, over how many tokens, when (``perf_counter`` seconds)."""

    model: str  # "target" or "drafter"
    kind: str  # "prefill", "verify", "decode" (target); "start", "feed" (drafter)
    tokens: int
    start: float
    end: float

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1e3


@dataclass
class SpecResult:
    """A speculative answer, its acceptance statistics and what it cost."""

    tokens: list[int]
    stats: AcceptanceStats
    placement: str
    prefill_ms: float  # target prompt forward + first token
    drafter_start_ms: float  # the drafter's own start (and window) when it ran in the target's thread; 0 if concurrent
    total_ms: float
    round_ms: list[float] = field(default_factory=list)  # draft + verify + bookkeeping, per round
    stopped_at_eos: bool = False
    drafts_ready_at_prefill_end: int = 0  # counted from the drafts' timestamps (modelled: from drafter-side time)
    window_tokens_used: int = 0  # tokens of the drafter's prefill-window chain that are in the answer
    modelled_total_ms: float | None = None  # placement "modelled" only
    calls: list[Call] = field(default_factory=list)  # the target's forwards
    drafter_events: list[tuple[float, str, int]] = field(default_factory=list)
    t0: float = 0.0  # perf_counter at the request's start

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def decode_ms(self) -> float:
        return self.total_ms - self.prefill_ms - (0.0 if self.placement == "two_devices" else self.drafter_start_ms)

    def record(self) -> dict[str, Any]:
        """Plain numbers for a per-sample JSON record."""
        return {
            "placement": self.placement, "n_tokens": self.n_tokens, "prefill_ms": self.prefill_ms,
            "drafter_start_ms": self.drafter_start_ms, "total_ms": self.total_ms,
            "modelled_total_ms": self.modelled_total_ms,
            "drafts_ready_at_prefill_end": self.drafts_ready_at_prefill_end,
            "window_tokens_used": self.window_tokens_used, "stopped_at_eos": self.stopped_at_eos,
            **self.stats.to_dict(), "round_accepted": list(self.stats.accepted),
            "round_offered": list(self.stats.offered),
            "calls": [(c.model, c.kind, c.tokens, round((c.start - self.t0) * 1e3, 3), round(c.ms, 3))
                      for c in self.calls],
        }


def window_chain(events: list[tuple[float, str, int]]) -> list[tuple[float, int]]:
    """(time, token) of the drafts made before the drafter first heard the target's text: its prefill-window chain."""
    out = []
    for t, kind, value in events:
        if kind == "feedback":
            break
        if kind == "draft":
            out.append((t, value))
    return out


@torch.no_grad()
def speculative_decode(
    target: DecodingModel,
    target_inputs: ModelInputs,
    drafter: Drafter,
    drafter_inputs: ModelInputs | None,
    k: int,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    generator: torch.Generator | None = None,
    stop_at_eos: bool = True,
    window: int = 0,
    modelled: bool = False,
) -> SpecResult:
    """Generate up to ``max_new_tokens`` tokens with ``drafter`` proposing up to ``k`` tokens per round.

    ``generator`` draws the target's tokens and the acceptance tests (and a local drafter's samples): a seeded one
    makes the run reproducible. ``window``: drafts a sequential drafter makes before the target's prefill (a
    concurrent drafter's window is its own setting). ``modelled``: the original's timing model (module docstring)."""
    if k < 1:
        raise ValueError(f"k={k}: expected a draft length >= 1")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
    concurrent = bool(getattr(drafter, "concurrent", False))
    if modelled and concurrent:
        raise ValueError("modelled=True is the sequential timing model; the drafter given runs concurrently")
    placement = "two_devices" if concurrent else ("modelled" if modelled else "shared_device")
    wants_hidden = bool(getattr(drafter, "wants_target_hidden", False))
    layers = tuple(getattr(drafter, "target_layers", ())) if wants_hidden else ()

    def target_rows(scored, n=None):  # the states the drafter reads: last layer [n, H], or its layers [n, L, H]
        if not layers:
            return scored.hidden[:n]
        return torch.stack([scored.layers[i][:n] for i in layers], dim=1)

    device = target.device
    eos = target.eos_token_id
    calls: list[Call] = []
    sync_device(device)
    t0 = time.perf_counter()
    drafter_start_ms = 0.0
    begun = False
    if concurrent:
        drafter.begin(drafter_inputs, sampling, generator)  # returns at once; the drafter works beside the target
        begun = True
    elif window > 0 or modelled:
        drafter.begin(drafter_inputs, sampling, generator)
        drafter.advance(window)
        drafter_start_ms = (time.perf_counter() - t0) * 1e3
        begun = True
    t_prefill = time.perf_counter()
    session = target.start(target_inputs, layers=layers)
    pending = choose(session.prompt_logits, sampling, generator)
    sync_device(device)
    t_prefill_end = time.perf_counter()
    prefill_ms = (t_prefill_end - t_prefill) * 1e3
    calls.append(Call("target", "prefill", session.prompt_len, t_prefill, t_prefill_end))
    if not begun:
        t_d = time.perf_counter()
        drafter.begin(drafter_inputs, sampling, generator)
        drafter_start_ms = (time.perf_counter() - t_d) * 1e3
    if hasattr(drafter, "prefill_done"):
        drafter.prefill_done(t_prefill_end)
    tokens = [pending]
    if wants_hidden:
        first = (session.prompt_hidden[-1:] if not layers else
                 torch.stack([session.prompt_layers[i][-1:] for i in layers], dim=1))
    drafter.feedback([], pending, first if wants_hidden else None)
    stats = AcceptanceStats()
    round_ms: list[float] = []

    def finished() -> bool:
        return len(tokens) >= max_new_tokens or (stop_at_eos and tokens[-1] == eos)

    while not finished():
        t_round = time.perf_counter()
        room = max_new_tokens - len(tokens)  # a round emits accepted drafts + 1 <= room
        proposal = drafter.propose(min(k, room - 1)) if room > 1 else drafter.propose(0)
        if stop_at_eos and len(proposal):
            hits = (proposal.tokens == eos).nonzero()
            if len(hits):
                proposal = proposal.cut(int(hits[0]) + 1)  # nothing after an EOS draft
        drafts = proposal.tokens
        base = session.length
        t_verify = time.perf_counter()
        scored = session.verify(pending, drafts)
        rows = scored.logits  # [n + 1, V]
        if sampling.greedy:
            verdict = verify_greedy(drafts, rows)
        else:
            verdict = verify_sampling(drafts, proposal.probs, probabilities(rows, sampling), generator)
        session.truncate(base + 1 + verdict.accepted)  # the pending token and the accepted drafts stay
        sync_device(device)
        calls.append(Call("target", "verify" if len(drafts) else "decode", len(drafts) + 1, t_verify,
                          time.perf_counter()))
        emitted = verdict.tokens
        if stop_at_eos and eos in emitted:
            emitted = emitted[: emitted.index(eos) + 1]
        emitted = emitted[:room]
        tokens.extend(emitted)
        stats.add(verdict.accepted, len(drafts))
        pending = verdict.tokens[-1]
        if not finished():
            hidden = target_rows(scored, verdict.accepted + 1) if wants_hidden else None
            drafter.feedback(verdict.tokens[:-1], pending, hidden)
        round_ms.append((time.perf_counter() - t_round) * 1e3)
    total_ms = (time.perf_counter() - t0) * 1e3
    events = drafter.events()
    chain = window_chain(events)
    if modelled:  # drafter-side time since its start, against the target's prefill time
        ready = sum(1 for t, _ in chain if (t - t0) * 1e3 <= prefill_ms)
    else:
        ready = sum(1 for t, _ in chain if t <= t_prefill_end)
    used = 0
    while used < min(len(chain), len(tokens)) and chain[used][1] == tokens[used]:
        used += 1
    return SpecResult(
        tokens=tokens, stats=stats, placement=placement, prefill_ms=prefill_ms, drafter_start_ms=drafter_start_ms,
        total_ms=total_ms, round_ms=round_ms, stopped_at_eos=stop_at_eos and tokens[-1] == eos,
        drafts_ready_at_prefill_end=ready, window_tokens_used=used,
        modelled_total_ms=total_ms - min(prefill_ms, drafter_start_ms) if modelled else None,
        calls=calls, drafter_events=events, t0=t0)
