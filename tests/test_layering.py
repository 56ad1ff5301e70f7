"""The package layering of DESIGN.md, checked on every module's imports (function-local ones included):
the real-data path (``data/``, ``models/``) imports nothing from the simulator (``world/``); what both need lives
below both (``base/``), which imports from neither; ``align/`` never imports ``decoding/``; and no module imports
another package's private (``_name``) objects."""
import ast
from pathlib import Path

import pytest

from sdlib.fingerprint import SOURCE_ROOT

MODULES = sorted((SOURCE_ROOT / "sdlib").rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, str]]:
    """(imported module, imported name or '') of every import statement of a module, relative ones resolved."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out += [(base, a.name) for a in node.names]
    return out


def package_of(name: str) -> str:
    """``sdlib.<package>`` of a module name (``sdlib`` itself for top-level modules)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (len(parts) == 2 and (SOURCE_ROOT / "sdlib" / parts[1]).is_dir()) \
        else "sdlib"


def offending(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in MODULES:
        me = module_name(path)
        if not me.startswith(packages):
            continue
        for mod, name in imports(path):
            target = f"{mod}.{name}" if name else mod
            if any(target == f or target.startswith(f + ".") or mod == f or mod.startswith(f + ".") for f in forbidden):
                bad.append(f"{me} imports {target}")
    return bad


def test_the_scan_sees_the_packages():
    names = {module_name(p) for p in MODULES}
    assert {"sdlib.data.dsec", "sdlib.models.videollava", "sdlib.world.dataset", "sdlib.base.represent",
            "sdlib.align.heads", "sdlib.decoding.placement"} <= names
    # the scan finds a known import of each kind it checks for
    assert ("sdlib.base.event_dtype", "EVENT_DTYPE") in imports(SOURCE_ROOT / "sdlib/data/eventfile.py")
    assert ("sdlib.base.represent", "event_image") in imports(SOURCE_ROOT / "sdlib/world/__init__.py")


@pytest.mark.parametrize("packages,forbidden", [
    (("sdlib.data", "sdlib.models"), ("sdlib.world",)),  # the real-data path does not need the simulator
    (("sdlib.base",), ("sdlib.world", "sdlib.data", "sdlib.models", "sdlib.decoding", "sdlib.align")),
    (("sdlib.align",), ("sdlib.decoding",)),
])
def test_imports_point_one_way(packages, forbidden):
    assert offending(packages, forbidden) == []


def test_no_module_imports_another_packages_private_names():
    bad = []
    for path in MODULES:
        me = module_name(path)
        for mod, name in imports(path):
            if not mod.startswith("sdlib"):
                continue
            private = name.startswith("_") and not name.startswith("__")
            if private and package_of(mod) != package_of(me):
                bad.append(f"{me} imports {mod}.{name}")
    assert bad == []
