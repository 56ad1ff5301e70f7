"""No stage run waits forever: a cell that blocks, a kernel that dies and a run that stalls outside any cell all end
with a StageFailed that names the stage, the profile and the cell; and the theory chapter's explorer builds no
widget when nobody can see it."""
import json
import os
import subprocess
import sys
import threading
import time

import nbformat
import pytest

from sdlib import paths, runner
from sdlib import theory as th

PARAMS = "x: int = 1  # a number"


def _notebook(folder, name, *bodies):
    """A throwaway stage: one typed parameters cell, then one code cell per body."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(b) for b in bodies)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")
    return folder


def _run(tmp_path, name, **kwargs):
    return runner.run_stage(name, "smoke", output_dir=tmp_path / "stages", notebooks_dir=tmp_path / "nbs",
                            params_dir=tmp_path, progress_bar=False, **kwargs)


def _assert_failed_and_unpublished(tmp_path, data_dir, name):
    assert not (tmp_path / "stages" / f"{name}.ipynb").exists()
    assert not (data_dir / "results" / f"{name}.json").exists()
    failed = data_dir / "failed" / f"{name}.smoke.ipynb"
    assert failed.is_file() and runner.page_failed(failed)
    return nbformat.read(failed, as_version=4)


# ---- the per-cell limit and its sources ---------------------------------------------------------------------------
def test_cell_timeout_comes_from_the_flag_then_the_environment_then_the_profile(monkeypatch):
    monkeypatch.delenv(runner.CELL_TIMEOUT_ENV, raising=False)
    assert runner.cell_timeout_for("default") == runner.CELL_TIMEOUTS["default"] == 1800
    assert runner.cell_timeout_for("real") > runner.cell_timeout_for("default")
    monkeypatch.setenv(runner.CELL_TIMEOUT_ENV, "42")
    assert runner.cell_timeout_for("default") == 42
    assert runner.cell_timeout_for("default", 7.2) == 8  # the flag wins; nbclient wants whole seconds
    monkeypatch.setenv(runner.CELL_TIMEOUT_ENV, "soon")
    with pytest.raises(runner.UsageError, match="SDLIB_CELL_TIMEOUT='soon' is not a number"):
        runner.cell_timeout_for("default")
    for bad in (0, -5, float("inf")):
        with pytest.raises(runner.UsageError, match="positive number of seconds"):
            runner.cell_timeout_for("smoke", bad)


def test_cli_exits_2_on_a_bad_cell_timeout():
    proc = subprocess.run([sys.executable, "-m", "sdlib", "run", "07_theory", "--cell-timeout", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cell timeout (--cell-timeout) must be a positive number" in proc.stderr


# ---- hangs and deaths inside a cell --------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_blocked_cell_fails_at_its_limit_naming_stage_and_cell(tmp_path, data_dir):
    # waits on an event nobody sets: no CPU, no output, an idle-looking kernel, as the widget cell was
    _notebook(tmp_path / "nbs", "blocked", "y = x + 1", "import threading\nthreading.Event().wait()", "print('never')")
    t0 = time.monotonic()
    with pytest.raises(runner.StageFailed) as err:
        _run(tmp_path, "blocked", cell_timeout=4)
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert msg.startswith("stage blocked (profile smoke) failed in cell 2 of blocked.ipynb (`import threading`)"), msg
    assert "past the 4 s cell timeout" in msg and "data/failed/blocked.smoke.ipynb" in msg
    assert 4 <= elapsed < 60, elapsed  # the limit plus kernel start and shutdown, not the stall guard (184 s)
    nb = _assert_failed_and_unpublished(tmp_path, data_dir, "blocked")
    blocked = nb.cells[2]  # papermill injected no parameters cell (no overrides), so indices match the source
    assert blocked.source.startswith("import threading")
    # the kernel's shutdown may interrupt the cell first (a KeyboardInterrupt output); the timeout is recorded last
    assert [o.get("ename") for o in blocked.outputs][-1] == "CellTimeoutError"
    assert not nb.cells[3].get("outputs")  # the run stopped there


@pytest.mark.slow
@pytest.mark.parametrize("death,how", [("os._exit(3)", "exit status 3"),
                                       ("os.kill(os.getpid(), signal.SIGKILL)", "signal SIGKILL")])
def test_a_dying_kernel_fails_naming_stage_and_cell(tmp_path, data_dir, death, how):
    _notebook(tmp_path / "nbs", "dies", "import os, signal, time\ntime.sleep(0.5)\n" + death, "print('never')")
    t0 = time.monotonic()
    with pytest.raises(runner.StageFailed) as err:
        _run(tmp_path, "dies", cell_timeout=120)
    elapsed = time.monotonic() - t0
    msg = str(err.value)
    assert msg.startswith("stage dies (profile smoke) failed in cell 1 of dies.ipynb (`import os, signal, time`)"), msg
    assert f"the kernel died ({how})" in msg
    assert elapsed < 60, elapsed  # noticed within seconds, not at the 120 s cell limit
    nb = _assert_failed_and_unpublished(tmp_path, data_dir, "dies")
    assert [o.get("ename") for o in nb.cells[1].outputs][-1] == "DeadKernelError"


def _cli(tmp_path, args, setup=""):
    """The CLI (`runner.main`, as `python -m sdlib` calls it) in a child process, on the test's notebooks."""
    script = "\n".join([
        "import sys",
        "from pathlib import Path",
        "from sdlib import paths, runner",
        f"paths.NOTEBOOKS, paths.PARAMS = Path({str(tmp_path / 'nbs')!r}), Path({str(tmp_path)!r})",
        setup,
        f"sys.exit(runner.main({args!r}))",
    ])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_cli_exits_1_naming_the_blocked_cell(tmp_path, data_dir, monkeypatch):
    _notebook(tmp_path / "nbs", "blocked", "import time\ntime.sleep(3600)")
    monkeypatch.setenv(runner.CELL_TIMEOUT_ENV, "600")  # the flag wins over the environment
    t0 = time.monotonic()
    proc = _cli(tmp_path, ["run", "blocked", "--cell-timeout", "3", "--output-dir", str(tmp_path / "stages")])
    assert proc.returncode == 1 and time.monotonic() - t0 < 90, proc.stderr[-2000:]
    assert "error: stage blocked (profile smoke) failed in cell 1 of blocked.ipynb (`import time`)" in proc.stderr
    assert "past the 3 s cell timeout" in proc.stderr


# ---- a hang outside any cell: the watchdog -------------------------------------------------------------------------
@pytest.mark.slow
def test_a_stall_after_the_last_cell_is_ended_by_the_watchdog(tmp_path, data_dir, monkeypatch):
    """After its cells papermill asks the kernel for its info and gathers widget state; block the latter forever
    (as a stuck output drain would), outside every cell's limit."""
    from papermill.clientwrap import PapermillNotebookClient

    release = threading.Event()
    monkeypatch.setattr(PapermillNotebookClient, "set_widgets_metadata", lambda self: release.wait())
    pid_file = tmp_path / "kernel.pid"
    _notebook(tmp_path / "nbs", "stalls", f"import os\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))")
    t0 = time.monotonic()
    try:
        with pytest.raises(runner.StageFailed) as err:
            _run(tmp_path, "stalls", cell_timeout=60, stall_limit=6)
        elapsed = time.monotonic() - t0
        msg = str(err.value)
        assert msg.startswith("stage stalls (profile smoke) failed: no progress for 6 s after cell 1 of stalls.ipynb "
                              "(`import os`), outside any cell's 60 s limit"), msg
        assert "the watchdog killed the kernel" in msg
        assert 6 <= elapsed < 50, elapsed  # well before the cell limit, let alone the default guard
        pid = int(pid_file.read_text())
        status = f"/proc/{pid}/status"
        # killed: gone, or a zombie that the blocked client never reaped
        assert not os.path.exists(status) or "\nState:\tZ" in open(status).read()
        _assert_failed_and_unpublished(tmp_path, data_dir, "stalls")
    finally:
        release.set()  # let the abandoned papermill thread finish


@pytest.mark.slow
def test_cli_exits_1_on_a_stall_although_a_thread_is_still_stuck(tmp_path, data_dir):
    _notebook(tmp_path / "nbs", "stalls", "y = x + 1")
    setup = "\n".join([
        "import functools, threading",
        "from papermill.clientwrap import PapermillNotebookClient",
        "PapermillNotebookClient.set_widgets_metadata = lambda self: threading.Event().wait()  # blocks for good",
        "runner.run_stage = functools.partial(runner.run_stage, stall_limit=6)",
    ])
    t0 = time.monotonic()
    proc = _cli(tmp_path, ["run", "stalls", "--output-dir", str(tmp_path / "stages")], setup)
    assert proc.returncode == 1 and time.monotonic() - t0 < 90, proc.stderr[-2000:]
    assert "error: stage stalls (profile smoke) failed: no progress for 6 s after cell 1 of stalls.ipynb" in proc.stderr


# ---- the explorer: live frontends only ------------------------------------------------------------------------------
def _widget_count():
    from ipywidgets.widgets import widget

    return len(widget._instances)


def test_explorer_builds_no_widget_when_headless(monkeypatch, capsys):
    monkeypatch.setenv("SDLIB_HEADLESS", "1")
    before = _widget_count()
    assert th.explorer() is None
    assert _widget_count() == before
    assert "explorer not built: this is a headless run" in capsys.readouterr().out


def test_explorer_builds_its_sliders_for_a_live_frontend(monkeypatch):
    import ipywidgets
    import matplotlib.pyplot as plt

    monkeypatch.delenv("SDLIB_HEADLESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("MPLBACKEND", "agg")
    ui = th.explorer()
    try:
        assert isinstance(ui, ipywidgets.interactive)
        sliders = {w.description: w for w in ui.children
                   if isinstance(w, (ipywidgets.FloatSlider, ipywidgets.IntSlider))}
        assert set(sliders) == {"α", "γ", "c", "P_v ms", "d_v ms", "tokens"}
        assert sliders["α"].value == 0.6 and sliders["γ"].value == 5
    finally:
        for w in ui.children:
            w.close()
        ui.close()
        plt.close("all")  # the figure it drew on building (agg shows nothing)


@pytest.mark.slow
def test_theory_explorer_cell_creates_no_widget_in_a_headless_run(tmp_path, data_dir, monkeypatch):
    """Run the real 07_theory stage and look at the executed notebook before the runner strips widgets from it."""
    raw = {}
    strip = runner.strip_widgets

    def keep_then_strip(nb_path):
        raw["nb"] = json.loads(nb_path.read_text())
        strip(nb_path)

    monkeypatch.setattr(runner, "strip_widgets", keep_then_strip)
    runner.run_stage("07_theory", "smoke", output_dir=tmp_path / "stages", progress_bar=False, cell_timeout=600)
    nb = raw["nb"]
    cells = [c for c in nb["cells"] if "".join(c["source"]).strip() == "th.explorer()"]
    assert len(cells) == 1
    outputs = cells[0]["outputs"]
    assert not any(m in o.get("data", {}) for o in outputs for m in runner.WIDGET_MIMES), outputs
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "explorer not built" in text and "interactive(" not in json.dumps(outputs)
    assert not nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state")
    # the static figure in the next cell stands in for it
    following = nb["cells"][nb["cells"].index(cells[0]) + 1]
    assert any("image/png" in o.get("data", {}) for o in following["outputs"])
