"""Whole-piece socket reads for the associations we accept.

pynetdicom's ``AssociationSocket.recv`` reads at most 4096 bytes per system call and appends
each piece to a growing ``bytearray``: a 128 KiB P-DATA PDU takes 32 calls and as many
copies, a 400 KB image about a hundred. :func:`read_exactly` reads into one buffer of the
requested size, as much per call as the kernel has, and :func:`use_bulk_reads` makes an
association's socket read that way. Same contract as pynetdicom's: block until
``nr_bytes`` have arrived, return less only when the peer closed the connection, let
timeouts and socket errors propagate.
"""

from __future__ import annotations

import socket
import ssl

from pynetdicom.association import Association

__all__ = ["read_exactly", "use_bulk_reads"]


def read_exactly(sock: socket.socket | ssl.SSLSocket | None, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` from ``sock`` into one buffer.

    Parameters
    ----------
    sock : socket.socket or ssl.SSLSocket
        A connected (blocking or timed) socket.
    nr_bytes : int
        Bytes wanted (>= 0).

    Returns
    -------
    bytearray
        ``nr_bytes`` bytes, or fewer when the peer closed the connection first.

    Raises
    ------
    OSError
        If the socket is gone (``None``) or fails; ``TimeoutError`` on its timeout.
    ValueError
        If ``nr_bytes`` is negative.
    """
    if nr_bytes < 0:
        raise ValueError(f"nr_bytes must be >= 0, got {nr_bytes}")
    if sock is None:
        raise OSError("the association's socket is closed")
    buffer = bytearray(nr_bytes)
    received = 0
    with memoryview(buffer) as view:
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if count == 0:
                break  # the peer closed the connection
            received += count
    if received < nr_bytes:
        del buffer[received:]
    return buffer


def use_bulk_reads(assoc: Association) -> None:
    """Make ``assoc`` read from its socket with :func:`read_exactly`.

    Call it from an ``EVT_REQUESTED`` handler (after any TLS wrapping of the socket); the
    socket is looked up at every read, so a later close or re-wrap is seen.

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        An association we accept.
    """
    transport = assoc.dul.socket
    if transport is None:
        return

    def recv(nr_bytes: int) -> bytearray:
        return read_exactly(transport.socket, nr_bytes)

    transport.recv = recv  # type: ignore[method-assign]
