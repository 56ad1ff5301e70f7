"""load_pretrained: local-only, safetensors-only, strict loading with dtype, device and bitsandbytes options."""
from __future__ import annotations

import pickle
import socket
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from sdlib.models.eventgpt import EVENT_TOKEN_INDEX, EventChatModel
from sdlib.models.loading import LoadError, load_pretrained, load_tokenizer, quantization_config, torch_dtype
from test_models_eventgpt import LLAMA_KW, pixels, tiny_model, tiny_tokenizer

# CLIP 64 wide so every quantized Linear has in_features a multiple of 64 (bitsandbytes' CPU 4-bit block size)
CLIP_64 = {"hidden_size": 64, "intermediate_size": 128}
IDS = torch.tensor([[1, 5, 6, EVENT_TOKEN_INDEX, 7, 8]])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A tiny EventGPT saved in the published layout, and its float32 logits on a fixed input."""
    model = tiny_model(seed=31, clip_kw=CLIP_64)
    folder = tmp_path_factory.mktemp("ckpt") / "EventGPT-tiny"
    model.save_pretrained(folder)
    with torch.no_grad():
        logits = model(input_ids=IDS, event_pixel_values=pixels(5, seed=32)).logits
    return folder, logits


def _logits(model: EventChatModel) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, event_pixel_values=pixels(5, seed=32)).logits.float()


def _copy_checkpoint(folder: Path, dest: Path) -> Path:
    """Copy the top-level files of a checkpoint folder (not its CLIP sub-folder)."""
    dest.mkdir()
    for f in folder.iterdir():
        if f.is_file():
            (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_missing_path_names_key_profile_and_params_file():
    with pytest.raises(LoadError) as err:
        load_pretrained(EventChatModel, "/x/EventGPT-7b", key="eventgpt_path", profile="real",
                        params_file="params/01_models.real.yaml")
    assert str(err.value) == "eventgpt_path: /x/EventGPT-7b does not exist (profile 'real', params/01_models.real.yaml)"
    assert (err.value.key, err.value.path) == ("eventgpt_path", "/x/EventGPT-7b")
    with pytest.raises(LoadError, match=r"^target_path: no path given \(profile 'smoke'\)"):
        load_pretrained(EventChatModel, None, key="target_path", profile="smoke")


class _Tripwire:
    """Unpickling this creates a file: proof that a loader unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickle_weights_are_refused_unread(tmp_path):
    folder = tmp_path / "old-ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    tripwire = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Tripwire(tripwire)))
    with pytest.raises(LoadError, match=r"eventgpt_path: .*old-ckpt holds only pickle weights \(pytorch_model\.bin\)"
                                        r".*refusing to unpickle"):
        load_pretrained(EventChatModel, folder, key="eventgpt_path", profile="real")
    assert not tripwire.exists()


def test_folder_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoadError, match="is not a folder"):
        load_pretrained(EventChatModel, tmp_path / "file", key="k")
    with pytest.raises(LoadError, match=r"has no config\.json"):
        load_pretrained(EventChatModel, tmp_path, key="k")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LoadError, match=r"has no \*\.safetensors weights"):
        load_pretrained(EventChatModel, tmp_path, key="k")


def test_option_values_are_checked(saved):
    folder, _ = saved
    with pytest.raises(LoadError, match=r"dtype='float8': expected one of float32, fp32, float16"):
        load_pretrained(EventChatModel, folder, key="k", dtype="float8")
    with pytest.raises(LoadError, match=r"quantization='3bit': expected None, '4bit' \(NF4\) or '8bit'"):
        load_pretrained(EventChatModel, folder, key="k", quantization="3bit")
    with pytest.raises(LoadError, match="local_files_only= is fixed"):
        load_pretrained(EventChatModel, folder, key="k", local_files_only=False)
    with pytest.raises(LoadError, match="pass device= instead of device_map="):
        load_pretrained(EventChatModel, folder, key="k", device_map="auto")
    if not torch.cuda.is_available():
        with pytest.raises(LoadError, match=r"device='cuda': CUDA is not available"):
            load_pretrained(EventChatModel, folder, key="k", device="cuda")
    assert torch_dtype("bf16") is torch.bfloat16


def test_loads_offline_exactly_and_in_bfloat16(saved, monkeypatch):
    folder, reference = saved

    def no_network(*args, **kwargs):
        raise AssertionError("load_pretrained tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model = load_pretrained(EventChatModel, folder, key="eventgpt_path", profile="smoke")
    assert not model.training
    assert torch.equal(_logits(model), reference)

    half = load_pretrained(EventChatModel, folder, key="eventgpt_path", profile="smoke", dtype="bfloat16")
    dtypes = {p.dtype for p in half.parameters()}
    assert dtypes == {torch.bfloat16}  # CLIP included
    low = _logits(half)
    assert not torch.equal(low, reference)
    torch.testing.assert_close(low, reference, rtol=0, atol=0.15)
    assert (low.argmax(-1) == reference.argmax(-1)).float().mean() > 0.8


def test_strict_loading_rejects_missing_keys(saved, tmp_path):
    folder, _ = saved
    broken = _copy_checkpoint(folder, tmp_path / "broken")
    (broken / "visual_tower").symlink_to(folder / "visual_tower")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.feature_adaptor.weight"], tensors["model.feature_adaptor.bias"]
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadError, match=r"does not match EventChatModel: missing keys: "
                                        r"model\.feature_adaptor\.bias, model\.feature_adaptor\.weight$"):
        load_pretrained(EventChatModel, broken, key="eventgpt_path")
    assert load_pretrained(EventChatModel, broken, key="eventgpt_path", strict=False) is not None


def test_clip_folder_problems_name_mm_visual_tower(saved, tmp_path):
    folder, _ = saved
    no_clip = _copy_checkpoint(folder, tmp_path / "no-clip")
    with pytest.raises(LoadError, match=r"eventgpt_path: .*no-clip \(profile 'real'\): FileNotFoundError: "
                                        r"mm_visual_tower='visual_tower': no CLIP folder"):
        load_pretrained(EventChatModel, no_clip, key="eventgpt_path", profile="real")
    (no_clip / "visual_tower").mkdir()
    (no_clip / "visual_tower" / "config.json").write_bytes((folder / "visual_tower" / "config.json").read_bytes())
    (no_clip / "visual_tower" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(LoadError, match=r"mm_visual_tower: .*visual_tower holds only pickle weights"):
        load_pretrained(EventChatModel, no_clip, key="eventgpt_path", profile="real")


def test_any_transformers_class_loads_the_same_way(tmp_path):
    torch.manual_seed(33)
    llama = LlamaForCausalLM(LlamaConfig(**LLAMA_KW)).eval()
    llama.save_pretrained(tmp_path / "llama")
    loaded = load_pretrained(LlamaForCausalLM, tmp_path / "llama", key="target_path", profile="smoke")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, llama(ids).logits)


def test_tokenizer_loads_locally(tmp_path):
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok", key="eventgpt_path", profile="smoke")
    text = "What is this scene about?"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    with pytest.raises(LoadError, match=r"eventgpt_path: .*nowhere does not exist"):
        load_tokenizer(tmp_path / "nowhere", key="eventgpt_path")


def test_quantization_without_bitsandbytes_is_a_clear_error(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` raise ImportError
    with pytest.raises(LoadError, match=r"quantization='4bit' needs bitsandbytes, which does not import here"):
        load_pretrained(EventChatModel, saved[0], key="eventgpt_path", quantization="4bit")


def test_nf4_4bit_on_cpu(saved):
    bnb = pytest.importorskip("bitsandbytes")
    folder, reference = saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_pretrained(EventChatModel, folder, key="eventgpt_path", quantization="4bit")
        q_proj = model.model.layers[0].self_attn.q_proj
        assert isinstance(q_proj, bnb.nn.Linear4bit)
        assert q_proj.weight.quant_state.quant_type == "nf4"
        assert q_proj.weight.quant_state.nested  # double quantization
        assert isinstance(model.model.visual_projector[0], bnb.nn.Linear4bit)
        assert type(model.lm_head) is torch.nn.Linear  # head and CLIP stay unquantized
        assert type(model.model.visual_tower.visual_tower.encoder.layers[0].mlp.fc1) is torch.nn.Linear
        low = _logits(model)
    assert not torch.equal(low, reference)
    corr = torch.corrcoef(torch.stack([low.flatten(), reference.flatten()]))[0, 1]
    assert corr > 0.95, f"4-bit logits correlate {corr:.3f} with float32"


def test_8bit_on_cpu(saved):
    bnb = pytest.importorskip("bitsandbytes")
    folder, reference = saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_pretrained(EventChatModel, folder, key="eventgpt_path", quantization="8bit")
        assert isinstance(model.model.layers[0].mlp.down_proj, bnb.nn.Linear8bitLt)
        low = _logits(model)
    assert not torch.equal(low, reference)
    corr = torch.corrcoef(torch.stack([low.flatten(), reference.flatten()]))[0, 1]
    assert corr > 0.99, f"8-bit logits correlate {corr:.4f} with float32"
    assert (low.argmax(-1) == reference.argmax(-1)).float().mean() > 0.8


def test_4bit_config_is_the_original_research_one():
    pytest.importorskip("bitsandbytes")
    cfg = quantization_config("4bit")  # BitsAndBytesConfig of every script of the original research
    assert cfg.load_in_4bit and not cfg.load_in_8bit
    assert (cfg.bnb_4bit_quant_type, cfg.bnb_4bit_use_double_quant, cfg.bnb_4bit_compute_dtype) == (
        "nf4", True, torch.bfloat16)
    assert quantization_config("4bit", "float16").bnb_4bit_compute_dtype == torch.float16
    assert quantization_config(None) is None
    with pytest.raises(LoadError, match=r"dtype='int4'"):
        quantization_config("4bit", "int4")


def test_4bit_compute_dtype_apart_from_the_weight_dtype(saved):
    bnb = pytest.importorskip("bitsandbytes")
    folder, reference = saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_pretrained(EventChatModel, folder, key="eventgpt_path", dtype="float16", quantization="4bit",
                                compute_dtype="bfloat16")
        linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert linears and {m.compute_dtype for m in linears} == {torch.bfloat16}
        assert model.model.embed_tokens.weight.dtype == model.lm_head.weight.dtype == torch.float16
        assert {p.dtype for p in model.model.visual_tower.parameters()} == {torch.float16}
        low = _logits(model)
    assert bool(torch.isfinite(low).all())
    corr = torch.corrcoef(torch.stack([low.flatten(), reference.flatten()]))[0, 1]
    assert corr > 0.95, f"4-bit (fp16 weights, bf16 compute) logits correlate {corr:.3f} with float32"
