"""Drafters behind one small protocol: propose tokens (and the distribution they were sampled from), then hear which
tokens the target accepted and which token it added.

The protocol (:class:`Drafter`):

- ``begin(inputs, sampling, generator)``: a new request. ``inputs`` are the drafter's *own* inputs (its sensor, its
  prompt; None for a drafter that reads the target's features); ``sampling`` is the target's, for the whole request;
- ``advance(n)``: draft ahead until ``n`` tokens are ready (the prefill window, pipelining); returns how many are;
- ``propose(k)``: up to ``k`` draft tokens in the *target's* ids, and, when they were sampled, the distributions
  ``q`` [n, target vocab] they were sampled from (after the same processing as the target's); fewer than ``k`` (even
  none) when the drafter cannot go on (a token with no target counterpart, or its confidence fell);
- ``feedback(accepted, token, hidden)``: the target accepted the tokens ``accepted`` and then emitted ``token`` (its
  correction or the bonus token; the request's first token comes this way too, with nothing accepted). ``hidden``
  ``[len(accepted) + 1, H]`` are the target's post-norm hidden states whose LM-head rows chose ``accepted + [token]``
  (only drafters with ``wants_target_hidden`` get them);
- ``events()``: the request's timestamped log (``time.perf_counter`` seconds: on Linux one clock for all processes).

Every drafter here is a :class:`ChainDrafter`. It keeps a *chain*: its own guess of how the accepted text goes on.
``propose`` hands out the head of the chain; ``feedback`` keeps the chain when the target's text agrees with it
(all drafts accepted and the bonus token equal to the next chain token) and otherwise cuts it at the first
disagreement and continues from the target's text. That one rule covers drafting during the target's prefill (the
chain starts at the drafter's guess of the *first* answer token, checked against the target's first token) and
pipelined drafting (drafting on while the target verifies, assuming the whole block is accepted).

Sampling stays lossless with a kept chain: a chain token was drawn, with the drafter's own randomness, from the
drafter's distribution given the text before it; the target's coins never influenced it, so when the text before it
turns out to be the accepted text it is a valid draft for the rule of :mod:`sdlib.decoding.verify`.

Drafts are proposed in target ids; a drafter whose tokenizer differs translates through a
:class:`~sdlib.models.pairing.TokenizerPairing`, never proposes an id the target cannot verify, and reports as ``q``
its distribution renormalised over the ids it can propose (the distribution it really sampled from).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

import torch

from sdlib.align.heads import Stepper
from sdlib.decoding.processors import GREEDY, Sampling, probabilities, sample
from sdlib.models.interface import DecodingModel, ModelInputs, Session
from sdlib.models.pairing import UNMAPPED, TokenizerPairing


@dataclass
class Proposal:
    """Draft tokens (target ids, [n]) and, for sampled drafts, the distributions they came from ([n, V_target]).
    ``ready_at``: when each draft was ready (``time.perf_counter`` seconds)."""

    tokens: torch.Tensor
    probs: torch.Tensor | None = None
    ready_at: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def cut(self, n: int) -> "Proposal":
        return Proposal(self.tokens[:n], None if self.probs is None else self.probs[:n], self.ready_at[:n])


class Drafter(Protocol):
    wants_target_hidden: bool
    concurrent: bool  # runs beside the target (its own process / device) rather than between the target's calls

    def begin(self, inputs: ModelInputs | None, sampling: Sampling = GREEDY,
              generator: torch.Generator | None = None) -> None: ...

    def advance(self, n: int) -> int: ...

    def propose(self, k: int, ready_by: float | None = None) -> Proposal: ...

    def feedback(self, accepted: list[int], token: int, hidden: torch.Tensor | None = None) -> None: ...

    def events(self) -> list[tuple[float, str, int]]: ...


class ChainDrafter:
    """Base of the drafters: the chain bookkeeping (see the module docstring); a subclass supplies how tokens are
    fed to its state (``_feed``), the next-token logits over the target's ids (``_logits``), how the state is rolled
    back (``_rewind``) and how the request starts (``_start``).

    ``sample_drafts``: under a sampling target, draw drafts from the drafter's processed distribution and report it
    as ``q`` (True), or draft its argmax and report no ``q`` (False; verification then uses the one-hot ``q``, still
    lossless). Under greedy decoding drafts are always the argmax. ``draft_sampling``: the drafter's own temperature /
    top-k / top-p when sampling (default: the target's); ``q`` is whatever was really sampled from.
    ``min_confidence``: dynamic draft length; a proposal stops before the first draft (after the first) whose
    probability under the drafter's raw distribution is below it (0: always ``k`` drafts).

    State: ``text`` holds the request's tokens after the prompt as the drafter believes them (target ids): the
    committed text (what the target emitted) followed by the chain; the first ``fed`` of them are in the drafter's
    state (fed lazily, just before a draft needs them).
    """

    wants_target_hidden = False
    concurrent = False

    def __init__(self, target_vocab: int, sample_drafts: bool = True, draft_sampling: Sampling | None = None,
                 min_confidence: float = 0.0) -> None:
        self.target_vocab = int(target_vocab)
        self.sample_drafts = sample_drafts
        self.draft_sampling = draft_sampling
        if not 0.0 <= min_confidence < 1.0:
            raise ValueError(f"min_confidence={min_confidence}: expected a probability in [0, 1)")
        self.min_confidence = min_confidence
        self.sampling, self.generator = GREEDY, None
        self._reset()

    def _reset(self) -> None:
        self.text: list[int] = []
        self.q: list[torch.Tensor | None] = []  # per text position: what a chain token was sampled from
        self.conf: list[float] = []
        self.ready_at: list[float] = []
        self.n_committed = 0
        self.fed = 0
        self.stopped = False  # no more drafts in this request (a token the drafter has no id for)
        self.log: list[tuple[float, str, int]] = []

    # -- what a subclass provides -------------------------------------------------------------------------------------
    def _start(self, inputs: ModelInputs | None) -> None:
        raise NotImplementedError

    def _feed(self, tokens: list[int]) -> None:
        """Append ``tokens`` (target ids) to the drafter's state; set ``self.stopped`` if it cannot."""
        raise NotImplementedError

    def _logits(self) -> torch.Tensor | None:
        """Next-token logits over the target's ids ([target vocab], -inf where the drafter cannot propose), given
        everything fed; None when the drafter has nothing to draft from yet."""
        raise NotImplementedError

    def _rewind(self, keep: int) -> None:
        """Roll the state back to the first ``keep`` fed tokens."""
        raise NotImplementedError

    def _observe(self, start: int, hidden: torch.Tensor) -> None:
        """The target's hidden states before text positions ``start, start + 1, ...`` (feature drafters of the
        target use them)."""

    # -- the protocol -------------------------------------------------------------------------------------------------
    def begin(self, inputs: ModelInputs | None, sampling: Sampling = GREEDY,
              generator: torch.Generator | None = None) -> None:
        self._reset()
        self.sampling, self.generator = sampling, generator
        self.log.append((time.perf_counter(), "begin", 0))
        self._start(inputs)
        self.log.append((time.perf_counter(), "started", 0))

    @property
    def chain_length(self) -> int:
        return len(self.text) - self.n_committed

    @torch.no_grad()
    def draft_one(self) -> bool:
        """Extend the chain by one token; False when the drafter cannot (stopped, or nothing to draft from)."""
        if self.stopped:
            return False
        if self.fed < len(self.text):
            t0 = time.perf_counter()
            n = len(self.text) - self.fed
            self._feed(self.text[self.fed:])
            self.log.append((t0, "feed", n))
            if self.stopped:
                return False
            self.fed = len(self.text)
        logits = self._logits()
        if logits is None:
            return False
        logits = logits.float()
        use_q = not self.sampling.greedy and self.sample_drafts
        probs = probabilities(logits, (self.draft_sampling or self.sampling) if use_q else GREEDY)
        if not bool(torch.isfinite(probs).all()) or not bool((probs > 0).any()):
            self.stopped = True  # nothing proposable
            return False
        token = int(sample(probs, self.generator)) if use_q else int(probs.argmax())
        self.text.append(token)
        self.q.append(probs if use_q else None)
        self.conf.append(float(torch.softmax(logits, -1)[token]))
        now = time.perf_counter()
        self.ready_at.append(now)
        self.log.append((now, "draft", token))
        return True

    def advance(self, n: int) -> int:
        while self.chain_length < n and self.draft_one():
            pass
        return self.chain_length

    def propose(self, k: int, ready_by: float | None = None) -> Proposal:
        """Up to ``k`` chain tokens (drafting what is missing); with ``ready_by``, only those already drafted by
        then (no new drafting)."""
        if k < 1:
            return Proposal(torch.zeros(0, dtype=torch.long))
        c = self.n_committed
        if ready_by is None:
            self.advance(k)
            n = min(k, self.chain_length)
        else:
            n = 0
            while n < min(k, self.chain_length) and self.ready_at[c + n] <= ready_by:
                n += 1
        if self.min_confidence > 0:
            for i in range(1, n):
                if self.conf[c + i] < self.min_confidence:
                    n = i
                    break
        qs = self.q[c:c + n]
        probs = torch.stack(qs) if n and all(q is not None for q in qs) else None
        return Proposal(torch.tensor(self.text[c:c + n], dtype=torch.long), probs, self.ready_at[c:c + n])

    def feedback(self, accepted: list[int], token: int, hidden: torch.Tensor | None = None) -> None:
        new = [int(t) for t in accepted] + [int(token)]
        start = self.n_committed
        chain = self.text[start:]
        m = 0
        while m < min(len(chain), len(new)) and chain[m] == new[m]:
            m += 1
        if m < len(new):  # the chain went wrong at new[m]: cut it there and follow the target's text
            keep = start + m
            del self.text[keep:], self.q[keep:], self.conf[keep:], self.ready_at[keep:]
            if self.fed > keep:
                self._rewind(keep)
                self.fed = keep
            self.text.extend(new[m:])
            self.q.extend([None] * (len(new) - m))
            self.conf.extend([1.0] * (len(new) - m))
            self.ready_at.extend([float("nan")] * (len(new) - m))
        self.n_committed = start + len(new)
        for i in range(start, self.n_committed):
            self.q[i] = None  # committed: its draft distribution is no longer needed
        if hidden is not None:
            self._observe(start, hidden)
        self.log.append((time.perf_counter(), "feedback", len(accepted)))

    def prefill_done(self, at: float) -> None:
        """The target's prefill ended at ``at`` (``perf_counter`` seconds)."""
        self.log.append((at, "target_prefill_end", self.chain_length))

    def events(self) -> list[tuple[float, str, int]]:
        return list(self.log)

    def close(self) -> None:
        pass


class _ModelDrafter(ChainDrafter):
    """A drafter running a whole model (its own inputs, a session), fed with the accepted text in its own ids."""

    def __init__(self, model: DecodingModel, target_vocab: int, pairing: TokenizerPairing | None = None,
                 **options: Any) -> None:
        super().__init__(target_vocab, **options)
        self.model = model
        self.pairing = None if pairing is None or pairing.identical else pairing
        self.session: Session | None = None

    def _to_drafter(self, tokens: list[int]) -> list[int]:
        if self.pairing is None:
            return tokens
        return self.pairing.to_draft(torch.tensor(tokens)).tolist()

    def _start(self, inputs: ModelInputs | None) -> None:
        if inputs is None:
            raise ValueError(f"{type(self).__name__}.begin: the drafter's own inputs are required")
        self.session = self.model.start(inputs)
        self._started(self.session)

    def _started(self, session: Session) -> None:
        raise NotImplementedError

    def _feed(self, tokens: list[int]) -> None:
        ids = self._to_drafter(tokens)
        if UNMAPPED in ids:  # the target's text has a token the drafter cannot read: it stops for this request
            ids = ids[: ids.index(UNMAPPED)]
            self.stopped = True
        if ids:
            self._fed(self.session.append(ids))

    def _fed(self, out) -> None:
        raise NotImplementedError

    def _rewind(self, keep: int) -> None:
        self.session.truncate(self.session.prompt_len + keep)


class TokenDrafter(_ModelDrafter):
    """The drafter model's own LM head: it drafts token by token from its own inputs (its own sensor).

    ``pairing``: how its ids map to the target's (None: the same tokenizer, identity). With a pairing, the drafter's
    distribution is restricted to the ids that have a target token, so ``q`` is renormalised over them."""

    def _started(self, session: Session) -> None:
        self._last = session.prompt_logits

    def _fed(self, out) -> None:
        self._last = out.logits[-1]

    def _rewind(self, keep: int) -> None:
        super()._rewind(keep)
        self._last = None  # the next draft feeds the target's token first

    def _logits(self) -> torch.Tensor | None:
        logits = self._last
        if logits is None:
            return None
        if self.pairing is None:
            if logits.numel() > self.target_vocab:
                raise ValueError(f"drafter logits over {logits.numel()} ids exceed the target's {self.target_vocab}: "
                                 "pass the pairing of the two tokenizers")
            return torch.nn.functional.pad(logits.float(), (0, self.target_vocab - logits.numel()),
                                           value=float("-inf"))
        masked = self.pairing.mask_unproposable(logits.float())
        ids = torch.nonzero(torch.isfinite(masked)).squeeze(1)
        out = torch.full((self.target_vocab,), float("-inf"))
        out[self.pairing.to_target(ids)] = masked[ids]
        return out


class FeatureDrafter(_ModelDrafter):
    """Drafter hidden states -> ``adapter`` -> the target's LM head (``target_lm_head``): cross-modal drafting
    through the target's own output layer. After a rejection the accepted tokens are teacher-forced into the drafter
    (in its own ids) and drafting continues from the accepted prefix.

    ``adapter`` follows :mod:`sdlib.align.heads`: a causal window of ``adapter.context`` drafter rows. A same-position
    adapter (``shift = 0``) maps rows ``<= t`` to the target's row ``t``, whose LM-head row drafts token ``t``. A
    next-position adapter (``shift = 1``, :class:`~sdlib.align.heads.EagleAdapter`) maps rows ``<= t - 1`` and the
    target embeddings (``target_embed``) of tokens ``<= t - 1`` to the target's row ``t``: it cannot draft the
    answer's first token, so it starts once that token is known (no prefill-window drafts). Adapters that read the
    target's own rows (``FusionAdapter``) are not cross-modal drafters and are refused."""

    def __init__(self, model: DecodingModel, adapter: torch.nn.Module, target_lm_head: torch.nn.Module,
                 pairing: TokenizerPairing | None = None, target_embed: torch.nn.Module | None = None,
                 **options: Any) -> None:
        super().__init__(model, target_lm_head.out_features, pairing, **options)
        self.adapter = adapter.eval()
        self.lm_head = target_lm_head
        self.context = int(getattr(adapter, "context", 1))
        self.shift = int(getattr(adapter, "shift", 0))
        name = type(adapter).__name__
        if name == "FusionAdapter":
            raise ValueError("FeatureDrafter: FusionAdapter reads the target's own rows; it cannot draft from the "
                             "drafter's sensor alone")
        if self.shift not in (0, 1):
            raise ValueError(f"FeatureDrafter: {name}.shift = {self.shift}; expected 0 or 1")
        self.uses_embeds = self.shift == 1 and getattr(adapter, "token_fc", None) is not None
        if self.uses_embeds and target_embed is None:
            raise ValueError(f"FeatureDrafter: {name} reads token embeddings; pass target_embed (the target's "
                             "embed_tokens)")
        self.embed = target_embed
        self._hidden: list[torch.Tensor] = []  # [H_drafter] per fed position, the prompt's last first
        self._step = Stepper(self.adapter)  # the adapter row by row (cached keys/values)

    def _started(self, session: Session) -> None:
        self._hidden = [session.prompt_hidden[-1]]
        self._step.truncate(0)

    def _fed(self, out) -> None:
        self._hidden.extend(out.hidden)

    def _rewind(self, keep: int) -> None:
        super()._rewind(keep)
        del self._hidden[keep + 1:]
        self._step.truncate(keep + 1 - self.shift)  # rows (and, shift 1, their tokens) before the cut stay valid

    def _logits(self) -> torch.Tensor | None:
        # shift 0: rows 0..t map to the target's row t; shift 1: rows and tokens 0..t-1 predict the target's row t
        # (the drafter's last row is not read yet)
        n = len(self._hidden) - self.shift
        if n < 1:
            return None
        mapped = None
        for j in range(len(self._step), n):
            if self.uses_embeds:
                token = torch.tensor([self.text[j]], device=self.embed.weight.device)
                mapped = self._step.step(self._hidden[j], self.embed(token)[0])
            else:
                mapped = self._step.step(self._hidden[j])
        if mapped is None:  # nothing new since the last call: the same row again
            last = self._step.rows.pop()
            mapped = self._step.step(*last)
        return self.lm_head(mapped.to(self.lm_head.weight.dtype)).float()


class TargetHeadDrafter(ChainDrafter):
    """An EAGLE-style ``head`` on the target's own features and token embeddings (:mod:`sdlib.align.heads`).

    From the target's feature ``f`` at the position before token ``x`` and ``x``'s embedding the head predicts the
    feature at ``x``'s position, whose LM-head row drafts the token after ``x``; further drafts feed the head its own
    predictions. Whenever the target verified tokens, their true features (``feedback``'s ``hidden``) replace the
    predictions. Needs no inputs of its own: it can draft only once the target's first token is known.

    An :class:`~sdlib.align.heads.Eagle3Head` reads several target layers per row: ``target_layers`` (the layer
    numbers of :mod:`sdlib.models.interface`, in the order the head was trained on) are then requested from the
    target's session, ``feedback``'s ``hidden`` is ``[n, len(target_layers), H]``, true rows are fused by the head
    and its own outputs are fed back in the fused space (EAGLE-3's drafting)."""

    wants_target_hidden = True

    def __init__(self, head: torch.nn.Module, target_lm_head: torch.nn.Module, target_embed: torch.nn.Module,
                 target_layers: Iterable[int] = (), **options: Any) -> None:
        super().__init__(target_lm_head.out_features, **options)
        self.head = head.eval()
        self.lm_head = target_lm_head
        self.embed = target_embed
        self.context = int(getattr(head, "context", 1))
        self._dtype = next(head.parameters()).dtype
        self.target_layers = tuple(int(i) for i in target_layers)
        needed = int(getattr(head, "layers_needed", 0))
        if needed and len(self.target_layers) != needed:
            raise ValueError(f"TargetHeadDrafter: {type(head).__name__} reads {needed} target layers; "
                             f"target_layers={list(self.target_layers)}")
        if not needed and self.target_layers:
            raise ValueError(f"TargetHeadDrafter: {type(head).__name__} reads the last layer only; "
                             "target_layers must be empty")
        self.fused = bool(needed)
        self._step = Stepper(self.head, **({"fused": True} if self.fused else {}))

    def _start(self, inputs: ModelInputs | None) -> None:
        self._true: dict[int, torch.Tensor] = {}  # text position -> the target's feature before it
        self._inp: list[torch.Tensor] = []  # per fed position: the feature fed with its token
        self._predicted: list[bool] = []  # per fed position: its feature was the head's own prediction
        self._out: list[torch.Tensor] = []  # per fed position: the head's predicted feature there
        self._step.truncate(0)

    def _observe(self, start: int, hidden: torch.Tensor) -> None:
        if self.fused:
            if hidden.dim() != 3 or hidden.shape[1] != len(self.target_layers):
                raise ValueError(f"TargetHeadDrafter: hidden of shape {list(hidden.shape)}; expected [n, "
                                 f"{len(self.target_layers)}, H] (the layers {list(self.target_layers)})")
            hidden = self.head.fuse(hidden.to(self._dtype))
        for j, row in enumerate(hidden):
            self._true[start + j] = row.float()
        # rows fed with the head's own prediction where the target's true feature is now known are fed again
        stale = [i for i in range(start, start + len(hidden)) if i < len(self._inp) and self._predicted[i]]
        if stale:
            self._cut(stale[0])
            self.fed = min(self.fed, stale[0])

    def _feed(self, tokens: list[int]) -> None:
        embeds = self.embed(torch.tensor(tokens, device=self.embed.weight.device)).float()
        start = len(self._inp)
        known = 0  # the leading tokens whose feature before them is the target's: one pass for all of them
        while known < len(tokens) and start + known in self._true:
            known += 1
        if known:
            feats = [self._true[start + j] for j in range(known)]
            self._inp.extend(feats)
            self._predicted.extend([False] * known)
            self._embeds.extend(embeds[:known])
            self._out.extend(self._step.step_many(torch.stack(feats), embeds[:known]).float())
        for token_embed in embeds[known:]:
            if not self._out:
                raise RuntimeError("TargetHeadDrafter: no target feature before the first token; the loop must "
                                   "pass feedback's hidden")
            prev = self._out[-1]  # the head's own prediction of the feature before this token
            self._predicted.append(True)
            self._inp.append(prev)
            self._embeds.append(token_embed)
            self._out.append(self._step.step(prev, token_embed).float())

    def begin(self, inputs: ModelInputs | None, sampling: Sampling = GREEDY,
              generator: torch.Generator | None = None) -> None:
        self._embeds: list[torch.Tensor] = []
        super().begin(inputs, sampling, generator)

    def _logits(self) -> torch.Tensor | None:
        if not self._out:
            return None
        return self.lm_head(self._out[-1].to(self.lm_head.weight.dtype)).float()

    def _cut(self, keep: int) -> None:
        del self._inp[keep:], self._out[keep:], self._embeds[keep:], self._predicted[keep:]
        self._step.truncate(keep)

    def _rewind(self, keep: int) -> None:
        self._cut(keep)
        for i in [i for i in self._true if i < keep - self.context]:
            del self._true[i]


class PromptLookupDrafter(ChainDrafter):
    """Prompt lookup (n-gram) drafting, the model-free peer: the continuation of the latest earlier occurrence of the
    text's last ``n`` tokens (``max_ngram`` down to ``min_ngram``) in the prompt and the answer so far. ``inputs`` are
    the *target's* (its prompt ids); ``exclude`` are ids left out of the prompt before matching (the visual
    placeholders: their runs would be matched and proposed as text). Drafts are deterministic (one-hot ``q``).

    Here because transformers' own prompt lookup cannot run on the Video-LLaVA target: it copies n-grams from the
    prompt including the run of ``<video>`` placeholders, and the verify forward then holds more placeholders than
    video features (the benchmark reports the error)."""

    def __init__(self, target_vocab: int, max_ngram: int = 3, min_ngram: int = 1, exclude: Iterable[int] = (),
                 **options: Any) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"ngram range {min_ngram}..{max_ngram}: expected 1 <= min <= max")
        super().__init__(target_vocab, **options)
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.exclude = {int(i) for i in exclude}

    def _start(self, inputs: ModelInputs | None) -> None:
        if inputs is None:
            raise ValueError("PromptLookupDrafter.begin: the target's inputs (its prompt ids) are required")
        self._ids = [t for t in inputs.input_ids.reshape(-1).tolist()
                     if 0 <= t < self.target_vocab and t not in self.exclude]
        self._prompt = len(self._ids)

    def _feed(self, tokens: list[int]) -> None:
        self._ids.extend(tokens)

    def _rewind(self, keep: int) -> None:
        del self._ids[self._prompt + keep:]

    def _logits(self) -> torch.Tensor | None:
        ids = self._ids
        for n in range(min(self.max_ngram, len(ids) - 1), self.min_ngram - 1, -1):
            suffix = ids[-n:]
            for start in range(len(ids) - n - 1, -1, -1):  # latest earlier occurrence with a token after it
                if ids[start:start + n] == suffix:
                    out = torch.full((self.target_vocab,), float("-inf"))
                    out[ids[start + n]] = 0.0
                    return out
        return None


class NoDrafter(ChainDrafter):
    """Drafts nothing: the target decodes on its own. As the second phase of :class:`TwoPhaseDrafter` it gives the
    original research's protocol (drafts only from the prefill window, then plain decoding)."""

    def _start(self, inputs: ModelInputs | None) -> None:
        pass

    def _feed(self, tokens: list[int]) -> None:
        pass

    def _logits(self) -> torch.Tensor | None:
        return None

    def _rewind(self, keep: int) -> None:
        pass


class TwoPhaseDrafter:
    """Cross-modal drafts produced in the target's prefill window, then ``then`` (a target head or token drafter).

    Phase one proposes the ``first`` drafter's chain tokens that were ready when the target's prefill ended (the
    loop says when, ``prefill_done``); it ends at the first draft the target rejects, or when those tokens are used
    up. ``then`` follows the text throughout, so it can take over at once. Lossless as each of its drafters is."""

    def __init__(self, first: Any, then: Any) -> None:
        self.first, self.then = first, then
        self.wants_target_hidden = bool(getattr(then, "wants_target_hidden", False))
        self.target_layers = tuple(getattr(then, "target_layers", ()))
        self.concurrent = bool(getattr(first, "concurrent", False))
        self.target_vocab = then.target_vocab

    def begin(self, inputs: ModelInputs | None, sampling: Sampling = GREEDY,
              generator: torch.Generator | None = None) -> None:
        self.phase_one, self.window_end, self._offered = True, None, 0
        self.first.begin(inputs, sampling, generator)
        self.then.begin(inputs, sampling, generator)

    def advance(self, n: int) -> int:
        return self.first.advance(n)

    def prefill_done(self, at: float) -> None:
        self.window_end = at
        self.first.prefill_done(at)

    def propose(self, k: int, ready_by: float | None = None) -> Proposal:
        self._offered = 0
        if self.phase_one:
            p = self.first.propose(k, ready_by=self.window_end)
            if len(p):
                self._offered = len(p)
                return p
            self.phase_one = False
        return self.then.propose(k)

    def feedback(self, accepted: list[int], token: int, hidden: torch.Tensor | None = None) -> None:
        if self.phase_one:
            if self._offered and len(accepted) < self._offered:
                self.phase_one = False  # a window draft was rejected: the rest of the window is off the text
            self.first.feedback(accepted, token, None)
        self.then.feedback(accepted, token, hidden)

    def events(self) -> list[tuple[float, str, int]]:
        return sorted(self.first.events() + [(t, "head_" + kind, n) for t, kind, n in self.then.events()])

    def close(self) -> None:
        self.first.close()
        self.then.close()
