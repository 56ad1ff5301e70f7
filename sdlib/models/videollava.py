"""Video-LLaVA, the target: one input preparation for every stage and the :class:`DecodingModel` wrapper.

Input policy (one, everywhere; the original research used two frame samplings and two prompts):

- frames: 8 of the clip's frames, picked by :func:`sdlib.base.frame_policy.uniform_frame_indices`;
- prompt: exactly ``"USER: <video>\\n{question} ASSISTANT:"`` (no system prompt);
- the ``<video>`` placeholder is expanded to ``frames x ((H/p)(W/p) + 1)`` tokens (Video-LLaVA keeps each frame's
  CLS token), e.g. 8 x 257 = 2056 for the 7B checkpoint (224 px, patch 14);
- pixels: ``pixel_values_videos`` of shape ``[1, 8, 3, H, W]``.

Pixel preprocessing has three interchangeable back ends, all driven by :func:`prepare_video_llava_inputs`:

1. the real ``VideoLlavaProcessor`` (needs torchvision, present on GPU machines);
2. a Video-LLaVA/CLIP *image* processor run on each frame and stacked (:class:`ImageProcessorFrames`), the
   no-torchvision path (same resize/crop/normalise rule, PIL resampling instead of torchvision's);
3. any injected callable ``uint8 [n, H, W, 3] -> float [n, 3, h, w]``, e.g. :class:`ResizeNormalize` for the scale
   model, whose preprocessing is defined here rather than shipped with a checkpoint.

Paths 1 and 2 produce the same ``input_ids`` (the placeholder count depends only on the processed frame size).
Their pixels agree exactly when no resize is needed and to resampling precision otherwise, so a run should not mix
them: the back end a decoder uses is recorded in :attr:`VideoLlavaDecoder.pixel_backend`.

transformers 5.x layout used here: ``model.model.video_tower`` (CLIP), ``model.model.multi_modal_projector``,
``model.model.language_model`` (a ``LlamaModel`` whose output is already final-normed), ``model.lm_head``; the cache
argument is ``cache=`` (``past_key_values`` is deprecated) and comes back as ``output.cache``.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from sdlib.models.interface import DecodingModel, ModelInputs
from sdlib.models.kvcache import KVCache
from sdlib.base.frame_policy import RGB_FRAMES, uniform_frame_indices

PROMPT_TEMPLATE = "USER: <video>\n{question} ASSISTANT:"
VIDEO_TOKEN = "<video>"
IMAGE_TOKEN = "<image>"
NUM_FRAMES = RGB_FRAMES  # 8, the policy's frame count
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation, as Video-LLaVA's processor uses
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FrameProcessor = Callable[[np.ndarray], torch.Tensor]  # uint8 [n, H, W, 3] -> float [n, 3, h, w]


# --------------------------------------------------------------------------------------------------------------------
# The policy's pieces


def build_prompt(question: str) -> str:
    """The one Video-LLaVA prompt: ``USER: <video>\\n{question} ASSISTANT:``."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question: expected a non-empty string, got {question!r}")
    for placeholder in (VIDEO_TOKEN, IMAGE_TOKEN):
        if placeholder in question:
            raise ValueError(f"question {question!r}: must not contain the placeholder {placeholder}")
    return PROMPT_TEMPLATE.format(question=question)


def video_token_count(num_frames: int, height: int, width: int, patch_size: int) -> int:
    """Number of ``<video>`` tokens for ``num_frames`` processed frames of ``height x width`` pixels:
    ``num_frames * ((height // p) * (width // p) + 1)`` (patches plus one CLS token per frame)."""
    if min(num_frames, height, width, patch_size) < 1:
        raise ValueError(
            f"video_token_count: need positive sizes, got frames={num_frames}, {height}x{width}, patch={patch_size}"
        )
    return num_frames * ((height // patch_size) * (width // patch_size) + 1)


def check_frames(frames: Any, min_frames: int = NUM_FRAMES) -> np.ndarray:
    """Validate a clip's frames: a uint8 numpy array ``[N, H, W, 3]`` with ``N >= min_frames``."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"frames: expected a numpy array [N, H, W, 3], got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected shape [N, H, W, 3], got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames: expected dtype uint8 (0..255), got {frames.dtype}")
    if frames.shape[0] < min_frames:
        raise ValueError(f"frames: the clip has {frames.shape[0]} frames, the policy needs at least {min_frames}")
    return frames


def sample_frames(frames: np.ndarray, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """The policy's frames of a clip: ``frames[uniform_frame_indices(N, num_frames)]`` -> ``[num_frames, H, W, 3]``."""
    frames = check_frames(frames, num_frames)
    return frames[uniform_frame_indices(frames.shape[0], num_frames)]


# --------------------------------------------------------------------------------------------------------------------
# Pixel back ends


@functools.lru_cache(maxsize=1)
def torchvision_available() -> bool:
    """True when torchvision really imports (a wheel that does not match torch is installed but fails to import)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure means the real video processor cannot run
        return False
    return True


class ImageProcessorFrames:
    """Per-frame preprocessing with a Hugging Face image processor (Video-LLaVA's or CLIP's), stacked to a clip."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        if type(self.image_processor).__name__ == "VideoLlavaImageProcessor":
            kwargs["return_legacy_image_output"] = False  # "pixel_values", not the deprecated "pixel_values_images"
        out = self.image_processor(images=list(frames), **kwargs)
        key = "pixel_values" if "pixel_values" in out else "pixel_values_images"
        return torch.as_tensor(out[key], dtype=torch.float32)  # [n, 3, h, w]

    def __repr__(self) -> str:
        return f"ImageProcessorFrames({type(self.image_processor).__name__})"


class ResizeNormalize:
    """A torch-only CLIP-style preprocessing: shortest edge to ``size`` (bilinear, antialiased), centre crop to
    ``size x size``, scale to [0, 1], normalise with ``mean``/``std``. Frames already ``size x size`` are not
    resampled, so then the result equals Video-LLaVA's image processor to float rounding."""

    def __init__(self, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        if size < 1:
            raise ValueError(f"ResizeNormalize: size={size}, expected >= 1")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"ResizeNormalize: need 3 means and 3 positive stds, got mean={mean}, std={std}")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32)  # [n, 3, H, W]
        h, w = x.shape[-2:]
        if (h, w) != (self.size, self.size):
            scale = self.size / min(h, w)
            new_h, new_w = max(self.size, round(h * scale)), max(self.size, round(w * scale))
            x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True,
                                                align_corners=False).clamp_(0, 255)
            top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
            x = x[..., top: top + self.size, left: left + self.size]
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x / 255.0 - mean) / std).contiguous()  # [n, 3, size, size]

    def __repr__(self) -> str:
        return f"ResizeNormalize(size={self.size})"


def video_llava_image_processor(image_size: int) -> Any:
    """Video-LLaVA's image processor configured for ``image_size`` (shortest-edge resize + centre crop)."""
    from transformers import VideoLlavaImageProcessor

    return VideoLlavaImageProcessor(size={"shortest_edge": image_size},
                                    crop_size={"height": image_size, "width": image_size})


def build_video_llava_processor(tokenizer: Any, patch_size: int, image_processor: Any) -> Any:
    """The real ``VideoLlavaProcessor`` whose video processor repeats ``image_processor``'s resize, crop and
    normalisation, with the vision tower's ``patch_size`` (raises ImportError without torchvision).

    Built from parts rather than ``VideoLlavaProcessor.from_pretrained`` so that the patch size comes from the model
    and the pixels follow the same settings as the per-frame fallback.
    """
    if not torchvision_available():
        raise ImportError("VideoLlavaProcessor needs torchvision for its video processor; it does not import here "
                          "(use ImageProcessorFrames or ResizeNormalize)")
    from transformers import VideoLlavaProcessor, VideoLlavaVideoProcessor

    video_processor = VideoLlavaVideoProcessor(
        size=dict(image_processor.size),
        crop_size=dict(image_processor.crop_size),
        resample=image_processor.resample,
        image_mean=list(image_processor.image_mean),
        image_std=list(image_processor.image_std),
    )
    return VideoLlavaProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


# --------------------------------------------------------------------------------------------------------------------
# THE input preparation


def prepare_video_llava_inputs(
    frames: np.ndarray,
    question: str,
    tokenizer: Any,
    patch_size: int,
    *,
    processor: Any | None = None,
    frame_processor: FrameProcessor | None = None,
    num_frames: int = NUM_FRAMES,
) -> ModelInputs:
    """Video-LLaVA's inputs for one clip and one question; every stage goes through this function.

    ``frames`` are all of the clip's frames (uint8 ``[N, H, W, 3]``); the policy's 8 are picked here. Exactly one
    of ``processor`` (a ``VideoLlavaProcessor``) or ``frame_processor`` (per-frame callable) gives the pixels.
    Returns ``input_ids`` ``[1, L]`` with the expanded ``<video>`` tokens and ``extra["pixel_values_videos"]``
    ``[1, num_frames, 3, h, w]`` (float32, CPU).
    """
    if (processor is None) == (frame_processor is None):
        raise ValueError("prepare_video_llava_inputs: pass exactly one of processor= or frame_processor=")
    prompt = build_prompt(question)
    clip = sample_frames(frames, num_frames)  # [num_frames, H, W, 3]
    if processor is not None:
        out = processor(text=prompt, videos=clip, return_tensors="pt")
        input_ids = out["input_ids"]  # [1, L]
        pixels = torch.as_tensor(out["pixel_values_videos"], dtype=torch.float32)  # [1, num_frames, 3, h, w]
    else:
        pixels = frame_processor(clip)  # [num_frames, 3, h, w]
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[:2] != (num_frames, 3):
            got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(
                f"frame_processor {frame_processor!r}: expected a tensor [{num_frames}, 3, h, w], got {got}")
        pixels = pixels.to(torch.float32).unsqueeze(0)  # [1, num_frames, 3, h, w]
        n_video = video_token_count(num_frames, pixels.shape[-2], pixels.shape[-1], patch_size)
        # expand the placeholder in the text, then tokenize, exactly as VideoLlavaProcessor does
        expanded = prompt.replace(VIDEO_TOKEN, VIDEO_TOKEN * n_video)
        input_ids = torch.as_tensor(tokenizer(expanded, return_tensors="pt")["input_ids"])  # [1, L]

    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids: expected shape [1, L], got {tuple(input_ids.shape)}")
    if pixels.ndim != 5 or pixels.shape[:3] != (1, num_frames, 3):
        raise ValueError(f"pixel_values_videos: expected [1, {num_frames}, 3, h, w], got {tuple(pixels.shape)}")
    video_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    expected = video_token_count(num_frames, pixels.shape[-2], pixels.shape[-1], patch_size)
    found = int((input_ids == video_id).sum())
    if found != expected:
        raise ValueError(f"input_ids for {question!r}: {found} <video> tokens (id {video_id}), expected {expected} "
                         f"= {num_frames} x (({pixels.shape[-2]}/{patch_size})({pixels.shape[-1]}/{patch_size}) + 1)")
    return ModelInputs(input_ids=input_ids.to(torch.long), extra={"pixel_values_videos": pixels}, prompt_text=prompt)


# --------------------------------------------------------------------------------------------------------------------
# Configs for the scale model


def video_llava_config(
    tokenizer: Any,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    vision_intermediate: int | None = None,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    text_kv_heads: int | None = None,
    text_intermediate: int | None = None,
    max_position_embeddings: int | None = None,
    num_frames: int = NUM_FRAMES,
    **text_kwargs: Any,
) -> Any:
    """A ``VideoLlavaConfig`` (CLIP vision tower + Llama) sized for ``tokenizer`` and ``image_size``/``patch_size``.

    The vocabulary, the ``<image>``/``<video>`` ids and bos/eos/pad come from the tokenizer; the vision tower sees
    ``image_size`` square frames (so the preprocessing must produce exactly that size); ``max_position_embeddings``
    defaults to the video tokens plus 512 positions of text.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig

    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("image", IMAGE_TOKEN), ("video", VIDEO_TOKEN))}
    if any(i is None or i == tokenizer.unk_token_id for i in ids.values()):
        raise ValueError(f"tokenizer: needs {IMAGE_TOKEN} and {VIDEO_TOKEN} as tokens, got ids {ids}")
    n_video = video_token_count(num_frames, image_size, image_size, patch_size)
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_intermediate or 4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_intermediate or 4 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads or text_heads,
        max_position_embeddings=max_position_embeddings or n_video + 512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **text_kwargs,
    )
    return VideoLlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids["image"],
        video_token_index=ids["video"],
        image_seq_length=(image_size // patch_size) ** 2,
        video_seq_length=n_video,
    )


# --------------------------------------------------------------------------------------------------------------------
# The DecodingModel


class VideoLlavaDecoder(DecodingModel):
    """A ``VideoLlavaForConditionalGeneration`` as a :class:`~sdlib.models.interface.DecodingModel`.

    Pixel back end: ``processor`` (a ``VideoLlavaProcessor``) or ``frame_processor`` (a per-frame callable); with
    neither, the real processor when torchvision imports, else Video-LLaVA's image processor per frame, both sized
    from the vision tower's config. The model runs in the dtype/device it was loaded with; logits and hidden
    states are returned as float32.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        processor: Any | None = None,
        frame_processor: FrameProcessor | None = None,
        name: str = "video_llava",
        eos_token_id: int | None = None,
        num_frames: int = NUM_FRAMES,
    ) -> None:
        if processor is not None and frame_processor is not None:
            raise ValueError("VideoLlavaDecoder: pass processor= or frame_processor=, not both")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.num_frames = num_frames
        vision = model.config.vision_config
        self.image_size: int = int(vision.image_size)
        self.patch_size: int = int(vision.patch_size)
        self.video_token_id: int = int(model.config.video_token_id)
        tok_video = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        if tok_video != self.video_token_id:
            raise ValueError(f"tokenizer maps {VIDEO_TOKEN} to {tok_video}, the model config's video_token_index is "
                             f"{self.video_token_id}")
        if processor is None and frame_processor is None:
            image_processor = video_llava_image_processor(self.image_size)
            if torchvision_available():
                processor = build_video_llava_processor(tokenizer, self.patch_size, image_processor)
            else:
                frame_processor = ImageProcessorFrames(image_processor)
        self.processor = processor
        self.frame_processor = frame_processor
        self.pixel_backend: str = "processor" if processor is not None else repr(frame_processor)
        if eos_token_id is None:
            eos_token_id = tokenizer.eos_token_id
        if eos_token_id is None:
            gen_eos = model.generation_config.eos_token_id
            eos_token_id = gen_eos[0] if isinstance(gen_eos, (list, tuple)) else gen_eos
        if eos_token_id is None:
            raise ValueError("VideoLlavaDecoder: no eos_token_id given and neither tokenizer nor model defines one")
        self.eos_token_id: int = int(eos_token_id)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        quantization_config: Any | None = None,
        frame_processor: FrameProcessor | None = None,
        name: str = "video_llava",
    ) -> "VideoLlavaDecoder":
        """Load model, tokenizer and (if saved there) processor from a local directory; never contacts a hub.

        Pixel back end: ``frame_processor`` if given; else the directory's image processor
        (``preprocessor_config.json``), inside a ``VideoLlavaProcessor`` when torchvision imports and per frame
        otherwise; else the default of ``__init__``.
        """
        from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"Video-LLaVA directory {directory}: no config.json")
        kwargs: dict[str, Any] = {"local_files_only": True}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if device is not None:
            kwargs["device_map"] = str(device)
        if quantization_config is not None:
            kwargs["quantization_config"] = quantization_config
        model = VideoLlavaForConditionalGeneration.from_pretrained(str(directory), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        processor = None
        if frame_processor is None and (directory / "preprocessor_config.json").is_file():
            from transformers import VideoLlavaImageProcessor

            image_processor = VideoLlavaImageProcessor.from_pretrained(str(directory), local_files_only=True)
            if torchvision_available():
                patch_size = int(model.config.vision_config.patch_size)
                processor = build_video_llava_processor(tokenizer, patch_size, image_processor)
            else:
                frame_processor = ImageProcessorFrames(image_processor)
        return cls(model, tokenizer, processor=processor, frame_processor=frame_processor, name=name)

    # ----------------------------------------------------------------------------------------------------------------

    @property
    def decoder(self) -> torch.nn.Module:
        return self.model.model.language_model  # a LlamaModel; its output is final-normed

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.model.lm_head

    @property
    def embed_tokens(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()  # model.model.language_model.embed_tokens

    def prepare(self, question: str, visual: np.ndarray) -> ModelInputs:
        """Inputs for ``question`` about the clip ``visual`` (all its frames, uint8 ``[N, H, W, 3]``)."""
        inputs = prepare_video_llava_inputs(
            visual, question, self.tokenizer, self.patch_size,
            processor=self.processor, frame_processor=self.frame_processor, num_frames=self.num_frames,
        )
        h, w = inputs.extra["pixel_values_videos"].shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            raise ValueError(f"pixel back end {self.pixel_backend}: frames came out {h}x{w}, the vision tower "
                             f"expects {self.image_size}x{self.image_size}")
        return inputs

    @torch.no_grad()
    def encode_visual(self, inputs: ModelInputs) -> Any:
        """The video tower and projector alone: the encoder output whose ``pooler_output`` [frames, tokens, hidden]
        is what the Llama receives in place of the ``<video>`` tokens."""
        pixels = inputs.extra.get("pixel_values_videos")
        if pixels is None:
            raise ValueError("inputs.extra: no 'pixel_values_videos' (prepare the inputs with prepare())")
        vision_dtype = self.model.model.video_tower.embeddings.patch_embedding.weight.dtype
        return self.model.model.get_video_features(pixel_values_videos=pixels.to(self.device, vision_dtype),
                                                   return_dict=True)

    def new_cache(self) -> KVCache:
        return KVCache(self.model.config)

    def _forward_prompt(self, inputs: ModelInputs, visual: Any, cache: Any, hidden_states: bool) -> Any:
        return self.model.model(input_ids=inputs.input_ids.to(self.device), mm_encoder_outputs={"video": visual},
                                cache=cache, use_cache=True, output_hidden_states=hidden_states)
