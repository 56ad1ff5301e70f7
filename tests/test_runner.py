"""The papermill runner: parameter validation, failure handling, result records."""
import json
import subprocess
import sys

import nbformat
import pytest

from sdlib import paths, runner


def _toy_notebook(folder, body="assert x > 0, 'x must be positive'"):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x: int = 1  # a positive number\nrate: float = 0.5\nname: str = 'a'\nflag: bool = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        params,
        nbformat.v4.new_code_cell("import sdlib\n" + body),
        nbformat.v4.new_code_cell("sdlib.save_metrics('toy', {'x_squared': x * x, 'rate': rate})"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / "toy.ipynb")
    return folder


def test_toc_lists_the_theory_stage():
    assert "07_theory" in runner.toc_stages()


def test_parameters_are_read_with_types():
    params = runner.notebook_parameters(paths.NOTEBOOKS / "07_theory.ipynb")
    assert params["mc_trials"].type_name == "int"
    assert params["seed"].default == 0


def test_unknown_parameter_is_refused_with_valid_names(tmp_path):
    nbs = _toy_notebook(tmp_path / "nbs")
    with pytest.raises(runner.UsageError, match="unknown parameter 'typo'.*valid parameters: flag, name, rate, x"):
        runner.resolve_parameters("toy", "smoke", [("typo", "1")], notebooks_dir=nbs, params_dir=tmp_path)


@pytest.mark.parametrize(
    "name,raw,expected",
    [("x", "3", 3), ("rate", "2", 2.0), ("rate", "0.25", 0.25), ("name", "123", "123"), ("flag", "true", True),
     ("name", "", "")],
)
def test_overrides_are_typed(tmp_path, name, raw, expected):
    nbs = _toy_notebook(tmp_path / "nbs")
    inject, effective = runner.resolve_parameters("toy", "smoke", [(name, raw)], notebooks_dir=nbs, params_dir=tmp_path)
    assert inject == {name: expected} and type(inject[name]) is type(expected)
    assert effective[name] == expected and effective["x"] == (3 if name == "x" else 1)


@pytest.mark.parametrize("name,raw", [("x", "abc"), ("x", "1.5"), ("flag", "1"), ("rate", "yes")])
def test_wrong_type_is_refused(tmp_path, name, raw):
    nbs = _toy_notebook(tmp_path / "nbs")
    with pytest.raises(runner.UsageError, match=f"parameter '{name}'.*must be"):
        runner.resolve_parameters("toy", "smoke", [(name, raw)], notebooks_dir=nbs, params_dir=tmp_path)


def test_profile_file_is_merged_and_checked(tmp_path):
    nbs = _toy_notebook(tmp_path / "nbs")
    (tmp_path / "toy.default.yaml").write_text("x: 7\nrate: 1\n")
    inject, _ = runner.resolve_parameters("toy", "default", [("x", "9")], notebooks_dir=nbs, params_dir=tmp_path)
    assert inject == {"x": 9, "rate": 1.0}  # -p wins over the file
    (tmp_path / "toy.default.yaml").write_text("bogus: 1\n")
    with pytest.raises(runner.UsageError, match="toy.default.yaml: unknown parameter 'bogus'"):
        runner.resolve_parameters("toy", "default", notebooks_dir=nbs, params_dir=tmp_path)
    with pytest.raises(runner.UsageError, match="no parameter file"):
        runner.resolve_parameters("toy", "real", notebooks_dir=nbs, params_dir=tmp_path)
    with pytest.raises(runner.UsageError, match="unknown stage 'nope'"):
        runner.resolve_parameters("nope", "smoke", notebooks_dir=nbs, params_dir=tmp_path)


def test_cli_exits_2_naming_the_unknown_parameter():
    proc = subprocess.run(
        [sys.executable, "-m", "sdlib", "run", "07_theory", "-p", "no_such_param", "1"],
        capture_output=True, text=True, cwd=paths.ROOT / "tests",
    )
    assert proc.returncode == 2
    assert "no_such_param" in proc.stderr and "mc_trials" in proc.stderr


def test_cli_exits_2_on_a_wrong_type():
    proc = subprocess.run(
        [sys.executable, "-m", "sdlib", "run", "07_theory", "-p", "mc_trials", "many"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2 and "mc_trials" in proc.stderr and "must be int" in proc.stderr


@pytest.mark.slow
def test_successful_run_publishes_page_and_result(tmp_path, data_dir):
    nbs = _toy_notebook(tmp_path / "nbs")
    out = tmp_path / "stages"
    rec = runner.run_stage("toy", "smoke", [("x", "4")], output_dir=out, notebooks_dir=nbs, params_dir=tmp_path,
                           progress_bar=False)
    assert (out / "toy.ipynb").is_file() and not runner.page_failed(out / "toy.ipynb")
    saved = json.loads((data_dir / "results" / "toy.json").read_text())
    assert saved == rec
    assert saved["metrics"] == {"x_squared": 16, "rate": 0.5}
    assert saved["parameters"] == {"x": 4, "rate": 0.5, "name": "a", "flag": False}
    assert saved["profile"] == "smoke" and saved["duration_s"] > 0 and saved["git_rev"]


@pytest.mark.slow
def test_failed_run_is_kept_aside_and_never_published(tmp_path, data_dir):
    nbs = _toy_notebook(tmp_path / "nbs")
    out = tmp_path / "stages"
    with pytest.raises(runner.StageFailed, match="AssertionError: x must be positive") as err:
        runner.run_stage("toy", "smoke", [("x", "-1")], output_dir=out, notebooks_dir=nbs, params_dir=tmp_path,
                         progress_bar=False)
    assert "Traceback" in str(err.value) or "assert x > 0" in str(err.value)
    # named by its index in the source notebook, although papermill injected a parameters cell before it
    assert str(err.value).startswith("stage toy (profile smoke) failed in cell 1 of toy.ipynb (`import sdlib`): ")
    assert not (out / "toy.ipynb").exists()
    failed = data_dir / "failed" / "toy.smoke.ipynb"
    assert failed.is_file() and runner.page_failed(failed)
    assert not (data_dir / "results" / "toy.json").exists()


def test_strip_widgets_removes_state_and_views(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("w")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
            "text/plain": "interactive(...)",
        }),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}}),
    ]
    nb.cells = [cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path = tmp_path / "w.ipynb"
    nbformat.write(nb, path)
    runner.strip_widgets(path)
    back = nbformat.read(path, as_version=4)
    assert "widgets" not in back.metadata
    assert [o["data"] for o in back.cells[0].outputs] == [{"text/plain": "interactive(...)"}]


def test_lab_command_roots_at_the_repository_with_live_kernels(monkeypatch):
    monkeypatch.setenv("SDLIB_HEADLESS", "1")
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("MPLBACKEND", "agg")
    cmd, env = runner.lab_command(["--no-browser", "--port=8899"])
    assert cmd[1:] == ["lab", f"--notebook-dir={paths.ROOT}", "--no-browser", "--port=8899"]
    assert "SDLIB_HEADLESS" not in env and "CI" not in env  # the explorer needs a kernel that is not headless
    assert env["MPLBACKEND"] == "module://matplotlib_inline.backend_inline"
    cmd, _ = runner.lab_command(["--notebook-dir=/tmp/elsewhere"])
    assert cmd[1:] == ["lab", "--notebook-dir=/tmp/elsewhere"]  # one root folder, the caller's
