"""Run stage notebooks headless with papermill, and build the book.

``python -m sdlib run <stage> [--profile P] [-p name value ...]``

1. merges ``params/<stage>.<profile>.yaml`` with the ``-p`` overrides (later wins);
2. checks every name and type against the notebook's ``parameters`` cell (unknown name or wrong type: exit 2);
3. executes ``notebooks/<stage>.ipynb`` with papermill, cwd = repository root;
4. on success publishes the executed notebook to ``book/stages/<stage>.ipynb`` and writes
   ``data/results/<stage>.json`` (metrics + effective parameters + git revision + start time + duration);
   on failure prints the failing cell's traceback, keeps the notebook under ``data/failed/`` and exits 1,
   leaving the previously published page untouched.

``python -m sdlib run-all --profile P`` runs every stage listed in ``_toc.yml`` in order;
``python -m sdlib build-html`` builds ``_build/html`` with warnings as errors.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from sdlib import paths
from sdlib.core import HEADLESS_ENV, pending_metrics_path

PROFILES = ("smoke", "default", "real")
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")


class UsageError(Exception):
    """Bad stage name, parameter name or value: the CLI exits with status 2."""


class StageFailed(Exception):
    """A cell raised: the CLI exits with status 1."""


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

    The smoke profile is the notebook's own defaults, so its YAML file may be absent; other profiles need one.
    """
    if profile not in PROFILES:
        raise UsageError(f"unknown profile '{profile}'; profiles: {', '.join(PROFILES)}")
    declared = notebook_parameters(notebook_path(stage, notebooks_dir))
    valid = ", ".join(sorted(declared))
    inject: dict[str, Any] = {}

    pf = params_file(stage, profile, params_dir)
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


def run_stage(
    stage: str,
    profile: str = "smoke",
    overrides: Iterable[tuple[str, str]] = (),
    output_dir: Path | None = None,
    progress_bar: bool = True,
    notebooks_dir: Path | None = None,
    params_dir: Path | None = None,
) -> dict[str, Any]:
    """Execute one stage; returns the result record written to ``data/results/<stage>.json``.

    ``notebooks_dir``/``params_dir`` default to the repository's folders (the tests point them elsewhere).
    """
    import papermill as pm

    nb_in = notebook_path(stage, notebooks_dir)
    inject, effective = resolve_parameters(stage, profile, overrides, notebooks_dir, params_dir)
    output_dir = Path(output_dir) if output_dir else paths.STAGES
    output_dir.mkdir(parents=True, exist_ok=True)
    pending = pending_metrics_path(stage)
    pending.unlink(missing_ok=True)

    os.environ[HEADLESS_ENV] = "1"  # inherited by the kernel: quiet progress bars inside the notebook
    # the kernel must keep IPython's inline backend (an inherited MPLBACKEND=agg would swallow every figure)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ["SDLIB_PROFILE"] = profile
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"sdlib-{stage}-") as tmp:
        tmp_out = Path(tmp) / f"{stage}.ipynb"
        try:
            pm.execute_notebook(
                str(nb_in),
                str(tmp_out),
                parameters=inject,
                kernel_name="python3",
                cwd=str(paths.ROOT),
                progress_bar={"desc": f"{stage} [{profile}]", "unit": "cell", "disable": False}
                if progress_bar
                else False,
            )
        except pm.PapermillExecutionError as err:
            failed = paths.failed_dir() / f"{stage}.{profile}.ipynb"
            failed.parent.mkdir(parents=True, exist_ok=True)
            if tmp_out.exists():
                shutil.copyfile(tmp_out, failed)
            raise StageFailed(
                f"stage {stage} ({profile}) failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                f"{''.join(err.traceback) if err.traceback else ''}\n"
                f"the executed notebook is kept at {failed}; book/stages was not updated"
            ) from err
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
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(source), "-W", "-n", "--keep-going"]
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
    run.add_argument("--profile", default="smoke", help="smoke | default | real (params/<stage>.<profile>.yaml)")
    run.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override one parameter (value parsed as YAML)")
    run.add_argument("--output-dir", type=Path, default=None, help="where the executed notebook goes (default book/stages)")
    allp = sub.add_parser("run-all", help="run every stage listed in _toc.yml")
    allp.add_argument("--profile", default="default")
    sub.add_parser("build-html", help="build _build/html with jupyter-book (-W)")
    sub.add_parser("stages", help="list the stages in book order")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "run":
            rec = run_stage(args.stage, args.profile, [tuple(p) for p in args.param], args.output_dir)
            print(f"{args.stage} [{args.profile}] done in {rec['duration_s']:.1f} s -> {rec['page']}")
        elif args.cmd == "run-all":
            for stage in toc_stages():
                rec = run_stage(stage, args.profile)
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
