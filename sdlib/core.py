"""Run-wide conventions shared by every stage: seeding, plot theme, progress bars, metrics hand-off."""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from sdlib import paths

HEADLESS_ENV = "SDLIB_HEADLESS"


def headless() -> bool:
    """True when running under the runner, papermill tests or CI: progress bars stay quiet there."""
    return bool(os.environ.get(HEADLESS_ENV) or os.environ.get("CI"))


def run_profile() -> str:
    """The profile this run was started with (the runner passes it to the kernel), or ``interactive`` when a
    notebook is run by hand. Every published page states it."""
    return os.environ.get("SDLIB_PROFILE") or "interactive"


def progress(iterable: Iterable | None = None, **kwargs: Any):
    """A tqdm progress bar that is silent when :func:`headless` (explicit, so it does not depend on import order)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", headless())
    kwargs.setdefault("leave", False)
    return tqdm(iterable, **kwargs)


def setup(seed: int = 0, figure_format: str = "png") -> np.random.Generator:
    """Seed Python, NumPy and torch (if imported), set the one plot theme, and return a seeded Generator.

    Pass the returned generator down instead of using global random state.
    """
    random.seed(seed)
    np.random.seed(seed)  # only for third-party code that insists on the global state
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a hard dependency, but the theory stage does not need it
        pass
    from sdlib import plots

    plots.set_theme()
    try:  # inline figure format inside a kernel; harmless outside one
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats(figure_format)
    except Exception:  # noqa: BLE001 - not in IPython
        pass
    return np.random.default_rng(seed)


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Store ``value`` under ``name`` for ``{glue}`` roles in the book's prose; returns the value.

    Floats from numpy are converted to Python floats so the stored text is a plain number.
    """
    from myst_nb import glue as _glue

    if isinstance(value, np.generic):
        value = value.item()
    _glue(name, value, display=display)
    return value


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def pending_metrics_path(stage: str) -> Path:
    """Where a running notebook leaves its metrics for the runner to collect."""
    return paths.data_dir() / "interim" / "metrics" / f"{stage}.json"


def save_metrics(stage: str, metrics: Mapping[str, Any]) -> Path:
    """Write a stage's metrics; the runner folds them into ``data/results/<stage>.json``.

    Called once at the end of every stage notebook.  Values must be JSON-serialisable after numpy
    scalars/arrays are converted (non-finite floats become ``null``).
    """
    out = pending_metrics_path(stage)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=True))
    tmp.replace(out)
    return out


def stage_metrics(stage: str) -> dict[str, Any]:
    """The metrics of the last run of an earlier ``stage``, for the stages that build on it.

    A run through the runner (``make book``, ``python -m sdlib run``) leaves ``data/results/<stage>.json``; a notebook
    executed in a kernel of its own (JupyterLab, nbval) leaves only the metrics it handed to the runner
    (:func:`save_metrics`). The newer of the two is read, so a later stage always builds on the latest run."""
    result = paths.results_dir() / f"{stage}.json"
    pending = pending_metrics_path(stage)
    found = sorted((p.stat().st_mtime, i, p) for i, p in enumerate((result, pending)) if p.is_file())
    if not found:
        raise FileNotFoundError(f"{result} is missing: run stage {stage} first (`make run STAGE={stage}`)")
    path = found[-1][2]
    data = json.loads(path.read_text())
    return data["metrics"] if path == result else data
