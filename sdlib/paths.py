"""Where things live, resolved from the package, never from the current directory.

papermill, nbval and Jupyter Book each run notebooks from a different working directory, so every
path in the project is built from :data:`ROOT` (the folder holding ``_config.yml``).  The data folder
can be moved with the ``SDLIB_DATA_DIR`` environment variable (the tests use it to keep their
artefacts out of the book's ``data/``).
"""
from __future__ import annotations

import os
from pathlib import Path


def _find_root() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here, *here.parents):
        if (candidate / "_config.yml").is_file() and (candidate / "sdlib").is_dir():
            return candidate
    raise RuntimeError(
        f"sdlib at {here} is not inside a checkout of the book (no _config.yml beside an sdlib/ folder above it); "
        "install it with `pip install -e .` from the repository root"
    )


ROOT: Path = _find_root()
NOTEBOOKS: Path = ROOT / "notebooks"
PARAMS: Path = ROOT / "params"
BOOK: Path = ROOT / "book"
STAGES: Path = BOOK / "stages"


def data_dir() -> Path:
    """The artefact folder: ``$SDLIB_DATA_DIR`` if set, else ``ROOT/data``."""
    return Path(os.environ.get("SDLIB_DATA_DIR") or ROOT / "data")


def results_dir() -> Path:
    """``data/results``: one ``<stage>.json`` per finished stage run."""
    return data_dir() / "results"


def failed_dir() -> Path:
    """``data/failed``: executed notebooks of failed runs, kept for inspection, never published."""
    return data_dir() / "failed"
