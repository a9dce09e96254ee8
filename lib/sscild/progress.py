"""Progress lines for the terminal of ``make``, from code running inside a notebook's kernel.

A chapter runs in a Jupyter kernel under papermill, so what it prints lands in the notebook, not in
the terminal. :mod:`sscild.book.runner` therefore names a file in the environment variable
``SSCILD_PROGRESS_FILE`` before it starts the kernel (which inherits it) and prints, while the
notebook runs, every line appended to that file. Long loops (a fold's training, the out-of-fold
prediction) report through a :class:`Heartbeat`, at most every ``every`` seconds, so the terminal shows
that work moves and how long it has left, and the notebook stays clean. Outside make (no variable
set) nothing is written.

Example:
    >>> hb = Heartbeat("fold 0", total=1000, unit="step", every=30.0)
    >>> hb.update(10, loss=0.9)   # writes only when SSCILD_PROGRESS_FILE is set and 30 s have passed
"""

from __future__ import annotations

import os
import time

__all__ = ["ENV", "emit", "Heartbeat"]

ENV = "SSCILD_PROGRESS_FILE"


def emit(line: str) -> None:
    """Append one line to the progress file, if there is one."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")
    except OSError:
        pass  # progress is a courtesy; never let it stop the work


def _fmt_s(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class Heartbeat:
    """Reports ``done / total`` with the rate and the time left, at most every ``every`` seconds.

    Args:
        what: what is running, e.g. ``"fold 3"``.
        total: the number of units when done.
        unit: the unit's name (``"step"``, ``"case"``).
        every: seconds between two lines (the last unit is always reported).
        start: units already done before (a resumed run), not counted in the rate.
    """

    def __init__(self, what: str, *, total: int, unit: str = "step", every: float = 30.0, start: int = 0):
        if total < 0 or every <= 0:
            raise ValueError(f"Heartbeat: total must be >= 0 and every > 0, got {total}, {every}")
        self.what, self.total, self.unit, self.every = what, int(total), unit, float(every)
        self.start = int(start)
        self.t0 = self.last = time.perf_counter()

    def update(self, done: int, **info) -> None:
        now = time.perf_counter()
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.t0, 1e-9)
        left = (self.total - done) / rate if rate > 0 else float("nan")
        extra = "".join(f", {k} {v:.3f}" if isinstance(v, float) else f", {k} {v}" for k, v in info.items())
        tail = "done" if done >= self.total else f"about {_fmt_s(left)} left"
        emit(f"{self.what}: {self.unit} {done}/{self.total}{extra}, {rate:.2f} {self.unit}s/s, "
             f"{_fmt_s(now - self.t0)} elapsed, {tail}")
