"""The one renderer: JSON for programs, aligned tables for people."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from virtguests.model import Action, Outcome
from virtguests.render import FORMAT_VERSION, json_document, json_text, table


def test_json_is_indented_sorted_and_ends_with_a_newline() -> None:
    assert json_text({"b": 1, "a": [None, "x"]}) == (
        '{\n  "a": [\n    null,\n    "x"\n  ],\n  "b": 1\n}\n')


def test_a_table_pads_every_column_but_the_last() -> None:
    assert table([("GUEST", "URI", "SECONDS"), ("web", "qemu:///system", "1.0")],
                 indent="  ") == ["  GUEST  URI             SECONDS",
                                  "  web    qemu:///system  1.0"]


def test_an_empty_last_cell_leaves_no_trailing_blanks() -> None:
    assert table([("A", "B"), ("long", "")]) == ["A     B", "long"]


cells = st.text(alphabet=st.characters(blacklist_categories=["Cc", "Zl", "Zp"]), max_size=6)


@given(st.integers(1, 4).flatmap(lambda width: st.lists(
    st.lists(cells, min_size=width, max_size=width), min_size=1, max_size=5)))
def test_every_cell_starts_where_its_column_starts(rows: list[list[str]]) -> None:
    lines = table(rows)
    assert len(lines) == len(rows)
    start = 0
    for column in range(len(rows[0])):
        for row, line in zip(rows, lines):
            assert line[start:].startswith(row[column].rstrip()) or not row[column].strip()
        if column < len(rows[0]) - 1:
            start += max(len(row[column]) for row in rows) + 2


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))
def test_json_reads_back_as_written(document: object) -> None:
    assert json.loads(json_text(document)) == document


def test_a_json_document_carries_its_format_version_and_words_as_their_values() -> None:
    body = {"actions": [Action.SUSPEND], "outcome": Outcome.SHUT_OFF}
    assert json.loads(json_document(body)) == {
        "format_version": 1, "actions": ["suspend"], "outcome": "shut off"}
    assert FORMAT_VERSION == 1 and set(body) == {"actions", "outcome"}, "body unchanged"
