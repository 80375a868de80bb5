"""The house's one rule, checked: imports run down the data flow, never up, never round.

The layer order is declared once, below (docs/architecture.md draws it). Every import in
the package is parsed, lazy ones inside functions included: a module may import from
its own layer or a lower one, and no chain of imports may come back to where it started.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "stability_lab"

#: lowest first; a module belongs to the first entry that is a prefix of its dotted name
#: (relative to ``stability_lab``); "" is the package's own ``__init__`` (the public API)
LAYERS: list[tuple[str, ...]] = [
    ("errors", "formatting", "paths", "progress", "data"),  # plumbing every layer uses
    ("precision", "numerics"),  # number formats and policies; stable primitives
    ("linalg",),  # solvers, double-double, conditioning, NIST (float64 and better)
    ("spec",),  # the axis table, RunSpec, Sweep: what to run
    ("trace", "metrics"),  # what one run leaves behind, and what its metrics mean
    ("tasks",),  # data + model + loss
    ("run",),  # engine, training loops, monitors, executors
    ("diagnosis",),  # verdict, signatures, phases, the run record
    ("remedies",),  # recommendations, advisories, the verify driver, replay
    ("store",),  # SQLite
    ("report",),  # terminal, JSON, HTML
    # the two ways in (the lab trains, the user trains) and their tools
    ("lab", "watcher", "watch_hooks", "watch_metrics", "watch_creators", "watch_trace",
     "watch_online", "watch_report", "catalogue", "evaluate", "portability", "estimate",
     "estimate_shape", "estimate_machine", "estimate_cost", "estimate_result"),
    ("cli", "integrations", "__main__", ""),  # the doors: command line, callbacks, API
]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    # a compiled extension (its C source beside it, e.g. numerics/_lsekernel.c) is a module
    # of its folder, and imports nothing of the package
    for path in PACKAGE.rglob("*.c"):
        out[".".join(path.relative_to(PACKAGE).with_suffix("").parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> set[str]:
    """Modules of this package that ``name`` imports, anywhere in its body."""
    if MODULES[name].suffix == ".c":
        return set()
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(dotted: str) -> str | None:
        # the longest prefix that is a module of the package
        parts = dotted.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in MODULES:
                return candidate
            parts.pop()
        return "" if dotted == "" else None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "stability_lab" or alias.name.startswith("stability_lab."):
                    target = resolve(alias.name[len("stability_lab."):])
                    if target is not None:
                        found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "stability_lab"
                                  or node.module.startswith("stability_lab.")):
                module = node.module[len("stability_lab."):] if "." in node.module else ""
            else:
                continue
            for alias in node.names:
                sub = f"{module}.{alias.name}" if module else alias.name
                if sub in MODULES:  # ``from package import submodule``
                    found.add(sub)
                else:
                    target = resolve(module)
                    if target is not None:
                        found.add(target)
    found.discard(name)
    return found


def layer_of(name: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or (prefix and name.startswith(prefix + ".")):
                return i
    raise AssertionError(f"module stability_lab.{name} belongs to no layer: add it to LAYERS")


GRAPH = {name: imports_of(name) for name in MODULES}


def _show(name: str) -> str:
    return "stability_lab" + (f".{name}" if name else "")


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


def test_no_upward_import():
    upward = sorted(
        f"{_show(a)} (layer {layer_of(a)}) imports {_show(b)} (layer {layer_of(b)})"
        for a, targets in GRAPH.items() for b in targets
        if layer_of(b) > layer_of(a)
        # a package's __init__ may name its own submodules (it is their table of contents)
        and not (a and b.startswith(a + "."))
    )
    assert upward == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert [" <-> ".join(_show(m) for m in c) for c in _cycles()] == []


@pytest.mark.parametrize("source, expected", [
    ("from stability_lab.run import engine\n", {"run.engine"}),
    ("from stability_lab.spec import RunSpec\n", {"spec"}),
    ("def f():\n    from stability_lab.remedies.verify import run\n", {"remedies.verify"}),
    ("from ..report import terminal\n", {"report.terminal"}),
    ("from stability_lab.numerics import _lsekernel\n", {"numerics._lsekernel"}),
])
def test_the_parser_sees_every_form_of_import(tmp_path, monkeypatch, source, expected):
    # a fake module inside diagnosis/, so that ``..`` means the package root
    fake = tmp_path / "fake.py"
    fake.write_text(source)
    monkeypatch.setitem(MODULES, "diagnosis.fake", fake)
    assert imports_of("diagnosis.fake") == expected
    assert layer_of("diagnosis.fake") == 7
