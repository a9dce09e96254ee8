"""What produced a run and what was measured apart from it: the code version (:func:`git_state`) and the
recorded measurements of ``benchmarks/`` that several pages and scripts read (:func:`read_record`, the GPU
check, the ``sscild segment`` benchmark, the paper-scale dry run).

The Reproducibility page's own tables (software, settings, step times, input checksums, the list of
records) are in :mod:`sscild.book.chapters.reproducibility`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd

from sscild.paths import repo_root

__all__ = ["git_state", "gpu_check_table", "segment_benchmark_table", "read_record", "paper_scale_table",
           "paper_scale_stages", "paper_scale_training", "paper_scale_markdown", "PAPER_SCALE_STAGES"]


def git_state(root: Path | None = None) -> dict:
    root = root or repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown (not a git checkout)", "dirty": None}
    return {"commit": commit, "dirty": dirty}


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
