"""Read shell-style ``KEY=VALUE`` files without executing them.

The reference service *sources* its configuration as root.  We accept the
subset of shell that admins actually write in such files (quotes, escapes,
comments, ``export``, ``$VAR``/``${VAR}`` expansion) and reject anything that
would run a command, with the line number, so a hostile or broken file can
never execute code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD_END = frozenset(" \t\n;&|<>()")


@dataclass(frozen=True)
class Assignment:
    key: str
    value: str
    line: int


@dataclass(frozen=True)
class SyntaxProblem:
    line: int
    message: str


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
        while not self.at_end() and self.peek() != "\n":
            self.take()


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
        start_line = reader.line
        try:
            for key, value in _statement(reader, scope, environ):
                scope[key] = value
                assignments.append(Assignment(key, value, start_line))
        except _Error as err:
            problems.append(SyntaxProblem(err.line, err.message))
            reader.skip_to_line_end()
            if not reader.at_end():
                reader.take()
    return assignments, problems


def _skip_blanks(reader: _Reader) -> None:
    while reader.peek() in (" ", "\t") and reader.peek():
        reader.take()
    while reader.peek() == "\\" and reader.peek(1) == "\n":
        reader.take()
        reader.take()
        while reader.peek() in (" ", "\t") and reader.peek():
            reader.take()


def _statement(
    reader: _Reader, scope: Mapping[str, str], environ: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Read one line's worth of ``[export] KEY=VALUE ...`` assignments."""
    found: list[tuple[str, str]] = []
    local = dict(scope)
    first = True
    while True:
        _skip_blanks(reader)
        ch = reader.peek()
        if ch in ("", "\n"):
            if ch:
                reader.take()
            return found
        if ch == "#":
            reader.skip_to_line_end()
            continue
        if ch == ";":
            reader.take()
            first = True
            continue
        line = reader.line
        match = _NAME.match(reader.text, reader.pos)
        if match is None:
            raise _Error(line, f"not a KEY=VALUE assignment: {_rest_of_line(reader)!r}")
        name = match.group(0)
        after = match.end()
        if first and name == "export" and reader.text[after : after + 1] in (" ", "\t"):
            reader.pos = after
            first = False
            continue
        if reader.text[after : after + 1] != "=":
            if first:
                raise _Error(
                    line,
                    f"not a KEY=VALUE assignment (commands are never run): "
                    f"{_rest_of_line(reader)!r}",
                )
            raise _Error(line, f"unexpected text after assignment: {_rest_of_line(reader)!r}")
        reader.pos = after + 1
        value = _word(reader, local, environ)
        local[name] = value
        found.append((name, value))
        first = False
        nxt = reader.peek()
        if nxt not in ("", "\n", " ", "\t", ";", "#"):
            raise _Error(reader.line, f"unexpected {nxt!r} after the value of {name}")


def _rest_of_line(reader: _Reader) -> str:
    end = reader.text.find("\n", reader.pos)
    return reader.text[reader.pos : end if end >= 0 else len(reader.text)].strip()


def _word(reader: _Reader, scope: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """Read one shell word (the value), concatenating quoted and bare parts."""
    parts: list[str] = []
    while True:
        ch = reader.peek()
        if ch == "" or ch in _WORD_END:
            if ch in ("(", ")", "<", ">", "&", "|"):
                raise _Error(reader.line, f"unsupported shell syntax {ch!r} in value")
            return "".join(parts)
        if ch == "'":
            parts.append(_single_quoted(reader))
        elif ch == '"':
            parts.append(_double_quoted(reader, scope, environ))
        elif ch == "\\":
            reader.take()
            nxt = reader.peek()
            if nxt == "":
                return "".join(parts)
            reader.take()
            if nxt != "\n":
                parts.append(nxt)
        elif ch == "$":
            parts.append(_expansion(reader, scope, environ))
        elif ch == "`":
            raise _Error(reader.line, "command substitution (`...`) is not allowed")
        else:
            parts.append(reader.take())


def _single_quoted(reader: _Reader) -> str:
    line = reader.line
    reader.take()
    out: list[str] = []
    while True:
        if reader.at_end():
            raise _Error(line, "unterminated single quote")
        ch = reader.take()
        if ch == "'":
            return "".join(out)
        out.append(ch)


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
            out.append(_expansion(reader, scope, environ))
        elif ch == "`":
            raise _Error(reader.line, "command substitution (`...`) is not allowed")
        else:
            out.append(reader.take())


def _lookup(name: str, scope: Mapping[str, str], environ: Mapping[str, str]) -> str | None:
    if name in scope:
        return scope[name]
    return environ.get(name)


def _expansion(reader: _Reader, scope: Mapping[str, str], environ: Mapping[str, str]) -> str:
    line = reader.line
    reader.take()
    ch = reader.peek()
    if ch == "(":
        raise _Error(line, "command substitution $(...) is not allowed")
    if ch == "{":
        reader.take()
        match = _NAME.match(reader.text, reader.pos)
        if match is None:
            raise _Error(line, "unsupported ${...} expansion")
        name = match.group(0)
        reader.pos = match.end()
        if reader.peek() == "}":
            reader.take()
            return _lookup(name, scope, environ) or ""
        op = reader.take() if reader.peek() != ":" else reader.take() + reader.take()
        if op not in ("-", ":-"):
            raise _Error(line, f"unsupported ${{{name}{op}...}} expansion")
        default = _braced_default(reader, scope, environ, line)
        value = _lookup(name, scope, environ)
        if value is None or (op == ":-" and value == ""):
            return default
        return value
    match = _NAME.match(reader.text, reader.pos)
    if match is None:
        return "$"
    reader.pos = match.end()
    return _lookup(match.group(0), scope, environ) or ""


def _braced_default(
    reader: _Reader, scope: Mapping[str, str], environ: Mapping[str, str], line: int
) -> str:
    out: list[str] = []
    while True:
        if reader.at_end():
            raise _Error(line, "unterminated ${...}")
        ch = reader.peek()
        if ch == "}":
            reader.take()
            return "".join(out)
        if ch == "$":
            out.append(_expansion(reader, scope, environ))
        elif ch == "`":
            raise _Error(reader.line, "command substitution (`...`) is not allowed")
        elif ch == "'":
            out.append(_single_quoted(reader))
        elif ch == '"':
            out.append(_double_quoted(reader, scope, environ))
        else:
            out.append(reader.take())
