"""Execute one chapter notebook (a jupytext ``.py``) with papermill, as make does.

    python -m sscild.runner notebooks/01_data.py OUT.ipynb --run-dir RES --step data -p profile cpu ...

* The executed notebook is written to a temporary file and renamed onto ``OUT`` only on success, so a
  failed run never leaves a file that make would take as done. On failure the partial notebook is kept
  as ``OUT`` with ``.failed.ipynb`` for inspection.
* A failing cell stops with a short message: the notebook, the cell's source and the error with its
  traceback (colour codes stripped), instead of papermill's wall of JSON.
* The step's wall time, status and parameters are appended to ``RUN_DIR/runlog.json`` (the
  Reproducibility chapter reads it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import time
from pathlib import Path

from .paths import atomic_path, read_json, write_json

__all__ = ["run_notebook", "main"]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _coerce(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if value in ("None", "null"):
        return None
    if value in ("True", "False"):
        return value == "True"
    return value


def _failure_message(nb_path: Path, out_failed: Path) -> str:
    import nbformat

    nb = nbformat.read(out_failed, as_version=4)
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                tb = _ANSI.sub("", "\n".join(o.get("traceback", [])))
                src = cell.get("source", "")
                return (f"\nNotebook failed: {nb_path}\n  executed copy: {out_failed}\n"
                        f"--- failing cell ---\n{src}\n--- error ---\n{tb}\n"
                        f"{o.get('ename')}: {o.get('evalue')}\n")
    return f"\nNotebook failed: {nb_path} (see {out_failed})\n"


def _append_runlog(run_dir: Path, entry: dict) -> None:
    log_path = run_dir / "runlog.json"
    try:
        log = read_json(log_path) if log_path.exists() else {"steps": []}
    except (ValueError, OSError):
        log = {"steps": []}
    log["steps"].append(entry)
    write_json(log_path, log)


def run_notebook(source: str | Path, out: str | Path, *, parameters: dict | None = None,
                 run_dir: str | Path | None = None, step: str | None = None, cwd: str | Path | None = None) -> Path:
    """Execute ``source`` (jupytext .py or .ipynb) with ``parameters`` into ``out``.

    Raises ``RuntimeError`` with a readable message when a cell fails.
    """
    import jupytext
    import nbformat
    import papermill as pm

    source, out = Path(source), Path(out)
    parameters = dict(parameters or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(source)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
    failed = out.with_suffix(".failed.ipynb")
    failed.unlink(missing_ok=True)
    for stale in out.parent.glob(f".{out.name}.*.ipynb"):  # temporaries of a run that was killed
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    status = "ok"
    with atomic_path(out, suffix=".ipynb") as tmp_out:
        tmp_in = tmp_out.with_name(tmp_out.name.replace(".tmp.ipynb", ".in.ipynb"))
        nbformat.write(nb, tmp_in)
        try:
            pm.execute_notebook(str(tmp_in), str(tmp_out), parameters=parameters, kernel_name="python3",
                                cwd=str(cwd or Path.cwd()), progress_bar=False, log_output=False,
                                request_save_on_cell_execute=False)
        except pm.PapermillExecutionError:
            status = "failed"
            os.replace(tmp_out, failed)
        finally:
            tmp_in.unlink(missing_ok=True)
        if status == "failed":
            # leave the atomic context without renaming: raise after recording the run
            seconds = time.perf_counter() - t0
            if run_dir is not None:
                _append_runlog(Path(run_dir), {"step": step or source.stem, "notebook": str(source), "status": status,
                                               "seconds": round(seconds, 2), "started": started, "parameters": parameters})
            raise RuntimeError(_failure_message(source, failed))
    seconds = time.perf_counter() - t0
    if run_dir is not None:
        _append_runlog(Path(run_dir), {"step": step or source.stem, "notebook": str(source), "status": status,
                                       "seconds": round(seconds, 2), "started": started, "parameters": parameters})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sscild.runner", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--step", default=None)
    args = ap.parse_args(argv)
    params = {k: _coerce(v) for k, v in args.parameter}
    print(f"[sscild] running {args.source} -> {args.out} {json.dumps(params)}", flush=True)
    t0 = time.perf_counter()
    try:
        run_notebook(args.source, args.out, parameters=params, run_dir=args.run_dir, step=args.step)
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"[sscild] done {args.source} in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
