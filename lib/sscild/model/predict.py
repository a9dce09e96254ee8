"""Inference: out-of-fold predictions for the cohort, and the fold ensemble for new scans.

**Slice-wise inference.** The 2D network is applied to whole axial slices of the preprocessed
volume (a fully convolutional U-Net with batch norm in eval mode gives the same answer on a whole
slice as on patches), ``profile.sw_batch_size`` slices per forward pass, under
``torch.inference_mode``, with every batch norm folded into its convolution (:func:`fuse_batchnorm`).
The out-of-fold evaluation computes in float32 on CPU; ``sscild segment`` uses bfloat16 on CPUs that
compute it natively (:func:`predict_preprocessed`, ``cpu_bf16``), about twice as fast.
With test-time augmentation (TTA) the left-right flipped slices go through the network in the same
batch and their softmax, flipped back, is averaged in. An ensemble averages the softmax of its
members (all flips of all folds weigh alike); the label is the argmax of that mean.

**Post-processing** (:func:`keep_largest_lung_components`, on by default, also in the
out-of-fold evaluation so the Segmentation chapter scores exactly what ``sscild segment`` writes):
the lung (every non-background label) is split into 26-connected components on the network's grid;
the largest component is kept, and the second largest too when it holds at least
:data:`SECOND_LUNG_MIN_FRACTION` of the largest one's voxels (the two lungs are separate components
unless they touch). Everything else (specks in the bowel, the trachea, outside the body) becomes
background. Lesion voxels inside a kept component keep their label.

**Geometry.** The argmax label map is mapped back to the case's original voxel grid (nearest
neighbour, :func:`sscild.data.preprocess.restore_label`) and written with the input's affine, so it
overlays exactly on the input scan in 3D Slicer or ITK-SNAP.

**Which models** (:func:`load_ensemble`, :func:`choose_default_models`). Every checkpoint records
what it segments (label scheme, profile, input kind); a model whose labels are not the study's
(0 background, 1 normal, 2 EF, 3 GGO) or that was trained on 2D image slices is refused, and without
``--models`` the study's run of the default profile is used, never the external check's COVID slice
models. Checkpoints load with ``torch.load(weights_only=True)``: a file that needs more is refused.

**Out of fold** (:func:`predict_oof`). Every case is predicted by the model of the one fold that
held it out, and only by it; a model whose recorded training cases include the case is refused.
``predictions/manifest.json`` records, per case, the fold, the model file and its SHA-256 and the
settings, and a case is predicted again only when one of those changed.

Example:
    >>> report = segment_scan("chest.nrrd", "out/", models="results/synthetic-cpu/cpu")  # doctest: +SKIP
    >>> report["summary"]["extent_stage"]                                               # doctest: +SKIP
    'limited'
"""

from __future__ import annotations

import csv
import hashlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from sscild import LABELS
from sscild.errors import InputError
from sscild.data.image import Volume, load_volume
from sscild.data.nifti_writer import save_volume
from sscild.model.network import NUM_CLASSES, build_network, native_cpu_bf16
from sscild.paths import RunPaths, atomic_path, read_json, repo_root, write_json
from sscild.data.cache import load_cached
from sscild.data.preprocess import Preprocessed, preprocess_volume, restore_label
from sscild.progress import Heartbeat
from sscild.profiles import Profile
from sscild.model.train import select_device, set_threads

__all__ = [
    "SECOND_LUNG_MIN_FRACTION",
    "POSTPROCESS_RULE",
    "CT_MIN_AIR_HU",
    "fuse_batchnorm",
    "DEFAULT_PROFILE",
    "load_fold_model",
    "checkpoint_label_scheme",
    "check_study_model",
    "choose_default_models",
    "find_models",
    "Ensemble",
    "load_ensemble",
    "native_cpu_bf16",
    "predict_preprocessed",
    "keep_largest_lung_components",
    "predict_oof",
    "check_ct",
    "acquisition_info",
    "segment_scan",
]

SECOND_LUNG_MIN_FRACTION = 0.05
"""The second largest lung component is kept when it has at least this share of the largest's voxels."""

POSTPROCESS_RULE = (
    "keep the largest 26-connected component of the predicted lung (labels 1-3) and the second largest "
    f"when it has at least {SECOND_LUNG_MIN_FRACTION:.0%} of the largest's voxels; the rest becomes background"
)
"""One sentence for reports and the book."""

CT_MIN_AIR_HU = -500.0
"""A CT in Hounsfield units has air (outside the body, in the lungs) well below this value."""

DEFAULT_PROFILE = "cpu"
"""The profile of ``make all``; ``sscild segment`` prefers its models when ``--models`` is not given."""

_MANIFEST = "manifest.json"


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def _profile_from_dict(prof: dict) -> Profile:
    prof = dict(prof)
    for key in ("phantom_shape", "phantom_spacing", "target_spacing", "hu_clip", "channels", "strides", "patch_size"):
        if key in prof and prof[key] is not None:
            prof[key] = tuple(prof[key])
    known = set(Profile.__dataclass_fields__)
    return Profile(**{k: v for k, v in prof.items() if k in known})


def fuse_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode batch norm that directly follows a convolution into that convolution.

    Inference only: the folded network computes the same function (up to float rounding) with one
    pass over memory fewer per layer (about a quarter faster on CPU). Uses
    ``torch.nn.utils.fusion.fuse_conv_bn_eval`` on MONAI ``Convolution`` blocks whose ADN starts
    with the norm ("NDA" ordering); anything else is left alone. Modifies ``net`` in place.

    Example:
        >>> net = fuse_batchnorm(build_network("smoke").eval())
    """
    from monai.networks.blocks import Convolution
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if net.training:
        raise ValueError("fuse_batchnorm is for inference: call net.eval() first")
    for m in net.modules():
        adn = getattr(m, "adn", None)
        if not isinstance(m, Convolution) or adn is None:
            continue
        name, norm = next(iter(adn.named_children()), (None, None))
        conv = getattr(m, "conv", None)
        if name == "N" and isinstance(norm, torch.nn.modules.batchnorm._BatchNorm) \
                and isinstance(conv, torch.nn.modules.conv._ConvNd):
            transposed = isinstance(conv, torch.nn.modules.conv._ConvTransposeNd)
            m.conv = fuse_conv_bn_eval(conv, norm, transpose=transposed)
            adn.N = torch.nn.Identity()
    return net


def checkpoint_label_scheme(state: dict) -> dict[str, int]:
    """The label scheme a checkpoint segments: ``label_scheme`` when recorded, else derived.

    Checkpoints written before the scheme was recorded carry ``class_names`` (foreground classes in
    output-channel order after background) and ``num_classes``; a checkpoint with neither is assumed
    to be the study's four-class model only when it has four output channels.
    """
    scheme = state.get("label_scheme")
    if isinstance(scheme, dict) and scheme:
        return {str(k): int(v) for k, v in scheme.items()}
    names = state.get("class_names")
    if names:
        return {"background": 0, **{str(c): i + 1 for i, c in enumerate(names)}}
    n = int(state.get("num_classes", NUM_CLASSES))
    return dict(LABELS) if n == len(LABELS) else {"background": 0, **{f"class_{i}": i for i in range(1, n)}}


def _weights_only_load(path: Path, device):
    import pickle

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        import re

        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise InputError(
                f"{path}: refused. Loading this file needs more than tensors and plain values (it holds a pickled "
                f"{found.group(1)}, and unpickling can run code), so torch.load(weights_only=True) does not load it. "
                "sscild only loads model files it wrote itself; use a fold_*/model_final.pt from `make train`.") from exc
        raise


def load_fold_model(path: str | Path, device=None) -> tuple[torch.nn.Module, dict]:
    """Load one ``fold_<k>/model_final.pt`` with ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint written by :func:`sscild.model.train.train_model`.
        device: torch device (default: CUDA when available, else CPU).

    Returns:
        ``(network in eval mode with batch norm folded into the convolutions, meta)``; meta keys
        ``profile`` (:class:`Profile`), ``fold``, ``path``, ``train_cases`` (the ids it was trained on),
        ``label_scheme`` (:func:`checkpoint_label_scheme`) and ``input_kind`` (``"ct-volume-hu"`` for the
        study's models, ``"2d-image-slices"`` for the external check's; ``None`` when not recorded).

    Raises:
        InputError: the file is missing, is not a model this package wrote, or needs more than
            ``weights_only`` loading allows.

    Example:
        >>> net, meta = load_fold_model("results/synthetic-cpu/cpu/fold_0/model_final.pt")  # doctest: +SKIP
    """
    device = select_device(device)
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found. Train the fold first (`make train`), or pass the run "
                         "folder of a finished training to --models.")
    try:
        state = _weights_only_load(path, device)
        profile = _profile_from_dict(state["profile"])
        net = build_network(profile, out_channels=int(state.get("num_classes", NUM_CLASSES))).to(device)
        net.load_state_dict(state["model"])
    except InputError:
        raise
    except Exception as exc:  # truncated file, a different network, not a checkpoint at all
        raise InputError(f"{path}: not a usable sscild model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
                         "Fix: retrain that fold (delete its folder and run `make train`).") from exc
    net.eval()
    fuse_batchnorm(net)
    return net, {"profile": profile, "fold": state.get("fold"), "path": str(path),
                 "train_cases": list(state.get("train_cases", [])),
                 "label_scheme": checkpoint_label_scheme(state), "input_kind": state.get("input_kind")}


def check_study_model(meta: dict) -> None:
    """Refuse a model that does not segment the study's labels from CT volumes.

    Raises:
        InputError: its label scheme is not :data:`sscild.LABELS`, or it was trained on 2D image slices.
    """
    scheme, kind = meta["label_scheme"], meta.get("input_kind")
    if scheme != dict(LABELS):
        shown = ", ".join(f"{v} {k}" for k, v in sorted(scheme.items(), key=lambda kv: kv[1]))
        raise InputError(
            f"{meta['path']}: this model segments other labels ({shown}; profile {meta['profile'].name!r}) than "
            f"the study's (0 background, 1 normal, 2 ef, 3 ggo), so its output would be mislabelled (e.g. "
            "consolidation reported as fibrosis). It is not an SSc-ILD model; pass the run folder of the study's "
            "training (results/<cohort>/<profile>) to --models.")
    if kind not in (None, "ct-volume-hu"):
        raise InputError(f"{meta['path']}: this model was trained on {kind}, not on CT volumes in HU; "
                         "pass the run folder of the study's training to --models.")


def _checkpoint_meta(path: Path) -> dict | None:
    """Label scheme, profile name and input kind of a checkpoint (None when unreadable)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {"label_scheme": checkpoint_label_scheme(state), "input_kind": state.get("input_kind"),
                "profile": str(state.get("profile", {}).get("name"))}
    except Exception:
        return None


def choose_default_models(root: str | Path | None = None, *, profile: str = DEFAULT_PROFILE) -> tuple[Path, str]:
    """The run ``sscild segment`` uses without ``--models``, and why.

    Rule: among the run folders ``<root>/<cohort>/<name>/`` holding ``fold_*/model_final.pt``, only those
    whose models segment the study's labels from CT volumes count (the external check's COVID slice
    models under ``results/external`` never do); of these, runs of the default profile (``cpu``) come
    first, then the run with the most fold models, then the most recently trained.

    Args:
        root: results folder (default ``SSCILD_RESULTS`` or ``<repo>/results``).
        profile: the preferred profile.

    Returns:
        ``(run folder, one-sentence reason)``.

    Raises:
        InputError: no run with the study's models.
    """
    import os

    root = Path(root or os.environ.get("SSCILD_RESULTS", repo_root() / "results"))
    runs: dict[Path, list[Path]] = {}
    for p in root.glob("*/*/fold_*/model_final.pt"):
        runs.setdefault(p.parent.parent, []).append(p)
    usable, skipped = [], []
    for run, files in sorted(runs.items()):
        meta = _checkpoint_meta(sorted(files)[0])
        if meta is None:
            skipped.append(f"{run} (unreadable model)")
        elif meta["label_scheme"] != dict(LABELS) or meta["input_kind"] not in (None, "ct-volume-hu"):
            labels = "/".join(k for k in meta["label_scheme"] if k != "background")
            skipped.append(f"{run} (segments {labels}, not the study's labels)")
        else:
            usable.append((run, files, meta["profile"]))
    if not usable:
        extra = f" Found only: {'; '.join(skipped)}." if skipped else ""
        raise InputError(f"no trained SSc-ILD models found under {root}: run `make all` (or `make train`) first, "
                         f"or pass --models <results/<cohort>/<profile>>.{extra}")

    def key(item):
        run, files, prof = item
        return (prof == profile, len(files), max(f.stat().st_mtime for f in files))

    run, files, prof = max(usable, key=key)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(f.stat().st_mtime for f in files)))
    why = (f"the study's models of the default profile {profile!r}" if prof == profile else
           f"no run of the default profile {profile!r} was found; the run of profile {prof!r} with the most folds")
    others = [str(r) for r, _, _ in usable if r != run] + skipped
    reason = (f"models: {run} ({len(files)} fold model(s), trained {when}): {why}"
              + (f"; also found: {'; '.join(others)}" if others else "") + ". Pass --models to choose another run.")
    return run, reason


def find_models(models: str | Path | None = None) -> list[Path]:
    """The ``model_final.pt`` files of a run folder.

    Args:
        models: a run folder (``results/<cohort>/<profile>``, holding ``fold_*/model_final.pt``), one
            ``model_final.pt``, or ``None`` for :func:`choose_default_models`.

    Raises:
        InputError: the folder does not exist or holds no trained fold.

    Example:
        >>> [p.parent.name for p in find_models("results/synthetic-cpu/cpu")]   # doctest: +SKIP
        ['fold_0', 'fold_1', ...]
    """
    if models is None:
        models, _ = choose_default_models()
    models = Path(models)
    if not models.exists():
        raise InputError(f"{models}: models folder not found. Pass the run folder of a finished training "
                         "(results/<cohort>/<profile>, which holds fold_*/model_final.pt) to --models.")
    if models.is_file():
        return [models]
    paths = sorted(models.glob("fold_*/model_final.pt"), key=lambda p: (len(p.parent.name), p.parent.name))
    if not paths:
        raise InputError(f"{models}: no fold_*/model_final.pt inside. Pass the run folder of a finished "
                         "training (results/<cohort>/<profile>) to --models, or train it first (`make train`).")
    return paths


@dataclass
class Ensemble:
    """The fold models ``sscild segment`` averages, and where they came from."""

    nets: list
    profile: Profile
    paths: list[Path]
    choice: str


def load_ensemble(models=None, device=None) -> Ensemble:
    """Load every fold model of a run; each must segment the study's labels, all must share preprocessing.

    Args:
        models: a run folder, one model file, a list of model files, or ``None`` (the run
            :func:`choose_default_models` picks, and the reason is kept in ``choice``).
        device: torch device.

    Returns:
        :class:`Ensemble`.

    Raises:
        InputError: no models, an unusable model, a model of other labels (:func:`check_study_model`),
            or models trained with different preprocessing.
    """
    if models is None:
        run, choice = choose_default_models()
        paths = find_models(run)
    elif isinstance(models, (list, tuple)):
        paths, choice = [Path(p) for p in models], "models: given as a list of files"
    else:
        paths, choice = find_models(models), f"models: {models} (given with --models)"
    nets, settings = [], set()
    profile = None
    for pth in paths:
        net, meta = load_fold_model(pth, device)
        check_study_model(meta)
        nets.append(net)
        profile = meta["profile"]
        settings.add((profile.name, profile.target_spacing, profile.hu_clip))
    if len(settings) > 1:
        raise InputError(f"the models in {paths[0].parent.parent} were trained with different preprocessing "
                         f"settings ({sorted(map(str, settings))}); use the folds of one run only.")
    return Ensemble(nets=nets, profile=profile, paths=paths, choice=choice)


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------


def predict_preprocessed(nets, pre: Preprocessed, *, tta: bool = True, batch_slices: int = 16, device=None,
                         cpu_bf16: bool | None = False, progress: bool = False, desc: str = "slices") -> np.ndarray:
    """Argmax label map (uint8, preprocessed grid) of the mean softmax of ``nets`` (and flips).

    Args:
        nets: one network or a list (an ensemble); each maps (b, 1, X, Y) to (b, 4, X, Y) logits.
        pre: the preprocessed case (:func:`sscild.data.preprocess.preprocess_volume` or the cache).
        tta: also average the left-right flipped slices.
        batch_slices: axial slices per forward pass (each doubled with ``tta``).
        device: torch device (default: CUDA when available, where float16 autocast is used).
        cpu_bf16: on CPU, run the networks in bfloat16 autocast (softmax and averaging stay float32).
            ``None``: only where the CPU computes bfloat16 natively (:func:`native_cpu_bf16`), about
            twice as fast there; on two real chest CTs 0.05-0.2 % of lung voxels changed label and the
            lesion share of the lung moved by 0.01 percentage points. ``False`` (the default, and
            what the out-of-fold evaluation uses): float32.
        progress: show a tqdm bar.

    Returns:
        uint8 array of ``pre.image.shape``, labels 0..3.

    Example:
        >>> lab = predict_preprocessed([net], load_cached(run, "case_000"), tta=False)   # doctest: +SKIP
    """
    if isinstance(nets, torch.nn.Module):
        nets = [nets]
    if not nets:
        raise ValueError("predict_preprocessed needs at least one network")
    if int(batch_slices) < 1:
        raise ValueError(f"batch_slices must be >= 1, got {batch_slices}")
    device = select_device(device)
    img = pre.image
    nz = img.shape[2]
    out = np.zeros(img.shape, dtype=np.uint8)
    if device.type == "cuda":
        amp_dtype = torch.float16
    else:
        amp_dtype = torch.bfloat16 if (native_cpu_bf16() if cpu_bf16 is None else cpu_bf16) else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=nz, desc=desc, unit="slice", disable=None, mininterval=1.0)
    with torch.inference_mode():
        for z0 in range(0, nz, int(batch_slices)):
            z1 = min(nz, z0 + int(batch_slices))
            b = z1 - z0
            x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(img[:, :, z0:z1], np.float32), 2, 0)))
            x = x[:, None].to(device)
            if tta:
                x = torch.cat([x, torch.flip(x, dims=(2,))])
            acc = None
            for net in nets:
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = net(x)
                prob = torch.softmax(logits.float(), 1)
                if tta:
                    prob = prob[:b] + torch.flip(prob[b:], dims=(2,))
                acc = prob if acc is None else acc.add_(prob)
            out[:, :, z0:z1] = np.moveaxis(acc.argmax(1).to(torch.uint8).cpu().numpy(), 0, 2)
            if bar is not None:
                bar.update(b)
    if bar is not None:
        bar.close()
    return out


def keep_largest_lung_components(label: np.ndarray, *, min_fraction: float = SECOND_LUNG_MIN_FRACTION) -> np.ndarray:
    """Keep the one or two largest 26-connected lung components of a label map (see the module docstring).

    Args:
        label: (x, y, z) label map, 0 background, 1..3 lung classes.
        min_fraction: the second component is kept when its size is at least this share of the
            largest's.

    Returns:
        A copy with every other lung voxel set to 0.

    Example:
        >>> lab = np.zeros((12, 5, 5), np.uint8); lab[0:4] = 1; lab[6:9] = 3; lab[11, 0, 0] = 1
        >>> np.bincount(keep_largest_lung_components(lab).ravel()).tolist()
        [125, 100, 0, 75]
    """
    if not 0.0 <= float(min_fraction) <= 1.0:
        raise ValueError(f"min_fraction must lie in [0, 1], got {min_fraction!r}")
    label = np.asarray(label)
    lung = label > 0
    comp, n = ndi.label(lung, structure=np.ones((3,) * label.ndim, bool))
    if n <= 1:
        return label.copy()
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    keep = [order[0]]
    if sizes[order[1]] >= float(min_fraction) * sizes[order[0]]:
        keep.append(order[1])
    out = label.copy()
    out[lung & ~np.isin(comp, keep)] = 0
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
    key, TTA, post-processing). A case whose file exists and whose manifest entry matches is not
    predicted again.

    Args:
        run: the run folder; ``splits.json``, the cache and every ``fold_<k>/model_final.pt`` must exist.
        tta: flip test-time augmentation; ``None`` uses the model's profile (``tta_flips``).
        postprocess: apply :func:`keep_largest_lung_components`.
        device: torch device.
        progress: tqdm bars.

    Returns:
        The prediction files, sorted.

    Raises:
        FileNotFoundError: a fold's model is missing.
        ValueError: a fold's model was trained on one of the cases it is asked to predict.

    Example:
        >>> paths = predict_oof(RunPaths.for_run("data/synthetic-cpu", "cpu"))   # doctest: +SKIP
    """
    from sscild.data.folds import read_splits

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
    written = []
    beat = Heartbeat("out-of-fold prediction", total=sum(len(s["val"]) for s in splits), unit="case", every=20.0)
    n_done = 0
    for fold, split in enumerate(splits):
        model_path = run.fold_dir(fold) / "model_final.pt"
        digest = _sha256(model_path)
        val = sorted(split["val"])

        def current(cid: str) -> bool:
            entry = cases.get(cid)
            return ((out_dir / f"{cid}.nii.gz").exists() and entry is not None
                    and entry.get("model_sha256") == digest and entry.get("fold") == fold
                    and entry.get("cache_key") == _cache_key(run, cid)
                    and entry.get("postprocess") == bool(postprocess) and (tta is None or entry.get("tta") == tta))

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
        for cid in todo:
            pre = load_cached(run, cid)
            lab = predict_preprocessed([net], pre, tta=use_tta, batch_slices=meta["profile"].sw_batch_size,
                                       device=device, cpu_bf16=False, progress=progress, desc=f"fold {fold} {cid}")
            if postprocess:
                lab = keep_largest_lung_components(lab)
            restored = restore_label(lab, pre.info)
            save_volume(out_dir / f"{cid}.nii.gz", restored, np.asarray(pre.info["original_affine"]), dtype=np.uint8)
            cases[cid] = {"fold": fold, "model": str(model_path.relative_to(run.root)), "model_sha256": digest,
                          "cache_key": _cache_key(run, cid), "tta": bool(use_tta), "postprocess": bool(postprocess)}
            write_json(manifest_path, manifest)
            n_done += 1
            beat.update(n_done)
    return sorted(set(written))


# --------------------------------------------------------------------------------------------
# a new scan
# --------------------------------------------------------------------------------------------


def check_ct(vol: Volume, path: str | Path) -> None:
    """Refuse what is not a 3D chest CT in Hounsfield units (with a message that says why).

    Raises:
        InputError: a single slice or too few slices, NaN/inf voxels, or intensities that are not HU
            (no air below :data:`CT_MIN_AIR_HU`, e.g. MR or an 8-bit export).

    Example:
        >>> check_ct(Volume(np.full((64, 64, 40), 500, np.int16), np.eye(4)), "mr.nii.gz")  # doctest: +SKIP
        Traceback (most recent call last):
        InputError: mr.nii.gz: intensities range 500..500 ...
    """
    arr = vol.array
    shape = tuple(int(n) for n in arr.shape)
    if arr.ndim != 3 or 1 in shape:
        raise InputError(f"{path}: this is a single 2D image (shape {shape}), not a CT volume. `sscild segment` "
                         "needs a 3D chest CT: a NIfTI/NRRD/MHA volume or a folder holding a whole DICOM series.")
    if min(shape) < 8:
        raise InputError(f"{path}: only {min(shape)} voxels along one axis (shape {shape}); a chest CT volume "
                         "has many axial slices. Give the whole series, not a few slices.")
    sample = np.asarray(arr[::4, ::4, ::2])
    if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
        raise InputError(f"{path}: the image contains NaN or infinite values; re-export the scan.")
    lo, hi = float(sample.min()), float(sample.max())
    if lo > CT_MIN_AIR_HU or hi - lo < 500:
        raise InputError(f"{path}: intensities range {lo:.0f}..{hi:.0f}, which is not CT in Hounsfield units "
                         "(air should be near -1000 HU). If this is CT stored without its rescale slope/intercept, "
                         "re-export it in HU; MR and other modalities are not supported.")


def _stem(scan: Path) -> str:
    name = scan.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "scan"
    return name or "scan"


def acquisition_info(scan: str | Path, vol: Volume) -> dict:
    """What a follow-up comparison needs to know about how a scan was acquired.

    For a DICOM series: PatientID, slice thickness, reconstruction kernel, study date, manufacturer
    and SeriesInstanceUID from the header of its first slice; for other formats only the slice
    spacing is known (``None`` for the rest).

    Returns:
        dict with ``format``, ``patient_id``, ``slice_thickness_mm`` (with ``slice_thickness_from``),
        ``kernel``, ``study_date``, ``manufacturer``, ``series_uid``, ``series_files`` (DICOM only).
    """
    scan = Path(scan)
    info = {"format": "dicom" if scan.is_dir() or scan.suffix.lower() in (".dcm", ".dicom", ".ima") else "volume",
            "patient_id": None, "slice_thickness_mm": round(float(vol.spacing[2]), 4),
            "slice_thickness_from": "voxel spacing", "kernel": None, "study_date": None, "manufacturer": None,
            "series_uid": None, "series_files": None}
    if info["format"] != "dicom":
        return info
    import pydicom

    from sscild.data.image import pick_series as _pick_series

    if scan.is_dir():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # load_volume already said which series it read
            files = list(_pick_series(scan).files)
    else:
        files = [str(scan)]
    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    except Exception:  # already read once by load_volume; a header we cannot parse adds nothing
        return info

    def get(tag):
        v = ds.get(tag)
        if v is None or v == "":
            return None
        return "\\".join(map(str, v)) if isinstance(v, pydicom.multival.MultiValue) else str(v)

    thick = get("SliceThickness")
    if thick:
        info["slice_thickness_mm"], info["slice_thickness_from"] = round(float(thick), 4), "DICOM SliceThickness"
    info.update(patient_id=get("PatientID"), kernel=get("ConvolutionKernel"), study_date=get("StudyDate"),
                manufacturer=get("Manufacturer"), series_uid=get("SeriesInstanceUID"), series_files=files)
    return info


def segment_scan(scan: str | Path, out: str | Path, *, models=None, ensemble: Ensemble | None = None,
                 tta: bool | None = None, postprocess: bool = True, device=None, cpu_bf16: bool | None = None,
                 progress: bool = True, montage: bool = True, extras: bool = True) -> dict:
    """Segment a new chest CT with the fold ensemble; write label map, viewer files, zones and reports.

    Outputs in ``out`` (``<stem>`` is the scan's file name without its extension):

    * ``<stem>_labels.nii.gz``: uint8 labels (0 background, 1 normal, 2 EF, 3 GGO) with the input's
      shape and affine;
    * ``<stem>_report.json`` and ``<stem>_report.csv``: volumes (mL), percent of lung per class, the
      extent stage (Goh et al. 2008: limited <= 20 % of lung, extensive > 20 %), the models used;
    * ``<stem>_overlay.png``: axial and coronal slices with the labels, radiological orientation;
    * with ``extras`` (the default): ``<stem>_zones.csv`` (EF / GGO extent per lung zone,
      :mod:`sscild.clinic.zones`), ``<stem>_report.html`` (one self-contained page, :mod:`sscild.clinic.scanreport`),
      ``<stem>_labels.seg.nrrd`` (3D Slicer) and ``<stem>_labels.itksnap.txt`` (ITK-SNAP label
      names and colours), and for a DICOM series ``<stem>_seg.dcm``, a DICOM Segmentation
      referencing it (:mod:`sscild.clinic.viewer`).

    Args:
        scan: a NIfTI / NRRD / MHA file or a folder holding one DICOM series.
        out: output folder (created); must not be the DICOM folder being read.
        models: run folder with ``fold_*/model_final.pt`` (default: :func:`choose_default_models`).
        ensemble: an already loaded :class:`Ensemble` (a batch loads it once); overrides ``models``.
        tta: left-right flip test-time augmentation; ``None``: as the models' profile says
            (``tta_flips``; on for ``cpu`` and ``paper``).
        postprocess: :func:`keep_largest_lung_components`.
        device: torch device.
        cpu_bf16: bfloat16 inference on CPU (see :func:`predict_preprocessed`); ``None``: where the
            CPU supports it natively. The choice is recorded in the report (``"precision"``).
        progress: tqdm bar over slices.
        montage: write the overlay PNG.
        extras: write zones, viewer files and the HTML report.

    Returns:
        The report dict (``report["summary"]`` holds volumes, % of lung and extent stage).

    Raises:
        InputError: missing or unreadable scan, a 2D image, not CT in HU, missing or unusable models,
            models of other labels than the study's.

    Example:
        >>> segment_scan("chest.nrrd", "out/")["summary"]["percent_of_lung"]["lesion"]   # doctest: +SKIP
        12.4
    """
    from sscild.evaluation.metrics import volumes_ml
    from sscild.paper import EXTENT_THRESHOLD_PCT

    t0 = time.perf_counter()
    scan, out = Path(scan), Path(out)
    if not scan.exists():
        raise InputError(f"{scan}: no such file or folder. Fix: check the path of the scan.")
    if scan.is_dir() and (out.resolve() == scan.resolve() or scan.resolve() in out.resolve().parents):
        raise InputError(f"--out {out} lies inside the DICOM folder being read ({scan}); inputs are never written "
                         "to. Choose another output folder.")
    if ensemble is None and models is not None:
        find_models(models)  # a wrong --models is reported before the scan is read
    vol = load_volume(scan)
    check_ct(vol, scan)
    ens = ensemble if ensemble is not None else load_ensemble(models, device)
    nets, profile, paths = ens.nets, ens.profile, ens.paths
    threads = set_threads()
    tta = bool(profile.tta_flips) if tta is None else bool(tta)
    t_load = time.perf_counter()
    pre = preprocess_volume(vol, None, profile=profile, case_id=scan.name)
    t_pre = time.perf_counter()
    device = select_device(device)
    bf16 = device.type == "cpu" and (native_cpu_bf16() if cpu_bf16 is None else bool(cpu_bf16))
    lab_pre = predict_preprocessed(nets, pre, tta=tta, batch_slices=profile.sw_batch_size, device=device,
                                   cpu_bf16=bf16, progress=progress, desc="segmenting")
    t_pred = time.perf_counter()
    if postprocess:
        lab_pre = keep_largest_lung_components(lab_pre)
    label = restore_label(lab_pre, pre.info)
    t_post = time.perf_counter()
    pre_shape, pre_spacing = list(pre.image.shape), list(pre.spacing)
    del lab_pre, pre
    spacing = tuple(float(s) for s in vol.spacing)
    stem = _stem(scan)
    out.mkdir(parents=True, exist_ok=True)
    outputs = {"labels": out / f"{stem}_labels.nii.gz", "report": out / f"{stem}_report.json",
               "table": out / f"{stem}_report.csv"}
    if montage:
        outputs["overlay"] = out / f"{stem}_overlay.png"
    acq = acquisition_info(scan, vol)
    if extras:
        outputs.update(zones=out / f"{stem}_zones.csv", html=out / f"{stem}_report.html",
                       slicer=out / f"{stem}_labels.seg.nrrd", itksnap=out / f"{stem}_labels.itksnap.txt")
        if acq["format"] == "dicom" and scan.is_dir():
            outputs["dicom_seg"] = out / f"{stem}_seg.dcm"
    if any(p.resolve() == scan.resolve() for p in outputs.values()):
        raise InputError(f"{scan}: an output would overwrite the scan itself; choose another --out folder.")
    save_volume(outputs["labels"], label, vol.affine, dtype=np.uint8)
    vols = volumes_ml(label, spacing)
    lung = vols.get("lung", 0.0)
    pct = {k: (100.0 * v / lung if lung > 0 else float("nan")) for k, v in vols.items() if k != "lung"}
    lesion_pct = pct.get("lesion", float("nan"))
    # Goh et al. 2008, as sscild.evaluation.stats.extent_stage (not imported: it loads statsmodels, seconds of start-up)
    stage = ("undetermined" if not np.isfinite(lesion_pct)
             else "extensive" if lesion_pct > EXTENT_THRESHOLD_PCT else "limited")
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
        "outputs": {k: str(p) for k, p in outputs.items()},
        "labels": {"0": "background", "1": "normal lung", "2": "established fibrosis (EF)",
                   "3": "ground-glass opacity (GGO)"},
        "input_shape": list(vol.shape),
        "input_spacing_mm": list(spacing),
        "acquisition": {k: v for k, v in acq.items() if k != "series_files"},
        "network_grid": {"shape": pre_shape, "spacing_mm": pre_spacing},
        "models": [str(p_) for p_ in paths],
        "models_choice": ens.choice,
        "profile": profile.name,
        "ensemble": f"mean softmax of {len(nets)} fold model(s)" + (" and their left-right flips" if tta else ""),
        "postprocess": POSTPROCESS_RULE if postprocess else "none",
        "precision": "float16 autocast (CUDA)" if device.type == "cuda" else
                     "bfloat16 autocast (native on this CPU)" if bf16 else "float32",
        "threads": threads,
        "seconds": {"read_scan_and_models": round(t_load - t0, 2), "preprocess": round(t_pre - t_load, 2),
                    "predict": round(t_pred - t_pre, 2), "postprocess_and_restore": round(t_post - t_pred, 2)},
        "warning": "Research software, not a medical device. Models trained on the run named in 'models'; "
                   "a synthetic-cohort model has never seen real disease.",
    }
    with atomic_path(outputs["table"], suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["region", "volume_ml", "percent_of_lung"])
            for k, v in vols.items():
                w.writerow([k, f"{v:.1f}", "" if k == "lung" else f"{pct[k]:.2f}"])
            w.writerow(["extent_stage", stage, ""])
    t_zone = time.perf_counter()
    zones = None
    if extras:
        from sscild.clinic.viewer import write_dicom_seg, write_itksnap_labels, write_slicer_seg
        from sscild.clinic.zones import ZONE_RULES, zone_extent

        zones = zone_extent(label, vol.affine)
        with atomic_path(outputs["zones"], suffix=".csv") as tmp:
            zones.round(3).to_csv(tmp)
        report["zones"] = {"rules": ZONE_RULES, "sides_by": zones.attrs.get("sides_by"),
                           "table": {z: {k: (None if not np.isfinite(v) else round(float(v), 3)) for k, v in row.items()}
                                     for z, row in zones.iterrows()}}
        report["seconds"]["zones"] = round(time.perf_counter() - t_zone, 2)
        t_view = time.perf_counter()
        write_slicer_seg(outputs["slicer"], label, vol.affine)
        write_itksnap_labels(outputs["itksnap"])
        if "dicom_seg" in outputs:
            write_dicom_seg(outputs["dicom_seg"], label, vol.affine, acq["series_files"])
        report["seconds"]["viewer_files"] = round(time.perf_counter() - t_view, 2)
    png = None
    if montage:
        from sscild.book.plots.segmentation import scan_montage

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # matplotlib layout notes; nothing to act on
            fig = scan_montage(vol.array, label, vol.affine,
                               title=f"{scan.name}: lesion {lesion_pct:.1f} % of lung ({stage})")
            with atomic_path(outputs["overlay"], suffix=".png") as tmp:
                fig.savefig(tmp, format="png")
            png = outputs["overlay"].read_bytes()
        import matplotlib.pyplot as plt

        plt.close(fig)
    if extras:
        from sscild.clinic.scanreport import scan_report_html

        with atomic_path(outputs["html"], suffix=".html") as tmp:
            Path(tmp).write_text(scan_report_html(report, zones=zones, overlay_png=png), encoding="utf-8")
    report["seconds"]["write_outputs"] = round(time.perf_counter() - t_post, 2)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    write_json(outputs["report"], report)
    return report
