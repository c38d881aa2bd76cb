"""Start test threads at the same instant and fail the test if any of them failed.

Race tests need their threads to overlap for real: each waits at a barrier until all
have started, so the first does not finish before the last begins. An exception in a
thread is otherwise only printed; here it is collected and fails the caller.
Standard library only, and no pytest imports.
"""
from __future__ import annotations

import threading
from typing import Callable


def start_together(*targets: Callable[[], None]) -> None:
    """Run every target in its own thread, released together; raise if any failed or hung."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout=10)
            target()
        except BaseException as exc:  # surfaced below, so a failing thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
