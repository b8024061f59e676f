"""No import cycles inside ``burn_plugin``, counting imports inside functions (import-linter's layer
contracts, ``tests/test_layers.py``, see only the direction of module-level arrows)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "burn_plugin"   # module_name() names files relative to its parent


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in its body (a package's ``__init__`` counts
    as the package; ``from . import x`` as ``x`` when x is a module)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != me:
                found.add(n)
    return found


def import_graph(root: Path = PKG) -> dict[str, set[str]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_a_planted_cycle_is_found(tmp_path):
    pkg = tmp_path / "burn_plugin"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from .y import g\n")   # inside a function
    (pkg / "a" / "y.py").write_text("from burn_plugin.a import x\n")
    (pkg / "z.py").write_text("from .a import y\n")
    global PKG
    old, PKG = PKG, pkg
    try:
        assert cycles(import_graph(pkg)) == [["burn_plugin.a.x", "burn_plugin.a.y"]]
    finally:
        PKG = old


# The modules `burn --help` and the BackdoorBench entry script's argument parsing import: they stay free of
# torch and pandas, so these modules alone may import the package's heavy modules inside functions.
LIGHT = ["burn_plugin.cli", "burn_plugin.settings", "burn_plugin.flags", "burn_plugin.docgen", "burn_plugin.core.config",
         "burn_plugin.backdoorbench.register", "burn_plugin.backdoorbench.commands"]


def function_level_imports(path: Path) -> list[int]:
    """Lines of ``path`` where a function imports from the package."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n.lineno for n in ast.walk(fn)
                      if (isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("burn_plugin")))
                      or (isinstance(n, ast.Import) and any(a.name.startswith("burn_plugin") for a in n.names))]
    return found


def test_only_the_light_modules_import_inside_functions():
    stray = {module_name(f): lines for f in sorted(PKG.rglob("*.py"))
             if module_name(f) not in LIGHT and (lines := function_level_imports(f))}
    assert stray == {}, "import these at module level (no cycle needs deferring; the module is heavy anyway)"


def test_the_light_modules_import_no_torch_or_pandas():
    code = (f"import sys; import {', '.join(LIGHT)}; "
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PKG.parent).stdout.strip()
    assert out == "[]"
