"""Figures of the real-CT lung check (:mod:`sscild.analysis.realcheck`)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from sscild.palette import LABEL_HEX, LABEL_NAMES
from sscild.clinic.figures import LUNG_WINDOW, right_marker, window
from sscild.data.orientation import canonical_position

__all__ = ["lung_check_overlays"]


def _ras(arr: np.ndarray, affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.axcodes2ornt("RAS"))
    return nib.orientations.apply_orientation(arr, ornt)


def _show(a: np.ndarray) -> np.ndarray:
    """An (x, y) RAS slice in radiological convention: patient's right on the left, anterior up."""
    return np.flipud(np.fliplr(a.T))


def lung_check_overlays(views: dict, table, *, levels=(0.25, 0.5, 0.8)):
    """Per scan, three axial levels of its classical lung: the raw slice, then the network's labels as
    translucent fills with the classical lung's outline (white) on top.

    Window: lung, level -600 HU, width 1500 HU.
    """
    n = len(views)
    fig, axes = plt.subplots(n, 2 * len(levels), figsize=(3.0 * 2 * len(levels), 3.2 * n), squeeze=False)
    cmap = ListedColormap([(0, 0, 0, 0)] + [(*plt.matplotlib.colors.to_rgb(LABEL_HEX[k]), 0.35 if k == 1 else 0.6)
                                              for k in (1, 2, 3)])
    dice = dict(zip(table["scan"], table["lung_dice"]))
    for i, (name, v) in enumerate(views.items()):
        aff = np.diag([*v["spacing"], 1.0]) if "affine" not in v else v["affine"]
        hu, lab, cl = (_ras(np.asarray(a), aff) for a in (v["hu"], v["label"], v["classical"].astype(np.uint8)))
        zs = np.nonzero(cl.any(axis=(0, 1)))[0]
        for j, f in enumerate(levels):
            z = int(zs[min(len(zs) - 1, int(f * len(zs)))]) if zs.size else hu.shape[2] // 2
            raw, ov = axes[i, 2 * j], axes[i, 2 * j + 1]
            raw.imshow(_show(window(hu[:, :, z])), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ov.imshow(_show(window(hu[:, :, z])), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ov.imshow(_show(lab[:, :, z]), cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
            if cl[:, :, z].any():
                ov.contour(_show(cl[:, :, z]), levels=[0.5], colors=["white"], linewidths=0.7)
            raw.set_title(f"{name}, z {canonical_position(aff, np.asarray(v['hu']).shape, 2, z):+.0f} mm", fontsize=9)
            right_marker(raw)
            right_marker(ov)
            ov.set_title(f"network vs classical (Dice {dice.get(name, float('nan')):.3f})", fontsize=9)
            raw.set_axis_off()
            ov.set_axis_off()
    handles = [Patch(color=LABEL_HEX[k], label=LABEL_NAMES[k]) for k in (1, 2, 3)]
    handles.append(Patch(facecolor="none", edgecolor="black", label="classical lung (outline, white)"))
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.suptitle(f"Lung window (level {np.mean(LUNG_WINDOW):.0f} HU, width {np.ptp(LUNG_WINDOW):.0f} HU)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return fig
