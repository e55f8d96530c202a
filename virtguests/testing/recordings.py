"""Where the recordings of real virsh (``fixtures/``) are, and reading YAML without site."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the fake virsh imports this on every call
if TYPE_CHECKING:
    from typing import Any

SOURCE_TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The directory holding the ``virtguests`` package: the source tree in a checkout."""

PACKAGED = "recordings"
"""The directory of ``virtguests.testing`` that a built package carries: setup.py copies
``fixtures/`` (the one source, which tools/record_fixtures.py writes) into it."""


class RecordingsMissing(LookupError):
    """No directory of recordings: without them the fake would answer in approximations."""


def _holds_recordings(path: str) -> bool:
    try:
        return any(name.endswith(".yaml") for name in os.listdir(path))
    except OSError:
        return False


def packaged_dir() -> str:
    """The recordings this installed package carries (package data, found through
    importlib.resources); "" when it has none: a checkout, an editable install."""
    from importlib.resources import files
    from pathlib import Path

    where = files("virtguests.testing") / PACKAGED
    if not isinstance(where, Path):  # not on a file system (zipped): the fake needs files
        return ""
    return str(where) if where.is_dir() else ""


def fixtures_dir() -> str:
    """The directory of the recordings: ``$VIRTGUESTS_FIXTURES`` if set, else the copy an
    installed package carries (packaged_dir()), else ``fixtures/`` of the source tree (a
    checkout or an unpacked sdist: setup.cfg next to the package).

    Raises RecordingsMissing, naming every place it looked, when none holds recordings.
    """
    env = os.environ.get("VIRTGUESTS_FIXTURES")
    if env:
        if not _holds_recordings(env):
            raise RecordingsMissing(f"$VIRTGUESTS_FIXTURES={env}: no recordings (*.yaml) there")
        return env
    packaged = packaged_dir()
    if packaged and _holds_recordings(packaged):
        return packaged
    here = os.path.join(SOURCE_TREE, "fixtures")
    if os.path.isfile(os.path.join(SOURCE_TREE, "setup.cfg")) and _holds_recordings(here):
        return here
    inside = os.path.join(os.path.dirname(os.path.abspath(__file__)), PACKAGED)
    raise RecordingsMissing(
        "no recordings of real virsh (*.yaml): $VIRTGUESTS_FIXTURES is not set, the "
        f"installed package has none in {packaged or inside} (package data), and "
        f"{SOURCE_TREE} is not a source tree with fixtures/"
    )


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
