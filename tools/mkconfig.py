#!/usr/bin/env python3
"""Write the commented example configuration file from the man page.

    python3 tools/mkconfig.py doc/virtguests.8.md -o build/libvirt-guests.example

Every variable of virtguests(8)'s CONFIGURATION section, in its order, with its
description and its default, commented out: the form of libvirt's own
/etc/default/libvirt-guests. The Debian package ships it as an example; it never
installs or claims the real file, a conffile of libvirt-daemon-system. Generated, so
it cannot drift from the man page. Standard library only, like tools/mkman.py.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path
from typing import Optional

HEADER = """\
# Example configuration for virtguests, generated from virtguests(8) by
# tools/mkconfig.py: every variable, commented out, at its default.
#
# virtguests reads libvirt-guests' own file, /etc/default/libvirt-guests (on Debian
# a conffile of libvirt-daemon-system), with the same variables and defaults; copy
# the lines you need there. libvirt-guests ignores the variables marked "virtguests
# only". The file is parsed, never executed. "virtguests check" validates it.
"""

TERM = re.compile(r"^`([A-Z_]+)` \(default:? (?:`([^`]*)`|none).*\)$")
"""A variable's term: its name and default ("none": empty)."""


class SourceError(ValueError):
    """The CONFIGURATION section is not in the expected form."""


def variables(markdown: str) -> list[tuple[str, str, str]]:
    """(name, default, description) for every term of the CONFIGURATION section."""
    section = markdown.split("\n# CONFIGURATION\n", 1)
    if len(section) != 2:
        raise SourceError("no CONFIGURATION section")
    body = re.split(r"^# ", section[1], maxsplit=1, flags=re.MULTILINE)[0]
    lines = body.splitlines()
    found = []
    for n, line in enumerate(lines):
        match = TERM.match(line)
        if match is None or n + 1 >= len(lines) or not lines[n + 1].startswith(": "):
            continue
        text = []
        for more in lines[n + 1:]:
            if not more.strip():
                break
            text.append(more[2:])
        found.append((match.group(1), match.group(2) or "", " ".join(text)))
    if not found:
        raise SourceError("no variables in the CONFIGURATION section")
    return found


def _plain(text: str) -> str:
    return re.sub(r"\*{1,2}([^*]+)\*{1,2}", r"\1", text.replace("`", ""))


def convert(markdown: str) -> str:
    out = [HEADER.rstrip("\n")]
    for name, default, description in variables(markdown):
        out.append("")
        out.extend(textwrap.wrap(_plain(description), width=84,
                                 initial_indent="# ", subsequent_indent="# "))
        value = f'"{default}"' if re.search(r"[\s\"'$`\\]", default) else default
        out.append(f"#{name}={value}")
    return "\n".join(out) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="default: stdout")
    args = parser.parse_args(argv)
    try:
        text = convert(args.source.read_text(encoding="utf-8"))
    except SourceError as err:
        print(f"{args.source}: {err}", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
