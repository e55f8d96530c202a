"""tools/remote_bench.py's table: what the lead re-runs for issue 13 (the runs themselves
need root and real guests; here only how measured numbers become the issue's table)."""

from __future__ import annotations

from tools.remote_bench import Measured, table


def measured(tool: str, conns: tuple[int, int, int], walls: tuple[float, float, float],
             problem: str = "") -> list[Measured]:
    return [Measured(tool, run, c, w, 1 if problem and run == "start" else 0,
                     problem if run == "start" else "")
            for run, c, w in zip(("suspend", "start", "pshutdown"), conns, walls)]


def rows(text: str) -> dict[str, list[str]]:
    out = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| run "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_one_round_gives_counts_walls_and_ratios() -> None:
    got = rows(table(measured("reference", (23, 20, 39), (25.0, 15.0, 20.0))
                     + measured("virtguests", (7, 6, 9), (8.0, 8.0, 5.0)), 6, 1, "ref"))
    assert got["stop (suspend, serial), ssh connections"][:2] == ["23", "7"]
    assert got["start, ssh connections"][:2] == ["20", "6"]
    assert got["parallel shutdown of 6 (PARALLEL_SHUTDOWN=6), ssh connections"][:2] == \
        ["39", "9"]
    assert got["parallel shutdown of 6, wall"][:2] == ["20.0 s", "5.0 s (0.25x)"]
    assert got["suspend then start of 6, wall"][:2] == ["40.0 s", "16.0 s (0.40x)"]


def test_rounds_give_ranges_of_counts_and_median_walls() -> None:
    results = (measured("virtguests", (7, 6, 9), (8.0, 8.0, 5.0))
               + measured("virtguests", (8, 6, 10), (9.0, 9.0, 7.0))
               + measured("virtguests", (7, 6, 9), (30.0, 30.0, 6.0)))
    got = rows(table(results, 6, 3, "not run"))
    assert got["stop (suspend, serial), ssh connections"][:2] == ["not run", "7-8"]
    assert got["start, ssh connections"][:2] == ["not run", "6"]
    assert got["parallel shutdown of 6, wall"][:2] == ["not run", "6.0 s"]
    assert got["suspend then start of 6, wall"][:2] == ["not run", "18.0 s"]


def test_a_run_that_failed_its_check_is_marked() -> None:
    got = rows(table(measured("virtguests", (7, 6, 9), (8.0, 8.0, 5.0), "not 'running'"),
                     6, 1, "not run"))
    assert got["start, ssh connections"][1] == "6 (FAILED)"
    assert got["suspend then start of 6, wall"][1] == "16.0 s (FAILED)"
    assert got["stop (suspend, serial), ssh connections"][1] == "7"
