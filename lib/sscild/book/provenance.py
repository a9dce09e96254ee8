"""What produced a run: code version, software, hardware, settings, seeds, step times, input checksums."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd

from sscild.machine import describe_machine
from sscild.paths import RunPaths, read_json, repo_root, unroot
from sscild.profiles import Profile

__all__ = ["git_state", "environment_table", "run_settings", "step_times", "input_checksums", "sha256_file",
           "gpu_check_table", "segment_benchmark_table", "read_record", "benchmark_records"]

PACKAGES = ["sscild", "torch", "monai", "numpy", "scipy", "pandas", "nibabel", "SimpleITK", "pydicom",
            "statsmodels", "seaborn", "matplotlib", "papermill", "jupytext", "jupyter-book"]


def git_state(root: Path | None = None) -> dict:
    root = root or repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown (not a git checkout)", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def environment_table() -> pd.DataFrame:
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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_checksums(data_dir: str | Path) -> pd.DataFrame:
    data_dir = Path(data_dir)
    rows = [{"file": str(p.relative_to(data_dir)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(data_dir.rglob("*")) if p.is_file()]
    return pd.DataFrame(rows, columns=["file", "bytes", "sha256"]).set_index("file")


def read_record(name: str, path: str | Path | None = None) -> dict | None:
    """A recorded measurement: ``path``, or ``benchmarks/<name>`` of the repository; ``None`` if absent."""
    path = Path(path) if path is not None else repo_root() / "benchmarks" / name
    return json.loads(path.read_text()) if path.exists() else None


def gpu_check_table(path: str | Path | None = None) -> pd.DataFrame | None:
    """The recorded GPU check of the ``paper`` profile (``benchmarks/gpu_paper.json``) as a table.

    The file is written by ``scripts/gpu_check.py`` on a machine with CUDA; ``None`` when there is none.
    """
    d = read_record("gpu_paper.json", path)
    if d is None:
        return None
    tr, seg = d.get("train", {}), d.get("segment", {})
    rows = [
        ("recorded", f"{d.get('date', '?')}: `{d.get('command', 'scripts/gpu_check.py')}`"),
        ("data", d.get("cohort", f"synthetic phantom, {d.get('patients')} patients")),
        ("device", f"{d.get('gpu')} (torch {d.get('torch')}, CUDA {d.get('cuda')}, cuDNN {d.get('cudnn')})"),
        ("mixed precision / cudnn autotuning", f"{tr.get('amp')} / {tr.get('cudnn_benchmark')}"),
        ("batch", f"{tr.get('batch_size')} patches of {' x '.join(map(str, tr.get('patch', [])))}"),
        ("loader processes", tr.get("loader_workers")),
        ("parameters", f"{tr.get('parameters', 0):,}"),
        ("steps", f"{tr.get('steps')} in {tr.get('seconds')} s (incl. warm-up and cudnn autotuning)"),
        ("throughput after warm-up", f"{tr.get('steady_steps_per_s')} steps/s = {tr.get('steady_slices_per_s')} "
                                      "patches/s"),
        ("loss, first window -> last", f"{tr.get('first_loss')} -> {round(tr['final_loss'], 4) if tr.get('final_loss') else None}"),
        ("peak GPU memory, training", f"{tr.get('peak_gpu_memory_gib')} GiB"),
        ("segment one held-out volume", f"{seg.get('seconds')} s for {' x '.join(map(str, seg.get('input_shape') or []))} "
                                        f"voxels (peak GPU memory {seg.get('peak_gpu_memory_gib')} GiB)"),
    ]
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")


def segment_benchmark_table(path: str | Path | None = None) -> pd.DataFrame | None:
    """The recorded ``sscild segment`` benchmark (``benchmarks/segment_cpu.json``) as a table.

    The file is written by ``scripts/bench_segment.py`` (its own output lands in
    ``results/benchmarks/segment.json``); ``None`` when there is none.
    """
    d = read_record("segment_cpu.json", path)
    if d is None:
        return None
    m = d.get("machine", {})
    stages = d.get("in_process_s", {})
    scan = d.get("scan", {})
    rows = [
        ("recorded", f"{d.get('date', '?')}: `{d.get('benchmark_command', 'scripts/bench_segment.py')}`"),
        ("machine", f"{m.get('cpu')}, {d.get('threads')} threads, torch {m.get('torch')}; load average before "
                    f"{(m.get('load_average_before') or ['?'])[0]}"),
        ("scan", f"{' x '.join(map(str, scan.get('shape', [])))} voxels ({scan.get('source', '')})"),
        ("models", f"{d.get('n_models')} fold models, profile `{d.get('profile')}` ({d.get('models')})"),
        ("ensemble", f"{d.get('ensemble')}; {d.get('precision')}"),
        ("wall time, fresh process", f"{d.get('wall_s')} s (target {d.get('targets', {}).get('wall_s')} s)"),
        ("peak memory (RSS)", f"{d.get('peak_rss_gib')} GiB (target {d.get('targets', {}).get('peak_rss_gib')} GiB)"),
        ("stages in the process", ", ".join(f"{k.replace('_', ' ')} {v} s" for k, v in stages.items())),
    ]
    for r in d.get("real_ct") or []:
        if "lung_volume_l" in r:
            rows.append((f"real CT {r['scan']}", f"lung {r['lung_volume_l']} L, lesion {r['lesion_pct']} % of lung, "
                                                 f"{r['wall_s']} s, {r['peak_rss_gib']} GiB"))
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")


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


PAPER_SCALE_STAGES = {
    "cohort": "write the synthetic cohort (built-in cohort only)",
    "data": "validate, preprocess and cache, split; Data chapter",
    "train": "pretraining on the unlabelled scans, then every fold",
    "training_chapter": "Model & training chapter",
    "segmentation": "out-of-fold prediction, Dice, surface Dice, zones, controls; Segmentation chapter",
    "clinical": "Clinical chapter",
    "abstract": "Abstract",
    "real_ct": "the fold ensemble on the real CT samples (appendix A2)",
    "reproducibility": "Reproducibility chapter",
    "book": "the book (HTML)",
}
"""The stages of ``scripts/paper_scale_dry_run.py`` in the order make runs them, in words."""


def paper_scale_table(path: str | Path | None = None) -> tuple[pd.DataFrame, dict] | None:
    """The paper-scale dry run (``benchmarks/paper_scale_cpu.json``) as a table, and the record;
    ``None`` without a record (:func:`paper_scale_stages`)."""
    rec = read_record("paper_scale_cpu.json", path)
    return None if rec is None else (paper_scale_stages(rec), rec)


def _or_nan(v) -> float:
    return float("nan") if v is None else float(v)


def paper_scale_stages(rec: dict) -> pd.DataFrame:
    """One row per stage of a paper-scale dry run: measured wall and CPU minutes, peak memory and disk on
    the recorded machine (memory needed: the anonymous memory of all the stage's processes; resident:
    their resident sets, which also count the memory-mapped cache pages the kernel can drop), and the wall minutes extrapolated to 40 patients (linear in the cases a stage
    handles; the token-budget training is not extrapolated here, see :func:`paper_scale_training`)."""
    ext = (rec.get("extrapolated") or {}).get("stages", {})
    rows = []
    for name, what in PAPER_SCALE_STAGES.items():
        st = rec.get("stages", {}).get(name)
        if not st:
            continue
        at40 = ext.get(name, {}).get("wall_seconds")
        rows.append({"stage": name, "what": what, "wall (min)": round(st["wall_seconds"] / 60, 1),
                     "CPU (min)": round(st["cpu_seconds"] / 60, 1),
                     "memory needed (GiB)": _or_nan(st.get("peak_anon_gib")),
                     "resident, incl. mapped cache (GiB)": st["peak_total_gib"],
                     "largest process (GiB)": st["peak_process_gib"],
                     "run folder after (GiB)": _or_nan(st.get("disk_run_gib")),
                     "wall at 40 patients (min, extrapolated)": float("nan") if name == "train" or at40 is None
                     else round(at40 / 60, 1)})
    tab = pd.DataFrame(rows).set_index("stage")
    if tab["memory needed (GiB)"].isna().all():   # a record made before anonymous memory was sampled
        tab = tab.drop(columns="memory needed (GiB)")
    return tab.astype({c: float for c in tab.columns if c != "what"})


def paper_scale_training(rec: dict) -> pd.DataFrame:
    """What a GPU changes: the full training budget of the ``paper`` profile, extrapolated from the dry
    run's CPU step time and the recorded GPU step rate (``benchmarks/gpu_paper.json``), and the
    out-of-fold prediction of 40 patients from the dry run's measured CPU time and the recorded GPU time
    of one volume. Nothing here was run at that length."""
    ext = rec.get("extrapolated") or {}
    rows = []
    cpu, gpu = ext.get("cpu_full_budget"), ext.get("gpu")
    if cpu:
        rows.append({"where": f"CPU ({rec.get('machine')})", "seconds per step": cpu["seconds_per_step"],
                     "one fold (h)": round(cpu["seconds_per_fold"] / 3600, 1),
                     "all folds, one after another (days)": cpu["days_all_folds"]})
    if gpu:
        rows.append({"where": f"GPU ({gpu.get('gpu')}, from {gpu.get('source')})",
                     "seconds per step": round(1 / gpu["steady_steps_per_s"], 3),
                     "one fold (h)": round(gpu["seconds_per_fold"] / 3600, 2),
                     "all folds, one after another (days)": round(gpu["seconds_all_folds_one_gpu"] / 86400, 2)})
    seg = (rec.get("stages") or {}).get("segmentation") or {}
    oof = next((c for c in seg.get("slowest_cells", []) if "predict_oof" in c["cell"]), None)
    n, slices = (rec.get("cohort") or {}).get("labelled_cases"), (rec.get("cohort") or {}).get("min_slices")
    if oof and n and gpu and gpu.get("segment_seconds_per_slice"):
        rows.append({"where": f"out-of-fold prediction and its metrics, CPU (measured: {n} patients in {oof['seconds'] / 60:.0f} min)",
                     "seconds per step": None, "one fold (h)": None,
                     "all folds, one after another (days)": None,
                     "40 patients (h)": round(oof["seconds"] / n * 40 / 3600, 1)})
        rows.append({"where": "out-of-fold prediction, GPU (from the recorded segmentation of one volume)",
                     "seconds per step": None, "one fold (h)": None, "all folds, one after another (days)": None,
                     "40 patients (h)": round(gpu["segment_seconds_per_slice"] * slices * 40 / 3600, 2)})
    return pd.DataFrame(rows).set_index("where") if rows else pd.DataFrame()


def paper_scale_markdown(rec: dict) -> str:
    """The README's table of the dry run (the same numbers as :func:`paper_scale_table`), as Markdown."""
    tab = paper_scale_stages(rec)
    head = ("| stage | what | wall (min) | memory needed (GiB) | resident, incl. mapped cache (GiB) "
            "| at 40 patients (min, extrapolated) |")
    lines = [head, "|---|---|---:|---:|---:|---:|"]

    def cell(v):
        return "—" if v is None or v != v else v

    for name, r in tab.iterrows():
        lines.append(f"| {name} | {r['what']} | {r['wall (min)']} | {cell(r.get('memory needed (GiB)'))} | "
                     f"{r['resident, incl. mapped cache (GiB)']} | {cell(r['wall at 40 patients (min, extrapolated)'])} |")
    return "\n".join(lines)


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
