"""One plot theme for the whole book, and the small figure helpers the stages share."""
from __future__ import annotations

import matplotlib

PALETTE = "colorblind"


def set_theme() -> None:
    """seaborn theme + figure defaults used by every stage (called by :func:`sdlib.setup`)."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    matplotlib.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 100,
            "savefig.dpi": 100,
            "savefig.bbox": "tight",
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 9,
            "figure.constrained_layout.use": True,
        }
    )
