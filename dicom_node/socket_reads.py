"""How the network thread of an association we accept reads its socket.

**Whole pieces.** pynetdicom's ``AssociationSocket.recv`` reads at most 4096 bytes per
system call and appends each piece to a growing ``bytearray``: a 128 KiB P-DATA PDU takes
32 calls and as many copies, a 400 KB image about a hundred. :func:`read_exactly` reads
into one buffer of the requested size, as much per call as the kernel has, and
:func:`use_bulk_reads` makes an association's socket read that way. Same contract as
pynetdicom's: block until ``nr_bytes`` have arrived, return less only when the peer closed
the connection, let timeouts and socket errors propagate. The length comes from the peer's
PDU header: at most 4 MiB is set aside ahead of the data, so a peer that claims 4 GiB and
sends little holds little memory.

**Waiting in the kernel.** pynetdicom's network thread polls: it sleeps a fixed delay,
looks at the socket without waiting, and goes round again, thousands of times a second per
open association, all taking turns at the GIL with the threads that do the work.
:func:`use_blocking_waits` makes it wait in ``select`` instead, on the socket and on a
wake-up socket that other threads write to when they queue a message for the peer (a
C-ECHO answer, the release response, an abort) or stop the thread. So it wakes as soon as
a request arrives or an answer is queued, and costs no CPU while the peer is quiet; it still
looks round every ``wait_s`` (for pynetdicom's ARTIM timer).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import weakref

from pynetdicom.association import Association

from dicom_node.reactor_wakeups import call_then

__all__ = ["read_exactly", "use_blocking_waits", "use_bulk_reads"]

_GROW_BYTES = 4 * 2**20
"""Most bytes :func:`read_exactly` sets aside before they have arrived."""


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
    # the length comes from the peer: memory grows with what arrives, not with what it claims
    buffer = bytearray(min(nr_bytes, _GROW_BYTES))
    received = 0
    while received < nr_bytes:
        if received == len(buffer):
            buffer.extend(bytes(min(nr_bytes - received, _GROW_BYTES)))
        with memoryview(buffer) as view:
            count = sock.recv_into(view[received:], len(buffer) - received)
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


def use_blocking_waits(assoc: Association, wait_s: float) -> None:
    """Make ``assoc``'s network thread wait in ``select`` instead of sleeping and polling.

    Call it from an ``EVT_REQUESTED`` handler. The wake-up socket pair is closed when the
    association's connection has closed (or, at the latest, when the association is
    garbage).

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        An association we accept.
    wait_s : float
        Longest wait before the thread looks round although nothing woke it (> 0).

    Raises
    ------
    ValueError
        If ``wait_s`` is not positive.
    """
    if not wait_s > 0:
        raise ValueError(f"wait_s must be > 0, got {wait_s!r}")
    dul = assoc.dul
    look = dul._is_transport_event
    wake_in, wake_out = socket.socketpair()
    wake_in.setblocking(False)
    wake_out.setblocking(False)
    weakref.finalize(dul, _close_pair, wake_in, wake_out)

    def wake() -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed
            wake_out.send(b"\0")

    queue_for_peer = dul.to_provider_queue
    queue_for_peer.put = call_then(queue_for_peer.put, wake)  # type: ignore[method-assign]
    dul.kill_dul = call_then(dul.kill_dul, wake)  # type: ignore[method-assign]

    def wait_then_look() -> bool:
        transport = dul.socket
        sock = transport.socket if transport is not None else None
        if sock is None:
            _close_pair(wake_in, wake_out)  # the connection has closed: no more waits
            return look()
        idle = dul.to_provider_queue.empty() and dul.event_queue.empty()
        buffered = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if idle and not buffered and wake_in.fileno() != -1:
            # a socket closed meanwhile raises here; pynetdicom's own look then sees it
            with contextlib.suppress(OSError, ValueError):
                ready, _, _ = select.select([sock, wake_in], [], [], wait_s)
                if wake_in in ready:
                    wake_in.recv(4096)
        return look()

    dul._is_transport_event = wait_then_look  # type: ignore[method-assign]
    dul._run_loop_delay = 0.0


def _close_pair(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()
