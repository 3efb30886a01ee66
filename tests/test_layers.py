"""The package's layers: arrows point down only.

    core  <  solvers, problems  <  run  <  cli  <  the package root (bilevel/__init__, __main__)

core holds the problem, its variables and data, the oracles, linear algebra and the types a
step speaks; solvers and problems stand on it side by side and never import each other; run
(the loop, solve, solve_batch, history, verification) composes them; the command line sits on
top and nothing imports it. Imports of the package's own modules stand at the top of a file,
never inside a function (where they would hide a cycle).
"""
import ast
from collections import defaultdict
from pathlib import Path

import bilevel

ROOT = Path(bilevel.__file__).parent
LAYERS = {"core": 0, "solvers": 1, "problems": 1, "run": 2, "cli": 3}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """The layer package of a module: bilevel.core.oracles -> core; the root -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""


def rank(module: str) -> int:
    return LAYERS.get(package_of(module), max(LAYERS.values()) + 1)


def own_imports(path: Path):
    """(imported module, line, inside a function) for every import of a bilevel module."""
    module = module_name(path)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    functions = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "bilevel" or target.startswith("bilevel."):
                for alias in node.names:       # `from . import checks` imports the module bilevel.core.checks
                    sub = f"{target}.{alias.name}"
                    is_module = (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").exists() or \
                        (ROOT.parent / Path(*sub.split(".")) / "__init__.py").exists()
                    yield (sub if is_module else target), node.lineno, id(node) in functions
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("bilevel"):
                    yield alias.name, node.lineno, id(node) in functions


def graph():
    edges = defaultdict(set)
    for path in sorted(ROOT.rglob("*.py")):
        for target, line, local in own_imports(path):
            edges[module_name(path)].add((target, f"{path.relative_to(ROOT.parent)}:{line}", local))
    return edges


def test_no_import_points_up_or_across():
    wrong = []
    for source, targets in graph().items():
        for target, where, _ in targets:
            if rank(target) > rank(source) or (
                    rank(target) == rank(source) and package_of(target) != package_of(source)):
                wrong.append(f"{where}: {source} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_of_our_own_modules_inside_a_function():
    hidden = [f"{where}: {target}" for targets in graph().values() for target, where, local in targets if local]
    assert not hidden, "\n".join(hidden)


def test_the_import_graph_has_no_cycle():
    edges = {source: {t for t, _, _ in targets} for source, targets in graph().items()}
    state: dict[str, int] = {}               # 1 on the path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else nxt)
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The rules are not vacuous: a core module that imports the loop is caught."""
    fake = tmp_path / "bilevel" / "core"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("from ..run import loop\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path / "bilevel")
    (tmp_path / "bilevel" / "run").mkdir()
    (tmp_path / "bilevel" / "run" / "loop.py").write_text("")
    edges = graph()
    assert ("bilevel.run.loop" in {t for t, _, _ in edges["bilevel.core.x"]})
    assert rank("bilevel.run.loop") > rank("bilevel.core.x")
