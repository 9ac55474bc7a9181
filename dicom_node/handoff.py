"""Accepted TCP connections handed from the service process to an acceptor process.

The service process listens on the plain port and accepts; it hands each connection (its
file descriptor, ``SCM_RIGHTS`` over a Unix socket pair) to the acceptor process with the
fewest open connections (:class:`dicom_node.acceptors.AcceptorPool`). In the acceptor,
:class:`HandedConnectionServer` is pynetdicom's threaded association server reading those
connections instead of accepting on a port of its own, so everything after the accept is
pynetdicom's (and our handlers') as with a listening socket.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["HandedConnectionServer", "hand_over", "take_over"]

LOGGER = logging.getLogger(__name__)

_MARK = b"C"  # one byte carries the descriptor (a stream needs data with the ancillary part)
_GONE_PAUSE_S = 0.5  # after the service process has gone: its acceptor is being stopped


def hand_over(channel: socket.socket, connection: socket.socket) -> None:
    """Send ``connection`` (a copy of its descriptor) over ``channel``.

    The caller still owns ``connection`` and closes its copy afterwards.

    Parameters
    ----------
    channel : socket.socket
        A connected ``AF_UNIX`` stream socket.
    connection : socket.socket
        The accepted TCP connection.

    Raises
    ------
    OSError
        If the other end has gone or does not read (``channel``'s timeout).
    """
    if socket.send_fds(channel, [_MARK], [connection.fileno()]) != len(_MARK):
        raise OSError("handing over a connection: the marker byte was not sent")


def take_over(channel: socket.socket) -> socket.socket:
    """Receive one connection sent by :func:`hand_over`, as a blocking socket.

    Parameters
    ----------
    channel : socket.socket
        The other end of :func:`hand_over`'s channel.

    Returns
    -------
    socket.socket

    Raises
    ------
    EOFError
        If the sending end has closed.
    OSError
        If the message holds no descriptor (or more than one: all are closed).
    """
    message, fds, _, _ = socket.recv_fds(channel, len(_MARK), 1)
    if not message and not fds:
        raise EOFError("the service process closed the hand-over channel")
    if message != _MARK or len(fds) != 1:
        for fd in fds:
            socket.close(fd)
        raise OSError(f"hand-over message {message!r} with {len(fds)} descriptor(s)")
    connection = socket.socket(fileno=fds[0])
    connection.setblocking(True)  # as accept() gives it
    return connection


class HandedConnectionServer(ThreadedAssociationServer):
    """pynetdicom's threaded server serving connections handed over on ``handoff``.

    It binds and listens on nothing: ``server_address`` is the service's plain port (for
    the log and :attr:`dicom_node.scp.StorageSCP.port`), and ``serve_forever`` waits on
    ``handoff`` instead of a listening socket.

    Parameters
    ----------
    *args
        As :class:`pynetdicom.transport.AssociationServer`.
    handoff : socket.socket
        This process's end of the hand-over channel (see :func:`take_over`).
    on_dropped : Callable[[], None], optional
        Called when a handed-over connection is closed here without being served (the
        peer reset it before it got here): it then gets no ``EVT_CONN_CLOSE``.
    **kwargs
        As :class:`pynetdicom.transport.AssociationServer`.
    """

    def __init__(
        self,
        *args: Any,
        handoff: socket.socket,
        on_dropped: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self._handoff = handoff
        self._on_dropped = on_dropped
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        """Use the hand-over channel instead of a socket of our own."""
        self.socket.close()
        self.socket = self._handoff

    def server_activate(self) -> None:
        """Nothing to listen on: the service process listens."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """The next handed-over connection and its peer address.

        Raises
        ------
        OSError
            If the channel broke or the connection closed before it got here (the
            server's loop then goes on with the next one).
        """
        try:
            connection = take_over(self._handoff)
        except EOFError as exc:
            # The service process has gone, and its acceptor is being stopped: do not spin.
            time.sleep(_GONE_PAUSE_S)
            raise OSError(str(exc)) from exc
        try:
            peer = connection.getpeername()
        except OSError:
            connection.close()
            if self._on_dropped is not None:
                try:
                    self._on_dropped()
                except Exception:
                    LOGGER.exception("reporting a dropped connection failed")
            raise
        return connection, (str(peer[0]), int(peer[1]))
