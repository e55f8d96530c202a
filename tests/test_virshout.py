"""virsh output parsers: recorded real output parses; anything else is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from virtguests import model, observe, virshout
from virtguests.testing import fixtures_dir
from virtguests.virshout import OutputError

FIXTURES = Path(fixtures_dir())


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
            assert all(model.is_uuid(u) for u in virshout.uuids(argv, str(doc["stdout"])))
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


def _recording(stem: str) -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load((FIXTURES / f"{stem}.yaml").read_text())
    return doc


@pytest.mark.parametrize("host", ["empty", "basic", "names"])
def test_a_recorded_command_string_splits_into_the_standalone_outputs(host: str) -> None:
    """Real virsh prints ``a; echo MARK; b`` as a's output, the mark, b's output."""
    batch = _recording(f"test-batch-every-{host}")
    assert batch["argv"] == [observe.batch([*observe.EVERY, observe.MANAGED_SAVE])]
    assert (batch["exit"], batch["stderr"]) == (0, "")
    parts = virshout.batch_parts(str(batch["stdout"]), observe.BATCH_MARK)
    alone = [_recording(f"test-list-uuid-name-all-{host}"), _recording(f"test-list-uuid-{host}")]
    assert parts[:2] == [str(doc["stdout"]) for doc in alone]
    running = _recording(f"test-batch-running-{host}")
    assert running["argv"] == [observe.batch(observe.RUNNING)]
    first, persistent = virshout.batch_parts(str(running["stdout"]), observe.BATCH_MARK)
    assert first == _recording(f"test-list-uuid-name-{host}")["stdout"]
    if host == "basic":
        assert persistent == _recording("test-list-uuid-name-persistent")["stdout"]
        assert parts[2] == _recording("test-list-uuid-name-with-managed-save-all")["stdout"]


def test_recorded_qemu_command_strings_parse() -> None:
    for stem in ("qemu-batch-running-both-running", "qemu-batch-every-one-saved"):
        doc = _recording(stem)
        parts = virshout.batch_parts(str(doc["stdout"]), observe.BATCH_MARK)
        assert len(parts) == str(doc["argv"][0]).count(";") // 2 + 1  # type: ignore[index]
        assert virshout.uuid_names(["list"], parts[0])
    saved = virshout.batch_parts(str(_recording("qemu-batch-every-one-saved")["stdout"]),
                                 observe.BATCH_MARK)
    assert [g.name for g in virshout.uuid_names(["list"], saved[2])] == ["vg-fixture"]


def test_a_failed_command_inside_a_command_string_shows_only_on_stderr() -> None:
    """Why a batch with any stderr is not trusted: the exit status hides the failure."""
    doc = _recording("test-batch-failed-command")
    assert doc["exit"] == 0 and "failed to get domain" in str(doc["stderr"])
    assert virshout.batch_parts(str(doc["stdout"]), observe.BATCH_MARK)[0] == "\n"


UUIDS = st.uuids().map(str)
NAMES = st.text(min_size=1).filter(lambda n: "\n" not in n and not n.isspace())


@given(st.lists(st.tuples(UUIDS, NAMES), max_size=8, unique_by=lambda t: t[0]))
def test_every_name_but_a_newline_survives_a_listing(guests: list[tuple[str, str]]) -> None:
    """Any character libvirt allows in a name (all but a newline here) comes back whole."""
    text = "".join(f"{uuid} {name}\n" for uuid, name in guests) + "\n"
    listed = virshout.uuid_names(["list", "--uuid", "--name"], text)
    assert [(g.uuid, g.name) for g in listed] == [
        (u, n) for u, n in guests if u != virshout.ZERO_UUID]


@pytest.mark.parametrize(("stderr", "refusal"), [
    ("error: Domain is already active\n", virshout.StartRefusal.ALREADY_ACTIVE),
    ("error: failed to get domain '5a1e'\n", virshout.StartRefusal.GONE),
    ("error: failed to connect to the hypervisor\nerror: no socket\n",
     virshout.StartRefusal.UNREACHABLE),
    ("error: Failed to start domain 'g'\nerror: internal error\n", None),
])
def test_start_refusal_names_the_reasons_start_acts_on(
        stderr: str, refusal: virshout.StartRefusal | None) -> None:
    assert virshout.start_refusal(stderr) == refusal


# -- migration ------------------------------------------------------------------------


def test_host_uuid_from_recorded_capabilities() -> None:
    doc = _recording("qemu-capabilities")
    uuid = virshout.host_uuid(doc["argv"], str(doc["stdout"]))  # type: ignore[arg-type]
    assert model.is_uuid(uuid) and uuid == uuid.lower()
    assert f"<host>\n    <uuid>{uuid}</uuid>" in str(doc["stdout"])
    # the same host UUID is what libvirt names when it refuses the twin daemon
    assert uuid in str(_recording("qemu-migrate-same-host")["stderr"])


@pytest.mark.parametrize("text", [
    "", "not xml", "<capabilities><host></host></capabilities>",
    "<capabilities><host><uuid>nope</uuid></host></capabilities>",
    "<other><host><uuid>11111111-2222-3333-4444-555555555555</uuid></host></other>",
    "<capabilities><host><uuid>11111111-2222-3333-4444-555555555555</uuid>"
    "<uuid>11111111-2222-3333-4444-555555555556</uuid></host></capabilities>",
    "<capabilities><guest><uuid>11111111-2222-3333-4444-555555555555</uuid></guest>"
    "</capabilities>",
])
def test_host_uuid_refuses_what_capabilities_never_print(text: str) -> None:
    with pytest.raises(OutputError, match=r"^virsh capabilities: "):
        virshout.host_uuid(["virsh", "capabilities"], text)


def test_free_kib_from_recorded_nodememstats() -> None:
    doc = _recording("qemu-nodememstats")
    stdout = str(doc["stdout"])
    fields = {line.split(":")[0].strip(): int(line.split()[-2])
              for line in stdout.splitlines() if line}
    assert virshout.free_kib(["nodememstats"], stdout) == (
        fields["free"] + fields["buffers"] + fields["cached"])
    assert fields["total"] > virshout.free_kib(["nodememstats"], stdout) > 0


@pytest.mark.parametrize("text", [
    "", "total  :  100 KiB\nfree   :  50 KiB\n",
    "free   :  50 KiB\nbuffers:  1 KiB\ncached :  2 MiB\n",
    "free   :  50 KiB\nfree   :  50 KiB\nbuffers:  1 KiB\ncached :  2 KiB\n",
    "free   :  -5 KiB\nbuffers:  1 KiB\ncached :  2 KiB\n",
    "Id Name State\n",
])
def test_free_kib_refuses_partial_or_strange_statistics(text: str) -> None:
    with pytest.raises(OutputError, match=r"^virsh nodememstats: "):
        virshout.free_kib(["virsh", "nodememstats"], text)


@pytest.mark.parametrize("stem", ["qemu-dominfo-running", "qemu-dominfo-migrated",
                                  "qemu-dominfo-shutoff"])
def test_max_memory_from_recorded_dominfo(stem: str) -> None:
    doc = _recording(stem)
    assert virshout.max_memory_kib(doc["argv"], str(doc["stdout"])) == 512 * 1024  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "Max memory:     no limit\n",
                                  "Max memory:     512 MiB\n",
                                  "Max memory:     1 KiB\nMax memory:     2 KiB\n"])
def test_max_memory_refuses_anything_but_one_kib_line(text: str) -> None:
    with pytest.raises(OutputError, match=r"^virsh dominfo U: "):
        virshout.max_memory_kib(["virsh", "dominfo", "U"], text)


def _recorded_fraction(text: str) -> float:
    """Data processed / Data total of a recorded domjobinfo, read another way."""
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    sizes = {}
    for line in text.splitlines():
        for label in ("Data processed", "Data total"):
            if line.startswith(label + ":"):
                number, unit = line.split()[-2:]
                sizes[label] = float(number) * scale[unit]
    return sizes["Data processed"] / sizes["Data total"]


@pytest.mark.parametrize(("stem", "operation"), [
    ("qemu-domjobinfo-migrating", "Outgoing migration"), ("qemu-domjobinfo-saving", "Save")])
def test_job_percent_of_the_recorded_jobs(stem: str, operation: str) -> None:
    text = str(_recording(stem)["stdout"])
    assert f"Operation:        {operation}" in text
    percent = virshout.job_percent(text)
    assert percent is not None and abs(percent - 100 * _recorded_fraction(text)) < 1


def test_job_percent_of_no_job() -> None:
    for stem in ("qemu-domjobinfo-none", "qemu-domjobinfo-migrated"):
        assert virshout.job_percent(str(_recording(stem)["stdout"])) is None


@pytest.mark.parametrize(("lines", "percent"), [
    (["Data processed:   256.000 MiB", "Data total:       512.000 MiB"], 50),
    (["Data processed:   1.000 GiB", "Data total:       512.000 MiB"], 100),
    (["Memory processed: 3.000 KiB", "Memory total:     4.000 KiB"], 75),
    (["Data processed:   0.000 B", "Data total:       0.000 B"], None),
    (["Time elapsed:     135          ms"], None),  # a migration still setting up
])
def test_job_percent_from_processed_and_total(lines: list[str], percent: int | None) -> None:
    text = "Job type:         Unbounded   \nOperation:        Outgoing migration\n"
    assert virshout.job_percent(text + "".join(f"{ln}\n" for ln in lines)) == percent


def test_job_percent_refuses_a_size_virsh_never_prints() -> None:
    text = "Job type:         Unbounded   \nData processed:   lots\nData total:       1 B\n"
    with pytest.raises(OutputError, match="Data processed"):
        virshout.job_percent(text)


@given(st.text(max_size=400))
def test_fuzz_migration_parsers_only_raise_output_errors(text: str) -> None:
    for parse in (virshout.host_uuid, virshout.free_kib, virshout.max_memory_kib):
        try:
            value = parse(["virsh", "x"], text)
        except OutputError as err:
            assert str(err).startswith("virsh x: ")
        else:
            assert value is not None
    try:
        percent = virshout.job_percent(text)
    except OutputError:
        pass
    else:
        assert percent is None or 0 <= percent <= 100
