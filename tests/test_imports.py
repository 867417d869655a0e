"""The package's import graph, read from the source with `ast` (function-local imports included),
has no cycle, and lower layers never import higher ones, not even lazily (LAYERS)."""

import ast
from pathlib import Path

import alexnet

PACKAGE = Path(alexnet.__file__).parent

# Cycles that other branches of issue 9 remove (data: decode_jpeg into data/image.py; the run
# module: plotting called from the command). The lead empties this set once they are merged.
KNOWN_OTHERS: set[frozenset] = set()  # every cycle is gone: keep it empty


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the alexnet modules it imports anywhere in its source."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from alexnet.data import store` imports the submodule alexnet.data.store
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import alexnet.x.y` -> the module it names
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle_through_a_local_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_local_imports():
    graph = import_graph()
    assert "alexnet.train.run" in graph["alexnet.cli.commands"]  # imported inside _cmd_train only
    assert "alexnet.config" in graph["alexnet.model.net"]
    assert "alexnet.model.net" not in graph["alexnet.config"]  # the variant registry lives in config.py


def test_no_import_cycles():
    found = [c for c in cycles(import_graph()) if c not in KNOWN_OTHERS]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_help_path_imports_no_torch():
    """config, flags and the parser are below torch: `alexnet --help` needs no torch import."""
    graph = import_graph()
    for name in ("alexnet.config", "alexnet.config", "alexnet.cli.flags", "alexnet.cli.parser"):
        source = (PACKAGE / (name.split(".", 1)[1].replace(".", "/") + ".py")).read_text()
        imported = {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m == "torch" or m.startswith("torch.") for m in imported), name
        assert graph[name] <= {"alexnet", "alexnet.config", "alexnet.config", "alexnet.errors", "alexnet.cli.flags",
                               "alexnet.config"}, name


# From the bottom: the base modules, then each package by concern, and at the top the front door (the
# package's own __init__, `alexnet.load`, `alexnet.extract`, ...) beside the command line. A module may
# import its own layer and those below it. data (§2, §4.1: pixels) sits below model (§3): a net knows
# the preprocessing its inputs need (`net.transforms()`).
LAYERS = [{"errors", "files", "machine", "torch_file", "config", "runtime"}, {"data"}, {"model"},
          {"evaluate"}, {"train"}, {"report"}, {"experiments"}, {"pretrained"}, {"alexnet", "cli", "__main__"}]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else module
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_lower_layers_never_import_higher_ones():
    upward = [f"{a} -> {b}" for a, targets in import_graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward, "imports from a higher layer: " + "; ".join(sorted(upward))
    assert layer_of("alexnet.train.loop") > layer_of("alexnet.evaluate.error_rates") > layer_of("alexnet.model.net")
    assert layer_of("alexnet.model.net") > layer_of("alexnet.data.transforms") > layer_of("alexnet.config")


def test_the_front_door_is_the_top_and_nothing_inside_goes_through_it():
    """`alexnet/__init__.py` is the highest layer, and no module of the package imports from the bare
    `alexnet` package (each imports from where a thing lives), so the front door can name anything."""
    graph = import_graph()
    assert layer_of("alexnet") == len(LAYERS) - 1
    through = sorted(name for name, targets in graph.items() if "alexnet" in targets)
    assert not through, f"modules that import from the bare alexnet package: {through}"
    assert graph["alexnet"] == set()  # its names are imported on first use (PEP 562), not when it loads


def test_every_front_door_name_is_where_it_says_and_import_alexnet_stays_cheap():
    import subprocess
    import sys

    for name in alexnet.__all__:
        assert getattr(alexnet, name) is not None, name
        assert name in dir(alexnet)
    assert alexnet.__version__ == alexnet.config.VERSION
    assert callable(alexnet.evaluate) and alexnet.evaluate.__name__ == "alexnet.evaluate"  # the package, callable
    code = "import sys, alexnet; print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # `import alexnet` (and the CLI's first import) loads none of them
