"""Figure helpers, one visual style. One submodule per chapter's figures.

``plots.style()`` is applied by every chapter; ``save(fig, name, run)`` writes a PNG under the run's
``figures/`` folder (and returns the figure so the notebook displays it). Slices with labels are drawn
with :mod:`sscild.clinic.figures` (lung window, label colours, radiological orientation).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:  # scripts and the CLI draw off-screen; notebooks keep inline figures
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sscild.clinic.figures import LUNG_WINDOW  # noqa: E402

__all__ = ["style", "save", "window_text", "fixed_jitter"]


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
