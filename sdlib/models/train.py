"""Training the scale-model pair: a plain PyTorch loop, resumable, seeded, with validation-only model selection.

Both models learn to answer the world's questions from their own sensor: the target (Video-LLaVA class) from the
8 RGB frames with the RGB answers, the drafter (EventGPT class) from the event image with the answers events can
support.  Each step takes one clip and its 10 question-answer pairs.  The 10 prompts share everything up to the
question (system text and the visual tokens, ~90% of the target's prompt), so the shared *prefix* is run once and
its key/value cache is repeated for the 10 continuations; gradients flow back through the repeated cache into the
prefix.  The loss equals the loss of 10 separate full sequences (a test checks it) at a fraction of the cost.

Checkpoints are safetensors (weights and optimizer state) plus JSON (step, data order, RNG state, history), so a
killed run resumes where its last checkpoint left it; finished models are cached under a key of (sizes, training
settings, data hash), so an unchanged ``make book`` does not retrain.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100


# ---- examples ------------------------------------------------------------------------------------------------------
@dataclass
class Example:
    """One clip for one model: the shared prompt prefix and one continuation per question.

    ``prefix_ids`` [P] holds the prompt up to and including the newline after the visual tokens (the drafter's
    ``<event>`` placeholder is one id, -200, expanded by the model); ``conts[i]`` [L_i] holds the rest of prompt i
    (question, ``ASSISTANT:``) followed by its answer and ``</s>``; ``labels[i]`` [L_i] is ``conts[i]`` with the
    prompt part set to -100.
    """

    clip_id: str
    visual: torch.Tensor  # preprocessed pixels [T, 3, S, S]
    prefix_ids: torch.Tensor
    conts: list[torch.Tensor]
    labels: list[torch.Tensor]
    questions: list[int]


def split_prompt(input_ids: torch.Tensor, newline_id: int, after: int) -> int:
    """Index just past the first newline token at or after position ``after`` (the end of the shared prefix)."""
    ids = input_ids.tolist()
    for i in range(after, len(ids)):
        if ids[i] == newline_id:
            return i + 1
    raise ValueError(f"prompt has no newline token ({newline_id}) after position {after}: cannot find its prefix")


def make_example(decoder, clip_id: str, visual: Any, qa: Sequence[tuple[int, str, str]], visual_anchor: int) -> Example:
    """Tokenise one clip's prompts exactly as the decoder prepares them at inference, and split off the prefix.

    ``qa`` lists (question index, question, answer); ``visual_anchor`` is the token id marking the visual part (the
    ``<video>`` id, or -200 for ``<event>``); the prefix ends at the first newline after its last occurrence.
    """
    tok = decoder.tokenizer
    newline = tok.convert_tokens_to_ids("\n")
    prefix, conts, labels, pixels = None, [], [], None
    for q_idx, question, answer in qa:
        inputs = decoder.prepare(question, visual)
        ids = inputs.input_ids[0]  # [L]
        last_visual = int((ids == visual_anchor).nonzero().max())
        cut = split_prompt(ids, newline, last_visual)
        if prefix is None:
            prefix = ids[:cut]
            pixels = inputs.extra.get("pixel_values_videos", inputs.extra.get("event_pixel_values"))
            pixels = pixels[0] if pixels.dim() == 5 else pixels
        elif not torch.equal(prefix, ids[:cut]):
            raise ValueError(f"clip {clip_id}: prompts do not share a prefix")
        answer_ids = torch.tensor(tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        tail = ids[cut:]
        conts.append(torch.cat([tail, answer_ids]))
        labels.append(torch.cat([torch.full_like(tail, IGNORE), answer_ids]))
    return Example(clip_id, pixels, prefix, conts, labels, [q for q, _, _ in qa])


# ---- the two model families behind one prefix/continuation interface ------------------------------------------------
def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class _PrefixLM:
    """Prefix / continuation forwards of a model whose ``.model`` is the decoder stack and ``.lm_head`` the head."""

    def __init__(self, model):
        self.model = model

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor, cache) -> torch.Tensor:
        """Last-layer hidden states [B, L, hidden] of continuations ``ids`` [B, L] on the repeated prefix cache."""
        return self.model.model(input_ids=ids, attention_mask=attention_mask, cache=cache,
                                use_cache=True).last_hidden_state

    @property
    def lm_head(self):
        return self.model.lm_head


class TargetLM(_PrefixLM):
    """``VideoLlavaForConditionalGeneration``: the prefix holds the expanded ``<video>`` tokens."""

    def prefix(self, ex: Example):
        out = self.model.model(input_ids=ex.prefix_ids[None], pixel_values_videos=ex.visual[None], use_cache=True)
        return _cache_of(out), int(ex.prefix_ids.shape[0])


class DrafterLM(_PrefixLM):
    """``EventChatModel``: the prefix's ``<event>`` placeholder is replaced by the pooled event features."""

    def prefix(self, ex: Example):
        from transformers import DynamicCache

        features = self.model.model.encode_events(ex.visual)  # [N, hidden]
        embeds, _, _ = self.model.model.embed_with_events(ex.prefix_ids[None], features)  # [1, P, hidden]
        cache = DynamicCache(config=self.model.config)
        self.model.model(inputs_embeds=embeds, cache=cache, use_cache=True)
        return cache, int(embeds.shape[1])


def clip_loss(lm, ex: Example, rows: Sequence[int] | None = None, pad_id: int = 0) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the answer tokens of a clip's continuations (prefix run once)."""
    rows = list(range(len(ex.conts))) if rows is None else list(rows)
    cache, p = lm.prefix(ex)
    cache.batch_repeat_interleave(len(rows))
    length = max(int(ex.conts[r].shape[0]) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # [B, L]
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), p + length), dtype=torch.long)  # [B, P + L]
    mask[:, :p] = 1
    for b, r in enumerate(rows):
        n = int(ex.conts[r].shape[0])
        ids[b, :n], labels[b, :n], mask[b, p:p + n] = ex.conts[r], ex.labels[r], 1
    hidden = lm.forward(ids, mask, cache)  # [B, L, hidden]
    logits = lm.lm_head(hidden[:, :-1])  # [B, L - 1, vocab]
    target = labels[:, 1:]
    n_tokens = int((target != IGNORE).sum())
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE)
    return loss, n_tokens


# ---- checkpoints (safetensors + JSON, no pickle) --------------------------------------------------------------------
def save_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import save_file

    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().clone()
            else:
                scalars[f"{idx}.{k}"] = v
    save_file(tensors, str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps({"param_groups": sd["param_groups"], "scalars": scalars}))


def load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path.with_suffix(".safetensors")))
    meta = json.loads(path.with_suffix(".json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]  # JSON turned tuples such as betas into lists
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(path))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


# ---- the loop ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 2.0  # passes over the training clips (fractions allowed)
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_every: int = 50  # steps between validation passes (and checkpoints)
    val_clips: int = 16  # validation clips per pass (fixed subset of the val split)
    patience: int = 4  # validation passes without improvement before stopping
    seed: int = 0
    threads: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    out_dir: Path
    history: list[dict[str, float]]
    best_val_loss: float
    steps: int
    seconds: float
    stopped_early: bool
    resumed_from: int
    cached: bool = False


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


@torch.no_grad()
def evaluate(lm, examples: Sequence[Example], pad_id: int) -> float:
    """Token-weighted mean answer loss over ``examples``."""
    total, n = 0.0, 0
    for ex in examples:
        loss, k = clip_loss(lm, ex, pad_id=pad_id)
        total += float(loss) * k
        n += k
    return total / max(n, 1)


def train_model(model: torch.nn.Module, lm, train: Sequence[Example], val: Sequence[Example], cfg: TrainConfig,
                out_dir: Path, pad_id: int, progress: Callable | None = None, log: Callable = print) -> TrainResult:
    """Train ``model`` (wrapped by ``lm``), resuming from ``out_dir/last`` if a checkpoint is there.

    Selection uses the validation loss only; the best weights end in ``out_dir/best.safetensors``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last"
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    val_set = list(val[: cfg.val_clips])
    state = {"step": 0, "history": [], "best": float("inf"), "bad_evals": 0, "seconds": 0.0}
    resumed_from = 0
    if (last / "state.json").is_file():
        state = json.loads((last / "state.json").read_text())
        load_weights(model, last / "model.safetensors")
        load_optimizer(opt, last / "optim")
        resumed_from = state["step"]
        log(f"resuming {out_dir.name} from step {resumed_from}")

    def checkpoint() -> None:
        tmp = out_dir / "last.tmp"
        tmp.mkdir(exist_ok=True)
        save_weights(model, tmp / "model.safetensors")
        save_optimizer(opt, tmp / "optim")
        (tmp / "state.json").write_text(json.dumps(state))
        if last.exists():
            old = out_dir / "last.old"
            last.replace(old)
            tmp.replace(last)
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        else:
            tmp.replace(last)

    model.train()
    t_start = time.perf_counter() - state["seconds"]
    bar = progress(total=total, initial=state["step"], desc=out_dir.name, unit="clip") if progress else None
    stopped = False
    while state["step"] < total and not stopped:
        step = state["step"]
        epoch, pos = divmod(step, steps_per_epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(steps_per_epoch)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, total, cfg)
        loss, _ = clip_loss(lm, train[int(order[pos])], pad_id=pad_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        state["step"] = step + 1
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if state["step"] % cfg.eval_every == 0 or state["step"] == total:
            model.eval()
            val_loss = evaluate(lm, val_set, pad_id)
            model.train()
            state["seconds"] = time.perf_counter() - t_start
            state["history"].append({"step": state["step"], "train_loss": loss.item(), "val_loss": val_loss,
                                     "seconds": state["seconds"]})
            if val_loss < state["best"] - 1e-4:
                state["best"], state["bad_evals"] = val_loss, 0
                save_weights(model, out_dir / "best.safetensors")
            else:
                state["bad_evals"] += 1
                stopped = state["bad_evals"] >= cfg.patience
            state["stopped_early"] = stopped
            checkpoint()
    if bar:
        bar.close()
    model.eval()
    load_weights(model, out_dir / "best.safetensors")
    return TrainResult(out_dir, state["history"], state["best"], state["step"], time.perf_counter() - t_start,
                       bool(state.get("stopped_early", False)), resumed_from)


def cache_key(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (sizes, training settings, data content hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
