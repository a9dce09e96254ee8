"""Figures of the Segmentation results chapter.

* :func:`metric_strip`: Dice or surface Dice per region over cases (seaborn box + strip).
* :func:`case_montage`: best / median / worst case, reference beside prediction, axial and coronal.
* :func:`bland_altman_grid`: Bland–Altman plots of predicted vs reference extent per region.
* :func:`baseline_comparison`: network against the HU density-mask baseline, case by case.

Every image panel is shown in radiological orientation (patient's right on the left of the image,
anterior up, superior up): arrays are first reoriented to the closest canonical RAS orientation
with nibabel (axis permutations and flips only, :func:`sscild.data.orientation.to_canonical`), then
drawn with :func:`sscild.clinic.figures.overlay`. The overlay PNG of ``sscild segment`` is
:func:`sscild.clinic.figures.scan_montage`.

Usage::

    fig = metric_strip(df, "dice")
    plots.save(fig, "seg_dice", run.figures)
"""

from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from sscild.book.plots import fixed_jitter
from sscild.clinic.figures import LABEL_COLORS, label_legend, overlay
from sscild.data.orientation import canonical_position, to_canonical

__all__ = ["metric_strip", "case_montage", "bland_altman_grid", "baseline_comparison", "attenuation_histograms"]

_REGION_ORDER = ("normal", "ef", "ggo", "lesion", "lung")
_REGION_LABEL = {"normal": "normal", "ef": "EF", "ggo": "GGO", "lesion": "lesion\n(EF ∪ GGO)", "lung": "lung"}
_METHOD_COLOR = {"network": "#3b6ea5", "HU baseline": "#b07aa1"}


def metric_strip(df: pd.DataFrame, kind: str = "dice", *, regions=_REGION_ORDER, paper: dict | None = None,
                 tolerance_mm: float | None = None):
    """Box plot with every case as a point, one column per region.

    Args:
        df: per-case table (:func:`sscild.analysis.segmentation.evaluate_oof`).
        kind: ``"dice"`` or ``"nsd"``.
        regions: regions to show (those without any value are skipped).
        paper: optional ``{region: value}`` drawn as red diamonds (the published mean Dice).
        tolerance_mm: shown in the title for NSD.
    """
    if kind not in ("dice", "nsd"):
        raise ValueError(f"kind must be 'dice' or 'nsd', got {kind!r}")
    cols = [f"{kind}_{r}" for r in regions if f"{kind}_{r}" in df.columns and df[f"{kind}_{r}"].notna().any()]
    long = df.melt(id_vars=["case_id"], value_vars=cols, var_name="region", value_name="value").dropna()
    long["region"] = long["region"].str[len(kind) + 1:].map(_REGION_LABEL)
    order = [_REGION_LABEL[c[len(kind) + 1:]] for c in cols]
    fig, ax = plt.subplots(figsize=(1.3 * len(order) + 2.2, 3.6))
    with warnings.catch_warnings():
        # seaborn 0.13 still passes matplotlib's deprecated `vert` to boxplot; nothing to fix here
        warnings.filterwarnings("ignore", message=".*vert: bool.*")
        sns.boxplot(data=long, x="region", y="value", order=order, color="#dde5ef", width=0.55, fliersize=0,
                    linewidth=1.0, ax=ax)
    with fixed_jitter():  # the same figure on every run
        sns.stripplot(data=long, x="region", y="value", order=order, color="#3b6ea5", size=4, alpha=0.75, jitter=0.18,
                      ax=ax)
    if paper:
        for i, name in enumerate(order):
            key = next(k for k, v in _REGION_LABEL.items() if v == name)
            if key in paper:
                ax.scatter([i], [paper[key]], marker="D", s=46, color="#d1495b", zorder=5,
                           label="paper (mean)" if i == 0 or not ax.get_legend_handles_labels()[0] else None)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower left", fontsize=8, frameon=False)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("")
    label = "Dice" if kind == "dice" else "surface Dice (NSD)"
    ax.set_ylabel(label)
    title = f"{label} per case, out of fold (n = {df['case_id'].nunique()})"
    if kind == "nsd" and tolerance_mm is not None:
        title += f", tolerance {tolerance_mm:.2f} mm"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def _best_slices(ref_c: np.ndarray) -> tuple[int, int]:
    """Axial z and coronal y through the most reference lesion (or the lung's middle)."""
    mask = ref_c >= 2
    if not mask.any():
        mask = ref_c > 0
    if not mask.any():
        return ref_c.shape[2] // 2, ref_c.shape[1] // 2
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    y = int(np.argmax(mask.sum(axis=(0, 2))))
    return z, y


def case_montage(cases: list[dict], *, contour: bool = True):
    """The CT beside the reference and the prediction for a few cases, axial and coronal.

    Args:
        cases: dicts with ``image`` (HU array), ``ref``, ``pred`` (label arrays, same grid),
            ``affine`` and ``title`` (e.g. ``"best: case_007, Dice 0.91"``).
        contour: draw the labels as outlines (the texture under them stays visible); ``False``
            draws translucent fills.

    Returns:
        A figure with one row per case and columns axial CT | axial reference | axial prediction |
        coronal CT | coronal reference | coronal prediction, in radiological orientation and the
        lung window (:func:`sscild.book.plots.window_text`), slices through the most reference lesion.
    """
    from sscild.book.plots import window_text

    if not cases:
        raise ValueError("case_montage needs at least one case")
    fig, axes = plt.subplots(len(cases), 6, figsize=(15.5, 2.9 * len(cases) + 0.6), squeeze=False)
    for row, c in zip(axes, cases):
        img, sp = to_canonical(c["image"], c["affine"])
        ref, _ = to_canonical(c["ref"], c["affine"])
        pred, _ = to_canonical(c["pred"], c["affine"])
        z, y = _best_slices(ref)
        ax_a, co_a = sp[1] / sp[0], sp[2] / sp[0]
        shape = np.asarray(c["image"]).shape
        z_mm = canonical_position(c["affine"], shape, 2, z)
        y_mm = canonical_position(c["affine"], shape, 1, y)
        overlay(row[0], img[:, :, z], title=f"CT, axial, z {z_mm:+.0f} mm", aspect=ax_a)
        overlay(row[1], img[:, :, z], ref[:, :, z], title="reference", aspect=ax_a, contour=contour)
        overlay(row[2], img[:, :, z], pred[:, :, z], title="prediction", aspect=ax_a, contour=contour)
        overlay(row[3], img[:, y, :], title=f"CT, coronal, y {y_mm:+.0f} mm", aspect=co_a)
        overlay(row[4], img[:, y, :], ref[:, y, :], title="reference", aspect=co_a, contour=contour)
        overlay(row[5], img[:, y, :], pred[:, y, :], title="prediction", aspect=co_a, contour=contour)
        row[0].text(-0.06, 0.5, c.get("title", ""), transform=row[0].transAxes, rotation=90, va="center",
                    ha="right", fontsize=10)
    label_legend(fig, ncol=4)
    fig.text(0.99, 0.005, window_text() + "; patient's right on the image's left", ha="right", va="bottom",
             fontsize=8, color="0.3")
    fig.tight_layout(rect=(0.02, 0.05, 1, 1))
    return fig


def bland_altman_grid(df: pd.DataFrame, summary: dict, *, regions=("lesion", "ef", "ggo"), baseline: bool = True):
    """Bland–Altman plots of predicted minus reference extent (percent of lung) against their mean.

    One panel per region (network); with ``baseline`` a last panel shows the HU baseline's total
    lesion. Grey lines: fixed bias (solid) and 95 % limits of agreement (dashed); vermillion lines:
    the regression-based bias and limits (:func:`sscild.evaluation.agreement.bland_altman_regression`), which follow
    the extent when the bias is proportional. Values from ``summary``.
    """
    panels = [("network", r, f"pct_pred_{r}", f"pct_ref_{r}") for r in regions if f"pct_pred_{r}" in df.columns]
    if baseline and "baseline_pct_pred_lesion" in df.columns:
        panels.append(("HU baseline", "lesion", "baseline_pct_pred_lesion", "pct_ref_lesion"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.7 * len(panels), 3.5), squeeze=False)
    for ax, (method, region, pcol, rcol) in zip(axes[0], panels):
        d = df[[pcol, rcol]].dropna()
        mean = (d[pcol] + d[rcol]) / 2
        diff = d[pcol] - d[rcol]
        ax.scatter(mean, diff, s=18, color=_METHOD_COLOR[method], alpha=0.8, edgecolor="white", linewidth=0.5)
        who = "network" if method == "network" else "baseline"
        ba = summary["agreement"][who][region]["bland_altman"]
        if ba["bias"] is not None:
            ax.axhline(ba["bias"], color="0.2", lw=1.1)
            for k in ("loa_low", "loa_high"):
                ax.axhline(ba[k], color="0.35", lw=0.9, ls="--")
            ax.set_title(f"{method}: {_REGION_LABEL[region].splitlines()[0]}\nbias {ba['bias']:.2f}, "
                         f"LoA {ba['loa_low']:.2f} to {ba['loa_high']:.2f} pp", fontsize=9)
        reg = summary["agreement"][who][region].get("bland_altman_regression") or {}
        if reg.get("slope") is not None and len(mean) > 1:
            m = np.linspace(float(mean.min()), float(mean.max()), 50)
            bias = reg["intercept"] + reg["slope"] * m
            sd = np.maximum(reg["sd_intercept"] + reg["sd_slope"] * m, 0.0)
            ax.plot(m, bias, color="#D55E00", lw=1.1, label="regression bias")
            ax.plot(m, bias - 1.96 * sd, color="#D55E00", lw=0.9, ls="--", label="regression limits")
            ax.plot(m, bias + 1.96 * sd, color="#D55E00", lw=0.9, ls="--")
        ax.axhline(0, color="0.7", lw=0.6)
        ax.set_xlabel("mean of the two (% of lung)")
    axes[0, 0].set_ylabel("predicted − reference (pp)")
    if axes[0, 0].get_legend_handles_labels()[0]:
        axes[0, 0].legend(fontsize=7, frameon=False, loc="best")
    fig.tight_layout()
    return fig


def baseline_comparison(df: pd.DataFrame):
    """Network and HU baseline: paired Dice per case and region, and lesion extent against reference.

    Left: each case's Dice for both methods, joined by a line, for total lesion and (when the
    fold-fitted EF/GGO split was scored) EF and GGO. Right: predicted against reference lesion extent
    (percent of lung) with the identity line.
    """
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.5, 3.8), gridspec_kw={"width_ratios": [1.4, 1]})
    ticks, labels = [], []
    for g, (region, name) in enumerate((("lesion", "lesion"), ("ef", "EF"), ("ggo", "GGO"))):
        net, base = f"dice_{region}", f"baseline_dice_{region}"
        if net not in df.columns or base not in df.columns:
            continue
        d = df.dropna(subset=[net, base])
        x0 = 2.6 * g
        for _, r in d.iterrows():
            a1.plot([x0, x0 + 1], [r[base], r[net]], color="0.8", lw=0.6, zorder=1)
        a1.scatter(np.full(len(d), x0), d[base], color=_METHOD_COLOR["HU baseline"], s=14, zorder=2,
                   label="HU baseline" if g == 0 else None)
        a1.scatter(np.full(len(d), x0 + 1), d[net], color=_METHOD_COLOR["network"], s=14, zorder=2,
                   label="network" if g == 0 else None)
        ticks += [x0 + 0.5]
        labels += [f"{name}\n(n={len(d)})"]
    a1.set_xticks(ticks, labels)
    a1.set_xlim(-0.6, (ticks[-1] + 1.1) if ticks else 1.5)
    a1.set_ylim(-0.02, 1.02)
    a1.set(ylabel="Dice", title="Dice per case: baseline (left) and network (right), lines join a case")
    a1.title.set_fontsize(9)
    a1.legend(frameon=False, fontsize=8, loc="lower right")
    lim = float(np.nanmax(df[["pct_ref_lesion", "pct_pred_lesion", "baseline_pct_pred_lesion"]].to_numpy()))
    lim = max(5.0, 1.05 * lim)
    a2.plot([0, lim], [0, lim], color="0.6", lw=0.8, ls="--")
    a2.scatter(df["pct_ref_lesion"], df["baseline_pct_pred_lesion"], s=18, color=_METHOD_COLOR["HU baseline"],
               label="HU baseline", alpha=0.85)
    a2.scatter(df["pct_ref_lesion"], df["pct_pred_lesion"], s=18, color=_METHOD_COLOR["network"], label="network",
               alpha=0.85)
    a2.set(xlim=(0, lim), ylim=(0, lim), xlabel="reference lesion (% of lung)", ylabel="measured lesion (% of lung)",
           title="Lesion extent against the reference")
    a2.legend(frameon=False, fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def attenuation_histograms(hist: pd.DataFrame, *, band=None, cuts=None):
    """Attenuation of reference EF and GGO voxels (normalised histograms, :func:`sscild.analysis.segmentation.label_attenuation`).

    Args:
        hist: columns ``hu``, ``ef``, ``ggo``.
        band: optional ``(low, high)`` HU band of the density baseline, shaded.
        cuts: optional HU values of the baseline's fitted EF/GGO cuts, drawn as lines.
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.3))
    width = float(np.diff(hist["hu"]).mean()) if len(hist) > 1 else 10.0
    for key, name, k in (("ggo", "GGO", 3), ("ef", "EF", 2)):
        tot = hist[key].sum()
        if tot > 0:
            ax.step(hist["hu"], hist[key] / tot / width, where="mid", color=LABEL_COLORS[k], lw=1.8,
                    label=f"reference {name}")
    if band is not None:
        ax.axvspan(band[0], band[1], color="0.85", zorder=0, label=f"HU baseline band {band[0]:g} to {band[1]:g}")
    for i, c in enumerate(cuts or []):
        ax.axvline(c, color="0.3", ls=":", lw=1, label="fold EF/GGO cuts" if i == 0 else None)
    ax.set(xlabel="attenuation (HU)", ylabel="share of voxels per HU", title="Attenuation of reference EF and GGO")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
