"""The house rules that keep the package easy to walk and to change, checked on its source
(DEVELOPERS.md, STYLE.md): packages by concern that mirror the paper, a handful of modules at the
top, re-exports only in a package's `__init__`, functions well under 80 lines, and no loader that
would run code from a file. (Lower layers never import higher ones: tests/test_imports.py.)"""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "alexnet"
MODULES = sorted(SRC.rglob("*.py"))
# the paper's concerns, each a package whose __init__ names its sections
PAPER_PACKAGES = {"model": "§3", "data": "§2", "train": "§5", "evaluate": "§6", "experiments": "§7"}
TOP_LEVEL = {"__init__.py", "__main__.py", "config.py", "errors.py", "files.py", "machine.py", "runtime.py",
             "torch_file.py"}


def test_the_package_is_where_the_rules_look():
    assert len(MODULES) > 30 and (SRC / "model" / "net.py") in MODULES


def test_a_handful_of_modules_at_the_top_and_a_package_per_concern():
    assert {p.name for p in SRC.glob("*.py")} == TOP_LEVEL
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert packages == {*PAPER_PACKAGES, "report", "pretrained", "cli"}
    for package, section in PAPER_PACKAGES.items():
        doc = ast.get_docstring(ast.parse((SRC / package / "__init__.py").read_text())) or ""
        assert section in doc, f"{package}/__init__.py should say which of the paper's sections it holds ({section})"
        listed = set(re.findall(r"\b(\w+)\.py\b", doc))
        modules = {p.stem for p in (SRC / package).glob("*.py")} - {"__init__", "__main__"}
        assert modules <= listed, f"{package}/__init__.py does not name {sorted(modules - listed)}"


def _imported_unused(tree: ast.Module) -> list[str]:
    """Names a module imports at its top and never uses: re-exports."""
    imported = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not (isinstance(node, ast.ImportFrom)
                                                                  and node.module == "__future__"):
            for a in node.names:
                imported[(a.asname or a.name).split(".")[0]] = node.lineno
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    return [f"{name} (line {line})" for name, line in imported.items() if name not in used]


@pytest.mark.parametrize("path", [p for p in MODULES if p.name != "__init__.py"], ids=lambda p: str(p.relative_to(SRC)))
def test_re_exports_only_in_a_packages_init(path):
    unused = _imported_unused(ast.parse(path.read_text()))
    assert not unused, f"{path.relative_to(SRC)} imports and never uses {', '.join(unused)}: import it from where it lives"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_functions_stay_readable(path):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long, f"{path.name}: functions of 80 lines or more: {', '.join(long)}"


def test_the_rule_finds_a_re_export():
    assert _imported_unused(ast.parse("from a import b, c\nimport d\nprint(c, d.x)\n")) == ["b (line 1)"]


def test_no_loader_runs_code_from_a_file():
    """A file a user or an earlier run hands in is data: no pickle.load(s), no torch.load without
    weights_only=True, no np.load(allow_pickle=True). (data/cifar.py's restricted Unpickler admits
    only what CIFAR batches hold and is tested against crafted files.)"""
    unsafe = re.compile(r"pickle\.loads?\(|weights_only\s*=\s*False|allow_pickle\s*=\s*True")
    found = [f"{p.relative_to(SRC)}:{i}" for p in MODULES for i, line in enumerate(p.read_text().splitlines(), 1)
             if unsafe.search(line)]
    assert not found, found
    loads = [f"{p.relative_to(SRC)}:{i}" for p in MODULES for i, line in enumerate(p.read_text().splitlines(), 1)
             if "torch.load(" in line and "weights_only=True" not in line]
    assert not loads, f"torch.load without weights_only=True: {loads}"
