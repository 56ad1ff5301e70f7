"""Closed-form linear baselines: an adapter (drafter hidden -> target hidden) and a head (target feature and the next
token's embedding -> the target's next feature), fitted by ridge regression on paired, teacher-forced hidden states.

Pairing follows the fixed protocol: for each (clip, question) the target's greedy answer (given by the caller:
align does not decode), then *both* models teacher-forced on that same text, so that row ``t`` of either model's states predicts answer token ``t``
(:func:`paired_states`). Fit on the training split; the ridge strength is chosen on the validation split by how
often the mapped state's LM-head argmax is the answer token; the test split is never seen here.

These are the baselines the trained adapter zoo must beat, and what the engine's benchmark uses until that zoo
exists: fitting takes seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from sdlib.align.heads import LinearAdapter, LinearHead
from sdlib.models.interface import DecodingModel, ModelInputs

RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # times the mean diagonal of X^T X / n


@dataclass
class PairedStates:
    """One request's teacher-forced states: row t of each predicts ``tokens[t]``."""

    tokens: torch.Tensor  # [n] the target's greedy answer
    drafter: torch.Tensor  # [n, H_drafter]
    target: torch.Tensor  # [n, H_target]


def teacher_forced(model: DecodingModel, inputs: ModelInputs, tokens: torch.Tensor) -> torch.Tensor:
    """``[n, hidden]``: the model's post-norm states on its prompt followed by ``tokens`` [n]; row t predicts
    ``tokens[t]`` (row 0 is the prompt's last position)."""
    session = model.start(inputs)
    rows = [session.prompt_hidden[-1:]]
    if len(tokens) > 1:
        rows.append(session.append(tokens[:-1]).hidden)
    return torch.cat(rows).float()


@torch.no_grad()
def paired_states(drafter: DecodingModel, target: DecodingModel, requests: Iterable[tuple[ModelInputs, ModelInputs]],
                  answers: Iterable[Sequence[int]]) -> list[PairedStates]:
    """For each (target inputs, drafter inputs) and the target's answer to it (token ids, e.g. its greedy answer):
    both models teacher-forced on that answer."""
    out = []
    for (t_in, d_in), answer in zip(requests, answers, strict=True):
        tokens = torch.as_tensor(list(answer), dtype=torch.long)
        if tokens.numel() == 0:
            continue
        out.append(PairedStates(tokens, teacher_forced(drafter, d_in, tokens), teacher_forced(target, t_in, tokens)))
    return out


def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [d_in, d_out], b [d_out]) minimising |x W + b - y|^2 + lam * scale * |W|^2 (float64 solve)."""
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    scale = float(gram.diagonal().mean()) or 1.0
    w = torch.linalg.solve(gram + lam * scale * torch.eye(gram.shape[0], dtype=gram.dtype), xc.T @ yc)
    return w.float(), (my - mx @ w).float()


def _top1(pred: torch.Tensor, tokens: torch.Tensor, lm_head: torch.nn.Module) -> float:
    with torch.no_grad():
        return float((lm_head(pred.to(lm_head.weight.dtype)).argmax(-1) == tokens).float().mean())


def _fit(x_tr, y_tr, x_va, tok_va, lm_head, grid: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    scores = {}
    best = None
    for lam in grid:
        w, b = _ridge(x_tr, y_tr, lam)
        scores[lam] = _top1(x_va @ w + b, tok_va, lm_head)
        if best is None or scores[lam] > scores[best[0]]:
            best = (lam, w, b)
    lam, w, b = best
    return w, b, {"ridge": lam, "val_top1": scores[lam], "val_top1_by_ridge": scores}


def fit_adapter(train: Sequence[PairedStates], val: Sequence[PairedStates], target_lm_head: torch.nn.Module,
                grid: Sequence[float] = RIDGE_GRID) -> tuple[LinearAdapter, dict]:
    """A :class:`~sdlib.align.heads.LinearAdapter` from drafter states to target states; ridge chosen on val."""
    x_tr = torch.cat([p.drafter for p in train])
    y_tr = torch.cat([p.target for p in train])
    w, b, info = _fit(x_tr, y_tr, torch.cat([p.drafter for p in val]), torch.cat([p.tokens for p in val]),
                      target_lm_head, grid)
    adapter = LinearAdapter(w.shape[0], w.shape[1])
    with torch.no_grad():
        adapter.proj.weight.copy_(w.T)
        adapter.proj.bias.copy_(b)
    return adapter.eval(), {**info, "train_rows": int(x_tr.shape[0])}


def _head_rows(states: Sequence[PairedStates], embed: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor]:
    """Inputs [f_{t-1} ; e(x_{t-1})], targets f_t and the tokens x_t they predict, for t >= 1."""
    xs, ys, toks = [], [], []
    with torch.no_grad():
        for p in states:
            if len(p.tokens) < 2:
                continue
            e = embed(p.tokens[:-1]).float()
            xs.append(torch.cat([p.target[:-1], e], dim=-1))
            ys.append(p.target[1:])
            toks.append(p.tokens[1:])
    return torch.cat(xs), torch.cat(ys), torch.cat(toks)


def fit_head(train: Sequence[PairedStates], val: Sequence[PairedStates], target_lm_head: torch.nn.Module,
             target_embed: torch.nn.Module, grid: Sequence[float] = RIDGE_GRID) -> tuple[LinearHead, dict]:
    """A :class:`~sdlib.align.heads.LinearHead` on the target's own features (EAGLE's input, one step)."""
    x_tr, y_tr, _ = _head_rows(train, target_embed)
    x_va, _, tok_va = _head_rows(val, target_embed)
    w, b, info = _fit(x_tr, y_tr, x_va, tok_va, target_lm_head, grid)
    head = LinearHead(w.shape[1])
    with torch.no_grad():
        head.proj.weight.copy_(w.T)
        head.proj.bias.copy_(b)
    return head.eval(), {**info, "train_rows": int(x_tr.shape[0])}
