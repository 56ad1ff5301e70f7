"""EventGPT, the drafter: a Llama language model that reads event-camera images through a CLIP vision encoder.

The architecture follows the published EventGPT-7B (Liu et al., CVPR 2025) so that its checkpoint loads into these
classes unchanged, and the same classes with a tiny config are the scale-model drafter:

1. every event image (frame) goes through a frozen CLIP vision encoder; its ``last_hidden_state`` keeps all
   ``S = (image_size / patch_size)^2 + 1`` tokens, CLS included;
2. ``visual_projector`` (``mlp2x_gelu``: Linear, GELU, Linear) maps them from CLIP's width to the Llama width;
3. ``feature_adaptor`` (one Linear, present when ``event_feature_adaptor``) is applied **once** per token. The seed
   pipeline applied it a second time on its cached-features path; here cached features are the finished output of
   :meth:`EventChatLlamaModel.encode_events` and are never adapted again;
4. parameter-free spatio-temporal pooling turns ``T`` frames of ``S`` tokens into ``T + S`` event tokens
   (:func:`spatio_temporal_pool`);
5. the event tokens replace the single ``<event>`` placeholder (id :data:`EVENT_TOKEN_INDEX` = -200) in the prompt's
   token embeddings.

Prompt and tokenizer, as EventGPT's ``inference.py`` does them. ``prepare_event_prompt`` always writes the placeholder
as ``<ev_start><event><ev_end>`` (:func:`eventgpt_prompt` with ``style="published"``); the config decides only how
the markers are tokenized. ``inference.py`` adds ``<ev_patch>`` to the tokenizer when ``mm_use_im_patch_token`` (its
default: yes) and ``<ev_start>``/``<ev_end>`` when ``mm_use_im_start_end``, all as special tokens, then resizes the
embeddings to the tokenizer (:func:`add_event_tokens`, :meth:`EventChatModel.resize_for_tokenizer`); markers that are
not added are tokenized as ordinary text. The prompt is cut at ``<event>`` and each piece tokenized on its own, with
one BOS (:func:`tokenizer_event_token`). ``inference.py`` asks for the slow SentencePiece tokenizer
(``use_fast=False``); transformers 5 has one Llama tokenizer only and ignores ``use_fast``.

Weights. The module names give the published checkpoint keys: ``model.embed_tokens``, ``model.layers.*``,
``model.norm``, ``lm_head`` (Vicuna), ``model.visual_projector.{0,2}.*`` and ``model.feature_adaptor.*``. CLIP lives at
``model.visual_tower.visual_tower.*`` but its weights are read from the separate CLIP folder named by
``config.mm_visual_tower`` (absolute, relative to the EventGPT folder, or a sibling of it), as in the original
release. :meth:`EventChatModel.save_pretrained` writes that layout back (CLIP into a ``visual_tower/`` sub-folder).
Only safetensors weights are ever read.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
)
from transformers.utils.deprecation import deprecate_kwarg

from sdlib.models.loading import check_checkpoint_dir

__all__ = [
    "EVENT_TOKEN",
    "EVENT_TOKEN_INDEX",
    "IGNORE_INDEX",
    "EV_START",
    "EV_END",
    "EVENT_PATCH_TOKEN",
    "PROMPT_STYLES",
    "SYSTEM_PROMPT",
    "EventChatConfig",
    "VisualTower",
    "EventChatLlamaModel",
    "EventChatModel",
    "spatio_temporal_pool",
    "event_token_count",
    "eventgpt_prompt",
    "add_event_tokens",
    "tokenizer_event_token",
    "resolve_visual_tower_dir",
]

EVENT_TOKEN = "<event>"
EVENT_TOKEN_INDEX = -200  # placeholder id in input_ids; never a real vocabulary id
IGNORE_INDEX = -100  # label value that the loss skips (event positions, prompt positions)
EV_START = "<ev_start>"
EV_END = "<ev_end>"
EVENT_PATCH_TOKEN = "<ev_patch>"
#: ``"published"``: ``<ev_start><event><ev_end>`` as EventGPT's inference code writes it; ``"plain"``: ``<event>`` alone
#: (the scale model's prompt, trained here with it)
PROMPT_STYLES = ("published", "plain")
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VISUAL_TOWER_SUBDIR = "visual_tower"  # where save_pretrained puts the CLIP folder
_CLIP_PREFIX = "model.visual_tower.visual_tower."


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------
@strict
class EventChatConfig(LlamaConfig):
    """Llama config plus the event branch.

    Fields beyond :class:`~transformers.LlamaConfig`:

    - ``mm_visual_tower``: the CLIP vision checkpoint folder (absolute, or relative to the EventGPT folder);
    - ``visual_tower_config``: the CLIP vision config as a dict. ``from_pretrained`` fills it from the CLIP folder;
      a model built from scratch (scale model) passes it directly and needs no folder;
    - ``mm_hidden_size``: CLIP's width; taken from ``visual_tower_config`` when not given, and checked against it;
    - ``mm_projector_type``: ``"mlp{n}x_gelu"`` (EventGPT: ``mlp2x_gelu``) or ``"linear"``;
    - ``event_feature_adaptor``: whether the Linear ``feature_adaptor`` exists (EventGPT-7B: yes);
    - ``num_temporal_tokens``: pad (zeros) or cut the temporal tokens to this count; ``None`` keeps one per frame;
    - ``n_event_frames``: how many event images a sample is rendered into (EventGPT inference: 5);
    - ``mm_use_im_start_end``: ``<ev_start>``/``<ev_end>`` are tokens of their own (added to the tokenizer); otherwise
      the published prompt still writes them and they are tokenized as text (the training scripts set it False);
    - ``mm_use_im_patch_token``: ``<ev_patch>`` is added to the tokenizer (``inference.py``'s default: True). It never
      appears in a prompt, but it gives the resized model one more (untrained) row.
    """

    model_type = "EventChat_llama"

    mm_visual_tower: str | None = None
    visual_tower_config: dict | None = None
    mm_hidden_size: int | None = None
    mm_projector_type: str = "mlp2x_gelu"
    event_feature_adaptor: bool = True
    num_temporal_tokens: int | None = None
    n_event_frames: int = 5
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        if self.visual_tower_config is not None:
            clip_hidden = int(self.visual_tower_config["hidden_size"])
            if self.mm_hidden_size is None:
                self.mm_hidden_size = clip_hidden
            elif self.mm_hidden_size != clip_hidden:
                raise ValueError(
                    f"EventChatConfig: mm_hidden_size={self.mm_hidden_size} disagrees with the visual tower's "
                    f"hidden_size={clip_hidden}; expected them equal (the projector reads CLIP features)"
                )
        super().__post_init__(**kwargs)

    def clip_config(self) -> CLIPVisionConfig:
        """The CLIP vision config the event branch is built from; raises if the config does not carry one yet."""
        if self.visual_tower_config is None:
            raise ValueError(
                f"EventChatConfig: no visual_tower_config (mm_visual_tower={self.mm_visual_tower!r}); expected "
                "EventChatModel.from_pretrained to read it from the CLIP folder, or a dict passed when building "
                "a model from scratch"
            )
        return CLIPVisionConfig(**{k: v for k, v in self.visual_tower_config.items() if k != "transformers_version"})


def event_token_count(config: EventChatConfig, n_frames: int | None = None) -> int:
    """Number of event tokens that replace ``<event>``: temporal tokens (one per frame, or ``num_temporal_tokens``)
    plus one spatial token per CLIP token, ``(image_size // patch_size)^2 + 1``."""
    clip = config.clip_config()
    frames = config.n_event_frames if n_frames is None else n_frames
    spatial = (clip.image_size // clip.patch_size) ** 2 + 1
    temporal = config.num_temporal_tokens if config.num_temporal_tokens is not None else frames
    return temporal + spatial


# ---------------------------------------------------------------------------------------------------------------------
# Event branch
# ---------------------------------------------------------------------------------------------------------------------
def spatio_temporal_pool(features: torch.Tensor, num_temporal_tokens: int | None = None) -> torch.Tensor:
    """Pool per-frame token features ``[..., T, S, C]`` into ``[..., T + S, C]`` (no parameters).

    Temporal tokens are the mean over the ``S`` tokens of each frame (one per frame), spatial tokens the mean over the
    ``T`` frames of each token position; temporal tokens come first. With ``num_temporal_tokens`` the temporal part is
    cut to, or zero-padded up to, that many tokens.
    """
    if features.dim() < 3:
        raise ValueError(f"spatio_temporal_pool: features must be [..., T, S, C], got shape {tuple(features.shape)}")
    temporal = features.mean(dim=-2)  # [..., T, C]
    spatial = features.mean(dim=-3)  # [..., S, C]
    if num_temporal_tokens is not None:
        t = temporal.shape[-2]
        if t >= num_temporal_tokens:
            temporal = temporal[..., :num_temporal_tokens, :]
        else:
            pad = temporal.new_zeros(*temporal.shape[:-2], num_temporal_tokens - t, temporal.shape[-1])
            temporal = torch.cat([temporal, pad], dim=-2)  # [..., num_temporal_tokens, C]
    return torch.cat([temporal, spatial], dim=-2)  # [..., T + S, C]


def build_projector(projector_type: str, in_features: int, hidden: int) -> nn.Module:
    """``"linear"`` -> one Linear; ``"mlp{n}x_gelu"`` -> Linear then (GELU, Linear) x (n - 1), as nn.Sequential so the
    Linear layers are keys ``0``, ``2``, ..."""
    if projector_type == "linear":
        return nn.Linear(in_features, hidden)
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"mm_projector_type={projector_type!r}: expected 'linear' or 'mlp<n>x_gelu' (n >= 1)")
    layers: list[nn.Module] = [nn.Linear(in_features, hidden)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]
    return nn.Sequential(*layers)


class VisualTower(nn.Module):
    """Holds the CLIP vision encoder under the attribute name ``visual_tower`` (hence the checkpoint prefix
    ``model.visual_tower.visual_tower.``) and returns every token of CLIP's last layer."""

    def __init__(self, clip_config: CLIPVisionConfig) -> None:
        super().__init__()
        self.visual_tower = CLIPVisionModel(clip_config)

    @property
    def num_tokens(self) -> int:
        """Tokens per frame: patches plus CLS."""
        cfg = self.visual_tower.config
        return (cfg.image_size // cfg.patch_size) ** 2 + 1

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` [N, 3, H, W] -> CLIP ``last_hidden_state`` [N, S, mm_hidden] (CLS first)."""
        param = next(self.visual_tower.parameters())
        out = self.visual_tower(pixel_values=pixel_values.to(device=param.device, dtype=param.dtype))
        return out.last_hidden_state  # [N, S, mm_hidden]


class EventChatLlamaModel(LlamaModel):
    """The Llama decoder plus the event branch (``visual_tower``, ``visual_projector``, ``feature_adaptor``)."""

    config_class = EventChatConfig

    def __init__(self, config: EventChatConfig) -> None:
        super().__init__(config)
        clip_config = config.clip_config()
        self.visual_tower = VisualTower(clip_config)
        self.visual_projector = build_projector(config.mm_projector_type, clip_config.hidden_size, config.hidden_size)
        self.feature_adaptor = (
            nn.Linear(config.hidden_size, config.hidden_size) if config.event_feature_adaptor else None
        )
        self.post_init()  # LlamaModel already ran it; again so the new modules are initialised and registered

    def encode_events(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Event images -> event tokens in the Llama's embedding space.

        ``pixel_values`` is ``[T, 3, H, W]`` (one sample) or ``[B, T, 3, H, W]``; returns ``[T' + S, hidden]`` or
        ``[B, T' + S, hidden]`` (``T'`` = T, or ``num_temporal_tokens``). The output is final: pass it back as
        ``event_features`` and nothing is applied to it again.
        """
        if pixel_values.dim() not in (4, 5) or pixel_values.shape[-3] != 3:
            raise ValueError(
                f"encode_events: pixel_values must be [T, 3, H, W] or [B, T, 3, H, W], got {tuple(pixel_values.shape)}"
            )
        single = pixel_values.dim() == 4
        frames = pixel_values.unsqueeze(0) if single else pixel_values  # [B, T, 3, H, W]
        b, t = frames.shape[:2]
        clip_tokens = self.visual_tower(frames.flatten(0, 1))  # [B*T, S, mm_hidden]
        # the embeddings carry the compute dtype (projector weights may be int8 / packed 4-bit under bitsandbytes)
        feats = self.visual_projector(clip_tokens.to(self.embed_tokens.weight.dtype))  # [B*T, S, hidden]
        if self.feature_adaptor is not None:
            feats = self.feature_adaptor(feats)  # [B*T, S, hidden], the one and only application
        feats = feats.view(b, t, feats.shape[-2], feats.shape[-1])  # [B, T, S, hidden]
        pooled = spatio_temporal_pool(feats, self.config.num_temporal_tokens)  # [B, T' + S, hidden]
        return pooled[0] if single else pooled

    def embed_with_events(
        self,
        input_ids: torch.Tensor,
        event_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Replace the one ``<event>`` placeholder of each sequence by its event tokens.

        ``input_ids`` [B, L] holds exactly one :data:`EVENT_TOKEN_INDEX` per row; ``event_features`` is [N, C] (the same
        events for every row) or [B, N, C]. Returns ``inputs_embeds`` [B, L - 1 + N, C] and, when given, the attention
        mask (event positions attended) and labels (event positions :data:`IGNORE_INDEX`) stretched to match.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        is_event = input_ids == EVENT_TOKEN_INDEX  # [B, L]
        counts = is_event.sum(dim=1)
        if not bool((counts == 1).all()):
            raise ValueError(
                f"input_ids: each sequence needs exactly one <event> placeholder ({EVENT_TOKEN_INDEX}); "
                f"found {counts.tolist()} per sequence"
            )
        batch = input_ids.shape[0]
        if event_features.dim() == 2:
            event_features = event_features.unsqueeze(0).expand(batch, -1, -1)  # [B, N, C]
        if event_features.dim() != 3 or event_features.shape[0] != batch:
            raise ValueError(
                f"event_features must be [N, C] or [{batch}, N, C] for {batch} sequences, got "
                f"{tuple(event_features.shape)}"
            )
        if event_features.shape[-1] != self.config.hidden_size:
            raise ValueError(
                f"event_features width {event_features.shape[-1]} != hidden_size {self.config.hidden_size}; expected "
                "the output of encode_events"
            )
        text_embeds = self.embed_tokens(input_ids.masked_fill(is_event, 0))  # [B, L, C]; slot at the event is dropped
        event_features = event_features.to(device=text_embeds.device, dtype=text_embeds.dtype)
        n_event = event_features.shape[1]
        where = is_event.int().argmax(dim=1).tolist()  # placeholder position per row
        embeds, masks, labs = [], [], []
        for row, pos in enumerate(where):
            embeds.append(torch.cat([text_embeds[row, :pos], event_features[row], text_embeds[row, pos + 1 :]]))
            if attention_mask is not None:
                ones = attention_mask.new_ones(n_event)
                masks.append(torch.cat([attention_mask[row, :pos], ones, attention_mask[row, pos + 1 :]]))
            if labels is not None:
                ignore = labels.new_full((n_event,), IGNORE_INDEX)
                labs.append(torch.cat([labels[row, :pos], ignore, labels[row, pos + 1 :]]))
        inputs_embeds = torch.stack(embeds)  # [B, L - 1 + N, C]
        new_mask = torch.stack(masks) if attention_mask is not None else None  # [B, L - 1 + N]
        new_labels = torch.stack(labs) if labels is not None else None  # [B, L - 1 + N]
        return inputs_embeds, new_mask, new_labels


# ---------------------------------------------------------------------------------------------------------------------
# Causal LM
# ---------------------------------------------------------------------------------------------------------------------
def resolve_visual_tower_dir(mm_visual_tower: str | Path | None, checkpoint_dir: str | Path | None) -> Path:
    """Find the CLIP folder named by ``mm_visual_tower``.

    Tried in order: the path itself if absolute; ``<checkpoint_dir>/<name>``; ``<checkpoint_dir>/../<name>`` and
    ``<checkpoint_dir>/../<basename>`` (the original release kept ``checkpoints/EventGPT-7b`` and
    ``checkpoints/clip-vit-large-patch14-336`` side by side). A hub id is never downloaded: the error lists every
    folder tried.
    """
    if mm_visual_tower is None or str(mm_visual_tower) == "":
        raise FileNotFoundError("mm_visual_tower is not set; expected the path of a CLIP vision checkpoint folder")
    name = Path(mm_visual_tower)
    candidates: list[Path] = []
    if name.is_absolute():
        candidates.append(name)
    elif checkpoint_dir is not None:
        base = Path(checkpoint_dir)
        candidates += [base / name, base.parent / name, base.parent / name.name]
    else:
        candidates.append(name)
    for cand in candidates:
        if (cand / "config.json").is_file():
            return cand.resolve()
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise FileNotFoundError(
        f"mm_visual_tower={str(mm_visual_tower)!r}: no CLIP folder with a config.json at {tried}; expected a local "
        "CLIP vision checkpoint (hub ids are never downloaded): put it there or pass visual_tower_path="
    )


def _with_visual_tower_skipped(quantization_config: Any) -> Any:
    """A copy of a bitsandbytes config that also leaves the CLIP tower unquantized (it is replaced after loading)."""
    if not isinstance(quantization_config, BitsAndBytesConfig):
        return quantization_config
    cfg = copy.deepcopy(quantization_config)
    skip = list(cfg.llm_int8_skip_modules) if cfg.llm_int8_skip_modules is not None else ["lm_head"]
    if "visual_tower" not in skip:
        skip.append("visual_tower")
    cfg.llm_int8_skip_modules = skip
    return cfg


class EventChatModel(LlamaForCausalLM):
    """EventGPT as a causal LM: ``self.model`` is an :class:`EventChatLlamaModel`, ``self.lm_head`` the Vicuna head.

    ``forward``/``generate`` take the event input either as ``event_pixel_values`` ([T, 3, H, W] or [B, T, 3, H, W])
    or as ``event_features`` (the output of :meth:`encode_events`, reused without recomputation).
    """

    config_class = EventChatConfig
    # CLIP weights come from the mm_visual_tower folder, never from the EventGPT weight files; CLIP keys that a file
    # carries anyway (e.g. 4.x names with a `vision_model.` level) are skipped
    _keys_to_ignore_on_load_missing = [r"^model\.visual_tower\.visual_tower\."]
    _keys_to_ignore_on_load_unexpected = [r"^model\.visual_tower\.visual_tower\."]

    def __init__(self, config: EventChatConfig) -> None:
        # skip LlamaForCausalLM.__init__ (it would build a plain LlamaModel only to throw it away)
        super(LlamaForCausalLM, self).__init__(config)
        self.model = EventChatLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        self.visual_tower_dir: Path | None = None  # set by from_pretrained

    # -- event input ----------------------------------------------------------------------------------------------
    def encode_events(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """See :meth:`EventChatLlamaModel.encode_events`."""
        return self.model.encode_events(pixel_values)

    def _event_features(
        self, event_pixel_values: torch.Tensor | None, event_features: torch.Tensor | None
    ) -> torch.Tensor:
        if (event_pixel_values is None) == (event_features is None):
            raise ValueError(
                "input_ids holds an <event> placeholder: pass exactly one of event_pixel_values "
                "([T, 3, H, W] / [B, T, 3, H, W]) or event_features (output of encode_events)"
            )
        if event_features is not None:
            return event_features
        return self.model.encode_events(event_pixel_values)

    def prepare_event_inputs(
        self,
        input_ids: torch.Tensor,
        event_pixel_values: torch.Tensor | None = None,
        event_features: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(inputs_embeds, attention_mask, labels)`` with the event tokens spliced in (see ``embed_with_events``)."""
        features = self._event_features(event_pixel_values, event_features)
        return self.model.embed_with_events(input_ids, features, attention_mask, labels)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        event_pixel_values: torch.Tensor | None = None,
        event_features: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """Llama forward; when ``input_ids`` holds ``<event>`` the event tokens are spliced in first."""
        has_event = input_ids is not None and bool((input_ids == EVENT_TOKEN_INDEX).any())
        if has_event:
            if position_ids is not None:
                raise ValueError(
                    "position_ids cannot be given with an <event> placeholder: the sequence length changes"
                )
            inputs_embeds, attention_mask, labels = self.prepare_event_inputs(
                input_ids, event_pixel_values, event_features, attention_mask, labels
            )
            input_ids = None
        elif event_pixel_values is not None or event_features is not None:
            raise ValueError(
                f"event input given but input_ids holds no <event> placeholder ({EVENT_TOKEN_INDEX}); "
                "build input_ids with tokenizer_event_token"
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config: Any = None,
        *,
        event_pixel_values: torch.Tensor | None = None,
        event_features: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """``GenerationMixin.generate`` with the event tokens spliced into ``inputs_embeds`` first.

        As in transformers 5.x for any ``inputs_embeds`` call, the returned sequences hold only the new tokens.
        """
        input_ids = kwargs.pop("input_ids", inputs)
        if input_ids is not None and bool((input_ids == EVENT_TOKEN_INDEX).any()):
            if "inputs_embeds" in kwargs:
                raise ValueError("generate: pass input_ids with <event> or inputs_embeds, not both")
            inputs_embeds, attention_mask, _ = self.prepare_event_inputs(
                input_ids, event_pixel_values, event_features, kwargs.pop("attention_mask", None)
            )
            if attention_mask is None:
                attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
            return super().generate(
                generation_config=generation_config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                **kwargs,
            )
        if event_pixel_values is not None or event_features is not None:
            raise ValueError(f"generate: event input given but input_ids holds no <event> ({EVENT_TOKEN_INDEX})")
        return super().generate(input_ids, generation_config, **kwargs)

    # -- vocabulary -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def resize_for_tokenizer(self, n_tokens: int) -> int:
        """Grow the token embeddings and the LM head to ``n_tokens`` rows, as ``inference.py`` does with
        ``resize_token_embeddings(len(tokenizer))`` after :func:`add_event_tokens`; returns the number of rows added.

        New rows are the mean of the existing rows, the rule EventGPT's training code (``initialize_vision_tokenizer``)
        uses for ``<ev_start>``/``<ev_end>``. It is deterministic; transformers 4.37's resize, which the original's
        inference ran, drew them from N(0, 0.02). The rows are untrained either way. A model with ``n_tokens`` rows or
        more is left as it is: never shrunk, so a head padded past its tokenizer keeps its rows.
        """
        embed = self.model.embed_tokens
        old = int(embed.weight.shape[0])
        if n_tokens <= old:
            return 0
        head = self.lm_head
        if type(head) is not nn.Linear:
            raise ValueError(
                f"resize_for_tokenizer: lm_head is a {type(head).__name__}; expected an unquantized nn.Linear "
                "(bitsandbytes keeps lm_head unquantized unless told otherwise)"
            )
        added = n_tokens - old
        tied = head.weight is embed.weight

        def grown(weight: torch.Tensor) -> torch.Tensor:
            mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)  # [1, hidden]
            return torch.cat([weight, mean.expand(added, -1)])  # [n_tokens, hidden]

        new_embed = nn.Embedding(n_tokens, embed.embedding_dim, padding_idx=embed.padding_idx,
                                 device=embed.weight.device, dtype=embed.weight.dtype)
        new_embed.weight.copy_(grown(embed.weight))
        self.model.embed_tokens = new_embed
        if tied:
            head.weight = new_embed.weight
            head.out_features = n_tokens
        else:
            new_head = nn.Linear(head.in_features, n_tokens, bias=False, device=head.weight.device,
                                 dtype=head.weight.dtype)
            new_head.weight.copy_(grown(head.weight))
            self.lm_head = new_head
        self.config.vocab_size = n_tokens
        self.vocab_size = n_tokens
        return added

    # -- loading and saving ---------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *model_args: Any,
        visual_tower_path: str | Path | None = None,
        **kwargs: Any,
    ):
        """Load an EventGPT folder (published layout) and its CLIP folder.

        ``visual_tower_path`` overrides ``config.mm_visual_tower``. Only safetensors are read. CLIP is loaded in the
        dtype and on the device of the embeddings, is never quantized, and comes back frozen (``requires_grad`` False),
        as in the original. With ``output_loading_info=True`` the report covers the CLIP folder too: its keys are
        listed under the ``model.visual_tower.visual_tower.`` prefix.
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError("EventChatModel.from_pretrained: use_safetensors=False refused; only safetensors are read")
        kwargs["use_safetensors"] = True
        path = Path(pretrained_model_name_or_path)
        config = kwargs.pop("config", None)
        if not isinstance(config, EventChatConfig):
            config = EventChatConfig.from_pretrained(path, local_files_only=kwargs.get("local_files_only", False))
        else:
            config = copy.deepcopy(config)
        clip_dir = resolve_visual_tower_dir(
            visual_tower_path if visual_tower_path is not None else config.mm_visual_tower, path
        )
        check_checkpoint_dir(clip_dir, key="mm_visual_tower")  # safetensors only, here as for the main weights
        clip_config = CLIPVisionConfig.from_pretrained(clip_dir, local_files_only=True)
        if config.mm_hidden_size is not None and config.mm_hidden_size != clip_config.hidden_size:
            raise ValueError(
                f"{path}/config.json: mm_hidden_size={config.mm_hidden_size} but the CLIP folder {clip_dir} has "
                f"hidden_size={clip_config.hidden_size}; expected the CLIP checkpoint EventGPT was trained with"
            )
        config.visual_tower_config = clip_config.to_dict()
        config.mm_hidden_size = clip_config.hidden_size
        if "quantization_config" in kwargs:
            kwargs["quantization_config"] = _with_visual_tower_skipped(kwargs["quantization_config"])

        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(path, *model_args, config=config, output_loading_info=True, **kwargs)
        clip_info = model._load_visual_tower(clip_dir)
        for field in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            merged = set(info.get(field) or ()) | set(clip_info.get(field) or ())
            info[field] = merged
        return (model, info) if want_info else model

    def _load_visual_tower(self, clip_dir: Path) -> dict[str, set]:
        """Replace the CLIP skeleton by the weights of ``clip_dir``; returns its loading report, keys prefixed."""
        anchor = self.model.embed_tokens.weight
        clip, clip_info = CLIPVisionModel.from_pretrained(
            clip_dir,
            dtype=anchor.dtype,
            use_safetensors=True,
            local_files_only=True,
            output_loading_info=True,
        )
        clip = clip.to(anchor.device).eval().requires_grad_(False)
        self.model.visual_tower.visual_tower = clip
        self.visual_tower_dir = clip_dir
        # a full CLIPModel folder (text + vision, like openai/clip-vit-large-patch14-336) has keys we do not need
        unexpected = {k for k in clip_info.get("unexpected_keys", ()) if k.startswith("vision_model.")}
        mismatched = {str(k if isinstance(k, str) else k[0]) for k in clip_info.get("mismatched_keys", ())}
        return {
            "missing_keys": {_CLIP_PREFIX + k for k in clip_info.get("missing_keys", ())},
            "unexpected_keys": {_CLIP_PREFIX + k for k in unexpected},
            "mismatched_keys": {_CLIP_PREFIX + k for k in mismatched},
        }

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """Write the published layout: EventGPT weights without CLIP in ``save_directory``, CLIP as its own folder in
        ``save_directory/visual_tower`` and ``mm_visual_tower="visual_tower"`` in the saved config."""
        if kwargs.get("state_dict") is not None:
            raise ValueError("EventChatModel.save_pretrained builds its own state_dict (CLIP is saved separately)")
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        clip = self.model.visual_tower.visual_tower
        clip.save_pretrained(out / VISUAL_TOWER_SUBDIR)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(_CLIP_PREFIX)}
        saved_tower, saved_clip_cfg = self.config.mm_visual_tower, self.config.visual_tower_config
        self.config.mm_visual_tower, self.config.visual_tower_config = VISUAL_TOWER_SUBDIR, None
        try:
            super().save_pretrained(out, *args, state_dict=state, **kwargs)
        finally:
            self.config.mm_visual_tower, self.config.visual_tower_config = saved_tower, saved_clip_cfg


AutoConfig.register(EventChatConfig.model_type, EventChatConfig, exist_ok=True)
AutoModelForCausalLM.register(EventChatConfig, EventChatModel, exist_ok=True)


# ---------------------------------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------------------------------
def eventgpt_prompt(question: str, *, style: str = "published", system: str = SYSTEM_PROMPT) -> str:
    """The ``eventgpt_v1`` prompt (Vicuna v1 style, separator ``" "``) for one question, ending at ``ASSISTANT:``.

    ``style="published"`` is what EventGPT's ``prepare_event_prompt`` writes, whatever the config says:
    ``"<system> USER: <ev_start><event><ev_end>\\n<question> ASSISTANT:"``. ``style="plain"`` drops the two markers
    (``"<system> USER: <event>\\n<question> ASSISTANT:"``), the scale model's prompt.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style={style!r}: expected one of {', '.join(PROMPT_STYLES)}")
    event = f"{EV_START}{EVENT_TOKEN}{EV_END}" if style == "published" else EVENT_TOKEN
    return f"{system} USER: {event}\n{question} ASSISTANT:"


def add_event_tokens(tokenizer: Any, config: EventChatConfig) -> list[str]:
    """Add the event tokens to ``tokenizer`` as EventGPT's ``inference.py`` does: ``<ev_patch>`` when
    ``config.mm_use_im_patch_token``, ``<ev_start>`` and ``<ev_end>`` when ``config.mm_use_im_start_end``, all as
    special tokens (never split). Returns the tokens that were new to the tokenizer (a tokenizer saved with them
    already gets no new ids). Follow with :meth:`EventChatModel.resize_for_tokenizer`.
    """
    wanted = ([EVENT_PATCH_TOKEN] if config.mm_use_im_patch_token else []) + (
        [EV_START, EV_END] if config.mm_use_im_start_end else []
    )
    before = set(tokenizer.get_vocab())
    if wanted:
        tokenizer.add_tokens(wanted, special_tokens=True)  # a token already there keeps its id and becomes unsplittable
    return [tok for tok in wanted if tok not in before]


def _adds_bos(tokenizer: Any) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(with_special) > 0 and with_special[0] == bos


def tokenizer_event_token(
    prompt: str, tokenizer: Any, *, add_bos: bool | None = None, return_tensors: str | None = None
) -> list[int] | torch.Tensor:
    """Token ids of ``prompt`` with every ``<event>`` replaced by :data:`EVENT_TOKEN_INDEX`.

    The text between placeholders is tokenized chunk by chunk (no special tokens); the BOS token is put once at the
    start when ``add_bos`` (default: whenever the tokenizer itself adds BOS). ``return_tensors="pt"`` gives [1, L].
    """
    if add_bos is None:
        add_bos = _adds_bos(tokenizer)
    ids: list[int] = [tokenizer.bos_token_id] if add_bos else []
    for i, chunk in enumerate(prompt.split(EVENT_TOKEN)):
        if i > 0:
            ids.append(EVENT_TOKEN_INDEX)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
    if return_tensors is None:
        return ids
    if return_tensors != "pt":
        raise ValueError(f"tokenizer_event_token: return_tensors={return_tensors!r}; expected None or 'pt'")
    return torch.tensor([ids], dtype=torch.long)  # [1, L]
