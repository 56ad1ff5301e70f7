"""Answer quality of the scale models and the drafter/target agreement (stage 01_models).

*Answer facts*: the words of an answer that carry scene facts (object kinds, colours, counts, light states,
illumination, static structure, motion).  A generated answer is scored against the reference answer of the same
view and question by fact precision and recall, and by whether its fact set matches the reference exactly.

*Agreement*: the drafter, teacher-forced on the target's greedy answer, predicts the target's next token; the
fraction it gets right is the per-token acceptance a greedy verifier would see, i.e. the cross-modal gap in one
number.  The exact-match rate of the two greedy answers is reported beside it.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from sdlib.world.qa import _NUMBERS, tokenize
from sdlib.world.scene import COLOURS, ILLUMINATIONS, LIGHT_STATES, ROAD_USER_KINDS, STATIC_KINDS

_PLURALS = {"buses": "bus", "pedestrians": "pedestrian", "people": "pedestrian", "bicycles": "bicycle",
            "cyclists": "bicycle", "cyclist": "bicycle", "trucks": "truck", "lorries": "truck", "lorry": "truck",
            "cars": "car", "buildings": "building", "trees": "tree", "poles": "pole", "streetlamps": "streetlamp",
            "lamps": "streetlamp"}
FACT_WORDS = frozenset(
    {*ROAD_USER_KINDS, *COLOURS, *LIGHT_STATES, *ILLUMINATIONS, *STATIC_KINDS, *_NUMBERS,
     "stopped", "moving", "parked", "crossing", "oncoming", "ahead", "left", "right", "sidewalk", "lane", "lanes",
     "traffic", "light", "switching", "switches", "switched"}
)


def answer_facts(text: str) -> Counter:
    """Multiset of fact words in an answer (lower-cased, plurals folded)."""
    words = (w.lower() for w in tokenize(text))
    return Counter(f for f in (_PLURALS.get(w, w) for w in words) if f in FACT_WORDS)


def fact_scores(generated: str, reference: str) -> dict[str, float]:
    """Fact precision, recall and exact match of ``generated`` against ``reference``."""
    g, r = answer_facts(generated), answer_facts(reference)
    overlap = sum((g & r).values())
    return {
        "fact_precision": overlap / sum(g.values()) if g else float(not r),
        "fact_recall": overlap / sum(r.values()) if r else 1.0,
        "fact_exact": float(g == r),
    }


def test_prompts(split_dir, max_clips: int | None = None) -> list[dict[str, Any]]:
    """Records of a split grouped per clip, first ``max_clips`` clips in clip-id order (deterministic)."""
    from sdlib.data.layout import read_instructions

    recs = read_instructions(split_dir)
    clips = sorted({r["clip_id"] for r in recs})[:max_clips]
    keep = set(clips)
    return [r for r in recs if r["clip_id"] in keep]


@torch.no_grad()
def evaluate_pair(drafter, target, split_dir, sizes, max_clips: int | None = None, max_new_tokens: int = 96,
                  progress=None, pairing=None):
    """Greedy answers of both models on a split, scored against their own view's reference, plus agreement.

    Returns a DataFrame with one row per prompt. Where a split has no reference answers (DSEC), the fact scores are
    NaN and only the answers and the agreement are measured. ``pairing`` (a ``TokenizerPairing``) translates the
    target's tokens for the drafter when their tokenizers differ; an unmapped token counts as a disagreement.
    """
    import pandas as pd

    from sdlib.data.layout import load_clip
    from sdlib.decoding.ar import greedy_decode
    from sdlib.models.scale import drafter_visual
    from sdlib.world import QUESTION_TYPES, QUESTIONS

    recs = test_prompts(split_dir, max_clips)
    translate = pairing is not None and not pairing.identical
    no_scores = dict.fromkeys(("fact_precision", "fact_recall", "fact_exact"), float("nan"))
    rows, cache = [], {}
    it = progress(recs, desc="evaluate", unit="prompt") if progress else recs
    for rec in it:
        if rec["clip_id"] not in cache:
            cache.clear()
            cache[rec["clip_id"]] = load_clip(split_dir, rec)
        clip = cache[rec["clip_id"]]
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
        agree = int((preds == t_tokens).sum())
        t_text = target.tokenizer.decode(t_out.tokens, skip_special_tokens=True)
        d_text = drafter.tokenizer.decode(d_out.tokens, skip_special_tokens=True)
        row = {"clip_id": rec["clip_id"], "question": q, "question_type": QUESTION_TYPES[q],
               "target_answer": t_text, "drafter_answer": d_text,
               "target_tokens": len(t_out.tokens), "drafter_tokens": len(d_out.tokens),
               "agree_tokens": agree, "identical": float(t_out.tokens == d_out.tokens)}
        events_refs = rec.get("meta", {}).get("answers_events") or [None] * len(QUESTIONS)
        refs = (rec["conversations"][1]["value"], events_refs[q])
        for who, text, ref in (("target", t_text, refs[0]), ("drafter", d_text, refs[1])):
            scores = fact_scores(text, ref) if ref else no_scores
            row.update({f"{who}_{k}": v for k, v in scores.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(df) -> dict[str, Any]:
    """The 01_models metrics from :func:`evaluate_pair`'s table."""
    per_type = df.groupby("question_type")[["target_fact_recall", "drafter_fact_recall", "target_fact_exact",
                                             "drafter_fact_exact"]].mean()
    return {
        "answer_quality": {
            who: {"fact_precision": float(df[f"{who}_fact_precision"].mean()),
                  "fact_recall": float(df[f"{who}_fact_recall"].mean()),
                  "fact_exact": float(df[f"{who}_fact_exact"].mean()),
                  "per_question_type": {t: float(v) for t, v in per_type[f"{who}_fact_recall"].items()}}
            for who in ("target", "drafter")
        },
        "drafter_target_agreement": float(df["agree_tokens"].sum() / df["target_tokens"].sum()),
        "identical_answers": float(df["identical"].mean()),
        "n_prompts": int(len(df)),
    }
