"""The jumping virtual clock of virtguests.testing.inprocess: it moves only when every
thread waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from virtguests.testing import VirtualClock

START = 1_000_000.0


def run_threads(*targets: Callable[[], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    return threads


def joined(threads: list[threading.Thread]) -> bool:
    for thread in threads:
        thread.join(30)
    return not any(thread.is_alive() for thread in threads)


def test_sleeping_threads_wake_in_order_of_their_virtual_deadlines() -> None:
    clock = VirtualClock(START)
    woke: list[tuple[str, float]] = []
    lock = threading.Lock()

    def sleeper(name: str, seconds: float) -> None:
        assert clock.sleep(seconds)
        with lock:
            woke.append((name, clock.now() - START))

    threads = run_threads(lambda: sleeper("long", 300), lambda: sleeper("short", 100))
    assert joined(threads)
    assert woke == [("short", 100.0), ("long", 300.0)]
    assert clock.jumps == 2 and clock.stalls == 0


def test_the_clock_stays_while_a_thread_is_running() -> None:
    clock = VirtualClock(START)
    seen: list[float] = []

    def busy() -> None:
        until = time.monotonic() + 0.2  # real work, no clock call, longer than QUIET
        while time.monotonic() < until:
            pass
        seen.append(clock.now())

    threads = run_threads(busy)
    assert clock.sleep(10)
    assert joined(threads)
    assert seen == [START]  # the sleep could only end once the worker had finished
    assert clock.now() == START + 10 and clock.stalls == 0


def test_a_thread_blocked_on_another_does_not_hold_the_clock() -> None:
    clock = VirtualClock(START)
    release = threading.Event()
    seen: list[float] = []

    def blocked() -> None:
        release.wait(30)
        seen.append(clock.now())

    threads = run_threads(blocked)
    assert clock.sleep(5)  # the worker waits for us: time may pass
    release.set()
    assert joined(threads)
    assert seen == [START + 5] and clock.stalls == 0


def test_an_event_set_by_a_thread_ends_a_wait_before_its_time() -> None:
    clock = VirtualClock(START)
    done = threading.Event()

    def worker() -> None:
        assert clock.sleep(3)
        done.set()

    threads = run_threads(worker)
    assert clock.wait(done, 60)
    assert joined(threads)
    assert clock.now() == START + 3
    assert clock.slept == [3.0]  # the worker's sleep; the wait did not time out
