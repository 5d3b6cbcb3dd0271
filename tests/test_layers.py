"""The layout is the architecture: stages import one way, nothing imports in a circle, and an import
inside a function is only ever there to keep a heavy library (torch, scikit-learn, Ray, ...) off a
light command's start-up, never to get around a cycle.

    cli > api, info > serve > trainers > classifiers > featurizer > store > core (alexfeat/*.py)
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Folder -> import package (pyproject's package-dir), and the stages from the bottom up.
FOLDERS = {"alexfeat": "alexfeat", "store": "alexfeat.store", "featurizer": "alexfeat.featurizer",
           "classifiers": "alexfeat.classifiers", "trainers": "alexfeat.trainers", "serve": "alexfeat.serve",
           "cli": "alexfeat.cli"}
# The public facade beside the CLI: the Python API and ``info``, which reads every stage's files.
FACADE = ("alexfeat.api", "alexfeat.info")
STAGES = ("core", "store", "featurizer", "classifiers", "trainers", "serve", "api", "cli")
# Third-party modules that cost a light command start-up time and memory: the only reason to import
# anything inside a function.
HEAVY = {"torch", "torchvision", "timm", "sklearn", "joblib", "ray", "fastapi", "starlette", "uvicorn",
         "prometheus_client", "matplotlib", "h5py", "pyarrow", "webdataset", "PIL"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def stage(module: str) -> str:
    name = module.split(".")
    if len(name) == 1 or name[1] not in ("store", "featurizer", "classifiers", "trainers", "serve", "cli"):
        return "cli" if module == "alexfeat.__main__" else "api" if module in FACADE else "core"
    return name[1]


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(module imported, inside a function?, line) for every import of ``path``, TYPE_CHECKING blocks aside."""
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.extend((f"{child.module}.{a.name}", in_function, child.lineno) for a in child.names)
                found.append((child.module, in_function, child.lineno))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    visit(ast.parse(path.read_text()), False)
    return found


def internal_edges() -> dict[str, list[tuple[str, bool, int]]]:
    """Each module's imports of other alexfeat modules (a `from m import name` counts m, and m.name where
    that is a module)."""
    known = modules()
    edges = {}
    for module, path in known.items():
        targets = {}
        for name, lazy, line in imports(path):
            if name in known and name != module:
                if name not in targets or targets[name][0]:  # a top-level import wins over a lazy one
                    targets[name] = (lazy, line)
        edges[module] = [(t, lazy, line) for t, (lazy, line) in targets.items()]
    return edges


@cache
def heavy(module: str) -> bool:
    """Whether importing ``module`` imports a heavy library (at its top level, or through another module's)."""
    path = modules()[module]
    for name, lazy, _ in imports(path):
        if lazy:
            continue
        if name.split(".")[0] in HEAVY:
            return True
        if name in modules() and name != module and not _is_package_of(name, module) and heavy(name):
            return True
    return False


def _is_package_of(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_stages_import_only_downwards():
    wrong = [f"{m} ({stage(m)}) imports {t} ({stage(t)}) at line {line}"
             for m, targets in internal_edges().items() for t, _, line in targets
             if STAGES.index(stage(t)) > STAGES.index(stage(m)) and not _is_package_of(t, m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_not_even_inside_functions():
    edges = {m: [t for t, _, _ in ts if not _is_package_of(t, m)] for m, ts in internal_edges().items()}
    cycles, state = [], {}

    def walk(m: str, trail: list[str]) -> None:
        state[m] = "open"
        for t in edges.get(m, []):
            if state.get(t) == "open":
                cycles.append(" -> ".join(trail[trail.index(t):] + [t]))
            elif t not in state:
                walk(t, trail + [t])
        state[m] = "done"

    sys.setrecursionlimit(10_000)
    for m in sorted(edges):
        if m not in state:
            walk(m, [m])
    assert not cycles, "\n".join(cycles)


def test_imports_inside_functions_are_for_heavy_libraries_only():
    light = [f"{m} imports {t} inside a function (line {line}), but {t} is light: import it at the top"
             for m, targets in internal_edges().items() for t, lazy, line in targets if lazy and not heavy(t)]
    assert not light, "\n".join(light)


def test_the_checks_see_a_lazy_import_cycle(tmp_path):
    """The rules above fail on what they are for (an AST check that saw nothing would pass anything)."""
    a = tmp_path / "a.py"
    a.write_text("import os\n\ndef f():\n    from alexfeat.store.reader import FeatureStore\n")
    assert ("alexfeat.store.reader", True, 4) in imports(a)
    assert heavy("alexfeat.store.reader") and not heavy("alexfeat.errors")
    assert stage("alexfeat.store.reader") == "store" and stage("alexfeat.lock") == "core"
    assert stage("alexfeat.api") == "api" and stage("alexfeat.cli.app") == "cli"
