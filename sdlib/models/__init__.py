"""EventGPT (drafter) and Video-LLaVA (target): real checkpoints and the scale model trained here.

Nothing in this package contacts a model hub: the offline switches below are set on import, and every loader
passes ``local_files_only=True``.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from sdlib.core import headless as _headless

if _headless():  # transformers' own load/save bars would flood headless logs
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
