"""Figure helpers, one visual style. One submodule per chapter's figures.

``plots.style()`` is applied by every chapter; ``save(fig, name, run)`` writes a PNG under the run's
``figures/`` folder (and returns the figure so the notebook displays it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # scripts and the CLI draw off-screen; notebooks keep inline figures
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

__all__ = ["style", "save", "LABEL_COLORS", "label_cmap", "overlay", "window", "LUNG_WINDOW", "window_text",
           "fixed_jitter"]

from sscild.palette import LABEL_HEX  # noqa: E402

LABEL_COLORS = dict(LABEL_HEX)
"""One colour per label, the colour-blind-safe palette of :mod:`sscild.palette` (normal lung sky
blue, EF vermillion, GGO yellow), the same colours as the viewer files ``sscild segment`` writes."""

LUNG_WINDOW = (-1350.0, 150.0)
"""Lung window (level -600, width 1500)."""


def window_text(lo: float = LUNG_WINDOW[0], hi: float = LUNG_WINDOW[1]) -> str:
    """The display window in words, for captions: ``"lung window W 1500 / L -600 HU"``."""
    return f"lung window W {hi - lo:g} / L {(hi + lo) / 2:g} HU"


class fixed_jitter:
    """Draw a seaborn strip plot's jitter from a fixed seed, so that a figure is the same on every run
    (seaborn draws it from numpy's global random state); the global state is restored afterwards.

    >>> with fixed_jitter():
    ...     a = np.random.uniform(size=2)
    >>> with fixed_jitter():
    ...     b = np.random.uniform(size=2)
    >>> bool((a == b).all())
    True
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __enter__(self):
        self._state = np.random.get_state()
        np.random.seed(self.seed)
        return self

    def __exit__(self, *exc):
        np.random.set_state(self._state)
        return False


def style() -> None:
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 130, "savefig.bbox": "tight", "axes.titlesize": 11})


def save(fig, name: str, folder: str | Path | None = None) -> Path | None:
    """Save ``fig`` as ``<folder>/<name>.png`` (if a folder is given); in a notebook, show it once and close it.

    Returns the PNG's path (or ``None``).
    """
    path = None
    if folder is not None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        fig.savefig(path)
    if "ipykernel" in sys.modules:
        from IPython.display import display

        display(fig)
    plt.close(fig)
    return path


def label_cmap(alpha: float = 0.45) -> ListedColormap:
    colors = [(0, 0, 0, 0)]
    for k in (1, 2, 3):
        rgb = matplotlib.colors.to_rgb(LABEL_COLORS[k])
        colors.append((*rgb, alpha if k != 1 else alpha * 0.5))
    return ListedColormap(colors)


def window(hu: np.ndarray, lo: float = LUNG_WINDOW[0], hi: float = LUNG_WINDOW[1]) -> np.ndarray:
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0, 1)


def overlay(ax, image_slice: np.ndarray, label_slice: np.ndarray | None = None, *, title: str | None = None,
            aspect: float = 1.0, contour: bool = False, labels=(1, 2, 3)) -> None:
    """Show a 2D (x, y) HU slice in the lung window with an optional label overlay.

    The slice is displayed in radiological convention (patient's right on the image's left, anterior
    up) for RAS arrays: the (x, y) array is transposed and flipped accordingly. With ``contour`` the
    labels in ``labels`` are drawn as outlines, leaving the texture under them visible; otherwise as
    translucent fills.
    """
    img = np.flipud(np.fliplr(window(image_slice).T)) if image_slice.ndim == 2 else image_slice
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
    if label_slice is not None:
        lab = np.flipud(np.fliplr(np.asarray(label_slice).T))
        if contour:
            for k in labels:
                if (lab == k).any():
                    ax.contour(lab == k, levels=[0.5], colors=[LABEL_COLORS[k]], linewidths=1.1 if k != 1 else 0.7)
        else:
            ax.imshow(lab, cmap=label_cmap(), vmin=0, vmax=3, aspect=aspect, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
