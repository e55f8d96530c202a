"""The fake's command line: global options, one command or a command string, its options."""

from __future__ import annotations

from virtguests.testing.fakevirsh.errors import Unsupported
from virtguests.testing.fakevirsh.process import CallerProcess

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms per call
if TYPE_CHECKING:
    from typing import NoReturn, Optional

BY_ID_UUID_NAME = ("id", "uuid", "name")
COMMANDS: dict[str, tuple[set[str], tuple[str, ...]]] = {
    "event": ({"loop", "timestamp"}, ()),
    "connect": (set(), ()),
    "uri": (set(), ()),
    "list": (
        {
            "all",
            "inactive",
            "uuid",
            "name",
            "table",
            "persistent",
            "transient",
            "with-managed-save",
            "without-managed-save",
            "state-running",
            "state-paused",
            "state-shutoff",
        },
        (),
    ),
    "domname": (set(), ("id", "uuid")),
    "domid": (set(), ("uuid", "name")),
    "domuuid": (set(), ("id", "name")),
    "domstate": ({"reason"}, BY_ID_UUID_NAME),
    "managedsave": ({"bypass-cache"}, BY_ID_UUID_NAME),
    "managedsave-remove": (set(), BY_ID_UUID_NAME),
    "domjobinfo": (set(), BY_ID_UUID_NAME),
    "shutdown": (set(), BY_ID_UUID_NAME),
    "destroy": (set(), BY_ID_UUID_NAME),
    "start": ({"bypass-cache"}, ("uuid", "name")),
    "domtime": ({"sync"}, BY_ID_UUID_NAME),
    "dominfo": (set(), BY_ID_UUID_NAME),
    "domjobabort": (set(), BY_ID_UUID_NAME),
    "nodememstats": (set(), ()),
    "capabilities": (set(), ()),
    "migrate": (
        {
            "live", "offline", "p2p", "direct", "tunnelled", "persistent", "undefinesource",
            "suspend", "copy-storage-all", "copy-storage-inc", "change-protection", "unsafe",
            "verbose", "compressed", "auto-converge", "abort-on-error", "postcopy", "tls",
            "parallel",
        },
        BY_ID_UUID_NAME,
    ),
}
"""Each simulated command: its boolean options, and how its domain argument is looked up
(by id if numeric, then by UUID, then by name; only the kinds listed, in that order).
A command with no lookup takes no domain."""
VALUE_OPTIONS = {"migrate": {"migrateuri", "listen-address", "bandwidth", "comp-methods",
                             "parallel-connections", "desturi"}}
"""Options that take a value, per command (``--desturi`` is migrate's second argument)."""


def split_commands(text: str) -> list[list[str]]:
    """A virsh command string (``"list --uuid; echo x"``) as one argv per command.

    Like virsh's own parser: blanks separate words, ``;`` separates commands,
    single or double quotes group a word, a backslash outside single quotes takes
    the next character as it is.
    """
    commands: list[list[str]] = [[]]
    word: Optional[str] = None
    quote = ""
    chars = iter(text)
    for char in chars:
        if char == "\\" and quote != "'":
            escaped = next(chars, None)
            if escaped is None:
                raise Unsupported(f"dangling \\ in command string {text!r}")
            word = (word or "") + escaped
        elif quote:
            if char == quote:
                quote = ""
            else:
                word = (word or "") + char
        elif char in "'\"":
            quote, word = char, word or ""
        elif char.isspace() or char == ";":
            if word is not None:
                commands[-1].append(word)
                word = None
            if char == ";":
                commands.append([])
        else:
            word = (word or "") + char
    if quote:
        raise Unsupported(f"unterminated quote in command string {text!r}")
    if word is not None:
        commands[-1].append(word)
    return [command for command in commands if command]


class VirshCall:
    """One virsh call (one process): its argv, parsed (global options, then a command or a
    command string), the process it runs in, and the fault rules it has counted."""

    def __init__(self, argv: list[str], process: Optional[CallerProcess] = None, *,
                 counted_rules: Optional[set[int]] = None) -> None:
        self.argv = argv
        self.process = CallerProcess() if process is None else process
        self.counted_rules: set[int] = set() if counted_rules is None else counted_rules
        """Fault rules this call has counted already: each counts a call once, however
        many of its commands (a command string, a retry after a lock wait) match."""
        self.uri_arg: Optional[str] = None
        self.quiet = False
        self.version = False
        self.command = ""
        self.options: set[str] = set()
        self.domain: Optional[str] = None
        self.values: dict[str, str] = {}
        """Options with a value (``VALUE_OPTIONS``), e.g. migrate's ``desturi``."""
        self.words: list[str] = []
        self.script: list[VirshCall] = []
        """Set when the command is a command string: each of its commands."""
        self.interactive = False
        self._parse()

    @property
    def lookup(self) -> tuple[str, ...]:
        """How this command looks up its domain (empty: it takes none)."""
        known = COMMANDS.get(self.command)
        return known[1] if known else ()

    def unsupported(self, why: str) -> NoReturn:
        raise Unsupported(f"{why}; argv={self.argv!r}")

    def _parse(self) -> None:
        args = list(self.argv)
        while args and args[0].startswith("-"):
            arg = args.pop(0)
            if arg in ("-c", "--connect"):
                if not args:
                    self.unsupported(f"{arg} needs a URI")
                self.uri_arg = args.pop(0)
            elif arg.startswith("--connect="):
                self.uri_arg = arg.split("=", 1)[1]
            elif arg in ("-q", "--quiet"):
                self.quiet = True
            elif arg in ("-r", "--readonly"):
                pass
            elif arg == "--version":
                self.version = True
            else:
                self.unsupported(f"unsupported global option {arg!r}")
        if self.version:
            if args:
                self.unsupported("--version takes no command")
            return
        if not args:
            self.interactive = True  # commands on stdin: fakevirsh.interactive
            return
        if len(args) == 1 and (";" in args[0] or any(char.isspace() for char in args[0])):
            global_options = self.argv[: len(self.argv) - 1]
            self.script = [VirshCall(global_options + argv, self.process,
                                     counted_rules=self.counted_rules)
                           for argv in split_commands(args[0])]
            if not self.script:
                self.unsupported("empty command string")
            return
        self.command = args.pop(0)
        if self.command == "echo":
            self.words = args
            return
        if self.command not in COMMANDS:
            self.unsupported(f"unsupported command {self.command!r}")
        allowed, lookup = COMMANDS[self.command]
        valued = VALUE_OPTIONS.get(self.command, set())
        while args:
            arg = args.pop(0)
            if arg == "--event" and self.command == "event":
                if not args or args[0] != "lifecycle":
                    self.unsupported("only '--event lifecycle' is simulated")
                self.options.add(args.pop(0))
                continue
            if arg == "--domain" and lookup:
                if not args:
                    self.unsupported("--domain needs a value")
                arg = args.pop(0)
                if self.domain is not None:
                    self.unsupported("more than one domain")
                self.domain = arg
            elif arg.startswith("--") and arg[2:] in allowed:
                self.options.add(arg[2:])
            elif arg.startswith("--") and arg[2:].split("=", 1)[0] in valued:
                name, sep, value = arg[2:].partition("=")
                if not sep:
                    if not args:
                        self.unsupported(f"{arg} needs a value")
                    value = args.pop(0)
                if name in self.values:
                    self.unsupported(f"{arg} given twice")
                self.values[name] = value
            elif arg.startswith("-"):
                self.unsupported(f"unsupported option {arg!r} for {self.command}")
            elif lookup and self.domain is None:
                self.domain = arg
            elif "desturi" in valued and "desturi" not in self.values:
                self.values["desturi"] = arg
            else:
                self.unsupported(f"unexpected argument {arg!r} for {self.command}")
        if self.command == "event" and self.options != {"loop", "lifecycle"}:
            self.unsupported("only 'event --loop --event lifecycle' is simulated "
                             "(real virsh refuses --all with --event)")
        if self.command == "domtime" and "sync" not in self.options:
            self.unsupported("only 'domtime --sync' is simulated")
        if self.command == "migrate" and "desturi" not in self.values:
            self.unsupported("migrate needs a destination URI")
