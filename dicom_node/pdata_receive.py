"""Our own reading of the P-DATA-TF PDUs that carry C-STORE requests.

For every received PDU pynetdicom copies it, triggers two events, decodes it into objects,
passes it through its state machine and its DIMSE message assembly, and decodes the
command set with pydicom: about half of the time a C-STORE spends in this process with one
sender. :class:`DirectPData` reads P-DATA-TF PDUs of an established association itself:
it splits them into PDV items, decodes the command set (implicit VR little endian, group
0000) and, for a plainly valid C-STORE request on an accepted presentation context,
collects the data set fragments behind the Part-10 file meta and hands the whole instance
to a callback, which stores and answers it.

Everything else goes to pynetdicom exactly as it arrived: other PDU types (association,
release, abort), P-DATA while the association is not established, and the PDVs of every
other message (C-ECHO, C-FIND, C-MOVE, malformed or unknown requests) are given back to
pynetdicom's own ``_read_pdu_data`` as a P-DATA-TF PDU holding only those PDVs. A stream
whose message structure cannot be followed (data before a command, a command set that does
not decode) goes to pynetdicom for the rest of the association. A P-DATA-TF PDU whose PDV
items do not fit its length, or a C-STORE whose fragments are broken off by another
message, aborts the association as pynetdicom does for an undecodable PDU.
"""

from __future__ import annotations

import logging
import re
import select
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pynetdicom.association import Association

from dicom_node.part10 import part10_prefix
from dicom_node.store_response import store_success_command

__all__ = [
    "DirectPData",
    "PDataError",
    "Pdv",
    "StoreRequest",
    "decode_command",
    "encode_pdata",
    "has_data_set",
    "split_pdvs",
    "store_request",
]

LOGGER = logging.getLogger(__name__)

_P_DATA_TF = 0x04
_HEADER_BYTES = 6  # PDU type, reserved, 4-byte length
_ESTABLISHED = "Sta6"
_COMMAND_BIT = 0x01
_LAST_BIT = 0x02
_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_PRIORITY = 0x0700
_DATA_SET_TYPE = 0x0800
_CLASS_UID = 0x0002
_INSTANCE_UID = 0x1000
_UID = re.compile(rb"[0-9.]{1,64}")
_PDV_OVERHEAD = 6  # PDV item length (4) + context ID (1) + message control header (1)
_MID_MESSAGE_WAIT_S = 0.05  # longest wait for the next PDU of a C-STORE being received
_TRANSPORT_CLOSED = "Evt17"
_INVALID_PDU = "Evt19"


class PDataError(ValueError):
    """A P-DATA-TF PDU or a command set that is not well formed."""


@dataclass(frozen=True)
class Pdv:
    """One presentation data value item of a P-DATA-TF PDU.

    Attributes
    ----------
    context_id : int
        Presentation context ID.
    control : int
        Message control header: bit 0 set for a command fragment (else data), bit 1 set
        for the last fragment of the command set or data set.
    value : bytes or memoryview
        The fragment.
    """

    context_id: int
    control: int
    value: bytes | memoryview

    @property
    def is_command(self) -> bool:
        """``True`` for a command fragment."""
        return bool(self.control & _COMMAND_BIT)

    @property
    def is_last(self) -> bool:
        """``True`` for the last fragment of its command set or data set."""
        return bool(self.control & _LAST_BIT)


@dataclass(frozen=True)
class StoreRequest:
    """A plainly valid C-STORE request, as its command set says.

    Attributes
    ----------
    context_id : int
        Presentation context it came on.
    message_id : int
        Message ID (0..65535).
    sop_class_uid, sop_instance_uid : str
        Affected SOP Class / Instance UID.
    """

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


def split_pdvs(body: bytes | bytearray | memoryview) -> list[Pdv]:
    """Split the body of a P-DATA-TF PDU (after its 6-byte header) into PDV items.

    Parameters
    ----------
    body : bytes, bytearray or memoryview
        The PDU without its header. The items' values are views of it (no copies).

    Returns
    -------
    list of Pdv
        In order.

    Raises
    ------
    PDataError
        If the body is empty, an item header is cut off, an item is shorter than its
        context ID and message control header, or an item reaches beyond the PDU.

    Examples
    --------
    >>> [(p.context_id, p.is_command, p.is_last) for p in split_pdvs(b"\\0\\0\\0\\3\\1\\3x")]
    [(1, True, True)]
    """
    view = memoryview(body).cast("B")
    size = len(view)
    if size == 0:
        raise PDataError("P-DATA-TF PDU without PDV items")
    items: list[Pdv] = []
    offset = 0
    while offset < size:
        if size - offset < _HEADER_BYTES:
            raise PDataError(f"PDV item header cut off at byte {offset} of {size}")
        (length,) = struct.unpack_from(">I", view, offset)
        if length < 2:
            raise PDataError(f"PDV item length {length} at byte {offset} (at least 2)")
        end = offset + 4 + length
        if end > size:
            raise PDataError(f"PDV item of {length} bytes at byte {offset} beyond the PDU")
        items.append(Pdv(view[offset + 4], view[offset + 5], view[offset + 6 : end]))
        offset = end
    return items


def encode_pdata(pdvs: list[Pdv]) -> bytes:
    """Encode ``pdvs`` as one P-DATA-TF PDU (header included).

    Parameters
    ----------
    pdvs : list of Pdv
        The items, in order.

    Returns
    -------
    bytes

    Examples
    --------
    >>> encode_pdata([Pdv(1, 3, b"x")])
    b'\\x04\\x00\\x00\\x00\\x00\\x07\\x00\\x00\\x00\\x03\\x01\\x03x'
    """
    parts = [b""]
    for pdv in pdvs:
        parts.append(struct.pack(">IBB", len(pdv.value) + 2, pdv.context_id, pdv.control))
        parts.append(bytes(pdv.value))
    body_bytes = sum(len(part) for part in parts)
    parts[0] = struct.pack(">BBI", _P_DATA_TF, 0, body_bytes)
    return b"".join(parts)


def decode_command(raw: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """Decode a command set: implicit VR little endian elements of group 0000.

    Parameters
    ----------
    raw : bytes, bytearray or memoryview
        The command set (all its fragments joined).

    Returns
    -------
    dict of int to bytes
        Element number (the ``eeee`` of ``(0000,eeee)``) -> value bytes.

    Raises
    ------
    PDataError
        If an element header is cut off, a value reaches beyond the end, an element is
        not in group 0000 or appears twice.

    Examples
    --------
    >>> decode_command(b"\\0\\0\\0\\1\\2\\0\\0\\0\\1\\0")
    {256: b'\\x01\\x00'}
    """
    view = memoryview(raw).cast("B")
    size = len(view)
    elements: dict[int, bytes] = {}
    offset = 0
    while offset < size:
        if size - offset < 8:
            raise PDataError(f"command element header cut off at byte {offset} of {size}")
        group, element, length = struct.unpack_from("<HHI", view, offset)
        if group != 0x0000:
            raise PDataError(f"command element ({group:04X},{element:04X}) not in group 0000")
        if length > size - offset - 8:
            raise PDataError(f"command element (0000,{element:04X}) longer than the command")
        if element in elements:
            raise PDataError(f"command element (0000,{element:04X}) appears twice")
        elements[element] = bytes(view[offset + 8 : offset + 8 + length])
        offset += 8 + length
    return elements


def has_data_set(elements: dict[int, bytes]) -> bool | None:
    """Whether a data set follows the command set: ``None`` if it does not say (well).

    Parameters
    ----------
    elements : dict of int to bytes
        A decoded command set (:func:`decode_command`).

    Returns
    -------
    bool or None
    """
    value = elements.get(_DATA_SET_TYPE)
    if value is None or len(value) != 2:
        return None
    return struct.unpack("<H", value)[0] != _NO_DATA_SET


def store_request(elements: dict[int, bytes], context_id: int) -> StoreRequest | None:
    """The C-STORE request of a command set, if it is plainly valid.

    Plainly valid: Command Field 0x0001, a data set follows, Message ID and Priority are
    two bytes each, and both UIDs are 1-64 digits and dots (padding stripped). Anything
    else (another service, a missing or odd element) gives ``None``.

    Parameters
    ----------
    elements : dict of int to bytes
        A decoded command set (:func:`decode_command`).
    context_id : int
        Presentation context the command came on.

    Returns
    -------
    StoreRequest or None
    """
    if elements.get(_COMMAND_FIELD) != struct.pack("<H", _C_STORE_RQ):
        return None
    if has_data_set(elements) is not True:
        return None
    message_id = elements.get(_MESSAGE_ID)
    priority = elements.get(_PRIORITY)
    if message_id is None or priority is None or len(message_id) != 2 or len(priority) != 2:
        return None
    uids = []
    for element in (_CLASS_UID, _INSTANCE_UID):
        value = elements.get(element, b"").rstrip(b"\x00 ")
        if not _UID.fullmatch(value):
            return None
        uids.append(value.decode("ascii"))
    return StoreRequest(context_id, struct.unpack("<H", message_id)[0], uids[0], uids[1])


class _Mode(Enum):
    IDLE = "between messages"
    COMMAND = "command set being received"
    OURS = "data set of a C-STORE we take"
    THEIRS = "data set of a message pynetdicom takes"


class DirectPData:
    """Reads an association's P-DATA-TF PDUs itself; C-STOREs go to ``store``.

    Parameters
    ----------
    assoc : pynetdicom.association.Association
        An association we accept, its socket set (call :meth:`install` from an
        ``EVT_REQUESTED`` handler, after any other wrapping of the socket's ``recv``).
    store : Callable[[StoreRequest, bytes], None]
        Called in the network thread with each plainly valid C-STORE request and its
        instance as a Part-10 file (:func:`dicom_node.part10.part10_prefix` + data set);
        it must answer the request (and not raise).
    on_protocol_error : Callable[[str], None]
        Called with the reason (no patient data) just before the association is aborted
        for a broken P-DATA-TF stream.
    max_pdu_bytes : int, optional
        The maximum PDU length we announced (0: none). A P-DATA-TF PDU longer than this
        aborts the association before its body is read (no memory for a length a peer
        merely claims).
    """

    def __init__(
        self,
        assoc: Association,
        store: Callable[[StoreRequest, bytes], None],
        on_protocol_error: Callable[[str], None],
        *,
        max_pdu_bytes: int = 0,
    ) -> None:
        self._assoc = assoc
        self._max_pdu_bytes = max_pdu_bytes
        self._store = store
        self._on_protocol_error = on_protocol_error
        self._pushed_back = bytearray()
        self._inner_recv: Callable[[int], bytearray] | None = None
        self._original_read: Callable[[], None] | None = None
        self._syntaxes: dict[int, str] | None = None
        self._to_pynetdicom = False  # for the rest of the association
        self._mode = _Mode.IDLE
        self._held: list[Pdv] = []
        self._command = bytearray()
        self._request: StoreRequest | None = None
        self._instance = bytearray()

    def install(self) -> None:
        """Take over the association's PDU reads (no-op without a socket)."""
        dul = self._assoc.dul
        transport = dul.socket
        if transport is None:
            return
        self._inner_recv = transport.recv
        self._original_read = dul._read_pdu_data
        transport.recv = self._recv  # type: ignore[method-assign]
        dul._read_pdu_data = self._read_pdu  # type: ignore[method-assign]

    def send_store_success(self, request: StoreRequest) -> bool:
        """Send the success response of ``request`` straight to the socket.

        The response (:func:`dicom_node.store_response.store_success_command`) goes out at
        once as one P-DATA-TF PDU from the network thread, without pynetdicom's queue,
        state machine and PDU encoding (and without their ``EVT_DIMSE_SENT`` and
        ``EVT_PDU_SENT``). Call it from ``store`` (the network thread).

        Parameters
        ----------
        request : StoreRequest
            The request being answered.

        Returns
        -------
        bool
            ``False`` (nothing sent) when the response cannot go this way: a UID it does
            not write, a peer whose maximum PDU is too small for it, no socket.
        """
        try:
            command = store_success_command(
                request.message_id, request.sop_class_uid, request.sop_instance_uid
            )
        except ValueError:
            return False
        limit = self._assoc.dimse.maximum_pdu_size
        transport = self._assoc.dul.socket
        if (limit and len(command) + _PDV_OVERHEAD > limit) or transport is None:
            return False
        control = _COMMAND_BIT | _LAST_BIT
        transport.send(encode_pdata([Pdv(request.context_id, control, command)]))
        return True

    # ------------------------------------------------------------------ reading
    def _recv(self, nr_bytes: int) -> bytearray:
        """The transport's ``recv``: bytes given back to pynetdicom first."""
        assert self._inner_recv is not None
        if not self._pushed_back:
            return self._inner_recv(nr_bytes)
        taken = self._pushed_back[:nr_bytes]
        del self._pushed_back[:nr_bytes]
        if len(taken) < nr_bytes:
            taken += self._inner_recv(nr_bytes - len(taken))
        return taken

    def _hand_over(self, data: bytes | bytearray) -> None:
        """Let pynetdicom read ``data`` (then the socket) as if it had just arrived."""
        assert self._original_read is not None
        self._pushed_back[:] = data
        try:
            self._original_read()
        finally:
            self._pushed_back.clear()

    def _read_pdu(self) -> None:
        """Replaces the DUL's ``_read_pdu_data``: a PDU, and the rest of a C-STORE.

        While a C-STORE we take is incomplete, its next PDUs are read in the same call as
        soon as they arrive (waiting at most ``_MID_MESSAGE_WAIT_S`` for each), instead
        of going round pynetdicom's loop (which gives up the GIL once per round) for each.
        """
        self._read_one_pdu()
        dul = self._assoc.dul
        while (
            self._mode in (_Mode.COMMAND, _Mode.OURS)
            and not self._to_pynetdicom
            and dul.event_queue.empty()
            and self._more_soon()
        ):
            self._read_one_pdu()

    def _more_soon(self) -> bool:
        """Whether more data arrive within ``_MID_MESSAGE_WAIT_S``."""
        transport = self._assoc.dul.socket
        sock = transport.socket if transport is not None else None
        if sock is None:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
            return True
        try:
            ready, _, _ = select.select([sock], [], [], _MID_MESSAGE_WAIT_S)
        except (OSError, ValueError):
            return False  # closed meanwhile: pynetdicom's own look sees it
        return bool(ready)

    def _read_one_pdu(self) -> None:
        """One PDU from the socket."""
        dul = self._assoc.dul
        if self._to_pynetdicom or dul.state_machine.current_state != _ESTABLISHED:
            self._forget_message()
            self._hand_over(b"")
            return
        assert self._inner_recv is not None
        header = self._read(_HEADER_BYTES)
        if header is None:
            return
        pdu_type, _, length = struct.unpack(">BBI", header)
        if pdu_type != _P_DATA_TF:
            self._forget_message()  # release or abort: a message cut short is dropped
            self._hand_over(header)
            return
        if self._max_pdu_bytes and length > self._max_pdu_bytes:
            self._abort(
                f"P-DATA-TF PDU of {length} bytes, above our maximum {self._max_pdu_bytes}"
            )
            return
        body = self._read(length)
        if body is None:
            return
        try:
            to_pynetdicom = self._take(split_pdvs(body))
        except PDataError as exc:
            self._abort(str(exc))
            return
        if to_pynetdicom:
            self._hand_over(encode_pdata(to_pynetdicom))

    def _read(self, nr_bytes: int) -> bytearray | None:
        """``nr_bytes`` from the socket; ``None`` (transport closed) if they do not come."""
        assert self._inner_recv is not None
        try:
            data = self._inner_recv(nr_bytes)
        except OSError as exc:
            LOGGER.error("connection closed before the entire PDU was received: %s", exc)
            data = None
        if data is None or len(data) < nr_bytes:
            self._assoc.dul.event_queue.put(_TRANSPORT_CLOSED)
            return None
        return data

    def _abort(self, reason: str) -> None:
        LOGGER.error("aborting association: %s", reason)
        self._to_pynetdicom = True
        self._forget_message()
        self._on_protocol_error(reason)
        self._assoc.dul.event_queue.put(_INVALID_PDU)  # as pynetdicom for an invalid PDU

    def _forget_message(self) -> None:
        self._mode = _Mode.IDLE
        self._held = []
        self._command = bytearray()
        self._request = None
        self._instance = bytearray()

    # ------------------------------------------------------------------ messages
    def _take(self, pdvs: list[Pdv]) -> list[Pdv]:
        """Follow the messages in ``pdvs``; the PDVs pynetdicom is to read."""
        theirs: list[Pdv] = []
        for pdv in pdvs:
            if self._to_pynetdicom:
                theirs.append(pdv)
            elif self._mode is _Mode.OURS:
                self._add_data(pdv)
            elif self._mode is _Mode.THEIRS:
                theirs.append(pdv)
                if pdv.is_command:  # pynetdicom decides what that means
                    self._to_pynetdicom = True
                elif pdv.is_last:
                    self._mode = _Mode.IDLE
            elif not pdv.is_command:  # data with no command before it
                self._give_up(theirs, pdv)
            elif self._mode is _Mode.IDLE or pdv.context_id == self._held[0].context_id:
                self._add_command(pdv, theirs)
            else:  # a command fragment on another context
                self._give_up(theirs, pdv)
        return theirs

    def _give_up(self, theirs: list[Pdv], pdv: Pdv) -> None:
        """pynetdicom reads this association from here on, the held command included."""
        theirs.extend(self._held)
        theirs.append(pdv)
        self._forget_message()
        self._to_pynetdicom = True

    def _add_command(self, pdv: Pdv, theirs: list[Pdv]) -> None:
        self._mode = _Mode.COMMAND
        self._held.append(pdv)
        self._command += pdv.value
        if not pdv.is_last:
            return
        held = self._held
        try:
            elements = decode_command(self._command)
        except PDataError:
            elements = None
        self._forget_message()
        request = store_request(elements, pdv.context_id) if elements is not None else None
        prefix = self._prefix(request) if request is not None else None
        if request is not None and prefix is not None:
            self._mode = _Mode.OURS
            self._request = request
            self._instance = bytearray(prefix)
            return
        theirs.extend(held)
        follows = has_data_set(elements) if elements is not None else None
        if follows is None:
            self._to_pynetdicom = True
        elif follows:
            self._mode = _Mode.THEIRS

    def _prefix(self, request: StoreRequest) -> bytes | None:
        """The Part-10 framing of ``request``; ``None`` if we do not take it."""
        if self._syntaxes is None:
            self._syntaxes = {
                int(context.context_id): str(context.transfer_syntax[0])
                for context in self._assoc.accepted_contexts
                if context.context_id is not None and context.transfer_syntax
            }
        syntax = self._syntaxes.get(request.context_id)
        if syntax is None:
            return None  # pynetdicom answers an unknown context
        try:
            return part10_prefix(request.sop_class_uid, request.sop_instance_uid, syntax)
        except ValueError:
            return None

    def _add_data(self, pdv: Pdv) -> None:
        request = self._request
        assert request is not None
        if pdv.is_command or pdv.context_id != request.context_id:
            what = "a command fragment" if pdv.is_command else "data of another context"
            raise PDataError(f"{what} before the last data fragment of a C-STORE request")
        self._instance += pdv.value
        if not pdv.is_last:
            return
        instance = bytes(self._instance)  # the header reader wants immutable bytes
        self._forget_message()
        self._store(request, instance)
