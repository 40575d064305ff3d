"""The version of a piece of the library's code: a hash of the source files a module imports.

Read with `ast` (nothing is imported): every `midipipe` module reachable from the roots through
imports, lazy ones included. A resume fingerprint holding it notices any edit to that code."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "midipipe"
SRC = Path(__file__).resolve().parents[2]  # the folder holding the package


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path, name: str) -> set[str]:
    """Package modules `path` imports (`from a import b` may name module a.b)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    found = set()
    for module in out:
        if module.split(".")[0] != PACKAGE:
            continue
        parts = module.split(".")  # the package's __init__ files run too
        found.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return {m for m in found if _module_file(m) is not None}


def source_closure(*roots: str) -> list[Path]:
    """Source files of `roots` and every package module they import, directly or not."""
    todo, seen = list(roots), set()
    while todo:
        name = todo.pop()
        if name in seen or _module_file(name) is None:
            continue
        seen.add(name)
        todo.extend(_imports(_module_file(name), name) - seen)
    return sorted(_module_file(m) for m in seen)


def code_version(*roots: str) -> str:
    """sha256 over the relative paths and bytes of `source_closure(*roots)`."""
    digest = hashlib.sha256()
    for path in source_closure(*roots):
        digest.update(str(path.relative_to(SRC)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
