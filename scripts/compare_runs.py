"""Are two runs of the study the same? Compares every number two results folders hold.

    .venv/bin/python scripts/compare_runs.py RUN_A RUN_B      # e.g. results/synthetic-cpu/cpu

A run folder is ``<results>/<cohort>/<profile>``. Compared, leaving out what differs between two runs
by nature (wall times, rates, dates, machine load, absolute folders):

* every JSON file of the run (summaries, validation report, splits, each fold's ``train_summary.json``),
  key by key;
* every CSV file (per-case metrics, correlations, each fold's ``epochs.csv`` and ``history.csv``), cell by
  cell, without columns that hold times;
* the label maps in ``predictions/`` (voxel arrays) and the weights in each ``model_final.pt``;
* in each executed chapter notebook, every glued value (``glue()``: its text form), every figure
  glued or displayed (PNG bytes) and every markdown or HTML output (the prose with its numbers, the
  tables), by name and order.

Prints each difference and a last line ``identical`` or ``N differences``; exits 1 on differences.
Used to show that a change that should not move any number (a pure move of code) did not.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from pathlib import Path

# model_sha256, and the controls manifest's "models" (the same file hashes): a checkpoint file embeds its
# temporary file name, so its bytes differ while its weights (compared separately) do not
VOLATILE = re.compile(r"(second|_s$|_per_s|per_step|^time|_time|date|elapsed|wall|load|host|node|python|"
                      r"version|processor|model_sha256|^models$|started|finished|duration|^when|pid|_dir$|^path|_path$|"
                      r"command|memory|mem_)",
                      re.I)


def _json_diff(a, b, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if VOLATILE.search(str(k)):
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'B' if k not in a else 'A'}")
            else:
                _json_diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} items against {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _json_diff(x, y, f"{where}[{i}]", out)
    elif a != b and not (a != a and b != b):  # NaN == NaN here
        out.append(f"{where}: {a!r} != {b!r}")


def _csv_diff(pa: Path, pb: Path, where: str, out: list[str]) -> None:
    ra = list(csv.DictReader(pa.open()))
    rb = list(csv.DictReader(pb.open()))
    if len(ra) != len(rb):
        out.append(f"{where}: {len(ra)} rows against {len(rb)}")
    for i, (x, y) in enumerate(zip(ra, rb)):
        for k in sorted(set(x) | set(y)):
            if VOLATILE.search(k):
                continue
            if x.get(k) != y.get(k):
                out.append(f"{where} row {i} {k}: {x.get(k)!r} != {y.get(k)!r}")


def _digest_nifti(p: Path) -> str:
    import nibabel as nib
    import numpy as np

    img = nib.load(str(p))
    return hashlib.sha256(np.ascontiguousarray(np.asarray(img.dataobj)).tobytes()
                          + np.asarray(img.affine).tobytes()).hexdigest()


def _digest_weights(p: Path) -> str:
    import torch

    h = hashlib.sha256()

    def walk(o):
        if torch.is_tensor(o):
            h.update(o.detach().float().cpu().numpy().tobytes())
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            for x in o:
                walk(x)

    walk(torch.load(p, map_location="cpu", weights_only=False))
    return h.hexdigest()


def _notebook_values(p: Path) -> list[tuple[str, str]]:
    """The outputs of an executed notebook in order, as ``(what, text)``: glued values by name (their
    text form; figures as a PNG digest), displayed figures (PNG digest), markdown and HTML outputs."""
    nb = json.loads(p.read_text())
    items: list[tuple[str, str]] = []
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            name = (o.get("metadata", {}).get("scrapbook") or {}).get("name")
            for mime, v in data.items():
                text = "".join(v) if isinstance(v, list) else str(v)
                if "image" in mime:
                    text = hashlib.sha256(text.encode()).hexdigest()[:16]
                    what = f"glue {name} [png]" if name else "figure"
                elif name:
                    what = f"glue {name} [{mime.rsplit('/', 1)[-1]}]"
                elif mime in ("text/markdown", "text/html"):
                    what = mime
                else:
                    continue
                items.append((what, text))
    return items


def _short(v: str | None) -> str:
    return repr(v if v is None or len(v) < 120 else v[:117] + "...")


def _notebook_diff(va: list[tuple[str, str]], vb: list[tuple[str, str]], where: str, out: list[str]) -> None:
    """Outputs added, removed or changed between two runs of a notebook (aligned by content, so one
    added paragraph does not shift every later comparison)."""
    import difflib

    sm = difflib.SequenceMatcher(a=va, b=vb, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            continue
        if op == "replace" and i2 - i1 == j2 - j1:
            for (wa, ta), (wb, tb) in zip(va[i1:i2], vb[j1:j2]):
                out.append(f"{where} {wa}: {_short(ta)} != {_short(tb)}" if wa == wb else
                           f"{where} {wa} {_short(ta)} became {wb} {_short(tb)}")
            continue
        for wa, ta in va[i1:i2]:
            out.append(f"{where} only in A: {wa} {_short(ta)}")
        for wb, tb in vb[j1:j2]:
            out.append(f"{where} only in B: {wb} {_short(tb)}")


def compare(a: Path, b: Path) -> list[str]:
    out: list[str] = []
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    skip = re.compile(r"(^cache/|runlog\.json$|\.lock$|\.failed\.ipynb$|checkpoint_latest|^slurm/|\.tmp|progress)")
    for rel in sorted(files_a | files_b, key=str):
        s = str(rel)
        if skip.search(s):
            continue
        if rel not in files_a or rel not in files_b:
            out.append(f"{s}: only in {'B' if rel not in files_a else 'A'}")
            continue
        pa, pb = a / rel, b / rel
        if s.endswith(".json"):
            _json_diff(json.loads(pa.read_text()), json.loads(pb.read_text()), s, out)
        elif s.endswith(".csv"):
            _csv_diff(pa, pb, s, out)
        elif s.endswith(".nii.gz"):
            if _digest_nifti(pa) != _digest_nifti(pb):
                out.append(f"{s}: label maps differ")
        elif s.endswith(".pt"):
            if _digest_weights(pa) != _digest_weights(pb):
                out.append(f"{s}: weights differ")
        elif s.endswith(".ipynb"):
            _notebook_diff(_notebook_values(pa), _notebook_values(pb), s, out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--max", type=int, default=60, help="differences to print (all are counted)")
    args = ap.parse_args(argv)
    for r in (args.run_a, args.run_b):
        if not r.is_dir():
            ap.error(f"{r} is not a folder (give <results>/<cohort>/<profile>)")
    diffs = compare(args.run_a, args.run_b)
    for d in diffs[: args.max]:
        print(d)
    if len(diffs) > args.max:
        print(f"... and {len(diffs) - args.max} more")
    print("identical" if not diffs else f"{len(diffs)} differences")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
