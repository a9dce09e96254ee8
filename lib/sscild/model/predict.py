"""Out-of-fold prediction of the cohort: every case by the model of the one fold that held it out.

**Out of fold** (:func:`predict_oof`). Every case is predicted by the model of the one fold that
held it out, and only by it; a model whose recorded training cases include the case is refused.
``predictions/manifest.json`` records, per case, the fold, the model file and its SHA-256 and the
settings, and a case is predicted again only when one of those changed. Inference, the lesion
threshold of the run's profile and post-processing are :func:`sscild.model.inference.segment_preprocessed`,
the path every label map of the package takes, in float32.

**Geometry.** The argmax label map is mapped back to the case's original voxel grid (nearest
neighbour, :func:`sscild.data.preprocess.restore_label`) and written with the input's affine, so it
overlays exactly on the input scan in 3D Slicer or ITK-SNAP.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from sscild.data.folds import read_splits
from sscild.data.nifti_writer import save_volume
from sscild.data.cache import load_cached
from sscild.model.inference import POSTPROCESS_RULE, segment_preprocessed
from sscild.model.loading import file_sha256, load_fold_model
from sscild.paths import RunPaths, read_json, write_json
from sscild.profiles import PROFILES
from sscild.progress import Heartbeat

__all__ = ["predict_oof"]

_MANIFEST = "manifest.json"


def _cache_key(run: RunPaths, case_id: str) -> str | None:
    """The preprocessing cache key of a case (changes when its scan, label or settings change)."""
    try:
        return read_json(run.cache / f"{case_id}.json").get("key")
    except (OSError, ValueError):
        return None


def predict_oof(run: RunPaths, *, tta: bool | None = None, postprocess: bool = True, device=None,
                progress: bool = True) -> list[Path]:
    """Predict every held-out case with the model of the fold that held it out; NIfTI in input geometry.

    Writes ``run.predictions/<case>.nii.gz`` (uint8 labels, the input image's shape and affine) and
    ``run.predictions/manifest.json`` (per case: fold, model file and its SHA-256, the case's cache
    key, TTA, the post-processing rule). A case whose file exists and whose manifest entry matches is
    not predicted again.

    Args:
        run: the run folder; ``splits.json``, the cache and every ``fold_<k>/model_final.pt`` must exist.
        tta: flip test-time augmentation; ``None`` uses the model's profile (``tta_flips``).
        postprocess: apply :func:`sscild.model.inference.postprocess_labels`.
        device: torch device.
        progress: tqdm bars.

    Returns:
        The prediction files, sorted.

    Raises:
        FileNotFoundError: a fold's model is missing.
        ValueError: a fold's model was trained on one of the cases it is asked to predict.
    """
    splits = read_splits(run.splits)
    out_dir = run.predictions
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / _MANIFEST
    try:
        manifest = read_json(manifest_path) if manifest_path.exists() else {}
    except ValueError:
        manifest = {}
    cases = manifest.setdefault("cases", {})
    missing = [k for k in range(len(splits)) if not (run.fold_dir(k) / "model_final.pt").exists()]
    if missing:
        raise FileNotFoundError(f"{run.root}: no model_final.pt for fold(s) {missing}: fold {missing[0]} is not "
                                "trained. Train every fold first (`make train`).")
    thr = PROFILES[run.profile].lesion_threshold if run.profile in PROFILES else None
    # a changed rule or lesion threshold predicts every case again
    rule = (POSTPROCESS_RULE if postprocess else "none") + ("" if thr is None else f"; lesion threshold {thr:g}")
    written = []
    beat = Heartbeat("out-of-fold prediction", total=sum(len(s["val"]) for s in splits), unit="case", every=20.0)
    n_done = 0
    for fold, split in enumerate(splits):
        model_path = run.fold_dir(fold) / "model_final.pt"
        digest = file_sha256(model_path)
        val = sorted(split["val"])

        def current(cid: str) -> bool:
            entry = cases.get(cid)
            return ((out_dir / f"{cid}.nii.gz").exists() and entry is not None
                    and entry.get("model_sha256") == digest and entry.get("fold") == fold
                    and entry.get("cache_key") == _cache_key(run, cid)
                    and entry.get("postprocess") == rule and (tta is None or entry.get("tta") == tta))

        todo = [c for c in val if not current(c)]
        written += [out_dir / f"{c}.nii.gz" for c in val]
        n_done += len(val) - len(todo)
        if not todo:
            continue
        net, meta = load_fold_model(model_path, device)
        leaked = sorted(set(meta["train_cases"]) & set(val))
        if leaked:
            raise ValueError(f"{model_path} was trained on {leaked}, which fold {fold} of {run.splits} holds out: "
                             "the model and the splits do not belong together. Retrain the fold (`make train`).")
        use_tta = meta["profile"].tta_flips if tta is None else bool(tta)
        model_profile = dataclasses.replace(meta["profile"], lesion_threshold=thr)
        for cid in todo:
            pre = load_cached(run, cid)
            res = segment_preprocessed([net], pre, model_profile, tta=use_tta, postprocess=postprocess, device=device,
                                       cpu_bf16=False, progress=progress, desc=f"fold {fold} {cid}")
            save_volume(out_dir / f"{cid}.nii.gz", res.label, np.asarray(pre.info["original_affine"]), dtype=np.uint8)
            cases[cid] = {"fold": fold, "model": str(model_path.relative_to(run.root)), "model_sha256": digest,
                          "cache_key": _cache_key(run, cid), "tta": bool(use_tta), "postprocess": rule}
            write_json(manifest_path, manifest)
            n_done += 1
            beat.update(n_done)
    return sorted(set(written))
