"""Figures of one scan: the overlay montage ``sscild segment`` writes, and the slice drawing it shares with the book.

Every image panel is shown in radiological orientation (patient's right on the left of the image,
anterior up, superior up): arrays are first reoriented to the closest canonical RAS orientation
with nibabel (axis permutations and flips only, :func:`to_canonical`), then drawn with
:func:`overlay` in the lung window (:data:`LUNG_WINDOW`) with the label colours of
:mod:`sscild.palette`.

* :func:`scan_montage`: the overlay PNG of ``sscild segment``.
* :func:`overlay`, :func:`window`, :func:`label_cmap`, :func:`label_legend`: one CT slice with its
  labels, the lung window, the label colour map and legend (the book's figures use them too).
"""

from __future__ import annotations

import sys

import matplotlib

if "ipykernel" not in sys.modules:  # scripts and the CLI draw off-screen; notebooks keep inline figures
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from sscild.data.orientation import canonical_position, to_canonical  # noqa: E402
from sscild.palette import LABEL_HEX  # noqa: E402

__all__ = ["LABEL_COLORS", "LUNG_WINDOW", "label_cmap", "window", "overlay", "right_marker", "label_legend",
           "scan_montage"]

LABEL_COLORS = dict(LABEL_HEX)
"""One colour per label, the colour-blind-safe palette of :mod:`sscild.palette` (normal lung sky
blue, EF vermillion, GGO yellow), the same colours as the viewer files ``sscild segment`` writes."""

LUNG_WINDOW = (-1350.0, 150.0)
"""Lung window (level -600, width 1500)."""


def label_cmap(alpha: float = 0.45) -> ListedColormap:
    colors = [(0, 0, 0, 0)]
    for k in (1, 2, 3):
        rgb = matplotlib.colors.to_rgb(LABEL_COLORS[k])
        colors.append((*rgb, alpha if k != 1 else alpha * 0.5))
    return ListedColormap(colors)


def window(hu: np.ndarray, lo: float = LUNG_WINDOW[0], hi: float = LUNG_WINDOW[1]) -> np.ndarray:
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0, 1)


def right_marker(ax) -> None:
    """The orientation marker: "R" in the image's lower left, where the patient's right is (radiological)."""
    from matplotlib import patheffects

    ax.text(0.03, 0.03, "R", color="white", transform=ax.transAxes, fontsize=9, fontweight="bold",
            va="bottom", ha="left", path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])


def overlay(ax, image_slice: np.ndarray, label_slice: np.ndarray | None = None, *, title: str | None = None,
            aspect: float = 1.0, contour: bool = False, labels=(1, 2, 3), marker: bool = True) -> None:
    """Show a 2D (x, y) HU slice in the lung window with an optional label overlay.

    The slice is displayed in radiological convention (patient's right on the image's left, anterior
    up) for RAS arrays: the (x, y) array is transposed and flipped accordingly, and an "R" marks the
    patient's right (``marker``). With ``contour`` the labels in ``labels`` are drawn as outlines,
    leaving the texture under them visible; otherwise as translucent fills.
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
    if marker:
        right_marker(ax)
    if title:
        ax.set_title(title)


def label_legend(fig, *, loc: str = "lower center", ncol: int = 3) -> None:
    """Add the normal / EF / GGO colour legend to a figure."""
    names = {1: "normal lung", 2: "EF", 3: "GGO"}
    handles = [Patch(color=LABEL_COLORS[k], label=names[k]) for k in (1, 2, 3)]
    fig.legend(handles=handles, loc=loc, ncol=ncol, frameon=False, fontsize=9)


def _uncertainty_panel(ax, image_slice: np.ndarray, unc_slice: np.ndarray, *, title: str, aspect: float):
    """A CT slice with the uncertainty (percent) drawn over it where it is 10 % or more."""
    show = lambda a: np.flipud(np.fliplr(np.asarray(a).T))  # noqa: E731
    ax.imshow(show(window(image_slice)), cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
    u = np.ma.masked_less(show(unc_slice).astype(np.float32), 10)
    im = ax.imshow(u, cmap="magma", vmin=0, vmax=100, alpha=0.85, aspect=aspect, interpolation="nearest")
    ax.set_axis_off()
    right_marker(ax)
    ax.set_title(title)
    return im


def scan_montage(image: np.ndarray, label: np.ndarray, affine: np.ndarray, *, n_axial: int = 4,
                 title: str | None = None, uncertainty: np.ndarray | None = None):
    """Overlay montage of a segmented scan: ``n_axial`` axial slices through the lung and one coronal.

    The image and the label are reoriented to canonical RAS first (:func:`to_canonical`), so the
    panels are in radiological orientation whatever the file's voxel order. With ``uncertainty`` (the
    per-voxel uncertainty in percent, same grid) a second row shows it on the same slices.
    """
    img, sp = to_canonical(image, affine)
    lab, _ = to_canonical(label, affine)
    shape = np.asarray(image).shape

    def mm(axis, index):
        return f"{canonical_position(affine, shape, axis, index):+.0f} mm"

    lung_z = np.flatnonzero((lab > 0).any(axis=(0, 1)))
    if lung_z.size:
        zs = np.linspace(lung_z[0], lung_z[-1], n_axial + 2).round().astype(int)[1:-1]
        ymid = int(np.median(np.nonzero((lab > 0).any(axis=2))[1]))
    else:
        zs = np.linspace(0, img.shape[2] - 1, n_axial + 2).round().astype(int)[1:-1]
        ymid = img.shape[1] // 2
    rows = 1 if uncertainty is None else 2
    fig, axes = plt.subplots(rows, n_axial + 1, figsize=(3.1 * (n_axial + 1), 3.6 * rows + (0.3 if rows > 1 else 0)),
                             squeeze=False)
    for ax, z in zip(axes[0], zs):
        overlay(ax, np.asarray(img[:, :, z]), np.asarray(lab[:, :, z]), title=f"axial, z {mm(2, z)}",
                aspect=sp[1] / sp[0])
    overlay(axes[0, -1], np.asarray(img[:, ymid, :]), np.asarray(lab[:, ymid, :]), title=f"coronal, y {mm(1, ymid)}",
            aspect=sp[2] / sp[0])
    im = None
    if uncertainty is not None:
        unc, _ = to_canonical(uncertainty, affine)
        for ax, z in zip(axes[1], zs):
            im = _uncertainty_panel(ax, img[:, :, z], unc[:, :, z], title=f"uncertainty, z {mm(2, z)}",
                                    aspect=sp[1] / sp[0])
        im = _uncertainty_panel(axes[1, -1], img[:, ymid, :], unc[:, ymid, :],
                                title=f"uncertainty, coronal, y {mm(1, ymid)}",
                                aspect=sp[2] / sp[0])
    if title:
        fig.suptitle(title, fontsize=10)
    label_legend(fig)
    fig.tight_layout(rect=(0, 0.06 / rows, 0.91 if rows > 1 else 1, 1))
    if im is not None:  # added after the layout, which would not know how to place it
        cax = fig.add_axes((0.92, 0.12, 0.012, 0.3))
        fig.colorbar(im, cax=cax).set_label("uncertainty (%)", fontsize=8)
    return fig
