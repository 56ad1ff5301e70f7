"""sdlib: the library behind the cross-modal speculative decoding research book.

Notebooks stay thin and call into this package; everything with logic lives here.  The names
below are the ones every stage notebook uses:

- :func:`setup` seeds the run, sets the plot theme and makes progress bars quiet when headless;
- :func:`glue` puts a number or figure into the book's prose (myst-nb glue);
- :func:`save_metrics` hands a stage's metrics to the runner, which writes ``data/results/<stage>.json``;
- :func:`stage_metrics` reads an earlier stage's metrics (its result file, or its latest interactive run);
- :func:`progress` is the one progress bar (tqdm) every long loop uses;
- :func:`run_profile` names the profile a page was produced by (every page states it).
"""
from __future__ import annotations

from sdlib.threads import size_thread_pools

size_thread_pools()  # before numpy or torch start their pools (see sdlib.threads)

from sdlib.core import glue, headless, progress, run_profile, save_metrics, setup, stage_metrics
from sdlib import paths

__all__ = ["setup", "glue", "save_metrics", "stage_metrics", "progress", "headless", "run_profile", "paths"]
__version__ = "0.1.0"
