"""The published pair: EventGPT-7B (drafter) and Video-LLaVA-7B-hf (target), loaded behind the decoding interface.

Everything here is local-only and safetensors-only (see :mod:`sdlib.models.loading`); a missing or malformed folder
is a :class:`~sdlib.models.loading.LoadError` that names the parameter and the parameter file it came from. The
same decoders, data layout and measurements as the scale model are used, so a stage's code has one path for both.

Faithful to how the published models were run (``reference/seed_system.md`` sections 1-2):

- **dtypes**: EventGPT and its CLIP tower in bf16 (``inference.py``: ``torch_dtype=torch.bfloat16``), Video-LLaVA in
  fp16 (the original research's ``torch_dtype=torch.float16``), one dtype per model (``drafter_dtype``,
  ``target_dtype``). With ``quantization="4bit"`` both get the research's one ``BitsAndBytesConfig`` (NF4, double
  quantization, bf16 compute). The decoders return float32 logits and hidden states.
- **EventGPT's prompt and tokens**: the tokenizer gets the event tokens ``inference.py`` adds (``<ev_patch>``, plus
  ``<ev_start>``/``<ev_end>`` when the config's ``mm_use_im_start_end``), the model grows to the tokenizer as its
  ``resize_token_embeddings`` did, and the prompt is the published ``<ev_start><event><ev_end>`` form
  (``prompt_style="published"``; ``"plain"`` drops the markers, for comparison).
- **event input**: ``event_frames=5`` is ``inference.py``'s input, the window cut into 5 equal-count event images,
  each through CLIP, pooled spatio-temporally (5 + 577 = 582 tokens); ``1`` is one image of the whole window (578).
  The data stage writes both (:mod:`sdlib.data.dsec`).
- **pairing**: the two tokenizers differ in their added tokens and Video-LLaVA's head is padded past its tokenizer
  (32,064 rows), so the pairing is built with both heads' row counts (:func:`~sdlib.models.pairing.pair_tokenizers`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import VideoLlavaForConditionalGeneration

from sdlib.models.eventgpt import EventChatModel, add_event_tokens, event_token_count
from sdlib.models.eventgpt_runner import EventGPTDecoder, event_preprocessor
from sdlib.models.loading import ORIGINAL_4BIT_COMPUTE, load_pretrained, load_tokenizer, torch_dtype
from sdlib.models.pairing import TokenizerPairing, pair_tokenizers
from sdlib.models.videollava import VideoLlavaDecoder, video_token_count

__all__ = ["RealPair", "load_real_pair", "EVENT_FRAME_CHOICES"]

#: event images per sample: EventGPT's inference input (5) or one image of the whole window (1)
EVENT_FRAME_CHOICES = (1, 5)


@dataclass
class RealPair:
    drafter: EventGPTDecoder
    target: VideoLlavaDecoder
    pairing: TokenizerPairing  # of the two tokenizers, over both heads' rows
    settings: dict[str, Any] = field(default_factory=dict)  # how the pair was loaded (dtypes, quantization, prompt)

    def shapes(self) -> dict[str, dict[str, Any]]:
        """The same rows as the scale model's shape table, read from the loaded configs, plus the weights' dtype."""
        t_cfg, d_cfg = self.target.model.config, self.drafter.model.config
        tv, dv = t_cfg.vision_config, d_cfg.visual_tower_config
        n_events = self.drafter.event_frames or d_cfg.n_event_frames
        quant = self.settings.get("quantization")
        quant_text = f", {quant} ({self.settings.get('quant_compute_dtype')} compute)" if quant else ""
        return {
            "target (Video-LLaVA class)": {
                "vision input": f"{self.target.num_frames} RGB frames {tv.image_size}px, patch {tv.patch_size}",
                "visual tokens": video_token_count(self.target.num_frames, tv.image_size, tv.image_size,
                                                   tv.patch_size),
                "language model": f"Llama {t_cfg.text_config.hidden_size}x{t_cfg.text_config.num_hidden_layers}",
                "weights": f"{self.settings.get('target_dtype', '?')}{quant_text}"},
            "drafter (EventGPT class)": {
                "vision input": f"{n_events} event image{'s' if n_events != 1 else ''} {dv['image_size']}px, "
                                f"patch {dv['patch_size']}",
                "visual tokens": event_token_count(d_cfg, n_events),
                "language model": f"Llama {d_cfg.hidden_size}x{d_cfg.num_hidden_layers}",
                "weights": f"{self.settings.get('drafter_dtype', '?')}{quant_text}"},
        }


def load_real_pair(eventgpt_path, videollava_path, *, quantization: str | None = None,
                   drafter_dtype: str = "bfloat16", target_dtype: str = "float16", device: str = "cpu",
                   event_frames: int = 5, prompt_style: str = "published", profile: str = "real",
                   params_file: str | None = None, sample_texts=()) -> RealPair:
    """Load both checkpoints with their own tokenizers and preprocessing, and pair the tokenizers.

    EventGPT's event images go through its CLIP folder's image processor (``mm_visual_tower``); Video-LLaVA's frames
    through its processor (or the per-frame image processor where torchvision does not import). ``event_frames`` is
    how many event images the drafter takes per sample (see :data:`EVENT_FRAME_CHOICES`); the caller feeds it that
    many. The defaults are the published models' settings (module docstring).
    """
    if event_frames not in EVENT_FRAME_CHOICES:
        raise ValueError(f"event_frames={event_frames!r}: expected 1 (one image of the whole window) or 5 "
                         "(EventGPT's inference: five equal-count images)")
    hint = dict(profile=profile, params_file=params_file)
    quant = quantization or None
    drafter_dt, target_dt = torch_dtype(drafter_dtype), torch_dtype(target_dtype)  # bad names fail before any load
    common = dict(device=device, quantization=quant, compute_dtype=ORIGINAL_4BIT_COMPUTE, **hint)
    d_model = load_pretrained(EventChatModel, eventgpt_path, key="eventgpt_path", dtype=drafter_dt, **common)
    t_model = load_pretrained(VideoLlavaForConditionalGeneration, videollava_path, key="videollava_path",
                              dtype=target_dt, **common)
    d_tok = load_tokenizer(eventgpt_path, key="eventgpt_path", **hint)
    t_tok = load_tokenizer(videollava_path, key="videollava_path", **hint)
    added_tokens = add_event_tokens(d_tok, d_model.config)  # as inference.py, then its resize_token_embeddings
    added_rows = d_model.resize_for_tokenizer(len(d_tok))
    d_model.config.n_event_frames = event_frames
    drafter = EventGPTDecoder(d_model, d_tok, event_preprocessor(d_model.visual_tower_dir),
                              prompt_style=prompt_style, event_frames=event_frames)
    target = VideoLlavaDecoder(t_model, t_tok)
    pairing = pair_tokenizers(d_tok, t_tok, sample_texts, drafter_rows=d_model.lm_head.out_features,
                              target_rows=t_model.lm_head.out_features)
    settings = {
        "drafter_dtype": str(drafter_dt).removeprefix("torch."), "target_dtype": str(target_dt).removeprefix("torch."),
        "quantization": quant, "quant_compute_dtype": ORIGINAL_4BIT_COMPUTE if quant in ("4bit", "nf4") else None,
        "device": device, "event_frames": event_frames, "prompt_style": prompt_style,
        "eventgpt_added_tokens": added_tokens, "eventgpt_added_rows": added_rows,
    }
    return RealPair(drafter, target, pairing, settings)
