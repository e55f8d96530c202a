"""How virtguests shows a document: as JSON for programs, as aligned tables for people.

Every ``--json`` answer and every table (``plan``, ``report``) goes through here, so
they share one format: JSON indented by 2 with sorted keys and a final newline; table
columns padded to the widest cell, two spaces apart, the last column free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

FORMAT_VERSION = 1
"""Every ``--json`` document's ``format_version`` (as smartctl's ``json_format_version``):
raised when a key is renamed or removed or a value changes meaning; adding a key keeps it.
The man page's JSON section is the schema."""


def json_text(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def json_document(document: Mapping[str, Any]) -> str:
    """A ``--json`` answer: *document* with its ``format_version``."""
    return json_text({**document, "format_version": FORMAT_VERSION})


def table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """One line per row (the first is the heading); trailing blanks removed."""
    if not rows:
        return []
    padded = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(padded)]
    return [(indent + "  ".join([*(row[i].ljust(widths[i]) for i in range(padded)),
                                 row[padded]])).rstrip()
            for row in rows]
