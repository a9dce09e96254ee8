"""Where and how the network computes: the torch device, CPU threads, number type, batch-loader processes.

* **Device**: CUDA when present, else CPU (:func:`select_device`).
* **Threads**: as many as the machine has cores; ``SSCILD_THREADS`` overrides (e.g. when make runs
  folds in parallel) (:func:`set_threads`).
* **Number type**: float16 autocast on CUDA, bfloat16 autocast on CPUs that compute it natively, float32
  otherwise, as the profile allows (:func:`network_numerics`).
* **Loader processes**: none on CPU, several on CUDA; ``SSCILD_LOADER_WORKERS`` overrides
  (:func:`loader_workers`).

Example:
    >>> select_device("cpu").type
    'cpu'
"""

from __future__ import annotations

import os

import torch

from sscild.machine import cpu_name
from sscild.model.network import native_cpu_bf16
from sscild.profiles import Profile

__all__ = ["select_device", "device_from_name", "describe_device", "set_threads", "network_numerics", "configure_backend", "loader_workers",
           "worker_init"]


def select_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_from_name(name: str | None) -> torch.device | None:
    """A device named on the command line (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked.

    ``auto`` or ``None`` gives ``None`` (:func:`select_device` then takes CUDA when there is one).

    Raises:
        InputError: an unknown name, or a device this machine or this build of torch does not have.

    Example:
        >>> device_from_name("auto") is None, device_from_name("cpu")
        (True, device(type='cpu'))
    """
    from sscild.errors import InputError

    if name is None or str(name).strip().lower() in ("", "auto"):
        return None
    text = str(name).strip().lower()
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InputError(f"--device {name}: no CUDA GPU is usable here (torch {torch.__version__} is {build}). "
                             "Fix: use --device cpu, or install a CUDA build of torch (README: GPU).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}.")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InputError(f"--device {name}: Apple's MPS is not available on this machine. Fix: use --device cpu.")
    elif device.type != "cpu":
        raise InputError(f"--device {name!r}: use auto, cpu, cuda, cuda:N or mps.")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"


def set_threads() -> int:
    n = int(os.environ.get("SSCILD_THREADS") or 0) or (os.cpu_count() or 1)  # unset or empty: every core
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def network_numerics(p: Profile, device: torch.device) -> dict:
    """How the network computes on ``device`` under profile ``p``: autocast on or off, its dtype, layout.

    float16 autocast on CUDA when ``p.amp``; bfloat16 autocast on a CPU that computes it natively when
    ``p.cpu_bf16``; float32 otherwise.
    """
    if device.type == "cuda":
        autocast, dtype = bool(p.amp), torch.float16
    else:
        autocast, dtype = bool(p.cpu_bf16 and native_cpu_bf16()), torch.bfloat16
    return {"autocast": autocast, "dtype": dtype if autocast else torch.float32, "channels_last": bool(p.channels_last)}


def configure_backend(device: torch.device) -> None:
    """cudnn autotuning on CUDA; deterministic algorithms (warn only) on CPU, so a seed repeats exactly."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)


def loader_workers(device: torch.device) -> int:
    """Processes that prepare batches: none on CPU (2 cores train fastest alone), several on CUDA.

    ``SSCILD_LOADER_WORKERS`` overrides the choice.
    """
    env = os.environ.get("SSCILD_LOADER_WORKERS", "").strip()
    if env:
        return max(0, int(env))
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 2))


def worker_init(_worker_id: int) -> None:
    """A loader process computes on one thread (the training process keeps the others)."""
    torch.set_num_threads(1)
