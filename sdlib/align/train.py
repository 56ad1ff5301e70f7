"""Training of the adapters and heads (:mod:`sdlib.align.heads`) on a feature store, in plain PyTorch.

What a module learns is fixed by its kind (:data:`TASKS`): which stored tensors it reads and how far ahead its
output row looks (``shift``: 0 for an adapter, whose row ``t`` predicts the target's row ``t``; 1 for a
next-position head, whose row ``t`` predicts the target's row ``t + 1``, so the row it predicts is never among its
inputs). For an EAGLE-3-style head the loss also covers its own multi-step drafts (``rollout_steps``).

Loss per predicted row: ``MSE(y, f) + cos_weight * (1 - cos(y, f)) + ce_weight * CE(lm_head(y), token)`` where
``f`` is the target's state and ``token`` the target's own greedy token there (what ``lm_head(f)`` chose), through
the target's frozen LM head. AdamW, cosine learning rate over all steps (after a short warm-up), gradient clipping,
one validation pass per epoch; early stopping and the kept ("best") weights follow the **validation** loss only
(the test split is never read here). Seeded; a killed run resumes from its last finished epoch with the same
data order, so it ends with the weights an uninterrupted run would have. ``precision="bf16"`` runs the training
forward passes under CPU autocast (bfloat16 matrix products, float32 weights, loss and optimizer state); validation
always runs in float32, as every later use of the module does.

Each run writes ``<out>/<name>/``: ``config.json``, ``history.json`` (per epoch: train and val loss, val cosine,
val accept@0.90, val token top-1, learning rate, seconds), ``best.safetensors`` (with its type tag,
:func:`sdlib.align.heads.save_module`), and ``DONE`` when finished; ``last/`` holds the resume state.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from sdlib.align import heads
from sdlib.align.store import FeatureStore
from sdlib.core import progress as progress_bar
from sdlib.models.train import load_optimizer, load_weights, save_optimizer, save_weights


@dataclass(frozen=True)
class Task:
    """What a module kind reads (stored keys, and ``embeds``: the target's embedding of each row's token) and how
    many rows ahead its output row predicts.

    ``same_weight`` > 0 reproduces the original research's objective for its next-position modules (B1, L5F): that
    share of the loss compares the output with the target row at the *same* position, which the input of B1 and L5F
    already holds (the leak), the rest with the next row. The book's modules use 0."""

    inputs: tuple[str, ...]
    shift: int
    same_weight: float = 0.0


#: What each kind reads; how far ahead it predicts is the class's own ``shift`` (one home for it: the class).
TASKS: dict[str, Task] = {kind: Task(inputs, heads.KINDS[kind].shift) for kind, inputs in {
    "LinearAdapter": ("drafter",),
    "BottleneckAdapter": ("drafter",),
    "StackedBottleneckAdapter": ("drafter",),
    "WideBottleneckAdapter": ("drafter",),
    "AttentionAdapter": ("drafter",),
    "EagleAdapter": ("drafter", "embeds"),
    "FusionAdapter": ("drafter", "target"),
    "LinearHead": ("target", "embeds"),
    "FusionHead": ("target", "embeds"),
    "TargetHead": ("target", "embeds"),
    "Eagle3Head": ("target_layers", "embeds"),
}.items()}


def task_of(module: torch.nn.Module) -> Task:
    kind = type(module).__name__
    if kind not in TASKS:
        raise ValueError(f"{kind}: no training task defined (known: {sorted(TASKS)})")
    return TASKS[kind]


@dataclass(frozen=True)
class AdapterTrainConfig:
    epochs: int = 8
    batch_size: int = 32  # samples (sequences) per step
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr: float = 1e-6
    grad_clip: float = 1.0
    patience: int = 3  # epochs without a better validation loss before stopping
    cos_weight: float = 0.5
    ce_weight: float = 0.1  # token cross-entropy through the frozen target LM head
    rollout_steps: int = 3  # EAGLE-3-style heads: steps of their own drafts in the loss
    seed: int = 0
    threads: int = 1
    precision: str = "fp32"  # training matmuls: "fp32", or "bf16" (autocast; weights, loss and validation fp32)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: expected one of {PRECISIONS}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRECISIONS = ("fp32", "bf16")


def cpu_has_bf16_matmul(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16), where bf16 training steps are faster
    (B1 on the scale pair: 31 s instead of 43 s, same validation loss to 3 digits); without it bf16 is emulated
    and slower."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_precision(precision: str) -> str:
    """``"auto"``: bf16 where :func:`cpu_has_bf16_matmul`, else fp32; otherwise ``precision`` itself."""
    if precision == "auto":
        return "bf16" if cpu_has_bf16_matmul() else "fp32"
    return precision


@dataclass
class FrozenTarget:
    """The frozen target pieces a loss needs: LM head (``weight`` [V, H], ``bias``) and token embeddings [V, H]."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    embed: torch.Tensor

    @classmethod
    def load(cls, path: str | Path) -> "FrozenTarget":
        t = load_file(str(path))
        missing = {"lm_head.weight", "embed_tokens.weight"} - set(t)
        if missing:
            raise ValueError(f"{path}: not an exported target head (missing {sorted(missing)}; "
                             f"sdlib.align.extract.export_lm_head writes it)")
        return cls(t["lm_head.weight"].float(), t.get("lm_head.bias"), t["embed_tokens.weight"].float())

    def logits(self, y: torch.Tensor) -> torch.Tensor:
        out = y @ self.weight.T
        return out + self.bias if self.bias is not None else out


# -- batches ----------------------------------------------------------------------------------------------------------
def collate(samples: Sequence[dict[str, torch.Tensor]], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Pad a list of samples to ``[B, T_max, ...]`` (float32 states), with ``mask`` [B, T_max] (True = a row)."""
    n = [len(s["tokens"]) for s in samples]
    t_max = max(n)
    out: dict[str, torch.Tensor] = {"mask": torch.arange(t_max)[None] < torch.tensor(n)[:, None]}
    for key in {"tokens", *keys}:
        first = samples[0][key]
        dtype = torch.long if key == "tokens" else torch.float32
        x = torch.zeros((len(samples), t_max, *first.shape[1:]), dtype=dtype)
        for i, s in enumerate(samples):
            x[i, : n[i]] = s[key].to(dtype)
        out[key] = x
    return out


def batches(store: FeatureStore, batch_size: int, keys: Iterable[str], *, shuffle: bool, seed: int,
            sample_ids: Sequence[str] | None = None):
    keys = tuple(keys)
    buf = []
    for _, sample in store.stream(shuffle=shuffle, seed=seed, sample_ids=sample_ids):
        buf.append(sample)
        if len(buf) == batch_size:
            yield collate(buf, keys)
            buf = []
    if buf:
        yield collate(buf, keys)


def forward(module: torch.nn.Module, batch: dict[str, torch.Tensor], target_head: FrozenTarget,
            steps: int = 1, precision: str = "fp32") -> list[torch.Tensor]:
    """The module's predictions ``[B, T, H]`` (float32) on a padded batch; for an EAGLE-3-style head one per rollout
    step (step s: row t predicts the target's row t + 1 + s). ``precision`` "bf16" runs the module under CPU
    autocast (matmuls in bfloat16, float32 weights)."""
    task = task_of(module)
    args = []
    for name in task.inputs:
        args.append(target_head.embed[batch["tokens"]] if name == "embeds" else batch[name])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        if type(module).__name__ == "Eagle3Head" and steps > 1:
            preds = list(module.rollout(*args, steps=steps, mask=batch["mask"]))
        else:
            preds = [module(*args, mask=batch["mask"])]
    return [p.float() for p in preds]


def losses(preds: Sequence[torch.Tensor], batch: dict[str, torch.Tensor], shift: int, target_head: FrozenTarget,
           cfg: AdapterTrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over the predicted rows of every step, and per-row statistics (cosine, accept@0.90, top-1)."""
    total, stats, count = 0.0, {"cos": 0.0, "accept_0.90": 0.0, "top1": 0.0}, 0
    f, tok, mask = batch["target"], batch["tokens"], batch["mask"]
    for s, y in enumerate(preds):
        ahead = shift + s
        if ahead >= f.shape[1]:
            break
        y_s = y[:, : f.shape[1] - ahead]  # row t predicts target row t + ahead
        f_s, tok_s, m = f[:, ahead:], tok[:, ahead:], mask[:, ahead:]
        y_v, f_v, t_v = y_s[m], f_s[m], tok_s[m]  # [rows, H]
        if y_v.shape[0] == 0:
            continue
        cos = F.cosine_similarity(y_v, f_v, dim=-1)
        loss = F.mse_loss(y_v, f_v) + cfg.cos_weight * (1 - cos).mean()
        logits = target_head.logits(y_v)
        if cfg.ce_weight:
            loss = loss + cfg.ce_weight * F.cross_entropy(logits, t_v)
        total = total + loss
        with torch.no_grad():
            stats["cos"] += float(cos.sum())
            stats["accept_0.90"] += float((cos > 0.90).sum())
            stats["top1"] += float((logits.argmax(-1) == t_v).sum())
            count += y_v.shape[0]
    return total / max(1, len(preds)), {**{k: v / max(1, count) for k, v in stats.items()}, "rows": count}


def objective(preds: Sequence[torch.Tensor], batch: dict[str, torch.Tensor], task: Task, target_head: FrozenTarget,
              cfg: AdapterTrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of ``task`` (see :class:`Task`; statistics are those of its own shift)."""
    loss, st = losses(preds, batch, task.shift, target_head, cfg)
    if task.same_weight:
        same, _ = losses(preds[:1], batch, 0, target_head, cfg)
        loss = task.same_weight * same + (1 - task.same_weight) * loss
    return loss, st


@torch.no_grad()
def validate(module: torch.nn.Module, store: FeatureStore, target_head: FrozenTarget, cfg: AdapterTrainConfig,
             keys: Sequence[str], steps: int, sample_ids: Sequence[str] | None = None,
             task: Task | None = None) -> dict[str, float]:
    """Validation loss (the training objective) and first-step statistics over a whole store (no shuffling)."""
    module.eval()
    task = task or task_of(module)
    shift = task.shift
    loss_sum, rows, agg = 0.0, 0, {"cos": 0.0, "accept_0.90": 0.0, "top1": 0.0}
    for batch in batches(store, cfg.batch_size, keys, shuffle=False, seed=0, sample_ids=sample_ids):
        preds = forward(module, batch, target_head, steps)
        loss, st = objective(preds, batch, task, target_head, cfg)
        first = st if len(preds) == 1 else losses(preds[:1], batch, shift, target_head, cfg)[1]  # step 0's alone
        loss_sum += float(loss) * st["rows"]
        rows += st["rows"]
        for k in agg:
            agg[k] += first[k] * first["rows"]
    first_rows = max(1, rows // max(1, len(preds)))
    return {"loss": loss_sum / max(1, rows), **{k: v / first_rows for k, v in agg.items()}}


def _lr(step: int, total: int, cfg: AdapterTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def train_adapter(name: str, module: torch.nn.Module, train: FeatureStore, val: FeatureStore,
                  target_head: FrozenTarget, out_dir: str | Path, cfg: AdapterTrainConfig,
                  module_config: dict[str, Any], *, progress: bool = True, log: Callable = print,
                  task: Task | None = None) -> dict[str, Any]:
    """Train ``module`` (built from ``module_config`` by its class) and keep its best-on-validation weights.
    ``task`` replaces the class's :data:`TASKS` entry (e.g. the original's objective, ``same_weight`` 0.5).

    A finished run (``DONE``) is reused as is; a killed one resumes from ``last/``. Returns the run's summary:
    ``{"name", "kind", "params", "epochs_run", "best_epoch", "best_val", "seconds", "dir", "cached"}``."""
    run = Path(out_dir) / name
    done = run / "DONE"
    if done.is_file():
        summary = json.loads(done.read_text())
        return {**summary, "cached": True}
    run.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(name, module, train, val, target_head, run, cfg, module_config, progress, log,
                      task or task_of(module))
    finally:
        torch.set_num_threads(old_threads)


def _train(name, module, train, val, target_head, run, cfg, module_config, progress, log, task) -> dict[str, Any]:
    keys = tuple(k for k in task.inputs if k != "embeds") + ("target",)
    steps = cfg.rollout_steps if type(module).__name__ == "Eagle3Head" else 1
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(train.n_samples / cfg.batch_size)
    total = per_epoch * cfg.epochs
    kind = type(module).__name__
    _atomic_json(run / "config.json", {"name": name, "kind": kind, "module": module_config, "train": cfg.to_dict(),
                                       "task": asdict(task), "params": heads.param_count(module),
                                       "train_store": {"samples": train.n_samples, "fingerprint": train.fingerprint},
                                       "val_store": {"samples": val.n_samples}})
    history: list[dict[str, Any]] = []
    best_val, best_epoch, bad = float("inf"), -1, 0
    last = run / "last"
    if (last / "state.json").is_file():  # resume after the last finished epoch
        state = json.loads((last / "state.json").read_text())
        load_weights(module, last / "model.safetensors")
        load_optimizer(opt, last / "optim")
        torch.set_rng_state(load_file(str(last / "rng.safetensors"))["torch"])
        history, best_val, best_epoch, bad = state["history"], state["best_val"], state["best_epoch"], state["bad"]
        log(f"{name}: resuming after epoch {len(history)}")
    t0 = time.perf_counter() - sum(h["seconds"] for h in history)
    for epoch in range(len(history), cfg.epochs):
        if bad >= cfg.patience:
            break
        te = time.perf_counter()
        module.train()
        step0 = epoch * per_epoch
        run_loss, run_rows = 0.0, 0
        bar = progress_bar(total=per_epoch, desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", unit="step",
                           disable=not progress)
        for i, batch in enumerate(batches(train, cfg.batch_size, keys, shuffle=True, seed=cfg.seed * 1000 + epoch)):
            for g in opt.param_groups:
                g["lr"] = _lr(step0 + i, total, cfg)
            preds = forward(module, batch, target_head, steps, cfg.precision)
            loss, st = objective(preds, batch, task, target_head, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
            opt.step()
            run_loss += float(loss.detach()) * st["rows"]
            run_rows += st["rows"]
            bar.update(1)
        bar.close()
        v = validate(module, val, target_head, cfg, keys, steps, task=task)
        record = {"epoch": epoch + 1, "train_loss": run_loss / max(1, run_rows), "val_loss": v["loss"],
                  "val_cos": v["cos"], "val_accept_0.90": v["accept_0.90"], "val_token_top1": v["top1"],
                  "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - te}
        history.append(record)
        if v["loss"] < best_val:
            best_val, best_epoch, bad = v["loss"], epoch + 1, 0
            tmp = run / "best.safetensors.tmp"
            heads.save_module(module, tmp, **module_config)
            os.replace(tmp, run / "best.safetensors")
        else:
            bad += 1
        # the resume state, written after the epoch's best weights (a kill in between redoes at most one epoch)
        tmp_last = run / "last.tmp"
        shutil.rmtree(tmp_last, ignore_errors=True)
        tmp_last.mkdir()
        save_weights(module, tmp_last / "model.safetensors")
        save_optimizer(opt, tmp_last / "optim")
        save_file({"torch": torch.get_rng_state()}, str(tmp_last / "rng.safetensors"))
        (tmp_last / "state.json").write_text(json.dumps({"history": history, "best_val": best_val,
                                                         "best_epoch": best_epoch, "bad": bad}))
        shutil.rmtree(last, ignore_errors=True)
        os.replace(tmp_last, last)
        _atomic_json(run / "history.json", history)
        log(f"{name} epoch {epoch + 1}: train {record['train_loss']:.4f} val {v['loss']:.4f} cos {v['cos']:.3f} "
            f"top1 {v['top1']:.3f}")
    summary = {"name": name, "kind": kind, "params": heads.param_count(module), "epochs_run": len(history),
               "best_epoch": best_epoch, "best_val": best_val, "seconds": time.perf_counter() - t0, "dir": str(run)}
    _atomic_json(run / "DONE", summary)
    shutil.rmtree(last, ignore_errors=True)
    return {**summary, "cached": False}


# -- the zoo: the adapters and heads the book trains, sized from the pair's hidden sizes ----------------------------
#: name -> (class, what it is); every size inside follows the hidden sizes (:mod:`sdlib.align.heads`)
ZOO: dict[str, tuple[str, str]] = {
    "L1": ("BottleneckAdapter", "bottleneck, one residual block (drafter -> target, same position)"),
    "L2": ("StackedBottleneckAdapter", "three stacked bottleneck blocks"),
    "L3": ("WideBottleneckAdapter", "three wide bottleneck blocks"),
    "L4": ("AttentionAdapter", "causal self-attention block"),
    "L5": ("EagleAdapter", "EAGLE-style on drafter features and token embeddings, next position"),
    "B1": ("TargetHead", "EAGLE-style head on the target's own features, next position"),
    "L5F": ("FusionAdapter", "gated fusion of drafter and target features, next position"),
    "EAGLE3": ("Eagle3Head", "fused low/mid/high target layers, trained on its own multi-step drafts"),
}


def build(name: str, drafter_hidden: int, target_hidden: int, n_layers: int = 3) -> tuple[torch.nn.Module, dict]:
    """A fresh member of :data:`ZOO` and the constructor arguments its checkpoint records."""
    if name not in ZOO:
        raise ValueError(f"adapter {name!r}: expected one of {sorted(ZOO)}")
    kind = ZOO[name][0]
    if kind in ("TargetHead",):
        config = {"hidden": target_hidden}
    elif kind == "Eagle3Head":
        config = {"hidden": target_hidden, "layers_needed": n_layers}
    else:
        config = {"drafter_hidden": drafter_hidden, "target_hidden": target_hidden}
    return heads.KINDS[kind](**config), config


def store_hidden_sizes(store: FeatureStore) -> tuple[int, int, int]:
    """(drafter hidden, target hidden, kept target layers) of a feature store."""
    keys = store.keys
    layers = keys["target_layers"]["trailing_shape"][0] if "target_layers" in keys else 0
    return (int(keys["drafter"]["trailing_shape"][-1]), int(keys["target"]["trailing_shape"][-1]), int(layers))


@torch.no_grad()
def predict(module: torch.nn.Module, store: FeatureStore, target_head: FrozenTarget, *, steps: int = 1,
            batch_size: int = 64, extra: Sequence[str] = ()) -> dict[str, Any]:
    """The module's outputs on every sample of ``store`` in store order: ``preds`` (one ``[R, H]`` per rollout step;
    row r of step s predicts the target's row r + shift + s of the same sample), and the store's ``target``
    ``[R, H]``, ``tokens`` [R] and ``offsets`` [N + 1], and each key of ``extra`` (e.g. ``fact``) row-aligned."""
    module.eval()
    task = task_of(module)
    keys = tuple(k for k in task.inputs if k != "embeds") + ("target", *extra)
    outs: list[list[torch.Tensor]] = []
    targets, tokens, lengths = [], [], []
    extras: dict[str, list[torch.Tensor]] = {k: [] for k in extra}
    for batch in batches(store, batch_size, keys, shuffle=False, seed=0):
        preds = forward(module, batch, target_head, steps)
        m = batch["mask"]
        outs.append([p[m] for p in preds])
        targets.append(batch["target"][m])
        tokens.append(batch["tokens"][m])
        lengths.append(m.sum(1))
        for k in extra:
            extras[k].append(batch[k][m])
    n = torch.cat(lengths)
    offsets = torch.zeros(len(n) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(n, 0)
    return {"preds": [torch.cat([o[s] for o in outs]) for s in range(len(outs[0]))], "target": torch.cat(targets),
            "tokens": torch.cat(tokens), "offsets": offsets, "shift": task.shift,
            **{k: torch.cat(v) for k, v in extras.items()}}


def runs_dir(data_dir: Path, features_dir: Path, cfg: AdapterTrainConfig, fingerprint: str) -> Path:
    """``<data>/adapters/<hash>``: one folder per (feature store, training settings, training code)."""
    blob = json.dumps({"features": Path(features_dir).name, "config": cfg.to_dict(), "code": fingerprint},
                      sort_keys=True)
    return Path(data_dir) / "adapters" / hashlib.sha256(blob.encode()).hexdigest()[:16]
