"""The layering the README's "Architecture" section promises, checked over the import graph of gateway/.

Every import counts, `TYPE_CHECKING` and function-local ones included, for the circles and the rules
between packages; what the offline verifier may load is checked on the imports that run (a
`TYPE_CHECKING` import never does), and again in a process where asyncpg and Starlette cannot load.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import REPOSITORY

ROOT = REPOSITORY
PACKAGE = ROOT / "gateway"
# What gateway/audit/ may import besides itself: none of the domain's nouns, only what every layer shares.
AUDIT_MAY_IMPORT = frozenset({"gateway.errors", "gateway.metrics", "gateway.signing_keys", "gateway.times"})
WEB_FRAMEWORK = "starlette"
DATABASE_DRIVER = "asyncpg"


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str      # a module of gateway/, or the top-level name of anything else
    runs: bool         # False under `if TYPE_CHECKING:`


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(name: str) -> str:
    """The gateway module `name` is, or lies in; anything else by its top-level name."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports_of(module: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text("utf-8"))
    checking = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        runs = node.lineno not in checking if isinstance(node, ast.Import | ast.ImportFrom) else True
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([base] if base else [])])
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        for name in names:
            inside = name == "gateway" or name.startswith("gateway.")
            target = _resolve(name) if inside else name.split(".")[0]
            if target != module:
                yield Import(module, target, runs)


IMPORTS = [found for module, path in MODULES.items() for found in _imports_of(module, path)]
GRAPH: dict[str, set[str]] = {module: set() for module in MODULES}
for found in IMPORTS:
    if found.imported in MODULES:
        GRAPH[found.importer].add(found.imported)


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read_from_the_whole_package() -> None:
    """Guards the rules below against a walk that reads nothing: the layers it speaks of are all there."""
    assert {"gateway.app", "gateway.http.member_api", "gateway.audit.writer", "gateway.delivery"} <= set(MODULES)
    assert "gateway.audit.writer" in GRAPH["gateway.delivery"]


def test_no_import_circles_type_checking_imports_included() -> None:
    assert _circles() == []


def test_starlette_is_imported_only_by_the_http_layer_and_the_app() -> None:
    offenders = sorted({i.importer for i in IMPORTS if i.imported == WEB_FRAMEWORK
                        and not _in(i.importer, "gateway.http") and i.importer != "gateway.app"})
    assert offenders == []


def test_only_the_app_imports_the_http_layer() -> None:
    offenders = sorted({f"{i.importer} -> {i.imported}" for i in IMPORTS if _in(i.imported, "gateway.http")
                        and not _in(i.importer, "gateway.http") and i.importer != "gateway.app"})
    assert offenders == []


def test_the_audit_package_imports_no_domain_module() -> None:
    offenders = sorted({f"{i.importer} -> {i.imported}" for i in IMPORTS if _in(i.importer, "gateway.audit")
                        and i.imported in MODULES and not _in(i.imported, "gateway.audit")
                        and i.imported not in AUDIT_MAY_IMPORT})
    assert offenders == []


def _loaded_by(start: str) -> set[str]:
    """Every name the module `start` loads when imported, through gateway modules (their packages too)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts)) if ".".join(parts[:n]) in MODULES]
        todo += [i.imported for i in IMPORTS if i.importer == module and i.runs]
    return seen


@pytest.mark.parametrize("verifier", ["gateway.verify", "gateway.audit.verify"])
def test_the_offline_verifier_loads_neither_the_database_driver_nor_the_web_framework(verifier: str) -> None:
    loaded = _loaded_by(verifier)
    assert "gateway.audit.verify" in loaded
    assert loaded.isdisjoint({DATABASE_DRIVER, WEB_FRAMEWORK}), sorted(loaded & {DATABASE_DRIVER, WEB_FRAMEWORK})


# Run by a fresh interpreter: asyncpg and Starlette cannot be imported there, then the bundle is verified.
_BLOCKED_RUN = """
import sys
from importlib.abc import MetaPathFinder

class Blocked(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("asyncpg", "starlette"):
            raise ImportError(f"{name} is blocked in this process")

sys.meta_path.insert(0, Blocked())
sys.argv = ["gateway.verify", *sys.argv[1:]]
import runpy
runpy.run_module("gateway.verify", run_name="__main__", alter_sys=True)
"""


def blocked_verify(bundle: Path) -> subprocess.CompletedProcess[str]:
    """`python -m gateway.verify bundle` where asyncpg and Starlette cannot be imported."""
    return subprocess.run([sys.executable, "-c", _BLOCKED_RUN, str(bundle)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, check=False)


def test_the_blocked_process_really_cannot_import_them(tmp_path: Path) -> None:
    probe = subprocess.run([sys.executable, "-c", _BLOCKED_RUN.split("sys.argv")[0] + "import asyncpg"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert probe.returncode != 0 and "asyncpg is blocked in this process" in probe.stderr
