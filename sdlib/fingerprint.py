"""Code fingerprints: which source files made a cached artefact, hashed, so older code's artefacts are rebuilt.

DESIGN.md, correctness principle 8: a world, a model or a feature store built by older code is rebuilt, never
republished under a page that claims its numbers come from this build. A cache therefore records the fingerprint of
the code that made it and compares it with the fingerprint of the code running now.

The rule (derived automatically, so a new module or a new import is covered without anyone remembering to list it):

1. Start from a cache's entry modules and collect every ``sdlib`` module they import, transitively. Imports are read
   with :mod:`ast` from the whole file, function-local imports included (this codebase defers many), and
   ``if TYPE_CHECKING`` imports too: a spurious rebuild is cheaper than a missed one. Relative imports are resolved
   against the importing module's package; ``from pkg import name`` also takes ``pkg.name`` when that is a module.
2. Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py``, so those files are collected, and followed,
   as well.
3. A module named in the cache's ``exclude`` list (or inside an excluded package) is neither hashed nor followed.
   Only modules that cannot change the artefact are excluded, each with its reason (see :data:`SCOPES`).
4. The fingerprint is ``sha256`` over the lines ``"<path>\\t<sha256 of the file's bytes>\\n"`` of the collected
   files, sorted by path (relative to the source root, ``/``-separated): contents, never modification times, so a
   fresh clone of the same commit has the same fingerprint, and any edit (a comment too) changes it.

The granularity is the file: an edit anywhere in a covered file counts, even in a function the build never calls.

The caches and what they cover (``python -m sdlib.fingerprint`` lists the files):

- ``world`` (the simulated world's data sets, :func:`sdlib.world.dataset.build_world`): entry
  ``sdlib.world.dataset``, which reaches every module of ``sdlib/world/``, what it shares with the real data
  (``sdlib/base/``), the data layout (``sdlib/data/layout.py``, ``eventfile.py``, ``errors.py``) and the
  package-level modules ``sdlib/__init__.py``, ``core.py``, ``paths.py``, ``threads.py``. Excluded: the modules
  listed last.
- ``scale_models`` (the trained scale-model pair, :func:`sdlib.models.scale.train_pair`): entry
  ``sdlib.models.scale``, which reaches ``train``, ``tokenizer``, ``eventgpt``, ``eventgpt_runner``,
  ``videollava``, ``interface``, ``loading`` and ``sdlib/models/__init__.py``, the data layout it reads the clips
  with, ``sdlib/base/`` (the question set, the frame policy, the event format) and the same package-level modules.
  It cannot reach ``sdlib/world/``: ``models/`` and ``data/`` import nothing from it (a test checks), so a world
  edit retrains the models only through the data set, whose content hashes are in the pair's cache key. Excluded:
  ``sdlib.theory`` (speedup models, used only to read measured timings after training).
- ``pair_evaluation`` (stage 01's answers and agreement of a trained pair on the test split,
  :func:`sdlib.models.quality.cached_evaluation`): entries ``sdlib.models.quality`` and ``sdlib.decoding.ar``, with
  everything they reach (the model wrappers, the question set); nothing excluded but the modules below.
- ``features`` (stage 03's paired hidden states, :func:`sdlib.align.extract.extract_split`): entry
  ``sdlib.align.extract``, with the store, the model wrappers and the data layout it reaches. The store's config
  adds the pair's cache key and the split's content hash, so new weights or data also rebuild it.
- ``adapters`` (stage 04's trained adapters and heads, :func:`sdlib.align.train.train_adapter`): entry
  ``sdlib.align.train`` and ``sdlib.align.lora`` (the zoo's classes, L6, the store); the run folder's name also
  hashes the feature store it read.
- all exclude ``sdlib.plots``, ``sdlib.runner`` and ``sdlib.__main__`` (they draw figures and run notebooks) and
  this module (it only decides when to rebuild, and a change to its rule that collects other files changes the
  digests by itself): none of them computes an artefact.

Not covered: third-party packages (torch, transformers, numpy versions) and the Python version. After upgrading
them, force a full rebuild with ``make clean-all``.
"""
from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

#: The folder that holds the ``sdlib`` package of the running code.
SOURCE_ROOT = Path(__file__).resolve().parent.parent

#: Modules no cache depends on: they draw figures, run notebooks, or compute fingerprints.
NO_ARTEFACT = ("sdlib.plots", "sdlib.runner", "sdlib.__main__", "sdlib.fingerprint")

#: Each cache's entry modules and exclusions (the reasons are in the module docstring).
SCOPES: dict[str, dict[str, tuple[str, ...]]] = {
    "world": {"entries": ("sdlib.world.dataset",), "exclude": NO_ARTEFACT},
    "scale_models": {"entries": ("sdlib.models.scale",), "exclude": ("sdlib.theory", *NO_ARTEFACT)},
    "pair_evaluation": {"entries": ("sdlib.models.quality", "sdlib.decoding.ar"), "exclude": NO_ARTEFACT},
    "features": {"entries": ("sdlib.align.extract",), "exclude": NO_ARTEFACT},
    "adapters": {"entries": ("sdlib.align.train", "sdlib.align.lora"), "exclude": NO_ARTEFACT},
}


@dataclass(frozen=True)
class CodeFingerprint:
    """The hash of a set of source files, and each file's own hash (so a mismatch can say which files changed)."""

    digest: str  # sha256 hex over the sorted "<path>\t<sha256>\n" lines
    files: Mapping[str, str] = field(default_factory=dict)  # path relative to the source root -> sha256 of its bytes

    @property
    def short(self) -> str:
        return self.digest[:12]

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "files": dict(sorted(self.files.items()))}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CodeFingerprint":
        return cls(str(d["digest"]), dict(d.get("files", {})))

    def changes(self, older: "CodeFingerprint | Mapping[str, Any] | None") -> list[str]:
        """What differs from an ``older`` fingerprint: ``"<path> changed"``, ``"<path> added"``, ``"<path> removed"``
        (sorted by path); ``["no code fingerprint recorded"]`` when there is none; empty when the digests agree."""
        if older is None:
            return ["no code fingerprint recorded"]
        if not isinstance(older, CodeFingerprint):
            older = CodeFingerprint.from_json(older)
        if older.digest == self.digest:
            return []
        out = []
        for path in sorted(set(self.files) | set(older.files)):
            if path not in older.files:
                out.append(f"{path} added")
            elif path not in self.files:
                out.append(f"{path} removed")
            elif self.files[path] != older.files[path]:
                out.append(f"{path} changed")
        return out or [f"digest {older.digest[:12]} differs"]


def module_file(module: str, root: Path) -> Path | None:
    """The source file of a dotted module name under ``root`` (``a/b.py`` or ``a/b/__init__.py``), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(module: str, path: Path) -> set[str]:
    """Dotted names that the source of ``module`` (file ``path``) imports anywhere in the file, relative imports
    resolved; for ``from x import name`` both ``x`` and ``x.name`` (the caller keeps the ones that are modules)."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level > len(parts):
                    raise ValueError(f"{path}: relative import beyond the top-level package (line {node.lineno})")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = ".".join(p for p in (base, node.module) if p)
            else:
                target = node.module or ""
            if target:
                out.add(target)
            out.update(f"{target}.{alias.name}" if target else alias.name for alias in node.names if alias.name != "*")
    return out


def _excluded(module: str, exclude: Iterable[str]) -> bool:
    return any(module == e or module.startswith(e + ".") for e in exclude)


def _with_parents(module: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b", "a.b.c"]``: importing a module runs every package ``__init__`` on its path."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def module_closure(entries: Sequence[str], root: str | Path | None = None,
                   exclude: Sequence[str] = ()) -> dict[str, Path]:
    """``{module: file}`` of every module under ``root`` that the ``entries`` import, transitively (the rule in the
    module docstring). Only modules of the entries' top-level packages are followed; an entry that is not a file
    under ``root`` raises ``ValueError``."""
    root = Path(root) if root is not None else SOURCE_ROOT
    tops = {e.split(".")[0] for e in entries}
    for e in entries:
        if module_file(e, root) is None:
            raise ValueError(f"entry module {e!r}: no {e.replace('.', '/')}.py or package under {root}")
    found: dict[str, Path] = {}
    todo = [m for e in entries for m in _with_parents(e)]
    while todo:
        module = todo.pop()
        if module in found or module.split(".")[0] not in tops or _excluded(module, exclude):
            continue
        path = module_file(module, root)
        if path is None:  # `from pkg import name` where name is not a module, or a module that does not exist
            continue
        found[module] = path
        for name in imported_modules(module, path):
            todo.extend(m for m in _with_parents(name) if m not in found)
    return dict(sorted(found.items()))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_fingerprint(entries: Sequence[str], root: str | Path | None = None,
                     exclude: Sequence[str] = ()) -> CodeFingerprint:
    """The fingerprint of the source files :func:`module_closure` collects (contents, not mtimes, sorted paths)."""
    root = Path(root) if root is not None else SOURCE_ROOT
    files = {path.relative_to(root).as_posix(): file_sha256(path)
             for path in module_closure(entries, root, exclude).values()}
    lines = "".join(f"{rel}\t{sha}\n" for rel, sha in sorted(files.items()))
    return CodeFingerprint(hashlib.sha256(lines.encode()).hexdigest(), dict(sorted(files.items())))


def scope_fingerprint(scope: str, root: str | Path | None = None) -> CodeFingerprint:
    """The fingerprint of one of the :data:`SCOPES` (``"world"``, ``"scale_models"``, ``"pair_evaluation"``,
    ``"features"``, ``"adapters"``)."""
    if scope not in SCOPES:
        raise ValueError(f"code scope {scope!r}: expected one of {sorted(SCOPES)}")
    return code_fingerprint(SCOPES[scope]["entries"], root, SCOPES[scope]["exclude"])


def world_fingerprint(root: str | Path | None = None) -> CodeFingerprint:
    """The code that builds the simulated world's data sets (recorded in each split's manifest)."""
    return scope_fingerprint("world", root)


def scale_models_fingerprint(root: str | Path | None = None) -> CodeFingerprint:
    """The code that trains the scale-model pair (part of the pair's cache key)."""
    return scope_fingerprint("scale_models", root)


def pair_evaluation_fingerprint(root: str | Path | None = None) -> CodeFingerprint:
    """The code that evaluates a trained pair on the test split (part of the stored evaluation's name)."""
    return scope_fingerprint("pair_evaluation", root)


if __name__ == "__main__":  # python -m sdlib.fingerprint: each cache's fingerprint and files
    for name in SCOPES:
        fp = scope_fingerprint(name)
        print(f"{name}: {fp.short} ({len(fp.files)} files)")
        for rel in fp.files:
            print(f"  {rel}")
