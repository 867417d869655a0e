"""The house rules that keep the package easy to change, checked on its source (DEVELOPERS.md, STYLE.md):
no module over ~400 lines, no function over 60, and no loader that would run code from a file."""

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "alexnet"
MODULES = sorted(SRC.rglob("*.py"))


def test_the_package_is_where_the_rules_look():
    assert len(MODULES) > 30 and (SRC / "model.py") in MODULES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_modules_and_functions_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= 400, f"{path.name} has {source.count(chr(10))} lines: split it by concern"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert not long, f"{path.name}: functions over 60 lines: {', '.join(long)}"


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
