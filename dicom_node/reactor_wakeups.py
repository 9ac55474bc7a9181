"""Let the reactor thread of an association we accept sleep until it has work.

pynetdicom's acceptor reactor (``Association._run_reactor``) sleeps 1 ms between looks at
its queues: a thousand wake-ups a second per open association, each taking a turn at the
GIL with the threads that receive and store (about a fifth of the throughput with four
senders on two cores). :func:`use_reactor_wakeups` turns that sleep, for one association,
into a wait on an event that is set when

- a DIMSE message is queued for the reactor (``dimse.msg_queue``),
- an ACSE primitive arrives (``dul.to_user_queue``: release request, abort),
- another thread asks the reactor to pause (``_reactor_checkpoint.clear()``, as
  ``Association.release`` and the ``send_*`` methods do) or to stop (``kill``, as an
  abort does),

and otherwise lasts at most ``max_wait_s``, within which the reactor still notices the end
of the network thread and the idle timeout. Other sleeps of pynetdicom, and the
reactors of associations without the event, are untouched.
"""

from __future__ import annotations

import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import Any

import pynetdicom.association as pynetdicom_association
from pynetdicom.association import Association

__all__ = ["call_then", "use_reactor_wakeups"]

_REACTOR_SLEEP_S = 0.001
"""The fixed sleep of pynetdicom's acceptor reactor loop."""
_REACTOR_CODE = Association._run_reactor.__code__
_WAKE_EVENTS: weakref.WeakKeyDictionary[threading.Thread, tuple[threading.Event, float]] = (
    weakref.WeakKeyDictionary()
)
_INSTALL_LOCK = threading.Lock()


class _ReactorClock(types.ModuleType):
    """Stands in for the ``time`` module inside :mod:`pynetdicom.association`."""

    def __init__(self) -> None:
        super().__init__("time")

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds == _REACTOR_SLEEP_S and sys._getframe(1).f_code is _REACTOR_CODE:
            waiting = _WAKE_EVENTS.get(threading.current_thread())
            if waiting is not None:
                wake, max_wait_s = waiting
                wake.wait(max_wait_s)
                wake.clear()  # the reactor looks at every queue right after this
                return
        time.sleep(seconds)


def _install() -> None:
    with _INSTALL_LOCK:
        if not isinstance(pynetdicom_association.time, _ReactorClock):
            pynetdicom_association.time = _ReactorClock()  # type: ignore[assignment]


def call_then(method: Callable[..., Any], after: Callable[[], object]) -> Callable[..., Any]:
    """Return ``method`` wrapped so that ``after()`` runs after every call (also on errors).

    Used to wake a sleeping association thread whenever pynetdicom queues work for it.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        finally:
            after()

    return call


def use_reactor_wakeups(assoc: Association, max_wait_s: float) -> None:
    """Make ``assoc``'s reactor thread wait for work instead of polling every millisecond.

    Call it from an ``EVT_REQUESTED`` handler (before the reactor starts).

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        An association we accept.
    max_wait_s : float
        Longest sleep of the reactor between looks (> 0).

    Raises
    ------
    ValueError
        If ``max_wait_s`` is not positive.
    """
    if not max_wait_s > 0:
        raise ValueError(f"max_wait_s must be > 0, got {max_wait_s!r}")
    _install()
    wake = threading.Event()
    msg_queue = assoc.dimse.msg_queue
    msg_queue.put = call_then(msg_queue.put, wake.set)  # type: ignore[method-assign]
    to_user = assoc.dul.to_user_queue
    to_user.put = call_then(to_user.put, wake.set)  # type: ignore[method-assign]
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear = call_then(checkpoint.clear, wake.set)  # type: ignore[method-assign]
    assoc.kill = call_then(assoc.kill, wake.set)  # type: ignore[method-assign]
    _WAKE_EVENTS[assoc] = (wake, max_wait_s)
