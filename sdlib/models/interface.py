"""The one model interface the decoding engine sees, identical for the drafter and the target, real or scale model.

:class:`DecodingModel` is the base class of both wrappers (EventGPT's and Video-LLaVA's). A subclass supplies the
input preparation and the two forwards that differ between the models; everything else (shapes, dtypes, length
bookkeeping, sessions) is implemented once here.

- ``prepare(question, visual)`` turns a question and the model's own visual input (event images for EventGPT,
  video frames for Video-LLaVA) into :class:`ModelInputs`;
- ``encode_visual(inputs)`` runs the vision path alone (tower, projector, adaptor) and returns the visual tokens as
  the language model receives them, so it can be timed and overlapped apart from the prefill;
- ``start(inputs, visual=None, layers=())`` runs the prompt and returns a :class:`Session`: the request's decoding
  state, which the model owns and a caller appends to (``append``; ``verify`` for drafts), truncates (``truncate``)
  and forks (``fork``); a session can therefore live wherever its model lives (another thread or process);
- ``prefill`` / ``score`` / ``crop`` are the same operations on a bare cache (used by the AR baseline and cost
  measurement);
- ``lm_head`` / ``embed_tokens`` expose the output projection and the token embeddings (adapters use them).

Contract:

- **Verify convention.** Verifying ``k`` drafts is one forward over the *pending* token (the last emitted token,
  not yet in the cache) plus the ``k`` drafts: ``k + 1`` rows of logits, row ``i`` predicting the token after
  input ``i``; the last row is the bonus token's distribution (:meth:`Session.verify`).
- **Hidden states** are the last decoder layer *after* the final norm, i.e. exactly what ``lm_head`` reads, so
  ``lm_head(hidden) == logits`` for every returned position, prompt positions included (``Session.prompt_hidden``).
  Intermediate layers on request (``layers``): index 0 is the token embeddings, ``i`` the output of decoder layer
  ``i`` (before the final norm) for ``i`` below the layer count; the layer count itself gives the post-norm last
  layer.
- **Dtypes.** Logits and hidden states come back float32 whatever the model's dtype.
- **Shapes.** Tokens are given as ``[k]`` (or ``[1, k]``) with ``k >= 1``; logits ``[k, vocab]``, hidden
  ``[k, hidden]``, one row per input token.
- **Lengths** count cache positions, visual tokens expanded: ``Session.length`` after ``start`` is the prompt
  length as the language model sees it.
"""
from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

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
    logits: torch.Tensor  # [k, vocab] next-token logits after each appended token (a prompt: [1, vocab], the last)
    hidden: torch.Tensor  # [k, hidden] last-layer (post-norm) hidden states of the appended tokens
    layers: dict[int, torch.Tensor] = field(default_factory=dict)  # requested layers: {index: [k, hidden]}


class Session:
    """One request's decoding state in a :class:`DecodingModel`: its cache, the prompt's outputs and its length.

    Made by :meth:`DecodingModel.start`; ``append``/``verify`` grow it, ``truncate`` shrinks it, ``fork`` copies
    it (the copy shares nothing with the original)."""

    def __init__(self, model: "DecodingModel", cache: Any, prompt: Scored, layers: Sequence[int]) -> None:
        self.model = model
        self.cache = cache
        self.layers = tuple(layers)
        self.prompt_len = cache_length(cache)
        self.prompt_logits = prompt.logits[-1]  # [vocab]: the first answer token's distribution
        self.prompt_hidden = prompt.hidden  # [prompt_len, hidden], post-norm, every prompt position
        self.prompt_layers = prompt.layers  # {index: [prompt_len, hidden]}

    @property
    def length(self) -> int:
        """Positions in the cache (prompt with visual tokens expanded, plus appended tokens)."""
        return cache_length(self.cache)

    def append(self, tokens: torch.Tensor | Sequence[int]) -> Scored:
        """Append ``tokens`` ``[k]`` in one forward; one row of logits and hidden state per token."""
        return self.model._score(tokens, self.cache, self.layers)

    def verify(self, pending: int, drafts: torch.Tensor | Sequence[int]) -> Scored:
        """The verify forward: ``pending`` (the last emitted token, not yet in the cache) and ``k`` drafts in one
        forward, ``k + 1`` rows; row ``i`` checks draft ``i`` (row 0 checks the first draft) and row ``k`` gives
        the bonus token."""
        drafts = torch.as_tensor(drafts, dtype=torch.long).reshape(-1)
        return self.append(torch.cat([torch.tensor([int(pending)]), drafts]))

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions (rejected drafts leave the cache)."""
        if length < self.prompt_len:
            raise ValueError(f"cannot truncate a session to {length} positions: its prompt holds {self.prompt_len}")
        crop_cache(self.cache, length)

    def fork(self) -> "Session":
        """An independent copy (its own cache), e.g. to draft ahead without touching this one."""
        twin = copy.copy(self)
        twin.cache = copy.deepcopy(self.cache)
        return twin


class DecodingModel(abc.ABC):
    """Base class of the drafter's and the target's wrappers (see the module docstring for the contract)."""

    name: str
    tokenizer: Any
    eos_token_id: int

    # -- what a subclass provides -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, question: str, visual: Any) -> ModelInputs:
        """The model's inputs for ``question`` about its own view ``visual``."""

    @abc.abstractmethod
    def encode_visual(self, inputs: ModelInputs) -> Any:
        """The vision path alone: the visual tokens as the language model receives them (model-specific type)."""

    @abc.abstractmethod
    def _forward_prompt(self, inputs: ModelInputs, visual: Any, cache: Any, hidden_states: bool) -> Any:
        """Language-model forward over the whole prompt with ``visual`` (from ``encode_visual``) spliced in; returns
        an output with ``last_hidden_state`` [1, L, hidden] (post-norm) and, if asked, ``hidden_states``."""

    @abc.abstractmethod
    def new_cache(self) -> Any:
        """An empty KV cache for this model."""

    @property
    @abc.abstractmethod
    def decoder(self) -> torch.nn.Module:
        """The language model's decoder stack (token ids in, post-norm hidden states out)."""

    @property
    @abc.abstractmethod
    def lm_head(self) -> torch.nn.Module: ...

    @property
    @abc.abstractmethod
    def embed_tokens(self) -> torch.nn.Module: ...

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    # -- implemented once -------------------------------------------------------------------------------------------
    def _outputs(self, out: Any, layers: Sequence[int], last_logits_only: bool = False) -> Scored:
        hidden = out.last_hidden_state[0]  # [n, hidden], post-norm
        picked = {}
        if layers:
            states = out.hidden_states  # (embeddings, layer 1, ..., post-norm last layer)
            for i in layers:
                if not 0 <= i < len(states):
                    raise ValueError(f"layer {i}: this model has layers 0..{len(states) - 1} (0 = embeddings)")
                picked[i] = states[i][0].float()
        # a prompt needs the logits of its last position only (the LM head over ~2,000 visual positions would add
        # to the prefill cost the benchmark measures)
        logits = self.lm_head(hidden[-1:] if last_logits_only else hidden)
        return Scored(logits=logits.float(), hidden=hidden.float(), layers=picked)

    @torch.no_grad()
    def start(self, inputs: ModelInputs, visual: Any = None, layers: Sequence[int] = ()) -> Session:
        """Run the prompt (the vision path too, unless its output ``visual`` is given) and return the session."""
        ids = inputs.input_ids
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"inputs.input_ids: expected shape [1, prompt_len], got {tuple(ids.shape)}")
        if visual is None:
            visual = self.encode_visual(inputs)
        cache = self.new_cache()
        out = self._forward_prompt(inputs, visual, cache, bool(layers))
        return Session(self, cache, self._outputs(out, layers, last_logits_only=True), layers)

    def prefill(self, inputs: ModelInputs) -> Prefilled:
        """The prompt on a bare cache: last-position logits and hidden state."""
        session = self.start(inputs)
        return Prefilled(logits=session.prompt_logits, hidden=session.prompt_hidden[-1], cache=session.cache,
                         prompt_len=session.prompt_len)

    @torch.no_grad()
    def _score(self, tokens: torch.Tensor | Sequence[int], cache: Any, layers: Sequence[int] = ()) -> Scored:
        ids = torch.as_tensor(tokens, dtype=torch.long)
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() != 1 or ids.numel() == 0:
            raise ValueError(f"tokens: expected a non-empty 1-D tensor [k] (or [1, k]), got shape "
                             f"{tuple(torch.as_tensor(tokens).shape)}")
        out = self.decoder(input_ids=ids.to(self.device)[None], cache=cache, use_cache=True,
                           output_hidden_states=bool(layers))
        return self._outputs(out, layers)

    def score(self, tokens: torch.Tensor | Sequence[int], cache: Any) -> Scored:
        """Append ``tokens`` ``[k]`` to ``cache`` in one forward; logits/hidden for each appended position."""
        return self._score(tokens, cache)

    def crop(self, cache: Any, length: int) -> None:
        """Keep the first ``length`` positions of ``cache`` (drop rejected drafts)."""
        crop_cache(cache, length)


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
