"""Sampling settings and the logits processing shared by autoregressive and speculative decoding.

Speculative sampling is lossless only if the target distribution ``p`` it verifies against is the one the target
would sample from autoregressively, and ``q`` is the one the drafter really sampled from. Both therefore go through
the same function, :func:`probabilities`, with the same :class:`Sampling` settings. The order is the one
transformers' ``generate`` applies: temperature, then top-k, then top-p.

- temperature ``T``: logits / T; ``T == 0`` means greedy (a one-hot distribution on the argmax, first index on ties);
- top-k: keep the ``k`` largest logits (ties with the k-th value are kept too); 0 disables it;
- top-p (nucleus): keep the smallest set of most likely tokens whose probability reaches ``p`` (at least one token);
  1.0 disables it.

Everything is computed in float32 whatever the model's dtype, on the last dimension of any ``[..., V]`` tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen: greedy (``temperature == 0``) or sampled after temperature / top-k / top-p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: expected >= 0 (0 means greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: expected >= 0 (0 disables it)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p}: expected a value in (0, 1] (1 disables it)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = Sampling()


def process_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Float32 logits ``[..., V]`` after temperature, top-k and top-p; filtered entries are ``-inf``.

    For greedy settings only the argmax survives (first index on ties)."""
    x = logits.float()
    if sampling.greedy:
        keep = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, x.argmax(-1, keepdim=True), True)
        return x.masked_fill(~keep, float("-inf"))
    x = x / sampling.temperature
    if 0 < sampling.top_k < x.shape[-1]:
        kth = torch.topk(x, sampling.top_k, dim=-1).values[..., -1:]  # [..., 1]
        x = x.masked_fill(x < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= sampling.top_p  # the first token always has before == 0 and stays
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def probabilities(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution ``[..., V]`` (float32) a token is drawn from under ``sampling``."""
    return torch.softmax(process_logits(logits, sampling), dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``probs`` ``[..., V]``; returns ``[...]`` (long)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
