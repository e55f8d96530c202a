"""The flow goes one way: no module imports one that comes after it (ISSUE 11)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import virtguests

PACKAGE = Path(virtguests.__file__).resolve().parent

ONLY = {"model": set(), "commands": {"config", "model"}}
"""The first modules of the flow, and all they may import from virtguests."""

NOT_IMPORTED = {
    "virshout": {"query", "observe", "plan", "policy", "executor", "service", "state"},
    "state": {"virsh", "virshout", "query", "observe", "plan", "executor", "service"},
    "query": {"observe", "plan", "policy", "executor", "service", "state"},
    "observe": {"plan", "policy", "executor", "service", "state"},
    "policy": {"virsh", "query", "observe", "plan", "executor", "service"},
    "plan": {"virsh", "virshout", "query", "observe", "executor", "service", "state"},
    "executor": {"observe", "service", "state", "policy"},
}
"""For each later module, the virtguests modules it must not import."""


def imported(module: str) -> set[str]:
    """The virtguests modules *module* imports, at the top or inside a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "virtguests":
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("virtguests."):
            out.add(str(node.module).split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(alias.name.split(".")[1] for alias in node.names
                       if alias.name.startswith("virtguests."))
    return out


def test_imported_sees_every_form_of_import() -> None:
    assert {"commands", "query", "virshout", "model", "plan", "config"} <= imported("executor")
    assert "conflicts" in imported("service")  # imported inside a function


@pytest.mark.parametrize("module", sorted(ONLY))
def test_first_modules_import_only_what_comes_before(module: str) -> None:
    assert imported(module) <= ONLY[module]


@pytest.mark.parametrize("module", sorted(NOT_IMPORTED))
def test_module_imports_nothing_downstream(module: str) -> None:
    assert imported(module) & NOT_IMPORTED[module] == set()
