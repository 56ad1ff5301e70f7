"""Small random scale pairs for the engine's tests: built from a seed, optionally saved in the trained-pair layout so
a drafter process can load them (:class:`sdlib.decoding.placement.PairDrafter`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sdlib.models import scale
from sdlib.models.tokenizer import save_tokenizer, train_tokenizer

SIZES = scale.ScaleSizes(target_image=16, target_hidden=64, target_heads=4, target_intermediate=128,
                         event_image=16, drafter_hidden=48, drafter_heads=4, drafter_intermediate=96,
                         target_vision_hidden=32, drafter_vision_hidden=32)
QUESTIONS = ["What do you see on the road ahead?", "Describe the traffic.", "Is anyone crossing the street?",
             "Which vehicles are parked?", "What is the weather like?", "How many lanes does the road have?"]


def random_pair(seed: int = 3):
    """(drafter, target) decoders with random weights over a small tokenizer."""
    tok = train_tokenizer(QUESTIONS + ["A red car is parked on the right. Two people cross the road."] * 3, 300)
    return scale.make_decoders(tok, SIZES, seed=seed)


def save_pair(drafter, target, directory: Path) -> Path:
    """Write a pair in the layout ``scale.load_pair`` reads."""
    directory = Path(directory)
    for which, dec in (("drafter", drafter), ("target", target)):
        dec.model.save_pretrained(str(directory / which))
    save_tokenizer(target.tokenizer, directory / "tokenizer")
    (directory / "pair.json").write_text(json.dumps({"sizes": SIZES.to_dict()}))
    return directory


def requests(pair, n, seed=0):
    """``n`` (target inputs, drafter inputs) of random frames and event images."""
    drafter, target = pair
    rng = np.random.default_rng(seed)
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        frames = rng.integers(0, 256, (8, 20, 24, 3), dtype=np.uint8)
        events = rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
        yield target.prepare(q, frames), drafter.prepare(q, events)
