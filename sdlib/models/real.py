"""The published pair: EventGPT-7B (drafter) and Video-LLaVA-7B-hf (target), loaded behind the decoding interface.

Everything here is local-only and safetensors-only (see :mod:`sdlib.models.loading`); a missing or malformed folder
is a :class:`~sdlib.models.loading.LoadError` that names the parameter and the parameter file it came from. The
same decoders, data layout and measurements as the scale model are used, so a stage's code has one path for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdlib.models.loading import load_pretrained, load_tokenizer


@dataclass
class RealPair:
    drafter: Any  # EventGPTDecoder
    target: Any  # VideoLlavaDecoder
    pairing: Any  # TokenizerPairing of the two tokenizers

    def shapes(self) -> dict[str, dict[str, Any]]:
        """The same rows as the scale model's shape table, read from the loaded configs."""
        t_cfg, d_cfg = self.target.model.config, self.drafter.model.config
        tv, dv = t_cfg.vision_config, d_cfg.visual_tower_config
        return {
            "target (Video-LLaVA class)": {
                "vision input": f"{self.target.num_frames} RGB frames {tv.image_size}px, patch {tv.patch_size}",
                "language model": f"Llama {t_cfg.text_config.hidden_size}x{t_cfg.text_config.num_hidden_layers}"},
            "drafter (EventGPT class)": {
                "vision input": f"event image {dv['image_size']}px, patch {dv['patch_size']}",
                "language model": f"Llama {d_cfg.hidden_size}x{d_cfg.num_hidden_layers}"},
        }


def load_real_pair(eventgpt_path, videollava_path, *, quantization: str | None = None, dtype: str = "float16",
                   device: str = "cpu", profile: str = "real", params_file: str | None = None,
                   sample_texts=()) -> RealPair:
    """Load both checkpoints with their own tokenizers and preprocessing, and check the tokenizers against each other.

    EventGPT's event images go through its CLIP folder's image processor (``mm_visual_tower``); Video-LLaVA's frames
    through its processor (or the per-frame image processor where torchvision does not import).
    """
    from pathlib import Path

    from transformers import VideoLlavaForConditionalGeneration

    from sdlib.models.eventgpt import EventChatModel, resolve_visual_tower_dir
    from sdlib.models.eventgpt_runner import EventGPTDecoder, event_preprocessor
    from sdlib.models.pairing import pair_tokenizers
    from sdlib.models.videollava import VideoLlavaDecoder

    hint = dict(profile=profile, params_file=params_file)
    opts = dict(dtype=dtype, device=device, quantization=quantization or None, **hint)
    d_model = load_pretrained(EventChatModel, eventgpt_path, key="eventgpt_path", **opts)
    t_model = load_pretrained(VideoLlavaForConditionalGeneration, videollava_path, key="videollava_path", **opts)
    d_tok = load_tokenizer(eventgpt_path, key="eventgpt_path", **hint)
    t_tok = load_tokenizer(videollava_path, key="videollava_path", **hint)
    clip_dir = resolve_visual_tower_dir(d_model.config.mm_visual_tower, Path(eventgpt_path))
    drafter = EventGPTDecoder(d_model, d_tok, event_preprocessor(clip_dir))
    target = VideoLlavaDecoder(t_model, t_tok)
    return RealPair(drafter, target, pair_tokenizers(d_tok, t_tok, sample_texts))
