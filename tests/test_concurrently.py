"""The one helper that runs the executor's jobs side by side."""

from __future__ import annotations

import functools
import threading

import pytest

from virtguests.concurrently import Job, run_all

DEADLINE = 30.0
"""Real seconds any wait in these tests may take before the test fails."""


def test_results_come_back_in_the_jobs_order() -> None:
    jobs = [Job(functools.partial(pow, i, 2)) for i in range(7)]
    assert run_all(jobs, 3) == [i * i for i in range(7)]
    assert run_all(jobs, 1) == [i * i for i in range(7)]
    assert run_all([], 4) == []


def test_one_job_or_a_width_of_one_runs_in_the_callers_thread() -> None:
    me = threading.get_ident()
    assert run_all([Job(threading.get_ident)], 8) == [me]
    assert run_all([Job(threading.get_ident)] * 3, 1) == [me] * 3
    assert me not in run_all([Job(threading.get_ident)] * 2, 2)


def test_never_more_than_width_at_once_and_every_job_runs() -> None:
    lock = threading.Lock()
    running = 0
    most = 0
    gate = threading.Barrier(3, timeout=DEADLINE)

    def job() -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        gate.wait()  # three at once, or it breaks (and the job raises) after DEADLINE
        with lock:
            running -= 1
        return 1

    assert sum(run_all([Job(job) for _ in range(6)], 3)) == 6
    assert most == 3


def test_a_bug_goes_to_its_own_jobs_guard_and_the_others_still_run() -> None:
    seen: list[str] = []

    def broken() -> str:
        raise KeyError("surprise")

    jobs = [Job(broken, lambda exc: f"guarded {exc!r}"), Job(lambda: "fine"),
            Job(broken, lambda exc: "second guard")]
    for width in (1, 3):
        assert run_all(jobs, width) == ["guarded KeyError('surprise')", "fine",
                                        "second guard"]
    def other() -> str:
        seen.append("ran")
        return "x"

    jobs = [Job(broken), Job(other)]
    with pytest.raises(KeyError):
        run_all(jobs, 2)  # unguarded: raised, but only once every job has ended
    assert seen == ["ran"]


def test_a_bug_in_a_guard_is_raised_after_every_job_ended() -> None:
    seen: list[int] = []

    def guard(exc: Exception) -> int:
        raise RuntimeError("the guard itself")

    def broken() -> int:
        raise ValueError("first")

    def other() -> int:
        seen.append(1)
        return 1

    jobs = [Job(broken, guard), Job(other)]
    for width in (1, 2):
        with pytest.raises(RuntimeError, match="the guard itself"):
            run_all(jobs, width)
    assert seen == [1, 1]


def test_waiting_says_how_the_caller_waits_and_jobs_run_in_threads() -> None:
    me = threading.get_ident()
    waits: list[bool] = []

    def waiting(done: threading.Event) -> None:
        waits.append(done.wait(DEADLINE))

    assert run_all([Job(threading.get_ident)], 1, waiting=waiting) != [me]
    assert waits == [True]
