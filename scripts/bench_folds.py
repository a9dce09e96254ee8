"""How should folds share a CPU? One fold on every core, or one fold per core side by side.

    .venv/bin/python scripts/bench_folds.py [--profile cpu] [--steps 150] [--out benchmarks/fold_parallel_cpu.json]

Runs ``scripts/bench_train.py`` (the real training step of the profile) twice, in one session on one
machine: once alone with all cores (``SSCILD_THREADS=<cores>``), then as ``<cores>`` copies side by side
with one thread each, and records the training throughput of each way (steps per second of all folds
together) and their ratio. The ratio, measured side by side, is what holds from one machine of the
kind to the next; :func:`sscild.context.fold_parallelism` follows it (one thread per fold on a CPU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench(threads: int, steps: int, profile: str, copies: int = 1) -> list[dict]:
    """Run ``copies`` bench_train processes at once with ``threads`` threads each; their records."""
    env = dict(os.environ, SSCILD_THREADS=str(threads), OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"b{i}.json" for i in range(copies)]
        procs = [subprocess.Popen([sys.executable, str(REPO / "scripts" / "bench_train.py"), "--profile", profile,
                                   "--steps", str(steps), "--out", str(o)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for o in outs]
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"bench_train failed:\n{err[-3000:]}")
        return [json.loads(o.read_text()) for o in outs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "fold_parallel_cpu.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "lib"))
    from sscild.context import count_cpus
    from sscild.paths import atomic_path, unroot

    cores = count_cpus()
    print(f"one fold on {cores} threads ...", flush=True)
    alone = _bench(cores, args.steps, args.profile)[0]
    print(f"{cores} folds side by side, 1 thread each ...", flush=True)
    side = _bench(1, args.steps, args.profile, copies=cores)
    together = sum(r["real_steps_per_s"] for r in side)
    record = {
        "what": "training throughput of the folds on a CPU: one fold on all cores against one fold per core",
        "date": dt.date.today().isoformat(),
        "benchmark_command": "python scripts/bench_folds.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": args.profile,
        "processor": alone.get("processor"),
        "cores": cores,
        "one_fold_all_cores_steps_per_s": alone["real_steps_per_s"],
        "side_by_side_steps_per_s": [r["real_steps_per_s"] for r in side],
        "side_by_side_total_steps_per_s": round(together, 2),
        "throughput_ratio": round(together / alone["real_steps_per_s"], 3),
        "steps": args.steps,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"\none fold on {cores} threads: {alone['real_steps_per_s']} steps/s; {cores} folds side by side on 1 thread: "
          f"{together:.2f} steps/s together (x{record['throughput_ratio']}); written to {unroot(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
