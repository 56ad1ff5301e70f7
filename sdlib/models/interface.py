"""The one model interface the decoding engine sees, identical for the drafter and the target, real or scale model.

A :class:`DecodingModel` wraps a vision-language model and its input preparation:

- ``prepare(question, visual)`` turns a question and the model's own visual input (event images for EventGPT,
  video frames for Video-LLaVA) into :class:`ModelInputs`;
- ``prefill(inputs)`` runs the prompt, returning the first-token logits, the last hidden state and the KV cache;
- ``score(tokens, cache)`` appends a block of tokens to the cache in one forward and returns logits and last-layer
  hidden states for every position (one token = a decode step; ``k`` tokens = verifying ``k`` drafts);
- ``crop(cache, length)`` truncates the cache to its first ``length`` positions (rejecting drafts);
- ``lm_head`` / ``embed_tokens`` expose the output projection and the token embeddings (adapters use them).

Hidden states are the last decoder layer *after* the final norm, i.e. exactly what ``lm_head`` reads, so
``lm_head(hidden) == logits`` holds for every returned position.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class ModelInputs:
    """Everything a prefill needs. ``extra`` holds model-specific tensors (pixel values, event features...)."""

    input_ids: torch.Tensor  # [1, prompt_len] (may contain a placeholder id for the visual tokens)
    extra: dict[str, Any] = field(default_factory=dict)
    prompt_text: str = ""


@dataclass
class Prefilled:
    logits: torch.Tensor  # [vocab] next-token logits at the last prompt position
    hidden: torch.Tensor  # [hidden] last-layer (post-norm) hidden state at the last prompt position
    cache: Any  # transformers Cache holding prompt_len positions
    prompt_len: int  # positions in the cache after the prefill (visual tokens expanded)


@dataclass
class Scored:
    logits: torch.Tensor  # [k, vocab] next-token logits after each appended token
    hidden: torch.Tensor  # [k, hidden] last-layer (post-norm) hidden states of the appended tokens


@runtime_checkable
class DecodingModel(Protocol):
    name: str
    tokenizer: Any
    eos_token_id: int

    def prepare(self, question: str, visual: Any) -> ModelInputs: ...

    def prefill(self, inputs: ModelInputs) -> Prefilled: ...

    def score(self, tokens: torch.Tensor, cache: Any) -> Scored: ...

    def crop(self, cache: Any, length: int) -> None: ...

    @property
    def lm_head(self) -> torch.nn.Module: ...

    @property
    def embed_tokens(self) -> torch.nn.Module: ...


def cache_length(cache: Any) -> int:
    """Number of positions held by a transformers ``Cache``."""
    return int(cache.get_seq_length())


def crop_cache(cache: Any, length: int) -> None:
    """Truncate ``cache`` in place to its first ``length`` positions.

    transformers 5.x ``DynamicCache.crop`` takes a *negative* count of positions to drop and rejects a positive
    target length, so every caller goes through this helper, which takes the target length.
    """
    current = cache_length(cache)
    if not 0 <= length <= current:
        raise ValueError(f"cannot crop a cache of {current} positions to {length}")
    if length < current:
        cache.crop(length - current)
