"""Why make sets ``OMP_WAIT_POLICY=PASSIVE``: two training processes side by side, spinning or sleeping.

    .venv/bin/python scripts/bench_omp_wait.py [--profile cpu] [--steps 30] [--threads 2] [--record benchmarks/omp_wait_policy.json]

Starts two processes at once, as make does when steps share the machine; each times ``--steps`` pure
network training steps of the profile (its network, loss and optimiser on ready-made tensors, the
profile's patch and batch) on ``--threads`` threads. Done twice: with OpenMP threads that spin while
they wait (``OMP_WAIT_POLICY=ACTIVE``) and with threads that sleep (``PASSIVE``). Threads of two
processes that spin take the cores from each other; the record gives the mean seconds per step of
each process under each policy, and the ratio, measured side by side on one machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))

CHILD = """
import sys, time, torch
sys.path.insert(0, {lib!r})
from sscild.model.network import build_network
from sscild.profiles import get_profile
torch.set_num_threads({threads})
p = get_profile({profile!r})
torch.manual_seed(0)
net = build_network(p, out_channels=4)
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
x = torch.randn(p.batch_size, 1, *p.patch_size[:2])
y = torch.randint(0, 4, (p.batch_size, *p.patch_size[:2]))
def step():
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
for _ in range(3):
    step()
t0 = time.perf_counter()
for _ in range({steps}):
    step()
print((time.perf_counter() - t0) / {steps})
"""


def side_by_side(policy: str, *, profile: str, steps: int, threads: int) -> list[float]:
    """Seconds per step of each of two processes started together under ``policy``."""
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    code = CHILD.format(lib=str(ROOT / "lib"), threads=threads, profile=profile, steps=steps)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"a benchmark process failed under OMP_WAIT_POLICY={policy}")
        out.append(round(float(stdout.strip().splitlines()[-1]), 4))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per process (after 3 warm-up steps)")
    ap.add_argument("--threads", type=int, default=2, help="threads of each process (default 2: two processes "
                    "on a 2-core machine ask for twice its cores, as chapters did before they took turns)")
    ap.add_argument("--record", type=Path, default=None, help="also write the record here (e.g. benchmarks/...)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "lib"))
    from sscild.book.provenance import git_state
    from sscild.machine import cpu_name
    from sscild.paths import write_json

    runs = {}
    for policy in ("ACTIVE", "PASSIVE"):
        t0 = time.perf_counter()
        runs[policy] = {"seconds_per_step": side_by_side(policy, profile=a.profile, steps=a.steps, threads=a.threads),
                        "wall_seconds": round(time.perf_counter() - t0, 1)}
        print(f"OMP_WAIT_POLICY={policy}: {runs[policy]['seconds_per_step']} s per step (two processes side by side)")
    mean = {k: sum(v["seconds_per_step"]) / 2 for k, v in runs.items()}
    record = {
        "what": ("two processes side by side, each timing pure network training steps of the profile on "
                 f"{a.threads} threads, with OpenMP threads spinning (ACTIVE) or sleeping (PASSIVE) while they wait"),
        "profile": a.profile, "steps": a.steps, "threads_per_process": a.threads, "processes": 2,
        "policies": runs, "active_over_passive": round(mean["ACTIVE"] / mean["PASSIVE"], 2),
        "machine": {"processor": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "commit": git_state().get("commit"), "date": dt.date.today().isoformat(),
        "command": "python scripts/bench_omp_wait.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "used_by": "the Makefile exports OMP_WAIT_POLICY=PASSIVE (override: OMP_WAIT_POLICY=ACTIVE make ...)",
    }
    print(json.dumps({k: record[k] for k in ("active_over_passive", "machine")}))
    if a.record:
        write_json(a.record, record)
        print(f"record: {a.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
