"""The scale model: tiny EventGPT and Video-LLaVA of the real classes, sized to the real pair's cost ratios.

Speculative decoding's speedup depends on cost *ratios*, so the scale model is calibrated to the ratios the
original research measured on an RTX 4090 (both models 4-bit; DESIGN.md):

========================  ===========  =====================
quantity                  4090         ratio to match (±30%)
========================  ===========  =====================
target prefill  P_v       315.5 ms     P_v / d_v  = 21.6
target decode   d_v       14.6 ms/tok  (unit)
drafter prefill P_e       91.7 ms      P_e / P_v  = 0.29
drafter decode  d_e       10.0 ms/tok  d_e / d_v  = 0.68
prompt visual tokens      2056 / 578   ratio      = 3.56
========================  ===========  =====================

:func:`measure_costs` times both models in one process (warm-up, repetitions, medians, one intra-op thread by
default, as each model gets one core in the ``two_devices`` placement).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from sdlib.fingerprint import CodeFingerprint, scale_models_fingerprint
from sdlib.models.train import cache_key

#: The original's 4090 measurements and the ratios derived from them.
REFERENCE_4090 = {"P_v": 315.5, "d_v": 14.6, "P_e": 8.6 + 83.1, "d_e": 10.0, "visual_tokens_target": 8 * 257,
                  "visual_tokens_drafter": 578}
REFERENCE_RATIOS = {
    "P_v_over_d_v": REFERENCE_4090["P_v"] / REFERENCE_4090["d_v"],
    "P_e_over_P_v": REFERENCE_4090["P_e"] / REFERENCE_4090["P_v"],
    "d_e_over_d_v": REFERENCE_4090["d_e"] / REFERENCE_4090["d_v"],
    "visual_token_ratio": REFERENCE_4090["visual_tokens_target"] / REFERENCE_4090["visual_tokens_drafter"],
}
TOLERANCE = 0.30


@dataclass(frozen=True)
class ScaleSizes:
    """Shapes of the scale-model pair (the calibrated defaults are what the book times and decodes)."""

    # target: Video-LLaVA = CLIP vision tower (8 frames) + Llama. The image sizes set the prompt lengths, and with
    # them P_v/d_v and P_e/P_v (the widths barely move those ratios: measured on untrained models, whose costs
    # equal the trained ones'). 64/96 px (520/146 tokens) put P_v/d_v at 27-30 against a bound of 28.1; 56/80 px
    # (400/102 tokens) centre every ratio within 20% of the 4090's.
    target_image: int = 56
    target_patch: int = 8
    target_vision_hidden: int = 64
    target_vision_layers: int = 2
    target_hidden: int = 256
    target_layers: int = 6
    target_heads: int = 4
    target_intermediate: int = 384
    # drafter: EventGPT = CLIP vision tower (event images) + projector + feature adaptor + pooling + Llama
    event_image: int = 80
    event_patch: int = 8
    event_frames: int = 1
    drafter_vision_hidden: int = 64
    drafter_vision_layers: int = 2
    drafter_hidden: int = 256
    drafter_layers: int = 6  # the real EventGPT is a 7B Llama like the target: same depth
    drafter_heads: int = 4
    drafter_intermediate: int = 384

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
    from transformers import VideoLlavaForConditionalGeneration

    from sdlib.models.videollava import video_llava_config

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
    from transformers import CLIPVisionConfig

    from sdlib.models.eventgpt import EventChatConfig, EventChatModel

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


# ---- cost measurement -------------------------------------------------------------------------------------------
COST_NAMES = ("P_v", "d_v", "P_e", "d_e")


@dataclass
class MeasuredCosts:
    """Timings of the pair measured on this machine (the theory stage's ``sdlib.theory.Costs`` are model inputs).

    Each repetition times every sample on the target, then on the drafter, so its four costs come from one short
    window of the machine's life; a ratio is taken within each repetition, and the reported value is the median over
    repetitions with the interquartile range beside it (the spread a reader should expect on a rerun)."""

    P_v: float  # ms, target prefill incl. vision (median over repetitions)
    d_v: float  # ms per token, target decode
    P_e: float  # ms, drafter vision + prefill
    d_e: float  # ms per token, drafter decode
    visual_tokens_target: int
    visual_tokens_drafter: int
    threads: int
    repeats: int
    per_repeat: list[dict[str, float]] = field(default_factory=list)  # each repetition's medians of the four costs
    pinned_cpu: int | None = None  # the core the timing thread was pinned to

    def _ratio_samples(self) -> dict[str, list[float]]:
        reps = self.per_repeat or [{k: getattr(self, k) for k in COST_NAMES}]
        return {
            "P_v_over_d_v": [r["P_v"] / r["d_v"] for r in reps],
            "P_e_over_P_v": [r["P_e"] / r["P_v"] for r in reps],
            "d_e_over_d_v": [r["d_e"] / r["d_v"] for r in reps],
        }

    @property
    def ratios(self) -> dict[str, float]:
        out = {k: statistics.median(v) for k, v in self._ratio_samples().items()}
        out["visual_token_ratio"] = self.visual_tokens_target / self.visual_tokens_drafter
        return out

    @property
    def ratio_iqr(self) -> dict[str, float]:
        """Interquartile range of each ratio over the repetitions (0 for the token ratio, which is a count)."""
        out = {k: _iqr(v) for k, v in self._ratio_samples().items()}
        out["visual_token_ratio"] = 0.0
        return out

    @property
    def cost_iqr(self) -> dict[str, float]:
        return {k: _iqr([r[k] for r in self.per_repeat]) if self.per_repeat else 0.0 for k in COST_NAMES}

    def to_theory(self, verify_slope: float = 0.0):
        """These timings as the speedup models' :class:`sdlib.theory.Costs`."""
        from sdlib.theory import Costs

        return Costs(P_v=self.P_v, d_v=self.d_v, P_e=self.P_e, d_e=self.d_e, verify_slope=verify_slope)

    def within_tolerance(self, tolerance: float = TOLERANCE) -> dict[str, bool]:
        return {k: abs(v / REFERENCE_RATIOS[k] - 1.0) <= tolerance for k, v in self.ratios.items()}

    def table(self, tolerance: float = TOLERANCE):
        """The ratios beside the 4090's: median, IQR, the ±tolerance band and whether the median lies in it."""
        import pandas as pd

        ok = self.within_tolerance(tolerance)
        rows = {k: {"scale model (median)": v, "IQR": self.ratio_iqr[k], "RTX 4090": REFERENCE_RATIOS[k],
                    "band": f"{REFERENCE_RATIOS[k] * (1 - tolerance):.2f} – {REFERENCE_RATIOS[k] * (1 + tolerance):.2f}",
                    "within band": ok[k]} for k, v in self.ratios.items()}
        return pd.DataFrame(rows).T


def _iqr(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


@contextmanager
def timing_conditions(threads: int = 1, pin: bool = True):
    """Run the block with ``threads`` intra-op threads and, when ``pin``, the calling thread pinned to one core
    (the first it may use); the previous thread count and affinity are restored after. Yields the core or None."""
    import os

    old_threads = torch.get_num_threads()
    old_affinity = os.sched_getaffinity(0) if pin and hasattr(os, "sched_getaffinity") else None
    cpu = min(old_affinity) if old_affinity else None
    torch.set_num_threads(threads)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        torch.set_num_threads(old_threads)
        if old_affinity is not None:
            os.sched_setaffinity(0, old_affinity)


def _timed_ms(model, call):
    """(result, ms) of ``call()``, waiting for the model's device on both sides so the kernels are covered."""
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda *_: None)
    sync(model.device)
    t0 = time.perf_counter()
    result = call()
    sync(model.device)
    return result, (time.perf_counter() - t0) * 1e3


def _time_model(model, inputs, n_decode: int) -> tuple[float, list[float]]:
    """(prefill ms, per-step decode ms) for one prompt, feeding the greedy token back."""
    pre, prefill_ms = _timed_ms(model, lambda: model.prefill(inputs))
    token = int(pre.logits.argmax())
    steps = []
    for _ in range(n_decode):
        out, ms = _timed_ms(model, lambda: model.score(torch.tensor([token]), pre.cache))
        steps.append(ms)
        token = int(out.logits[-1].argmax())
    return prefill_ms, steps


def measure_costs(drafter, target, samples: Sequence[tuple[Any, Any]], repeats: int = 5, n_decode: int = 16,
                  threads: int = 1, warmup: int = 2, pin: bool = True) -> MeasuredCosts:
    """Prefill and per-token decode times of both models on the same samples, in this process.

    ``samples`` are ``(drafter_inputs, target_inputs)`` pairs of prepared :class:`ModelInputs`. Each repetition
    times every sample on the target, then on the drafter (interleaved, so a slow spell of the machine hits both);
    ``warmup`` untimed repetitions come first. The timing thread runs on one pinned core with ``threads``
    intra-op threads, as each model gets one core in the ``two_devices`` placement.
    """
    per_repeat = []
    with timing_conditions(threads, pin) as cpu:
        for rep in range(warmup + repeats):
            pv, dv, pe, de = [], [], [], []
            for d_in, t_in in samples:
                p, s = _time_model(target, t_in, n_decode)
                q, r = _time_model(drafter, d_in, n_decode)
                pv.append(p); dv.extend(s); pe.append(q); de.extend(r)
            if rep >= warmup:
                per_repeat.append({"P_v": statistics.median(pv), "d_v": statistics.median(dv),
                                   "P_e": statistics.median(pe), "d_e": statistics.median(de)})
    d_in, t_in = samples[0]
    med = {k: statistics.median(r[k] for r in per_repeat) for k in COST_NAMES}
    return MeasuredCosts(
        **med,
        visual_tokens_target=int((t_in.input_ids == target.video_token_id).sum()),  # <video> tokens in the text
        visual_tokens_drafter=drafter.prefill(d_in).prompt_len - int(d_in.input_ids.shape[1]) + 1,  # spliced
        threads=threads, repeats=repeats, per_repeat=per_repeat, pinned_cpu=cpu,
    )


# ---- building, training and loading the pair ----------------------------------------------------------------------
PROMPT_WORDS = "USER: ASSISTANT:\n"
SPLIT_NAMES = ("train", "val", "test")


def world_corpus(train_dir) -> list[str]:
    """Text the scale-model tokenizer is built from: the train split's questions and both answer views, plus the
    two prompt templates (val/test text is never looked at)."""
    from sdlib.data.layout import read_instructions
    from sdlib.models.eventgpt import SYSTEM_PROMPT

    corpus = [SYSTEM_PROMPT, PROMPT_WORDS]
    for rec in read_instructions(train_dir):
        corpus += [t["value"] for t in rec["conversations"]]
        corpus += rec.get("meta", {}).get("answers_events", [])
    seen: set[str] = set()
    return [t for t in corpus if not (t in seen or seen.add(t))]


def make_decoders(tokenizer, sizes: ScaleSizes, drafter_model=None, target_model=None, seed: int = 0):
    """(EventGPTDecoder, VideoLlavaDecoder) around given or freshly initialised models (weights drawn from ``seed``),
    with the scale model's fixed preprocessing (a plain resize + CLIP normalisation, identical on every machine)."""
    from sdlib.models.eventgpt_runner import EventGPTDecoder, clip_style_preprocess
    from sdlib.models.videollava import ResizeNormalize, VideoLlavaDecoder

    drafter_model = drafter_model if drafter_model is not None else build_drafter(tokenizer, sizes, seed=seed)
    target_model = target_model if target_model is not None else build_target(tokenizer, sizes, seed=seed)
    return (EventGPTDecoder(drafter_model, tokenizer, clip_style_preprocess(sizes.event_image)),
            VideoLlavaDecoder(target_model, tokenizer, frame_processor=ResizeNormalize(sizes.target_image)))


def drafter_visual(clip, sizes: ScaleSizes):
    """The drafter's input from a loaded clip: the 1-frame event image, or the 5 equal-count images."""
    return clip.event_image_1f[None] if sizes.event_frames == 1 else clip.event_images


def clip_examples(which: str, decoder, split_dir, sizes: ScaleSizes, max_clips: int | None = None):
    """Training examples of one split for the drafter (event view answers) or the target (RGB answers)."""
    from collections import defaultdict

    from sdlib.data.layout import load_clip, read_instructions
    from sdlib.models.eventgpt import EVENT_TOKEN_INDEX
    from sdlib.models.train import make_example
    from sdlib.world import QUESTIONS

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
    import traceback

    from sdlib.models.tokenizer import load_tokenizer
    from sdlib.models.train import DrafterLM, TargetLM, TrainConfig, train_model

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
    import multiprocessing as mp

    from sdlib.core import progress as bar
    from sdlib.data.layout import read_manifest
    from sdlib.models.tokenizer import save_tokenizer, train_tokenizer

    dataset_root = Path(dataset_root)
    hashes = {s: read_manifest(dataset_root / s)["content_hash"] for s in SPLIT_NAMES}
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
    import resource

    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def load_pair(pair_dir, sizes: ScaleSizes | None = None):
    """(drafter, target) decoders of a trained pair, from its safetensors checkpoints (local files only)."""
    from transformers import VideoLlavaForConditionalGeneration

    from sdlib.models.eventgpt import EventChatModel
    from sdlib.models.tokenizer import load_tokenizer

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


def verify_curve(target, inputs, ks: Sequence[int] = (1, 2, 4, 8, 16), repeats: int = 5, threads: int = 1,
                 warmup: int = 2, pin: bool = True) -> dict[int, float]:
    """Median ms of verifying ``k`` drafts, for each ``k``: one target forward over ``k + 1`` tokens (the pending
    token plus the ``k`` drafts, giving ``k + 1`` rows of logits, the last for the bonus token) on a freshly
    prefilled cache, which is cropped back after each forward. ``k = 0`` is a plain decode step."""
    from sdlib.models.interface import crop_cache

    out: dict[int, list[float]] = {k: [] for k in ks}
    with timing_conditions(threads, pin):
        pre = target.prefill(inputs)
        base = pre.prompt_len
        tokens = torch.full((max(ks) + 1,), int(pre.logits.argmax()), dtype=torch.long)
        for rep in range(warmup + repeats):
            for k in ks:
                _, ms = _timed_ms(target, lambda: target.score(tokens[: k + 1], pre.cache))
                crop_cache(pre.cache, base)
                if rep >= warmup:
                    out[k].append(ms)
    return {k: statistics.median(v) for k, v in out.items()}
