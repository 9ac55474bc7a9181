"""Copy the supported presentation contexts for each new association cheaply.

pynetdicom's association server gives every association it accepts its own copy of the
supported presentation contexts with :func:`copy.deepcopy`. For the storage SCP (171 SOP
classes, 2724 transfer syntax entries) that takes about 18 ms of CPU per association, more
than receiving a dozen images. A :class:`~pynetdicom.presentation.PresentationContext`
holds immutable values (context ID, UIDs, result, role flags) and one list, its transfer
syntaxes: :func:`copy_contexts` copies each context with a new list, which gives the same
independent copies in well under a millisecond. :func:`use_cheap_context_copies` makes
pynetdicom's association server use it; anything else it deep-copies is deep-copied as
before, and so is a context with attributes this module does not know.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import pynetdicom.transport as pynetdicom_transport
from pynetdicom.presentation import PresentationContext

__all__ = ["copy_contexts", "use_cheap_context_copies"]

_PLAIN_ATTRIBUTES = frozenset(
    {
        "_context_id",
        "_abstract_syntax",
        "_transfer_syntax",
        "result",
        "_scu_role",
        "_scp_role",
        "_as_scp",
        "_as_scu",
    }
)
"""A context's attributes: all immutable values except the transfer syntax list."""
_INSTALL_LOCK = threading.Lock()


def copy_contexts(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """Return what ``copy.deepcopy(value)`` returns, faster for a list of contexts.

    Parameters
    ----------
    value : object
        What pynetdicom copies; a list of ``PresentationContext`` gets the cheap copy.
    memo : dict, optional
        Passed on to :func:`copy.deepcopy` for anything else.

    Returns
    -------
    object
        An independent copy: no list of the result is shared with ``value``.
    """
    if type(value) is not list or not all(_plain_context(item) for item in value):
        return copy.deepcopy(value, memo)
    copies = []
    for context in value:
        fresh = object.__new__(PresentationContext)
        fresh.__dict__.update(context.__dict__)
        fresh._transfer_syntax = list(context._transfer_syntax)
        copies.append(fresh)
    return copies


def use_cheap_context_copies() -> None:
    """Make pynetdicom's association server copy contexts with :func:`copy_contexts`.

    Safe to call more than once; affects every association server of this process.
    """
    with _INSTALL_LOCK:
        pynetdicom_transport.deepcopy = copy_contexts  # type: ignore[attr-defined]


def _plain_context(item: object) -> bool:
    return (
        type(item) is PresentationContext
        and item.__dict__.keys() <= _PLAIN_ATTRIBUTES
        and type(item._transfer_syntax) is list
    )
