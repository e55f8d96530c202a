"""tools/migrate_bench.py's verdicts: how measured numbers become issue 14's targets (the
runs themselves need root and two real libvirtds; ``make bench`` makes them)."""

from __future__ import annotations

import pytest

from tools.migrate_bench import Round, section, targets


def round_of(singles: tuple[float, ...], stop: float, suspend: float,
             problems: tuple[str, ...] = ()) -> Round:
    return Round({f"g{i}": s for i, s in enumerate(singles)}, stop, stop - 0.5, suspend,
                 list(problems))


def verdicts(*rounds: Round) -> list[bool | None]:
    return [ok for ok, _text in targets(list(rounds))]


def test_within_one_and_a_half_the_slowest_single_passes() -> None:
    assert verdicts(round_of((1.0, 2.0, 1.5, 1.0), 3.0, 2.5)) == [True, True]


def test_slower_than_one_and_a_half_the_slowest_single_fails() -> None:
    assert verdicts(round_of((1.0, 2.0), 3.01, 2.5)) == [False, True]


def test_slower_than_suspend_alone_by_more_than_the_slowest_migration_fails() -> None:
    assert verdicts(round_of((1.0, 2.0), 2.9, 0.8)) == [True, False]


def test_a_guest_shut_off_or_rebooted_fails_both_whatever_the_times() -> None:
    found = targets([round_of((1.0, 2.0), 2.0, 2.0, ("migrating stop: rebooted: ['g1']",))])
    assert [ok for ok, _ in found] == [False, False]
    assert "rebooted: ['g1']" in found[0][1]


def test_each_round_is_judged_on_its_own_slowest_migration() -> None:
    assert verdicts(round_of((1.0,), 1.4, 1.0), round_of((3.0,), 4.0, 4.0)) == [
        True, True, True, True]
    assert verdicts(round_of((1.0,), 1.6, 1.0)) == [False, True]


def test_without_root_or_libvirt_it_says_why_and_runs_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.migrate_bench as bench

    monkeypatch.setattr(bench, "unavailable", lambda: "not root")
    text, found = section(3, lambda msg: None)
    assert "not run: not root" in text
    assert found == [(None, "live migration targets: not run: not root")]
