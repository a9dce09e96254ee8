"""From a preprocessed volume to its label map on the network's grid: slice-wise inference, post-processing.

**Slice-wise inference** (:func:`predict_preprocessed`). The 2D network is applied to whole axial
slices of the preprocessed volume (a fully convolutional U-Net with batch norm in eval mode gives the
same answer on a whole slice as on patches), ``profile.sw_batch_size`` slices per forward pass, under
``torch.inference_mode``, with every batch norm folded into its convolution
(:func:`sscild.model.loading.fuse_batchnorm`). The out-of-fold evaluation computes in float32 on CPU;
``sscild segment`` uses bfloat16 on CPUs that compute it natively (``cpu_bf16``), about twice as fast.
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
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from sscild.data.preprocess import Preprocessed
from sscild.model.device import select_device
from sscild.model.network import native_cpu_bf16

__all__ = ["SECOND_LUNG_MIN_FRACTION", "POSTPROCESS_RULE", "predict_preprocessed", "keep_largest_lung_components"]

SECOND_LUNG_MIN_FRACTION = 0.05
"""The second largest lung component is kept when it has at least this share of the largest's voxels."""

POSTPROCESS_RULE = (
    "keep the largest 26-connected component of the predicted lung (labels 1-3) and the second largest "
    f"when it has at least {SECOND_LUNG_MIN_FRACTION:.0%} of the largest's voxels; the rest becomes background"
)
"""One sentence for reports and the book."""


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
