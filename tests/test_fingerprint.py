"""Code fingerprints (DESIGN.md, principle 8): which files each cache covers, that an edit to the world's code
rebuilds the world but not the models' key, that an edit to the models' code changes the models' key but not the
world, and that the world builder and the pair cache act on them."""
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from sdlib import fingerprint as fpm
from sdlib.world import dataset
from sdlib.data.layout import read_manifest
from sdlib.fingerprint import (SOURCE_ROOT, CodeFingerprint, code_fingerprint, imported_modules, module_closure,
                               module_file, pair_evaluation_fingerprint, scale_models_fingerprint,
                               world_fingerprint)
from sdlib.models import scale
from sdlib.models.train import TrainConfig


def _copy_tree(dest: Path) -> Path:
    """A copy of the running sdlib source tree under ``dest`` (the source root of the copy)."""
    shutil.copytree(SOURCE_ROOT / "sdlib", dest / "sdlib", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _append(path: Path, text: str = "\n# an edit\n") -> None:
    path.write_text(path.read_text() + text)


@pytest.fixture
def tree(tmp_path) -> Path:
    return _copy_tree(tmp_path / "src")


# ---- the rule, on a synthetic package ------------------------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))


def test_closure_follows_local_relative_and_package_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "from .base import VALUE\n",
        "pkg/base.py": "VALUE = 1\n",
        "pkg/entry.py": """
            import json

            def run():
                from .sub import deep  # function-local, relative
                import pkg.other as o  # absolute, aliased
                from pkg import plain  # `from package import module`
                return deep, o, plain, json
            """,
        "pkg/sub/__init__.py": "",
        "pkg/sub/deep.py": "from ..leaf import X\n",  # two levels up
        "pkg/leaf.py": "X = 2\n",
        "pkg/other.py": "",
        "pkg/plain.py": "",
        "pkg/unused.py": "",
        "other_top/mod.py": "",
    })
    found = module_closure(["pkg.entry"], tmp_path)
    assert set(found) == {"pkg", "pkg.base", "pkg.entry", "pkg.sub", "pkg.sub.deep", "pkg.leaf", "pkg.other",
                          "pkg.plain"}
    assert found["pkg.sub"] == tmp_path / "pkg/sub/__init__.py"
    # an excluded package is neither collected nor followed: pkg.leaf is reachable only through it
    assert set(module_closure(["pkg.entry"], tmp_path, exclude=["pkg.sub"])) == {
        "pkg", "pkg.base", "pkg.entry", "pkg.other", "pkg.plain"}
    with pytest.raises(ValueError, match="entry module 'pkg.missing'"):
        module_closure(["pkg.missing"], tmp_path)


def test_fingerprint_hashes_contents_in_a_stable_order(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from . import b\n", "pkg/b.py": "B = 1\n"})
    first = code_fingerprint(["pkg.a"], tmp_path)
    assert list(first.files) == ["pkg/__init__.py", "pkg/a.py", "pkg/b.py"]
    assert first.files["pkg/b.py"] == fpm.file_sha256(tmp_path / "pkg/b.py")
    (tmp_path / "pkg/b.py").touch()  # a new mtime, the same bytes
    assert code_fingerprint(["pkg.a"], tmp_path) == first
    moved = shutil.copytree(tmp_path / "pkg", tmp_path / "elsewhere" / "pkg")
    assert code_fingerprint(["pkg.a"], moved.parent).digest == first.digest  # paths are relative to the root
    _append(tmp_path / "pkg/b.py")
    second = code_fingerprint(["pkg.a"], tmp_path)
    assert second.digest != first.digest
    assert second.changes(first) == ["pkg/b.py changed"]
    assert second.changes(first.to_json()) == ["pkg/b.py changed"]
    assert second.changes(second) == []
    assert second.changes(None) == ["no code fingerprint recorded"]
    smaller = CodeFingerprint("0" * 64, {"pkg/a.py": second.files["pkg/a.py"], "pkg/c.py": "f" * 64})
    assert second.changes(smaller) == ["pkg/__init__.py added", "pkg/b.py added", "pkg/c.py removed"]


def test_imported_modules_resolves_relative_imports_against_the_package(tmp_path):
    _write(tmp_path, {"a/__init__.py": "from .x import y\n", "a/m.py": "from . import z\nfrom ..top import t\n"})
    assert imported_modules("a", tmp_path / "a/__init__.py") == {"a.x", "a.x.y"}
    with pytest.raises(ValueError, match="beyond the top-level package"):
        imported_modules("a.m", tmp_path / "a/m.py")


# ---- the two caches of this codebase -------------------------------------------------------------------------------
def test_world_scope_covers_the_world_and_the_data_layout_but_not_the_models():
    files = set(world_fingerprint().files)
    world_modules = {p.relative_to(SOURCE_ROOT).as_posix() for p in (SOURCE_ROOT / "sdlib/world").glob("*.py")
                     if p.stem in {"__init__", "clip", "events", "facts", "qa", "render", "dataset", "scene"}}
    assert len(world_modules) == 8 and world_modules <= files
    assert {"sdlib/world/dataset.py", "sdlib/data/layout.py", "sdlib/data/eventfile.py", "sdlib/__init__.py",
            "sdlib/base/represent.py", "sdlib/base/questions.py", "sdlib/base/event_dtype.py"} <= files
    assert not {f for f in files if f.startswith("sdlib/models/")}
    assert not {"sdlib/data/dsec.py", "sdlib/plots.py", "sdlib/runner.py", "sdlib/fingerprint.py"} & files


def test_models_scope_covers_training_but_not_the_world():
    files = set(scale_models_fingerprint().files)
    assert {f"sdlib/models/{m}.py" for m in ("__init__", "scale", "train", "tokenizer", "eventgpt", "eventgpt_runner",
                                              "videollava", "interface")} <= files
    assert "sdlib/data/layout.py" in files  # the clips are read through it
    assert not {f for f in files if f.startswith("sdlib/world/")}
    assert not {"sdlib/theory.py", "sdlib/plots.py", "sdlib/runner.py", "sdlib/world/dataset.py",
                "sdlib/fingerprint.py"} & files
    # scoring and decoding code does not retrain the models: training reads its fact labels from fact_words
    assert "sdlib/models/fact_words.py" in files
    assert not {"sdlib/models/quality.py", "sdlib/decoding/ar.py"} & files


def test_evaluation_scope_covers_scoring_decoding_and_the_models():
    files = set(pair_evaluation_fingerprint().files)
    assert {"sdlib/models/quality.py", "sdlib/decoding/ar.py", "sdlib/decoding/processors.py",
            "sdlib/models/interface.py", "sdlib/models/scale.py"} <= files
    assert not {"sdlib/plots.py", "sdlib/runner.py", "sdlib/fingerprint.py"} & files


def test_the_models_scope_reaches_nothing_of_the_world():
    """DESIGN.md: models/ and data/ import nothing from world/ (tests/test_hygiene.py checks every module), so the
    models' cache key needs no exclusion for it: a world edit reaches the models only through the data's hashes."""
    assert not any(e.startswith("sdlib.world") for e in fpm.SCOPES["scale_models"]["exclude"])
    closure = module_closure(fpm.SCOPES["scale_models"]["entries"], exclude=fpm.SCOPES["scale_models"]["exclude"])
    assert closure and not [m for m in closure if m.startswith("sdlib.world")]


def test_a_copied_tree_has_the_same_fingerprints(tree):
    assert world_fingerprint(tree) == world_fingerprint()
    assert scale_models_fingerprint(tree) == scale_models_fingerprint()


def test_a_world_edit_changes_the_world_fingerprint_only(tree):
    world, models = world_fingerprint(tree), scale_models_fingerprint(tree)
    _append(tree / "sdlib/world/render.py")
    assert world_fingerprint(tree).changes(world) == ["sdlib/world/render.py changed"]
    assert scale_models_fingerprint(tree) == models


def test_a_model_edit_changes_the_models_fingerprint_only(tree):
    world, models = world_fingerprint(tree), scale_models_fingerprint(tree)
    _append(tree / "sdlib/models/train.py")
    assert scale_models_fingerprint(tree).changes(models) == ["sdlib/models/train.py changed"]
    assert world_fingerprint(tree) == world


def test_a_new_world_module_is_covered_once_imported(tree):
    before = world_fingerprint(tree)
    (tree / "sdlib/world/weather.py").write_text("RAIN = 0.0\n")
    assert world_fingerprint(tree) == before  # nothing imports it yet
    _append(tree / "sdlib/world/scene.py", "\nfrom .weather import RAIN\n")
    assert world_fingerprint(tree).changes(before) == ["sdlib/world/scene.py changed", "sdlib/world/weather.py added"]


# ---- the world builder ---------------------------------------------------------------------------------------------
SPEC = dataset.WorldSpec(name="t", n_scenes=3, seed=3)  # 2 train clips, 1 val clip, an empty test split


def _build(root, messages=None):
    return dataset.build_world(SPEC, root=root, progress=False,
                             log=(messages.append if messages is not None else lambda *_: None))


@pytest.fixture
def code_in(tree, monkeypatch):
    """Builds see the world code of the copied tree (so the test can edit it)."""
    monkeypatch.setattr(dataset, "world_fingerprint", lambda: world_fingerprint(tree))
    return tree


def test_world_is_rebuilt_when_its_code_changes(code_in, tmp_path):
    root = tmp_path / "t"
    first = _build(root)
    assert first.clips_built == SPEC.n_scenes
    digest = world_fingerprint(code_in).digest
    for split in dataset.SPLITS:
        assert read_manifest(root / split)["code"]["digest"] == digest
        assert dataset.recorded_code(root / split)["digest"] == digest

    messages = []
    again = _build(root, messages)
    assert again.already_built and again.clips_built == 0 and "already built" in messages[-1]

    _append(code_in / "sdlib/models/train.py")  # model code: the world stays
    assert _build(root).already_built

    _append(code_in / "sdlib/world/render.py")  # world code: every split is rebuilt, saying why
    messages = []
    rebuilt = _build(root, messages)
    assert not rebuilt.already_built and rebuilt.clips_built == SPEC.n_scenes
    why = [m for m in messages if m.startswith("code changed since")]
    assert len(why) == len(dataset.SPLITS) and all("sdlib/world/render.py changed" in m for m in why)
    new_digest = world_fingerprint(code_in).digest
    assert new_digest != digest
    for split in dataset.SPLITS:
        m = read_manifest(root / split)
        assert m["code"]["digest"] == new_digest and dataset.recorded_code(root / split)["digest"] == new_digest
        # a comment changes no data: the content hashes, and so the models' cache key, stay
        assert m["content_hash"] == first.manifests[split]["content_hash"]
    assert _build(root).already_built


def test_a_split_without_a_recorded_fingerprint_is_rebuilt(code_in, tmp_path):
    root = tmp_path / "t"
    _build(root)
    (root / "val" / dataset.CODE_JSON).unlink()  # as built before fingerprints were recorded
    messages = []
    report = _build(root, messages)
    assert report.clips_built == len(report.manifests["val"]["finished"]) == 1
    assert any("no code fingerprint recorded" in m and "val" in m for m in messages)


def _killed_build(root, monkeypatch) -> None:
    """A build interrupted while making its third clip (two clips finished, no manifest)."""
    real_clip_data, calls = dataset.world_clip_data, []

    def dies_on_the_third_clip(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_clip_data(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(dataset, "world_clip_data", dies_on_the_third_clip)
        with pytest.raises(KeyboardInterrupt):
            _build(root)
    assert len(list(root.glob("*/_clips/**/*.done.json"))) == 2
    assert not list(root.glob("*/manifest.json"))


def test_a_killed_build_is_resumed_only_by_the_same_code(code_in, tmp_path, monkeypatch):
    root = tmp_path / "t"
    _killed_build(root, monkeypatch)

    _append(code_in / "sdlib/world/qa.py")  # other code: the two finished clips are not reused
    messages = []
    report = _build(root, messages)
    assert report.clips_built == SPEC.n_scenes
    assert any("sdlib/world/qa.py changed" in m for m in messages)


def test_a_killed_build_resumes_under_the_same_code(code_in, tmp_path, monkeypatch):
    root = tmp_path / "t"
    _killed_build(root, monkeypatch)
    messages = []
    report = _build(root, messages)
    assert report.clips_built == 1 and not any(m.startswith("code changed") for m in messages)


# ---- the scale-model pair cache ------------------------------------------------------------------------------------
def test_pair_cache_key_follows_the_models_code_only(tree):
    cfg, sizes, hashes = TrainConfig(), scale.ScaleSizes(), {"train": "a", "val": "b", "test": "c"}
    here = scale.pair_cache_key(sizes, cfg, 4, 2, hashes, code=scale_models_fingerprint(tree))
    assert here == scale.pair_cache_key(sizes, cfg, 4, 2, hashes)  # the default is the running code's fingerprint
    _append(tree / "sdlib/world/render.py")
    assert scale.pair_cache_key(sizes, cfg, 4, 2, hashes, code=scale_models_fingerprint(tree)) == here
    _append(tree / "sdlib/models/eventgpt.py")
    assert scale.pair_cache_key(sizes, cfg, 4, 2, hashes, code=scale_models_fingerprint(tree)) != here
    assert scale.pair_cache_key(sizes, cfg, 4, 2, {**hashes, "val": "B"}) != here  # the data still counts


def test_train_pair_reuses_only_a_pair_trained_by_this_code(tree, tmp_path, monkeypatch):
    """No training: two finished pairs are planted, one under the key of the running code, one under the key of
    edited model code; train_pair must pick the one its code fingerprint names."""
    data = tmp_path / "data"
    for split, h in (("train", "h1"), ("val", "h2"), ("test", "h3")):
        (data / split).mkdir(parents=True)
        (data / split / "manifest.json").write_text(json.dumps({"content_hash": h}))
    hashes = {"train": "h1", "val": "h2", "test": "h3"}
    cfg, sizes, models = TrainConfig(epochs=1), scale.ScaleSizes(), tmp_path / "models"
    _append(tree / "sdlib/models/train.py")
    edited = scale_models_fingerprint(tree)
    for name, code in (("running", None), ("edited", edited)):
        pair = models / f"scale-{scale.pair_cache_key(sizes, cfg, None, None, hashes, code=code)}"
        pair.mkdir(parents=True)
        (pair / "pair.json").write_text(json.dumps({"made_by": name}))
        (pair / "DONE").write_text("")
    kw = dict(parallel=False, progress=False, log=lambda *_: None)
    assert scale.train_pair(data, sizes, cfg, models, **kw)["made_by"] == "running"
    monkeypatch.setattr(scale, "scale_models_fingerprint", lambda: edited)
    assert scale.train_pair(data, sizes, cfg, models, **kw)["made_by"] == "edited"
