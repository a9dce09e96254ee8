"""The Reproducibility chapter: what its notebook shows, section by section.

* :func:`environment_table`, :func:`run_settings`, :func:`step_times`: code, software, hardware, the
  profile's settings and seeds, and the wall time of each step (``runlog.json``).
* :func:`benchmark_records`: every recorded measurement of ``benchmarks/`` with its date, commit and machine.
* :func:`arithmetic_difference`, :func:`arithmetic`: how much the arithmetic (bfloat16 against float32)
  moves the held-out Dice, as a table and in words.
* :func:`train_step_tables`, :func:`fold_parallel_table`: the recorded training-step and fold-parallelism
  benchmarks.
* :func:`paper_scale`: the paper-scale dry run, stage by stage, in words and what a GPU changes.
* :func:`input_checksums`: a checksum of every input file.

The other names are the library's own, for the notebook: :func:`gpu_check_table` (the recorded GPU check)
and :func:`jobs_table` (the run's Slurm tasks).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd

from sscild.book.provenance import (git_state, gpu_check_table, paper_scale_table, paper_scale_training,
                                    read_record)
from sscild.cluster.jobs import jobs_table
from sscild.machine import describe_machine
from sscild.model.loading import file_sha256
from sscild.paths import RunPaths, read_json, repo_root, unroot
from sscild.profiles import Profile

__all__ = ["environment_table", "run_settings", "step_times", "benchmark_records", "arithmetic_difference",
           "arithmetic", "gpu_check_table", "train_step_tables", "fold_parallel_table", "paper_scale",
           "jobs_table", "input_checksums", "PACKAGES"]

PACKAGES = ["sscild", "torch", "monai", "numpy", "scipy", "pandas", "nibabel", "SimpleITK", "pydicom",
            "statsmodels", "seaborn", "matplotlib", "papermill", "jupytext", "jupyter-book"]


def environment_table() -> pd.DataFrame:
    """Code, software and hardware: git commit and whether the checkout had uncommitted changes, Python,
    platform, device and the version of each of :data:`PACKAGES`."""
    g = git_state()
    rows = [("git commit", g["commit"]),
            ("uncommitted changes", {True: "yes (dirty)", False: "no", None: "unknown"}[g["dirty"]]),
            ("python", sys.version.split()[0]),
            ("platform", platform.platform()),
            ("device", describe_machine())]
    for pkg in PACKAGES:
        try:
            rows.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    return pd.DataFrame(rows, columns=["item", "value"]).set_index("item")


def _fold_amp(run: RunPaths) -> str | None:
    """The network's number type as the folds' ``train_summary.json`` record it: ``"float32 (cpu ...)"``,
    ``"bfloat16 (cpu ...)"``, ``"float16 (cuda ...)"`` or a mix; ``None`` when no fold is trained."""
    seen = set()
    for path in sorted(Path(run.root).glob("fold_*/train_summary.json")):
        s = read_json(path)
        dtype = (s.get("numerics") or {}).get("dtype", "float16" if s.get("amp") else "float32")
        seen.add(f"{dtype} ({s.get('device', '?')})")
    return ", ".join(sorted(seen)) or None


def run_settings(run: RunPaths, profile: Profile) -> pd.DataFrame:
    """The run's cohort, profile, results folder and seeds, and every setting of the profile (mixed
    precision as set and as the folds computed)."""
    rows = [("cohort", run.cohort), ("profile", profile.name), ("results folder", unroot(run.root.resolve())),
            ("base seed", profile.seed), ("fold seeds", f"seed*1000 + k for k in 0..{profile.num_folds - 1}")]
    used = _fold_amp(run)
    for k, v in profile.to_dict().items():
        if k == "amp":
            # one answer for the page: the setting means "on CUDA", and what the folds did is recorded
            v = (f"{'on CUDA only' if v else 'off'}; this run's folds computed in {used}" if used
                 else ("on CUDA only" if v else "off"))
        if k not in ("name", "seed", "extra"):
            rows.append((k, str(v)))
    return pd.DataFrame(rows, columns=["setting", "value"]).set_index("setting")


def step_times(run: RunPaths) -> pd.DataFrame:
    """Each step of ``runlog.json``: its latest execution, and the longest, which did the work.

    A step re-run after its outputs exist (a finished fold, say) takes seconds, so the latest time
    alone would hide what the step cost; ``longest s`` keeps it. Empty table if there is no log.
    """
    cols = ["status", "latest s", "longest s", "runs", "started", "parameters"]
    if not run.runlog.exists():
        return pd.DataFrame(columns=["step", *cols]).set_index("step")
    steps = read_json(run.runlog)["steps"]
    groups: dict[str, list[dict]] = {}
    for s in steps:
        groups.setdefault(s["step"], []).append(s)
    rows = []
    for k, runs in groups.items():
        last = runs[-1]
        ok = [float(r["seconds"]) for r in runs if r.get("status") == "ok" and r.get("seconds") is not None]
        rows.append({"step": k, "status": last["status"], "latest s": last["seconds"],
                     "longest s": max(ok) if ok else None, "runs": len(runs), "started": last["started"],
                     "parameters": unroot(", ".join(f"{a}={b}" for a, b in last.get("parameters", {}).items()))})
    return pd.DataFrame(rows).set_index("step")


def _last_commit(path: Path) -> str | None:
    """The commit that last changed ``path`` (short hash), or ``None`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h %ad", "--date=short", "--", str(path)],
                             cwd=path.parent, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out or None


def _machine_text(d: dict) -> str:
    m = d.get("machine")
    if isinstance(m, dict):
        return ", ".join(f"{v}" + (" cores" if k == "cores" else "") for k, v in m.items() if k in ("cpu", "cores", "gpu"))
    for key in ("gpu", "processor", "cpu"):
        if d.get(key):
            return str(d[key])
    return "not recorded"


def benchmark_records(folder: str | Path | None = None) -> pd.DataFrame:
    """Every recorded measurement in ``benchmarks/``: what, when, on which commit and machine, by which command.

    A JSON record names its commit when it was measured with one (``commit``); for the others, and for CSV
    records, the commit that added or last changed the file is given and marked as such.
    """
    folder = Path(folder) if folder is not None else repo_root() / "benchmarks"
    rows = []
    for path in sorted(folder.glob("*")):
        if path.suffix not in (".json", ".csv"):
            continue
        d = {}
        if path.suffix == ".json":
            try:
                d = json.loads(path.read_text())
            except ValueError:
                d = {}
        if not isinstance(d, dict):
            d = {}
        last = _last_commit(path)
        commit = (f"{d['commit']} (measured on)" if d.get("commit") else
                  f"{last} (committed in; the record names none)" if last else "not recorded")
        rows.append({"record": path.name, "what": str(d.get("what", "arm record: per-patient metrics of each arm"
                                                              if path.suffix == ".csv" else ""))[:160],
                     "date": d.get("date", "not recorded"), "commit": commit, "machine": _machine_text(d),
                     "command": d.get("benchmark_command") or d.get("command") or "not recorded"})
    return pd.DataFrame(rows, columns=["record", "what", "date", "commit", "machine", "command"]).set_index("record")


def arithmetic_difference(path: str | Path | None = None) -> pd.DataFrame | None:
    """How much the arithmetic moves the results: per-patient held-out Dice of the default recipe trained
    in bfloat16 (where the CPU computes it natively, as the recorded machine does) against the same seed
    trained in float32 (what a CPU without native bfloat16 runs), from ``benchmarks/study_arithmetic.json``
    (``scripts/screen_training.py``, variants ``base`` and ``float32``). ``None`` without the record.

    One row per class: patients, mean difference (float32 - bfloat16), mean and largest absolute
    per-patient difference, and the two means.
    """
    rec = read_record("study_arithmetic.json", path)
    if rec is None:
        return None
    by = {v["name"]: v for v in rec.get("variants", [])}
    if not {"base", "float32"} <= set(by):
        return None
    base = pd.DataFrame(by["base"]["dice"]["per_case"]).set_index("case")
    f32 = pd.DataFrame(by["float32"]["dice"]["per_case"]).set_index("case")
    rows = []
    for cls, name in (("lesion", "total lesion"), ("ef", "EF"), ("ggo", "GGO"), ("lung", "lung")):
        d = (f32[cls] - base[cls]).dropna()
        rows.append({"class": name, "patients": int(len(d)), "mean difference": round(float(d.mean()), 4),
                     "mean |difference|": round(float(d.abs().mean()), 4),
                     "largest |difference|": round(float(d.abs().max()), 4),
                     "bfloat16 mean Dice": round(float(base[cls].mean()), 3),
                     "float32 mean Dice": round(float(f32[cls].mean()), 3)})
    return pd.DataFrame(rows).set_index("class")


def arithmetic(path: str | Path | None = None, seeds_path: str | Path | None = None
               ) -> tuple[pd.DataFrame | None, str]:
    """:func:`arithmetic_difference` and a paragraph on it: how far float32 moved a patient's Dice, set
    beside the spread of the study's mean Dice between seeds (``benchmarks/study_seed_spread.json``) when
    that is recorded. Without the comparison: ``None`` and a sentence saying so."""
    arith = arithmetic_difference(path)
    if arith is None:
        return None, "The arithmetic comparison is not recorded in this checkout (`benchmarks/study_arithmetic.json`)."
    seeds = (read_record("study_seed_spread.json", seeds_path) or {}).get("across_seeds", {}).get("mean_dice")
    les = arith.loc["total lesion"]
    return arith, (
        f"Over {int(les['patients'])} held-out patients, float32 moved a patient's total-lesion Dice by "
        f"{les['mean |difference|']:.3f} on average and by up to {les['largest |difference|']:.3f}; the mean over "
        f"them by {les['mean difference']:+.3f}. EF and GGO moved by {arith.loc['EF', 'mean |difference|']:.3f} and "
        f"{arith.loc['GGO', 'mean |difference|']:.3f} per patient on average. A re-run on another kind of machine "
        "should be expected to differ by about this much."
        + (f" For scale, the mean total-lesion Dice of the whole study moves by SD {seeds['lesion']['sd']:.3f} "
           f"between seeds (EF {seeds['ef']['sd']:.3f}, GGO {seeds['ggo']['sd']:.3f}; "
           "`benchmarks/study_seed_spread.json`, Segmentation page)." if seeds else ""))


def train_step_tables(path: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None] | None:
    """The recorded training-step benchmark (``benchmarks/train_cpu_cpu.json``, ``scripts/bench_train.py``):
    the step, its phases and overhead ratio; and the pure network step under other numeric settings
    (``None`` when not recorded). ``None`` when there is no record."""
    rec = read_record("train_cpu_cpu.json", path)
    if rec is None:
        return None
    num = rec["numerics"]
    rows = [("recorded", f"{rec['date']}: `{rec['benchmark_command']}`"), ("device", rec["device"]),
            ("load before the run", rec.get("load_before")),
            ("batch", " x ".join(map(str, rec["batch"]))),
            ("numerics", f"autocast {num['autocast']} ({num['dtype']}), channels-last {num['channels_last']}"),
            ("real step", f"{rec['real_s_per_step']:.4f} s ({rec['real_steps_per_s']} steps/s)"),
            ("pure network step", f"{rec['pure_network_s_per_step']:.4f} s"),
            ("overhead ratio (pure / real)", f"{rec['overhead_ratio']:.3f}")]
    rows += [(f"phase: {k}", f"{v * 1000:.1f} ms") for k, v in rec["phases_s"].items()]
    variants = pd.DataFrame(rec["variants"]).set_index("variant") if rec.get("variants") else None
    return pd.DataFrame(rows, columns=["", "value"]).set_index(""), variants


def fold_parallel_table(path: str | Path | None = None) -> pd.DataFrame | None:
    """The recorded fold-parallelism benchmark (``benchmarks/fold_parallel_cpu.json``, ``scripts/bench_folds.py``):
    one fold on every core against one fold per core side by side; ``None`` when there is no record."""
    rec = read_record("fold_parallel_cpu.json", path)
    if rec is None:
        return None
    n = rec["cores"]
    rows = [("recorded", f"{rec['date']}: `{rec['benchmark_command']}`"),
            ("processor", rec.get("processor")), ("cores", n),
            (f"one fold on {n} threads", f"{rec['one_fold_all_cores_steps_per_s']:.2f} steps/s"),
            (f"{n} folds side by side, 1 thread each",
             f"{rec['side_by_side_total_steps_per_s']:.2f} steps/s together "
             f"({', '.join(f'{v:.2f}' for v in rec['side_by_side_steps_per_s'])})"),
            ("throughput ratio (side by side / one fold)", f"{rec['throughput_ratio']:.2f}")]
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def paper_scale(path: str | Path | None = None) -> tuple[str, pd.DataFrame, str | None, pd.DataFrame] | None:
    """The paper-scale dry run (``benchmarks/paper_scale_cpu.json``, :func:`sscild.book.provenance.paper_scale_table`):
    a paragraph on the recorded machine, cohort and peaks, the stage-by-stage table, the record's notes as a
    Markdown list (``None`` without notes) and what a GPU changes (:func:`sscild.book.provenance.paper_scale_training`).
    ``None`` without a record."""
    scale = paper_scale_table(path)
    if scale is None:
        return None
    stages, srec = scale
    c = srec["cohort"]
    words = (
        f"Recorded {srec['date']} at commit `{srec['commit'][:12]}` on {srec['machine']}, {srec['cores']} cores, "
        f"{srec['memory_gib']} GiB: {c['labelled_cases']} labelled patients of {', '.join(c['in_plane'])} pixels "
        f"and at least {c['min_slices']} slices ({c['voxels_per_case_millions']} million voxels per scan on "
        f"average), {srec['token_steps']} training steps per network (synthetic phantom cohort). Peak resident "
        f"memory of any stage (all its processes, counting the memory-mapped cache pages the kernel can give back): "
        f"**{srec.get('peak_gib_any_stage')} GiB**"
        + (f"; memory it needs (anonymous): **{srec['peak_anon_gib_any_stage']} GiB**"
           if srec.get("peak_anon_gib_any_stage") is not None else "")
        + f"; disk per patient (scan and cache): **{srec.get('disk_per_case_gib')} GiB**.")
    notes = ("Notes of the record:\n" + "\n".join(f"- {n}" for n in srec["notes"])) if srec.get("notes") else None
    return words, stages, notes, paper_scale_training(srec)


def input_checksums(data_dir: str | Path) -> pd.DataFrame:
    """Size and SHA-256 of every file of the cohort folder ``data_dir``, by path inside it."""
    data_dir = Path(data_dir)
    rows = [{"file": str(p.relative_to(data_dir)), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(data_dir.rglob("*")) if p.is_file()]
    return pd.DataFrame(rows, columns=["file", "bytes", "sha256"]).set_index("file")
