"""Independent tasks shared between this process and forked helpers
(service.pipeline.task_lanes)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.pipeline.task_lanes import LaneError, Task, TaskError, run_tasks


def _meet(marker_dir: Path, me: str, other: str, timeout_s: float = 20.0) -> None:
    """Leave ``me`` and wait for ``other``: only possible when both run at the same time."""
    (marker_dir / me).touch()
    deadline = time.monotonic() + timeout_s
    while not (marker_dir / other).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} never ran while {me} was running")
        time.sleep(0.005)


def _pair(tmp_path: Path, then: Callable[[], object]) -> list[Task[object]]:
    """Two tasks that can only finish when they run in two processes at once."""

    def first() -> object:
        _meet(tmp_path, "a", "b")
        return then()

    def second() -> object:
        _meet(tmp_path, "b", "a")
        return then()

    return [Task("first", first), Task("second", second)]


def test_results_come_back_in_task_order_from_two_processes(tmp_path: Path) -> None:
    tasks = _pair(tmp_path, os.getpid)
    tasks.append(Task("square", lambda: 7 * 7, cost=0.1))
    results = run_tasks(tasks, processes=2)
    assert results[2] == 49
    assert len({results[0], results[1]}) == 2  # two processes
    assert os.getpid() in results[:2]


def test_three_processes_run_three_tasks_at_once(tmp_path: Path) -> None:
    names = ["a", "b", "c"]

    def meet_all(me: str) -> int:
        for other in names:
            if other != me:
                _meet(tmp_path, me, other)
        return os.getpid()

    tasks = [Task(name, lambda name=name: meet_all(name)) for name in names]
    assert len(set(run_tasks(tasks, processes=3))) == 3


def test_one_process_runs_everything_here_in_order() -> None:
    seen: list[int] = []
    tasks = [Task(f"t{i}", lambda i=i: seen.append(i) or os.getpid()) for i in range(4)]
    assert run_tasks(tasks, processes=1) == [os.getpid()] * 4
    assert seen == [0, 1, 2, 3]


def test_longest_tasks_start_first(tmp_path: Path) -> None:
    log = tmp_path / "started"

    def task(name: str) -> Callable[[], None]:
        def run() -> None:
            with log.open("a") as out:
                out.write(name + "\n")
            time.sleep(0.2)

        return run

    tasks = [
        Task("short", task("short"), cost=0.1),
        Task("long", task("long"), cost=5.0),
        Task("middle", task("middle"), cost=2.0),
    ]
    run_tasks(tasks, processes=2)
    started = log.read_text().split()
    assert sorted(started[:2]) == ["long", "middle"]
    assert started[2] == "short"


@pytest.mark.parametrize("processes", [1, 2])
def test_a_failing_task_is_named_with_its_error(tmp_path: Path, processes: int) -> None:
    def broken() -> None:
        raise OSError("No space left on device")

    tasks = [Task("ok", lambda: 1), Task("segmentation of slab 2", broken), Task("ok2", lambda: 2)]
    with pytest.raises(TaskError, match=r"segmentation of slab 2: OSError: No space left") as info:
        run_tasks(tasks, processes=processes)
    assert info.value.name == "segmentation of slab 2"


def test_a_task_failing_in_the_helper_process_is_reported(tmp_path: Path) -> None:
    parent = os.getpid()

    def fail_in_helper() -> int:
        if os.getpid() != parent:
            raise ValueError("bad value in the helper")
        return 0

    with pytest.raises(TaskError, match="ValueError: bad value in the helper"):
        run_tasks(_pair(tmp_path, fail_in_helper), processes=2)


def test_a_helper_that_dies_fails_the_run(tmp_path: Path) -> None:
    parent = os.getpid()

    def die_in_helper() -> int:
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return 0

    with pytest.raises(LaneError, match=r"helper process died \(killed by signal 9 \(SIGKILL\)"):
        run_tasks(_pair(tmp_path, die_in_helper), processes=2)


def test_a_result_that_cannot_be_sent_back_is_an_error(tmp_path: Path) -> None:
    parent = os.getpid()

    def unpicklable() -> object:
        return (lambda: None) if os.getpid() != parent else None

    with pytest.raises(TaskError, match="result not transferable"):
        run_tasks(_pair(tmp_path, unpicklable), processes=2)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_tasks([Task("t", lambda: 1)], processes=0)
    with pytest.raises(ValueError, match="at most 255"):
        run_tasks([Task(str(i), lambda: 1) for i in range(256)], processes=2)


def _in_daemon(tmp: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        pids = run_tasks(_pair(Path(tmp), os.getpid), processes=2)
        queue.put(("ok", len(set(pids))))
    except Exception as exc:  # reported to the test
        queue.put(("error", repr(exc)))


def test_helpers_start_inside_a_daemonic_worker_process(tmp_path: Path) -> None:
    """Celery's prefork children are daemonic; multiprocessing refuses them children."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    worker = context.Process(target=_in_daemon, args=(str(tmp_path), queue), daemon=True)
    worker.start()
    outcome = queue.get(timeout=60)
    worker.join(timeout=60)
    assert outcome == ("ok", 2)


def test_without_a_helper_this_process_writes_everything(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    tasks = [Task(f"t{i}", lambda i=i: i * i) for i in range(4)]
    assert run_tasks(tasks, processes=2) == [0, 1, 4, 9]
    assert "could not start a helper process" in caplog.text
