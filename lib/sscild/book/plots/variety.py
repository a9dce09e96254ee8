"""Figures and a table of the synthetic cohort's variety (inspiration, emphysema, look-alikes).

They read the cohort folder only (``phantom_truth.csv``, images, labels), never the generator.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from sscild.palette import LABEL_HEX
from sscild.clinic.figures import LUNG_WINDOW, overlay

__all__ = ["variety_table", "pick_variety_examples", "variety_gallery", "lung_hu_histograms"]


def variety_table(truth: pd.DataFrame) -> pd.DataFrame:
    """How many synthetic patients carry each feature, and its range."""
    n = len(truth)

    def rng(col, fmt="{:.0f}"):
        v = truth.loc[truth[col] > 0, col]
        return "" if v.empty else f"{fmt.format(v.min())} to {fmt.format(v.max())}"

    rows = [
        ("inspiration level (0 shallow, 1 deep)", n, f"{truth['inspiration'].min():.2f} to {truth['inspiration'].max():.2f}"),
        ("base parenchymal attenuation (HU)", n, f"{truth['parenchyma_hu'].min():.0f} to {truth['parenchyma_hu'].max():.0f}"),
        ("posterior-anterior density gradient (HU)", n, rng("gravity_gradient_hu")),
        ("centrilobular emphysema (% of lung)", int((truth["emphysema_kind"] == "centrilobular").sum()),
         rng("emphysema_pct", "{:.1f}") if (truth["emphysema_kind"] == "centrilobular").any() else ""),
        ("paraseptal emphysema", int((truth["emphysema_kind"] == "paraseptal").sum()), ""),
        ("bullae (count)", int((truth["bullae"] > 0).sum()), rng("bullae")),
        ("dilated, air-filled oesophagus (lumen radius, mm)", int((truth["oesophagus_lumen_mm"] > 0).sum()),
         rng("oesophagus_lumen_mm")),
        ("pericardial effusion (mm)", int((truth["pericardial_effusion_mm"] > 0).sum()), rng("pericardial_effusion_mm")),
        ("visible oblique fissures (lungs)", int((truth["fissures_visible"] > 0).sum()), rng("fissures_visible")),
    ]
    return pd.DataFrame(rows, columns=["feature", "patients", "range"])


def pick_variety_examples(truth: pd.DataFrame) -> list[tuple[str, str, float]]:
    """(case id, what it shows, level as a share of the lung height) for the gallery."""
    t = truth.set_index("case_id")
    picks = [(t["inspiration"].idxmin(), "shallowest inspiration", 0.35),
             (t["inspiration"].idxmax(), "deepest inspiration", 0.35)]
    for kind in ("centrilobular", "paraseptal"):
        sub = t[t["emphysema_kind"] == kind]
        if len(sub):
            picks.append((sub["emphysema_pct"].idxmax(), f"{kind} emphysema ({sub['emphysema_pct'].max():.1f} %)", 0.75))
    if (t["bullae"] > 0).any():
        picks.append((t["bullae"].idxmax(), "bullae", 0.8))
    if (t["oesophagus_lumen_mm"] > 0).any():
        picks.append((t["oesophagus_lumen_mm"].idxmax(), "dilated air-filled oesophagus", 0.55))
    if (t["pericardial_effusion_mm"] > 0).any():
        picks.append((t["pericardial_effusion_mm"].idxmax(), "pericardial effusion", 0.22))
    return [(str(c), w, float(f)) for c, w, f in picks]


def _load(data_dir: Path, case_id: str):
    import nibabel as nib

    img = nib.load(str(data_dir / "imagesTr" / f"{case_id}_0000.nii.gz"))
    lab = nib.load(str(data_dir / "labelsTr" / f"{case_id}.nii.gz"))
    return np.asarray(img.dataobj), np.asarray(lab.dataobj)


def variety_gallery(data_dir, picks, *, cols: int = 4):
    """One axial slice per picked patient, lung window, with the lung label outlined.

    The slice is taken at the picked share of the patient's labelled lung height.
    """
    data_dir = Path(data_dir)
    rows = int(np.ceil(len(picks) / cols))
    # constrained layout keeps each row's titles clear of the row above (tight_layout let them overlap)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (cid, what, level) in zip(axes.ravel(), picks):
        hu, lab = _load(data_dir, cid)
        zs = np.nonzero((lab > 0).any(axis=(0, 1)))[0]
        z = int(zs[min(len(zs) - 1, int(level * len(zs)))]) if zs.size else hu.shape[2] // 2
        overlay(ax, hu[:, :, z])
        ax.set_title(f"{cid}: {what}", fontsize=8)
        lung = np.flipud(np.fliplr((lab[:, :, z] > 0).T))
        if lung.any():
            ax.contour(lung, levels=[0.5], colors=[LABEL_HEX[1]], linewidths=0.6)
    fig.suptitle(f"Synthetic cohort: variety (lung window, level {np.mean(LUNG_WINDOW):.0f} HU, width "
                 f"{np.ptp(LUNG_WINDOW):.0f} HU; lung label outlined)", fontsize=10)
    return fig


def lung_hu_histograms(data_dir, case_ids, real_scans, *, bins=np.arange(-1024, -300, 8)):
    """Density of lung attenuation: each synthetic patient's normal lung (thin lines) and each real
    scan's classically found lung (thick lines)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    centres = 0.5 * (bins[1:] + bins[:-1])
    for k, cid in enumerate(case_ids):
        hu, lab = _load(Path(data_dir), cid)
        h, _ = np.histogram(hu[lab == 1], bins=bins, density=True)
        ax.plot(centres, h, color="#7f7f7f", lw=0.6, alpha=0.6, label="synthetic patients (normal lung)" if k == 0 else None)
    for (name, hu, mask), colour in zip(real_scans, ("#0072B2", "#CC79A7", "#009E73", "#E69F00")):
        h, _ = np.histogram(hu[mask], bins=bins, density=True)
        ax.plot(centres, h, color=colour, lw=2.0, label=f"real: {name}")
    ax.set_xlabel("HU")
    ax.set_ylabel("density")
    ax.axvline(-950, color="black", lw=0.6, ls=":")
    ax.text(-948, ax.get_ylim()[1] * 0.92, "-950 HU", fontsize=8)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("Lung attenuation, synthetic and real")
    fig.tight_layout()
    return fig
