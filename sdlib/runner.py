"""Run stage notebooks headless with papermill, and build the book.

``python -m sdlib run <stage> [--profile P] [-p name value ...]``

1. merges ``params/<stage>.<profile>.yaml`` with the ``-p`` overrides (later wins);
2. checks every name and type against the notebook's ``parameters`` cell (unknown name or wrong type: exit 2);
3. executes ``notebooks/<stage>.ipynb`` with papermill, cwd = repository root;
4. on success publishes the executed notebook to ``book/stages/<stage>.ipynb`` and writes
   ``data/results/<stage>.json`` (metrics + effective parameters + git revision + start time + duration);
   on failure prints the failing cell's traceback, keeps the notebook under ``data/failed/`` and exits 1,
   leaving the previously published page untouched.

No run waits forever: every cell has a time limit (``--cell-timeout`` or ``$SDLIB_CELL_TIMEOUT``; 1800 s by default,
4 h for the ``real`` profile), a kernel that dies or stays silent ends the run with an error naming the stage, the
profile and the cell, and a watchdog ends a run that makes no progress at all (a hang outside any cell).

``python -m sdlib run-all --profile P`` runs every stage listed in ``_toc.yml`` in order;
``python -m sdlib build-html`` builds ``_build/html`` with warnings as errors;
``python -m sdlib lab [jupyter-lab options]`` starts JupyterLab on the repository with live (not headless) kernels.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from sdlib import paths
from sdlib.core import HEADLESS_ENV, pending_metrics_path

PROFILES = ("smoke", "default", "full", "real")
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")

CELL_TIMEOUT_ENV = "SDLIB_CELL_TIMEOUT"
# Per-cell limits in seconds. The slowest cell of the default profile (01_models' first training run) takes ~8 min on
# a 2-core machine; the real profile slices DSEC and runs the 7B pair, so it gets hours.
CELL_TIMEOUTS = {"smoke": 1800, "default": 1800, "real": 4 * 3600}
KERNEL_START_TIMEOUT = 120  # seconds for a kernel to start and answer
IOPUB_TIMEOUT = 30  # seconds for a finished cell's last outputs to arrive (nbclient's 4 s is tight on a busy machine)
STALL_MARGIN = 60  # the watchdog's slack beyond a cell's limit and the kernel's start-up


class UsageError(Exception):
    """Bad stage name, parameter name or value: the CLI exits with status 2."""


class StageFailed(Exception):
    """A cell raised, timed out or lost its kernel, or the run stalled: the CLI exits with status 1."""


# ---- stages and parameters --------------------------------------------------------------------------------------
def toc_stages(toc_path: Path | None = None) -> list[str]:
    """Stage names in book order: the ``book/stages/<stage>`` entries of ``_toc.yml``."""
    toc_path = toc_path or paths.ROOT / "_toc.yml"
    toc = yaml.safe_load(toc_path.read_text())
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            f = node.get("file")
            if isinstance(f, str) and f.startswith("book/stages/"):
                found.append(f.rsplit("/", 1)[1].removesuffix(".ipynb"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return found


def notebook_path(stage: str, notebooks_dir: Path | None = None) -> Path:
    notebooks_dir = Path(notebooks_dir or paths.NOTEBOOKS)
    nb = notebooks_dir / f"{stage}.ipynb"
    if not nb.is_file():
        known = sorted(p.stem for p in notebooks_dir.glob("*.ipynb"))
        raise UsageError(f"unknown stage '{stage}': no {nb}; stages: {', '.join(known) or '(none)'}")
    return nb


@dataclass(frozen=True)
class Param:
    name: str
    type_name: str  # "int", "float", "str", "bool", "list", "dict" or "None" when unannotated
    default: Any
    help: str


def notebook_parameters(nb: Path) -> dict[str, Param]:
    """The notebook's declared parameters (from its one ``parameters`` cell), with their annotated types."""
    import papermill as pm

    out = {}
    for name, info in pm.inspect_notebook(str(nb)).items():
        try:
            default = yaml.safe_load(info["default"])
        except yaml.YAMLError:
            default = info["default"]
        out[name] = Param(name, info.get("inferred_type_name") or "None", default, info.get("help") or "")
    return out


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


def coerce(param: Param, value: Any, source: str) -> Any:
    """Check ``value`` against the parameter's annotated type; ints widen to float, scalars to str."""
    want = param.type_name.split("[")[0]
    if want not in _TYPES:
        return value
    bad = UsageError(
        f"parameter '{param.name}' from {source} must be {want}, got {value!r} ({type(value).__name__})"
    )
    if want == "bool":
        if isinstance(value, bool):
            return value
        raise bad
    if want == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if want == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if want == "str":
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if isinstance(value, _TYPES[want]):
        return value
    raise bad


def params_file(stage: str, profile: str, params_dir: Path | None = None) -> Path:
    return Path(params_dir or paths.PARAMS) / f"{stage}.{profile}.yaml"


def resolve_parameters(
    stage: str,
    profile: str,
    overrides: Iterable[tuple[str, str]] = (),
    notebooks_dir: Path | None = None,
    params_dir: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (overrides to inject, effective parameters) for a run, validated against the notebook.

    The smoke profile is the notebook's own defaults, so its YAML file may be absent; ``full`` (the default profile
    at full size: every test prompt) falls back to a stage's default file where it has no ``full`` file of its own;
    other profiles need one.
    """
    if profile not in PROFILES:
        raise UsageError(f"unknown profile '{profile}'; profiles: {', '.join(PROFILES)}")
    declared = notebook_parameters(notebook_path(stage, notebooks_dir))
    valid = ", ".join(sorted(declared))
    inject: dict[str, Any] = {}

    pf = params_file(stage, profile, params_dir)
    if profile == "full" and not pf.is_file():
        pf = params_file(stage, "default", params_dir)
    if pf.is_file():
        loaded = yaml.safe_load(pf.read_text()) or {}
        if not isinstance(loaded, dict):
            raise UsageError(f"{pf}: expected a mapping of parameter names to values, got {type(loaded).__name__}")
        for name, value in loaded.items():
            if name not in declared:
                raise UsageError(f"{pf}: unknown parameter '{name}' for stage {stage}; valid parameters: {valid}")
            inject[name] = coerce(declared[name], value, str(pf))
    elif profile != "smoke":
        raise UsageError(f"no parameter file {pf} for profile '{profile}' of stage {stage}")

    for name, raw in overrides:
        if name not in declared:
            raise UsageError(f"unknown parameter '{name}' for stage {stage}; valid parameters: {valid}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw  # `-p name ""` is the empty string, not null
        except yaml.YAMLError:
            value = raw
        inject[name] = coerce(declared[name], value, f"-p {name}")

    effective = {name: p.default for name, p in declared.items()}
    effective.update(inject)
    return inject, effective


# ---- execution ----------------------------------------------------------------------------------------------------
def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=paths.ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.ROOT, capture_output=True, text=True
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def strip_widgets(nb_path: Path) -> None:
    """Drop ipywidgets state and views: a static page cannot run them, and rendering them would fetch JS from a CDN."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and any(m in data for m in WIDGET_MIMES):
                for m in WIDGET_MIMES:
                    data.pop(m, None)
                if not data:
                    continue
            kept.append(out)
        cell["outputs"] = kept
    nbformat.write(nb, nb_path)


def glued_values(nb_path: Path) -> dict[str, Any]:
    """Every value glued in an executed notebook, keyed by glue name (numbers parsed, other values as text)."""
    import ast

    nb = json.loads(Path(nb_path).read_text())
    found: dict[str, Any] = {}
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if not name:
                continue
            data = out.get("data", {})
            text = next((v for k, v in data.items() if k.endswith("text/plain")), None)
            text = "".join(text) if isinstance(text, list) else text
            try:
                found[name] = ast.literal_eval(text) if text is not None else None
            except (ValueError, SyntaxError):
                found[name] = text
    return found


def page_failed(nb_path: Path) -> bool:
    """True if papermill recorded an exception in this executed notebook."""
    meta = json.loads(nb_path.read_text()).get("metadata", {}).get("papermill", {})
    return bool(meta.get("exception"))


def cell_timeout_for(profile: str, value: float | None = None) -> int:
    """The per-cell limit in seconds: ``value`` if given, else ``$SDLIB_CELL_TIMEOUT``, else the profile's default."""
    source = "--cell-timeout"
    if value is None:
        raw = os.environ.get(CELL_TIMEOUT_ENV, "").strip()
        if not raw:
            return CELL_TIMEOUTS.get(profile, CELL_TIMEOUTS["default"])
        source = f"${CELL_TIMEOUT_ENV}"
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"{source}={raw!r} is not a number of seconds") from None
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise UsageError(f"the cell timeout ({source}) must be a positive number of seconds, got {value!r}")
    return max(1, math.ceil(value))


def _first_line(source: str) -> str:
    line = next((ln.strip() for ln in source.splitlines() if ln.strip()), "(empty cell)")
    return line if len(line) <= 80 else line[:77] + "..."


class _Watch:
    """What a run is doing, seen from outside papermill: the cell in flight, the kernel, the last sign of progress.

    nbclient's hooks feed it from the thread that executes the notebook; the runner's thread reads it to name the
    cell a failure happened in, and its watchdog kills the kernel when nothing has moved for too long.
    """

    def __init__(self, nb_in: Path):
        self.nb_in = nb_in
        self.source_ids = [c.get("id") for c in json.loads(nb_in.read_text()).get("cells", [])]
        self.lock = threading.Lock()
        self.last_progress = time.monotonic()
        self.cell: dict | None = None  # the cell started last (executed notebook's copy) and its index there
        self.index: int | None = None
        self.finished = False  # whether that cell has finished
        self.kernel_started = False
        self.km = None
        self.kernel: tuple | None = None  # (Popen, pid, pgid) of the kernel, kept past nbclient's clean-up

    def progress(self) -> None:
        with self.lock:
            self.last_progress = time.monotonic()

    def silent_for(self) -> float:
        with self.lock:
            return time.monotonic() - self.last_progress

    # nbclient hooks (keyword arguments only)
    def on_notebook_start(self, notebook=None, **_):
        self.kernel_started = True
        self.kernel = self._kernel_process() or self.kernel
        self.progress()

    def _kernel_process(self) -> tuple | None:
        prov = getattr(self.km, "provisioner", None)
        if prov is None or getattr(prov, "pid", None) is None:
            return None
        return getattr(prov, "process", None), prov.pid, getattr(prov, "pgid", None)

    def on_cell_start(self, cell=None, cell_index=None, **_):
        if cell is not None and cell.get("cell_type") == "code" and str(cell.get("source", "")).strip():
            with self.lock:  # markdown and empty cells are skipped, never executed: they cannot be the culprit
                self.cell, self.index, self.finished = cell, cell_index, False
        self.progress()

    def on_cell_executed(self, cell=None, cell_index=None, **_):
        with self.lock:
            self.finished = True
        self.progress()

    def cell_label(self) -> str:
        """The cell started last, as ``cell 24 of 07_theory.ipynb (`th.explorer()`)`` (the source notebook's index)."""
        cell, index = self.cell, self.index
        if cell is None:
            return "before the first cell (kernel start-up)"
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            return f"the cell of parameters papermill injects (executed cell {index})"
        cid = cell.get("id")
        src_index = self.source_ids.index(cid) if cid and cid in self.source_ids else index
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        return f"cell {src_index} of {self.nb_in.name} (`{_first_line(source)}`)"

    def where(self) -> str:
        """Where the run is: in a code cell, after one (between cells, or after the last), or before the first."""
        if self.cell is None:
            return "before the first cell, while the kernel was starting" if not self.kernel_started else \
                "before the first cell"
        return ("after " if self.finished else "in ") + self.cell_label()

    def kernel_exit(self) -> str:
        """How the kernel process ended (``exit status 1``, ``signal SIGKILL``), or '' if unknown or alive."""
        proc = (self.kernel or (None,))[0]
        code = proc.poll() if proc is not None else None
        if code is None:
            return ""
        if code < 0:
            try:
                return f"signal {signal.Signals(-code).name}"
            except ValueError:
                return f"signal {-code}"
        return f"exit status {code}"

    def kill_kernel(self) -> None:
        """SIGKILL the kernel's process group (the kernel runs in its own session, with any workers it forked)."""
        found = self._kernel_process() or self.kernel  # a kernel still starting has no on_notebook_start yet
        if found is None:
            return
        _, pid, pgid = found
        try:
            if pgid and pgid != os.getpgid(0):
                os.killpg(pgid, signal.SIGKILL)
            elif pid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kernel_manager_class(self):
        """A jupyter_client kernel manager class that registers each instance with this watch."""
        from jupyter_client.manager import AsyncKernelManager

        watch = self

        class WatchedKernelManager(AsyncKernelManager):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                watch.km = self

        return WatchedKernelManager


def _keep_failed(tmp_out: Path, failed: Path, cell_index: int | None, ename: str, evalue: str) -> None:
    """Keep the executed notebook under data/failed/, marked failed, with the error on the cell it happened in.

    papermill records a cell's exception itself; a timeout, a dead kernel or a stall leaves no mark, so add one.
    """
    import nbformat

    failed.parent.mkdir(parents=True, exist_ok=True)
    failed.unlink(missing_ok=True)
    if not tmp_out.exists():
        return
    try:
        nb = nbformat.read(tmp_out, as_version=4)
    except Exception:  # noqa: BLE001 - a half-written notebook is still worth keeping as it is
        shutil.copyfile(tmp_out, failed)
        return
    pm_meta = nb.metadata.setdefault("papermill", {})
    if not pm_meta.get("exception"):
        pm_meta["exception"] = True
        if cell_index is not None and 0 <= cell_index < len(nb.cells) and nb.cells[cell_index].cell_type == "code":
            cell = nb.cells[cell_index]
            cell.setdefault("outputs", []).append(
                nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"]))
            cell.metadata.setdefault("papermill", {}).update(exception=True, status="failed")
    nbformat.write(nb, failed)


def _execute(nb_in: Path, tmp_out: Path, inject: dict[str, Any], watch: _Watch, desc: str, progress_bar: bool,
             cell_timeout: int, start_timeout: int, stall_limit: float) -> BaseException | None:
    """Run papermill in a worker thread and wait for it; returns the error it ended with (None on success).

    Raises :class:`_Stalled` when the run showed no progress for ``stall_limit`` seconds: the kernel is killed
    first, so a worker blocked on it wakes up and ends (and if it does not, it is a daemon and cannot keep the
    process alive).
    """
    import papermill as pm

    box: dict[str, BaseException] = {}

    def work() -> None:
        try:
            pm.execute_notebook(
                str(nb_in),
                str(tmp_out),
                parameters=inject,
                kernel_name="python3",
                cwd=str(paths.ROOT),
                progress_bar={"desc": desc, "unit": "cell", "disable": False} if progress_bar else False,
                start_timeout=start_timeout,
                execution_timeout=cell_timeout,
                iopub_timeout=IOPUB_TIMEOUT,
                kernel_manager_class=watch.kernel_manager_class(),
                on_notebook_start=watch.on_notebook_start,
                on_cell_start=watch.on_cell_start,
                on_cell_executed=watch.on_cell_executed,
            )
        except BaseException as err:  # noqa: BLE001 - handed to the runner's thread, which names it
            box["error"] = err

    worker = threading.Thread(target=work, name=f"papermill {desc}", daemon=True)
    watch.progress()
    worker.start()
    try:
        while worker.is_alive():
            worker.join(timeout=min(1.0, max(0.05, stall_limit - watch.silent_for())))
            if worker.is_alive() and watch.silent_for() > stall_limit:
                where = watch.where()
                watch.kill_kernel()
                worker.join(timeout=10)
                raise _Stalled(where)
    except KeyboardInterrupt:
        watch.kill_kernel()
        raise
    return box.get("error")


class _Stalled(Exception):
    """The watchdog fired: the run showed no progress for its whole allowance."""


def run_stage(
    stage: str,
    profile: str = "smoke",
    overrides: Iterable[tuple[str, str]] = (),
    output_dir: Path | None = None,
    progress_bar: bool = True,
    notebooks_dir: Path | None = None,
    params_dir: Path | None = None,
    cell_timeout: float | None = None,
    start_timeout: int = KERNEL_START_TIMEOUT,
    stall_limit: float | None = None,
) -> dict[str, Any]:
    """Execute one stage; returns the result record written to ``data/results/<stage>.json``.

    ``notebooks_dir``/``params_dir`` default to the repository's folders (the tests point them elsewhere).
    ``cell_timeout`` (seconds) limits every cell (default: :func:`cell_timeout_for`); ``start_timeout`` the kernel's
    start-up; ``stall_limit`` is how long the run may show no progress at all (no cell starting or finishing) before
    its kernel is killed (default: the cell limit + the start-up limit + a minute). Any of these, a kernel that dies,
    or a cell that raises ends the run with :class:`StageFailed`, naming the stage, the profile and the cell.
    """
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb_in = notebook_path(stage, notebooks_dir)
    inject, effective = resolve_parameters(stage, profile, overrides, notebooks_dir, params_dir)
    cell_timeout = cell_timeout_for(profile, cell_timeout)
    stall_limit = float(stall_limit) if stall_limit else float(cell_timeout + start_timeout + STALL_MARGIN)
    output_dir = Path(output_dir) if output_dir else paths.STAGES
    output_dir.mkdir(parents=True, exist_ok=True)
    pending = pending_metrics_path(stage)
    pending.unlink(missing_ok=True)

    os.environ[HEADLESS_ENV] = "1"  # inherited by the kernel: quiet progress bars, no widgets inside the notebook
    # the kernel must keep IPython's inline backend (an inherited MPLBACKEND=agg would swallow every figure)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ["SDLIB_PROFILE"] = profile
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    watch = _Watch(nb_in)
    with tempfile.TemporaryDirectory(prefix=f"sdlib-{stage}-") as tmp:
        tmp_out = Path(tmp) / f"{stage}.ipynb"
        failed = paths.failed_dir() / f"{stage}.{profile}.ipynb"
        kept = f"the executed notebook is kept at {failed}; book/stages was not updated"
        head = f"stage {stage} (profile {profile}) failed"
        try:
            err = _execute(nb_in, tmp_out, inject, watch, f"{stage} [{profile}]", progress_bar,
                           cell_timeout, start_timeout, stall_limit)
        except _Stalled as stalled:
            in_cell = watch.cell is not None and not watch.finished
            what = f"no progress for {stall_limit:.0f} s {stalled}" + (
                f", although the cell's {cell_timeout} s limit should have ended it" if in_cell else
                f", outside any cell's {cell_timeout} s limit (kernel start-up, output drain or shutdown)"
            ) + "; the watchdog killed the kernel"
            _keep_failed(tmp_out, failed, watch.index if in_cell else None, "Stalled", what)
            raise StageFailed(f"{head}: {what}\n{kept}") from None
        if isinstance(err, pm.PapermillExecutionError):
            # papermill stops at the failing cell, so it is the last one started (its own cell_index counts the
            # error banner it inserts at the top of the notebook)
            where = watch.cell_label() if watch.cell is not None else f"the cell `{_first_line(err.source)}`"
            _keep_failed(tmp_out, failed, None, err.ename, err.evalue)  # papermill has marked the notebook
            raise StageFailed(
                f"{head} in {where}: {err.ename}: {err.evalue}\n"
                f"{''.join(err.traceback) if err.traceback else ''}\n{kept}"
            ) from err
        if isinstance(err, CellTimeoutError):
            if "IOPub" in str(err):
                what = f"the cell finished but its last outputs did not arrive within {IOPUB_TIMEOUT} s (IOPub)"
            else:
                what = (f"the cell ran past the {cell_timeout} s cell timeout (--cell-timeout / ${CELL_TIMEOUT_ENV});"
                        " the kernel was stopped")
            _keep_failed(tmp_out, failed, watch.index, "CellTimeoutError", what)
            raise StageFailed(f"{head} {watch.where()}: {what}\n{kept}") from err
        if isinstance(err, DeadKernelError):
            how = watch.kernel_exit()
            what = "the kernel died" + (f" ({how})" if how else "") + \
                "; out of memory, a crash in native code or os._exit are the usual causes"
            _keep_failed(tmp_out, failed, watch.index, "DeadKernelError", what)
            raise StageFailed(f"{head} {watch.where()}: {what}\n{kept}") from err
        if isinstance(err, Exception):
            where = watch.where() if watch.kernel_started else "while starting the kernel"
            what = f"{type(err).__name__}: {err}"
            _keep_failed(tmp_out, failed, watch.index, type(err).__name__, str(err))
            raise StageFailed(f"{head} {where}: {what}\n{kept}") from err
        if err is not None:  # KeyboardInterrupt, SystemExit raised inside the worker
            raise err
        duration = time.perf_counter() - t0
        if page_failed(tmp_out):  # defensive: never publish a failed page
            raise StageFailed(f"stage {stage}: papermill marked the run as failed")
        strip_widgets(tmp_out)
        published = output_dir / f"{stage}.ipynb"
        shutil.copyfile(tmp_out, published.with_suffix(".ipynb.tmp"))
        published.with_suffix(".ipynb.tmp").replace(published)

    metrics = json.loads(pending.read_text()) if pending.is_file() else {}
    pending.unlink(missing_ok=True)
    record = {
        "stage": stage,
        "profile": profile,
        "parameters": effective,
        "git_rev": git_revision(),
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 3),
        "metrics": metrics,
        "page": str(published),
    }
    results = paths.results_dir()
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stage}.json").write_text(json.dumps(record, indent=2, default=str))
    return record


# ---- the book -----------------------------------------------------------------------------------------------------
def build_html(source: Path | None = None, stages_dir: Path | None = None) -> Path:
    """Build the HTML book with warnings as errors; refuses if a stage page is missing or failed."""
    source = Path(source or paths.ROOT)
    stages_dir = Path(stages_dir or source / "book" / "stages")
    for stage in toc_stages(source / "_toc.yml"):
        page = stages_dir / f"{stage}.ipynb"
        if not page.is_file():
            raise UsageError(f"missing stage page {page}: run `make run STAGE={stage}` (or `make stages`) first")
        if page_failed(page):
            raise UsageError(f"stage page {page} records a failed run; re-run `make run STAGE={stage}`")
    mathjax = source / "book" / "_static" / "mathjax" / "tex-mml-chtml.js"
    if not mathjax.is_file():
        raise UsageError(f"MathJax is not vendored at {mathjax}: run `make mathjax`")
    jb = Path(sys.executable).with_name("jupyter-book")
    # --all: every page is rebuilt, so a warning (a stale glue key) cannot hide behind an up-to-date incremental build
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(source), "--all", "-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, cwd=source)
    if proc.returncode != 0:
        raise StageFailed(f"jupyter-book build failed (exit {proc.returncode}); see the warnings above")
    return source / "_build" / "html" / "index.html"


# ---- CLI ----------------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sdlib", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run one stage notebook with papermill")
    run.add_argument("stage", help="stage name, e.g. 07_theory")
    run.add_argument("--profile", default="smoke", help="smoke | default | full | real (params/<stage>.<profile>.yaml; full: default at full size)")
    run.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override one parameter (value parsed as YAML)")
    run.add_argument("--output-dir", type=Path, default=None, help="where the executed notebook goes (default book/stages)")
    allp = sub.add_parser("run-all", help="run every stage listed in _toc.yml")
    allp.add_argument("--profile", default="default")
    timeout_help = (f"seconds any one cell may run before the stage fails (default ${CELL_TIMEOUT_ENV}, else "
                    + ", ".join(f"{p}: {t}" for p, t in CELL_TIMEOUTS.items()) + ")")
    for p in (run, allp):
        p.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS", help=timeout_help)
    sub.add_parser("build-html", help="build _build/html with jupyter-book (-W)")
    sub.add_parser("stages", help="list the stages in book order")
    sub.add_parser("lab", help="JupyterLab on the repository with live kernels; other options go to `jupyter lab`",
                   add_help=False)
    return ap


def lab_command(lab_args: Iterable[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``make lab``: JupyterLab rooted at the repository.

    Its kernels serve a live frontend, so they are not headless (``SDLIB_HEADLESS``/``CI`` are dropped: the
    theory chapter's explorer builds its widgets) and keep IPython's inline figures. ``lab_args`` go to
    ``jupyter lab`` (``--no-browser``, ``--port``, ``--IdentityProvider.token``...); one naming the root folder replaces
    the repository.
    """
    lab_args = list(lab_args)
    jupyter = Path(sys.executable).with_name("jupyter")
    own_root = any(a.split("=")[0] in ("--notebook-dir", "--ServerApp.root_dir", "--ServerApp.notebook_dir")
                   for a in lab_args)
    cmd = [str(jupyter) if jupyter.exists() else "jupyter", "lab",
           *([] if own_root else [f"--notebook-dir={paths.ROOT}"]), *lab_args]
    env = {k: v for k, v in os.environ.items() if k not in (HEADLESS_ENV, "CI")}
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    return cmd, env


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lab"]:  # everything after `lab` belongs to jupyter lab
        cmd, env = lab_command(argv[1:])
        os.execvpe(cmd[0], cmd, env)  # replaces this process: stopping it stops the server
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "run":
            rec = run_stage(args.stage, args.profile, [tuple(p) for p in args.param], args.output_dir,
                            cell_timeout=args.cell_timeout)
            print(f"{args.stage} [{args.profile}] done in {rec['duration_s']:.1f} s -> {rec['page']}")
        elif args.cmd == "run-all":
            for stage in toc_stages():
                rec = run_stage(stage, args.profile, cell_timeout=args.cell_timeout)
                print(f"{stage} [{args.profile}] done in {rec['duration_s']:.1f} s")
        elif args.cmd == "build-html":
            index = build_html()
            print(f"book built: {index}")
        elif args.cmd == "stages":
            print("\n".join(toc_stages()))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StageFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
