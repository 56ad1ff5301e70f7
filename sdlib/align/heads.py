"""What the feature-based drafters take as constructor arguments: an *adapter* (drafter hidden states -> the
target's hidden space) and a *head* (the target's own features and token embeddings -> its next feature, EAGLE-style),
and the zoo of both that the adapter stage trains (the original research's L1..L5F, with its faults fixed, and an
EAGLE-3 style head).

Rows. For one request, row ``t`` of the drafter's states ``d [T, Hd]`` and of the target's ``f [T, Ht]`` are the
post-norm last-layer states at the position whose LM-head row predicts answer token ``t``, both models teacher-forced
on the same answer text (:func:`sdlib.align.linear.paired_states`); ``tokens [T]`` are the answer tokens (token ``t``
is what row ``t`` predicts). Row 0 is the last prompt position. ``e_t`` is the (target's) embedding of token ``t``.

Calling conventions (what :mod:`sdlib.decoding.drafters` relies on):

- An **adapter** (``shift = 0``, same position) maps a causal window of drafter states ``[W, Hd]`` (oldest first) to
  ``[W, Ht]``: row ``i`` predicts the target's row ``i`` and may look at rows ``<= i`` only.
  ``FeatureDrafter`` calls ``adapter(window)[-1]``.
- A **head** (``shift = 1``, next position) maps target features ``[W, Ht]`` and the embeddings of the tokens those
  rows chose ``[W, Ht]`` (input row ``t``: ``f_t`` and ``e_t``) to ``[W, Ht]``: output row ``t`` predicts the
  target's row ``t + 1`` (whose LM-head row drafts token ``t + 1``). It reads no input row ``> t``, so it never sees
  the row it predicts. ``TargetHeadDrafter`` calls ``head(f, e)[-1]``.
- Next-position *adapters* (``shift = 1``: :class:`EagleAdapter`, :class:`FusionAdapter`) read drafter rows (and
  target rows, token embeddings) ``<= t`` and predict the target's row ``t + 1``; compare them with shifted targets
  (output row ``t`` against ``f[t + 1]``). ``FeatureDrafter`` drives :class:`EagleAdapter` too (from the answer's
  second token on); :class:`FusionAdapter` reads the target's rows, so no cross-modal drafter can run it.
- ``context``: the window ``W`` the engine should pass (1: position-wise; the attention modules: ``max_len``).
- Batches: every forward also takes ``[B, W, ...]`` inputs with ``mask [B, W]`` (bool, True = a real row; None: all
  real). Padding must be at the end of each sequence (checked). Attention is causal, so padding at the end cannot
  change a real row; padded output rows are set to exactly 0, and a wholly padded sequence gives zeros, never NaN.
  Attention has no key-padding mask: the diagonal is always visible, so no row is ever fully masked.
- Position embeddings index the row inside the window. Training windows start at row 0, so that is the absolute row
  as long as the answer fits in ``max_len``; past it the engine's window slides (and a longer window is an error).

Sizes scale with the hidden size ``H`` (the target's for adapters: their residual stream is in the target's space).
The original used H = 4096 with bottleneck 256 (H/16), wide bottleneck 1024 (H/4), FFN 2048 (H/2) and 8 heads; the
defaults here are those fractions (at least 8 wide), so the same classes build at 7B size and at the scale models'
(Hd = 384, Ht = 512). When ``drafter_hidden != target_hidden`` an adapter first maps Hd -> Ht with a Linear
``in_proj`` (with bias, default init); when they are equal there is no ``in_proj`` (no parameters, the identity), so
at Hd = Ht = 4096 the parameter counts are the original's: L1 2,113,537; L2 6,324,227; L3 25,188,355 (3 blocks);
L4 100,714,497 (``pos_embed=False``, its default, as the original); L5 102,819,841 (``use_token_embed=False``,
``max_len=512``) and L5F 169,936,897 (``max_len=512``): the original's settings; the defaults here are 128 rows and,
for L5, the token embeddings on. B1 (:class:`TargetHead`) differs from the original B1 by design: that was the L5
class fed the target's own same-position state (no token, a leak), this is EAGLE's head. :func:`param_count` counts.

The faults of the original fixed here: L4 attends causally (it was bidirectional over the whole answer although
drafts come left to right); L5F no longer fuses the same-position target state into its input (it predicts row
``t + 1`` from rows ``<= t``); each output row has one target row (``shift`` says which), where the original
pulled one output toward both ``f_t`` and ``f_{t+1}``.

:class:`Eagle3Head` reads several target layers per row (``[W, n_layers, Ht]``): ``TargetHeadDrafter(...,
target_layers=...)`` requests them from the target's session; its :meth:`~Eagle3Head.rollout` is the multi-step
evaluation.
Checkpoints: :func:`save_module` / :func:`load_module` (safetensors; each module records its constructor arguments
in ``config``, plain ints, floats and bools).
"""
from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn


class LinearAdapter(nn.Module):
    """Position-wise affine map from the drafter's hidden size to the target's (the simplest adapter)."""

    context = 1
    shift = 0

    def __init__(self, drafter_hidden: int, target_hidden: int) -> None:
        super().__init__()
        self.config = {"drafter_hidden": int(drafter_hidden), "target_hidden": int(target_hidden)}
        self.proj = nn.Linear(drafter_hidden, target_hidden)

    def forward(self, hidden: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:  # [W, Hd] -> Ht
        if mask is None:
            return self.proj(hidden)
        unbatched, mask, (x,) = _batch("LinearAdapter", mask, ("drafter states", hidden, (self.proj.in_features,)))
        return _finish(self.proj(x), mask, unbatched)


class FusionHead(nn.Module):
    """EAGLE-style one-step head without attention: ``f_next = f + MLP([f ; e])`` (position-wise)."""

    context = 1
    shift = 1

    def __init__(self, hidden: int, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or 2 * hidden
        self.config = {"hidden": int(hidden), "inner": int(inner)}
        self.fuse = nn.Sequential(nn.Linear(2 * hidden, inner), nn.SiLU(), nn.Linear(inner, hidden))

    def forward(self, features: torch.Tensor, embeds: torch.Tensor, *,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # [W, H] x2 -> [W, H]
        if mask is None:
            return features + self.fuse(torch.cat([features, embeds], dim=-1))
        h = self.config["hidden"]
        unbatched, mask, (f, e) = _batch("FusionHead", mask, ("features", features, (h,)), ("embeds", embeds, (h,)))
        return _finish(f + self.fuse(torch.cat([f, e], dim=-1)), mask, unbatched)


class LinearHead(nn.Module):
    """The simplest head: ``f_next = W [f ; e] + b`` (position-wise; fits in closed form, :mod:`sdlib.align.linear`)."""

    context = 1
    shift = 1

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.config = {"hidden": int(hidden)}
        self.proj = nn.Linear(2 * hidden, hidden)

    def forward(self, features: torch.Tensor, embeds: torch.Tensor, *,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # [W, H] x2 -> [W, H]
        if mask is None:
            return self.proj(torch.cat([features, embeds], dim=-1))
        h = self.config["hidden"]
        unbatched, mask, (f, e) = _batch("LinearHead", mask, ("features", features, (h,)), ("embeds", embeds, (h,)))
        return _finish(self.proj(torch.cat([f, e], dim=-1)), mask, unbatched)


# -- shared pieces -----------------------------------------------------------------------------------------------------
def param_count(module: nn.Module) -> int:
    """Trainable parameters of ``module`` (works on modules built on ``torch.device("meta")``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _width(value: int | None, hidden: int, divisor: int) -> int:
    """``value``, or the default ``hidden / divisor`` (at least 8)."""
    return int(value) if value is not None else max(8, hidden // divisor)


def _batch(owner: str, mask: torch.Tensor | None, *inputs: tuple[str, torch.Tensor | None, tuple[int, ...]]):
    """Checks ``(name, tensor, row shape)`` inputs (``[W, *row]`` or ``[B, W, *row]``, the first input sets which)
    and lifts them to a batch: returns (unbatched, mask [B, W] bool, the tensors with a leading batch dim)."""
    first = inputs[0][1]
    lead = first.dim() - len(inputs[0][2])  # 1: [W, ...], 2: [B, W, ...]
    unbatched = lead == 1
    out = []
    for name, x, row in inputs:
        if x is None:
            out.append(None)
            continue
        if lead not in (1, 2) or x.dim() != lead + len(row) or tuple(x.shape[lead:]) != tuple(row) \
                or x.shape[:lead] != first.shape[:lead]:
            want = ", ".join(["W", *map(str, row)])
            raise ValueError(f"{owner}: {name} of shape {list(x.shape)}; expected [{want}] or [B, {want}] "
                             f"(batch and rows as {inputs[0][0]} {list(first.shape)})")
        out.append(x.unsqueeze(0) if unbatched else x)
    b, w = out[0].shape[:2]
    if mask is None:
        mask = torch.ones(b, w, dtype=torch.bool, device=out[0].device)
    else:
        mask = mask.to(torch.bool)
        mask = mask.unsqueeze(0) if unbatched and mask.dim() == 1 else mask
        if tuple(mask.shape) != (b, w):
            raise ValueError(f"{owner}: mask of shape {list(mask.shape)}; expected [{b}, {w}] (one per row)")
        late = mask[:, 1:] & ~mask[:, :-1]
        if bool(late.any()):
            i = int(late.any(1).nonzero()[0])
            raise ValueError(f"{owner}: mask sequence {i} has a real row after padding; padding must be at the end")
    return unbatched, mask, out


def _finish(y: torch.Tensor, mask: torch.Tensor, unbatched: bool) -> torch.Tensor:
    """Padded rows to exactly 0, and the batch dim dropped again for unbatched input."""
    y = y.masked_fill(~mask.unsqueeze(-1), 0.0)
    return y.squeeze(0) if unbatched else y


class _Bottleneck(nn.Module):
    """``y = x + alpha * Up(Drop(GELU(Down(LN(x)))))``; Down Kaiming (fan-in, linear gain), Up zero-init, alpha a
    learnable scalar (the original's ``BottleneckAdapter``)."""

    def __init__(self, hidden: int, bottleneck: int, dropout: float, alpha: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.down = nn.Linear(hidden, bottleneck, bias=False)
        self.up = nn.Linear(bottleneck, hidden, bias=False)
        self.drop = nn.Dropout(dropout)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        nn.init.kaiming_normal_(self.down.weight, mode="fan_in", nonlinearity="linear")
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.up(self.drop(F.gelu(self.down(self.norm(x)))))


class _Attention(nn.Module):
    """Multi-head attention with the parameters of ``nn.MultiheadAttention`` (``in_proj`` H -> 3H, ``out_proj``
    H -> H, both with bias; same init), on ``F.scaled_dot_product_attention`` with an explicit ``allowed [Q, K]``
    mask, so queries and keys may differ (:meth:`Eagle3Head.rollout`)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if heads < 1 or hidden % heads:
            raise ValueError(f"heads={heads}: must divide the hidden size {hidden}")
        self.heads, self.dropout = heads, dropout
        self.in_proj = nn.Linear(hidden, 3 * hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        nn.init.xavier_uniform_(self.in_proj.weight)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, heads, L, H / heads]
        b, n, h = t.shape
        return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

    def _merge(self, t: torch.Tensor) -> torch.Tensor:  # [B, heads, L, H / heads] -> out_proj([B, L, H])
        b, _, n, d = t.shape
        return self.out_proj(t.transpose(1, 2).reshape(b, n, self.heads * d))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1]  # x [B, Q, H] queries, memory [B, K, H] keys/values (both normed)
        wq, wkv = self.in_proj.weight.split([h, 2 * h])
        bq, bkv = self.in_proj.bias.split([h, 2 * h])
        q = F.linear(x, wq, bq)
        k, v = F.linear(memory, wkv, bkv).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v), attn_mask=allowed,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self._merge(out)

    def step(self, x: torch.Tensor, cache: list[torch.Tensor]) -> torch.Tensor:
        """New rows ``x [B, M, H]`` (normed) attending causally to each other and to the rows whose keys/values
        ``cache`` holds (``[k, v]``, each ``[B, heads, K, H / heads]``, or empty); appends theirs to ``cache``."""
        q, k, v = (self._split(t) for t in self.in_proj(x).chunk(3, dim=-1))
        if cache:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        cache[:] = [k, v]
        m, n = q.shape[2], k.shape[2]
        allowed = None if m == 1 else torch.ones(m, n, dtype=torch.bool, device=x.device).tril(n - m)
        return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))


class _Block(nn.Module):
    """Pre-LN transformer block: ``x += MHA(LN x)``, ``x += FFN(LN x)`` (FFN: Linear, GELU, Drop, Linear, Drop), as
    the original's L4/L5 layer. ``past [B, K0, H]``: block inputs of earlier rows to attend to besides ``x``."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(hidden)
        self.attn = _Attention(hidden, heads, dropout)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, hidden),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        h = self.attn_norm(x)
        memory = h if past is None else torch.cat([self.attn_norm(past), h], dim=1)
        x = x + self.attn(h, memory, allowed)
        return x + self.ffn(self.ffn_norm(x))

    def step(self, x: torch.Tensor, cache: list[torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` for new rows ``[B, M, H]`` after the rows whose keys/values ``cache`` holds."""
        x = x + self.attn.step(self.attn_norm(x), cache)
        return x + self.ffn(self.ffn_norm(x))


def _causal(w: int, device: torch.device) -> torch.Tensor:
    return torch.ones(w, w, dtype=torch.bool, device=device).tril()  # [W, W] True: row i may see column j


class _Trunk(nn.Module):
    """``n_blocks`` causal blocks, then ``out = Linear(LN x)`` with the Linear identity-initialised (zero bias)."""

    def __init__(self, hidden: int, heads: int, ffn: int, n_blocks: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(hidden, heads, ffn, dropout) for _ in range(n_blocks)])
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, hidden)
        nn.init.eye_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, W, H] -> [B, W, H]
        allowed = _causal(x.shape[1], x.device)
        for block in self.blocks:
            x = block(x, allowed)
        return self.out(self.out_norm(x))


class _Positions(nn.Module):
    """Learned position embedding ``[max_len, H]`` (trunc-normal, std 0.02, as the original)."""

    def __init__(self, max_len: int, hidden: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.weight = nn.Parameter(torch.empty(max_len, hidden))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor, owner: str, offset: int = 0) -> torch.Tensor:  # + positions offset..
        if offset + x.shape[1] > self.max_len:
            raise ValueError(f"{owner}: a window of {offset + x.shape[1]} rows; expected at most "
                             f"max_len={self.max_len}")
        return x + self.weight[offset: offset + x.shape[1]]


def _attention_sizes(hidden: int, heads: int, ffn: int | None, n_blocks: int, max_len: int) -> dict[str, int]:
    if n_blocks < 1 or max_len < 1:
        raise ValueError(f"n_blocks={n_blocks}, max_len={max_len}: expected both >= 1")
    return {"heads": int(heads), "ffn": _width(ffn, hidden, 2), "n_blocks": int(n_blocks), "max_len": int(max_len)}


# -- same-position adapters (shift 0) ----------------------------------------------------------------------------------
class StackedBottleneckAdapter(nn.Module):
    """L2: ``x = in_proj(d)``, ``n_blocks`` bottleneck blocks ``x = x + alpha * Up(Drop(GELU(Down(LN(x)))))``, then
    a final LayerNorm. ``bottleneck``: default Ht/16 (256 at 4096). Position-wise."""

    context = 1
    shift = 0

    def __init__(self, drafter_hidden: int, target_hidden: int, bottleneck: int | None = None, n_blocks: int = 3,
                 dropout: float = 0.1, alpha: float = 0.1) -> None:
        super().__init__()
        bottleneck = _width(bottleneck, target_hidden, 16)
        self.config = {"drafter_hidden": int(drafter_hidden), "target_hidden": int(target_hidden),
                       "bottleneck": bottleneck, "n_blocks": int(n_blocks), "dropout": float(dropout),
                       "alpha": float(alpha)}
        self.in_proj = nn.Linear(drafter_hidden, target_hidden) if drafter_hidden != target_hidden else None
        self.blocks = nn.ModuleList([_Bottleneck(target_hidden, bottleneck, dropout, alpha) for _ in range(n_blocks)])
        self.final_norm = nn.LayerNorm(target_hidden)

    def forward(self, d: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:  # [(B,) W, Hd] -> Ht
        unbatched, mask, (x,) = _batch(type(self).__name__, mask,
                                       ("drafter states", d, (self.config["drafter_hidden"],)))
        x = self.in_proj(x) if self.in_proj is not None else x  # [B, W, Ht]
        for block in self.blocks:
            x = block(x)
        return _finish(self.final_norm(x), mask, unbatched)


class BottleneckAdapter(StackedBottleneckAdapter):
    """L1: one bottleneck block ``y = x + alpha * Up(Drop(GELU(Down(LN(x)))))`` on ``x = in_proj(d)``, then a final
    LayerNorm. Down no bias, Kaiming; Up no bias, zero-init (so at init ``y = LN(in_proj(d))``); alpha learnable,
    init 0.1. 2,113,537 parameters at Hd = Ht = 4096, bottleneck 256, as the original."""

    def __init__(self, drafter_hidden: int, target_hidden: int, bottleneck: int | None = None, dropout: float = 0.1,
                 alpha: float = 0.1) -> None:
        super().__init__(drafter_hidden, target_hidden, bottleneck, 1, dropout, alpha)
        del self.config["n_blocks"]


class WideBottleneckAdapter(nn.Module):
    """L3: ``x = LN(in_proj(d))``; ``n_blocks`` blocks ``x = x + alpha_i * [Linear (no bias, Kaiming) -> LN -> GELU
    -> Drop -> Linear (no bias, zero-init) -> Drop](x)`` of width ``bottleneck`` (default Ht/4, 1024 at 4096); a final
    LayerNorm. Position-wise."""

    context = 1
    shift = 0

    def __init__(self, drafter_hidden: int, target_hidden: int, bottleneck: int | None = None, n_blocks: int = 3,
                 dropout: float = 0.1, alpha: float = 0.1) -> None:
        super().__init__()
        bottleneck = _width(bottleneck, target_hidden, 4)
        self.config = {"drafter_hidden": int(drafter_hidden), "target_hidden": int(target_hidden),
                       "bottleneck": bottleneck, "n_blocks": int(n_blocks), "dropout": float(dropout),
                       "alpha": float(alpha)}
        self.in_proj = nn.Linear(drafter_hidden, target_hidden) if drafter_hidden != target_hidden else None
        self.input_norm = nn.LayerNorm(target_hidden)
        self.blocks = nn.ModuleList()
        for _ in range(n_blocks):
            block = nn.Sequential(nn.Linear(target_hidden, bottleneck, bias=False), nn.LayerNorm(bottleneck),
                                  nn.GELU(), nn.Dropout(dropout), nn.Linear(bottleneck, target_hidden, bias=False),
                                  nn.Dropout(dropout))
            nn.init.kaiming_normal_(block[0].weight, mode="fan_in")
            nn.init.zeros_(block[4].weight)
            self.blocks.append(block)
        self.alphas = nn.ParameterList([nn.Parameter(torch.tensor(float(alpha))) for _ in range(n_blocks)])
        self.final_norm = nn.LayerNorm(target_hidden)

    def forward(self, d: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:  # [(B,) W, Hd] -> Ht
        unbatched, mask, (x,) = _batch(type(self).__name__, mask,
                                       ("drafter states", d, (self.config["drafter_hidden"],)))
        x = self.input_norm(self.in_proj(x) if self.in_proj is not None else x)  # [B, W, Ht]
        for block, alpha in zip(self.blocks, self.alphas):
            x = x + alpha * block(x)
        return _finish(self.final_norm(x), mask, unbatched)


class AttentionAdapter(nn.Module):
    """L4, causal: ``x_in = in_proj(d)``; ``x = x_in (+ pos)``; ``n_blocks`` pre-LN blocks ``x += MHA(LN x)`` (causal
    mask: row t sees rows <= t; the original attended both ways), ``x += FFN(LN x)``; ``out = Linear(LN x)``
    (identity-init); ``y = x_in + alpha (out - x_in)``, alpha learnable, init 0.1. ``pos_embed``: add a learned
    position embedding (off, as the original). ``context = max_len``. Defaults: 8 heads, FFN Ht/2."""

    shift = 0

    def __init__(self, drafter_hidden: int, target_hidden: int, heads: int = 8, ffn: int | None = None,
                 n_blocks: int = 1, dropout: float = 0.1, alpha: float = 0.1, max_len: int = 128,
                 pos_embed: bool = False) -> None:
        super().__init__()
        sizes = _attention_sizes(target_hidden, heads, ffn, n_blocks, max_len)
        self.config = {"drafter_hidden": int(drafter_hidden), "target_hidden": int(target_hidden), **sizes,
                       "dropout": float(dropout), "alpha": float(alpha), "pos_embed": bool(pos_embed)}
        self.context = sizes["max_len"]
        self.in_proj = nn.Linear(drafter_hidden, target_hidden) if drafter_hidden != target_hidden else None
        self.pos = _Positions(max_len, target_hidden) if pos_embed else None
        self.trunk = _Trunk(target_hidden, heads, sizes["ffn"], n_blocks, dropout)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, d: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:  # [(B,) W, Hd] -> Ht
        owner = type(self).__name__
        unbatched, mask, (x,) = _batch(owner, mask, ("drafter states", d, (self.config["drafter_hidden"],)))
        x, x_in = self._enter(x)
        return _finish(self._leave(self.trunk(x), x_in), mask, unbatched)

    def _enter(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched rows (window rows ``offset..``) -> (the trunk's input, what :meth:`_leave` needs)."""
        x_in = self.in_proj(x) if self.in_proj is not None else x  # [B, W, Ht]
        if self.pos is None and offset + x_in.shape[1] > self.context:
            raise ValueError(f"{type(self).__name__}: a window of {offset + x_in.shape[1]} rows; expected at most "
                             f"max_len={self.context}")
        return (self.pos(x_in, type(self).__name__, offset) if self.pos is not None else x_in), x_in

    def _leave(self, out: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        return x_in + self.alpha * (out - x_in)


# -- next-position modules (shift 1) -----------------------------------------------------------------------------------
class EagleAdapter(nn.Module):
    """L5, next position: EAGLE-style on the drafter's features. ``x_in = in_proj(d)``; ``x = LN(Linear([x_in ;
    e]))`` with ``e`` the embeddings of the tokens the rows chose (width ``embed_hidden``, default Ht; the token row
    t chose is known when row t + 1 is predicted), or ``x = LN(x_in)`` with ``use_token_embed=False`` (the original's
    default); ``+ pos``; the causal block(s) of :class:`AttentionAdapter`; ``y = x_in + alpha (Linear(LN x) - x_in)``.
    Output row t predicts the target's row ``t + 1`` from drafter rows (and tokens) ``<= t``. ``embeds`` must be
    given exactly when ``use_token_embed``. ``context = max_len``."""

    shift = 1

    def __init__(self, drafter_hidden: int, target_hidden: int, heads: int = 8, ffn: int | None = None,
                 n_blocks: int = 1, dropout: float = 0.1, alpha: float = 0.1, max_len: int = 128,
                 use_token_embed: bool = True, embed_hidden: int | None = None) -> None:
        super().__init__()
        sizes = _attention_sizes(target_hidden, heads, ffn, n_blocks, max_len)
        embed_hidden = int(embed_hidden) if embed_hidden is not None else int(target_hidden)
        self.config = {"drafter_hidden": int(drafter_hidden), "target_hidden": int(target_hidden), **sizes,
                       "dropout": float(dropout), "alpha": float(alpha), "use_token_embed": bool(use_token_embed),
                       "embed_hidden": embed_hidden}
        self.context = sizes["max_len"]
        self.in_proj = nn.Linear(drafter_hidden, target_hidden) if drafter_hidden != target_hidden else None
        self.token_fc = nn.Linear(target_hidden + embed_hidden, target_hidden) if use_token_embed else None
        self.input_norm = nn.LayerNorm(target_hidden)
        self.pos = _Positions(max_len, target_hidden)
        self.trunk = _Trunk(target_hidden, heads, sizes["ffn"], n_blocks, dropout)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, d: torch.Tensor, embeds: torch.Tensor | None = None, *,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # [(B,) W, Hd] (+ [(B,) W, He]) -> [(B,) W, Ht]
        owner = type(self).__name__
        if (embeds is None) == (self.token_fc is not None):
            raise ValueError(f"{owner}(use_token_embed={self.token_fc is not None}): embeds "
                             f"{'missing' if embeds is None else 'given'}; pass them exactly when use_token_embed")
        unbatched, mask, (x, e) = _batch(owner, mask, ("drafter states", d, (self.config["drafter_hidden"],)),
                                         ("embeds", embeds, (self.config["embed_hidden"],)))
        x, x_in = self._enter(x, e)
        return _finish(self._leave(self.trunk(x), x_in), mask, unbatched)

    def _enter(self, x: torch.Tensor, e: torch.Tensor | None = None,
               offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        x_in = self.in_proj(x) if self.in_proj is not None else x  # [B, W, Ht]
        x = self.input_norm(self.token_fc(torch.cat([x_in, e], dim=-1)) if e is not None else x_in)
        return self.pos(x, type(self).__name__, offset), x_in

    def _leave(self, out: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        return x_in + self.alpha * (out - x_in)


class TargetHead(nn.Module):
    """B1, EAGLE-style head on the target's own features: ``x = Linear([f_t ; e_t]) + pos`` (2H -> H), causal
    block(s), ``out = Linear(LN x)`` (identity-init) = the predicted ``f_{t+1}``. Head convention
    ``(features, embeds)``; ``context = max_len``. Defaults: 8 heads, FFN H/2."""

    shift = 1

    def __init__(self, hidden: int, heads: int = 8, ffn: int | None = None, n_blocks: int = 1, dropout: float = 0.1,
                 max_len: int = 128) -> None:
        super().__init__()
        sizes = _attention_sizes(hidden, heads, ffn, n_blocks, max_len)
        self.config = {"hidden": int(hidden), **sizes, "dropout": float(dropout)}
        self.context = sizes["max_len"]
        self.fc = nn.Linear(2 * hidden, hidden)
        self.pos = _Positions(max_len, hidden)
        self.trunk = _Trunk(hidden, heads, sizes["ffn"], n_blocks, dropout)

    def forward(self, features: torch.Tensor, embeds: torch.Tensor, *,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # [(B,) W, H] x2 -> [(B,) W, H]
        owner, h = type(self).__name__, self.config["hidden"]
        unbatched, mask, (f, e) = _batch(owner, mask, ("features", features, (h,)), ("embeds", embeds, (h,)))
        x, _ = self._enter(f, e)
        return _finish(self.trunk(x), mask, unbatched)

    def _enter(self, f: torch.Tensor, e: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, None]:
        return self.pos(self.fc(torch.cat([f, e], dim=-1)), type(self).__name__, offset), None  # [B, W, H]

    def _leave(self, out: torch.Tensor, ctx: None) -> torch.Tensor:
        return out


class FusionAdapter(nn.Module):
    """L5F, fixed: gated fusion of drafter and target rows ``<= t`` predicting the target's row ``t + 1`` (the
    original fused the same-position target row into the input, which leaked the answer). ``a = in_proj(d_t)``,
    ``c = [a ; f_t]``, ``g = sigmoid(Linear c)``, ``fused = g a + (1 - g) f_t``, ``x = LN(fused + Linear c) + pos``
    (that Linear Xavier-init), causal block(s), ``y = f_t + alpha (Linear(LN x) - f_t)``. ``context = max_len``."""

    shift = 1

    def __init__(self, drafter_hidden: int, target_hidden: int, heads: int = 8, ffn: int | None = None,
                 n_blocks: int = 1, dropout: float = 0.1, alpha: float = 0.1, max_len: int = 128) -> None:
        super().__init__()
        sizes = _attention_sizes(target_hidden, heads, ffn, n_blocks, max_len)
        self.config = {"drafter_hidden": int(drafter_hidden), "target_hidden": int(target_hidden), **sizes,
                       "dropout": float(dropout), "alpha": float(alpha)}
        self.context = sizes["max_len"]
        self.in_proj = nn.Linear(drafter_hidden, target_hidden) if drafter_hidden != target_hidden else None
        self.gate = nn.Linear(2 * target_hidden, target_hidden)
        self.fuse = nn.Linear(2 * target_hidden, target_hidden)
        nn.init.xavier_uniform_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)
        self.input_norm = nn.LayerNorm(target_hidden)
        self.pos = _Positions(max_len, target_hidden)
        self.trunk = _Trunk(target_hidden, heads, sizes["ffn"], n_blocks, dropout)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, d: torch.Tensor, features: torch.Tensor, *,
                mask: torch.Tensor | None = None) -> torch.Tensor:  # [(B,) W, Hd], [(B,) W, Ht] -> [(B,) W, Ht]
        owner = type(self).__name__
        unbatched, mask, (x, f) = _batch(owner, mask, ("drafter states", d, (self.config["drafter_hidden"],)),
                                         ("features", features, (self.config["target_hidden"],)))
        x, f = self._enter(x, f)
        return _finish(self._leave(self.trunk(x), f), mask, unbatched)

    def _enter(self, x: torch.Tensor, f: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.in_proj(x) if self.in_proj is not None else x  # [B, W, Ht]
        c = torch.cat([a, f], dim=-1)  # [B, W, 2 Ht]
        g = torch.sigmoid(self.gate(c))
        return self.pos(self.input_norm(g * a + (1 - g) * f + self.fuse(c)), type(self).__name__, offset), f

    def _leave(self, out: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return f + self.alpha * (out - f)


class Eagle3Head(nn.Module):
    """EAGLE-3 style head on several of the target's layers. Row t's layer states ``[n_layers, H]`` (low, mid, high,
    in the order the feature store keeps them) are fused by ``fc: n_layers H -> H`` (no bias; with ``norm_layers``
    each layer is LayerNorm-ed first, since intermediate residual streams have very different scales: a departure
    from EAGLE-3); ``x = Linear([LN h_t ; LN e_t]) + pos`` (2H -> H); causal block(s); ``out = Linear(LN x)``
    (identity-init) = the predicted ``f_{t+1}``, the feature the target's LM head reads.

    Multi-step drafting feeds the head its own output in place of the fused features: ``forward(..., fused=True)``
    takes ``[W, H]`` features already in the fused space (:meth:`fuse` of true rows, or the head's own outputs, in any
    mix). :meth:`rollout` is EAGLE-3's training-time test, for training and evaluation alike.
    ``layers_needed``: how many target layers per row; ``context = max_len``."""

    shift = 1

    def __init__(self, hidden: int, layers_needed: int = 3, heads: int = 8, ffn: int | None = None,
                 n_blocks: int = 1, dropout: float = 0.1, max_len: int = 128, norm_layers: bool = True) -> None:
        super().__init__()
        if layers_needed < 1:
            raise ValueError(f"layers_needed={layers_needed}: expected >= 1")
        sizes = _attention_sizes(hidden, heads, ffn, n_blocks, max_len)
        self.config = {"hidden": int(hidden), "layers_needed": int(layers_needed), **sizes, "dropout": float(dropout),
                       "norm_layers": bool(norm_layers)}
        self.context = sizes["max_len"]
        self.layers_needed = int(layers_needed)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(layers_needed)]) if norm_layers \
            else None
        self.fc = nn.Linear(layers_needed * hidden, hidden, bias=False)
        self.hidden_norm = nn.LayerNorm(hidden)
        self.embed_norm = nn.LayerNorm(hidden)
        self.in_fc = nn.Linear(2 * hidden, hidden)
        self.pos = _Positions(max_len, hidden)
        self.trunk = _Trunk(hidden, heads, sizes["ffn"], n_blocks, dropout)

    def fuse(self, layers: torch.Tensor) -> torch.Tensor:
        """``[..., n_layers, H] -> [..., H]``: the true rows in the space the head's own outputs are fed back in."""
        if layers.dim() < 2 or tuple(layers.shape[-2:]) != (self.layers_needed, self.config["hidden"]):
            raise ValueError(f"Eagle3Head.fuse: layers of shape {list(layers.shape)}; expected [..., "
                             f"{self.layers_needed}, {self.config['hidden']}]")
        if self.layer_norms is not None:
            layers = torch.stack([norm(layers[..., i, :]) for i, norm in enumerate(self.layer_norms)], dim=-2)
        return self.fc(layers.flatten(-2))

    def _inputs(self, h: torch.Tensor, e: torch.Tensor, offset: int = 0) -> torch.Tensor:  # -> the trunk's input
        return self.pos(self.in_fc(torch.cat([self.hidden_norm(h), self.embed_norm(e)], dim=-1)), "Eagle3Head",
                        offset)

    def _enter(self, f: torch.Tensor, e: torch.Tensor, offset: int = 0, fused: bool = False) -> tuple[torch.Tensor,
                                                                                                       None]:
        return self._inputs(f if fused else self.fuse(f), e, offset), None

    def _leave(self, out: torch.Tensor, ctx: None) -> torch.Tensor:
        return out

    def forward(self, features: torch.Tensor, embeds: torch.Tensor, fused: bool = False, *,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``features``: ``[(B,) W, n_layers, H]`` (``fused=False``) or ``[(B,) W, H]`` (``fused=True``); ``embeds``
        ``[(B,) W, H]`` (row t: token t's). Output row t predicts the target's row ``t + 1``."""
        h = self.config["hidden"]
        row = (h,) if fused else (self.layers_needed, h)
        unbatched, mask, (f, e) = _batch("Eagle3Head", mask, ("features", features, row), ("embeds", embeds, (h,)))
        x, _ = self._enter(f, e, fused=fused)
        return _finish(self.trunk(x), mask, unbatched)

    def rollout(self, layers: torch.Tensor, tokens_embeds: torch.Tensor, steps: int, *,
                mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """EAGLE-3's training-time test: ``steps`` drafting steps for every prefix at once.

        ``layers [(B,) T, n_layers, H]`` are the target's true rows, ``tokens_embeds [(B,) T, H]`` the embeddings of
        the tokens they chose. Returns ``steps`` tensors ``[(B,) T, H]``; row ``t`` of step ``s`` predicts the
        target's row ``t + 1 + s`` (whose LM-head row drafts token ``t + 1 + s``) as drafting from row ``t`` would:
        the head reads the true rows ``0..t`` (fused) and, as rows ``t + 1 .. t + s``, its own predictions
        ``step[0][t], ..., step[s - 1][t]``, each with the embedding of the true token of that row (teacher-forced
        tokens; when drafting they are the drafted tokens). Step 0 equals ``forward(layers, tokens_embeds)``.
        Row ``t`` of step ``s`` is defined for ``t + s <= L - 1`` (L: the sequence's real length; other rows are 0)
        and has a target only for ``t + s <= L - 2``: mask the loss with that.

        One pass per step over the whole sequence: step ``s``'s query at row ``p = t + s`` attends to the true rows
        ``<= t`` and to the step-``j`` rows at ``t + j`` (j = 1..s), EAGLE-3's diagonal mask."""
        if steps < 1:
            raise ValueError(f"Eagle3Head.rollout: steps={steps}; expected >= 1")
        h = self.config["hidden"]
        unbatched, mask, (lay, e) = _batch("Eagle3Head.rollout", mask, ("layers", layers, (self.layers_needed, h)),
                                           ("tokens_embeds", tokens_embeds, (h,)))
        b, t_len = e.shape[:2]
        lengths = mask.sum(1)  # [B]
        rows = torch.arange(t_len, device=e.device)
        streams: list[list[torch.Tensor]] = [[] for _ in self.trunk.blocks]  # per block: each step's block inputs
        feats = self.fuse(lay)  # [B, T, H] step 0: the true rows
        results = []
        for s in range(steps):
            # step s, row p (= prefix t + s) may see step 0 at rows <= p - s and step j at row p - s + j (j = 1..s)
            allowed = torch.cat([rows[None, :] <= rows[:, None] - s]
                                + [rows[None, :] == rows[:, None] - s + j for j in range(1, s + 1)], dim=1)
            x = self._inputs(feats, e)  # [B, T, H]
            for block, past in zip(self.trunk.blocks, streams):
                prev = torch.cat(past, dim=1) if past else None
                past.append(x)
                x = block(x, allowed, prev)
            raw = self.trunk.out(self.trunk.out_norm(x))  # [B, T, H] row p predicts the target's row p + 1
            step = torch.cat([raw[:, s:], raw.new_zeros(b, s, h)], dim=1)  # row t = raw row t + s
            valid = rows[None, :] + s < lengths[:, None]  # [B, T]
            results.append(_finish(step, valid, unbatched))
            feats = torch.cat([raw.new_zeros(b, 1, h), raw[:, :-1]], dim=1)  # step s + 1 reads, at row p, raw[p - 1]
        return results


# -- row-by-row evaluation for the engine -------------------------------------------------------------------------------
class Stepper:
    """A module of this zoo evaluated one row at a time, as the engine drafts: :meth:`step` takes the next row's
    inputs (each ``[row shape]``, unbatched, in the module's calling order) and returns the module's output row for
    it, equal (to float rounding) to ``module(all rows so far)[-1]``; :meth:`truncate` forgets rows after the first
    ``n`` (a rejected draft).

    The attention modules keep each block's keys and values, so a step costs one row's work plus attention over the
    cached rows, instead of the whole window again. Past ``context`` rows the engine's window slides and every row's
    position changes: the window of the last ``context`` rows is then recomputed each step. Position-wise modules
    (``context == 1``) just map the new row. ``options``: keyword arguments of every call (``fused=True``)."""

    def __init__(self, module: nn.Module, **options: Any) -> None:
        self.module = module.eval()
        self.options = options
        self.context = int(getattr(module, "context", 1))
        self.incremental = hasattr(module, "_enter") and hasattr(module, "trunk")
        self.dtype = next(module.parameters()).dtype
        self.rows: list[tuple[torch.Tensor, ...]] = []
        self._caches: list[list[torch.Tensor]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def truncate(self, n: int) -> None:
        del self.rows[n:]
        for cache in self._caches:
            if cache and cache[0].shape[2] > n:
                cache[:] = [t[:, :, :n] for t in cache]

    @torch.no_grad()
    def step(self, *row: torch.Tensor | None) -> torch.Tensor:
        return self.step_many(*[None if r is None else r[None] for r in row])[-1]

    @torch.no_grad()
    def step_many(self, *rows: torch.Tensor | None) -> torch.Tensor:
        """Several new rows at once (each input ``[M, row shape]``), in one pass: their outputs ``[M, H]``."""
        rows = tuple(None if r is None else r.to(self.dtype) for r in rows)
        new = len(next(r for r in rows if r is not None))
        old = len(self.rows)
        self.rows.extend(zip(*[[None] * new if r is None else list(r) for r in rows]))
        m, n = self.module, len(self.rows)

        if not self.incremental or self.context == 1:
            if self.context == 1:
                return m(*rows, **self.options)
            return torch.stack([self._full(i) for i in range(old, n)])
        if n > self.context:  # the window slides: recompute it for each new row past max_len
            self._caches = []
            return torch.stack([self._full(i) for i in range(old, n)])
        if len(self._caches) != len(m.trunk.blocks) or any((c[0].shape[2] if c else 0) != old for c in self._caches):
            self._rebuild(old)
        x, ctx = m._enter(*[None if r is None else r[None] for r in rows], offset=old, **self.options)
        for block, cache in zip(m.trunk.blocks, self._caches):
            x = block.step(x, cache)
        return m._leave(m.trunk.out(m.trunk.out_norm(x)), ctx)[0]

    def _full(self, i: int) -> torch.Tensor:
        """Row ``i``'s output from the whole window ending at it."""
        w = self.rows[max(0, i + 1 - self.context): i + 1]
        return self.module(*[None if c[0] is None else torch.stack(c) for c in zip(*w)], **self.options)[-1]

    def _rebuild(self, n: int) -> None:
        """Caches for the first ``n`` rows, from scratch (after the window slid back under ``context``)."""
        self._caches = [[] for _ in self.module.trunk.blocks]
        saved, self.rows = self.rows, []
        if n:
            self.step_many(*[None if c[0] is None else torch.stack(c) for c in zip(*saved[:n])])
        self.rows = saved


# -- checkpoints: safetensors with a type tag --------------------------------------------------------------------------
KINDS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (LinearAdapter, FusionHead, LinearHead, BottleneckAdapter, StackedBottleneckAdapter,
                                  WideBottleneckAdapter, AttentionAdapter, EagleAdapter, TargetHead, FusionAdapter,
                                  Eagle3Head)}


def save_module(module: nn.Module, path, **config: Any) -> None:
    """Weights of an adapter or head as safetensors; the metadata names its class (``type``) and the constructor
    arguments (``config``), so :func:`load_module` rebuilds it without pickle. The arguments are the module's own
    record (``module.config``); ``config`` given here adds to it and must agree with it."""
    kind = type(module).__name__
    if kind not in KINDS:
        raise ValueError(f"{kind}: not a registered adapter/head kind ({sorted(KINDS)})")
    own = dict(getattr(module, "config", {}))
    clash = {k: (v, own[k]) for k, v in config.items() if k in own and own[k] != v}
    if clash:
        raise ValueError(f"save_module({kind}): config {clash} (given, built with) disagrees with the module")
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"type": kind, "config": json.dumps({**own, **config})})


def load_module(path) -> nn.Module:
    """The adapter or head saved by :func:`save_module` at ``path`` (eval mode, float32)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    kind = meta.get("type")
    if kind not in KINDS:
        raise ValueError(f"{path}: type tag {kind!r}; expected one of {sorted(KINDS)} (a file from save_module)")
    module = KINDS[kind](**json.loads(meta.get("config", "{}")))
    module.load_state_dict(load_file(str(path)))
    return module.eval()
