"""EventGPT: config, event branch, splice, prompt, published checkpoint layout, and the DecodingModel runner.

Everything runs on tiny random models (CLIP 32x32 px, patch 8 -> 17 tokens per frame; Llama hidden 64, 2 layers).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from sdlib.models.eventgpt import (
    EV_END,
    EV_START,
    EVENT_PATCH_TOKEN,
    EVENT_TOKEN_INDEX,
    IGNORE_INDEX,
    SYSTEM_PROMPT,
    EventChatConfig,
    EventChatModel,
    add_event_tokens,
    event_token_count,
    eventgpt_prompt,
    spatio_temporal_pool,
    tokenizer_event_token,
)
from sdlib.models.eventgpt_runner import EventGPTDecoder, clip_style_preprocess
from sdlib.models.interface import DecodingModel, cache_length
from sdlib.world import QUESTIONS  # the 10 DSEC questions

LLAMA_KW = dict(
    vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=256,
)
CLIP_KW = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
)
S_TOKENS = (32 // 8) ** 2 + 1  # CLIP tokens per frame: 16 patches + CLS
CLIP_PREFIX = "model.visual_tower.visual_tower."


# ---------------------------------------------------------------------------------------------------------------------
# builders (also imported by test_models_loading.py)
# ---------------------------------------------------------------------------------------------------------------------
def tiny_config(clip_kw: dict | None = None, **overrides) -> EventChatConfig:
    """A tiny EventChatConfig carrying its CLIP vision config (no CLIP folder needed)."""
    clip = CLIPVisionConfig(**{**CLIP_KW, **(clip_kw or {})})
    return EventChatConfig(**{**LLAMA_KW, **overrides}, visual_tower_config=clip.to_dict())


def tiny_model(seed: int = 0, clip_kw: dict | None = None, **overrides) -> EventChatModel:
    """A tiny EventChatModel whose matrices are redrawn at std 0.15 (seeded) so logits are well spread."""
    torch.manual_seed(seed)
    model = EventChatModel(tiny_config(clip_kw, **overrides)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.15)
    return model


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the prompt's words; adds BOS like the Llama tokenizer."""
    words: list[str] = []
    for text in [SYSTEM_PROMPT, "USER: ASSISTANT:", *QUESTIONS]:
        for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text):
            if w not in words:
                words.append(w)
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    assert len(vocab) <= LLAMA_KW["vocab_size"]
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def pixels(n_frames: int, seed: int) -> torch.Tensor:
    return torch.randn(n_frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))  # [T, 3, H, W]


def llama_keys(config: EventChatConfig) -> set[str]:
    """State-dict keys of a plain Vicuna-style LlamaForCausalLM of the same size (built on the meta device)."""
    with torch.device("meta"):
        llama = LlamaForCausalLM(LlamaConfig(**{k: getattr(config, k) for k in LLAMA_KW}))
    return set(llama.state_dict())


# keys the published EventGPT-7B adds to Vicuna (seed_system.md §1.1, event_data.md §2.2b)
EVENT_BRANCH_KEYS = {
    "model.visual_projector.0.weight",
    "model.visual_projector.0.bias",
    "model.visual_projector.2.weight",
    "model.visual_projector.2.bias",
    "model.feature_adaptor.weight",
    "model.feature_adaptor.bias",
}


# ---------------------------------------------------------------------------------------------------------------------
# config and event branch
# ---------------------------------------------------------------------------------------------------------------------
def test_config_reads_widths_from_clip_and_auto_classes_resolve():
    cfg = tiny_config()
    assert cfg.model_type == "EventChat_llama"
    assert cfg.mm_hidden_size == 32
    model = AutoModelForCausalLM.from_config(cfg)
    assert type(model) is EventChatModel
    proj = model.model.visual_projector
    assert [tuple(proj[i].weight.shape) for i in (0, 2)] == [(64, 32), (64, 64)]
    assert isinstance(proj[1], torch.nn.GELU)
    assert tuple(model.model.feature_adaptor.weight.shape) == (64, 64)
    assert model.model.visual_tower.num_tokens == S_TOKENS
    assert EventChatModel(tiny_config(event_feature_adaptor=False)).model.feature_adaptor is None
    with pytest.raises(ValueError, match="mm_hidden_size=48 disagrees .* hidden_size=32"):
        tiny_config(mm_hidden_size=48)


@pytest.mark.parametrize(
    ("clip_kw", "n_frames", "num_temporal", "expected"),
    [
        ({}, 1, None, 17 + 1),  # 1 frame: S + 1
        ({}, 5, None, 17 + 5),  # 5 frames: S + 5
        ({"image_size": 48, "patch_size": 16}, 5, None, 10 + 5),  # 3x3 patches + CLS
        ({}, 5, 8, 17 + 8),  # temporal tokens padded to 8
    ],
)
def test_event_token_count_follows_clip_geometry(clip_kw, n_frames, num_temporal, expected):
    model = tiny_model(clip_kw=clip_kw, num_temporal_tokens=num_temporal)
    size = model.config.clip_config().image_size
    px = torch.randn(n_frames, 3, size, size, generator=torch.Generator().manual_seed(1))
    feats = model.encode_events(px)
    assert tuple(feats.shape) == (expected, 64)
    assert event_token_count(model.config, n_frames) == expected
    batched = model.encode_events(torch.stack([px, px]))  # [B, T, 3, H, W] -> [B, N, C]
    assert tuple(batched.shape) == (2, expected, 64)
    torch.testing.assert_close(batched[1], feats, rtol=1e-5, atol=1e-6)


def test_spatio_temporal_pool_values():
    t, s, c = 2, 3, 4
    idx = torch.arange(t * s * c, dtype=torch.float32).view(t, s, c)  # value = 12 t + 4 s + c
    out = spatio_temporal_pool(idx)
    expected_temporal = torch.tensor([[4.0, 5, 6, 7], [16, 17, 18, 19]])  # mean over s: 12 t + 4 + c
    expected_spatial = torch.tensor([[6.0, 7, 8, 9], [10, 11, 12, 13], [14, 15, 16, 17]])  # mean over t: 6 + 4 s + c
    assert torch.equal(out, torch.cat([expected_temporal, expected_spatial]))
    padded = spatio_temporal_pool(idx, num_temporal_tokens=3)
    assert padded.shape == (3 + s, c) and torch.equal(padded[2], torch.zeros(c))
    assert torch.equal(spatio_temporal_pool(idx, num_temporal_tokens=1)[0], expected_temporal[0])
    assert torch.equal(spatio_temporal_pool(torch.stack([idx, idx + 1]))[1], out + 1)  # leading batch dim
    with pytest.raises(ValueError, match=r"\[\.\.\., T, S, C\]"):
        spatio_temporal_pool(torch.zeros(3, 4))


def test_feature_adaptor_is_applied_exactly_once():
    model = tiny_model(seed=3)
    px = pixels(5, seed=4)
    branch = model.model
    with torch.no_grad():
        clip_tokens = branch.visual_tower.visual_tower(pixel_values=px).last_hidden_state  # [5, 17, 32]
        once = branch.feature_adaptor(branch.visual_projector(clip_tokens))  # [5, 17, 64]
        twice = branch.feature_adaptor(once)
        feats = model.encode_events(px)
    torch.testing.assert_close(feats, spatio_temporal_pool(once), rtol=0, atol=1e-6)
    assert (feats - spatio_temporal_pool(twice)).abs().max() > 1e-2  # the seed pipeline's double application differs

    calls: list[int] = []
    hook = branch.feature_adaptor.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[:-1].numel()))
    ids = torch.tensor([[1, 5, EVENT_TOKEN_INDEX, 7]])
    with torch.no_grad():
        model(input_ids=ids, event_pixel_values=px)
        assert calls == [5 * S_TOKENS]  # one call covering every frame token once
        model(input_ids=ids, event_features=feats)
        assert calls == [5 * S_TOKENS]  # cached features are not adapted again
    hook.remove()


def test_cached_features_give_identical_logits():
    model = tiny_model(seed=5)
    px = pixels(5, seed=6)
    ids = torch.tensor([[1, 9, 10, EVENT_TOKEN_INDEX, 11, 12, 13]])
    with torch.no_grad():
        from_pixels = model(input_ids=ids, event_pixel_values=px).logits  # [1, 6 + 22, V]
        from_cache = model(input_ids=ids, event_features=model.encode_events(px)).logits
    assert from_pixels.shape == (1, 6 + 22, 128)
    assert torch.equal(from_pixels, from_cache)


def test_event_tokens_are_spliced_at_the_placeholder():
    model = tiny_model(seed=7)
    emb = model.model.embed_tokens
    feats = torch.randn(22, 64, generator=torch.Generator().manual_seed(8))
    ids = torch.tensor([[1, 5, 6, EVENT_TOKEN_INDEX, 7, 8]])
    labels = torch.tensor([[-100, -100, -100, -100, 7, 8]])
    with torch.no_grad():
        embeds, mask, labs = model.model.embed_with_events(ids, feats, torch.ones_like(ids), labels)
        assert embeds.shape == (1, 5 + 22, 64)
        assert torch.equal(embeds[0, :3], emb(torch.tensor([1, 5, 6])))
        assert torch.equal(embeds[0, 3:25], feats)
        assert torch.equal(embeds[0, 25:], emb(torch.tensor([7, 8])))
        assert mask.tolist() == [[1] * 27]
        assert labs[0].tolist() == [-100] * 3 + [IGNORE_INDEX] * 22 + [7, 8]
        # two rows, placeholder at different positions, one feature block per row
        rows = torch.tensor([[1, EVENT_TOKEN_INDEX, 5, 6], [1, 5, 6, EVENT_TOKEN_INDEX]])
        both = torch.stack([feats, feats + 1])
        embeds2, _, _ = model.model.embed_with_events(rows, both)
        assert torch.equal(embeds2[0, 1:23], feats) and torch.equal(embeds2[1, 3:25], feats + 1)
        assert torch.equal(embeds2[1, :3], emb(torch.tensor([1, 5, 6])))
    with pytest.raises(ValueError, match=r"exactly one <event> placeholder .* found \[0\]"):
        model.model.embed_with_events(torch.tensor([[1, 5, 6]]), feats)
    with pytest.raises(ValueError, match=r"found \[2\]"):
        model.model.embed_with_events(torch.tensor([[1, EVENT_TOKEN_INDEX, 5, EVENT_TOKEN_INDEX]]), feats)
    with pytest.raises(ValueError, match="exactly one of event_pixel_values"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="no <event> placeholder"):
        model(input_ids=torch.tensor([[1, 5, 6]]), event_features=feats)
    with pytest.raises(ValueError, match="width 32 != hidden_size 64"):
        model.model.embed_with_events(ids, torch.zeros(22, 32))


# ---------------------------------------------------------------------------------------------------------------------
# prompt and tokenization
# ---------------------------------------------------------------------------------------------------------------------
def test_prompt_is_eventgpt_v1():
    # dataset/conversation.py: prepare_event_prompt writes <ev_start><event><ev_end> whatever the config says
    published = (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <ev_start><event><ev_end>\n"
        "What is this scene about? ASSISTANT:"
    )
    assert eventgpt_prompt("What is this scene about?") == published
    assert eventgpt_prompt("What is this scene about?", style="published") == published
    plain = eventgpt_prompt("Q?", style="plain")
    assert plain == f"{SYSTEM_PROMPT} USER: <event>\nQ? ASSISTANT:"
    with pytest.raises(ValueError, match=r"prompt style='start_end': expected one of published, plain"):
        eventgpt_prompt("Q?", style="start_end")


def test_add_event_tokens_follows_inference_py():
    patch_only = tiny_tokenizer()
    n = len(patch_only)
    assert add_event_tokens(patch_only, tiny_config()) == [EVENT_PATCH_TOKEN]  # mm_use_im_patch_token defaults True
    assert patch_only.convert_tokens_to_ids(EVENT_PATCH_TOKEN) == n and len(patch_only) == n + 1
    assert add_event_tokens(patch_only, tiny_config()) == []  # already there: nothing new
    both = tiny_tokenizer()
    assert add_event_tokens(both, tiny_config(mm_use_im_start_end=True)) == [EVENT_PATCH_TOKEN, EV_START, EV_END]
    assert [both.convert_tokens_to_ids(t) for t in (EVENT_PATCH_TOKEN, EV_START, EV_END)] == [n, n + 1, n + 2]
    # added tokens are whole: the published prompt then holds one id per marker around the placeholder
    ids = tokenizer_event_token(eventgpt_prompt(QUESTIONS[0]), both)
    where = ids.index(EVENT_TOKEN_INDEX)
    assert (ids[where - 1], ids[where + 1]) == (n + 1, n + 2)
    # without start/end tokens the markers are text (here: pieces outside the tiny vocabulary)
    text_ids = tokenizer_event_token(eventgpt_prompt(QUESTIONS[0]), patch_only)
    assert max(text_ids) < n and len(text_ids) > len(ids)
    none = tiny_tokenizer()
    assert add_event_tokens(none, tiny_config(mm_use_im_patch_token=False)) == [] and len(none) == n


def test_resize_for_tokenizer_grows_with_mean_rows_and_keeps_the_rest():
    model = tiny_model(seed=41)
    ids = torch.tensor([[1, 5, 6, EVENT_TOKEN_INDEX, 7, 8]])
    with torch.no_grad():
        before = model(input_ids=ids, event_pixel_values=pixels(2, seed=42)).logits
    old_embed, old_head = model.model.embed_tokens.weight.clone(), model.lm_head.weight.clone()
    assert model.resize_for_tokenizer(128) == 0 and model.resize_for_tokenizer(100) == 0  # never shrinks
    assert model.resize_for_tokenizer(131) == 3
    assert model.config.vocab_size == model.vocab_size == 131
    assert model.model.embed_tokens.weight.shape == (131, 64) and model.lm_head.weight.shape == (131, 64)
    assert torch.equal(model.model.embed_tokens.weight[:128], old_embed)
    assert torch.equal(model.model.embed_tokens.weight[128:], old_embed.mean(0).expand(3, -1))
    assert torch.equal(model.lm_head.weight[128:], old_head.mean(0).expand(3, -1))
    with torch.no_grad():
        after = model(input_ids=ids, event_pixel_values=pixels(2, seed=42)).logits
    assert after.shape[-1] == 131 and torch.equal(after[..., :128], before)
    # a new token can be fed: its embedding row exists
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 130]])).logits.shape == (1, 2, 131)


def test_tokenizer_event_token_inserts_placeholder_and_one_bos():
    tok = tiny_tokenizer()
    prompt = eventgpt_prompt(QUESTIONS[0], style="plain")  # the tiny word vocabulary has no pieces for the markers
    ids = tokenizer_event_token(prompt, tok)
    before, after = prompt.split("<event>")
    plain = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ids == [tok.bos_token_id] + plain(before) + [EVENT_TOKEN_INDEX] + plain(after)
    assert ids.count(tok.bos_token_id) == 1 and ids.count(EVENT_TOKEN_INDEX) == 1
    assert tok.unk_token_id not in ids  # the tiny vocabulary covers the prompt
    assert tokenizer_event_token("<event> What <event>", tok, add_bos=False) == [
        EVENT_TOKEN_INDEX, *plain("What"), EVENT_TOKEN_INDEX
    ]
    as_tensor = tokenizer_event_token(prompt, tok, return_tensors="pt")
    assert as_tensor.shape == (1, len(ids)) and as_tensor[0].tolist() == ids


# ---------------------------------------------------------------------------------------------------------------------
# checkpoint layout
# ---------------------------------------------------------------------------------------------------------------------
def _write_published_checkpoint(src: EventChatModel, root: Path, clip_kind: str) -> Path:
    """Write ``src`` the way EventGPT-7B is distributed: an EventGPT folder whose config names a separate CLIP folder
    holding hub-style keys (``vision_model.*``); the Llama/projector tensors are written under explicit key names."""
    state = src.state_dict()
    ckpt = root / "checkpoints" / "EventGPT-tiny"
    ckpt.mkdir(parents=True)
    clip_state = {k[len(CLIP_PREFIX):]: v for k, v in state.items() if k.startswith(CLIP_PREFIX)}
    clip_cfg = src.config.clip_config()
    if clip_kind == "full_clip":  # like openai/clip-vit-large-patch14-336: text + vision, model_type "clip"
        clip_dir = root / "checkpoints" / "clip-vit-tiny"
        torch.manual_seed(11)
        full = CLIPModel(CLIPConfig(
            vision_config=clip_cfg.to_dict(),
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                             vocab_size=99, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        ))
        full.vision_model.load_state_dict(clip_state)
        full.save_pretrained(clip_dir)
        mm_visual_tower = "clip-vit-tiny"  # resolved as a sibling of the EventGPT folder, like the original layout
    else:  # a bare CLIP vision folder given by absolute path
        clip_dir = root / "clip-vision"
        clip_dir.mkdir()
        clip_cfg.save_pretrained(clip_dir)
        save_file({f"vision_model.{k}": v.contiguous() for k, v in clip_state.items()}, clip_dir / "model.safetensors",
                  metadata={"format": "pt"})
        mm_visual_tower = str(clip_dir)
    with safe_open(clip_dir / "model.safetensors", "pt") as f:
        assert any(k.startswith("vision_model.") for k in f.keys())

    names = llama_keys(src.config) | EVENT_BRANCH_KEYS
    tensors = {k: state[k].contiguous() for k in names}
    if clip_kind == "full_clip":
        # stray CLIP keys in 4.x naming inside the EventGPT file, zeroed: they must be ignored, not loaded
        tensors.update({f"{CLIP_PREFIX}vision_model.{k}": torch.zeros_like(v) for k, v in clip_state.items()})
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    config = {
        "architectures": ["EventChatModel"],
        "model_type": "EventChat_llama",
        **LLAMA_KW,
        "rms_norm_eps": src.config.rms_norm_eps,
        "mm_visual_tower": mm_visual_tower,
        "mm_hidden_size": CLIP_KW["hidden_size"],
        "mm_projector_type": "mlp2x_gelu",
        "event_feature_adaptor": True,
        "mm_use_im_start_end": False,
        "mm_vision_select_layer": -2,  # present in the training scripts, unused by the model
        "torch_dtype": "float32",
    }
    (ckpt / "config.json").write_text(json.dumps(config, indent=2))
    return ckpt


@pytest.mark.parametrize("clip_kind", ["full_clip", "vision_only"])
def test_published_checkpoint_layout_loads_exactly(tmp_path, clip_kind):
    src = tiny_model(seed=9)
    own_keys = {k for k in src.state_dict() if not k.startswith(CLIP_PREFIX)}
    assert own_keys == llama_keys(src.config) | EVENT_BRANCH_KEYS  # module names = published key names

    ckpt = _write_published_checkpoint(src, tmp_path, clip_kind)
    loaded, info = EventChatModel.from_pretrained(ckpt, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(src.state_dict())
    assert all(torch.equal(v, loaded_state[k]) for k, v in src.state_dict().items())  # CLIP from the CLIP folder
    assert not any(p.requires_grad for p in loaded.model.visual_tower.parameters())  # frozen, as released

    ids = torch.tensor([[1, 5, 6, EVENT_TOKEN_INDEX, 7, 8]])
    px = pixels(5, seed=10)
    with torch.no_grad():
        assert torch.equal(src(input_ids=ids, event_pixel_values=px).logits,
                           loaded(input_ids=ids, event_pixel_values=px).logits)
    if clip_kind == "full_clip":
        assert type(AutoModelForCausalLM.from_pretrained(ckpt)) is EventChatModel


def test_missing_visual_tower_folder_is_a_clear_error(tmp_path):
    src = tiny_model(seed=12)
    ckpt = _write_published_checkpoint(src, tmp_path, "vision_only")
    cfg = json.loads((ckpt / "config.json").read_text())
    clip_dir = cfg["mm_visual_tower"]
    cfg["mm_visual_tower"] = "clip-not-here"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    tried = re.escape(str(ckpt / "clip-not-here"))
    with pytest.raises(FileNotFoundError, match=rf"mm_visual_tower='clip-not-here': no CLIP folder .*{tried}"):
        EventChatModel.from_pretrained(ckpt)
    loaded = EventChatModel.from_pretrained(ckpt, visual_tower_path=clip_dir)  # explicit override
    assert torch.equal(loaded.model.visual_tower.visual_tower.embeddings.patch_embedding.weight,
                       src.model.visual_tower.visual_tower.embeddings.patch_embedding.weight)


def test_save_pretrained_writes_the_published_layout_and_round_trips(tmp_path):
    src = tiny_model(seed=13)
    src.save_pretrained(tmp_path / "out")
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == llama_keys(src.config) | EVENT_BRANCH_KEYS
    saved_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved_cfg["mm_visual_tower"] == "visual_tower" and saved_cfg["visual_tower_config"] is None
    assert (tmp_path / "out" / "visual_tower" / "model.safetensors").is_file()
    assert src.config.visual_tower_config is not None  # the in-memory config is left as it was
    loaded = EventChatModel.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[1, EVENT_TOKEN_INDEX, 7, 8]])
    px = pixels(1, seed=14)
    with torch.no_grad():
        assert torch.equal(src(input_ids=ids, event_pixel_values=px).logits,
                           loaded(input_ids=ids, event_pixel_values=px).logits)


# ---------------------------------------------------------------------------------------------------------------------
# DecodingModel runner
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoder() -> EventGPTDecoder:
    return EventGPTDecoder(tiny_model(seed=21), tiny_tokenizer(), clip_style_preprocess(32))


def _event_images(n_frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n_frames, 48, 64, 3), dtype=np.uint8)  # [T, H, W, 3], resized+cropped to 32


def test_decoder_prefill_contract(decoder):
    assert isinstance(decoder, DecodingModel)
    inputs = decoder.prepare(QUESTIONS[2], _event_images(5, seed=1))
    assert inputs.prompt_text == eventgpt_prompt(QUESTIONS[2], style="plain")  # the decoder's default style
    assert int((inputs.input_ids == EVENT_TOKEN_INDEX).sum()) == 1
    assert tuple(inputs.extra["event_pixel_values"].shape) == (5, 3, 32, 32)
    pre = decoder.prefill(inputs)
    assert pre.prompt_len == inputs.input_ids.shape[1] - 1 + 5 + S_TOKENS == cache_length(pre.cache)
    assert torch.equal(decoder.lm_head(pre.hidden), pre.logits)
    with torch.no_grad():
        full = decoder.model(input_ids=inputs.input_ids, **inputs.extra).logits[0, -1]
    torch.testing.assert_close(pre.logits, full, rtol=0, atol=1e-5)
    # cached features through prepare give the same prefill
    cached = decoder.prefill(decoder.prepare(QUESTIONS[2], decoder.encode(_event_images(5, seed=1))))
    assert torch.equal(cached.logits, pre.logits)


def test_greedy_prefill_score_matches_generate(decoder):
    max_new = 10
    outputs = []
    for i, question in enumerate(QUESTIONS):
        inputs = decoder.prepare(question, _event_images(1 + i % 5, seed=100 + i))
        pre = decoder.prefill(inputs)
        tokens = [int(pre.logits.argmax())]
        while len(tokens) < max_new and tokens[-1] != decoder.eos_token_id:
            tokens.append(int(decoder.score(tokens[-1:], pre.cache).logits[-1].argmax()))
        reference = decoder.model.generate(
            inputs.input_ids, event_pixel_values=inputs.extra["event_pixel_values"], max_new_tokens=max_new,
            do_sample=False, pad_token_id=decoder.tokenizer.pad_token_id, eos_token_id=decoder.eos_token_id,
        )
        assert reference[0].tolist() == tokens, f"prompt {i}: {question!r}"
        outputs.append(tuple(tokens))
    assert len(set(outputs)) > 1  # the prompts really lead to different continuations


def test_scoring_k_tokens_at_once_equals_k_single_steps(decoder):
    pre = decoder.prefill(decoder.prepare(QUESTIONS[0], _event_images(5, seed=2)))
    drafts = torch.tensor([5, 17, 3, 40, 41, 9])  # k = 6
    block_cache, step_cache = pre.cache, copy.deepcopy(pre.cache)
    block = decoder.score(drafts, block_cache)
    assert block.logits.shape == (6, 128) and block.hidden.shape == (6, 64)
    steps = [decoder.score(drafts[j : j + 1], step_cache) for j in range(6)]
    torch.testing.assert_close(block.logits, torch.cat([s.logits for s in steps]), rtol=0, atol=1e-5)
    torch.testing.assert_close(block.hidden, torch.cat([s.hidden for s in steps]), rtol=0, atol=1e-5)
    torch.testing.assert_close(decoder.lm_head(block.hidden), block.logits, rtol=0, atol=1e-6)
    assert cache_length(block_cache) == cache_length(step_cache) == pre.prompt_len + 6
    # reject the last 4 drafts, then re-score them: same logits as before
    decoder.crop(block_cache, pre.prompt_len + 2)
    assert cache_length(block_cache) == pre.prompt_len + 2
    again = decoder.score(drafts[2:], block_cache)
    torch.testing.assert_close(again.logits, block.logits[2:], rtol=0, atol=1e-5)


def test_clip_style_preprocess_resizes_crops_and_normalises():
    prep = clip_style_preprocess(32)
    white = np.full((48, 64, 3), 255, dtype=np.uint8)
    out = prep([white, white])
    assert tuple(out.shape) == (2, 3, 32, 32)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    expected = (1 - mean) / std
    torch.testing.assert_close(out[0, :, 16, 16], expected)
    # a left half black / right half white image: the centre crop keeps 32 of the 42.7 resized columns around the middle
    half = np.zeros((48, 64, 3), dtype=np.uint8)
    half[:, 32:] = 255
    col = prep(half)[0, 0, 16]
    assert col[0] < 0 < col[-1]
    with pytest.raises(ValueError, match=r"expected \[H, W, 3\] RGB"):
        prep([np.zeros((8, 8), dtype=np.uint8)])


def test_decoder_of_a_bfloat16_model_returns_float32():
    full = EventGPTDecoder(tiny_model(seed=51), tiny_tokenizer(), clip_style_preprocess(32))
    half = EventGPTDecoder(tiny_model(seed=51).to(torch.bfloat16), tiny_tokenizer(), clip_style_preprocess(32),
                           prompt_style="published", event_frames=2)
    assert half.prompt(QUESTIONS[0]) == eventgpt_prompt(QUESTIONS[0], style="published")
    images = _event_images(2, seed=52)
    ref = full.prefill(full.prepare(QUESTIONS[0], images))
    inputs = half.prepare(QUESTIONS[0], images)
    pre = half.prefill(inputs)
    scored = half.score([5, 6], pre.cache)
    for out in (pre.logits, pre.hidden, scored.logits, scored.hidden):
        assert out.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(half.lm_head(pre.hidden.to(torch.bfloat16)).float(), pre.logits)
    assert pre.prompt_len != ref.prompt_len  # the published prompt is longer (markers as text)
    with pytest.raises(ValueError, match=r"3 event images; this decoder takes event_frames=2"):
        half.prepare(QUESTIONS[0], _event_images(3, seed=52))
    with pytest.raises(ValueError, match=r"event_frames=0"):
        EventGPTDecoder(tiny_model(seed=51), tiny_tokenizer(), clip_style_preprocess(32), event_frames=0)
