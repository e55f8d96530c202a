"""Every exit status virtguests returns, and what it means.

The one list: the actions and the command line use these names; the man page's EXIT
STATUS section says the same words and ``--help`` names the same codes (tests/test_cli.py
checks both).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_STOPPED = 3
EXIT_DEPENDENCY = 5
EXIT_CONFIG = 6

MEANING: dict[int, str] = {
    EXIT_OK: "Success; status: started.",
    EXIT_FAIL: "A guest or a URI failed (the guests concerned stay recorded), the run was "
               "interrupted by a signal, or an internal error (a bug: one line on stderr "
               "naming it, the traceback with -v).",
    EXIT_USAGE: "Usage error: a missing, unknown or extra command or argument, an unknown "
                "option, or an empty option value.",
    EXIT_STOPPED: "status: stopped, with or without saved guests.",
    EXIT_DEPENDENCY: "sh or PyYAML is missing or of a version virtguests does not run on "
                     "(one line names the version found and the range needed); nothing "
                     "was done (as LSB's 5, program is not installed). status, report "
                     "and reload run no virsh and read no YAML: they never check, and "
                     "work whatever is installed.",
    EXIT_CONFIG: "Invalid configuration (stop and shutdown still act first, with the "
                 "defaults).",
}
"""Each status and its meaning, as the man page's EXIT STATUS section words it."""
