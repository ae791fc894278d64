"""The package's layout: an acyclic import graph, a short top level, folders mirrored by the
tests, small private signatures and every constant defined once."""
import ast
import collections
from pathlib import Path

import skselflabel

PACKAGE = Path(skselflabel.__file__).parent
TESTS = Path(__file__).parent
# Public signatures follow scikit-learn's conventions, whatever their length.
PUBLIC_SIGNATURES = {"SelfLabelClusterer.__init__", "plot_cluster_grid", "sinkhorn_knopp"}


def _modules():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(modules):
    """Module name -> the package's modules it imports (at any depth of its code)."""
    edges = collections.defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = node.module
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1])
                    target = f"{base}.{node.module}" if node.module else base
                # ``from . import x`` names a submodule, not the package's __init__
                found = [f"{target}.{alias.name}" for alias in node.names]
                found += [target] if node.module else []
            elif isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            else:
                continue
            edges[name].update(m for m in found if m in modules and m != name)
    return edges


def _cycle(edges, modules):
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for module in sorted(modules):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    edges = _imports(modules)
    assert sum(map(len, edges.values())) > 50      # the parser found the imports
    assert _cycle(edges, modules) is None, _cycle(edges, modules)


def test_a_cycle_would_be_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert _cycle(collections.defaultdict(set, edges), edges) == ["a", "b", "c", "a"]


def test_the_top_level_is_short_and_the_folders_are_mirrored_by_the_tests():
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 10, sorted(top)
    folders = [p.name for p in PACKAGE.iterdir()
               if p.is_dir() and (p / "__init__.py").exists()]
    assert {"_fit", "_data", "_solver", "_runtime"} <= set(folders)
    for folder in folders:
        mirror = TESTS / folder.lstrip("_")
        assert list(mirror.glob("test_*.py")), f"no tests in {mirror} for {folder}/"


def test_private_functions_take_at_most_eight_parameters():
    long = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for owner in [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            prefix = f"{owner.name}." if isinstance(owner, ast.ClassDef) else ""
            for node in owner.body:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                count = len(names) + (args.vararg is not None) + (args.kwarg is not None)
                count -= bool(names) and names[0] in ("self", "cls")
                if count > 8 and prefix + node.name not in PUBLIC_SIGNATURES:
                    long.append(f"{path.name}:{prefix}{node.name} ({count})")
    assert not long, long


def test_every_module_constant_is_defined_once():
    where = collections.defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                for name in getattr(target, "elts", [target]):
                    if isinstance(name, ast.Name) and name.id.isupper():
                        where[name.id].append(path.relative_to(PACKAGE).as_posix())
    assert len(where) > 20
    twice = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not twice, twice


def test_the_fitted_model_is_typed():
    for path in PACKAGE.rglob("*.py"):
        assert 'model["' not in path.read_text(), path
