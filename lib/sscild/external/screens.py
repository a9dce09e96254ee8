"""How the recipe was chosen, as tables: the recorded screens (per-slice scores in
``benchmarks/external_*_screen.csv``, written by :func:`sscild.external.search.search_recipes`; the
first screen's summary is ``benchmarks/external_recipe_search.json``), each variant against its
control with paired bootstrap intervals. How each screen was run, and why it chose what it chose,
is told in the appendix (``notebooks/A1_external.py``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sscild.evaluation.metrics import summarize
from sscild.external.scores import summarize_scores
from sscild.external.slices import CLASS_NAMES
from sscild.paths import repo_root

__all__ = [
    "semi_screen",
    "lever_screen",
    "consistency_screen",
    "budget_screen",
    "screen_table",
    "paired_gain",
    "gain_text",
]


def semi_screen(path: str | Path | None = None, *, n_boot: int = 2000) -> pd.DataFrame | None:
    """The second recipe screen (self-training and its control, fold 0) from its recorded per-slice
    scores (``benchmarks/external_semi_screen.csv``): Dice per variant with 95 % BCa intervals over
    the 10 held-out slices, pooled Dice, the paired gain over the supervised row and, for the
    self-training rows, the paired gain over the control (the same extra steps without unlabelled
    slices): the gain from the unlabelled data itself.

    ``None`` when the file is absent. Re-running it: one variant of :data:`sscild.external.search.SEARCH_VARIANTS` at a time,
    ``python -m sscild.external search TRAIN_DIR OUT --folds 0 --unlabelled-dir UNLABELLED_DIR --only VARIANT``.
    """
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_semi_screen.csv"
    if not path.exists():
        return None
    return screen_table(pd.read_csv(path, dtype={"slice_id": str}), n_boot=n_boot, baseline_name="supervised",
                        control_prefix="control", treated_prefix="self-training",
                        control_name="the unlabelled slices (vs control)")


def lever_screen(path: str | Path | None = None, *, n_boot: int = 2000) -> pd.DataFrame | None:
    """The third recipe screen (nnU-Net's levers on the two-stage recipe, folds 0-2) from its recorded
    per-slice scores (``benchmarks/external_lever_screen.csv``): Dice per variant with 95 % BCa
    intervals over the 30 held-out slices, pooled Dice and the paired gain over the first row (the
    recipe as it was). ``None`` when the file is absent. Re-running it: each variant of
    :data:`sscild.external.search.SEARCH_VARIANTS` on folds 0-2 (``--folds 0 1 2``), recorded by ``scripts/record_screen.py``."""
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_lever_screen.csv"
    if not path.exists():
        return None
    return screen_table(pd.read_csv(path, dtype={"slice_id": str}), n_boot=n_boot, baseline_name="the first row")


def consistency_screen(path: str | Path | None = None, *, n_boot: int = 2000) -> pd.DataFrame | None:
    """The fourth recipe screen (consistency learning against its control, folds 0-2) from its recorded
    per-slice scores (``benchmarks/external_consistency_screen.csv``): Dice per variant with 95 % BCa
    intervals over the 30 held-out slices, pooled Dice and the paired gain of consistency learning over
    its control (the adopted ``cpu`` recipe: the same second stage, the same steps, no unlabelled
    slices). ``None`` when the file is absent. Re-running it: the two variants of
    :data:`sscild.external.search.SEARCH_VARIANTS` named in the record, on folds 0-2, then
    ``scripts/record_screen.py``."""
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_consistency_screen.csv"
    if not path.exists():
        return None
    return screen_table(pd.read_csv(path, dtype={"slice_id": str}), n_boot=n_boot, baseline_name="its control")


def budget_screen(path: str | Path | None = None, *, n_boot: int = 2000) -> pd.DataFrame | None:
    """The fifth recipe screen (a longer CPU budget: resolution, width and steps, folds 0-2) from its
    recorded per-slice scores (``benchmarks/external_budget_screen.csv``): Dice per variant with 95 % BCa
    intervals over the 30 held-out slices, pooled Dice and the paired gain over the control (the third
    screen's base: two stages, no pretraining). ``None`` when the file is absent. Re-running it: the
    variants of :data:`sscild.external.search.SEARCH_VARIANTS` named in ``external_budget_screen.json``, on
    folds 0-2, then ``scripts/record_screen.py``."""
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_budget_screen.csv"
    if not path.exists():
        return None
    return screen_table(pd.read_csv(path, dtype={"slice_id": str}), n_boot=n_boot, baseline_name="the control")


def screen_table(df: pd.DataFrame, *, n_boot: int = 2000, baseline_name: str = "the first row",
                 control_prefix: str | None = None, treated_prefix: str | None = None,
                 control_name: str = "") -> pd.DataFrame:
    """A screen's table from per-slice scores of several variants on the same held-out slices
    (columns ``variant``, ``slice_id``, the Dice and pixel counts of
    :func:`~sscild.external.scores.score_slices`; the first variant is the baseline).

    One row per variant: Dice with 95 % BCa intervals, pooled Dice, the paired gain over the
    baseline and, for variants named ``treated_prefix...``, the paired gain over the variant named
    ``control_prefix...`` (column "gain from ``control_name``"). The per-slice scores it was made from are
    kept in ``table.attrs["scores"]``."""
    variants = list(dict.fromkeys(df["variant"]))
    base = df[df["variant"] == variants[0]].set_index("slice_id")
    control = next((v for v in variants if control_prefix and v.startswith(control_prefix)), None)
    cols = [f"dice_{n}" for n in CLASS_NAMES]
    labels = ("GGO", "consolidation")

    def gain(a: pd.DataFrame, b: pd.DataFrame) -> dict:
        g = paired_gain(a, b, n_boot=n_boot)
        return {label: gain_text(g[n]) for n, label in zip(CLASS_NAMES, labels)}

    rows = []
    for v in variants:
        d = df[df["variant"] == v].set_index("slice_id")
        if sorted(d.index) != sorted(base.index):
            raise ValueError(f"screen variant {v!r} was scored on other slices than {variants[0]!r}")
        d = d.loc[base.index]
        sm = summarize_scores(d.reset_index(), n_boot=n_boot, seed=0)
        row = {"variant": v}
        for n, label in zip(CLASS_NAMES, labels):
            lo, hi = sm[f"dice_{n}_ci"]
            row[f"Dice {label} [95% CI]"] = f"{sm[f'dice_{n}']:.3f} [{lo:.3f}, {hi:.3f}]"
        for n, label in zip(CLASS_NAMES, labels):
            row[f"pooled {label}"] = f"{sm[f'pooled_dice_{n}']:.3f}"
        g = gain(d, base) if v != variants[0] else {k: "" for k in labels}
        row |= {f"gain over {baseline_name}, {k} [95% CI]": x for k, x in g.items()}
        if control is not None:
            c = (gain(d, df[df["variant"] == control].set_index("slice_id").loc[base.index])
                 if treated_prefix and v.startswith(treated_prefix) else {k: "" for k in labels})
            row |= {f"gain from {control_name}, {k} [95% CI]": x for k, x in c.items()}
        rows.append(row)
    table = pd.DataFrame(rows).set_index("variant")
    table.attrs["scores"] = df
    return table


def gain_text(m: tuple[float, float, float]) -> str:
    """A paired gain (mean, low, high) as ``+mean [low, high]``, as the screens' tables write it."""
    return f"{m[0]:+.3f} [{m[1]:+.3f}, {m[2]:+.3f}]"


def paired_gain(a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = 2000) -> dict[str, tuple[float, float, float]]:
    """The paired per-slice gain of ``a`` over ``b`` (both indexed by slice id, with the Dice columns of
    :func:`~sscild.external.scores.score_slices`; ``a`` holds at least ``b``'s slices): class name ->
    (mean, 95 % BCa low, high), the bootstrap seeded with 0."""
    cols = [f"dice_{n}" for n in CLASS_NAMES]
    g = summarize((a.loc[b.index, cols] - b[cols]).reset_index(drop=True), columns=cols, n_boot=n_boot,
                  seed=0).set_index("metric")
    return {n: (float(g.loc[f"dice_{n}", "mean"]), float(g.loc[f"dice_{n}", "ci_low"]),
                float(g.loc[f"dice_{n}", "ci_high"])) for n in CLASS_NAMES}
