"""Which fold models a prediction uses, and loading them safely.

**Model files.** :func:`load_fold_model` loads one ``fold_<k>/model_final.pt`` with
``torch.load(weights_only=True)`` (a file that needs more is refused) and folds every batch norm into
its convolution for inference (:func:`fuse_batchnorm`).

**Which models** (:func:`load_ensemble`, :func:`choose_default_models`). Every checkpoint records
what it segments (label scheme, profile, input kind); a model whose labels are not the study's
(0 background, 1 normal, 2 EF, 3 GGO) or that was trained on 2D image slices is refused
(:func:`check_study_model`), and without ``--models`` the study's run of the default profile is
used, never the external check's COVID slice models. An :class:`Ensemble` holds the fold models of
one run; all must share the preprocessing settings.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sscild import LABELS
from sscild.errors import InputError
from sscild.model.device import select_device
from sscild.model.network import NUM_CLASSES, build_network
from sscild.paths import RunPaths, repo_root
from sscild.profiles import PROFILES, Profile

__all__ = [
    "DEFAULT_PROFILE",
    "fuse_batchnorm",
    "load_fold_model",
    "fold_is_done",
    "file_sha256",
    "model_identity",
    "checkpoint_label_scheme",
    "check_study_model",
    "choose_default_models",
    "find_models",
    "Ensemble",
    "load_ensemble",
]

DEFAULT_PROFILE = "cpu"
"""The profile of ``make all``; ``sscild segment`` prefers its models when ``--models`` is not given."""


def _profile_from_dict(prof: dict) -> Profile:
    """The profile a model file records; a setting it predates takes the value the profile of that name
    has now (e.g. an inference setting such as ``lesion_threshold``), else the field's default."""
    prof = dict(prof)
    for key in ("phantom_shape", "phantom_spacing", "target_spacing", "hu_clip", "channels", "strides", "patch_size",
                "lung_density_hu"):
        if key in prof and prof[key] is not None:
            prof[key] = tuple(prof[key])
    known = set(Profile.__dataclass_fields__)
    now = PROFILES.get(prof.get("name"))
    missing = {k: getattr(now, k) for k in known - set(prof)} if now is not None else {}
    return Profile(**{k: v for k, v in prof.items() if k in known}, **missing)


def fuse_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode batch norm that directly follows a convolution into that convolution.

    Inference only: the folded network computes the same function (up to float rounding) with one
    pass over memory fewer per layer (about a quarter faster on CPU). Uses
    ``torch.nn.utils.fusion.fuse_conv_bn_eval`` on MONAI ``Convolution`` blocks whose ADN starts
    with the norm ("NDA" ordering); anything else is left alone. Modifies ``net`` in place.

    Example:
        >>> from sscild.profiles import get_profile
        >>> net = fuse_batchnorm(build_network(get_profile("smoke")).eval())
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


def fold_is_done(run: RunPaths, fold: int) -> bool:
    """Whether fold ``fold`` of ``run`` finished training (its summary and final model are written)."""
    d = run.fold_dir(fold)
    return (d / "train_summary.json").exists() and (d / "model_final.pt").exists()


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
                 "training_cohort": state.get("training_cohort"),
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

    For example ``find_models("results/synthetic-cpu/cpu")`` gives the run's ``fold_0/model_final.pt``,
    ``fold_1/model_final.pt``, ... in fold order.
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


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cohort_of_run(model_path: Path) -> dict | None:
    """The training cohort of a model written before model files recorded it: from its run folder
    (``fold_<k>/model_final.pt`` -> ``run_context.json`` and the cohort's ``dataset.json``), if still there."""
    import json

    try:
        ctx = json.loads((Path(model_path).resolve().parents[1] / "run_context.json").read_text())
    except (OSError, ValueError, IndexError):
        return None
    synthetic = None
    try:
        synthetic = json.loads((Path(ctx["data_dir"]) / "dataset.json").read_text()).get("synthetic")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if not isinstance(synthetic, bool) and ctx.get("builtin_cohort"):
        synthetic = True
    return {"name": ctx.get("cohort"), "synthetic": synthetic if isinstance(synthetic, bool) else None,
            "recorded_in": "the run folder's run_context.json (the model file does not record it)"}


def model_identity(path: str | Path, meta: dict) -> dict:
    """What a report says of one model file: path, SHA-256, fold, profile and training cohort."""
    cohort = meta.get("training_cohort") or _cohort_of_run(Path(path)) or {"name": None, "synthetic": None}
    return {"path": str(path), "sha256": file_sha256(path), "fold": meta.get("fold"),
            "profile": meta["profile"].name, "training_cohort": cohort}


@dataclass
class Ensemble:
    """The fold models ``sscild segment`` averages, and where they came from.

    ``identity`` holds :func:`model_identity` of each model file (hash, fold, training cohort).
    """

    nets: list
    profile: Profile
    paths: list[Path]
    choice: str
    identity: list[dict] | None = None

    @property
    def training_cohort(self) -> dict:
        """``{"name", "synthetic"}`` of the cohort the models were trained on (``synthetic``: True when any
        model's cohort was synthetic, None when no model says)."""
        cohorts = [m["training_cohort"] for m in (self.identity or [])]
        names = sorted({str(c.get("name")) for c in cohorts if c.get("name")})
        flags = [c.get("synthetic") for c in cohorts if c.get("synthetic") is not None]
        return {"name": ", ".join(names) or None, "synthetic": (any(flags) if flags else None)}


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
    nets, settings, identity = [], set(), []
    profile = None
    for pth in paths:
        net, meta = load_fold_model(pth, device)
        check_study_model(meta)
        nets.append(net)
        identity.append(model_identity(pth, meta))
        profile = meta["profile"]
        settings.add((profile.name, profile.target_spacing, profile.hu_clip))
    if len(settings) > 1:
        raise InputError(f"the models in {paths[0].parent.parent} were trained with different preprocessing "
                         f"settings ({sorted(map(str, settings))}); use the folds of one run only.")
    return Ensemble(nets=nets, profile=profile, paths=paths, choice=choice, identity=identity)
