"""The real-CT appendix's tables, figures and sentences: the trained models on real chest CT.

The checks are computed by :mod:`sscild.analysis.realcheck` (lung field against the classical lung),
:mod:`sscild.analysis.false_lesions` (the called lesion, named piece by piece) and
:mod:`sscild.analysis.robustness` (broken and changed copies of the scans); the recorded runs of the
full robustness family, of the training-transform screen and of the check itself are read from
``benchmarks/`` (:func:`sscild.book.provenance.read_record`). This module formats them for the page.

* :func:`find_scans`, :func:`scans_note`: which real scans this build checks, in a note.
* :func:`lung_check`, :func:`lung_table`, :func:`lung_check_figure`: the lung field, scan by scan.
* :func:`named_false_lesions`, :func:`false_lesion_table`, :func:`largest_piece_words`,
  :func:`largest_pieces`: what the false lesions are.
* :func:`trust`: the broken copies, as a table and in the command's words.
* :func:`robustness_record`, :func:`robustness_words`, :func:`robustness_tables`, :func:`worst_case`:
  the recorded robustness family and its worst case made again with this run's models.
* :func:`screen_table`, :func:`density_aug_cv_table`: the recorded training-transform screen.
* :func:`recorded_check`: the lung check recorded with the repository.

Usage::

    folder, scans = find_scans(real_ct_dir)
    table, views = lung_check(scans, run)
    show(lung_table(table), "Real-CT lung check")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.figure
import pandas as pd

from sscild.analysis.arms import arms_table, read_arms
from sscild.analysis.false_lesions import false_lesion_summary, name_false_lesions
from sscild.analysis.realcheck import list_volumes, real_lung_check
from sscild.analysis.robustness import family, robustness_check, trust_checks
from sscild.book.plots import window_text
from sscild.book.plots.realct import lung_check_overlays
from sscild.book.provenance import read_record
from sscild.data.image import load_header
from sscild.paths import RunPaths, repo_root

__all__ = ["find_scans", "scans_note", "lung_check", "lung_table", "lung_check_figure", "window_text",
           "named_false_lesions", "false_lesion_table", "largest_piece_words", "largest_pieces", "trust",
           "robustness_record", "robustness_words", "robustness_tables", "worst_case", "screen_table",
           "density_aug_cv_table", "recorded_check"]

_ROBUSTNESS_NAMES = {"change": "change", "lung_ml": "lung (mL)", "lung_change_pct": "lung volume change (%)",
                     "lung_dice": "lung Dice", "network_lung_change_pct": "network alone: volume change (%)",
                     "network_lung_dice": "network alone: Dice", "lesion_pct": "lesion (% of lung)",
                     "lung_median_hu": "lung median (HU)"}
"""Columns of the recorded robustness tables, in order, as the page names them."""

_SCREEN_CHANGES = ((("chest-ct-1.nrrd", "lung -70 HU"), "ct-1 lung -70 HU"),
                   (("chest-ct-2.nrrd", "lung -70 HU"), "ct-2 lung -70 HU"),
                   (("chest-ct-1.nrrd", "panlobular emphysema 40 %"), "ct-1 panlobular 40 %"))
"""The changed copies whose network-alone volume change the screen table shows: (scan, change), column."""

_SCREEN_NOISE = ("chest-ct-2.nrrd", "sharp kernel, noise 80 HU")
"""The changed copy whose lesion share the screen table shows."""


# --------------------------------------------------------------------------------------------
# the scans, and the lung field scan by scan
# --------------------------------------------------------------------------------------------


def find_scans(real_ct_dir) -> tuple[Path | None, list[Path]]:
    """The folder of real scans (given, or ``../shared/data/real-ct`` beside the repository when it
    exists) and the CT volumes in it (:func:`~sscild.analysis.realcheck.list_volumes`; none without a folder)."""
    if real_ct_dir in (None, ""):
        default = repo_root().parent / "shared" / "data" / "real-ct"
        real_ct_dir = default if default.is_dir() else None
    scans = list_volumes(real_ct_dir) if real_ct_dir is not None and Path(real_ct_dir).is_dir() else []
    return real_ct_dir, scans


def scans_note(run: RunPaths, real_ct_dir, scans: list[Path]) -> str:
    """The note over the chapter: which models check which scans, or how to give the build real scans."""
    if not scans:
        return (":::{note}\n**No real CT volumes were given to this build**, so the check did not run here. "
                "Run it with `make all REAL_CT=/path/to/folder` (a folder of chest CT volumes in HU: .nrrd, "
                ".nii.gz or .mha). The recorded result below comes from `scripts/check_real_ct.py`.\n:::")
    return (f":::{{note}}\nModels: the {run.profile!r} run of cohort `{run.cohort}`. "
            f"Real scans: {len(scans)} volume(s) from `{Path(real_ct_dir).name}`.\n:::")


def lung_check(scans: list[Path], run: RunPaths) -> tuple[pd.DataFrame, dict]:
    """:func:`~sscild.analysis.realcheck.real_lung_check` of ``scans`` with the run's fold ensemble."""
    return real_lung_check(scans, run.root)


def lung_table(table: pd.DataFrame) -> pd.DataFrame:
    """The lung check's table as the page shows it (without the voxel grid's shape)."""
    return table.drop(columns=["shape"])


def lung_check_figure(views: dict, table: pd.DataFrame) -> matplotlib.figure.Figure:
    """Three levels of each scan: raw slice, then the network's labels over the classical lung's outline."""
    return lung_check_overlays(views, table)


# --------------------------------------------------------------------------------------------
# what the false lesions are
# --------------------------------------------------------------------------------------------


def named_false_lesions(views: dict) -> dict[str, pd.DataFrame]:
    """Per scan, every piece of the called lesion named (:func:`~sscild.analysis.false_lesions.name_false_lesions`)."""
    return {name: name_false_lesions(v["hu"], v["label"], v["affine"]) for name, v in views.items()}


def false_lesion_table(pieces: pd.DataFrame) -> pd.DataFrame:
    """One scan's named pieces added up by name, with the page's column names."""
    return false_lesion_summary(pieces).rename(
        columns={"pieces": "pieces", "ml": "volume (mL)", "share_of_lesion_pct": "share of the called lesion (%)"})


def largest_piece_words(named: dict[str, pd.DataFrame]) -> str:
    """One sentence per scan with called lesion: its largest piece, its volume, share and name."""
    biggest = {n: t.iloc[0] for n, t in named.items() if len(t)}
    return " ".join(f"On {n} the largest piece ({r['ml']:.1f} mL, {r['share_of_lesion_pct']:.0f} % of the called "
                    f"lesion) is *{r['name']}*." for n, r in biggest.items())


def largest_pieces(pieces: pd.DataFrame, n: int = 12) -> pd.DataFrame:
    """The ``n`` largest named pieces of one scan, with the page's column names."""
    return pieces.head(n).rename(columns={"ml": "volume (mL)", "ef_ml": "EF (mL)", "ggo_ml": "GGO (mL)",
                                          "share_of_lesion_pct": "share (%)", "slice": "slice (from the feet)",
                                          "measured": "what the rule measured"})


# --------------------------------------------------------------------------------------------
# broken and changed copies
# --------------------------------------------------------------------------------------------


def trust(scans: list[Path], run: RunPaths) -> tuple[pd.DataFrame, str]:
    """The broken copies of each scan (:func:`~sscild.analysis.robustness.trust_checks`): the outcome
    table, and what the command said about each copy, one paragraph per copy."""
    table = trust_checks(scans, run.root)
    words = "\n\n".join(f"*{r.scan}, {r.copy}:* {r.said}" for r in table.itertuples())
    return table.drop(columns=["said"]), words


def robustness_record() -> dict | None:
    """The recorded robustness family (``benchmarks/real_ct_robustness.json``), or ``None``."""
    return read_record("real_ct_robustness.json")


def robustness_words(rob: dict | None) -> str:
    """What the recorded robustness family found: when, with what, how many copies met each aim, the worst."""
    if rob is None:
        return "No robustness record in `benchmarks/` (`scripts/check_robustness.py` writes it)."
    met, worst = rob["met"], rob["worst"]
    return (f"Recorded {rob['date']} at commit `{rob['commit'][:12]}` on {rob['processor']} "
            f"({rob['models']}), `{rob['command']}`. Lung volume within "
            f"{rob['aims']['lung_change_pct_within']:g} %: **{met['lung_volume']}** changed copies; "
            f"lung Dice at least {rob['aims']['lung_dice_at_least']:g}: **{met['lung_dice']}**. "
            f"Worst: {worst['scan']}, {worst['change']} (Dice {worst['lung_dice']:.3f}, "
            f"volume {worst['lung_change_pct']:+.1f} %). The network alone (before the lung completion "
            f"added the air-filled lung it left out): volume within the aim "
            f"**{met.get('network_lung_volume', 'not recorded')}**, Dice "
            f"**{met.get('network_lung_dice', 'not recorded')}**.")


def robustness_tables(rob: dict) -> list[tuple[str, pd.DataFrame]]:
    """The recorded robustness family, one table per scan (indexed by change), in the record's order."""
    rtab = pd.DataFrame(rob["rows"])
    return [(scan_name, part[[c for c in _ROBUSTNESS_NAMES if c in part.columns]]
             .rename(columns=_ROBUSTNESS_NAMES).set_index("change"))
            for scan_name, part in rtab.groupby("scan", sort=False)]


def worst_case(rob: dict, scans: list[Path], run: RunPaths
               ) -> tuple[matplotlib.figure.Figure, pd.DataFrame] | None:
    """The record's worst change made again with this run's models on its scan: the overlays of the
    unchanged and the changed scan, and their lung measures; ``None`` when that scan is not given."""
    worst = rob["worst"]
    wscan = [p for p in scans if p.name == worst["scan"]]
    if not wscan:
        return None
    pick = [c for c in family(load_header(wscan[0]).spacing) if c.name in ("unchanged", worst["change"])]
    wtab, wviews = robustness_check(wscan, run.root, changes=pick, keep_views="all", progress=False)
    wtab = wtab.assign(scan=[f"{s}, {c}" for s, c in zip(wtab["scan"], wtab["change"])])
    wviews = {f"{s}, {c}": v for (s, c), v in wviews.items()}
    cols = ["scan", "lung_ml", "lung_change_pct", "lung_dice", "network_lung_change_pct", "network_lung_dice",
            "lesion_pct"]
    return lung_check_overlays(wviews, wtab), wtab[cols].rename(columns=_ROBUSTNESS_NAMES)


# --------------------------------------------------------------------------------------------
# recorded: the training-transform screen, and the lung check itself
# --------------------------------------------------------------------------------------------


def _screen_row(variant: dict) -> dict:
    """One screened training transform: held-out Dice, false lesion on the controls, its real-CT robustness."""
    rc = {(r["scan"], r["change"]): r for r in variant["real_ct"]}
    controls = variant["controls_lesion_pct"]
    row = {"variant": variant["name"], "held-out Dice lesion": variant["dice"]["lesion"],
           "Dice EF": variant["dice"]["ef"], "Dice GGO": variant["dice"]["ggo"],
           "controls: false lesion (% of lung, mean)": sum(controls) / len(controls)}
    for key, col in _SCREEN_CHANGES:
        if key in rc:
            row[f"network alone, {col}: volume change (%)"] = rc[key]["network_lung_change_pct"]
    if _SCREEN_NOISE in rc:
        row["ct-2 sharp kernel 80 HU: lesion (% of lung)"] = rc[_SCREEN_NOISE]["lesion_pct"]
    return row


def screen_table() -> pd.DataFrame | None:
    """The training transforms screened on folds 0-1 (``benchmarks/study_robustness_screen.json``), or ``None``."""
    screen = read_record("study_robustness_screen.json")
    if screen is None:
        return None
    return pd.DataFrame([_screen_row(v) for v in screen["variants"]]).set_index("variant")


def density_aug_cv_table() -> pd.DataFrame | None:
    """The lung-density transform on all folds against the default recipe
    (``benchmarks/study_density_aug_cv.csv``, :func:`~sscild.analysis.arms.arms_table`, arms as columns), or ``None``."""
    cv_path = repo_root() / "benchmarks" / "study_density_aug_cv.csv"
    return arms_table(read_arms(cv_path)).T if cv_path.exists() else None


def recorded_check() -> tuple[str, pd.DataFrame] | None:
    """The lung check recorded with the repository (``benchmarks/real_lung_cpu.json``): a sentence
    saying how it was made, and its table; ``None`` when absent."""
    rec = read_record("real_lung_cpu.json")
    if rec is None:
        return None
    return (f"Recorded {rec['date']} with `{rec['command']}` ({rec['models']}):",
            pd.DataFrame(rec["scans"]).drop(columns=["shape"], errors="ignore"))
