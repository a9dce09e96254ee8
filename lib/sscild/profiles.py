"""Run profiles: every size, budget and recipe setting lives here, in one place.

Notebooks and make receive only a profile *name*; everything else is looked up from it.

* ``smoke``: the tests' profile. Tiny synthetic volumes, 2 folds, a few dozen steps: the whole
  book runs end to end in a few minutes on 2 CPU cores. Its numbers mean nothing.
* ``cpu``: the default of ``make all``. 40 synthetic patients (and 40 unlabelled ones the network
  pretrains on), 8 folds, a 2D U-Net on small slices (1.4 mm pixels, 5 mm slices: not HRCT), about
  18 minutes on 2 CPU cores.
* ``paper``: full-resolution HRCT on a GPU (mixed precision), for SICCS or a user's cohort.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

__all__ = ["Profile", "PROFILES", "get_profile", "require_profile"]


@dataclass(frozen=True)
class Profile:
    """All settings of one run profile.

    Spatial tuples are in (x, y, z) order, millimetres for spacings, voxels for shapes.
    """

    name: str
    # --- synthetic cohort (phantom) -------------------------------------------------------
    phantom_n: int
    phantom_shape: tuple[int, int, int]
    phantom_spacing: tuple[float, float, float]
    # --- preprocessing ---------------------------------------------------------------------
    target_spacing: tuple[float | None, float | None, float | None]
    """Resample to this spacing; ``None`` on an axis keeps the case's own spacing on that axis."""
    hu_clip: tuple[float, float] = (-1024.0, 600.0)
    # --- synthetic cohort: unlabelled scans --------------------------------------------------
    phantom_unlabelled: int = 0
    """Extra synthetic patients written without labels to the cohort's ``unlabelledTr/`` (other
    patients than the labelled ones), so the built-in cohort exercises learning from unlabelled scans."""
    phantom_controls: int = 0
    """Extra synthetic patients *without* lung disease written to the cohort's ``controlsTs/``: never
    trained on, scored with the fold ensemble for false lesions (healthy lung must stay healthy)."""
    # --- cross-validation ------------------------------------------------------------------
    num_folds: int = 8
    seed: int = 0
    # --- network ---------------------------------------------------------------------------
    architecture: str = "unet"
    """``"unet"``: MONAI's residual U-Net (each level one strided convolution with ``num_res_units``
    residual units; light, as it works below full resolution from the first level); ``"plain"``:
    nnU-Net's plain convolutional U-Net (MONAI ``DynUNet``: two 3x3 convolution-norm-LeakyReLU blocks
    per stage, the first stage at full resolution; ``num_res_units`` > 0 makes its blocks residual).
    ``channels`` and ``strides`` mean the same for both."""
    spatial_dims: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    dropout: float = 0.0
    norm: str = "batch"
    """Batch norm: its running statistics make whole-slice inference behave like patch training."""
    patch_size: tuple[int, ...] = (128, 128)
    """Training patch (2D: in-plane, a slice; 3D: x, y, z)."""
    # --- training --------------------------------------------------------------------------
    iterations: int = 1000
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    batch_dice: bool = False
    """Dice term over the whole batch rather than per patch (nnU-Net's "batch Dice"): a patch without
    a class then adds nothing to that class's Dice instead of pushing it towards an empty prediction."""
    intensity_aug: str = "light"
    """``"light"``: intensity shift and scale of 5 %, Gaussian noise; ``"strong"``: 15 %, plus a random
    gamma (contrast) change, for images windowed differently from one source to the next; ``"nnunet"``:
    the strong changes plus nnU-Net's Gaussian blur and low-resolution simulation, and wider rotation
    (+-20 degrees) and scaling (+-25 %) (:func:`sscild.model.augment.augment_for_profile`)."""
    lung_density_aug: float = 0.0
    """Probability of the lung-density transform per training patch (:mod:`sscild.model.augment`: the
    parenchyma band, -1000 to -700 HU, shifted by a draw from ``lung_density_hu`` while ground glass,
    vessels, denser tissue and every voxel labelled EF or GGO (with a 2-pixel fade) stay put), so lung
    darker than the training cohort's (deep inspiration, emphysema) is still found; 0: off."""
    lung_density_hu: tuple[float, float] = (-110.0, 0.0)
    """Range of that shift in HU (within -120..+150)."""
    kernel_aug: float = 0.0
    """Probability of the sharp-kernel transform per training patch (:mod:`sscild.model.augment`: edge
    overshoot and fine-grained noise of a lung reconstruction kernel, up to about 80 HU); 0: off."""
    lowres_aug: float = 0.0
    """Probability of nnU-Net's low-resolution simulation per training patch (down to half the size
    and back), for scans reconstructed with larger pixels; 0: off (the ``"nnunet"`` intensity
    augmentation has its own)."""
    deep_supervision: int = 0
    """Auxiliary outputs on this many decoder levels below the output, trained against the label at
    their size (nnU-Net's deep supervision, :mod:`sscild.model.deepsup`); 0: off. Training only."""
    optimizer: str = "adamw"
    """``"adamw"`` (AdamW at ``learning_rate``) or ``"sgd"`` (SGD with Nesterov momentum 0.99 at
    ``learning_rate``, nnU-Net's choice; it wants a higher rate, e.g. 1e-2). Both follow the same
    warm-up and polynomial decay."""
    lesion_oversample: float = 0.6
    """Share of patches centred on EF or GGO voxels (nnU-Net style foreground oversampling)."""
    semi_supervised: str = "pretrain"
    """How training uses the cohort's unlabelled scans (``unlabelledTr/``, those validation passed;
    nothing changes for a cohort without them):

    * ``"pretrain"``: self-supervised pretraining (:mod:`sscild.model.pretrain`): the network first
      learns to restore corrupted patches of the unlabelled scans for ``pretrain_steps`` steps, once
      per run (``pretrained/``), and every fold starts from those weights. It reads no label and no
      labelled scan, so no held-out patient can reach it.
    * ``"self-training"``: each fold's supervised model (``fold_<k>/teacher/``) pseudo-labels the
      scans, and the fold's model is a student trained from the teacher's weights on both.
    * ``"consistency"``: every training step also takes as many unlabelled patches as labelled ones,
      on which the network learns to agree with a mean teacher of itself (:mod:`sscild.model.consistency`;
      ``pseudo_confidence`` is the teacher's threshold), starting from the pretrained weights when
      ``pretrain_steps`` > 0.
    * ``"off"``: the unlabelled scans are validated but not used.

    Pretraining is the default: on the real CT of the external benchmark (appendix A1) it helped
    consolidation, while self-training lost to the same extra steps without unlabelled slices. The
    external check's profiles (:mod:`sscild.external.recipe`) use this setting, and ``pretrain_steps``,
    for their unlabelled slices."""
    pretrain_steps: int = 1000
    """Steps of the self-supervised pretraining (``semi_supervised="pretrain"`` or ``"consistency"``); 0: none."""
    pseudo_confidence: float = 0.9
    """Pseudo-labelled voxels (and, with consistency learning, the teacher's pixels) whose highest class
    probability is below this are ignored by the loss."""
    pseudo_share: float = 0.5
    """Share of each batch drawn from pseudo-labelled scans when self-training."""
    student_iterations: int | None = None
    """Steps of the self-trained student; ``None``: half of ``iterations``."""
    checkpoint_every: int = 100
    log_every: int = 10
    amp: bool = True
    """Mixed precision (float16 autocast); only ever used on CUDA."""
    cpu_bf16: bool = False
    """On a CPU that computes bfloat16 natively (AVX512-BF16 or AMX), train in bfloat16 autocast
    (weights, optimiser and loss stay float32). Ignored elsewhere."""
    channels_last: bool = False
    """Channels-last memory layout for the network and its inputs."""
    # --- inference -------------------------------------------------------------------------
    lesion_threshold: float | None = None
    """A voxel whose most likely class is EF or GGO is called lesion only when the ensemble's mean
    probability of EF and GGO together reaches this; otherwise normal lung (or background). ``None``:
    the plain argmax (:mod:`sscild.model.inference`)."""
    tta_flips: bool = True
    sw_batch_size: int = 16
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, **kwargs) -> "Profile":
        return replace(self, **kwargs)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        phantom_n=8,
        phantom_shape=(96, 96, 24),
        phantom_spacing=(3.6, 3.6, 10.0),
        target_spacing=(3.6, 3.6, 10.0),
        num_folds=2,
        channels=(8, 16, 32),
        strides=(2, 2),
        num_res_units=1,
        patch_size=(64, 64),
        iterations=30,
        batch_size=4,
        checkpoint_every=10,
        log_every=5,
        tta_flips=False,
        phantom_unlabelled=2,
        phantom_controls=1,
        pretrain_steps=10,
    ),
    "cpu": Profile(
        name="cpu",
        phantom_n=40,
        phantom_shape=(256, 256, 48),
        phantom_spacing=(1.4, 1.4, 6.0),
        target_spacing=(1.4, 1.4, 5.0),
        num_folds=8,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        patch_size=(128, 128),
        iterations=1000,
        batch_size=8,
        checkpoint_every=100,
        log_every=10,
        tta_flips=True,
        # bfloat16 where the CPU computes it natively (faster steps: benchmarks/train_cpu_cpu.json),
        # float32 elsewhere; what that does to the Dice: benchmarks/study_arithmetic.json
        cpu_bf16=True,
        # 40 unlabelled synthetic patients and 1000 steps of pretraining on them: what they change out of
        # fold, with paired intervals, is recorded in benchmarks/study_pretrain_cv*.csv (Model & training chapter)
        phantom_unlabelled=40,
        pretrain_steps=1000,
        # 8 patients without lung disease, scored for false lesions (Segmentation chapter)
        phantom_controls=8,
        # lesion only where the models give EF + GGO a mean probability of 0.7 or more: the screen that chose
        # it (out-of-fold Dice against no threshold, false lesion on real scans) is benchmarks/study_lesion_threshold.json
        lesion_threshold=0.7,

    ),
    "paper": Profile(
        name="paper",
        phantom_n=40,
        phantom_shape=(512, 512, 240),
        phantom_spacing=(0.7, 0.7, 1.25),
        target_spacing=(0.7, 0.7, None),
        num_folds=8,
        channels=(32, 64, 128, 256, 320),
        strides=(2, 2, 2, 2),
        patch_size=(384, 384),
        iterations=25000,
        batch_size=16,
        learning_rate=1e-3,
        checkpoint_every=500,
        log_every=50,
        sw_batch_size=32,
        tta_flips=True,
        phantom_unlabelled=40,
        phantom_controls=8,
        lesion_threshold=0.7,  # as cpu; not measured at this resolution
        pretrain_steps=5000,  # not measured on a GPU: a fifth of the training budget
    ),
}


STEPS_ENV = "SSCILD_STEPS"
"""Environment variable (make: ``STEPS=...``) that sets a token training budget from outside the
profile: ``iterations`` and ``pretrain_steps`` (where the profile pretrains) become that many steps,
and ``checkpoint_every`` / ``log_every`` are capped at it; every other setting stays the profile's.
For dry runs at full size (``scripts/paper_scale_dry_run.py``), never for results; unset in a normal run."""

SEED_ENV = "SSCILD_SEED"
"""Environment variable (make: ``SEED=...``) that replaces the profile's ``seed``: other fold splits,
pretraining and training draws, for repeating the study (the seed-to-seed spread); unset in a normal run."""


def get_profile(name: str | Profile) -> Profile:
    """Return the profile called ``name`` (a :class:`Profile` is passed through).

    With :data:`SEED_ENV` set (``make all SEED=1``), the profile's ``seed`` is that number; with
    :data:`STEPS_ENV` set (``make all STEPS=4``), its training budget is that token number of steps
    (:func:`token_steps`). The run records both with the other settings (``run_context.json``, every
    fold's recipe).
    """
    if isinstance(name, Profile):
        return name
    try:
        prof = PROFILES[name]
    except KeyError:
        raise ValueError(
            f"Unknown profile {name!r}. Choose one of: {', '.join(PROFILES)} "
            "(set it with `make all PROFILE=...` or the notebook's `profile` parameter)."
        ) from None
    steps = os.environ.get(STEPS_ENV, "").strip()
    if steps:
        prof = token_steps(prof, steps)
    seed = os.environ.get(SEED_ENV, "").strip()
    if seed:
        try:
            prof = replace(prof, seed=int(seed))
        except ValueError:
            raise ValueError(f"{SEED_ENV}={seed!r} is not a whole number (make: SEED=1).") from None
    return prof


def token_steps(profile: Profile, steps) -> Profile:
    """``profile`` with a token training budget of ``steps`` steps (:data:`STEPS_ENV`).

    >>> p = token_steps(PROFILES["paper"], 4)
    >>> p.iterations, p.pretrain_steps, p.checkpoint_every, p.log_every, p.patch_size == PROFILES["paper"].patch_size
    (4, 4, 4, 4, True)
    """
    try:
        n = int(str(steps).strip())
    except ValueError:
        raise ValueError(f"{STEPS_ENV}={steps!r} is not a whole number (make: STEPS=4).") from None
    if n < 1:
        raise ValueError(f"{STEPS_ENV}={steps!r}: a token budget needs at least 1 step.")
    return replace(profile, iterations=n, pretrain_steps=min(int(profile.pretrain_steps), n) if profile.pretrain_steps else 0,
                   checkpoint_every=min(int(profile.checkpoint_every), n), log_every=min(int(profile.log_every), n),
                   student_iterations=None if profile.student_iterations is None else min(int(profile.student_iterations), n))


def require_profile(profile) -> Profile:
    """``profile`` itself when it is a resolved :class:`Profile`; anything else is a TypeError.

    A profile is resolved once from its name (:func:`get_profile`), where a run starts: make and the
    run context, the command line, a chapter's first cell. Library functions take the resolved
    profile, so a setting can never differ between two functions of one run.

    >>> require_profile(PROFILES["smoke"]).name
    'smoke'
    >>> require_profile("smoke")
    Traceback (most recent call last):
    ...
    TypeError: expected a resolved Profile, got str 'smoke': resolve the name once with sscild.profiles.get_profile('smoke') where the run starts
    """
    if isinstance(profile, Profile):
        return profile
    raise TypeError(f"expected a resolved Profile, got {type(profile).__name__} {profile!r}: resolve the name once "
                    f"with sscild.profiles.get_profile({profile!r}) where the run starts")
