"""virsh output parsers: recorded real output parses; anything else is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from virtguests import virshout
from virtguests.virshout import OutputError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def recordings(prefix: str) -> list[dict[str, object]]:
    out = []
    for path in sorted(FIXTURES.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc["exit"] == 0 and doc["argv"][:1] == [prefix]:
            out.append(doc)
    return out


def test_every_recorded_uuid_name_listing_parses() -> None:
    seen = 0
    for doc in recordings("list"):
        argv = doc["argv"]
        assert isinstance(argv, list)
        if "--uuid" in argv and "--name" in argv and "--table" not in argv:
            listed = virshout.uuid_names(argv, str(doc["stdout"]))
            subjects = {s["uuid"]: s["name"] for s in doc.get("subjects") or []}  # type: ignore[attr-defined]
            for item in listed:
                if item.uuid in subjects:
                    assert subjects[item.uuid] == item.name
            seen += 1
    assert seen >= 5


def test_every_recorded_uuid_listing_parses() -> None:
    seen = 0
    for doc in recordings("list"):
        argv = doc["argv"]
        assert isinstance(argv, list)
        if "--uuid" in argv and "--name" not in argv:
            assert all(virshout.is_uuid(u) for u in virshout.uuids(argv, str(doc["stdout"])))
            seen += 1
    assert seen >= 2


def test_names_with_spaces_keep_them() -> None:
    text = "6695eb01-f6a4-8304-79aa-97f2502e193f a b  c\n\n"
    assert virshout.uuid_names(["list"], text)[0].name == "a b  c"


def test_domain0_is_dropped() -> None:
    text = "00000000-0000-0000-0000-000000000000 Domain-0\n"
    assert virshout.uuid_names(["list"], text) == []
    assert virshout.uuids(["list"], "00000000-0000-0000-0000-000000000000\n") == []


@pytest.mark.parametrize("text", ["Id Name State\n", "not-a-uuid web\n",
                                  "6695eb01-f6a4-8304-79aa-97f2502e193f\n"])
def test_garbage_names_the_command(text: str) -> None:
    with pytest.raises(OutputError) as err:
        virshout.uuid_names(["virsh", "list", "--uuid", "--name"], text)
    assert "virsh list --uuid --name: unexpected output line 1" in str(err.value)


def test_data_processed() -> None:
    text = "Job type:         Unbounded\nData processed:   1.250 GiB\nData remaining:   2 GiB\n"
    assert virshout.data_processed(text) == "1.250 GiB"
    assert virshout.data_processed("Job type:         None\n") is None


@given(st.text(max_size=400))
def test_fuzz_parsers_only_raise_output_errors(text: str) -> None:
    for parse in (virshout.uuid_names, virshout.uuids):
        try:
            parse(["virsh", "list"], text)
        except OutputError as err:
            assert str(err).startswith("virsh list: ")
    virshout.data_processed(text)
    virshout.table_without_domain0(text)
