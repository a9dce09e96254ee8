"""Check `sscild compare` against known answers, with trained models.

    .venv/bin/python scripts/compare_check.py --models results/synthetic-cpu/cpu [--out results/checks/compare]

1. **Planted change.** One synthetic patient that no model was trained on (``--seed``, ``--case``) is
   generated twice with the phantom's ``lesion_scale`` (1 and ``--scale``): the same anatomy and
   scanner, more disease. Both images are compared with ``sscild compare``; the planted change per
   class and zone is the change between the two *reference* label maps. Reported and planted change
   must agree within ``--tol-whole`` percentage points for whole-lung extent and ``--tol-zone`` for
   each zone (the tolerances are stated before the run; the defaults are about the 95 % limits of
   agreement of a well-trained model's extent).
2. **No change.** A real scan (``chest-ct-2.nrrd`` of ``../shared/data``) against copies of itself:
   shifted by a fraction of a voxel on its own grid, and resampled onto another grid (0.7 mm pixels,
   2.5 mm slices, also shifted); the reported change should be near zero.

Prints a JSON record and writes it to ``--out/compare_check.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "real-ct"


def planted(models: Path, out: Path, *, case: int, seed: int, scale: float, tol_whole: float, tol_zone: float) -> dict:
    from sscild.clinic.compare import compare_scans
    from sscild.profiles import get_profile
    from sscild.data.nifti_writer import save_volume
    from sscild.synthetic.phantom import generate_case
    from sscild.clinic.zones import zone_extent

    out.mkdir(parents=True, exist_ok=True)
    cases = {"baseline": generate_case(case, profile=get_profile("cpu"), seed=seed),
             "followup": generate_case(case, profile=get_profile("cpu"), seed=seed, lesion_scale=scale)}
    paths, ref = {}, {}
    for role, c in cases.items():
        paths[role] = save_volume(out / f"{role}.nii.gz", c.image, c.affine)
        ref[role] = zone_extent(c.label, c.affine)
    result = compare_scans(paths["baseline"], paths["followup"], out / "compare", models=models, progress=False)
    rows = []
    key = {"EF": "ef", "GGO": "ggo", "lesion (EF + GGO)": "lesion"}
    for r in result["change"]:
        k = key[r["class"]]
        p = float(ref["followup"].loc[r["zone"], f"{k}_pct"] - ref["baseline"].loc[r["zone"], f"{k}_pct"])
        tol = tol_whole if r["zone"] == "whole lung" else tol_zone
        rows.append({"zone": r["zone"], "class": r["class"], "planted_pp": round(p, 2),
                     "reported_pp": round(r["change_pp"], 2), "error_pp": round(r["change_pp"] - p, 2),
                     "within_tolerance": bool(abs(r["change_pp"] - p) <= tol)})
    return {"patient": f"case {case}, seed {seed} (not in the training cohort, seed 0), lesion_scale 1 -> {scale}",
            "truth": {role: {k: round(c.truth[k], 2) for k in ("ef_pct", "ggo_pct", "lesion_pct", "lung_ml")}
                      for role, c in cases.items()},
            "tolerance_pp": {"whole lung": tol_whole, "zone": tol_zone},
            "all_within_tolerance": all(r["within_tolerance"] for r in rows),
            "max_abs_error_pp": {"whole lung": max(abs(r["error_pp"]) for r in rows if r["zone"] == "whole lung"),
                                 "zones": max(abs(r["error_pp"]) for r in rows if r["zone"] != "whole lung")},
            "warnings": result["warnings"], "rows": rows}


def no_change(models: Path, out: Path) -> list[dict]:
    import SimpleITK as sitk

    from sscild.clinic.compare import compare_scans

    src = SHARED / "chest-ct-2.nrrd"
    if not src.exists():
        return [{"skipped": f"{src} absent"}]
    img = sitk.ReadImage(str(src))
    size, spacing = img.GetSize(), img.GetSpacing()
    shift = np.array([0.31, -0.23, 1.1])     # a fraction of a voxel, in mm
    records = []
    for name, new_spacing in (("shifted", spacing), ("resampled", (0.7, 0.7, 2.5))):
        new_size = [int(round(n * s / t)) for n, s, t in zip(size, spacing, new_spacing)]
        res = sitk.Resample(img, new_size, sitk.Transform(), sitk.sitkLinear,
                            tuple(np.asarray(img.GetOrigin()) + shift), tuple(new_spacing), img.GetDirection(),
                            -1024.0, img.GetPixelID())
        (out / name).mkdir(parents=True, exist_ok=True)
        copy = out / name / f"chest-ct-2_{name}.nrrd"
        sitk.WriteImage(res, str(copy), True)
        result = compare_scans(src, copy, out / name / "compare", models=models, progress=False)
        whole = {r["class"]: {"pp": round(r["change_pp"], 2), "ml": round(r["change_ml"], 1)}
                 for r in result["change"] if r["zone"] == "whole lung"}
        worst = max(result["change"], key=lambda r: abs(r["change_pp"] or 0))
        records.append({"scan": src.name, "copy": f"{name}: {tuple(round(v, 3) for v in new_spacing)} mm grid "
                        f"({'x'.join(map(str, new_size))}), origin moved by {tuple(float(v) for v in shift)} mm, linear interpolation",
                        "whole_lung_change": whole,
                        "largest_zone_change": {k: (round(worst[k], 2) if k == "change_pp" else worst[k])
                                                for k in ("zone", "class", "change_pp")},
                        "lung_volume_ratio": result["lung_volume_ratio"], "warnings": result["warnings"]})
    return records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "checks" / "compare")
    ap.add_argument("--case", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--scale", type=float, default=1.8)
    ap.add_argument("--tol-whole", type=float, default=3.0)
    ap.add_argument("--tol-zone", type=float, default=6.0)
    args = ap.parse_args(argv)

    from sscild.paths import write_json

    record = {"command": "python scripts/compare_check.py " + " ".join(sys.argv[1:]),
              "planted_change": planted(args.models, args.out / "planted", case=args.case, seed=args.seed,
                                        scale=args.scale, tol_whole=args.tol_whole, tol_zone=args.tol_zone),
              "real_scan_vs_copies": no_change(args.models, args.out / "real")}
    write_json(args.out / "compare_check.json", record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
