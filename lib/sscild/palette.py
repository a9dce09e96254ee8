"""One colour per label, shared by the book's figures and the viewer files ``sscild segment`` writes.

The colours are from the Okabe–Ito palette, chosen to stay distinguishable under the common
colour-vision deficiencies (no red-on-green pair) and against a grey CT background:

======  =========================  ===========  =========================
label   role                       hex          why
======  =========================  ===========  =========================
1       normal lung                ``#56B4E9``  sky blue: quiet, reads as "air"
2       established fibrosis (EF)  ``#D55E00``  vermillion: the most serious finding stands out
3       ground-glass opacity (GGO) ``#F0E442``  yellow: bright against grey, far from vermillion
======  =========================  ===========  =========================
"""

from __future__ import annotations

__all__ = ["LABEL_NAMES", "LABEL_HEX", "label_rgb"]

LABEL_NAMES = {1: "normal lung", 2: "established fibrosis", 3: "ground-glass opacity"}
LABEL_HEX = {1: "#56B4E9", 2: "#D55E00", 3: "#F0E442"}


def label_rgb(label: int) -> tuple[int, int, int]:
    """The label's colour as 0-255 integers (for NRRD, ITK-SNAP and DICOM SEG files)."""
    h = LABEL_HEX[int(label)].lstrip("#")
    return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))
