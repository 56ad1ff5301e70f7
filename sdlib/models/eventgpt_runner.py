"""EventGPT as a :class:`~sdlib.models.interface.DecodingModel`, the interface the decoding engine uses.

:class:`EventGPTDecoder` turns a question and event images into the ``eventgpt_v1`` prompt, runs the event branch and
the prompt in one prefill, and then scores blocks of tokens against a :class:`~sdlib.models.kvcache.KVCache`. Hidden states are the Llama's
last layer after the final RMSNorm, so ``lm_head(hidden) == logits`` at every returned position; both come back as
float32 whatever the model's dtype (bf16 for EventGPT-7B, as its inference code loads it).

The prompt style is the decoder's: ``"plain"`` (``<event>``, the scale model's, trained here with it) by default,
``"published"`` (``<ev_start><event><ev_end>``, EventGPT's inference prompt) for the published checkpoint
(:func:`sdlib.models.real.load_real_pair` passes it).

Image preprocessing is injected: :func:`event_preprocessor` gives the checkpoint's ``CLIPImageProcessor`` when the CLIP
folder has a ``preprocessor_config.json`` (resize the short side, centre crop, CLIP mean/std), otherwise a plain torch
resize + crop + normalise (:func:`clip_style_preprocess`), which is what the scale model uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from sdlib.models.eventgpt import (
    EVENT_TOKEN_INDEX,
    PROMPT_STYLES,
    SYSTEM_PROMPT,
    EventChatModel,
    event_token_count,
    eventgpt_prompt,
    tokenizer_event_token,
)
from sdlib.models.interface import DecodingModel, ModelInputs
from sdlib.models.kvcache import KVCache

__all__ = ["EventGPTDecoder", "ImagePreprocess", "clip_style_preprocess", "event_preprocessor", "CLIP_MEAN", "CLIP_STD"]

ImagePreprocess = Callable[[Any], torch.Tensor]  # event images -> pixel values [T, 3, H, W]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_uint8_stack(images: Any) -> torch.Tensor:
    """Event images (uint8 [T, H, W, 3] array, or a list of [H, W, 3] arrays / PIL images) -> float [T, 3, H, W] in
    0..255."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    frames = [np.asarray(img) for img in images]
    if not frames:
        raise ValueError("event images: got none; expected at least one [H, W, 3] image")
    for i, frame in enumerate(frames):
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"event image {i}: shape {frame.shape}; expected [H, W, 3] RGB")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"event images: differing shapes {sorted(shapes)}; expected one size for all frames")
    stacked = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # [T, 3, H, W]
    return stacked.float()


def clip_style_preprocess(
    image_size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> ImagePreprocess:
    """A CLIP-style preprocessing in plain torch: resize the short side to ``image_size`` (bilinear, antialiased),
    centre crop ``image_size``², scale to [0, 1], normalise with ``mean``/``std``. Images already at
    ``image_size``² are only scaled and normalised."""
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    def preprocess(images: Any) -> torch.Tensor:
        frames = _as_uint8_stack(images)  # [T, 3, H, W]
        h, w = frames.shape[-2:]
        if (h, w) != (image_size, image_size):
            scale = image_size / min(h, w)
            new_h, new_w = max(image_size, round(h * scale)), max(image_size, round(w * scale))
            frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
            top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
            frames = frames[..., top : top + image_size, left : left + image_size]  # [T, 3, S, S]
        return ((frames / 255.0) - mean_t) / std_t  # [T, 3, image_size, image_size]

    return preprocess


def event_preprocessor(clip_dir: str | Path | None = None, image_size: int | None = None) -> ImagePreprocess:
    """The preprocessing for a CLIP folder: its own image processor if it ships one, else :func:`clip_style_preprocess`
    at ``image_size`` (or the folder's ``config.json`` image size)."""
    if clip_dir is not None and (Path(clip_dir) / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(str(clip_dir), local_files_only=True)

        def preprocess(images: Any) -> torch.Tensor:
            if isinstance(images, np.ndarray) and images.ndim == 3:
                images = images[None]  # one [H, W, 3] image -> [1, H, W, 3]
            frames = [np.asarray(img) for img in images]
            return processor(frames, return_tensors="pt")["pixel_values"]  # [T, 3, H, W]

        return preprocess
    if image_size is None:
        if clip_dir is None:
            raise ValueError("event_preprocessor: give clip_dir or image_size")
        from transformers import CLIPVisionConfig

        image_size = CLIPVisionConfig.from_pretrained(str(clip_dir), local_files_only=True).image_size
    return clip_style_preprocess(int(image_size))


class EventGPTDecoder(DecodingModel):
    """An :class:`EventChatModel` + tokenizer + image preprocessing, as a ``DecodingModel``.

    ``prepare(question, visual)`` accepts as ``visual``: event images (uint8 ``[T, H, W, 3]`` or a list of
    ``[H, W, 3]``), preprocessed pixel values (float ``[T, 3, H, W]``), or cached event features (float
    ``[N, hidden]``, the output of :meth:`encode`), which are spliced in as they are.

    ``prompt_style``: ``"plain"`` or ``"published"`` (see :func:`~sdlib.models.eventgpt.eventgpt_prompt`).
    ``event_frames``: when given, every input must hold exactly that many event images (``T``), or for cached
    features the ``T' + S`` tokens they pool to; ``None`` accepts any ``T``.
    """

    def __init__(
        self,
        model: EventChatModel,
        tokenizer: Any,
        preprocess: ImagePreprocess,
        *,
        name: str = "eventgpt",
        prompt_style: str = "plain",
        event_frames: int | None = None,
        system: str = SYSTEM_PROMPT,
    ) -> None:
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"EventGPTDecoder: prompt_style={prompt_style!r}; expected one of "
                             f"{', '.join(PROMPT_STYLES)}")
        if event_frames is not None and event_frames < 1:
            raise ValueError(f"EventGPTDecoder: event_frames={event_frames}; expected >= 1 or None")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.prompt_style = prompt_style
        self.event_frames = event_frames
        self.system = system
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            eos = model.config.eos_token_id
        self.eos_token_id: int = int(eos[0] if isinstance(eos, (list, tuple)) else eos)

    # -- protocol ---------------------------------------------------------------------------------------------------
    @property
    def decoder(self) -> torch.nn.Module:
        return self.model.model  # the Llama stack (EventChatLlamaModel); its output is final-normed

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.model.lm_head

    @property
    def embed_tokens(self) -> torch.nn.Module:
        return self.model.model.embed_tokens

    def prompt(self, question: str) -> str:
        """The ``eventgpt_v1`` prompt text for ``question``."""
        return eventgpt_prompt(question, style=self.prompt_style, system=self.system)

    def _check_frames(self, n_frames: int, what: str) -> None:
        if self.event_frames is not None and n_frames != self.event_frames:
            raise ValueError(f"{what}: {n_frames} event images; this decoder takes event_frames={self.event_frames}")

    def prepare(self, question: str, visual: Any) -> ModelInputs:
        """Prompt ids (one ``-200`` placeholder) plus the event input under ``extra["event_pixel_values"]``
        ([T, 3, H, W]) or ``extra["event_features"]`` ([N, hidden])."""
        text = self.prompt(question)
        input_ids = tokenizer_event_token(text, self.tokenizer, return_tensors="pt")  # [1, L]
        hidden = self.model.config.hidden_size
        if isinstance(visual, torch.Tensor) and visual.is_floating_point() and visual.dim() == 2:
            if visual.shape[-1] != hidden:
                raise ValueError(f"event features: width {visual.shape[-1]}; expected hidden_size {hidden}")
            if self.event_frames is not None:
                n_tokens = event_token_count(self.model.config, self.event_frames)
                if visual.shape[0] != n_tokens:
                    raise ValueError(f"event features: {visual.shape[0]} tokens; event_frames={self.event_frames} "
                                     f"pool to {n_tokens}")
            extra = {"event_features": visual}
        elif isinstance(visual, torch.Tensor) and visual.is_floating_point():
            if visual.dim() != 4 or visual.shape[1] != 3:
                raise ValueError(f"event pixel values: shape {tuple(visual.shape)}; expected [T, 3, H, W]")
            self._check_frames(visual.shape[0], "event pixel values")
            extra = {"event_pixel_values": visual}
        else:
            pixels = self.preprocess(visual)
            if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[1] != 3:
                raise ValueError(
                    f"preprocess returned {getattr(pixels, 'shape', type(pixels))}; expected a [T, 3, H, W] tensor"
                )
            self._check_frames(pixels.shape[0], "event images")
            extra = {"event_pixel_values": pixels}
        return ModelInputs(input_ids=input_ids, extra=extra, prompt_text=text)

    @torch.no_grad()
    def encode(self, visual: Any) -> torch.Tensor:
        """Event features [N, hidden] for event images or pixel values, to be reused through ``prepare``."""
        if not (isinstance(visual, torch.Tensor) and visual.is_floating_point()):
            visual = self.preprocess(visual)
        return self._encode_pixels(visual)

    def encode_visual(self, inputs: ModelInputs) -> torch.Tensor:
        """The event branch alone: event features [N, hidden] as the Llama receives them (the cached features when
        the inputs carry them)."""
        if "event_features" in inputs.extra:
            return inputs.extra["event_features"].to(self.device)
        if "event_pixel_values" in inputs.extra:
            return self._encode_pixels(inputs.extra["event_pixel_values"])
        raise ValueError("inputs.extra has neither event_pixel_values nor event_features (prepare the inputs with "
                         "prepare())")

    @torch.no_grad()
    def _encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_events(pixel_values.to(self.device))  # [N, hidden]

    def new_cache(self) -> KVCache:
        return KVCache(self.model.config)

    def _forward_prompt(self, inputs: ModelInputs, visual: torch.Tensor, cache: Any, hidden_states: bool) -> Any:
        input_ids = inputs.input_ids.to(self.device)
        if not bool((input_ids == EVENT_TOKEN_INDEX).any()):
            raise ValueError(f"prefill: input_ids holds no <event> placeholder ({EVENT_TOKEN_INDEX})")
        inputs_embeds, _, _ = self.model.model.embed_with_events(input_ids, visual)  # [1, L - 1 + N, hidden]
        return self.model.model(inputs_embeds=inputs_embeds, cache=cache, use_cache=True,
                                output_hidden_states=hidden_states)
