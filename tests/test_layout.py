"""The layout rules of scheduler_core and exporter (issue #17), checked on the source:

- no module over 500 lines and no function over 60, unless a ``# long: <why>`` comment
  says why (in a module's first 30 lines; on the line above a function's ``def`` or its
  decorators);
- no import of a private name (``_x``) from another module;
- no import cycle between modules (imports inside functions count too);
- scheduler_core imports exporter only in the CLI.

Migration revisions are frozen records of a schema and are left out of the size rules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("scheduler_core", "exporter")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
REASON = "# long:"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> Iterator[tuple[str, Path, ast.Module, list[str]]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            yield module_name(path), path, ast.parse(text), text.splitlines()


def sized() -> Iterator[tuple[str, Path, ast.Module, list[str]]]:
    for item in sources():
        if "migrations" not in item[1].parts:
            yield item


def test_no_module_is_over_the_limit_without_a_reason() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {len(lines)} lines"
        for _name, path, _tree, lines in sized()
        if len(lines) > MAX_MODULE_LINES and not any(REASON in line for line in lines[:30])
    ]
    assert long == []


def test_no_function_is_over_the_limit_without_a_reason() -> None:
    long = []
    for _name, path, tree, lines in sized():
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[first - 2] if first >= 2 else ""
            if size > MAX_FUNCTION_LINES and REASON not in above:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {size} lines")
    assert long == []


def imports(tree: ast.Module, name: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """(module imported, names imported from it) for every import in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [a.name for a in node.names]


def test_no_private_name_is_imported_across_modules() -> None:
    found = [
        f"{name} imports {target}.{n}"
        for name, path, tree, _lines in sources()
        for target, names in imports(tree, name, path.name == "__init__.py")
        for n in names
        if n.startswith("_") and not n.startswith("__") and target != "__future__"
    ]
    assert found == []


def graph() -> dict[str, set[str]]:
    modules = {name: (path, tree) for name, path, tree, _lines in sources()}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, tree) in modules.items():
        for target, names in imports(tree, name, path.name == "__init__.py"):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in modules and candidate != name:
                    edges[name].add(candidate)
                    break
    return edges


def test_there_is_no_import_cycle() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == []


@pytest.mark.parametrize("package", ["scheduler_core"])
def test_the_core_imports_the_exporter_only_in_the_cli(package: str) -> None:
    found = sorted(
        name
        for name, target in ((n, t) for n, e in graph().items() for t in e)
        if name.startswith(package + ".")
        and target.startswith("exporter")
        and not name.startswith(f"{package}.cli")
    )
    assert found == []
