"""Training the scale-model pair: a plain PyTorch loop, resumable, seeded, with validation-only model selection.

Both models learn to answer the world's questions from their own sensor: the target (Video-LLaVA class) from the
8 RGB frames with the RGB answers, the drafter (EventGPT class) from its event images with the answers events can
support. Training has two stages:

1. :func:`pretrain_vision`: the vision path alone learns, through a :class:`FactHead` probe, which facts a clip's
   answers state (a vision path trained only through the language model stayed unused in this budget);
2. :func:`train_model`'s loop: the language model learns the answers, the vision path kept as stage 1 left it (or
   trained on at ``vision_lr_scale`` times the learning rate). Each step takes one clip and its 10 question-answer
   pairs. The 10 prompts share everything up to the question (system text and the visual tokens), so the shared
   *prefix* is run once and its key/value cache is repeated for the 10 continuations; gradients flow back through the
   repeated cache into the prefix. The loss equals the loss of 10 separate full sequences (a test checks it).

Checkpoints are folders of safetensors (weights, optimizer state, best weights, RNG state) plus JSON (step,
history, early-stopping counters), written whole and renamed into place, so a run killed at any moment resumes to
the same weights; finished models are cached under a key of (sizes, training settings, data hash, code fingerprint),
so an unchanged ``make book`` does not retrain.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sdlib.models.fact_words import answer_facts

IGNORE = -100


# ---- examples ------------------------------------------------------------------------------------------------------
@dataclass
class Example:
    """One clip for one model: the shared prompt prefix and one continuation per question.

    ``prefix_ids`` [P] holds the clip's prompts' common part, through the visual tokens (the drafter's ``<event>``
    placeholder is one id, -200, expanded by the model); ``conts[i]`` [L_i] holds the rest of prompt i
    (question, ``ASSISTANT:``) followed by its answer and ``</s>``; ``labels[i]`` [L_i] is ``conts[i]`` with the
    prompt part set to -100.
    """

    clip_id: str
    visual: torch.Tensor  # preprocessed pixels [T, 3, S, S]
    prefix_ids: torch.Tensor
    conts: list[torch.Tensor]
    labels: list[torch.Tensor]
    questions: list[int]
    answers: list[str] = field(default_factory=list)  # the answer texts, in ``questions`` order


def shared_prefix_length(prompts: Sequence[torch.Tensor], after: int) -> int:
    """Length of the longest common prefix of ``prompts`` (1-D id tensors), which must reach past ``after``.

    A clip's prompts differ only in their question, so this is everything before it (system text, visual tokens
    and whatever template text precedes the question)."""
    n = min(int(p.shape[0]) for p in prompts)
    first = prompts[0][:n]
    for p in prompts[1:]:
        diff = (p[:n] != first).nonzero()
        if len(diff):
            n = int(diff[0])
            first = first[:n]
    if n <= after:
        raise ValueError(f"prompts share only {n} leading tokens; expected more than {after} (the visual part)")
    return n


def make_example(decoder, clip_id: str, visual: Any, qa: Sequence[tuple[int, str, str]], visual_anchor: int) -> Example:
    """Tokenise one clip's prompts exactly as the decoder prepares them at inference, and split off the prefix.

    ``qa`` lists (question index, question, answer); ``visual_anchor`` is the token id marking the visual part (the
    ``<video>`` id, or -200 for ``<event>``); the prefix is the prompts' common part, which covers the visual part.
    With a single question the prefix ends just after the last visual token.
    """
    tok = decoder.tokenizer
    prepared = [decoder.prepare(question, visual) for _, question, _ in qa]
    ids = [inputs.input_ids[0] for inputs in prepared]  # [L_i] each
    last_visual = int((ids[0] == visual_anchor).nonzero().max())
    cut = shared_prefix_length(ids, last_visual) if len(ids) > 1 else last_visual + 1
    prefix = ids[0][:cut]
    pixels = prepared[0].extra.get("pixel_values_videos", prepared[0].extra.get("event_pixel_values"))
    pixels = pixels[0] if pixels.dim() == 5 else pixels
    conts, labels = [], []
    for (_, _, answer), prompt_ids in zip(qa, ids):
        answer_ids = torch.tensor(tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        tail = prompt_ids[cut:]
        conts.append(torch.cat([tail, answer_ids]))
        labels.append(torch.cat([torch.full_like(tail, IGNORE), answer_ids]))
    return Example(clip_id, pixels, prefix, conts, labels, [q for q, _, _ in qa], [a for _, _, a in qa])


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
        """(prefix cache, prefix length, visual tokens [frames, tokens, hidden] as the Llama receives them)."""
        video = self.model.model.get_video_features(pixel_values_videos=ex.visual[None], return_dict=True)
        out = self.model.model(input_ids=ex.prefix_ids[None], mm_encoder_outputs={"video": video}, use_cache=True)
        return _cache_of(out), int(ex.prefix_ids.shape[0]), video.pooler_output

    def visual(self, ex: Example) -> torch.Tensor:
        """The clip's visual tokens [frames, tokens, hidden] as the Llama receives them."""
        return self.model.model.get_video_features(pixel_values_videos=ex.visual[None], return_dict=True).pooler_output


class DrafterLM(_PrefixLM):
    """``EventChatModel``: the prefix's ``<event>`` placeholder is replaced by the pooled event features."""

    def prefix(self, ex: Example):
        """(prefix cache, prefix length, event tokens [N, hidden] as the Llama receives them)."""
        from transformers import DynamicCache

        features = self.model.model.encode_events(ex.visual)  # [N, hidden]
        embeds, _, _ = self.model.model.embed_with_events(ex.prefix_ids[None], features)  # [1, P, hidden]
        cache = DynamicCache(config=self.model.config)
        self.model.model(inputs_embeds=embeds, cache=cache, use_cache=True)
        return cache, int(embeds.shape[1]), features

    def visual(self, ex: Example) -> torch.Tensor:
        """The clip's event tokens [N, hidden] as the Llama receives them."""
        return self.model.model.encode_events(ex.visual)


class FactHead(torch.nn.Module):
    """Scene facts read from a model's visual tokens, a training-only probe that gives the vision tower a direct
    signal: the mean and the max over the visual tokens, normalised, then one logit per fact of the vocabulary
    ("is this fact stated in any of the clip's answers?"). It is dropped after training."""

    def __init__(self, hidden: int, n_facts: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(2 * hidden)
        self.out = torch.nn.Linear(2 * hidden, n_facts)

    def forward(self, visual: torch.Tensor) -> torch.Tensor:
        f = visual.reshape(-1, visual.shape[-1]).float()  # [N, hidden]
        return self.out(self.norm(torch.cat([f.mean(0), f.amax(0)])))  # [n_facts]


def fact_vocabulary(answer_sets: Iterable[Sequence[str]], min_clips: int = 5) -> list[tuple[str, str]]:
    """The (kind, value) facts stated in the answers of at least ``min_clips`` clips, sorted (one set of answers
    per clip; see :func:`sdlib.models.fact_words.answer_facts`)."""
    from collections import Counter

    seen: Counter = Counter()
    for answers in answer_sets:
        seen.update({f for a in answers for f in answer_facts(a)})
    return sorted(f for f, c in seen.items() if c >= min_clips)


def fact_labels(answers: Sequence[str], vocabulary: Sequence[tuple[str, str]]) -> torch.Tensor:
    """Multi-hot [len(vocabulary)]: which facts of the vocabulary the clip's answers state."""
    stated = {f for a in answers for f in answer_facts(a)}
    return torch.tensor([float(f in stated) for f in vocabulary])


def clip_loss(lm, ex: Example, rows: Sequence[int] | None = None, pad_id: int = 0) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over the answer tokens of a clip's continuations (prefix run once)."""
    rows = list(range(len(ex.conts))) if rows is None else list(rows)
    cache, p, _ = lm.prefix(ex)
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


def pretrain_vision(lm, train: Sequence[Example], cfg: TrainConfig, log: Callable = print) -> dict[str, Any]:
    """Stage 1: train the model's vision path (tower, projector, adaptor) alone, on the fact probe.

    Every clip is labelled with the facts its answers state (:func:`fact_vocabulary`, :func:`fact_labels`); a
    :class:`FactHead` on the visual tokens learns to predict them, one clip per step, clips drawn from a generator
    seeded by ``cfg.seed``. The language model is untouched and the head is dropped afterwards. A vision tower
    trained from scratch through the language model alone stayed unused: the language prior is learnt first and
    the loss hardly depended on the images (checked by swapping clips' images)."""
    vocabulary = fact_vocabulary([ex.answers for ex in train], cfg.fact_min_clips)
    labels = [fact_labels(ex.answers, vocabulary) for ex in train]
    torch.manual_seed(cfg.seed)
    head = FactHead(lm.lm_head.in_features, len(vocabulary))
    vision = [p for n, p in lm.model.named_parameters() if any(k in n for k in VISION_PARTS)]
    opt = torch.optim.AdamW(vision + list(head.parameters()), lr=cfg.probe_lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, 1])
    losses = []
    for _ in range(cfg.probe_steps):
        i = int(rng.integers(len(train)))
        with _autocast(cfg):
            loss = F.binary_cross_entropy_with_logits(head(lm.visual(train[i])), labels[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)  # no stale gradients for stage 2's clipping to see
    tail = losses[-max(1, len(losses) // 10):]
    log(f"vision pretrained on {len(vocabulary)} facts for {cfg.probe_steps} steps (final loss {np.mean(tail):.3f})")
    return {"facts": len(vocabulary), "steps": cfg.probe_steps, "final_loss": float(np.mean(tail))}


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


def save_weights(model_or_state, path: Path) -> None:
    """Weights (a module or a state dict) as safetensors, written to a temporary file and renamed into place."""
    from safetensors.torch import save_file

    sd = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(tmp))
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights that must cover the model exactly (a missing or extra tensor is an error)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file missing")
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
    seed: int = 0  # weight initialisation, data order and every random draw of training
    threads: int = 1
    probe_steps: int = 0  # stage 1: steps (one clip each) training the vision path alone on the fact probe
    probe_lr: float = 1e-3
    fact_min_clips: int = 5  # a fact enters the probe's vocabulary when this many training clips state it
    vision_lr_scale: float = 1.0  # stage 2: learning-rate factor of the vision path (0 keeps stage 1's vision frozen)
    precision: str = "auto"  # matmuls in "float32" or "bfloat16" (autocast; weights stay float32); "auto": bf16
    #                          where the CPU has bf16 instructions (see resolve_precision)

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


PRECISIONS = ("float32", "bfloat16")
VISION_PARTS = ("video_tower", "image_tower", "multi_modal_projector", "visual_tower", "visual_projector",
                "feature_adaptor")  # parameter-name parts of the vision path in both model classes


def cpu_has_bf16() -> bool:
    """True if this CPU has native bfloat16 dot products (AVX512-BF16 or AMX), where bf16 matmuls run about twice
    as fast as float32 ones; elsewhere they are emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``precision="auto"`` replaced by what this machine runs fastest; the resolved value is what a
    cache key must hold, since it changes the trained weights."""
    import dataclasses

    if cfg.precision == "auto":
        return dataclasses.replace(cfg, precision="bfloat16" if cpu_has_bf16() else "float32")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision={cfg.precision!r}: expected 'auto' or one of {PRECISIONS}")
    return cfg


def _autocast(cfg: TrainConfig):
    return torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bfloat16" else contextlib.nullcontext()


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


@torch.no_grad()
def evaluate(lm, examples: Sequence[Example], pad_id: int, cfg: TrainConfig | None = None) -> float:
    """Token-weighted mean answer loss over ``examples`` (in ``cfg``'s precision)."""
    total, n = 0.0, 0
    for ex in examples:
        with _autocast(cfg) if cfg is not None else contextlib.nullcontext():
            loss, k = clip_loss(lm, ex, pad_id=pad_id)
        total += float(loss) * k
        n += k
    return total / max(n, 1)


# A checkpoint is a folder ``ckpt-<step>`` holding everything a run needs to continue bit for bit: the weights, the
# optimizer state, the best weights so far, the RNG state and the loop state (step, history, early-stopping counters).
# It is written as ``ckpt-<step>.tmp`` and renamed when complete, so a kill at any moment leaves the previous
# checkpoint intact; older checkpoints are removed only after the new one is in place.
CHECKPOINT_FILES = ("model.safetensors", "optim.safetensors", "optim.json", "best.safetensors", "rng.safetensors",
                    "state.json")
_CKPT = re.compile(r"^ckpt-(\d+)$")


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint folder in ``out_dir`` (None if there is none).

    A folder that carries a checkpoint's final name but lacks one of :data:`CHECKPOINT_FILES` was damaged after it
    was written: that is an error naming the missing file, never a silent restart."""
    found = sorted((int(m.group(1)), p) for p in out_dir.glob("ckpt-*") if (m := _CKPT.match(p.name)) and p.is_dir())
    if not found:
        return None
    path = found[-1][1]
    for name in CHECKPOINT_FILES:
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {path} is incomplete: {name} is missing (delete the folder to "
                                    f"resume from an earlier checkpoint, or the run folder to start over)")
    return path


def _write_checkpoint(out_dir: Path, model, opt, best: dict[str, torch.Tensor], state: dict) -> Path:
    from safetensors.torch import save_file

    final = out_dir / f"ckpt-{state['step']:07d}"
    tmp = out_dir / (final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors")
    save_optimizer(opt, tmp / "optim")
    save_weights(best, tmp / "best.safetensors")
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state))
    shutil.rmtree(final, ignore_errors=True)  # a checkpoint of the same step from an interrupted earlier attempt
    os.replace(tmp, final)
    for old in out_dir.glob("ckpt-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def train_model(model: torch.nn.Module, lm, train: Sequence[Example], val: Sequence[Example], cfg: TrainConfig,
                out_dir: Path, pad_id: int, progress: Callable | None = None, log: Callable = print) -> TrainResult:
    """Train ``model`` (wrapped by ``lm``), resuming from the newest checkpoint in ``out_dir`` if there is one.

    A run killed at any moment and resumed ends with the same weights as an uninterrupted run (same data order,
    learning rates, optimizer and RNG state). Selection uses the validation loss only; the best weights end in
    ``out_dir/best.safetensors`` and in ``model``. Runs with ``cfg.threads`` intra-op threads and gives the caller's
    thread count back when it returns.
    """
    old_threads = torch.get_num_threads()
    try:
        return _train_model(model, lm, train, val, cfg, out_dir, pad_id, progress, log)
    finally:
        torch.set_num_threads(old_threads)


def _train_model(model: torch.nn.Module, lm, train: Sequence[Example], val: Sequence[Example], cfg: TrainConfig,
                 out_dir: Path, pad_id: int, progress: Callable | None, log: Callable) -> TrainResult:
    from safetensors.torch import load_file

    cfg = resolve_precision(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    vision = [p for n, p in model.named_parameters() if any(k in n for k in VISION_PARTS)]
    ids = {id(p) for p in vision}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids], "scale": 1.0}]
    if cfg.vision_lr_scale > 0:
        groups.append({"params": vision, "scale": cfg.vision_lr_scale})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    val_set = list(val[: cfg.val_clips])
    state = {"step": 0, "history": [], "best": float("inf"), "bad_evals": 0, "seconds": 0.0, "stopped_early": False}
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    resumed_from = 0
    ckpt = latest_checkpoint(out_dir)
    if ckpt is not None:
        state = json.loads((ckpt / "state.json").read_text())
        load_weights(model, ckpt / "model.safetensors")
        load_optimizer(opt, ckpt / "optim")
        best = load_file(str(ckpt / "best.safetensors"))
        torch.set_rng_state(load_file(str(ckpt / "rng.safetensors"))["torch"])
        resumed_from = state["step"]
        log(f"resuming {out_dir.name} from step {resumed_from}")
    elif cfg.probe_steps > 0:  # stage 1, then a checkpoint at step 0 so that a kill after it does not redo it
        model.train()
        state["vision_pretraining"] = pretrain_vision(lm, train, cfg, log)
        best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.manual_seed(cfg.seed)
        _write_checkpoint(out_dir, model, opt, best, state)

    model.train()
    for p in vision:  # a frozen vision path needs no gradients (and the prefix's visual tokens none either)
        p.requires_grad_(cfg.vision_lr_scale > 0)
    t_start = time.perf_counter() - state["seconds"]
    bar = progress(total=total, initial=state["step"], desc=out_dir.name, unit="clip") if progress else None
    while state["step"] < total and not state["stopped_early"]:
        step = state["step"]
        epoch, pos = divmod(step, steps_per_epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(steps_per_epoch)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, total, cfg) * g["scale"]
        with _autocast(cfg):
            loss, _ = clip_loss(lm, train[int(order[pos])], pad_id=pad_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        state["step"] = step + 1
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if state["step"] % cfg.eval_every == 0 or state["step"] == total:
            model.eval()
            val_loss = evaluate(lm, val_set, pad_id, cfg)
            model.train()
            state["seconds"] = time.perf_counter() - t_start
            state["history"].append({"step": state["step"], "train_loss": loss.item(), "val_loss": val_loss,
                                     "seconds": state["seconds"]})
            if val_loss < state["best"] - 1e-4:
                state["best"], state["bad_evals"] = val_loss, 0
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_evals"] += 1
                state["stopped_early"] = state["bad_evals"] >= cfg.patience
            _write_checkpoint(out_dir, model, opt, best, state)
    if bar:
        bar.close()
    for p in vision:
        p.requires_grad_(True)
    model.eval()
    save_weights(best, out_dir / "best.safetensors")
    load_weights(model, out_dir / "best.safetensors")
    return TrainResult(out_dir, state["history"], state["best"], state["step"], time.perf_counter() - t_start,
                       bool(state["stopped_early"]), resumed_from)


def cache_key(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (sizes, training settings, data content hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
