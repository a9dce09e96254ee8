"""The label value that a loss skips: pixels or voxels without a trustworthy label (a teacher's
pseudo-label below its confidence threshold, in self-training and in consistency learning)."""

__all__ = ["IGNORE_LABEL"]

IGNORE_LABEL = 255
"""Skipped by :class:`sscild.model.selftrain.MaskedDiceCE` and the consistency loss
(:mod:`sscild.model.consistency`); never a class index."""
