"""Figures of the Model & training chapter."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

__all__ = ["learning_curves"]


def learning_curves(run, folds):
    """Training loss per logged step, one line per fold, and training-batch Dice per epoch."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k in folds:
        h = pd.read_csv(run.fold_dir(k) / "history.csv")
        a1.plot(h["step"], h["loss"], lw=1, label=f"fold {k}")
        e = pd.read_csv(run.fold_dir(k) / "epochs.csv")
        a2.plot(e["step"], e["train_dice_ef"], lw=1, color=a1.lines[-1].get_color())
        a2.plot(e["step"], e["train_dice_ggo"], lw=1, ls="--", color=a1.lines[-1].get_color())
    a1.set(xlabel="iteration", ylabel="Dice + CE loss", title="training loss")
    a2.set(xlabel="iteration", ylabel="Dice on training batches", title="EF (solid) and GGO (dashed)", ylim=(0, 1))
    if folds:
        a1.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
