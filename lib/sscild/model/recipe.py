"""The training recipe as a table (generated from a profile, shown in the Model & training chapter)."""

from __future__ import annotations

import pandas as pd

from sscild.model.network import build_network, count_parameters, network_words
from sscild.model.selftrain import semi_mode
from sscild.profiles import Profile, require_profile

__all__ = ["recipe_table"]


def recipe_table(profile: Profile) -> pd.DataFrame:
    p = require_profile(profile)
    rows = [
        ("network", network_words(p)),
        ("parameters", f"{count_parameters(build_network(p)):,}"),
        ("input", f"1 channel: HU clipped to {list(p.hu_clip)}, linearly scaled"),
        ("resampling", "in-plane and slice spacing " + ", ".join("native" if s is None else f"{s} mm" for s in p.target_spacing)),
        ("patch", f"{list(p.patch_size)} voxels, axial"),
        ("sampling", f"{p.lesion_oversample:.0%} of patches centred on EF/GGO, the rest on random lung voxels"),
        ("augmentation", "flips, rotation +-15 deg, scaling +-15 %, intensity shift/scale "
                         + ("+-15 %, random gamma 0.7-1.5" if p.intensity_aug == "strong" else "+-5 %")
                         + ", Gaussian noise (MONAI)"),
        ("loss", "Dice + cross-entropy (monai.losses.DiceCELoss), softmax, 4 classes, Dice over "
                 + ("the whole batch" if p.batch_dice else "each patch")
                 + (f"; deep supervision on {p.deep_supervision} decoder level(s) below the output"
                    if p.deep_supervision else "")),
        ("batches", "made in the training process on CPU; by loader processes on CUDA "
                    "(a batch depends only on seed, fold and step)"),
        ("optimiser", f"{'SGD (Nesterov, momentum 0.99)' if p.optimizer == 'sgd' else 'AdamW'}, lr {p.learning_rate:g}, "
                      f"weight decay {p.weight_decay:g}, warm-up then poly(0.9) decay"),
        ("budget", f"{p.iterations} iterations x batch {p.batch_size}"),
        ("unlabelled scans (when the cohort has unlabelledTr/)", {
            "pretrain": f"self-supervised pretraining: {p.pretrain_steps} iterations restoring corrupted patches "
                        "(hidden rectangles, noise; L1), once per run; every fold starts from those weights",
            "self-training": f"self-training: each fold's supervised teacher pseudo-labels them (voxels below "
                             f"{p.pseudo_confidence:g} confidence ignored), a student continues on both",
            "consistency": f"consistency learning: every step also takes {max(2, p.batch_size)} unlabelled patches; "
                           f"the student matches, on a strongly perturbed view (intensity changes, CutMix), a "
                           f"mean teacher's labels of a weakly perturbed one (pixels below {p.pseudo_confidence:g} "
                           "confidence ignored)" + (f"; from weights pretrained {p.pretrain_steps} iterations on them"
                                                    if p.pretrain_steps else ""),
            "off": "validated, not used"}[semi_mode(p)]),
        ("checkpoints", f"every {p.checkpoint_every} iterations (resumable)"),
        ("mixed precision", ("float16 on CUDA" if p.amp else "off on CUDA") + "; "
                            + ("bfloat16 on CPUs that compute it natively, float32 on others" if p.cpu_bf16
                               else "float32 on CPU")),
        ("test-time augmentation", "left-right flip" if p.tta_flips else "none"),
        ("folds / seed", f"{p.num_folds} / {p.seed} (fold k uses seed*1000 + k)"),
    ]
    return pd.DataFrame(rows, columns=["setting", "value"]).set_index("setting")
