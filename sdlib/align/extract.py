"""Paired hidden states of the drafter and the target, the data every adapter and head learns from.

**The fixed protocol** (``teacher_forced``, the default). For each (clip, question) the target answers greedily from
its own view (video frames); then *both* models are teacher-forced on that same answer text, each from its own prompt
and its own sensor. Row ``t`` of either model's states is the post-norm last-layer state at the position whose LM-head
row predicts answer token ``t`` (row 0 is the last prompt position), so the rows of the two models sit on the same
text prefix and position ``t`` predicts token ``t + 1`` of the prompt-plus-answer sequence in both. The target's rows
come from its own greedy decode (a greedy decode *is* the target teacher-forced on its own answer), so
``argmax(lm_head(target[t])) == tokens[t]`` for every row, which the tests check.

**The original protocol** (``independent``, kept to reproduce and explain its numbers, `seed_system.md` §4.1): both
models answer on their own, greedily, and row ``t`` of one is paired with row ``t`` of the other although the two
answers differ after their first disagreement; pairs shorter than 5 rows are dropped, as the original did.

Per sample the store (:mod:`sdlib.align.store`) receives ``tokens`` [n] (the target's answer; token ``t`` is what
target row ``t`` predicts), ``drafter`` [n, H_drafter], ``target`` [n, H_target], ``drafter_tokens`` [n] (the
drafter's own greedy choice at each row: its argmax under teacher forcing, its answer under ``independent``),
``fact`` [n] bool (the token lies in a fact word of the answer, :func:`sdlib.models.fact_words.token_fact_mask`;
the rest are template words), ``mapped`` [n] bool (the drafter could be fed the token), and,
when asked, ``target_layers`` [n, L, H_target] (chosen intermediate layers of the target at the same rows, for
EAGLE-3-style heads; layer numbering as in :mod:`sdlib.models.interface`).

Work is split by clip (a clip's vision path runs once for all its questions): rank ``r`` of ``w`` processes takes the
clips ``r, r + w, ...`` of the sorted clip list and writes its own shards, so ``accelerate launch`` spreads
extraction over processes (CPU here, GPUs elsewhere) and the ranks' manifests merge into one
(:func:`run_extraction` writes the job file and starts ``accelerate launch ... -m sdlib.align.extract --job``).

A rerun skips the samples already stored (resume after a crash loses at most the unflushed shard buffer).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from sdlib.align.store import FeatureStore, ShardWriter, merge_manifests
from sdlib.base import QUESTIONS
from sdlib.core import progress as progress_bar
from sdlib.data.layout import load_clip, read_instructions, read_manifest
from sdlib.models.fact_words import token_fact_mask
from sdlib.models.interface import DecodingModel, ModelInputs

PROTOCOLS = ("teacher_forced", "independent")
MIN_INDEPENDENT_ROWS = 5  # the original dropped pairs shorter than this


@dataclass(frozen=True)
class ExtractConfig:
    """What a store holds; part of its manifest, so a store made with other settings is never reused silently."""

    protocol: str = "teacher_forced"
    max_new_tokens: int = 96
    target_layers: tuple[int, ...] = ()  # intermediate target layers to keep (empty: none)
    dtype: str = "float16"  # storage dtype of the hidden states
    shard_size: int = 256  # samples per shard

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r}: expected one of {PROTOCOLS}")
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"dtype {self.dtype!r}: expected float16, bfloat16 or float32")
        object.__setattr__(self, "target_layers", tuple(int(i) for i in self.target_layers))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_layers": list(self.target_layers)}


@dataclass
class ClipRequests:
    """One clip's questions with both models' inputs; ``visuals`` caches each model's encoded view."""

    clip_id: str
    samples: list[tuple[str, str, ModelInputs, ModelInputs]]  # (sample id, question, target inputs, drafter inputs)
    visuals: dict[str, Any] = field(default_factory=dict)


def sample_id(clip_id: str, question: str) -> str:
    """``<clip_id>/q<index>``: the question's index in :data:`sdlib.base.QUESTIONS` (or its text if not listed)."""
    return f"{clip_id}/q{QUESTIONS.index(question)}" if question in QUESTIONS else f"{clip_id}/{question}"


def split_clips(split_dir: str | Path, max_clips: int | None = None) -> list[str]:
    """The split's clip ids, sorted; the first ``max_clips`` of them (a fixed, reproducible subset)."""
    return sorted({r["clip_id"] for r in read_instructions(split_dir)})[:max_clips]


def clip_requests(split_dir: str | Path, drafter: DecodingModel, target: DecodingModel,
                  drafter_visual: Callable[[Any], Any], clips: Sequence[str], rank: int = 0,
                  world_size: int = 1) -> Iterator[ClipRequests]:
    """Per clip of this rank (clips ``rank, rank + world_size, ...``): its questions with both models' inputs.
    ``drafter_visual(loaded_clip)`` gives the drafter's view (event images); the target sees the RGB frames."""
    by_clip: dict[str, list[dict]] = {}
    for rec in read_instructions(split_dir):
        by_clip.setdefault(rec["clip_id"], []).append(rec)
    for clip_id in list(clips)[rank::world_size]:
        recs = by_clip.get(clip_id)
        if not recs:
            raise ValueError(f"{split_dir}: clip {clip_id!r} has no instruction record")
        clip = load_clip(split_dir, recs[0])
        d_view = drafter_visual(clip)
        samples = []
        for rec in recs:
            q = rec["conversations"][0]["value"]
            samples.append((sample_id(clip_id, q), q, target.prepare(q, clip.frames), drafter.prepare(q, d_view)))
        yield ClipRequests(clip_id, samples)


# -- one request ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_states(model: DecodingModel, inputs: ModelInputs, max_new_tokens: int, visual: Any = None,
                  layers: Sequence[int] = ()) -> dict[str, torch.Tensor]:
    """The model's greedy answer with its states: ``tokens`` [n] (EOS included when reached), ``hidden`` [n, H]
    (row t predicts tokens[t]) and, for ``layers``, ``layers`` [n, L, H]."""
    session = model.start(inputs, visual=visual, layers=layers)
    hidden = [session.prompt_hidden[-1:]]
    picked = [torch.stack([session.prompt_layers[i][-1] for i in layers])[None]] if layers else []
    logits = session.prompt_logits
    tokens: list[int] = []
    while True:
        token = int(logits.argmax())
        tokens.append(token)
        if token == model.eos_token_id or len(tokens) >= max_new_tokens:
            break
        out = session.append([token])
        hidden.append(out.hidden)
        if layers:
            picked.append(torch.stack([out.layers[i] for i in layers], dim=1))  # [1, L, H]
        logits = out.logits[-1]
    result = {"tokens": torch.tensor(tokens, dtype=torch.long), "hidden": torch.cat(hidden)}
    if layers:
        result["layers"] = torch.cat(picked)
    return result


@torch.no_grad()
def teacher_forced(model: DecodingModel, inputs: ModelInputs, tokens: torch.Tensor, visual: Any = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's post-norm states ``[n, H]`` on its prompt followed by ``tokens`` [n] (row t predicts tokens[t];
    row 0 is the prompt's last position) and its own argmax at each row ``[n]``."""
    session = model.start(inputs, visual=visual)
    rows, logits = [session.prompt_hidden[-1:]], [session.prompt_logits[None]]
    if len(tokens) > 1:
        out = session.append(tokens[:-1])
        rows.append(out.hidden)
        logits.append(out.logits)
    return torch.cat(rows).float(), torch.cat(logits).argmax(-1).cpu()


def extract_request(drafter: DecodingModel, target: DecodingModel, t_in: ModelInputs, d_in: ModelInputs,
                    cfg: ExtractConfig, t_visual: Any = None, d_visual: Any = None,
                    to_draft: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
    """One sample's tensors under ``cfg.protocol`` (None when the original protocol drops it). ``to_draft`` maps
    target token ids to the drafter's (tokenizers that differ); an unmapped id (negative) is fed as 0 and its row
    flagged in ``mapped`` [n] bool."""
    ans = greedy_states(target, t_in, cfg.max_new_tokens, visual=t_visual, layers=cfg.target_layers)
    tokens = ans["tokens"]
    fact = torch.from_numpy(token_fact_mask(target.tokenizer, tokens.tolist()))
    out = {"tokens": tokens, "target": ans["hidden"], "fact": fact}
    if cfg.target_layers:
        out["target_layers"] = ans["layers"]
    if cfg.protocol == "teacher_forced":
        fed = tokens if to_draft is None else to_draft(tokens)
        out["mapped"] = fed >= 0
        out["drafter"], out["drafter_tokens"] = teacher_forced(drafter, d_in, fed.clamp(min=0), visual=d_visual)
    else:  # the original: the drafter answers on its own; rows paired by position, cut to the shorter answer
        own = greedy_states(drafter, d_in, cfg.max_new_tokens, visual=d_visual)
        n = min(len(tokens), len(own["tokens"]))
        if n < MIN_INDEPENDENT_ROWS:
            return None
        out = {k: v[:n] for k, v in out.items()}
        out["drafter"], out["drafter_tokens"] = own["hidden"][:n], own["tokens"][:n]
        out["mapped"] = torch.ones(n, dtype=torch.bool)
    dtype = getattr(torch, cfg.dtype)
    for k in ("target", "drafter", "target_layers"):
        if k in out:
            out[k] = out[k].to(dtype)
    return out


# -- a split ----------------------------------------------------------------------------------------------------------
@dataclass
class ExtractionReport:
    samples: int  # stored by this call
    skipped_done: int  # already in the store (resume)
    dropped: int  # dropped by the original protocol (too short)
    rows: int
    seconds: float
    peak_rss_mb: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "samples_per_s": self.samples_per_s}


def extract_split(drafter: DecodingModel, target: DecodingModel, requests: Iterable[ClipRequests], out_dir: str | Path,
                  cfg: ExtractConfig, fingerprint: str, *, rank: int = 0, n_samples: int | None = None,
                  to_draft: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = True,
                  source: dict[str, Any] | None = None, overwrite: bool = False) -> ExtractionReport:
    """Extract every request into the store at ``out_dir`` (this rank's shards), skipping stored samples.

    The store's config is ``cfg`` plus ``source`` (what the samples come from: the pair's cache key, the split's
    content hash...), so a store of other models or data is refused instead of extended. The caller merges the
    ranks' manifests (:func:`sdlib.align.store.merge_manifests`) when every rank is done."""
    t0 = time.perf_counter()
    stored = skipped = dropped = rows = 0
    bar = progress_bar(total=n_samples, desc=f"extract {Path(out_dir).name}", unit="sample", disable=not progress)
    config = {**cfg.to_dict(), "source": source or {}}
    with ShardWriter(out_dir, config=config, fingerprint=fingerprint, shard_size=cfg.shard_size, rank=rank,
                     overwrite=overwrite) as writer:
        for clip in requests:
            todo = [s for s in clip.samples if s[0] not in writer.done_ids]
            skipped += len(clip.samples) - len(todo)
            bar.update(len(clip.samples) - len(todo))
            if not todo:
                continue
            t_vis = target.encode_visual(todo[0][2])  # one vision pass per clip and model
            d_vis = drafter.encode_visual(todo[0][3])
            for sid, _, t_in, d_in in todo:
                sample = extract_request(drafter, target, t_in, d_in, cfg, t_visual=t_vis, d_visual=d_vis,
                                         to_draft=to_draft)
                bar.update(1)
                if sample is None:
                    dropped += 1
                    continue
                writer.add(sid, sample)
                stored += 1
                rows += len(sample["tokens"])
    bar.close()
    return ExtractionReport(stored, skipped, dropped, rows, time.perf_counter() - t0,
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def export_lm_head(target: DecodingModel, path: str | Path) -> None:
    """The target's LM head (weight [V, H], and bias if any) and token embeddings as safetensors, so adapters train
    and evaluate without loading the target."""
    from safetensors.torch import save_file

    tensors = {"lm_head.weight": target.lm_head.weight.detach().float().cpu().contiguous(),
               "embed_tokens.weight": target.embed_tokens.weight.detach().float().cpu().contiguous()}
    if getattr(target.lm_head, "bias", None) is not None:
        tensors["lm_head.bias"] = target.lm_head.bias.detach().float().cpu().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"eos_token_id": str(target.eos_token_id)})
    tmp.replace(path)


# -- a stage's extraction: where the store lives, one process or several ------------------------------------------
def default_target_layers(target: DecodingModel) -> tuple[int, ...]:
    """Low, middle and high target layers for an EAGLE-3-style head (layer numbering of
    :mod:`sdlib.models.interface`: 0 the embeddings, ``n`` the post-norm last layer). With 8 layers or more:
    ``(2, n // 2, n - 3)``, the choice EAGLE-3's reference code makes; a shallower model keeps every layer up to 3."""
    n = int(target.decoder.config.num_hidden_layers)
    return (2, n // 2, n - 3) if n >= 8 else tuple(range(min(n, 2) + 1))


def features_dir(data_dir: Path, pair_key: str, cfg: ExtractConfig, plan: dict[str, Sequence[str]],
                 fingerprint: str) -> Path:
    """``<data>/features/<hash>``: one folder per (pair, settings, clips, extraction code)."""
    blob = json.dumps({"pair": pair_key, "config": cfg.to_dict(), "plan": {k: list(v) for k, v in plan.items()},
                       "code": fingerprint}, sort_keys=True)
    return Path(data_dir) / "features" / hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_extraction(pair: Any, split: str, clips: Sequence[str], out_dir: Path, cfg: ExtractConfig, fingerprint: str,
                   *, processes: int = 1, threads: int = 1, progress: bool = True) -> dict[str, Any]:
    """Extract one split of ``pair`` (a :class:`sdlib.models.stage_pair.StagePair`) into ``out_dir``, in this process
    or, with ``processes > 1``, in that many ranks under ``accelerate launch`` (each on its own core); merge the
    ranks' manifests. A finished store (``COMPLETE.json``) is reused. Returns the run's report.

    ``threads``: torch intra-op threads of each extracting process (in this process only while it extracts). Small
    models decode fastest with one: a second thread buys nothing on matrices this size and, when the other core is
    busy, its spin-waits made extraction several times slower here."""
    out_dir = Path(out_dir)
    done = out_dir / "COMPLETE.json"
    if done.is_file():
        return {**json.loads(done.read_text()), "reused": True}
    split_dir = pair.data_root / split
    source = extraction_source(pair, split, clips)
    t0 = time.perf_counter()
    if processes <= 1:
        to_draft = None if pair.pairing.identical else pair.pairing.to_draft
        reqs = clip_requests(split_dir, pair.drafter, pair.target, pair.drafter_visual, clips)
        n = sum(1 for r in read_instructions(split_dir) if r["clip_id"] in set(clips))
        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            rep = extract_split(pair.drafter, pair.target, reqs, out_dir, cfg, fingerprint, n_samples=n,
                                to_draft=to_draft, progress=progress, source=source)
        finally:
            torch.set_num_threads(old_threads)
        merge_manifests(out_dir)
        ranks = [rep.to_dict()]
    else:
        ranks = _launch(split_dir, clips, out_dir, cfg, fingerprint, source, processes, threads)
    report = {"samples": sum(r["samples"] for r in ranks), "rows": sum(r["rows"] for r in ranks),
              "dropped": sum(r["dropped"] for r in ranks), "seconds": time.perf_counter() - t0,
              "peak_rss_mb": max(r["peak_rss_mb"] for r in ranks), "processes": max(1, processes)}
    report["samples_per_s"] = report["samples"] / report["seconds"]
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, done)
    return {**report, "reused": False}


def extraction_source(pair: Any, split: str, clips: Sequence[str]) -> dict[str, Any]:
    """What a split's samples come from (the pair's cache key, the split's content hash, the clips), recorded in
    the store's config so that a store of other models or data is refused instead of extended."""
    return {"pair": pair.key, "split": read_manifest(pair.data_root / split)["content_hash"], "clips": list(clips)}


def write_job(out_dir: Path, split_dir: Path, clips: Sequence[str], cfg: ExtractConfig, fingerprint: str,
              source: dict[str, Any], threads: int = 1) -> list[str]:
    """Write ``out_dir/job.json`` for the ranks of :func:`main`; returns a rank's arguments after ``python``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    job = out_dir / "job.json"
    job.write_text(json.dumps({"split_dir": str(split_dir), "clips": list(clips), "config": cfg.to_dict(),
                               "fingerprint": fingerprint, "source": source}))
    return ["-m", "sdlib.align.extract", "--job", str(job), "--threads", str(threads)]


def _launch(split_dir: Path, clips: Sequence[str], out_dir: Path, cfg: ExtractConfig, fingerprint: str,
            source: dict[str, Any], processes: int, threads: int = 1,
            timeout_s: float = 6 * 3600) -> list[dict[str, Any]]:
    """``accelerate launch`` of :func:`main` over ``processes`` CPU ranks; their JSON reports. A launch running past
    ``timeout_s`` is killed with all its ranks, and the error says how far it got."""
    rank_args = write_job(out_dir, split_dir, clips, cfg, fingerprint, source, threads)
    # torchrun under accelerate's multi-process launcher; on a machine without CUDA the ranks join over gloo
    # (accelerate's `--cpu` launcher would need mpirun for more than one process)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *rank_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank it started
        stdout, stderr = proc.communicate()
        shards = sorted(p.name for p in out_dir.rglob("*.safetensors"))
        raise RuntimeError(f"extraction of {split_dir} with {processes} processes stopped after {timeout_s:.0f} s: "
                           f"{len(shards)} shard(s) were complete in {out_dir} (a rerun resumes from them); the "
                           f"ranks' last output:\n{stderr[-2000:]}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"extraction of {split_dir} with {processes} processes failed (exit {proc.returncode}):\n"
                           f"{stderr[-4000:]}")
    reports = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"rank"')]
    if len(reports) != processes:
        raise RuntimeError(f"extraction of {split_dir}: {len(reports)} of {processes} ranks reported:\n"
                           f"{stdout[-2000:]}\n{stderr[-2000:]}")
    return reports


def per_position_agreement(teacher_forced_store: FeatureStore, independent_store: FeatureStore, pairing: Any,
                           max_positions: int = 48) -> "Any":
    """Per answer position: how often the drafter's token equals the target's, under each protocol (a DataFrame
    indexed by position with columns ``teacher_forced`` and ``independent``)."""
    import pandas as pd

    cols = {}
    for name, st in (("teacher_forced", teacher_forced_store), ("independent", independent_store)):
        data, offsets = st.concat(["tokens", "drafter_tokens"])
        same = (pairing.to_target(data["drafter_tokens"]) == data["tokens"]).float()
        pos = torch.arange(len(same)) - torch.repeat_interleave(offsets[:-1], offsets.diff())
        keep = pos < max_positions
        sums = torch.zeros(max_positions).index_add_(0, pos[keep], same[keep])
        counts = torch.zeros(max_positions).index_add_(0, pos[keep], torch.ones(int(keep.sum())))
        cols[name] = (sums / counts.clamp(min=1)).where(counts > 0, torch.tensor(float("nan"))).numpy()
    return pd.DataFrame(cols).rename_axis("position")


# -- command line: one rank under `accelerate launch` (run_extraction starts it) ----------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    from accelerate import PartialState  # heavy; only the command line needs it

    from sdlib.models.stage_pair import load_stage_pair

    ap = argparse.ArgumentParser(description="One rank of a data-parallel extraction (see run_extraction).")
    ap.add_argument("--job", type=Path, required=True, help="job.json written by run_extraction")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = ap.parse_args(argv)
    job = json.loads(args.job.read_text())
    state = PartialState(cpu=not torch.cuda.is_available())
    torch.set_num_threads(args.threads)
    pair = load_stage_pair()
    cfg = ExtractConfig(**job["config"])
    split_dir = Path(job["split_dir"])
    reqs = clip_requests(split_dir, pair.drafter, pair.target, pair.drafter_visual, job["clips"],
                         rank=state.process_index, world_size=state.num_processes)
    to_draft = None if pair.pairing.identical else pair.pairing.to_draft
    report = extract_split(pair.drafter, pair.target, reqs, args.job.parent, cfg, job["fingerprint"],
                           rank=state.process_index, progress=False, source=job["source"], to_draft=to_draft)
    print(json.dumps({"rank": state.process_index, **report.to_dict()}), flush=True)
    state.wait_for_everyone()
    if state.is_main_process:
        merge_manifests(args.job.parent, world_size=state.num_processes)


if __name__ == "__main__":
    main()
