"""The house rules of lb/, read from the source: no import circles, products that don't
import each other, and shared modules that import no product."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

LB = Path(__file__).resolve().parent.parent / "lb"
SHARED = {"lb.abi", "lb.libbpf", "lb.frames", "lb.findings", "lb.errors"}
PRODUCTS = ("lb.director", "lb.realserver", "lb.lab", "lb.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(LB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def imports() -> dict[str, set[str]]:
    """module -> the lb modules it imports (at any depth: lazy imports count too)."""
    modules = {module_name(p): p for p in LB.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def product(module: str) -> str | None:
    return next((p for p in PRODUCTS if module == p or module.startswith(p + ".")), None)


def test_no_import_circles():
    graph = imports()
    # A package's __init__ importing its own submodules is not a circle through it.
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("a,b", [("lb.director", "lb.realserver"),
                                 ("lb.realserver", "lb.director"),
                                 ("lb.lab", "lb.realserver"),
                                 ("lb.director", "lb.cli"), ("lb.realserver", "lb.cli")])
def test_products_do_not_import_each_other(a, b):
    wrong = [f"{m} imports {d}" for m, deps in imports().items() if product(m) == a
             for d in deps if product(d) == b]
    assert not wrong, "; ".join(wrong)


def test_shared_modules_import_no_product():
    wrong = [f"{m} imports {d}" for m, deps in imports().items() if m in SHARED
             for d in deps if product(d)]
    assert not wrong, "; ".join(wrong)


def test_only_the_dataplane_imports_bcc():
    users = [module_name(p) for p in LB.rglob("*.py")
             if any(isinstance(n, (ast.Import, ast.ImportFrom)) and
                    any((a.name if isinstance(n, ast.Import) else n.module or "")
                        .split(".")[0] == "bcc" for a in n.names)
                    for n in ast.walk(ast.parse(p.read_text())))]
    assert users == ["lb.director.dataplane"], users
