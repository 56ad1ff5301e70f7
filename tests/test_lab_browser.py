"""The theory chapter's explorer works where it is meant to: in JupyterLab, started as `make lab` starts it.

Headless Chromium opens a copy of notebooks/07_theory.ipynb, runs every cell, moves the α slider with the keyboard
and checks that the explorer redraws its figure. The copy keeps JupyterLab's autosave and checkpoints away from the
source notebook; the server's kernels write into a temporary data folder.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sdlib import paths, runner

from fixtures_browser import headless_chrome

pytestmark = pytest.mark.slow

SERVER_START_S = 90  # JupyterLab answering /api/status
NOTEBOOK_RUN_S = 300  # every cell of the smoke-sized notebook, on a busy 2-core machine
REDRAW_S = 60  # one slider step: the kernel redraws two small panels


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base, token, path, method="GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab as `make lab` runs it (`python -m sdlib lab LAB_ARGS`), on a free port, rooted in a temp folder."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    root.mkdir()
    shutil.copy(paths.NOTEBOOKS / "07_theory.ipynb", root / "07_theory.ipynb")
    port, token = _free_port(), "sdlib-lab-test"
    env = {k: v for k, v in os.environ.items() if k not in ("SDLIB_HEADLESS", "CI")}  # a live frontend's kernels
    env.update(SDLIB_DATA_DIR=str(tmp / "data"), JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTER_DATA_DIR=str(tmp / "share"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               IPYTHONDIR=str(tmp / "ipython"))
    lab_args = ["--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}", f"--notebook-dir={root}",
                f"--LabApp.workspaces_dir={tmp / 'workspaces'}", f"--LabApp.user_settings_dir={tmp / 'settings'}",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.expose_app_in_browser=True"]  # window.jupyterapp: run all cells through its commands
    if os.geteuid() == 0:
        lab_args.append("--allow-root")
    # the same command line as `make lab LAB_ARGS="..."`
    assert runner.lab_command(lab_args)[0][1:] == ["lab", *lab_args]
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "sdlib", "lab", *lab_args], cwd=paths.ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n"
                                + (tmp / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield {"base": base, "token": token, "root": root, "data": tmp / "data", "log": tmp / "server.log"}
    finally:
        try:  # stop the kernels through the server, then the server
            for kernel in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
        except OSError:
            pass
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    driver = headless_chrome(tmp_path_factory.mktemp("chromium-lab-profile"), window="1400,1000")
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, seconds, what, script, *args):
    """Poll a script until it returns something truthy; fail naming ``what`` after ``seconds``."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.5, ignored_exceptions=(WebDriverException,)).until(
            lambda d: d.execute_script(script, *args))
    except Exception as err:  # noqa: BLE001 - a timeout or a dead page: say which wait it was
        shots = paths.ROOT / "_build" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shots / "lab_failure.png"))
        pytest.fail(f"timed out after {seconds} s waiting for {what} ({type(err).__name__}); "
                    f"screenshot in {shots / 'lab_failure.png'}")


NOTEBOOK = "const w = window.jupyterapp && jupyterapp.shell.currentWidget; const ctx = w && w.sessionContext;"
KERNEL_IDLE = NOTEBOOK + "return !!(ctx && ctx.isReady && ctx.session && ctx.kernelDisplayStatus === 'idle');"
# run-all queues every cell; the last code cell getting its execution count means all of them ran
ALL_CELLS_RAN = NOTEBOOK + (
    "const code = w ? w.content.widgets.filter(c => c.model.type === 'code') : [];"
    "return code.length > 0 && code[code.length - 1].model.executionCount !== null"
    " && ctx.kernelDisplayStatus === 'idle';")
FIGURE = "const img = document.querySelector('.widget-interact img');"
EXPLORER_IMAGE = FIGURE + "return img && img.complete && img.naturalWidth > 0 ? img.src : null;"
REDRAWN = FIGURE + "return !!(img && img.complete && img.naturalWidth > 0 && img.src !== arguments[0]);"


def test_explorer_redraws_when_a_slider_moves(lab, chrome):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    chrome.get(f"{lab['base']}/lab/tree/07_theory.ipynb?token={lab['token']}&reset")
    _wait(chrome, 120, "JupyterLab to open the notebook",
          "return !!(window.jupyterapp && document.querySelector('.jp-NotebookPanel .jp-Cell'));")
    _wait(chrome, 120, "the notebook's kernel to be ready", KERNEL_IDLE)
    chrome.execute_script("jupyterapp.commands.execute('notebook:run-all-cells');")
    _wait(chrome, NOTEBOOK_RUN_S, "the explorer's figure", EXPLORER_IMAGE)
    _wait(chrome, NOTEBOOK_RUN_S, "every cell to run", ALL_CELLS_RAN)
    first = chrome.execute_script(EXPLORER_IMAGE)
    assert first.startswith("data:image/png")
    assert (lab["data"] / "interim" / "metrics" / "07_theory.json").is_file()  # the kernel wrote to the temp data
    assert "explorer not built" not in chrome.execute_script("return document.body.innerText;")  # not headless

    labels = chrome.execute_script(
        "return Array.from(document.querySelectorAll('.widget-interact .widget-slider .widget-label'))"
        ".map(l => l.textContent);")
    assert labels == ["α", "γ", "c", "P_v ms", "d_v ms", "tokens"]
    alpha = chrome.find_elements(By.CSS_SELECTOR, ".widget-interact .widget-slider")[0]
    handle = alpha.find_element(By.CSS_SELECTOR, ".noUi-handle")
    readout = alpha.find_element(By.CSS_SELECTOR, ".widget-readout")
    assert handle.get_attribute("aria-valuenow") == "0.6" and readout.text == "0.60"
    chrome.execute_script("arguments[0].scrollIntoView({block: 'center'});", handle)
    for _ in range(10):  # one step (0.01) per key press
        handle.send_keys(Keys.ARROW_RIGHT)
    _wait(chrome, 30, "the α readout to reach 0.70", "return arguments[0].textContent.trim() === '0.70';", readout)
    _wait(chrome, REDRAW_S, "the explorer to redraw its figure", REDRAWN, first)
    _wait(chrome, REDRAW_S, "the kernel to go idle after the redraw", KERNEL_IDLE)
    last = chrome.execute_script(EXPLORER_IMAGE)
    assert last and last != first and last.startswith("data:image/png")
    shots = paths.ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    chrome.save_screenshot(str(shots / "lab_explorer.png"))
