"""Storage SCU: send results to a configured destination, and C-ECHO it.

No retries here: the service decides when to try again. Datasets are sent as they are
(no transcoding, no pixel decoding); files are streamed from disk by pynetdicom.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.contexts import UNCOMPRESSED_TRANSFER_SYNTAXES
from dicom_node.status import describe, is_failure, is_warning
from dicom_node.tls import ClientTls, handshake_failure_text
from dicom_node.validation import check_ae_title, check_uid

__all__ = [
    "MAX_PRESENTATION_CONTEXTS",
    "TLS_PREFIX",
    "Destination",
    "InstanceOutcome",
    "SendError",
    "SendReport",
    "echo",
    "send",
]

LOGGER = logging.getLogger(__name__)

MAX_PRESENTATION_CONTEXTS = 128
"""An association request carries at most 128 presentation contexts (PS3.8 9.3.2.2)."""

TLS_PREFIX = "tls://"
"""A destination written ``tls://AET@HOST:PORT`` is reached over DICOM TLS."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer: AE title, host and port, plain or TLS.

    Parameters
    ----------
    ae_title : str
        Called AE title (1-16 characters).
    host : str
        Host name or IP address.
    port : int
        TCP port 1..65535.
    tls : bool
        Reach the peer over DICOM TLS (the sender then needs a :class:`ClientTls`).

    Raises
    ------
    ValueError
        On an invalid AE title, empty host or port out of range.
    """

    ae_title: str
    host: str
    port: int
    tls: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "destination AE title"))
        if (
            not isinstance(self.host, str)
            or not self.host.strip()
            or any(c.isspace() for c in self.host.strip())
        ):
            raise ValueError(f"destination host must be a non-empty name, got {self.host!r}")
        object.__setattr__(self, "host", self.host.strip())
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"destination port must be an integer, got {self.port!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"destination port must be 1..65535, got {self.port}")
        if not isinstance(self.tls, bool):
            raise ValueError(f"destination tls must be True or False, got {self.tls!r}")

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``"AET@HOST:PORT"`` (IPv6 hosts in brackets: ``"AET@[::1]:104"``).

        A ``tls://`` prefix (``"tls://PACS@pacs.local:2762"``) means DICOM over TLS.

        Parameters
        ----------
        text : str
            The destination as written in settings.

        Returns
        -------
        Destination

        Raises
        ------
        ValueError
            With the expected form when ``text`` cannot be parsed.

        Examples
        --------
        >>> Destination.parse("PACS@pacs.local:104")
        Destination(ae_title='PACS', host='pacs.local', port=104, tls=False)
        >>> Destination.parse("tls://PACS@pacs.local:2762").tls
        True
        """
        form = "expected 'AET@HOST:PORT' or 'tls://AET@HOST:PORT', e.g. 'PACS@10.0.0.5:104'"
        if not isinstance(text, str):
            raise ValueError(f"destination must be a string, {form}")
        body = text.strip()
        tls = body.lower().startswith(TLS_PREFIX)
        if tls:
            body = body[len(TLS_PREFIX) :]
        ae_title, at, address = body.rpartition("@")
        if not at or not ae_title:
            raise ValueError(f"destination {text!r} has no AE title before '@'; {form}")
        host, colon, port_text = address.rpartition(":")
        if not colon or not host:
            raise ValueError(f"destination {text!r} has no HOST:PORT after '@'; {form}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"destination {text!r}: write IPv6 hosts in brackets; {form}")
        if not port_text.isdigit():
            raise ValueError(f"destination {text!r}: port {port_text!r} is not a number; {form}")
        return cls(ae_title=ae_title, host=host, port=int(port_text), tls=tls)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        prefix = TLS_PREFIX if self.tls else ""
        return f"{prefix}{self.ae_title}@{host}:{self.port}"


@dataclass(frozen=True)
class InstanceOutcome:
    """Result of sending one instance.

    Attributes
    ----------
    sop_instance_uid : str
        The instance.
    status : int or None
        DIMSE status from the peer; ``None`` when no response came (connection lost,
        timeout, no accepted presentation context).
    detail : str
        Readable status or error text.
    """

    sop_instance_uid: str
    status: int | None
    detail: str

    @property
    def stored(self) -> bool:
        """``True`` when the peer answered success or warning."""
        return self.status is not None and not is_failure(self.status)


@dataclass(frozen=True)
class SendReport:
    """What happened when sending a batch to one destination.

    Attributes
    ----------
    destination : Destination
        Where it went.
    outcomes : tuple of InstanceOutcome
        One per instance, in input order.
    duration_s : float
        Wall time of the association.
    """

    destination: Destination
    outcomes: tuple[InstanceOutcome, ...]
    duration_s: float

    @property
    def n_stored(self) -> int:
        """Instances stored with success or warning."""
        return sum(outcome.stored for outcome in self.outcomes)

    @property
    def n_warnings(self) -> int:
        """Instances stored with a warning status."""
        return sum(
            outcome.status is not None and is_warning(outcome.status) for outcome in self.outcomes
        )

    @property
    def failed(self) -> tuple[InstanceOutcome, ...]:
        """Instances that were not stored."""
        return tuple(outcome for outcome in self.outcomes if not outcome.stored)


class SendError(Exception):
    """Raised when anything of a batch was not stored; names the destination and cause.

    Attributes
    ----------
    destination : Destination
        Where sending failed.
    report : SendReport or None
        Per-instance outcomes when an association was established.
    """

    def __init__(
        self, destination: Destination, cause: str, report: SendReport | None = None
    ) -> None:
        super().__init__(f"sending to {destination} failed: {cause}")
        self.destination = destination
        self.cause = cause
        self.report = report


@dataclass(frozen=True)
class _Item:
    source: Dataset | Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def send(
    datasets: Sequence[Dataset | Path],
    destination: Destination,
    *,
    calling_ae: str,
    timeout_s: float = 60.0,
    tls: ClientTls | None = None,
) -> SendReport:
    """Send instances to ``destination`` over one association (C-STORE).

    One presentation context is proposed per (SOP class, transfer syntax) found in the data,
    plus Explicit/Implicit VR Little Endian for every SOP class.

    Parameters
    ----------
    datasets : Sequence of Dataset or Path
        Instances (datasets need ``file_meta.TransferSyntaxUID``) or Part-10 files.
    destination : Destination
        The peer.
    calling_ae : str
        Our AE title.
    timeout_s : float
        ACSE, DIMSE and network timeout in seconds (also bounds the TLS handshake).
    tls : ClientTls or None
        TLS settings; required when ``destination.tls``, ignored otherwise.

    Returns
    -------
    SendReport
        Only when every instance was stored with success or warning.

    Raises
    ------
    ValueError
        On bad arguments, a file that is not DICOM, more than 128 contexts needed, or a TLS
        destination without ``tls``.
    SendError
        Connection refused or failed, TLS handshake failed (the error says why, e.g. the
        destination's certificate is not trusted), association rejected or aborted, or any
        instance answered with a failure status (``SendError.report`` has the details).
    """
    calling_ae = check_ae_title(calling_ae, "calling AE title")
    if not isinstance(destination, Destination):
        raise TypeError("destination must be a Destination")
    _check_timeout(timeout_s)
    _check_tls(destination, tls)
    items = [_describe_item(source) for source in datasets]
    if not items:
        return SendReport(destination=destination, outcomes=(), duration_s=0.0)
    contexts = _contexts_for(items)
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        raise ValueError(
            f"{len(contexts)} presentation contexts needed (SOP class x transfer syntax), "
            f"at most {MAX_PRESENTATION_CONTEXTS} fit in one association; send in batches"
        )
    ae = _make_ae(calling_ae, timeout_s)
    for sop_class_uid, syntaxes in contexts:
        ae.add_requested_context(sop_class_uid, syntaxes)
    started = time.monotonic()
    assoc = _associate(ae, destination, tls)
    outcomes: list[InstanceOutcome] = []
    try:
        for item in items:
            if not assoc.is_established:
                outcomes.append(
                    InstanceOutcome(item.sop_instance_uid, None, "association ended before send")
                )
                continue
            outcomes.append(_send_one(assoc, item))
    finally:
        if assoc.is_established:
            assoc.release()
    report = SendReport(
        destination=destination,
        outcomes=tuple(outcomes),
        duration_s=time.monotonic() - started,
    )
    failed = report.failed
    if failed:
        first = failed[0]
        aborted = " (association aborted)" if assoc.is_aborted else ""
        raise SendError(
            destination,
            f"{len(failed)} of {len(items)} instances not stored{aborted}; first: "
            f"{first.sop_instance_uid}: {first.detail}",
            report,
        )
    LOGGER.info(
        "sent %d instances to %s in %.1f s (%d warnings)",
        report.n_stored,
        destination,
        report.duration_s,
        report.n_warnings,
    )
    return report


def echo(
    destination: Destination,
    calling_ae: str,
    timeout_s: float = 10.0,
    tls: ClientTls | None = None,
) -> bool:
    """C-ECHO ``destination``.

    Parameters
    ----------
    destination : Destination
        The peer.
    calling_ae : str
        Our AE title.
    timeout_s : float
        Timeout in seconds.
    tls : ClientTls or None
        TLS settings; required when ``destination.tls``.

    Returns
    -------
    bool
        ``True`` if the peer answered the echo with success; ``False`` on any failure
        (refused, TLS handshake failed, rejected, aborted, failure status).

    Raises
    ------
    ValueError
        On a TLS destination without ``tls``.
    """
    calling_ae = check_ae_title(calling_ae, "calling AE title")
    _check_timeout(timeout_s)
    _check_tls(destination, tls)
    ae = _make_ae(calling_ae, timeout_s)
    ae.add_requested_context(Verification)
    try:
        assoc = _associate(ae, destination, tls)
    except SendError as exc:
        LOGGER.info("C-ECHO to %s: no association: %s", destination, exc.cause)
        return False
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    return bool(status) and int(status.get("Status", -1)) == 0x0000


def _check_tls(destination: Destination, tls: ClientTls | None) -> None:
    if tls is not None and not isinstance(tls, ClientTls):
        raise TypeError("tls must be a ClientTls or None")
    if destination.tls and tls is None:
        raise ValueError(
            f"destination {destination} is reached over TLS but no TLS settings were given "
            "(send.tls: CA certificates, and a client certificate if the peer requires one)"
        )


class _RecordingSSLSocket(ssl.SSLSocket):
    """Keeps TLS errors on its context: pynetdicom only logs them.

    With TLS 1.3 a server refuses our client certificate after our side of the handshake
    has completed, so the alert arrives with the first read: reads are watched too.
    """

    def _keep(self, exc: BaseException) -> None:
        errors = getattr(self.context, "cordt1_handshake_errors", None)
        if isinstance(errors, list):
            errors.append(exc)

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except Exception as exc:
            self._keep(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self._keep(exc)
            raise


def _check_timeout(timeout_s: float) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")


def _make_ae(calling_ae: str, timeout_s: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    return ae


def _describe_item(source: Dataset | Path) -> _Item:
    if isinstance(source, str):
        source = Path(source)
    if isinstance(source, Path):
        try:
            header = dcmread(source, stop_before_pixels=True)
        except Exception as exc:
            raise ValueError(f"{source} is not a readable DICOM file: {exc}") from exc
    elif isinstance(source, Dataset):
        header = source
    else:
        raise TypeError(f"expected a pydicom Dataset or a Path, got {type(source).__name__}")
    file_meta = getattr(header, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    label = str(source) if isinstance(source, Path) else "dataset"
    return _Item(
        source=source,
        sop_class_uid=check_uid(header.get("SOPClassUID"), f"SOPClassUID of {label}"),
        sop_instance_uid=check_uid(header.get("SOPInstanceUID"), f"SOPInstanceUID of {label}"),
        transfer_syntax_uid=check_uid(ts, f"file_meta.TransferSyntaxUID of {label}"),
    )


def _contexts_for(items: Sequence[_Item]) -> list[tuple[str, list[str]]]:
    """One context with Explicit+Implicit LE per SOP class, one per other syntax in data."""
    uncompressed = [str(uid) for uid in UNCOMPRESSED_TRANSFER_SYNTAXES]
    contexts: dict[tuple[str, str], list[str]] = {}
    for item in items:
        contexts.setdefault((item.sop_class_uid, "uncompressed"), uncompressed)
        if item.transfer_syntax_uid not in uncompressed:
            contexts.setdefault(
                (item.sop_class_uid, item.transfer_syntax_uid), [item.transfer_syntax_uid]
            )
    return [(sop_class, syntaxes) for (sop_class, _), syntaxes in contexts.items()]


def _associate(ae: AE, destination: Destination, tls: ClientTls | None) -> Association:
    opened: list[bool] = []
    handlers: list[Any] = [(evt.EVT_CONN_OPEN, lambda event: opened.append(True))]
    handshake_errors: list[BaseException] = []
    tls_args: tuple[ssl.SSLContext, str] | None = None
    if destination.tls and tls is not None:
        context = tls.context()
        context.sslsocket_class = _RecordingSSLSocket
        context.cordt1_handshake_errors = handshake_errors  # type: ignore[attr-defined]
        tls_args = (context, destination.host)
    assoc = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        evt_handlers=handlers,
        tls_args=tls_args,
    )
    if assoc.is_established:
        return assoc
    if handshake_errors:
        cause = handshake_failure_text(handshake_errors[0])
    elif not opened:
        cause = "connection refused or host unreachable (no TCP connection)"
    elif assoc.is_rejected:
        cause = "association rejected: " + _reject_text(assoc)
    elif assoc.is_aborted:
        cause = "association aborted by the peer during negotiation"
    else:
        cause = "association not established (timeout)"
    LOGGER.warning("sending to %s: %s", destination, cause)
    raise SendError(destination, cause)


def _reject_text(assoc: Association) -> str:
    primitive = assoc.acceptor.primitive
    if primitive is None:
        return "no details"
    try:
        return f"{primitive.result_str}, {primitive.source_str}: {primitive.reason_str}"
    except (AttributeError, KeyError, TypeError, ValueError):
        return (
            f"result {primitive.result}, source {primitive.result_source}, "
            f"diagnostic {primitive.diagnostic}"
        )


def _send_one(assoc: Association, item: _Item) -> InstanceOutcome:
    try:
        response = assoc.send_c_store(item.source)
    except ValueError as exc:
        return InstanceOutcome(item.sop_instance_uid, None, f"not sent: {exc}")
    if not response or "Status" not in response:
        return InstanceOutcome(
            item.sop_instance_uid, None, "no response (timeout or connection lost)"
        )
    status = int(response.Status)
    detail = describe(status)
    comment = str(response.get("ErrorComment", "") or "").strip()
    if comment:
        detail = f"{detail} ({comment})"
    return InstanceOutcome(item.sop_instance_uid, status, detail)
