"""Loading checkpoints from disk, the same way for every model (EventGPT, Video-LLaVA, the scale models).

:func:`load_pretrained` is a thin, strict front for ``from_pretrained``:

- **local only**: ``local_files_only=True`` always, so no hub access is ever attempted; a missing folder is a
  :class:`LoadError` that names the parameter (``key``) and the profile that supplied the path;
- **safetensors only**: weights must be ``*.safetensors``; a folder holding only pickle weights (``.bin``, ``.pt``,
  ``.pth``, ``.ckpt``, ``.pkl``) is refused before anything is read (convert it once with a trusted tool);
- **strict**: missing, unexpected or mis-shaped keys are an error, never a silently random-initialised layer;
- **dtype, device, quantization**: ``"float32" | "float16" | "bfloat16"``; ``"cpu" | "cuda" | "cuda:N"``;
  ``None | "4bit" (NF4, double quantization) | "8bit"`` via bitsandbytes. 4-bit matmuls compute in
  ``compute_dtype`` (default: ``dtype``). The original research loaded both 7B models with one config,
  ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4",
  bnb_4bit_compute_dtype=torch.bfloat16)``, EventGPT in bf16 and Video-LLaVA in fp16: that is
  ``quantization="4bit", compute_dtype="bfloat16"`` (:data:`ORIGINAL_4BIT_COMPUTE`), which the real pair uses.

bitsandbytes on CPU (checked with bitsandbytes 0.50.2, torch 2.13 CPU): both 4-bit NF4 and 8-bit load and run. The
CPU 4-bit kernel needs every quantized Linear's ``in_features`` to be a multiple of the block size (64), which every
real 7B layer is; a tiny test config must respect it. 8-bit casts activations to float16 inside the matmul.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError

from sdlib.core import headless

__all__ = ["LoadError", "load_pretrained", "load_tokenizer", "check_checkpoint_dir", "torch_dtype", "DTYPES",
           "ORIGINAL_4BIT_COMPUTE", "quantization_config"]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
QUANTIZATIONS = ("4bit", "nf4", "8bit")
ORIGINAL_4BIT_COMPUTE = "bfloat16"  # bnb_4bit_compute_dtype of the original research, for both models
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class LoadError(RuntimeError):
    """A checkpoint could not be loaded as asked. ``key`` is the parameter that named it, ``path`` the folder."""

    def __init__(self, message: str, *, key: str | None = None, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.path = None if path is None else str(path)


def _origin(profile: str | None, params_file: str | Path | None) -> str:
    parts = []
    if profile is not None:
        parts.append(f"profile {profile!r}")
    if params_file is not None:
        parts.append(str(params_file))
    return f" ({', '.join(parts)})" if parts else ""


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"fp32"``, ``"float16"``/``"fp16"``, ``"bfloat16"``/``"bf16"`` or a torch dtype -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise LoadError(f"dtype={dtype}: expected one of float32, float16, bfloat16")
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise LoadError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}") from None


def _check_device(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cpu":
        return "cpu"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LoadError(f"device={device!r}: CUDA is not available on this machine; expected device='cpu'")
        index = dev.index or 0
        if index >= torch.cuda.device_count():
            raise LoadError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
        return f"cuda:{index}"
    raise LoadError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def check_checkpoint_dir(
    path: str | Path | None,
    *,
    key: str,
    profile: str | None = None,
    params_file: str | Path | None = None,
    need_weights: bool = True,
) -> Path:
    """Check that ``path`` is a local checkpoint folder with a ``config.json`` and safetensors weights; return it.

    Every failure is a :class:`LoadError` that starts with ``"<key>: <path>"`` and ends with where the path came from,
    e.g. ``eventgpt_path: /x/EventGPT-7b does not exist (profile 'real', params/01_models.real.yaml)``.
    """
    origin = _origin(profile, params_file)
    if path is None or str(path) == "":
        raise LoadError(f"{key}: no path given{origin}; expected a local checkpoint folder", key=key, path=path)
    folder = Path(path).expanduser()
    if not folder.exists():
        raise LoadError(f"{key}: {folder} does not exist{origin}", key=key, path=folder)
    if not folder.is_dir():
        raise LoadError(f"{key}: {folder} is not a folder{origin}; expected a checkpoint folder", key=key, path=folder)
    if not need_weights:
        return folder
    if not (folder / "config.json").is_file():
        raise LoadError(
            f"{key}: {folder} has no config.json{origin}; expected a checkpoint folder", key=key, path=folder
        )
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    if any(n.endswith(".safetensors") for n in names):
        return folder
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise LoadError(
            f"{key}: {folder} holds only pickle weights ({', '.join(pickles[:4])}){origin}; refusing to unpickle "
            "them. Convert them once to safetensors with a trusted tool (torch.load(..., weights_only=True) + "
            "safetensors.torch.save_file) and point the path at the converted folder",
            key=key,
            path=folder,
        )
    raise LoadError(f"{key}: {folder} has no *.safetensors weights{origin}", key=key, path=folder)


def quantization_config(quantization: str | None, compute_dtype: str | torch.dtype = ORIGINAL_4BIT_COMPUTE) -> Any:
    """The ``BitsAndBytesConfig`` for ``quantization`` (``None`` gives ``None``): 4-bit is NF4 with double
    quantization computing in ``compute_dtype``; 8-bit is LLM.int8(). Raises :class:`LoadError` without bitsandbytes."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise LoadError(f"quantization={quantization!r}: expected None, '4bit' (NF4) or '8bit'")
    try:
        import bitsandbytes  # noqa: F401  (checked here so the error is ours, not a deep ImportError)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        raise LoadError(
            f"quantization={quantization!r} needs bitsandbytes, which does not import here ({exc}); "
            "install it (`pip install bitsandbytes`) or load with quantization=None"
        ) from exc
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(compute_dtype),
    )


def _info_problems(info: dict[str, Any]) -> list[str]:
    problems = []
    for field in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(field) or ())
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{field.replace('_', ' ')}: {shown}")
    return problems


def load_pretrained(
    model_cls: Any,
    path: str | Path | None,
    *,
    key: str,
    profile: str | None = None,
    params_file: str | Path | None = None,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    quantization: str | None = None,
    compute_dtype: str | torch.dtype | None = None,
    strict: bool = True,
    **kwargs: Any,
) -> Any:
    """Load ``model_cls`` from the local folder ``path`` (a transformers ``PreTrainedModel`` class).

    ``key``/``profile``/``params_file`` say where ``path`` came from, for error messages only. ``compute_dtype`` is
    the 4-bit matmul dtype (default ``dtype``; ignored without 4-bit). Extra ``kwargs`` go to
    ``model_cls.from_pretrained`` (e.g. ``visual_tower_path=`` for EventGPT). Returns the model in eval mode, on
    ``device``. With ``strict`` any missing, unexpected or mis-shaped key raises :class:`LoadError`.
    """
    folder = check_checkpoint_dir(path, key=key, profile=profile, params_file=params_file)
    dt = torch_dtype(dtype)
    dev = _check_device(device)
    quant = quantization_config(quantization, dt if compute_dtype is None else compute_dtype)
    for forbidden in ("local_files_only", "use_safetensors", "output_loading_info"):
        if forbidden in kwargs:
            raise LoadError(f"load_pretrained: {forbidden}= is fixed by the loader and cannot be passed")
    for own, option in (("torch_dtype", "dtype"), ("device_map", "device"), ("quantization_config", "quantization")):
        if own in kwargs:
            raise LoadError(f"load_pretrained: pass {option}= instead of {own}=")
    if headless():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    load_kwargs: dict[str, Any] = dict(
        dtype=dt,
        device_map={"": dev},
        use_safetensors=True,
        local_files_only=True,
        output_loading_info=True,
        **kwargs,
    )
    if quant is not None:
        load_kwargs["quantization_config"] = quant
    origin = _origin(profile, params_file)
    try:
        model, info = model_cls.from_pretrained(str(folder), **load_kwargs)
    except LoadError:
        raise
    except (OSError, ValueError, RuntimeError, StrictDataclassError) as exc:
        raise LoadError(f"{key}: {folder}{origin}: {type(exc).__name__}: {exc}", key=key, path=folder) from exc
    problems = _info_problems(info)
    if strict and problems:
        raise LoadError(
            f"{key}: {folder}{origin} does not match {getattr(model_cls, '__name__', model_cls)}: "
            + "; ".join(problems),
            key=key,
            path=folder,
        )
    return model.eval()


def load_tokenizer(
    path: str | Path | None,
    *,
    key: str,
    profile: str | None = None,
    params_file: str | Path | None = None,
    **kwargs: Any,
) -> Any:
    """``AutoTokenizer.from_pretrained`` on a local folder only (same path checks and messages as the model)."""
    from transformers import AutoTokenizer

    folder = check_checkpoint_dir(path, key=key, profile=profile, params_file=params_file, need_weights=False)
    kwargs.pop("local_files_only", None)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **kwargs)
    except (OSError, ValueError, ImportError) as exc:  # ImportError: a tokenizer.model-only folder needs sentencepiece
        raise LoadError(
            f"{key}: {folder}{_origin(profile, params_file)}: no usable tokenizer ({exc})", key=key, path=folder
        ) from exc
