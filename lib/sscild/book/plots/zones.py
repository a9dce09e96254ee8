"""Figures of where the disease is: EF and GGO extent per lung zone (:mod:`sscild.clinic.zones`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sscild.palette import LABEL_HEX

__all__ = ["cohort_zone_figure"]

_ZONES = ("upper", "middle", "lower", "peripheral", "central")


def cohort_zone_figure(zones: pd.DataFrame, *, zones_shown=_ZONES):
    """EF and GGO extent (% of each zone's lung) over the cohort: reference and prediction side by side.

    Args:
        zones: :func:`sscild.clinic.zones.cohort_zone_extent` output (``source`` predicted / reference).
        zones_shown: zones on the x axis, in order.

    Returns:
        The figure: one panel per class; per zone, the patients' reference (hollow) and predicted
        (filled) extents as points, with their medians as bars.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    rng = np.random.default_rng(0)
    for ax, (cls, colour, title) in zip(axes, (("ef", LABEL_HEX[2], "established fibrosis (EF)"),
                                               ("ggo", LABEL_HEX[3], "ground-glass opacity (GGO)"))):
        for i, zone in enumerate(zones_shown):
            for j, (source, filled) in enumerate((("reference", False), ("predicted", True))):
                v = zones[(zones["zone"] == zone) & (zones["source"] == source)][f"{cls}_pct"].dropna().to_numpy()
                if v.size == 0:
                    continue
                x = i + (j - 0.5) * 0.34
                ax.scatter(x + rng.uniform(-0.07, 0.07, v.size), v, s=14, linewidths=0.8,
                           facecolors=colour if filled else "none", edgecolors="0.25" if filled else colour,
                           alpha=0.85, zorder=3, label=source if i == 0 else None)
                ax.hlines(np.median(v), x - 0.14, x + 0.14, color="0.1", lw=2, zorder=4)
        ax.set_xticks(range(len(zones_shown)), zones_shown)
        ax.set_title(title, fontsize=10)
        ax.axvline(2.5, color="0.8", lw=0.8)
        ax.grid(axis="y", color="0.9")
    axes[0].set_ylabel("% of the zone's lung")
    axes[0].legend(frameon=False, fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
