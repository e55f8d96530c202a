"""The sysconfig reader: shell syntax admins write, and nothing ever executed."""

from __future__ import annotations

import shutil
import string
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sizes import examples
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


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"),
               max_size=40))
def test_single_quoted_values_round_trip(value: str) -> None:
    quoted = "'" + value.replace("'", "'\\''") + "'"
    assignments, problems = parse(f"K={quoted}\n", {})
    assert problems == []
    assert assignments[-1].value == value


# -- what bash reads the same way means the same (issue 10, item 6) -----------------


def test_export_of_existing_names_changes_nothing() -> None:
    assert values('URIS="a b"; export URIS\n') == {"URIS": "a b"}
    assert values("B=5\nexport A=1 B\n") == {"B": "5", "A": "1"}
    assert values("export A B\nexport\tC\n") == {}
    assert values("export A='x' B # comment\n") == {"A": "x"}


def test_export_arguments_are_expanded_before_it_assigns() -> None:
    """bash: ``export A=1 B=${A}2`` gives B=2 (A is assigned after the expansion)."""
    assert values("export A=1 B=${A}2\n") == {"A": "1", "B": "2"}
    assert values("A=1 B=${A}2\n") == {"A": "1", "B": "12"}
    assert values("A=0\nexport A=1 B=$A\n") == {"A": "1", "B": "0"}


def test_backslash_at_the_very_end_is_kept() -> None:
    assert values("A=x\\") == {"A": "x\\"}
    assert values("A=x\\\n") == {"A": "x"}


@pytest.mark.parametrize("text, why", [
    ("A=$'a\\tb'\n", "$'...'"),
    ('A=$"ab"\n', '$"..."'),
    ("A=$1\n", "special parameter $1"),
    ('A="$@"\n', "special parameter $@"),
    ("A=${#X}\n", "unsupported ${...}"),
    ("A=${X:+y}\n", "unsupported ${X:+...}"),
    ("A=${X:=y}\n", "unsupported ${X:=...}"),
    ("A=$[1+2]\n", "arithmetic"),
    ("A=~/x\n", "unquoted '~'"),
    ("A=a:~/x\n", "unquoted '~'"),
    ("A=${X:-~}\n", "unquoted '~'"),
    ("export A={a,b}\n", "brace expansion"),
    ("A=\"${X:-'a'}\"\n", "inside ${...:-...}"),
    ("A=${X:-a\\}b}\n", "inside ${...:-...}"),
    ("A=${X:-{x}y}\n", "inside ${...:-...}"),
    ("A=1;;\n", "unexpected ';'"),
    ("; A=1\n", "unexpected ';'"),
    ("A=1 ; ; B=2\n", "unexpected ';'"),
    ("A=1\0B=2\n", "NUL byte"),
    ("A='1\0'\n", "NUL byte"),
    ("A=1 export B=2\n", "unexpected text after assignment"),
    ("A=1 B\n", "unexpected text after assignment"),
    ("A=${X", "unsupported ${X...}"),
    ("export\n", "not a KEY=VALUE assignment"),
    ("export # nothing\n", "export without a name"),
    ("C=$X\\\nexport\n", "backslash-newline inside $NAME"),
    ("C=\"$X\\\nY\"\n", "backslash-newline inside $NAME"),
    ("A=$\\\nX\n", "backslash-newline inside $NAME"),
])
def test_constructs_bash_reads_differently_are_refused_with_their_line(text: str,
                                                                       why: str) -> None:
    assignments, problems = parse("OK=1\n" + text, {"X": ""})
    assert [a.key for a in assignments] == ["OK"]
    assert len(problems) == 1 and problems[0].line == 2, problems
    assert why in problems[0].message


def test_quoted_tilde_and_tilde_inside_a_word_are_plain() -> None:
    assert values("A='~' B=\"~\" C=x~ D=x=~ E=\\~\n") == {
        "A": "~", "B": "~", "C": "x~", "D": "x=~", "E": "~"}


def test_deep_nesting_is_a_problem_not_a_recursion_error() -> None:
    for depth in (33, 5000, 200_000):
        text = "A=" + "${X:-" * depth + "v" + "}" * depth + "\nB=1\n"
        assignments, problems = parse(text, {})
        assert [a.key for a in assignments] == ["B"]
        assert [p.line for p in problems] == [1] and "nested more than 32" in problems[0].message
    ok = "A=" + "${X:-" * 32 + "v" + "}" * 32 + "\n"
    assert values(ok) == {"A": "v"}


def test_refused_lines_name_their_keys_and_text() -> None:
    _, problems = parse('A=1\nexport URIS="qemu:///system $(x)" B=2\n', {})
    assert problems[0].keys == ("URIS", "B") and problems[0].text.startswith("export URIS=")
    _, problems = parse("rm -rf /\n", {})
    assert problems[0].keys == ()


def test_a_multi_line_statement_refused_skips_only_its_lines() -> None:
    assignments, problems = parse('A="x\ny" `id`\nB=2\n', {})
    assert [a.key for a in assignments] == ["B"] and problems[0].line == 2


_PIECES = ["x", ":", "~", "*", ",", "{", "}", "-", "=", "#", "$", "\\", "'", '"', " ", "\t",
           "'a b'", '"a $A b"', '"$X"', "$X", "$A", "${A}", "${B-}", "${X:-w}", "${Y-w}",
           "${Y:-~}", "${Y:-a:~}", "${Y:-'q r'}", '${Y:-"q r"}', '"${Y:-\'q\'}"', "\\ ",
           "\\\n", "$A\\\nx", "$\\\nA", '"$A\\\nB"', '"\\$X"', "$'t'", "${Y:-{x}}",
           "${Y:-}}", "'~'", "\r", "\\~"]
_WORDS = st.lists(st.sampled_from(_PIECES), max_size=4).map("".join)
_STATEMENT = st.tuples(st.sampled_from(["", "export ", "export B ", "A=1 "]),
                       st.sampled_from(["A", "B"]), _WORDS,
                       st.sampled_from(["", " B", " A=x", " # c"])).map("".join)
_TEXTS = st.lists(st.tuples(_STATEMENT, st.sampled_from(["\n", ";", " ; ", ";;", " "])),
                  max_size=4).map(lambda items: "".join(a + b for a, b in items))
_BASH = shutil.which("bash")


@pytest.mark.skipif(_BASH is None, reason="bash is not installed")
@settings(max_examples=examples(400), deadline=None)
@given(_TEXTS)
def test_what_we_accept_bash_reads_the_same(tmp_path_factory: pytest.TempPathFactory,
                                            text: str) -> None:
    """Differential: every text we read without a problem, bash sources to the same values.

    bash runs with an empty PATH in an empty directory, so nothing it could take for a
    command can run.
    """
    environ = {"X": "p q", "HOME": "/home/h"}
    assignments, problems = parse(text, environ)
    if problems:
        return
    ours: dict[str, str] = {}
    for item in assignments:
        ours[item.key] = item.value
    work = tmp_path_factory.mktemp("bash")
    (work / "f").write_text(text)
    assert _BASH is not None
    proc = subprocess.run(
        [_BASH, "--norc", "--noprofile", "-c",
         '. ./f; printf "%s\\0%s\\0%s\\0%s" "${A+set}" "$A" "${B+set}" "$B" >out'],
        env={**environ, "PATH": "/nonexistent"}, cwd=work, capture_output=True, timeout=30,
        stdin=subprocess.DEVNULL)
    assert proc.stderr == b"", (text, proc.stderr)
    a_set, a, b_set, b = (work / "out").read_bytes().decode().split("\0")
    theirs = {k: v for k, v, is_set in (("A", a, a_set), ("B", b, b_set)) if is_set}
    assert {k: v for k, v in ours.items() if k in ("A", "B")} == theirs, text


@given(st.text(max_size=400))
def test_any_text_is_read_or_refused_line_by_line(text: str) -> None:
    assignments, problems = parse(text, {"HOME": "/root", "X": "p q"})
    lines = text.count("\n") + 1
    for item in assignments:
        assert item.key.isidentifier() and 1 <= item.line <= lines
    for problem in problems:
        assert 1 <= problem.line <= lines and problem.message
