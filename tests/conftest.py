"""Shared fixtures: every test writes its artefacts under a temporary SDLIB_DATA_DIR, never into data/."""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "agg")
os.environ.setdefault("SDLIB_HEADLESS", "1")


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    monkeypatch.setenv("SDLIB_DATA_DIR", str(d))
    return d
