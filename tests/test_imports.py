"""The package imports downward only: no import cycle in ``src/flowmap`` (issue 25).

Two checks:

* static: the import graph of ``src/flowmap`` read with :mod:`ast`. An edge A -> B
  for every ``import`` / ``from ... import`` in A of a flowmap module B (relative
  imports resolved; ``from flowmap.x import y`` is an edge to ``flowmap.x.y`` when y is
  a submodule, to ``flowmap.x`` otherwise). Importing ``a.b.c`` also runs the
  ``__init__`` of ``a.b``: an edge to it too, unless A lies inside ``a.b`` (then the
  package is already being imported when A runs). The module-level graph (including
  ``if TYPE_CHECKING:`` blocks, which hide a cycle rather than remove it) and the graph
  with the function-level (lazy) imports added must both be free of cycles.
* dynamic: each module imported alone in a fresh interpreter (the third-party
  libraries preloaded once, then one forked child per module, so the sweep takes
  seconds rather than minutes).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "flowmap"


def module_files(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``package`` under ``src``."""
    files = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def is_package(name: str, files: dict[str, Path]) -> bool:
    """Whether module ``name`` is a package (its file is an ``__init__.py``)."""
    return files[name].name == "__init__.py"


def resolve_from(node: ast.ImportFrom, importer: str, files: dict[str, Path]) -> str:
    """The absolute module name of a ``from X import ...`` in ``importer`` (relative ones resolved)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package(importer, files) else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def named_modules(node: ast.Import | ast.ImportFrom, importer: str, files: dict[str, Path]) -> set[str]:
    """The modules an import statement names: the module itself, or the submodule a
    ``from`` imports where the imported name is one."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = resolve_from(node, importer, files)
    return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names}


def with_packages(target: str, importer: str) -> set[str]:
    """``target`` and the packages above it whose ``__init__`` importing it runs: all but
    those ``importer`` lies in (already being imported when it runs)."""
    parts = target.split(".")
    outer = {".".join(parts[:i]) for i in range(1, len(parts))}
    inside = {p for p in outer if importer == p or importer.startswith(p + ".")}
    return {target} | (outer - inside)


def import_nodes(tree: ast.Module) -> tuple[list[ast.AST], list[ast.AST]]:
    """The import statements of a module: (module level, inside functions). Class bodies
    and ``if`` / ``try`` blocks run at import time, so they count as module level."""
    eager, lazy = [], []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else eager).append(child)
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            visit(child, inner)

    visit(tree, False)
    return eager, lazy


def import_graphs(src: Path = SRC, package: str = PACKAGE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The package's import graphs: (module level only, module level plus lazy imports),
    each module -> the package modules importing it runs."""
    files = module_files(src, package)
    eager: dict[str, set[str]] = {name: set() for name in files}
    full: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        top, inner = import_nodes(ast.parse(path.read_text(), str(path)))
        for graph, nodes in ((eager, top), (full, top + inner)):
            for node in nodes:
                for target in named_modules(node, name, files):
                    graph[name] |= {m for m in with_packages(target, name) if m in files and m != name}
    return eager, full


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None when it has none (depth-first
    search; iterative, so deep graphs do not hit the recursion limit)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_reports_the_cycle():
    """The checker itself: a cycle is found and printed in order; a DAG has none."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_resolves_relative_submodule_and_package_imports(tmp_path):
    """Relative imports, ``from pkg import submodule`` and the implicit ``__init__`` of a
    package imported from outside it are edges; the own package's is not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("from . import other\nfrom ..top import x\n")
    (pkg / "sub" / "other.py").write_text("")
    (pkg / "top.py").write_text("def f():\n    from pkg.sub.leaf import y\n")
    eager, full = import_graphs(tmp_path, "pkg")
    assert eager["pkg.sub"] == {"pkg.sub.leaf"}
    assert eager["pkg.sub.leaf"] == {"pkg.sub.other", "pkg.top"}
    assert eager["pkg.top"] == set()
    assert full["pkg.top"] == {"pkg.sub", "pkg.sub.leaf"}
    assert find_cycle(eager) is None
    assert find_cycle(full) == ["pkg.sub", "pkg.sub.leaf", "pkg.top", "pkg.sub"]


def test_no_import_cycle_at_module_level():
    """Module-level imports (``if TYPE_CHECKING:`` blocks included) form no cycle."""
    eager, _ = import_graphs()
    cycle = find_cycle(eager)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_with_lazy_imports():
    """Function-level imports close no cycle either (a lazy import is not a licence to
    import upward)."""
    _, full = import_graphs()
    cycle = find_cycle(full)
    assert cycle is None, "import cycle through a function-level import: " + " -> ".join(cycle)


SWEEP = textwrap.dedent(
    """
    import importlib, os, sys, traceback
    for lib in sys.argv[2].split(","):
        try:
            importlib.import_module(lib)
        except Exception:
            pass
    failed = []
    for name in sys.argv[1].split(","):
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(name)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)
        if os.waitpid(pid, 0)[1] != 0:
            failed.append(name)
    print("FAILED:" + ",".join(failed))
    """
)


def third_party_imports(files: dict[str, Path]) -> list[str]:
    """The top-level names of the modules outside the package that it imports at module level."""
    names = set()
    for path in files.values():
        eager, _ = import_nodes(ast.parse(path.read_text(), str(path)))
        for node in eager:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return sorted(names - {PACKAGE, "__future__"})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the sweep forks one child per module")
def test_each_module_imports_alone():
    """Every module imports first in a fresh interpreter (no other flowmap module loaded
    before it), as a user's ``import flowmap.x`` would."""
    files = module_files()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    args = [",".join(sorted(files)), ",".join(third_party_imports(files))]
    done = subprocess.run([sys.executable, "-c", SWEEP, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    failed = done.stdout.strip().rsplit("FAILED:", 1)[-1]
    assert not failed, f"modules that fail to import alone: {failed}\n{done.stderr}"
