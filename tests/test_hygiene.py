"""Notebook sources are clean and parameterised (the published pages are checked on the smoke book in test_book)."""
import json

import pytest

from sdlib import paths, runner

SOURCES = sorted(paths.NOTEBOOKS.glob("*.ipynb"))
TYPED = {"int", "float", "str", "bool", "list", "dict"}


def test_there_are_stage_notebooks():
    assert SOURCES, "no notebooks in notebooks/"


@pytest.mark.parametrize("nb_path", SOURCES, ids=lambda p: p.stem)
def test_source_has_no_outputs_and_one_parameters_cell(nb_path):
    nb = json.loads(nb_path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") for c in code), f"{nb_path.name} has outputs: strip them"
    assert all(c.get("execution_count") is None for c in code), f"{nb_path.name} has execution counts"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb_path.name}: {len(tagged)} cells tagged 'parameters' (need exactly 1)"


@pytest.mark.parametrize("nb_path", SOURCES, ids=lambda p: p.stem)
def test_every_parameter_is_typed_and_profiles_only_name_known_ones(nb_path):
    declared = runner.notebook_parameters(nb_path)
    untyped = [n for n, p in declared.items() if p.type_name not in TYPED]
    assert not untyped, f"{nb_path.name}: parameters without a type annotation: {untyped}"
    for profile in runner.PROFILES:
        pf = runner.params_file(nb_path.stem, profile)
        if pf.exists():
            runner.resolve_parameters(nb_path.stem, profile)  # raises on unknown names or wrong types


def test_every_toc_stage_has_a_source_notebook_and_profiles():
    for stage in runner.toc_stages():
        assert (paths.NOTEBOOKS / f"{stage}.ipynb").is_file(), stage
        assert runner.params_file(stage, "default").is_file(), f"{stage} has no default profile"


@pytest.mark.parametrize("nb_path", SOURCES, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter_line(nb_path):
    # papermill silently drops a line it cannot parse (e.g. a comment containing '='): count the assignments
    nb = json.loads(nb_path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"]).splitlines()
    assigned = [line.split(":")[0].split("=")[0].strip() for line in source
                if line.strip() and not line.lstrip().startswith("#")]
    assert sorted(assigned) == sorted(runner.notebook_parameters(nb_path)), nb_path.name
