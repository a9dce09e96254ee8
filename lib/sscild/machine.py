"""The machine a run computes on, in words: the processor's name and the device summary.

Example:
    >>> isinstance(cpu_name(), str)
    True
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_name", "describe_machine"]


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine() -> str:
    """``"GPU: <name> (CUDA <version>)"`` when torch sees a GPU, else ``"CPU: <name> (<n> logical cores), no GPU"``."""
    try:
        import torch  # lazy: the core modules do not load torch at import

        if torch.cuda.is_available():
            return f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    except Exception:  # pragma: no cover
        pass
    return f"CPU: {cpu_name()} ({os.cpu_count()} logical cores), no GPU"
