"""METRICS_FILE: the node_exporter textfile after each stop and start.

Parsed twice: by ``prometheus_client``'s parser (the Python client's reading of the text
exposition format 0.0.4; a test dependency: promtool comes only with Debian's whole
prometheus server package) and by the strict line grammar below, which takes nothing the
format does not allow (prometheus_client's parser is lenient with some escapes).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.sizes import examples
from virtguests import config, metrics
from virtguests.model import Outcome
from virtguests.testing import FakeHost, run_inprocess

Make = Callable[..., FakeHost]

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"-?[0-9]+(?:\.[0-9]+)?"
LINE = re.compile(
    rf"# HELP ({NAME}) [^\n]*|# TYPE ({NAME}) gauge|({NAME})\{{{LABEL}(?:,{LABEL})*\}} {VALUE}")


def strict_lines(text: str) -> list[str]:
    """Every line of *text* in the grammar; each sample after its own HELP and TYPE."""
    assert text.endswith("\n") and "\n\n" not in text
    described: list[str] = []
    lines = text.split("\n")[:-1]
    for line in lines:
        match = LINE.fullmatch(line)
        assert match, line
        help_name, type_name, sample = match.groups()
        if help_name:
            described.append(help_name)
        elif type_name:
            assert described[-1] == type_name
        else:
            assert sample == described[-1], line
    return lines


def parsed(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Metric name -> its samples (labels, value), read by prometheus_client."""
    families = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge" and family.documentation
        families[family.name] = [(s.labels, s.value) for s in family.samples]
    return families


def guests(families: dict[str, list[tuple[dict[str, str], float]]]) -> dict[tuple[str, str],
                                                                              float]:
    return {(labels["uri"], labels["outcome"]): value
            for labels, value in families["virtguests_last_run_guests"] if value}


def started(families: dict[str, list[tuple[dict[str, str], float]]]
            ) -> dict[str, tuple[float, float]]:
    """URI -> (virsh processes, connections)."""
    processes = {labels["uri"]: value
                 for labels, value in families["virtguests_last_run_virsh_processes"]}
    connections = {labels["uri"]: value
                   for labels, value in families["virtguests_last_run_virsh_connections"]}
    assert processes.keys() == connections.keys()
    return {uri: (processes[uri], connections[uri]) for uri in processes}


def test_the_file_holds_every_metric_with_help_and_type() -> None:
    text = metrics.text("stop", 1, 100.0, 102.5, ["default", "qemu:///system"],
                        [("default", Outcome.SAVED), ("default", Outcome.SAVED),
                         ("qemu:///system", Outcome.TIMED_OUT)])
    strict_lines(text)
    families = parsed(text)
    assert families["virtguests_last_run_timestamp_seconds"] == [({"command": "stop"}, 102.5)]
    assert families["virtguests_last_run_exit_status"] == [({"command": "stop"}, 1.0)]
    assert families["virtguests_last_run_duration_seconds"] == [({"command": "stop"}, 2.5)]
    assert guests(families) == {("default", "saved"): 2, ("qemu:///system", "timed out"): 1}
    assert len(families["virtguests_last_run_guests"]) == 2 * len(Outcome)
    assert started(families) == {"default": (0, 0), "qemu:///system": (0, 0)}


def test_every_uri_gets_its_virsh_processes_and_connections() -> None:
    """Also a URI only the counts name (a recorded URI no longer configured)."""
    text = metrics.text("stop", 0, 0.0, 1.0, ["default", "test:///idle"], [],
                        [{"uri": "default", "processes": 11, "connections": 11},
                         {"uri": "qemu:///old", "processes": 1, "connections": 1}])
    strict_lines(text)
    assert started(parsed(text)) == {"default": (11, 11), "test:///idle": (0, 0),
                                     "qemu:///old": (1, 1)}


HOSTILE = ['qemu+ssh://h/system?x="a"', "test:///back\\slash\\", "test:///new\nline",
           'x"} 1\nvirtguests_last_run_exit_status{command="start"} 0\n#', "\\n", "caf\u00e9"]


@pytest.mark.parametrize("uri", HOSTILE)
def test_a_hostile_uri_stays_one_label_value(uri: str) -> None:
    text = metrics.text("start", 0, 0.0, 1.0, [uri], [(uri, Outcome.RESUMED)],
                        [{"uri": uri, "processes": 2, "connections": 2}])
    lines = strict_lines(text)
    assert len(lines) == len(metrics.METRICS) * 2 + 3 + len(Outcome) + 2
    families = parsed(text)
    assert guests(families) == {(uri, "resumed"): 1}
    assert started(families) == {uri: (2, 2)}
    assert families["virtguests_last_run_exit_status"] == [({"command": "start"}, 0.0)]


@given(st.lists(st.text(st.characters(exclude_categories=["Cs"]), max_size=20), max_size=4,
                unique=True))
@settings(max_examples=examples(200))
def test_any_uris_read_back_as_written(uris: list[str]) -> None:
    outcomes = [(uri, Outcome.SAVED) for uri in uris]
    text = metrics.text("stop", 0, 0.0, 0.0, uris, outcomes)
    strict_lines(text)
    assert guests(parsed(text)) == {(uri, "saved"): 1 for uri in uris}


def test_an_undecodable_uri_is_still_valid_utf8() -> None:
    uri = b"test:///\xff".decode("utf-8", "surrogateescape")
    text = metrics.text("stop", 0, 0.0, 0.0, [uri], [])
    text.encode("utf-8")
    strict_lines(text)


HOST = {"uris": {"default": {"guests": [{"name": "web"}, {"name": 'evil"} 1 \\ #'}]},
                 "test:///down": {"unreachable": True}}}


def metrics_host(make: Make, tmp_path: Path, extra: str = "") -> tuple[FakeHost, Path]:
    directory = tmp_path / "textfile"
    directory.mkdir()
    path = directory / "virtguests.prom"
    host = make(HOST, f'URIS="default test:///down"\nCONNECT_RETRIES=0\nON_BOOT=start\n'
                      f"METRICS_FILE={path}\n{extra}")
    return host, path


def test_stop_and_start_each_write_their_run(fake_host: Make, tmp_path: Path) -> None:
    host, path = metrics_host(fake_host, tmp_path)
    run, _ = run_inprocess(host, "stop")
    assert run.code == 1
    text = path.read_text()
    strict_lines(text)
    families = parsed(text)
    assert families["virtguests_last_run_exit_status"] == [({"command": "stop"}, 1.0)]
    assert guests(families) == {("default", "saved"): 2}
    assert {labels["uri"] for labels, _ in families["virtguests_last_run_guests"]} == {
        "default", "test:///down"}
    assert "evil" not in text, "a guest's name never reaches the file"
    assert os.listdir(path.parent) == [path.name], "no temporary file left"
    report = json.loads((host.state_dir / "virtguests-last-run.json").read_text())
    finished = families["virtguests_last_run_timestamp_seconds"][0][1]
    assert abs(finished - report["finished"]) < 60
    assert started(families) == {entry["uri"]: (entry["processes"], entry["connections"])
                                 for entry in report["virsh"]}
    logged = Counter(call["argv"][1] if call["argv"][0] == "-c" else "default"
                     for call in host.calls())  # the fake logs every process it ran
    assert started(families) == {uri: (logged[uri],) * 2 for uri in logged}

    run, _ = run_inprocess(host, "start")
    families = parsed(path.read_text())
    assert families["virtguests_last_run_exit_status"] == [({"command": "start"}, run.code)]
    assert guests(families) == {("default", "resumed"): 2}


def test_a_refused_start_is_written_too(fake_host: Make, tmp_path: Path) -> None:
    host, path = metrics_host(fake_host, tmp_path, "ON_BOOT=sometimes\n")
    run, _ = run_inprocess(host, "start")
    assert run.code == 6
    assert parsed(path.read_text())["virtguests_last_run_exit_status"] == [
        ({"command": "start"}, 6.0)]


def test_a_dry_run_writes_nothing(fake_host: Make, tmp_path: Path) -> None:
    host, path = metrics_host(fake_host, tmp_path)
    run_inprocess(host, "--dry-run", "stop")
    assert not path.exists()


@pytest.mark.parametrize("plant", ["fifo", "symlink", "directory", "no directory"])
def test_a_metrics_file_that_cannot_be_written_is_a_warning_and_changes_nothing_else(
        fake_host: Make, tmp_path: Path, plant: str) -> None:
    host, path = metrics_host(fake_host, tmp_path)
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    if plant == "fifo":
        os.mkfifo(path)
    elif plant == "symlink":
        path.symlink_to(target)
    elif plant == "directory":
        path.mkdir()
    else:
        path.parent.rmdir()
    run, _ = run_inprocess(host, "stop")
    warning = [line for line in run.err.splitlines() if "metrics file" in line]
    assert warning and warning[0].startswith(f"virtguests: warning: cannot write the metrics "
                                             f"file {path}: ")
    assert target.read_text() == "keep"
    if plant == "fifo":
        assert path.is_fifo()
    code, out, listed = run.code, run.out, (host.state_dir / "libvirt-guests").read_text()
    assert json.loads((host.state_dir / "virtguests-last-run.json").read_text())[
        "exit_status"] == code == 1
    assert "web" in out and listed.startswith("default ")


@pytest.mark.parametrize("raw, problem", [
    ("metrics.prom", "not an absolute path"), ("/var/lib/x/metrics.txt", "must end in .prom"),
    ("/var/lib/x/.prom", "must end in .prom"), ("/var/lib/x/", "must end in .prom")])
def test_metrics_file_is_validated_with_its_line(raw: str, problem: str) -> None:
    loaded = config.parse_text(f"ON_BOOT=start\nMETRICS_FILE={raw}\n", "f", {})
    [found] = loaded.problems
    assert (found.line, found.key) == (2, "METRICS_FILE") and problem in found.message
    assert loaded.config.metrics_file is None


def test_metrics_file_is_off_by_default_and_empty_is_off() -> None:
    assert config.Config().metrics_file is None
    loaded = config.parse_text("METRICS_FILE=\n", "f", {})
    assert (loaded.problems, loaded.warnings, loaded.config.metrics_file) == ((), (), None)
    loaded = config.parse_text("METRICS_FILE=/var/lib/node/virtguests.prom\n", "f", {})
    assert loaded.config.metrics_file == "/var/lib/node/virtguests.prom"


def test_check_knows_metrics_file(fake_host: Make, tmp_path: Path) -> None:
    host = fake_host(HOST, "METRICS_FILE=relative.prom\n")
    run, _ = run_inprocess(host, "--json", "check")
    assert run.code == 6
    [problem] = json.loads(run.out)["problems"]
    assert (problem["line"], problem["key"]) == (1, "METRICS_FILE")
    host.set_config(f"METRICS_FILE={tmp_path}/missing/virtguests.prom\n")
    run, _ = run_inprocess(host, "check")
    assert run.code == 0 and "unknown variable" not in run.err
    assert f"METRICS_FILE: the directory {tmp_path}/missing does not exist" in run.err


@pytest.mark.parametrize("command", ["stop", "start"])
def test_a_run_ended_by_a_bug_is_written_as_failed(fake_host: Make, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   command: str) -> None:
    """Monitoring never keeps the previous run's success when this one crashed."""
    from virtguests.actions import start, stop

    path = tmp_path / "virtguests.prom"
    host = fake_host({"uris": {"default": {"guests": [{"name": "web"}]}}},
                     f"ON_BOOT=start\nMETRICS_FILE={path}\n")
    assert run_inprocess(host, command)[0].code == 0
    assert parsed(path.read_text())["virtguests_last_run_exit_status"] == [
        ({"command": command}, 0.0)]

    def bug(*args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(stop if command == "stop" else start, f"_run_{command}", bug)
    run, _ = run_inprocess(host, command)
    assert run.code == 1 and "a bug" in run.err
    assert parsed(path.read_text())["virtguests_last_run_exit_status"] == [
        ({"command": command}, 1.0)]
