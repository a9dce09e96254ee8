"""The ``sscild`` command line.

    sscild validate DIR [--exclude-bad] [--allow-clinical-gaps] [--label-map JSON] [--brief]
                                                            check a cohort folder, report every problem
    sscild phantom OUT [--n 40] [--unlabelled 40] [--controls 8] [--seed 0] [--profile cpu]
                                                            write the synthetic cohort
    sscild import-dicom SRC OUT [--labels DIR]              DICOM series (one per patient) -> cohort folder
    sscild train DATA --profile P --fold K                  train one fold (what make runs)
    sscild segment SCAN|FOLDER --out DIR [--models DIR]     apply the fold ensemble to a scan or a folder of scans
    sscild compare BASELINE FOLLOWUP --out DIR              change of extent per class and zone between two scans
    sscild --version

Every error is printed as one line (no traceback) with exit status 2 (a bad option or argument) or
1 (a problem found in the input, or a scan of a batch that failed); ``--debug`` shows the traceback.
``sscild segment`` exits 5 when it refuses a scan in which it finds no plausible lungs ("no lungs
found - is this a chest CT?"; :mod:`sscild.clinic.qc`), and writes nothing for it.

``sscild validate`` exits 0 when the cohort can be used as it is; 1 when a case or the folder is
unusable (with ``--exclude-bad``: only when no usable case remains); 3 when clinical values would be
set aside and 4 when clinical rows, cases or the table would be left out
(:mod:`sscild.data.clinical_table`), unless ``--allow-clinical-gaps``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sscild import __version__
from sscild.errors import SscildError
from sscild.profiles import get_profile

__all__ = ["main", "UsageError"]


class UsageError(SscildError):
    """A bad option value (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and exit status 2 (no usage block)."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def _label_map(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--label-map is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}. "
                         'Example: --label-map \'{"reticulation": "ef", "consolidation": "ggo"}\'') from None
    if not isinstance(value, dict):
        raise UsageError(f"--label-map must be a JSON object mapping label names to roles, got {type(value).__name__}.")
    return value


def _cmd_validate(args) -> int:
    from sscild.data.validate import validate_cohort

    from sscild.data.clinical_table import CLINICAL_GAPS, exit_code_of
    from sscild.data.labels import label_map_from_env

    try:
        label_map = _label_map(args.label_map) if args.label_map else label_map_from_env()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report = validate_cohort(args.data, label_map=label_map)
    if report.ok or (args.exclude_bad and report.usable_cases):
        code = 0 if args.allow_clinical_gaps else exit_code_of(report.problems)
    else:
        code = 1
    text = report.format()
    print(text if (code or not args.brief) else text.splitlines()[0])
    if not report.ok and args.exclude_bad and report.usable_cases:
        print(f"\n--exclude-bad: {len(report.bad_cases)} case(s) would be excluded; "
              f"{len(report.usable_cases)} usable.")
    gaps = [p for p in report.problems if p.kind in CLINICAL_GAPS]
    if code in (3, 4):
        print(f"\n{len(gaps)} clinical gap(s) (listed above: {', '.join(sorted({p.kind for p in gaps}))}) would "
              "change what the lung-function analysis uses. Fix each as its line says, or accept them: "
              "`sscild validate --allow-clinical-gaps` (make: ALLOW_CLINICAL_GAPS=1); the Data chapter then "
              "lists every value and row set aside.", file=sys.stderr)
    elif gaps:
        print(f"\n--allow-clinical-gaps: {len(gaps)} clinical gap(s) accepted; the Data chapter lists them.")
    return code


def _cmd_phantom(args) -> int:
    from sscild.synthetic.writer import generate_cohort

    out = generate_cohort(args.out, profile=get_profile(args.profile), n=args.n, seed=args.seed,
                          unlabelled=args.unlabelled, controls=args.controls, progress=not args.quiet)
    print(f"synthetic cohort written to {out}")
    return 0


def _cmd_import_dicom(args) -> int:
    from sscild.data.dicom import import_dicom

    out = import_dicom(args.src, args.out, labels=args.labels, clinical=args.clinical)
    print(f"cohort written to {out}")
    return 0


def _cmd_train(args) -> int:
    from sscild.paths import RunPaths
    from sscild.model.train import train_fold

    run = RunPaths.for_run(args.data, args.profile, args.results)
    summary = train_fold(run, get_profile(args.profile), args.fold, progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("fold", "steps", "seconds") if k in summary}))
    return 0


def _cmd_segment(args) -> int:
    from sscild.clinic.batch import discover_scans, is_batch_folder, segment_batch
    from sscild.clinic.segment import segment_scan
    from sscild.model.loading import find_models, load_ensemble

    tta = False if args.no_tta else None
    if not args.scan.exists():
        raise SscildError(f"{args.scan}: no such file or folder. Fix: check the path of the scan.")
    if args.models is not None:
        find_models(args.models)
    if is_batch_folder(args.scan):
        items = discover_scans(args.scan)
        if not items:
            raise SscildError(f"{args.scan}: no scans inside (NIfTI, NRRD, MHA files or DICOM series folders).")
        ensemble = load_ensemble(args.models)
        if not args.quiet:
            print(ensemble.choice, file=sys.stderr)
        rows = segment_batch(items, args.out, ensemble=ensemble, tta=tta, progress=not args.quiet,
                             refuse=not args.force)
        failed = [r for r in rows if r["status"] != "ok"]
        for r in failed:  # the reason usually names the file already
            reason = r["error"] if r["error"].startswith(r["scan"]) else f"{r['scan']}: {r['error']}"
            print(f"sscild segment: failed: {reason}", file=sys.stderr)
        print(f"{len(rows) - len(failed)} of {len(rows)} scan(s) segmented; table: {args.out / 'batch.csv'}")
        return 1 if failed else 0
    report = segment_scan(args.scan, args.out, models=args.models, tta=tta, progress=not args.quiet,
                          refuse=not args.force)
    if not args.quiet or args.models is None:
        print(report["models_choice"], file=sys.stderr)
    print(json.dumps(report["summary"], indent=2))
    return 0


def _cmd_compare(args) -> int:
    from sscild.clinic.compare import compare_scans

    result = compare_scans(args.baseline, args.followup, args.out, models=args.models,
                           tta=False if args.no_tta else None, progress=not args.quiet, refuse=not args.force)
    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    for r in (r for r in result["change"] if r["zone"] == "whole lung"):
        print(f"{r['class']:<20} {f(r['baseline_pct'], '6.2f')} % -> {f(r['followup_pct'], '6.2f')} %  "
              f"change {f(r['change_pp'], '+6.2f')} pp ({f(r['change_ml'], '+.1f')} mL)  {r['mcid']}")
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"report: {result['outputs']['html']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sscild.profiles import PROFILES

    p = _Parser(prog="sscild", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"sscild {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    profiles = list(PROFILES)

    v = sub.add_parser("validate", help="check a cohort folder and report every problem at once")
    v.add_argument("data", type=Path)
    v.add_argument("--exclude-bad", action="store_true", help="succeed if usable cases remain; list exclusions")
    v.add_argument("--allow-clinical-gaps", action="store_true",
                   help="succeed although clinical values or rows would be set aside (exit 3 / 4 otherwise)")
    v.add_argument("--brief", action="store_true", help="print only the summary line when the cohort passes")
    v.add_argument("--label-map", help='JSON mapping of dataset.json label names to roles, e.g. '
                   '\'{"reticulation": "ef", "honeycombing": "ef", "consolidation": "ggo"}\'')
    v.set_defaults(func=_cmd_validate)

    ph = sub.add_parser("phantom", help="write the synthetic SSc-ILD cohort")
    ph.add_argument("out", type=Path)
    ph.add_argument("--n", type=int, default=None, help="number of patients (default: the profile's)")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--unlabelled", type=int, default=None,
                    help="unlabelled patients written to unlabelledTr/ (default: the profile's phantom_unlabelled)")
    ph.add_argument("--controls", type=int, default=None,
                    help="patients without lung disease written to controlsTs/ (default: the profile's phantom_controls)")
    ph.add_argument("--profile", default="cpu", choices=profiles)
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
    t.add_argument("--profile", default="cpu", choices=profiles)
    t.add_argument("--fold", type=int, required=True)
    t.add_argument("--results", type=Path, default=None)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("segment", help="segment a new scan (or a folder of scans) with the trained fold ensemble")
    s.add_argument("scan", type=Path, help="NIfTI, NRRD, MHA file, a DICOM series folder, or a folder of these")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--models", type=Path, default=None, help="a run folder with fold_*/model_final.pt "
                   "(default: the study's models of the default profile under results/; the choice is printed)")
    s.add_argument("--no-tta", action="store_true", help="no flip test-time augmentation (faster)")
    s.add_argument("--force", action="store_true",
                   help="write the results even for a scan refused for want of plausible lungs (exit status 5 "
                        "otherwise); the refusal is then the report's first quality-control flag")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_segment)

    c = sub.add_parser("compare", help="change of lesion extent between a baseline and a follow-up scan")
    c.add_argument("baseline", type=Path, help="the earlier scan, or its `sscild segment` output folder")
    c.add_argument("followup", type=Path, help="the later scan, or its `sscild segment` output folder")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--models", type=Path, default=None, help="as for segment")
    c.add_argument("--no-tta", action="store_true")
    c.add_argument("--force", action="store_true", help="as for segment")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_compare)
    return p


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        if debug:
            raise
        print(f"sscild {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (SscildError, FileNotFoundError) as exc:
        if debug:
            raise
        print(f"sscild {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for a user; --debug shows it
        if debug:
            raise
        print(f"sscild {args.command}: unexpected error: {type(exc).__name__}: {_one_line(exc)} "
              "(run again with --debug for the traceback, and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
