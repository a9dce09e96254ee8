"""The ``sscild`` command line: check and build cohorts, train folds, segment new scans, compare scans.

    sscild validate DIR [--exclude-bad] [--allow-clinical-gaps] [--label-map JSON] [--brief]
                                                            check a cohort folder, report every problem
    sscild phantom OUT [--n 40] [--unlabelled 40] [--controls 8] [--seed 0] [--profile cpu]
                                                            write the synthetic cohort
    sscild import-dicom SRC OUT [--labels DIR] [--quiet]    DICOM series (one per patient) -> cohort folder
    sscild train DATA --profile P --fold K                  train one fold outside make (make trains through its notebook)
    sscild segment SCAN|FOLDER --out DIR [--models DIR] [--device cuda] [--series-uid UID] [--resume]
                                                            apply the fold ensemble to a scan or a folder of scans
    sscild segment --list-series DICOM_FOLDER               the DICOM series of a folder, and which one is read
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
import textwrap
import warnings
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
    if args.record is not None:  # the data stage: the run's validation.json, which later steps read
        from sscild.data.prepare import validate_stage

        report = validate_stage(args.data, args.record, label_map=label_map)
    else:
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
    from sscild.clinic.viewer import SEGMENT_CODES
    from sscild.data.dicom import import_dicom

    out = import_dicom(args.src, args.out, labels=args.labels, clinical=args.clinical,
                       label_map=_label_map(args.label_map), segment_codes=SEGMENT_CODES, progress=not args.quiet)
    print(f"cohort written to {out}")
    return 0


def _cmd_prepare(args) -> int:
    from sscild.data.prepare import prepare_stage
    from sscild.paths import RunPaths

    run = RunPaths.for_run(args.data, args.profile, args.results)
    cases = prepare_stage(args.data, run, get_profile(args.profile), progress=not args.quiet)
    print(f"prepare: {len(cases)} cases in {run.cache} ({int((~cases['reused']).sum())} preprocessed now), "
          f"{run.cases.name} and {run.splits.name} written")
    return 0


def _cmd_pretrain(args) -> int:
    from sscild.model.device import set_threads
    from sscild.model.pretrain import cohort_pretrained_state
    from sscild.model.selftrain import pretrains, unlabelled_scans
    from sscild.paths import RunPaths

    prof = get_profile(args.profile)
    run = RunPaths.for_run(args.data, args.profile, args.results)
    scans = unlabelled_scans(run) if pretrains(prof) else {}
    if not scans:
        print(f"pretrain: nothing to do (profile {prof.name!r}: semi_supervised={prof.semi_supervised!r}, "
              f"{len(unlabelled_scans(run))} unlabelled scans passed validation)")
        return 0
    device = _machine(args)
    set_threads()
    _, summary = cohort_pretrained_state(run, prof, scans, device=device, log=None if args.quiet else print)
    print(f"pretrain: {'reused' if summary['reused'] else 'trained'} on {summary['scans']} unlabelled scans "
          f"({summary['steps']} steps), {run.root / 'pretrained'}")
    return 0


def _cmd_train(args) -> int:
    from sscild.paths import RunPaths
    from sscild.model.train import train_fold

    run = RunPaths.for_run(args.data, args.profile, args.results)
    summary = train_fold(run, get_profile(args.profile), args.fold, progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("fold", "steps", "seconds") if k in summary}))
    return 0


def _machine(args):
    """The device and threads asked for on the command line (threads through SSCILD_THREADS, as make sets them)."""
    import os

    from sscild.model.device import device_from_name

    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads must be 1 or more, got {args.threads}.")
        os.environ["SSCILD_THREADS"] = str(args.threads)
    try:
        return device_from_name(args.device)
    except SscildError as exc:  # a device this machine lacks is a bad option value
        raise UsageError(str(exc)) from None


def _list_series(folder: Path) -> int:
    from sscild.data.series import list_series

    rows = list_series(folder)
    if not rows:
        raise SscildError(f"{folder}: no DICOM series found in this folder or below it.")
    print(f"{len(rows)} DICOM series in {folder} (* = read by default; choose another with --series-uid):")
    for r in rows:
        thick = f"{r['slice_thickness_mm']:g} mm" if r.get("slice_thickness_mm") else "? mm"
        kind = "lung kernel" if r.get("lung_kernel") else ""
        print(f"{'*' if r.get('chosen') else ' '} {r['series_uid'] or '(no SeriesInstanceUID)'}\n"
              f"    {r['slices']} slices, {thick}, kernel {r.get('kernel') or '?'} {kind}, "
              f"{r.get('modality') or '?'}, series {r.get('series_number') or '?'}: {r.get('description') or ''}"
              f"\n    in {r['folder']}")
    return 0


def _cmd_segment(args) -> int:
    from sscild.clinic.batch import discover_scans, is_batch_folder, segment_batch
    from sscild.clinic.segment import segment_scan
    from sscild.model.loading import find_models, load_ensemble

    if args.list_series:
        return _list_series(args.scan)
    if args.out is None:
        raise UsageError("--out is required: the folder the results are written to (e.g. --out results/chest).")
    tta = False if args.no_tta else None
    if not args.scan.exists():
        raise SscildError(f"{args.scan}: no such file or folder. Fix: check the path of the scan.")
    device = _machine(args)
    if args.models is not None:
        find_models(args.models)
    if is_batch_folder(args.scan) and not args.series_uid:
        items = discover_scans(args.scan)
        if not items:
            raise SscildError(f"{args.scan}: no scans inside (NIfTI, NRRD, MHA files or DICOM series folders).")
        ensemble = load_ensemble(args.models, device)
        if not args.quiet:
            print(ensemble.choice, file=sys.stderr)
        rows = segment_batch(items, args.out, ensemble=ensemble, tta=tta, progress=not args.quiet,
                             refuse=not args.force, resume=args.resume, device=device)
        failed = [r for r in rows if r["status"] != "ok"]
        for r in failed:  # the reason usually names the file already
            reason = r["error"] if r["error"].startswith(r["scan"]) else f"{r['scan']}: {r['error']}"
            print(f"sscild segment: failed: {reason}", file=sys.stderr)
        resumed = sum(1 for r in rows if r.get("resumed"))
        warned = sum(1 for r in rows if r.get("warnings"))
        print(f"{len(rows) - len(failed)} of {len(rows)} scan(s) segmented"
              + (f" ({resumed} from the earlier run)" if resumed else "")
              + (f"; {warned} with warnings (column 'warnings')" if warned else "")
              + f"; table: {args.out / 'batch.csv'}")
        return 1 if failed else 0
    if args.resume:
        raise UsageError("--resume applies to a folder of scans (a batch); for one scan, run it again.")
    report = segment_scan(args.scan, args.out, models=args.models, tta=tta, progress=not args.quiet,
                          refuse=not args.force, device=device, series_uid=args.series_uid)
    if not args.quiet or args.models is None:
        print(report["models_choice"], file=sys.stderr)
    print(json.dumps(report["summary"], indent=2))
    return 0


def _cmd_compare(args) -> int:
    from sscild.clinic.compare import compare_scans

    device = _machine(args)
    result = compare_scans(args.baseline, args.followup, args.out, models=args.models,
                           tta=False if args.no_tta else None, progress=not args.quiet, refuse=not args.force,
                           device=device)
    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    for r in (r for r in result["change"] if r["zone"] == "whole lung"):
        print(f"{r['class']:<20} {f(r['baseline_pct'], '6.2f')} % -> {f(r['followup_pct'], '6.2f')} %  "
              f"change {f(r['change_pp'], '+6.2f')} pp ({f(r['change_ml'], '+.1f')} mL)  {r['mcid']}")
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"report: {result['outputs']['html']}")
    return 0


_EXIT_CODES = """exit status:
  0  done
  1  a problem in the input (the message names it and the fix), or a scan of a batch failed
  2  a bad option or argument
  3  (validate) clinical values would be set aside; 4: clinical rows, cases or the table left out
  5  (segment, compare) no plausible lungs found: "is this a chest CT?"; nothing written (--force writes)
  130 interrupted
Errors are one line; --debug (anywhere on the line) shows the traceback."""


def _sub(sub, name: str, summary: str, description: str, examples: str, **kw):
    """A subcommand whose help has a description, examples and the exit codes."""
    return sub.add_parser(name, help=summary, description=textwrap.fill(description, 96),
                          epilog=f"examples:\n{examples}\n\n{_EXIT_CODES}",
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def _run_arguments(parser, profiles) -> None:
    """The arguments naming a run of the study: the cohort folder, the profile, the results folder."""
    parser.add_argument("data", type=Path, help="the cohort folder")
    parser.add_argument("--profile", default="cpu", choices=profiles, help="the profile (default cpu)")
    parser.add_argument("--results", type=Path, default=None, help="the results folder (default: results/)")


# long: one declaration per subcommand and option (descriptions, examples and help of the whole command line)
def build_parser() -> argparse.ArgumentParser:
    from sscild.profiles import PROFILES

    p = _Parser(prog="sscild", formatter_class=argparse.RawDescriptionHelpFormatter,
                description=textwrap.fill("sscild: segmentation of systemic-sclerosis interstitial lung disease on chest CT (normal "
                            "lung, established fibrosis, ground-glass opacity) with a fold ensemble, and the study that "
                            "trains and evaluates it. `make all` runs the study; this command checks and builds "
                            "cohorts and applies the trained models to new scans.", 96),
                epilog="examples:\n"
                       "  sscild segment chest.nii.gz --out results/chest\n"
                       "  sscild segment dicom/patient1/ --out out/p1 --device cuda\n"
                       "  sscild validate data/mycohort\n"
                       "  sscild <command> --help      (each command's options and examples)\n\n" + _EXIT_CODES)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.add_argument("--version", action="version", version=f"sscild {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    profiles = list(PROFILES)

    v = _sub(sub, "validate", "check a cohort folder and report every problem at once",
             "Check a cohort folder (dataset.json, imagesTr/, labelsTr/, clinical.csv, optional unlabelledTr/ and "
             "controlsTs/) and list every problem at once, each with its fix. Nothing is changed.",
             "  sscild validate data/mycohort\n"
             "  sscild validate data/mycohort --exclude-bad --allow-clinical-gaps\n"
             "  sscild validate data/mycohort --label-map '{\"reticulation\": \"ef\", \"consolidation\": \"ggo\"}'")
    v.add_argument("data", type=Path, help="the cohort folder")
    v.add_argument("--exclude-bad", action="store_true", help="succeed if usable cases remain; list exclusions")
    v.add_argument("--allow-clinical-gaps", action="store_true",
                   help="succeed although clinical values or rows would be set aside (exit 3 / 4 otherwise)")
    v.add_argument("--brief", action="store_true", help="print only the summary line when the cohort passes")
    v.add_argument("--record", type=Path, default=None,
                   help="also write the report, exclusions and label map to this JSON file (a run's validation.json)")
    v.add_argument("--label-map", help='JSON mapping of dataset.json label names to roles, e.g. '
                   '\'{"reticulation": "ef", "honeycombing": "ef", "consolidation": "ggo"}\'')
    v.set_defaults(func=_cmd_validate)

    ph = _sub(sub, "phantom", "write the synthetic SSc-ILD cohort",
              "Write the built-in synthetic cohort (phantom chest CTs with EF and GGO, labels and a clinical table "
              "in the cohort format). Synthetic: for running and testing the pipeline, never for clinical claims.",
              "  sscild phantom data/synthetic-cpu --profile cpu\n"
              "  sscild phantom /tmp/tiny --n 4 --unlabelled 0 --controls 1 --profile smoke")
    ph.add_argument("out", type=Path, help="the cohort folder to write (must not exist or be empty)")
    ph.add_argument("--n", type=int, default=None, help="number of patients (default: the profile's)")
    ph.add_argument("--seed", type=int, default=0, help="random seed of the generator (default 0)")
    ph.add_argument("--unlabelled", type=int, default=None,
                    help="unlabelled patients written to unlabelledTr/ (default: the profile's phantom_unlabelled)")
    ph.add_argument("--controls", type=int, default=None,
                    help="patients without lung disease written to controlsTs/ (default: the profile's phantom_controls)")
    ph.add_argument("--profile", default="cpu", choices=profiles, help="the profile whose geometry and size to use")
    ph.add_argument("--quiet", action="store_true", help="no progress bar")
    ph.set_defaults(func=_cmd_phantom)

    d = _sub(sub, "import-dicom", "DICOM series (one folder per patient) -> cohort folder",
             "Turn a folder of DICOM series (one sub-folder per patient) into a pseudonymised cohort folder: case ids "
             "instead of names, no DICOM header copied, identifying clinical columns dropped, the key from case ids "
             "to folders written outside the cohort. Labels may be plain label maps or a radiologist's corrected "
             "segmentation (3D Slicer .seg.nrrd, DICOM SEG), matched to the study's labels by segment name or code.",
             "  sscild import-dicom dicom/ data/mycohort --labels masks/ --clinical pft.csv\n"
             "  sscild import-dicom dicom/ data/corrected --labels slicer_exports/ --quiet\n"
             "  sscild import-dicom dicom/ data/c --labels segs/ --label-map '{\"consolidation\": \"ggo\"}'")
    d.add_argument("src", type=Path, help="folder with one sub-folder of DICOM files per patient")
    d.add_argument("out", type=Path, help="the cohort folder to create (must not exist or be empty)")
    d.add_argument("--labels", type=Path, default=None,
                   help="folder of label files named after the patient folders: label maps on the CT's grid, or "
                        "corrected segmentations (3D Slicer <patient>.seg.nrrd, DICOM SEG <patient>.dcm / _seg.dcm)")
    d.add_argument("--clinical", type=Path, default=None, help="CSV with a patient column matching the folder names")
    d.add_argument("--label-map", help='JSON mapping segment names to roles (normal, ef, ggo, background to drop), '
                   'e.g. \'{"consolidation": "ggo"}\'')
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_import_dicom)

    pr = _sub(sub, "prepare", "preprocess a validated cohort into the cache and split it into folds",
              "The data stage after `sscild validate --record`: preprocess the usable cases into the run's cache and "
              "write cases.csv (the preprocessing table) and splits.json (patient-wise folds stratified by lesion "
              "extent). make runs it (`make data`); the Data chapter reads what it wrote.",
              "  sscild validate data/mycohort --exclude-bad --record results/mycohort/cpu/validation.json\n"
              "  sscild prepare data/mycohort --profile cpu")
    _run_arguments(pr, profiles)
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_cmd_prepare)

    pt = _sub(sub, "pretrain", "pretrain the study network on the cohort's unlabelled scans",
              "Pretrain the network once on the validated unlabelled scans (unlabelledTr/) by restoring corrupted "
              "patches, when the profile's semi_supervised is 'pretrain'; every fold then starts from these weights. "
              "Kept in <run>/pretrained/ and reused while network, steps, preprocessing and scans are unchanged. "
              "make runs it before the folds.",
              "  sscild pretrain data/synthetic-cpu --profile cpu")
    _run_arguments(pt, profiles)
    pt.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps")
    pt.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core, or SSCILD_THREADS)")
    pt.add_argument("--quiet", action="store_true", help="no step log")
    pt.set_defaults(func=_cmd_pretrain)

    t = _sub(sub, "train", "train one cross-validation fold (outside make)",
             "Train one fold of a run whose data stage has run (`make data`: splits and cache in the results folder). "
             "`make all` / `make train` train the folds through their notebooks; this is the same training for "
             "scripts and schedulers.",
             "  sscild train data/synthetic-cpu --profile cpu --fold 0")
    _run_arguments(t, profiles)
    t.add_argument("--fold", type=int, required=True, help="the fold index, 0 .. folds - 1")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    s = _sub(sub, "segment", "segment a new scan (or a folder of scans) with the trained fold ensemble",
             "Segment a chest CT into normal lung, established fibrosis (EF) and ground-glass opacity (GGO) with "
             "the fold ensemble, and write: the label map and uncertainty map (NIfTI, the scan's grid), a JSON/CSV/"
             "HTML report (volumes, % of lung, extent stage, zones, densitometry, uncertainty, quality-control "
             "flags, the model files' SHA-256 and training cohort), an overlay PNG, 3D Slicer and ITK-SNAP files, "
             "and for a DICOM series a DICOM SEG. A folder of scans (files or one sub-folder per DICOM series) is a "
             "batch: one output folder per scan and batch.csv, written as it goes.",
             "  sscild segment chest.nii.gz --out out/chest\n"
             "  sscild segment dicom/patient1/ --out out/p1 --device cuda:0\n"
             "  sscild segment --list-series dicom/patient1/\n"
             "  sscild segment dicom/patient1/ --out out/p1 --series-uid 1.2.840.113619.2.55.3.12345\n"
             "  sscild segment scans/ --out out/batch --resume        (a batch, continuing an interrupted one)\n"
             "  sscild segment chest.nrrd --out out/c --models results/mycohort/paper --threads 8")
    s.add_argument("scan", type=Path, help="NIfTI, NRRD, MHA file, a DICOM series folder, or a folder of these")
    s.add_argument("--out", type=Path, default=None, help="output folder (created; required unless --list-series)")
    s.add_argument("--models", type=Path, default=None, help="a run folder with fold_*/model_final.pt "
                   "(default: the study's models of the default profile under results/; the choice is printed)")
    s.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: every core, or SSCILD_THREADS)")
    s.add_argument("--series-uid", default=None,
                   help="for a DICOM folder with several series: the SeriesInstanceUID to read (default: the most "
                        "slices, then the lung kernel; see --list-series)")
    s.add_argument("--list-series", action="store_true",
                   help="list the DICOM series of the folder (UID, slices, kernel, description) and which one would be "
                        "read; writes nothing")
    s.add_argument("--resume", action="store_true",
                   help="batch: keep the scans an earlier run of this --out finished (batch.csv) and segment the rest")
    s.add_argument("--no-tta", action="store_true", help="no flip test-time augmentation (faster)")
    s.add_argument("--force", action="store_true",
                   help="write the results even for a scan refused for want of plausible lungs (exit status 5 "
                        "otherwise); the refusal is then the report's first quality-control flag")
    s.add_argument("--quiet", action="store_true", help="no progress bar or model choice")
    s.set_defaults(func=_cmd_segment)

    c = _sub(sub, "compare", "change of lesion extent between a baseline and a follow-up scan",
             "Segment (or reuse the `sscild segment` output of) two scans of one patient and report the change of "
             "EF, GGO and lesion per zone in percentage points and mL, with the acquisition differences (kernel, "
             "slice thickness, patient) that make a change hard to read. Writes compare.json, .csv and .html.",
             "  sscild compare baseline.nii.gz followup.nii.gz --out out/p1-change\n"
             "  sscild compare out/p1-2024/ out/p1-2025/ --out out/p1-change   (reuse two segment outputs)")
    c.add_argument("baseline", type=Path, help="the earlier scan, or its `sscild segment` output folder")
    c.add_argument("followup", type=Path, help="the later scan, or its `sscild segment` output folder")
    c.add_argument("--out", type=Path, required=True, help="output folder (created)")
    c.add_argument("--models", type=Path, default=None, help="as for segment")
    c.add_argument("--device", default="auto", help="as for segment")
    c.add_argument("--threads", type=int, default=None, help="as for segment")
    c.add_argument("--no-tta", action="store_true", help="no flip test-time augmentation (faster)")
    c.add_argument("--force", action="store_true", help="as for segment")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_compare)
    return p


def _warning_printer(command: str):
    """Python warnings as ``sscild <command>: warning: <message>`` (not ``path/to/module.py:296: UserWarning``);
    library notes that need no action from the user (deprecations, matplotlib layout) are not shown."""
    quiet = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, quiet) or "tight_layout" in str(message):
            return
        print(f"sscild {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)

    return show


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
    if not debug:
        warnings.showwarning = _warning_printer(args.command)
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
