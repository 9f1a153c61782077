"""The project's modules import each other without a cycle, counting imports inside functions
(those hide a cycle from Python's import machinery, not from a reader)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("daemon", "training")


def project_modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported(module: str, source: str, known: set[str], is_package: bool = False) -> set[str]:
    """The project modules `module` (whose text is `source`) imports, anywhere in it."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from daemon import native` imports the module daemon.native.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found - {module}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {module: imported(module, path.read_text(), known, path.name == "__init__.py")
            for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    visiting, done = [], set()

    def visit(module: str) -> list[str] | None:
        if module in visiting:
            return visiting[visiting.index(module):] + [module]
        if module in done:
            return None
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_project_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_imports_inside_functions_and_finds_a_cycle():
    known = {"daemon.a", "daemon.b", "daemon.c", "daemon.d"}
    sources = {
        "daemon.a": "from daemon import b\n",
        "daemon.b": "import daemon.c\n",
        "daemon.c": "def late():\n    from daemon.a import thing\n",
        "daemon.d": "from .a import thing\n",
    }
    graph = {module: imported(module, source, known) for module, source in sources.items()}
    assert graph == {"daemon.a": {"daemon.b"}, "daemon.b": {"daemon.c"}, "daemon.c": {"daemon.a"}, "daemon.d": {"daemon.a"}}
    assert find_cycle(graph) == ["daemon.a", "daemon.b", "daemon.c", "daemon.a"]
    del graph["daemon.c"]
    assert find_cycle(graph) is None
