"""Where the recordings of real virsh (``fixtures/``) are, and reading YAML without site."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the fake virsh imports this on every call
if TYPE_CHECKING:
    from typing import Any

SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The directory holding the ``virtguests`` package: the source tree in a checkout."""


def fixtures_dir() -> str:
    """``$VIRTGUESTS_FIXTURES``, else ``fixtures/`` of the source tree, else the installed
    copy (``sys.prefix/share/virtguests/fixtures``, setup.cfg's data_files)."""
    env = os.environ.get("VIRTGUESTS_FIXTURES")
    if env:
        return env
    here = os.path.join(SOURCE_TREE, "fixtures")
    if os.path.isdir(here):
        return here
    return os.path.join(sys.prefix, "share", "virtguests", "fixtures")


def load_yaml(path: str) -> Any:
    """A YAML file (a recording or a host file) with the fastest safe loader."""
    try:
        import yaml
    except ImportError:  # the shim runs python -S: enable site-packages now
        import site

        site.main()
        import yaml
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as file:
        return yaml.load(file, Loader=loader)
