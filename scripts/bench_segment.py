"""Benchmark `sscild segment`: wall time and peak memory on a full-size HRCT volume.

    .venv/bin/python scripts/bench_segment.py [--models RUN_DIR] [--out results/benchmarks/segment.json]

What it does:

1. **Models.** ``--models`` names a run folder with ``fold_*/model_final.pt`` (e.g. the ``cpu`` run
   of ``make all``). Without it, eight ``cpu``-profile fold models are trained for a handful of
   iterations on a tiny synthetic cohort, so the networks have the ``cpu`` profile's size and
   preprocessing (8 folds, 16-32-64-128 2D U-Net, 1.4 mm in-plane, 5 mm slices); their weights
   are meaningless, which does not change the cost.
2. **Scan.** A 512 x 512 x 300 chest CT: the real ``chest-ct-1.nrrd`` of ``../shared/data``
   (512 x 512 x 48, 5 mm) interpolated along z to 300 slices of 0.8 mm, the geometry of a thin-slice
   HRCT; without the samples, a synthetic phantom of that size.
3. **Run.** ``python -m sscild.cli segment`` in a fresh process (as a user runs it, imports
   included), timed with ``time.perf_counter``; peak memory is the child's maximum resident set
   size and its CPU time (user + system, ``os.wait4``). The stage times reported by the command
   itself are recorded too. On a shared machine wall time depends on the load (recorded);
   CPU time divided by the cores used is what an otherwise idle machine would take, at best.
   Every output is written, as a user gets it: label map, JSON/CSV report, zones, overlay montage,
   the HTML page and the viewer files (Slicer ``.seg.nrrd``, ITK-SNAP labels); their sizes are
   recorded.
4. **DICOM** (``--dicom``): the same volume written as a 300-file DICOM series and segmented from
   that folder, which adds the DICOM Segmentation object; recorded under ``"dicom"``.
5. **Real scans** (``--real-check``): segments both real volumes and reports the lung volume, which
   a usable model puts at 2-9 L for an adult. Only meaningful with properly trained models.

Writes ``results/benchmarks/segment.json`` (atomically) and prints it. Targets: 20 s and 4 GiB
with the ``cpu`` models on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "real-ct"
TARGET_S = 20.0
TARGET_GIB = 4.0
LUNG_L = (2.0, 9.0)


def cpu_models(work: Path, iterations: int) -> Path:
    """Eight cpu-profile fold models trained ``iterations`` steps on an 8-patient smoke-sized phantom."""
    from sscild.data.cohort import load_cohort
    from sscild.profiles import get_profile
    from sscild.data.folds import make_splits, write_splits
    from sscild.paths import RunPaths
    from sscild.synthetic.writer import generate_cohort
    from sscild.data.cache import build_cache
    from sscild.model.train import train_fold

    data = generate_cohort(work / "cohort", profile=get_profile("smoke"), n=8, progress=False)
    run = RunPaths(results=work / "results", cohort="cohort", profile="cpu")
    cohort = load_cohort(data)
    build_cache(cohort, run, get_profile("cpu"), progress=False)
    write_splits(run.splits, make_splits([c.case_id for c in cohort.cases], k=8, seed=0))
    for k in range(8):
        train_fold(run, get_profile("cpu"), k, iterations=iterations, progress=False)
    return run.root


def hrct_volume(path: Path, nz: int = 300) -> dict:
    """Write a 512 x 512 x ``nz`` int16 HU volume to ``path``; returns its description."""
    from scipy import ndimage as ndi

    from sscild.data.image import load_volume
    from sscild.data.nifti_writer import save_volume

    src = SHARED / "chest-ct-1.nrrd"
    if src.exists():
        vol = load_volume(src)
        arr = np.asarray(vol.array, dtype=np.float32)
        n0 = arr.shape[2]
        z = np.linspace(0, n0 - 1, nz)
        out = np.empty(arr.shape[:2] + (nz,), np.int16)
        for k, zk in enumerate(z):  # linear along z, slice by slice (low memory)
            lo = int(np.floor(zk))
            hi = min(lo + 1, n0 - 1)
            w = zk - lo
            out[:, :, k] = np.rint((1 - w) * arr[:, :, lo] + w * arr[:, :, hi]).astype(np.int16)
        affine = vol.affine.copy()
        affine[:3, 2] *= (n0 - 1) / (nz - 1)
        how = f"{src.name} ({'x'.join(map(str, arr.shape))}) interpolated along z to {nz} slices"
    else:
        x, y, zz = np.meshgrid(np.linspace(-1, 1, 512), np.linspace(-1, 1, 512), np.linspace(-1, 1, nz), indexing="ij")
        out = np.full((512, 512, nz), -1000, np.int16)
        out[(x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1] = 40
        for cx in (-0.42, 0.42):
            out[((x - cx) / 0.33) ** 2 + (y / 0.5) ** 2 + (zz / 1.1) ** 2 <= 1] = -850
        out = ndi.gaussian_filter(out.astype(np.float32), 1.0).astype(np.int16)
        affine = np.diag([0.7, 0.7, 0.8, 1.0])
        how = "synthetic two-lung phantom (real samples absent)"
    save_volume(path, out, affine)
    sp = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return {"source": how, "shape": list(out.shape), "spacing_mm": [round(s, 4) for s in sp]}


def dicom_series(volume: Path, folder: Path) -> int:
    """Write a NIfTI volume as an axial CT series (one file per slice, LPS, rescale to HU); returns the count."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from sscild.data.image import load_volume

    vol = load_volume(volume)
    arr = np.asarray(vol.array)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    if np.abs(lps[:3, :3] - np.diag(np.diag(lps[:3, :3]))).max() > 1e-6 or (np.diag(lps[:3, :3]) <= 0).any():
        # reorder to LPS-increasing axes so that rows/columns follow the standard axial orientation
        flips = [i for i in range(3) if lps[i, i] < 0]
        arr = np.flip(arr, flips)
        for i in flips:
            lps[:3, 3] += lps[:3, i] * (arr.shape[i] - 1)
            lps[:3, i] *= -1
    sp = np.abs(np.diag(lps[:3, :3]))
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(arr.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.ConvolutionKernel = "CT", "BENCH", "Bench^Scan", "B40f"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(v) for v in lps[:3, 3] + lps[:3, 2] * k]
        ds.PixelSpacing = [float(sp[1]), float(sp[0])]
        ds.SliceThickness = float(sp[2])
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(arr[:, :, k].T.astype("<i2")).tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return arr.shape[2]


def run_segment(scan: Path, out: Path, models: Path, tta: bool) -> dict:
    cmd = [sys.executable, "-m", "sscild.cli", "segment", str(scan), "--out", str(out), "--models", str(models),
           "--quiet"] + ([] if tta else ["--no-tta"])
    log = out.parent / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (KiB on Linux)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    stem = scan.name.split(".")[0]
    report = json.loads((out / f"{stem}_report.json").read_text())
    outputs = {Path(p).name.replace(stem, "<name>", 1): round(Path(p).stat().st_size / 2**20, 2)
               for p in report["outputs"].values()}
    return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 2), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "in_process_s": report["seconds"], "network_grid": report["network_grid"],
            "n_models": len(report["models"]), "profile": report["profile"], "threads": report["threads"],
            "precision": report.get("precision"), "ensemble": report.get("ensemble"),
            "outputs_mib": outputs, "summary": report["summary"]}


def machine() -> dict:
    import torch

    from sscild.machine import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=None, help="run folder with fold_*/model_final.pt "
                    "(default: train cpu-shaped models for --iterations steps)")
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--no-tta", action="store_true", help="benchmark without flip test-time augmentation")
    ap.add_argument("--real-check", action="store_true", help="also segment the real samples, report lung volume")
    ap.add_argument("--dicom", action="store_true", help="also segment the volume as a DICOM series (adds DICOM SEG)")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "segment.json")
    args = ap.parse_args(argv)

    from sscild.paths import write_json

    with tempfile.TemporaryDirectory(prefix="bench_segment_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        models = args.models or cpu_models(tmp / "models", args.iterations)
        setup_s = time.perf_counter() - t0
        scan = tmp / "hrct.nii.gz"
        scan_info = hrct_volume(scan, args.slices)
        load_start = machine()["load_average"]
        result = run_segment(scan, tmp / "out", models, tta=not args.no_tta)
        record = {
            "what": "sscild segment on a full-size HRCT volume, fresh process (imports included)",
            "date": time.strftime("%Y-%m-%d"),
            "benchmark_command": "python scripts/bench_segment.py " + " ".join(sys.argv[1:]),
            "scan": scan_info,
            "models": str(models) if args.models else
            f"8 cpu-profile fold models trained {args.iterations} iterations "
            "(size and preprocessing of the cpu profile)",
            "tta": not args.no_tta,
            **result,
            "targets": {"wall_s": TARGET_S, "peak_rss_gib": TARGET_GIB},
            "meets_targets": bool(result["wall_s"] <= TARGET_S and result["peak_rss_gib"] <= TARGET_GIB),
            "model_setup_s": round(setup_s, 1) if not args.models else None,
            "machine": {**machine(), "load_average_before": load_start},
        }
        record.pop("summary", None)
        if args.dicom:
            t0 = time.perf_counter()
            n = dicom_series(scan, tmp / "hrct_dicom")
            write_s = time.perf_counter() - t0
            d = run_segment(tmp / "hrct_dicom", tmp / "out_dicom", models, tta=not args.no_tta)
            d.pop("summary", None)
            record["dicom"] = {"what": f"the same volume as a {n}-file DICOM series folder (adds the DICOM SEG)",
                               "series_write_s": round(write_s, 1),
                               **{k: d[k] for k in ("wall_s", "peak_rss_gib", "cpu_s", "in_process_s", "outputs_mib")},
                               "meets_targets": bool(d["wall_s"] <= TARGET_S and d["peak_rss_gib"] <= TARGET_GIB)}
        if args.real_check:
            checks = []
            for name in ("chest-ct-1.nrrd", "chest-ct-2.nrrd"):
                src = SHARED / name
                if not src.exists():
                    checks.append({"scan": name, "skipped": f"{src} absent"})
                    continue
                r = run_segment(src, tmp / f"real_{name}", models, tta=not args.no_tta)
                lung_l = r["summary"]["lung_volume_ml"] / 1000
                checks.append({"scan": name, "lung_volume_l": round(lung_l, 2),
                               "plausible_2_to_9_l": bool(LUNG_L[0] <= lung_l <= LUNG_L[1]),
                               "lesion_pct": r["summary"]["percent_of_lung"].get("lesion"),
                               "wall_s": r["wall_s"], "peak_rss_gib": r["peak_rss_gib"]})
            record["real_ct"] = checks
    write_json(args.out, record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
