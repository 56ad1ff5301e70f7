"""Tokenizer compatibility of a drafter/target pair, checked once when the pair is formed.

Speculative decoding verifies the drafter's tokens with the target, so both must speak in the same token ids.

- Same vocabulary (same token string -> same id, both ways): the mapping is the identity and nothing is lost. This is
  the scale model (one tokenizer trained here).
- Different vocabularies: a token-level intersection. A drafter token maps to the target token with exactly the same
  string; every other drafter token is unmapped (-1). A draft that reaches an unmapped token must stop there (the
  target cannot verify it). The reverse table maps the target's accepted tokens back into the drafter's ids, so the
  drafter can continue from the verified text. The real pair is of this kind: both start from the same LLaMA
  tokenizer (32,000 pieces, same ids), but each adds its own tokens after it (EventGPT ``<ev_patch>``, and
  ``<ev_start>``/``<ev_end>`` when its config says so; Video-LLaVA ``<image>``, ``<video>``, ``<pad>``), so the same
  id 32000 means different tokens on the two sides. Added tokens are compared by their strings like any other.

Rows beyond the tokenizer. A model's LM head can have more rows than its tokenizer has tokens: Video-LLaVA-7B-hf's
has 32,064 for 32,000 pieces plus 3 added tokens (padded to a multiple of 64). A model can also lack rows for
tokens its tokenizer has. Given the heads' row counts (``drafter_rows``, ``target_rows``), the tables span every id a
model can produce and every id its tokenizer knows, and an id is mapped only when it is a token of its tokenizer, has
a row in its model, and the same string is a token with a row on the other side. Padding rows are never mapped: a
drafter restricted to :attr:`TokenizerPairing.proposable` ids never proposes one, and a target token on one
translates to UNMAPPED (a disagreement), never to an error.

Coverage says how much drafting survives the mapping: the fraction of the drafter's tokens that are mapped, and
(more telling) the fraction of the drafter's tokens on sample text that are mapped.

Strings are compared raw, as ``get_vocab`` spells them. Two tokenizers that mark word boundaries differently
(``"Ġcar"`` vs ``"▁car"`` vs ``"car"``) share few strings and get a low coverage; that is reported, not hidden.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

UNMAPPED = -1


@dataclass
class TokenizerPairing:
    """How drafter ids translate to target ids (and back)."""

    identical: bool  # same string -> id table on both sides: every tokenizer id means the same token
    draft_to_target: torch.Tensor  # [drafter_table] long, target id or UNMAPPED
    target_to_draft: torch.Tensor  # [target_table] long, drafter id or UNMAPPED
    vocab_coverage: float  # fraction of the drafter tokenizer's tokens that are mapped
    text_coverage: float | None  # fraction of the drafter's tokens on the sample texts that are mapped (None: no text)
    n_sample_tokens: int  # drafter tokens counted for text_coverage
    drafter_tokens: int = 0  # tokens of the drafter's tokenizer (added tokens included)
    target_tokens: int = 0  # tokens of the target's tokenizer
    drafter_rows: int | None = None  # rows of the drafter's LM head (None: not given, the tokenizer's span)
    target_rows: int | None = None  # rows of the target's LM head

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Translate drafter ids (any shape) to target ids; unmapped ids become UNMAPPED."""
        return _lookup(self.draft_to_target, draft_ids, "draft_ids", "drafter")

    def to_draft(self, target_ids: torch.Tensor) -> torch.Tensor:
        """Translate target ids (any shape) to drafter ids; unmapped ids become UNMAPPED."""
        return _lookup(self.target_to_draft, target_ids, "target_ids", "target")

    @property
    def proposable(self) -> torch.Tensor:
        """``[drafter_table]`` bool: the drafter ids that may be proposed as drafts (they have a target token)."""
        return self.draft_to_target != UNMAPPED

    def mask_unproposable(self, drafter_logits: torch.Tensor) -> torch.Tensor:
        """``drafter_logits`` ``[..., V]`` (V = the drafter head's rows) with every id that has no target token set to
        -inf, so that neither an argmax nor a sample proposes it (padding rows, tokens the target lacks)."""
        v = drafter_logits.shape[-1]
        if v > self.draft_to_target.numel():
            raise ValueError(
                f"drafter_logits: {v} columns, but the pairing knows {self.draft_to_target.numel()} drafter ids; "
                "expected logits of the drafter whose head rows were given to pair_tokenizers"
            )
        keep = self.proposable[:v].to(drafter_logits.device)  # [V]
        return drafter_logits.masked_fill(~keep, float("-inf"))

    def greedy_draft(self, drafter_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The best proposable token of each row of ``drafter_logits`` ``[..., V]``: ``(drafter ids, target ids)``.
        A row where no proposable id has a finite logit gets the target id UNMAPPED (stop drafting there)."""
        best, draft_ids = self.mask_unproposable(drafter_logits).max(dim=-1)  # [...] each
        target_ids = self.to_target(draft_ids).masked_fill(torch.isneginf(best), UNMAPPED)
        return draft_ids, target_ids

    def summary(self) -> dict[str, Any]:
        """Plain numbers for logs and result files."""
        return {
            "identical": self.identical,
            "drafter_vocab": int(self.draft_to_target.numel()),
            "target_vocab": int(self.target_to_draft.numel()),
            "drafter_tokens": self.drafter_tokens,
            "target_tokens": self.target_tokens,
            "drafter_rows": self.drafter_rows,
            "target_rows": self.target_rows,
            "mapped": int((self.draft_to_target != UNMAPPED).sum()),
            "vocab_coverage": self.vocab_coverage,
            "text_coverage": self.text_coverage,
            "n_sample_tokens": self.n_sample_tokens,
        }


def _lookup(table: torch.Tensor, ids: torch.Tensor, name: str, side: str) -> torch.Tensor:
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= table.numel()):
        raise ValueError(
            f"{name}: ids must lie in [0, {table.numel()}) (the {side} vocabulary), got range "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    return table.to(ids.device)[ids]


def _id_table(tokenizer: Any, name: str) -> dict[str, int]:
    vocab = tokenizer.get_vocab()  # includes added (special) tokens
    if not vocab:
        raise ValueError(f"{name} tokenizer: empty vocabulary")
    return dict(vocab)


def _check_rows(rows: int | None, name: str) -> int | None:
    if rows is not None and int(rows) < 1:
        raise ValueError(f"{name}={rows}: expected the number of rows of the model's LM head (>= 1) or None")
    return None if rows is None else int(rows)


def pair_tokenizers(
    drafter_tokenizer: Any,
    target_tokenizer: Any,
    sample_texts: Iterable[str] = (),
    *,
    drafter_rows: int | None = None,
    target_rows: int | None = None,
) -> TokenizerPairing:
    """Check the pair's vocabularies and build the id translation (identity when they are the same).

    ``drafter_rows``/``target_rows`` are the row counts of the two LM heads (``lm_head.out_features``); give them
    whenever a head may differ from its tokenizer (always, for loaded checkpoints). ``sample_texts`` (e.g. a few
    reference answers) give the text-level coverage: the drafter tokenizes them without special tokens and the
    fraction of its tokens that have a target counterpart is reported.
    """
    d_vocab = _id_table(drafter_tokenizer, "drafter")
    t_vocab = _id_table(target_tokenizer, "target")
    d_rows = _check_rows(drafter_rows, "drafter_rows")
    t_rows = _check_rows(target_rows, "target_rows")
    d_span = max(d_vocab.values()) + 1  # ids may have holes; the table spans all of them
    t_span = max(t_vocab.values()) + 1
    d_limit = d_span if d_rows is None else d_rows  # ids at or past the limit have no row in the model
    t_limit = t_span if t_rows is None else t_rows

    identical = d_vocab == t_vocab
    draft_to_target = torch.full((max(d_span, d_limit),), UNMAPPED, dtype=torch.long)  # [drafter_table]
    target_to_draft = torch.full((max(t_span, t_limit),), UNMAPPED, dtype=torch.long)  # [target_table]
    pairs = [(d_id, t_vocab.get(token)) for token, d_id in d_vocab.items()]
    pairs = [(d, t) for d, t in pairs if t is not None and d < d_limit and t < t_limit]
    if pairs:
        d_ids, t_ids = torch.tensor(pairs, dtype=torch.long).T  # [mapped] each
        draft_to_target[d_ids] = t_ids
        target_to_draft[t_ids] = d_ids
    vocab_coverage = float((draft_to_target != UNMAPPED).sum()) / len(d_vocab)

    n_tokens = n_mapped = 0
    for text in sample_texts:
        ids = drafter_tokenizer(text, add_special_tokens=False)["input_ids"]
        n_tokens += len(ids)
        if ids:
            n_mapped += int((draft_to_target[torch.tensor(ids, dtype=torch.long)] != UNMAPPED).sum())
    text_coverage = n_mapped / n_tokens if n_tokens else None
    return TokenizerPairing(
        identical=identical,
        draft_to_target=draft_to_target,
        target_to_draft=target_to_draft,
        vocab_coverage=vocab_coverage,
        text_coverage=text_coverage,
        n_sample_tokens=n_tokens,
        drafter_tokens=len(d_vocab),
        target_tokens=len(t_vocab),
        drafter_rows=d_rows,
        target_rows=t_rows,
    )
