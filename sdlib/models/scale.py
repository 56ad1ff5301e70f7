"""The scale model: tiny EventGPT and Video-LLaVA of the real classes, their shapes, training and loading.

The shapes (:class:`ScaleSizes`) are calibrated so that the pair's cost ratios stand as on the original research's RTX
4090; :mod:`sdlib.models.costs` holds the reference figures and measures the ratios. Training lives in
:mod:`sdlib.models.train`; this module builds the pair, trains it in two processes and caches it under a key of its
shapes, settings, data and code.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import shutil
import time
import traceback
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import CLIPVisionConfig, VideoLlavaForConditionalGeneration

from sdlib.base.questions import QUESTIONS
from sdlib.core import progress as bar
from sdlib.data.layout import load_clip, read_instructions, read_manifest
from sdlib.fingerprint import CodeFingerprint, scale_models_fingerprint
from sdlib.models.eventgpt import EVENT_TOKEN_INDEX, EventChatConfig, EventChatModel, eventgpt_prompt
from sdlib.models.eventgpt_runner import EventGPTDecoder, clip_style_preprocess
from sdlib.models.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from sdlib.models.train import (DrafterLM, TargetLM, TrainConfig, cache_key, make_example, resolve_precision,
                                train_model)
from sdlib.models.videollava import ResizeNormalize, VideoLlavaDecoder, build_prompt, video_llava_config

@dataclass(frozen=True)
class ScaleSizes:
    """Shapes of the scale-model pair (the calibrated defaults are what the book times and decodes).

    How the defaults were chosen (untrained models have the trained ones' costs; measured on one pinned core):

    - a decode step of a 6-layer, 256-wide Llama spent more than half its time in the interpreter around its 43
      linears, so ``P_v/d_v`` followed the machine's Python speed (11 to 25 between machines and runs); 2 layers of
      width 512 spend most of a step reading weights, as the 4090's 4-bit decode does, and ``P_v/d_v`` moved by
      about ±8% between runs on one machine;
    - the drafter's Llama is narrower (384): EventGPT decodes at 0.68 of Video-LLaVA's step time on the 4090 and
      prefills its 636-token prompt in 0.29 of the target's time, and a drafter with about 0.6 of the target's
      weights per layer reproduces both (its 106 event tokens and ~46 text tokens are a larger share of its prompt
      than the 4090's 578 + 58);
    - the image sizes set the prompt lengths: 8 x 50 = 400 target visual tokens, and 5 event images of 80 px pooled
      to 101 spatial + 5 temporal tokens (EventGPT's own 5-frame input), a ratio of 3.8 (4090: 3.6).
    """
    # target: Video-LLaVA = CLIP vision tower (8 frames) + Llama
    target_image: int = 56
    target_patch: int = 8
    target_vision_hidden: int = 64
    target_vision_layers: int = 2
    target_hidden: int = 512
    target_layers: int = 2
    target_heads: int = 8
    target_intermediate: int = 1024
    # drafter: EventGPT = CLIP vision tower (event images) + projector + feature adaptor + pooling + Llama
    event_image: int = 80
    event_patch: int = 8
    event_frames: int = 5  # EventGPT's inference splits the window into 5 equal-count event images
    drafter_vision_hidden: int = 64
    drafter_vision_layers: int = 2
    drafter_hidden: int = 384
    drafter_layers: int = 2
    drafter_heads: int = 6
    drafter_intermediate: int = 768

    @property
    def target_visual_tokens(self) -> int:
        return 8 * ((self.target_image // self.target_patch) ** 2 + 1)

    @property
    def drafter_visual_tokens(self) -> int:
        return (self.event_image // self.event_patch) ** 2 + 1 + self.event_frames

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_target(tokenizer, sizes: ScaleSizes, seed: int = 0):
    """A randomly initialised ``VideoLlavaForConditionalGeneration`` of the given sizes."""
    cfg = video_llava_config(
        tokenizer, image_size=sizes.target_image, patch_size=sizes.target_patch,
        vision_hidden=sizes.target_vision_hidden, vision_layers=sizes.target_vision_layers, vision_heads=2,
        text_hidden=sizes.target_hidden, text_layers=sizes.target_layers, text_heads=sizes.target_heads,
        text_intermediate=sizes.target_intermediate,
    )
    torch.manual_seed(seed)
    return VideoLlavaForConditionalGeneration(cfg)


def build_drafter(tokenizer, sizes: ScaleSizes, seed: int = 0):
    """A randomly initialised ``EventChatModel`` (EventGPT class) of the given sizes."""
    vision = CLIPVisionConfig(hidden_size=sizes.drafter_vision_hidden, intermediate_size=4 * sizes.drafter_vision_hidden,
                              num_hidden_layers=sizes.drafter_vision_layers, num_attention_heads=2,
                              image_size=sizes.event_image, patch_size=sizes.event_patch)
    cfg = EventChatConfig(
        vocab_size=len(tokenizer), hidden_size=sizes.drafter_hidden, intermediate_size=sizes.drafter_intermediate,
        num_hidden_layers=sizes.drafter_layers, num_attention_heads=sizes.drafter_heads,
        num_key_value_heads=sizes.drafter_heads, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        n_event_frames=sizes.event_frames, visual_tower_config=vision.to_dict(), event_feature_adaptor=True,
    )
    torch.manual_seed(seed)
    return EventChatModel(cfg)


# ---- building, training and loading the pair ----------------------------------------------------------------------
SPLIT_NAMES = ("train", "val", "test")


def world_corpus(train_dir) -> list[str]:
    """Text the scale-model tokenizer is learnt from: every training example's text as the models will read it,
    with the frequencies it has there: both models' prompts (system text and question; the visual placeholders are
    special tokens and drop out), the RGB answer and the event answer. Val and test text is never looked at."""
    corpus = []
    for rec in read_instructions(train_dir):
        question, answer = (t["value"] for t in rec["conversations"][:2])
        corpus += [eventgpt_prompt(question, style="plain"), build_prompt(question), answer]
        events = rec.get("meta", {}).get("answers_events")
        if events:
            corpus.append(events[QUESTIONS.index(question)])
    return corpus


def make_decoders(tokenizer, sizes: ScaleSizes, drafter_model=None, target_model=None, seed: int = 0):
    """(EventGPTDecoder, VideoLlavaDecoder) around given or freshly initialised models (weights drawn from ``seed``),
    with the scale model's fixed preprocessing (a plain resize + CLIP normalisation, identical on every machine)."""
    drafter_model = drafter_model if drafter_model is not None else build_drafter(tokenizer, sizes, seed=seed)
    target_model = target_model if target_model is not None else build_target(tokenizer, sizes, seed=seed)
    return (EventGPTDecoder(drafter_model, tokenizer, clip_style_preprocess(sizes.event_image)),
            VideoLlavaDecoder(target_model, tokenizer, frame_processor=ResizeNormalize(sizes.target_image)))


def drafter_visual(clip, sizes: ScaleSizes):
    """The drafter's input from a loaded clip: the 1-frame event image, or the 5 equal-count images."""
    return clip.event_image_1f[None] if sizes.event_frames == 1 else clip.event_images


def clip_examples(which: str, decoder, split_dir, sizes: ScaleSizes, max_clips: int | None = None):
    """Training examples of one split for the drafter (event view answers) or the target (RGB answers)."""
    by_clip: dict[str, list[dict]] = defaultdict(list)
    for rec in read_instructions(split_dir):
        by_clip[rec["clip_id"]].append(rec)
    out = []
    for clip_id in sorted(by_clip)[:max_clips]:
        recs = by_clip[clip_id]
        clip = load_clip(split_dir, recs[0])
        qa = []
        for rec in recs:
            q = rec["conversations"][0]["value"]
            i = QUESTIONS.index(q)
            qa.append((i, q, rec["meta"]["answers_events"][i] if which == "drafter" else rec["conversations"][1]["value"]))
        if which == "drafter":
            out.append(make_example(decoder, clip_id, drafter_visual(clip, sizes), qa, EVENT_TOKEN_INDEX))
        else:
            out.append(make_example(decoder, clip_id, clip.frames, qa, decoder.video_token_id))
    return out


def _train_one(which: str, dataset_root: str, sizes: dict, cfg: dict, pair_dir: str, max_train_clips: int | None,
               max_val_clips: int | None) -> None:
    """Subprocess entry: train one model of the pair and save it (errors go to ``<which>.error.txt``)."""
    pair = Path(pair_dir)
    try:
        s = ScaleSizes(**sizes)
        c = TrainConfig(**cfg)
        torch.set_num_threads(c.threads)
        tok = load_tokenizer(pair / "tokenizer")
        drafter, target = make_decoders(tok, s, seed=c.seed)  # the initial weights follow the training seed
        decoder = drafter if which == "drafter" else target
        train = clip_examples(which, decoder, Path(dataset_root) / "train", s, max_train_clips)
        val = clip_examples(which, decoder, Path(dataset_root) / "val", s, max_val_clips)
        lm = DrafterLM(decoder.model) if which == "drafter" else TargetLM(decoder.model)
        progress_file = pair / f"train_{which}" / "progress.json"

        def progress(total, initial, **_):
            return _FileProgress(progress_file, total, initial)

        result = train_model(decoder.model, lm, train, val, c, pair / f"train_{which}", tok.pad_token_id,
                             progress=progress, log=lambda *_: None)
        (pair / f"train_{which}" / "result.json").write_text(json.dumps({
            "history": result.history, "best_val_loss": result.best_val_loss, "steps": result.steps,
            "seconds": result.seconds, "stopped_early": result.stopped_early, "resumed_from": result.resumed_from,
            "train_clips": len(train), "val_clips": min(len(val), c.val_clips)}))
        # the finished model is written whole, then renamed into place: its folder never holds half a model
        final, tmp = pair / which, pair / f"{which}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        decoder.model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        (pair / f"{which}.error.txt").write_text(traceback.format_exc())
        raise


class _FileProgress:
    """A tqdm-like counter a training subprocess writes to a file, so the parent can draw one progress bar. A
    training process whose parent died (a killed or timed-out stage) exits at its next step instead of running on."""
    def __init__(self, path: Path, total: int, initial: int):
        self.path, self.total, self.n = path, total, initial
        self.parent = os.getppid()
        self._write()

    def _write(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"n": self.n, "total": self.total}))
        tmp.replace(self.path)

    def update(self, k: int = 1):
        if os.getppid() != self.parent:  # the stage that started us is gone: stop (the last checkpoint is intact)
            os._exit(1)
        self.n += k
        self._write()

    def set_postfix(self, **_):
        pass

    def close(self):
        self._write()


def pair_cache_key(sizes: ScaleSizes, cfg, max_train_clips: int | None, max_val_clips: int | None,
                   content_hashes: dict[str, str], code: CodeFingerprint | None = None) -> str:
    """The trained pair's cache key: hash(sizes, training settings, clip limits, the data set's content hashes, the
    fingerprint of the training code, :func:`sdlib.fingerprint.scale_models_fingerprint` unless ``code`` is given)."""
    code = code if code is not None else scale_models_fingerprint()
    cfg = resolve_precision(cfg)  # "auto" becomes what this machine runs: it changes the weights, so it is keyed
    return cache_key(sizes.to_dict(), cfg.to_dict(), max_train_clips, max_val_clips, content_hashes, code.digest)


def train_pair(dataset_root, sizes: ScaleSizes, cfg, models_root, *, max_train_clips: int | None = None,
               max_val_clips: int | None = None, parallel: bool = True, progress: bool = True,
               log=print) -> dict:
    """Train (or reuse) the scale-model pair on a world data set; returns the pair's record (``pair.json``).

    The pair lives in ``models_root/scale-<key>`` with key = hash(sizes, training settings, clip limits, the data
    set's content hashes, the training code's fingerprint; :func:`pair_cache_key`); a finished pair (``DONE``
    present) is reused as is. Drafter and target train at the same time in two processes with ``cfg.threads``
    threads each; a killed run resumes from each model's last checkpoint.
    """
    dataset_root = Path(dataset_root)
    hashes = {s: read_manifest(dataset_root / s)["content_hash"] for s in SPLIT_NAMES}
    cfg = resolve_precision(cfg)  # the pair records (and its training uses) the precision this machine runs
    key = pair_cache_key(sizes, cfg, max_train_clips, max_val_clips, hashes)
    pair = Path(models_root) / f"scale-{key}"
    if (pair / "DONE").is_file():
        log(f"reusing trained pair {pair}")
        record = json.loads((pair / "pair.json").read_text())
        record["cached"] = True
        return record
    pair.mkdir(parents=True, exist_ok=True)
    if not (pair / "tokenizer" / "tokenizer.json").is_file():
        save_tokenizer(train_tokenizer(world_corpus(dataset_root / "train")), pair / "tokenizer")
    t0 = time.perf_counter()
    args = (str(dataset_root), sizes.to_dict(), cfg.to_dict(), str(pair), max_train_clips, max_val_clips)
    todo = [w for w in ("target", "drafter") if not (pair / w / "config.json").is_file()]
    if parallel:
        ctx = mp.get_context("spawn")
        procs = {w: ctx.Process(target=_train_one, args=(w, *args), name=f"train-{w}") for w in todo}
        for p in procs.values():
            p.start()
        bars = {w: None for w in todo}
        while any(p.is_alive() for p in procs.values()):
            for w in todo:
                f = pair / f"train_{w}" / "progress.json"
                if progress and f.is_file():
                    try:
                        state = json.loads(f.read_text())
                    except json.JSONDecodeError:
                        continue
                    if bars[w] is None:
                        bars[w] = bar(total=state["total"], initial=state["n"], desc=f"train {w}", unit="clip")
                    bars[w].update(state["n"] - bars[w].n)
            time.sleep(1.0)
        for b in bars.values():
            if b is not None:
                b.close()
        failed = {w: p.exitcode for w, p in procs.items() if p.exitcode != 0}
    else:
        failed = {}
        for w in todo:
            try:
                _train_one(w, *args)
            except Exception:  # noqa: BLE001 - reported below with the saved traceback
                failed[w] = 1
    if failed:
        detail = "\n".join((pair / f"{w}.error.txt").read_text() if (pair / f"{w}.error.txt").is_file() else
                           f"{w}: exit code {c}" for w, c in failed.items())
        raise RuntimeError(f"training failed for {sorted(failed)} in {pair}:\n{detail}")
    record = {
        "key": key, "dir": str(pair), "sizes": sizes.to_dict(), "train_config": cfg.to_dict(),
        "data": {"root": str(dataset_root), "content_hashes": hashes},
        "max_train_clips": max_train_clips, "max_val_clips": max_val_clips,
        "seconds": time.perf_counter() - t0, "parallel": parallel,
        "peak_rss_mb": _peak_rss_mb(children=parallel),
        **{w: json.loads((pair / f"train_{w}" / "result.json").read_text()) for w in ("target", "drafter")},
    }
    (pair / "pair.json").write_text(json.dumps(record, indent=1))
    (pair / "DONE").write_text("")
    record["cached"] = False
    return record


def _peak_rss_mb(children: bool) -> float:
    """Peak resident memory (MB) of the largest finished child process (or of this process)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def load_pair(pair_dir, sizes: ScaleSizes | None = None):
    """(drafter, target) decoders of a trained pair, from its safetensors checkpoints (local files only)."""
    pair_dir = Path(pair_dir)
    if sizes is None:
        sizes = ScaleSizes(**json.loads((pair_dir / "pair.json").read_text())["sizes"])
    tok = load_tokenizer(pair_dir / "tokenizer")
    models = {}
    for which, cls in (("drafter", EventChatModel), ("target", VideoLlavaForConditionalGeneration)):
        folder = pair_dir / which
        for name in ("config.json", "model.safetensors"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"trained pair {pair_dir}: {which}/{name} is missing (an interrupted save? "
                                        f"`make clean-all` or deleting {pair_dir} retrains it)")
        model, info = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                          output_loading_info=True)
        if info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]:
            raise ValueError(f"trained pair {pair_dir}: {which}/model.safetensors does not fit the model "
                             f"(missing {sorted(info['missing_keys'])[:3]}, unexpected "
                             f"{sorted(info['unexpected_keys'])[:3]}); refusing to run with random layers")
        models[which] = model.eval()
    return make_decoders(tok, sizes, models["drafter"], models["target"])
