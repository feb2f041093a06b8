"""Cooperative cancellation of a compute job running in a worker thread.

Python cannot interrupt a thread: the executor sets the job's stop flag, and the task's
next :func:`cancel_point` (between batches) raises :class:`~fednode.errors.JobCancelled`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ..errors import JobCancelled

#: the stop flag of the job running in this thread (None: not inside an executor's job)
_STOP: ContextVar[threading.Event | None] = ContextVar("fednode_job_stop", default=None)


def cancel_point() -> None:
    """Raise :class:`~fednode.errors.JobCancelled` if the node running this job is
    stopping; otherwise return at once (~0.1 µs). A no-op outside an executor's job (a
    task called directly, the simulator)."""
    flag = _STOP.get()
    if flag is not None and flag.is_set():
        raise JobCancelled("compute job stopped: the node is shutting down")


@contextmanager
def stoppable(flag: threading.Event) -> Iterator[None]:
    """Run the body (a job, in its worker thread) with ``flag`` as its stop flag: once
    ``flag`` is set, the body's next :func:`cancel_point` raises."""
    token = _STOP.set(flag)
    try:
        yield
    finally:
        _STOP.reset(token)
