"""Execute one chapter notebook (a jupytext ``.py``) with papermill, as make does.

    python -m sscild.book.runner notebooks/01_data.py OUT.ipynb --run-dir RES --step data -p profile cpu ...

* The executed notebook is written to a temporary file and renamed onto ``OUT`` only on success, so a
  failed run never leaves a file that make would take as done. On failure the partial notebook is kept
  as ``OUT`` with ``.failed.ipynb`` for inspection.
* A failing cell stops with a short message: the notebook, the cell's source and the error with its
  traceback (colour codes stripped), instead of papermill's wall of JSON.
* The step's wall time, status and parameters are appended to ``RUN_DIR/runlog.json`` (the
  Reproducibility chapter reads it), under a file lock: folds trained side by side append safely.
* ``--one-at-a-time``: wait until no other step started with this flag runs in the same ``RUN_DIR``
  (make trains folds in parallel; chapters, each using every core, take their turn).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sscild.paths import atomic_path, read_json, write_json
from sscild.progress import ENV as PROGRESS_ENV

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


@contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _append_runlog(run_dir: Path, entry: dict) -> None:
    log_path = run_dir / "runlog.json"
    with _locked(run_dir / ".runlog.lock"):
        try:
            log = read_json(log_path) if log_path.exists() else {"steps": []}
        except (ValueError, OSError):
            log = {"steps": []}
        log["steps"].append(entry)
        write_json(log_path, log)


class _ProgressEcho:
    """Prints, while a notebook runs, the lines its kernel appends to the progress file."""

    def __init__(self, path: Path, prefix: str):
        import threading

        self.path, self.prefix = path, prefix
        self.path.write_text("")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._pos = 0

    def _drain(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                fh.seek(self._pos)
                chunk = fh.read()
                self._pos = fh.tell()
        except OSError:
            return
        for line in chunk.splitlines():
            print(f"{self.prefix}{line}", flush=True)

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            self._drain()

    def __enter__(self):
        self._old = os.environ.get(PROGRESS_ENV)
        os.environ[PROGRESS_ENV] = str(self.path)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._drain()
        if self._old is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = self._old
        self.path.unlink(missing_ok=True)


def run_notebook(source: str | Path, out: str | Path, *, parameters: dict | None = None,
                 run_dir: str | Path | None = None, step: str | None = None, cwd: str | Path | None = None,
                 echo_progress: bool = True) -> Path:
    """Execute ``source`` (jupytext .py or .ipynb) with ``parameters`` into ``out``.

    With ``echo_progress``, the progress lines the notebook's long loops report (:mod:`sscild.progress`)
    are printed to this process's standard output while it runs.

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
    for pattern in (f".{out.name}.*.ipynb", f".{out.name}.*.progress.log"):  # left by a run that was killed
        for stale in out.parent.glob(pattern):
            stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    status = "ok"
    with atomic_path(out, suffix=".ipynb") as tmp_out:
        tmp_in = tmp_out.with_name(tmp_out.name.replace(".tmp.ipynb", ".in.ipynb"))
        nbformat.write(nb, tmp_in)
        echo = _ProgressEcho(tmp_out.with_name(tmp_out.name.replace(".tmp.ipynb", ".progress.log")),
                             prefix=f"[sscild] {step or source.stem}: ") if echo_progress else nullcontext()
        try:
            with echo:
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
    ap = argparse.ArgumentParser(prog="python -m sscild.book.runner", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--step", default=None)
    ap.add_argument("--one-at-a-time", action="store_true",
                    help="wait for other steps started with this flag in the same --run-dir")
    args = ap.parse_args(argv)
    params = {k: _coerce(v) for k, v in args.parameter}
    turn = (_locked(Path(args.run_dir or args.out.parent) / ".chapter.lock") if args.one_at_a_time
            else nullcontext())
    try:
        with turn:
            t0 = time.perf_counter()  # after waiting for the turn: the step's own time
            print(f"[sscild] running {args.source} -> {args.out} {json.dumps(params)}", flush=True)
            run_notebook(args.source, args.out, parameters=params, run_dir=args.run_dir, step=args.step)
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"[sscild] done {args.source} in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
