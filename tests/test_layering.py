"""Who may import whom.  The flow goes one way: no module imports one that comes after
it; the actions (virtguests/actions/) sit above every other module but cli, which
dispatches to them.  The product never imports its test tooling (virtguests.testing);
tools/ use only its public names and import nothing from tests/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import virtguests
import virtguests.testing

PACKAGE = Path(virtguests.__file__).resolve().parent
REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "virtguests"
PRODUCT = sorted([*SOURCE.glob("*.py"), *(SOURCE / "actions").glob("*.py")])
PRODUCT_IDS = [str(p.relative_to(SOURCE)) for p in PRODUCT]
LOWER = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("cli", "__main__"))
"""The modules below the actions."""
ACTIONS = sorted(f"actions/{p.stem}" for p in (PACKAGE / "actions").glob("*.py"))
TOOLS = sorted((REPO / "tools").rglob("*.py"))

ONLY = {"model": set(), "render": set(), "commands": {"config", "model"}}
"""The first modules of the flow, and all they may import from virtguests."""

EXECUTING = {"execution", "othersave", "suspending", "doorbell", "shuttingdown",
             "poweringoff", "stopping", "starting", "returning", "executor"}
"""The executor (a facade) and its stages: after the plan, before the actions."""

NOT_IMPORTED = {
    "virshout": {"query", "observe", "plan", "policy", "state", *EXECUTING},
    "state": {"virsh", "virshout", "query", "observe", "plan", *EXECUTING},
    "session": {"virshout", "query", "observe", "plan", "policy", "state", *EXECUTING},
    "query": {"observe", "plan", "policy", "state", *EXECUTING},
    "observe": {"plan", "policy", "state", *EXECUTING},
    "policy": {"virsh", "query", "observe", "plan", *EXECUTING},
    "plan": {"virsh", "virshout", "query", "observe", "state", *EXECUTING},
    "concurrently": {*EXECUTING},
    "execution": {"observe", "state", "policy", *EXECUTING},
    "doorbell": {"observe", "state", "policy", *EXECUTING},
    "othersave": {"observe", "state", "policy", *EXECUTING - {"execution"}},
    **{stage: {"observe", "state", "policy",
               *EXECUTING - {"execution", "othersave", "doorbell"}}
       for stage in ("suspending", "shuttingdown", "poweringoff", "starting", "returning")},
    "stopping": {"observe", "state", "policy", "starting", "returning", "executor"},
    "executor": {"observe", "state", "policy"},
}
"""For each later module, the virtguests modules it must not import: the stages of the
executor each read alone, and only ``stopping`` combines the stop stages."""


def imported(module: str) -> set[str]:
    """The virtguests modules *module* (``plan``, ``actions/stop``) imports, at the top or
    inside a function; anything in virtguests.actions counts as ``actions``."""
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
    assert {"commands", "query", "virshout", "model", "plan"} <= imported("starting")
    assert {"config", "clock", "concurrently"} <= imported("execution")
    assert "conflicts" in imported("actions/context")  # imported inside a function
    assert {"actions", "executor", "plan"} <= imported("actions/stop")


@pytest.mark.parametrize("module", sorted(ONLY))
def test_first_modules_import_only_what_comes_before(module: str) -> None:
    assert imported(module) <= ONLY[module]


@pytest.mark.parametrize("module", sorted(NOT_IMPORTED))
def test_module_imports_nothing_downstream(module: str) -> None:
    assert imported(module) & NOT_IMPORTED[module] == set()


@pytest.mark.parametrize("module", LOWER)
def test_nothing_below_the_actions_imports_them_or_cli(module: str) -> None:
    assert imported(module) & {"actions", "cli"} == set()


@pytest.mark.parametrize("module", ACTIONS)
def test_the_actions_never_import_cli(module: str) -> None:
    assert "cli" not in imported(module)


def test_cli_dispatches_to_the_actions() -> None:
    assert "actions" in imported("cli")


def test_the_layers_are_all_checked() -> None:
    assert {"executor", "observe", "plan", "state", "exitstatus"} <= set(LOWER)
    assert "cli" not in LOWER
    assert {"actions/stop", "actions/start", "actions/context", "actions/records"} <= set(
        ACTIONS)



def imported_modules(path: Path, package: str) -> set[str]:
    """Every module *path* imports (relative imports resolved against *package*), and for
    ``from X import name`` also ``X.name``: it may be a submodule."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_product_modules_are_all_checked() -> None:
    names = set(PRODUCT_IDS)
    assert {"cli.py", "actions/stop.py", "actions/context.py", "executor.py", "virsh.py",
            "clock.py"} <= names
    assert not [n for n in names if "fakevirsh" in n or n.startswith("testing")]


@pytest.mark.parametrize("path", PRODUCT, ids=PRODUCT_IDS)
def test_product_never_imports_test_tooling(path: Path) -> None:
    imports = imported_modules(path, "virtguests")
    assert not [m for m in imports if within(m, "virtguests.testing")]
    assert not [m for m in imports if within(m, "tests") or within(m, "tools")]


def test_the_import_check_sees_every_spelling(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    spellings = ["import virtguests.testing", "from virtguests.testing import FakeHost",
                 "from virtguests import testing", "from .testing import clock",
                 "from . import testing", "import virtguests.testing.fakevirsh.main as m"]
    for line in spellings:
        source.write_text(f"def f() -> None:\n    {line}\n")
        imports = imported_modules(source, "virtguests")
        assert [m for m in imports if within(m, "virtguests.testing")], line
    source.write_text("from virtguests import clock\nimport virtguests.testing_notes\n")
    assert not [m for m in imported_modules(source, "virtguests")
                if within(m, "virtguests.testing")]


def test_the_public_testing_names_resolve() -> None:
    for name in virtguests.testing.__all__:
        assert getattr(virtguests.testing, name) is not None, name
    with pytest.raises(AttributeError):
        virtguests.testing.not_a_public_name  # noqa: B018


def private_testing_imports(path: Path) -> list[str]:
    """Imports of virtguests.testing other than its ``__all__`` names."""
    public = {"virtguests.testing"} | {f"virtguests.testing.{n}"
                                       for n in virtguests.testing.__all__}
    return sorted(m for m in imported_modules(path, "tools")
                  if within(m, "virtguests.testing") and m not in public)


def test_the_tools_are_all_checked() -> None:
    assert {"bench.py", "soak.py", "demo.py", "record_fixtures.py"} <= {p.name for p in TOOLS}


@pytest.mark.parametrize("path", TOOLS, ids=[str(p.relative_to(REPO)) for p in TOOLS])
def test_tools_use_only_the_public_testing_names(path: Path) -> None:
    assert private_testing_imports(path) == []


def test_the_public_names_check_sees_private_ones(tmp_path: Path) -> None:
    source = tmp_path / "t.py"
    source.write_text("from virtguests.testing import FakeHost, write_shim\n")
    assert private_testing_imports(source) == []
    source.write_text("from virtguests.testing.fakevirsh.state import StateFile\n")
    assert private_testing_imports(source) != []
    source.write_text("from virtguests.testing import harness\n")
    assert private_testing_imports(source) == ["virtguests.testing.harness"]


@pytest.mark.parametrize("path", TOOLS, ids=[str(p.relative_to(REPO)) for p in TOOLS])
def test_tools_import_nothing_from_tests(path: Path) -> None:
    package = ".".join(path.relative_to(REPO).parent.parts)
    assert not [m for m in imported_modules(path, package) if within(m, "tests")]


def test_the_tests_check_sees_every_spelling(tmp_path: Path) -> None:
    source = tmp_path / "t.py"
    for line in ["import tests.reference", "from tests import test_properties",
                 "from tests.realhost.libvirtd import PrivateLibvirtd", "import tests"]:
        source.write_text(f"def f() -> None:\n    {line}\n")
        assert [m for m in imported_modules(source, "tools") if within(m, "tests")], line
    source.write_text("from tools import reference\nimport testsuite\n")
    assert not [m for m in imported_modules(source, "tools") if within(m, "tests")]
