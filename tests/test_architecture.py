"""The package's shape, read from the source with `ast` (nothing is imported): layers, private names, sizes.

Each test prints what it finds wrong. `python tests/test_architecture.py --graph` prints the package-level
import graph with each package's layer (`-s` with pytest shows the same graph from `test_print_the_graph`).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "eaglespec"
ROOT = "<root>"  # src/eaglespec/__init__.py: nothing inside the package may import it

# Foundation first. A package (or top-level module) may import only packages of a lower layer; packages of one
# layer are siblings and do not import each other.
LAYERS = {
    "_version": 0,  # the version string
    "_io": 0,  # atomic writes, temp names
    "models": 1,  # draft heads, target adapter, model paths, converters
    "data": 2,  # formats, chat templates, loss masks, vocabulary, prepare
    "decoding": 3,  # trees, drafting, verify/accept, caches, the generators
    "distill": 4,  # self-distillation and feature dumps: runs the target through decoding
    "training": 5,  # losses, loop, engines, checkpoints (checks distill's features, simulates decoding's trees)
    "evaluation": 5,  # bench, tune, exactness: returns records
    "export": 6,  # engine formats and the reference importer
    "compat": 7,  # the reference EAGLE's EaModel API over decoding (imports reference checkpoints via export)
    "serving": 7,  # OpenAI-compatible HTTP over decoding
    "demo": 8,  # the whole pipeline on stories260K
    "commands": 9,  # one module per CLI verb: parse, call, print
    "cli": 10,  # `eaglespec <verb>`
    "__main__": 11,  # python -m eaglespec
    ROOT: 12,  # holds only __version__; the top, so every arrow to it points up
}
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450


@dataclass(frozen=True)
class Import:
    """One `import` / `from ... import` of an eaglespec module, as written in `source`."""

    source: str  # the importing module, dotted (eaglespec.serving.app)
    target: str  # the imported module, dotted
    names: tuple[str, ...]  # names taken from it by `from target import ...` (modules excluded)
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    files = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def package_of(module: str) -> str:
    """eaglespec.serving.app -> serving; eaglespec.cli -> cli; eaglespec -> <root>."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the statements under `if TYPE_CHECKING:`."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            lines |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if hasattr(n, "lineno")}
    return lines


def imports_of(module: str, path: Path, modules: set[str]) -> list[Import]:
    """The eaglespec imports of one module, lazy ones (inside functions) included."""
    tree = ast.parse(path.read_text(), str(path))
    typed, found = _type_checking_lines(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(module, a.name, (), node.lineno, node.lineno in typed)
                      for a in node.names if a.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, path.name == "__init__.py")
            if target and target.split(".")[0] == PACKAGE:
                found += _from_imports(module, target, node, modules, node.lineno in typed)
    return found


def _from_imports(module: str, target: str, node: ast.ImportFrom, modules: set[str], typed: bool) -> list[Import]:
    """`from target import a, b`: a submodule named is an import of that module, any other name comes from target."""
    submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
    names = tuple(a.name for a in node.names if f"{target}.{a.name}" not in modules)
    found = [Import(module, sub, (), node.lineno, typed) for sub in submodules]
    if names or not submodules:
        found.append(Import(module, target, names, node.lineno, typed))
    return found


def all_imports() -> list[Import]:
    files = module_files()
    return [i for module, path in files.items() for i in imports_of(module, path, set(files))]


def package_edges(imports: list[Import]) -> dict[tuple[str, str], list[Import]]:
    """(importing package, imported package) -> the imports behind that arrow (within a package: left out)."""
    edges = defaultdict(list)
    for i in imports:
        source, target = package_of(i.source), package_of(i.target)
        if source != target:
            edges[(source, target)].append(i)
    return edges


def layer_violations(edges: dict[tuple[str, str], list[Import]]) -> list[str]:
    """Arrows that do not point to a strictly lower layer, and packages the layer table does not know."""
    unknown = sorted({package_of(m) for m in module_files()} - set(LAYERS))
    problems = [f"{p}: not in LAYERS (give it a layer)" for p in unknown]
    for (source, target), found in sorted(edges.items()):
        if source in LAYERS and target in LAYERS and LAYERS[target] >= LAYERS[source]:
            where = ", ".join(sorted({f"{i.source}:{i.line} imports {i.target}" for i in found}))
            problems.append(f"{source} (layer {LAYERS[source]}) -> {target} (layer {LAYERS[target]}): {where}")
    return problems


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one node (Tarjan), as a sorted list."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def module_graph(imports: list[Import]) -> dict[str, set[str]]:
    """Module -> the modules it imports when it runs (type-only imports left out: they never execute)."""
    graph = defaultdict(set)
    for i in imports:
        if not i.type_only and i.target != i.source:
            graph[i.source].add(i.target)
    return graph


def private_name_imports(imports: list[Import]) -> list[str]:
    """`from eaglespec.x import _y` in another module than x, and private modules (`pkg._m`) imported from
    outside the package that owns them (`eaglespec._io` belongs to the whole package)."""
    problems = []
    for i in imports:
        private = [n for n in i.names if n.startswith("_") and not n.startswith("__")]
        if private and i.source != i.target:
            problems.append(f"{i.source}:{i.line} imports private {', '.join(private)} from {i.target}")
        owner, _, last = i.target.rpartition(".")
        if last.startswith("_") and not last.startswith("__") and not (i.source + ".").startswith(owner + "."):
            problems.append(f"{i.source}:{i.line} imports {i.target}, private to {owner}")
    return problems


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _self_attribute(node: ast.AST) -> str | None:
    """`self._x` / `cls._x` being assigned, or `object.__setattr__(self, "_x", ...)`: the name `_x`."""
    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
        return node.attr if getattr(node.value, "id", None) in ("self", "cls") else None
    if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("__setattr__",
                                                                                                   "setattr"):
        name = node.args[1] if len(node.args) > 1 else None
        return name.value if isinstance(name, ast.Constant) and isinstance(name.value, str) else None
    return None


def private_attributes(tree: ast.AST) -> set[str]:
    """The private attributes a module's classes own: methods, class-level names, `self._x = ...`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(stmt.name)
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
        names.add(_self_attribute(node))
    return {n for n in names if n and _is_private(n)}


def _module_aliases(tree: ast.AST, module: str, modules: set[str]) -> dict[str, str]:
    """Local names bound to another eaglespec module (`from eaglespec.data import features as ft`)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            aliases |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                        if f"{node.module}.{a.name}" in modules}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname: a.name for a in node.names if a.asname and a.name in modules}
    return {name: target for name, target in aliases.items() if target != module}


def private_attribute_uses() -> list[str]:
    """`obj._x` where a class of another eaglespec module owns `_x` and this module defines no `_x` (a reach
    into another module's private state, as `gen._prefill(...)` or `Drafter._static`), and `mod._x` on another
    eaglespec module imported under a name. Attributes of other libraries (owned by no eaglespec class, such as
    transformers' `config._name_or_path`) are not counted."""
    files = module_files()
    trees = {m: ast.parse(p.read_text(), str(p)) for m, p in files.items()}
    owned = {m: private_attributes(t) for m, t in trees.items()}
    owners = defaultdict(set)
    for module, names in owned.items():
        for name in names:
            owners[name].add(module)
    problems = set()
    for module, tree in trees.items():
        aliases = _module_aliases(tree, module, set(files))
        local = owned[module] | {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _is_private(node.attr) or node.attr in local:
                continue
            other = aliases.get(getattr(node.value, "id", None))
            if other or owners.get(node.attr, set()) - {module}:
                problems.add(f"{module}:{node.lineno} uses .{node.attr} of "
                             f"{other or ', '.join(sorted(owners[node.attr]))}")
    return sorted(problems)


def long_functions() -> list[str]:
    problems = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"{module}.{node.name} (line {node.lineno}): {length} lines")
    return problems


def long_modules() -> list[str]:
    lengths = {module: len(path.read_text().splitlines()) for module, path in module_files().items()}
    return [f"{module}: {n} lines" for module, n in sorted(lengths.items()) if n > MAX_MODULE_LINES]


def describe_graph(edges: dict[tuple[str, str], list[Import]]) -> str:
    """One line per package, lowest layer first: `[layer] package -> what it imports`."""
    targets = defaultdict(set)
    for source, target in edges:
        targets[source].add(target)
    packages = sorted({p for edge in edges for p in edge}, key=lambda p: (LAYERS.get(p, -1), p))
    return "\n".join(f"[{LAYERS.get(p, '?')}] {p} -> {', '.join(sorted(targets[p], key=LAYERS.get)) or '-'}"
                     for p in packages)


def _report(title: str, problems: list[str]) -> str:
    text = f"{title}: {len(problems)}\n" + "\n".join(f"  {p}" for p in problems)
    print(text)
    return text


def test_print_the_graph():
    print("\n" + describe_graph(package_edges(all_imports())))


def test_packages_import_only_lower_layers_and_never_the_root():
    problems = layer_violations(package_edges(all_imports()))
    assert not problems, _report("arrows that do not point down the layer table", problems)


def import_cycles(imports: list[Import]) -> list[str]:
    """Cycles between packages, and between modules at run time (within a package too)."""
    graph = defaultdict(set)
    for source, target in package_edges(imports):
        graph[source].add(target)
    cycles = [f"packages: {' <-> '.join(c)}" for c in find_cycles(graph)]
    return cycles + [f"modules: {' <-> '.join(c)}" for c in find_cycles(module_graph(imports))]


def test_no_import_cycles():
    cycles = import_cycles(all_imports())
    assert not cycles, _report("import cycles", cycles)


def test_no_module_imports_a_private_name_of_another():
    problems = private_name_imports(all_imports())
    assert not problems, _report("private names imported across modules", problems)


def test_no_module_reaches_into_another_modules_private_attributes():
    problems = private_attribute_uses()
    assert not problems, _report("private attributes used across modules", problems)


def test_functions_stay_short():
    problems = long_functions()
    assert not problems, _report(f"functions over {MAX_FUNCTION_LINES} lines", problems)


def test_modules_stay_short():
    problems = long_modules()
    assert not problems, _report(f"modules over {MAX_MODULE_LINES} lines", problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="print the package-level import graph and stop")
    args = parser.parse_args(argv)
    imports = all_imports()
    print(describe_graph(package_edges(imports)))
    if args.graph:
        return 0
    problems = layer_violations(package_edges(imports)) + import_cycles(imports) + private_name_imports(imports)
    problems += private_attribute_uses() + long_functions() + long_modules()
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
