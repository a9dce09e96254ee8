"""Record the real-CT lung check of a run's models (what the appendix "The trained models on real CT" shows).

    .venv/bin/python scripts/check_real_ct.py --models results/synthetic-cpu/cpu [--scans ../shared/data/real-ct]
                                              [--out benchmarks/real_lung_cpu.json] [--figure FILE.png]

For each real chest CT volume of ``--scans``: the fold ensemble's lung field against the classical lung
mask (Dice, missed and extra millilitres) and the share of the lung the network calls EF or GGO
(:mod:`sscild.analysis.realcheck`). Writes the JSON record atomically and prints it.
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
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "real_lung.json")
    ap.add_argument("--figure", type=Path, default=None, help="also save the overlays to this PNG")
    args = ap.parse_args(argv)

    from sscild.paths import atomic_path, unroot
    from sscild.machine import cpu_name
    from sscild.analysis.realcheck import list_volumes, real_lung_check

    scans = list_volumes(args.scans)
    if not scans:
        print(f"no CT volumes in {args.scans}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    table, views = real_lung_check(scans, args.models)
    record = {
        "what": "real-CT lung check: network lung field vs classical lung mask, and lesion share",
        "date": dt.date.today().isoformat(),
        "command": "python scripts/check_real_ct.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "models": f"{table['models'].iloc[0]} fold models of {unroot(args.models)}",
        "processor": cpu_name(),
        "seconds": round(time.perf_counter() - t0, 1),
        "scans": table.drop(columns=["models"]).to_dict(orient="records"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    if args.figure is not None:
        from sscild.book.plots.realct import lung_check_overlays

        lung_check_overlays(views, table).savefig(args.figure, dpi=80)
    print(json.dumps(record, indent=2))
    print(f"written to {unroot(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
