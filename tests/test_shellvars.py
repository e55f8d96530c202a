"""The sysconfig reader: shell syntax admins write, and nothing ever executed."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from virtguests.shellvars import parse


def values(text: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    assignments, problems = parse(text, environ or {})
    assert problems == []
    return {a.key: a.value for a in assignments}


def test_plain_quoted_and_escaped_values() -> None:
    text = (
        "A=plain\n"
        "B='single $A \\n'\n"
        'C="double $A \\"q\\" \\$x \\\\"\n'
        "D=esc\\ aped\n"
        "E=\n"
        "F=''\n"
    )
    assert values(text) == {
        "A": "plain",
        "B": "single $A \\n",
        "C": 'double plain "q" $x \\',
        "D": "esc aped",
        "E": "",
        "F": "",
    }


def test_comments_blank_lines_export_and_several_per_line() -> None:
    text = (
        "# a comment\n"
        "\n"
        "   \t\n"
        "export URIS=default # trailing comment\n"
        "A=1 B=2; C=3\n"
        "D=x#not-a-comment\n"
    )
    assert values(text) == {"URIS": "default", "A": "1", "B": "2", "C": "3",
                            "D": "x#not-a-comment"}


def test_expansion_of_earlier_keys_and_environment() -> None:
    text = (
        'HOST=h1\n'
        'URIS="qemu+ssh://$HOST/system ${HOST}x ${UNSET:-fallback} ${HOME}"\n'
        "LATER=$NOT_YET\n"
        "NOT_YET=1\n"
    )
    got = values(text, {"HOME": "/root"})
    assert got["URIS"] == "qemu+ssh://h1/system h1x fallback /root"
    assert got["LATER"] == ""


def test_multiline_double_quotes_and_line_continuation() -> None:
    text = 'URIS="a\nb"\nX=1\\\n2\n'
    assert values(text) == {"URIS": "a\nb", "X": "12"}


def test_command_substitution_is_refused_with_its_line() -> None:
    text = "A=1\nB=$(rm -rf /)\nC=`id`\nD='$(fine)'\nrm -rf /\nE=2\n"
    assignments, problems = parse(text, {})
    assert {a.key: a.value for a in assignments} == {"A": "1", "D": "$(fine)", "E": "2"}
    assert [p.line for p in problems] == [2, 3, 5]
    assert "command substitution" in problems[0].message
    assert "commands are never run" in problems[2].message


def test_unterminated_quote_is_reported_not_raised() -> None:
    assignments, problems = parse("A='open\n", {})
    assert assignments == []
    assert problems[0].line == 1 and "unterminated" in problems[0].message


def test_assignment_lines_are_reported_where_they_start() -> None:
    assignments, _ = parse("\n\nA=\"x\ny\"\nB=1\n", {})
    assert [(a.key, a.line) for a in assignments] == [("A", 3), ("B", 5)]


safe_chars = st.text(alphabet=string.printable, max_size=200)


@given(safe_chars)
def test_fuzz_never_crashes(text: str) -> None:
    assignments, problems = parse(text, {"HOME": "/root"})
    for item in assignments:
        assert item.key.isidentifier()
    for problem in problems:
        assert problem.line >= 1 and problem.message


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_single_quoted_values_round_trip(value: str) -> None:
    quoted = "'" + value.replace("'", "'\\''") + "'"
    assignments, problems = parse(f"K={quoted}\n", {})
    assert problems == []
    assert assignments[-1].value == value
