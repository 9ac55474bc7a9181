"""Accepted connections handed over a Unix socket pair (dicom_node.handoff)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dicom_node.handoff import hand_over, take_over


@pytest.fixture
def channel() -> Iterator[tuple[socket.socket, socket.socket]]:
    sending, receiving = socket.socketpair()
    yield sending, receiving
    sending.close()
    receiving.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    yield client, accepted
    client.close()
    accepted.close()


def test_a_handed_connection_carries_the_peer_bytes_both_ways(
    channel: tuple[socket.socket, socket.socket], tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, accepted = tcp_pair
    hand_over(channel[0], accepted)
    accepted.close()  # the sender's copy; the connection lives on in the receiver's
    taken = take_over(channel[1])
    with taken:
        assert taken.getpeername() == client.getsockname()
        assert taken.gettimeout() is None  # blocking, as accept() gives it
        client.sendall(b"A-ASSOCIATE-RQ")
        assert taken.recv(64) == b"A-ASSOCIATE-RQ"
        taken.sendall(b"A-ASSOCIATE-AC")
        assert client.recv(64) == b"A-ASSOCIATE-AC"
    assert client.recv(64) == b""  # closing the handed copy closes the connection


def test_several_connections_arrive_in_order(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        clients = [socket.create_connection(server.getsockname()) for _ in range(3)]
        for _ in clients:
            accepted, _ = server.accept()
            with accepted:
                hand_over(channel[0], accepted)
    try:
        taken = [take_over(channel[1]) for _ in clients]
        assert [t.getpeername() for t in taken] == [c.getsockname() for c in clients]
        for t in taken:
            t.close()
    finally:
        for c in clients:
            c.close()


def test_a_closed_channel_is_an_end_of_file(channel: tuple[socket.socket, socket.socket]) -> None:
    channel[0].close()
    with pytest.raises(EOFError, match="closed the hand-over channel"):
        take_over(channel[1])


def test_a_message_without_a_descriptor_is_refused(
    channel: tuple[socket.socket, socket.socket],
) -> None:
    channel[0].sendall(b"C")
    with pytest.raises(OSError, match="0 descriptor"):
        take_over(channel[1])


def test_handing_to_a_receiver_that_has_gone_fails(
    channel: tuple[socket.socket, socket.socket], tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    channel[1].close()
    with pytest.raises(OSError):
        hand_over(channel[0], tcp_pair[1])
