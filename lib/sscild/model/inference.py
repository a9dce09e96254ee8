"""From a preprocessed volume to its label map on the network's grid: slice-wise inference, post-processing.

**Slice-wise inference** (:func:`predict_preprocessed`). The 2D network is applied to whole axial
slices of the preprocessed volume (a fully convolutional U-Net with batch norm in eval mode gives the
same answer on a whole slice as on patches), ``profile.sw_batch_size`` slices per forward pass, under
``torch.inference_mode``, with every batch norm folded into its convolution
(:func:`sscild.model.loading.fuse_batchnorm`). The out-of-fold evaluation computes in float32 on CPU;
``sscild segment`` uses bfloat16 on CPUs that compute it natively (``cpu_bf16``), about twice as fast.
With test-time augmentation (TTA) the left-right flipped slices go through the network in the same
batch and their softmax, flipped back, is averaged in. An ensemble averages the softmax of its
members (all flips of all folds weigh alike); the label is the argmax of that mean. With a **lesion
threshold** (profile setting ``lesion_threshold``), a voxel whose argmax is EF or GGO is called lesion
only when EF and GGO together reach that mean probability; otherwise it takes the more likely of
background and normal lung. Lesion the models are unsure of (on a lung without disease most of what
they call lesion is) then counts as normal lung.

**Uncertainty** (``uncertainty=True``): the entropy of that mean softmax, divided by the entropy of
four equally likely classes (``ln 4``), per voxel, as a whole percentage (uint8, 0 = every member
sure of one class, 100 = all four classes equally likely). It grows where the members disagree and
where each is unsure. 50 is the uncertainty of an even split between two classes: voxels at or above
:data:`UNCERTAIN_PCT` are counted as *uncertain*.

**One path from a volume to labels** (:func:`segment_volume`): preprocessing
(:func:`sscild.data.preprocess.preprocess_volume`), the ensemble, post-processing and the way back to
the input's voxel grid, as ``sscild segment`` and the real-CT checks run them.

**Post-processing** (:func:`keep_largest_lung_components`, on by default, also in the
out-of-fold evaluation so the Segmentation chapter scores exactly what ``sscild segment`` writes):
the lung (every non-background label) is split into 26-connected components on the network's grid;
the largest component is kept, and the second largest too when it holds at least
:data:`SECOND_LUNG_MIN_FRACTION` of the largest one's voxels (the two lungs are separate components
unless they touch). Everything else (specks in the bowel, the trachea, outside the body) becomes
background. Lesion voxels inside a kept component keep their label. When the image is given, lung
outside the patient's body (:func:`sscild.data.lungmask.body_mask`: outside air, the scanner table
and its foam mattress, which a blurred reconstruction can make look like lung) is made background
first.

**Lung completion** (:func:`complete_lung_field`, part of the post-processing). Air-filled lung is found
without any training by the classical threshold rule (:func:`sscild.data.lungmask.lung_mask_by_threshold`:
below -400 HU inside the body, large airways removed); the network is needed for the dense, diseased
lung the rule cannot see. Where the rule finds aerated lung that the network left out, in a component
of the rule's lung that the network's kept lung touches, and it amounts to more than
:data:`COMPLETE_MIN_PCT` % of the network's lung (below that the two borders differ by partial volume,
not by lung the network failed to see), that lung is added as *normal*: emphysema, bullae and
parenchyma darker than the training cohort's (deep inspiration) are then counted in the lung volume and
the denominator of every percentage, and no voxel changes between EF, GGO and normal. The voxels added
are recorded (:attr:`VolumePrediction.lung_added`), so a report can say how much lung the network alone
missed.
"""

from __future__ import annotations

import math
import dataclasses
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from dataclasses import dataclass

from sscild.data.image import Volume
from sscild.data.lungmask import body_mask
from sscild.data.preprocess import Preprocessed, denormalise, preprocess_volume, restore_label
from sscild.model.device import select_device
from sscild.model.network import native_cpu_bf16

__all__ = ["SECOND_LUNG_MIN_FRACTION", "POSTPROCESS_RULE", "UNCERTAIN_PCT", "predict_preprocessed",
           "keep_largest_lung_components", "AERATED_HU", "COMPLETE_MIN_PCT", "complete_lung_field", "preprocessed_body",
           "postprocess_labels",
           "VolumePrediction", "segment_volume", "segment_preprocessed", "uses_cpu_bf16"]

UNCERTAIN_PCT = 50
"""A voxel whose uncertainty (normalised entropy, percent) is at least this is *uncertain*: as unsure as
an even split between two classes, or more."""

SECOND_LUNG_MIN_FRACTION = 0.05
"""The second largest lung component is kept when it has at least this share of the largest's voxels."""

COMPLETE_MIN_PCT = 5.0
"""The lung completion is applied only when it would add more than this share of the network's lung. Below
it, the network's border and the rule's differ by partial volume and anatomy rather than by lung the
network failed to see: on the 40 synthetic patients (out of fold) the rule would have added 0-3.7 %,
mostly outside the reference lung (the gastric fundus under a thin diaphragm, joined to the lung base
on the 1.4 mm grid)."""

AERATED_HU = -600.0
"""Lung completion adds lung below this attenuation (and what it encloses in the slice), not the threshold
rule's border, which runs through the partial volume with the chest wall at -400 HU."""


POSTPROCESS_RULE = (
    "lung outside the patient's body (outside air, scanner table) becomes background; then keep the largest "
    "26-connected component of the predicted lung (labels 1-3) and the second largest when it has at least "
    f"{SECOND_LUNG_MIN_FRACTION:.0%} of the largest's voxels; the rest becomes background; then air-filled lung "
    "found by the threshold rule (below -400 HU, large airways removed) in components the kept lung touches, "
    "and left out by the network, is added as normal lung where it is aerated (below -600 HU) or enclosed in "
    f"the slice by aerated lung, when it amounts to more than {COMPLETE_MIN_PCT:g} % of the network's lung"
)
"""One sentence for reports and the book."""


def uses_cpu_bf16(device: torch.device, cpu_bf16: bool | None) -> bool:
    """Whether inference on ``device`` runs in bfloat16 autocast: the one place this is decided.

    On a CPU, ``cpu_bf16=None`` means where the CPU computes bfloat16 natively
    (:func:`native_cpu_bf16`); ``True``/``False`` force it. Never on CUDA (float16 autocast there).
    """
    return device.type == "cpu" and (native_cpu_bf16() if cpu_bf16 is None else bool(cpu_bf16))


def predict_preprocessed(nets, pre: Preprocessed, *, tta: bool = True, batch_slices: int = 16, device=None,
                         cpu_bf16: bool | None = False, progress: bool = False, desc: str = "slices",
                         uncertainty: bool = False, lesion_threshold: float | None = None):
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
        uncertainty: also return the uncertainty map (module docstring).
        lesion_threshold: a voxel whose most likely class is EF or GGO is called lesion only when the
            mean probability of EF and GGO together reaches this; otherwise it takes the more likely of
            background and normal lung (module docstring). ``None``: the plain argmax.

    Returns:
        uint8 array of ``pre.image.shape``, labels 0..3; with ``uncertainty``, ``(labels, uncertainty)``,
        both uint8 of that shape.
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
    unc = np.zeros(img.shape, dtype=np.uint8) if uncertainty else None
    if device.type == "cuda":
        amp_dtype = torch.float16
    else:
        amp_dtype = torch.bfloat16 if uses_cpu_bf16(device, cpu_bf16) else None
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
            out[:, :, z0:z1] = np.moveaxis(_decide(acc, lesion_threshold).cpu().numpy(), 0, 2)
            if unc is not None:
                unc[:, :, z0:z1] = np.moveaxis(_entropy_pct(acc).cpu().numpy(), 0, 2)
            if bar is not None:
                bar.update(b)
    if bar is not None:
        bar.close()
    return (out, unc) if uncertainty else out


def complete_lung_field(label: np.ndarray, hu: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Add the air-filled lung the network left out, as normal lung (module docstring).

    The candidates are the threshold rule's lung that the network left out, in the rule's components
    its kept lung touches, where aerated (below :data:`AERATED_HU`) or enclosed in the slice by aerated
    lung (vessels). They are added only when they amount to more than :data:`COMPLETE_MIN_PCT` % of the
    network's lung; otherwise nothing changes.

    Args:
        label: (x, y, z) labels after :func:`keep_largest_lung_components`.
        hu: the CT in HU on the same grid; ``spacing``: its voxel size (mm).

    Returns:
        ``(labels, added)``: the completed labels and the boolean mask of the voxels added.

    Example:
        >>> hu = np.full((40, 40, 6), -1000.0); hu[5:35, 5:35] = 40; hu[10:18, 10:30] = -850
        >>> hu[13, 12:28:4] = 40                                            # vessels
        >>> lab = np.zeros(hu.shape, np.uint8); lab[10:18, 10:20] = 1      # the network found half the lung
        >>> out, added = complete_lung_field(lab, hu, (1.0, 1.0, 1.0))
        >>> int((out == 1).sum()), int(added.sum())
        (960, 480)
    """
    from scipy import ndimage as ndi

    from sscild.data.lungmask import fill_holes_in_plane, lung_mask_by_threshold

    label = np.asarray(label)
    hu = np.asarray(hu)
    net = label > 0
    classical = lung_mask_by_threshold(hu, spacing)
    comp, n = ndi.label(classical, structure=np.ones((3, 3, 3), bool))
    touched = np.unique(comp[net & classical])
    touched = touched[touched > 0]
    if not touched.size:
        return label.copy(), np.zeros(label.shape, bool)
    cand = np.isin(comp, touched) & ~net
    # clearly aerated lung, and what it encloses with the network's lung in the slice (vessels); not the
    # rule's looser border (-600 to -400 HU: partial volume with the chest wall)
    airy = cand & (hu < AERATED_HU)
    added = cand & fill_holes_in_plane(net | airy, spacing)
    if int(added.sum()) < COMPLETE_MIN_PCT / 100.0 * int(net.sum()):
        return label.copy(), np.zeros(label.shape, bool)   # the network's own border stands
    out = label.copy()
    out[added] = 1
    return out, added


def postprocess_labels(label_pre: np.ndarray, pre: Preprocessed, profile) -> tuple[np.ndarray, np.ndarray]:
    """The whole post-processing on the network's grid: body, largest components, lung completion.

    Returns ``(labels, added)`` (:func:`complete_lung_field`).
    """
    hu = denormalise(pre.image, profile)
    lab = keep_largest_lung_components(label_pre, body=body_mask(hu, pre.spacing))
    return complete_lung_field(lab, hu, pre.spacing)


def preprocessed_body(pre: Preprocessed, profile) -> np.ndarray:
    """The patient's body (:func:`sscild.data.lungmask.body_mask`) on a preprocessed volume's grid."""
    return body_mask(denormalise(pre.image, profile), pre.spacing)


def _decide(acc: torch.Tensor, lesion_threshold: float | None) -> torch.Tensor:
    """Labels (uint8) from the summed softmax ``acc`` (b, 4, X, Y): argmax, with the lesion threshold."""
    lab = acc.argmax(1)
    if lesion_threshold is not None:
        prob = acc / acc.sum(1, keepdim=True).clamp_min(1e-12)
        weak = (lab >= 2) & (prob[:, 2] + prob[:, 3] < float(lesion_threshold))
        lab = torch.where(weak, prob[:, :2].argmax(1), lab)
    return lab.to(torch.uint8)


def _entropy_pct(acc: torch.Tensor) -> torch.Tensor:
    """Normalised entropy (percent, uint8) of the summed softmax ``acc`` (b, C, X, Y)."""
    prob = acc / acc.sum(1, keepdim=True).clamp_min(1e-12)
    h = -(prob * prob.clamp_min(1e-12).log()).sum(1) / math.log(acc.shape[1])
    return (h * 100.0).round().clamp(0, 100).to(torch.uint8)


def keep_largest_lung_components(label: np.ndarray, *, min_fraction: float = SECOND_LUNG_MIN_FRACTION,
                                 body: np.ndarray | None = None) -> np.ndarray:
    """Keep the one or two largest 26-connected lung components of a label map (see the module docstring).

    Args:
        label: (x, y, z) label map, 0 background, 1..3 lung classes.
        min_fraction: the second component is kept when its size is at least this share of the
            largest's.
        body: the patient's body (bool, same shape, :func:`sscild.data.lungmask.body_mask`); lung
            outside it becomes background first. ``None``: no body restriction.

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
    if body is not None:
        if body.shape != label.shape:
            raise ValueError(f"body mask shape {body.shape} differs from the label map's {label.shape}")
        label = np.where(body, label, 0).astype(label.dtype)
        lung &= body
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


@dataclass
class VolumePrediction:
    """A volume's labels from :func:`segment_volume` or :func:`segment_preprocessed`.

    Attributes:
        label: uint8 labels on the input's voxel grid (0 background, 1 normal, 2 EF, 3 GGO).
        uncertainty: uint8 uncertainty (percent, module docstring) on the input's grid, or ``None``.
        pre: the preprocessed volume the networks saw (its grid and geometry record).
        label_pre: the labels on that grid (after post-processing).
        uncertainty_pre: the uncertainty on that grid, or ``None``.
        seconds: wall time of ``preprocess`` (:func:`segment_volume` only), ``predict`` and
            ``postprocess_and_restore``.
        lung_added: voxels the lung completion added as normal lung (bool, the input's grid; all
            ``False`` without post-processing).
        lung_added_pre: the same on the network's grid.
    """

    label: np.ndarray
    uncertainty: np.ndarray | None
    pre: Preprocessed
    label_pre: np.ndarray
    uncertainty_pre: np.ndarray | None
    seconds: dict
    lung_added: np.ndarray | None = None
    lung_added_pre: np.ndarray | None = None


def segment_volume(vol: Volume, nets, profile, *, tta: bool | None = None, postprocess: bool = True, device=None,
                   cpu_bf16: bool | None = None, uncertainty: bool = False, progress: bool = False,
                   desc: str = "segmenting", case_id: str = "scan") -> VolumePrediction:
    """Labels of a CT volume in HU by the ensemble ``nets``: preprocess, then :func:`segment_preprocessed`.

    Args:
        vol: the CT (:class:`~sscild.data.image.Volume`, HU, any orientation).
        nets, profile, tta, postprocess, device, cpu_bf16, uncertainty, progress, desc: as
            :func:`segment_preprocessed`.

    Returns:
        :class:`VolumePrediction`.
    """
    t0 = time.perf_counter()
    pre = preprocess_volume(vol, None, profile=profile, case_id=case_id)
    t_pre = round(time.perf_counter() - t0, 2)
    res = segment_preprocessed(nets, pre, profile, tta=tta, postprocess=postprocess, device=device, cpu_bf16=cpu_bf16,
                               uncertainty=uncertainty, progress=progress, desc=desc)
    return dataclasses.replace(res, seconds={"preprocess": t_pre, **res.seconds})


def segment_preprocessed(nets, pre: Preprocessed, profile, *, tta: bool | None = None, postprocess: bool = True,
                         device=None, cpu_bf16: bool | None = None, uncertainty: bool = False, progress: bool = False,
                         desc: str = "segmenting") -> VolumePrediction:
    """Labels of a preprocessed case by the ensemble ``nets``: predict, post-process, restore to the scan's grid.

    The one path from a case to its label map: ``sscild segment``, the controls, the real-CT checks
    (through :func:`segment_volume`) and the out-of-fold prediction of the study (on the cached case)
    all come here, so the lesion threshold, flip averaging and post-processing cannot differ between them.

    Args:
        nets: the networks (one or a list); ``profile``: the profile they were trained with (its batch
            of slices, its ``lesion_threshold`` and, when ``tta`` is ``None``, its ``tta_flips``).
        pre: the preprocessed case (:func:`~sscild.data.preprocess.preprocess_volume` or the cache).
        postprocess: :func:`postprocess_labels` (body, largest components, lung completion).
        tta: left-right flip averaging; ``None`` (the default, what every caller but a screen uses):
            the profile's ``tta_flips``.
        cpu_bf16, device, progress, desc: as :func:`predict_preprocessed`; ``cpu_bf16=None`` (the
            default): bfloat16 where the CPU computes it natively (:func:`uses_cpu_bf16`). Only the
            out-of-fold evaluation passes ``False`` (float32, so the study's Dice does not depend on the
            CPU's arithmetic).
        uncertainty: also compute the uncertainty map (background outside the network's crop is 0).

    Returns:
        :class:`VolumePrediction` (``seconds``: predict, post-process and restore).
    """
    tta = bool(profile.tta_flips) if tta is None else bool(tta)
    t1 = time.perf_counter()
    res = predict_preprocessed(nets, pre, tta=tta, batch_slices=profile.sw_batch_size, device=device,
                               cpu_bf16=cpu_bf16, progress=progress, desc=desc, uncertainty=uncertainty,
                               lesion_threshold=profile.lesion_threshold)
    lab_pre, unc_pre = res if uncertainty else (res, None)
    t2 = time.perf_counter()
    added_pre = np.zeros(lab_pre.shape, bool)
    if postprocess:
        lab_pre, added_pre = postprocess_labels(lab_pre, pre, profile)
    label = restore_label(lab_pre, pre.info)
    added = (restore_label(added_pre.astype(np.uint8), pre.info) > 0 if added_pre.any()
             else np.zeros(label.shape, bool))
    unc = restore_label(unc_pre, pre.info) if unc_pre is not None else None
    seconds = {"predict": round(t2 - t1, 2), "postprocess_and_restore": round(time.perf_counter() - t2, 2)}
    return VolumePrediction(label=label, uncertainty=unc, pre=pre, label_pre=lab_pre, uncertainty_pre=unc_pre,
                            seconds=seconds, lung_added=added, lung_added_pre=added_pre)
