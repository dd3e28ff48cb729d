"""No function in the package is longer than ``MAX_LINES`` lines, its docstring excluded.

A function's length runs from its first decorator (or ``def``) to its last line; the lines of its
docstring are not counted, comments and blank lines are. Nested functions count in their parent
and on their own. ``PENDING`` lists the functions still over the limit, each with who splits it;
the list may only shrink: a listed function that is now short enough fails the test until its
entry is removed, so the list never hides a new offender.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bioworld"
MAX_LINES = 80
MAX_FACADE_LINES = 300

#: "path relative to bioworld/::function" -> why it is still long (to be split, then removed here).
PENDING: dict[str, str] = {
}


def function_lengths(root: Path = PACKAGE) -> dict[str, int]:
    """``{"path::qualified.name": lines without the docstring}`` of every function under ``root``."""
    out: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = path.relative_to(root).as_posix()

        def visit(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{prefix}{child.name}"
                    out[f"{rel}::{name}"] = _length(child)
                    visit(child, name + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")
                else:
                    visit(child, prefix)

        visit(tree, "")
    return out


def _length(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    start = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
    total = fn.end_lineno - start + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        total -= first.end_lineno - first.lineno + 1
    return total


def test_no_function_over_the_limit():
    lengths = function_lengths()
    over = {k: n for k, n in lengths.items() if n > MAX_LINES and k not in PENDING}
    assert not over, (
        f"functions over {MAX_LINES} lines (docstring excluded): "
        + ", ".join(f"{k} ({n})" for k, n in sorted(over.items(), key=lambda kv: -kv[1]))
        + ". Split them into named steps."
    )


def test_pending_list_only_shrinks():
    lengths = function_lengths()
    stale = sorted(k for k in PENDING if lengths.get(k, 0) <= MAX_LINES)
    assert not stale, f"remove these from PENDING (now <= {MAX_LINES} lines or gone): {stale}"


def test_the_measure_counts_code_not_docstrings(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    doc = '    """' + "\n" * 30 + '    """\n'
    (tmp_path / "ok.py").write_text(f"def ok():\n{doc}{body}\n")
    (tmp_path / "long.py").write_text(f"@staticmethod\ndef long():\n{body}\n    return 1\n")
    (tmp_path / "nested.py").write_text("class C:\n    def m(self):\n        def inner():\n"
                                        + "\n".join(f"            y{i} = {i}" for i in range(MAX_LINES)) + "\n")
    got = function_lengths(tmp_path)
    assert got["ok.py::ok"] == MAX_LINES + 1  # def line + body; the 32-line docstring is not counted
    assert got["long.py::long"] == MAX_LINES + 3  # decorator + def + body + return
    assert got["nested.py::C.m.inner"] == MAX_LINES + 1 and got["nested.py::C.m"] == MAX_LINES + 2


def test_world_model_is_a_facade():
    """``bw.WorldModel`` wires the layers and holds no more than ``MAX_FACADE_LINES`` lines (issue 16)."""
    tree = ast.parse((PACKAGE / "_world_model.py").read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "WorldModel")
    lines = cls.end_lineno - cls.lineno + 1
    assert lines <= MAX_FACADE_LINES, (
        f"WorldModel is {lines} lines; expected <= {MAX_FACADE_LINES}. Move the work into its layer "
        "(data/, entities/, actions/, train/setup.py, train/state.py, query/_verbs.py) and forward to it.")
