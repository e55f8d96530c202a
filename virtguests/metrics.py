"""The metrics file (``METRICS_FILE``): the last stop or start, for Prometheus.

Written after each ``stop`` and ``start`` in node_exporter's textfile format
(text exposition format 0.0.4), atomically (``state.write_atomic``: a temp file in the
same directory, whose name does not end in ``.prom``, fsync, rename), so the collector
never reads half a file.  It is how a failed resume, which the unit's ``ExecStart=-``
hides from ``systemctl --failed``, still reaches monitoring.

Labels carry only the command, URIs and outcome words: never a guest's name (a tenant
chooses it, and one series per guest is not what a host's alert needs).  URIs come from
the config and the records; their label values are escaped as the format asks.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from virtguests import files, state
from virtguests.model import Outcome

PREFIX = "virtguests_"
URI_LABEL = "uri"
"""The label of a URI (a name, not virsh's ``uri`` command)."""

METRICS = (
    ("last_run_timestamp_seconds", "When the last stop or start run ended (Unix time)."),
    ("last_run_exit_status", "The exit status of the last stop or start run (0 success, "
                             "1 a guest or URI failed, 6 bad config)."),
    ("last_run_duration_seconds", "How long the last stop or start run took."),
    ("last_run_guests", "Guests of the last stop or start run per URI and outcome (the "
                        "outcome of each guest's last step; 0 for outcomes no guest had)."),
    ("last_run_virsh_processes", "virsh processes the last stop or start run started per "
                                 "URI."),
    ("last_run_virsh_connections", "Connections to libvirtd those virsh processes opened "
                                   "per URI (for a remote URI, one ssh handshake each)."),
)


def label_value(text: str) -> str:
    """A label value as the exposition format escapes it: backslash, double quote, line
    feed; a character that cannot be UTF-8 (an undecodable byte) becomes ``?``."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{key}="{label_value(value)}"' for key, value in pairs) + "}"


def text(command: str, status: int, started: float, finished: float, uris: Iterable[str],
         outcomes: Iterable[tuple[str, Outcome]],
         virsh: Sequence[Mapping[str, Any]] = ()) -> str:
    """The file's content: every metric with its HELP and TYPE; *outcomes* is each
    guest's (URI, outcome), *virsh* each URI's ``processes`` and ``connections`` (as in
    the run report); every URI in *uris*, *outcomes* or *virsh* gets a count for every
    outcome word and its processes and connections (0 when none)."""
    counts: dict[tuple[str, str], int] = {}
    for uri, outcome in outcomes:
        counts[(uri, str(outcome))] = counts.get((uri, str(outcome)), 0) + 1
    started_on = {str(entry["uri"]): entry for entry in virsh}
    every_uri = list(dict.fromkeys([*uris, *(uri for uri, _ in counts), *started_on]))
    run: tuple[tuple[str, str], ...] = (("command", command),)
    values: dict[str, list[tuple[tuple[tuple[str, str], ...], str]]] = {
        "last_run_timestamp_seconds": [(run, f"{finished:.3f}")],
        "last_run_exit_status": [(run, str(status))],
        "last_run_duration_seconds": [(run, f"{max(finished - started, 0.0):.3f}")],
        "last_run_guests": [((*run, (URI_LABEL, uri), ("outcome", str(word))),
                             str(counts.get((uri, str(word)), 0)))
                            for uri in every_uri for word in Outcome],
        **{f"last_run_virsh_{key}": [((*run, (URI_LABEL, uri)),
                                      str(int(started_on.get(uri, {}).get(key, 0))))
                                     for uri in every_uri]
           for key in ("processes", "connections")},
    }
    lines = []
    for name, help_text in METRICS:
        lines += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} gauge"]
        lines += [f"{PREFIX}{name}{_labels(labels)} {value}" for labels, value in values[name]]
    return "\n".join(lines) + "\n"


def write(path: Path, content: str) -> None:
    """Replace *path* with *content* atomically; OSError (its message names why) when
    the directory is missing or something other than a regular file is at *path* (a
    FIFO, a symbolic link, a directory: refused, as ``files`` refuses them)."""
    if not path.parent.is_dir():
        raise OSError(f"{path.parent}: no such directory")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISREG(mode):
            raise OSError(f"{path}: {files.kind(mode)}, not a regular file: refused")
    state.write_atomic(path, content.encode("utf-8"))
