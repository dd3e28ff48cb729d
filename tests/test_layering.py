"""The layering contract: imports flow one way through the package's rooms.

data -> entities -> knowledge -> actions -> model -> train -> query -> report -> facade
(``bw.WorldModel`` / ``bw.Ensemble``) -> eval -> CLI / demo / torchrun entry point.

A module may import modules of its own layer or a lower one, never a higher one. Every import
statement counts (module level, inside functions, under ``TYPE_CHECKING``), and so do the lazy
exports of package ``__init__`` files, except the compatibility aliases listed in
``COMPAT_ALIASES``. Code under ``if __name__ == "__main__":`` runs only as a program and is not
part of the import graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bioworld"

#: Lowest first. A module belongs to the first entry that is its name or a parent package of it.
LAYERS: list[tuple[str, ...]] = [
    ("bioworld.errors", "bioworld._lazy", "bioworld._version", "bioworld._atomic"),
    ("bioworld.data",),
    ("bioworld.entities",),
    ("bioworld.knowledge",),
    ("bioworld.actions",),
    ("bioworld.model",),
    ("bioworld.train",),
    ("bioworld.query",),
    ("bioworld.report",),
    ("bioworld._checkpoint_schema", "bioworld._world_model", "bioworld._ensemble"),
    ("bioworld.eval",),
    ("bioworld.cli", "bioworld._demo", "bioworld.distributed", "bioworld.__main__", "bioworld"),
]

#: Names a lower package re-exports from a higher one so that old code keeps working
#: (``bw.data.leave_targets_out`` moved to ``bw.actions`` because splitting needs the action grammar).
COMPAT_ALIASES: dict[tuple[str, str], str] = {
    ("bioworld.data", "Split"): "bioworld.actions._splits",
    ("bioworld.data", "leave_targets_out"): "bioworld.actions._splits",
    ("bioworld.data", "unseen_combinations"): "bioworld.actions._splits",
    ("bioworld.data", "unseen_compounds"): "bioworld.actions._splits",
    ("bioworld.data", "unseen_doses"): "bioworld.actions._splits",
    ("bioworld.data", "format_registration"): "bioworld.actions._summary",
}


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best_len:
                best, best_len = i, len(name)
    if best is None:
        raise AssertionError(f"module {module!r} is in no layer; add it to LAYERS in {__file__}")
    return best


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("bioworld"):
        return []
    # ``from bioworld import data`` imports the subpackage bioworld.data, not the root
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if (PACKAGE.parent / sub.replace(".", "/")).exists()
                   or (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists() else target)
    return out


def _lazy_targets(module: str, tree: ast.Module) -> list[tuple[str, str]]:
    """(exported name, target module) pairs of a ``lazy_exports(__name__, {...})`` call."""
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports"
                and len(node.args) == 2 and isinstance(node.args[1], ast.Dict)):
            for k, v in zip(node.args[1].keys, node.args[1].values):
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant):
                    target = module + v.value if v.value.startswith(".") else v.value
                    out.append((k.value, target))
    return out


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported bioworld module) for every import in ``path`` outside a main guard."""
    module = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if _is_main_guard(node):
            skip |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "bioworld"]
        elif isinstance(node, ast.ImportFrom):
            out += [(node.lineno, t) for t in _resolve(module, path.name == "__init__.py", node)]
    for name, target in _lazy_targets(module, tree):
        if COMPAT_ALIASES.get((module, name)) != target:
            out.append((0, target))
    return out


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        src = module_name(path)
        for line, target in imports_of(path):
            if layer_of(target) > layer_of(src):
                found.append(f"{path.relative_to(root.parent)}:{line}: {src} (layer {layer_of(src)}) imports "
                             f"{target} (layer {layer_of(target)})")
    return found


def test_imports_flow_one_way():
    found = violations()
    assert not found, "imports reaching up a layer:\n" + "\n".join(found)


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


@pytest.mark.parametrize("source, expected", [
    ("from bioworld.query import rollout\n", "bioworld.query"),
    ("def f():\n    import bioworld as bw\n    return bw.WorldModel\n", "bioworld"),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bioworld.train import TrainConfig\n", "bioworld.train"),
])
def test_the_checker_catches_an_upward_import(tmp_path, source, expected):
    pkg = tmp_path / "bioworld" / "model"
    pkg.mkdir(parents=True)
    (tmp_path / "bioworld" / "__init__.py").write_text("")
    (tmp_path / "bioworld" / "query").mkdir()
    (tmp_path / "bioworld" / "train").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text(source)
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "bioworld"
    try:
        found = violations(PACKAGE)
    finally:
        PACKAGE = saved
    assert len(found) == 1 and found[0].startswith("bioworld/model/bad.py") and f"imports {expected} " in found[0]


def test_a_main_guard_is_not_an_import(tmp_path):
    (tmp_path / "bioworld" / "train").mkdir(parents=True)
    (tmp_path / "bioworld" / "__init__.py").write_text("")
    (tmp_path / "bioworld" / "train" / "__init__.py").write_text("")
    (tmp_path / "bioworld" / "train" / "x.py").write_text(
        "if __name__ == '__main__':\n    from bioworld.distributed import main\n    main()\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "bioworld"
    try:
        assert violations(PACKAGE) == []
    finally:
        PACKAGE = saved
