"""The versions of sh and PyYAML virtguests runs on, checked once at start-up.

The ranges are the ones tested: sh 1.14 (Debian 12's and Ubuntu's python3-sh 1.14.2,
``make test-sh1``) and sh 2.x (PyPI, ``make test``) both serve the one call style of
virtguests.virsh; PyYAML from 6.0 (Debian 12's python3-yaml). An sh outside its range
(an older 1.x, a future 3) may take a special keyword for an argument to virsh, and
then every call fails and ``stop`` leaves the guests unprotected: so such a version is
refused before anything is done, with one line naming the version found, where, and
the range (exit status 5, ``EXIT_DEPENDENCY``). setup.cfg's install_requires says the
same ranges (tests/test_deps.py checks).
"""

from __future__ import annotations

import importlib
import re
from typing import Optional

Version = tuple[int, ...]

SUPPORTED: dict[str, tuple[str, Version, Optional[Version]]] = {
    "sh": ("sh", (1, 14), (3,)),
    "PyYAML": ("yaml", (6, 0), None),
}
"""Each distribution: its module, the first version supported, the first one not
(None: no upper bound known)."""


def spec(name: str) -> str:
    """The range as install_requires writes it: ``sh>=1.14,<3``."""
    _, low, high = SUPPORTED[name]
    text = f"{name}>={_dotted(low)}"
    return text + (f",<{_dotted(high)}" if high is not None else "")


def parse(version: str) -> Optional[Version]:
    """``1.14.2`` -> (1, 14, 2); None if it does not start with two numbers."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if found is None:
        return None
    return tuple(int(part) for part in found.groups() if part is not None)


def problem(name: str, version: Optional[str], where: str) -> Optional[str]:
    """Why *version* of *name* (found at *where*) cannot serve, or None if it can."""
    _, low, high = SUPPORTED[name]
    parsed = parse(version) if version else None
    if parsed is not None and parsed >= low and (high is None or parsed < high):
        return None
    shown = _one_line(version or "")
    found = f"{name} {shown}" if shown else f"{name} of unknown version"
    return (f"{found} is installed ({_one_line(where)}), virtguests needs {spec(name)}: "
            "nothing was done")


def refusal() -> Optional[str]:
    """None if the sh and PyYAML that import are in range, else the one line saying
    which is not (or cannot be imported)."""
    for name, (module_name, _, _) in SUPPORTED.items():
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # not installed, or broken: say so, never a traceback
            text = _one_line(str(err)) or type(err).__name__
            return (f"cannot import {module_name} ({text}), virtguests needs "
                    f"{spec(name)}: nothing was done")
        version = getattr(module, "__version__", None)
        found = problem(name, version if isinstance(version, str) else None,
                        str(getattr(module, "__file__", None) or module_name))
        if found is not None:
            return found
    return None


def _one_line(text: str) -> str:
    """What a module says, on one line (a version string may hold anything)."""
    return " ".join(text.split())


def _dotted(version: Version) -> str:
    return ".".join(str(part) for part in version)
