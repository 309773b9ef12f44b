"""The folder layout is the architecture (docs/architecture.md): every module imports only from its
own folder and the folders below it, modules never import each other in a circle, and
docs/architecture.md names every module and folder. Read from the code's own import statements
(every ``import`` / ``from ... import``, also inside functions)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ensemble

PACKAGE = Path(ensemble.__file__).parent
LAYERS = ("core", "inputs", "store", "speaker", "deploy", "members", "blending", "")
"""Folders from the bottom up; "" is the top: the workflows, the CLI and the API."""
BACK_UP = {("store.split", "speaker.speaker_groups")}
"""Imports allowed to run back up: the split loads the competition with its training speakers."""


def _modules() -> dict[str, Path]:
    """Dotted names under ``ensemble`` (``store.corpora.ravdess``; the package itself ``""``) -> file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ensemble modules that module ``name`` imports (relative and absolute, at any depth of the file)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module == "ensemble" or node.module.startswith("ensemble.")):
                target = node.module[len("ensemble") :].lstrip(".")
            else:
                continue
            for alias in node.names:  # from .x import y: y may be a module of x
                candidate = f"{target}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in known else target)
        elif isinstance(node, ast.Import):
            found |= {a.name[len("ensemble.") :] for a in node.names if a.name.startswith("ensemble.")}
    return {m for m in found if m in known and m != name}


def _layer(module: str) -> int:
    head = module.split(".")[0] if "." in module else ""
    return LAYERS.index(head if head in LAYERS else "")


def test_every_import_runs_down_the_layers_or_within_its_folder():
    modules = _modules()
    up = sorted(
        (name, target)
        for name, path in modules.items()
        for target in _imports(name, path, set(modules))
        if _layer(target) > _layer(name) and target != ""  # the package's API (``ensemble.__version__``) sits on top
    )
    assert set(up) <= BACK_UP, f"imports that run back up the layers {LAYERS}: {sorted(set(up) - BACK_UP)}"


def test_no_modules_import_each_other_in_a_circle():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) - {""} for name, path in modules.items()}
    state: dict[str, int] = {}
    circle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle.extend(trail[trail.index(nxt) :] + [node, nxt] if nxt in trail else [node, nxt])
                return True
            if nxt not in state and visit(nxt, [*trail, node]):
                return True
        state[node] = 2
        return False

    assert not any(visit(m, []) for m in sorted(graph) if m not in state), f"an import circle: {' -> '.join(circle)}"


def test_the_architecture_page_maps_every_folder_and_module():
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `([\w/]+)` \|", page, re.M))
    expected = set()
    for name, path in _modules().items():
        if path.name == "__init__.py" and name:  # a folder's face: its heading below
            continue
        head, _, rest = name.partition(".")
        expected.add(rest.replace(".", "/") if head in LAYERS and rest else name or "__init__")
    assert expected <= listed, f"modules missing from docs/architecture.md: {sorted(expected - listed)}"
    assert all(f"## `{layer}/`" in page for layer in LAYERS if layer)
