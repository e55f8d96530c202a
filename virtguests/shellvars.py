"""Read shell-style ``KEY=VALUE`` files without executing them.

The reference service *sources* its configuration as root.  We accept the
subset of shell that admins actually write in such files (quotes, escapes,
comments, ``export``, ``$VAR``/``${VAR}``/``${VAR:-default}`` expansion) and
reject anything that would run a command, with the line number, so a hostile
or broken file can never execute code.

What we accept must mean what bash makes of it: a construct bash reads
differently from a plain reading (``$'...'``, ``$1``, an unquoted ``~``,
brace expansion in ``export``, a stray ``;``, a NUL byte ...) is refused with
its line rather than guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_END = frozenset(" \t\n;&|<>()")
_SPECIAL = frozenset("0123456789@*#?-$!")
_ASSIGNED = re.compile(r"(?:^|[\s;])(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=")

MAX_NESTING = 32
"""``${A:-${B:-...}}`` deeper than this is refused (a real file nests one or two)."""


@dataclass(frozen=True)
class Assignment:
    key: str
    value: str
    line: int


@dataclass(frozen=True)
class SyntaxProblem:
    line: int
    message: str
    keys: tuple[str, ...] = ()
    """The names the refused line seems to assign (best effort, from its raw text)."""
    text: str = ""
    """The raw text of the refused line."""


class _Overlay(Mapping[str, str]):
    """The names assigned so far on this line over those of the file before it."""

    def __init__(self, top: Mapping[str, str], base: Mapping[str, str]) -> None:
        self.top = top
        self.base = base

    def __getitem__(self, key: str) -> str:
        return self.top[key] if key in self.top else self.base[key]

    def __contains__(self, key: object) -> bool:
        return key in self.top or key in self.base

    def __iter__(self) -> Iterator[str]:
        yield from self.top
        yield from (k for k in self.base if k not in self.top)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Error(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Reader:
    """Cursor over the file text that knows the current line number."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.depth = 0

    def peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.text[i] if i < len(self.text) else ""

    def take(self) -> str:
        ch = self.text[self.pos]
        self.pos += 1
        if ch == "\n":
            self.line += 1
        return ch

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_to_line_end(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end


def parse(text: str, environ: Mapping[str, str]) -> tuple[list[Assignment], list[SyntaxProblem]]:
    """Return the assignments of *text* in order, and the lines we refused.

    Expansion sees keys assigned earlier in the file first, then *environ*
    (as a sourced file would).  A refused line is skipped whole; the rest of
    the file is still read, so one typo never hides the other settings.
    """
    reader = _Reader(text)
    scope: dict[str, str] = {}
    assignments: list[Assignment] = []
    problems: list[SyntaxProblem] = []
    while not reader.at_end():
        start_line, start_pos = reader.line, reader.pos
        try:
            for key, value in _statement(reader, scope, environ):
                scope[key] = value
                assignments.append(Assignment(key, value, start_line))
        except _Error as err:
            raw = _raw_line(text, start_pos, err.line, start_line)
            problems.append(SyntaxProblem(err.line, err.message,
                                          tuple(dict.fromkeys(_ASSIGNED.findall(raw))), raw))
            reader.depth = 0
            reader.pos = start_pos
            reader.line = start_line
            # Skip to the end of the line the error was found on, and of the lines a
            # trailing backslash continues it on.
            while reader.line < err.line and not reader.at_end():
                reader.take()
            reader.skip_to_line_end()
            while reader.pos > 0 and reader.text[reader.pos - 1] == "\\" \
                    and not reader.at_end():
                reader.take()
                reader.skip_to_line_end()
            if not reader.at_end():
                reader.take()
    return assignments, problems


def _raw_line(text: str, start: int, error_line: int, start_line: int) -> str:
    """The text of the refused statement, from where it started to the error's line end."""
    end = start
    for _ in range(error_line - start_line + 1):
        nxt = text.find("\n", end)
        if nxt < 0:
            return text[start:]
        end = nxt + 1
    return text[start:end].rstrip("\n")


def _skip_blanks(reader: _Reader) -> None:
    while True:
        ch = reader.peek()
        if ch in (" ", "\t") and ch:
            reader.take()
        elif ch == "\\" and reader.peek(1) == "\n":
            reader.take()
            reader.take()
        else:
            return


def _statement(
    reader: _Reader, scope: Mapping[str, str], environ: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Read one line's worth of ``[export] KEY[=VALUE] ...`` assignments.

    Plain assignments on one line are made left to right (``A=1 B=$A`` gives
    B=1); the arguments of ``export`` are all expanded before it runs
    (``export A=1 B=$A`` gives B the *earlier* A), and a bare name after
    ``export`` changes no value.
    """
    found: list[tuple[str, str]] = []
    local: dict[str, str] = {}
    sequential = _Overlay(local, scope)
    before_export = sequential
    first = True
    exporting = False
    empty = True
    named = False
    while True:
        _skip_blanks(reader)
        ch = reader.peek()
        if ch in ("", "\n", "#", ";") and exporting and not named:
            raise _Error(reader.line, "export without a name (it would print the "
                                      "environment)")
        if ch in ("", "\n"):
            if ch:
                reader.take()
            return found
        if ch == "#":
            reader.skip_to_line_end()
            continue
        if ch == ";":
            if empty:
                raise _Error(reader.line, "unexpected ';' (bash refuses an empty command)")
            reader.take()
            first, exporting, empty, named = True, False, True, False
            continue
        if ch == "\0":
            raise _Error(reader.line, "NUL byte in the file (bash would cut the line here)")
        line = reader.line
        match = _NAME.match(reader.text, reader.pos)
        if match is None:
            raise _Error(line, f"not a KEY=VALUE assignment: {_rest_of_line(reader)!r}")
        name = match.group(0)
        after = match.end()
        follow = reader.text[after : after + 1]
        if first and name == "export" and follow in (" ", "\t", "\\"):
            reader.pos = after
            first, exporting, empty = False, True, False
            before_export = _Overlay(dict(local), scope)
            continue
        if follow != "=":
            if exporting and follow in ("", "\n", " ", "\t", ";"):
                reader.pos = after  # `export NAME`: marks it for export, changes nothing
                named = True
                continue
            if first:
                raise _Error(
                    line,
                    f"not a KEY=VALUE assignment (commands are never run): "
                    f"{_rest_of_line(reader)!r}",
                )
            raise _Error(line, f"unexpected text after assignment: {_rest_of_line(reader)!r}")
        reader.pos = after + 1
        value = _word(reader, before_export if exporting else sequential, environ, exporting)
        local[name] = value
        found.append((name, value))
        first, empty, named = False, False, True
        nxt = reader.peek()
        if nxt not in ("", "\n", " ", "\t", ";", "#"):
            raise _Error(reader.line, f"unexpected {nxt!r} after the value of {name}")


def _rest_of_line(reader: _Reader) -> str:
    end = reader.text.find("\n", reader.pos)
    return reader.text[reader.pos : end if end >= 0 else len(reader.text)].strip()


def _tilde(reader: _Reader, at_word_start: bool) -> None:
    if reader.peek() == "~" and at_word_start:
        raise _Error(reader.line, "unquoted '~' (bash would expand it to a home directory); "
                                  "quote it or write the path")


def _word(reader: _Reader, scope: Mapping[str, str], environ: Mapping[str, str],
          exporting: bool = False) -> str:
    """Read one shell word (the value), concatenating quoted and bare parts."""
    parts: list[str] = []
    tilde_here = True
    while True:
        ch = reader.peek()
        if ch == "" or ch in _WORD_END:
            if ch in ("(", ")", "<", ">", "&", "|"):
                raise _Error(reader.line, f"unsupported shell syntax {ch!r} in value")
            return "".join(parts)
        _tilde(reader, tilde_here)
        tilde_here = ch == ":"
        if ch == "'":
            parts.append(_single_quoted(reader))
        elif ch == '"':
            parts.append(_double_quoted(reader, scope, environ))
        elif ch == "\\":
            reader.take()
            nxt = reader.peek()
            if nxt == "":
                parts.append("\\")  # bash keeps a backslash at the very end of the file
                continue
            reader.take()
            if nxt != "\n":
                parts.append(nxt)
        elif ch == "$":
            parts.append(_expansion(reader, scope, environ, quoted=False))
        elif ch == "`":
            raise _Error(reader.line, "command substitution (`...`) is not allowed")
        elif ch == "\0":
            raise _Error(reader.line, "NUL byte in the file (bash would cut the line here)")
        elif ch in "{}" and exporting:
            raise _Error(reader.line, f"unquoted {ch!r} in an export argument (bash would "
                                      "apply brace expansion); quote the value")
        else:
            parts.append(reader.take())


def _single_quoted(reader: _Reader) -> str:
    line = reader.line
    reader.take()
    end = reader.text.find("'", reader.pos)
    if end < 0:
        raise _Error(line, "unterminated single quote")
    out = reader.text[reader.pos : end]
    if "\0" in out:
        raise _Error(line, "NUL byte in the file (bash would cut the line here)")
    reader.line += out.count("\n")
    reader.pos = end + 1
    return out


def _double_quoted(
    reader: _Reader, scope: Mapping[str, str], environ: Mapping[str, str]
) -> str:
    line = reader.line
    reader.take()
    out: list[str] = []
    while True:
        if reader.at_end():
            raise _Error(line, "unterminated double quote")
        ch = reader.peek()
        if ch == '"':
            reader.take()
            return "".join(out)
        if ch == "\\":
            reader.take()
            nxt = reader.peek()
            if nxt in ("$", "`", '"', "\\"):
                out.append(reader.take())
            elif nxt == "\n":
                reader.take()
            else:
                out.append("\\")
        elif ch == "$":
            out.append(_expansion(reader, scope, environ, quoted=True))
        elif ch == "`":
            raise _Error(reader.line, "command substitution (`...`) is not allowed")
        elif ch == "\0":
            raise _Error(reader.line, "NUL byte in the file (bash would cut the line here)")
        else:
            out.append(reader.take())


def _lookup(name: str, scope: Mapping[str, str], environ: Mapping[str, str]) -> str | None:
    if name in scope:
        return scope[name]
    return environ.get(name)


def _expansion(reader: _Reader, scope: Mapping[str, str], environ: Mapping[str, str],
               *, quoted: bool) -> str:
    line = reader.line
    reader.take()
    ch = reader.peek()
    if ch == "(":
        raise _Error(line, "command substitution $(...) is not allowed")
    if ch == "[":
        raise _Error(line, "arithmetic $[...] is not supported")
    if ch in ("'", '"') and not quoted:
        raise _Error(line, f"${ch}...{ch} quoting is not supported (bash translates it); "
                           "use plain quotes")
    if ch and ch in _SPECIAL:
        raise _Error(line, f"special parameter ${ch} is not supported (it has no meaning "
                           "in a config file)")
    if ch == "{":
        reader.take()
        reader.depth += 1
        if reader.depth > MAX_NESTING:
            raise _Error(line, f"${{...}} nested more than {MAX_NESTING} deep")
        try:
            return _braced(reader, scope, environ, line, quoted=quoted)
        finally:
            reader.depth -= 1
    if ch == "\\" and reader.peek(1) == "\n":
        raise _Error(line, _JOINED)
    match = _NAME.match(reader.text, reader.pos)
    if match is None:
        return "$"
    reader.pos = match.end()
    if reader.peek() == "\\" and reader.peek(1) == "\n" and _NAME.match(reader.text,
                                                                     reader.pos + 2):
        raise _Error(line, _JOINED)
    return _lookup(match.group(0), scope, environ) or ""


_JOINED = ("a backslash-newline inside $NAME (bash joins the two lines before it reads "
           "the name, so it would name another variable); write the name on one line")


def _braced(reader: _Reader, scope: Mapping[str, str], environ: Mapping[str, str],
            line: int, *, quoted: bool) -> str:
    match = _NAME.match(reader.text, reader.pos)
    if match is None:
        raise _Error(line, "unsupported ${...} expansion")
    name = match.group(0)
    reader.pos = match.end()
    if reader.peek() == "}":
        reader.take()
        return _lookup(name, scope, environ) or ""
    op = reader.peek()
    if op == ":":
        op += reader.peek(1)
    if op not in ("-", ":-"):
        raise _Error(line, f"unsupported ${{{name}{op}...}} expansion "
                           "(allowed: ${NAME}, ${NAME-word}, ${NAME:-word})")
    reader.pos += len(op)
    default = _braced_default(reader, scope, environ, line, quoted=quoted)
    value = _lookup(name, scope, environ)
    if value is None or (op == ":-" and value == ""):
        return default
    return value


def _braced_default(
    reader: _Reader, scope: Mapping[str, str], environ: Mapping[str, str], line: int,
    *, quoted: bool,
) -> str:
    out: list[str] = []
    tilde_here = not quoted
    while True:
        if reader.at_end():
            raise _Error(line, "unterminated ${...}")
        ch = reader.peek()
        if not quoted:
            _tilde(reader, tilde_here)
            tilde_here = ch == ":"
        if ch == "}":
            reader.take()
            return "".join(out)
        if ch == "$":
            out.append(_expansion(reader, scope, environ, quoted=quoted))
        elif ch == "`":
            raise _Error(reader.line, "command substitution (`...`) is not allowed")
        elif ch == "'" and not quoted:
            out.append(_single_quoted(reader))
        elif ch == '"':
            out.append(_double_quoted(reader, scope, environ))
        elif ch in ("'", "\\", "{", "\0"):
            raise _Error(reader.line, f"{ch!r} inside ${{...:-...}} is not supported (bash "
                                      "reads it in ways that depend on the quoting); "
                                      "simplify the default")
        else:
            out.append(reader.take())
