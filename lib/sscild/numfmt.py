"""Numbers as every page, report and message writes them: estimates, intervals, p-values.

One formatter for the book's tables and sentences, the scan reports and the command line, so a p-value
or an interval is rounded the same way wherever it appears.

Example:
    >>> fmt_num(0.7512), fmt_num(float("nan")), fmt_interval(-0.64, -0.8, -0.41)
    ('0.75', 'n/a', '-0.64 [-0.80, -0.41]')
    >>> fmt_p(0.0004), p_text(0.012)
    ('<0.001', 'p = 0.012')
"""

from __future__ import annotations

import numpy as np

__all__ = ["fmt_num", "fmt_interval", "fmt_p", "p_text"]


def fmt_num(v, nd: int = 2, *, na: str = "n/a") -> str:
    """``v`` with ``nd`` decimals, or ``na`` for None, NaN and infinity."""
    return na if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def fmt_interval(est, lo, hi, nd: int = 2, *, na: str = "n/a") -> str:
    """``'0.78 [0.71, 0.84]'``: an estimate and its interval, ``nd`` decimals; ``na`` without an estimate."""
    if est is None or not np.isfinite(est):
        return na
    return f"{fmt_num(est, nd, na=na)} [{fmt_num(lo, nd, na=na)}, {fmt_num(hi, nd, na=na)}]"


def fmt_p(p) -> str:
    """``'<0.001'``, ``'0.012'``, ``'0.43'`` or ``'n/a'``."""
    if p is None or not np.isfinite(p):
        return "n/a"
    if p < 0.001:
        return "<0.001"
    if p < 0.1:
        return f"{p:.3f}"
    return f"{p:.2f}"


def p_text(p) -> str:
    """``'p < 0.001'``, ``'p = 0.012'`` or ``'p n/a'``: p for running text."""
    t = fmt_p(p)
    return f"p {t[0]} {t[1:]}" if t.startswith("<") else ("p n/a" if t == "n/a" else f"p = {t}")
