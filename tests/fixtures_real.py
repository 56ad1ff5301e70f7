"""Stand-ins for the published pair, written in the published layouts, with tokenizers of the real kind.

- ``llama_tokenizer``: a LLaMA-style tokenizer (BPE over ``▁``-marked pieces with byte fallback, ``<unk> <s> </s>`` at
  0, 1, 2 and the 256 byte pieces after them, BOS added), trained on the prompts' text: the base both checkpoints
  share, as Vicuna's 32,000 pieces are shared by EventGPT-7B and Video-LLaVA-7B.
- ``write_eventgpt``: an EventGPT folder (``EventChat_llama`` config naming a sibling CLIP folder through
  ``mm_visual_tower``) saved with the base tokenizer only; the loader adds ``<ev_patch>`` as ``inference.py`` does.
  With ``start_end=True`` the checkpoint is one trained with ``mm_use_im_start_end``: its tokenizer already holds
  ``<ev_patch> <ev_start> <ev_end>`` and its embeddings have their rows.
- ``write_videollava``: a Video-LLaVA-hf folder whose tokenizer is the base plus ``<image> <video> <pad>`` and whose
  LM head is padded past the tokenizer to a multiple of 64 (the 7B: 32,064 rows for 32,003 tokens).

Every Linear that bitsandbytes quantizes has ``in_features`` 64 or 128, which its CPU 4-bit kernel needs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPVisionConfig, LlamaTokenizer, VideoLlavaForConditionalGeneration

from sdlib.models.eventgpt import EV_END, EV_START, EVENT_PATCH_TOKEN, SYSTEM_PROMPT, EventChatConfig, EventChatModel
from sdlib.models.videollava import video_llava_config
from sdlib.world import QUESTIONS

BYTE_PIECES = [f"<0x{i:02X}>" for i in range(256)]
CORPUS = [SYSTEM_PROMPT, "USER: ASSISTANT:", *QUESTIONS,
          "there is a red car on the road and a bus, a truck turns left at the traffic light"]
BASE_VOCAB = 448
PAD_MULTIPLE = 64
TARGET_ADDED = ("<image>", "<video>", "<pad>")
IMAGE_PX, PATCH = 16, 8  # 2 x 2 patches + CLS = 5 CLIP tokens per image
CLIP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
            image_size=IMAGE_PX, patch_size=PATCH)
LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=2, max_position_embeddings=512)


def llama_tokenizer(vocab_size: int = BASE_VOCAB) -> LlamaTokenizer:
    """The shared base tokenizer (``vocab_size`` pieces, deterministic for a given corpus)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *BYTE_PIECES],
                                  show_progress=False)
    bpe.train_from_iterator(CORPUS * 3, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = LlamaTokenizer(vocab=model["vocab"], merges=merges, add_bos_token=True, add_eos_token=False)
    assert len(tok) == vocab_size and tok.bos_token_id == 1 and tok.eos_token_id == 2
    return tok


def _seeded_(module: torch.nn.Module, seed: int, std: float = 0.08) -> None:
    """Redraw every matrix at ``std`` (seeded) so logits are spread and runs repeat exactly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def write_eventgpt(root: Path, base: LlamaTokenizer, *, start_end: bool = False, seed: int = 0) -> Path:
    """An EventGPT-7b stand-in at ``root/EventGPT-7b`` with its CLIP folder beside it (``root/clip-vit-stand-in``)."""
    tok = LlamaTokenizer.from_pretrained(_saved(base, root / "_base"))
    if start_end:
        tok.add_tokens([EVENT_PATCH_TOKEN, EV_START, EV_END], special_tokens=True)
    cfg = EventChatConfig(
        vocab_size=len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=None, **LLAMA,
        visual_tower_config=CLIPVisionConfig(**CLIP).to_dict(), mm_use_im_start_end=start_end,
        event_feature_adaptor=True,
    )
    torch.manual_seed(seed)
    model = EventChatModel(cfg).eval()
    _seeded_(model, seed)
    folder = root / "EventGPT-7b"
    model.save_pretrained(folder)
    # the release keeps CLIP beside the EventGPT folder, named by mm_visual_tower
    shutil.move(str(folder / "visual_tower"), str(root / "clip-vit-stand-in"))
    config = json.loads((folder / "config.json").read_text())
    config["mm_visual_tower"] = "clip-vit-stand-in"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(folder)
    return folder


def write_videollava(root: Path, base: LlamaTokenizer, *, seed: int = 1) -> Path:
    """A Video-LLaVA-7B-hf stand-in at ``root/Video-LLaVA-7B-hf``: base tokenizer + <image> <video> <pad>, LM head
    padded to the next multiple of 64 rows."""
    tok = LlamaTokenizer.from_pretrained(_saved(base, root / "_base"))
    tok.add_tokens(list(TARGET_ADDED), special_tokens=True)
    tok.pad_token = "<pad>"
    rows = -(-len(tok) // PAD_MULTIPLE) * PAD_MULTIPLE
    assert rows > len(tok)
    cfg = video_llava_config(
        tok, image_size=IMAGE_PX, patch_size=PATCH, vision_hidden=CLIP["hidden_size"], vision_layers=1,
        vision_heads=2, vision_intermediate=CLIP["intermediate_size"], text_hidden=LLAMA["hidden_size"],
        text_layers=1, text_heads=2, text_intermediate=LLAMA["intermediate_size"], max_position_embeddings=512,
    )
    cfg.text_config.vocab_size = rows
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(cfg).eval()
    _seeded_(model, seed)
    folder = root / "Video-LLaVA-7B-hf"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _saved(tok: LlamaTokenizer, folder: Path) -> Path:
    if not folder.is_dir():
        tok.save_pretrained(folder)
    return folder
