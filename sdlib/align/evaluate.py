"""Offline metrics of an adapter's predicted hidden states against the target model's own states: how close
(cosine), how often close enough (acceptance at a cosine threshold), for how long in a row (the accepted prefix),
and whether the LM head reads the same token from them (top-k token match), overall, per answer position and split
into fact and template words.

These are the metrics of the original research's offline evaluation (seed_system.md section 6), reimplemented on
ragged samples without padding artefacts: a batch of samples is given flat, ``rows [R, ...]`` plus ``offsets``
int64 ``[N + 1]``; sample ``i`` owns rows ``offsets[i]:offsets[i + 1]`` and its row ``t`` is answer position ``t``.
Same-position adapters are compared row by row; next-position heads (row ``t`` predicts the target's row ``t + 1``)
are compared after :func:`shift_pairs`.

Conventions, fixed here so every table agrees:

- acceptance at ``tau`` counts ``c > tau`` (strictly greater, as the original);
- the accepted prefix of a sample is the length of its all-true prefix (0 for an empty sample);
- ``std`` is the population standard deviation (ddof = 0) and ``median`` the mean of the two middle values for an
  even count (numpy's conventions); statistics of no value are NaN;
- a token is in the top-k of a row's logits when fewer than ``k`` logits are strictly greater than its own, i.e. a
  token tied with the k-th largest logit counts (:func:`token_topk`); without ties top-1 is ``argmax == token``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

ACCEPT_TAUS = (0.80, 0.85, 0.90, 0.95)  # cosine thresholds of the acceptance rates
MATCH_TAUS = (0.80, 0.85, 0.90, 0.92, 0.95, 0.98)  # cosine thresholds of P(token match | cos > tau)
TOKEN_KS = (1, 5, 10)
_COS_CHUNK = 65536  # rows per chunk when upcasting half-precision states for the cosine


# -- ragged layout ---------------------------------------------------------------------------------------------------
def _offsets(offsets: torch.Tensor | Sequence[int], rows: int, device: torch.device | None = None) -> torch.Tensor:
    """``offsets`` as int64 on ``device``, checked: 1-D, starts at 0, non-decreasing, ends at ``rows``."""
    off = torch.as_tensor(offsets)
    if off.dim() != 1 or off.numel() < 1 or off.dtype.is_floating_point or off.dtype == torch.bool:
        raise ValueError(f"offsets: expected a 1-D integer tensor [N + 1], got dtype {off.dtype} shape "
                         f"{tuple(off.shape)}")
    off = off.to(dtype=torch.int64, device=device)
    if int(off[0]) != 0:
        raise ValueError(f"offsets: expected offsets[0] == 0, got {int(off[0])}")
    if int(off[-1]) != rows:
        raise ValueError(f"offsets: expected offsets[-1] == the number of rows {rows}, got {int(off[-1])}")
    if off.numel() > 1 and bool((off[1:] < off[:-1]).any()):
        i = int((off[1:] < off[:-1]).nonzero()[0])
        raise ValueError(f"offsets: expected non-decreasing offsets, got {int(off[i])} then {int(off[i + 1])} at "
                         f"index {i}")
    return off


def _layout(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lengths [N], sample [R], position [R]) of checked ``offsets``: the sample owning each row and its position."""
    lengths = offsets[1:] - offsets[:-1]  # [N]
    sample = torch.repeat_interleave(torch.arange(lengths.numel(), device=offsets.device), lengths)  # [R]
    position = torch.arange(sample.numel(), device=offsets.device) - offsets[:-1][sample]  # [R]
    return lengths, sample, position


def _rows(x: torch.Tensor, rows: int, name: str, dim: int | None = 1) -> None:
    if x.shape[:1] != (rows,) or (dim is not None and x.dim() != dim):
        expected = f"[{rows}]" if dim == 1 else f"{rows} rows"
        raise ValueError(f"{name}: expected {expected}, got shape {tuple(x.shape)}")


def shift_pairs(pred: torch.Tensor, target: torch.Tensor, offsets: torch.Tensor | Sequence[int], shift: int = 1,
                tokens: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pair row ``t`` of ``pred`` with row ``t + shift`` of ``target`` within each sample: drop each sample's last
    ``shift`` rows of ``pred`` and first ``shift`` rows of ``target`` (and of ``tokens``, or any other row-aligned
    tensor aligned with ``target``). Returns ``(pred', target', offsets', tokens')``; a sample with at most ``shift``
    rows keeps an empty range."""
    if shift < 0:
        raise ValueError(f"shift: expected >= 0, got {shift}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)}: expected the same shape")
    off = _offsets(offsets, pred.shape[0], pred.device)
    if tokens is not None:
        _rows(tokens, pred.shape[0], "tokens", dim=None)
    if shift == 0:
        return pred, target, off, tokens
    lengths, sample, position = _layout(off)
    keep_pred = position < lengths[sample] - shift  # [R] drop the last `shift` rows
    keep_target = position >= shift  # [R] drop the first `shift` rows
    new_off = torch.cat([off.new_zeros(1), torch.cumsum((lengths - shift).clamp(min=0), 0)])  # [N + 1]
    tok = None if tokens is None else tokens[keep_target.to(tokens.device)]
    return pred[keep_pred], target[keep_target], new_off, tok


def padded(values: torch.Tensor, offsets: torch.Tensor | Sequence[int], fill: float | int | bool = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [N, Tmax, ...], mask [N, Tmax])``: the ragged ``values [R, ...]`` padded with ``fill``; ``mask`` is True
    on real rows."""
    off = _offsets(offsets, values.shape[0], values.device)
    lengths, sample, position = _layout(off)
    t_max = int(lengths.max()) if lengths.numel() else 0
    x = torch.full((lengths.numel(), t_max, *values.shape[1:]), fill, dtype=values.dtype,
                   device=values.device)  # [N, Tmax, ...]
    mask = torch.zeros(lengths.numel(), t_max, dtype=torch.bool, device=values.device)  # [N, Tmax]
    x[sample, position] = values
    mask[sample, position] = True
    return x, mask


# -- cosine ----------------------------------------------------------------------------------------------------------
def cosine(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``[R]`` cosine similarity of each row of ``pred [R, H]`` with the same row of ``target [R, H]``, computed in at
    least float32; a zero row has cosine 0 (each norm is clamped below at ``eps``)."""
    if pred.dim() != 2 or pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)}: expected the same [R, H] shape")
    dtype = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    out = torch.empty(pred.shape[0], dtype=dtype, device=pred.device)  # [R]
    for lo in range(0, pred.shape[0], _COS_CHUNK):
        p = pred[lo:lo + _COS_CHUNK].to(dtype)
        t = target[lo:lo + _COS_CHUNK].to(device=pred.device, dtype=dtype)
        norms = p.norm(dim=1).clamp(min=eps) * t.norm(dim=1).clamp(min=eps)
        out[lo:lo + _COS_CHUNK] = (p * t).sum(1) / norms
    return out


def _stats(x: torch.Tensor) -> dict[str, float]:
    """mean, std (ddof 0), min, max, median (mean of the middle two for an even count) in float64; NaN when empty."""
    x = torch.as_tensor(x).detach().double().flatten().cpu()
    if x.numel() == 0:
        return {k: math.nan for k in ("mean", "std", "min", "max", "median")}
    s = x.sort().values
    n = s.numel()
    median = float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)
    return {"mean": float(x.mean()), "std": float(x.std(correction=0)), "min": float(s[0]), "max": float(s[-1]),
            "median": median}


def cosine_stats(c: torch.Tensor) -> dict[str, float]:
    """``{mean, std, min, max, median}`` of the cosines ``c [R]`` (population std; NaN when empty)."""
    return _stats(c)


def accept_at(c: torch.Tensor, taus: Sequence[float] = ACCEPT_TAUS) -> dict[float, float]:
    """``{tau: fraction of rows with c > tau}`` (strictly greater; NaN when there is no row)."""
    n = c.numel()
    return {tau: float((c > tau).sum()) / n if n else math.nan for tau in taus}


# -- accepted prefixes -----------------------------------------------------------------------------------------------
def prefix_acceptance(ok: torch.Tensor, offsets: torch.Tensor | Sequence[int], start: int = 0,
                      length: int | None = None) -> torch.Tensor:
    """``[N]`` int64: per sample, the length of the all-true prefix of ``ok [R]`` within positions
    ``[start, start + length)`` (``length=None``: to the sample's end); 0 for a sample with no row there. E.g. the
    drafts of a prefill window covering positions ``[0, gamma)`` or of a decode window starting at ``start``."""
    if start < 0 or (length is not None and length < 0):
        raise ValueError(f"window start={start}, length={length}: expected start >= 0 and length >= 0")
    if ok.dim() != 1 or ok.dtype != torch.bool:
        raise ValueError(f"ok: expected a bool tensor [R], got dtype {ok.dtype} shape {tuple(ok.shape)}")
    off = _offsets(offsets, ok.shape[0], ok.device)
    lengths, sample, position = _layout(off)
    end = lengths if length is None else lengths.clamp(max=start + length)  # [N] window end per sample
    first_bad = end.clone()  # [N] first position in the window where ok is False, else the window's end
    bad = ~ok & (position >= start)
    first_bad.scatter_reduce_(0, sample[bad], position[bad], reduce="amin", include_self=True)
    return (first_bad - start).clamp(min=0)


def consecutive(ok: torch.Tensor, offsets: torch.Tensor | Sequence[int], limit: int | None = None) -> torch.Tensor:
    """``[N]`` int64: per sample the length of the all-true prefix of ``ok [R]`` (the cumprod sum), over its first
    ``limit`` positions only when given."""
    return prefix_acceptance(ok, offsets, 0, limit)


def consecutive_stats(x: torch.Tensor) -> dict[str, float]:
    """``{mean, std, median, max, min}`` of per-sample prefix lengths ``x [N]`` (population std; NaN when empty)."""
    return _stats(x)


# -- tokens ----------------------------------------------------------------------------------------------------------
@torch.no_grad()
def token_topk(pred: torch.Tensor, lm_head_weight: torch.Tensor, tokens: torch.Tensor,
               ks: Sequence[int] = TOKEN_KS, chunk: int = 4096, bias: torch.Tensor | None = None
               ) -> dict[int, torch.Tensor]:
    """``{k: bool [R]}``: whether ``tokens[r]`` is in the top-k of the logits ``pred[r] @ W^T (+ bias)``.

    Tie rule: the token is in the top-k when fewer than ``k`` logits are strictly greater than its own, i.e. when
    its logit is >= the k-th largest logit; a token tied for the k-th place counts (so with ties top-1 may differ from
    ``argmax == token``, which picks one of the tied tokens). Logits are computed in at least float32 on the weight's
    device, ``chunk`` rows at a time so that memory stays at ``chunk x V``; the result lives on ``pred``'s device."""
    if pred.dim() != 2 or lm_head_weight.dim() != 2 or pred.shape[1] != lm_head_weight.shape[1]:
        raise ValueError(f"pred {tuple(pred.shape)} and lm_head_weight {tuple(lm_head_weight.shape)}: expected "
                         f"[R, H] and [V, H]")
    _rows(tokens, pred.shape[0], "tokens")
    if chunk < 1 or any(k < 1 for k in ks):
        raise ValueError(f"chunk={chunk}, ks={tuple(ks)}: expected chunk >= 1 and every k >= 1")
    vocab = lm_head_weight.shape[0]
    tokens = tokens.to(torch.int64)
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"tokens: expected ids in [0, {vocab}), got range [{int(tokens.min())}, {int(tokens.max())}]")
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"bias: expected [{vocab}], got shape {tuple(bias.shape)}")
    dtype = torch.float64 if lm_head_weight.dtype == torch.float64 else torch.float32
    dev = lm_head_weight.device
    w = lm_head_weight.to(dtype)  # [V, H]
    b = None if bias is None else bias.to(device=dev, dtype=dtype)
    rank = torch.empty(pred.shape[0], dtype=torch.int64, device=dev)  # [R] logits strictly above the token's
    for lo in range(0, pred.shape[0], chunk):
        logits = pred[lo:lo + chunk].to(device=dev, dtype=dtype) @ w.T  # [chunk, V]
        if b is not None:
            logits += b
        own = logits.gather(1, tokens[lo:lo + chunk].to(dev)[:, None])  # [chunk, 1]
        rank[lo:lo + chunk] = (logits > own).sum(1)
    rank = rank.to(pred.device)
    return {k: rank < k for k in ks}


def match_given_cos(c: torch.Tensor, match: torch.Tensor, taus: Sequence[float] = MATCH_TAUS
                    ) -> dict[float, dict[str, float | int]]:
    """``{tau: {"p_match": P(match | c > tau), "count": rows with c > tau}}``; ``p_match`` is NaN for no row."""
    _rows(match, c.shape[0], "match")
    m = match.to(device=c.device, dtype=torch.float64)
    out = {}
    for tau in taus:
        above = c > tau
        n = int(above.sum())
        out[tau] = {"p_match": float(m[above].sum()) / n if n else math.nan, "count": n}
    return out


def pearson(c: torch.Tensor, match: torch.Tensor) -> float:
    """Pearson correlation of the cosines ``c [R]`` with the 0/1 ``match [R]`` (float64); NaN when either is
    constant or there are fewer than 2 rows."""
    _rows(match, c.shape[0], "match")
    x = c.detach().double().cpu()
    y = match.detach().double().cpu()
    if x.numel() < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    sxx, syy = float((x * x).sum()), float((y * y).sum())
    if sxx == 0.0 or syy == 0.0:
        return math.nan
    return float((x * y).sum()) / math.sqrt(sxx * syy)


# -- breakdowns ------------------------------------------------------------------------------------------------------
def per_position(values: Mapping[str, torch.Tensor], offsets: torch.Tensor | Sequence[int],
                 max_positions: int = 20):
    """A pandas DataFrame with one row per answer position ``p < max_positions`` that some sample has: ``position``,
    ``n`` (samples with that position) and the mean of each of ``values`` (name -> ``[R]``, bools as 0/1) there."""
    import pandas as pd

    off = torch.as_tensor(offsets).cpu()
    rows = int(off[-1]) if off.numel() else 0
    for name, v in values.items():
        _rows(v, rows, name)
    off = _offsets(off, rows)
    lengths, _, position = _layout(off)
    t = min(max_positions, int(lengths.max()) if lengths.numel() else 0)
    sel = position < t
    n = torch.bincount(position[sel], minlength=t)  # [t]
    table = {"position": list(range(t)), "n": n.tolist()}
    for name, v in values.items():
        sums = torch.zeros(t, dtype=torch.float64).index_add_(0, position[sel], v.detach().cpu().double()[sel])
        table[name] = (sums / n).tolist()
    return pd.DataFrame(table)


def split_by(values: Mapping[str, torch.Tensor], groups: torch.Tensor,
             names: tuple[str, str] = ("fact", "template")) -> dict[str, float | int]:
    """The mean of each of ``values`` (name -> ``[R]``, bools as 0/1) over the rows where ``groups [R]`` is True and
    where it is False: ``{f"{value}_{names[0]}": mean, f"{value}_{names[1]}": mean, f"rows_{names[0]}": count,
    f"rows_{names[1]}": count}``; a mean over no row is NaN."""
    if groups.dtype != torch.bool:
        raise ValueError(f"groups: expected a bool tensor [R], got dtype {groups.dtype}")
    g = groups.detach().cpu()
    out: dict[str, float | int] = {}
    for mask, name in ((g, names[0]), (~g, names[1])):
        n = int(mask.sum())
        out[f"rows_{name}"] = n
        for key, v in values.items():
            _rows(v, g.shape[0], key)
            out[f"{key}_{name}"] = float(v.detach().cpu().double()[mask].sum()) / n if n else math.nan
    return out


# -- everything for one adapter on one split -------------------------------------------------------------------------
def _prefixed(prefix: str, stats: Mapping[str, float]) -> dict[str, float]:
    """``{prefix: mean, prefix_std: .., prefix_median: .., prefix_max: .., prefix_min: ..}``."""
    return {prefix: stats["mean"], **{f"{prefix}_{k}": stats[k] for k in ("std", "median", "max", "min")}}


@torch.no_grad()
def summarize(pred: torch.Tensor, target: torch.Tensor, offsets: torch.Tensor | Sequence[int],
              lm_head_weight: torch.Tensor | None = None, tokens: torch.Tensor | None = None,
              taus: Sequence[float] = ACCEPT_TAUS, shift: int = 0, fact_mask: torch.Tensor | None = None, *,
              lm_head_bias: torch.Tensor | None = None, match_taus: Sequence[float] = MATCH_TAUS,
              ks: Sequence[int] = TOKEN_KS, chunk: int = 4096) -> dict:
    """The offline metric set of one adapter on one split, as a flat JSON-ready dict.

    ``pred [R, H]`` against ``target [R, H]`` after :func:`shift_pairs` by ``shift`` (``tokens`` and ``fact_mask``
    ``[R]`` are aligned with the *target* rows: ``tokens[r]`` is the target's greedy token at row ``r``). Keys:
    ``rows``, ``samples``, ``length_mean``; ``cos_mean/std/min/max/median``; per tau ``accept_at_{tau:.2f}`` and
    ``consecutive_at_{tau:.2f}`` (mean accepted prefix) with ``_std/_median/_max/_min``. With ``lm_head_weight`` and
    ``tokens``: ``token_top{k}``, ``token_consecutive`` (mean all-true prefix of top-1 matches) with its stats,
    ``target_token_top1`` (the target's own states read back: 1.0 unless ``tokens`` are misaligned),
    ``p_match_given_cos`` (``{f"{tau:.2f}": {p_match, count}}``) and ``pearson_r``; with ``fact_mask`` also
    ``token_top1_fact``, ``token_top1_template``, ``rows_fact`` and ``rows_template``."""
    if (lm_head_weight is None) != (tokens is None):
        raise ValueError("lm_head_weight and tokens: expected both or neither")
    if fact_mask is not None and tokens is None:
        raise ValueError("fact_mask: expected tokens and lm_head_weight with it (it splits the token match)")
    rows_in = pred.shape[0]
    if tokens is not None:
        _rows(tokens, rows_in, "tokens")
    if fact_mask is not None:
        _rows(fact_mask, rows_in, "fact_mask")
        if fact_mask.dtype != torch.bool:
            raise ValueError(f"fact_mask: expected a bool tensor [R], got dtype {fact_mask.dtype}")
    aligned = None
    if tokens is not None:  # shift tokens and fact_mask together, as one target-aligned [R, 2] tensor
        extra = torch.zeros_like(tokens, dtype=torch.int64) if fact_mask is None else fact_mask.to(tokens.device)
        aligned = torch.stack([tokens.to(torch.int64), extra.to(torch.int64)], 1)  # [R, 2]
    pred, target, off, aligned = shift_pairs(pred, target, offsets, shift, aligned)
    lengths = off[1:] - off[:-1]

    c = cosine(pred, target)  # [R']
    out: dict = {"rows": int(c.numel()), "samples": int(lengths.numel()),
                 "length_mean": float(lengths.double().mean()) if lengths.numel() else math.nan}
    out.update({f"cos_{k}": v for k, v in cosine_stats(c).items()})
    out.update({f"accept_at_{tau:.2f}": v for tau, v in accept_at(c, taus).items()})
    for tau in taus:
        out.update(_prefixed(f"consecutive_at_{tau:.2f}", consecutive_stats(consecutive(c > tau, off))))
    if aligned is None:
        return out

    tok = aligned[:, 0]
    topk = token_topk(pred, lm_head_weight, tok, ks=ks, chunk=chunk, bias=lm_head_bias)
    out.update({f"token_top{k}": float(v.double().mean()) if v.numel() else math.nan for k, v in topk.items()})
    top1 = topk[1] if 1 in topk else token_topk(pred, lm_head_weight, tok, (1,), chunk, lm_head_bias)[1]
    out.update(_prefixed("token_consecutive", consecutive_stats(consecutive(top1, off))))
    self_match = token_topk(target, lm_head_weight, tok, (1,), chunk, lm_head_bias)[1]
    out["target_token_top1"] = float(self_match.double().mean()) if self_match.numel() else math.nan
    out["p_match_given_cos"] = {f"{tau:.2f}": v for tau, v in match_given_cos(c, top1, match_taus).items()}
    out["pearson_r"] = pearson(c, top1)
    if fact_mask is not None:
        out.update(split_by({"token_top1": top1}, aligned[:, 1].bool().to(top1.device)))
    return out
