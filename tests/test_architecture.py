"""The layout's rules, read from the source with `ast` (nothing is imported or executed):
no import cycles, a bottom layer that imports nothing above it, and `dvc.yaml` deps that
cover every module a stage script imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "midipipe"
BOTTOM = "midipipe.core"  # errors, atomic I/O, device, reports, params, logging


def module_files(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports anywhere in its body (lazy imports too).

    `from a.b import c` counts `a.b.c` when that is a module, else `a.b`; importing a
    submodule also runs its parents' `__init__`, so those count as well."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            while t:
                if t in modules and t != name:
                    found.add(t)
                t = t.rpartition(".")[0]
    return found


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = module_files(src)
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path `[a, b, ..., a]`, or None. A package's `__init__` importing
    its own submodules is not a cycle (the submodules' parent edge is implicit)."""
    edges = {
        a: {b for b in bs if not a.startswith(b + ".") and not b.startswith(a + ".")}
        for a, bs in graph.items()
    }
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in colour and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(edges):
        if node not in colour and (cycle := visit(node)):
            return cycle
    return None


def closure(graph: dict[str, set[str]], start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def uncovered_deps(stage: dict, root: Path, graph: dict[str, set[str]], modules) -> list[str]:
    """Files of the package that a stage's command imports but its deps do not list."""
    cmd = stage["cmd"]
    scripts = [w for w in cmd.split() if w.endswith(".py")]
    start: set[str] = set()
    for script in scripts:
        start |= imports_of(root / script, "__stage__", modules)
    if " -m " in f" {cmd} ":
        start.add(cmd.split(" -m ")[1].split()[0])
    deps = [str(d) for d in stage.get("deps", [])]
    missing = []
    for mod in sorted(closure(graph, start)):
        rel = modules[mod].relative_to(root).as_posix()
        if not any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps):
            missing.append(rel)
    return missing


# --- the rules ------------------------------------------------------------------------------


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_bottom_layer_imports_nothing_above_it():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod == BOTTOM or mod.startswith(BOTTOM + "."):
            above = sorted(d for d in deps if not d.startswith(BOTTOM) and d != PACKAGE)
            assert not above, f"{mod} (bottom layer) imports {above}"


def test_dvc_deps_cover_the_imports_of_every_stage():
    modules = module_files()
    graph = import_graph()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    problems = {
        name: missing
        for name, stage in stages.items()
        if (missing := uncovered_deps(stage, ROOT, graph, modules))
    }
    assert not problems, f"dvc.yaml deps miss imported modules: {problems}"


# --- the checks can fail: planted faults ------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_cycle_check_catches_a_planted_cycle(tmp_path):
    root = _tree(
        tmp_path,
        {
            "src/midipipe/__init__.py": "",
            "src/midipipe/a/__init__.py": "",
            "src/midipipe/a/x.py": "from midipipe.b import y\n",
            "src/midipipe/b/__init__.py": "",
            "src/midipipe/b/y.py": "def f():\n    from midipipe.a.x import g  # lazy counts\n",
        },
    )
    cycle = find_cycle(import_graph(root / "src"))
    assert cycle is not None and cycle[0] == cycle[-1]
    assert {"midipipe.a.x", "midipipe.b.y"} <= set(cycle)


def test_deps_check_catches_an_import_without_its_dep(tmp_path):
    root = _tree(
        tmp_path,
        {
            "src/midipipe/__init__.py": "",
            "src/midipipe/core/__init__.py": "",
            "src/midipipe/core/io.py": "",
            "src/midipipe/gen/__init__.py": "",
            "src/midipipe/gen/train.py": "from midipipe.core.io import w\n",
            "src/midipipe/gen/gpt.py": "",
            "stages/08.py": "from midipipe.gen.train import t\nfrom midipipe.gen import gpt\n",
        },
    )
    modules, graph = module_files(root / "src"), import_graph(root / "src")
    stage = {"cmd": "python stages/08.py", "deps": ["stages/08.py", "src/midipipe/gen"]}
    missing = uncovered_deps(stage, root, graph, modules)
    assert missing == [
        "src/midipipe/__init__.py",
        "src/midipipe/core/__init__.py",
        "src/midipipe/core/io.py",
    ]
    stage["deps"] += ["src/midipipe/__init__.py", "src/midipipe/core"]
    assert uncovered_deps(stage, root, graph, modules) == []


@pytest.mark.parametrize("stage", sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))
def test_stage_scripts_are_thin(stage):
    """A stage script reads params, calls the library, writes outputs: no classes, and at most
    one helper beside `main`."""
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    scripts = [w for w in cmd.split() if w.endswith(".py")]
    assert scripts, f"{stage}: run a script in stages/, not {cmd!r}"
    tree = ast.parse((ROOT / scripts[0]).read_text())
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert not classes, f"{scripts[0]} defines {classes}: params and logic belong in the library"
    assert funcs == ["main"], f"{scripts[0]} defines {funcs}: only main"
    assert len((ROOT / scripts[0]).read_text().splitlines()) <= 60, f"{scripts[0]} is not thin"
