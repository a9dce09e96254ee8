"""Record the real-CT robustness check of a run's models (appendix "The trained models on real CT").

    .venv/bin/python scripts/check_robustness.py --models results/synthetic-cpu/cpu [--scans ../shared/data/real-ct]
                                                 [--out benchmarks/real_ct_robustness.json]

For each real chest CT volume of ``--scans`` and each change of :func:`sscild.analysis.robustness.family`
(lung density -100..+60 HU, four emphysema patterns, pixels of 1.5-4 mm, a sharp kernel, thicker
slices): the fold ensemble's lung volume against its lung on the unchanged scan (aim: within 5 %),
its lung Dice against the classical lung of the unchanged scan (aim: 0.95 or more) and the lesion
share. Writes the JSON record atomically (with the commit, the machine and the aims met) and prints
a summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, required=True, help="run folder with fold_*/model_final.pt")
    ap.add_argument("--scans", type=Path, default=REPO.parent / "shared" / "data" / "real-ct")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "real_ct_robustness.json")
    args = ap.parse_args(argv)

    from sscild.analysis.realcheck import list_volumes
    from sscild.analysis.robustness import LUNG_CHANGE_AIM_PCT, LUNG_DICE_AIM, robustness_check
    from sscild.book.provenance import git_state
    from sscild.machine import cpu_name
    from sscild.model.device import set_threads
    from sscild.paths import atomic_path, unroot

    scans = list_volumes(args.scans)
    if not scans:
        print(f"no CT volumes in {args.scans}", file=sys.stderr)
        return 2
    threads = set_threads()
    t0 = time.perf_counter()
    table, _ = robustness_check(scans, args.models, keep_views=())
    changed = table[table["group"] != "reference"]
    ok_vol = changed["lung_change_pct"].abs() <= LUNG_CHANGE_AIM_PCT
    ok_dice = changed["lung_dice"] >= LUNG_DICE_AIM
    own_vol = changed["network_lung_change_pct"].abs() <= LUNG_CHANGE_AIM_PCT
    own_dice = changed["network_lung_dice"] >= LUNG_DICE_AIM
    worst = changed.sort_values("lung_dice").iloc[0]
    git = git_state()
    record = {
        "what": "real-CT robustness: the fold ensemble's lung on changed copies of real chest CT "
                "(sscild.analysis.robustness)",
        "date": dt.date.today().isoformat(),
        "commit": git["commit"] + (" (with uncommitted changes)" if git["dirty"] else ""),
        "command": "python scripts/check_robustness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "models": unroot(args.models),
        "processor": cpu_name(),
        "threads": threads,
        "seconds": round(time.perf_counter() - t0, 1),
        "aims": {"lung_change_pct_within": LUNG_CHANGE_AIM_PCT, "lung_dice_at_least": LUNG_DICE_AIM},
        "met": {"lung_volume": f"{int(ok_vol.sum())} of {len(changed)}", "lung_dice": f"{int(ok_dice.sum())} of {len(changed)}",
                "network_lung_volume": f"{int(own_vol.sum())} of {len(changed)}",
                "network_lung_dice": f"{int(own_dice.sum())} of {len(changed)}"},
        "worst": {"scan": worst["scan"], "change": worst["change"], "lung_dice": float(worst["lung_dice"]),
                  "lung_change_pct": float(worst["lung_change_pct"])},
        "rows": table.to_dict(orient="records"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    cols = ["scan", "change", "lung_ml", "lung_change_pct", "lung_dice", "network_lung_change_pct", "network_lung_dice",
            "lesion_pct"]
    print(table[cols].to_string(index=False))
    print(json.dumps({k: record[k] for k in ("met", "worst", "seconds")}, indent=2))
    print(f"written to {unroot(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
