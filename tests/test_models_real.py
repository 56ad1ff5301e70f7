"""The real profile's code path, end to end on stand-ins of the published pair (tests/fixtures_real.py): EventGPT-7b
with its CLIP folder beside it and Video-LLaVA-7B-hf, each with its own LLaMA-style tokenizer (the same base pieces,
different added tokens), the target's LM head padded past its tokenizer, and a DSEC-format test split. On a GPU with
the 7B checkpoints the same notebook cells run; here they prove the path has no gaps and is loaded as published:
the EventGPT prompt and tokens of its inference code, 5-frame event input, one dtype per model, the original's 4-bit
config, and a tokenizer pairing that copes with the padded head."""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdlib import runner
from sdlib.data.dsec import build_dsec_split
from sdlib.data.layout import load_clip, read_instructions
from sdlib.decoding.ar import greedy_decode
from sdlib.models import scale
from sdlib.models.eventgpt import (
    EV_END,
    EV_START,
    EVENT_PATCH_TOKEN,
    EVENT_TOKEN_INDEX,
    SYSTEM_PROMPT,
    spatio_temporal_pool,
)
from sdlib.models.eventgpt_runner import EventGPTDecoder
from sdlib.models.interface import cache_length
from sdlib.models.loading import LoadError
from sdlib.models.pairing import UNMAPPED
from sdlib.models.real import load_real_pair
from sdlib.models.tokenizer import save_tokenizer, train_tokenizer
from sdlib.world import QUESTIONS
from fixtures_dsec import write_dsec_sequence
from fixtures_real import BASE_VOCAB, TARGET_ADDED, llama_tokenizer, write_eventgpt, write_videollava

S_TOKENS = 5  # CLIP tokens per event image of the stand-in: (16 / 8)^2 patches + CLS


# ---------------------------------------------------------------------------------------------------------------------
# stand-ins
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base():
    return llama_tokenizer()


@pytest.fixture(scope="module")
def published(tmp_path_factory, base):
    """EventGPT-7b (mm_use_im_start_end False, base tokenizer) and Video-LLaVA-7B-hf (base + 3 added, padded head)."""
    root = tmp_path_factory.mktemp("published")
    return {"eventgpt_path": write_eventgpt(root, base), "videollava_path": write_videollava(root, base)}


@pytest.fixture(scope="module")
def pair(published):
    """Loaded with the published settings (the defaults): bf16 drafter, fp16 target, 5 event frames."""
    return load_real_pair(published["eventgpt_path"], published["videollava_path"], sample_texts=QUESTIONS)


def _event_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)  # [T, H, W, 3]


def _frames(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (10, 24, 32, 3), dtype=np.uint8)  # [N, H, W, 3]


# ---------------------------------------------------------------------------------------------------------------------
# loading: dtypes, added tokens, rows
# ---------------------------------------------------------------------------------------------------------------------
def test_each_model_in_its_published_dtype_with_float32_outputs(pair, published):
    drafter, target = pair.drafter.model, pair.target.model
    assert {p.dtype for p in drafter.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in drafter.model.visual_tower.parameters()} == {torch.bfloat16}  # CLIP too
    assert {p.dtype for p in target.parameters()} == {torch.float16}
    for key, value in {"drafter_dtype": "bfloat16", "target_dtype": "float16", "event_frames": 5,
                       "prompt_style": "published", "quantization": None}.items():
        assert pair.settings[key] == value, key
    for model, inputs in ((pair.drafter, pair.drafter.prepare(QUESTIONS[0], _event_images(5))),
                          (pair.target, pair.target.prepare(QUESTIONS[0], _frames()))):
        pre = model.prefill(inputs)
        scored = model.score(torch.tensor([5, 6, 7]), pre.cache)
        for out in (pre.logits, pre.hidden, scored.logits, scored.hidden):
            assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
        assert pre.logits.shape == (model.lm_head.out_features,) and scored.logits.shape == (3, pre.logits.numel())
    with pytest.raises(LoadError, match=r"dtype='float8': expected one of"):
        load_real_pair(published["eventgpt_path"], published["videollava_path"], target_dtype="float8")


def test_eventgpt_gets_inference_py_tokens_and_rows(pair, published):
    tok, model = pair.drafter.tokenizer, pair.drafter.model
    # mm_use_im_patch_token (default True) adds <ev_patch>; mm_use_im_start_end is False: no marker tokens
    assert pair.settings["eventgpt_added_tokens"] == [EVENT_PATCH_TOKEN]
    assert tok.convert_tokens_to_ids(EVENT_PATCH_TOKEN) == BASE_VOCAB and len(tok) == BASE_VOCAB + 1
    assert EV_START not in tok.get_vocab() and EV_END not in tok.get_vocab()
    # the model grew to its tokenizer; the new row is the mean of the old ones, the rest is the checkpoint
    assert pair.settings["eventgpt_added_rows"] == 1
    assert model.model.embed_tokens.weight.shape[0] == model.lm_head.out_features == model.config.vocab_size == 449
    saved = load_file(published["eventgpt_path"] / "model.safetensors")
    for name, weight in (("model.embed_tokens.weight", model.model.embed_tokens.weight),
                         ("lm_head.weight", model.lm_head.weight)):
        old = saved[name].to(torch.bfloat16)
        assert torch.equal(weight[:BASE_VOCAB], old)
        torch.testing.assert_close(weight[BASE_VOCAB].float(), old.float().mean(0), rtol=0, atol=1e-2)


def test_published_prompt_tokenized_as_eventgpt_inference(pair, base):
    inputs = pair.drafter.prepare(QUESTIONS[3], _event_images(5))
    system = SYSTEM_PROMPT
    assert inputs.prompt_text == f"{system} USER: <ev_start><event><ev_end>\n{QUESTIONS[3]} ASSISTANT:"
    ids = inputs.input_ids[0].tolist()
    # inference.py: split at <event>, tokenize each piece, one BOS, -200 between; the markers are plain text here
    before, after = inputs.prompt_text.split("<event>")
    plain = lambda text: base(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ids == [base.bos_token_id, *plain(before), EVENT_TOKEN_INDEX, *plain(after)]
    assert max(ids) < BASE_VOCAB  # no added token in the prompt
    where = ids.index(EVENT_TOKEN_INDEX)
    assert base.decode(ids[1:where]).endswith(" USER: <ev_start>")
    assert base.decode(ids[where + 1:]) == f"<ev_end>\n{QUESTIONS[3]} ASSISTANT:"
    assert len(plain(before)) - len(plain(f"{system} USER:")) >= 5  # "<ev_start>" is several pieces, not one token
    # the plain style (the scale model's) drops the markers and nothing else
    plain_decoder = EventGPTDecoder(pair.drafter.model, pair.drafter.tokenizer, pair.drafter.preprocess)
    plain_ids = plain_decoder.prepare(QUESTIONS[3], _event_images(5)).input_ids[0].tolist()
    assert plain_ids == [base.bos_token_id, *plain(f"{system} USER: "), EVENT_TOKEN_INDEX,
                         *plain(f"\n{QUESTIONS[3]} ASSISTANT:")]
    with pytest.raises(ValueError, match="prompt_style='fancy'"):
        EventGPTDecoder(pair.drafter.model, pair.drafter.tokenizer, pair.drafter.preprocess, prompt_style="fancy")


def test_start_end_checkpoint_tokenizes_the_markers_as_tokens(tmp_path, base, published):
    folder = write_eventgpt(tmp_path, base, start_end=True, seed=5)
    pair = load_real_pair(folder, published["videollava_path"], drafter_dtype="float32", target_dtype="float32")
    tok = pair.drafter.tokenizer
    assert pair.settings["eventgpt_added_tokens"] == [] and pair.settings["eventgpt_added_rows"] == 0
    start, end = tok.convert_tokens_to_ids(EV_START), tok.convert_tokens_to_ids(EV_END)
    assert (tok.convert_tokens_to_ids(EVENT_PATCH_TOKEN), start, end) == (448, 449, 450)
    ids = pair.drafter.prepare(QUESTIONS[0], _event_images(5)).input_ids[0].tolist()
    where = ids.index(EVENT_TOKEN_INDEX)
    assert ids[where - 1] == start and ids[where + 1] == end and ids.count(start) == ids.count(end) == 1
    assert max(ids[:where - 1] + ids[where + 2:]) < BASE_VOCAB  # the rest is ordinary text
    assert tok.decode(ids[where + 2:]).strip(" ") == f"\n{QUESTIONS[0]} ASSISTANT:"
    # the three event tokens and Video-LLaVA's three added tokens share ids 448-450 but no strings: none is mapped
    d2t = pair.pairing.draft_to_target
    assert torch.equal(d2t[:BASE_VOCAB], torch.arange(BASE_VOCAB)) and (d2t[BASE_VOCAB:] == UNMAPPED).all()
    assert (pair.pairing.target_to_draft[BASE_VOCAB:] == UNMAPPED).all()
    pre = pair.drafter.prefill(pair.drafter.prepare(QUESTIONS[0], _event_images(5)))
    assert pre.logits.shape == (451,) and bool(torch.isfinite(pre.logits).all())


# ---------------------------------------------------------------------------------------------------------------------
# event input
# ---------------------------------------------------------------------------------------------------------------------
def test_five_event_frames_pool_to_t_plus_s_tokens(pair, published):
    decoder = pair.drafter
    assert decoder.event_frames == 5 and pair.shapes()["drafter (EventGPT class)"]["visual tokens"] == 5 + S_TOKENS
    inputs = decoder.prepare(QUESTIONS[1], _event_images(5, seed=3))
    pixels = inputs.extra["event_pixel_values"]
    assert tuple(pixels.shape) == (5, 3, 16, 16)
    pre = decoder.prefill(inputs)
    assert pre.prompt_len == inputs.input_ids.shape[1] - 1 + 5 + S_TOKENS == cache_length(pre.cache)
    # each frame through CLIP, projector and adaptor alone, then pooled: the 5 temporal tokens are the frames' means
    with torch.no_grad():
        pooled = decoder.model.encode_events(pixels).float()  # [5 + S, hidden]
        per_frame = torch.stack([decoder.model.encode_events(pixels[k:k + 1]).float()[1:] for k in range(5)])
    assert pooled.shape == (5 + S_TOKENS, 64)
    torch.testing.assert_close(pooled, spatio_temporal_pool(per_frame), rtol=0.02, atol=0.02)
    assert not torch.allclose(pooled[0], pooled[1])  # the frames differ, so do their temporal tokens
    with pytest.raises(ValueError, match="1 event images; this decoder takes event_frames=5"):
        decoder.prepare(QUESTIONS[1], _event_images(1))
    with pytest.raises(ValueError, match=r"event features: 6 tokens; event_frames=5 pool to 10"):
        decoder.prepare(QUESTIONS[1], torch.zeros(6, 64))
    one = load_real_pair(published["eventgpt_path"], published["videollava_path"], event_frames=1)
    single = one.drafter.prepare(QUESTIONS[1], _event_images(1))
    assert one.drafter.prefill(single).prompt_len == single.input_ids.shape[1] - 1 + 1 + S_TOKENS
    assert one.shapes()["drafter (EventGPT class)"]["vision input"].startswith("1 event image 16px")
    with pytest.raises(ValueError, match=r"event_frames=3: expected 1 .* or 5"):
        load_real_pair(published["eventgpt_path"], published["videollava_path"], event_frames=3)


def test_dsec_clip_gives_the_drafter_its_five_images(tmp_path, pair):
    seq = write_dsec_sequence(tmp_path / "dsec", "zurich_city_00_a", np.random.default_rng(1), sensor_hw=(24, 32))
    split = tmp_path / "dsec_tiny"
    build_dsec_split([seq["dir"]], split, "test", sensor_hw=(24, 32), questions=QUESTIONS)
    rec = read_instructions(split / "test")[0]
    clip = load_clip(split / "test", rec)
    five = scale.drafter_visual(clip, dataclasses.replace(scale.ScaleSizes(), event_frames=5))  # as 01_models
    assert five.shape == (5, 24, 32, 3)
    inputs = pair.drafter.prepare(QUESTIONS[0], five)
    assert inputs.extra["event_pixel_values"].shape == (5, 3, 16, 16)
    assert torch.isfinite(pair.drafter.prefill(inputs).logits).all()


# ---------------------------------------------------------------------------------------------------------------------
# 4-bit
# ---------------------------------------------------------------------------------------------------------------------
def test_4bit_keeps_the_original_bitsandbytes_config(published):
    bnb = pytest.importorskip("bitsandbytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pair = load_real_pair(published["eventgpt_path"], published["videollava_path"], quantization="4bit")
        for model in (pair.drafter.model, pair.target.model):
            linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
            assert linears, type(model).__name__
            for m in linears:  # BitsAndBytesConfig(nf4, double quantization, bf16 compute) for both, as the original
                assert m.compute_dtype == torch.bfloat16
                assert m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested
            assert type(model.lm_head) is torch.nn.Linear
        drafter, target = pair.drafter.model, pair.target.model
        assert drafter.model.embed_tokens.weight.dtype == drafter.lm_head.weight.dtype == torch.bfloat16
        assert type(drafter.model.visual_tower.visual_tower.encoder.layers[0].mlp.fc1) is torch.nn.Linear
        assert {p.dtype for p in drafter.model.visual_tower.parameters()} == {torch.bfloat16}
        assert target.get_input_embeddings().weight.dtype == target.lm_head.weight.dtype == torch.float16
        assert drafter.lm_head.out_features == 449  # grown for <ev_patch> after 4-bit loading
        assert pair.shapes()["target (Video-LLaVA class)"]["weights"] == "float16, 4bit (bfloat16 compute)"
        for model, inputs in ((pair.drafter, pair.drafter.prepare(QUESTIONS[0], _event_images(5))),
                              (pair.target, pair.target.prepare(QUESTIONS[0], _frames()))):
            pre = model.prefill(inputs)
            assert pre.logits.dtype == torch.float32 and bool(torch.isfinite(pre.logits).all())


# ---------------------------------------------------------------------------------------------------------------------
# pairing and drafting through it
# ---------------------------------------------------------------------------------------------------------------------
def test_pairing_covers_added_tokens_and_the_padded_head(pair):
    p, t_tok = pair.pairing, pair.target.tokenizer
    s = p.summary()
    assert not s["identical"]
    assert (s["drafter_tokens"], s["drafter_rows"], s["target_tokens"], s["target_rows"]) == (449, 449, 451, 512)
    assert s["mapped"] == BASE_VOCAB and s["text_coverage"] == 1.0
    assert torch.equal(p.draft_to_target[:BASE_VOCAB], torch.arange(BASE_VOCAB))  # the shared LLaMA pieces
    assert int(p.draft_to_target[BASE_VOCAB]) == UNMAPPED  # <ev_patch>
    added = [t_tok.convert_tokens_to_ids(t) for t in TARGET_ADDED]
    assert sorted(added) == [448, 449, 450] and (p.target_to_draft[added] == UNMAPPED).all()
    padding = torch.arange(451, 512)  # head rows past the tokenizer: translate to UNMAPPED, never raise
    assert (p.to_draft(padding) == UNMAPPED).all()
    assert p.proposable.shape == (449,) and int(p.proposable.sum()) == BASE_VOCAB
    logits = torch.zeros(2, 449)
    logits[:, BASE_VOCAB] = 10.0  # the drafter's favourite would be <ev_patch>
    logits[1, 7] = 5.0
    draft_ids, target_ids = p.greedy_draft(logits)
    assert draft_ids.tolist()[1] == 7 and target_ids.tolist()[1] == 7 and BASE_VOCAB not in draft_ids.tolist()


def _share_language_model(drafter, target) -> None:
    """Give the drafter the target's Llama (rows 0..447) with attention outputs zeroed on both: each model is then the
    same context-free next-token table, so the drafter agrees wherever the tokenizer mapping lets it."""
    src = target.model.language_model  # drafter: EventChatModel, target: VideoLlavaForConditionalGeneration
    with torch.no_grad():
        for layer in src.layers:
            layer.self_attn.o_proj.weight.zero_()
        drafter.model.layers.load_state_dict(src.layers.state_dict())
        drafter.model.norm.load_state_dict(src.norm.state_dict())
        drafter.model.embed_tokens.weight[:BASE_VOCAB] = src.embed_tokens.weight[:BASE_VOCAB]
        drafter.lm_head.weight[:BASE_VOCAB] = target.lm_head.weight[:BASE_VOCAB]


@torch.no_grad()
def _speculative_greedy(drafter, target, pairing, d_in, t_in, max_new: int, k: int = 3):
    """Greedy speculative decoding through the tokenizer mapping (the drafter proposes only mapped ids, the target
    verifies k drafts in one forward). Returns the tokens, every proposed drafter id, the accepted count and how
    often the drafter's unrestricted argmax was an id the target cannot verify."""
    t_pre, d_pre = target.prefill(t_in), drafter.prefill(d_in)
    out = [int(t_pre.logits.argmax())]
    proposed, accepted, would_be_unmapped = [], 0, 0
    t_cache, d_cache = t_pre.cache, d_pre.cache
    while len(out) < max_new and out[-1] != target.eos_token_id:
        fed = pairing.to_draft(torch.tensor(out[-1:])).clamp(min=0)  # a token the drafter lacks: feed <unk>
        logits = drafter.score(fed, d_cache).logits[-1]
        d_base, drafts = cache_length(d_cache), []
        for _ in range(k):
            would_be_unmapped += int(not pairing.proposable[int(logits.argmax())])
            d_id, t_id = pairing.greedy_draft(logits)
            proposed.append(int(d_id))
            drafts.append(int(t_id))
            logits = drafter.score(d_id.view(1), d_cache).logits[-1]
        t_base = cache_length(t_cache)
        preds = target.score(torch.tensor(out[-1:] + drafts), t_cache).logits.argmax(-1).tolist()  # k + 1 rows
        n = 0
        while n < k and drafts[n] == preds[n]:
            n += 1
        accepted += n
        target.crop(t_cache, t_base + 1 + n)
        drafter.crop(d_cache, d_base + n)
        for token in drafts[:n] + [preds[n]]:
            out.append(token)
            if token == target.eos_token_id or len(out) >= max_new:
                break
    return out, proposed, accepted, would_be_unmapped


def test_greedy_speculative_decoding_through_the_pair_is_lossless(published):
    pair = load_real_pair(published["eventgpt_path"], published["videollava_path"], drafter_dtype="float32",
                          target_dtype="float32")
    drafter, target, pairing = pair.drafter, pair.target, pair.pairing
    _share_language_model(drafter.model, target.model)
    t_in = target.prepare(QUESTIONS[2], _frames(seed=4))
    first = int(target.prefill(t_in).logits.argmax())
    with torch.no_grad():  # where the target would say `first`, it says 500 (a padding row), the drafter <ev_patch>
        target.model.lm_head.weight[500] = 1.5 * target.model.lm_head.weight[first]
        drafter.model.lm_head.weight[BASE_VOCAB] = 1.5 * drafter.model.lm_head.weight[first]
    d_in = drafter.prepare(QUESTIONS[2], _event_images(5, seed=4))
    reference = greedy_decode(target, t_in, 16, stop_at_eos=True).tokens
    assert 500 in reference  # the target's own answer holds an id past its tokenizer
    tokens, proposed, accepted, would_be_unmapped = _speculative_greedy(drafter, target, pairing, d_in, t_in, 16)
    assert tokens == reference  # lossless
    assert proposed and max(proposed) < BASE_VOCAB and bool(pairing.proposable[proposed].all())
    assert would_be_unmapped > 0  # the restriction to mapped ids was needed, not idle
    assert accepted > 0


# ---------------------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------------------
TINY = scale.ScaleSizes(target_image=16, target_patch=8, target_vision_hidden=32, target_vision_layers=1,
                        target_hidden=32, target_layers=1, target_heads=2, target_intermediate=48,
                        event_image=16, event_patch=8, drafter_vision_hidden=32, drafter_vision_layers=1,
                        drafter_hidden=32, drafter_layers=1, drafter_heads=2, drafter_intermediate=48)


@pytest.fixture(scope="module")
def same_tokenizer_checkpoints(tmp_path_factory):
    """Both stand-ins with the scale model's one tokenizer and unpadded heads."""
    root = tmp_path_factory.mktemp("same-tokenizer")
    tok = train_tokenizer([*QUESTIONS, "there is a red car on the road and a bus"])
    drafter, target = scale.build_drafter(tok, TINY), scale.build_target(tok, TINY)
    drafter.config.mm_use_im_patch_token = False  # so the loader adds nothing and the tokenizers stay the same
    paths = {"eventgpt_path": root / "EventGPT-7b", "videollava_path": root / "Video-LLaVA-7B-hf"}
    drafter.save_pretrained(paths["eventgpt_path"])
    target.save_pretrained(paths["videollava_path"])
    for folder in paths.values():
        save_tokenizer(tok, folder)
    return paths


def test_load_real_pair_with_one_tokenizer_pairs_as_identity(same_tokenizer_checkpoints):
    paths = same_tokenizer_checkpoints
    pair = load_real_pair(paths["eventgpt_path"], paths["videollava_path"], drafter_dtype="float32",
                          target_dtype="float32", event_frames=1)
    assert pair.pairing.identical and pair.settings["eventgpt_added_tokens"] == []
    t_in = pair.target.prepare(QUESTIONS[0], _frames())
    d_in = pair.drafter.prepare(QUESTIONS[0], _event_images(1))
    for model, inputs in ((pair.target, t_in), (pair.drafter, d_in)):
        pre = model.prefill(inputs)
        assert pre.logits.shape[-1] == model.lm_head.out_features and np.isfinite(pre.logits.numpy()).all()
    assert pair.shapes()["target (Video-LLaVA class)"]["vision input"].startswith("8 RGB frames 16px")


@pytest.mark.slow
def test_real_profile_stage_runs_on_stand_in_checkpoints(published, tmp_path, monkeypatch):
    data = tmp_path / "data"
    monkeypatch.setenv("SDLIB_DATA_DIR", str(data))
    seq = write_dsec_sequence(tmp_path / "dsec", "zurich_city_00_a", np.random.default_rng(1), sensor_hw=(24, 32))
    manifest = build_dsec_split([seq["dir"]], data / "dsec" / "dsec_tiny", "test", sensor_hw=(24, 32),
                                questions=QUESTIONS)
    assert manifest["counts"]["clips"] >= 1
    # the real profile's own settings (bf16 / fp16, 5 event frames), on this CPU without 4-bit
    overrides = [(k, str(v)) for k, v in published.items()] + [
        ("dataset", "dsec_tiny"), ("device", "cpu"), ("quantization", ""),
        ("test_clips", "1"), ("cost_samples", "1"), ("cost_repeats", "1"), ("max_new_tokens", "6")]
    record = runner.run_stage("01_models", "real", overrides, output_dir=tmp_path / "stages", progress_bar=False)
    params, m = record["parameters"], record["metrics"]
    assert (params["drafter_dtype"], params["target_dtype"], params["event_frames"]) == ("bfloat16", "float16", 5)
    assert m["train_seconds"] is None
    tokenizers = m["tokenizers"]
    assert not tokenizers["identical"] and tokenizers["mapped"] == BASE_VOCAB
    assert (tokenizers["drafter_rows"], tokenizers["target_rows"]) == (449, 512)
    assert m["n_test_prompts"] == 10 and 0.0 <= m["drafter_target_agreement"] <= 1.0
    assert m["answer_quality"]["target"]["fact_recall"] is None  # DSEC has no reference answers (NaN -> null)
    assert all(v > 0 for v in m["costs_ms"].values())
    drafter_shape = m["sizes"]["drafter (EventGPT class)"]
    assert drafter_shape["visual tokens"] == 5 + S_TOKENS and drafter_shape["weights"] == "bfloat16"
    assert m["ratios"]["visual_token_ratio"] == pytest.approx(8 * S_TOKENS / (5 + S_TOKENS))
    glued = runner.glued_values(tmp_path / "stages" / "01_models.ipynb")
    assert glued["train_summary"].startswith("loaded from the published checkpoints")
    assert glued["tokenizer_text"].startswith("use different tokenizers")
    assert "without reference answers" in glued["goal_text"] and "without reference answers" in glued["reliance_text"]
    saved = json.loads((data / "results" / "01_models.json").read_text())
    assert saved["profile"] == "real" and saved["parameters"]["source"] == "real"
