"""The real profile's code path, end to end on stand-ins: two tiny checkpoints written in the published layouts
(EventGPT with its CLIP sub-folder, Video-LLaVA-hf), each with its own tokenizer folder, and a DSEC-format test split.
On a GPU with the 7B checkpoints the same notebook cells run; here they prove the path has no gaps."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sdlib import runner
from sdlib.data.dsec import build_dsec_split
from sdlib.models import scale
from sdlib.models.real import load_real_pair
from sdlib.models.tokenizer import save_tokenizer, train_tokenizer
from sdlib.world import QUESTIONS
from fixtures_dsec import write_dsec_sequence

TINY = scale.ScaleSizes(target_image=16, target_patch=8, target_vision_hidden=32, target_vision_layers=1,
                        target_hidden=32, target_layers=1, target_heads=2, target_intermediate=48,
                        event_image=16, event_patch=8, drafter_vision_hidden=32, drafter_vision_layers=1,
                        drafter_hidden=32, drafter_layers=1, drafter_heads=2, drafter_intermediate=48)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    tok = train_tokenizer([*QUESTIONS, "there is a red car on the road and a bus"])
    drafter, target = scale.build_drafter(tok, TINY), scale.build_target(tok, TINY)
    paths = {"eventgpt_path": root / "EventGPT-7b", "videollava_path": root / "Video-LLaVA-7B-hf"}
    drafter.save_pretrained(paths["eventgpt_path"])
    target.save_pretrained(paths["videollava_path"])
    for folder in paths.values():
        save_tokenizer(tok, folder)
    return paths


def test_load_real_pair_gives_working_decoders(checkpoints):
    pair = load_real_pair(checkpoints["eventgpt_path"], checkpoints["videollava_path"], dtype="float32")
    assert pair.pairing.identical
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (10, 20, 24, 3), dtype=np.uint8)
    event_image = rng.integers(0, 256, (1, 24, 32, 3), dtype=np.uint8)
    t_in = pair.target.prepare(QUESTIONS[0], frames)
    d_in = pair.drafter.prepare(QUESTIONS[0], event_image)
    for model, inputs in ((pair.target, t_in), (pair.drafter, d_in)):
        pre = model.prefill(inputs)
        assert pre.logits.shape[-1] == model.lm_head.out_features and np.isfinite(pre.logits.numpy()).all()
    assert pair.shapes()["target (Video-LLaVA class)"]["vision input"].startswith("8 RGB frames 16px")


@pytest.mark.slow
def test_real_profile_stage_runs_on_stand_in_checkpoints(checkpoints, tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("SDLIB_DATA_DIR", str(data))
    seq = write_dsec_sequence(tmp_path / "dsec", "zurich_city_00_a", np.random.default_rng(1), sensor_hw=(24, 32))
    manifest = build_dsec_split([seq["dir"]], data / "dsec" / "dsec_tiny", "test", sensor_hw=(24, 32),
                                questions=QUESTIONS)
    assert manifest["counts"]["clips"] >= 1
    overrides = [(k, str(v)) for k, v in checkpoints.items()] + [
        ("dataset", "dsec_tiny"), ("device", "cpu"), ("dtype", "float32"), ("quantization", ""),
        ("test_clips", "1"), ("cost_samples", "1"), ("cost_repeats", "1"), ("max_new_tokens", "6")]
    record = runner.run_stage("01_models", "real", overrides, output_dir=tmp_path / "stages", progress_bar=False)
    m = record["metrics"]
    assert m["train_seconds"] is None and m["tokenizers"]["identical"]
    assert m["n_test_prompts"] == 10 and 0.0 <= m["drafter_target_agreement"] <= 1.0
    assert m["answer_quality"]["target"]["fact_recall"] is None  # DSEC has no reference answers (NaN -> null)
    assert all(v > 0 for v in m["costs_ms"].values())
    glued = runner.glued_values(tmp_path / "stages" / "01_models.ipynb")
    assert glued["train_summary"].startswith("loaded from the published checkpoints")
    assert "no reference answers" in glued["quality_text"]
    saved = json.loads((data / "results" / "01_models.json").read_text())
    assert saved["profile"] == "real" and saved["parameters"]["source"] == "real"
