"""Accepted associations sleep while idle and wake at once for work (no polling)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from dicom_node.reactor_wakeups import use_reactor_wakeups
from dicom_node.socket_reads import use_blocking_waits

LONG_WAIT_S = 5.0
"""Longest sleep given to the server's threads: a missed wake-up costs this much."""


@dataclass
class Server:
    port: int
    loops: list[int]  # reactor and network-thread looks, counted
    accepted: list[Association]


@pytest.fixture
def server() -> Iterator[Server]:
    """A Verification SCP whose accepted associations wait up to LONG_WAIT_S between looks."""
    ae = AE("WAKE")
    ae.add_supported_context(Verification)
    ae.network_timeout = 30
    loops = [0]
    accepted: list[Association] = []

    def requested(event: evt.Event) -> None:
        assoc = event.assoc
        use_blocking_waits(assoc, LONG_WAIT_S)
        use_reactor_wakeups(assoc, LONG_WAIT_S)
        look = assoc.dul._is_transport_event

        def counted() -> bool:
            loops[0] += 1
            return bool(look())

        assoc.dul._is_transport_event = counted  # type: ignore[method-assign]
        accepted.append(assoc)

    scp = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_REQUESTED, requested)]
    )
    try:
        yield Server(scp.server_address[1], loops, accepted)
    finally:
        scp.shutdown()


def _associate(port: int) -> Association:
    ae = AE("SENDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="WAKE")
    assert assoc.is_established
    return assoc


def test_echo_and_release_are_answered_without_waiting_out_the_sleep(server: Server) -> None:
    started = time.monotonic()
    assoc = _associate(server.port)
    for _ in range(3):
        assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    assert time.monotonic() - started < LONG_WAIT_S / 2  # each step woke the server at once


def test_an_abort_from_the_peer_ends_the_association_at_once(server: Server) -> None:
    assoc = _associate(server.port)
    assoc.abort()
    (accepted,) = server.accepted
    accepted.join(timeout=LONG_WAIT_S / 2)
    assert not accepted.is_alive()
    assert accepted.is_aborted


def test_a_dropped_connection_ends_the_association_at_once(server: Server) -> None:
    assoc = _associate(server.port)
    transport = assoc.dul.socket
    assert transport is not None and transport.socket is not None
    transport.socket.shutdown(socket.SHUT_RDWR)  # the peer vanishes without a word
    (accepted,) = server.accepted
    accepted.join(timeout=LONG_WAIT_S / 2)
    assert not accepted.is_alive()
    assoc.abort()


def test_an_idle_association_sleeps_instead_of_polling(server: Server) -> None:
    assoc = _associate(server.port)
    before = server.loops[0]
    time.sleep(1.0)
    looks = server.loops[0] - before
    # pynetdicom's own loop looks about 1000 times a second; ours waits for data or a wake-up
    assert looks <= 5
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_the_server_stopping_a_sleeping_association_ends_it_at_once(server: Server) -> None:
    assoc = _associate(server.port)
    (accepted,) = server.accepted
    stopper = threading.Thread(target=accepted.abort)  # e.g. the node shutting down
    stopper.start()
    stopper.join(timeout=LONG_WAIT_S / 2)
    accepted.join(timeout=LONG_WAIT_S / 2)
    assert not stopper.is_alive() and not accepted.is_alive()
    assert assoc.is_aborted or not assoc.is_established


def test_reactor_wakeups_need_a_positive_wait() -> None:
    assoc = Association(AE(), "acceptor")
    with pytest.raises(ValueError, match="max_wait_s"):
        use_reactor_wakeups(assoc, 0)
