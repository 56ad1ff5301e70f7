"""What the feature-based drafters take as constructor arguments: an *adapter* (drafter hidden states -> the
target's hidden space) and a *head* (the target's own features and token embeddings -> its next feature, EAGLE-style).

The adapter stage trains the real ones; the engine only needs their calling convention, which these modules define
and the smallest member of each family implements (with random weights they still give lossless drafters, which
the losslessness suite checks).

- An adapter maps a causal window of drafter hidden states ``[W, H_drafter]`` (oldest first) to ``[W, H_target]``;
  row ``i`` may look at rows ``<= i`` only. ``context`` is the window ``W`` it wants (1: position-wise).
- A head maps a window of target features ``[W, H]`` and the embeddings of the tokens that follow each feature
  ``[W, H]`` to the predicted next features ``[W, H]`` (row ``i``: the feature at the position of token ``i``, which
  predicts the token after it through the target's LM head). ``context`` as for adapters.
"""
from __future__ import annotations

import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn


class LinearAdapter(nn.Module):
    """Position-wise affine map from the drafter's hidden size to the target's (the simplest adapter)."""

    context = 1

    def __init__(self, drafter_hidden: int, target_hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(drafter_hidden, target_hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [W, Hd] -> [W, Ht]
        return self.proj(hidden)


class FusionHead(nn.Module):
    """EAGLE-style one-step head without attention: ``f_next = f + MLP([f ; e])`` (position-wise)."""

    context = 1

    def __init__(self, hidden: int, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or 2 * hidden
        self.fuse = nn.Sequential(nn.Linear(2 * hidden, inner), nn.SiLU(), nn.Linear(inner, hidden))

    def forward(self, features: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:  # [W, H] x2 -> [W, H]
        return features + self.fuse(torch.cat([features, embeds], dim=-1))


class LinearHead(nn.Module):
    """The simplest head: ``f_next = W [f ; e] + b`` (position-wise; fits in closed form, :mod:`sdlib.align.linear`)."""

    context = 1

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * hidden, hidden)

    def forward(self, features: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:  # [W, H] x2 -> [W, H]
        return self.proj(torch.cat([features, embeds], dim=-1))


# -- checkpoints: safetensors with a type tag --------------------------------------------------------------------------
KINDS: dict[str, type[nn.Module]] = {"LinearAdapter": LinearAdapter, "FusionHead": FusionHead,
                                     "LinearHead": LinearHead}


def save_module(module: nn.Module, path, **config: int) -> None:
    """Weights of an adapter or head as safetensors; the metadata names its class (``type``) and the constructor
    arguments (``config``), so :func:`load_module` rebuilds it without pickle."""
    kind = type(module).__name__
    if kind not in KINDS:
        raise ValueError(f"{kind}: not a registered adapter/head kind ({sorted(KINDS)})")
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"type": kind, "config": json.dumps(config)})


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
