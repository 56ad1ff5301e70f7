"""Answer quality of a drafter/target pair and their token agreement (stage 01_models).

**Facts** are read from the answers' words (:mod:`sdlib.models.fact_words`). A generated answer is scored against the
reference answer *of its own view* by the multiset of (kind, value) facts: recall (share of the reference's facts it
states), precision (share of its facts the reference states), per kind and overall. **RGB-only facts** are those of
the RGB reference that the event reference of the same prompt lacks (colours, static objects while the ego stands
still, light states the events cannot see, objects events miss): the target should state them, the drafter cannot
know them.

**Agreement.** The drafter, fed the target's greedy answer token by token (teacher forcing), predicts the target's
next token; the per-position match vector says, for every token of the target's answer, whether the drafter's
prediction equals it. For greedy verification this vector determines everything a speculative decoder with that
drafter would see: a round with draft length ``k`` starting at position ``i`` accepts the run of matches from ``i``
(at most ``k``) and adds the target's own token (:func:`round_accepts`). Tokens are split into *fact* tokens (inside
a fact word) and *template* tokens (everything else) by the word they belong to.

**Fluency.** The share of answers that repeat a word trigram (the references' own share is printed beside it,
since a template can legitimately repeat one) and the share that run to the token limit without ending; and the
per-token perplexity of each model on its own view's test references, beside a unigram model of the training
answers.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from sdlib.base.questions import QUESTION_TYPES, QUESTIONS
from sdlib.data.layout import load_clip, read_instructions
from sdlib.decoding.ar import greedy_decode  # the AR baseline answers: stage 01 scores the models' own answers
from sdlib.models.fact_words import FACT_KINDS, REPORTED_KINDS, answer_facts, token_fact_mask, words_of
from sdlib.models.scale import clip_examples, drafter_visual
from sdlib.models.train import DrafterLM, TargetLM, evaluate


def fact_scores(generated: str, reference: str, only: Counter | None = None) -> dict[str, float]:
    """Fact recall and precision of ``generated`` against ``reference``, overall and per kind (NaN where the kind is
    absent from the side it divides by), plus exact match of the fact multisets.

    With ``only`` (a fact multiset, e.g. the RGB-only facts), recall is measured on those facts alone."""
    g, r = answer_facts(generated), answer_facts(reference)
    if only is not None:
        r = r & only
    out: dict[str, float] = {}
    for kind in (None, *FACT_KINDS):
        gk = g if kind is None else Counter({f: c for f, c in g.items() if f[0] == kind})
        rk = r if kind is None else Counter({f: c for f, c in r.items() if f[0] == kind})
        hit = sum((gk & rk).values())
        suffix = "" if kind is None else f"_{kind}"
        out[f"recall{suffix}"] = hit / sum(rk.values()) if rk else float("nan")
        out[f"precision{suffix}"] = hit / sum(gk.values()) if gk else float("nan")
    out["exact"] = float(g == r)
    return out


def rgb_only_facts(rgb_reference: str, events_reference: str) -> Counter:
    """Facts the RGB reference states and the event reference of the same prompt does not (multiset difference)."""
    return answer_facts(rgb_reference) - answer_facts(events_reference)


# ---- tokens, words and agreement --------------------------------------------------------------------------------
def round_accepts(match: Sequence[bool], k: int) -> list[int]:
    """Accepted drafts per round of greedy speculative decoding with draft length ``k``, given the teacher-forced
    match vector of an answer: each round accepts the run of matches from its start (at most ``k``), then the target
    adds one token of its own, so the next round starts ``accepted + 1`` tokens later."""
    if k < 1:
        raise ValueError(f"k={k}: expected a draft length >= 1")
    m = np.asarray(match, dtype=bool)
    out, i = [], 0
    while i < len(m):
        run = 0
        while run < k and i + run < len(m) and m[i + run]:
            run += 1
        out.append(run)
        i += run + 1
    return out


def accept_length_stats(matches: Iterable[Sequence[bool]], ks: Sequence[int] = (1, 2, 4, 8)) -> dict[int, dict]:
    """For each draft length ``k``: the distribution of accepted drafts per round over all answers, its mean, and
    the mean tokens per target forward (accepted + 1)."""
    matches = list(matches)
    out = {}
    for k in ks:
        rounds = [a for m in matches for a in round_accepts(m, k)]
        hist = np.bincount(rounds, minlength=k + 1)[: k + 1] if rounds else np.zeros(k + 1, int)
        out[k] = {"rounds": int(len(rounds)), "histogram": hist.tolist(),
                  "mean_accepted": float(np.mean(rounds)) if rounds else float("nan"),
                  "tokens_per_forward": float(np.mean(rounds) + 1.0) if rounds else float("nan")}
    return out


# ---- fluency ------------------------------------------------------------------------------------------------------
def repeats_trigram(text: str) -> bool:
    """True if some word trigram (punctuation ignored, case folded) occurs twice in ``text``."""
    w = [x.lower() for x in words_of(text) if x[0].isalnum()]
    grams = list(zip(w, w[1:], w[2:]))
    return len(grams) != len(set(grams))


def unigram_perplexity(tokenizer: Any, train_texts: Iterable[str], test_texts: Iterable[str]) -> float:
    """Per-token perplexity of a unigram model (add-one smoothed counts of the training answers' tokens, ``</s>``
    included) on the test texts: the floor a language model must beat by a wide margin."""
    counts = np.ones(len(tokenizer), dtype=np.float64)
    for t in train_texts:
        for i in tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]:
            counts[i] += 1
    logp = np.log(counts / counts.sum())
    nll, n = 0.0, 0
    for t in test_texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        nll -= float(logp[ids].sum())
        n += len(ids)
    return math.exp(nll / n) if n else float("nan")


# ---- does a model use its sensor? ----------------------------------------------------------------------------------
@torch.no_grad()
def image_reliance(decoder, which: str, split_dir, sizes, max_clips: int = 12) -> dict[str, float]:
    """Answer loss (nats per token, teacher forced on the split's reference answers of the model's own view) with
    each clip's own images, and with the next clip's images instead. A model that reads its sensor does clearly
    worse with the wrong images; a pure language model does not notice."""
    examples = clip_examples(which, decoder, split_dir, sizes, max_clips)
    lm = DrafterLM(decoder.model) if which == "drafter" else TargetLM(decoder.model)
    pad = decoder.tokenizer.pad_token_id
    own = evaluate(lm, examples, pad)
    swapped = [dataclasses.replace(ex, visual=examples[(i + 1) % len(examples)].visual)
               for i, ex in enumerate(examples)]
    other = evaluate(lm, swapped, pad)
    return {"own_images": own, "other_images": other, "gap": other - own, "clips": len(examples)}


# ---- evaluation ---------------------------------------------------------------------------------------------------
def test_prompts(split_dir, max_clips: int | None = None) -> list[dict[str, Any]]:
    """Records of a split grouped per clip, first ``max_clips`` clips in clip-id order (deterministic)."""
    recs = read_instructions(split_dir)
    clips = sorted({r["clip_id"] for r in recs})[:max_clips]
    keep = set(clips)
    return [r for r in recs if r["clip_id"] in keep]


@dataclass
class PairEvaluation:
    """Per-prompt table (one row per test prompt) and the per-prompt agreement vectors."""
    table: Any  # pandas DataFrame
    match: list[np.ndarray]  # per prompt: [target answer tokens] bool, drafter's teacher-forced prediction correct
    fact_token: list[np.ndarray]  # per prompt: [target answer tokens] bool, token lies in a fact word


def reference_nll(model, inputs, answer_ids: list[int]) -> float:
    """Summed next-token negative log-likelihood of ``answer_ids`` after the prompt (teacher forced)."""
    pre = model.prefill(inputs)
    logits = pre.logits[None]  # [1, V] predicts answer_ids[0]
    if len(answer_ids) > 1:
        logits = torch.cat([logits, model.score(torch.tensor(answer_ids[:-1]), pre.cache).logits])  # [n, V]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(-logp[torch.arange(len(answer_ids)), torch.tensor(answer_ids)].sum())


@torch.no_grad()
def evaluate_pair(drafter, target, split_dir, sizes, max_clips: int | None = None, max_new_tokens: int = 128,
                  progress=None, pairing=None) -> PairEvaluation:
    """Greedy answers of both models on a split, scored against their own view's reference; the drafter's
    teacher-forced agreement with the target's answer; each model's likelihood of its own reference.

    Where a split has no reference answers (DSEC), fact scores and perplexities are NaN and only the answers and
    the agreement are measured. ``pairing`` (a ``TokenizerPairing``) translates the target's tokens for the drafter
    when their tokenizers differ; an unmapped token counts as a disagreement.
    """
    import pandas as pd


    recs = test_prompts(split_dir, max_clips)
    translate = pairing is not None and not pairing.identical
    rows, matches, fact_tokens, clip = [], [], [], None
    it = progress(recs, desc="evaluate", unit="prompt") if progress else recs
    for rec in it:
        if clip is None or clip_id != rec["clip_id"]:
            clip_id, clip = rec["clip_id"], load_clip(split_dir, rec)
        question = rec["conversations"][0]["value"]
        q = QUESTIONS.index(question)
        t_in = target.prepare(question, clip.frames)
        d_in = drafter.prepare(question, drafter_visual(clip, sizes))
        t_out = greedy_decode(target, t_in, max_new_tokens)
        d_out = greedy_decode(drafter, d_in, max_new_tokens)
        # the drafter teacher-forced on the target's answer: does it predict the target's next token?
        pre = drafter.prefill(d_in)
        t_tokens = torch.tensor(t_out.tokens)
        fed = pairing.to_draft(t_tokens).clamp(min=0) if translate else t_tokens  # unmapped: any id, scored wrong
        preds = torch.tensor([int(pre.logits.argmax())])
        if len(t_tokens) > 1:
            preds = torch.cat([preds, drafter.score(fed[:-1], pre.cache).logits.argmax(-1).cpu()])
        if translate:
            preds = pairing.to_target(preds)
        match = (preds == t_tokens).numpy()
        facts_mask = token_fact_mask(target.tokenizer, t_out.tokens)
        matches.append(match)
        fact_tokens.append(facts_mask)
        t_text = target.tokenizer.decode(t_out.tokens, skip_special_tokens=True)
        d_text = drafter.tokenizer.decode(d_out.tokens, skip_special_tokens=True)
        row = {"clip_id": rec["clip_id"], "question": q, "question_type": QUESTION_TYPES[q],
               "target_answer": t_text, "drafter_answer": d_text,
               "target_tokens": len(t_out.tokens), "drafter_tokens": len(d_out.tokens),
               "target_unfinished": not t_out.stopped_at_eos, "drafter_unfinished": not d_out.stopped_at_eos,
               "target_repeats": repeats_trigram(t_text), "drafter_repeats": repeats_trigram(d_text),
               "agree_tokens": int(match.sum()), "fact_tokens": int(facts_mask.sum()),
               "agree_fact_tokens": int(match[facts_mask].sum()),
               "identical": float(t_out.tokens == d_out.tokens)}
        events_refs = rec.get("meta", {}).get("answers_events") or [None] * len(QUESTIONS)
        conv = rec["conversations"]
        refs = {"target": (conv[1]["value"] or None) if len(conv) > 1 else None, "drafter": events_refs[q]}
        only_rgb = rgb_only_facts(refs["target"], refs["drafter"]) if refs["target"] and refs["drafter"] else None
        row["rgb_only_facts"] = int(sum(only_rgb.values())) if only_rgb is not None else 0
        row["reference_repeats"] = repeats_trigram(refs["target"]) if refs["target"] else float("nan")
        for who, model, inputs, text in (("target", target, t_in, t_text), ("drafter", drafter, d_in, d_text)):
            ref = refs[who]
            if ref:
                for k, v in fact_scores(text, ref).items():
                    row[f"{who}_{k}"] = v
                # the RGB-only facts, scored for both models (the drafter cannot see them)
                if only_rgb is not None:
                    row[f"{who}_recall_rgb_only"] = fact_scores(text, refs["target"], only=only_rgb)["recall"]
                ids = model.tokenizer(ref, add_special_tokens=False)["input_ids"] + [model.eos_token_id]
                row[f"{who}_ref_nll"] = reference_nll(model, inputs, ids)
                row[f"{who}_ref_tokens"] = len(ids)
            else:
                row[f"{who}_recall"] = row[f"{who}_precision"] = row[f"{who}_exact"] = float("nan")
        rows.append(row)
    return PairEvaluation(pd.DataFrame(rows), matches, fact_tokens)


def _mean(series) -> float:
    v = series.astype(float)
    return float(v.mean()) if v.notna().any() else float("nan")


def save_evaluation(ev: PairEvaluation, path: Path) -> None:
    """Write an evaluation as JSON (the table in pandas' "split" layout, the vectors as 0/1 lists), atomically."""
    data = {"table": ev.table.to_dict(orient="split"),
            "match": [np.asarray(m).astype(int).tolist() for m in ev.match],
            "fact_token": [np.asarray(f).astype(int).tolist() for f in ev.fact_token]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def load_evaluation(path: Path) -> PairEvaluation:
    """Read what :func:`save_evaluation` wrote."""
    import pandas as pd

    data = json.loads(Path(path).read_text())
    table = pd.DataFrame(**data["table"])
    return PairEvaluation(table, [np.asarray(m, dtype=bool) for m in data["match"]],
                          [np.asarray(f, dtype=bool) for f in data["fact_token"]])


def cached_evaluation(path: Path, compute: Callable[[], PairEvaluation]) -> tuple[PairEvaluation, bool]:
    """``(evaluation, reused)``: the evaluation stored at ``path`` if there is one, else ``compute()``, stored there.
    The caller names ``path`` after everything the evaluation depends on (the trained pair, the test data, the
    settings and :func:`sdlib.fingerprint.pair_evaluation_fingerprint`)."""
    path = Path(path)
    if path.is_file():
        return load_evaluation(path), True
    ev = compute()
    save_evaluation(ev, path)
    return ev, False


def summarize(ev: PairEvaluation, ks: Sequence[int] = (1, 2, 4, 8)) -> dict[str, Any]:
    """The 01_models metrics from :func:`evaluate_pair`'s results (fact means are over prompts where defined)."""
    df = ev.table
    quality: dict[str, Any] = {}
    for who in ("target", "drafter"):
        q = {"fact_recall": _mean(df[f"{who}_recall"]), "fact_precision": _mean(df[f"{who}_precision"]),
             "fact_exact": _mean(df[f"{who}_exact"]),
             "per_question_type": {t: _mean(g[f"{who}_recall"]) for t, g in df.groupby("question_type")},
             "per_fact_kind": {k: {"recall": _mean(df.get(f"{who}_recall_{k}", df[f"{who}_recall"] * np.nan)),
                                   "precision": _mean(df.get(f"{who}_precision_{k}", df[f"{who}_recall"] * np.nan))}
                               for k in FACT_KINDS},
             "recall_rgb_only": _mean(df.get(f"{who}_recall_rgb_only", df[f"{who}_recall"] * np.nan)),
             "repeated_trigram_share": float(df[f"{who}_repeats"].mean()),
             "unfinished_share": float(df[f"{who}_unfinished"].mean())}
        if f"{who}_ref_nll" in df and df[f"{who}_ref_nll"].notna().any():
            q["perplexity"] = math.exp(float(df[f"{who}_ref_nll"].sum() / df[f"{who}_ref_tokens"].sum()))
        quality[who] = q
    match_all = np.concatenate(ev.match) if ev.match else np.zeros(0, bool)
    fact_all = np.concatenate(ev.fact_token) if ev.fact_token else np.zeros(0, bool)
    per_type = {}
    for t, g in df.groupby("question_type"):
        idx = list(g.index)
        m = np.concatenate([ev.match[i] for i in idx])
        f = np.concatenate([ev.fact_token[i] for i in idx])
        per_type[t] = {"all": float(m.mean()), "template": float(m[~f].mean()) if (~f).any() else float("nan"),
                       "fact": float(m[f].mean()) if f.any() else float("nan")}
    return {
        "answer_quality": quality,
        "drafter_target_agreement": float(match_all.mean()) if len(match_all) else float("nan"),
        "agreement_template": float(match_all[~fact_all].mean()) if (~fact_all).any() else float("nan"),
        "agreement_fact": float(match_all[fact_all].mean()) if fact_all.any() else float("nan"),
        "agreement_per_question_type": per_type,
        "accept_lengths": {str(k): v for k, v in accept_length_stats(ev.match, ks).items()},
        "reference_repeated_trigram_share": _mean(df["reference_repeats"]),
        "identical_answers": float(df["identical"].mean()),
        "n_prompts": int(len(df)),
    }
