"""The token-level track (stage 02): can the target's next token be read off the drafter's *tokens*?

The original research's earlier track (`seed_system.md` §8) paired the two models' own greedy answers to the same
prompt and trained a causal **TokenAdapter** (token embeddings + a causal transformer encoder + a linear head over the
target's vocabulary) to predict the target's token ``t + 1`` from the drafter's tokens ``<= t``. Its training was
right; its live check was not: it compared the prediction for ``t + 1`` with the target's token ``t`` and found
"0 consecutive" accepts. This module trains the same kind of adapter (sized from the target's hidden size) and scores
it both ways, so the book can show the verdict came from the comparison, not from the data.

Data: the original protocol's store (:mod:`sdlib.align.extract`, ``independent``): per sample the target's answer
``tokens`` [n] and the drafter's own answer ``drafter_tokens`` [n], cut to the shorter of the two.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sdlib.align.store import FeatureStore
from sdlib.core import progress as progress_bar


class TokenAdapter(nn.Module):
    """Drafter token ids ``[B, T]`` -> logits over the target's vocabulary ``[B, T, V_target]``; row ``t`` reads the
    drafter's tokens ``<= t`` only (causal) and predicts the target's token ``t + 1``. The original: embedding 512,
    position embedding over 128, 4 encoder layers (8 heads, FFN 2048, GELU), LayerNorm and a linear head."""

    shift = 1

    def __init__(self, drafter_vocab: int, target_vocab: int, hidden: int = 512, layers: int = 4, heads: int = 8,
                 ffn: int | None = None, max_len: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = {"drafter_vocab": drafter_vocab, "target_vocab": target_vocab, "hidden": hidden,
                       "layers": layers, "heads": heads, "ffn": ffn or 4 * hidden, "max_len": max_len,
                       "dropout": dropout}
        self.embed = nn.Embedding(drafter_vocab, hidden)
        self.pos = nn.Embedding(max_len, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn or 4 * hidden, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, target_vocab)
        self.max_len = max_len

    def forward(self, drafter_tokens: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, V]
        t = drafter_tokens.shape[1]
        if t > self.max_len:
            raise ValueError(f"TokenAdapter: {t} tokens; at most max_len={self.max_len}")
        x = self.embed(drafter_tokens) + self.pos(torch.arange(t, device=drafter_tokens.device))[None]
        causal = torch.triu(torch.full((t, t), float("-inf"), device=x.device), diagonal=1)
        return self.head(self.norm(self.encoder(x, mask=causal, is_causal=True)))


@dataclass(frozen=True)
class TokenTrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 3
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_pairs(store: FeatureStore) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(drafter answers, target answers) of every sample, as token-id tensors of equal length per sample."""
    data, offsets = store.concat(["drafter_tokens", "tokens"])
    d, t = data["drafter_tokens"], data["tokens"]
    return ([d[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)],
            [t[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)])


def _pad(seqs: list[torch.Tensor], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        mask[i, : len(s)] = True
    return out, mask


def _loss(model: TokenAdapter, d: list[torch.Tensor], t: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    x, m = _pad(d, 0)
    y, _ = _pad(t, 0)
    logits = model(x)[:, :-1]  # row t predicts target token t + 1
    keep = m[:, 1:]
    return F.cross_entropy(logits[keep], y[:, 1:][keep]), int(keep.sum())


def train_token_adapter(model: TokenAdapter, train: tuple[list, list], val: tuple[list, list], cfg: TokenTrainConfig,
                        progress: bool = True, log: Callable = print) -> dict[str, Any]:
    """Cross-entropy on the target's next token, AdamW with cosine decay, early stopping and the kept weights on
    validation loss. Returns the history and the best epoch; ``model`` ends with the best weights."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train[0])
    steps = math.ceil(n / cfg.batch_size) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    best, best_state, bad, history = float("inf"), None, 0, []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=g).tolist()
        tot, rows = 0.0, 0
        for i in progress_bar(range(0, n, cfg.batch_size), desc=f"token adapter epoch {epoch + 1}",
                              disable=not progress):
            idx = order[i: i + cfg.batch_size]
            loss, k = _loss(model, [train[0][j] for j in idx], [train[1][j] for j in idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot, rows = tot + float(loss.detach()) * k, rows + k
        model.eval()
        with torch.no_grad():
            vals = [_loss(model, val[0][i: i + 64], val[1][i: i + 64]) for i in range(0, len(val[0]), 64)]
        v = sum(float(lo) * k for lo, k in vals) / max(1, sum(k for _, k in vals))
        history.append({"epoch": epoch + 1, "train_loss": tot / max(1, rows), "val_loss": v})
        log(f"token adapter epoch {epoch + 1}: train {tot / max(1, rows):.3f} val {v:.3f}")
        if v < best:
            best, bad = v, 0
            best_state = {k: x.detach().clone() for k, x in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"history": history, "best_epoch": min(range(len(history)), key=lambda i: history[i]["val_loss"]) + 1,
            "best_val_loss": best, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def score_token_adapter(model: TokenAdapter, pairs: tuple[list, list], to_target: Callable | None = None,
                        ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """The adapter on held-out pairs, three ways:

    - ``shifted_top{k}``: its prediction at row t against the target's token t + 1 (what it was trained for);
    - ``shifted_consecutive``: mean all-true prefix of those top-1 matches per answer (positions 1..n-1);
    - ``unshifted_top1`` / ``unshifted_consecutive``: the same prediction against the target's token t (the
      original's live check);
    - ``baseline_same_position``: the drafter's own token t equals the target's token t (ids mapped with
      ``to_target`` when the tokenizers differ)."""
    model.eval()
    hits = {k: [] for k in ks}
    unshift, base, consec, consec_un = [], [], [], []
    for d, t in zip(*pairs):
        if len(t) < 2:
            continue
        logits = model(d[None])[0]  # [n, V]
        pred, target_next = logits[:-1], t[1:]
        top = pred.topk(max(ks), dim=-1).indices
        for k in ks:
            hits[k].append((top[:, :k] == target_next[:, None]).any(-1))
        same = pred.argmax(-1) == t[:-1]
        unshift.append(same)
        dd = to_target(d) if to_target is not None else d
        base.append(dd == t)
        ok = hits[1][-1]
        consec.append(int(ok.long().cumprod(0).sum()))
        consec_un.append(int(same.long().cumprod(0).sum()))
    out = {f"shifted_top{k}": float(torch.cat(v).float().mean()) for k, v in hits.items()}
    out.update(shifted_consecutive=float(sum(consec) / max(1, len(consec))),
               unshifted_top1=float(torch.cat(unshift).float().mean()),
               unshifted_consecutive=float(sum(consec_un) / max(1, len(consec_un))),
               baseline_same_position=float(torch.cat(base).float().mean()),
               answers=len(consec), rows=int(sum(len(x) for x in unshift)),
               zero_consecutive_share_unshifted=float(sum(c == 0 for c in consec_un) / max(1, len(consec_un))),
               zero_consecutive_share_shifted=float(sum(c == 0 for c in consec) / max(1, len(consec))))
    return out
