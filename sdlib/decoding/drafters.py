"""Drafters behind one small protocol: propose tokens (and the distribution they were sampled from), then hear how
many the target accepted and which token it added.

The protocol (:class:`Drafter`):

- ``begin(inputs, first_token)``: a new request. ``inputs`` are the drafter's *own* inputs (its sensor, its prompt);
  ``first_token`` is the target's first answer token, the first token the drafter continues from;
- ``propose(k, sampling, generator)``: up to ``k`` draft tokens in the *target's* ids, and, when they were sampled,
  the distributions ``q`` [n, target vocab] they were sampled from (after the same processing as the target's);
  fewer than ``k`` (even none) when the drafter cannot go on (a token with no target counterpart);
- ``feedback(accepted, token)``: the first ``accepted`` drafts were accepted and the target then emitted ``token``
  (its correction, or the bonus token): the drafter drops the rest and continues from that text.

Drafts are proposed in target ids; a drafter whose tokenizer differs translates through a
:class:`~sdlib.models.pairing.TokenizerPairing` and never proposes an id the target cannot verify.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from sdlib.decoding.processors import Sampling, probabilities, sample
from sdlib.models.interface import DecodingModel, ModelInputs, Session
from sdlib.models.pairing import UNMAPPED, TokenizerPairing


@dataclass
class Proposal:
    """Draft tokens (target ids, [n]) and, for sampled drafts, the distributions they came from ([n, V_target])."""

    tokens: torch.Tensor
    probs: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def cut(self, n: int) -> "Proposal":
        return Proposal(self.tokens[:n], None if self.probs is None else self.probs[:n])


class Drafter(Protocol):
    def begin(self, inputs: ModelInputs, first_token: int) -> None: ...

    def propose(self, k: int, sampling: Sampling, generator: torch.Generator | None = None) -> Proposal: ...

    def feedback(self, accepted: int, token: int) -> None: ...


class TokenDrafter:
    """The drafter model's own LM head: it drafts token by token from its own inputs (its own sensor).

    ``pairing``: how its ids map to the target's (None: the same tokenizer, identity). ``sample_drafts``: under a
    sampling target, draw drafts from the drafter's processed distribution and report it as ``q`` (True), or draft
    its argmax and report no ``q`` (False; verification then uses the one-hot ``q``, still lossless). Under greedy
    decoding drafts are always the drafter's argmax. ``draft_sampling``: the drafter's own temperature / top-k /
    top-p when sampling (default: the target's); whatever it is, ``q`` is the distribution actually sampled from.

    With a pairing, the drafter's distribution is restricted to the ids that have a target token and renormalised
    over them, and that renormalised distribution is the ``q`` reported: speculative sampling stays lossless only if
    ``q`` is what the draft was really drawn from.

    State: a session holding the drafter's prompt and the accepted text except the newest tokens, which wait in
    ``pending`` until the next ``propose`` appends them in one forward together with the first draft step.
    """

    def __init__(self, model: DecodingModel, target_vocab: int, pairing: TokenizerPairing | None = None,
                 sample_drafts: bool = True, draft_sampling: Sampling | None = None) -> None:
        self.model = model
        self.draft_sampling = draft_sampling
        self.target_vocab = int(target_vocab)
        self.pairing = None if pairing is None or pairing.identical else pairing
        self.sample_drafts = sample_drafts
        self.session: Session | None = None
        self.pending: list[int] = []  # drafter ids still to be appended
        self.stopped = False  # a target token the drafter has no id for: no more drafts in this request
        self._round: tuple[int, int, list[int], int] | None = None  # (cache length, pending appended, drafter ids,
        #                                                               drafts appended)

    # -- id translation ---------------------------------------------------------------------------------------------
    def _to_drafter(self, target_id: int) -> int:
        if self.pairing is None:
            return int(target_id)
        return int(self.pairing.to_draft(torch.tensor([target_id]))[0])

    def _distribution(self, logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        """The drafter's processed next-token distribution over its own ids (proposable ids only)."""
        if self.pairing is not None:
            logits = self.pairing.mask_unproposable(logits)
        return probabilities(logits, sampling)

    def _in_target_space(self, q_drafter: torch.Tensor) -> torch.Tensor:
        if self.pairing is None:
            if q_drafter.numel() > self.target_vocab:
                raise ValueError(f"drafter distribution over {q_drafter.numel()} ids exceeds the target's "
                                 f"{self.target_vocab}: pass the pairing of the two tokenizers")
            return torch.nn.functional.pad(q_drafter, (0, self.target_vocab - q_drafter.numel()))
        ids = torch.nonzero(q_drafter > 0).squeeze(1)
        out = torch.zeros(self.target_vocab)
        out[self.pairing.to_target(ids)] = q_drafter[ids]
        return out

    # -- protocol ---------------------------------------------------------------------------------------------------
    def begin(self, inputs: ModelInputs, first_token: int) -> None:
        self.session = self.model.start(inputs)
        self.pending, self.stopped, self._round = [], False, None
        self._queue(first_token)

    def _queue(self, target_id: int) -> None:
        d = self._to_drafter(target_id)
        if d == UNMAPPED:
            self.stopped = True
        else:
            self.pending.append(d)

    @torch.no_grad()
    def propose(self, k: int, sampling: Sampling, generator: torch.Generator | None = None) -> Proposal:
        if self.session is None:
            raise RuntimeError("TokenDrafter.propose before begin()")
        if self.stopped or k < 1:
            return Proposal(torch.zeros(0, dtype=torch.long))
        base = self.session.length
        logits = self.session.append(self.pending).logits[-1]
        appended = len(self.pending)
        self.pending = []
        drafted: list[int] = []  # drafter ids
        targets: list[int] = []
        qs: list[torch.Tensor] = []
        use_q = not sampling.greedy and self.sample_drafts
        for i in range(k):
            q = self._distribution(logits, (self.draft_sampling or sampling) if use_q else Sampling())
            if not bool((q > 0).any()) or not torch.isfinite(q).all():
                break  # nothing proposable
            d = int(sample(q, generator)) if use_q else int(q.argmax())
            t = d if self.pairing is None else int(self.pairing.to_target(torch.tensor([d]))[0])
            if t == UNMAPPED:
                break
            drafted.append(d)
            targets.append(t)
            if use_q:
                qs.append(self._in_target_space(q))
            if i < k - 1:
                logits = self.session.append([d]).logits[-1]
        in_cache = min(len(drafted), k - 1)  # every draft but a k-th was appended to find the next one
        self._round = (base, appended, drafted, in_cache)
        tokens = torch.tensor(targets, dtype=torch.long)
        return Proposal(tokens, torch.stack(qs) if use_q and qs else None)

    def feedback(self, accepted: int, token: int) -> None:
        if self._round is None:  # no propose this round (e.g. a plain step): just follow the text
            self._queue(token)
            return
        base, appended, drafted, in_cache = self._round
        self.session.truncate(base + appended + min(accepted, in_cache))
        if accepted > in_cache:  # every draft accepted: the last one still has to go in
            self.pending.append(drafted[-1])
        self._round = None
        self._queue(token)
