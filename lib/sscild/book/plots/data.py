"""Figures of the Data chapter: example cases with their labels, lesion extent, fold composition.

Usage::

    from sscild.book.plots.data import extent_distribution
    fig = extent_distribution(cases)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from sscild.book.plots import fixed_jitter, plt
from sscild.clinic.figures import LABEL_COLORS, overlay

__all__ = ["case_gallery", "extent_distribution", "fold_plot", "restoration_plot"]

_EXTENT = {"ef_pct": "EF", "ggo_pct": "GGO", "lesion_pct": "total lesion\n(EF + GGO)"}
_EXTENT_COLORS = {"ef_pct": LABEL_COLORS[2], "ggo_pct": LABEL_COLORS[3], "lesion_pct": "#6a3d9a"}


def _legend(fig) -> None:
    handles = [plt.Rectangle((0, 0), 1, 1, color=LABEL_COLORS[k]) for k in (1, 2, 3)]
    fig.legend(handles, ["normal lung", "established fibrosis (EF)", "ground-glass opacity (GGO)"],
               loc="lower center", ncol=3, frameon=False)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    if not mask.any():
        return slice(None), slice(None)
    i, j = np.nonzero(mask)
    return (slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1),
            slice(max(int(j.min()) - margin, 0), int(j.max()) + margin + 1))


def case_gallery(examples: Mapping[str, Mapping], *, body_hu: float = -500.0):
    """Axial and coronal slices of a few cases, CT alone and with the reference labels.

    One row per case: the axial CT, the same slice with labels, and a coronal slice with labels,
    all in the lung window and radiological orientation (patient's right on the left of the image),
    cropped to the body.

    Args:
        examples: title (e.g. ``"mild"``) -> a dict from :func:`sscild.analysis.data.example_case`.
        body_hu: voxels above this count as body for the crop.

    Returns:
        matplotlib Figure.
    """
    n = len(examples)
    if n == 0:
        raise ValueError("case_gallery: no example cases to show.")
    fig, axes = plt.subplots(n, 3, figsize=(11.5, 3.7 * n + 0.5), squeeze=False,
                             gridspec_kw=dict(width_ratios=[1, 1, 1.1]))
    for row, (title, ex) in zip(axes, examples.items()):
        hu, lab, sp = ex["hu"], ex["label"], ex["spacing"]
        k, j = int(ex["axial"]), int(ex["coronal"])
        ax_hu, ax_lab = hu[:, :, k], lab[:, :, k]
        bx, by = _box(ax_hu > body_hu, 3)
        head = f"{title}: {ex['case_id']}\nEF {ex['ef_pct']:.1f} %, GGO {ex['ggo_pct']:.1f} % of lung"
        overlay(row[0], ax_hu[bx, by], aspect=sp[1] / sp[0], title=f"axial, z {ex['axial_mm']:+.0f} mm")
        row[0].text(-0.06, 0.5, head, transform=row[0].transAxes, rotation=90, ha="right", va="center",
                    fontsize=10, fontweight="bold")
        overlay(row[1], ax_hu[bx, by], ax_lab[bx, by], aspect=sp[1] / sp[0], title="the same slice, labels")
        co_hu, co_lab = hu[:, j, :], lab[:, j, :]
        cx, cz = _box(co_lab > 0, max(2, int(round(15.0 / sp[0]))))
        cz = slice(max((cz.start or 0) - 2, 0), None if cz.stop is None else cz.stop + 2)
        overlay(row[2], co_hu[cx, cz], co_lab[cx, cz], aspect=sp[2] / sp[0],
                title=f"coronal, y {ex['coronal_mm']:+.0f} mm, labels")
    _legend(fig)
    fig.tight_layout(rect=(0, 0.035, 1, 1))
    return fig


def extent_distribution(cases: pd.DataFrame):
    """Lesion extent over the cohort: each patient's EF, GGO and total lesion as % of lung.

    Left: one dot per patient and measure, with a box (median and quartiles). Right: histogram of
    total lesion extent, the patients' EF and GGO stacked in each bar.

    Args:
        cases: the table from :func:`sscild.data.cache.build_cache` (``ef_pct``, ``ggo_pct``,
            ``lesion_pct``).

    Returns:
        matplotlib Figure.
    """
    import seaborn as sns

    long = cases.melt(id_vars="case_id", value_vars=list(_EXTENT), var_name="measure", value_name="pct").dropna()
    long["measure"] = long["measure"].map(_EXTENT)
    palette = {_EXTENT[k]: c for k, c in _EXTENT_COLORS.items()}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.9), gridspec_kw=dict(width_ratios=[1, 1.2]))
    order = list(_EXTENT.values())
    sns.boxplot(data=long, x="measure", y="pct", hue="measure", order=order, palette=palette, ax=a1, width=0.5,
                showfliers=False, boxprops=dict(alpha=0.35), legend=False)
    with fixed_jitter():  # the same figure on every run
        sns.stripplot(data=long, x="measure", y="pct", hue="measure", order=order, palette=palette, ax=a1, size=4.5,
                      jitter=0.18, edgecolor="black", linewidth=0.4, legend=False)
    a1.set(xlabel="", ylabel="% of lung volume", title=f"lesion extent per patient (n = {len(cases)})")
    a1.set_ylim(bottom=0)
    total = cases["lesion_pct"].dropna()
    hi = max(float(total.max()) if len(total) else 1.0, 1.0)
    edges = np.linspace(0, hi * 1.0001, min(max(len(total) // 3, 5), 16) + 1)
    idx = np.clip(np.digitize(cases["lesion_pct"], edges) - 1, 0, len(edges) - 2)
    ef = np.bincount(idx, weights=cases["ef_pct"].fillna(0), minlength=len(edges) - 1)
    ggo = np.bincount(idx, weights=cases["ggo_pct"].fillna(0), minlength=len(edges) - 1)
    counts = np.bincount(idx, minlength=len(edges) - 1)
    share = np.divide(ef, ef + ggo, out=np.zeros_like(ef), where=(ef + ggo) > 0)
    width = np.diff(edges)
    a2.bar(edges[:-1], counts * share, width=width, align="edge", color=LABEL_COLORS[2], edgecolor="white",
           label="EF share of the bar's lesion")
    a2.bar(edges[:-1], counts * (1 - share), width=width, align="edge", bottom=counts * share,
           color=LABEL_COLORS[3], edgecolor="white", label="GGO share")
    a2.axvline(float(total.median()) if len(total) else 0, color="black", ls="--", lw=1,
               label=f"median {float(total.median()) if len(total) else float('nan'):.1f} %")
    a2.set(xlabel="total lesion, % of lung volume", ylabel="patients", title="total lesion extent")
    a2.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
    a2.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def fold_plot(fold_cases: pd.DataFrame, *, column: str = "lesion_pct"):
    """What each cross-validation fold holds out: number of patients and their lesion extent.

    Args:
        fold_cases: :func:`sscild.analysis.data.fold_table` output (``case_id``, ``fold``, ``column``).
        column: the stratification score (default total lesion % of lung).

    Returns:
        matplotlib Figure: bars of held-out patients per fold (left), and each held-out patient's
        lesion extent by fold with the fold's median (right); the dashed line is the cohort median.
    """
    import seaborn as sns

    folds = sorted(fold_cases["fold"].unique())
    counts = fold_cases.groupby("fold").size().reindex(folds, fill_value=0)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw=dict(width_ratios=[1, 2.2]))
    a1.bar([str(f) for f in folds], counts.to_numpy(), color="#7f7f7f")
    for x, c in enumerate(counts.to_numpy()):
        a1.text(x, c, str(int(c)), ha="center", va="bottom", fontsize=8)
    a1.set(xlabel="fold", ylabel="patients held out", title="fold size")
    data = fold_cases.assign(fold=fold_cases["fold"].astype(str))
    order = [str(f) for f in folds]
    with fixed_jitter():  # the same figure on every run
        sns.stripplot(data=data, x="fold", y=column, order=order, ax=a2, color="#6a3d9a", size=5, jitter=0.08,
                      edgecolor="black", linewidth=0.4)
    med = fold_cases.groupby("fold")[column].median().reindex(folds)
    a2.scatter(range(len(folds)), med.to_numpy(), marker="_", s=500, color="black", zorder=3, label="fold median")
    a2.axhline(float(fold_cases[column].median()), color="black", ls="--", lw=0.9, label="cohort median")
    a2.set(xlabel="fold", ylabel="total lesion, % of lung", title="lesion extent of the held-out patients")
    a2.set_xlim(-0.5, len(folds) - 0.5)
    a2.set_ylim(bottom=0)
    a2.legend(fontsize=8, frameon=False, loc="upper right", markerscale=0.5)
    fig.tight_layout()
    return fig


def restoration_plot(example: Mapping[str, np.ndarray], *, l1_first: float | None = None, l1_last: float | None = None):
    """The pretraining task on one unlabelled patch: the clean patch, the corrupted input and the
    pretrained network's restoration (:func:`sscild.model.pretrain.restoration_example`), in the
    preprocessing window ([-1, 1]: HU clip of the profile), axial, anterior up, the patient's right
    on the image's left (arrays (x, y) in RAS)."""
    titles = {"clean": "unlabelled patch", "corrupted": "input: hidden boxes + noise", "restored": "pretrained network's output"}
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
    for ax, k in zip(axes, titles):
        # radiological orientation, as sscild.clinic.figures.overlay draws RAS (x, y) slices
        ax.imshow(np.flipud(np.fliplr(np.asarray(example[k]).T)), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(titles[k], fontsize=9)
        ax.set_axis_off()
    if l1_first is not None and l1_last is not None:
        fig.suptitle(f"restoration error (L1, [-1, 1] scale): {l1_first:.3f} in the first 50 steps, "
                     f"{l1_last:.3f} in the last 50", fontsize=9)
    fig.tight_layout()
    return fig
