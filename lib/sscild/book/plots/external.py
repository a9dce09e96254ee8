"""Figures of the "External check on real CT" appendix (2D slices, ground glass and consolidation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap

from sscild.book.plots import fixed_jitter
from sscild.palette import LABEL_HEX
from matplotlib.patches import Patch

__all__ = ["EXTERNAL_COLORS", "pick_examples", "example_slices", "dice_distribution"]

EXTERNAL_COLORS = {1: LABEL_HEX[3], 2: "#CC79A7"}
"""Ground glass in the study's GGO colour; consolidation in Okabe–Ito reddish purple (both from the
colour-blind-safe palette of :mod:`sscild.palette`)."""

_NAMES = {1: "ground glass", 2: "consolidation"}


def _cmap(alpha: float = 0.5) -> ListedColormap:
    return ListedColormap([(0, 0, 0, 0)] + [(*matplotlib.colors.to_rgb(EXTERNAL_COLORS[k]), alpha) for k in (1, 2)])


def pick_examples(scores: pd.DataFrame, n: int = 3) -> list[str]:
    """Slice ids spanning the result: the best, the median and the worst slice by mean Dice over the
    classes present (ties broken by id), ``n`` in all, deterministic.

    Example:
        >>> df = pd.DataFrame({"slice_id": list("abcd"), "dice_ggo": [0.9, 0.1, 0.5, np.nan],
        ...                    "dice_consolidation": [np.nan, 0.3, 0.5, np.nan]})
        >>> pick_examples(df, 3)
        ['a', 'c', 'b']
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    m = scores[["dice_ggo", "dice_consolidation"]].mean(axis=1, skipna=True)
    ranked = scores.assign(_m=m).dropna(subset=["_m"]).sort_values(["_m", "slice_id"], ascending=[False, True])
    ids = ranked["slice_id"].astype(str).tolist()
    if len(ids) <= n:
        return ids
    pos = np.unique(np.round(np.linspace(0, len(ids) - 1, n)).astype(int))
    return [ids[i] for i in pos]


def example_slices(slices: Mapping, preds: Mapping[str, np.ndarray], ids: Sequence[str],
                   scores: pd.DataFrame | None = None):
    """One row per slice: the image, the reference mask and the predicted mask, in the file's orientation.

    ``slices`` maps id -> :class:`sscild.external.slices.SliceImage` (arrays (x, y)); ``preds`` id -> label map.
    """
    ids = list(ids)
    if not ids:
        raise ValueError("example_slices: no slice ids given")
    fig, axes = plt.subplots(len(ids), 3, figsize=(9, 3.0 * len(ids)), squeeze=False)
    by_id = scores.set_index("slice_id") if scores is not None else None
    for row, sid in zip(axes, ids):
        s = slices[sid]
        img = s.image.T  # back to rows x columns, as in the file
        for ax, lab, title in zip(row, (None, s.label, preds[sid]), ("image", "reference", "prediction")):
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if lab is not None:
                ax.imshow(lab.T, cmap=_cmap(), vmin=0, vmax=2, interpolation="nearest")
            ax.set_axis_off()
            if title == "prediction" and by_id is not None and sid in by_id.index:
                r = by_id.loc[sid]
                f = lambda v: "n/a" if pd.isna(v) else f"{v:.2f}"  # noqa: E731
                title = f"prediction (Dice GGO {f(r['dice_ggo'])}, cons. {f(r['dice_consolidation'])})"
            ax.set_title(f"slice {sid}: {title}" if title == "image" else title, fontsize=9)
    fig.legend(handles=[Patch(color=EXTERNAL_COLORS[k], label=_NAMES[k]) for k in (1, 2)], loc="lower center",
               ncol=2, frameon=False, bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def dice_distribution(scores: pd.DataFrame, published: pd.DataFrame | None = None, *, label: str = "this recipe"):
    """Per-slice Dice of each class (box and points), with the pooled Dice and, when given, the
    published test-set values as horizontal marks.

    ``scores`` holds ``dice_ggo``, ``dice_consolidation`` and the ``inter_*``/``pred_*``/``ref_*``
    counts of :func:`sscild.external.scores.score_slices`.
    """
    import seaborn as sns

    long = scores.melt(id_vars=["slice_id"], value_vars=["dice_ggo", "dice_consolidation"], var_name="class",
                       value_name="Dice").dropna()
    names = {"dice_ggo": "ground glass", "dice_consolidation": "consolidation"}
    long["class"] = long["class"].map(names)
    order = list(names.values())
    fig, ax = plt.subplots(figsize=(8.5, 4))
    sns.boxplot(data=long, x="class", y="Dice", order=order, color="#dddddd", width=0.45, showfliers=False, ax=ax)
    with fixed_jitter():  # the same figure on every run
        sns.stripplot(data=long, x="class", y="Dice", order=order, hue="class", hue_order=order,
                      palette=[EXTERNAL_COLORS[1], EXTERNAL_COLORS[2]], size=4, jitter=0.15, ax=ax, legend=False)
    for i, key in enumerate(("ggo", "consolidation")):
        tot = (scores[f"pred_{key}"] + scores[f"ref_{key}"]).sum()
        if tot > 0:
            pooled = 2 * scores[f"inter_{key}"].sum() / tot
            ax.plot([i - 0.3, i + 0.3], [pooled] * 2, color="black", lw=2,
                    label=f"pooled, {label}" if i == 0 else None)
        if published is not None:
            for j, (_, r) in enumerate(published.iterrows()):
                colour = plt.cm.viridis(j / max(1, len(published) - 1))
                ax.plot([i + 0.32, i + 0.45], [r[f"dice_{key}"]] * 2, color=colour, lw=2,
                        label=f"published: {r['method']}" if i == 0 else None)
    ax.set(ylim=(0, 1), xlabel="", ylabel="Dice per slice")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig
