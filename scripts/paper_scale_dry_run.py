"""Dry run of `make all PROFILE=paper` at full size on this machine: every stage timed and measured.

    .venv/bin/python scripts/paper_scale_dry_run.py [--work /tmp/paperscale] [--n 8] [--slices 340]
        [--steps 2] [--out benchmarks/paper_scale_cpu.json]

What it does:

1. **Cohort.** A synthetic phantom cohort at volumetric HRCT geometry: ``--n`` labelled patients
   (default 8) of 512 x 512 pixels of 0.7 mm and a nominal ``--slices`` slices of 1.0 mm (each scan
   keeps at least 90 % of them, so >= 306 with the default 340), plus ``--unlabelled`` scans for
   pretraining and ``--controls`` lungs without disease. It is written as a user's cohort folder
   (``DATA=``), so make treats it like one; its generation is timed as a stage of its own (for the
   built-in cohort, make generates it).
2. **Stages.** ``make <target> PROFILE=paper DATA=<cohort> RESULTS=<work>/results STEPS=<steps>``,
   one target after the other, in the order make itself would build them: data (validation, cache,
   splits, Data chapter), train (pretraining and every fold, ``STEPS`` steps each: a token budget,
   nothing else changes), each chapter, the book. Everything else is the paper profile as it is.
3. **Measured per stage.** Wall time; CPU time (user + system of make and all its descendants,
   ``os.wait4``); peak resident memory of the largest single process (``ru_maxrss``) and of all
   the stage's processes together (sampled every 0.5 s): their resident sizes summed, which count
   memory-mapped cache pages once per process and although the kernel can drop them, and their
   anonymous memory summed (``RssAnon``: arrays and heap, what a stage needs and cannot give back);
   disk of the cohort and of the run folder after the stage.
4. **Extrapolated** (marked as such): the full training budget from the measured CPU step time and
   from the recorded GPU step rate (``benchmarks/gpu_paper.json``), and every stage to 40 patients,
   linearly in the cases a stage handles.

Writes the record after every stage (atomically), so an interrupted run keeps what it measured.
Another process on the machine inflates wall times (the record notes the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

GIB = 1024 ** 3

# (stage, make target relative to the run folder or a phony target, what scales with the cases)
STAGES = [
    ("data", "data", "cases"),
    ("train", "train", "folds"),
    ("training_chapter", "{nb}/02_training.ipynb", "folds"),
    ("segmentation", "{nb}/03_segmentation.ipynb", "cases"),
    ("clinical", "{nb}/04_clinical.ipynb", "cases"),
    ("abstract", "{nb}/00_abstract.ipynb", "none"),
    ("real_ct", "{nb}/A2_real_ct.ipynb", "none"),
    ("reproducibility", "{nb}/05_reproducibility.ipynb", "none"),
    ("book", "book", "none"),
]


def du(path: Path) -> int:
    """Bytes under ``path`` (0 when absent)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _anon_bytes(pid: int) -> int:
    """Anonymous resident memory of a process (``RssAnon``: heap and arrays, not file pages), bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemory(threading.Thread):
    """Samples the memory of a process and its descendants until stopped: the summed resident set
    (``peak``; memory-mapped cache files count in it once per process that maps them, although the
    kernel can drop those pages) and the summed anonymous memory (``peak_anon``: what a stage really
    needs; it cannot be dropped, only swapped)."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.peak_anon, self._halt = pid, every, 0, 0, threading.Event()

    def run(self):
        import psutil

        while not self._halt.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root] + root.children(recursive=True)
                rss = anon = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                        anon += _anon_bytes(p.pid)
                    except psutil.Error:
                        pass
                self.peak, self.peak_anon = max(self.peak, rss), max(self.peak_anon, anon)
            except psutil.Error:
                pass
            self._halt.wait(self.every)

    def stop(self):
        self._halt.set()
        self.join()


def run_measured(cmd: list[str], log: Path, env=None) -> dict:
    """Run ``cmd`` (output to ``log``); wall and CPU seconds, peak memory of its process tree."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
        mem = TreeMemory(proc.pid)
        mem.start()
        _, status, ru = os.wait4(proc.pid, 0)
        mem.stop()
    rc = os.waitstatus_to_exitcode(status)
    return {"exit_code": rc, "wall_seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 1),
            "peak_process_gib": round(ru.ru_maxrss * 1024 / GIB, 2),
            "peak_total_gib": round(max(mem.peak, ru.ru_maxrss * 1024) / GIB, 2),
            "peak_anon_gib": round(mem.peak_anon / GIB, 2)}


GENERATE = """
import sys
from dataclasses import replace
from sscild.profiles import PROFILES
from sscild.synthetic.writer import generate_cohort
n, slices, unl, ctl = (int(v) for v in sys.argv[2:6])
prof = replace(PROFILES["paper"], phantom_shape=(512, 512, slices), phantom_spacing=(0.7, 0.7, 1.0))
if __name__ == "__main__":
    generate_cohort(sys.argv[1], profile=prof, n=n, unlabelled=unl, controls=ctl, progress=False)
"""


def cohort_geometry(cohort: Path) -> dict:
    """Shapes of the cohort's scans (header only)."""
    import nibabel as nib

    shapes = {}
    for sub in ("imagesTr", "unlabelledTr", "controlsTs"):
        for f in sorted((cohort / sub).glob("*.nii.gz")):
            shapes.setdefault(sub, []).append(list(nib.load(str(f)).shape))
    lab = shapes.get("imagesTr", [])
    return {"scans": shapes, "labelled_cases": len(lab),
            "min_slices": min((s[2] for s in lab), default=0),
            "in_plane": sorted({f"{s[0]}x{s[1]}" for s in lab}),
            "voxels_per_case_millions": round(sum(s[0] * s[1] * s[2] for s in lab) / max(1, len(lab)) / 1e6, 1)}


def cell_times(notebook: Path, top: int = 5) -> list[dict]:
    """The slowest code cells of an executed notebook (papermill's per-cell duration): where a stage's
    time went."""
    import nbformat

    if not notebook.exists():
        return []
    cells = []
    for c in nbformat.read(notebook, as_version=4).cells:
        d = (c.get("metadata", {}).get("papermill") or {}).get("duration")
        if c.cell_type == "code" and d:
            first = next((ln.strip() for ln in c.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
            cells.append({"seconds": round(float(d), 1), "cell": first[:90]})
    return sorted(cells, key=lambda r: -r["seconds"])[:top]


STAGE_NOTEBOOKS = {"data": "01_data", "training_chapter": "02_training", "segmentation": "03_segmentation",
                   "clinical": "04_clinical", "abstract": "00_abstract", "real_ct": "A2_real_ct",
                   "reproducibility": "05_reproducibility"}


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def extrapolate(rec: dict, n_target: int) -> dict:
    """Full training budget on CPU and on the recorded GPU, and every stage at ``n_target`` patients."""
    from sscild.profiles import PROFILES

    paper = PROFILES["paper"]
    n = rec["cohort"]["labelled_cases"] or 1
    out = {"patients": n_target, "how": "linear in the patients a stage handles (the controls, scored once "
           "whatever the number of patients, not scaled); the training budget from the step times below; not measured"}
    stages = {}
    for name, _, scales in STAGES:
        s = rec["stages"].get(name)
        if not s:
            continue
        f = n_target / n if scales == "cases" else 1.0
        # the controls are scored once whatever the number of patients: not scaled
        fixed = sum(c["seconds"] for c in s.get("slowest_cells", []) if "score_controls" in c["cell"])
        stages[name] = {"wall_seconds": round((s["wall_seconds"] - fixed) * f + fixed),
                        "of_which_not_scaled_seconds": round(fixed) if fixed else None}
    steps = rec.get("train_steps_measured") or {}
    gpu = REPO / "benchmarks" / "gpu_paper.json"
    if gpu.exists():
        g = json.loads(gpu.read_text())
        rate = g.get("train", {}).get("steady_steps_per_s")
        if rate:
            fold_s = paper.iterations / rate
            out["gpu"] = {"source": "benchmarks/gpu_paper.json", "gpu": g.get("gpu"),
                          "steady_steps_per_s": rate,
                          "seconds_per_fold": round(fold_s),
                          "seconds_all_folds_one_gpu": round(fold_s * paper.num_folds),
                          "seconds_pretraining_at_fold_rate": round(paper.pretrain_steps / rate)}
            seg = g.get("segment") or {}
            if seg.get("seconds") and seg.get("input_shape"):
                out["gpu"]["segment_seconds_per_slice"] = round(seg["seconds"] / seg["input_shape"][2], 4)
    if steps.get("seconds_per_step"):
        out["cpu_full_budget"] = {
            "seconds_per_step": steps["seconds_per_step"],
            "seconds_per_fold": round(steps["seconds_per_step"] * paper.iterations),
            "days_all_folds": round(steps["seconds_per_step"] * paper.iterations * paper.num_folds / 86400, 1)}
    out["stages"] = stages
    return out


def train_step_seconds(run: Path) -> dict:
    """Measured seconds per training step, from the folds' own summaries."""
    per = []
    for f in sorted(run.glob("fold_*/train_summary.json")):
        s = json.loads(f.read_text())
        sec, it = s.get("seconds"), s.get("iterations") or s.get("steps")
        if sec and it:
            per.append(float(sec) / float(it))
    if not per:
        return {}
    return {"folds": len(per), "seconds_per_step": round(sum(per) / len(per), 2),
            "note": "token budget: includes start-up (data loading, first steps), so an upper bound"}


def annotate(record: Path, work: Path) -> int:
    """Add each stage's slowest cells to a record whose run folder is still there (papermill keeps the
    per-cell durations in the executed notebooks)."""
    from sscild.context import resolve
    from sscild.paths import write_json

    rec = json.loads(record.read_text())
    nb = resolve("paper", str(work / "cohort"), str(work / "results")).run.root / "notebooks"
    for name, stem in STAGE_NOTEBOOKS.items():
        if name in rec.get("stages", {}):
            rec["stages"][name]["slowest_cells"] = cell_times(nb / f"{stem}.ipynb")
    write_json(record, rec)
    print(f"{record}: slowest cells added")
    return 0


README_BEGIN, README_END = "<!-- paper-scale table: begin -->", "<!-- paper-scale table: end -->"


def readme_block(rec: dict) -> str:
    """The README's paper-scale block for a record (a test checks that README.md holds it)."""
    from sscild.book.provenance import paper_scale_markdown

    return (f"{README_BEGIN}\n{paper_scale_markdown(rec)}\n\nMeasured {rec['date']} at commit "
            f"`{rec['commit'][:12]}` on {rec['machine']} ({rec['cores']} cores, {rec['memory_gib']} GiB), "
            f"{rec['cohort']['labelled_cases']} patients of at least {rec['cohort']['min_slices']} slices of "
            f"512 x 512, {rec['token_steps']} training steps per network; "
            + (f"memory needed by any stage {rec['peak_anon_gib_any_stage']} GiB (resident, with the memory-mapped "
               f"cache: {rec.get('peak_gib_any_stage')} GiB)" if rec.get("peak_anon_gib_any_stage") is not None else
               f"peak resident memory of any stage {rec.get('peak_gib_any_stage')} GiB (an upper bound of what it "
               "needs: this run did not sample anonymous memory)")
            + f", disk per patient {rec.get('disk_per_case_gib')} GiB."
            + "".join(f"\n\n- {n}" for n in rec.get("notes", [])) + f"\n{README_END}")


def write_readme(record: Path) -> int:
    readme = REPO / "README.md"
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        print(f"README.md has no {README_BEGIN} ... {README_END} block", file=sys.stderr)
        return 1
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + readme_block(json.loads(record.read_text())) + tail)
    print(f"README.md: paper-scale table from {record}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "paperscale"))
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--slices", type=int, default=340)
    ap.add_argument("--unlabelled", type=int, default=2)
    ap.add_argument("--controls", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--stages", default="", help="comma-separated stages to run (default: all)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "paper_scale_cpu.json"))
    ap.add_argument("--annotate", action="store_true",
                    help="only add the slowest cells of each executed chapter to an existing record")
    ap.add_argument("--readme", action="store_true",
                    help="only write the record's table into README.md (between its paper-scale markers)")
    args = ap.parse_args(argv)
    if args.readme:
        return write_readme(Path(args.out))
    if args.annotate:
        return annotate(Path(args.out), Path(args.work).resolve())

    from sscild.context import resolve
    from sscild.machine import describe_machine
    from sscild.paths import write_json

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cohort, results, log = work / "cohort", work / "results", work / "dry_run.log"
    out = Path(args.out)
    rec = json.loads(out.read_text()) if out.exists() else {}   # a re-run keeps what it does not redo
    rec.update({
        "what": "dry run of `make all PROFILE=paper` at full HRCT size on CPU, stage by stage, with a token "
                "training budget (STEPS); synthetic phantom cohort, not the paper's data",
        "command": "python scripts/paper_scale_dry_run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": date.today().isoformat(), "commit": git_commit(), "machine": describe_machine(),
        "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "profile": "paper", "token_steps": args.steps})
    rec.setdefault("stages", {})

    def save():
        rec["extrapolated"] = extrapolate(rec, 40)
        write_json(out, rec)

    if not (cohort / "dataset.json").exists():
        print(f"cohort: generating {args.n} + {args.unlabelled} unlabelled + {args.controls} controls "
              f"at 512 x 512 x {args.slices} ...", flush=True)
        m = run_measured([sys.executable, "-c", GENERATE, str(cohort), str(args.n), str(args.slices),
                          str(args.unlabelled), str(args.controls)], log,
                         env={**os.environ, "PYTHONPATH": str(REPO / "lib")})
        if m["exit_code"]:
            print(f"cohort generation failed (log: {log})", file=sys.stderr)
            return 1
        rec["stages"]["cohort"] = {**m, "disk_cohort_gib": round(du(cohort) / GIB, 2)}
    rec["cohort"] = cohort_geometry(cohort)
    save()

    ctx = resolve("paper", str(cohort), str(results))
    run = ctx.run.root
    nb = run / "notebooks"
    make = ["make", "--no-print-directory", "PROFILE=paper", f"DATA={cohort}", f"RESULTS={results}",
            f"STEPS={args.steps}", f"BOOK_OUT={work / 'book'}"]
    wanted = [s for s in args.stages.split(",") if s]
    for name, target, _ in STAGES:
        if wanted and name not in wanted:
            continue
        print(f"{name}: make {target.format(nb=nb)} ...", flush=True)
        load = os.getloadavg()[0]
        m = run_measured(make + [target.format(nb=nb)], log)
        m.update({"load_before": round(load, 2), "disk_run_gib": round(du(run) / GIB, 2),
                  "disk_cache_gib": round(du(run / "cache") / GIB, 2)})
        if name in STAGE_NOTEBOOKS:
            m["slowest_cells"] = cell_times(nb / f"{STAGE_NOTEBOOKS[name]}.ipynb")
        rec["stages"][name] = m
        if name == "train":
            rec["train_steps_measured"] = train_step_seconds(run)
        save()
        print(f"  {m['wall_seconds']} s wall, {m['cpu_seconds']} s CPU, peak {m['peak_total_gib']} GiB "
              f"(largest process {m['peak_process_gib']} GiB), exit {m['exit_code']}", flush=True)
        if m["exit_code"]:
            print(f"{name} failed: see {log}", file=sys.stderr)
            return 1
    rec["peak_gib_any_stage"] = max(s.get("peak_total_gib", 0) for s in rec["stages"].values())
    rec["peak_anon_gib_any_stage"] = max(s.get("peak_anon_gib", 0) for s in rec["stages"].values())
    rec["disk_per_case_gib"] = round((du(cohort) / max(1, rec["cohort"]["labelled_cases"]
                                                      + args.unlabelled + args.controls)
                                      + du(run / "cache") / max(1, rec["cohort"]["labelled_cases"])) / GIB, 2)
    save()
    print(json.dumps({k: rec[k] for k in ("peak_gib_any_stage", "disk_per_case_gib")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
