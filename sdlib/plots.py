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


# ---- stage 00_data ----------------------------------------------------------------------------------------------
def clip_views(frames, event_image_1f, event_images, voxel, title: str = ""):
    """One clip as each model sees it: the target's 8 RGB frames, the drafter's event images (1 and 5 frames),
    and a voxel grid of the same events (red = positive, blue = negative)."""
    import matplotlib.pyplot as plt
    import numpy as np

    n_rgb, n_ev, n_vox = len(frames), len(event_images), len(voxel)
    cols = max(n_rgb, n_ev + 1, n_vox)
    fig, axes = plt.subplots(3, cols, figsize=(1.45 * cols, 3.9), constrained_layout=True)
    for ax in axes.ravel():
        ax.axis("off")
    for i, f in enumerate(frames):
        axes[0, i].imshow(f)
        axes[0, i].set_title(f"RGB {i}", fontsize=8)
    axes[1, 0].imshow(event_image_1f)
    axes[1, 0].set_title("events, 1f", fontsize=8)
    for i, img in enumerate(event_images):
        axes[1, i + 1].imshow(img)
        axes[1, i + 1].set_title(f"5f: {i}", fontsize=8)
    nonzero = np.abs(voxel[voxel != 0])
    lim = float(np.percentile(nonzero, 98)) if nonzero.size else 1.0  # sparse grids: saturate the top 2%
    for i, v in enumerate(voxel):
        axes[2, i].imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[2, i].set_title(f"voxel bin {i}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def event_rate(ax, events_by_label, bin_ms: float = 10.0) -> None:
    """Events per second over the clip, one line per labelled event array."""
    import numpy as np

    for label, ev in events_by_label.items():
        t_ms = ev["t"] / 1000.0
        edges = np.arange(0.0, max(float(t_ms.max()) if len(t_ms) else 0.0, bin_ms) + bin_ms, bin_ms)
        counts, _ = np.histogram(t_ms, bins=edges)
        ax.plot(edges[:-1] + bin_ms / 2, counts / (bin_ms / 1000.0), label=label)
    ax.set(xlabel="time in clip (ms)", ylabel="events per second", yscale="log")
    ax.legend(fontsize=8)
