"""Benchmark one training step of a profile: steps/s, time per phase, and the overhead ratio.

    .venv/bin/python scripts/bench_train.py [--profile cpu] [--steps 150] [--out results/benchmarks/train_cpu.json]

What it measures, in one process on one machine:

1. **The real training step**: :func:`sscild.model.train.train_model` itself (sampling from cached cases,
   loader, augmentation, transfer, forward, backward, optimiser, logging, checkpoints) on a few
   synthetic patients of the profile, for ``--steps`` iterations; the rate is taken from its
   ``history.csv`` after the first log window (warm-up).
2. **The phases** of a step, timed one by one in an instrumented copy of the loop: patch sampling,
   augmentation, transfer to the device, forward + backward (with the profile's autocast), optimiser
   step. On CUDA each phase is synchronised, so the phases add up to more than the real step, in
   which they overlap.
3. **The pure network step**: the same network, loss and optimiser on ready-made tensors of the same
   shape (no data at all). This is the ceiling; the **overhead ratio** is pure step time / real step
   time (1.0 = data preparation costs nothing). Being a ratio measured side by side, it holds on any
   machine of the kind, whatever its speed.
4. ``--variants``: the pure network step under other numeric settings (float32 vs bfloat16 autocast,
   channels-last memory, deterministic algorithms on/off), for choosing a profile's settings.

Writes the JSON record (atomically) and prints a table. ``benchmarks/train_<profile>_<device>.json``
holds the recorded runs the book shows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _cases(profile, n: int):
    """``n`` synthetic patients of the profile, preprocessed as the cache holds them."""
    from types import SimpleNamespace

    from sscild.data.image import Volume
    from sscild.synthetic.phantom import generate_case
    from sscild.data.preprocess import preprocess_volume

    out = {}
    for i in range(n):
        c = generate_case(i, profile=profile)
        pre = preprocess_volume(Volume(c.image, c.affine), c.label, profile=profile,
                                case_id=f"bench_{i:03d}")
        out[f"bench_{i:03d}"] = SimpleNamespace(image=pre.image, label=pre.label)
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _net_and_opt(p, device):
    from monai.losses import DiceCELoss

    from sscild.model.network import NUM_CLASSES, build_network
    from sscild.model.device import network_numerics

    torch.manual_seed(0)
    net = build_network(p, out_channels=NUM_CLASSES).to(device)
    numerics = network_numerics(p, device)
    if numerics["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=bool(p.batch_dice))
    opt = torch.optim.AdamW(net.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
    return net, loss_fn, opt, numerics


def pure_step(p, device, steps: int, warmup: int = 10) -> float:
    """Seconds per forward + backward + optimiser step on fixed tensors (the ceiling)."""
    from sscild.model.network import NUM_CLASSES

    net, loss_fn, opt, num = _net_and_opt(p, device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((p.batch_size, 1, *p.patch_size[:2]), generator=g).mul(2).sub(1).to(device)
    y = torch.randint(0, NUM_CLASSES, (p.batch_size, 1, *p.patch_size[:2]), generator=g).to(device)
    if num["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    net.train()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=num["dtype"], enabled=num["autocast"]):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def phases(p, cases, device, steps: int, warmup: int = 5) -> dict:
    """Mean seconds per phase of a step, each phase timed on its own."""
    from sscild.model.augment import augment_for_profile
    from sscild.model.sampling import PatchSampler

    sampler = PatchSampler(cases, patch_size=p.patch_size[:2], lesion_oversample=p.lesion_oversample)
    aug = augment_for_profile(p)
    net, loss_fn, opt, num = _net_and_opt(p, device)
    names = ("sampling", "transfer", "augmentation", "forward_backward", "optimiser")
    acc = dict.fromkeys(names, 0.0)
    net.train()
    for i in range(warmup + steps):
        t = [time.perf_counter()]
        rng = np.random.default_rng([0, 0, i])
        img, lab = sampler.sample(rng, p.batch_size)
        t.append(time.perf_counter())
        x = torch.from_numpy(img).to(device)
        y = torch.from_numpy(lab).to(device)
        _sync(device)
        t.append(time.perf_counter())
        x, y = aug(x, y, seed=i)
        if num["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        _sync(device)
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=num["dtype"], enabled=num["autocast"]):
            loss = loss_fn(net(x), y)
        loss.backward()
        _sync(device)
        t.append(time.perf_counter())
        opt.step()
        _sync(device)
        t.append(time.perf_counter())
        if i >= warmup:
            for k, name in enumerate(names):
                acc[name] += t[k + 1] - t[k]
    return {k: v / steps for k, v in acc.items()}


def real_step(p, cases, device, steps: int) -> dict:
    """Seconds per step of :func:`sscild.model.train.train_model` itself, after its first log window."""
    import pandas as pd

    from sscild.model.train import train_model

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        t0 = time.perf_counter()
        res = train_model(cases, p, Path(tmp), key=0, device=device, progress=False, iterations=steps)
        wall = time.perf_counter() - t0
        hist = pd.read_csv(Path(tmp) / "history.csv")
    h = hist.iloc[1:] if len(hist) > 1 else hist
    steps_in = float(h["step"].iloc[-1] - (hist["step"].iloc[0] if len(hist) > 1 else 0))
    secs = float((p.log_every / h["steps_per_s"]).sum())
    return {"s_per_step": secs / steps_in, "train_model_wall_s": round(wall, 2), "steps": steps,
            "loader_workers": res["loader_workers"], "threads": res["threads"], "numerics": res["numerics"]}


def variants(p, device, steps: int) -> list[dict]:
    """The pure network step under other numeric settings."""
    rows = []
    base = dict(cpu_bf16=False, channels_last=False)
    for name, over, det in [("float32", base, True), ("float32, not deterministic", base, False),
                            ("bfloat16 autocast", {**base, "cpu_bf16": True}, True),
                            ("float32, channels-last", {**base, "channels_last": True}, True),
                            ("bfloat16, channels-last", {"cpu_bf16": True, "channels_last": True}, True)]:
        q = p.with_overrides(**over)
        torch.use_deterministic_algorithms(det, warn_only=True)
        rows.append({"variant": name, "s_per_step": round(pure_step(q, device, steps), 4)})
    torch.use_deterministic_algorithms(device.type != "cuda", warn_only=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--steps", type=int, default=150, help="measured steps of each kind (after warm-up)")
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--variants", action="store_true", help="also time other numeric settings")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from sscild.paths import atomic_path, unroot
    from sscild.profiles import get_profile
    from sscild.machine import cpu_name
    from sscild.model.device import describe_device, select_device, set_threads

    p = get_profile(args.profile)
    device = select_device()
    threads = set_threads()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
    print(f"profile {p.name}: {describe_device(device)}; making {args.patients} synthetic patients ...", flush=True)
    cases = _cases(p, args.patients)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print("pure network step ...", flush=True)
    pure = pure_step(p, device, args.steps)
    print("phases ...", flush=True)
    ph = phases(p, cases, device, max(20, args.steps // 3))
    print("real training step (train_model) ...", flush=True)
    real = real_step(p, cases, device, args.steps)
    record = {
        "what": "one training step of a profile: the real step (train_model) against the pure network step",
        "date": dt.date.today().isoformat(),
        "benchmark_command": "python scripts/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "profile": p.name,
        "device": describe_device(device),
        "processor": cpu_name(),
        "threads": threads,
        "load_before": round(load, 2) if load is not None else None,
        "batch": [p.batch_size, 1, *p.patch_size[:2]],
        "numerics": real["numerics"],
        "pure_network_s_per_step": round(pure, 4),
        "real_s_per_step": round(real["s_per_step"], 4),
        "real_steps_per_s": round(1.0 / real["s_per_step"], 2),
        "overhead_ratio": round(pure / real["s_per_step"], 3),
        "phases_s": {k: round(v, 4) for k, v in ph.items()},
        "loader_workers": real["loader_workers"],
        "train_model_wall_s": real["train_model_wall_s"],
        "steps": args.steps,
    }
    if device.type == "cuda":
        record["gpu_peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if args.variants:
        print("variants ...", flush=True)
        record["variants"] = variants(p, device, max(30, args.steps // 2))
    out = args.out or REPO / "results" / "benchmarks" / f"train_{p.name}_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    print(f"\nreal step {record['real_s_per_step']:.4f} s ({record['real_steps_per_s']} steps/s), pure network step "
          f"{record['pure_network_s_per_step']:.4f} s -> overhead ratio {record['overhead_ratio']:.3f}; "
          f"written to {unroot(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
