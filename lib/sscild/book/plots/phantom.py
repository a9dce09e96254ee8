"""Figures of the synthetic cohort: phantom next to a real chest CT, phantom slices with labels."""

from __future__ import annotations

import numpy as np

from sscild.book.plots import plt
from sscild.clinic.figures import LABEL_COLORS, label_cmap, overlay, right_marker, window

__all__ = ["phantom_vs_real", "phantom_gallery"]


def _as_ras(hu, orientation):
    hu = np.asarray(hu)
    if orientation == "RAS":
        return hu
    if orientation == "LPS":
        return hu[::-1, ::-1, :]
    raise ValueError(f"orientation must be 'RAS' or 'LPS', got {orientation!r}.")


def _pick_slice(mask):
    area = mask.sum(axis=(0, 1))
    if not area.any():
        return mask.shape[2] // 2
    return int(np.argmax(area))


def _crop_box(hu, spacing, half_mm):
    """Index box of a square field of ``2*half_mm`` around the body centre of an axial slice."""
    body = hu > -500
    if body.any():
        ix, iy = np.nonzero(body)
        cx, cy = 0.5 * (ix.min() + ix.max()), 0.5 * (iy.min() + iy.max())
    else:
        cx, cy = hu.shape[0] / 2, hu.shape[1] / 2
    hx, hy = half_mm / spacing[0], half_mm / spacing[1]
    return (int(max(cx - hx, 0)), int(min(cx + hx, hu.shape[0])), int(max(cy - hy, 0)), int(min(cy + hy, hu.shape[1])))


def _resample_inplane(hu, spacing, target):
    """Area-weighted in-plane resampling of ``hu`` to pixel size ``target`` (mm)."""
    from scipy import ndimage as ndi

    fx, fy = spacing[0] / target, spacing[1] / target
    if abs(fx - 1) < 0.02 and abs(fy - 1) < 0.02:
        return hu, spacing
    sm = np.asarray(hu, np.float32)
    if fx < 1 or fy < 1:
        sm = ndi.gaussian_filter(sm, (0.42 / min(fx, 1.0) if fx < 1 else 0, 0.42 / min(fy, 1.0) if fy < 1 else 0, 0))
    out = ndi.zoom(sm, (fx, fy, 1.0), order=1)
    return np.rint(out).astype(np.int16), (target, target, spacing[2])


def phantom_vs_real(phantom_hu, phantom_spacing, real_hu, real_spacing, *, real_orientation: str = "RAS",
                    phantom_orientation: str = "RAS", match_resolution: bool = True, bins: int = 90,
                    phantom_lung_mask=None):
    """Axial slices of a phantom and a real chest CT side by side, plus their lung HU histograms.

    Both slices are shown in the lung window at the same physical scale (the level with the largest
    lung area, found with :func:`sscild.data.lungmask.lung_mask_by_threshold` on both scans, so the
    comparison is like for like); the histogram panel shows the attenuation of those lung voxels.

    Args:
        phantom_hu, real_hu: (x, y, z) CT volumes in HU.
        phantom_spacing, real_spacing: voxel sizes in mm.
        real_orientation, phantom_orientation: ``"RAS"`` (nibabel) or ``"LPS"`` (an ITK / NRRD array
            transposed to (x, y, z)); LPS arrays are flipped for display.
        match_resolution: resample the real scan in-plane to the phantom's pixel size first (area
            weighted), so that both show the same level of detail and partial volume.
        bins: histogram bins between -1024 and 0 HU.
        phantom_lung_mask: optional boolean mask for the phantom's histogram and slice choice, e.g.
            ``case.label == 1`` to compare normal phantom lung with the real lung (default: the
            threshold lung mask, lesions included).

    Returns:
        matplotlib Figure.

    Usage::

        fig = phantom_vs_real(case.image, case.spacing, real, real_spacing, real_orientation="LPS")
    """
    from sscild.data.lungmask import lung_mask_by_threshold, parenchyma_stats

    items = []
    for name, hu, sp, ori in (("synthetic phantom", phantom_hu, phantom_spacing, phantom_orientation),
                              ("real chest CT", real_hu, real_spacing, real_orientation)):
        hu = _as_ras(hu, ori)
        sp = tuple(float(v) for v in sp)
        if match_resolution and name.startswith("real"):
            p = float(phantom_spacing[0])
            if p > sp[0]:
                hu, sp = _resample_inplane(hu, sp, p)
                name = f"{name} (resampled)"
        mask = lung_mask_by_threshold(hu, sp)
        if name.startswith("synthetic") and phantom_lung_mask is not None:
            pm = _as_ras(np.asarray(phantom_lung_mask, bool), ori)
            if pm.shape != hu.shape:
                raise ValueError(f"phantom_lung_mask shape {pm.shape} differs from the phantom's {hu.shape}.")
            mask = mask & pm
        items.append((name, hu, sp, mask, parenchyma_stats(hu, mask)))
    half = 0.5 * max(min(it[1].shape[0] * it[2][0], it[1].shape[1] * it[2][1]) for it in items)
    fig, axes = plt.subplots(1, 3, figsize=(14.5, 4.9), gridspec_kw=dict(width_ratios=[1, 1, 1.15]))
    colors = ("#1b7837", "#444444")
    for ax, (name, hu, sp, mask, st) in zip(axes[:2], items):
        k = _pick_slice(mask)
        sl = hu[:, :, k]
        x0, x1, y0, y1 = _crop_box(sl, sp, half)
        overlay(ax, sl[x0:x1, y0:y1], aspect=sp[1] / sp[0],
                title=f"{name}\n{sp[0]:.2f} x {sp[1]:.2f} mm, {sp[2]:.2f} mm slices")
    ax = axes[2]
    edges = np.linspace(-1024, 0, bins + 1)
    for (name, hu, sp, mask, st), c in zip(items, colors):
        v = hu[mask]
        ax.hist(v, bins=edges, density=True, histtype="step", lw=1.8, color=c,
                label=f"{name}: median {st['median_hu']:.0f} HU, > -500 HU {100 * st['vessel_fraction']:.1f} %")
        ax.axvline(st["median_hu"], color=c, ls="--", lw=0.9)
    ax.set_xlabel("lung attenuation (HU)")
    ax.set_ylabel("density")
    ax.set_title("lung attenuation")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def phantom_gallery(case, *, levels=(0.2, 0.45, 0.7), coronal: bool = True):
    """Axial slices (and one coronal) of a :class:`~sscild.synthetic.phantom.PhantomCase` with its labels.

    Usage::

        from sscild.synthetic.phantom import generate_case
        fig = phantom_gallery(generate_case(0, profile=get_profile("smoke")))
    """
    img, lab = case.image, case.label
    sp = case.spacing
    lung_z = np.nonzero((lab > 0).any(axis=(0, 1)))[0]
    z0, z1 = (int(lung_z[0]), int(lung_z[-1])) if lung_z.size else (0, img.shape[2] - 1)
    ks = [int(round(z0 + f * (z1 - z0))) for f in levels]
    ncol = len(ks) + int(coronal)
    fig, axes = plt.subplots(2, ncol, figsize=(3.6 * ncol, 7.4))
    axes = np.atleast_2d(axes)
    for j, k in enumerate(ks):
        overlay(axes[0, j], img[:, :, k], title=f"axial, {k * sp[2]:.0f} mm above the lowest slice")
        overlay(axes[1, j], img[:, :, k], lab[:, :, k])
    if coronal:
        ys = np.nonzero((lab > 0).any(axis=(0, 2)))[0]
        j = int(round(0.55 * ys[0] + 0.45 * ys[-1])) if ys.size else img.shape[1] // 2
        for r in range(2):
            ax = axes[r, -1]
            ax.imshow(np.flipud(window(img[::-1, j, :]).T), cmap="gray", vmin=0, vmax=1, aspect=sp[2] / sp[0],
                      interpolation="nearest")
            if r:
                ax.imshow(np.flipud(lab[::-1, j, :].T), cmap=label_cmap(), vmin=0, vmax=3, aspect=sp[2] / sp[0],
                          interpolation="nearest")
            ax.set_axis_off()
            right_marker(ax)
            ax.set_title(f"coronal, {j * sp[1]:.0f} mm from the back" if r == 0 else "")
    t = case.truth
    handles = [plt.Rectangle((0, 0), 1, 1, color=LABEL_COLORS[k]) for k in (1, 2, 3)]
    fig.legend(handles, ["normal lung", "EF", "GGO"], loc="lower center", ncol=3, frameon=False)
    fig.suptitle(f"{case.case_id}: EF {t.get('ef_pct', float('nan')):.1f} %, GGO {t.get('ggo_pct', float('nan')):.1f} % of lung")
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    return fig
