"""The import drawing of slimlab/ has no circle, and every module imports on its own in a fresh interpreter.

Which imports count (docs/architecture.md says the same):
- module-level imports: they run when a module is imported, so a circle of them is a module used half-initialized.
  Importing `a.b.c` also runs the packages `a` and `a.b` first, unless the importer sits inside them (they are then
  already being initialized), so those count too;
- imports inside functions, by the module they name and the packages above it (they run first, the same way), and
  `importlib.import_module("a.b")` with a literal name: they run later, but a circle of them still means a module
  below needs one above (config asking train for the bf16 probe);
- not counted: imports under TYPE_CHECKING (they never run; tests/test_house.py still checks their direction), and an
  import inside a function between a package and its own modules: a registry reading its built-in files on first
  lookup, when both are initialized (slimlab/models/__init__.py, slimlab/quantize/engines.py).
"""
from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "slimlab"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    return {".".join(p.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(package.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _named(node: ast.AST, modules: set[str]) -> list[str]:
    """The modules one import statement (or importlib.import_module call with a literal) names, resolved to files."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from a import b` names the module a.b where there is one, else the module a (where the name b lives).
        names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                 for alias in node.names]
    elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module") and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        names = [node.args[0].value]
    else:
        return []
    return [n for n in names if n in modules]


def imports_of(tree: ast.AST, modules: set[str]):
    """(module named, 'module' | 'function') for each import that runs: TYPE_CHECKING blocks are skipped."""
    def walk(node: ast.AST, where: str):
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for branch in child.orelse:
                    yield from walk_one(branch, where)
                continue
            yield from walk_one(child, "function" if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                                else where)

    def walk_one(node: ast.AST, where: str):
        yield from ((name, where) for name in _named(node, modules))
        yield from walk(node, where)

    yield from walk(tree, "module")


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules it imports, by the rules in this file's docstring."""
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for target, where in imports_of(ast.parse(path.read_text(), str(path)), modules):
            if where == "function" and (_inside(name, target) or _inside(target, name)):
                continue  # a registry loading its own built-ins
            parts = target.split(".")  # the packages above the target run first, wherever the import sits
            edges |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if not _inside(name, ".".join(parts[:i]))} | {target}
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_import_drawing_has_no_circle():
    cycle = find_cycle(import_graph(module_files()))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_config_sits_below_what_it_validates():
    """config.py imports no code it validates, not even inside a function: only registries and config classes."""
    graph = import_graph(module_files())
    reached, todo = set(), ["slimlab.config"]
    while todo:
        for nxt in graph[todo.pop()] - reached:
            reached.add(nxt)
            todo.append(nxt)
    assert not reached & {"slimlab.train", "slimlab.steps", "slimlab.run", "slimlab.quantize.step", "slimlab.prune.step",
                          "slimlab.extras.lookahead", "slimlab.optimizers.muon"}, sorted(reached)


def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return module_files(tmp_path / "pkg")


def test_the_rule_catches_circles_through_functions_and_packages(tmp_path):
    # The circle issue 27 removed: config asked train (inside a function), train imports config at the top.
    files = _package(tmp_path, {"pkg/__init__.py": "", "pkg/config.py": "def f():\n    from pkg.train import probe\n",
                                "pkg/train.py": "from pkg.config import f\n"})
    assert find_cycle(import_graph(files)) == ["pkg.config", "pkg.train", "pkg.config"]
    # Importing a module of a package runs the package first, whose __init__ imports the importer back.
    files = _package(tmp_path / "b", {"pkg/__init__.py": "from pkg.sub.step import run\n", "pkg/config.py":
                                      "from pkg.sub.fields import F\n", "pkg/sub/__init__.py": "from pkg.sub.step import run\n",
                                      "pkg/sub/fields.py": "", "pkg/sub/step.py": "import pkg.config\n"})
    assert find_cycle(import_graph(files)) == ["pkg.sub", "pkg.sub.step", "pkg.config", "pkg.sub"]


def test_the_rule_leaves_out_type_checking_and_a_registry_loading_its_own_files(tmp_path):
    files = _package(tmp_path, {
        "pkg/__init__.py": "def load():\n    import importlib\n    importlib.import_module('pkg.plugin')\n",
        "pkg/plugin.py": "from pkg import load\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.user import x\n",
        "pkg/user.py": "from pkg.plugin import load\n"})
    graph = import_graph(files)
    assert graph == {"pkg": set(), "pkg.plugin": {"pkg"}, "pkg.user": {"pkg.plugin"}}
    assert find_cycle(graph) is None


# Imports torch and the other third-party packages once, then forks a fresh child per module (in the order given):
# a child starts with no slimlab module loaded, as a new interpreter would, without paying torch's import each time.
_FORK_EACH = """
import os, sys, traceback
import numpy, pydantic, torch, yaml  # noqa: F401  (third-party, loaded once before the forks)
assert not [m for m in sys.modules if m == "slimlab" or m.startswith("slimlab.")]
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            print(f"{name}: {traceback.format_exc().strip().splitlines()[-1]}", flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: reported above; a signal or other exit is a failure too
        print(f"{name}: exited with {os.waitstatus_to_exitcode(status)}", flush=True)
"""


def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    """Each module imported first, in a process where no other slimlab module was imported before it; the modules in
    a random order (its seed is in the failure). slimlab.__main__ is left out: importing it runs the CLI."""
    names = sorted(set(module_files()) - {"slimlab.__main__"})
    seed = random.randrange(2**32)
    random.Random(seed).shuffle(names)
    done = subprocess.run([sys.executable, "-c", _FORK_EACH, *names], capture_output=True, text=True, cwd=PACKAGE.parent,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not done.stdout.strip(), f"(order seed {seed})\n{done.stdout}"
