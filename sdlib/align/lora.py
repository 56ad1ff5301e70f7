"""L6: LoRA on the drafter's language model (peft), trained so that the drafter's *own* last-layer states, through a
linear map into the target's width, match the target's states on the same text.

Unlike L1-L5F, which read frozen drafter states, L6 changes the drafter: low-rank updates of the attention
projections (q, k, v, o; rank 16, alpha 32, dropout 0.05, the original's settings, `seed_system.md` §5.4) of the
language model only (the original also attached LoRA to the CLIP tower, where it got no gradient). The drafter is
teacher-forced on the target's answer from its own prompt and event input, with its post-norm states read at the rows
that predict each answer token, the same rows as stage 03's store (the original's version of this compared row
``j`` with the target's row ``j + 1``). Loss as for the other adapters: MSE + cosine + cross-entropy through the
frozen target LM head; AdamW, cosine decay, selection on validation loss.

The vision path runs once per clip without gradient; only the LoRA matrices and the map to the target's width train.
Saved as one safetensors file (LoRA tensors, the map, a type tag and the LoRA settings); :func:`load_lora` rebuilds
it on a drafter.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from sdlib.align.extract import sample_id
from sdlib.core import progress as progress_bar
from sdlib.data.layout import load_clip, read_instructions

LORA_TYPE = "L6LoRA"


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    epochs: int = 3
    lr: float = 1e-4 * 10  # the original's 1e-4 was for a 7B model at batch 16; small models take a larger step
    accumulate: int = 8  # answers per optimizer step
    cos_weight: float = 0.5
    ce_weight: float = 0.1
    patience: int = 2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "targets": list(self.targets)}


def language_model(drafter: Any) -> torch.nn.Module:
    """The drafter's decoder stack (the Llama), where LoRA goes."""
    return drafter.model.model


def attach_lora(drafter: Any, cfg: LoraConfig, target_hidden: int) -> torch.nn.Linear:
    """Inject LoRA into the drafter's language-model layers (in place; base weights frozen) and return the trainable
    map from the drafter's width to the target's."""
    from peft import LoraConfig as PeftLora, inject_adapter_in_model

    lm = language_model(drafter)
    for p in drafter.model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(PeftLora(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                     target_modules=list(cfg.targets), bias="none"), lm.layers)
    for name, p in lm.named_parameters():
        p.requires_grad_("lora_" in name)
    hd = lm.config.hidden_size
    proj = torch.nn.Linear(hd, target_hidden)
    if hd == target_hidden:
        with torch.no_grad():
            proj.weight.copy_(torch.eye(hd))
            proj.bias.zero_()
    return proj


def lora_parameters(drafter: Any) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in language_model(drafter).named_parameters() if "lora_" in n}


def drafter_rows(drafter: Any, inputs: Any, tokens: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """The drafter's post-norm states ``[n, H]`` at the rows that predict ``tokens`` [n] (its prompt's last
    position, then each answer token but the last), in one forward with autograd (for LoRA training)."""
    lm = language_model(drafter)
    prompt, _, _ = lm.embed_with_events(inputs.input_ids.to(drafter.device), visual)  # [1, P, H]
    parts = [prompt]
    if len(tokens) > 1:
        parts.append(lm.embed_tokens(tokens[:-1].to(drafter.device))[None])
    out = lm(inputs_embeds=torch.cat(parts, 1), use_cache=False)
    p = prompt.shape[1]
    return out.last_hidden_state[0, p - 1: p - 1 + len(tokens)].float()


def _loss(y, f, tok, head, cfg: LoraConfig):
    cos = F.cosine_similarity(y, f, dim=-1)
    logits = y @ head.weight.T + (head.bias if head.bias is not None else 0)
    loss = F.mse_loss(y, f) + cfg.cos_weight * (1 - cos).mean() + cfg.ce_weight * F.cross_entropy(logits, tok)
    return loss, cos, logits.argmax(-1) == tok


@torch.no_grad()
def lora_examples(drafter: Any, split_dir: Path, drafter_visual: Callable[[Any], Any], store: Any,
                  sample_ids: Sequence[str] | None = None) -> list[tuple[Any, torch.Tensor, dict]]:
    """``(drafter inputs, encoded event input, stored sample)`` for the store's samples (all, or ``sample_ids``):
    the question and clip come from the split's instruction records; the vision path runs once per clip."""
    wanted = set(store.sample_ids if sample_ids is None else sample_ids)
    by_id = {}
    for rec in read_instructions(split_dir):
        sid = sample_id(rec["clip_id"], rec["conversations"][0]["value"])
        if sid in wanted:
            by_id[sid] = rec
    missing = sorted(wanted - set(by_id))
    if missing:
        raise ValueError(f"{split_dir}: no instruction record for stored samples {missing[:3]}")
    # one pass over the store: each shard read (and checked) once, not once per sample
    stored = {sid: {k: v.clone() for k, v in sample.items()}
              for sid, sample in store.stream(shuffle=False, prefetch=False, sample_ids=sorted(wanted))}
    out, clip_id, visual = [], None, None
    for sid in sorted(wanted, key=lambda i: (by_id[i]["clip_id"], i)):
        rec = by_id[sid]
        if rec["clip_id"] != clip_id:
            clip_id, visual = rec["clip_id"], None
            view = drafter_visual(load_clip(split_dir, rec))
        inputs = drafter.prepare(rec["conversations"][0]["value"], view)
        if visual is None:
            visual = drafter.encode_visual(inputs)  # [N, H] event tokens, no gradient
        out.append((inputs, visual, stored[sid]))
    return out


def train_lora(drafter: Any, proj: torch.nn.Linear, train: Sequence[tuple], val: Sequence[tuple], head: Any,
               cfg: LoraConfig, out: Path, progress: bool = True, log: Callable = print) -> dict[str, Any]:
    """Train the attached LoRA and ``proj``. ``train``/``val``: ``(inputs, visual, sample)`` per answer, where
    ``visual`` is the drafter's encoded event input and ``sample`` the store's tensors (``tokens``, ``target``).
    Keeps the best-on-validation weights in ``out`` (:func:`save_lora`) and in the modules."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    params = list(lora_parameters(drafter).values()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps = math.ceil(len(train) / cfg.accumulate) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    history, best, bad = [], float("inf"), 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        drafter.model.train()
        order = torch.randperm(len(train), generator=g).tolist()
        tot, rows = 0.0, 0
        opt.zero_grad(set_to_none=True)
        for i, j in enumerate(progress_bar(order, desc=f"L6 epoch {epoch + 1}", disable=not progress)):
            inputs, visual, s = train[j]
            y = proj(drafter_rows(drafter, inputs, s["tokens"], visual))
            loss, _, _ = _loss(y, s["target"].float(), s["tokens"], head, cfg)
            (loss / cfg.accumulate).backward()
            tot, rows = tot + float(loss.detach()) * len(y), rows + len(y)
            if (i + 1) % cfg.accumulate == 0 or i + 1 == len(order):
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        v = evaluate_lora(drafter, proj, val, head, cfg)
        history.append({"epoch": epoch + 1, "train_loss": tot / max(1, rows), "val_loss": v["loss"],
                        "val_cos": v["cos"], "val_accept_0.90": v["accept_0.90"], "val_token_top1": v["top1"],
                        "seconds": time.perf_counter() - t0})
        log(f"L6 epoch {epoch + 1}: val {v['loss']:.4f} top1 {v['top1']:.3f}")
        if v["loss"] < best:
            best, bad = v["loss"], 0
            save_lora(drafter, proj, cfg, out)
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    drafter.model.eval()
    load_lora_weights(drafter, proj, out)
    return {"history": history, "best_val": best, "seconds": time.perf_counter() - t0,
            "params": sum(p.numel() for p in params),
            "best_epoch": min(range(len(history)), key=lambda i: history[i]["val_loss"]) + 1}


@torch.no_grad()
def lora_rows(drafter: Any, proj: torch.nn.Linear, examples: Sequence[tuple]) -> list[torch.Tensor]:
    """The mapped drafter states ``[n, H_target]`` of each example (eval mode)."""
    drafter.model.eval()
    return [proj(drafter_rows(drafter, inputs, s["tokens"], visual)) for inputs, visual, s in examples]


def evaluate_lora(drafter, proj, examples, head, cfg: LoraConfig) -> dict[str, float]:
    ys = lora_rows(drafter, proj, examples)
    loss_sum, cos_sum, acc, top, n = 0.0, 0.0, 0.0, 0.0, 0
    for y, (_, _, s) in zip(ys, examples):
        loss, cos, hit = _loss(y, s["target"].float(), s["tokens"], head, cfg)
        loss_sum += float(loss) * len(y)
        cos_sum += float(cos.sum())
        acc += float((cos > 0.9).sum())
        top += float(hit.sum())
        n += len(y)
    return {"loss": loss_sum / max(1, n), "cos": cos_sum / max(1, n), "accept_0.90": acc / max(1, n),
            "top1": top / max(1, n)}


def save_lora(drafter: Any, proj: torch.nn.Linear, cfg: LoraConfig, path: Path) -> None:
    tensors = {f"lora.{k}": v.detach().contiguous().clone() for k, v in lora_parameters(drafter).items()}
    tensors.update({f"proj.{k}": v.detach().contiguous().clone() for k, v in proj.state_dict().items()})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"type": LORA_TYPE, "config": json.dumps(cfg.to_dict())})
    os.replace(tmp, path)


def load_lora_weights(drafter: Any, proj: torch.nn.Linear, path: Path) -> None:
    """Load a :func:`save_lora` file into a drafter that already has the same LoRA attached."""
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("type") != LORA_TYPE:
            raise ValueError(f"{path}: not an L6 LoRA file (type tag {(f.metadata() or {}).get('type')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    params = lora_parameters(drafter)
    missing = sorted(set(params) - {k[5:] for k in tensors if k.startswith("lora.")})
    if missing:
        raise ValueError(f"{path}: no tensors for {missing[:3]} (a LoRA of other settings?)")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"lora.{k}"])
    proj.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("proj.")})


def load_lora(drafter: Any, path: Path, target_hidden: int) -> torch.nn.Linear:
    """Attach the LoRA saved at ``path`` to ``drafter`` (in place) and return its map to the target's width."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("type") != LORA_TYPE:
        raise ValueError(f"{path}: not an L6 LoRA file (type tag {meta.get('type')!r})")
    raw = json.loads(meta["config"])
    cfg = LoraConfig(**{**raw, "targets": tuple(raw["targets"])})
    proj = attach_lora(drafter, cfg, target_hidden)
    load_lora_weights(drafter, proj, path)
    drafter.model.eval()
    return proj


@torch.no_grad()
def predict_lora(drafter: Any, proj: torch.nn.Linear, examples: Sequence[tuple]) -> dict[str, Any]:
    """Mapped drafter states on ``examples`` in the layout of :func:`sdlib.align.train.predict` (same position:
    ``shift`` 0), with the stored ``target``, ``tokens``, ``offsets`` and ``fact`` of the same samples."""
    ys = lora_rows(drafter, proj, examples)
    samples = [s for _, _, s in examples]
    offsets = torch.zeros(len(ys) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor([len(y) for y in ys]), 0)
    out = {"preds": [torch.cat(ys)], "target": torch.cat([s["target"].float() for s in samples]),
           "tokens": torch.cat([s["tokens"] for s in samples]), "offsets": offsets, "shift": 0}
    if all("fact" in s for s in samples):
        out["fact"] = torch.cat([s["fact"] for s in samples])
    return out


def run_l6(pair: Any, features_dir: Path, head: Any, cfg: LoraConfig, train_answers: int, out_dir: Path, *,
           progress: bool = True) -> dict[str, Any]:
    """Train L6 on the first ``train_answers`` training answers of stage 03's store (all when 0), select on its
    validation store, and keep ``out_dir/best.safetensors``, ``history.json`` and ``config.json``; a finished run
    with the same settings (``DONE``) is reused. Returns the run's summary."""
    from sdlib.align.store import FeatureStore

    out_dir = Path(out_dir)
    train_store, val_store = FeatureStore(features_dir / "train"), FeatureStore(features_dir / "val")
    ids = sorted(train_store.sample_ids)[: train_answers or None]
    config = {"lora": cfg.to_dict(), "train_answers": len(ids), "features": Path(features_dir).name,
              "pair": pair.key}
    done = out_dir / "DONE"
    if done.is_file() and json.loads((out_dir / "config.json").read_text()) == config:
        return {**json.loads(done.read_text()), "cached": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    train = lora_examples(pair.drafter, pair.data_root / "train", pair.drafter_visual, train_store, ids)
    val = lora_examples(pair.drafter, pair.data_root / "val", pair.drafter_visual, val_store)
    proj = attach_lora(pair.drafter, cfg, int(head.weight.shape[1]))
    res = train_lora(pair.drafter, proj, train, val, head, cfg, out_dir / "best.safetensors", progress=progress,
                     log=lambda *_: None)
    (out_dir / "history.json").write_text(json.dumps(res["history"], indent=1))
    summary = {"name": "L6", "kind": "LoRA", "params": res["params"], "epochs_run": len(res["history"]),
               "best_epoch": res["best_epoch"], "best_val": res["best_val"], "seconds": res["seconds"],
               "dir": str(out_dir)}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, done)
    return {**summary, "cached": False}
