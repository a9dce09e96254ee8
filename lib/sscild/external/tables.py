"""The appendix's tables: the data, this recipe beside the published numbers, the two training
stages, and the recorded GPU run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from sscild.numfmt import fmt_interval
from sscild.evaluation.metrics import summarize
from sscild.external.scores import summarize_scores
from sscild.external.slices import CLASS_NAMES, SliceImage
from sscild.paths import read_json, repo_root

__all__ = [
    "PUBLISHED",
    "describe_slices",
    "results_table",
    "PUBLISHED_LESION",
    "lesion_table",
    "semi_supervised_table",
    "compare_to_published",
    "recorded_gpu_run",
]

PUBLISHED = pd.DataFrame(
    [
        ("U-Net", 0.462, 0.421),
        ("Semi-Inf-Net & FCN8s", 0.657, 0.318),
        ("Semi-Inf-Net & multi-class U-Net", 0.639, 0.471),
        ("FSS-2019-nCov", 0.679, 0.529),
    ],
    columns=["method", "dice_ggo", "dice_consolidation"],
)
"""Published Dice on the COVID-SemiSeg 48-slice test part (Fan et al. 2020, Inf-Net; multi-class results)."""

PUBLISHED_LESION = pd.DataFrame([("Inf-Net", 0.682), ("Semi-Inf-Net", 0.739)], columns=["method", "dice_lesion"])
"""Published Dice of lung infection as one class (GGO and consolidation together) on the same 48-slice
test part (Fan et al. 2020, Inf-Net, the single-class comparison)."""


def describe_slices(slices: Mapping[str, SliceImage]) -> pd.DataFrame:
    """A one-column table describing a labelled folder: slice count, sizes, how many slices hold each
    class and each class's share of all pixels.

    Example:
        >>> lab = np.array([[0, 1], [2, 2]], np.uint8)
        >>> t = describe_slices({"a": SliceImage("a", np.zeros_like(lab), lab, Path("a.jpg"), Path("a.png"))})
        >>> t.loc["slices with consolidation", "value"], t.loc["consolidation, % of pixels", "value"]
        ('1', '50.0')
    """
    if not slices:
        raise ValueError("describe_slices: no slices")
    w = np.array([s.shape[0] for s in slices.values()])
    h = np.array([s.shape[1] for s in slices.values()])
    labs = [s.label for s in slices.values() if s.label is not None]
    tot = sum(lab.size for lab in labs) or 1
    rows = [("slices", f"{len(slices)}"),
            ("width (px), min-median-max", f"{w.min()} - {int(np.median(w))} - {w.max()}"),
            ("height (px), min-median-max", f"{h.min()} - {int(np.median(h))} - {h.max()}"),
            ("labelled slices", f"{len(labs)}")]
    display = {"ggo": "GGO", "consolidation": "consolidation"}
    for c, name in enumerate(CLASS_NAMES, start=1):
        rows.append((f"slices with {display[name]}", f"{sum(bool((lab == c).any()) for lab in labs)}"))
    for c, name in enumerate(CLASS_NAMES, start=1):
        rows.append((f"{display[name]}, % of pixels", f"{100 * sum(int((lab == c).sum()) for lab in labs) / tot:.1f}"))
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def _parts(summary: Mapping):
    """(row label, scores) of the parts the summary scored: the cross-validation, then the test part."""
    for part, label in (("cv", "this recipe, 5-fold CV on the training part (by slice)"),
                        ("test", "this recipe, trained on the training part, scored on the test part")):
        if summary.get(part):
            yield label, summary[part]


def results_table(summary: Mapping, *, published: pd.DataFrame | None = PUBLISHED) -> pd.DataFrame:
    """This recipe's Dice (cross-validation and, when run, test) beside the published test-set rows.

    Values are formatted "mean [95 % CI]"; published rows have no interval (none was published).
    """
    def f(v, ci=None):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        if ci is None or any(c is None or (isinstance(c, float) and math.isnan(c)) for c in ci):
            return f"{v:.3f}"
        return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    rows = []
    for label, r in _parts(summary):
        rows.append({"result": label, "slices": r["n_slices"],
                     "Dice GGO (mean over slices)": f(r["dice_ggo"], r["dice_ggo_ci"]),
                     "Dice consolidation (mean over slices)": f(r["dice_consolidation"], r["dice_consolidation_ci"]),
                     "pooled Dice GGO": f(r["pooled_dice_ggo"], r["pooled_dice_ggo_ci"]),
                     "pooled Dice consolidation": f(r["pooled_dice_consolidation"], r["pooled_dice_consolidation_ci"])})
    if published is not None:
        for _, p in published.iterrows():
            rows.append({"result": f"published: {p['method']} (test part)", "slices": 48,
                         "Dice GGO (mean over slices)": f(float(p["dice_ggo"])),
                         "Dice consolidation (mean over slices)": f(float(p["dice_consolidation"])),
                         "pooled Dice GGO": "", "pooled Dice consolidation": ""})
    return pd.DataFrame(rows).set_index("result")


def lesion_table(summary: Mapping, *, published: pd.DataFrame | None = PUBLISHED_LESION) -> pd.DataFrame | None:
    """This recipe's Dice of lesion as one class (cross-validation and, when run, test) beside the
    published single-class rows; ``None`` for a summary written before lesion was scored."""
    rows = []
    for label, r in _parts(summary):
        if "dice_lesion" not in r:
            return None
        rows.append({"result": label, "slices": r["n_slices"], "slices with lesion": r["n_lesion"],
                     "Dice lesion (mean over slices)": fmt_interval(r["dice_lesion"], *r["dice_lesion_ci"], 3),
                     "pooled Dice lesion": fmt_interval(r["pooled_dice_lesion"], *r["pooled_dice_lesion_ci"], 3)})
    for _, p in (published if published is not None else pd.DataFrame()).iterrows():
        rows.append({"result": f"published: {p['method']} (test part, one class)", "slices": 48,
                     "slices with lesion": "", "Dice lesion (mean over slices)": f"{float(p['dice_lesion']):.3f}",
                     "pooled Dice lesion": ""})
    return pd.DataFrame(rows).set_index("result") if rows else None


def semi_supervised_table(scores: pd.DataFrame, supervised_scores: pd.DataFrame, *, n_boot: int = 2000,
                          seed: int = 0, names: tuple[str, str] = ("supervised (fold teachers, labelled slices only)",
                                                                    "semi-supervised (self-trained fold students)")
                          ) -> pd.DataFrame:
    """Cross-validated Dice of the supervised teachers and the self-trained students, and the gain.

    Both tables hold one row per out-of-fold slice (:func:`sscild.external.runs.cross_validate`'s ``scores.csv`` and
    ``scores_supervised.csv``). The gain is the per-slice difference (student minus teacher, same
    slice), its mean with a 95 % BCa bootstrap interval over slices (:func:`sscild.evaluation.metrics.summarize`).
    ``names`` label the two rows (teacher, student).

    Example:
        >>> sup = pd.DataFrame({"slice_id": ["a", "b", "c"], "dice_ggo": [0.5, 0.6, 0.7],
        ...                     "dice_consolidation": [0.2, np.nan, 0.4], "inter_ggo": [1, 1, 1],
        ...                     "pred_ggo": [2, 2, 2], "ref_ggo": [2, 2, 2], "inter_consolidation": [0, 0, 0],
        ...                     "pred_consolidation": [1, 1, 1], "ref_consolidation": [1, 0, 1]})
        >>> semi = sup.assign(dice_ggo=sup["dice_ggo"] + 0.1)
        >>> t = semi_supervised_table(semi, sup, n_boot=200)
        >>> t.loc["gain (paired, same slices)", "Dice GGO (mean over slices)"][:6]
        '+0.100'
    """
    a = scores.set_index("slice_id")
    b = supervised_scores.set_index("slice_id")
    if sorted(a.index) != sorted(b.index):
        raise ValueError("semi_supervised_table: the two score tables must hold the same slices")
    b = b.loc[a.index]
    cols = [f"dice_{n}" for n in CLASS_NAMES]
    diff = (a[cols] - b[cols]).reset_index(drop=True)
    gain = summarize(diff, columns=cols, n_boot=max(100, int(n_boot)), seed=seed).set_index("metric")
    rows = {}
    for name, df in ((names[0], b.reset_index()), (names[1], a.reset_index())):
        sm = summarize_scores(df, n_boot=n_boot, seed=seed)
        rows[name] = {f"Dice {d} (mean over slices)": f"{sm[f'dice_{n}']:.3f} [{sm[f'dice_{n}_ci'][0]:.3f}, "
                                                      f"{sm[f'dice_{n}_ci'][1]:.3f}]"
                      for n, d in zip(CLASS_NAMES, ("GGO", "consolidation"))}
        rows[name] |= {f"pooled Dice {d}": f"{sm[f'pooled_dice_{n}']:.3f}"
                       for n, d in zip(CLASS_NAMES, ("GGO", "consolidation"))}
    rows["gain (paired, same slices)"] = {
        f"Dice {d} (mean over slices)": f"{gain.loc[f'dice_{n}', 'mean']:+.3f} [{gain.loc[f'dice_{n}', 'ci_low']:+.3f}, "
                                        f"{gain.loc[f'dice_{n}', 'ci_high']:+.3f}]"
        for n, d in zip(CLASS_NAMES, ("GGO", "consolidation"))}
    rows["gain (paired, same slices)"] |= {f"pooled Dice {d}": "" for d in ("GGO", "consolidation")}
    t = pd.DataFrame.from_dict(rows, orient="index")
    t.index.name = "cross-validation"
    t.attrs["gain"] = {n: {"mean": float(gain.loc[f"dice_{n}", "mean"]),
                           "ci": [float(gain.loc[f"dice_{n}", "ci_low"]), float(gain.loc[f"dice_{n}", "ci_high"])]}
                       for n in CLASS_NAMES}
    return t


def compare_to_published(result: Mapping, *, published: pd.DataFrame = PUBLISHED, what: str = "cross-validated") -> str:
    """Two sentences setting a result's per-slice mean Dice against the best published row of each class.

    Example:
        >>> text = compare_to_published({"dice_ggo": 0.70, "dice_ggo_ci": [0.65, 0.75],
        ...                              "dice_consolidation": 0.40, "dice_consolidation_ci": [0.30, 0.50]})
        >>> text.split(". ")[0][:71]
        'For GGO, the cross-validated Dice (0.700) is above the best published v'
    """
    out = []
    for key, name in (("ggo", "GGO"), ("consolidation", "consolidation")):
        best = published.loc[published[f"dice_{key}"].idxmax()]
        ref = float(best[f"dice_{key}"])
        v, (lo, hi) = float(result[f"dice_{key}"]), result[f"dice_{key}_ci"]
        side = "above" if v > ref else "below"
        inside = lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)) and lo <= ref <= hi
        out.append(f"For {name}, the {what} Dice ({v:.3f}) is {side} the best published value ({ref:.3f}, "
                   f"{best['method']}), which lies {'inside' if inside else 'outside'} its 95 % interval.")
    return " ".join(out)


def recorded_gpu_run(path: str | Path | None = None) -> pd.DataFrame | None:
    """The recorded GPU cross-validation of the ``paper`` external profile
    (``benchmarks/external_paper_gpu.json``) as a table: one row per fold and the pooled row.

    ``None`` when the file is absent. The numbers are a record of one run, shown for comparison with
    the ``cpu`` recipe; re-running needs a GPU (``python -m sscild.external run TRAIN OUT --profile paper``).
    """
    path = Path(path) if path is not None else repo_root() / "benchmarks" / "external_paper_gpu.json"
    if not path.exists():
        return None
    d = read_json(path)
    rows = [{"fold": str(f["fold"]), "seconds": f["seconds"], "Dice GGO": round(f["dice_ggo"], 3),
             "Dice consolidation": round(f["dice_consolidation"], 3)} for f in d.get("folds", [])]
    cv = d.get("cv") or {}
    if cv:
        def ci(key):
            lo, hi = cv[f"{key}_ci"]
            return f"{cv[key]:.3f} [{lo:.3f}, {hi:.3f}]"

        rows.append({"fold": "all 50 slices (mean [95% CI])", "seconds": round(sum(r["seconds"] for r in rows), 1),
                     "Dice GGO": ci("dice_ggo"), "Dice consolidation": ci("dice_consolidation")})
        rows.append({"fold": "pooled over slices", "seconds": "",
                     "Dice GGO": ci("pooled_dice_ggo"), "Dice consolidation": ci("pooled_dice_consolidation")})
    t = pd.DataFrame(rows).set_index("fold")
    t.attrs["meta"] = {k: d.get(k) for k in ("date", "device", "iterations", "batch", "grid", "res_units", "tta",
                                             "profile")}
    t.attrs["cv"] = cv
    return t
