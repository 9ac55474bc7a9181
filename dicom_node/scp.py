"""Storage SCP: accept C-STORE, spool the bytes durably, announce header facts.

The C-STORE handler does little: check free disk, read the header up to the pixel data (the
pixel data element's length is checked from its element header, never decoded), write the
received Part-10 bytes to the spool (synced write + atomic rename + folder fsync), call
``on_instance`` (which should only queue work), answer. Every status it
returns is listed in :mod:`dicom_node.status`. With ``ScpConfig.direct_pdata`` the
P-DATA-TF PDUs of plainly valid C-STOREs are read by :mod:`dicom_node.pdata_receive`, not
pynetdicom; both paths store and answer through the same code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom._handlers import standard_dimse_recv_handler
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.acceptors import AcceptorPool, Admission, ParentLink, Rejection, listen
from dicom_node.context_copies import use_cheap_context_copies
from dicom_node.contexts import ACCEPTED_TRANSFER_SYNTAXES, storage_sop_classes
from dicom_node.handoff import HandedConnectionServer
from dicom_node.instance import (
    InstanceInfo,
    OwnResultMarkers,
    PseudonymKey,
    header_uids,
    read_instance_info,
)
from dicom_node.part10 import part10_prefix
from dicom_node.pdata_receive import DirectPData, StoreRequest
from dicom_node.pixel_header import read_received_header
from dicom_node.reactor_wakeups import use_reactor_wakeups
from dicom_node.socket_reads import use_blocking_waits, use_bulk_reads
from dicom_node.spool import PendingWrite, Spool
from dicom_node.status import StoreStatus
from dicom_node.store_response import AnsweredInline, use_fast_store_success
from dicom_node.tls import ServerTls, TlsHandshakeError, accept_tls, describe_peer
from dicom_node.validation import check_ae_title

__all__ = ["AssociationRecord", "ScpConfig", "StorageSCP", "StoreRefusal"]

LOGGER = logging.getLogger(__name__)

_REJECT_PERMANENT = 0x01
_REJECT_TRANSIENT = 0x02
_SOURCE_SERVICE_USER = 0x01
_SOURCE_PROVIDER_PRESENTATION = 0x03
_DIAG_CALLING_AE_NOT_RECOGNISED = 0x03
_DIAG_CALLED_AE_NOT_RECOGNISED = 0x07
_DIAG_LOCAL_LIMIT_EXCEEDED = 0x02
_DIAG_NO_REASON = 0x01
_STATUS_MISTYPED_ARGUMENT = 0x0212
_ERROR_COMMENT_MAX = 64  # LO
_DIMSE_RECV = evt.EVT_DIMSE_RECV
_STORE_RQ_KEYWORDS = ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority")


@dataclass
class ScpConfig:
    """Settings of the storage SCP.

    Parameters
    ----------
    ae_title : str
        Our AE title (1-16 characters).
    host : str
        Address to listen on (``"0.0.0.0"`` for all interfaces).
    port : int or None
        TCP port of plain DICOM; 0 lets the OS pick a free port (read it from
        :attr:`StorageSCP.port`); ``None``: no plain port (TLS only).
    allowed_calling_aes : Mapping[str, str | None]
        Calling AE title -> host name or IP address it must connect from, or ``None`` for
        any address. An **empty mapping accepts every calling AE** (use only in closed
        networks). Unknown AEs or wrong addresses are rejected at association time.
    check_called_ae : bool
        Reject associations whose called AE title is not ``ae_title``.
    max_associations : int
        Concurrent associations; more are rejected (local limit exceeded).
    max_associations_per_ae : int
        Concurrent associations of one calling AE title; more are rejected at once
        (transient, local limit exceeded), so one misbehaving client cannot take every slot.
    min_free_bytes : int
        C-STORE is refused with 0xA700 when storing the instance would leave less free
        space on the spool file system.
    maximum_pdu_size : int
        Largest PDU we accept (0 = unlimited); 128 KiB cut CPU per image ~20 %.
    max_pixel_bytes : int
        Instances whose header declares more pixel data than this are refused (0xC220).
    acse_timeout_s, dimse_timeout_s, network_timeout_s : float
        pynetdicom timeouts in seconds. ``network_timeout_s`` is the idle-association
        timeout: an association on which nothing arrives for that long is aborted.
        ``acse_timeout_s`` also bounds the TLS handshake.
    transport_poll_s : float
        Longest time an accepted association's threads sleep when nothing wakes them: the
        network thread in ``select`` (:func:`dicom_node.socket_reads.use_blocking_waits`)
        and the association thread (:func:`dicom_node.reactor_wakeups.use_reactor_wakeups`).
        0 < value <= 0.01.
    tls : ServerTls or None
        Certificates of the TLS port; required with ``tls_port``.
    tls_port : int or None
        TCP port of DICOM over TLS (0: the OS picks, read :attr:`StorageSCP.tls_port`);
        ``None``: no TLS port. The same AE, policy and limits serve both ports.
    direct_pdata : bool
        Read the P-DATA-TF PDUs of C-STORE requests ourselves
        (:mod:`dicom_node.pdata_receive`) instead of through pynetdicom's PDU decoding,
        state machine and message assembly; every other message still goes through
        pynetdicom. ``False``: pynetdicom reads everything.
    acceptor_processes : int
        Processes that take associations on the plain port (1..32). With 1 everything runs
        in this process. With N > 1, this process listens and hands each connection to
        the one of N child processes with the fewest open connections (see
        :mod:`dicom_node.acceptors`): concurrent senders use several cores; admission,
        limits, ``on_instance`` and the audit callbacks stay in this process, the TLS
        port too.

    Raises
    ------
    ValueError
        On an invalid AE title, port, limit or timeout, a TLS port without TLS settings or
        neither port.
    """

    ae_title: str
    host: str = "0.0.0.0"
    port: int | None = 11112
    allowed_calling_aes: Mapping[str, str | None] = field(default_factory=dict)
    check_called_ae: bool = True
    max_associations: int = 10
    max_associations_per_ae: int = 4
    min_free_bytes: int = 2 * 1024**3
    maximum_pdu_size: int = 131072
    max_pixel_bytes: int = 2 * 1024**3
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    transport_poll_s: float = 0.01
    tls: ServerTls | None = None
    tls_port: int | None = None
    acceptor_processes: int = 1
    direct_pdata: bool = True

    def __post_init__(self) -> None:
        self.ae_title = check_ae_title(self.ae_title, "ScpConfig.ae_title")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError("ScpConfig.host must be a non-empty address")
        for name in ("port", "tls_port"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535
            ):
                raise ValueError(f"ScpConfig.{name} must be 0..65535 or None, got {value!r}")
        if self.port is None and self.tls_port is None:
            raise ValueError("ScpConfig needs a port, a tls_port or both")
        if self.tls_port is not None and not isinstance(self.tls, ServerTls):
            raise ValueError("ScpConfig.tls_port needs ScpConfig.tls (a ServerTls)")
        if self.tls is not None and not isinstance(self.tls, ServerTls):
            raise ValueError("ScpConfig.tls must be a ServerTls or None")
        if self.port is not None and self.port != 0 and self.port == self.tls_port:
            raise ValueError("ScpConfig.port and ScpConfig.tls_port must differ")
        allowed: dict[str, str | None] = {}
        for title, address in dict(self.allowed_calling_aes).items():
            key = check_ae_title(title, "allowed calling AE title")
            if address is not None and (not isinstance(address, str) or not address.strip()):
                raise ValueError(f"allowed host for {key!r} must be a non-empty string or None")
            allowed[key] = address.strip() if address is not None else None
        self.allowed_calling_aes = allowed
        if self.max_associations < 1:
            raise ValueError(
                f"ScpConfig.max_associations must be >= 1, got {self.max_associations}"
            )
        if self.max_associations_per_ae < 1:
            raise ValueError(
                "ScpConfig.max_associations_per_ae must be >= 1, "
                f"got {self.max_associations_per_ae}"
            )
        if self.max_pixel_bytes < 1:
            raise ValueError(f"ScpConfig.max_pixel_bytes must be >= 1, got {self.max_pixel_bytes}")
        if self.min_free_bytes < 0:
            raise ValueError(f"ScpConfig.min_free_bytes must be >= 0, got {self.min_free_bytes}")
        if self.maximum_pdu_size != 0 and self.maximum_pdu_size < 4096:
            raise ValueError(
                f"ScpConfig.maximum_pdu_size must be 0 or >= 4096, got {self.maximum_pdu_size}"
            )
        processes = self.acceptor_processes
        if isinstance(processes, bool) or not isinstance(processes, int):
            raise ValueError(f"ScpConfig.acceptor_processes must be 1..32, got {processes!r}")
        if not 1 <= processes <= 32:
            raise ValueError(f"ScpConfig.acceptor_processes must be 1..32, got {processes!r}")
        if not isinstance(self.direct_pdata, bool):
            raise ValueError(f"ScpConfig.direct_pdata must be a bool, got {self.direct_pdata!r}")
        poll = self.transport_poll_s
        if isinstance(poll, bool) or not isinstance(poll, int | float) or not 0 < poll <= 0.01:
            raise ValueError(f"ScpConfig.transport_poll_s must be in (0, 0.01], got {poll!r}")
        for name in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"ScpConfig.{name} must be > 0 seconds, got {value!r}")


@dataclass(frozen=True)
class AssociationRecord:
    """What happened on one association (for the audit trail).

    Attributes
    ----------
    calling_ae, called_ae : str
        AE titles as sent by the peer.
    address : str
        Peer IP address.
    port : int
        Peer TCP port.
    accepted : bool
        Whether the association was accepted.
    reason : str
        Why it was rejected, or how it ended (``"released"``, ``"aborted"``, ...).
    instances : int
        Instances stored with success.
    failures : int
        C-STORE requests answered with a failure status.
    bytes : int
        Size in bytes of the instances stored with success.
    started_at, ended_at : float
        Epoch seconds.
    tls : str
        ``""`` over plain TCP; over TLS the protocol version and the peer certificate's
        subject common name (``"TLSv1.3, peer certificate CN=scanner"``).
    acceptor_pid : int
        Process id of the process that served the association.
    """

    calling_ae: str
    called_ae: str
    address: str
    port: int
    accepted: bool
    reason: str
    instances: int
    failures: int
    bytes: int
    started_at: float
    ended_at: float
    tls: str = ""
    acceptor_pid: int = 0


@dataclass(frozen=True)
class StoreRefusal:
    """One C-STORE answered with a failure status (for the audit trail).

    Attributes
    ----------
    calling_ae : str
        Sender's AE title.
    address : str
        Sender's IP address.
    sop_instance_uid : str
        Affected SOP Instance UID of the request as received (may be empty or invalid).
    status : int
        The DIMSE status we returned (see :mod:`dicom_node.status`).
    reason : str
        Why, in words (no patient data); also sent as the response's Error Comment.
    quarantined : str or None
        File name in the quarantine folder when the bytes were kept there.
    at : float
        Epoch seconds.
    """

    calling_ae: str
    address: str
    sop_instance_uid: str
    status: int
    reason: str
    quarantined: str | None
    at: float


@dataclass(frozen=True)
class _Outcome:
    status: StoreStatus
    reason: str = ""
    quarantined: str | None = None


@dataclass
class _AssocState:
    calling_ae: str
    called_ae: str
    address: str
    port: int
    started_at: float
    accepted: bool = False
    reason: str = "connection closed"
    instances: int = 0
    failures: int = 0
    bytes_received: int = 0
    tls: str = ""
    token: str = ""


class StorageSCP:
    """A Storage + Verification SCP that spools every instance before acknowledging it.

    Parameters
    ----------
    config : ScpConfig
        Network and policy settings.
    spool : Spool
        Where instances go.
    on_instance : Callable[[InstanceInfo], None]
        Called (in the association's network thread; with acceptor processes in the
        thread that talks to that process) after the file is on disk; keep it fast. If it
        raises, the peer gets 0xC211 and the file stays spooled.
    on_association : Callable[[AssociationRecord], None] or None
        Called once per association when it ends or is rejected.
    on_refusal : Callable[[StoreRefusal], None] or None
        Called (in the network thread, keep it fast) for every C-STORE answered with a
        failure status, including malformed requests and A700.
    own_markers : OwnResultMarkers
        Recognises our own results (``InstanceInfo.is_own_result``).
    paused : Callable[[], bool] or None
        Asked for every association request; while it returns True, associations are
        rejected as transient (the sender keeps its data and tries again later).
    pseudonyms : PseudonymKey
        Site secret keying ``InstanceInfo.patient_key``.
    """

    def __init__(
        self,
        config: ScpConfig,
        spool: Spool,
        on_instance: Callable[[InstanceInfo], None],
        on_association: Callable[[AssociationRecord], None] | None = None,
        *,
        own_markers: OwnResultMarkers,
        pseudonyms: PseudonymKey,
        on_refusal: Callable[[StoreRefusal], None] | None = None,
        paused: Callable[[], bool] | None = None,
    ) -> None:
        if not isinstance(config, ScpConfig):
            raise TypeError("config must be a ScpConfig")
        if not isinstance(spool, Spool):
            raise TypeError("spool must be a Spool")
        if not callable(on_instance):
            raise TypeError("on_instance must be callable")
        if on_association is not None and not callable(on_association):
            raise TypeError("on_association must be callable or None")
        if not isinstance(own_markers, OwnResultMarkers):
            raise TypeError("own_markers must be an OwnResultMarkers")
        if not isinstance(pseudonyms, PseudonymKey):
            raise TypeError("pseudonyms must be a PseudonymKey")
        if on_refusal is not None and not callable(on_refusal):
            raise TypeError("on_refusal must be callable or None")
        if paused is not None and not callable(paused):
            raise TypeError("paused must be callable or None")
        self._on_refusal = on_refusal
        self._paused = paused
        self._config = config
        self._spool = spool
        self._on_instance = on_instance
        self._on_association = on_association
        self._own_markers = own_markers
        self._pseudonyms = pseudonyms
        self._servers: list[ThreadedAssociationServer] = []
        self._ae: AE | None = None
        self._allowed_ips: dict[str, frozenset[str] | None] = {}
        self._states: dict[Association, _AssocState] = {}
        self._tls_peers: dict[Association, str] = {}
        self._tls_context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._link: ParentLink | None = None  # set in an acceptor process
        self._handoff: socket.socket | None = None  # set in an acceptor process
        self._pool: AcceptorPool | None = None  # acceptor processes of this parent
        self._remote: dict[str, tuple[Admission, float]] = {}  # children's associations
        self._tokens = itertools.count(1)
        self.port: int | None = None
        self.tls_port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start listening in background threads; returns once the socket accepts.

        Raises
        ------
        RuntimeError
            If already started.
        ValueError
            If an allowed host name cannot be resolved, or a TLS file cannot be loaded.
        OSError
            If the address cannot be bound.
        """
        if self._servers:
            raise RuntimeError("StorageSCP is already running")
        tls = self._config.tls
        self._tls_context = (
            tls.context() if tls is not None and self._config.tls_port is not None else None
        )
        self._allowed_ips = {
            title: None if host is None else _resolve(host)
            for title, host in self._config.allowed_calling_aes.items()
        }
        use_cheap_context_copies()  # pynetdicom deep-copies 171 contexts per association
        ae = AE(ae_title=self._config.ae_title)
        ae.acse_timeout = self._config.acse_timeout_s
        ae.dimse_timeout = self._config.dimse_timeout_s
        ae.network_timeout = self._config.network_timeout_s
        ae.maximum_associations = self._config.max_associations
        ae.maximum_pdu_size = self._config.maximum_pdu_size
        ae.require_called_aet = False  # checked in _handle_requested, which records it
        ae.add_supported_context(Verification)
        for sop_class in storage_sop_classes():
            ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._handle_requested),
            (evt.EVT_ACCEPTED, self._handle_accepted),
            (evt.EVT_REJECTED, self._handle_rejected),
            (evt.EVT_RELEASED, self._handle_released),
            (evt.EVT_ABORTED, self._handle_aborted),
            (evt.EVT_CONN_CLOSE, self._handle_conn_close),
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_DIMSE_RECV, self._handle_dimse_recv),
        ]
        self._ae = ae
        try:
            if self._config.port is not None and self._config.acceptor_processes > 1:
                self._start_pool()
            elif self._config.port is not None:
                self._start_plain(ae, handlers)
            if self._config.tls_port is not None:
                # The handshake runs in the connection's own thread (EVT_CONN_OPEN), not in
                # pynetdicom's accept loop, so a silent client cannot stall other clients.
                tls_handlers = [*handlers, (evt.EVT_CONN_OPEN, self._handle_tls_open)]
                server = ae.start_server(
                    (self._config.host, self._config.tls_port),
                    block=False,
                    evt_handlers=tls_handlers,
                )
                self._servers.append(server)
                self.tls_port = int(server.server_address[1])
        except BaseException:
            self.stop()
            raise
        LOGGER.info(
            "storage SCP %s listening on %s: plain port %s, TLS port %s",
            self._config.ae_title,
            self._config.host,
            self.port if self.port is not None else "off",
            self.tls_port if self.tls_port is not None else "off",
        )

    def _start_plain(self, ae: AE, handlers: list[Any]) -> None:
        address = (self._config.host, self._config.port)
        if self._link is None:
            server = ae.start_server(address, block=False, evt_handlers=handlers)
        else:  # an acceptor process: the parent accepts and hands connections over
            server = ae.make_server(
                address,
                evt_handlers=handlers,
                server_class=HandedConnectionServer,
                handoff=self._handoff,  # set by serve_for_parent
                on_dropped=self._report_connection_closed,
            )
            ae._servers.append(server)  # as start_server does; ae.shutdown() stops it
            threading.Thread(target=server.serve_forever, name="scp-acceptor", daemon=True).start()
        self._servers.append(server)
        self.port = int(server.server_address[1])

    def _report_connection_closed(self) -> None:
        """Tell the parent a handed-over connection is closed (served, or dropped unserved).

        The parent hands the next connection to the acceptor with the fewest open ones.
        """
        if self._link is not None:
            with contextlib.suppress(OSError, EOFError):
                self._link.connection_closed()

    def _start_pool(self) -> None:
        assert self._config.port is not None
        listener = listen(self._config.host, self._config.port)
        try:
            port = int(listener.getsockname()[1])
            child_config = dataclasses.replace(
                self._config, port=port, tls=None, tls_port=None, acceptor_processes=1
            )
            pool = AcceptorPool(
                self._config.acceptor_processes,
                listener,
                child_config,
                self._spool.root,
                self._spool.quarantine_dir,
                own_markers=self._own_markers,
                pseudonyms=self._pseudonyms,
                admit=self._admit_remote,
                on_instance=self._on_instance,
                on_finished=self._remote_finished,
                on_refusal=self._remote_refusal,
                on_lost=self._remote_lost,
            )
            pool.start()  # it closes the listener when it stops (or fails to start)
        except BaseException:
            listener.close()
            raise
        self._pool = pool
        self.port = port

    def serve_for_parent(self, link: ParentLink, handoff: socket.socket) -> None:
        """Start as one acceptor process of a parent (see :mod:`dicom_node.acceptors`).

        Admission goes to the parent; association records go there with their token; the
        connections come from the parent over ``handoff``.

        Parameters
        ----------
        link : ParentLink
            This process's end of the pipe to the parent.
        handoff : socket.socket
            This process's end of the connection hand-over channel
            (:mod:`dicom_node.handoff`).
        """
        self._link = link
        self._handoff = handoff
        self.start()

    @property
    def acceptor_pids(self) -> list[int]:
        """Process ids of the acceptor processes (empty with ``acceptor_processes = 1``)."""
        return self._pool.pids if self._pool is not None else []

    def stop(self) -> None:
        """Stop listening and end open associations (idempotent)."""
        servers, self._servers = self._servers, []
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        for server in servers:
            server.shutdown()
        if servers or pool is not None:
            LOGGER.info("storage SCP %s stopped", self._config.ae_title)
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None

    @property
    def is_running(self) -> bool:
        """``True`` between :meth:`start` and :meth:`stop`."""
        return bool(self._servers) or self._pool is not None

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ associations
    def _handle_tls_open(self, event: evt.Event) -> None:
        """TLS handshake of a connection to the TLS port (in the connection's thread)."""
        assoc = event.assoc
        transport = assoc.dul.socket
        context = self._tls_context
        if transport is None or transport.socket is None or context is None:
            return
        address, port = _peer(event.address)
        try:
            tls_sock = accept_tls(transport.socket, context, self._config.acse_timeout_s)
        except TlsHandshakeError as exc:
            # The socket is closed. Without this the association thread would wait
            # acse_timeout_s for an A-ASSOCIATE-RQ that cannot come, holding a slot of
            # max_associations: a few failed handshakes would lock every client out.
            assoc.acse_timeout = 0
            LOGGER.warning("TLS connection from %s refused: %s", address, exc)
            now = time.time()
            self._report(
                AssociationRecord(
                    calling_ae="",
                    called_ae="",
                    address=address,
                    port=port,
                    accepted=False,
                    reason=str(exc),
                    instances=0,
                    failures=0,
                    bytes=0,
                    started_at=now,
                    ended_at=now,
                    tls="handshake failed",
                )
            )
            return
        transport.socket = tls_sock
        with self._lock:
            self._tls_peers[assoc] = describe_peer(tls_sock)

    def _handle_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        use_blocking_waits(assoc, self._config.transport_poll_s)  # no idle polling
        use_fast_store_success(assoc)  # success answers without pydicom: 0.45 ms less CPU each
        use_bulk_reads(assoc)  # whole pieces per read instead of pynetdicom's 4 KiB ones
        # C-STORE requests are answered in the network thread (_store_inline); the copy
        # pynetdicom then queues for its association thread is dropped
        assoc.dimse.msg_queue = AnsweredInline()
        # its association thread sleeps until a message or a release comes, not 1 ms at a time
        use_reactor_wakeups(assoc, self._config.transport_poll_s)
        if self._config.direct_pdata:  # C-STORE PDUs read without pynetdicom's decoding
            self._read_directly(assoc)
        # pynetdicom's debug-log handler for received messages raises on the malformed
        # requests _handle_dimse_recv answers, which would skip ours: run it after ours.
        if any(h[0] is standard_dimse_recv_handler for h in assoc.get_handlers(_DIMSE_RECV)):
            assoc.unbind(_DIMSE_RECV, standard_dimse_recv_handler)
            assoc.bind(_DIMSE_RECV, standard_dimse_recv_handler)
        requestor = assoc.requestor
        primitive = requestor.primitive
        state = _AssocState(
            calling_ae=str(primitive.calling_ae_title if primitive else "").strip(),
            called_ae=str(primitive.called_ae_title if primitive else "").strip(),
            address=str(requestor.address),
            port=int(requestor.port),
            started_at=time.time(),
        )
        with self._lock:
            state.tls = self._tls_peers.pop(assoc, "")
            self._states[assoc] = state
        rejection = self._admission(assoc, state)
        if rejection is None:
            return
        LOGGER.warning(
            "rejecting association from %r at %s: %s",
            state.calling_ae,
            state.address,
            rejection.reason,
        )
        state.reason = rejection.reason
        assoc.acse.send_reject(rejection.result, rejection.source, rejection.diagnostic)
        assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ (as pynetdicom does)
        self._finish(assoc)

    def _read_directly(self, assoc: Association) -> None:
        """Read C-STORE P-DATA of ``assoc`` ourselves (:mod:`dicom_node.pdata_receive`)."""
        receiver: DirectPData

        def store(request: StoreRequest, instance: bytes) -> None:
            self._store_and_answer(assoc, request, instance, receiver.send_store_success)

        receiver = DirectPData(
            assoc,
            store,
            on_protocol_error=lambda reason: self._protocol_error(assoc, reason),
            max_pdu_bytes=self._config.maximum_pdu_size,
        )
        receiver.install()

    def _admission(self, assoc: Association, state: _AssocState) -> Rejection | None:
        if self._link is None:
            rejection = self._policy(state)
            if rejection is not None:
                return rejection
            with self._lock:
                return self._limits(state, exclude=assoc)
        state.token = f"{os.getpid()}-{next(self._tokens)}"
        request = Admission(
            state.token, state.calling_ae, state.called_ae, state.address, state.port
        )
        try:
            return self._link.admit(request)
        except (OSError, EOFError) as exc:
            return Rejection(
                f"node parent process unavailable: {_short(exc)}",
                _REJECT_TRANSIENT,
                _SOURCE_SERVICE_USER,
                _DIAG_NO_REASON,
            )

    def _policy(self, state: _AssocState) -> Rejection | None:
        """Allowed AEs and the pause switch."""
        reason = self._refusal_reason(state)
        if reason is not None:
            diagnostic = (
                _DIAG_CALLED_AE_NOT_RECOGNISED
                if reason.startswith("called")
                else _DIAG_CALLING_AE_NOT_RECOGNISED
            )
            return Rejection(reason, _REJECT_PERMANENT, _SOURCE_SERVICE_USER, diagnostic)
        if self._paused is not None and self._paused():
            # Transient: the sender keeps the exam and tries again later.
            return Rejection(
                "intake paused by an operator",
                _REJECT_TRANSIENT,
                _SOURCE_SERVICE_USER,
                _DIAG_NO_REASON,
            )
        return None

    def _limits(self, state: _AssocState, *, exclude: Association | None) -> Rejection | None:
        """max_associations, then max_associations_per_ae, over every acceptor process.

        The same order with one process and with several (pynetdicom's own total limit,
        checked after this handler, then never decides first). The caller holds
        ``self._lock``; ``exclude`` is the association being decided.
        """
        local = [s for other, s in self._states.items() if other is not exclude]
        remote = [admission.calling_ae for admission, _ in self._remote.values()]
        if len(local) + len(remote) >= self._config.max_associations:
            reason = "too many associations (max_associations reached)"
        else:
            others = sum(1 for s in local if s.calling_ae == state.calling_ae)
            others += sum(1 for calling_ae in remote if calling_ae == state.calling_ae)
            limit = self._config.max_associations_per_ae
            if others < limit:
                return None
            reason = (
                f"too many associations from this calling AE (max_associations_per_ae {limit})"
            )
        return Rejection(
            reason, _REJECT_TRANSIENT, _SOURCE_PROVIDER_PRESENTATION, _DIAG_LOCAL_LIMIT_EXCEEDED
        )

    def _admit_remote(self, request: Admission) -> Rejection | None:
        """Decide on an association an acceptor process received (in its link thread)."""
        state = _AssocState(
            calling_ae=request.calling_ae,
            called_ae=request.called_ae,
            address=request.address,
            port=request.port,
            started_at=time.time(),
        )
        rejection = self._policy(state)
        if rejection is not None:
            return rejection
        with self._lock:  # check and take a slot at once: two children cannot both get it
            rejection = self._limits(state, exclude=None)
            if rejection is None:
                self._remote[request.token] = (request, state.started_at)
        return rejection

    def _remote_finished(self, token: str, record: AssociationRecord) -> None:
        with self._lock:
            self._remote.pop(token, None)
        self._report(record)

    def _remote_lost(self, pid: int) -> None:
        """An acceptor process ended: free its associations' slots and audit them."""
        prefix = f"{pid}-"
        with self._lock:
            lost = [self._remote.pop(t) for t in list(self._remote) if t.startswith(prefix)]
        for admission, started_at in lost:
            self._report(
                AssociationRecord(
                    calling_ae=admission.calling_ae,
                    called_ae=admission.called_ae,
                    address=admission.address,
                    port=admission.port,
                    accepted=True,
                    reason=f"aborted: acceptor process {pid} ended (counts unknown; the "
                    "instances it answered are recorded)",
                    instances=0,
                    failures=0,
                    bytes=0,
                    started_at=started_at,
                    ended_at=time.time(),
                    acceptor_pid=pid,
                )
            )

    def _remote_refusal(self, refusal: StoreRefusal) -> None:
        if self._on_refusal is None:
            return
        try:
            self._on_refusal(refusal)
        except Exception:
            LOGGER.exception("on_refusal callback failed for %r", refusal.calling_ae)

    def _refusal_reason(self, state: _AssocState) -> str | None:
        if self._config.check_called_ae and state.called_ae != self._config.ae_title:
            return f"called AE title {state.called_ae!r} is not {self._config.ae_title!r}"
        if not self._allowed_ips:
            return None
        if state.calling_ae not in self._allowed_ips:
            return "calling AE title not in allowed_calling_aes"
        allowed = self._allowed_ips[state.calling_ae]
        if allowed is not None and state.address not in allowed:
            return "calling AE title not allowed from this address"
        return None

    def _handle_accepted(self, event: evt.Event) -> None:
        state = self._state(event.assoc)
        if state is not None:
            state.accepted = True
            state.reason = "connection closed without release"

    def _handle_rejected(self, event: evt.Event) -> None:
        state = self._state(event.assoc)
        if state is None:
            return
        primitive = event.assoc.acceptor.primitive
        diagnostic = (
            (primitive.result_source, primitive.diagnostic) if primitive is not None else None
        )
        if diagnostic == (0x03, 0x02):
            state.reason = "too many associations (max_associations reached)"
        else:
            state.reason = f"rejected during negotiation (source, diagnostic) = {diagnostic}"
        LOGGER.warning(
            "rejected association from %r at %s: %s", state.calling_ae, state.address, state.reason
        )
        self._finish(event.assoc)

    def _handle_released(self, event: evt.Event) -> None:
        state = self._state(event.assoc)
        if state is not None:
            state.reason = "released"

    def _handle_aborted(self, event: evt.Event) -> None:
        state = self._state(event.assoc)
        if state is None or state.reason.startswith("aborted by us"):
            return
        if event.assoc.dul.idle_timer_expired():
            state.reason = f"aborted by us: idle for {self._config.network_timeout_s:g} s"
        else:
            state.reason = "aborted"

    def _handle_conn_close(self, event: evt.Event) -> None:
        assoc = event.assoc
        self._report_connection_closed()
        state = self._state(assoc)
        if state is None:
            with self._lock:
                self._tls_peers.pop(assoc, None)
            return
        if not state.accepted or assoc is threading.current_thread() or not assoc.is_alive():
            self._finish(assoc)
            return
        # EVT_RELEASED/EVT_ABORTED may still be on their way in the association thread:
        # record the association once that thread has ended.
        threading.Thread(
            target=self._finish_after_thread, args=(assoc,), name="scp-assoc-record", daemon=True
        ).start()

    def _finish_after_thread(self, assoc: Association) -> None:
        assoc.join(timeout=self._config.network_timeout_s + self._config.dimse_timeout_s)
        self._finish(assoc)

    def _state(self, assoc: Association) -> _AssocState | None:
        with self._lock:
            return self._states.get(assoc)

    def _finish(self, assoc: Association) -> None:
        with self._lock:
            state = self._states.pop(assoc, None)
        if state is None:
            return
        record = AssociationRecord(
            calling_ae=state.calling_ae,
            called_ae=state.called_ae,
            address=state.address,
            port=state.port,
            accepted=state.accepted,
            reason=state.reason,
            instances=state.instances,
            failures=state.failures,
            bytes=state.bytes_received,
            started_at=state.started_at,
            ended_at=time.time(),
            tls=state.tls,
            acceptor_pid=os.getpid(),
        )
        if state.accepted:
            LOGGER.info(
                "association from %r at %s ended (%s): %d instances, %d failures, %d bytes",
                record.calling_ae,
                record.address,
                record.reason,
                record.instances,
                record.failures,
                record.bytes,
            )
        if self._link is not None:
            try:
                self._link.finished(state.token, record)
            except (OSError, EOFError) as exc:
                LOGGER.error("association record not handed to the parent: %s", _short(exc))
            return
        self._report(record)

    def _report(self, record: AssociationRecord) -> None:
        if self._on_association is None:
            return
        try:
            self._on_association(record)
        except Exception:
            LOGGER.exception("on_association callback failed for %r", record.calling_ae)

    # ------------------------------------------------------------------ C-STORE
    def _handle_store(self, event: evt.Event) -> Dataset:
        """C-STORE requests not answered in the network thread (see :meth:`_store_inline`)."""
        state = self._state(event.assoc)
        calling_ae = state.calling_ae if state is not None else ""
        request = event.request
        sop_uid = str(request.AffectedSOPInstanceUID or "")
        try:
            encoded = _encoded_dataset(event, sop_uid)
        except Exception as exc:
            LOGGER.error("C-STORE %s from %r failed: %s", sop_uid, calling_ae, _short(exc))
            outcome = _Outcome(StoreStatus.PROCESSING_FAILURE, f"store failed: {_short(exc)}")
        else:
            class_uid = str(request.AffectedSOPClassUID or "")
            outcome = self._store(event.assoc, calling_ae, sop_uid, class_uid, encoded)
        response = Dataset()
        response.Status = int(outcome.status)
        comment = self._answered(event.assoc, sop_uid, outcome)
        if comment is not None:
            response.ErrorComment = comment
        return response

    def _answered(self, assoc: Association, sop_uid: str, outcome: _Outcome) -> str | None:
        """Record a C-STORE outcome about to be answered; the Error Comment of a refusal."""
        if outcome.status == StoreStatus.SUCCESS:
            return None
        self._refused(assoc, sop_uid, outcome)
        return _error_comment(outcome.reason)

    def _refused(self, assoc: Association, sop_uid: str, outcome: _Outcome) -> None:
        state = self._state(assoc)
        if state is not None:
            state.failures += 1
        if self._on_refusal is None:
            return
        refusal = StoreRefusal(
            calling_ae=state.calling_ae if state is not None else "",
            address=state.address if state is not None else "",
            sop_instance_uid=sop_uid[:80],
            status=int(outcome.status),
            reason=outcome.reason,
            quarantined=outcome.quarantined,
            at=time.time(),
        )
        try:
            self._on_refusal(refusal)
        except Exception:
            LOGGER.exception("on_refusal callback failed for %r", refusal.calling_ae)

    def _store_inline(self, assoc: Association, message: C_STORE_RQ) -> None:
        """Store and answer a C-STORE in the network thread, as soon as it is decoded.

        pynetdicom hands decoded messages to a second thread that looks for them once per
        millisecond and then runs the handler; answering here saves that wait (about
        0.5 ms an image with one sender, which sends the next image only after our
        answer). Requests this does not take (an unknown presentation context, UIDs our
        file-meta framing does not write) go pynetdicom's way to :meth:`_handle_store`.
        """
        answered = assoc.dimse.msg_queue
        if not isinstance(answered, AnsweredInline):
            return
        context_id = int(message.context_id)  # type: ignore[arg-type]
        contexts = assoc.accepted_contexts
        syntax = next((c.transfer_syntax[0] for c in contexts if c.context_id == context_id), None)
        if syntax is None:
            return  # pynetdicom aborts the association
        command = message.command_set
        request = StoreRequest(
            context_id,
            int(command.MessageID),
            str(command.AffectedSOPClassUID),
            str(command.AffectedSOPInstanceUID),
        )
        try:
            prefix = part10_prefix(request.sop_class_uid, request.sop_instance_uid, str(syntax))
        except ValueError:
            return
        answered.add(context_id, request.message_id)  # pynetdicom's copy is dropped
        self._store_and_answer(assoc, request, prefix + message.data_set.getvalue())

    def _store_and_answer(
        self,
        assoc: Association,
        request: StoreRequest,
        encoded: bytes,
        send_success: Callable[[StoreRequest], bool] | None = None,
    ) -> None:
        """Store one instance (Part-10 bytes) and send the C-STORE response, once.

        ``send_success``, if given, sends a success response itself (``False``: it could
        not, pynetdicom sends it); failures always go through pynetdicom.
        """
        sop_uid = request.sop_instance_uid
        class_uid = request.sop_class_uid
        state = self._state(assoc)
        calling_ae = state.calling_ae if state is not None else ""
        try:
            outcome = self._store(assoc, calling_ae, sop_uid, class_uid, encoded)
        except Exception as exc:  # _store answers its own errors; this is the last guard
            LOGGER.exception("C-STORE %s from %r failed", sop_uid, calling_ae)
            outcome = _Outcome(StoreStatus.PROCESSING_FAILURE, f"store failed: {_short(exc)}")
        succeeded = outcome.status == StoreStatus.SUCCESS
        if succeeded and send_success is not None and send_success(request):
            return  # sent straight to the socket
        response = C_STORE()
        response.MessageIDBeingRespondedTo = request.message_id
        response.AffectedSOPClassUID = class_uid
        response.AffectedSOPInstanceUID = sop_uid
        response.Status = int(outcome.status)
        response.ErrorComment = self._answered(assoc, sop_uid, outcome)
        assoc.dimse.send_msg(response, request.context_id)

    def _protocol_error(self, assoc: Association, reason: str) -> None:
        """Record why the association is being aborted for a broken P-DATA-TF stream."""
        state = self._state(assoc)
        if state is not None:
            state.reason = f"aborted by us: {reason}"

    def _handle_dimse_recv(self, event: evt.Event) -> None:
        """Answer received requests in the network thread: C-STOREs, and malformed ones.

        A plainly valid C-STORE is stored and answered here (:meth:`_store_inline`).
        pynetdicom ignores a request that lacks a required parameter (e.g. a C-STORE with an
        empty Affected SOP Instance UID), and the peer waits for an answer that never comes:
        for such a request this sends the failure response itself, or aborts when there is
        no Message ID to answer. Requests pynetdicom cannot decode at all are aborted by
        pynetdicom.
        """
        if _plainly_valid_store(event.message):
            self._store_inline(event.assoc, event.message)  # the usual case
            return
        try:
            request = event.message.message_to_primitive()
        except Exception:
            return  # pynetdicom aborts the association for undecodable messages
        if request.MessageIDBeingRespondedTo is not None or request.is_valid_request:
            return
        missing = [k for k in request.REQUEST_KEYWORDS if getattr(request, k) is None]
        is_store = isinstance(request, C_STORE)
        kind = type(request).__name__.replace("_", "-")
        reason = f"malformed {kind} request: no {', '.join(missing)}"
        assoc = event.assoc
        state = self._state(assoc)
        LOGGER.error("%s from %r", reason, state.calling_ae if state is not None else "?")
        if request.MessageID is None:
            if state is not None:
                state.reason = f"aborted by us: {reason}"
            assoc.abort()  # the non-blocking abort inside a notification handler
            return
        if not is_store:
            status = _STATUS_MISTYPED_ARGUMENT
        elif missing == ["AffectedSOPInstanceUID"]:
            status = StoreStatus.INVALID_SOP_INSTANCE
        else:
            status = StoreStatus.CANNOT_UNDERSTAND
        response = type(request)()
        response.MessageIDBeingRespondedTo = request.MessageID
        response.Status = int(status)
        response.ErrorComment = _error_comment(reason)
        for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
            if getattr(request, keyword, None) is not None:
                setattr(response, keyword, getattr(request, keyword))
        if is_store:
            sop_uid = str(request.AffectedSOPInstanceUID or "")
            self._refused(assoc, sop_uid, _Outcome(StoreStatus(status), reason))
        assoc.dimse.send_msg(response, int(event.message.context_id))

    def _store(
        self, assoc: Association, calling_ae: str, sop_uid: str, class_uid: str, encoded: bytes
    ) -> _Outcome:
        """Spool one received instance if there is room; the outcome to answer."""
        try:
            free = self._spool.free_bytes()
            if free - len(encoded) < self._config.min_free_bytes:
                LOGGER.error(
                    "refusing C-STORE %s from %r: %d bytes free, %d needed + min_free_bytes %d",
                    sop_uid,
                    calling_ae,
                    free,
                    len(encoded),
                    self._config.min_free_bytes,
                )
                return _Outcome(
                    StoreStatus.OUT_OF_RESOURCES,
                    f"spool disk: {free // 2**20} MiB free, below the configured minimum",
                )
            # the file is written and made durable in the background while the header is read
            pending = self._spool.begin(encoded)
        except OSError as exc:
            return self._write_failed(exc, sop_uid, calling_ae)
        except Exception as exc:
            LOGGER.error("C-STORE %s from %r failed: %s", sop_uid, calling_ae, _short(exc))
            return _Outcome(StoreStatus.PROCESSING_FAILURE, f"store failed: {_short(exc)}")
        return self._store_spooling(assoc, calling_ae, sop_uid, class_uid, encoded, pending)

    def _store_spooling(
        self,
        assoc: Association,
        calling_ae: str,
        sop_uid: str,
        class_uid: str,
        encoded: bytes,
        pending: PendingWrite,
    ) -> _Outcome:
        """Check the header while ``pending`` writes, commit it, record the instance."""
        try:
            try:
                checked = self._check(encoded, calling_ae, sop_uid, class_uid, time.time())
                if isinstance(checked, _Outcome):
                    return checked
                info = checked
                pending.commit(
                    info.study_uid,
                    info.series_uid,
                    info.sop_instance_uid,
                    timeout_s=self._disk_wait_s,
                )
            finally:
                pending.discard(timeout_s=self._disk_wait_s)  # no-op once committed
        except OSError as exc:
            return self._write_failed(exc, sop_uid, calling_ae)
        except Exception as exc:
            LOGGER.error("C-STORE %s from %r failed: %s", sop_uid, calling_ae, _short(exc))
            return _Outcome(StoreStatus.PROCESSING_FAILURE, f"store failed: {_short(exc)}")
        try:
            self._on_instance(info)
        except Exception as exc:
            LOGGER.error(
                "on_instance failed for %s from %r (file kept in spool): %s",
                sop_uid,
                calling_ae,
                _short(exc),
            )
            return _Outcome(
                StoreStatus.PROCESSING_FAILURE, f"recording failed (file spooled): {_short(exc)}"
            )
        state = self._state(assoc)
        if state is not None:
            state.instances += 1
            state.bytes_received += len(encoded)
        return _Outcome(StoreStatus.SUCCESS)

    @property
    def _disk_wait_s(self) -> float:
        """Longest wait for the spool disk per instance: half the idle timeout.

        The peer waits quietly for our answer, so pynetdicom's idle timer runs meanwhile;
        a disk that hangs gets an A700 answer before that timer aborts the association.
        """
        return self._config.network_timeout_s / 2

    def _write_failed(self, exc: OSError, sop_uid: str, calling_ae: str) -> _Outcome:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            LOGGER.error("C-STORE %s from %r: spool disk full", sop_uid, calling_ae)
            return _Outcome(StoreStatus.OUT_OF_RESOURCES, "spool disk full while writing")
        if isinstance(exc, TimeoutError):  # a hung or very slow disk: answer, do not hang
            LOGGER.error("C-STORE %s from %r: %s", sop_uid, calling_ae, exc)
            wait_s = self._disk_wait_s
            return _Outcome(
                StoreStatus.OUT_OF_RESOURCES, f"spool disk too slow: not written in {wait_s:g} s"
            )
        LOGGER.error(
            "C-STORE %s from %r: spool write failed: %s", sop_uid, calling_ae, _short(exc)
        )
        return _Outcome(StoreStatus.PROCESSING_FAILURE, f"spool write failed: {_short(exc)}")

    def _check(
        self,
        encoded: bytes,
        calling_ae: str,
        sop_uid: str,
        class_uid: str,
        received_at: float,
    ) -> InstanceInfo | _Outcome:
        """Read and check the header; the facts to record, or the refusal (quarantined)."""
        try:
            # stops at native pixel data: only its element header is looked at
            header = read_received_header(encoded, max_pixel_bytes=self._config.max_pixel_bytes)
            ds = header.dataset
            uids = header_uids(ds)
        except Exception as exc:
            return self._quarantine(
                encoded,
                calling_ae,
                sop_uid,
                StoreStatus.CANNOT_UNDERSTAND,
                f"header not understood: {_short(exc)}",
            )
        study_uid, series_uid, instance_uid, data_class_uid = uids
        if instance_uid != sop_uid or data_class_uid != class_uid:
            LOGGER.error(
                "C-STORE %s from %r: dataset SOP class/instance %s/%s differ from request",
                sop_uid,
                calling_ae,
                data_class_uid,
                instance_uid,
            )
            return _Outcome(
                StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Class/Instance UID of the data set differ from the request",
            )
        problem = header.pixel_problem
        if problem is not None:
            return self._quarantine(
                encoded, calling_ae, sop_uid, StoreStatus.PIXEL_DATA_MISMATCH, problem
            )
        target = self._spool.path_for(study_uid, series_uid, instance_uid)
        try:
            info = read_instance_info(
                ds,
                path=target,
                calling_ae=calling_ae,
                received_at=received_at,
                own_markers=self._own_markers,
                pseudonyms=self._pseudonyms,
                size_bytes=len(encoded),
            )
        except ValueError as exc:
            return self._quarantine(
                encoded,
                calling_ae,
                sop_uid,
                StoreStatus.CANNOT_UNDERSTAND,
                f"header not understood: {_short(exc)}",
            )
        return info

    def _quarantine(
        self, encoded: bytes, calling_ae: str, sop_uid: str, status: StoreStatus, reason: str
    ) -> _Outcome:
        try:
            kept = self._spool.quarantine(encoded, reason, calling_ae=calling_ae)
        except OSError as write_error:
            LOGGER.error(
                "C-STORE %s from %r refused and not quarantined (%s): %s",
                sop_uid,
                calling_ae,
                _short(write_error),
                reason,
            )
            return _Outcome(status, reason)
        LOGGER.error(
            "C-STORE %s from %r quarantined as %s: %s", sop_uid, calling_ae, kept.name, reason
        )
        return _Outcome(status, reason, kept.name)


def _encoded_dataset(event: evt.Event, sop_uid: str) -> bytes:
    """The received Part-10 bytes: our file meta framing, else pynetdicom's.

    :func:`dicom_node.part10.part10_prefix` gives the bytes pynetdicom's
    ``event.encoded_dataset()`` would, without building a pydicom file meta dataset; UIDs
    it does not take (over 64 characters, not ASCII) go the pynetdicom way, so such a
    request is answered as before.
    """
    request = event.request
    try:
        prefix = part10_prefix(
            str(request.AffectedSOPClassUID or ""),
            sop_uid,
            str(event.context.transfer_syntax),
        )
    except ValueError:
        return event.encoded_dataset()
    return prefix + request.DataSet.getvalue()


def _plainly_valid_store(message: object) -> bool:
    """``True`` for a C-STORE-RQ whose required command elements all have values.

    Such a request becomes a valid pynetdicom request primitive, so the handler of
    received messages need not decode it a second time.
    """
    if not isinstance(message, C_STORE_RQ):
        return False
    command_set = message.command_set
    for keyword in _STORE_RQ_KEYWORDS:
        value = command_set.get(keyword)
        if value is None or value == "":
            return False
    return True


def _resolve(host: str) -> frozenset[str]:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ValueError(f"allowed host {host!r} cannot be resolved: {exc}") from exc
    return frozenset(str(info[4][0]) for info in infos)


def _error_comment(reason: str) -> str:
    """The reason as an Error Comment: LO, at most 64 printable ASCII characters, no backslash."""
    cleaned = "".join(c if " " <= c <= "~" and c != "\\" else "?" for c in reason)
    return cleaned[:_ERROR_COMMENT_MAX].rstrip()


def _peer(address: object) -> tuple[str, int]:
    """``(host, port)`` of an EVT_CONN_OPEN address (a tuple or AddressInformation)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return str(getattr(address, "address", address)), int(getattr(address, "port", 0) or 0)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."
