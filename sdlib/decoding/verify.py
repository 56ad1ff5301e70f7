"""Verification rules of speculative decoding, as pure functions of tensors (no model inside).

Convention (the engine's, see :mod:`sdlib.models.interface`): verifying ``k`` drafts is one target forward over the
pending token plus the ``k`` drafts, which gives ``k + 1`` rows of target logits; row ``i`` is the target's
next-token distribution after draft ``i`` (row 0: after the pending token, i.e. the distribution draft 0 is
checked against), and row ``k`` is the one the bonus token is drawn from when every draft is accepted. A rule returns
the *emitted* tokens: the accepted drafts followed by exactly one token chosen by the target (the correction at the
first rejection, or the bonus), so every round emits between 1 and ``k + 1`` tokens.

- :func:`verify_greedy`: accept while the draft equals the target's argmax; then the target's argmax. The output is
  token-identical to greedy autoregressive decoding.
- :func:`verify_sampling`: speculative sampling (Leviathan et al. 2023, Alg. 1; Chen et al. 2023): accept draft
  ``x_i`` with probability ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection draw from
  ``normalise(max(0, p_i - q_i))``; after ``k`` acceptances draw the bonus from ``p_k``. ``q`` must be the
  distribution the drafter *actually sampled from*, after the same processing as ``p``
  (:func:`sdlib.decoding.processors.probabilities`). Without ``q`` (a drafter that proposes deterministically, e.g.
  its greedy choice or an n-gram match) the draft's distribution is the one-hot on the draft: acceptance is then
  ``p_i(x_i)`` and the residual is ``p_i`` without ``x_i``, still lossless.

Both have batched forms (a leading batch dimension, one independent round per row) used by the statistical tests;
the single-round functions call them with a batch of one, so the tests check the code the engine runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Verdict:
    """One verification round: ``tokens`` = the ``accepted`` drafts (of ``offered``) plus the target's own token."""

    tokens: list[int]
    accepted: int
    offered: int

    @property
    def all_accepted(self) -> bool:
        """True when the last token is the bonus (every draft was accepted)."""
        return self.accepted == self.offered


def _check(draft: torch.Tensor, target: torch.Tensor, draft_probs: torch.Tensor | None) -> tuple[int, int, int]:
    if draft.dim() != 2 or target.dim() != 3:
        raise ValueError(f"expected drafts [B, k] and target rows [B, k + 1, V]; got {tuple(draft.shape)} and "
                         f"{tuple(target.shape)}")
    b, k = draft.shape
    if target.shape[0] != b or target.shape[1] != k + 1:
        raise ValueError(f"target rows {tuple(target.shape)} do not fit {k} drafts in a batch of {b}: verifying k "
                         f"drafts needs k + 1 rows (the last for the bonus token)")
    v = target.shape[2]
    if draft_probs is not None and tuple(draft_probs.shape) != (b, k, v):
        raise ValueError(f"draft probabilities {tuple(draft_probs.shape)}: expected {(b, k, v)}")
    if k and (int(draft.min()) < 0 or int(draft.max()) >= v):
        raise ValueError(f"draft ids outside the target's vocabulary of {v} rows: {draft.tolist()}")
    return b, k, v


def leading_true(mask: torch.Tensor) -> torch.Tensor:
    """Per row of ``mask`` [B, k] (bool), how many entries are True before the first False: [B] long."""
    return torch.cumprod(mask.long(), dim=-1).sum(-1)


def verify_greedy_batch(draft: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy rule on a batch: ``draft`` [B, k] ids, ``target_logits`` [B, k + 1, V].

    Returns ``(accepted [B], next_token [B])``: the row's emitted tokens are ``draft[b, :accepted[b]]`` followed by
    ``next_token[b]`` (the target's argmax at the first mismatch, or its bonus token)."""
    b, k, _ = _check(draft, target_logits, None)
    best = target_logits.argmax(-1)  # [B, k + 1], first index on ties (as generate and greedy_decode)
    accepted = leading_true(draft == best[:, :k]) if k else torch.zeros(b, dtype=torch.long)
    return accepted, best.gather(1, accepted[:, None]).squeeze(1)


def verify_sampling_batch(draft: torch.Tensor, draft_probs: torch.Tensor | None, target_probs: torch.Tensor,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling on a batch: ``draft`` [B, k] ids, ``draft_probs`` [B, k, V] (the distributions the
    drafts were sampled from, or None for deterministic drafts), ``target_probs`` [B, k + 1, V].

    Returns ``(accepted [B], next_token [B])`` as :func:`verify_greedy_batch`. Draws exactly one uniform per draft
    and one categorical per row from ``generator``, so a seeded generator makes a round reproducible."""
    b, k, v = _check(draft, target_probs, draft_probs)
    p = target_probs.float()
    if draft_probs is None:
        q = torch.zeros(b, k, v).scatter_(-1, draft[..., None], 1.0)  # one-hot: the draft was certain
    else:
        q = draft_probs.float()
    px = p[:, :k].gather(-1, draft[..., None]).squeeze(-1)  # [B, k]
    qx = q.gather(-1, draft[..., None]).squeeze(-1)  # [B, k]
    if k and bool((qx <= 0).any()):
        raise ValueError("a draft has probability 0 under the distribution it was said to be sampled from: q must "
                         "be the drafter's sampling distribution (after the same processing as p)")
    u = torch.rand(b, k, generator=generator)
    accepted = leading_true(u * qx < px) if k else torch.zeros(b, dtype=torch.long)  # u < p/q without dividing
    # the token after the accepted drafts: from max(0, p - q) at a rejection, from p itself after k acceptances
    # (q padded with a zero row makes the bonus the same formula)
    q_ext = torch.cat([q, torch.zeros(b, 1, v)], dim=1)  # [B, k + 1, V]
    rows = torch.arange(b)
    p_n, q_n = p[rows, accepted], q_ext[rows, accepted]  # [B, V]
    residual = (p_n - q_n).clamp_min(0.0)
    # p == q up to rounding leaves no residual mass; a rejection is then (almost) impossible, and p is exact
    empty = residual.sum(-1, keepdim=True) <= 1e-12
    residual = torch.where(empty, p_n, residual)
    next_token = torch.multinomial(residual / residual.sum(-1, keepdim=True), 1, generator=generator).squeeze(1)
    return accepted, next_token


def _verdict(draft: torch.Tensor, accepted: torch.Tensor, next_token: torch.Tensor) -> Verdict:
    n = int(accepted[0])
    return Verdict(tokens=draft[0, :n].tolist() + [int(next_token[0])], accepted=n, offered=int(draft.shape[1]))


def verify_greedy(draft: torch.Tensor, target_logits: torch.Tensor) -> Verdict:
    """Greedy rule for one round: ``draft`` [k] ids, ``target_logits`` [k + 1, V] (or probabilities: only the
    argmax matters)."""
    draft = torch.as_tensor(draft, dtype=torch.long).reshape(1, -1)
    accepted, next_token = verify_greedy_batch(draft, target_logits[None])
    return _verdict(draft, accepted, next_token)


def verify_sampling(draft: torch.Tensor, draft_probs: torch.Tensor | None, target_probs: torch.Tensor,
                    generator: torch.Generator | None = None) -> Verdict:
    """Speculative sampling for one round: ``draft`` [k] ids, ``draft_probs`` [k, V] or None (deterministic drafts),
    ``target_probs`` [k + 1, V] (after the sampling processors), a seeded ``generator``."""
    draft = torch.as_tensor(draft, dtype=torch.long).reshape(1, -1)
    accepted, next_token = verify_sampling_batch(
        draft, None if draft_probs is None else draft_probs[None], target_probs[None], generator)
    return _verdict(draft, accepted, next_token)
