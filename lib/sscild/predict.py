"""Inference: out-of-fold predictions for the cohort, and the fold ensemble for new scans.

The 2D network is applied to whole axial slices of the preprocessed volume (a fully convolutional
U-Net with batch norm in eval mode gives the same answer on a whole slice as on patches), in batches
of ``profile.sw_batch_size`` slices. With test-time augmentation the softmax of the left-right flipped
slice is averaged in. An ensemble averages the softmax of its members. The argmax label map is mapped
back to the case's original voxel grid (nearest neighbour) and written with the input's affine, so
it overlays exactly on the input scan in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .io import Volume, load_volume, save_volume
from .model import NUM_CLASSES, build_network
from .paths import RunPaths, atomic_path, repo_root, write_json
from .preprocess import Preprocessed, load_cached, preprocess_volume, restore_label
from .profiles import Profile
from .train import select_device, set_threads

__all__ = ["load_fold_model", "find_models", "load_ensemble", "predict_preprocessed", "predict_oof",
           "segment_scan"]


def load_fold_model(path: str | Path, device=None) -> tuple[torch.nn.Module, dict]:
    """Load ``fold_<k>/model_final.pt``; returns (network in eval mode, metadata)."""
    device = select_device(device)
    state = torch.load(path, map_location=device, weights_only=False)
    prof = dict(state["profile"])
    for key in ("phantom_shape", "phantom_spacing", "target_spacing", "hu_clip", "channels", "strides", "patch_size"):
        if key in prof and prof[key] is not None:
            prof[key] = tuple(prof[key])
    profile = Profile(**prof)
    net = build_network(profile, out_channels=int(state.get("num_classes", NUM_CLASSES))).to(device)
    net.load_state_dict(state["model"])
    net.eval()
    return net, {"profile": profile, "fold": state.get("fold"), "path": str(path)}


def find_models(models: str | Path | None = None) -> list[Path]:
    """The ``model_final.pt`` files of a run folder (default: the most recently trained run)."""
    if models is None:
        root = repo_root() / "results"
        found = sorted(root.glob("*/*/fold_*/model_final.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise InputError(f"no trained models found under {root}: run `make all` (or `make train`) first, "
                             "or pass --models <results/<cohort>/<profile>>.")
        models = found[-1].parent.parent
    models = Path(models)
    if models.is_file():
        return [models]
    paths = sorted(models.glob("fold_*/model_final.pt"))
    if not paths:
        raise InputError(f"{models}: no fold_*/model_final.pt inside. Pass the run folder of a finished "
                         "training (results/<cohort>/<profile>) to --models.")
    return paths


def load_ensemble(models=None, device=None) -> tuple[list[torch.nn.Module], Profile, list[Path]]:
    paths = find_models(models)
    nets, profiles = [], set()
    profile = None
    for pth in paths:
        net, meta = load_fold_model(pth, device)
        nets.append(net)
        profile = meta["profile"]
        profiles.add((profile.name, profile.target_spacing, profile.hu_clip))
    if len(profiles) > 1:
        raise InputError(f"the models in {paths[0].parent.parent} were trained with different preprocessing settings: {profiles}")
    return nets, profile, paths


@torch.no_grad()
def predict_preprocessed(nets, pre: Preprocessed, *, tta: bool = True, batch_slices: int = 16, device=None,
                         progress: bool = False, desc: str = "slices") -> np.ndarray:
    """Argmax label map (uint8, preprocessed grid) from the mean softmax of ``nets`` (and flips)."""
    device = select_device(device)
    img = pre.image
    nz = img.shape[2]
    out = np.zeros(img.shape, dtype=np.uint8)
    use_amp = device.type == "cuda"
    it = range(0, nz, batch_slices)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=nz, desc=desc, unit="slice", disable=None, mininterval=1.0)
    for z0 in it:
        z1 = min(nz, z0 + batch_slices)
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(img[:, :, z0:z1], 2, 0)[:, None])).float().to(device)
        acc = None
        n = 0
        for net in nets:
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                prob = torch.softmax(net(x).float(), 1)
                if tta:
                    prob = prob + torch.flip(torch.softmax(net(torch.flip(x, dims=(2,))).float(), 1), dims=(2,))
            acc = prob if acc is None else acc + prob
            n += 2 if tta else 1
        lab = acc.argmax(1).to(torch.uint8).cpu().numpy()  # (b, x, y)
        out[:, :, z0:z1] = np.moveaxis(lab, 0, 2)
        if bar is not None:
            bar.update(z1 - z0)
    if bar is not None:
        bar.close()
    return out


def predict_oof(run: RunPaths, *, tta: bool | None = None, device=None, progress: bool = True) -> list[Path]:
    """Predict every case with the model of the fold that held it out; write NIfTI in input geometry.

    Skips a case whose prediction file is newer than its fold's model. Returns the written paths.
    """
    from .folds import read_splits

    splits = read_splits(run.splits)
    out_dir = run.predictions
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fold, split in enumerate(splits):
        model_path = run.fold_dir(fold) / "model_final.pt"
        if not model_path.exists():
            raise FileNotFoundError(f"{model_path} is missing: fold {fold} is not trained (`make train`).")
        todo = [c for c in sorted(split["val"])
                if not ((out_dir / f"{c}.nii.gz").exists()
                        and (out_dir / f"{c}.nii.gz").stat().st_mtime >= model_path.stat().st_mtime)]
        if not todo:
            written += [out_dir / f"{c}.nii.gz" for c in sorted(split["val"])]
            continue
        net, meta = load_fold_model(model_path, device)
        use_tta = meta["profile"].tta_flips if tta is None else tta
        for cid in todo:
            pre = load_cached(run, cid)
            lab = predict_preprocessed([net], pre, tta=use_tta, batch_slices=meta["profile"].sw_batch_size,
                                       device=device, progress=progress, desc=f"fold {fold} {cid}")
            restored = restore_label(lab, pre.info)
            path = save_volume(out_dir / f"{cid}.nii.gz", restored, np.asarray(pre.info["original_affine"]), dtype=np.uint8)
            written.append(Path(path))
        written += [out_dir / f"{c}.nii.gz" for c in sorted(split["val"]) if c not in todo]
    return sorted(set(written))


def _check_ct(vol: Volume, path: Path) -> None:
    arr = vol.array
    if arr.ndim != 3 or min(arr.shape) < 2:
        raise InputError(f"{path}: this is a {arr.ndim}D image of shape {arr.shape}, not a CT volume. "
                         "`sscild segment` needs a 3D chest CT (a NIfTI/NRRD/MHA volume or a folder with a whole "
                         "DICOM series, not a single slice).")
    if min(arr.shape) < 8:
        raise InputError(f"{path}: only {min(arr.shape)} slices along one axis (shape {arr.shape}); "
                         "a chest CT volume needs many axial slices. Give the whole series.")
    lo, hi = float(np.nanmin(arr[::4, ::4, ::2])), float(np.nanmax(arr[::4, ::4, ::2]))
    if not np.isfinite(arr[::4, ::4, ::2]).all():
        raise InputError(f"{path}: the image contains NaN or infinite values; fix the export.")
    if lo > -500 or hi - lo < 500:
        raise InputError(f"{path}: intensities range {lo:.0f}..{hi:.0f}, which is not CT in Hounsfield units "
                         "(air should be near -1000 HU). If this is CT stored without its rescale slope/intercept, "
                         "re-export it in HU; MR and other modalities are not supported.")


def _montage(image: np.ndarray, label: np.ndarray, spacing, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from .plots import overlay, save

    lung_z = np.flatnonzero((label > 0).any(axis=(0, 1)))
    zs = np.linspace(lung_z[0], lung_z[-1], 6).round().astype(int)[1:-1] if lung_z.size else \
        np.linspace(0, image.shape[2] - 1, 4).round().astype(int)
    fig, axes = plt.subplots(1, len(zs) + 1, figsize=(3.2 * (len(zs) + 1), 3.4))
    for ax, z in zip(axes, zs):
        overlay(ax, image[:, :, z], label[:, :, z], title=f"axial {z}", aspect=spacing[1] / spacing[0])
    ymid = image.shape[1] // 2 if not lung_z.size else int(np.median(np.nonzero(label > 0)[1]))
    cor_img = image[:, ymid, :]
    cor_lab = label[:, ymid, :]
    overlay(axes[-1], cor_img, cor_lab, title="coronal", aspect=spacing[2] / spacing[0])
    fig.suptitle(title, fontsize=10)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def segment_scan(scan: str | Path, out: str | Path, *, models=None, tta: bool = True, device=None,
                 progress: bool = True) -> dict:
    """Segment a new chest CT with the fold ensemble; write label map, report (JSON, CSV) and montage.

    Returns the report dict (``report["summary"]`` holds volumes, % of lung and extent stage).
    """
    from .metrics import volumes_ml
    from .paper import EXTENT_THRESHOLD_PCT

    t0 = time.perf_counter()
    scan = Path(scan)
    out = Path(out)
    if not scan.exists():
        raise InputError(f"{scan}: no such file or folder.")
    if out.exists() and out.resolve() == scan.resolve().parent and scan.is_dir():
        raise InputError("--out must not be inside the DICOM folder being read; choose another folder.")
    nets, profile, paths = load_ensemble(models, device)
    set_threads()
    vol = load_volume(scan)
    _check_ct(vol, scan)
    pre = preprocess_volume(vol, None, profile=profile, case_id=scan.name)
    lab_pre = predict_preprocessed(nets, pre, tta=tta, batch_slices=profile.sw_batch_size, device=device,
                                   progress=progress, desc="segmenting")
    label = restore_label(lab_pre, pre.info)
    del lab_pre
    spacing = tuple(float(s) for s in vol.spacing)
    out.mkdir(parents=True, exist_ok=True)
    stem = scan.name.split(".")[0] or "scan"
    label_path = save_volume(out / f"{stem}_labels.nii.gz", label, vol.affine, dtype=np.uint8)
    vols = volumes_ml(label, spacing)
    lung = vols.get("lung", 0.0)
    pct = {k: (100.0 * v / lung if lung > 0 else float("nan")) for k, v in vols.items() if k != "lung"}
    lesion_pct = pct.get("lesion", float("nan"))
    stage = ("extensive" if lesion_pct > EXTENT_THRESHOLD_PCT else "limited") if np.isfinite(lesion_pct) else "undetermined"
    summary = {
        "scan": str(scan),
        "lung_volume_ml": round(lung, 1),
        "volumes_ml": {k: round(v, 1) for k, v in vols.items()},
        "percent_of_lung": {k: round(v, 2) for k, v in pct.items()},
        "extent_stage": stage,
        "extent_rule": f"Goh et al. 2008: limited <= {EXTENT_THRESHOLD_PCT:g} % of lung, extensive above",
    }
    report = {
        "summary": summary,
        "label_map": str(label_path),
        "labels": {"0": "background", "1": "normal lung", "2": "established fibrosis (EF)", "3": "ground-glass opacity (GGO)"},
        "input_shape": list(vol.shape),
        "input_spacing_mm": list(spacing),
        "models": [str(p_) for p_ in paths],
        "profile": profile.name,
        "test_time_flips": bool(tta),
        "seconds": round(time.perf_counter() - t0, 2),
        "warning": "Research software, not a medical device. Models trained on the run named in 'models'; "
                   "a synthetic-cohort model has never seen real disease.",
    }
    write_json(out / f"{stem}_report.json", report)
    with atomic_path(out / f"{stem}_report.csv", suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["region", "volume_ml", "percent_of_lung"])
            for k, v in vols.items():
                w.writerow([k, f"{v:.1f}", "" if k == "lung" else f"{pct[k]:.2f}"])
            w.writerow(["extent_stage", stage, ""])
    _montage(np.asarray(vol.array), label, spacing, out / f"{stem}_overlay.png",
             title=f"{scan.name}: lesion {lesion_pct:.1f} % of lung ({stage})")
    report["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / f"{stem}_report.json", report)
    return report
