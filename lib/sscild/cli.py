"""The ``sscild`` command line.

    sscild validate DIR [--exclude-bad] [--label-map JSON]   check a cohort folder, report every problem
    sscild phantom OUT [--n 40] [--seed 0] [--profile cpu]  write the synthetic SSc-ILD cohort
    sscild import-dicom SRC OUT [--labels DIR]              DICOM series (one per patient) -> cohort folder
    sscild train DATA --profile P --fold K                  train one fold (what make runs)
    sscild segment SCAN --out DIR [--models DIR]            apply the fold ensemble to a new scan

Errors a user can fix are printed as one clear message (no traceback) with exit status 2 (usage) or
1 (a problem found in the input); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import SscildError

__all__ = ["main"]


def _cmd_validate(args) -> int:
    from .cohort import validate_cohort

    label_map = json.loads(args.label_map) if args.label_map else None
    report = validate_cohort(args.data, label_map=label_map)
    print(report.format())
    if report.ok:
        return 0
    if args.exclude_bad and report.usable_cases:
        print(f"\n--exclude-bad: {len(report.bad_cases)} case(s) would be excluded; "
              f"{len(report.usable_cases)} usable.")
        return 0
    return 1


def _cmd_phantom(args) -> int:
    from .phantom import generate_cohort

    out = generate_cohort(args.out, profile=args.profile, n=args.n, seed=args.seed, progress=not args.quiet)
    print(f"synthetic cohort written to {out}")
    return 0


def _cmd_import_dicom(args) -> int:
    from .io import import_dicom

    out = import_dicom(args.src, args.out, labels=args.labels, clinical=args.clinical)
    print(f"cohort written to {out}")
    return 0


def _cmd_train(args) -> int:
    from .paths import RunPaths
    from .train import train_fold

    run = RunPaths.for_run(args.data, args.profile, args.results)
    summary = train_fold(run, args.profile, args.fold, progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("fold", "steps", "seconds") if k in summary}))
    return 0


def _cmd_segment(args) -> int:
    from .predict import segment_scan

    report = segment_scan(args.scan, args.out, models=args.models, tta=False if args.no_tta else None,
                          progress=not args.quiet)
    print(json.dumps(report["summary"], indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sscild", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a cohort folder and report every problem at once")
    v.add_argument("data", type=Path)
    v.add_argument("--exclude-bad", action="store_true", help="succeed if usable cases remain; list exclusions")
    v.add_argument("--label-map", help='JSON mapping of dataset.json label names to roles, e.g. '
                   '\'{"reticulation": "ef", "honeycombing": "ef", "consolidation": "ggo"}\'')
    v.set_defaults(func=_cmd_validate)

    ph = sub.add_parser("phantom", help="write the synthetic SSc-ILD cohort")
    ph.add_argument("out", type=Path)
    ph.add_argument("--n", type=int, default=None, help="number of patients (default: the profile's)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--profile", default="cpu")
    ph.add_argument("--quiet", action="store_true")
    ph.set_defaults(func=_cmd_phantom)

    d = sub.add_parser("import-dicom", help="DICOM series (one folder per patient) -> cohort folder")
    d.add_argument("src", type=Path)
    d.add_argument("out", type=Path)
    d.add_argument("--labels", type=Path, default=None, help="folder of label files named after the patient folders")
    d.add_argument("--clinical", type=Path, default=None, help="CSV with a patient column matching the folder names")
    d.set_defaults(func=_cmd_import_dicom)

    t = sub.add_parser("train", help="train one cross-validation fold")
    t.add_argument("data", type=Path)
    t.add_argument("--profile", default="cpu")
    t.add_argument("--fold", type=int, required=True)
    t.add_argument("--results", type=Path, default=None)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("segment", help="segment a new scan with the trained fold ensemble")
    s.add_argument("scan", type=Path, help="NIfTI, NRRD, MHA file or a DICOM series folder")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--models", type=Path, default=None, help="a run folder with fold_*/model_final.pt "
                   "(default: the most recently trained run under results/)")
    s.add_argument("--no-tta", action="store_true", help="no flip test-time augmentation (faster)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_segment)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SscildError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"sscild {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
