"""Whole-piece socket reads keep pynetdicom's read contract."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.socket_reads import read_exactly, use_blocking_waits


def test_a_large_read_arrives_whole_and_in_order() -> None:
    data = os.urandom(400_000)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        sender = threading.Thread(target=theirs.sendall, args=(data,))
        sender.start()
        first = read_exactly(ours, 6)
        rest = read_exactly(ours, len(data) - 6)
        sender.join()
    assert bytes(first + rest) == data


def test_a_peer_that_closes_early_gives_what_arrived() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.sendall(b"abc")
        theirs.close()
        assert read_exactly(ours, 10) == bytearray(b"abc")
        assert read_exactly(ours, 10) == bytearray()


def test_a_silent_peer_times_out() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(0.05)
        theirs.sendall(b"ab")
        with pytest.raises(TimeoutError):
            read_exactly(ours, 4)


def test_a_closed_socket_and_a_negative_size_are_errors() -> None:
    with pytest.raises(OSError, match="closed"):
        read_exactly(None, 4)
    ours, theirs = socket.socketpair()
    with ours, theirs, pytest.raises(ValueError, match=">= 0"):
        read_exactly(ours, -1)


def test_waiting_needs_a_positive_time() -> None:
    assoc = Association(AE(), "acceptor")
    for wait_s in (0, -1.0):
        with pytest.raises(ValueError, match="wait_s"):
            use_blocking_waits(assoc, wait_s)
