"""The layout keeps its promises: one `rmserve` namespace, imports in one direction, no import circles, and a
server that never imports torch or transformers.

Module imports are read with `ast` (what a module's code imports anywhere, except under `if TYPE_CHECKING:`,
which never runs), not by importing it, so a circle is found even when a late import hides it at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def module_name(path: Path) -> str | None:
    """The installed name of a source file, from pyproject's folder mapping (the deepest mapping wins)."""
    relative = path.relative_to(ROOT).with_suffix("").as_posix()
    for package, folder in sorted(FOLDERS.items(), key=lambda kv: -len(kv[1])):
        if relative == folder or relative.startswith(folder + "/"):
            name = package + relative[len(folder):].replace("/", ".")
            return name.removesuffix(".__init__")
    return None


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def imports_of(path: Path, name: str) -> set[str]:
    """Modules of the rmserve namespace that `path` imports (resolved to modules, not names)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES}


SOURCES = {module_name(p): p for folder in set(FOLDERS.values()) for p in (ROOT / folder).rglob("*.py")
           if module_name(p) is not None}
MODULES = set(SOURCES)
GRAPH = {name: imports_of(path, name) - {name} for name, path in SOURCES.items()}


def importers_of(prefix: str) -> set[str]:
    return {m for m, deps in GRAPH.items() if any(d == prefix or d.startswith(prefix + ".") for d in deps)}


def under(prefix: str) -> set[str]:
    return {m for m in MODULES if m == prefix or m.startswith(prefix + ".")}


def test_every_source_file_is_in_the_namespace():
    assert "rmserve.service.core.scoring" in MODULES and "rmserve.client" in MODULES and "rmserve.cli" in MODULES
    assert "rmserve.training.train" in MODULES and "rmserve.proto.reward_pb2" in MODULES
    assert not any(m.split(".")[0] != "rmserve" for m in MODULES)


def test_no_import_circles():
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def walk(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == "open":
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                walk(dep, path + [dep])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            walk(module, [module])


def test_imports_go_one_way():
    client, service, training = under("rmserve.client"), under("rmserve.service"), under("rmserve.training")
    core = under("rmserve.service.core")
    # The client imports nothing from the server or training.
    assert not {d for m in client for d in GRAPH[m]} & (service | training)
    # The server never imports training; the core knows no transport or process.
    assert not importers_of("rmserve.training") & service
    assert not {d for m in core for d in GRAPH[m]} & (under("rmserve.service.transports") | under("rmserve.service.process"))
    # Transports use the shared state and the reloader, never the runtime that wires them together.
    cli = {"rmserve.cli"} | under("rmserve.commands")
    assert importers_of("rmserve.service.process.runtime") <= cli
    # Training reads the server only through its core (the bundle contract, input formatting, the engine).
    assert not {d for m in training for d in GRAPH[m]} & (service - core - {"rmserve.service.settings"})
    # The command line (rmserve/cli.py and its subcommand modules) is the one place outside training that
    # imports training and the server both.
    both = (importers_of("rmserve.training") - training) & importers_of("rmserve.service")
    assert both and both <= cli, both


def test_nothing_installs_a_top_level_service_or_training():
    assert set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]) == {
        module_name(p) for p in SOURCES.values() if p.name == "__init__.py"}
    assert all(name.startswith("rmserve") for name in FOLDERS)


def test_the_server_imports_neither_torch_nor_transformers():
    modules = sorted(under("rmserve.service") | under("rmserve.client") | under("rmserve.commands")
                     | {"rmserve.cli", "rmserve.group_stats"})
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "from rmserve.cli import build_parser\n"
        "build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


def test_no_source_file_in_service_mentions_a_torch_import():
    for path in (ROOT / "service").rglob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from torch" not in text, path
        assert "import transformers" not in text and "from transformers" not in text, path


def test_modules_stay_small_and_say_what_they_own():
    for name, path in SOURCES.items():
        if name.startswith("rmserve.proto.reward_pb2"):
            continue  # generated
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no docstring"
        lines = len(path.read_text().splitlines())
        assert lines <= 450, f"{path} has {lines} lines; split it (about 400 at most)"
