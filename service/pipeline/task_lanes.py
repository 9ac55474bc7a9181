"""Run independent tasks on this process and on forked helper processes ("lanes").

Writing one exam's results is a handful of independent, CPU-bound, pure-Python jobs (highdicom
objects, matplotlib figures) that the GIL keeps on one core. :func:`run_tasks` shares them
between the calling process and ``processes - 1`` children made with :func:`os.fork`: a child
sees the caller's arrays without copying or pickling them, and ``os.fork`` works inside a
Celery prefork worker, whose children ``multiprocessing`` refuses to give children of their
own ("daemonic processes are not allowed to have children").

The task queue is a pipe holding one byte per task index, longest task first; every lane
reads one byte at a time (atomic for a pipe), so a lane that finishes early takes the next
task. A child sends back, per task it took, the task's result or the text of its error, and
leaves with ``os._exit`` (no atexit handlers, no flushing of the parent's buffers). A child
that dies (killed, out of memory) is reported with its signal or exit status.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["LaneError", "Task", "TaskError", "run_tasks"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_TASKS = 255


@dataclass(frozen=True)
class Task(Generic[T]):
    """One independent piece of work.

    Parameters
    ----------
    name : str
        What it makes, for error messages (``"T1 parametric map of slab 1"``).
    run : callable
        Does the work and returns a picklable result.
    cost : float
        Expected relative run time; longer tasks are started first.
    """

    name: str
    run: Callable[[], T]
    cost: float = 1.0


class TaskError(Exception):
    """A task raised; ``name`` is the task's, ``error`` the text of its exception."""

    def __init__(self, name: str, error: str, cause: BaseException | None = None) -> None:
        super().__init__(f"{name}: {error}")
        self.name = name
        self.error = error
        self.cause = cause


class LaneError(RuntimeError):
    """A helper process died or could not be started."""


def _take(queue_fd: int) -> int | None:
    data = os.read(queue_fd, 1)
    return data[0] if data else None


def _run_one(task: Task[Any]) -> tuple[bool, Any]:
    started = time.perf_counter()
    try:
        result = task.run()
    except Exception as exc:
        log.error("%s failed\n%s", task.name, traceback.format_exc().rstrip())
        return False, f"{type(exc).__name__}: {exc}"
    log.debug("%s: %.3f s in process %d", task.name, time.perf_counter() - started, os.getpid())
    return True, result


def _lane(tasks: Sequence[Task[Any]], queue_fd: int) -> list[tuple[int, bool, Any]]:
    done = []
    while (index := _take(queue_fd)) is not None:
        ok, value = _run_one(tasks[index])
        done.append((index, ok, value))
        if not ok:  # the whole run fails: empty the queue so that no lane starts more work
            while _take(queue_fd) is not None:
                pass
    return done


def _child(tasks: Sequence[Task[Any]], queue_fd: int, result_fd: int) -> None:
    status = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        done = _lane(tasks, queue_fd)
        try:
            payload = pickle.dumps(done)
        except Exception as exc:  # an unpicklable result: report it as that task's error
            payload = pickle.dumps(
                [(i, False, f"result not transferable ({exc})") for i, _, _ in done]
            )
        with os.fdopen(result_fd, "wb") as out:
            out.write(payload)
    except BaseException:
        status = 70
        traceback.print_exc()
    finally:
        os._exit(status)


def _wait(pid: int) -> int:
    """The child's wait status; 0 when somebody else already reaped it."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return f"killed by signal {number} ({signal.Signals(number).name})"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def run_tasks(tasks: Sequence[Task[T]], *, processes: int = 2) -> list[T]:
    """Run ``tasks`` on this process and ``processes - 1`` forked ones; results in task order.

    Parameters
    ----------
    tasks : sequence of Task
        Independent tasks (at most 255); each result must be picklable when
        ``processes > 1``.
    processes : int
        Lanes in all, this process included; 1 runs everything here, in order.

    Returns
    -------
    list
        ``tasks[i].run()`` at position ``i``.

    Raises
    ------
    TaskError
        For the first task (in task order) that raised; with ``processes=1`` its ``cause``
        holds the exception itself (from a helper only its text comes back).
    LaneError
        If a helper process died before reporting (its tasks' results are lost).
    ValueError
        For ``processes < 1`` or more than 255 tasks.
    """
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if len(tasks) > _MAX_TASKS:
        raise ValueError(f"at most {_MAX_TASKS} tasks, got {len(tasks)}")
    helpers = min(processes, len(tasks)) - 1
    if helpers <= 0 or not hasattr(os, "fork"):  # no fork (Windows): all here
        return _sequential(tasks)
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i].cost)
    queue_read, queue_write = os.pipe()
    os.write(queue_write, bytes(order))
    os.close(queue_write)
    children: list[tuple[int, int]] = []
    try:
        # Objects that exist now are not garbage the lanes need to look at while they write:
        # without this, a child's full collection touches (and so copies) every page of the
        # heap, and the parent's scans the exam's data again.
        gc.freeze()
        for _ in range(helpers):
            result_read, result_write = os.pipe()
            try:
                pid = os.fork()
            except OSError as exc:  # process or memory limit: the lanes there are do it all
                os.close(result_read)
                os.close(result_write)
                log.warning(
                    "could not start a helper process (%s); going on with %d process(es)",
                    exc,
                    len(children) + 1,
                )
                break
            if pid == 0:  # pragma: no cover - runs in the child, which leaves by os._exit
                os.close(result_read)
                _child(tasks, queue_read, result_write)
            os.close(result_write)
            children.append((pid, result_read))
        done = _lane(tasks, queue_read)
        outcomes: dict[int, tuple[bool, Any]] = {}
        for index, ok, value in done:
            outcomes[index] = (ok, value)
        lost = []
        while children:
            pid, result_read = children.pop(0)
            with os.fdopen(result_read, "rb") as stream:
                payload = stream.read()
            status = _wait(pid)
            if payload:
                for index, ok, value in pickle.loads(payload):
                    outcomes[index] = (ok, value)
            if status:
                lost.append(_describe_status(status))
    finally:
        gc.unfreeze()
        if children:  # an exception here (Ctrl-C, say): helpers start no further task
            while _take(queue_read) is not None:
                pass
        os.close(queue_read)
        for pid, result_read in children:
            os.close(result_read)
            _wait(pid)
    for index in range(len(tasks)):
        if index in outcomes and not outcomes[index][0]:
            raise TaskError(tasks[index].name, outcomes[index][1])
    if lost:
        raise LaneError(f"a helper process died ({'; '.join(lost)})")
    missing = [tasks[i].name for i in range(len(tasks)) if i not in outcomes]
    if missing:
        raise LaneError(f"no process ran: {', '.join(missing)}")
    return [outcomes[i][1] for i in range(len(tasks))]


def _sequential(tasks: Sequence[Task[T]]) -> list[T]:
    results = []
    for task in tasks:
        started = time.perf_counter()
        try:
            results.append(task.run())
        except Exception as exc:
            raise TaskError(task.name, f"{type(exc).__name__}: {exc}", exc) from exc
        log.debug("%s: %.3f s", task.name, time.perf_counter() - started)
    return results
