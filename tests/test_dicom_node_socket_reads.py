"""Whole-piece socket reads keep pynetdicom's read contract."""

from __future__ import annotations

import os
import socket
import threading
import tracemalloc

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


def test_a_claimed_length_far_beyond_what_arrives_sets_aside_little_memory() -> None:
    """A PDU header may claim up to 4 GiB; only what the peer really sends is held."""
    ours, theirs = socket.socketpair()
    tracemalloc.start()
    try:
        with ours:
            theirs.sendall(b"x" * 10_000)
            theirs.close()
            got = read_exactly(ours, 2**32 - 1)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == bytearray(b"x" * 10_000)
    assert peak_bytes < 16 * 2**20


def test_a_read_larger_than_one_growth_step_arrives_whole() -> None:
    data = os.urandom(9 * 2**20 + 17)  # more than two steps of the buffer's growth
    ours, theirs = socket.socketpair()
    with ours, theirs:
        sender = threading.Thread(target=theirs.sendall, args=(data,))
        sender.start()
        got = read_exactly(ours, len(data))
        sender.join()
    assert bytes(got) == data


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
