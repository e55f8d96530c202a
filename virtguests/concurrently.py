"""Run jobs side by side: the one place the executor starts threads.

Each job is guarded here: its exception goes to its own ``on_bug``, whose value
stands for the job's result, so one job's bug never stops the others.  Nothing
here cancels: after a stop request each job itself says what it did not do.
Workers are daemon threads (a hung call never holds up the interpreter's exit).
The caller blocks in ``threading`` (a virtual clock reads that as waiting for
another thread), waking every JOIN_EVERY so that the main thread stays ready for
signals, or waits the way its *waiting* function says (through a Clock, when
the jobs wait on virtual time themselves).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")

JOIN_EVERY = 0.2
"""Real seconds between two looks of a joining caller (signal handlers run then)."""


@dataclass(frozen=True)
class Job(Generic[T]):
    """Work for one thread, and what a bug in it turns into.

    Without *on_bug*, the job's exception is raised again by ``run_all`` once every
    job has ended.
    """

    run: Callable[[], T]
    on_bug: Optional[Callable[[Exception], T]] = None


def run_all(jobs: Sequence[Job[T]], width: int, *,
            waiting: Optional[Callable[[threading.Event], None]] = None) -> list[T]:
    """Run every job, *width* at a time at most; their results, in order.

    Without *waiting*, a single job (or a *width* of 1) runs in the caller's own
    thread, one after the other.  With *waiting*, jobs always run in worker
    threads, and ``waiting(done)`` returns once *done* is set.  The first
    exception no ``on_bug`` took is raised after every job has ended.
    """
    if not jobs:
        return []
    results: dict[int, T] = {}
    escaped: list[Exception] = []
    if waiting is None and (width <= 1 or len(jobs) == 1):
        for index, job in enumerate(jobs):
            _one(index, job, results, escaped)
    else:
        _in_threads(jobs, width, results, escaped, waiting)
    if escaped:
        raise escaped[0]
    return [results[index] for index in range(len(jobs))]


def _one(index: int, job: Job[T], results: dict[int, T], escaped: list[Exception]) -> None:
    try:
        results[index] = job.run()
    except Exception as exc:
        if job.on_bug is None:
            escaped.append(exc)
            return
        try:
            results[index] = job.on_bug(exc)
        except Exception as again:  # a bug while reporting a bug: raised at the end
            escaped.append(again)


def _in_threads(jobs: Sequence[Job[T]], width: int, results: dict[int, T],
                escaped: list[Exception],
                waiting: Optional[Callable[[threading.Event], None]]) -> None:
    lock = threading.Lock()
    todo = iter(enumerate(jobs))
    done = threading.Event()
    finished = 0

    def work() -> None:
        nonlocal finished
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            try:
                _one(*item, results, escaped)
            finally:
                with lock:
                    finished += 1
                    if finished == len(jobs):
                        done.set()

    threads = [threading.Thread(target=work, daemon=True)
               for _ in range(min(max(width, 1), len(jobs)))]
    for thread in threads:
        thread.start()
    if waiting is not None:
        waiting(done)
    else:
        while not done.wait(JOIN_EVERY):
            pass
