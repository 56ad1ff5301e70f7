"""Tokenizer compatibility of a drafter/target pair, checked once when the pair is formed.

Speculative decoding verifies the drafter's tokens with the target, so both must speak in the same token ids.

- Same vocabulary (same token string -> same id, both ways): the mapping is the identity and nothing is lost. This is
  the real pair (EventGPT and Video-LLaVA share the LLaMA tokenizer) and the scale model (one tokenizer trained here).
- Different vocabularies: a token-level intersection. A drafter token maps to the target token with exactly the same
  string; every other drafter token is unmapped (-1). A draft that reaches an unmapped token must stop there (the
  target cannot verify it). The reverse table maps the target's accepted tokens back into the drafter's ids, so the
  drafter can continue from the verified text.

Coverage says how much drafting survives the mapping: the fraction of the drafter's vocabulary that is mapped, and
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

    identical: bool  # same string -> id table on both sides: every id means the same token
    draft_to_target: torch.Tensor  # [drafter_vocab] long, target id or UNMAPPED
    target_to_draft: torch.Tensor  # [target_vocab] long, drafter id or UNMAPPED
    vocab_coverage: float  # fraction of drafter ids that are mapped
    text_coverage: float | None  # fraction of the drafter's tokens on the sample texts that are mapped (None: no text)
    n_sample_tokens: int  # drafter tokens counted for text_coverage

    def to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Translate drafter ids (any shape) to target ids; unmapped ids become UNMAPPED."""
        return _lookup(self.draft_to_target, draft_ids, "draft_ids", "drafter")

    def to_draft(self, target_ids: torch.Tensor) -> torch.Tensor:
        """Translate target ids (any shape) to drafter ids; unmapped ids become UNMAPPED."""
        return _lookup(self.target_to_draft, target_ids, "target_ids", "target")

    def summary(self) -> dict[str, Any]:
        """Plain numbers for logs and result files."""
        return {
            "identical": self.identical,
            "drafter_vocab": int(self.draft_to_target.numel()),
            "target_vocab": int(self.target_to_draft.numel()),
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


def pair_tokenizers(
    drafter_tokenizer: Any, target_tokenizer: Any, sample_texts: Iterable[str] = ()
) -> TokenizerPairing:
    """Check the pair's vocabularies and build the id translation (identity when they are the same).

    ``sample_texts`` (e.g. a few reference answers) give the text-level coverage: the drafter tokenizes them without
    special tokens and the fraction of its tokens that have a target counterpart is reported.
    """
    d_vocab = _id_table(drafter_tokenizer, "drafter")
    t_vocab = _id_table(target_tokenizer, "target")
    d_size = max(d_vocab.values()) + 1  # ids may have holes; the table spans all of them
    t_size = max(t_vocab.values()) + 1

    identical = d_vocab == t_vocab
    draft_to_target = torch.full((d_size,), UNMAPPED, dtype=torch.long)  # [drafter_vocab]
    target_to_draft = torch.full((t_size,), UNMAPPED, dtype=torch.long)  # [target_vocab]
    if identical:
        ids = torch.tensor(sorted(d_vocab.values()), dtype=torch.long)
        draft_to_target[ids] = ids
        target_to_draft[ids] = ids
    else:
        for token, d_id in d_vocab.items():
            t_id = t_vocab.get(token)
            if t_id is not None:
                draft_to_target[d_id] = t_id
                target_to_draft[t_id] = d_id
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
    )
