"""The book: executing the chapters and turning them into the rendered study.

runner      execute one chapter notebook (papermill) as make does; the run log
deps        the library files each chapter uses (make re-runs a chapter when one changes)
build       executed notebooks + hand-written pages -> static HTML without network
check       the rendered book's checks (truncated tables, duplicate figures, captions)
report      notebook helpers: tables, glued numbers, numbered figures
provenance  the code version and the recorded measurements several pages and scripts read (benchmarks/)
plots       every figure of the book
chapters    the chapters' tables and sentences, from the analyses' numbers
"""
