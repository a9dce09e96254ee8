"""Check that the ``paper`` profile trains on CUDA with mixed precision, and measure its throughput.

Runs the library's own path on a small synthetic cohort at the paper profile's resolution
(512 x 512 slices at 0.7 mm): phantom -> cache -> splits -> ``train_fold`` for a few hundred
steps -> ``segment_scan`` of one held-out volume with the trained fold model. Prints one JSON
document and writes it to ``--out`` (default ``results/benchmarks/gpu_paper.json``; the
book's training chapter shows the copy recorded in ``benchmarks/gpu_paper.json``).

    python scripts/gpu_check.py --steps 300 --patients 8

It refuses to run without CUDA: on a CPU the paper profile would take days and the numbers
would say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    ap.add_argument("--patients", type=int, default=8, help="synthetic patients (default 8)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "gpu_paper.json")
    ap.add_argument("--profile", default="paper", help=argparse.SUPPRESS)  # dry runs of the script itself
    ap.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.allow_cpu:
        print("gpu_check: no CUDA device is visible; this check only means something on a GPU.", file=sys.stderr)
        return 2

    from sscild.data.cohort import load_cohort
    from sscild.data.folds import make_splits, write_splits
    from sscild.paths import RunPaths
    from sscild.synthetic.writer import generate_cohort
    from sscild.clinic.segment import segment_scan
    from sscild.data.cache import build_cache
    from sscild.profiles import get_profile
    from sscild.model.train import train_fold

    prof = get_profile(a.profile)
    work = a.work or Path(tempfile.mkdtemp(prefix="sscild-gpu-"))
    report: dict = {"date": time.strftime("%Y-%m-%d"),
                    "command": "python scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "cohort": f"synthetic phantom ({a.patients} patients at the {prof.name} profile's resolution); "
                              "not the paper's data",
                    "profile": prof.name, "steps_requested": a.steps, "patients": a.patients,
                    "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "cpu_cores": os.cpu_count(), "python": platform.python_version()}

    t = time.perf_counter()
    data = generate_cohort(work / "cohort", profile=prof, n=a.patients, seed=0, progress=False,
                           workers=min(a.patients, os.cpu_count() or 1))
    report["phantom_seconds"] = round(time.perf_counter() - t, 1)

    run = RunPaths(results=work / "results", cohort="gpu-check", profile=prof.name)
    cohort = load_cohort(data)
    t = time.perf_counter()
    build_cache(cohort, run, prof, progress=False)
    report["cache_seconds"] = round(time.perf_counter() - t, 1)
    ids = [c.case_id for c in cohort.cases]
    write_splits(run.splits, make_splits(ids, k=min(prof.num_folds, len(ids)), seed=0))

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    summary = train_fold(run, prof, 0, iterations=a.steps, progress=True)
    report["train_wall_seconds"] = round(time.perf_counter() - t, 1)
    report["train"] = {k: summary[k] for k in ("steps", "seconds", "steps_per_s", "device", "amp",
                                               "loader_workers", "parameters", "final_loss") if k in summary}
    report["train"]["batch_size"] = prof.batch_size
    report["train"]["patch"] = list(prof.patch_size)
    if cuda:
        report["train"]["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report["train"]["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)

    import pandas as pd

    hist = pd.read_csv(run.fold_dir(0) / "history.csv")
    steady = hist[hist["step"] > max(50, a.steps // 3)]
    sps = float(np.median(steady["steps_per_s"])) if len(steady) else None
    report["train"]["steady_steps_per_s"] = round(sps, 2) if sps else None
    report["train"]["steady_slices_per_s"] = round(sps * prof.batch_size, 1) if sps else None
    report["train"]["first_loss"] = round(float(hist["loss"].iloc[0]), 4)

    held_out = sorted(set(ids) - set(summary["train_cases"]))[0]
    scan = next((data / "imagesTr").glob(f"{held_out}_0000.nii*"))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    # a model of a few steps (a dry run of this script) finds no plausible lung: its segmentation is timed, not refused
    rep = segment_scan(scan, work / "segment", models=run.fold_dir(0) / "model_final.pt", progress=False,
                       montage=False, refuse=a.steps >= 100)
    report["segment"] = {"case": held_out, "seconds": round(time.perf_counter() - t, 2),
                         "input_shape": rep.get("input_shape"), "stage_seconds": rep.get("seconds"),
                         "lung_volume_ml": rep["summary"].get("lung_volume_ml")}
    if cuda:
        report["segment"]["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
