"""Screen a training setting on a few folds: held-out Dice, false lesion on controls, real-CT robustness.

    .venv/bin/python scripts/screen_training.py --base results/synthetic-cpu/cpu --name dark50 \\
        --set lung_density_aug=0.5 --folds 0 1 [--out build/screens] [--record benchmarks/study_robustness_screen.json]

A quick look before a full cross-validation: the variant's folds are trained side by side (one thread
each) in ``OUT/NAME`` on the base run's cache, splits and pretrained weights (nothing of the base run is
written to), with the base profile plus the ``--set KEY=VALUE`` settings (values are JSON; ``extra.KEY``
sets an entry of the profile's ``extra``). Then, with those folds' models:

* **Dice** of the folds' held-out patients (total lesion, EF, GGO, lung), on the network's grid (the
  Segmentation chapter scores on the scan's own grid; this is for comparing variants);
* **controls**: the false lesion the folds' ensemble calls on the cohort's ``controlsTs/``
  (:mod:`sscild.model.controls`);
* **real CT**: the robustness family on ``--scans`` (:mod:`sscild.analysis.robustness`): lung volume
  change and Dice for each change, and lesion share.

``--name base`` scores the base run's own folds (no training), for the comparison. With ``--record``
the result is added to (or replaces the same name in) a JSON record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_settings(items) -> dict:
    out: dict = {}
    for item in items or []:
        key, _, val = item.partition("=")
        if not _:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        if key.startswith("extra."):
            out.setdefault("extra", {})[key[6:]] = _value(val)
        else:
            v = _value(val)
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def variant_run(base: Path, out: Path, name: str):
    """The variant's run folder, sharing the base run's cache, splits and pretrained weights."""
    from sscild.paths import RunPaths

    if name == "base":
        return RunPaths(results=base.parents[1], cohort=base.parent.name, profile=base.name)
    run = RunPaths(results=out / name, cohort=base.parent.name, profile=base.name)
    run.root.mkdir(parents=True, exist_ok=True)
    if not (run.root / "cache").exists():
        (run.root / "cache").symlink_to(base.resolve() / "cache")
    for f in ("splits.json", "validation.json", "run_context.json"):
        if (base / f).exists() and not (run.root / f).exists():
            shutil.copy(base / f, run.root / f)
    if (base / "pretrained").is_dir() and not (run.root / "pretrained").exists():
        shutil.copytree(base / "pretrained", run.root / "pretrained")
    return run


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train_folds(run, profile_name: str, settings: dict, folds) -> None:
    """Each fold in its own process, one thread each, side by side."""
    code = ("import json, sys; from pathlib import Path; from sscild.paths import RunPaths; "
            "from sscild.profiles import get_profile; from sscild.model.train import train_fold; "
            "s = json.loads(sys.argv[1]); s = {k: tuple(v) if isinstance(v, list) else v for k, v in s.items()}; "
            "run = RunPaths(results=Path(sys.argv[2]), cohort=sys.argv[3], profile=sys.argv[4]); "
            "train_fold(run, get_profile(sys.argv[4]).with_overrides(**s), int(sys.argv[5]), progress=False)")
    env = dict(os.environ, SSCILD_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "lib"))
    procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(settings), str(run.results), run.cohort,
                               profile_name, str(f)], env=env) for f in folds]
    if any(p.wait() for p in procs):
        raise SystemExit("a fold failed to train (its error is above)")


def held_out_dice(run, folds) -> dict:
    import numpy as np

    from sscild.data.cache import load_cached
    from sscild.data.folds import read_splits
    from sscild.model.inference import postprocess_labels, predict_preprocessed
    from sscild.model.loading import load_fold_model

    splits = read_splits(run.splits)
    rows = []
    for f in folds:
        net, meta = load_fold_model(run.fold_dir(f) / "model_final.pt", "cpu")
        for cid in sorted(splits[f]["val"]):
            pre = load_cached(run, cid)
            lab, _ = postprocess_labels(predict_preprocessed([net], pre, tta=True, cpu_bf16=False), pre, meta["profile"])
            r = {}
            for cls, sel in (("lesion", lambda a: a >= 2), ("ef", lambda a: a == 2), ("ggo", lambda a: a == 3),
                             ("lung", lambda a: a > 0)):
                a, b = sel(lab), sel(pre.label)
                s = int(a.sum()) + int(b.sum())
                r[cls] = 2.0 * int((a & b).sum()) / s if s else np.nan
            rows.append({"case": cid, "fold": f, **r})
    return {"per_case": rows, **{k: round(float(np.nanmean([r[k] for r in rows])), 4)
                                 for k in ("lesion", "ef", "ggo", "lung")}}


def fold_ensemble(run, folds, out: Path):
    """A run folder holding only the screened folds (links), for the ensemble."""
    from sscild.paths import RunPaths

    ens = RunPaths(results=out / f"{run.results.name}-ensemble", cohort=run.cohort, profile=run.profile)
    ens.root.mkdir(parents=True, exist_ok=True)
    for f in folds:
        link = ens.fold_dir(f)
        if not link.exists():
            link.symlink_to(run.fold_dir(f).resolve())
    if run.validation.exists():
        shutil.copy(run.validation, ens.validation)
    return ens


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the base run folder (results/<cohort>/<profile>)")
    ap.add_argument("--name", required=True, help="the variant's name (base: score the base run's own folds)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="profile settings of the variant")
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--out", type=Path, default=REPO / "build" / "screens")
    ap.add_argument("--scans", type=Path, default=REPO.parent / "shared" / "data" / "real-ct")
    ap.add_argument("--record", type=Path, default=None)
    args = ap.parse_args(argv)

    from sscild.analysis.realcheck import list_volumes
    from sscild.analysis.robustness import robustness_check
    from sscild.model.controls import score_controls
    from sscild.machine import describe_machine
    from sscild.model.device import set_threads

    settings = parse_settings(args.set)
    t0 = time.perf_counter()
    run = variant_run(args.base, args.out, args.name)
    if args.name != "base":
        train_folds(run, args.base.name, settings, args.folds)
    t_train = time.perf_counter() - t0
    set_threads()
    dice = held_out_dice(run, args.folds)
    ens = fold_ensemble(run, args.folds, args.out)
    controls = score_controls(ens, progress=False)
    scans = list_volumes(args.scans) if args.scans.is_dir() else []
    robust = robustness_check(scans, ens.root, keep_views=(), progress=False)[0] if scans else None
    result = {"name": args.name, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
              "folds": args.folds, "date": dt.date.today().isoformat(), "commit": _commit(),
              "machine": describe_machine(), "train_seconds": round(t_train, 1),
              "dice": dice, "controls_lesion_pct": controls["lesion_pct"].round(3).tolist(),
              "real_ct": robust.to_dict(orient="records") if robust is not None else []}
    print(json.dumps({k: result[k] for k in ("name", "settings", "train_seconds")}))
    print("held-out Dice:", {k: dice[k] for k in ("lesion", "ef", "ggo", "lung")})
    print("controls, false lesion % of lung:", result["controls_lesion_pct"])
    if robust is not None:
        print(robust[["scan", "change", "lung_change_pct", "lung_dice", "network_lung_change_pct", "lesion_pct"]]
              .to_string(index=False))
    if args.record is not None:
        rec = json.loads(args.record.read_text()) if args.record.exists() else {"variants": []}
        rec["variants"] = [v for v in rec["variants"] if v["name"] != args.name] + [result]
        args.record.write_text(json.dumps(rec, indent=1) + "\n")
        print(f"recorded in {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
