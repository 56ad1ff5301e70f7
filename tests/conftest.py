"""Shared set-up: tests (and the notebook kernels they start) write artefacts under a temporary data folder,
never into the book's data/."""
import os
import tempfile

import pytest

os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("SDLIB_HEADLESS", "1")


def pytest_configure(config):
    # nbval's kernels inherit this; individual tests override it with the `data_dir` fixture
    if not os.environ.get("SDLIB_DATA_DIR"):
        os.environ["SDLIB_DATA_DIR"] = tempfile.mkdtemp(prefix="sdlib-test-data-")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("SDLIB_DATA_DIR", str(d))
    return d
