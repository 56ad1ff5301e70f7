"""The pair stage 01 produced, for the stages after it: the trained scale pair (its folder is in stage 01's result
file) or the published checkpoints (loaded with the parameters stage 01 ran with).

Stages exchange data only through ``data/``: this reads ``data/results/01_models.json`` and nothing else, so a later
stage uses exactly the models whose costs and quality stage 01 measured.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sdlib import paths
from sdlib.core import stage_metrics
from sdlib.base import QUESTIONS
from sdlib.models import scale
from sdlib.models.interface import DecodingModel
from sdlib.models.pairing import TokenizerPairing, pair_tokenizers


@dataclass
class StagePair:
    drafter: DecodingModel
    target: DecodingModel
    pairing: TokenizerPairing
    source: str  # "scale" or "real"
    key: str  # the scale pair's cache key, or the real checkpoints' folders
    drafter_visual: Callable[[Any], Any]  # loaded clip -> the drafter's input (event images)
    data_root: Path  # the data set stage 01 used


def load_stage_pair() -> StagePair:
    """The drafter, target and tokenizer pairing of stage 01's last run (:func:`sdlib.core.stage_metrics`)."""
    metrics = stage_metrics("01_models")
    params = metrics.get("stage_parameters")
    if params is None:
        raise ValueError("stage 01's metrics carry no `stage_parameters` (made by older code): rerun stage 01_models")
    source = params.get("source", "scale")
    if source == "scale":
        pair_dir = metrics.get("pair_dir")
        if not pair_dir or not (Path(pair_dir) / "DONE").is_file():
            raise FileNotFoundError(f"stage 01's trained pair {pair_dir!r} is missing: rerun stage 01_models")
        drafter, target = scale.load_pair(pair_dir)
        sizes = scale.ScaleSizes(**json.loads((Path(pair_dir) / "pair.json").read_text())["sizes"])
        key = json.loads((Path(pair_dir) / "pair.json").read_text())["key"]
        root = paths.data_dir() / "world" / params["dataset"]
        visual = lambda clip: scale.drafter_visual(clip, sizes)  # noqa: E731
        pairing = pair_tokenizers(drafter.tokenizer, target.tokenizer, QUESTIONS)
    elif source == "real":
        from sdlib.models.real import load_real_pair  # loads bitsandbytes/transformers' heavy paths

        pair = load_real_pair(params["eventgpt_path"], params["videollava_path"],
                              quantization=params.get("quantization") or None,
                              drafter_dtype=params["drafter_dtype"], target_dtype=params["target_dtype"],
                              event_frames=params["event_frames"], device=params["device"],
                              params_file="params/01_models.real.yaml", sample_texts=QUESTIONS)
        drafter, target, pairing = pair.drafter, pair.target, pair.pairing
        key = f"{params['eventgpt_path']}|{params['videollava_path']}|{params.get('quantization') or 'none'}"
        root = paths.data_dir() / "dsec" / params["dataset"]
        n = int(params["event_frames"])
        visual = lambda clip: clip.event_image_1f[None] if n == 1 else clip.event_images  # noqa: E731
    else:
        raise ValueError(f"stage 01 ran with source={source!r}: expected 'scale' or 'real'")
    return StagePair(drafter, target, pairing, source, key, visual, root)
